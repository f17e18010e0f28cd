//! Persistence of segmentation's state, in domain terms, sea-orm underneath.
//!
//! Purchase aggregates are kept per *origin* customer (the customer a purchase was written for),
//! each with its current *owner* (the survivor after merges). A customer's aggregates are the sum
//! of the origins it owns, so a merge only changes owners and an unmerge changes them back: the
//! split is exact whatever order the two event logs arrive in.
//!
//! Event effects are applied by the caller inside one write transaction that also moves the
//! feed's cursor ([`Store::lock_feed`], [`Store::set_feed_cursor`]), so each event counts exactly
//! once across crashes, restarts and concurrent replicas. On PostgreSQL, writers of one tenant's
//! scores also take the tenant's advisory lock, so a score run and the event consumer never
//! write one customer from two different reads.

pub mod migrations;
mod referrals;
mod segments;
mod value_models;

pub use segments::SegmentRow;
pub use value_models::StoredValueModel;

use std::collections::{BTreeMap, BTreeSet, HashMap};

use chrono::{DateTime, Utc};
use crm_db::idempotency::{self, IdempotencyClaim, StoredResponse};
use sea_orm::entity::prelude::*;
use sea_orm::sea_query::{Expr, ExprTrait, OnConflict};
use sea_orm::{
    ConnectionTrait, DatabaseConnection, DatabaseTransaction, DbBackend, FromQueryResult, QueryOrder,
    QuerySelect, Set, Statement,
};
use uuid::Uuid;

use crate::error::SegmentationError;

mod entities {
    pub mod origin {
        use sea_orm::entity::prelude::*;

        #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
        #[sea_orm(table_name = "origin_aggregates")]
        pub struct Model {
            #[sea_orm(primary_key, auto_increment = false)]
            pub tenant_id: String,
            #[sea_orm(primary_key, auto_increment = false)]
            pub origin_id: Uuid,
            pub owner_id: Uuid,
            pub days: Vec<u8>,
            pub other_currency_events: i64,
            pub feedback: Option<Vec<u8>>,
        }

        #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
        pub enum Relation {}

        impl ActiveModelBehavior for ActiveModel {}
    }

    pub mod merge_parent {
        use sea_orm::entity::prelude::*;

        #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
        #[sea_orm(table_name = "merge_parents")]
        pub struct Model {
            #[sea_orm(primary_key, auto_increment = false)]
            pub tenant_id: String,
            #[sea_orm(primary_key, auto_increment = false)]
            pub child_id: Uuid,
            pub parent_id: Uuid,
        }

        #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
        pub enum Relation {}

        impl ActiveModelBehavior for ActiveModel {}
    }

    pub mod scores {
        use sea_orm::entity::prelude::*;

        #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
        #[sea_orm(table_name = "customer_scores")]
        pub struct Model {
            #[sea_orm(primary_key, auto_increment = false)]
            pub tenant_id: String,
            #[sea_orm(primary_key, auto_increment = false)]
            pub customer_id: Uuid,
            pub stage: i32,
            pub ended_pattern: i32,
            pub r_score: i32,
            pub f_score: i32,
            pub segment: i32,
            pub value_class: i32,
            pub abc_class: i32,
            pub monetary_minor: i64,
            pub revision: i64,
            pub body: Vec<u8>,
            pub update_time: ChronoDateTimeUtc,
        }

        #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
        pub enum Relation {}

        impl ActiveModelBehavior for ActiveModel {}
    }

    pub mod tenant_state {
        use sea_orm::entity::prelude::*;

        #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
        #[sea_orm(table_name = "tenant_state")]
        pub struct Model {
            #[sea_orm(primary_key, auto_increment = false)]
            pub tenant_id: String,
            pub settings: Vec<u8>,
            pub settings_revision: i64,
            pub score_revision: i64,
            pub cutoffs: Option<Vec<u8>>,
            pub cutoffs_time: Option<ChronoDateTimeUtc>,
        }

        #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
        pub enum Relation {}

        impl ActiveModelBehavior for ActiveModel {}
    }

    pub mod score_run {
        use sea_orm::entity::prelude::*;

        #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
        #[sea_orm(table_name = "score_runs")]
        pub struct Model {
            #[sea_orm(primary_key, auto_increment = false)]
            pub tenant_id: String,
            #[sea_orm(primary_key, auto_increment = false)]
            pub id: Uuid,
            pub state: i32,
            pub body: Vec<u8>,
            pub create_time: ChronoDateTimeUtc,
        }

