//! Accounts, lots and ledger entries: loading an account (locked) and saving what the domain
//! changed in it, plus the reads that go past one account (an entry by id, ledger pages, lots
//! due to expire or mature).

use std::collections::{BTreeMap, HashMap, HashSet};

use chrono::{DateTime, Utc};
use sea_orm::entity::prelude::*;
use sea_orm::sea_query::{Alias, Expr, OnConflict};
use sea_orm::{Condition, ConnectionTrait, DatabaseTransaction, Iterable, QueryOrder, QuerySelect, Set};

use super::entities::{account, cancellation, entry, lot};
use super::{IN_CHUNK, MAX_MERGE_DEPTH, Store, StoreError, codec, is_postgres};
use crate::domain::{Account, AccountParts, CustomerId, EntryId, EntryKind, LedgerEntry, Lot, LotId};

/// An account as the store read it (or as it will be created), with a picture of what is
/// stored, so a save writes only what the domain changed since.
///
/// Change it through [`StoredAccount::account_mut`] (`apply`, `evaluate_tier`, `merge`,
/// `unmerge`), then [`Store::save_accounts`] in the same transaction.
#[derive(Debug, Clone)]
pub struct StoredAccount {
    account: Account,
    stored: Snapshot,
}

impl StoredAccount {
    /// An account that is not stored yet (a new member, or the account an unmerge brought
    /// back): saving it inserts its rows.
    pub fn new(account: Account) -> Self {
        Self {
            account,
            stored: Snapshot::default(),
        }
    }

    pub fn account(&self) -> &Account {
        &self.account
    }

    pub fn account_mut(&mut self) -> &mut Account {
        &mut self.account
    }

    pub fn into_account(self) -> Account {
        self.account
    }

    /// The revision of the account's own row as last read or saved (it moves with every save
    /// that changes the account); `None` before it is first stored. Suits an etag.
    pub fn revision(&self) -> Option<i64> {
        self.stored
            .rows
            .get(self.account.customer())
            .map(|row| row.revision)
    }
}

/// What is stored of one or more accounts, as last read or written.
#[derive(Debug, Clone, Default)]
struct Snapshot {
    rows: HashMap<CustomerId, StoredRow>,
    entries: HashSet<EntryId>,
    /// Lot id -> (holder, lot).
    lots: HashMap<LotId, (CustomerId, Lot)>,
    /// Redemptions with a stored cancellation.
    cancellations: HashSet<EntryId>,
}

impl Snapshot {
    fn extend(&mut self, other: &Snapshot) {
        for (customer, row) in &other.rows {
            self.rows.entry(customer.clone()).or_insert_with(|| row.clone());
        }
        self.entries.extend(other.entries.iter().cloned());
        for (id, held) in &other.lots {
            self.lots.entry(id.clone()).or_insert_with(|| held.clone());
        }
        self.cancellations.extend(other.cancellations.iter().cloned());
    }

    /// The picture of `account` as stored, its rows at `revisions`.
    fn of(account: &Account, revisions: &HashMap<CustomerId, i64>) -> Self {
        let mut snapshot = Self::default();
        for node in nodes(account) {
            let customer = node.account.customer();
            if let Some(revision) = revisions.get(customer) {
                snapshot.rows.insert(
                    customer.clone(),
                    StoredRow {
                        revision: *revision,
                        image: RowImage::of(node.account, node.position),
                    },
                );
            }
            for entry in node.account.entries() {
                snapshot.entries.insert(entry.id.clone());
                if matches!(entry.kind, EntryKind::Redeem { .. })
                    && node.account.redemption_cancelled_by(&entry.id).is_some()
                {
                    snapshot.cancellations.insert(entry.id.clone());
                }
            }
            for lot in node.account.lots() {
                snapshot
                    .lots
                    .insert(lot.id.clone(), (customer.clone(), lot.clone()));
            }
        }
        snapshot
    }
}

#[derive(Debug, Clone)]
struct StoredRow {
    revision: i64,
    image: RowImage,
}

/// The columns of an account row other than its key and revision.
#[derive(Debug, Clone, PartialEq, Eq)]
struct RowImage {
    merged_into: Option<CustomerId>,
    merge_position: i32,
    tier: Option<String>,
    tier_evaluated_at: DateTime<Utc>,
    debts: Vec<u8>,
    balance: i64,
    pending: i64,
    debt: i64,
    lifetime_points: i64,
    entry_count: i64,
}

impl RowImage {
    fn of(account: &Account, merge_position: i32) -> Self {
        Self {
            merged_into: account.merged_into().cloned(),
            merge_position,
            tier: account.tier().map(str::to_owned),
            tier_evaluated_at: account.tier_evaluated_at(),
            debts: codec::encode_debts(account.debt_by_origin()),
            balance: account.balance(),
            pending: account.pending_points(),
            debt: account.debt(),
            lifetime_points: account.lifetime_points(),
            entry_count: count(account.entries().len()),
        }
    }

