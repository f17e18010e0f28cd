//! The loyalty schema, one file per migration (sea-orm names a migration after its module).

mod m20270105_000001_create_ledger;
mod m20270110_000001_follow_purchases;

use sea_orm_migration::prelude::*;

pub struct Migrator;

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(crm_db::idempotency::Migration),
            Box::new(crm_db::outbox::Migration),
            Box::new(m20270105_000001_create_ledger::Migration),
            Box::new(crm_db::feed_cursor::Migration),
            Box::new(m20270110_000001_follow_purchases::Migration),
        ]
    }
}
