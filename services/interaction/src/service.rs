//! The use cases: check the customer, write through the store (idempotently, with the events in
//! the same transaction), and read records back under their current customer.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use crm_db::idempotency::RequestKey;
use crm_db::outbox::Outbox;
use crm_proto::interaction_v1 as pb;
use crm_runtime::TenantId;
use prost::Message;
use uuid::Uuid;

use crate::convert::{self, render, render_callback, render_new};
use crate::directory::CustomerDirectory;
use crate::domain::{self, CustomerPart, RecordKind};
use crate::error::InteractionError;
use crate::store::{
    Applied, CallbackWrite, NewRecord, PageKey, RefundGuard, RowOutcome, Store, StoredCallback, StoredRecord,
    TouchpointCounts,
};

/// How often a callback change without an etag is retried when a concurrent change moved it.
const CALLBACK_ATTEMPTS: usize = 5;

/// What happened to one ingested row.
#[derive(Debug, Clone)]
pub enum IngestOutcome {
    Created(String),
    Existing(String),
    Failed(String),
}

/// A row of an ingest: its record, or why it was refused before any IO.
pub type IngestRow = Result<NewRecord, InteractionError>;

pub struct Interactions {
    store: Store,
    directory: Arc<dyn CustomerDirectory>,
    outbox: Outbox,
}

fn describe(error: &InteractionError) -> String {
    error.to_string()
}

impl Interactions {
    pub fn new(store: Store, directory: Arc<dyn CustomerDirectory>, outbox: Outbox) -> Self {
        Self {
            store,
            directory,
            outbox,
        }
    }

