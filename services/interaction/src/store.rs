//! Persistence of touchpoint records and callbacks, in domain terms, sea-orm underneath.
//!
//! Every write is one transaction holding the rows, their outbox events (only for rows that
//! were really written) and the request's idempotency record. Rows carry their content as the
//! encoded proto message (`body`) plus the columns reads filter and sort on.
//!
//! Each row keeps two customers: `origin_customer_id`, the customer it was recorded for, and
//! `customer_id`, the customer it belongs to now (the survivor after merges). A merge applied
//! from customer-profile's events re-keys `customer_id`; an unmerge restores it from the origin.
//! Writes resolve their customer through the merges already applied, in the same transaction,
//! and on PostgreSQL hold the tenant's merge lock (an advisory lock) shared, which applying a
//! merge takes exclusively, so a record cannot slip in under a customer just merged away.

pub mod migrations;

use std::collections::{BTreeSet, HashMap};

use chrono::{DateTime, Utc};
use crm_db::idempotency::{self, IdempotencyClaim, RequestKey, StoredResponse};
use crm_db::outbox::{self, NewEvent};
use crm_runtime::TenantId;
use sea_orm::entity::prelude::*;
use sea_orm::sea_query::{Expr, ExprTrait, OnConflict};
use sea_orm::{
    Condition, ConnectionTrait, DatabaseConnection, DatabaseTransaction, DbBackend, QueryOrder, QuerySelect,
    Set, Statement,
};
use uuid::Uuid;

use crate::domain::RecordKind;
use crate::error::InteractionError;

mod entities {
    pub mod record {
        use sea_orm::entity::prelude::*;

        #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
        #[sea_orm(table_name = "records")]
        pub struct Model {
            #[sea_orm(primary_key, auto_increment = false)]
            pub tenant_id: String,
            #[sea_orm(primary_key, auto_increment = false)]
            pub id: Uuid,
            pub record_kind: String,
            pub customer_id: Uuid,
            pub origin_customer_id: Uuid,
            pub parent_id: Option<Uuid>,
            pub external_key: Option<String>,
            pub occur_time: ChronoDateTimeUtc,
            pub channel: i32,
            pub form: i32,
            pub currency: Option<String>,
            pub amount_minor: Option<i64>,
            pub refunded_minor: i64,
            pub body: Vec<u8>,
            pub create_time: ChronoDateTimeUtc,
        }

        #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
        pub enum Relation {}

        impl ActiveModelBehavior for ActiveModel {}
    }

    pub mod callback {
        use sea_orm::entity::prelude::*;

        #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
        #[sea_orm(table_name = "callbacks")]
        pub struct Model {
            #[sea_orm(primary_key, auto_increment = false)]
            pub tenant_id: String,
            #[sea_orm(primary_key, auto_increment = false)]
            pub id: Uuid,
            pub customer_id: Uuid,
            pub origin_customer_id: Uuid,
            pub assignee: String,
            pub due_time: ChronoDateTimeUtc,
            pub state: String,
            pub revision: i64,
            pub body: Vec<u8>,
            pub create_time: ChronoDateTimeUtc,
        }

        #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
        pub enum Relation {}

        impl ActiveModelBehavior for ActiveModel {}
    }

    pub mod cursor {
        use sea_orm::entity::prelude::*;

        #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
        #[sea_orm(table_name = "customer_event_cursors")]
        pub struct Model {
            #[sea_orm(primary_key, auto_increment = false)]
            pub tenant_id: String,
            pub position: i64,
        }

        #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
        pub enum Relation {}

        impl ActiveModelBehavior for ActiveModel {}
    }

    pub mod alias {
        use sea_orm::entity::prelude::*;

        #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
        #[sea_orm(table_name = "customer_aliases")]
        pub struct Model {
            #[sea_orm(primary_key, auto_increment = false)]
            pub tenant_id: String,
            #[sea_orm(primary_key, auto_increment = false)]
            pub merged_id: Uuid,
            pub survivor_id: Uuid,
        }

        #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
        pub enum Relation {}

        impl ActiveModelBehavior for ActiveModel {}
    }
}

use entities::{alias, callback, cursor, record};

/// Rows per multi-row INSERT: 15 columns each stays under both engines' bind limits.
const INSERT_CHUNK: usize = 1000;
/// How long a chain of merges (A into B into C…) resolution follows.
const MAX_MERGE_DEPTH: usize = 32;

