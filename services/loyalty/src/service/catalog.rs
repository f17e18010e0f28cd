//! Rewards and campaigns: the catalogue, and the two account changes that use rewards.
//!
//! Catalogue writes are short transactions of their own: the resource read (a reward locked,
//! see [`Store::lock_reward`]), the request's idempotency record claimed, the etag checked,
//! the row written under its revision. One generic copy serves both kinds ([`CatalogItem`]).
//!
//! Redeeming and cancelling are changes to an account ([`AccountChange`]) and run in its
//! transaction: the account locked, then the reward's stock taken (or given back) beside the
//! ledger entry, so both commit together or neither does.

use std::future::Future;

use chrono::{DateTime, Utc};
use crm_db::idempotency::{RequestKey, StoredResponse};
use crm_proto::loyalty_v1 as pb;
use prost::Message;
use sea_orm::DatabaseTransaction;

use super::Loyalty;
use super::transaction::AccountChange;
use crate::convert::account_name;
use crate::convert::catalog::{campaign_to_pb, contract_field, reward_to_pb};
use crate::domain::{
    Account, Campaign, CustomerId, EntryId, EntryKind, LedgerEntry, Operation, Redeem, Reward, RewardLine,
    can_redeem,
};
use crate::error::LoyaltyError;
use crate::store::{Store, StoreError};

/// A kind of catalogue resource (a reward, a campaign): its contract form and its store calls.
pub trait CatalogItem: Clone + Send + Sync + Sized {
    type Message: Message + Default;
    /// The collection of its resource names: `rewards` in `rewards/{id}`.
    const COLLECTION: &'static str;

    fn id(&self) -> &str;
    fn resource_name(id: &str) -> String {
        format!("{}/{id}", Self::COLLECTION)
    }
    /// The domain's validation, under the contract's field names.
    fn validate(&self) -> Result<(), LoyaltyError>;
    fn to_message(&self, revision: i64) -> Self::Message;