    fn active_model(&self, tenant: &str, customer: &CustomerId, revision: i64) -> account::ActiveModel {
        account::ActiveModel {
            tenant_id: Set(tenant.to_owned()),
            customer_id: Set(customer.as_str().to_owned()),
            merged_into: Set(self
                .merged_into
                .as_ref()
                .map(|survivor| survivor.as_str().to_owned())),
            merge_position: Set(self.merge_position),
            tier: Set(self.tier.clone()),
            tier_evaluated_at: Set(self.tier_evaluated_at),
            debts: Set(self.debts.clone()),
            balance: Set(self.balance),
            pending: Set(self.pending),
            debt: Set(self.debt),
            lifetime_points: Set(self.lifetime_points),
            entry_count: Set(self.entry_count),
            revision: Set(revision),
        }
    }
}

/// An account of the tree (the root or one absorbed into it) and its place among its
/// survivor's absorbed accounts.
struct Node<'a> {
    account: &'a Account,
    position: i32,
}

/// The account and every account absorbed into it, depth first.
fn nodes(account: &Account) -> Vec<Node<'_>> {
    fn walk<'a>(account: &'a Account, position: i32, out: &mut Vec<Node<'a>>) {
        out.push(Node { account, position });
        for (index, absorbed) in account.absorbed().iter().enumerate() {
            walk(absorbed, i32::try_from(index).unwrap_or(i32::MAX), out);
        }
    }
    let mut out = Vec::new();
    walk(account, 0, &mut out);
    out
}

fn count(length: usize) -> i64 {
    i64::try_from(length).unwrap_or(i64::MAX)
}

/// A ledger entry with its position in its customer's ledger (the page key).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredEntry {
    pub seq: i64,
    pub entry: LedgerEntry,
}

/// The order of a ledger page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PageOrder {
    OldestFirst,
    NewestFirst,
}

/// A lot and the account holding it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeldLot {
    pub holder: CustomerId,
    pub lot: Lot,
}

impl HeldLot {
    /// The cursor after this lot in a page of [`Store::lots_expiring`] (`None` for a lot that
    /// never expires, which such a page never holds).
    pub fn expiry_cursor(&self) -> Option<LotCursor> {
        self.lot.expires_at.map(|at| LotCursor {
            at,
            lot_id: self.lot.id.clone(),
        })
    }

    /// The cursor after this lot in a page of [`Store::lots_maturing`].
    pub fn maturity_cursor(&self) -> LotCursor {
        LotCursor {
            at: self.lot.matures_at,
            lot_id: self.lot.id.clone(),
        }
    }
}

/// Where a page of lots continues: after `(at, lot_id)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LotCursor {
    pub at: DateTime<Utc>,
    pub lot_id: LotId,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RowLock {
    /// `FOR UPDATE`: the caller will change the account.
    Update,
    /// `FOR SHARE`: the caller reads; writers wait until it is done.
    Share,
}

impl Store {
    /// The account of `customer`, its row locked until `txn` ends (`FOR UPDATE` on
    /// PostgreSQL; SQLite's write transaction is exclusive already), with its whole ledger,
    /// its lots and the accounts merged into it. `None` when the customer has no account.
    ///
    /// A customer merged into another comes back as its frozen account (its ledger, no lots,
    /// [`Account::merged_into`] set), which the domain refuses to apply to: load the survivor
    /// instead (see [`Store::resolve_holder`]).
    pub async fn load_account(
        &self,
        txn: &DatabaseTransaction,
        tenant: &str,
        customer: &CustomerId,
    ) -> Result<Option<StoredAccount>, StoreError> {
        self.load(txn, tenant, customer, RowLock::Update).await
    }

    /// Like [`Store::load_account`] for reading: on PostgreSQL the row is locked `FOR SHARE`,
    /// so the queries of the load see one state of the account. Use a transaction from
    /// [`Store::begin_read`] and end it soon.
    pub async fn read_account(
        &self,
        txn: &DatabaseTransaction,
        tenant: &str,
        customer: &CustomerId,
    ) -> Result<Option<StoredAccount>, StoreError> {
        self.load(txn, tenant, customer, RowLock::Share).await
    }

    /// The account of `fresh`'s customer, locked as by [`Store::load_account`]; when the
    /// customer has none yet, `fresh` (a new, empty account such as `Account::new`) is stored
    /// and returned. Concurrent first operations of one member create it once: the second
    /// waits for the first and loads its account.
    pub async fn load_or_create_account(
        &self,
        txn: &DatabaseTransaction,
        tenant: &str,
        fresh: Account,
    ) -> Result<StoredAccount, StoreError> {
        if !fresh.entries().is_empty()
            || fresh.lots().next().is_some()
            || !fresh.absorbed().is_empty()
            || fresh.merged_into().is_some()
        {
            return Err(StoreError::InvalidSave(format!(
                "the account created for {} must be new and empty",
                fresh.customer()
            )));
        }
        let customer = fresh.customer().clone();
        let inserted = account::Entity::insert(RowImage::of(&fresh, 0).active_model(tenant, &customer, 1))
            .on_conflict(
                OnConflict::columns([account::Column::TenantId, account::Column::CustomerId])
                    .do_nothing()
                    .to_owned(),
            )
            .exec_without_returning(txn)
            .await?;
        if inserted == 1 {
            let revisions = HashMap::from([(customer, 1)]);
            let stored = Snapshot::of(&fresh, &revisions);
            return Ok(StoredAccount {
                account: fresh,
                stored,
            });
        }
        self.load_account(txn, tenant, &customer)
            .await?
            .ok_or_else(|| StoreError::Conflict(format!("the account of {customer} vanished")))
    }

