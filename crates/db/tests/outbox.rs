//! The outbox on SQLite and, with `DATABASE_URL`, on PostgreSQL (a schema per test).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{BTreeSet, HashMap};
use std::path::Path;
use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crm_db::outbox::{self, NewEvent, Outbox, StoredEvent};
use crm_db::{DbSettings, connect};
use futures::{Stream, StreamExt};
use sea_orm::{ColumnTrait, ConnectionTrait, DatabaseConnection, EntityTrait, QueryFilter, TransactionTrait};
use sea_orm_migration::prelude::*;

struct Migrator;

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![Box::new(outbox::Migration)]
    }
}

/// How long a subscriber may wait for the next event before the test calls it stuck.
const STALL: Duration = Duration::from_secs(60);
/// The poll interval of sequencers and subscribers; wake-ups usually come sooner.
const POLL: Duration = Duration::from_millis(50);

/// One database under test: its connection and what it takes to open another pool on it.
struct Backend {
    name: &'static str,
    db: DatabaseConnection,
    settings: DbSettings,
    schema: String,
}

impl Backend {
    /// A second, independent pool on the same schema or file: another "process".
    async fn another_pool(&self) -> DatabaseConnection {
        connect(&self.settings, &self.schema).await.unwrap()
    }
}

fn settings(url: Option<String>, data_dir: &Path) -> DbSettings {
    DbSettings {
        url,
        data_dir: data_dir.to_owned(),
        max_connections: 10,
        connect_timeout: Duration::from_secs(10),
    }
}

async fn backends(data_dir: &Path) -> Vec<Backend> {
    let schema = format!("outbox_{}", uuid::Uuid::now_v7().simple());
    let sqlite = settings(None, data_dir);
    let mut backends = vec![Backend {
        name: "sqlite",
        db: connect(&sqlite, &schema).await.unwrap(),
        settings: sqlite,
        schema: schema.clone(),
    }];
    match std::env::var("DATABASE_URL") {
        Ok(url) => {
            let postgres = settings(Some(url), data_dir);
            backends.push(Backend {
                name: "postgres",
                db: connect(&postgres, &schema).await.unwrap(),
                settings: postgres,
                schema,
            });
        }
        Err(_) => {
            assert!(
                std::env::var("CI").map_or(true, |ci| ci != "true"),
                "DATABASE_URL must be set under CI"
            );
            eprintln!("skipping PostgreSQL: DATABASE_URL is not set");
        }
    }
    for backend in &backends {
        Migrator::up(&backend.db, None).await.unwrap();
    }
    backends
}

/// Drops the PostgreSQL schema a test made; SQLite files go with the temporary directory.
async fn cleanup(backend: Backend) {
    if backend.db.get_database_backend() == sea_orm::DbBackend::Postgres {
        backend
            .db
            .execute_unprepared(&format!("DROP SCHEMA \"{}\" CASCADE", backend.schema))
            .await
            .unwrap();
    }
    let _ = backend.db.close().await;
}

fn event(tenant: &str, event_type: &str, writer: usize, seq: usize) -> NewEvent {
    NewEvent {
        tenant_id: tenant.into(),
        event_type: event_type.into(),
        subject: format!("customers/w{writer}"),
        payload: format!("{writer}:{seq}").into_bytes(),
    }
}

fn writer_and_seq(event: &StoredEvent) -> (usize, usize) {
    let text = std::str::from_utf8(&event.payload).unwrap();
    let (writer, seq) = text.split_once(':').unwrap();
    (writer.parse().unwrap(), seq.parse().unwrap())
}

fn label(event: &StoredEvent) -> String {
    String::from_utf8(event.payload.clone()).unwrap()
}

/// Appends `count` events as `writer`, `batch` per transaction, waking the sequencer after
/// each commit.
async fn write(db: DatabaseConnection, outbox: Outbox, writer: usize, count: usize, batch: usize) {
    for start in (0..count).step_by(batch) {
        let txn = db.begin().await.unwrap();
        for seq in start..(start + batch).min(count) {
            outbox::append(&txn, &event("t1", "Written", writer, seq))
                .await
                .unwrap();
        }
        txn.commit().await.unwrap();
        outbox.notify_committed();
    }
}

/// The next event, failing the test if none comes within [`STALL`].
async fn next<S>(stream: &mut S) -> StoredEvent
where
    S: Stream<Item = Result<StoredEvent, DbErr>> + Unpin,
{
    tokio::time::timeout(STALL, stream.next())
        .await
        .expect("no event came")
        .expect("the stream never ends")
        .unwrap()
}

