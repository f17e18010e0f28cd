//! The loyalty service: one transaction per request around the pure domain.
//!
//! A write runs: begin (SQLite: the write lock at once) -> idempotency claim where the request
//! has a stored response -> program -> the account, locked -> the domain applies the operation
//! -> the store saves what changed -> commit -> the hot-score hash. Entry ids derive from
//! request ids, so the ledger itself refuses a second application: a retry finds its entry
//! and answers with it. A concurrent change (a revision moved, a serialization failure) rolls
//! the transaction back and runs it again, a few times.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, SubsecRound, Utc};
use crm_cache::{Cache, VersionedUpdate, customer_key};
use crm_db::idempotency::RequestKey;
use crm_proto::loyalty_v1 as pb;
use prost::Message;

mod catalog;
mod events;
mod follow;
mod jobs;
mod transaction;

pub use catalog::{CatalogItem, CatalogPage};

pub use follow::{
    BatchReport, FeedChange, FeedItem, ProfileFacts, PurchaseFacts, PurchaseNeeds, QuoteView, RefundFacts,
};
pub use jobs::{JobReport, spawn as spawn_jobs};

use crate::convert;
use crate::domain::{
    Account, CustomerId, Earn, EarnSource, EntryId, EntryKind, LedgerEntry, Operation, Program,
};
use crate::error::LoyaltyError;
use crate::store::{PageOrder, Store, StoreError, StoredAccount, StoredEntry, StoredProgram};

/// How far ahead points expiring soon are announced unless configured.
pub const DEFAULT_EXPIRY_NOTICE_DAYS: u32 = 30;

/// Runs of one transaction before a concurrent change is reported as UNAVAILABLE.
const MAX_ATTEMPTS: usize = 8;

/// The hash field holding the revision of the account the loyalty fields were written from.
pub const HOT_REVISION_FIELD: &str = "loyalty_revision";
/// The member's balance, decimal text.
pub const HOT_POINTS_FIELD: &str = "points";
/// The member's tier name; absent without a tier.
pub const HOT_TIER_FIELD: &str = "tier";

#[derive(Clone)]
pub struct Loyalty {
    store: Store,
    cache: Arc<dyn Cache>,
    cache_ttl: Duration,
    /// The event log subscribers read (SubscribeLoyaltyEvents).
    outbox: crm_db::outbox::Outbox,
    /// How far ahead the jobs announce points expiring soon.
    expiry_notice_days: u32,
}

/// A member's account as read, with the tenant's program for its tier progress (`None` only
/// if the program row is missing; reading an account does not need it).
pub struct AccountView {
    pub account: Account,
    pub program: Option<Program>,
    pub at: DateTime<Utc>,
}

/// Database times keep microseconds: an entry read back equals the one returned.
fn now() -> DateTime<Utc> {
    Utc::now().trunc_subsecs(6)
}

impl Loyalty {
    pub fn new(store: Store, cache: Arc<dyn Cache>, cache_ttl: Duration) -> Self {
        let outbox = crm_db::outbox::Outbox::new(store.db().clone());
        Self {
            store,
            cache,
            cache_ttl,
            outbox,
            expiry_notice_days: DEFAULT_EXPIRY_NOTICE_DAYS,
        }
    }

