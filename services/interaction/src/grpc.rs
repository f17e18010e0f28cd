//! The tonic service: unpacks requests (proto -> validated records, each bad field named), calls
//! the use cases, packs answers, maps errors.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, TimeZone, Utc};
use crm_db::idempotency::RequestKey;
use crm_db::outbox::Outbox;
use crm_proto::interaction_v1 as pb;
use crm_proto::interaction_v1::interaction_service_server::{InteractionService, InteractionServiceServer};
use crm_proto::internal_v1 as internal;
use crm_proto::internal_v1::interaction_event_feed_service_server::{
    InteractionEventFeedService, InteractionEventFeedServiceServer,
};
use crm_runtime::TenantId;
use futures::{Stream, StreamExt};
use prost::Message;
use sea_orm::DatabaseConnection;
use tonic::transport::Channel;
use tonic::{Request, Response, Status, Streaming};
use uuid::Uuid;

use crate::convert::{render, render_callback};
use crate::directory::ProfileDirectory;
use crate::domain::{self, RecordKind};
use crate::error::InteractionError;
use crate::follower::CustomerEventFollower;
use crate::service::{IngestOutcome, IngestRow, Interactions};
use crate::store::{NewRecord, PageKey, RefundGuard, Store, StoredRecord};

/// How often a subscriber that is caught up looks for events other processes committed.
const SUBSCRIBE_POLL: Duration = Duration::from_millis(200);
/// Rows per ingest message.
const MAX_INGEST_BATCH: usize = 1000;
const DEFAULT_PAGE_SIZE: u64 = 50;
const MAX_PAGE_SIZE: u64 = 1000;

pub struct InteractionGrpc {
    service: Arc<Interactions>,
}

impl InteractionGrpc {
    /// The service over its own database; `customer_profile` reaches the customer-profile
    /// service (in process or over the network). Starts the outbox sequencer and the follower
    /// of customer events.
    /// Also returns the internal all-tenant feed of its events (see `crm.internal.v1`).
    pub fn server(
        db: DatabaseConnection,
        customer_profile: Channel,
    ) -> (
        InteractionServiceServer<Self>,
        InteractionEventFeedServiceServer<InteractionEventFeedGrpc>,
    ) {
        let outbox = Outbox::new(db.clone());
        outbox.spawn_sequencer(SUBSCRIBE_POLL);
        let feed = InteractionEventFeedServiceServer::new(InteractionEventFeedGrpc {
            outbox: outbox.clone(),
        });
        CustomerEventFollower::new(Arc::new(Store::new(db.clone())), customer_profile.clone()).spawn();
        let service = Arc::new(Interactions::new(
            Store::new(db),
            ProfileDirectory::new(customer_profile),
            outbox,
        ));
        // Ingest responses carry one result per row.
        let server = InteractionServiceServer::new(Self { service })
            .max_decoding_message_size(64 * 1024 * 1024)
            .max_encoding_message_size(64 * 1024 * 1024);
        (server, feed)
    }
}

fn record_customer(id: &Uuid) {
    tracing::Span::current().record("customer", tracing::field::display(id));
}

/// The idempotency key of a request: `cleared` is the request with `request_id` emptied.
fn request_key<M: Message>(
    method: &'static str,
    request_id: &str,
    cleared: &M,
) -> Result<Option<RequestKey>, InteractionError> {
    RequestKey::parse(method, request_id, &cleared.encode_to_vec())
        .map_err(|error| InteractionError::invalid("request_id", error.to_string()))
}

fn page_size(requested: i32) -> Result<u64, InteractionError> {
    match requested {
        0 => Ok(DEFAULT_PAGE_SIZE),
        size if size < 0 => Err(InteractionError::invalid("page_size", "must not be negative")),
        size => Ok(u64::try_from(size).unwrap_or(MAX_PAGE_SIZE).min(MAX_PAGE_SIZE)),
    }
}

/// Page tokens name the list they belong to, so one cannot be replayed against another.
fn encode_page_token(list: &str, (time, id): PageKey) -> String {
    URL_SAFE_NO_PAD.encode(format!("v1|{list}|{}|{id}", time.timestamp_micros()))
}