/// A record as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredRecord {
    pub id: Uuid,
    pub kind: RecordKind,
    pub customer_id: Uuid,
    pub origin_customer_id: Uuid,
    pub parent_id: Option<Uuid>,
    pub occur_time: DateTime<Utc>,
    pub channel: i32,
    pub form: i32,
    pub currency: Option<String>,
    pub amount_minor: Option<i64>,
    pub refunded_minor: i64,
    pub body: Vec<u8>,
}

impl StoredRecord {
    fn from_model(model: record::Model) -> Result<Self, InteractionError> {
        Ok(Self {
            kind: RecordKind::from_stored(&model.record_kind)
                .ok_or_else(|| InteractionError::Corrupt(format!("record kind {:?}", model.record_kind)))?,
            id: model.id,
            customer_id: model.customer_id,
            origin_customer_id: model.origin_customer_id,
            parent_id: model.parent_id,
            occur_time: model.occur_time,
            channel: model.channel,
            form: model.form,
            currency: model.currency,
            amount_minor: model.amount_minor,
            refunded_minor: model.refunded_minor,
            body: model.body,
        })
    }
}

/// A record to write.
#[derive(Debug, Clone)]
pub struct NewRecord {
    pub id: Uuid,
    pub kind: RecordKind,
    /// The customer it was recorded for, as the request named it.
    pub origin_customer_id: Uuid,
    /// The customer it belongs to (the survivor when the origin was merged away); resolved
    /// again through the merges applied here, in the write's transaction.
    pub customer_id: Uuid,
    pub parent_id: Option<Uuid>,
    /// The source system's reference; unique per tenant and kind.
    pub external_key: Option<String>,
    pub occur_time: DateTime<Utc>,
    pub channel: i32,
    pub form: i32,
    pub currency: Option<String>,
    pub amount_minor: Option<i64>,
    pub body: Vec<u8>,
    pub create_time: DateTime<Utc>,
}

/// What a write did with one of its rows.
#[derive(Debug, Clone)]
pub enum RowOutcome {
    /// Written, under this customer (the survivor when the customer had been merged).
    Created { customer_id: Uuid },
    /// A row with the same external reference existed; it is returned and nothing changed.
    Existing(StoredRecord),
}

/// The rows of a write (customers resolved) and what happened to each.
pub type Written = (Vec<NewRecord>, Vec<RowOutcome>);

/// What a write's transaction ended in.
#[derive(Debug)]
pub enum Applied<T> {
    Done(T),
    /// The request id was used before: the stored response, nothing written.
    Replayed(StoredResponse),
}

/// Only for refunds: the purchase whose refunded total grows, and by how much. The write fails
/// with [`RefundRefused`] when the purchase has less than that left.
#[derive(Debug, Clone, Copy)]
pub struct RefundGuard {
    pub purchase_id: Uuid,
    pub amount_minor: i64,
}

/// What remained of a purchase when a refund asked for more.
#[derive(Debug, Clone, Copy)]
pub struct RefundRefused {
    pub remaining_minor: i64,
}

/// A callback as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredCallback {
    pub id: Uuid,
    pub customer_id: Uuid,
    pub origin_customer_id: Uuid,
    pub revision: i64,
    pub body: Vec<u8>,
}

impl From<callback::Model> for StoredCallback {
    fn from(model: callback::Model) -> Self {
        Self {
            id: model.id,
            customer_id: model.customer_id,
            origin_customer_id: model.origin_customer_id,
            revision: model.revision,
            body: model.body,
        }
    }
}

/// A callback to write: new, or replacing `expected_revision`.
#[derive(Debug, Clone)]
pub struct CallbackWrite {
    pub id: Uuid,
    pub origin_customer_id: Uuid,
    pub customer_id: Uuid,
    pub assignee: String,
    pub due_time: DateTime<Utc>,
    pub state: &'static str,
    pub body: Vec<u8>,
    pub create_time: DateTime<Utc>,
    /// `None` to insert.
    pub expected_revision: Option<i64>,
}

/// Counts of a customer's touchpoints.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TouchpointCounts {
    pub by_channel: Vec<(i32, i64)>,
    pub by_form: Vec<(i32, i64)>,
    pub last: Option<(DateTime<Utc>, i32)>,
}

/// A customer-profile event, reduced to what this service does with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CustomerChange {
    Merged {
        survivor: Uuid,
        merged: Vec<Uuid>,
    },
    Unmerged {
        survivor: Uuid,
        restored: Vec<Uuid>,
    },
    Erased {
        customer: Uuid,
    },
    /// Nothing to do here; only the cursor moves.
    Other,
}

