//! Stored rows -> proto resources (names derive from where a row is stored), and the events
//! announcing them.

use chrono::{DateTime, Utc};
use crm_db::outbox::NewEvent;
use crm_proto::interaction_v1 as pb;
use crm_runtime::TenantId;
use prost::Message;
use uuid::Uuid;

use crate::domain::{self, RecordKind};
use crate::error::InteractionError;
use crate::store::{NewRecord, StoredCallback, StoredRecord};

fn corrupt(error: prost::DecodeError) -> InteractionError {
    InteractionError::Corrupt(format!("undecodable record: {error}"))
}

/// What a rendered record needs besides its body.
struct RecordPlace<'a> {
    kind: RecordKind,
    id: Uuid,
    customer: Uuid,
    parent: Option<Uuid>,
    currency: Option<&'a str>,
    refunded_minor: i64,
}

fn render_body(place: &RecordPlace<'_>, body: &[u8]) -> Result<pb::timeline_entry::Record, InteractionError> {
    use pb::timeline_entry::Record;
    Ok(match place.kind {
        RecordKind::Interaction => {
            let mut interaction = pb::Interaction::decode(body).map_err(corrupt)?;
            interaction.name = domain::record_name(place.kind, place.customer, place.id);
            Record::Interaction(interaction)
        }
        RecordKind::Purchase => {
            let mut purchase = pb::Purchase::decode(body).map_err(corrupt)?;
            purchase.name = domain::record_name(place.kind, place.customer, place.id);
            purchase.refunded_amount = place
                .currency
                .map(|currency| domain::money_to_proto(currency, place.refunded_minor));
            Record::Purchase(purchase)
        }
        RecordKind::Refund => {
            let mut refund = pb::Refund::decode(body).map_err(corrupt)?;
            let purchase = place
                .parent
                .ok_or_else(|| InteractionError::Corrupt("a refund without its purchase".into()))?;
            refund.name = domain::refund_name(place.customer, purchase, place.id);
            Record::Refund(refund)
        }
        RecordKind::Feedback => {
            let mut feedback = pb::Feedback::decode(body).map_err(corrupt)?;
            feedback.name = domain::record_name(place.kind, place.customer, place.id);
            Record::Feedback(feedback)
        }
    })
}

/// A stored record as its resource, named under its current customer.
pub fn render(record: &StoredRecord) -> Result<pb::TimelineEntry, InteractionError> {
    let place = RecordPlace {
        kind: record.kind,
        id: record.id,
        customer: record.customer_id,
        parent: record.parent_id,
        currency: record.currency.as_deref(),
        refunded_minor: record.refunded_minor,
    };
    Ok(pb::TimelineEntry {
        occur_time: Some(domain::timestamp(record.occur_time)),
        record: Some(render_body(&place, &record.body)?),
    })
}

/// A record just written (nothing refunded yet), named under `customer`.
pub fn render_new(row: &NewRecord, customer: Uuid) -> Result<pb::TimelineEntry, InteractionError> {
    let place = RecordPlace {
        kind: row.kind,
        id: row.id,
        customer,
        parent: row.parent_id,
        currency: row.currency.as_deref(),
        refunded_minor: 0,
    };
    Ok(pb::TimelineEntry {
        occur_time: Some(domain::timestamp(row.occur_time)),
        record: Some(render_body(&place, &row.body)?),
    })
}

/// The body of a record without personal free text (erasure, and what events carry).
pub fn scrub_record_body(kind: RecordKind, body: &[u8]) -> Result<Vec<u8>, InteractionError> {
    Ok(match kind {
        RecordKind::Interaction => {
            let mut interaction = pb::Interaction::decode(body).map_err(corrupt)?;
            domain::scrub_interaction(&mut interaction);
            interaction.encode_to_vec()
        }
        RecordKind::Purchase => {
            let mut purchase = pb::Purchase::decode(body).map_err(corrupt)?;
            domain::scrub_purchase(&mut purchase);
            purchase.encode_to_vec()
        }
        RecordKind::Refund => {
            let mut refund = pb::Refund::decode(body).map_err(corrupt)?;
            domain::scrub_refund(&mut refund);
            refund.encode_to_vec()
        }
        RecordKind::Feedback => {
            let mut feedback = pb::Feedback::decode(body).map_err(corrupt)?;
            domain::scrub_feedback(&mut feedback);
            feedback.encode_to_vec()
        }
    })
}

