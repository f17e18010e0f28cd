//! The segmentation schema, one file per migration (sea-orm names a migration after its module).

mod m20261125_000001_create_scores;

use sea_orm_migration::prelude::*;

pub struct Migrator;

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(crm_db::idempotency::Migration),
            Box::new(m20261125_000001_create_scores::Migration),
        ]
    }
}
