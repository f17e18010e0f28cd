//! Idempotency records for `request_id` (AIP-155).
//!
//! The record is written in the same transaction as the change it guards, and written first:
//! `INSERT … ON CONFLICT DO NOTHING` takes the write lock at once (no read-to-write upgrade on
//! SQLite) and, on PostgreSQL, makes a concurrent duplicate wait for the first to commit and
//! then see its record. A replay returns the stored response; the same id with another
//! payload is refused.

mod m20261122_000001_create_idempotency_records;

use std::time::Duration;

use chrono::Utc;
use sea_orm::entity::prelude::*;
use sea_orm::sea_query::OnConflict;
use sea_orm::{ConnectionTrait, QueryFilter, Set};

pub use m20261122_000001_create_idempotency_records::Migration;

/// How long records are kept at the least (DESIGN: at least 24 h).
pub const MIN_RETENTION: Duration = Duration::from_secs(24 * 60 * 60);

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "idempotency_records")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub tenant_id: String,
    #[sea_orm(primary_key, auto_increment = false)]
    pub method: String,
    #[sea_orm(primary_key, auto_increment = false)]
    pub request_id: String,
    /// SHA-256 of the request with `request_id` cleared, hex.
    pub fingerprint: String,
    /// The encoded response message returned by the first call.
    pub response: Vec<u8>,
    /// The resource the response is about (`customers/{id}`), so erasing a person can drop
    /// responses holding their data; empty when none.
    pub subject: String,
    pub create_time: ChronoDateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}

/// What identifies a mutating request for idempotency: its method, its `request_id` and the
/// fingerprint of its payload. Every service builds it the same way ([`RequestKey::parse`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestKey {
    pub method: &'static str,
    pub request_id: String,
    pub fingerprint: String,
}

/// A `request_id` that is not 1 to 128 printable ASCII characters.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("must be 1 to 128 printable ASCII characters")]
pub struct InvalidRequestId;

impl RequestKey {
    /// The key of a request, or `None` when it has no `request_id` (it is then not
    /// idempotent). `encoded_without_request_id` is the request encoded with `request_id`
    /// cleared, so a retry matches and another payload under the same id does not.
    pub fn parse(
        method: &'static str,
        request_id: &str,
        encoded_without_request_id: &[u8],
    ) -> Result<Option<Self>, InvalidRequestId> {
        if request_id.is_empty() {
            return Ok(None);
        }
        if request_id.len() > 128 || !request_id.bytes().all(|byte| byte.is_ascii_graphic()) {
            return Err(InvalidRequestId);
        }
        Ok(Some(Self {
            method,
            request_id: request_id.to_owned(),
            fingerprint: fingerprint(encoded_without_request_id),
        }))
    }

    /// The claim that stores `response` (about `subject`) under this key.
    pub fn claim(&self, response: Vec<u8>, subject: String) -> IdempotencyClaim {
        IdempotencyClaim {
            method: self.method,
            request_id: self.request_id.clone(),
            fingerprint: self.fingerprint.clone(),
            response,
            subject,
        }
    }
}

/// The claim a mutating request makes before applying its change.
#[derive(Debug, Clone)]
pub struct IdempotencyClaim {
    pub method: &'static str,
    pub request_id: String,
    pub fingerprint: String,
    /// The response to store: services compute ids and times before writing, so the response
    /// is known before the transaction commits.
    pub response: Vec<u8>,
    /// The resource the response describes, e.g. `customers/{id}`; empty when none.
    pub subject: String,
}

/// What an earlier request with the same id left.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredResponse {
    pub fingerprint: String,
    pub response: Vec<u8>,
}

