//! The one transaction a change to an account runs in, and its retries.
//!
//! begin (SQLite: the write lock at once) -> program -> a retry's entry? answer with it ->
//! the account, locked -> the change decides its operation (and may write beside it, e.g. a
//! reward's stock) -> the domain applies it -> save -> commit -> the hot-score hash. A
//! concurrent change (a revision moved, a serialization failure) rolls everything back and
//! runs it again, at most [`MAX_ATTEMPTS`] times.

use std::future::Future;

use chrono::{DateTime, Utc};
use sea_orm::{ConnectionTrait, DatabaseTransaction};

use super::{Loyalty, MAX_ATTEMPTS, account_not_found, commit, gave_up, now};
use crate::domain::{Account, Command, CustomerId, EntryId, LedgerEntry, Operation, Outcome};
use crate::error::LoyaltyError;
use crate::store::{Store, StoreError};

/// What one request does to one account, run by [`Loyalty::apply_change`].
pub(super) trait AccountChange: Sync {
    /// Whether an entry already under the request's entry id was made by this same request (a
    /// retry) rather than by another request reusing its id.
    fn same_request(&self, entry: &LedgerEntry) -> bool;

    /// Whether the request opens an account for a customer without one. A request that can
    /// only spend answers NOT_FOUND instead: an empty account could pay for nothing.
    fn opens_account(&self) -> bool {
        true
    }

    /// Whether a retry must also name the account of the first request (resolved through
    /// merges), so an id reused for another member is refused rather than answered with the
    /// first member's entry.
    fn retry_names_same_account(&self) -> bool {
        false
    }

    /// The operation, decided with the account locked. It may write in `txn` (a reward's
    /// stock): those writes commit with the entry or roll back with it. A retryable store
    /// error runs the whole transaction again.
    fn operation(
        &self,
        store: &Store,
        txn: &DatabaseTransaction,
        tenant: &str,
        account: &Account,
        at: DateTime<Utc>,
    ) -> impl Future<Output = Result<Operation, LoyaltyError>> + Send;
}

/// A change whose operation is known before the account is read (an adjustment).
pub(super) struct FixedOperation<'a> {
    pub operation: Operation,
    pub same_request: &'a (dyn Fn(&LedgerEntry) -> bool + Sync),
}

impl AccountChange for FixedOperation<'_> {
    fn same_request(&self, entry: &LedgerEntry) -> bool {
        (self.same_request)(entry)
    }

    async fn operation(
        &self,
        _store: &Store,
        _txn: &DatabaseTransaction,
        _tenant: &str,
        _account: &Account,
        _at: DateTime<Utc>,
    ) -> Result<Operation, LoyaltyError> {
        Ok(self.operation.clone())
    }
}

impl Loyalty {
    /// Applies `change` to the account holding `customer`'s points under `entry_id`. Returns
    /// the holder's id and the entry: the first one when the request was applied before.
    pub(super) async fn apply_change(
        &self,
        tenant: &str,
        customer: &CustomerId,
        entry_id: EntryId,
        request_id: &str,
        change: &impl AccountChange,
    ) -> Result<(CustomerId, LedgerEntry), LoyaltyError> {
        for _ in 0..MAX_ATTEMPTS {
            let txn = self.store.begin_write().await?;
            let Some(program) = self.store.program(&txn, tenant).await? else {
                return Err(LoyaltyError::NoProgram);
            };
            // A retry of an applied request: answer without locking any account.
            if let Some(existing) = self.store.find_entry(&txn, tenant, &entry_id).await? {
                return self
                    .replayed(&txn, tenant, customer, request_id, change, existing)
                    .await;
            }
            let holder = match self.store.resolve_holder(&txn, tenant, customer).await? {
                Some(holder) => holder,
                None if change.opens_account() => customer.clone(),
                None => return Err(account_not_found(customer)),
            };
            let at = now();
            let loaded = if change.opens_account() {
                let fresh = Account::new(holder.clone(), &program.program, at);
                self.store
                    .load_or_create_account(&txn, tenant, fresh)
                    .await
                    .map(Some)
            } else {
                self.store.load_account(&txn, tenant, &holder).await
            };
            let mut stored = match loaded {
                Ok(Some(stored)) => stored,
                // Accounts are never deleted: the holder resolved above has one.
                Ok(None) => {
                    return Err(StoreError::Conflict(format!("the account of {holder} vanished")).into());
                }
                Err(error) if error.is_retryable() => continue,
                Err(error) => return Err(error.into()),
            };
            // Merged between the resolution and the lock: resolve again.
            if stored.account().merged_into().is_some() {
                continue;
            }
            let operation = match change
                .operation(&self.store, &txn, tenant, stored.account(), at)
                .await
            {
                Ok(operation) => operation,
                Err(LoyaltyError::Store(error)) if error.is_retryable() => continue,
                Err(error) => return Err(error),
            };
            let command = Command {
                entry_id: entry_id.clone(),
                at,
                operation,
            };
            let (entry, events) = match stored.account_mut().apply(&program.program, command)? {
                Outcome::Replayed { entry } => {
                    return self
                        .replayed(&txn, tenant, customer, request_id, change, entry)
                        .await;
                }
                Outcome::NothingDue => {
                    return Err(StoreError::corrupt("an operation of a request recorded no entry").into());
                }
                Outcome::Applied { entry, events } => (entry, events),
            };
            let saved = match self.store.save_account(&txn, tenant, &mut stored).await {
                Ok(()) => self.record_events(&txn, tenant, &events).await,
                Err(error) => Err(error),
            };
            match saved {
                Ok(()) => {}
                Err(StoreError::DuplicateEntry { .. }) => {
                    txn.rollback().await.map_err(StoreError::from)?;
                    let db = self.store.db();
                    let existing = self
                        .store
                        .find_entry(db, tenant, &entry_id)
                        .await?
                        .ok_or_else(|| StoreError::Conflict(format!("entry {entry_id} vanished")))?;
                    return self
                        .replayed(db, tenant, customer, request_id, change, existing)
                        .await;
                }
                Err(error) if error.is_retryable() => continue,
                Err(error) => return Err(error.into()),
            }
            if !commit(txn).await? {
                continue;
            }
            if !events.is_empty() {
                self.events_committed();
            }
            self.publish_hot(tenant, &stored).await;
            return Ok((holder, entry));
        }
        Err(gave_up())
    }

    /// The answer to a request whose entry exists: that entry if this same request made it,
    /// else the request id was reused for another request.
    async fn replayed<C: ConnectionTrait>(
        &self,
        db: &C,
        tenant: &str,
        customer: &CustomerId,
        request_id: &str,
        change: &impl AccountChange,
        entry: LedgerEntry,
    ) -> Result<(CustomerId, LedgerEntry), LoyaltyError> {
        let same_account = !change.retry_names_same_account()
            || entry.customer == *customer
            || self.store.resolve_holder(db, tenant, &entry.customer).await?
                == self.store.resolve_holder(db, tenant, customer).await?;
        if same_account && change.same_request(&entry) {
            Ok((entry.customer.clone(), entry))
        } else {
            Err(LoyaltyError::RequestIdReused {
                request_id: request_id.to_owned(),
            })
        }
    }
}