fn decode_page_token(token: &str, list: &str) -> Result<Option<PageKey>, InteractionError> {
    if token.is_empty() {
        return Ok(None);
    }
    let invalid = || InteractionError::invalid("page_token", "is not a token of this list");
    let bytes = URL_SAFE_NO_PAD.decode(token).map_err(|_| invalid())?;
    let text = String::from_utf8(bytes).map_err(|_| invalid())?;
    let parts: Vec<&str> = text.split('|').collect();
    let ["v1", found_list, micros, id] = parts.as_slice() else {
        return Err(invalid());
    };
    if *found_list != list {
        return Err(invalid());
    }
    let micros: i64 = micros.parse().map_err(|_| invalid())?;
    let time: DateTime<Utc> = Utc.timestamp_micros(micros).single().ok_or_else(invalid)?;
    let id = Uuid::parse_str(id).map_err(|_| invalid())?;
    Ok(Some((time, id)))
}

/// Splits a fetched page (one extra row asked for) into the page and the next token.
fn paginate<T>(mut rows: Vec<T>, limit: u64, list: &str, key: impl Fn(&T) -> PageKey) -> (Vec<T>, String) {
    let limit = usize::try_from(limit).unwrap_or(usize::MAX);
    if rows.len() > limit {
        rows.truncate(limit);
        let token = rows
            .last()
            .map(|last| encode_page_token(list, key(last)))
            .unwrap_or_default();
        (rows, token)
    } else {
        (rows, String::new())
    }
}

fn external_key(reference: &str) -> Option<String> {
    (!reference.is_empty()).then(|| reference.to_owned())
}

fn interaction_row(parent: Uuid, interaction: pb::Interaction) -> Result<NewRecord, InteractionError> {
    let now = domain::now();
    let (interaction, occurred) = domain::validate_interaction(interaction, now)?;
    Ok(NewRecord {
        id: domain::new_id(),
        kind: RecordKind::Interaction,
        origin_customer_id: parent,
        customer_id: parent,
        parent_id: None,
        external_key: external_key(&interaction.external_reference),
        occur_time: occurred,
        channel: interaction.channel,
        form: interaction.form,
        currency: None,
        amount_minor: None,
        body: interaction.encode_to_vec(),
        create_time: now,
    })
}

fn purchase_row(parent: Uuid, purchase: pb::Purchase) -> Result<NewRecord, InteractionError> {
    let now = domain::now();
    let valid = domain::validate_purchase(purchase, now)?;
    Ok(NewRecord {
        id: domain::new_id(),
        kind: RecordKind::Purchase,
        origin_customer_id: parent,
        customer_id: parent,
        parent_id: None,
        external_key: external_key(&valid.purchase.external_order_id),
        occur_time: valid.occurred,
        channel: valid.purchase.channel,
        form: 0,
        currency: Some(valid.amount.currency.clone()),
        amount_minor: Some(valid.amount.minor_units),
        body: valid.purchase.encode_to_vec(),
        create_time: now,
    })
}

fn required<T>(value: Option<T>, field: &str) -> Result<T, InteractionError> {
    value.ok_or_else(|| InteractionError::invalid(field, "is required"))
}

fn parent_customer(parent: &str) -> Result<Uuid, InteractionError> {
    let customer = domain::parse_customer_name(parent, "parent")?;
    record_customer(&customer);
    Ok(customer)
}

fn unexpected(what: &str) -> InteractionError {
    InteractionError::Corrupt(format!("a record rendered as something other than {what}"))
}

fn as_interaction(entry: pb::TimelineEntry) -> Result<pb::Interaction, InteractionError> {
    match entry.record {
        Some(pb::timeline_entry::Record::Interaction(value)) => Ok(value),
        _ => Err(unexpected("a touchpoint")),
    }
}

fn as_purchase(entry: pb::TimelineEntry) -> Result<pb::Purchase, InteractionError> {
    match entry.record {
        Some(pb::timeline_entry::Record::Purchase(value)) => Ok(value),
        _ => Err(unexpected("a purchase")),
    }
}

fn as_refund(entry: pb::TimelineEntry) -> Result<pb::Refund, InteractionError> {
    match entry.record {
        Some(pb::timeline_entry::Record::Refund(value)) => Ok(value),
        _ => Err(unexpected("a refund")),
    }
}

