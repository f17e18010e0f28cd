//! What following other services' feeds needs beyond one account: the feeds' cursors, batch
//! lookups over many members at once, and each customer's first purchase.

use std::collections::{HashMap, HashSet};

use sea_orm::entity::prelude::*;
use sea_orm::sea_query::OnConflict;
use sea_orm::{ConnectionTrait, DatabaseTransaction, QueryOrder, QuerySelect, Set};

use super::entities::{account, entry, first_purchase};
use super::{IN_CHUNK, MAX_MERGE_DEPTH, Store, StoreError};
use crate::domain::{CustomerId, EntryId};

impl Store {
    /// The position of the last event of feed `source` applied (0 for none), without locking.
    pub async fn feed_cursor(&self, source: &str) -> Result<i64, StoreError> {
        Ok(crm_db::feed_cursor::position(&self.db, source).await?)
    }

    /// The cursor of feed `source`, locked until `txn` ends (one follower at a time applies a
    /// feed, whatever the number of replicas).
    pub async fn lock_feed(&self, txn: &DatabaseTransaction, source: &str) -> Result<i64, StoreError> {
        Ok(crm_db::feed_cursor::lock(txn, source).await?)
    }

    pub async fn set_feed_cursor(
        &self,
        txn: &DatabaseTransaction,
        source: &str,
        position: i64,
    ) -> Result<(), StoreError> {
        Ok(crm_db::feed_cursor::set(txn, source, position).await?)
    }

    /// [`Store::resolve_holder`] for many customers in a few queries: each customer that has an
    /// account, mapped to the customer whose account holds its points now.
    pub async fn resolve_holders<C: ConnectionTrait>(
        &self,
        db: &C,
        tenant: &str,
        customers: &[CustomerId],
    ) -> Result<HashMap<CustomerId, CustomerId>, StoreError> {
        // customer -> the account it points at so far.
        let mut pointing: HashMap<CustomerId, CustomerId> = HashMap::new();
        let mut merged_into: HashMap<String, Option<String>> = HashMap::new();
        let mut wanted: HashSet<String> = customers
            .iter()
            .map(|customer| customer.as_str().to_owned())
            .collect();
        for _ in 0..=MAX_MERGE_DEPTH {
            let to_read: Vec<String> = wanted
                .drain()
                .filter(|customer| !merged_into.contains_key(customer))
                .collect();
            if to_read.is_empty() {
                break;
            }
            for chunk in to_read.chunks(IN_CHUNK) {
                for row in account::Entity::find()
                    .filter(account::Column::TenantId.eq(tenant))
                    .filter(account::Column::CustomerId.is_in(chunk.iter().cloned()))
                    .all(db)
                    .await?
                {
                    if let Some(survivor) = &row.merged_into {
                        wanted.insert(survivor.clone());
                    }
                    merged_into.insert(row.customer_id, row.merged_into);
                }
            }
        }
        for customer in customers {
            let mut current = customer.as_str();
            let mut depth = 0;
            let holder = loop {
                match merged_into.get(current) {
                    None => break None,
                    Some(None) => break Some(current),
                    Some(Some(survivor)) => current = survivor,
                }
                depth += 1;
                if depth > MAX_MERGE_DEPTH {
                    return Err(StoreError::corrupt(format!(
                        "the merges from {customer} are deeper than {MAX_MERGE_DEPTH}"
                    )));
                }
            };
            if let Some(holder) = holder {
                pointing.insert(customer.clone(), CustomerId::from(holder));
            }
        }
        Ok(pointing)
    }

    /// Which of `entry_ids` exist in the tenant's ledgers.
    pub async fn existing_entries<C: ConnectionTrait>(
        &self,
        db: &C,
        tenant: &str,
        entry_ids: &[EntryId],
    ) -> Result<HashSet<EntryId>, StoreError> {
        let ids: Vec<String> = entry_ids.iter().map(|id| id.as_str().to_owned()).collect();
        let mut found = HashSet::new();
        for chunk in ids.chunks(IN_CHUNK) {
            let rows: Vec<String> = entry::Entity::find()
                .select_only()
                .column(entry::Column::EntryId)
                .filter(entry::Column::TenantId.eq(tenant))
                .filter(entry::Column::EntryId.is_in(chunk.iter().cloned()))
                .into_tuple()
                .all(db)
                .await?;
            found.extend(rows.into_iter().map(EntryId::from));
        }
        Ok(found)
    }

    /// The first purchase recorded for each of `customers` that has one.
    pub async fn first_purchases<C: ConnectionTrait>(
        &self,
        db: &C,
        tenant: &str,
        customers: &[CustomerId],
    ) -> Result<HashMap<CustomerId, String>, StoreError> {
        let ids: Vec<String> = customers.iter().map(|id| id.as_str().to_owned()).collect();
        let mut found = HashMap::new();
        for chunk in ids.chunks(IN_CHUNK) {
            for row in first_purchase::Entity::find()
                .filter(first_purchase::Column::TenantId.eq(tenant))
                .filter(first_purchase::Column::CustomerId.is_in(chunk.iter().cloned()))
                .all(db)
                .await?
            {
                found.insert(CustomerId::from(row.customer_id), row.purchase_id);
            }
        }
        Ok(found)
    }

    /// Records first purchases; a customer that has one keeps it.
    pub async fn record_first_purchases(
        &self,
        txn: &DatabaseTransaction,
        tenant: &str,
        firsts: &[(CustomerId, String)],
    ) -> Result<(), StoreError> {
        for chunk in firsts.chunks(IN_CHUNK) {
            first_purchase::Entity::insert_many(chunk.iter().map(|(customer, purchase_id)| {
                first_purchase::ActiveModel {
                    tenant_id: Set(tenant.to_owned()),
                    customer_id: Set(customer.as_str().to_owned()),
                    purchase_id: Set(purchase_id.clone()),
                }
            }))
            .on_conflict(
                OnConflict::columns([
                    first_purchase::Column::TenantId,
                    first_purchase::Column::CustomerId,
                ])
                .do_nothing()
                .to_owned(),
            )
            .exec_without_returning(txn)
            .await?;
        }
        Ok(())
    }
}

impl Store {
    /// Live accounts (not merged away) last evaluated for their tier at or before
    /// `evaluated_by`, by customer, `limit` at a time after `after`: what the tier evaluation
    /// job visits.
    pub async fn accounts_due_for_tier_evaluation<C: ConnectionTrait>(
        &self,
        db: &C,
        tenant: &str,
        evaluated_by: chrono::DateTime<chrono::Utc>,
        after: Option<&CustomerId>,
        limit: u64,
    ) -> Result<Vec<CustomerId>, StoreError> {
        let mut query = account::Entity::find()
            .select_only()
            .column(account::Column::CustomerId)
            .filter(account::Column::TenantId.eq(tenant))
            .filter(account::Column::MergedInto.is_null())
            .filter(account::Column::TierEvaluatedAt.lte(evaluated_by));
        if let Some(after) = after {
            query = query.filter(account::Column::CustomerId.gt(after.as_str()));
        }
        let rows: Vec<String> = query
            .order_by_asc(account::Column::CustomerId)
            .limit(limit)
            .into_tuple()
            .all(db)
            .await?;
        Ok(rows.into_iter().map(CustomerId::from).collect())
    }
}