/// Reads from `outbox` after `cursor` until `seen` holds `until` events, then drops the stream.
async fn consume(outbox: &Outbox, cursor: i64, until: usize, seen: &mut Vec<StoredEvent>) {
    let mut stream = pin!(outbox.subscribe(Some("t1".into()), cursor, Vec::new(), POLL));
    while seen.len() < until {
        let next = tokio::time::timeout(STALL, stream.next())
            .await
            .unwrap_or_else(|_| panic!("no event after {} of {until}", seen.len()));
        seen.push(next.expect("the stream never ends").unwrap());
    }
}

/// Positions are 1..=n in order (strictly increasing, gap-free), each (writer, seq) appears
/// once, and every writer's events come in the order it committed them.
fn assert_log(seen: &[StoredEvent], writers: usize, per_writer: usize) {
    let positions: Vec<i64> = seen.iter().map(|event| event.position).collect();
    let expected: Vec<i64> = (1..=(writers * per_writer) as i64).collect();
    assert_eq!(
        positions, expected,
        "positions must be 1..=n, in order, each once"
    );
    let mut next_seq: HashMap<usize, usize> = HashMap::new();
    for event in seen {
        let (writer, seq) = writer_and_seq(event);
        let expected_seq = next_seq.entry(writer).or_default();
        assert_eq!(
            seq, *expected_seq,
            "writer {writer} out of order at {}",
            event.position
        );
        *expected_seq += 1;
    }
    assert_eq!(next_seq.len(), writers);
    assert!(next_seq.values().all(|&count| count == per_writer));
}

/// Test 1: 8 concurrent writers, 10,000 events in transactions of 10, the sequencer running,
/// and a subscriber dropped and resumed from its cursor twice while writes go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_writers_events_arrive_once_in_order_across_resumes() {
    const WRITERS: usize = 8;
    const PER_WRITER: usize = 1250;
    let dir = tempfile::tempdir().unwrap();
    for backend in backends(dir.path()).await {
        let outbox = Outbox::new(backend.db.clone());
        let sequencer = outbox.spawn_sequencer(POLL);
        let started = Instant::now();
        let writers: Vec<_> = (0..WRITERS)
            .map(|writer| tokio::spawn(write(backend.db.clone(), outbox.clone(), writer, PER_WRITER, 10)))
            .collect();

        let mut seen = Vec::new();
        consume(&outbox, 0, 3_000, &mut seen).await;
        let cursor = seen.last().unwrap().position;
        consume(&outbox, cursor, 6_500, &mut seen).await;
        let cursor = seen.last().unwrap().position;
        consume(&outbox, cursor, WRITERS * PER_WRITER, &mut seen).await;
        let elapsed = started.elapsed();
        for writer in writers {
            writer.await.unwrap();
        }
        eprintln!(
            "[{}] {} events from {WRITERS} writers written, positioned and read in {elapsed:?}",
            backend.name,
            seen.len()
        );
        assert_log(&seen, WRITERS, PER_WRITER);

        // Nothing more arrives, and everything is positioned.
        let mut stream =
            pin!(outbox.subscribe(Some("t1".into()), seen.last().unwrap().position, Vec::new(), POLL));
        assert!(
            tokio::time::timeout(POLL * 4, stream.next()).await.is_err(),
            "an event beyond the 10,000"
        );
        assert_eq!(outbox::assign_positions(&backend.db).await.unwrap(), 0);
        sequencer.abort();
        let _ = sequencer.await;
        cleanup(backend).await;
    }
}