/// A keyset position in a list: the sort time and the id.
pub type PageKey = (DateTime<Utc>, Uuid);

pub struct Store {
    db: DatabaseConnection,
    /// Tenants whose cursor row is known to exist, so writes skip re-inserting it.
    registered: moka::sync::Cache<TenantId, ()>,
}

/// First key of the PostgreSQL advisory lock between writes and merges of one tenant
/// (ASCII "merg"); the second is a hash of the tenant id.
const MERGE_LOCK_CLASS: i32 = 0x6d65_7267;

fn is_postgres(db: &impl ConnectionTrait) -> bool {
    db.get_database_backend() == DbBackend::Postgres
}

impl Store {
    pub fn new(db: DatabaseConnection) -> Self {
        Self {
            db,
            registered: moka::sync::Cache::new(100_000),
        }
    }

    pub fn db(&self) -> &DatabaseConnection {
        &self.db
    }

    pub async fn replay(
        &self,
        tenant: &TenantId,
        method: &str,
        request_id: &str,
    ) -> Result<Option<StoredResponse>, InteractionError> {
        Ok(idempotency::find(&self.db, tenant.as_str(), method, request_id).await?)
    }

    /// Registers the tenant with the customer-event follower (cursor at 0; once per process,
    /// remembered) and, on PostgreSQL, takes the tenant's merge lock shared until the
    /// transaction ends: applying a merge takes it exclusively, so it waits for writes in
    /// flight, and writes that start later see the merge. An advisory lock, not a row lock:
    /// many concurrent writers sharing one row lock would churn multixacts on that row.
    async fn hold_tenant(
        &self,
        txn: &DatabaseTransaction,
        tenant: &TenantId,
    ) -> Result<(), InteractionError> {
        if !self.registered.contains_key(tenant) {
            cursor::Entity::insert(cursor::ActiveModel {
                tenant_id: Set(tenant.as_str().to_owned()),
                position: Set(0),
            })
            .on_conflict(
                OnConflict::column(cursor::Column::TenantId)
                    .do_nothing()
                    .to_owned(),
            )
            .exec_without_returning(txn)
            .await?;
        }
        if is_postgres(txn) {
            txn.execute_raw(Statement::from_sql_and_values(
                DbBackend::Postgres,
                "SELECT pg_advisory_xact_lock_shared($1, hashtext($2))",
                [MERGE_LOCK_CLASS.into(), tenant.as_str().into()],
            ))
            .await?;
        }
        Ok(())
    }

    /// Notes that the tenant's cursor row exists (after the write that made it committed).
    fn remember_registered(&self, tenant: &TenantId) {
        self.registered.insert(tenant.clone(), ());
    }

    /// Takes the tenant's merge lock exclusively (PostgreSQL; SQLite has a single writer).
    async fn lock_tenant_exclusively(
        txn: &DatabaseTransaction,
        tenant: &TenantId,
    ) -> Result<(), InteractionError> {
        if is_postgres(txn) {
            txn.execute_raw(Statement::from_sql_and_values(
                DbBackend::Postgres,
                "SELECT pg_advisory_xact_lock($1, hashtext($2))",
                [MERGE_LOCK_CLASS.into(), tenant.as_str().into()],
            ))
            .await?;
        }
        Ok(())
    }

    /// The merges applied for the tenant, merged id -> survivor id, for the given customers
    /// and the chains they start.
    async fn survivors_of<C: ConnectionTrait>(
        db: &C,
        tenant: &TenantId,
        customers: &BTreeSet<Uuid>,
    ) -> Result<HashMap<Uuid, Uuid>, InteractionError> {
        let mut resolved: HashMap<Uuid, Uuid> = customers.iter().map(|id| (*id, *id)).collect();
        let mut frontier: Vec<Uuid> = customers.iter().copied().collect();
        for _ in 0..MAX_MERGE_DEPTH {
            if frontier.is_empty() {
                break;
            }
            let aliases = alias::Entity::find()
                .filter(alias::Column::TenantId.eq(tenant.as_str()))
                .filter(alias::Column::MergedId.is_in(frontier.clone()))
                .all(db)
                .await?;
            let step: HashMap<Uuid, Uuid> = aliases
                .into_iter()
                .map(|row| (row.merged_id, row.survivor_id))
                .collect();
            let mut next = Vec::new();
            for current in resolved.values_mut() {
                if let Some(survivor) = step.get(current) {
                    *current = *survivor;
                    next.push(*survivor);
                }
            }
            next.sort();
            next.dedup();
            frontier = next;
        }
        Ok(resolved)
    }

