//! Persistence of dynamic segments: the profile facts expressions read, the segments and their
//! current members. Membership changes are written by the caller in the transaction that
//! changed the scores or facts they follow from, with their outbox events.

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Utc};
use sea_orm::entity::prelude::*;
use sea_orm::sea_query::{Expr, ExprTrait, OnConflict};
use sea_orm::{ConnectionTrait, DatabaseTransaction, QueryOrder, QuerySelect, Set};
use uuid::Uuid;

use super::{ScoresRow, Store, scores};
use crate::error::SegmentationError;

mod facts {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "customer_facts")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub tenant_id: String,
        #[sea_orm(primary_key, auto_increment = false)]
        pub customer_id: Uuid,
        pub body: Vec<u8>,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

mod segment {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "segments")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub tenant_id: String,
        #[sea_orm(primary_key, auto_increment = false)]
        pub segment_id: Uuid,
        pub display_name: String,
        pub description: String,
        pub expression: String,
        pub revision: i64,
        pub member_count: i64,
        pub create_time: ChronoDateTimeUtc,
        pub update_time: ChronoDateTimeUtc,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

mod member {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "segment_members")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub tenant_id: String,
        #[sea_orm(primary_key, auto_increment = false)]
        pub segment_id: Uuid,
        #[sea_orm(primary_key, auto_increment = false)]
        pub customer_id: Uuid,
        pub enter_time: ChronoDateTimeUtc,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// Rows per multi-row statement: under SQLite's and PostgreSQL's bind-parameter limits.
const CHUNK: usize = 500;

/// A segment as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentRow {
    pub id: Uuid,
    pub display_name: String,
    pub description: String,
    /// Canonical.
    pub expression: String,
    pub revision: i64,
    pub member_count: i64,
    pub create_time: DateTime<Utc>,
    pub update_time: DateTime<Utc>,
}

impl From<segment::Model> for SegmentRow {
    fn from(row: segment::Model) -> Self {
        Self {
            id: row.segment_id,
            display_name: row.display_name,
            description: row.description,
            expression: row.expression,
            revision: row.revision,
            member_count: row.member_count,
            create_time: row.create_time,
            update_time: row.update_time,
        }
    }
}

impl Store {
    // ---- profile facts ----

    /// The stored facts of `customers` (encoded), by customer.
    pub async fn facts_many<C: ConnectionTrait>(
        &self,
        db: &C,
        tenant: &str,
        customers: &[Uuid],
    ) -> Result<HashMap<Uuid, Vec<u8>>, SegmentationError> {
        let mut found = HashMap::new();
        for chunk in customers.chunks(CHUNK) {
            let rows = facts::Entity::find()
                .filter(facts::Column::TenantId.eq(tenant))
                .filter(facts::Column::CustomerId.is_in(chunk.iter().copied()))
                .all(db)
                .await?;
            found.extend(rows.into_iter().map(|row| (row.customer_id, row.body)));
        }
        Ok(found)
    }

    pub async fn save_facts(
        &self,
        txn: &DatabaseTransaction,
        tenant: &str,
        customer: Uuid,
        body: Vec<u8>,
    ) -> Result<(), SegmentationError> {
        facts::Entity::insert(facts::ActiveModel {
            tenant_id: Set(tenant.to_owned()),
            customer_id: Set(customer),
            body: Set(body),
        })
        .on_conflict(
            OnConflict::columns([facts::Column::TenantId, facts::Column::CustomerId])
                .update_column(facts::Column::Body)
                .to_owned(),
        )
        .exec_without_returning(txn)
        .await?;
        Ok(())
    }

    pub async fn delete_facts(
        &self,
        txn: &DatabaseTransaction,
        tenant: &str,
        customer: Uuid,
    ) -> Result<(), SegmentationError> {
        facts::Entity::delete_many()
            .filter(facts::Column::TenantId.eq(tenant))
            .filter(facts::Column::CustomerId.eq(customer))
            .exec(txn)
            .await?;
        Ok(())
    }

    // ---- segments ----

    /// Every segment of the tenant, oldest first.
    pub async fn segments<C: ConnectionTrait>(
        &self,
        db: &C,
        tenant: &str,
    ) -> Result<Vec<SegmentRow>, SegmentationError> {
        Ok(segment::Entity::find()
            .filter(segment::Column::TenantId.eq(tenant))
            .order_by_asc(segment::Column::SegmentId)
            .all(db)
            .await?
            .into_iter()
            .map(SegmentRow::from)
            .collect())
    }