    fn fetch(
        store: &Store,
        tenant: &str,
        id: &str,
    ) -> impl Future<Output = Result<Option<(Self, i64)>, StoreError>> + Send;
    /// The resource read to be changed in `txn`.
    fn fetch_for_change(
        store: &Store,
        txn: &DatabaseTransaction,
        tenant: &str,
        id: &str,
    ) -> impl Future<Output = Result<Option<(Self, i64)>, StoreError>> + Send;
    fn page(
        store: &Store,
        tenant: &str,
        after: Option<&str>,
        limit: u64,
    ) -> impl Future<Output = Result<Vec<(Self, i64)>, StoreError>> + Send;
    fn insert(
        &self,
        store: &Store,
        txn: &DatabaseTransaction,
        tenant: &str,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
    /// Writes the definition over `revision`; returns the new revision.
    fn update(
        &self,
        store: &Store,
        txn: &DatabaseTransaction,
        tenant: &str,
        revision: i64,
    ) -> impl Future<Output = Result<i64, StoreError>> + Send;
    fn delete(
        store: &Store,
        txn: &DatabaseTransaction,
        tenant: &str,
        id: &str,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;
}

impl CatalogItem for Reward {
    type Message = pb::Reward;
    const COLLECTION: &'static str = "rewards";

    fn id(&self) -> &str {
        &self.id
    }

    fn validate(&self) -> Result<(), LoyaltyError> {
        Reward::validate(self, "reward").map_err(contract_field)
    }

    fn to_message(&self, revision: i64) -> pb::Reward {
        reward_to_pb(self, revision)
    }

    async fn fetch(store: &Store, tenant: &str, id: &str) -> Result<Option<(Self, i64)>, StoreError> {
        let stored = store.reward(store.db(), tenant, id).await?;
        Ok(stored.map(|stored| (stored.reward, stored.revision)))
    }

    /// Locked: the update writes the stock back, which must be the stock left at commit.
    async fn fetch_for_change(
        store: &Store,
        txn: &DatabaseTransaction,
        tenant: &str,
        id: &str,
    ) -> Result<Option<(Self, i64)>, StoreError> {
        let stored = store.lock_reward(txn, tenant, id).await?;
        Ok(stored.map(|stored| (stored.reward, stored.revision)))
    }

    async fn page(
        store: &Store,
        tenant: &str,
        after: Option<&str>,
        limit: u64,
    ) -> Result<Vec<(Self, i64)>, StoreError> {
        let page = store.rewards_page(store.db(), tenant, after, limit).await?;
        Ok(page
            .into_iter()
            .map(|stored| (stored.reward, stored.revision))
            .collect())
    }

    async fn insert(&self, store: &Store, txn: &DatabaseTransaction, tenant: &str) -> Result<(), StoreError> {
        store.create_reward(txn, tenant, self).await
    }

    async fn update(
        &self,
        store: &Store,
        txn: &DatabaseTransaction,
        tenant: &str,
        revision: i64,
    ) -> Result<i64, StoreError> {
        store.update_reward(txn, tenant, self, Some(revision)).await
    }

    async fn delete(
        store: &Store,
        txn: &DatabaseTransaction,
        tenant: &str,
        id: &str,
    ) -> Result<bool, StoreError> {
        store.delete_reward(txn, tenant, id).await
    }
}

impl CatalogItem for Campaign {
    type Message = pb::Campaign;
    const COLLECTION: &'static str = "campaigns";

    fn id(&self) -> &str {
        &self.id
    }

    fn validate(&self) -> Result<(), LoyaltyError> {
        Campaign::validate(self, "campaign").map_err(contract_field)
    }

    fn to_message(&self, revision: i64) -> pb::Campaign {
        campaign_to_pb(self, revision)
    }

    async fn fetch(store: &Store, tenant: &str, id: &str) -> Result<Option<(Self, i64)>, StoreError> {
        let stored = store.campaign(store.db(), tenant, id).await?;
        Ok(stored.map(|stored| (stored.campaign, stored.revision)))
    }

    /// Not locked: an update leaves the awarded points as stored, and two administrators'
    /// updates are told apart by the revision.
    async fn fetch_for_change(
        store: &Store,
        txn: &DatabaseTransaction,
        tenant: &str,
        id: &str,
    ) -> Result<Option<(Self, i64)>, StoreError> {
        let stored = store.campaign(txn, tenant, id).await?;
        Ok(stored.map(|stored| (stored.campaign, stored.revision)))
    }

    async fn page(
        store: &Store,
        tenant: &str,
        after: Option<&str>,
        limit: u64,
    ) -> Result<Vec<(Self, i64)>, StoreError> {
        let page = store.campaigns_page(store.db(), tenant, after, limit).await?;
        Ok(page
            .into_iter()
            .map(|stored| (stored.campaign, stored.revision))
            .collect())
    }

    async fn insert(&self, store: &Store, txn: &DatabaseTransaction, tenant: &str) -> Result<(), StoreError> {
        store.create_campaign(txn, tenant, self).await
    }

    async fn update(
        &self,
        store: &Store,
        txn: &DatabaseTransaction,
        tenant: &str,
        revision: i64,
    ) -> Result<i64, StoreError> {
        store.update_campaign(txn, tenant, self, Some(revision)).await
    }

    async fn delete(
        store: &Store,
        txn: &DatabaseTransaction,
        tenant: &str,
        id: &str,
    ) -> Result<bool, StoreError> {
        store.delete_campaign(txn, tenant, id).await
    }
}

/// A page of the catalogue and the token of the next one (empty on the last).
pub struct CatalogPage<M> {
    pub items: Vec<M>,
    pub next_page_token: String,
}

impl Loyalty {
    // ---- the catalogue ----

    pub async fn catalog_item<T: CatalogItem>(
        &self,
        tenant: &str,
        id: &str,
    ) -> Result<T::Message, LoyaltyError> {
        T::fetch(&self.store, tenant, id)
            .await?
            .map(|(item, revision)| item.to_message(revision))
            .ok_or_else(|| LoyaltyError::not_found(T::resource_name(id)))
    }

    /// Up to `limit` resources by id after the id `after`.
    pub async fn catalog_page<T: CatalogItem>(
        &self,
        tenant: &str,
        after: Option<&str>,
        limit: u64,
    ) -> Result<CatalogPage<T::Message>, LoyaltyError> {
        // One more than asked tells whether a next page exists.
        let mut page = T::page(&self.store, tenant, after, limit.saturating_add(1)).await?;
        let next_page_token = if page.len() as u64 > limit {
            page.truncate(usize::try_from(limit).unwrap_or(usize::MAX));
            page.last()
                .map(|(item, _)| item.id().to_owned())
                .unwrap_or_default()
        } else {
            String::new()
        };
        Ok(CatalogPage {
            items: page
                .iter()
                .map(|(item, revision)| item.to_message(*revision))
                .collect(),
            next_page_token,
        })
    }

    /// Adds `item` (at revision 1); ALREADY_EXISTS when its id is taken.
    pub async fn create_catalog_item<T: CatalogItem>(
        &self,
        tenant: &str,
        item: T,
        key: Option<RequestKey>,
    ) -> Result<T::Message, LoyaltyError> {
        item.validate()?;
        if let Some(answer) = self.earlier_answer(tenant, key.as_ref()).await? {
            return Ok(answer);
        }
        let response = item.to_message(1);
        let txn = self.store.begin_write().await?;
        if let Some(answer) = self.claim_answer(&txn, tenant, key.as_ref(), &response).await? {
            return Ok(answer);
        }
        match item.insert(&self.store, &txn, tenant).await {
            Ok(()) => {}
            Err(StoreError::AlreadyExists { .. }) => {
                return Err(StoreError::AlreadyExists {
                    resource: T::resource_name(item.id()),
                }
                .into());
            }
            Err(error) => return Err(error.into()),
        }
        txn.commit().await.map_err(StoreError::from)?;
        Ok(response)
    }

    /// Changes the resource `id` with `patch`, validates the result and writes it; with
    /// `etag` (a revision), only over that revision.
    pub async fn update_catalog_item<T: CatalogItem>(
        &self,
        tenant: &str,
        id: &str,
        etag: Option<i64>,
        patch: impl FnOnce(&mut T) + Send,
        key: Option<RequestKey>,
    ) -> Result<T::Message, LoyaltyError> {
        if let Some(answer) = self.earlier_answer(tenant, key.as_ref()).await? {
            return Ok(answer);
        }
        let txn = self.store.begin_write().await?;
        let (mut item, revision) = T::fetch_for_change(&self.store, &txn, tenant, id)
            .await?
            .ok_or_else(|| LoyaltyError::not_found(T::resource_name(id)))?;
        patch(&mut item);
        item.validate()?;
        let response = item.to_message(revision + 1);
        if let Some(answer) = self.claim_answer(&txn, tenant, key.as_ref(), &response).await? {
            return Ok(answer);
        }
        if etag.is_some_and(|expected| expected != revision) {
            return Err(LoyaltyError::EtagMismatch {
                resource_name: T::resource_name(id),
            });
        }
        item.update(&self.store, &txn, tenant, revision).await?;
        txn.commit().await.map_err(StoreError::from)?;
        Ok(response)
    }

    /// Removes the resource `id`; with `etag`, only at that revision.
    pub async fn delete_catalog_item<T: CatalogItem>(
        &self,
        tenant: &str,
        id: &str,
        etag: Option<i64>,
        key: Option<RequestKey>,
    ) -> Result<(), LoyaltyError> {
        if self.earlier_answer::<()>(tenant, key.as_ref()).await?.is_some() {
            return Ok(());
        }
        let txn = self.store.begin_write().await?;
        // First, so a concurrent retry waits for this one and answers like it.
        if self
            .claim_answer(&txn, tenant, key.as_ref(), &())
            .await?
            .is_some()
        {
            return Ok(());
        }
        let missing = || LoyaltyError::not_found(T::resource_name(id));
        let (_, revision) = T::fetch_for_change(&self.store, &txn, tenant, id)
            .await?
            .ok_or_else(missing)?;
        if etag.is_some_and(|expected| expected != revision) {
            return Err(LoyaltyError::EtagMismatch {
                resource_name: T::resource_name(id),
            });
        }
        if !T::delete(&self.store, &txn, tenant, id).await? {
            return Err(missing());
        }
        txn.commit().await.map_err(StoreError::from)?;
        Ok(())
    }

    /// The answer stored for an earlier request under `key`, read before any transaction, so
    /// a retry is answered even when what it changed has changed again (or gone) since.
    async fn earlier_answer<M: Message + Default>(
        &self,
        tenant: &str,
        key: Option<&RequestKey>,
    ) -> Result<Option<M>, LoyaltyError> {
        let Some(key) = key else {
            return Ok(None);
        };
        let stored = self.store.replay(tenant, key.method, &key.request_id).await?;
        stored.map(|stored| stored_answer(stored, key)).transpose()
    }

    /// Claims `key` in `txn` with `response` as the answer kept for retries. `Some`: a
    /// concurrent request under the same key committed first; answer with its response (the
    /// caller drops `txn`, which rolls it back).
    async fn claim_answer<M: Message + Default>(
        &self,
        txn: &DatabaseTransaction,
        tenant: &str,
        key: Option<&RequestKey>,
        response: &M,
    ) -> Result<Option<M>, LoyaltyError> {
        let Some(key) = key else {
            return Ok(None);
        };
        // Catalogue answers hold no personal data: no subject for erasure to look for.
        let claim = key.claim(response.encode_to_vec(), String::new());
        let stored = self.store.claim(txn, tenant, &claim).await?;
        stored.map(|stored| stored_answer(stored, key)).transpose()
    }

    // ---- redemptions ----

    /// Redeems `quantity` units of a reward from the account holding `customer`'s points,
    /// under the entry id `redeem:{request_id}`. Returns the holder's id and the entry, the
    /// first one on a retry.
    pub async fn redeem_reward(
        &self,
        tenant: &str,
        customer: &CustomerId,
        reward_id: &str,
        quantity: u32,
        request_id: &str,
    ) -> Result<(CustomerId, LedgerEntry), LoyaltyError> {
        let entry_id = EntryId::new(format!("redeem:{request_id}"));
        let change = Redemption { reward_id, quantity };
        self.apply_change(tenant, customer, entry_id, request_id, &change)
            .await
    }

    /// Cancels the redemption `redemption_entry_id` of the account holding `customer`'s
    /// points, under the entry id `cancel:{request_id}`.
    pub async fn cancel_redemption(
        &self,
        tenant: &str,
        customer: &CustomerId,
        redemption_entry_id: &EntryId,
        request_id: &str,
    ) -> Result<(CustomerId, LedgerEntry), LoyaltyError> {
        let entry_id = EntryId::new(format!("cancel:{request_id}"));
        let change = Cancellation { redemption_entry_id };
        self.apply_change(tenant, customer, entry_id, request_id, &change)
            .await
    }
}

fn stored_answer<M: Message + Default>(stored: StoredResponse, key: &RequestKey) -> Result<M, LoyaltyError> {
    if stored.fingerprint != key.fingerprint {
        return Err(LoyaltyError::RequestIdReused {
            request_id: key.request_id.clone(),
        });
    }
    M::decode(stored.response.as_slice())
        .map_err(|error| StoreError::corrupt(format!("stored {} answer: {error}", key.method)).into())
}

/// RedeemReward: the member's limit, the stock, then the points.
struct Redemption<'a> {
    reward_id: &'a str,
    quantity: u32,
}

impl AccountChange for Redemption<'_> {
    /// The reward's price may have changed since: a retry is the same reward and quantity.
    fn same_request(&self, entry: &LedgerEntry) -> bool {
        matches!(&entry.kind, EntryKind::Redeem { reward: Some(line), .. }
            if line.reward_id == self.reward_id && line.quantity == self.quantity)
    }