    /// Announces points expiring within `days` (instead of [`DEFAULT_EXPIRY_NOTICE_DAYS`]).
    pub fn with_expiry_notice_days(mut self, days: u32) -> Self {
        self.expiry_notice_days = days;
        self
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    // ---- program ----

    pub async fn program(&self, tenant: &str) -> Result<StoredProgram, LoyaltyError> {
        self.store
            .program(self.store.db(), tenant)
            .await?
            .ok_or_else(|| LoyaltyError::not_found("program"))
    }

    /// Replaces the tenant's program after [`Program::validate`]; with `expected_revision`,
    /// only over it.
    pub async fn update_program(
        &self,
        tenant: &str,
        program: Program,
        expected_revision: Option<i64>,
        key: Option<RequestKey>,
    ) -> Result<pb::Program, LoyaltyError> {
        program.validate()?;
        for _ in 0..MAX_ATTEMPTS {
            let txn = self.store.begin_write().await?;
            let stored = self.store.program(&txn, tenant).await?;
            let current = stored.as_ref().map(|stored| stored.revision);
            let start_time = stored.map_or_else(|| Some(now()), |stored| stored.start_time);
            let revision = current.unwrap_or(0) + 1;
            let response = convert::program_to_pb(&StoredProgram {
                program: program.clone(),
                revision,
                start_time,
            });
            if let Some(key) = &key {
                let claim = key.claim(response.encode_to_vec(), String::new());
                if let Some(stored) = self.store.claim(&txn, tenant, &claim).await? {
                    txn.rollback().await.map_err(StoreError::from)?;
                    if stored.fingerprint != key.fingerprint {
                        return Err(LoyaltyError::RequestIdReused {
                            request_id: key.request_id.clone(),
                        });
                    }
                    return pb::Program::decode(stored.response.as_slice()).map_err(|error| {
                        StoreError::corrupt(format!("stored UpdateProgram answer: {error}")).into()
                    });
                }
            }
            if let Some(expected) = expected_revision
                && expected != current.unwrap_or(0)
            {
                return Err(LoyaltyError::EtagMismatch {
                    resource_name: "program".into(),
                });
            }
            let put = self
                .store
                .put_program(&txn, tenant, &program, current, start_time.unwrap_or_else(now))
                .await;
            if retryable(put)?.is_none() {
                continue;
            }
            if !commit(txn).await? {
                continue;
            }
            return Ok(response);
        }
        Err(gave_up())
    }

    // ---- accounts ----

    /// The account holding `customer`'s points (the survivor's after a merge).
    pub async fn account(&self, tenant: &str, customer: &CustomerId) -> Result<AccountView, LoyaltyError> {
        let txn = self.store.begin_read().await?;
        let Some(holder) = self.store.resolve_holder(&txn, tenant, customer).await? else {
            return Err(account_not_found(customer));
        };
        let stored = self
            .store
            .read_account(&txn, tenant, &holder)
            .await?
            .ok_or_else(|| account_not_found(customer))?;
        let program = self
            .store
            .program(&txn, tenant)
            .await?
            .map(|stored| stored.program);
        txn.commit().await.map_err(StoreError::from)?;
        Ok(AccountView {
            account: stored.into_account(),
            program,
            at: now(),
        })
    }

    /// An administrator's adjustment under the entry id `adjust:{request_id}`. Returns the
    /// holder's id and the entry, the first one on a retry.
    pub async fn adjust_points(
        &self,
        tenant: &str,
        customer: &CustomerId,
        points: i64,
        reason: String,
        request_id: &str,
    ) -> Result<(CustomerId, LedgerEntry), LoyaltyError> {
        let entry_id = EntryId::new(format!("adjust:{request_id}"));
        let same_request = |entry: &LedgerEntry| {
            matches!(&entry.kind, EntryKind::Adjust { points: stored_points, reason: stored_reason }
                if *stored_points == points && *stored_reason == reason)
        };
        let operation = Operation::Adjust {
            points,
            reason: reason.clone(),
        };
        self.apply(tenant, customer, entry_id, operation, request_id, &same_request)
            .await
    }

    /// Points for something other than a purchase, under the entry id `accrue:{request_id}`,
    /// earned now. Returns the holder's id and the entry, the first one on a retry.
    pub async fn accrue_points(
        &self,
        tenant: &str,
        customer: &CustomerId,
        points: i64,
        source: String,
        description: String,
        request_id: &str,
    ) -> Result<(CustomerId, LedgerEntry), LoyaltyError> {
        let entry_id = EntryId::new(format!("accrue:{request_id}"));
        let earned = EarnSource::Other {
            source: source.clone(),
            description: description.clone(),
        };
        let same_request = |entry: &LedgerEntry| {
            matches!(&entry.kind, EntryKind::Earn { points: stored_points, source: stored_source, .. }
                if *stored_points == points && *stored_source == earned)
        };
        let operation = Operation::Earn(Earn {
            points,
            earned_at: now(),
            source: EarnSource::Other { source, description },
            // The lot is the customer's own even on a survivor's account, so an unmerge
            // gives it back.
            origin_customer: Some(customer.clone()),
        });
        self.apply(tenant, customer, entry_id, operation, request_id, &same_request)
            .await
    }

    /// Applies one operation to the account holding `customer`'s points, opening it if the
    /// customer has none. `same_request` tells whether an entry already under `entry_id` was
    /// made by this same request (a retry) or by another one reusing its id.
    async fn apply(
        &self,
        tenant: &str,
        customer: &CustomerId,
        entry_id: EntryId,
        operation: Operation,
        request_id: &str,
        same_request: &(dyn Fn(&LedgerEntry) -> bool + Sync),
    ) -> Result<(CustomerId, LedgerEntry), LoyaltyError> {
        let change = transaction::FixedOperation {
            operation,
            same_request,
        };
        self.apply_change(tenant, customer, entry_id, request_id, &change)
            .await
    }

    /// Writes the member's balance and tier into the customer's hot-score hash, over an older
    /// revision only (a slower writer of an earlier state cannot overwrite a newer one).
    async fn publish_hot(&self, tenant: &str, stored: &StoredAccount) {
        self.publish_hot_many(std::iter::once((tenant, stored))).await;
    }

    /// [`Self::publish_hot`] for many accounts in one cache round trip (a feed batch or a
    /// job's page touches hundreds).
    async fn publish_hot_many<'a>(&self, accounts: impl IntoIterator<Item = (&'a str, &'a StoredAccount)>) {
        let updates: Vec<VersionedUpdate<'_>> = accounts
            .into_iter()
            .filter_map(|(tenant, stored)| {
                let version = stored.revision()?;
                let account = stored.account();
                let points = account.balance().to_string().into_bytes();
                let (set, delete): (Vec<(&str, Vec<u8>)>, &[&str]) = match account.tier() {
                    Some(tier) => (
                        vec![
                            (HOT_POINTS_FIELD, points),
                            (HOT_TIER_FIELD, tier.as_bytes().to_vec()),
                        ],
                        &[],
                    ),
                    None => (vec![(HOT_POINTS_FIELD, points)], &[HOT_TIER_FIELD]),
                };
                Some(VersionedUpdate {
                    key: customer_key("score", tenant, account.customer().as_str()),
                    version,
                    set,
                    delete,
                })
            })
            .collect();
        if !updates.is_empty() {
            self.cache
                .hash_update_many_if_newer(HOT_REVISION_FIELD, &updates, self.cache_ttl)
                .await;
        }
    }