    /// The customer whose account holds `customer`'s points now: itself, or the survivor it
    /// was merged into (through every merge since). `None` without an account. Reads without
    /// locking: lock the answer with [`Store::load_account`] and check that it is not merged.
    pub async fn resolve_holder<C: ConnectionTrait>(
        &self,
        db: &C,
        tenant: &str,
        customer: &CustomerId,
    ) -> Result<Option<CustomerId>, StoreError> {
        let mut current = customer.clone();
        for _ in 0..=MAX_MERGE_DEPTH {
            let Some(row) = account::Entity::find_by_id((tenant.to_owned(), current.as_str().to_owned()))
                .one(db)
                .await?
            else {
                return Ok(None);
            };
            match row.merged_into {
                Some(survivor) => current = CustomerId::from(survivor),
                None => return Ok(Some(current)),
            }
        }
        Err(StoreError::corrupt(format!(
            "the merges from {customer} are deeper than {MAX_MERGE_DEPTH}"
        )))
    }

    async fn load(
        &self,
        txn: &DatabaseTransaction,
        tenant: &str,
        customer: &CustomerId,
        lock: RowLock,
    ) -> Result<Option<StoredAccount>, StoreError> {
        let mut loaded = self
            .load_many(txn, tenant, std::slice::from_ref(customer), lock)
            .await?;
        Ok(loaded.remove(customer))
    }

    /// The accounts of `customers` (those that have one), each locked and loaded as by
    /// [`Store::load_account`], in a fixed number of queries whatever their count: a batch of
    /// purchase events loads its members together. Rows are locked in customer order, so two
    /// batches over the same members cannot deadlock.
    pub async fn load_accounts(
        &self,
        txn: &DatabaseTransaction,
        tenant: &str,
        customers: &[CustomerId],
    ) -> Result<HashMap<CustomerId, StoredAccount>, StoreError> {
        self.load_many(txn, tenant, customers, RowLock::Update).await
    }

    async fn load_many(
        &self,
        txn: &DatabaseTransaction,
        tenant: &str,
        customers: &[CustomerId],
        lock: RowLock,
    ) -> Result<HashMap<CustomerId, StoredAccount>, StoreError> {
        let mut wanted: Vec<String> = customers
            .iter()
            .map(|customer| customer.as_str().to_owned())
            .collect();
        wanted.sort();
        wanted.dedup();
        let mut roots = Vec::new();
        for chunk in wanted.chunks(IN_CHUNK) {
            let mut query = account::Entity::find()
                .filter(account::Column::TenantId.eq(tenant))
                .filter(account::Column::CustomerId.is_in(chunk.iter().cloned()))
                .order_by_asc(account::Column::CustomerId);
            if is_postgres(txn) {
                query = match lock {
                    RowLock::Update => query.lock_exclusive(),
                    RowLock::Share => query.lock_shared(),
                };
            }
            roots.extend(query.all(txn).await?);
        }
        if roots.is_empty() {
            return Ok(HashMap::new());
        }

        // The accounts merged into them, level by level.
        let mut rows = roots.clone();
        let mut seen: HashSet<String> = roots.iter().map(|root| root.customer_id.clone()).collect();
        let mut frontier: Vec<String> = seen.iter().cloned().collect();
        let mut merged_rows = Vec::new();
        let mut depth = 0;
        while !frontier.is_empty() {
            depth += 1;
            if depth > MAX_MERGE_DEPTH {
                return Err(StoreError::corrupt(format!(
                    "the merges into {} are deeper than {MAX_MERGE_DEPTH}",
                    frontier.join(", ")
                )));
            }
            let mut next = Vec::new();
            for chunk in frontier.chunks(IN_CHUNK) {
                for child in account::Entity::find()
                    .filter(account::Column::TenantId.eq(tenant))
                    .filter(account::Column::MergedInto.is_in(chunk.iter().cloned()))
                    .all(txn)
                    .await?
                {
                    if !seen.insert(child.customer_id.clone()) {
                        // Asked for both a survivor and an account merged into it: the merged
                        // one is part of the survivor's tree, not an account of its own.
                        let Some(index) = roots
                            .iter()
                            .position(|root| root.customer_id == child.customer_id)
                        else {
                            return Err(StoreError::corrupt(format!(
                                "account {} is merged into itself",
                                child.customer_id
                            )));
                        };
                        roots.remove(index);
                        next.push(child.customer_id.clone());
                        merged_rows.push(child);
                        continue;
                    }
                    next.push(child.customer_id.clone());
                    rows.push(child.clone());
                    merged_rows.push(child);
                }
            }
            frontier = next;
        }
        let customers: Vec<String> = rows.iter().map(|row| row.customer_id.clone()).collect();

        let mut entries: HashMap<String, Vec<entry::Model>> = HashMap::new();
        let mut lots: HashMap<String, Vec<Lot>> = HashMap::new();
        let mut cancellations: HashMap<String, BTreeMap<EntryId, EntryId>> = HashMap::new();
        for chunk in customers.chunks(IN_CHUNK) {
            for row in entry::Entity::find()
                .filter(entry::Column::TenantId.eq(tenant))
                .filter(entry::Column::CustomerId.is_in(chunk.iter().cloned()))
                .order_by_asc(entry::Column::CustomerId)
                .order_by_asc(entry::Column::Seq)
                .all(txn)
                .await?
            {
                entries.entry(row.customer_id.clone()).or_default().push(row);
            }
            for row in lot::Entity::find()
                .filter(lot::Column::TenantId.eq(tenant))
                .filter(lot::Column::CustomerId.is_in(chunk.iter().cloned()))
                .all(txn)
                .await?
            {
                let holder = row.customer_id.clone();
                lots.entry(holder).or_default().push(lot_from_row(row)?);
            }
            for row in cancellation::Entity::find()
                .filter(cancellation::Column::TenantId.eq(tenant))
                .filter(cancellation::Column::CustomerId.is_in(chunk.iter().cloned()))
                .all(txn)
                .await?
            {
                cancellations.entry(row.customer_id).or_default().insert(
                    EntryId::from(row.redemption_entry_id),
                    EntryId::from(row.cancellation_entry_id),
                );
            }
        }

        let mut children: HashMap<String, Vec<account::Model>> = HashMap::new();
        let mut revisions = HashMap::new();
        for row in &rows {
            revisions.insert(CustomerId::from(row.customer_id.as_str()), row.revision);
        }
        for row in merged_rows {
            if let Some(survivor) = row.merged_into.clone() {
                children.entry(survivor).or_default().push(row);
            }
        }
        let mut parts = Parts {
            entries,
            lots,
            cancellations,
            children,
        };
        let mut loaded = HashMap::with_capacity(roots.len());
        for root in roots {
            let customer = CustomerId::from(root.customer_id.as_str());
            let account_parts = parts.build(root)?;
            let account = Account::from_parts(account_parts)
                .map_err(|error| StoreError::corrupt(format!("account of {customer}: {error}")))?;
            let stored = Snapshot::of(&account, &revisions);
            loaded.insert(customer, StoredAccount { account, stored });
        }
        Ok(loaded)
    }