    /// The customer `id` belongs to now (itself unless merged away).
    pub async fn current_customer(&self, tenant: &TenantId, id: Uuid) -> Result<Uuid, InteractionError> {
        let resolved = Self::survivors_of(&self.db, tenant, &BTreeSet::from([id])).await?;
        Ok(resolved.get(&id).copied().unwrap_or(id))
    }

    /// `customer` and every customer merged into it (directly or through others).
    pub async fn absorbed_into<C: ConnectionTrait>(
        db: &C,
        tenant: &TenantId,
        customer: Uuid,
    ) -> Result<Vec<Uuid>, InteractionError> {
        let mut all = vec![customer];
        let mut frontier = vec![customer];
        for _ in 0..MAX_MERGE_DEPTH {
            if frontier.is_empty() {
                break;
            }
            let rows = alias::Entity::find()
                .filter(alias::Column::TenantId.eq(tenant.as_str()))
                .filter(alias::Column::SurvivorId.is_in(frontier.clone()))
                .all(db)
                .await?;
            frontier = rows
                .into_iter()
                .map(|row| row.merged_id)
                .filter(|id| !all.contains(id))
                .collect();
            all.extend(&frontier);
        }
        Ok(all)
    }

    /// Writes records, each once per external key, with an event for each row written and the
    /// request's idempotency record (whose response is computed from the outcomes), in one
    /// transaction. With a `refund_guard`, the purchase's refunded total grows by the refund
    /// in the same transaction, or nothing is written.
    pub async fn insert_records(
        &self,
        tenant: &TenantId,
        mut rows: Vec<NewRecord>,
        request: Option<&RequestKey>,
        refund_guard: Option<RefundGuard>,
        event_for: impl Fn(&NewRecord) -> Result<NewEvent, InteractionError>,
        response_for: impl FnOnce(&[NewRecord], &[RowOutcome]) -> (Vec<u8>, String),
    ) -> Result<Applied<Result<Written, RefundRefused>>, InteractionError> {
        let txn = crm_db::begin_write(&self.db).await?;
        self.hold_tenant(&txn, tenant).await?;
        let customers: BTreeSet<Uuid> = rows.iter().map(|row| row.customer_id).collect();
        let survivors = Self::survivors_of(&txn, tenant, &customers).await?;
        for row in &mut rows {
            row.customer_id = survivors
                .get(&row.customer_id)
                .copied()
                .unwrap_or(row.customer_id);
        }
        let mut inserted = 0;
        for chunk in rows.chunks(INSERT_CHUNK) {
            inserted += record::Entity::insert_many(chunk.iter().map(|row| record::ActiveModel {
                tenant_id: Set(tenant.as_str().to_owned()),
                id: Set(row.id),
                record_kind: Set(row.kind.as_stored().to_owned()),
                customer_id: Set(row.customer_id),
                origin_customer_id: Set(row.origin_customer_id),
                parent_id: Set(row.parent_id),
                external_key: Set(row.external_key.clone()),
                occur_time: Set(row.occur_time),
                channel: Set(row.channel),
                form: Set(row.form),
                currency: Set(row.currency.clone()),
                amount_minor: Set(row.amount_minor),
                refunded_minor: Set(0),
                body: Set(row.body.clone()),
                create_time: Set(row.create_time),
            }))
            .on_conflict(
                OnConflict::columns([
                    record::Column::TenantId,
                    record::Column::RecordKind,
                    record::Column::ExternalKey,
                ])
                .do_nothing()
                .to_owned(),
            )
            .exec_without_returning(&txn)
            .await?;
        }
        // Every row went in (the usual case): no external key was taken, nothing to look up.
        let existing = if inserted == rows.len() as u64 {
            HashMap::new()
        } else {
            Self::holders_of_keys(&txn, tenant, &rows).await?
        };
        let outcomes: Vec<RowOutcome> = rows
            .iter()
            .map(|row| {
                let holder = row
                    .external_key
                    .as_ref()
                    .and_then(|key| existing.get(&(row.kind, key.clone())))
                    .filter(|holder| holder.id != row.id);
                match holder {
                    Some(holder) => RowOutcome::Existing(holder.clone()),
                    None => RowOutcome::Created {
                        customer_id: row.customer_id,
                    },
                }
            })
            .collect();
        if let Some(guard) = refund_guard
            && matches!(outcomes.first(), Some(RowOutcome::Created { .. }))
        {
            let grown = record::Entity::update_many()
                .col_expr(
                    record::Column::RefundedMinor,
                    Expr::col(record::Column::RefundedMinor).add(guard.amount_minor),
                )
                .filter(record::Column::TenantId.eq(tenant.as_str()))
                .filter(record::Column::Id.eq(guard.purchase_id))
                .filter(record::Column::RecordKind.eq(RecordKind::Purchase.as_stored()))
                .filter(
                    Expr::col(record::Column::AmountMinor)
                        .sub(Expr::col(record::Column::RefundedMinor))
                        .gte(guard.amount_minor),
                )
                .exec(&txn)
                .await?
                .rows_affected;
            if grown == 0 {
                let purchase = record::Entity::find_by_id((tenant.as_str().to_owned(), guard.purchase_id))
                    .one(&txn)
                    .await?;
                txn.rollback().await?;
                let remaining_minor = purchase
                    .map(|purchase| purchase.amount_minor.unwrap_or(0) - purchase.refunded_minor)
                    .unwrap_or(0);
                return Ok(Applied::Done(Err(RefundRefused { remaining_minor })));
            }
        }
        let events: Vec<NewEvent> = rows
            .iter()
            .zip(&outcomes)
            .filter(|(_, outcome)| matches!(outcome, RowOutcome::Created { .. }))
            .map(|(row, _)| event_for(row))
            .collect::<Result<_, _>>()?;
        for chunk in events.chunks(INSERT_CHUNK) {
            outbox::append_all(&txn, chunk).await?;
        }
        if let Some(request) = request {
            let (response, subject) = response_for(&rows, &outcomes);
            let claim = request.claim(response, subject);
            if let Some(stored) = idempotency::claim(&txn, tenant.as_str(), &claim).await? {
                txn.rollback().await?;
                return Ok(Applied::Replayed(stored));
            }
        }
        txn.commit().await?;
        self.remember_registered(tenant);
        Ok(Applied::Done(Ok((rows, outcomes))))
    }

