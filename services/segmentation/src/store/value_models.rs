//! Persistence of customer-value model versions. The caller holds the tenant lock while it
//! numbers a version and switches the active one, so versions are dense and at most one is
//! active.

use chrono::{DateTime, Utc};
use sea_orm::entity::prelude::*;
use sea_orm::sea_query::Expr;
use sea_orm::{ConnectionTrait, DatabaseTransaction, QueryOrder, QuerySelect, Set};

use super::Store;
use crate::error::SegmentationError;

mod value_model {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "value_models")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub tenant_id: String,
        #[sea_orm(primary_key, auto_increment = false)]
        pub version: i64,
        pub state: i32,
        pub body: Vec<u8>,
        pub create_time: ChronoDateTimeUtc,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// A stored model version: its state (the proto enum's number) and encoded resource.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredValueModel {
    pub version: i64,
    pub state: i32,
    pub body: Vec<u8>,
}

impl From<value_model::Model> for StoredValueModel {
    fn from(model: value_model::Model) -> Self {
        Self {
            version: model.version,
            state: model.state,
            body: model.body,
        }
    }
}

impl Store {
    /// The version a new fit gets.
    pub async fn next_value_model_version(
        &self,
        txn: &DatabaseTransaction,
        tenant: &str,
    ) -> Result<i64, SegmentationError> {
        let latest = value_model::Entity::find()
            .filter(value_model::Column::TenantId.eq(tenant))
            .order_by_desc(value_model::Column::Version)
            .one(txn)
            .await?;
        Ok(latest.map_or(1, |row| row.version.saturating_add(1)))
    }

    /// Stores a new version.
    pub async fn insert_value_model(
        &self,
        txn: &DatabaseTransaction,
        tenant: &str,
        model: StoredValueModel,
        now: DateTime<Utc>,
    ) -> Result<(), SegmentationError> {
        value_model::Entity::insert(value_model::ActiveModel {
            tenant_id: Set(tenant.to_owned()),
            version: Set(model.version),
            state: Set(model.state),
            body: Set(model.body),
            create_time: Set(now),
        })
        .exec_without_returning(txn)
        .await?;
        Ok(())
    }

    /// Replaces a version's state and body (when it is superseded).
    pub async fn update_value_model(
        &self,
        txn: &DatabaseTransaction,
        tenant: &str,
        model: StoredValueModel,
    ) -> Result<(), SegmentationError> {
        value_model::Entity::update_many()
            .col_expr(value_model::Column::State, Expr::value(model.state))
            .col_expr(value_model::Column::Body, Expr::value(model.body))
            .filter(value_model::Column::TenantId.eq(tenant))
            .filter(value_model::Column::Version.eq(model.version))
            .exec(txn)
            .await?;
        Ok(())
    }

    /// A version.
    pub async fn value_model<C: ConnectionTrait>(
        &self,
        db: &C,
        tenant: &str,
        version: i64,
    ) -> Result<Option<StoredValueModel>, SegmentationError> {
        Ok(value_model::Entity::find_by_id((tenant.to_owned(), version))
            .one(db)
            .await?
            .map(StoredValueModel::from))
    }

    /// The version in the given state with the highest number (the active one, for ACTIVE).
    pub async fn latest_value_model_in_state<C: ConnectionTrait>(
        &self,
        db: &C,
        tenant: &str,
        state: i32,
    ) -> Result<Option<StoredValueModel>, SegmentationError> {
        Ok(value_model::Entity::find()
            .filter(value_model::Column::TenantId.eq(tenant))
            .filter(value_model::Column::State.eq(state))
            .order_by_desc(value_model::Column::Version)
            .one(db)
            .await?
            .map(StoredValueModel::from))
    }

    /// A page of versions, newest first, below `before` (exclusive) when given.
    pub async fn value_models_page(
        &self,
        tenant: &str,
        before: Option<i64>,
        limit: u64,
    ) -> Result<Vec<StoredValueModel>, SegmentationError> {
        let mut query = value_model::Entity::find().filter(value_model::Column::TenantId.eq(tenant));
        if let Some(before) = before {
            query = query.filter(value_model::Column::Version.lt(before));
        }
        Ok(query
            .order_by_desc(value_model::Column::Version)
            .limit(limit)
            .all(self.db())
            .await?
            .into_iter()
            .map(StoredValueModel::from)
            .collect())
    }
}