    /// Writes what changed in `accounts` since they were read (or everything, for accounts
    /// not stored yet), in `txn`: account rows that changed (each under its revision), new
    /// ledger entries, lots created, changed or moved, and new cancellations.
    ///
    /// Save together every account one change touched: both accounts of a merge, the
    /// survivor and the account an unmerge restored ([`StoredAccount::new`]). A merged
    /// account's own (emptied) value is then ignored in favour of its frozen copy inside the
    /// survivor.
    ///
    /// Errors: [`StoreError::DuplicateEntry`] when a new entry's id exists in the tenant;
    /// [`StoreError::Conflict`] when a row changed since it was read; [`StoreError::InvalidSave`]
    /// when the accounts do not fit together. Roll the transaction back after any error.
    pub async fn save_accounts(
        &self,
        txn: &DatabaseTransaction,
        tenant: &str,
        accounts: &mut [&mut StoredAccount],
    ) -> Result<(), StoreError> {
        let mut stored = Snapshot::default();
        for account in accounts.iter() {
            stored.extend(&account.stored);
        }
        let (revisions, skipped) = {
            let views: Vec<&Account> = accounts.iter().map(|stored| &stored.account).collect();
            let plan = Plan::new(&views, &stored)?;
            let revisions = plan.write(txn, tenant, &stored).await?;
            (revisions, plan.skipped)
        };
        for (account, skipped) in accounts.iter_mut().zip(skipped) {
            // A merged account's emptied value stands for nothing stored any more: its row,
            // ledger and lots are now in the survivor's picture.
            account.stored = if skipped {
                Snapshot::default()
            } else {
                Snapshot::of(&account.account, &revisions)
            };
        }
        Ok(())
    }

    /// Saves one account (see [`Store::save_accounts`]).
    pub async fn save_account(
        &self,
        txn: &DatabaseTransaction,
        tenant: &str,
        account: &mut StoredAccount,
    ) -> Result<(), StoreError> {
        self.save_accounts(txn, tenant, &mut [account]).await
    }

    /// The entry with this id, in whichever ledger of the tenant holds it.
    pub async fn find_entry<C: ConnectionTrait>(
        &self,
        db: &C,
        tenant: &str,
        entry_id: &EntryId,
    ) -> Result<Option<LedgerEntry>, StoreError> {
        entry::Entity::find_by_id((tenant.to_owned(), entry_id.as_str().to_owned()))
            .one(db)
            .await?
            .map(entry_from_row)
            .transpose()
    }

    /// A page of `customer`'s own ledger (not those of accounts merged into it), after the
    /// entry at `after` (its [`StoredEntry::seq`]) in `order`.
    pub async fn entries_page<C: ConnectionTrait>(
        &self,
        db: &C,
        tenant: &str,
        customer: &CustomerId,
        after: Option<i64>,
        limit: u64,
        order: PageOrder,
    ) -> Result<Vec<StoredEntry>, StoreError> {
        let mut query = entry::Entity::find()
            .filter(entry::Column::TenantId.eq(tenant))
            .filter(entry::Column::CustomerId.eq(customer.as_str()));
        query = match (order, after) {
            (PageOrder::OldestFirst, Some(after)) => query.filter(entry::Column::Seq.gt(after)),
            (PageOrder::NewestFirst, Some(after)) => query.filter(entry::Column::Seq.lt(after)),
            (_, None) => query,
        };
        query = match order {
            PageOrder::OldestFirst => query.order_by_asc(entry::Column::Seq),
            PageOrder::NewestFirst => query.order_by_desc(entry::Column::Seq),
        };
        query
            .limit(limit)
            .all(db)
            .await?
            .into_iter()
            .map(|row| {
                let seq = row.seq;
                Ok(StoredEntry {
                    seq,
                    entry: entry_from_row(row)?,
                })
            })
            .collect()
    }