    fn opens_account(&self) -> bool {
        false
    }

    fn retry_names_same_account(&self) -> bool {
        true
    }

    async fn operation(
        &self,
        store: &Store,
        txn: &DatabaseTransaction,
        tenant: &str,
        account: &Account,
        at: DateTime<Utc>,
    ) -> Result<Operation, LoyaltyError> {
        let missing = || LoyaltyError::not_found(Reward::resource_name(self.reward_id));
        let reward = store
            .reward(txn, tenant, self.reward_id)
            .await?
            .ok_or_else(missing)?
            .reward;
        // The account is locked, so no other redemption of this member commits between this
        // count and this redemption's commit: the limit cannot be overrun by racing requests.
        // Without a limit there is nothing to count (a long history would make it costly).
        let redeemed = match reward.per_member_limit {
            Some(_) => {
                store
                    .redeemed_units(txn, tenant, &account.customers(), self.reward_id)
                    .await?
            }
            None => 0,
        };
        let points = can_redeem(&reward, redeemed, self.quantity, account.spendable_balance(at))?;
        // The stock read above only orders the refusals; this guarded decrement is what never
        // oversells (members' redemptions of one reward do not share a lock).
        match store.take_stock(txn, tenant, self.reward_id, self.quantity).await {
            Ok(()) => {}
            Err(StoreError::NotFound { .. }) => return Err(missing()),
            Err(error) => return Err(error.into()),
        }
        Ok(Operation::Redeem(Redeem {
            points,
            reward: Some(RewardLine {
                reward_id: self.reward_id.to_owned(),
                quantity: self.quantity,
            }),
        }))
    }
}