        #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
        pub enum Relation {}

        impl ActiveModelBehavior for ActiveModel {}
    }

    pub mod erased {
        use sea_orm::entity::prelude::*;

        #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
        #[sea_orm(table_name = "erased_customers")]
        pub struct Model {
            #[sea_orm(primary_key, auto_increment = false)]
            pub tenant_id: String,
            #[sea_orm(primary_key, auto_increment = false)]
            pub customer_id: Uuid,
        }

        #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
        pub enum Relation {}

        impl ActiveModelBehavior for ActiveModel {}
    }
}

use entities::{erased, merge_parent, origin, score_run, scores, tenant_state};

/// First key of the PostgreSQL advisory lock on one tenant's scores (ASCII "segm").
const TENANT_LOCK_CLASS: i32 = 0x7365_676d;
/// How long a chain of merges (A into B into C…) resolution follows.
const MAX_MERGE_DEPTH: usize = 32;

/// One origin's aggregates as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredOrigin {
    pub origin_id: Uuid,
    pub owner_id: Uuid,
    /// `domain::scores::Aggregates`, encoded.
    pub days: Vec<u8>,
    pub other_currency_events: i64,
    /// `domain::feedback::FeedbackSums`, encoded; empty without feedback.
    pub feedback: Vec<u8>,
}

/// A customer's scores as stored: the columns reports group by, and the full resource.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScoresRow {
    pub customer_id: Uuid,
    pub stage: i32,
    pub ended_pattern: i32,
    pub r_score: i32,
    pub f_score: i32,
    pub segment: i32,
    pub value_class: i32,
    pub abc_class: i32,
    /// Net spend in the window (0 without RFM), for the Pareto report.
    pub monetary_minor: i64,
    /// The tenant's score revision of the transaction that wrote it: increasing in commit
    /// order, so the hot cache never takes an older write over a newer one.
    pub revision: i64,
    /// The encoded `CustomerScores`.
    pub body: Vec<u8>,
    pub update_time: DateTime<Utc>,
}

impl From<scores::Model> for ScoresRow {
    fn from(model: scores::Model) -> Self {
        Self {
            customer_id: model.customer_id,
            stage: model.stage,
            ended_pattern: model.ended_pattern,
            r_score: model.r_score,
            f_score: model.f_score,
            segment: model.segment,
            value_class: model.value_class,
            abc_class: model.abc_class,
            monetary_minor: model.monetary_minor,
            revision: model.revision,
            body: model.body,
            update_time: model.update_time,
        }
    }
}

/// The tenant's settings and last cut-offs as stored.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TenantStateRow {
    /// The encoded `ScoringSettings`; empty when never set (defaults apply).
    pub settings: Vec<u8>,
    pub settings_revision: i64,
    /// `domain::scores::Cutoffs`, encoded; `None` before the first score run.
    pub cutoffs: Option<Vec<u8>>,
    pub cutoffs_time: Option<DateTime<Utc>>,
}

/// A score run as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredRun {
    pub id: Uuid,
    pub state: i32,
    /// The encoded `ScoreRun`.
    pub body: Vec<u8>,
}

#[derive(Debug, FromQueryResult)]
struct GroupCount {
    key: i32,
    count: i64,
}

#[derive(Debug, FromQueryResult)]
struct CellCount {
    r_score: i32,
    f_score: i32,
    count: i64,
}