/// Test 2: an event whose transaction commits after a later event was positioned and read is
/// still delivered, after it.
#[tokio::test]
async fn an_event_committed_late_is_not_skipped() {
    let dir = tempfile::tempdir().unwrap();
    for backend in backends(dir.path()).await {
        let db = &backend.db;
        let is_postgres = db.get_database_backend() == sea_orm::DbBackend::Postgres;
        let (b, a);
        if is_postgres {
            // A appends first (lower id) and stays open on its own connection while B
            // appends and commits.
            let txn_a = db.begin().await.unwrap();
            outbox::append(&txn_a, &event("t1", "Late", 0, 0)).await.unwrap();
            let txn_b = db.begin().await.unwrap();
            outbox::append(&txn_b, &event("t1", "Early", 1, 0)).await.unwrap();
            txn_b.commit().await.unwrap();

            assert_eq!(
                outbox::assign_positions(db).await.unwrap(),
                1,
                "only B is committed"
            );
            b = outbox::read_after(db, Some("t1"), 0, &[], 100).await.unwrap();
            assert_eq!(b.iter().map(label).collect::<Vec<_>>(), ["1:0"]);

            txn_a.commit().await.unwrap();
            // A reader that followed ids would have been past A for good.
            let rows = outbox::Entity::find().all(db).await.unwrap();
            let id_of = |payload: &[u8]| rows.iter().find(|row| row.payload == payload).unwrap().id;
            assert!(id_of(b"0:0") < id_of(b"1:0"), "A's id is below B's");
            assert_eq!(outbox::assign_positions(db).await.unwrap(), 1);
            a = outbox::read_after(db, Some("t1"), b[0].position, &[], 100)
                .await
                .unwrap();
        } else {
            // SQLite: one connection per file (and one writer per database) makes two open
            // write transactions impossible, so the interleaving above cannot happen. What
            // remains to check is the ordering: B committed, positioned and read, then A
            // committed, and the reader continuing from its cursor gets A.
            let txn_b = db.begin().await.unwrap();
            outbox::append(&txn_b, &event("t1", "Early", 1, 0)).await.unwrap();
            txn_b.commit().await.unwrap();
            assert_eq!(outbox::assign_positions(db).await.unwrap(), 1);
            b = outbox::read_after(db, Some("t1"), 0, &[], 100).await.unwrap();
            assert_eq!(b.iter().map(label).collect::<Vec<_>>(), ["1:0"]);

            let txn_a = db.begin().await.unwrap();
            outbox::append(&txn_a, &event("t1", "Late", 0, 0)).await.unwrap();
            txn_a.commit().await.unwrap();
            assert_eq!(outbox::assign_positions(db).await.unwrap(), 1);
            a = outbox::read_after(db, Some("t1"), b[0].position, &[], 100)
                .await
                .unwrap();
        }
        assert_eq!(a.iter().map(label).collect::<Vec<_>>(), ["0:0"]);
        assert_eq!(a[0].position, b[0].position + 1);
        assert_eq!(a[0].event_type, "Late");
        assert_eq!(a[0].subject, "customers/w0");
        cleanup(backend).await;
    }
}

/// Test 2 through the running sequencer and a live subscription: on PostgreSQL the late
/// transaction is open while the subscriber receives the later one.
#[tokio::test]
async fn a_live_subscriber_gets_an_event_committed_late() {
    let dir = tempfile::tempdir().unwrap();
    for backend in backends(dir.path()).await {
        let db = &backend.db;
        let outbox = Outbox::new(db.clone());
        let sequencer = outbox.spawn_sequencer(POLL);
        let mut stream = pin!(outbox.subscribe(Some("t1".into()), 0, Vec::new(), POLL));
        if db.get_database_backend() == sea_orm::DbBackend::Postgres {
            let txn_a = db.begin().await.unwrap();
            outbox::append(&txn_a, &event("t1", "Late", 0, 0)).await.unwrap();
            let txn_b = db.begin().await.unwrap();
            outbox::append(&txn_b, &event("t1", "Early", 1, 0)).await.unwrap();
            txn_b.commit().await.unwrap();
            outbox.notify_committed();
            let early = next(&mut stream).await;
            assert_eq!(label(&early), "1:0");
            txn_a.commit().await.unwrap();
            outbox.notify_committed();
            let late = next(&mut stream).await;
            assert_eq!((label(&late), late.position), ("0:0".into(), early.position + 1));
        } else {
            // Sequential on SQLite (see above).
            for writer in [1, 0] {
                let txn = db.begin().await.unwrap();
                outbox::append(&txn, &event("t1", "Any", writer, 0))
                    .await
                    .unwrap();
                txn.commit().await.unwrap();
                outbox.notify_committed();
                let got = next(&mut stream).await;
                assert_eq!(label(&got), format!("{writer}:0"));
            }
        }
        sequencer.abort();
        let _ = sequencer.await;
        cleanup(backend).await;
    }
}