    pub async fn segment<C: ConnectionTrait>(
        &self,
        db: &C,
        tenant: &str,
        id: Uuid,
    ) -> Result<Option<SegmentRow>, SegmentationError> {
        Ok(segment::Entity::find_by_id((tenant.to_owned(), id))
            .one(db)
            .await?
            .map(SegmentRow::from))
    }

    /// Up to `limit` segments after `after` (ids are time-ordered UUIDv7: oldest first).
    pub async fn segment_page(
        &self,
        tenant: &str,
        after: Option<Uuid>,
        limit: u64,
    ) -> Result<Vec<SegmentRow>, SegmentationError> {
        let mut query = segment::Entity::find().filter(segment::Column::TenantId.eq(tenant));
        if let Some(after) = after {
            query = query.filter(segment::Column::SegmentId.gt(after));
        }
        Ok(query
            .order_by_asc(segment::Column::SegmentId)
            .limit(limit)
            .all(self.db())
            .await?
            .into_iter()
            .map(SegmentRow::from)
            .collect())
    }

    pub async fn insert_segment(
        &self,
        txn: &DatabaseTransaction,
        tenant: &str,
        row: &SegmentRow,
    ) -> Result<(), SegmentationError> {
        segment::Entity::insert(segment::ActiveModel {
            tenant_id: Set(tenant.to_owned()),
            segment_id: Set(row.id),
            display_name: Set(row.display_name.clone()),
            description: Set(row.description.clone()),
            expression: Set(row.expression.clone()),
            revision: Set(row.revision),
            member_count: Set(row.member_count),
            create_time: Set(row.create_time),
            update_time: Set(row.update_time),
        })
        .exec_without_returning(txn)
        .await?;
        Ok(())
    }

    /// Writes a segment's definition and revision (not its member count).
    pub async fn update_segment(
        &self,
        txn: &DatabaseTransaction,
        tenant: &str,
        row: &SegmentRow,
    ) -> Result<(), SegmentationError> {
        segment::Entity::update_many()
            .col_expr(
                segment::Column::DisplayName,
                Expr::value(row.display_name.clone()),
            )
            .col_expr(segment::Column::Description, Expr::value(row.description.clone()))
            .col_expr(segment::Column::Expression, Expr::value(row.expression.clone()))
            .col_expr(segment::Column::Revision, Expr::value(row.revision))
            .col_expr(segment::Column::UpdateTime, Expr::value(row.update_time))
            .filter(segment::Column::TenantId.eq(tenant))
            .filter(segment::Column::SegmentId.eq(row.id))
            .exec(txn)
            .await?;
        Ok(())
    }

    /// Deletes a segment and its members.
    pub async fn delete_segment(
        &self,
        txn: &DatabaseTransaction,
        tenant: &str,
        id: Uuid,
    ) -> Result<(), SegmentationError> {
        member::Entity::delete_many()
            .filter(member::Column::TenantId.eq(tenant))
            .filter(member::Column::SegmentId.eq(id))
            .exec(txn)
            .await?;
        segment::Entity::delete_many()
            .filter(segment::Column::TenantId.eq(tenant))
            .filter(segment::Column::SegmentId.eq(id))
            .exec(txn)
            .await?;
        Ok(())
    }

    /// Adds `delta` to each segment's member count.
    pub async fn add_member_counts(
        &self,
        txn: &DatabaseTransaction,
        tenant: &str,
        deltas: &BTreeMap<Uuid, i64>,
    ) -> Result<(), SegmentationError> {
        for (segment_id, delta) in deltas.iter().filter(|(_, delta)| **delta != 0) {
            segment::Entity::update_many()
                .col_expr(
                    segment::Column::MemberCount,
                    Expr::col(segment::Column::MemberCount).add(*delta),
                )
                .filter(segment::Column::TenantId.eq(tenant))
                .filter(segment::Column::SegmentId.eq(*segment_id))
                .exec(txn)
                .await?;
        }
        Ok(())
    }

    // ---- members ----

    /// The segments each of `customers` is in, with when they entered.
    pub async fn memberships_of<C: ConnectionTrait>(
        &self,
        db: &C,
        tenant: &str,
        customers: &[Uuid],
    ) -> Result<HashMap<Uuid, BTreeMap<Uuid, DateTime<Utc>>>, SegmentationError> {
        let mut found: HashMap<Uuid, BTreeMap<Uuid, DateTime<Utc>>> = HashMap::new();
        for chunk in customers.chunks(CHUNK) {
            let rows = member::Entity::find()
                .filter(member::Column::TenantId.eq(tenant))
                .filter(member::Column::CustomerId.is_in(chunk.iter().copied()))
                .all(db)
                .await?;
            for row in rows {
                found
                    .entry(row.customer_id)
                    .or_default()
                    .insert(row.segment_id, row.enter_time);
            }
        }
        Ok(found)
    }