fn is_postgres(db: &impl ConnectionTrait) -> bool {
    db.get_database_backend() == DbBackend::Postgres
}

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

    pub async fn begin_write(&self) -> Result<DatabaseTransaction, SegmentationError> {
        Ok(crm_db::begin_write(&self.db).await?)
    }

    // ---- feeds ----

    /// The position of the last event of `source` applied (0 for none), without locking.
    pub async fn feed_cursor(&self, source: &str) -> Result<i64, SegmentationError> {
        Ok(crm_db::feed_cursor::position(&self.db, source).await?)
    }

    /// The cursor of `source`, locked until `txn` ends (see [`crm_db::feed_cursor::lock`]).
    pub async fn lock_feed(&self, txn: &DatabaseTransaction, source: &str) -> Result<i64, SegmentationError> {
        Ok(crm_db::feed_cursor::lock(txn, source).await?)
    }

    pub async fn set_feed_cursor(
        &self,
        txn: &DatabaseTransaction,
        source: &str,
        position: i64,
    ) -> Result<(), SegmentationError> {
        Ok(crm_db::feed_cursor::set(txn, source, position).await?)
    }

    /// Takes the tenant's scores lock until `txn` ends (PostgreSQL; SQLite has one writer).
    pub async fn lock_tenant(
        &self,
        txn: &DatabaseTransaction,
        tenant: &str,
    ) -> Result<(), SegmentationError> {
        if is_postgres(txn) {
            txn.execute_raw(Statement::from_sql_and_values(
                DbBackend::Postgres,
                "SELECT pg_advisory_xact_lock($1, hashtext($2))",
                [TENANT_LOCK_CLASS.into(), tenant.into()],
            ))
            .await?;
        }
        Ok(())
    }

    // ---- merges ----

    /// The customer `customer` resolves to through the merges applied: itself when it was
    /// never merged away.
    pub async fn resolve<C: ConnectionTrait>(
        &self,
        db: &C,
        tenant: &str,
        customer: Uuid,
    ) -> Result<Uuid, SegmentationError> {
        let mut current = customer;
        for _ in 0..MAX_MERGE_DEPTH {
            let parent = merge_parent::Entity::find_by_id((tenant.to_owned(), current))
                .one(db)
                .await?;
            match parent {
                Some(parent) if parent.parent_id != current => current = parent.parent_id,
                _ => return Ok(current),
            }
        }
        Err(SegmentationError::Corrupt(format!(
            "merge chain from {customer} is longer than {MAX_MERGE_DEPTH}"
        )))
    }

    /// What `customers` resolve to through the merges applied (themselves when never merged
    /// away), with one query per link of the longest chain.
    pub async fn resolve_many<C: ConnectionTrait>(
        &self,
        txn: &C,
        tenant: &str,
        customers: &BTreeSet<Uuid>,
    ) -> Result<HashMap<Uuid, Uuid>, SegmentationError> {
        let mut resolved: HashMap<Uuid, Uuid> = customers.iter().map(|id| (*id, *id)).collect();
        for _ in 0..MAX_MERGE_DEPTH {
            let current: BTreeSet<Uuid> = resolved.values().copied().collect();
            let mut parents: HashMap<Uuid, Uuid> = HashMap::new();
            for chunk in current.iter().copied().collect::<Vec<_>>().chunks(500) {
                for row in merge_parent::Entity::find()
                    .filter(merge_parent::Column::TenantId.eq(tenant))
                    .filter(merge_parent::Column::ChildId.is_in(chunk.iter().copied()))
                    .all(txn)
                    .await?
                {
                    if row.parent_id != row.child_id {
                        parents.insert(row.child_id, row.parent_id);
                    }
                }
            }
            if parents.is_empty() {
                return Ok(resolved);
            }
            for target in resolved.values_mut() {
                if let Some(parent) = parents.get(target) {
                    *target = *parent;
                }
            }
        }
        Err(SegmentationError::Corrupt(format!(
            "a merge chain is longer than {MAX_MERGE_DEPTH}"
        )))
    }

    /// Which of `customers` were erased.
    pub async fn erased_among(
        &self,
        txn: &DatabaseTransaction,
        tenant: &str,
        customers: &BTreeSet<Uuid>,
    ) -> Result<BTreeSet<Uuid>, SegmentationError> {
        let mut erased_ids = BTreeSet::new();
        for chunk in customers.iter().copied().collect::<Vec<_>>().chunks(500) {
            erased_ids.extend(
                erased::Entity::find()
                    .filter(erased::Column::TenantId.eq(tenant))
                    .filter(erased::Column::CustomerId.is_in(chunk.iter().copied()))
                    .all(txn)
                    .await?
                    .into_iter()
                    .map(|row| row.customer_id),
            );
        }
        Ok(erased_ids)
    }

    /// The stored origins among `origins`, by id.
    pub async fn origins_by_id(
        &self,
        txn: &DatabaseTransaction,
        tenant: &str,
        origins: &BTreeSet<Uuid>,
    ) -> Result<HashMap<Uuid, StoredOrigin>, SegmentationError> {
        let mut found = HashMap::new();
        for chunk in origins.iter().copied().collect::<Vec<_>>().chunks(500) {
            found.extend(
                origin::Entity::find()
                    .filter(origin::Column::TenantId.eq(tenant))
                    .filter(origin::Column::OriginId.is_in(chunk.iter().copied()))
                    .all(txn)
                    .await?
                    .into_iter()
                    .map(|row| (row.origin_id, stored_origin(row))),
            );
        }
        Ok(found)
    }

    /// Writes origins, one multi-row upsert per 500.
    pub async fn save_origins(
        &self,
        txn: &DatabaseTransaction,
        tenant: &str,
        rows: &[StoredOrigin],
    ) -> Result<(), SegmentationError> {
        for chunk in rows.chunks(500) {
            if chunk.is_empty() {
                continue;
            }
            origin::Entity::insert_many(chunk.iter().map(|row| origin::ActiveModel {
                tenant_id: Set(tenant.to_owned()),
                origin_id: Set(row.origin_id),
                owner_id: Set(row.owner_id),
                days: Set(row.days.clone()),
                other_currency_events: Set(row.other_currency_events),
                feedback: Set((!row.feedback.is_empty()).then(|| row.feedback.clone())),
            }))
            .on_conflict(
                OnConflict::columns([origin::Column::TenantId, origin::Column::OriginId])
                    .update_columns([
                        origin::Column::OwnerId,
                        origin::Column::Days,
                        origin::Column::OtherCurrencyEvents,
                        origin::Column::Feedback,
                    ])
                    .to_owned(),
            )
            .exec_without_returning(txn)
            .await?;
        }
        Ok(())
    }

    pub async fn set_merge_parent(
        &self,
        txn: &DatabaseTransaction,
        tenant: &str,
        child: Uuid,
        parent: Uuid,
    ) -> Result<(), SegmentationError> {
        merge_parent::Entity::insert(merge_parent::ActiveModel {
            tenant_id: Set(tenant.to_owned()),
            child_id: Set(child),
            parent_id: Set(parent),
        })
        .on_conflict(
            OnConflict::columns([merge_parent::Column::TenantId, merge_parent::Column::ChildId])
                .update_column(merge_parent::Column::ParentId)
                .to_owned(),
        )
        .exec_without_returning(txn)
        .await?;
        Ok(())
    }

    pub async fn remove_merge_parent(
        &self,
        txn: &DatabaseTransaction,
        tenant: &str,
        child: Uuid,
    ) -> Result<(), SegmentationError> {
        merge_parent::Entity::delete_many()
            .filter(merge_parent::Column::TenantId.eq(tenant))
            .filter(merge_parent::Column::ChildId.eq(child))
            .exec(txn)
            .await?;
        Ok(())
    }

    // ---- aggregates ----

    /// Every origin `owner` owns (itself and the customers merged into it).
    pub async fn origins_of<C: ConnectionTrait>(
        &self,
        db: &C,
        tenant: &str,
        owner: Uuid,
    ) -> Result<Vec<StoredOrigin>, SegmentationError> {
        Ok(origin::Entity::find()
            .filter(origin::Column::TenantId.eq(tenant))
            .filter(origin::Column::OwnerId.eq(owner))
            .all(db)
            .await?
            .into_iter()
            .map(stored_origin)
            .collect())
    }

    /// The origins of several owners, by owner.
    pub async fn origins_of_many<C: ConnectionTrait>(
        &self,
        db: &C,
        tenant: &str,
        owners: &[Uuid],
    ) -> Result<HashMap<Uuid, Vec<StoredOrigin>>, SegmentationError> {
        let mut by_owner: HashMap<Uuid, Vec<StoredOrigin>> = HashMap::new();
        for chunk in owners.chunks(500) {
            let rows = origin::Entity::find()
                .filter(origin::Column::TenantId.eq(tenant))
                .filter(origin::Column::OwnerId.is_in(chunk.iter().copied()))
                .all(db)
                .await?;
            for row in rows {
                by_owner.entry(row.owner_id).or_default().push(stored_origin(row));
            }
        }
        Ok(by_owner)
    }

    /// Gives every origin `from` owns to `to` (a merge).
    pub async fn reassign_owner(
        &self,
        txn: &DatabaseTransaction,
        tenant: &str,
        from: Uuid,
        to: Uuid,
    ) -> Result<(), SegmentationError> {
        origin::Entity::update_many()
            .col_expr(origin::Column::OwnerId, Expr::value(to))
            .filter(origin::Column::TenantId.eq(tenant))
            .filter(origin::Column::OwnerId.eq(from))
            .exec(txn)
            .await?;
        Ok(())
    }

    /// Sets the owner of each origin in `owners` (origin -> owner).
    pub async fn set_owners(
        &self,
        txn: &DatabaseTransaction,
        tenant: &str,
        owners: &HashMap<Uuid, Uuid>,
    ) -> Result<(), SegmentationError> {
        for (origin_id, owner) in owners {
            origin::Entity::update_many()
                .col_expr(origin::Column::OwnerId, Expr::value(*owner))
                .filter(origin::Column::TenantId.eq(tenant))
                .filter(origin::Column::OriginId.eq(*origin_id))
                .exec(txn)
                .await?;
        }
        Ok(())
    }

    pub async fn delete_origins_of(
        &self,
        txn: &DatabaseTransaction,
        tenant: &str,
        owner: Uuid,
    ) -> Result<(), SegmentationError> {
        origin::Entity::delete_many()
            .filter(origin::Column::TenantId.eq(tenant))
            .filter(origin::Column::OwnerId.eq(owner))
            .exec(txn)
            .await?;
        Ok(())
    }

    /// A page of the tenant's origins in (owner, origin) order after `after`, for score runs:
    /// an owner's origins are consecutive.
    pub async fn origin_page(
        &self,
        tenant: &str,
        after: Option<(Uuid, Uuid)>,
        limit: u64,
    ) -> Result<Vec<StoredOrigin>, SegmentationError> {
        let mut query = origin::Entity::find().filter(origin::Column::TenantId.eq(tenant));
        if let Some((owner, origin_id)) = after {
            // A row-value comparison, so PostgreSQL seeks the (tenant, owner, origin) index
            // instead of scanning from the tenant's first row on every page: `a > x OR (a = x
            // AND b > y)` made a run's pass 1 quadratic in the tenant's size.
            query = query.filter(
                Expr::tuple([
                    Expr::col(origin::Column::OwnerId),
                    Expr::col(origin::Column::OriginId),
                ])
                .gt(Expr::tuple([Expr::value(owner), Expr::value(origin_id)])),
            );
        }
        Ok(query
            .order_by_asc(origin::Column::OwnerId)
            .order_by_asc(origin::Column::OriginId)
            .limit(limit)
            .all(&self.db)
            .await?
            .into_iter()
            .map(stored_origin)
            .collect())
    }

    // ---- erasure ----

    pub async fn is_erased<C: ConnectionTrait>(
        &self,
        db: &C,
        tenant: &str,
        customer: Uuid,
    ) -> Result<bool, SegmentationError> {
        Ok(erased::Entity::find_by_id((tenant.to_owned(), customer))
            .one(db)
            .await?
            .is_some())
    }

    pub async fn mark_erased(
        &self,
        txn: &DatabaseTransaction,
        tenant: &str,
        customer: Uuid,
    ) -> Result<(), SegmentationError> {
        erased::Entity::insert(erased::ActiveModel {
            tenant_id: Set(tenant.to_owned()),
            customer_id: Set(customer),
        })
        .on_conflict(
            OnConflict::columns([erased::Column::TenantId, erased::Column::CustomerId])
                .do_nothing()
                .to_owned(),
        )
        .exec_without_returning(txn)
        .await?;
        Ok(())
    }

    // ---- scores ----

    pub async fn scores<C: ConnectionTrait>(
        &self,
        db: &C,
        tenant: &str,
        customer: Uuid,
    ) -> Result<Option<ScoresRow>, SegmentationError> {
        Ok(scores::Entity::find_by_id((tenant.to_owned(), customer))
            .one(db)
            .await?
            .map(ScoresRow::from))
    }

    pub async fn scores_many<C: ConnectionTrait>(
        &self,
        db: &C,
        tenant: &str,
        customers: &[Uuid],
    ) -> Result<HashMap<Uuid, ScoresRow>, SegmentationError> {
        let mut found = HashMap::new();
        for chunk in customers.chunks(500) {
            let rows = scores::Entity::find()
                .filter(scores::Column::TenantId.eq(tenant))
                .filter(scores::Column::CustomerId.is_in(chunk.iter().copied()))
                .all(db)
                .await?;
            found.extend(
                rows.into_iter()
                    .map(|row| (row.customer_id, ScoresRow::from(row))),
            );
        }
        Ok(found)
    }

    /// Writes scores, one multi-row upsert per 500 rows.
    pub async fn save_scores(
        &self,
        txn: &DatabaseTransaction,
        tenant: &str,
        rows: &[ScoresRow],
    ) -> Result<(), SegmentationError> {
        for chunk in rows.chunks(500) {
            if chunk.is_empty() {
                continue;
            }
            scores::Entity::insert_many(chunk.iter().map(|row| scores::ActiveModel {
                tenant_id: Set(tenant.to_owned()),
                customer_id: Set(row.customer_id),
                stage: Set(row.stage),
                ended_pattern: Set(row.ended_pattern),
                r_score: Set(row.r_score),
                f_score: Set(row.f_score),
                segment: Set(row.segment),
                value_class: Set(row.value_class),
                abc_class: Set(row.abc_class),
                monetary_minor: Set(row.monetary_minor),
                revision: Set(row.revision),
                body: Set(row.body.clone()),
                update_time: Set(row.update_time),
            }))
            .on_conflict(
                OnConflict::columns([scores::Column::TenantId, scores::Column::CustomerId])
                    .update_columns([
                        scores::Column::Stage,
                        scores::Column::EndedPattern,
                        scores::Column::RScore,
                        scores::Column::FScore,
                        scores::Column::Segment,
                        scores::Column::ValueClass,
                        scores::Column::AbcClass,
                        scores::Column::MonetaryMinor,
                        scores::Column::Revision,
                        scores::Column::Body,
                        scores::Column::UpdateTime,
                    ])
                    .to_owned(),
            )
            .exec_without_returning(txn)
            .await?;
        }
        Ok(())
    }

    pub async fn delete_scores(
        &self,
        txn: &DatabaseTransaction,
        tenant: &str,
        customer: Uuid,
    ) -> Result<(), SegmentationError> {
        scores::Entity::delete_many()
            .filter(scores::Column::TenantId.eq(tenant))
            .filter(scores::Column::CustomerId.eq(customer))
            .exec(txn)
            .await?;
        Ok(())
    }

    /// Customers per value of one scores column (`stage`, `segment`, …).
    pub async fn count_by(
        &self,
        tenant: &str,
        column: ScoresColumn,
    ) -> Result<BTreeMap<i32, i64>, SegmentationError> {
        let column = match column {
            ScoresColumn::Stage => scores::Column::Stage,
            ScoresColumn::EndedPattern => scores::Column::EndedPattern,
            ScoresColumn::Segment => scores::Column::Segment,
            ScoresColumn::ValueClass => scores::Column::ValueClass,
        };
        let rows = scores::Entity::find()
            .select_only()
            .column_as(column, "key")
            .column_as(Expr::col(scores::Column::CustomerId).count(), "count")
            .filter(scores::Column::TenantId.eq(tenant))
            .group_by(column)
            .into_model::<GroupCount>()
            .all(&self.db)
            .await?;
        Ok(rows.into_iter().map(|row| (row.key, row.count)).collect())
    }

    /// Customers per (R, F) score cell, for customers with RFM.
    pub async fn rf_cells(&self, tenant: &str) -> Result<Vec<(i32, i32, i64)>, SegmentationError> {
        let rows = scores::Entity::find()
            .select_only()
            .column(scores::Column::RScore)
            .column(scores::Column::FScore)
            .column_as(Expr::col(scores::Column::CustomerId).count(), "count")
            .filter(scores::Column::TenantId.eq(tenant))
            .filter(scores::Column::RScore.gt(0))
            .group_by(scores::Column::RScore)
            .group_by(scores::Column::FScore)
            .order_by_asc(scores::Column::RScore)
            .order_by_asc(scores::Column::FScore)
            .into_model::<CellCount>()
            .all(&self.db)
            .await?;
        Ok(rows
            .into_iter()
            .map(|row| (row.r_score, row.f_score, row.count))
            .collect())
    }

    /// Customers and net spend per ABC class, for customers with RFM.
    pub async fn abc_totals(&self, tenant: &str) -> Result<Vec<(i32, i64, i64)>, SegmentationError> {
        #[derive(Debug, FromQueryResult)]
        struct Totals {
            abc_class: i32,
            count: i64,
            revenue: Option<i64>,
        }
        let rows = scores::Entity::find()
            .select_only()
            .column(scores::Column::AbcClass)
            .column_as(Expr::col(scores::Column::CustomerId).count(), "count")
            .column_as(
                Expr::col(scores::Column::MonetaryMinor).sum().cast_as("bigint"),
                "revenue",
            )
            .filter(scores::Column::TenantId.eq(tenant))
            .filter(scores::Column::RScore.gt(0))
            .group_by(scores::Column::AbcClass)
            .into_model::<Totals>()
            .all(&self.db)
            .await?;
        Ok(rows
            .into_iter()
            .map(|row| (row.abc_class, row.count, row.revenue.unwrap_or(0)))
            .collect())
    }

    /// The net spend of the `limit` biggest spenders with RFM, summed.
    pub async fn top_monetary_sum(&self, tenant: &str, limit: u64) -> Result<i64, SegmentationError> {
        let mut total = 0_i64;
        let mut offset = 0_u64;
        // Paged, so a large population is not held at once.
        while offset < limit {
            let page: Vec<i64> = scores::Entity::find()
                .select_only()
                .column(scores::Column::MonetaryMinor)
                .filter(scores::Column::TenantId.eq(tenant))
                .filter(scores::Column::RScore.gt(0))
                .order_by_desc(scores::Column::MonetaryMinor)
                .order_by_asc(scores::Column::CustomerId)
                .offset(offset)
                .limit(Ord::min(limit - offset, 10_000))
                .into_tuple()
                .all(&self.db)
                .await?;
            if page.is_empty() {
                break;
            }
            offset += page.len() as u64;
            total = page.into_iter().fold(total, i64::saturating_add);
        }
        Ok(total)
    }

    // ---- tenant state ----

    pub async fn tenant_state<C: ConnectionTrait>(
        &self,
        db: &C,
        tenant: &str,
    ) -> Result<TenantStateRow, SegmentationError> {
        Ok(tenant_state::Entity::find_by_id(tenant.to_owned())
            .one(db)
            .await?
            .map(|row| TenantStateRow {
                settings: row.settings,
                settings_revision: row.settings_revision,
                cutoffs: row.cutoffs,
                cutoffs_time: row.cutoffs_time,
            })
            .unwrap_or_default())
    }

    /// Stores new settings if the revision is still `expected_revision`; false when another
    /// update came first.
    pub async fn save_settings(
        &self,
        txn: &DatabaseTransaction,
        tenant: &str,
        settings: Vec<u8>,
        expected_revision: i64,
    ) -> Result<bool, SegmentationError> {
        let inserted = tenant_state::Entity::insert(tenant_state::ActiveModel {
            tenant_id: Set(tenant.to_owned()),
            settings: Set(settings.clone()),
            settings_revision: Set(1),
            score_revision: Set(0),
            cutoffs: Set(None),
            cutoffs_time: Set(None),
        })
        .on_conflict(
            OnConflict::column(tenant_state::Column::TenantId)
                .do_nothing()
                .to_owned(),
        )
        .exec_without_returning(txn)
        .await?;
        if inserted == 1 {
            return Ok(expected_revision == 0);
        }
        let updated = tenant_state::Entity::update_many()
            .col_expr(tenant_state::Column::Settings, Expr::value(settings))
            .col_expr(
                tenant_state::Column::SettingsRevision,
                Expr::value(expected_revision.saturating_add(1)),
            )
            .filter(tenant_state::Column::TenantId.eq(tenant))
            .filter(tenant_state::Column::SettingsRevision.eq(expected_revision))
            .exec(txn)
            .await?
            .rows_affected;
        Ok(updated == 1)
    }

    /// The next score revision of the tenant. Call with the tenant's lock held: revisions
    /// then increase in commit order.
    pub async fn next_score_revision(
        &self,
        txn: &DatabaseTransaction,
        tenant: &str,
    ) -> Result<i64, SegmentationError> {
        tenant_state::Entity::insert(tenant_state::ActiveModel {
            tenant_id: Set(tenant.to_owned()),
            settings: Set(Vec::new()),
            settings_revision: Set(0),
            score_revision: Set(0),
            cutoffs: Set(None),
            cutoffs_time: Set(None),
        })
        .on_conflict(
            OnConflict::column(tenant_state::Column::TenantId)
                .do_nothing()
                .to_owned(),
        )
        .exec_without_returning(txn)
        .await?;
        tenant_state::Entity::update_many()
            .col_expr(
                tenant_state::Column::ScoreRevision,
                Expr::col(tenant_state::Column::ScoreRevision).add(1),
            )
            .filter(tenant_state::Column::TenantId.eq(tenant))
            .exec(txn)
            .await?;
        tenant_state::Entity::find_by_id(tenant.to_owned())
            .one(txn)
            .await?
            .map(|row| row.score_revision)
            .ok_or_else(|| SegmentationError::corrupt("the tenant's state row vanished"))
    }

    pub async fn save_cutoffs(
        &self,
        txn: &DatabaseTransaction,
        tenant: &str,
        cutoffs: Vec<u8>,
        time: DateTime<Utc>,
    ) -> Result<(), SegmentationError> {
        tenant_state::Entity::insert(tenant_state::ActiveModel {
            tenant_id: Set(tenant.to_owned()),
            settings: Set(Vec::new()),
            settings_revision: Set(0),
            score_revision: Set(0),
            cutoffs: Set(Some(cutoffs)),
            cutoffs_time: Set(Some(time)),
        })
        .on_conflict(
            OnConflict::column(tenant_state::Column::TenantId)
                .update_columns([tenant_state::Column::Cutoffs, tenant_state::Column::CutoffsTime])
                .to_owned(),
        )
        .exec_without_returning(txn)
        .await?;
        Ok(())
    }

    // ---- score runs ----

    pub async fn run<C: ConnectionTrait>(
        &self,
        db: &C,
        tenant: &str,
        id: Uuid,
    ) -> Result<Option<StoredRun>, SegmentationError> {
        Ok(score_run::Entity::find_by_id((tenant.to_owned(), id))
            .one(db)
            .await?
            .map(|row| StoredRun {
                id: row.id,
                state: row.state,
                body: row.body,
            }))
    }

    /// The tenant's run in `state`, if any (the newest).
    pub async fn run_in_state<C: ConnectionTrait>(
        &self,
        db: &C,
        tenant: &str,
        state: i32,
    ) -> Result<Option<StoredRun>, SegmentationError> {
        Ok(score_run::Entity::find()
            .filter(score_run::Column::TenantId.eq(tenant))
            .filter(score_run::Column::State.eq(state))
            .order_by_desc(score_run::Column::CreateTime)
            .one(db)
            .await?
            .map(|row| StoredRun {
                id: row.id,
                state: row.state,
                body: row.body,
            }))
    }

    pub async fn save_run<C: ConnectionTrait>(
        &self,
        db: &C,
        tenant: &str,
        run: &StoredRun,
        create_time: DateTime<Utc>,
    ) -> Result<(), SegmentationError> {
        score_run::Entity::insert(score_run::ActiveModel {
            tenant_id: Set(tenant.to_owned()),
            id: Set(run.id),
            state: Set(run.state),
            body: Set(run.body.clone()),
            create_time: Set(create_time),
        })
        .on_conflict(
            OnConflict::columns([score_run::Column::TenantId, score_run::Column::Id])
                .update_columns([score_run::Column::State, score_run::Column::Body])
                .to_owned(),
        )
        .exec_without_returning(db)
        .await?;
        Ok(())
    }

    /// Runs left RUNNING in `state` by a process that stopped: (tenant, run).
    pub async fn runs_in_state(&self, state: i32) -> Result<Vec<(String, StoredRun)>, SegmentationError> {
        Ok(score_run::Entity::find()
            .filter(score_run::Column::State.eq(state))
            .all(&self.db)
            .await?
            .into_iter()
            .map(|row| {
                (
                    row.tenant_id,
                    StoredRun {
                        id: row.id,
                        state: row.state,
                        body: row.body,
                    },
                )
            })
            .collect())
    }

    // ---- idempotency ----

    pub async fn replay(
        &self,
        tenant: &str,
        method: &str,
        request_id: &str,
    ) -> Result<Option<StoredResponse>, SegmentationError> {
        Ok(idempotency::find(&self.db, tenant, method, request_id).await?)
    }

    pub async fn claim(
        &self,
        txn: &DatabaseTransaction,
        tenant: &str,
        claim: &IdempotencyClaim,
    ) -> Result<Option<StoredResponse>, SegmentationError> {
        Ok(idempotency::claim(txn, tenant, claim).await?)
    }
}

/// The columns reports count by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScoresColumn {
    Stage,
    EndedPattern,
    Segment,
    ValueClass,
}

fn stored_origin(model: origin::Model) -> StoredOrigin {
    StoredOrigin {
        origin_id: model.origin_id,
        owner_id: model.owner_id,
        days: model.days,
        other_currency_events: model.other_currency_events,
        feedback: model.feedback.unwrap_or_default(),
    }
}