fn as_feedback(entry: pb::TimelineEntry) -> Result<pb::Feedback, InteractionError> {
    match entry.record {
        Some(pb::timeline_entry::Record::Feedback(value)) => Ok(value),
        _ => Err(unexpected("feedback")),
    }
}

fn record_key(record: &StoredRecord) -> PageKey {
    (record.occur_time, record.id)
}

fn render_all<T>(
    records: Vec<StoredRecord>,
    pick: impl Fn(pb::TimelineEntry) -> Result<T, InteractionError>,
) -> Result<Vec<T>, InteractionError> {
    records
        .iter()
        .map(|record| render(record).and_then(&pick))
        .collect()
}

fn ingest_result(row: i64, outcome: IngestOutcome) -> pb::IngestRowResult {
    use pb::ingest_row_result::Outcome;
    let (name, outcome, error) = match outcome {
        IngestOutcome::Created(name) => (name, Outcome::Created, String::new()),
        IngestOutcome::Existing(name) => (name, Outcome::Existing, String::new()),
        IngestOutcome::Failed(error) => (String::new(), Outcome::Failed, error),
    };
    pb::IngestRowResult {
        row,
        name,
        outcome: outcome.into(),
        error,
    }
}

/// Tallies of an ingest stream.
#[derive(Default)]
struct IngestTally {
    created: i64,
    existing: i64,
    failed: i64,
    results: Vec<pb::IngestRowResult>,
}

impl IngestTally {
    fn add(&mut self, outcomes: Vec<IngestOutcome>) {
        for outcome in outcomes {
            match &outcome {
                IngestOutcome::Created(_) => self.created += 1,
                IngestOutcome::Existing(_) => self.existing += 1,
                IngestOutcome::Failed(_) => self.failed += 1,
            }
            let row = i64::try_from(self.results.len()).unwrap_or(i64::MAX);
            self.results.push(ingest_result(row, outcome));
        }
    }
}

impl InteractionGrpc {
    /// Runs an ingest stream: each message is one batch, written in one transaction, in order.
    /// The next message is read and validated while the previous one is written, so decoding
    /// and validation overlap the database's work.
    async fn ingest<M: Send + 'static>(
        &self,
        tenant: &TenantId,
        mut stream: Streaming<M>,
        rows_of: impl Fn(M) -> Vec<IngestRow>,
    ) -> Result<IngestTally, Status> {
        let (batches, mut to_write) = tokio::sync::mpsc::channel::<Vec<IngestRow>>(1);
        let read = async move {
            while let Some(message) = stream.next().await {
                let rows = rows_of(message?);
                if rows.len() > MAX_INGEST_BATCH {
                    return Err(Status::from(InteractionError::invalid(
                        "rows",
                        format!("a message holds at most {MAX_INGEST_BATCH} rows"),
                    )));
                }
                if batches.send(rows).await.is_err() {
                    break;
                }
            }
            Ok(())
        };
        let write = async {
            let mut tally = IngestTally::default();
            while let Some(rows) = to_write.recv().await {
                tally.add(self.service.ingest(tenant, rows).await?);
            }
            Ok::<_, Status>(tally)
        };
        let ((), tally) = tokio::try_join!(read, write)?;
        Ok(tally)
    }

    /// One page of a customer's records (of one kind, or all for the timeline), newest first,
    /// and the next page's token.
    async fn record_page(
        &self,
        tenant: &TenantId,
        parent: &str,
        kind: Option<RecordKind>,
        page_size: i32,
        page_token: &str,
    ) -> Result<(Vec<StoredRecord>, String), InteractionError> {
        let customer = parent_customer(parent)?;
        let limit = self::page_size(page_size)?;
        let list = format!("{}:{customer}", kind.map_or("timeline", RecordKind::collection));
        let after = decode_page_token(page_token, &list)?;
        let rows = self
            .service
            .list_records(tenant, customer, kind, after, limit + 1)
            .await?;
        Ok(paginate(rows, limit, &list, record_key))
    }

    async fn purchase_by_name(
        &self,
        tenant: &TenantId,
        name: &str,
        field: &str,
    ) -> Result<StoredRecord, InteractionError> {
        let (customer, id) = domain::parse_record_name(name, "purchases", field)?;
        self.service
            .get_record(tenant, RecordKind::Purchase, customer, id, None, name)
            .await
    }
}