    /// The stored rows holding the external keys of `rows`, by (kind, key).
    async fn holders_of_keys(
        txn: &DatabaseTransaction,
        tenant: &TenantId,
        rows: &[NewRecord],
    ) -> Result<HashMap<(RecordKind, String), StoredRecord>, InteractionError> {
        let mut keys_by_kind: HashMap<RecordKind, Vec<String>> = HashMap::new();
        for row in rows {
            if let Some(key) = &row.external_key {
                keys_by_kind.entry(row.kind).or_default().push(key.clone());
            }
        }
        let mut holders = HashMap::new();
        for (kind, keys) in keys_by_kind {
            for chunk in keys.chunks(INSERT_CHUNK) {
                let found = record::Entity::find()
                    .filter(record::Column::TenantId.eq(tenant.as_str()))
                    .filter(record::Column::RecordKind.eq(kind.as_stored()))
                    .filter(record::Column::ExternalKey.is_in(chunk.to_vec()))
                    .all(txn)
                    .await?;
                for model in found {
                    let key = model.external_key.clone().unwrap_or_default();
                    holders.insert((kind, key), StoredRecord::from_model(model)?);
                }
            }
        }
        Ok(holders)
    }

    pub async fn get_record(
        &self,
        tenant: &TenantId,
        kind: RecordKind,
        id: Uuid,
    ) -> Result<Option<StoredRecord>, InteractionError> {
        record::Entity::find_by_id((tenant.as_str().to_owned(), id))
            .filter(record::Column::RecordKind.eq(kind.as_stored()))
            .one(&self.db)
            .await?
            .map(StoredRecord::from_model)
            .transpose()
    }

    /// Records of `customers` (newest first), of one kind or all, optionally under one parent,
    /// after a keyset position.
    pub async fn list_records(
        &self,
        tenant: &TenantId,
        customers: &[Uuid],
        kind: Option<RecordKind>,
        parent: Option<Uuid>,
        after: Option<PageKey>,
        limit: u64,
    ) -> Result<Vec<StoredRecord>, InteractionError> {
        let mut query = record::Entity::find()
            .filter(record::Column::TenantId.eq(tenant.as_str()))
            .filter(record::Column::CustomerId.is_in(customers.to_vec()));
        if let Some(kind) = kind {
            query = query.filter(record::Column::RecordKind.eq(kind.as_stored()));
        }
        if let Some(parent) = parent {
            query = query.filter(record::Column::ParentId.eq(parent));
        }
        if let Some((time, id)) = after {
            query = query.filter(
                Condition::any().add(record::Column::OccurTime.lt(time)).add(
                    Condition::all()
                        .add(record::Column::OccurTime.eq(time))
                        .add(record::Column::Id.lt(id)),
                ),
            );
        }
        query
            .order_by_desc(record::Column::OccurTime)
            .order_by_desc(record::Column::Id)
            .limit(limit)
            .all(&self.db)
            .await?
            .into_iter()
            .map(StoredRecord::from_model)
            .collect()
    }