pub fn scrub_callback_body(body: &[u8]) -> Result<Vec<u8>, InteractionError> {
    let mut callback = pb::Callback::decode(body).map_err(corrupt)?;
    domain::scrub_callback(&mut callback);
    Ok(callback.encode_to_vec())
}

fn event_type(kind: RecordKind) -> pb::interaction_event::Type {
    match kind {
        RecordKind::Interaction => pb::interaction_event::Type::InteractionRecorded,
        RecordKind::Purchase => pb::interaction_event::Type::PurchaseRecorded,
        RecordKind::Refund => pb::interaction_event::Type::RefundRecorded,
        RecordKind::Feedback => pb::interaction_event::Type::FeedbackRecorded,
    }
}

fn new_event(
    tenant: &TenantId,
    kind: pb::interaction_event::Type,
    customer: Uuid,
    origin_customer: Uuid,
    subject: String,
    record: pb::interaction_event::Record,
) -> NewEvent {
    let payload = pb::InteractionEvent {
        cursor: String::new(),
        r#type: kind.into(),
        customer: domain::customer_name(customer),
        event_time: None,
        record: Some(record),
        origin_customer: domain::customer_name(origin_customer),
    };
    NewEvent {
        tenant_id: tenant.as_str().to_owned(),
        event_type: kind.as_str_name().to_owned(),
        subject,
        payload: payload.encode_to_vec(),
    }
}

/// The event announcing a record written under its (resolved) customer, without free text.
pub fn record_event(tenant: &TenantId, row: &NewRecord) -> Result<NewEvent, InteractionError> {
    use pb::interaction_event::Record as EventRecord;
    use pb::timeline_entry::Record;
    let scrubbed = NewRecord {
        body: scrub_record_body(row.kind, &row.body)?,
        ..row.clone()
    };
    let entry = render_new(&scrubbed, row.customer_id)?;
    let (subject, record) = match entry.record {
        Some(Record::Interaction(value)) => (value.name.clone(), EventRecord::Interaction(value)),
        Some(Record::Purchase(value)) => (value.name.clone(), EventRecord::Purchase(value)),
        Some(Record::Refund(value)) => (value.name.clone(), EventRecord::Refund(value)),
        Some(Record::Feedback(value)) => (value.name.clone(), EventRecord::Feedback(value)),
        None => return Err(InteractionError::Corrupt("a record without content".into())),
    };
    Ok(new_event(
        tenant,
        event_type(row.kind),
        row.customer_id,
        row.origin_customer_id,
        subject,
        record,
    ))
}

/// A stored callback as its resource, `now` deciding whether it is overdue.
pub fn render_callback(
    stored: &StoredCallback,
    now: DateTime<Utc>,
) -> Result<pb::Callback, InteractionError> {
    let mut callback = pb::Callback::decode(stored.body.as_slice()).map_err(corrupt)?;
    finish_callback(&mut callback, stored.customer_id, stored.id, stored.revision, now);
    Ok(callback)
}

/// Fills a callback's derived fields: name, etag, overdue.
pub fn finish_callback(
    callback: &mut pb::Callback,
    customer: Uuid,
    id: Uuid,
    revision: i64,
    now: DateTime<Utc>,
) {
    callback.name = domain::callback_name(customer, id);
    callback.etag = domain::etag(revision);
    let due = callback
        .due_time
        .as_ref()
        .and_then(|due| domain::time_from_proto(due, "due_time").ok());
    callback.overdue =
        callback.state == i32::from(pb::callback::State::Open) && due.is_some_and(|due| due < now);
}

pub fn callback_event(
    tenant: &TenantId,
    kind: pb::interaction_event::Type,
    customer: Uuid,
    callback: &pb::Callback,
) -> NewEvent {
    let mut scrubbed = callback.clone();
    domain::scrub_callback(&mut scrubbed);
    scrubbed.overdue = false;
    // Callbacks follow their customer; consumers have no use for where one was first filed.
    new_event(
        tenant,
        kind,
        customer,
        customer,
        callback.name.clone(),
        pb::interaction_event::Record::Callback(scrubbed),
    )
}