type EventStream = Pin<Box<dyn Stream<Item = Result<pb::InteractionEvent, Status>> + Send>>;

#[tonic::async_trait]
impl InteractionService for InteractionGrpc {
    async fn create_interaction(
        &self,
        request: Request<pb::CreateInteractionRequest>,
    ) -> Result<Response<pb::Interaction>, Status> {
        let tenant = TenantId::of(&request)?;
        let message = request.into_inner();
        let key = request_key(
            "CreateInteraction",
            &message.request_id,
            &pb::CreateInteractionRequest {
                request_id: String::new(),
                ..message.clone()
            },
        )?;
        let parent = parent_customer(&message.parent)?;
        let interaction = required(message.interaction, "interaction")?;
        let row = interaction_row(parent, interaction).map_err(|error| error.within("interaction"))?;
        let entry = self.service.create_record(&tenant, row, key, None).await?;
        Ok(Response::new(as_interaction(entry)?))
    }

    async fn get_interaction(
        &self,
        request: Request<pb::GetInteractionRequest>,
    ) -> Result<Response<pb::Interaction>, Status> {
        let tenant = TenantId::of(&request)?;
        let name = &request.get_ref().name;
        let (customer, id) = domain::parse_record_name(name, "interactions", "name")?;
        let record = self
            .service
            .get_record(&tenant, RecordKind::Interaction, customer, id, None, name)
            .await?;
        Ok(Response::new(as_interaction(render(&record)?)?))
    }

    async fn list_interactions(
        &self,
        request: Request<pb::ListInteractionsRequest>,
    ) -> Result<Response<pb::ListInteractionsResponse>, Status> {
        let tenant = TenantId::of(&request)?;
        let message = request.into_inner();
        let (rows, next_page_token) = self
            .record_page(
                &tenant,
                &message.parent,
                Some(RecordKind::Interaction),
                message.page_size,
                &message.page_token,
            )
            .await?;
        Ok(Response::new(pb::ListInteractionsResponse {
            interactions: render_all(rows, as_interaction)?,
            next_page_token,
        }))
    }

    async fn create_purchase(
        &self,
        request: Request<pb::CreatePurchaseRequest>,
    ) -> Result<Response<pb::Purchase>, Status> {
        let tenant = TenantId::of(&request)?;
        let message = request.into_inner();
        let key = request_key(
            "CreatePurchase",
            &message.request_id,
            &pb::CreatePurchaseRequest {
                request_id: String::new(),
                ..message.clone()
            },
        )?;
        let parent = parent_customer(&message.parent)?;
        let purchase = required(message.purchase, "purchase")?;
        let row = purchase_row(parent, purchase).map_err(|error| error.within("purchase"))?;
        let entry = self.service.create_record(&tenant, row, key, None).await?;
        Ok(Response::new(as_purchase(entry)?))
    }

    async fn get_purchase(
        &self,
        request: Request<pb::GetPurchaseRequest>,
    ) -> Result<Response<pb::Purchase>, Status> {
        let tenant = TenantId::of(&request)?;
        let record = self
            .purchase_by_name(&tenant, &request.get_ref().name, "name")
            .await?;
        Ok(Response::new(as_purchase(render(&record)?)?))
    }

    async fn list_purchases(
        &self,
        request: Request<pb::ListPurchasesRequest>,
    ) -> Result<Response<pb::ListPurchasesResponse>, Status> {
        let tenant = TenantId::of(&request)?;
        let message = request.into_inner();
        let (rows, next_page_token) = self
            .record_page(
                &tenant,
                &message.parent,
                Some(RecordKind::Purchase),
                message.page_size,
                &message.page_token,
            )
            .await?;
        Ok(Response::new(pb::ListPurchasesResponse {
            purchases: render_all(rows, as_purchase)?,
            next_page_token,
        }))
    }