/// CancelRedemption: the points back to their lots (the domain), the units back to the stock.
struct Cancellation<'a> {
    redemption_entry_id: &'a EntryId,
}

impl AccountChange for Cancellation<'_> {
    fn same_request(&self, entry: &LedgerEntry) -> bool {
        matches!(&entry.kind, EntryKind::CancelRedemption { redemption_entry_id, .. }
            if redemption_entry_id == self.redemption_entry_id)
    }

    fn opens_account(&self) -> bool {
        false
    }

    fn retry_names_same_account(&self) -> bool {
        true
    }

    async fn operation(
        &self,
        store: &Store,
        txn: &DatabaseTransaction,
        tenant: &str,
        account: &Account,
        _at: DateTime<Utc>,
    ) -> Result<Operation, LoyaltyError> {
        let Some(redemption) = account.find_entry(self.redemption_entry_id) else {
            return Err(LoyaltyError::not_found(format!(
                "{}/ledgerEntries/{}",
                account_name(account.customer()),
                self.redemption_entry_id
            )));
        };
        // An entry that is no redemption, or one cancelled already, is refused by the domain
        // next, which rolls this back; checking here only spares the write.
        if let EntryKind::Redeem {
            reward: Some(line), ..
        } = &redemption.kind
            && account
                .redemption_cancelled_by(self.redemption_entry_id)
                .is_none()
        {
            // False when the reward has left the catalogue: there is no stock to give back to.
            store
                .return_stock(txn, tenant, &line.reward_id, line.quantity)
                .await?;
        }
        Ok(Operation::CancelRedemption {
            redemption_entry_id: self.redemption_entry_id.clone(),
        })
    }
}