/// Test 3: reads see only their tenant and the types asked for; a rolled-back transaction's
/// event never appears and leaves no gap in the positions.
#[tokio::test]
async fn tenant_and_type_filters_and_rolled_back_events() {
    let dir = tempfile::tempdir().unwrap();
    for backend in backends(dir.path()).await {
        let db = &backend.db;
        let txn = db.begin().await.unwrap();
        outbox::append_all(
            &txn,
            &[
                event("t1", "Created", 1, 0),
                event("t2", "Created", 2, 0),
                event("t1", "Merged", 1, 1),
            ],
        )
        .await
        .unwrap();
        txn.commit().await.unwrap();

        let txn = db.begin().await.unwrap();
        outbox::append(&txn, &event("t1", "Created", 9, 9)).await.unwrap();
        outbox::append(&txn, &event("t2", "Created", 9, 9)).await.unwrap();
        txn.rollback().await.unwrap();
        // Dropped without commit: rolled back too.
        let txn = db.begin().await.unwrap();
        outbox::append(&txn, &event("t1", "Erased", 9, 9)).await.unwrap();
        drop(txn);

        let txn = db.begin().await.unwrap();
        outbox::append(&txn, &event("t1", "Erased", 1, 2)).await.unwrap();
        outbox::append(&txn, &event("t2", "Merged", 2, 1)).await.unwrap();
        txn.commit().await.unwrap();
        assert_eq!(outbox::assign_positions(db).await.unwrap(), 5);

        let labels = |events: Vec<StoredEvent>| events.iter().map(label).collect::<Vec<_>>();
        let t1 = outbox::read_after(db, Some("t1"), 0, &[], 100).await.unwrap();
        assert!(t1.iter().all(|event| event.tenant_id == "t1"));
        assert_eq!(labels(t1.clone()), ["1:0", "1:1", "1:2"]);
        assert_eq!(
            labels(outbox::read_after(db, Some("t2"), 0, &[], 100).await.unwrap()),
            ["2:0", "2:1"]
        );
        let types = |names: &[&str]| names.iter().map(|name| (*name).to_owned()).collect::<Vec<_>>();
        assert_eq!(
            labels(
                outbox::read_after(db, Some("t1"), 0, &types(&["Merged", "Erased"]), 100)
                    .await
                    .unwrap()
            ),
            ["1:1", "1:2"]
        );
        assert_eq!(
            labels(
                outbox::read_after(db, Some("t2"), 0, &types(&["Merged"]), 100)
                    .await
                    .unwrap()
            ),
            ["2:1"]
        );
        // The internal feeds read every tenant's events in position order.
        let all = outbox::read_after(db, None, 0, &[], 100).await.unwrap();
        assert_eq!(all.len(), 5);
        assert!(all.windows(2).all(|pair| pair[0].position < pair[1].position));
        assert_eq!(
            labels(
                outbox::read_after(db, None, 0, &types(&["Merged"]), 100)
                    .await
                    .unwrap()
            ),
            ["1:1", "2:1"]
        );
        assert!(
            outbox::read_after(db, Some("t3"), 0, &[], 100)
                .await
                .unwrap()
                .is_empty()
        );
        // After a cursor, and with a limit.
        assert_eq!(
            labels(
                outbox::read_after(db, Some("t1"), t1[0].position, &[], 1)
                    .await
                    .unwrap()
            ),
            ["1:1"]
        );

        // The rolled-back events are nowhere, and the positions of all tenants are 1..=5.
        let rows = outbox::Entity::find().all(db).await.unwrap();
        assert!(rows.iter().all(|row| row.payload != b"9:9"));
        let positions: BTreeSet<i64> = rows.iter().filter_map(|row| row.position).collect();
        assert_eq!(positions, (1..=5).collect());

        // A filtered subscription yields the same.
        let outbox = Outbox::new(db.clone());
        let stream = outbox.subscribe(Some("t1".into()), 0, types(&["Created", "Erased"]), POLL);
        let got: Vec<StoredEvent> =
            tokio::time::timeout(STALL, stream.take(2).map(Result::unwrap).collect::<Vec<_>>())
                .await
                .unwrap();
        assert_eq!(labels(got), ["1:0", "1:2"]);
        cleanup(backend).await;
    }
}