    pub async fn touchpoint_counts(
        &self,
        tenant: &TenantId,
        customers: &[Uuid],
    ) -> Result<TouchpointCounts, InteractionError> {
        let base = || {
            record::Entity::find()
                .filter(record::Column::TenantId.eq(tenant.as_str()))
                .filter(record::Column::CustomerId.is_in(customers.to_vec()))
                .filter(record::Column::RecordKind.eq(RecordKind::Interaction.as_stored()))
        };
        let count_by = |column: record::Column| {
            base()
                .select_only()
                .column(column)
                .column_as(Expr::col(record::Column::Id).count(), "count")
                .group_by(column)
                .into_tuple::<(i32, i64)>()
        };
        let mut by_channel = count_by(record::Column::Channel).all(&self.db).await?;
        let mut by_form = count_by(record::Column::Form).all(&self.db).await?;
        by_channel.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        by_form.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        let last = base()
            .order_by_desc(record::Column::OccurTime)
            .order_by_desc(record::Column::Id)
            .one(&self.db)
            .await?
            .map(|model| (model.occur_time, model.channel));
        Ok(TouchpointCounts {
            by_channel,
            by_form,
            last,
        })
    }

    /// Writes a callback (insert, or update at the expected revision) with its event and the
    /// request's idempotency record. `Ok(Done(false))`: the revision moved.
    pub async fn write_callback(
        &self,
        tenant: &TenantId,
        write: CallbackWrite,
        event: NewEvent,
        claim: Option<IdempotencyClaim>,
    ) -> Result<Applied<bool>, InteractionError> {
        let txn = crm_db::begin_write(&self.db).await?;
        self.hold_tenant(&txn, tenant).await?;
        if let Some(claim) = &claim
            && let Some(stored) = idempotency::claim(&txn, tenant.as_str(), claim).await?
        {
            txn.rollback().await?;
            return Ok(Applied::Replayed(stored));
        }
        match write.expected_revision {
            None => {
                let survivors =
                    Self::survivors_of(&txn, tenant, &BTreeSet::from([write.customer_id])).await?;
                let customer = survivors
                    .get(&write.customer_id)
                    .copied()
                    .unwrap_or(write.customer_id);
                callback::Entity::insert(callback::ActiveModel {
                    tenant_id: Set(tenant.as_str().to_owned()),
                    id: Set(write.id),
                    customer_id: Set(customer),
                    origin_customer_id: Set(write.origin_customer_id),
                    assignee: Set(write.assignee),
                    due_time: Set(write.due_time),
                    state: Set(write.state.to_owned()),
                    revision: Set(1),
                    body: Set(write.body),
                    create_time: Set(write.create_time),
                })
                .exec_without_returning(&txn)
                .await?;
            }
            Some(expected) => {
                let updated = callback::Entity::update_many()
                    .col_expr(callback::Column::State, Expr::value(write.state))
                    .col_expr(callback::Column::Body, Expr::value(write.body))
                    .col_expr(callback::Column::Revision, Expr::value(expected + 1))
                    .filter(callback::Column::TenantId.eq(tenant.as_str()))
                    .filter(callback::Column::Id.eq(write.id))
                    .filter(callback::Column::Revision.eq(expected))
                    .exec(&txn)
                    .await?
                    .rows_affected;
                if updated == 0 {
                    txn.rollback().await?;
                    return Ok(Applied::Done(false));
                }
            }
        }
        outbox::append(&txn, &event).await?;
        txn.commit().await?;
        self.remember_registered(tenant);
        Ok(Applied::Done(true))
    }

    pub async fn get_callback(
        &self,
        tenant: &TenantId,
        id: Uuid,
    ) -> Result<Option<StoredCallback>, InteractionError> {
        Ok(callback::Entity::find_by_id((tenant.as_str().to_owned(), id))
            .one(&self.db)
            .await?
            .map(StoredCallback::from))
    }

