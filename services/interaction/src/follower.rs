//! Follows customer-profile's events (merge, unmerge, erasure) for every tenant this service
//! holds records of, applying each exactly once: the effect and the cursor commit together
//! (`Store::apply_customer_change`), and an event at or below the stored cursor is skipped.
//!
//! A tenant is followed from the first write that registers it (its cursor row, at 0), so the
//! whole of its customer log is read once: merges and erasures from before its first record
//! are applied too, which keeps unmerge and erasure right for records written later.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crm_proto::customerprofile_v1 as profile;
use crm_proto::customerprofile_v1::customer_profile_service_client::CustomerProfileServiceClient;
use crm_runtime::TenantId;
use crm_runtime::context::OutgoingContext;
use futures::StreamExt;
use tonic::transport::Channel;
use uuid::Uuid;

use crate::convert::{scrub_callback_body, scrub_record_body};
use crate::domain;
use crate::error::InteractionError;
use crate::store::{CustomerChange, Store};

/// How often the set of tenants to follow is refreshed, and how long a broken subscription
/// waits before it reconnects.
const POLL: Duration = Duration::from_secs(1);

pub struct CustomerEventFollower {
    store: Arc<Store>,
    channel: Channel,
    running: Mutex<HashSet<String>>,
}

impl CustomerEventFollower {
    pub fn new(store: Arc<Store>, channel: Channel) -> Arc<Self> {
        Arc::new(Self {
            store,
            channel,
            running: Mutex::new(HashSet::new()),
        })
    }

    /// Starts following: one task that finds tenants, and one subscription per tenant.
    pub fn spawn(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let follower = Arc::clone(self);
        tokio::spawn(async move {
            loop {
                match follower.store.followed_tenants().await {
                    Ok(tenants) => {
                        for (tenant, _) in tenants {
                            follower.ensure_following(tenant);
                        }
                    }
                    Err(error) => tracing::warn!(%error, "listing the tenants to follow failed"),
                }
                tokio::time::sleep(POLL).await;
            }
        })
    }

    fn ensure_following(self: &Arc<Self>, tenant: String) {
        let Ok(mut running) = self.running.lock() else {
            return;
        };
        if !running.insert(tenant.clone()) {
            return;
        }
        let Ok(tenant) = TenantId::parse(&tenant) else {
            tracing::warn!(tenant, "a stored tenant id is not valid; not following it");
            return;
        };
        let follower = Arc::clone(self);
        tokio::spawn(async move { follower.follow(tenant).await });
    }

    async fn follow(self: Arc<Self>, tenant: TenantId) {
        loop {
            if let Err(error) = self.follow_once(&tenant).await {
                tracing::warn!(tenant = %tenant, %error, "following customer events failed; resuming");
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Reads from the stored cursor until the stream breaks.
    async fn follow_once(&self, tenant: &TenantId) -> Result<(), InteractionError> {
        let cursor = self.store.customer_event_cursor(tenant).await?;
        let mut client = CustomerProfileServiceClient::with_interceptor(
            self.channel.clone(),
            OutgoingContext::new(tenant.clone()),
        );
        let peer = |status| InteractionError::Peer {
            service: "customer-profile",
            status,
        };
        let mut events = client
            .subscribe_customer_events(profile::SubscribeCustomerEventsRequest {
                cursor: if cursor == 0 {
                    String::new()
                } else {
                    cursor.to_string()
                },
                types: vec![
                    profile::customer_event::Type::Merged.into(),
                    profile::customer_event::Type::Unmerged.into(),
                    profile::customer_event::Type::Erased.into(),
                ],
            })
            .await
            .map_err(peer)?
            .into_inner();
        while let Some(event) = events.next().await {
            let event = event.map_err(peer)?;
            let position: i64 = event.cursor.parse().map_err(|_| {
                InteractionError::Corrupt(format!("customer event cursor {:?}", event.cursor))
            })?;
            let change = change_of(&event)?;
            let applied = self
                .store
                .apply_customer_change(tenant, position, &change, scrub_record_body, scrub_callback_body)
                .await?;
            if applied {
                tracing::debug!(tenant = %tenant, position, ?change, "customer event applied");
            }
        }
        Ok(())
    }
}

fn customer_id(name: &str) -> Result<Uuid, InteractionError> {
    domain::parse_customer_name(name, "customer")
        .map_err(|_| InteractionError::Corrupt(format!("customer event names {name:?}")))
}

/// What an event means here.
pub fn change_of(event: &profile::CustomerEvent) -> Result<CustomerChange, InteractionError> {
    use profile::customer_event::Type;
    let others = || {
        event
            .merged
            .iter()
            .map(|name| customer_id(name))
            .collect::<Result<Vec<_>, _>>()
    };
    Ok(match Type::try_from(event.r#type) {
        Ok(Type::Merged) => CustomerChange::Merged {
            survivor: customer_id(&event.customer)?,
            merged: others()?,
        },
        Ok(Type::Unmerged) => CustomerChange::Unmerged {
            survivor: customer_id(&event.customer)?,
            restored: others()?,
        },
        Ok(Type::Erased) => CustomerChange::Erased {
            customer: customer_id(&event.customer)?,
        },
        _ => CustomerChange::Other,
    })
}