    async fn create_refund(
        &self,
        request: Request<pb::CreateRefundRequest>,
    ) -> Result<Response<pb::Refund>, Status> {
        let tenant = TenantId::of(&request)?;
        let message = request.into_inner();
        let key = request_key(
            "CreateRefund",
            &message.request_id,
            &pb::CreateRefundRequest {
                request_id: String::new(),
                ..message.clone()
            },
        )?;
        let now = domain::now();
        let refund = required(message.refund, "refund")?;
        let (refund, occurred, amount) =
            domain::validate_refund(refund, now).map_err(|error| error.within("refund"))?;
        let purchase = self.purchase_by_name(&tenant, &message.parent, "parent").await?;
        record_customer(&purchase.customer_id);
        if purchase.currency.as_deref() != Some(amount.currency.as_str()) {
            return Err(InteractionError::invalid(
                "refund.amount.currency_code",
                format!(
                    "must be the purchase's currency ({})",
                    purchase.currency.unwrap_or_default()
                ),
            )
            .into());
        }
        let row = NewRecord {
            id: domain::new_id(),
            kind: RecordKind::Refund,
            origin_customer_id: purchase.origin_customer_id,
            customer_id: purchase.customer_id,
            parent_id: Some(purchase.id),
            external_key: external_key(&refund.external_refund_id),
            occur_time: occurred,
            channel: purchase.channel,
            form: 0,
            currency: Some(amount.currency.clone()),
            amount_minor: Some(amount.minor_units),
            body: refund.encode_to_vec(),
            create_time: now,
        };
        let guard = RefundGuard {
            purchase_id: purchase.id,
            amount_minor: amount.minor_units,
        };
        let entry = self.service.create_record(&tenant, row, key, Some(guard)).await?;
        Ok(Response::new(as_refund(entry)?))
    }

    async fn get_refund(
        &self,
        request: Request<pb::GetRefundRequest>,
    ) -> Result<Response<pb::Refund>, Status> {
        let tenant = TenantId::of(&request)?;
        let name = &request.get_ref().name;
        let (customer, purchase, id) = domain::parse_refund_name(name, "name")?;
        let record = self
            .service
            .get_record(&tenant, RecordKind::Refund, customer, id, Some(purchase), name)
            .await?;
        Ok(Response::new(as_refund(render(&record)?)?))
    }

    async fn list_refunds(
        &self,
        request: Request<pb::ListRefundsRequest>,
    ) -> Result<Response<pb::ListRefundsResponse>, Status> {
        let tenant = TenantId::of(&request)?;
        let message = request.into_inner();
        let purchase = self.purchase_by_name(&tenant, &message.parent, "parent").await?;
        let limit = page_size(message.page_size)?;
        let list = format!("refunds:{}", purchase.id);
        let after = decode_page_token(&message.page_token, &list)?;
        let rows = self
            .service
            .list_refunds(&tenant, &purchase, after, limit + 1)
            .await?;
        let (rows, next_page_token) = paginate(rows, limit, &list, record_key);
        Ok(Response::new(pb::ListRefundsResponse {
            refunds: render_all(rows, as_refund)?,
            next_page_token,
        }))
    }

    async fn create_feedback(
        &self,
        request: Request<pb::CreateFeedbackRequest>,
    ) -> Result<Response<pb::Feedback>, Status> {
        let tenant = TenantId::of(&request)?;
        let message = request.into_inner();
        let key = request_key(
            "CreateFeedback",
            &message.request_id,
            &pb::CreateFeedbackRequest {
                request_id: String::new(),
                ..message.clone()
            },
        )?;
        let parent = parent_customer(&message.parent)?;
        let now = domain::now();
        let feedback = required(message.feedback, "feedback")?;
        let (feedback, occurred) =
            domain::validate_feedback(feedback, now).map_err(|error| error.within("feedback"))?;
        if !feedback.interaction.is_empty() {
            let current = self.service.existing_customer(&tenant, parent).await?;
            self.service
                .check_linked_interaction(&tenant, current, &feedback.interaction, "feedback.interaction")
                .await?;
        }
        let row = NewRecord {
            id: domain::new_id(),
            kind: RecordKind::Feedback,
            origin_customer_id: parent,
            customer_id: parent,
            parent_id: None,
            external_key: None,
            occur_time: occurred,
            channel: feedback.channel,
            form: 0,
            currency: None,
            amount_minor: None,
            body: feedback.encode_to_vec(),
            create_time: now,
        };
        let entry = self.service.create_record(&tenant, row, key, None).await?;
        Ok(Response::new(as_feedback(entry)?))
    }

