//! The loyalty event log: every event the domain reports is appended to the outbox in the
//! transaction of the change it announces (so it exists exactly when the change does), and
//! subscribers read it in commit order from the cursor they hold.

use crm_db::outbox::NewEvent;
use crm_proto::loyalty_v1 as pb;
use prost::Message;
use sea_orm::ConnectionTrait;

use super::Loyalty;
use crate::convert;
use crate::domain::LoyaltyEvent;
use crate::store::StoreError;

impl Loyalty {
    /// Appends `events` of `tenant` in `txn`; call [`Loyalty::events_committed`] after the
    /// commit so subscribers see them at once.
    pub(super) async fn record_events<C: ConnectionTrait>(
        &self,
        txn: &C,
        tenant: &str,
        events: &[LoyaltyEvent],
    ) -> Result<(), StoreError> {
        if events.is_empty() {
            return Ok(());
        }
        let rows: Vec<NewEvent> = events
            .iter()
            .map(|event| {
                let message = convert::event_to_pb(event);
                NewEvent {
                    tenant_id: tenant.to_owned(),
                    event_type: pb::loyalty_event::Type::try_from(message.r#type)
                        .unwrap_or(pb::loyalty_event::Type::Unspecified)
                        .as_str_name()
                        .to_owned(),
                    subject: message.account.clone(),
                    payload: message.encode_to_vec(),
                }
            })
            .collect();
        crm_db::outbox::append_all(txn, &rows).await?;
        Ok(())
    }

    /// Wakes the sequencer after a commit that recorded events.
    pub(super) fn events_committed(&self) {
        self.outbox.notify_committed();
    }

    pub fn outbox(&self) -> &crm_db::outbox::Outbox {
        &self.outbox
    }
}