    /// Callbacks of `customers`, earliest due first, after a keyset position.
    pub async fn list_callbacks(
        &self,
        tenant: &TenantId,
        customers: &[Uuid],
        after: Option<PageKey>,
        limit: u64,
    ) -> Result<Vec<(StoredCallback, DateTime<Utc>)>, InteractionError> {
        let mut query = callback::Entity::find()
            .filter(callback::Column::TenantId.eq(tenant.as_str()))
            .filter(callback::Column::CustomerId.is_in(customers.to_vec()));
        if let Some(after) = after {
            query = query.filter(after_ascending(callback::Column::DueTime, after));
        }
        Ok(query
            .order_by_asc(callback::Column::DueTime)
            .order_by_asc(callback::Column::Id)
            .limit(limit)
            .all(&self.db)
            .await?
            .into_iter()
            .map(|model| {
                let due = model.due_time;
                (StoredCallback::from(model), due)
            })
            .collect())
    }

    /// An agent's OPEN callbacks due at or before `due_before`, earliest due first.
    pub async fn list_due_callbacks(
        &self,
        tenant: &TenantId,
        assignee: &str,
        due_before: DateTime<Utc>,
        after: Option<PageKey>,
        limit: u64,
    ) -> Result<Vec<(StoredCallback, DateTime<Utc>)>, InteractionError> {
        let mut query = callback::Entity::find()
            .filter(callback::Column::TenantId.eq(tenant.as_str()))
            .filter(callback::Column::Assignee.eq(assignee))
            .filter(callback::Column::State.eq("OPEN"))
            .filter(callback::Column::DueTime.lte(due_before));
        if let Some(after) = after {
            query = query.filter(after_ascending(callback::Column::DueTime, after));
        }
        Ok(query
            .order_by_asc(callback::Column::DueTime)
            .order_by_asc(callback::Column::Id)
            .limit(limit)
            .all(&self.db)
            .await?
            .into_iter()
            .map(|model| {
                let due = model.due_time;
                (StoredCallback::from(model), due)
            })
            .collect())
    }

    /// The tenants whose customer events this service follows, with their cursors.
    pub async fn followed_tenants(&self) -> Result<Vec<(String, i64)>, InteractionError> {
        Ok(cursor::Entity::find()
            .all(&self.db)
            .await?
            .into_iter()
            .map(|row| (row.tenant_id, row.position))
            .collect())
    }

    pub async fn customer_event_cursor(&self, tenant: &TenantId) -> Result<i64, InteractionError> {
        Ok(cursor::Entity::find_by_id(tenant.as_str().to_owned())
            .one(&self.db)
            .await?
            .map_or(0, |row| row.position))
    }

