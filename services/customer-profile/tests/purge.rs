//! The purge of soft-deleted customers past their retention, on SQLite and, with
//! `DATABASE_URL`, on PostgreSQL (a schema of its own, dropped afterwards).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use crm_customer_profile::Migrator;
use crm_customer_profile::domain::{
    self, Customer, CustomerDraft, CustomerKind, Identity, IdentityKind, Labeled, RecordState,
};
use crm_customer_profile::store::{Applied, ChangeSet, CustomerStore, SeaOrmCustomerStore, Write};
use crm_db::DbSettings;
use crm_runtime::TenantId;
use sea_orm::{ConnectionTrait, DatabaseConnection};
use sea_orm_migration::MigratorTrait;

async fn databases(data_dir: &std::path::Path) -> Vec<DatabaseConnection> {
    let settings = |url| DbSettings {
        url,
        data_dir: data_dir.to_owned(),
        max_connections: 4,
        connect_timeout: Duration::from_secs(5),
    };
    let mut connections = vec![crm_db::connect(&settings(None), "purge_test").await.unwrap()];
    match std::env::var("DATABASE_URL") {
        Ok(url) => {
            let schema = format!("purge_{}", uuid::Uuid::now_v7().simple());
            connections.push(crm_db::connect(&settings(Some(url)), &schema).await.unwrap());
        }
        Err(_) => {
            assert!(std::env::var("CI").is_err(), "DATABASE_URL must be set under CI");
            eprintln!("skipping PostgreSQL: DATABASE_URL is not set");
        }
    }
    for db in &connections {
        Migrator::up(db, None).await.unwrap();
    }
    connections
}

#[tokio::test]
async fn expired_soft_deleted_customers_are_purged_and_free_their_identities() {
    let dir = tempfile::tempdir().unwrap();
    let tenant = TenantId::parse("purge").unwrap();
    for db in databases(dir.path()).await {
        let store = SeaOrmCustomerStore::new(db.clone());
        let phone = Identity {
            kind: IdentityKind::Phone,
            value: "+8613800138009".into(),
        };
        let draft = |name: &str| CustomerDraft {
            kind: Some(CustomerKind::Consumer),
            display_name: name.into(),
            phones: vec![Labeled {
                value: phone.value.clone(),
                label: String::new(),
            }],
            ..Default::default()
        };
        let now = domain::now();
        let mut expired = Customer::create(draft("Expired"), now).unwrap();
        expired.state = RecordState::Deleted;
        expired.delete_time = Some(now - chrono::Duration::days(40));
        expired.purge_time = Some(now - chrono::Duration::days(10));
        let mut kept = Customer::create(
            CustomerDraft {
                phones: vec![],
                ..draft("Kept")
            },
            now,
        )
        .unwrap();
        kept.state = RecordState::Deleted;
        kept.purge_time = Some(now + chrono::Duration::days(20));
        let changes = ChangeSet {
            writes: vec![Write::Insert(expired.clone()), Write::Insert(kept.clone())],
            ..Default::default()
        };
        assert_eq!(store.apply(&tenant, changes, None).await.unwrap(), Applied::Done);
        // A deleted customer keeps its identities reserved until it is purged.
        assert_eq!(store.owner(&tenant, &phone).await.unwrap(), Some(expired.id));

        assert_eq!(store.purge_deleted(now).await.unwrap(), 1);
        assert!(store.load(&tenant, expired.id).await.unwrap().is_none());
        assert!(store.load(&tenant, kept.id).await.unwrap().is_some());
        assert_eq!(store.owner(&tenant, &phone).await.unwrap(), None);
        assert_eq!(store.purge_deleted(now).await.unwrap(), 0);

        if db.get_database_backend() == sea_orm::DbBackend::Postgres {
            let row = db
                .query_one_raw(sea_orm::Statement::from_string(
                    sea_orm::DbBackend::Postgres,
                    "SELECT current_schema() AS s",
                ))
                .await
                .unwrap()
                .unwrap();
            let schema: String = row.try_get("", "s").unwrap();
            db.execute_unprepared(&format!("DROP SCHEMA \"{schema}\" CASCADE"))
                .await
                .unwrap();
        }
    }
}