    /// Units of `reward_id` that `customers` (a member and those merged into it) redeemed,
    /// net of cancelled redemptions: what a per-member limit counts.
    pub async fn redeemed_units<C: ConnectionTrait>(
        &self,
        db: &C,
        tenant: &str,
        customers: &[&CustomerId],
        reward_id: &str,
    ) -> Result<u32, StoreError> {
        let names: Vec<String> = customers
            .iter()
            .map(|customer| customer.as_str().to_owned())
            .collect();
        let mut total: i64 = 0;
        for chunk in names.chunks(IN_CHUNK) {
            let redemptions: Vec<(String, Option<i64>)> = entry::Entity::find()
                .select_only()
                .column(entry::Column::EntryId)
                .column(entry::Column::RewardQuantity)
                .filter(entry::Column::TenantId.eq(tenant))
                .filter(entry::Column::CustomerId.is_in(chunk.iter().cloned()))
                .filter(entry::Column::Kind.eq("REDEEM"))
                .filter(entry::Column::RewardId.eq(reward_id))
                .into_tuple()
                .all(db)
                .await?;
            let cancelled: HashSet<String> = cancellation::Entity::find()
                .select_only()
                .column(cancellation::Column::RedemptionEntryId)
                .filter(cancellation::Column::TenantId.eq(tenant))
                .filter(cancellation::Column::CustomerId.is_in(chunk.iter().cloned()))
                .into_tuple()
                .all(db)
                .await?
                .into_iter()
                .collect();
            total += redemptions
                .into_iter()
                .filter(|(entry_id, _)| !cancelled.contains(entry_id))
                .map(|(_, quantity)| quantity.unwrap_or(0))
                .sum::<i64>();
        }
        Ok(u32::try_from(total.max(0)).unwrap_or(u32::MAX))
    }

    /// Lots of the tenant with points left whose expiry is in `(after_time, until]`
    /// (`after_time` `None`: any time up to `until`), soonest first, `limit` at a time from
    /// `after`. The expiry job asks with `until` = now; "points expiring soon" with
    /// `(now, now + notice]`.
    pub async fn lots_expiring<C: ConnectionTrait>(
        &self,
        db: &C,
        tenant: &str,
        after_time: Option<DateTime<Utc>>,
        until: DateTime<Utc>,
        after: Option<&LotCursor>,
        limit: u64,
    ) -> Result<Vec<HeldLot>, StoreError> {
        let mut query = lot::Entity::find()
            .filter(lot::Column::TenantId.eq(tenant))
            .filter(lot::Column::RemainingPoints.gt(0))
            .filter(lot::Column::ExpiresAt.is_not_null())
            .filter(lot::Column::ExpiresAt.lte(until));
        if let Some(after_time) = after_time {
            query = query.filter(lot::Column::ExpiresAt.gt(after_time));
        }
        if let Some(cursor) = after {
            query = query.filter(keyset(lot::Column::ExpiresAt, cursor));
        }
        held_lots(
            query
                .order_by_asc(lot::Column::ExpiresAt)
                .order_by_asc(lot::Column::LotId)
                .limit(limit)
                .all(db)
                .await?,
        )
    }

    /// Pending lots of the tenant that mature at or before `until`, in maturity order,
    /// `limit` at a time from `after`: what the maturity job turns spendable.
    pub async fn lots_maturing<C: ConnectionTrait>(
        &self,
        db: &C,
        tenant: &str,
        until: DateTime<Utc>,
        after: Option<&LotCursor>,
        limit: u64,
    ) -> Result<Vec<HeldLot>, StoreError> {
        let mut query = lot::Entity::find()
            .filter(lot::Column::TenantId.eq(tenant))
            .filter(lot::Column::State.eq(codec::LOT_PENDING))
            .filter(lot::Column::MaturesAt.lte(until));
        if let Some(cursor) = after {
            query = query.filter(keyset(lot::Column::MaturesAt, cursor));
        }
        held_lots(
            query
                .order_by_asc(lot::Column::MaturesAt)
                .order_by_asc(lot::Column::LotId)
                .limit(limit)
                .all(db)
                .await?,
        )
    }
}

/// `(time, lot_id) > (cursor.at, cursor.lot_id)`.
fn keyset(time: lot::Column, cursor: &LotCursor) -> Condition {
    Condition::any().add(time.gt(cursor.at)).add(
        Condition::all()
            .add(time.eq(cursor.at))
            .add(lot::Column::LotId.gt(cursor.lot_id.as_str())),
    )
}

fn held_lots(rows: Vec<lot::Model>) -> Result<Vec<HeldLot>, StoreError> {
    rows.into_iter()
        .map(|row| {
            let holder = CustomerId::from(row.customer_id.as_str());
            Ok(HeldLot {
                holder,
                lot: lot_from_row(row)?,
            })
        })
        .collect()
}