    /// Applies one customer-profile event and moves the cursor to `position`, in one
    /// transaction; an event at or below the stored cursor was applied already and is skipped,
    /// so a re-delivered event changes nothing. Returns whether it was applied. `scrub` rewrites
    /// a record's body without its personal free text.
    pub async fn apply_customer_change(
        &self,
        tenant: &TenantId,
        position: i64,
        change: &CustomerChange,
        scrub_record: impl Fn(RecordKind, &[u8]) -> Result<Vec<u8>, InteractionError>,
        scrub_callback: impl Fn(&[u8]) -> Result<Vec<u8>, InteractionError>,
    ) -> Result<bool, InteractionError> {
        let txn = crm_db::begin_write(&self.db).await?;
        // The merge lock first: this waits for in-flight writes of the tenant, and holds back
        // new ones until the change below is committed.
        Self::lock_tenant_exclusively(&txn, tenant).await?;
        let moved = cursor::Entity::update_many()
            .col_expr(cursor::Column::Position, Expr::value(position))
            .filter(cursor::Column::TenantId.eq(tenant.as_str()))
            .filter(cursor::Column::Position.lt(position))
            .exec(&txn)
            .await?
            .rows_affected;
        if moved == 0 {
            txn.rollback().await?;
            return Ok(false);
        }
        match change {
            CustomerChange::Merged { survivor, merged } => {
                for merged_id in merged.iter().filter(|id| *id != survivor) {
                    alias::Entity::insert(alias::ActiveModel {
                        tenant_id: Set(tenant.as_str().to_owned()),
                        merged_id: Set(*merged_id),
                        survivor_id: Set(*survivor),
                    })
                    .on_conflict(
                        OnConflict::columns([alias::Column::TenantId, alias::Column::MergedId])
                            .update_column(alias::Column::SurvivorId)
                            .to_owned(),
                    )
                    .exec_without_returning(&txn)
                    .await?;
                }
                // Everything now under a merged-away customer (including what was merged into
                // it before) belongs to the survivor.
                record::Entity::update_many()
                    .col_expr(record::Column::CustomerId, Expr::value(*survivor))
                    .filter(record::Column::TenantId.eq(tenant.as_str()))
                    .filter(record::Column::CustomerId.is_in(merged.clone()))
                    .exec(&txn)
                    .await?;
                callback::Entity::update_many()
                    .col_expr(callback::Column::CustomerId, Expr::value(*survivor))
                    .filter(callback::Column::TenantId.eq(tenant.as_str()))
                    .filter(callback::Column::CustomerId.is_in(merged.clone()))
                    .exec(&txn)
                    .await?;
            }
            CustomerChange::Unmerged {
                survivor: _,
                restored,
            } => {
                for restored_id in restored {
                    alias::Entity::delete_many()
                        .filter(alias::Column::TenantId.eq(tenant.as_str()))
                        .filter(alias::Column::MergedId.eq(*restored_id))
                        .exec(&txn)
                        .await?;
                    // What was recorded for the restored customer, or for customers merged
                    // into it (still merged), goes back to it.
                    let origins = Self::absorbed_into(&txn, tenant, *restored_id).await?;
                    // Only re-keyed rows (origin differs from customer) can need it: the
                    // condition is also what lets the partial origin index serve the update.
                    record::Entity::update_many()
                        .col_expr(record::Column::CustomerId, Expr::value(*restored_id))
                        .filter(record::Column::TenantId.eq(tenant.as_str()))
                        .filter(record::Column::OriginCustomerId.is_in(origins.clone()))
                        .filter(
                            Expr::col(record::Column::OriginCustomerId)
                                .ne(Expr::col(record::Column::CustomerId)),
                        )
                        .exec(&txn)
                        .await?;
                    callback::Entity::update_many()
                        .col_expr(callback::Column::CustomerId, Expr::value(*restored_id))
                        .filter(callback::Column::TenantId.eq(tenant.as_str()))
                        .filter(callback::Column::OriginCustomerId.is_in(origins))
                        .filter(
                            Expr::col(callback::Column::OriginCustomerId)
                                .ne(Expr::col(callback::Column::CustomerId)),
                        )
                        .exec(&txn)
                        .await?;
                }
            }
            CustomerChange::Erased { customer } => {
                let customers = Self::absorbed_into(&txn, tenant, *customer).await?;
                // Everything of the erased customer and of those merged into it is under it
                // (merges re-key before this event is applied).
                let records = record::Entity::find()
                    .filter(record::Column::TenantId.eq(tenant.as_str()))
                    .filter(record::Column::CustomerId.is_in(customers.clone()))
                    .all(&txn)
                    .await?;
                for model in records {
                    let kind = RecordKind::from_stored(&model.record_kind).ok_or_else(|| {
                        InteractionError::Corrupt(format!("record kind {:?}", model.record_kind))
                    })?;
                    let scrubbed = scrub_record(kind, &model.body)?;
                    if scrubbed != model.body {
                        record::Entity::update_many()
                            .col_expr(record::Column::Body, Expr::value(scrubbed))
                            .filter(record::Column::TenantId.eq(tenant.as_str()))
                            .filter(record::Column::Id.eq(model.id))
                            .exec(&txn)
                            .await?;
                    }
                }
                let callbacks = callback::Entity::find()
                    .filter(callback::Column::TenantId.eq(tenant.as_str()))
                    .filter(callback::Column::CustomerId.is_in(customers.clone()))
                    .all(&txn)
                    .await?;
                for model in callbacks {
                    let scrubbed = scrub_callback(&model.body)?;
                    if scrubbed != model.body {
                        callback::Entity::update_many()
                            .col_expr(callback::Column::Body, Expr::value(scrubbed))
                            .col_expr(callback::Column::Revision, Expr::value(model.revision + 1))
                            .filter(callback::Column::TenantId.eq(tenant.as_str()))
                            .filter(callback::Column::Id.eq(model.id))
                            .exec(&txn)
                            .await?;
                    }
                }
                // Stored answers to earlier requests hold the same free text.
                let subjects: Vec<String> = customers
                    .iter()
                    .map(|id| crate::domain::customer_name(*id))
                    .collect();
                idempotency::forget_subjects(&txn, tenant.as_str(), &subjects, "").await?;
            }
            CustomerChange::Other => {}
        }
        txn.commit().await?;
        Ok(true)
    }
}

fn after_ascending(column: callback::Column, (time, id): PageKey) -> Condition {
    Condition::any().add(column.gt(time)).add(
        Condition::all()
            .add(column.eq(time))
            .add(callback::Column::Id.gt(id)),
    )
}