    async fn get_feedback(
        &self,
        request: Request<pb::GetFeedbackRequest>,
    ) -> Result<Response<pb::Feedback>, Status> {
        let tenant = TenantId::of(&request)?;
        let name = &request.get_ref().name;
        let (customer, id) = domain::parse_record_name(name, "feedback", "name")?;
        let record = self
            .service
            .get_record(&tenant, RecordKind::Feedback, customer, id, None, name)
            .await?;
        Ok(Response::new(as_feedback(render(&record)?)?))
    }

    async fn list_feedback(
        &self,
        request: Request<pb::ListFeedbackRequest>,
    ) -> Result<Response<pb::ListFeedbackResponse>, Status> {
        let tenant = TenantId::of(&request)?;
        let message = request.into_inner();
        let (rows, next_page_token) = self
            .record_page(
                &tenant,
                &message.parent,
                Some(RecordKind::Feedback),
                message.page_size,
                &message.page_token,
            )
            .await?;
        Ok(Response::new(pb::ListFeedbackResponse {
            feedback: render_all(rows, as_feedback)?,
            next_page_token,
        }))
    }

    async fn create_callback(
        &self,
        request: Request<pb::CreateCallbackRequest>,
    ) -> Result<Response<pb::Callback>, Status> {
        let tenant = TenantId::of(&request)?;
        let message = request.into_inner();
        let key = request_key(
            "CreateCallback",
            &message.request_id,
            &pb::CreateCallbackRequest {
                request_id: String::new(),
                ..message.clone()
            },
        )?;
        let parent = parent_customer(&message.parent)?;
        let callback = required(message.callback, "callback")?;
        let (callback, due) =
            domain::validate_callback(callback, domain::now()).map_err(|error| error.within("callback"))?;
        let created = self
            .service
            .create_callback(&tenant, parent, callback, due, key)
            .await?;
        Ok(Response::new(created))
    }

    async fn get_callback(
        &self,
        request: Request<pb::GetCallbackRequest>,
    ) -> Result<Response<pb::Callback>, Status> {
        let tenant = TenantId::of(&request)?;
        let name = &request.get_ref().name;
        let (customer, id) = domain::parse_record_name(name, "callbacks", "name")?;
        let stored = self.service.get_callback(&tenant, customer, id, name).await?;
        Ok(Response::new(render_callback(&stored, domain::now())?))
    }

    async fn list_callbacks(
        &self,
        request: Request<pb::ListCallbacksRequest>,
    ) -> Result<Response<pb::ListCallbacksResponse>, Status> {
        let tenant = TenantId::of(&request)?;
        let message = request.into_inner();
        let customer = parent_customer(&message.parent)?;
        let limit = page_size(message.page_size)?;
        let list = format!("callbacks:{customer}");
        let after = decode_page_token(&message.page_token, &list)?;
        let rows = self
            .service
            .list_callbacks(&tenant, customer, after, limit + 1)
            .await?;
        let (rows, next_page_token) = paginate(rows, limit, &list, |(stored, due)| (*due, stored.id));
        let now = domain::now();
        Ok(Response::new(pb::ListCallbacksResponse {
            callbacks: rows
                .iter()
                .map(|(stored, _)| render_callback(stored, now))
                .collect::<Result<_, _>>()?,
            next_page_token,
        }))
    }

    async fn list_due_callbacks(
        &self,
        request: Request<pb::ListDueCallbacksRequest>,
    ) -> Result<Response<pb::ListDueCallbacksResponse>, Status> {
        let tenant = TenantId::of(&request)?;
        let message = request.into_inner();
        let assignee = message.assignee.trim();
        if assignee.is_empty() {
            return Err(InteractionError::invalid("assignee", "is required").into());
        }
        let now = domain::now();
        let due_before = match &message.due_before {
            Some(time) => domain::time_from_proto(time, "due_before")?,
            None => now,
        };
        let limit = page_size(message.page_size)?;
        let list = format!("due:{assignee}:{}", due_before.timestamp_micros());
        let after = decode_page_token(&message.page_token, &list)?;
        let rows = self
            .service
            .list_due_callbacks(&tenant, assignee, due_before, after, limit + 1)
            .await?;
        let (rows, next_page_token) = paginate(rows, limit, &list, |(stored, due)| (*due, stored.id));
        Ok(Response::new(pb::ListDueCallbacksResponse {
            callbacks: rows
                .iter()
                .map(|(stored, _)| render_callback(stored, now))
                .collect::<Result<_, _>>()?,
            next_page_token,
        }))
    }

