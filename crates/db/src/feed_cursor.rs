//! Where a consumer is in another service's event feed: one row per feed (`source`), written
//! in the same transaction as the effects of the events up to it, so a restart resumes right
//! after the last event applied and never applies one twice.

mod m20270110_000001_create_feed_cursors;

use sea_orm::sea_query::{Expr, OnConflict};
use sea_orm::{
    ColumnTrait, ConnectionTrait, DatabaseTransaction, DbBackend, DbErr, EntityTrait, QueryFilter,
    QuerySelect,
};

pub use m20270110_000001_create_feed_cursors::Migration;

mod entity {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "feed_cursors")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub source: String,
        pub position: i64,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// The position of the last event of `source` applied (0 for none), without locking.
pub async fn position<C: ConnectionTrait>(db: &C, source: &str) -> Result<i64, DbErr> {
    Ok(entity::Entity::find_by_id(source.to_owned())
        .one(db)
        .await?
        .map_or(0, |row| row.position))
}

/// The cursor of `source`, locked until `txn` ends (`FOR UPDATE` on PostgreSQL; SQLite has one
/// writer), so two replicas following one feed apply each event once: the second waits, then
/// sees the first's cursor.
pub async fn lock(txn: &DatabaseTransaction, source: &str) -> Result<i64, DbErr> {
    entity::Entity::insert(entity::ActiveModel {
        source: sea_orm::Set(source.to_owned()),
        position: sea_orm::Set(0),
    })
    .on_conflict(OnConflict::column(entity::Column::Source).do_nothing().to_owned())
    .exec_without_returning(txn)
    .await?;
    let mut query = entity::Entity::find_by_id(source.to_owned());
    if txn.get_database_backend() == DbBackend::Postgres {
        query = query.lock_exclusive();
    }
    Ok(query.one(txn).await?.map_or(0, |row| row.position))
}

/// Moves the cursor of `source` (locked by [`lock`] in the same transaction).
pub async fn set(txn: &DatabaseTransaction, source: &str, position: i64) -> Result<(), DbErr> {
    entity::Entity::update_many()
        .col_expr(entity::Column::Position, Expr::value(position))
        .filter(entity::Column::Source.eq(source))
        .exec(txn)
        .await?;
    Ok(())
}