    pub fn outbox(&self) -> &Outbox {
        &self.outbox
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The answer of an earlier request with the same id, checked before anything is computed.
    async fn replayed(
        &self,
        tenant: &TenantId,
        request: Option<&RequestKey>,
    ) -> Result<Option<Vec<u8>>, InteractionError> {
        let Some(request) = request else { return Ok(None) };
        let Some(stored) = self
            .store
            .replay(tenant, request.method, &request.request_id)
            .await?
        else {
            return Ok(None);
        };
        if stored.fingerprint != request.fingerprint {
            return Err(InteractionError::RequestIdReused {
                request_id: request.request_id.clone(),
            });
        }
        Ok(Some(stored.response))
    }

    fn check_replay_fingerprint(
        request: Option<&RequestKey>,
        fingerprint: &str,
    ) -> Result<(), InteractionError> {
        match request {
            Some(request) if request.fingerprint != fingerprint => Err(InteractionError::RequestIdReused {
                request_id: request.request_id.clone(),
            }),
            _ => Ok(()),
        }
    }

    /// The customer a write names, as it is now; NOT_FOUND naming it when it does not exist.
    pub async fn existing_customer(
        &self,
        tenant: &TenantId,
        customer: Uuid,
    ) -> Result<Uuid, InteractionError> {
        self.directory
            .resolve(tenant, customer)
            .await?
            .ok_or_else(|| InteractionError::not_found(domain::customer_name(customer)))
    }

    /// Records one touchpoint, purchase, refund or feedback. A row whose external reference is
    /// already stored changes nothing and the stored record is returned.
    pub async fn create_record(
        &self,
        tenant: &TenantId,
        mut row: NewRecord,
        request: Option<RequestKey>,
        refund_guard: Option<RefundGuard>,
    ) -> Result<pb::TimelineEntry, InteractionError> {
        if let Some(reply) = self.replayed(tenant, request.as_ref()).await? {
            return decode_entry(&reply);
        }
        if row.kind != RecordKind::Refund {
            row.customer_id = self.existing_customer(tenant, row.origin_customer_id).await?;
        }
        let applied = self
            .store
            .insert_records(
                tenant,
                vec![row],
                request.as_ref(),
                refund_guard,
                |row| convert::record_event(tenant, row),
                |rows, outcomes| {
                    let entry = rows
                        .first()
                        .zip(outcomes.first())
                        .and_then(|(row, outcome)| entry_of(row, outcome).ok());
                    let subject = entry
                        .as_ref()
                        .and_then(entry_customer)
                        .map(domain::customer_name)
                        .unwrap_or_default();
                    (
                        entry.map(|entry| entry.encode_to_vec()).unwrap_or_default(),
                        subject,
                    )
                },
            )
            .await?;
        let (rows, outcomes) = match applied {
            Applied::Replayed(stored) => {
                Self::check_replay_fingerprint(request.as_ref(), &stored.fingerprint)?;
                return decode_entry(&stored.response);
            }
            Applied::Done(Err(refused)) => {
                return Err(InteractionError::invalid(
                    "refund.amount",
                    format!(
                        "exceeds what remains of the purchase ({} minor units)",
                        refused.remaining_minor
                    ),
                ));
            }
            Applied::Done(Ok(done)) => done,
        };
        if outcomes
            .iter()
            .any(|outcome| matches!(outcome, RowOutcome::Created { .. }))
        {
            self.outbox.notify_committed();
        }
        let (Some(row), Some(outcome)) = (rows.first(), outcomes.first()) else {
            return Err(InteractionError::Corrupt("a write without its row".into()));
        };
        entry_of(row, outcome)
    }

    /// Ingests a batch: customers checked together, rows written in one transaction, one
    /// outcome per row in order.
    pub async fn ingest(
        &self,
        tenant: &TenantId,
        rows: Vec<IngestRow>,
    ) -> Result<Vec<IngestOutcome>, InteractionError> {
        let wanted: Vec<Uuid> = rows
            .iter()
            .filter_map(|row| row.as_ref().ok().map(|row| row.origin_customer_id))
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let resolved: HashMap<Uuid, Option<Uuid>> = wanted
            .iter()
            .copied()
            .zip(self.directory.resolve_many(tenant, &wanted).await?)
            .collect();
        let mut outcomes: Vec<Option<IngestOutcome>> = Vec::with_capacity(rows.len());
        let mut to_write = Vec::new();
        let mut positions = Vec::new();
        for (index, row) in rows.into_iter().enumerate() {
            match row {
                Err(error) => outcomes.push(Some(IngestOutcome::Failed(describe(&error)))),
                Ok(mut row) => match resolved.get(&row.origin_customer_id).copied().flatten() {
                    None => outcomes.push(Some(IngestOutcome::Failed(describe(
                        &InteractionError::not_found(domain::customer_name(row.origin_customer_id)),
                    )))),
                    Some(customer) => {
                        row.customer_id = customer;
                        outcomes.push(None);
                        positions.push(index);
                        to_write.push(row);
                    }
                },
            }
        }
        if !to_write.is_empty() {
            let applied = self
                .store
                .insert_records(
                    tenant,
                    to_write,
                    None,
                    None,
                    |row| convert::record_event(tenant, row),
                    |_, _| (Vec::new(), String::new()),
                )
                .await?;
            let (written, results) = match applied {
                Applied::Done(Ok(done)) => done,
                Applied::Done(Err(_)) | Applied::Replayed(_) => {
                    return Err(InteractionError::Corrupt(
                        "an ingest without a request id was replayed".into(),
                    ));
                }
            };
            let mut created_any = false;
            for ((row, outcome), index) in written.iter().zip(results).zip(positions) {
                let name = |customer: Uuid, record: &StoredRecord| match record.kind {
                    RecordKind::Refund => {
                        domain::refund_name(customer, record.parent_id.unwrap_or_default(), record.id)
                    }
                    kind => domain::record_name(kind, customer, record.id),
                };
                outcomes[index] = Some(match outcome {
                    RowOutcome::Created { customer_id } => {
                        created_any = true;
                        IngestOutcome::Created(domain::record_name(row.kind, customer_id, row.id))
                    }
                    RowOutcome::Existing(stored) => {
                        IngestOutcome::Existing(name(stored.customer_id, &stored))
                    }
                });
            }
            if created_any {
                self.outbox.notify_committed();
            }
        }
        Ok(outcomes
            .into_iter()
            .map(|outcome| outcome.unwrap_or_else(|| IngestOutcome::Failed("not processed".into())))
            .collect())
    }

    /// A record by name: the customer in the name may be the current one, the one it was
    /// recorded for, one merged into the current one, or `-`.
    pub async fn get_record(
        &self,
        tenant: &TenantId,
        kind: RecordKind,
        customer: CustomerPart,
        id: Uuid,
        parent: Option<Uuid>,
        name: &str,
    ) -> Result<StoredRecord, InteractionError> {
        let not_found = || InteractionError::not_found(name);
        let record = self
            .store
            .get_record(tenant, kind, id)
            .await?
            .ok_or_else(not_found)?;
        if parent.is_some() && record.parent_id != parent {
            return Err(not_found());
        }
        if let CustomerPart::Customer(named) = customer
            && named != record.customer_id
            && named != record.origin_customer_id
            && self.store.current_customer(tenant, named).await? != record.customer_id
        {
            return Err(not_found());
        }
        Ok(record)
    }

    /// The customers whose records a read under `customer` covers: the customer as it is now,
    /// and every customer merged into it.
    async fn customers_under(
        &self,
        tenant: &TenantId,
        customer: Uuid,
    ) -> Result<Vec<Uuid>, InteractionError> {
        let current = self.existing_customer(tenant, customer).await?;
        let current = self.store.current_customer(tenant, current).await?;
        Store::absorbed_into(self.store.db(), tenant, current).await
    }

    pub async fn list_records(
        &self,
        tenant: &TenantId,
        customer: Uuid,
        kind: Option<RecordKind>,
        after: Option<PageKey>,
        limit: u64,
    ) -> Result<Vec<StoredRecord>, InteractionError> {
        let customers = self.customers_under(tenant, customer).await?;
        self.store
            .list_records(tenant, &customers, kind, None, after, limit)
            .await
    }

    pub async fn list_refunds(
        &self,
        tenant: &TenantId,
        purchase: &StoredRecord,
        after: Option<PageKey>,
        limit: u64,
    ) -> Result<Vec<StoredRecord>, InteractionError> {
        self.store
            .list_records(
                tenant,
                &[purchase.customer_id],
                Some(RecordKind::Refund),
                Some(purchase.id),
                after,
                limit,
            )
            .await
    }

    pub async fn touchpoint_counts(
        &self,
        tenant: &TenantId,
        customer: Uuid,
    ) -> Result<TouchpointCounts, InteractionError> {
        let customers = self.customers_under(tenant, customer).await?;
        self.store.touchpoint_counts(tenant, &customers).await
    }

    /// Checks that `name` is a touchpoint of `customer` (as it is now).
    pub async fn check_linked_interaction(
        &self,
        tenant: &TenantId,
        customer: Uuid,
        name: &str,
        field: &str,
    ) -> Result<(), InteractionError> {
        let (part, id) = domain::parse_record_name(name, "interactions", field)?;
        let not_linked =
            || InteractionError::invalid(field, format!("{name} is not a touchpoint of this customer"));
        let record = self
            .get_record(tenant, RecordKind::Interaction, part, id, None, name)
            .await
            .map_err(|error| match error {
                InteractionError::NotFound { .. } => not_linked(),
                other => other,
            })?;
        let current = self.store.current_customer(tenant, customer).await?;
        if record.customer_id != current {
            return Err(not_linked());
        }
        Ok(())
    }

    pub async fn create_callback(
        &self,
        tenant: &TenantId,
        customer: Uuid,
        callback: pb::Callback,
        due: DateTime<Utc>,
        request: Option<RequestKey>,
    ) -> Result<pb::Callback, InteractionError> {
        if let Some(reply) = self.replayed(tenant, request.as_ref()).await? {
            return decode_callback(&reply);
        }
        let current = self.existing_customer(tenant, customer).await?;
        if !callback.interaction.is_empty() {
            self.check_linked_interaction(tenant, current, &callback.interaction, "callback.interaction")
                .await?;
        }
        let id = domain::new_id();
        let now = domain::now();
        let mut shown = callback.clone();
        convert::finish_callback(&mut shown, current, id, 1, now);
        let event = convert::callback_event(
            tenant,
            pb::interaction_event::Type::CallbackScheduled,
            current,
            &shown,
        );
        let write = CallbackWrite {
            id,
            origin_customer_id: customer,
            customer_id: current,
            assignee: callback.assignee.clone(),
            due_time: due,
            state: "OPEN",
            body: callback.encode_to_vec(),
            create_time: now,
            expected_revision: None,
        };
        let claim = request
            .as_ref()
            .map(|request| request.claim(shown.encode_to_vec(), domain::customer_name(current)));
        match self.store.write_callback(tenant, write, event, claim).await? {
            Applied::Replayed(stored) => {
                Self::check_replay_fingerprint(request.as_ref(), &stored.fingerprint)?;
                decode_callback(&stored.response)
            }
            Applied::Done(_) => {
                self.outbox.notify_committed();
                Ok(shown)
            }
        }
    }

    pub async fn get_callback(
        &self,
        tenant: &TenantId,
        customer: CustomerPart,
        id: Uuid,
        name: &str,
    ) -> Result<StoredCallback, InteractionError> {
        let not_found = || InteractionError::not_found(name);
        let stored = self.store.get_callback(tenant, id).await?.ok_or_else(not_found)?;
        if let CustomerPart::Customer(named) = customer
            && named != stored.customer_id
            && named != stored.origin_customer_id
            && self.store.current_customer(tenant, named).await? != stored.customer_id
        {
            return Err(not_found());
        }
        Ok(stored)
    }

    /// Closes an OPEN callback: DONE with an outcome (and the touchpoint that carried it out),
    /// or CANCELLED.
    #[allow(clippy::too_many_arguments)]
    pub async fn close_callback(
        &self,
        tenant: &TenantId,
        customer: CustomerPart,
        id: Uuid,
        name: &str,
        done: Option<(String, String)>,
        etag: &str,
        request: Option<RequestKey>,
    ) -> Result<pb::Callback, InteractionError> {
        if let Some(reply) = self.replayed(tenant, request.as_ref()).await? {
            return decode_callback(&reply);
        }
        for _ in 0..CALLBACK_ATTEMPTS {
            let stored = self.get_callback(tenant, customer, id, name).await?;
            if !etag.is_empty() && etag != domain::etag(stored.revision) {
                return Err(InteractionError::EtagMismatch {
                    resource_name: name.to_owned(),
                });
            }
            let now = domain::now();
            let mut callback = render_callback(&stored, now)?;
            if callback.state != i32::from(pb::callback::State::Open) {
                return Err(InteractionError::FailedPrecondition {
                    reason: "CALLBACK_NOT_OPEN",
                    message: format!("{} is not open", callback.name),
                });
            }
            let (state, stored_state, event_type) = match &done {
                Some((outcome, interaction)) => {
                    if !interaction.is_empty() {
                        self.check_linked_interaction(tenant, stored.customer_id, interaction, "interaction")
                            .await?;
                        callback.interaction = interaction.clone();
                    }
                    callback.outcome = outcome.clone();
                    (
                        pb::callback::State::Done,
                        "DONE",
                        pb::interaction_event::Type::CallbackCompleted,
                    )
                }
                None => (
                    pb::callback::State::Cancelled,
                    "CANCELLED",
                    pb::interaction_event::Type::CallbackCancelled,
                ),
            };
            callback.state = state.into();
            callback.update_time = Some(domain::timestamp(now));
            callback.close_time = Some(domain::timestamp(now));
            let mut body = callback.clone();
            body.name.clear();
            body.etag.clear();
            body.overdue = false;
            let mut shown = callback;
            convert::finish_callback(
                &mut shown,
                stored.customer_id,
                stored.id,
                stored.revision + 1,
                now,
            );
            let event = convert::callback_event(tenant, event_type, stored.customer_id, &shown);
            let write = CallbackWrite {
                id: stored.id,
                origin_customer_id: stored.origin_customer_id,
                customer_id: stored.customer_id,
                assignee: body.assignee.clone(),
                due_time: now,
                state: stored_state,
                body: body.encode_to_vec(),
                create_time: now,
                expected_revision: Some(stored.revision),
            };
            let claim = request.as_ref().map(|request| {
                request.claim(shown.encode_to_vec(), domain::customer_name(stored.customer_id))
            });
            match self.store.write_callback(tenant, write, event, claim).await? {
                Applied::Replayed(replayed) => {
                    Self::check_replay_fingerprint(request.as_ref(), &replayed.fingerprint)?;
                    return decode_callback(&replayed.response);
                }
                Applied::Done(true) => {
                    self.outbox.notify_committed();
                    return Ok(shown);
                }
                Applied::Done(false) if !etag.is_empty() => {
                    return Err(InteractionError::EtagMismatch {
                        resource_name: name.to_owned(),
                    });
                }
                Applied::Done(false) => continue,
            }
        }
        Err(InteractionError::EtagMismatch {
            resource_name: name.to_owned(),
        })
    }

    pub async fn list_callbacks(
        &self,
        tenant: &TenantId,
        customer: Uuid,
        after: Option<PageKey>,
        limit: u64,
    ) -> Result<Vec<(StoredCallback, DateTime<Utc>)>, InteractionError> {
        let customers = self.customers_under(tenant, customer).await?;
        self.store.list_callbacks(tenant, &customers, after, limit).await
    }

    pub async fn list_due_callbacks(
        &self,
        tenant: &TenantId,
        assignee: &str,
        due_before: DateTime<Utc>,
        after: Option<PageKey>,
        limit: u64,
    ) -> Result<Vec<(StoredCallback, DateTime<Utc>)>, InteractionError> {
        self.store
            .list_due_callbacks(tenant, assignee, due_before, after, limit)
            .await
    }
}

fn entry_of(row: &NewRecord, outcome: &RowOutcome) -> Result<pb::TimelineEntry, InteractionError> {
    match outcome {
        RowOutcome::Created { customer_id } => render_new(row, *customer_id),
        RowOutcome::Existing(stored) => render(stored),
    }
}

/// The customer a rendered record is named under.
fn entry_customer(entry: &pb::TimelineEntry) -> Option<Uuid> {
    use pb::timeline_entry::Record;
    let name = match entry.record.as_ref()? {
        Record::Interaction(value) => &value.name,
        Record::Purchase(value) => &value.name,
        Record::Refund(value) => &value.name,
        Record::Feedback(value) => &value.name,
    };
    let customer = name.split('/').nth(1)?;
    Uuid::parse_str(customer).ok()
}

fn decode_entry(bytes: &[u8]) -> Result<pb::TimelineEntry, InteractionError> {
    pb::TimelineEntry::decode(bytes).map_err(|error| InteractionError::Corrupt(error.to_string()))
}

fn decode_callback(bytes: &[u8]) -> Result<pb::Callback, InteractionError> {
    pb::Callback::decode(bytes).map_err(|error| InteractionError::Corrupt(error.to_string()))
}