    async fn complete_callback(
        &self,
        request: Request<pb::CompleteCallbackRequest>,
    ) -> Result<Response<pb::Callback>, Status> {
        let tenant = TenantId::of(&request)?;
        let message = request.into_inner();
        let key = request_key(
            "CompleteCallback",
            &message.request_id,
            &pb::CompleteCallbackRequest {
                request_id: String::new(),
                ..message.clone()
            },
        )?;
        let (customer, id) = domain::parse_record_name(&message.name, "callbacks", "name")?;
        domain::validate_outcome(&message.outcome)?;
        let closed = self
            .service
            .close_callback(
                &tenant,
                customer,
                id,
                &message.name,
                Some((message.outcome.clone(), message.interaction.clone())),
                &message.etag,
                key,
            )
            .await?;
        Ok(Response::new(closed))
    }

    async fn cancel_callback(
        &self,
        request: Request<pb::CancelCallbackRequest>,
    ) -> Result<Response<pb::Callback>, Status> {
        let tenant = TenantId::of(&request)?;
        let message = request.into_inner();
        let key = request_key(
            "CancelCallback",
            &message.request_id,
            &pb::CancelCallbackRequest {
                request_id: String::new(),
                ..message.clone()
            },
        )?;
        let (customer, id) = domain::parse_record_name(&message.name, "callbacks", "name")?;
        let closed = self
            .service
            .close_callback(&tenant, customer, id, &message.name, None, &message.etag, key)
            .await?;
        Ok(Response::new(closed))
    }

    async fn list_customer_timeline(
        &self,
        request: Request<pb::ListCustomerTimelineRequest>,
    ) -> Result<Response<pb::ListCustomerTimelineResponse>, Status> {
        let tenant = TenantId::of(&request)?;
        let message = request.into_inner();
        let (rows, next_page_token) = self
            .record_page(
                &tenant,
                &message.parent,
                None,
                message.page_size,
                &message.page_token,
            )
            .await?;
        Ok(Response::new(pb::ListCustomerTimelineResponse {
            entries: rows.iter().map(render).collect::<Result<_, _>>()?,
            next_page_token,
        }))
    }

    async fn get_touchpoint_stats(
        &self,
        request: Request<pb::GetTouchpointStatsRequest>,
    ) -> Result<Response<pb::TouchpointStats>, Status> {
        let tenant = TenantId::of(&request)?;
        let customer = domain::parse_stats_name(&request.get_ref().name)?;
        record_customer(&customer);
        let counts = self.service.touchpoint_counts(&tenant, customer).await?;
        Ok(Response::new(pb::TouchpointStats {
            name: format!("{}/touchpointStats", domain::customer_name(customer)),
            total_count: counts.by_channel.iter().map(|(_, count)| count).sum(),
            by_channel: counts
                .by_channel
                .iter()
                .map(|(channel, count)| pb::touchpoint_stats::ChannelCount {
                    channel: *channel,
                    count: *count,
                })
                .collect(),
            by_form: counts
                .by_form
                .iter()
                .map(|(form, count)| pb::touchpoint_stats::FormCount {
                    form: *form,
                    count: *count,
                })
                .collect(),
            last_contact_time: counts.last.map(|(time, _)| domain::timestamp(time)),
            last_contact_channel: counts.last.map_or(0, |(_, channel)| channel),
        }))
    }

    async fn ingest_interactions(
        &self,
        request: Request<Streaming<pb::IngestInteractionsRequest>>,
    ) -> Result<Response<pb::IngestInteractionsResponse>, Status> {
        let tenant = TenantId::of(&request)?;
        let tally = self
            .ingest(&tenant, request.into_inner(), |message| {
                message
                    .rows
                    .into_iter()
                    .map(|row| {
                        let parent = domain::parse_customer_name(&row.parent, "parent")?;
                        let interaction = required(row.interaction, "interaction")?;
                        if interaction.external_reference.is_empty() {
                            return Err(InteractionError::invalid(
                                "interaction.external_reference",
                                "is required when ingesting",
                            ));
                        }
                        interaction_row(parent, interaction).map_err(|error| error.within("interaction"))
                    })
                    .collect()
            })
            .await?;
        Ok(Response::new(pb::IngestInteractionsResponse {
            created_count: tally.created,
            existing_count: tally.existing,
            failed_count: tally.failed,
            results: tally.results,
        }))
    }

