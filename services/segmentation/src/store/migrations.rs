//! The segmentation schema, one file per migration (sea-orm names a migration after its module).

mod m20261125_000001_create_scores;
mod m20261201_000001_create_segments;
mod m20261222_000001_create_value_models;
mod m20261222_000002_add_origin_feedback;
mod m20261222_000003_create_referrals;

use sea_orm_migration::prelude::*;

pub struct Migrator;

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(crm_db::idempotency::Migration),
            Box::new(m20261125_000001_create_scores::Migration),
            Box::new(crm_db::outbox::Migration),
            Box::new(m20261201_000001_create_segments::Migration),
            Box::new(m20261222_000001_create_value_models::Migration),
            Box::new(m20261222_000002_add_origin_feedback::Migration),
            Box::new(m20261222_000003_create_referrals::Migration),
        ]
    }
}