/// Tries to claim the request id inside `txn`. `Ok(None)`: claimed, go on with the change.
/// `Ok(Some(stored))`: an earlier request used the id (the caller rolls back and replays or
/// refuses).
pub async fn claim<C: ConnectionTrait>(
    txn: &C,
    tenant_id: &str,
    claim: &IdempotencyClaim,
) -> Result<Option<StoredResponse>, DbErr> {
    let record = ActiveModel {
        tenant_id: Set(tenant_id.to_owned()),
        method: Set(claim.method.to_owned()),
        request_id: Set(claim.request_id.clone()),
        fingerprint: Set(claim.fingerprint.clone()),
        response: Set(claim.response.clone()),
        subject: Set(claim.subject.clone()),
        create_time: Set(Utc::now()),
    };
    let inserted = Entity::insert(record)
        .on_conflict(
            OnConflict::columns([Column::TenantId, Column::Method, Column::RequestId])
                .do_nothing()
                .to_owned(),
        )
        .exec_without_returning(txn)
        .await?;
    if inserted == 1 {
        return Ok(None);
    }
    let existing = Entity::find()
        .filter(Column::TenantId.eq(tenant_id))
        .filter(Column::Method.eq(claim.method))
        .filter(Column::RequestId.eq(claim.request_id.as_str()))
        .one(txn)
        .await?
        .ok_or_else(|| DbErr::RecordNotFound("idempotency record vanished after a conflict".into()))?;
    Ok(Some(StoredResponse {
        fingerprint: existing.fingerprint,
        response: existing.response,
    }))
}

/// Deletes the stored responses about `subjects` (erasure), except those of `keep_method`
/// (whose responses hold no personal data and still guard their request ids).
pub async fn forget_subjects<C: ConnectionTrait>(
    db: &C,
    tenant_id: &str,
    subjects: &[String],
    keep_method: &str,
) -> Result<u64, DbErr> {
    if subjects.is_empty() {
        return Ok(0);
    }
    let result = Entity::delete_many()
        .filter(Column::TenantId.eq(tenant_id))
        .filter(Column::Subject.is_in(subjects.to_vec()))
        .filter(Column::Method.ne(keep_method))
        .exec(db)
        .await?;
    Ok(result.rows_affected)
}

/// Deletes records older than `retention` (never less than [`MIN_RETENTION`]); returns how
/// many went.
pub async fn purge_expired<C: ConnectionTrait>(db: &C, retention: Duration) -> Result<u64, DbErr> {
    let retention = retention.max(MIN_RETENTION);
    let cutoff = Utc::now() - chrono::Duration::from_std(retention).unwrap_or(chrono::Duration::days(1));
    let result = Entity::delete_many()
        .filter(Column::CreateTime.lt(cutoff))
        .exec(db)
        .await?;
    Ok(result.rows_affected)
}

/// The fingerprint of a request: SHA-256 (hex) of its encoded form with `request_id` cleared,
/// so a retry matches and a different payload under the same id does not.
pub fn fingerprint(encoded_request_without_request_id: &[u8]) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(encoded_request_without_request_id);
    digest.iter().map(|byte| format!("{byte:02x}")).collect()
}

/// The record an earlier request with this id left, if any: checked before a change is even
/// computed, so a retry after success is answered even when the state it started from is gone
/// (a deleted customer, an undone merge).
pub async fn find<C: ConnectionTrait>(
    db: &C,
    tenant_id: &str,
    method: &str,
    request_id: &str,
) -> Result<Option<StoredResponse>, DbErr> {
    Ok(
        Entity::find_by_id((tenant_id.to_owned(), method.to_owned(), request_id.to_owned()))
            .one(db)
            .await?
            .map(|record| StoredResponse {
                fingerprint: record.fingerprint,
                response: record.response,
            }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_are_printable_ascii_of_at_most_128() {
        assert_eq!(RequestKey::parse("M", "", b"x"), Ok(None));
        let key = RequestKey::parse("M", "7f1c-retry", b"x").ok().flatten();
        assert_eq!(key.map(|key| key.fingerprint), Some(fingerprint(b"x")));
        assert_eq!(RequestKey::parse("M", "has space", b"x"), Err(InvalidRequestId));
        assert_eq!(
            RequestKey::parse("M", &"a".repeat(129), b"x"),
            Err(InvalidRequestId)
        );
    }
}
