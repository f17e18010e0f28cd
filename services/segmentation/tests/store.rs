//! Store reads that score runs page through, on SQLite and, with `DATABASE_URL`, on PostgreSQL
//! (a schema of its own, dropped afterwards).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use crm_db::DbSettings;
use crm_segmentation::Migrator;
use crm_segmentation::store::{Store, StoredOrigin};
use sea_orm::{ConnectionTrait, DatabaseConnection};
use sea_orm_migration::MigratorTrait;
use uuid::Uuid;

async fn databases(data_dir: &std::path::Path) -> Vec<(DatabaseConnection, Option<String>)> {
    let settings = |url| DbSettings {
        url,
        data_dir: data_dir.to_owned(),
        max_connections: 4,
        connect_timeout: Duration::from_secs(5),
    };
    let mut connections = vec![(
        crm_db::connect(&settings(None), "segmentation_store_test")
            .await
            .unwrap(),
        None,
    )];
    match std::env::var("DATABASE_URL") {
        Ok(url) => {
            let schema = format!("segstore_{}", Uuid::now_v7().simple());
            connections.push((
                crm_db::connect(&settings(Some(url)), &schema).await.unwrap(),
                Some(schema),
            ));
        }
        Err(_) => {
            assert!(std::env::var("CI").is_err(), "DATABASE_URL must be set under CI");
            eprintln!("skipping PostgreSQL: DATABASE_URL is not set");
        }
    }
    for (db, _) in &connections {
        Migrator::up(db, None).await.unwrap();
    }
    connections
}

/// Keyset pages over (owner, origin) return every origin once, in order, whatever the page
/// size, and never another tenant's.
#[tokio::test]
async fn origin_pages_cover_every_origin_once_in_order() {
    let dir = tempfile::tempdir().unwrap();
    for (db, schema) in databases(dir.path()).await {
        let store = Store::new(db.clone());
        let owners: Vec<Uuid> = (0..7).map(|_| Uuid::new_v4()).collect();
        let mut origins = Vec::new();
        for (index, owner) in owners.iter().enumerate() {
            // Owners hold 1 to 3 origins, the owner itself among them.
            origins.push(StoredOrigin {
                origin_id: *owner,
                owner_id: *owner,
                days: Vec::new(),
                other_currency_events: 0,
                feedback: Vec::new(),
            });
            for _ in 0..index % 3 {
                origins.push(StoredOrigin {
                    origin_id: Uuid::new_v4(),
                    owner_id: *owner,
                    days: Vec::new(),
                    other_currency_events: 0,
                    feedback: Vec::new(),
                });
            }
        }
        let txn = store.begin_write().await.unwrap();
        store.save_origins(&txn, "tenant-a", &origins).await.unwrap();
        store
            .save_origins(
                &txn,
                "tenant-b",
                &[StoredOrigin {
                    origin_id: Uuid::nil(),
                    owner_id: Uuid::nil(),
                    days: Vec::new(),
                    other_currency_events: 0,
                    feedback: Vec::new(),
                }],
            )
            .await
            .unwrap();
        txn.commit().await.unwrap();

        let mut want: Vec<(Uuid, Uuid)> = origins
            .iter()
            .map(|origin| (origin.owner_id, origin.origin_id))
            .collect();
        want.sort();
        for page_size in [1, 2, 3, 100] {
            let mut seen = Vec::new();
            let mut after = None;
            loop {
                let page = store.origin_page("tenant-a", after, page_size).await.unwrap();
                let Some(last) = page.last() else { break };
                after = Some((last.owner_id, last.origin_id));
                seen.extend(page.iter().map(|origin| (origin.owner_id, origin.origin_id)));
                if (page.len() as u64) < page_size {
                    break;
                }
            }
            assert_eq!(seen, want, "page size {page_size}");
        }

        if let Some(schema) = schema {
            db.execute_unprepared(&format!("DROP SCHEMA \"{schema}\" CASCADE"))
                .await
                .unwrap();
        }
    }
}
