//! Idempotency records on SQLite and, with `DATABASE_URL`, on PostgreSQL (a schema per test).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use crm_db::idempotency::{self, IdempotencyClaim};
use crm_db::{DbSettings, connect};
use sea_orm::{ConnectionTrait, DatabaseConnection, TransactionTrait};
use sea_orm_migration::prelude::*;

struct Migrator;

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![Box::new(idempotency::Migration)]
    }
}

fn settings(url: Option<String>, data_dir: &std::path::Path) -> DbSettings {
    DbSettings {
        url,
        data_dir: data_dir.to_owned(),
        max_connections: 4,
        connect_timeout: Duration::from_secs(5),
    }
}

async fn databases(data_dir: &std::path::Path) -> Vec<DatabaseConnection> {
    let mut connections = vec![connect(&settings(None, data_dir), "idem_test").await.unwrap()];
    match std::env::var("DATABASE_URL") {
        Ok(url) => {
            let schema = format!("idem_{}", uuid::Uuid::now_v7().simple());
            connections.push(connect(&settings(Some(url), data_dir), &schema).await.unwrap());
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

/// Drops the PostgreSQL schema a test made; SQLite files go with the temporary directory.
async fn cleanup(db: DatabaseConnection) {
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

fn claim(request_id: &str, fingerprint: &str) -> IdempotencyClaim {
    IdempotencyClaim {
        method: "CreateThing",
        request_id: request_id.into(),
        fingerprint: fingerprint.into(),
        response: fingerprint.as_bytes().to_vec(),
        subject: format!("things/{request_id}"),
    }
}

#[tokio::test]
async fn the_first_claim_wins_and_later_ones_see_it() {
    let dir = tempfile::tempdir().unwrap();
    for db in databases(dir.path()).await {
        let txn = db.begin().await.unwrap();
        assert_eq!(
            idempotency::claim(&txn, "t1", &claim("r1", "first"))
                .await
                .unwrap(),
            None
        );
        txn.commit().await.unwrap();

        let txn = db.begin().await.unwrap();
        let stored = idempotency::claim(&txn, "t1", &claim("r1", "second"))
            .await
            .unwrap()
            .expect("replay");
        assert_eq!(stored.fingerprint, "first");
        assert_eq!(stored.response, b"first");
        txn.rollback().await.unwrap();

        // Tenants do not share request ids.
        let txn = db.begin().await.unwrap();
        assert_eq!(
            idempotency::claim(&txn, "t2", &claim("r1", "other tenant"))
                .await
                .unwrap(),
            None
        );
        txn.commit().await.unwrap();

        // A rolled-back claim leaves nothing behind.
        let txn = db.begin().await.unwrap();
        assert_eq!(
            idempotency::claim(&txn, "t1", &claim("r2", "rolled back"))
                .await
                .unwrap(),
            None
        );
        txn.rollback().await.unwrap();
        let txn = db.begin().await.unwrap();
        assert_eq!(
            idempotency::claim(&txn, "t1", &claim("r2", "again"))
                .await
                .unwrap(),
            None
        );
        txn.commit().await.unwrap();
        cleanup(db).await;
    }
}

#[tokio::test]
async fn expired_records_are_purged_and_fresh_ones_kept() {
    let dir = tempfile::tempdir().unwrap();
    for db in databases(dir.path()).await {
        for request_id in ["old", "new"] {
            let txn = db.begin().await.unwrap();
            idempotency::claim(&txn, "t1", &claim(request_id, request_id))
                .await
                .unwrap();
            txn.commit().await.unwrap();
        }
        let three_days_ago = chrono::Utc::now() - chrono::Duration::days(3);
        db.execute_raw(sea_orm::Statement::from_sql_and_values(
            db.get_database_backend(),
            match db.get_database_backend() {
                sea_orm::DbBackend::Postgres => {
                    "UPDATE idempotency_records SET create_time = $1 WHERE request_id = 'old'"
                }
                _ => "UPDATE idempotency_records SET create_time = ? WHERE request_id = 'old'",
            },
            [three_days_ago.into()],
        ))
        .await
        .unwrap();
        // A retention under 24 h is raised to 24 h, so "new" survives even a zero retention.
        assert_eq!(idempotency::purge_expired(&db, Duration::ZERO).await.unwrap(), 1);
        let txn = db.begin().await.unwrap();
        assert!(
            idempotency::claim(&txn, "t1", &claim("new", "x"))
                .await
                .unwrap()
                .is_some()
        );
        assert!(
            idempotency::claim(&txn, "t1", &claim("old", "x"))
                .await
                .unwrap()
                .is_none()
        );
        txn.rollback().await.unwrap();
        cleanup(db).await;
    }
}

#[tokio::test]
async fn an_unreachable_database_is_unavailable() {
    let dir = tempfile::tempdir().unwrap();
    let mut unreachable = settings(Some("postgres://postgres@127.0.0.1:1/none".into()), dir.path());
    unreachable.connect_timeout = Duration::from_secs(1);
    match connect(&unreachable, "nothing").await {
        Err(crm_db::DbSetupError::Connect { source, .. }) => {
            assert!(crm_db::is_unavailable(&source), "{source:?}");
            assert_eq!(crm_db::api_error(source).code(), tonic::Code::Unavailable);
        }
        other => panic!("expected a connect error, got {:?}", other.map(|_| ())),
    }
}

#[tokio::test]
async fn erasure_forgets_stored_responses_about_a_subject() {
    let dir = tempfile::tempdir().unwrap();
    for db in databases(dir.path()).await {
        for request_id in ["a", "b"] {
            let txn = db.begin().await.unwrap();
            idempotency::claim(&txn, "t1", &claim(request_id, request_id))
                .await
                .unwrap();
            txn.commit().await.unwrap();
        }
        let forgotten = idempotency::forget_subjects(&db, "t1", &["things/a".to_owned()], "EraseThing")
            .await
            .unwrap();
        assert_eq!(forgotten, 1);
        assert!(
            idempotency::find(&db, "t1", "CreateThing", "a")
                .await
                .unwrap()
                .is_none()
        );
        assert!(
            idempotency::find(&db, "t1", "CreateThing", "b")
                .await
                .unwrap()
                .is_some()
        );
        // Another tenant's subject of the same name is untouched, and a kept method stays.
        assert_eq!(
            idempotency::forget_subjects(&db, "t2", &["things/b".to_owned()], "EraseThing")
                .await
                .unwrap(),
            0
        );
        assert_eq!(
            idempotency::forget_subjects(&db, "t1", &["things/b".to_owned()], "CreateThing")
                .await
                .unwrap(),
            0
        );
        cleanup(db).await;
    }
}