/// Test 4: the stream is pull-based. Three items from a 10,000-event log come at once, and
/// the second page is read only when asked for: rows removed after the first page was
/// consumed (but before the next item was asked for) are not delivered.
#[tokio::test]
async fn a_subscriber_reads_one_page_at_a_time() {
    let dir = tempfile::tempdir().unwrap();
    for backend in backends(dir.path()).await {
        let db = &backend.db;
        for batch in 0..10 {
            let events: Vec<NewEvent> = (0..1000).map(|seq| event("t1", "Bulk", batch, seq)).collect();
            let txn = db.begin().await.unwrap();
            outbox::append_all(&txn, &events).await.unwrap();
            txn.commit().await.unwrap();
        }
        assert_eq!(outbox::assign_positions(db).await.unwrap(), 10_000);
        let outbox = Outbox::new(db.clone());

        let started = Instant::now();
        let mut stream = pin!(outbox.subscribe(Some("t1".into()), 0, Vec::new(), POLL));
        let mut first = Vec::new();
        for _ in 0..3 {
            first.push(stream.next().await.unwrap().unwrap().position);
        }
        let elapsed = started.elapsed();
        eprintln!("[{}] 3 events of 10,000 in {elapsed:?}", backend.name);
        assert_eq!(first, [1, 2, 3]);
        assert!(elapsed < Duration::from_secs(5), "took {elapsed:?}");

        let page = outbox::PAGE_SIZE as i64;
        for expected in 4..=page {
            assert_eq!(stream.next().await.unwrap().unwrap().position, expected);
        }
        // The first page is used up and the second not read yet: change what it will find.
        outbox::Entity::delete_many()
            .filter(outbox::Column::Position.between(page + 1, page + 10))
            .exec(db)
            .await
            .unwrap();
        assert_eq!(stream.next().await.unwrap().unwrap().position, page + 11);
        cleanup(backend).await;
    }
}

/// Sequencers in several "processes" (independent pools on one schema or file) running at
/// once, back to back, with writers on both pools: no run fails, every snapshot a reader takes
/// is a gap-free prefix 1..=k (once N is visible, everything below is), and in the end every
/// event has exactly one position.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_sequencers_assign_each_position_once() {
    const WRITERS: usize = 4;
    const PER_WRITER: usize = 500;
    let dir = tempfile::tempdir().unwrap();
    for backend in backends(dir.path()).await {
        let pools = [backend.db.clone(), backend.another_pool().await];
        let outboxes: Vec<Outbox> = pools.iter().cloned().map(Outbox::new).collect();
        let done = Arc::new(AtomicBool::new(false));
        // Two sequencers per pool, each running again as soon as its last run ends.
        let sequencers: Vec<_> = (0..4)
            .map(|index| {
                let db = pools[index % 2].clone();
                let done = done.clone();
                tokio::spawn(async move {
                    let mut runs = 0_u64;
                    while !done.load(Ordering::Relaxed) {
                        outbox::assign_positions(&db)
                            .await
                            .unwrap_or_else(|error| panic!("sequencer {index}: {error}"));
                        runs += 1;
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                    runs
                })
            })
            .collect();
        let reader = {
            let db = pools[1].clone();
            let done = done.clone();
            tokio::spawn(async move {
                let mut snapshots = 0_u64;
                while !done.load(Ordering::Relaxed) {
                    let visible = outbox::read_after(&db, Some("t1"), 0, &[], 1_000_000)
                        .await
                        .unwrap();
                    let positions: Vec<i64> = visible.iter().map(|event| event.position).collect();
                    let prefix: Vec<i64> = (1..=positions.len() as i64).collect();
                    assert_eq!(positions, prefix, "a snapshot with a hole");
                    snapshots += 1;
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                snapshots
            })
        };
        let writers: Vec<_> = (0..WRITERS)
            .map(|writer| {
                let outbox = outboxes[writer % 2].clone();
                tokio::spawn(write(pools[writer % 2].clone(), outbox, writer, PER_WRITER, 5))
            })
            .collect();
        for writer in writers {
            writer.await.unwrap();
        }
        // Let the sequencers catch up, then stop everything.
        let mut seen = Vec::new();
        consume(&outboxes[1], 0, WRITERS * PER_WRITER, &mut seen).await;
        done.store(true, Ordering::Relaxed);
        let mut runs = 0;
        for sequencer in sequencers {
            runs += sequencer.await.unwrap();
        }
        let snapshots = reader.await.unwrap();
        eprintln!(
            "[{}] {runs} sequencer runs, {snapshots} snapshots checked",
            backend.name
        );
        assert_log(&seen, WRITERS, PER_WRITER);
        let unpositioned = outbox::Entity::find()
            .filter(outbox::Column::Position.is_null())
            .all(&backend.db)
            .await
            .unwrap();
        assert!(unpositioned.is_empty());
        let _ = pools[1].clone().close().await;
        cleanup(backend).await;
    }
}