    async fn ingest_purchases(
        &self,
        request: Request<Streaming<pb::IngestPurchasesRequest>>,
    ) -> Result<Response<pb::IngestPurchasesResponse>, Status> {
        let tenant = TenantId::of(&request)?;
        let tally = self
            .ingest(&tenant, request.into_inner(), |message| {
                message
                    .rows
                    .into_iter()
                    .map(|row| {
                        let parent = domain::parse_customer_name(&row.parent, "parent")?;
                        let purchase = required(row.purchase, "purchase")?;
                        if purchase.external_order_id.is_empty() {
                            return Err(InteractionError::invalid(
                                "purchase.external_order_id",
                                "is required when ingesting",
                            ));
                        }
                        purchase_row(parent, purchase).map_err(|error| error.within("purchase"))
                    })
                    .collect()
            })
            .await?;
        Ok(Response::new(pb::IngestPurchasesResponse {
            created_count: tally.created,
            existing_count: tally.existing,
            failed_count: tally.failed,
            results: tally.results,
        }))
    }

    type SubscribeInteractionEventsStream = EventStream;

    async fn subscribe_interaction_events(
        &self,
        request: Request<pb::SubscribeInteractionEventsRequest>,
    ) -> Result<Response<Self::SubscribeInteractionEventsStream>, Status> {
        let tenant = TenantId::of(&request)?;
        let message = request.into_inner();
        let after = crm_db::outbox::parse_cursor(&message.cursor)
            .ok_or_else(|| InteractionError::invalid("cursor", "is not a cursor of this stream"))?;
        let mut types = Vec::new();
        for (index, value) in message.types.iter().enumerate() {
            match pb::interaction_event::Type::try_from(*value) {
                Ok(pb::interaction_event::Type::Unspecified) | Err(_) => {
                    return Err(InteractionError::invalid(
                        format!("types[{index}]"),
                        format!("{value} is not an event type"),
                    )
                    .into());
                }
                Ok(kind) => types.push(kind.as_str_name().to_owned()),
            }
        }
        let events = self
            .service
            .outbox()
            .subscribe(Some(tenant.as_str().to_owned()), after, types, SUBSCRIBE_POLL)
            .take_until(crm_runtime::server::draining());
        let stream = events.map(|stored| {
            let stored = stored.map_err(|error| Status::from(crm_db::api_error(error)))?;
            let mut event = pb::InteractionEvent::decode(stored.payload.as_slice()).map_err(|error| {
                Status::from(crm_error::ApiError::internal(format!(
                    "undecodable event: {error}"
                )))
            })?;
            event.cursor = stored.position.to_string();
            event.event_time = Some(domain::timestamp(stored.create_time));
            Ok(event)
        });
        Ok(Response::new(Box::pin(stream)))
    }
}

/// The internal all-tenant feed of this service's events, for the suite's own consumers.
pub struct InteractionEventFeedGrpc {
    outbox: Outbox,
}

#[tonic::async_trait]
impl InteractionEventFeedService for InteractionEventFeedGrpc {
    type StreamInteractionEventsStream = Pin<
        Box<dyn Stream<Item = Result<internal::StreamInteractionEventsResponse, Status>> + Send + 'static>,
    >;

    async fn stream_interaction_events(
        &self,
        request: Request<internal::StreamInteractionEventsRequest>,
    ) -> Result<Response<Self::StreamInteractionEventsStream>, Status> {
        let request = request.into_inner();
        let events = crm_runtime::internal::feed_stream(
            &self.outbox,
            &request.cursor,
            request.event_types,
            SUBSCRIBE_POLL,
        )?;
        Ok(Response::new(Box::pin(events.map(|event| {
            event.map(|event| internal::StreamInteractionEventsResponse { event: Some(event) })
        }))))
    }
}
