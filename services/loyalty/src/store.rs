//! Persistence of the loyalty domain, in domain terms, sea-orm underneath, on SQLite (the
//! embedded default) and PostgreSQL.
//!
//! # What is stored
//!
//! - `programs`: the tenant's [`Program`](crate::domain::Program), encoded, with a revision.
//! - `accounts`: one row per customer with an account, merged ones included. A merged
//!   account's row names its survivor (`merged_into`) and its place among the survivor's
//!   absorbed accounts, so an account is a tree of rows; its tier, tier evaluation time,
//!   debt per origin, totals kept for reads, the length of its ledger and a revision.
//! - `lots`: every lot with the account holding it now.
//! - `ledger_entries`: append-only, keyed by `(tenant_id, entry_id)` — the final guard against
//!   applying an operation twice — and unique per `(tenant_id, customer_id, seq)`, the entry's
//!   position in its ledger.
//! - `redemption_cancellations`: which entry cancelled which redemption (at most one).
//! - `rewards` (stock only ever lowered by a guarded update) and `campaigns` (awards only ever
//!   raised by a guarded update).
//!
//! # Concurrency
//!
//! Every write runs in a transaction from [`Store::begin_write`] (SQLite: `BEGIN IMMEDIATE`,
//! one writer at a time). [`Store::load_account`] locks the account's row (`FOR UPDATE` on
//! PostgreSQL) until the transaction ends, so operations on one account apply one after the
//! other, each on the state the previous one committed; [`Store::save_accounts`] writes only
//! what changed, each account row under an optimistic revision check, and a new entry id
//! that exists anywhere in the tenant is refused by the database
//! ([`StoreError::DuplicateEntry`]).

mod accounts;
mod catalog;
mod codec;
mod entities;
mod erasure;
mod follow;
pub mod migrations;

pub use accounts::{HeldLot, LotCursor, PageOrder, StoredAccount, StoredEntry};
pub use catalog::{StoredCampaign, StoredProgram, StoredReward};
pub use migrations::Migrator;

use crm_db::idempotency::{self, IdempotencyClaim, StoredResponse};
use sea_orm::{ConnectionTrait, DatabaseConnection, DatabaseTransaction, DbBackend, DbErr, TransactionTrait};

use crate::domain::{DomainError, EntryId};

/// How deep a tree of merges (A into B into C…) may be.
const MAX_MERGE_DEPTH: usize = 32;
/// Most values in one `IN (…)` list.
const IN_CHUNK: usize = 500;

/// Why a store call failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database: {0}")]
    Db(#[from] DbErr),
    /// A domain rule refused (e.g. [`DomainError::OutOfStock`] from
    /// [`Store::take_stock`]).
    #[error(transparent)]
    Domain(#[from] DomainError),
    /// The database already holds a ledger entry with this id (in any account of the tenant):
    /// the operation was applied before. Roll back and answer from [`Store::find_entry`].
    #[error("ledger entry {entry_id} already exists")]
    DuplicateEntry { entry_id: EntryId },
    #[error("{resource} already exists")]
    AlreadyExists { resource: String },
    #[error("{resource} not found")]
    NotFound { resource: String },
    /// A campaign's budget cannot cover an award any more (another purchase used it since the
    /// quote): quote again.
    #[error("campaign {campaign_id} has {remaining} points of budget left, {requested} requested")]
    BudgetExhausted {
        campaign_id: String,
        requested: i64,
        remaining: i64,
    },
    /// Something changed since it was read (a revision moved, a row appeared or went): roll
    /// back and run the transaction again.
    #[error("changed concurrently: {0}")]
    Conflict(String),
    /// The accounts given to a save do not fit together (a merged account saved without its
    /// survivor, a lot moved to an account that is not saved…): a bug in the caller.
    #[error("cannot save: {0}")]
    InvalidSave(String),
    /// Stored data cannot be read back into the domain.
    #[error("stored data cannot be read: {0}")]
    Corrupt(String),
}

impl StoreError {
    pub(crate) fn corrupt(message: impl Into<String>) -> Self {
        Self::Corrupt(message.into())
    }

    /// Whether running the whole transaction again may succeed: a concurrent change, a
    /// PostgreSQL serialization failure or deadlock, or a database out of reach.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Conflict(_) => true,
            Self::Db(error) => crm_db::is_unavailable(error) || is_transient(error),
            _ => false,
        }
    }
}

/// PostgreSQL's serialization_failure (40001) and deadlock_detected (40P01).
fn is_transient(error: &DbErr) -> bool {
    use sea_orm::RuntimeErr;
    let (DbErr::Exec(RuntimeErr::SqlxError(sqlx_error)) | DbErr::Query(RuntimeErr::SqlxError(sqlx_error))) =
        error
    else {
        return false;
    };
    sqlx_error
        .as_database_error()
        .and_then(|database_error| database_error.code())
        .is_some_and(|code| code == "40001" || code == "40P01")
}

fn is_postgres(db: &impl ConnectionTrait) -> bool {
    db.get_database_backend() == DbBackend::Postgres
}

/// The loyalty store. Reads take any connection; writes take the transaction they belong
/// to, so the service composes one transaction from several calls (idempotency claim,
/// accounts, stock, budgets, outbox).
#[derive(Clone)]
pub struct Store {
    db: DatabaseConnection,
}

impl Store {
    pub fn new(db: DatabaseConnection) -> Self {
        Self { db }
    }

    pub fn db(&self) -> &DatabaseConnection {
        &self.db
    }

    /// A transaction that will write (SQLite: the write lock is taken at once).
    pub async fn begin_write(&self) -> Result<DatabaseTransaction, StoreError> {
        Ok(crm_db::begin_write(&self.db).await?)
    }

    /// A transaction that only reads, for [`Store::read_account`] (a consistent view of one
    /// account across its queries).
    pub async fn begin_read(&self) -> Result<DatabaseTransaction, StoreError> {
        Ok(self.db.begin().await?)
    }

    // ---- idempotency ----

    pub async fn replay(
        &self,
        tenant: &str,
        method: &str,
        request_id: &str,
    ) -> Result<Option<StoredResponse>, StoreError> {
        Ok(idempotency::find(&self.db, tenant, method, request_id).await?)
    }

    /// Claims a request id inside `txn`, first thing in it (see `crm_db::idempotency`).
    pub async fn claim(
        &self,
        txn: &DatabaseTransaction,
        tenant: &str,
        claim: &IdempotencyClaim,
    ) -> Result<Option<StoredResponse>, StoreError> {
        Ok(idempotency::claim(txn, tenant, claim).await?)
    }
}