    /// Removes the loyalty fields from an erased customer's hot-score hash, for good: the
    /// highest revision, so no late write of an older state brings them back.
    async fn forget_hot(&self, tenant: &str, customer: &CustomerId) {
        let key = customer_key("score", tenant, customer.as_str());
        self.cache
            .hash_update_if_newer(
                &key,
                HOT_REVISION_FIELD,
                i64::MAX,
                &[],
                &[HOT_POINTS_FIELD, HOT_TIER_FIELD],
                self.cache_ttl,
            )
            .await;
    }

    /// A page of `customer`'s own ledger; NOT_FOUND without an account.
    pub async fn ledger_page(
        &self,
        tenant: &str,
        customer: &CustomerId,
        after_seq: Option<i64>,
        limit: u64,
        order: PageOrder,
    ) -> Result<Vec<StoredEntry>, LoyaltyError> {
        let db = self.store.db();
        if self.store.resolve_holder(db, tenant, customer).await?.is_none() {
            return Err(account_not_found(customer));
        }
        Ok(self
            .store
            .entries_page(db, tenant, customer, after_seq, limit, order)
            .await?)
    }
}

/// A store step of a retried transaction: its value, `None` when a concurrent change makes
/// running the whole transaction again worthwhile, the error otherwise.
fn retryable<T>(result: Result<T, StoreError>) -> Result<Option<T>, LoyaltyError> {
    match result {
        Ok(value) => Ok(Some(value)),
        Err(error) if error.is_retryable() => Ok(None),
        Err(error) => Err(error.into()),
    }
}

/// Commits; `false` when a concurrent change failed the commit (run the transaction again).
async fn commit(txn: sea_orm::DatabaseTransaction) -> Result<bool, LoyaltyError> {
    Ok(retryable(txn.commit().await.map_err(StoreError::from))?.is_some())
}

fn account_not_found(customer: &CustomerId) -> LoyaltyError {
    LoyaltyError::not_found(format!("accounts/{customer}"))
}

fn gave_up() -> LoyaltyError {
    LoyaltyError::Store(StoreError::Conflict(format!(
        "the account kept changing concurrently over {MAX_ATTEMPTS} attempts"
    )))
}