/// The rows a save writes, checked before anything is written.
struct Plan<'a> {
    nodes: Vec<Node<'a>>,
    /// Per account given: left out as the emptied value of a merged account whose frozen
    /// copy is saved inside its survivor.
    skipped: Vec<bool>,
}

impl<'a> Plan<'a> {
    fn new(accounts: &[&'a Account], stored: &Snapshot) -> Result<Self, StoreError> {
        let nested: HashSet<&CustomerId> = accounts
            .iter()
            .flat_map(|account| nodes(account).into_iter().skip(1))
            .map(|node| node.account.customer())
            .collect();
        let mut seen = HashSet::new();
        let mut all = Vec::new();
        let mut skipped = Vec::with_capacity(accounts.len());
        for account in accounts {
            let husk = account.merged_into().is_some() && nested.contains(account.customer());
            skipped.push(husk);
            if husk {
                continue;
            }
            for node in nodes(account) {
                let customer = node.account.customer();
                if !seen.insert(customer.clone()) {
                    return Err(StoreError::InvalidSave(format!(
                        "customer {customer} is in two of the accounts saved"
                    )));
                }
                all.push(node);
            }
        }

        // Nothing that was read may disappear: lots and ledgers only ever move between the
        // accounts saved together.
        for customer in stored.rows.keys() {
            if !seen.contains(customer) {
                return Err(StoreError::InvalidSave(format!(
                    "the account of {customer} was read but is not among the accounts saved"
                )));
            }
        }
        let mut lots = HashSet::new();
        let mut entries = HashSet::new();
        for node in &all {
            lots.extend(node.account.lots().map(|lot| &lot.id));
            for entry in node.account.entries() {
                if &entry.customer != node.account.customer() {
                    return Err(StoreError::InvalidSave(format!(
                        "entry {} of {} is in the ledger of {}",
                        entry.id,
                        entry.customer,
                        node.account.customer()
                    )));
                }
                entries.insert(&entry.id);
            }
        }
        if let Some(lot_id) = stored.lots.keys().find(|lot_id| !lots.contains(lot_id)) {
            return Err(StoreError::InvalidSave(format!(
                "lot {lot_id} left the accounts saved"
            )));
        }
        if let Some(entry_id) = stored.entries.iter().find(|entry_id| !entries.contains(entry_id)) {
            return Err(StoreError::InvalidSave(format!(
                "ledger entry {entry_id} left the accounts saved"
            )));
        }
        Ok(Self { nodes: all, skipped })
    }

    /// Writes the differences from `stored`; returns every saved account row's revision.
    async fn write(
        &self,
        txn: &DatabaseTransaction,
        tenant: &str,
        stored: &Snapshot,
    ) -> Result<HashMap<CustomerId, i64>, StoreError> {
        let mut revisions = HashMap::new();
        // Account rows first: a revision that moved stops the save before anything else. All
        // in one upsert per chunk, each row written only over the revision it was read at
        // (a new row only where none exists), so a batch of members costs one statement.
        let mut rows = Vec::new();
        for node in &self.nodes {
            let customer = node.account.customer();
            let image = RowImage::of(node.account, node.position);
            let revision = match stored.rows.get(customer) {
                Some(row) if row.image == image => row.revision,
                Some(row) => {
                    if image.entry_count < row.image.entry_count {
                        return Err(StoreError::InvalidSave(format!(
                            "the ledger of {customer} would lose entries"
                        )));
                    }
                    rows.push(image.active_model(tenant, customer, row.revision + 1));
                    row.revision + 1
                }
                None => {
                    rows.push(image.active_model(tenant, customer, 1));
                    1
                }
            };
            revisions.insert(customer.clone(), revision);
        }
        for chunk in chunked(rows, ROWS_PER_STATEMENT) {
            let expected = count(chunk.len());
            let written = account::Entity::insert_many(chunk)
                .on_conflict(
                    OnConflict::columns([account::Column::TenantId, account::Column::CustomerId])
                        .update_columns(account::Column::iter().filter(|column| {
                            !matches!(column, account::Column::TenantId | account::Column::CustomerId)
                        }))
                        // The stored row is the one read: its revision is one below the new.
                        .action_and_where(sea_orm::sea_query::ExprTrait::eq(
                            sea_orm::sea_query::ExprTrait::add(
                                Expr::col((account::Entity, account::Column::Revision)),
                                1,
                            ),
                            Expr::col((Alias::new("excluded"), account::Column::Revision)),
                        ))
                        .to_owned(),
                )
                .exec_without_returning(txn)
                .await?;
            if i64::try_from(written).ok() != Some(expected) {
                return Err(StoreError::Conflict(
                    "an account changed or was created since it was read".into(),
                ));
            }
        }

        // New entries. One alone is inserted as is, so a duplicate id is reported by the
        // database; several are checked for ids taken first and inserted together.
        let mut new_entries = Vec::new();
        for node in &self.nodes {
            for (seq, entry) in node.account.entries().iter().enumerate() {
                if !stored.entries.contains(&entry.id) {
                    new_entries.push((count(seq), entry));
                }
            }
        }
        if let [(seq, entry)] = new_entries.as_slice() {
            insert_entry(txn, tenant, *seq, entry).await?;
        } else if !new_entries.is_empty() {
            insert_entries(txn, tenant, &new_entries).await?;
        }

        // Lots created, changed or moved.
        let mut new_lots = Vec::new();
        for node in &self.nodes {
            let holder = node.account.customer();
            for lot in node.account.lots() {
                match stored.lots.get(&lot.id) {
                    Some((was_holder, was)) if was_holder == holder && was == lot => {}
                    Some((was_holder, _)) => {
                        let updated = lot::Entity::update_many()
                            .set(lot_active_model(tenant, holder, lot))
                            .filter(lot::Column::TenantId.eq(tenant))
                            .filter(lot::Column::LotId.eq(lot.id.as_str()))
                            .filter(lot::Column::CustomerId.eq(was_holder.as_str()))
                            .exec(txn)
                            .await?
                            .rows_affected;
                        if updated != 1 {
                            return Err(StoreError::Conflict(format!(
                                "lot {} is no longer held by {was_holder}",
                                lot.id
                            )));
                        }
                    }
                    None => new_lots.push(lot_active_model(tenant, holder, lot)),
                }
            }
        }
        for chunk in chunked(new_lots, ROWS_PER_STATEMENT) {
            lot::Entity::insert_many(chunk)
                .exec_without_returning(txn)
                .await
                .map_err(|error| unique_as_conflict(error, || "a new lot's id exists".into()))?;
        }

        // Cancellations, kept with the ledger of the redemption.
        for node in &self.nodes {
            for entry in node.account.entries() {
                if !matches!(entry.kind, EntryKind::Redeem { .. }) || stored.cancellations.contains(&entry.id)
                {
                    continue;
                }
                let Some(cancelled_by) = node.account.redemption_cancelled_by(&entry.id) else {
                    continue;
                };
                cancellation::Entity::insert(cancellation::ActiveModel {
                    tenant_id: Set(tenant.to_owned()),
                    redemption_entry_id: Set(entry.id.as_str().to_owned()),
                    customer_id: Set(node.account.customer().as_str().to_owned()),
                    cancellation_entry_id: Set(cancelled_by.as_str().to_owned()),
                })
                .exec_without_returning(txn)
                .await
                .map_err(|error| {
                    unique_as_conflict(error, || format!("redemption {} was cancelled already", entry.id))
                })?;
            }
        }
        Ok(revisions)
    }
}

/// Rows per multi-row statement: far below PostgreSQL's 65,535 and SQLite's 32,766 bound
/// parameters at 13 columns a row.
const ROWS_PER_STATEMENT: usize = 1000;

fn chunked<T>(rows: Vec<T>, size: usize) -> Vec<Vec<T>> {
    let mut chunks = Vec::new();
    let mut rows = rows.into_iter().peekable();
    while rows.peek().is_some() {
        chunks.push(rows.by_ref().take(size).collect());
    }
    chunks
}

/// Inserts several new entries: an id already in the tenant is reported as
/// [`StoreError::DuplicateEntry`] before anything is written; one taken concurrently after
/// that check fails the statement as a conflict, and the retry's check names it.
async fn insert_entries(
    txn: &DatabaseTransaction,
    tenant: &str,
    entries: &[(i64, &LedgerEntry)],
) -> Result<(), StoreError> {
    for chunk in entries.chunks(ROWS_PER_STATEMENT) {
        let ids: Vec<String> = chunk
            .iter()
            .map(|(_, entry)| entry.id.as_str().to_owned())
            .collect();
        let taken: Option<String> = entry::Entity::find()
            .select_only()
            .column(entry::Column::EntryId)
            .filter(entry::Column::TenantId.eq(tenant))
            .filter(entry::Column::EntryId.is_in(ids))
            .into_tuple()
            .one(txn)
            .await?;
        if let Some(entry_id) = taken {
            return Err(StoreError::DuplicateEntry {
                entry_id: EntryId::from(entry_id),
            });
        }
        entry::Entity::insert_many(
            chunk
                .iter()
                .map(|(seq, entry)| entry_active_model(tenant, *seq, entry)),
        )
        .exec_without_returning(txn)
        .await
        .map_err(|error| {
            unique_as_conflict(error, || "a new ledger entry's id or position was taken".into())
        })?;
    }
    Ok(())
}

fn entry_active_model(tenant: &str, seq: i64, entry: &LedgerEntry) -> entry::ActiveModel {
    let reward = match &entry.kind {
        EntryKind::Redeem {
            reward: Some(line), ..
        } => Some(line),
        _ => None,
    };
    entry::ActiveModel {
        tenant_id: Set(tenant.to_owned()),
        entry_id: Set(entry.id.as_str().to_owned()),
        customer_id: Set(entry.customer.as_str().to_owned()),
        seq: Set(seq),
        entry_time: Set(entry.at),
        kind: Set(entry.kind.name().to_owned()),
        balance_delta: Set(entry.balance_delta),
        pending_delta: Set(entry.pending_delta),
        debt_delta: Set(entry.debt_delta),
        reward_id: Set(reward.map(|line| line.reward_id.clone())),
        reward_quantity: Set(reward.map(|line| i64::from(line.quantity))),
        body: Set(codec::encode_entry_body(entry)),
    }
}

async fn insert_entry(
    txn: &DatabaseTransaction,
    tenant: &str,
    seq: i64,
    entry: &LedgerEntry,
) -> Result<(), StoreError> {
    let result = entry::Entity::insert(entry_active_model(tenant, seq, entry))
        .exec_without_returning(txn)
        .await;
    match result {
        Ok(_) => Ok(()),
        Err(error) => match unique_violation_message(&error) {
            // The (tenant, customer, seq) index: another writer appended to this ledger.
            Some(message) if message.contains("seq") => Err(StoreError::Conflict(format!(
                "position {seq} of the ledger of {} is taken",
                entry.customer
            ))),
            Some(_) => Err(StoreError::DuplicateEntry {
                entry_id: entry.id.clone(),
            }),
            None => Err(error.into()),
        },
    }
}

fn unique_violation_message(error: &DbErr) -> Option<String> {
    match error.sql_err() {
        Some(sea_orm::SqlErr::UniqueConstraintViolation(message)) => Some(message),
        _ => None,
    }
}

fn unique_as_conflict(error: DbErr, what: impl FnOnce() -> String) -> StoreError {
    if crm_db::is_unique_violation(&error) {
        StoreError::Conflict(what())
    } else {
        error.into()
    }
}

fn lot_active_model(tenant: &str, holder: &CustomerId, lot: &Lot) -> lot::ActiveModel {
    lot::ActiveModel {
        tenant_id: Set(tenant.to_owned()),
        lot_id: Set(lot.id.as_str().to_owned()),
        customer_id: Set(holder.as_str().to_owned()),
        origin_customer: Set(lot.origin_customer.as_str().to_owned()),
        source: Set(codec::lot_source_name(lot.source).to_owned()),
        earned_at: Set(lot.earned_at),
        matures_at: Set(lot.matures_at),
        expires_at: Set(lot.expires_at),
        state: Set(codec::lot_state_name(lot.state).to_owned()),
        original_points: Set(lot.original_points),
        remaining_points: Set(lot.remaining_points),
        expired_points: Set(lot.expired_points),
        reversed_points: Set(lot.reversed_points),
        qualifying_spend_minor: Set(lot.qualifying_spend_minor),
    }
}

fn lot_from_row(row: lot::Model) -> Result<Lot, StoreError> {
    Ok(Lot {
        id: LotId::from(row.lot_id),
        origin_customer: CustomerId::from(row.origin_customer),
        source: codec::lot_source_from_name(&row.source)?,
        earned_at: row.earned_at,
        matures_at: row.matures_at,
        expires_at: row.expires_at,
        state: codec::lot_state_from_name(&row.state)?,
        original_points: row.original_points,
        remaining_points: row.remaining_points,
        expired_points: row.expired_points,
        reversed_points: row.reversed_points,
        qualifying_spend_minor: row.qualifying_spend_minor,
    })
}

fn entry_from_row(row: entry::Model) -> Result<LedgerEntry, StoreError> {
    let (kind, movements) = codec::decode_entry_body(&row.body)?;
    if kind.name() != row.kind {
        return Err(StoreError::corrupt(format!(
            "entry {} is stored as {} but its body is {}",
            row.entry_id,
            row.kind,
            kind.name()
        )));
    }
    Ok(LedgerEntry {
        id: EntryId::from(row.entry_id),
        customer: CustomerId::from(row.customer_id),
        at: row.entry_time,
        kind,
        movements,
        balance_delta: row.balance_delta,
        pending_delta: row.pending_delta,
        debt_delta: row.debt_delta,
    })
}

/// The rows of one account tree, taken apart into [`AccountParts`].
struct Parts {
    entries: HashMap<String, Vec<entry::Model>>,
    lots: HashMap<String, Vec<Lot>>,
    cancellations: HashMap<String, BTreeMap<EntryId, EntryId>>,
    /// Survivor -> the accounts merged into it.
    children: HashMap<String, Vec<account::Model>>,
}

impl Parts {
    fn build(&mut self, row: account::Model) -> Result<AccountParts, StoreError> {
        let customer = row.customer_id;
        let rows = self.entries.remove(&customer).unwrap_or_default();
        if count(rows.len()) != row.entry_count {
            return Err(StoreError::corrupt(format!(
                "the ledger of {customer} has {} entries, its account says {}",
                rows.len(),
                row.entry_count
            )));
        }
        let mut entries = Vec::with_capacity(rows.len());
        for (position, entry_row) in rows.into_iter().enumerate() {
            if entry_row.seq != count(position) {
                return Err(StoreError::corrupt(format!(
                    "the ledger of {customer} has no entry at position {position}"
                )));
            }
            entries.push(entry_from_row(entry_row)?);
        }
        let mut children = self.children.remove(&customer).unwrap_or_default();
        children.sort_by_key(|child| child.merge_position);
        let absorbed = children
            .into_iter()
            .map(|child| self.build(child))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(AccountParts {
            customer: CustomerId::from(customer.as_str()),
            lots: self.lots.remove(&customer).unwrap_or_default(),
            entries,
            debt_by_origin: codec::decode_debts(&row.debts)?,
            tier: row.tier,
            tier_evaluated_at: row.tier_evaluated_at,
            redemption_cancellations: self.cancellations.remove(&customer).unwrap_or_default(),
            absorbed,
            merged_into: row.merged_into.map(CustomerId::from),
        })
    }
}