    /// Since when `customer` is in the segment; None when not.
    pub async fn membership(
        &self,
        tenant: &str,
        segment_id: Uuid,
        customer: Uuid,
    ) -> Result<Option<DateTime<Utc>>, SegmentationError> {
        Ok(
            member::Entity::find_by_id((tenant.to_owned(), segment_id, customer))
                .one(self.db())
                .await?
                .map(|row| row.enter_time),
        )
    }

    /// Up to `limit` members of a segment after customer `after`, by customer id.
    pub async fn member_page(
        &self,
        tenant: &str,
        segment_id: Uuid,
        after: Option<Uuid>,
        limit: u64,
    ) -> Result<Vec<(Uuid, DateTime<Utc>)>, SegmentationError> {
        let mut query = member::Entity::find()
            .filter(member::Column::TenantId.eq(tenant))
            .filter(member::Column::SegmentId.eq(segment_id));
        if let Some(after) = after {
            query = query.filter(member::Column::CustomerId.gt(after));
        }
        Ok(query
            .order_by_asc(member::Column::CustomerId)
            .limit(limit)
            .all(self.db())
            .await?
            .into_iter()
            .map(|row| (row.customer_id, row.enter_time))
            .collect())
    }

    pub async fn add_members(
        &self,
        txn: &DatabaseTransaction,
        tenant: &str,
        entries: &[(Uuid, Uuid)],
        enter_time: DateTime<Utc>,
    ) -> Result<(), SegmentationError> {
        for chunk in entries.chunks(CHUNK) {
            if chunk.is_empty() {
                continue;
            }
            member::Entity::insert_many(chunk.iter().map(|(segment_id, customer)| member::ActiveModel {
                tenant_id: Set(tenant.to_owned()),
                segment_id: Set(*segment_id),
                customer_id: Set(*customer),
                enter_time: Set(enter_time),
            }))
            .on_conflict(
                OnConflict::columns([
                    member::Column::TenantId,
                    member::Column::SegmentId,
                    member::Column::CustomerId,
                ])
                .do_nothing()
                .to_owned(),
            )
            .exec_without_returning(txn)
            .await?;
        }
        Ok(())
    }

    /// Removes (segment, customer) memberships.
    pub async fn remove_members(
        &self,
        txn: &DatabaseTransaction,
        tenant: &str,
        exits: &[(Uuid, Uuid)],
    ) -> Result<(), SegmentationError> {
        let mut by_segment: BTreeMap<Uuid, Vec<Uuid>> = BTreeMap::new();
        for (segment_id, customer) in exits {
            by_segment.entry(*segment_id).or_default().push(*customer);
        }
        for (segment_id, customers) in by_segment {
            for chunk in customers.chunks(CHUNK) {
                member::Entity::delete_many()
                    .filter(member::Column::TenantId.eq(tenant))
                    .filter(member::Column::SegmentId.eq(segment_id))
                    .filter(member::Column::CustomerId.is_in(chunk.iter().copied()))
                    .exec(txn)
                    .await?;
            }
        }
        Ok(())
    }

    // ---- whole-population reads ----

    /// Up to `limit` customers' scores after customer `after`, by customer id: the population
    /// a segment is evaluated over.
    pub async fn scores_page<C: ConnectionTrait>(
        &self,
        db: &C,
        tenant: &str,
        after: Option<Uuid>,
        limit: u64,
    ) -> Result<Vec<ScoresRow>, SegmentationError> {
        let mut query = scores::Entity::find().filter(scores::Column::TenantId.eq(tenant));
        if let Some(after) = after {
            query = query.filter(scores::Column::CustomerId.gt(after));
        }
        Ok(query
            .order_by_asc(scores::Column::CustomerId)
            .limit(limit)
            .all(db)
            .await?
            .into_iter()
            .map(ScoresRow::from)
            .collect())
    }

    /// Every member of a segment.
    pub async fn members_of<C: ConnectionTrait>(
        &self,
        db: &C,
        tenant: &str,
        segment_id: Uuid,
    ) -> Result<Vec<Uuid>, SegmentationError> {
        Ok(member::Entity::find()
            .select_only()
            .column(member::Column::CustomerId)
            .filter(member::Column::TenantId.eq(tenant))
            .filter(member::Column::SegmentId.eq(segment_id))
            .into_tuple()
            .all(db)
            .await?)
    }
}
