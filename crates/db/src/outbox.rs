//! The transactional outbox and its gap-free, commit-ordered event log (DESIGN §2 "Events").
//!
//! A service writes its state change and the event announcing it in one transaction
//! ([`append`]), so an event exists exactly when its change does. Consumers read the log from a
//! cursor they hold themselves ([`read_after`], [`Outbox::subscribe`]) and must never skip an
//! event, not even one whose transaction commits after a later event is already visible.
//!
//! Insertion order cannot give that guarantee: ids (or sequence values) are taken when a row is
//! inserted, but rows become visible when their transaction commits, so id 7 may appear after
//! a reader has moved past id 8. Hence a single writer assigns positions:
//!
//! - [`append`] inserts the event with `position = NULL` (and an auto-increment `id`, used only
//!   to order the rows of one sequencer run).
//! - The sequencer ([`assign_positions`]) gives the committed, unpositioned rows the positions
//!   `max(position) + 1, + 2, …` in `id` order, in one transaction, and runs are serialized
//!   across processes: on PostgreSQL by a transaction-scoped advisory lock taken first, in
//!   READ COMMITTED so the update's snapshot is taken after the lock (it sees the previous
//!   run's commit); on SQLite by the database's single writer (`BEGIN IMMEDIATE`).
//! - Each run commits atomically and starts from the previous run's maximum, so positions are
//!   strictly increasing and contiguous, and once position N is visible every position below
//!   N is visible too. A reader that read up to N can never later find an event below N.
//!
//! Each service has its own outbox table (its schema or file), so positions are per service;
//! reads are always filtered by tenant. An event is visible to readers only once positioned,
//! which costs a sequencer round trip: [`Outbox::notify_committed`] wakes the in-process
//! sequencer at once, and its poll interval picks up events appended by other processes.

mod m20261123_000001_create_outbox_events;

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, SubsecRound, Utc};
use futures::Stream;
use sea_orm::entity::prelude::*;
use sea_orm::{
    ConnectionTrait, DatabaseTransaction, DbBackend, IsolationLevel, QueryFilter, QueryOrder, QuerySelect,
    Set, SqliteTransactionMode, TransactionOptions, TransactionTrait,
};
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;

pub use m20261123_000001_create_outbox_events::Migration;

/// How many events a subscription reads per query, and so the most it holds in memory.
pub const PAGE_SIZE: u64 = 500;

/// How many rows one sequencer transaction positions at most, so a large backlog is committed
/// (and becomes readable) in bounded steps instead of one long transaction.
pub const SEQUENCER_BATCH: u64 = 1000;

/// First key of the PostgreSQL advisory lock that serializes sequencer runs (ASCII "obox").
/// The second key is the outbox table's oid, so the services' sequencers, each in its own
/// schema of a shared database, do not wait for one another.
const SEQUENCER_LOCK_CLASS: i32 = 0x6f62_6f78;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "outbox_events")]
pub struct Model {
    /// Insertion order; breaks ties within one sequencer run and nothing else.
    #[sea_orm(primary_key)]
    pub id: i64,
    /// `None` until the sequencer assigns it; readers see only positioned events.
    pub position: Option<i64>,
    pub tenant_id: String,
    pub event_type: String,
    pub subject: String,
    pub payload: Vec<u8>,
    pub create_time: ChronoDateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}

/// An event to append in the caller's transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewEvent {
    pub tenant_id: String,
    /// What happened, e.g. `crm.customer.v1.CustomerMerged`; subscribers filter on it.
    pub event_type: String,
    /// The resource it happened to, by resource name (AIP-122), e.g. `customers/{id}`.
    pub subject: String,
    /// The encoded event message.
    pub payload: Vec<u8>,
}

/// A positioned event as consumers read it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredEvent {
    /// The event's place in its service's log: strictly increasing, and once an event is
    /// visible every event with a lower position is too. Consumers store the last one they
    /// applied as their cursor.
    pub position: i64,
    pub tenant_id: String,
    pub event_type: String,
    pub subject: String,
    pub payload: Vec<u8>,
    /// When the event was appended (microsecond precision, like every stored time).
    pub create_time: DateTime<Utc>,
}

/// The position a subscriber's `cursor` stands for: empty is the start (0), otherwise the
/// non-negative position of the last event it handled; None for anything else.
pub fn parse_cursor(cursor: &str) -> Option<i64> {
    if cursor.is_empty() {
        return Some(0);
    }
    cursor.parse().ok().filter(|position: &i64| *position >= 0)
}

/// Appends `event` inside `txn`, the transaction that makes the change it announces: both
/// commit or neither does. The event gets its position once committed, from the sequencer;
/// call [`Outbox::notify_committed`] after the commit so that happens at once.
pub async fn append<C: ConnectionTrait>(txn: &C, event: &NewEvent) -> Result<(), DbErr> {
    Entity::insert(active_model(event))
        .exec_without_returning(txn)
        .await?;
    Ok(())
}

/// Appends several events inside `txn` in one statement, in the order given (a sequencer run
/// positions them in this order).
pub async fn append_all<C: ConnectionTrait>(txn: &C, events: &[NewEvent]) -> Result<(), DbErr> {
    if events.is_empty() {
        return Ok(());
    }
    Entity::insert_many(events.iter().map(active_model))
        .exec_without_returning(txn)
        .await?;
    Ok(())
}

fn active_model(event: &NewEvent) -> ActiveModel {
    ActiveModel {
        position: Set(None),
        tenant_id: Set(event.tenant_id.clone()),
        event_type: Set(event.event_type.clone()),
        subject: Set(event.subject.clone()),
        payload: Set(event.payload.clone()),
        create_time: Set(Utc::now().trunc_subsecs(6)),
        ..Default::default()
    }
}

/// One sequencer run: gives every committed, unpositioned event its position, in batches of
/// [`SEQUENCER_BATCH`], each its own transaction; returns how many got positions.
///
/// Takes the connection, not a transaction: a run must commit before the next one starts for
/// positions to become visible in order. Runs from any number of processes are safe.
pub async fn assign_positions(db: &DatabaseConnection) -> Result<u64, DbErr> {
    let mut total = 0;
    loop {
        let assigned = assign_batch(db).await?;
        total += assigned;
        if assigned < SEQUENCER_BATCH {
            return Ok(total);
        }
    }
}

/// Positions up to [`SEQUENCER_BATCH`] committed events in one transaction, serialized with
/// every other sequencer of the same table.
async fn assign_batch(db: &DatabaseConnection) -> Result<u64, DbErr> {
    let txn = begin_sequencer_transaction(db).await?;
    // `max + row_number` in `id` order: contiguous positions above every earlier run's. The
    // statement is the same on both engines (PostgreSQL, and SQLite since 3.33, UPDATE … FROM).
    let assigned = txn
        .execute_unprepared(&format!(
            r#"UPDATE "outbox_events" SET "position" = "assigned"."new_position"
FROM (
    SELECT "id",
           (SELECT COALESCE(MAX("position"), 0) FROM "outbox_events")
               + ROW_NUMBER() OVER (ORDER BY "id") AS "new_position"
    FROM "outbox_events"
    WHERE "position" IS NULL
    ORDER BY "id"
    LIMIT {SEQUENCER_BATCH}
) AS "assigned"
WHERE "outbox_events"."id" = "assigned"."id""#
        ))
        .await?
        .rows_affected();
    txn.commit().await?;
    Ok(assigned)
}

async fn begin_sequencer_transaction(db: &DatabaseConnection) -> Result<DatabaseTransaction, DbErr> {
    match db.get_database_backend() {
        DbBackend::Postgres => {
            // READ COMMITTED (whatever the server's default): the update below takes its
            // snapshot after the lock is granted, so it sees the previous run's positions and
            // every event committed before it.
            let txn = db
                .begin_with_config(Some(IsolationLevel::ReadCommitted), None)
                .await?;
            txn.execute_unprepared(&format!(
                "SELECT pg_advisory_xact_lock({SEQUENCER_LOCK_CLASS}, 'outbox_events'::regclass::int4)"
            ))
            .await?;
            Ok(txn)
        }
        // IMMEDIATE takes the write lock at BEGIN: runs from several connections (or processes)
        // on one file queue on it instead of failing to upgrade a read snapshot.
        DbBackend::Sqlite => {
            db.begin_with_options(TransactionOptions {
                sqlite_transaction_mode: Some(SqliteTransactionMode::Immediate),
                ..TransactionOptions::default()
            })
            .await
        }
        _ => Err(DbErr::BackendNotSupported {
            db: "MySQL",
            ctx: "the outbox sequencer",
        }),
    }
}

/// Reads up to `limit` events of `tenant_id` (of every tenant when `None`, for the suite's
/// internal feeds) positioned after `after_position`, in position order, keeping only
/// `event_types` (all when empty). Start from 0 for the whole log.
pub async fn read_after<C: ConnectionTrait>(
    db: &C,
    tenant_id: Option<&str>,
    after_position: i64,
    event_types: &[String],
    limit: u64,
) -> Result<Vec<StoredEvent>, DbErr> {
    let mut query = Entity::find().filter(Column::Position.gt(after_position));
    if let Some(tenant_id) = tenant_id {
        query = query.filter(Column::TenantId.eq(tenant_id));
    }
    if !event_types.is_empty() {
        query = query.filter(Column::EventType.is_in(event_types.iter().map(String::as_str)));
    }
    let rows = query.order_by_asc(Column::Position).limit(limit).all(db).await?;
    // `position > n` never matches NULL, so every row has a position.
    Ok(rows
        .into_iter()
        .filter_map(|row| {
            Some(StoredEvent {
                position: row.position?,
                tenant_id: row.tenant_id,
                event_type: row.event_type,
                subject: row.subject,
                payload: row.payload,
                create_time: row.create_time,
            })
        })
        .collect())
}

/// A service's outbox: its connection, the in-process sequencer's wake-up, and the signal
/// subscribers wait on. Cheap to clone; clones share both signals.
#[derive(Debug, Clone)]
pub struct Outbox {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    db: DatabaseConnection,
    /// Raised by writers after commit; a permit is kept if the sequencer is busy, so a commit
    /// during a run triggers another run.
    committed: Notify,
    /// Bumped after every sequencer transaction that positioned events. A watch, not a
    /// `Notify`: a subscriber that is reading (not waiting) when it changes still sees the
    /// change when it next waits.
    positioned: watch::Sender<u64>,
}

impl Outbox {
    pub fn new(db: DatabaseConnection) -> Self {
        Self {
            inner: Arc::new(Inner {
                db,
                committed: Notify::new(),
                positioned: watch::Sender::new(0),
            }),
        }
    }

    pub fn db(&self) -> &DatabaseConnection {
        &self.inner.db
    }

    /// Call after committing a transaction that appended events: wakes the sequencer at once
    /// instead of at its next poll. Harmless when nothing was appended or none runs here.
    pub fn notify_committed(&self) {
        self.inner.committed.notify_one();
    }

    /// Runs the sequencer until the handle is aborted (the task holds a clone, so it does not
    /// end with the other clones): a run when notified, and every `poll_interval` for events
    /// appended by other processes. Errors are logged and the run retried after
    /// `poll_interval`. Any number of sequencers, in any processes, may run at once.
    pub fn spawn_sequencer(&self, poll_interval: Duration) -> JoinHandle<()> {
        let outbox = self.clone();
        tokio::spawn(async move { outbox.run_sequencer(poll_interval).await })
    }

    async fn run_sequencer(self, poll_interval: Duration) {
        loop {
            match self.sequence().await {
                Ok(()) => {
                    // Wait for a commit here, or for the poll (other processes' commits).
                    let _ = tokio::time::timeout(poll_interval, self.inner.committed.notified()).await;
                }
                Err(error) => {
                    tracing::warn!(%error, "the outbox sequencer failed; retrying");
                    tokio::time::sleep(poll_interval).await;
                }
            }
        }
    }

    /// Like [`assign_positions`], but wakes subscribers after every batch.
    async fn sequence(&self) -> Result<(), DbErr> {
        loop {
            let assigned = assign_batch(&self.inner.db).await?;
            if assigned > 0 {
                tracing::trace!(assigned, "outbox events positioned");
                self.inner
                    .positioned
                    .send_modify(|generation| *generation = generation.wrapping_add(1));
            }
            if assigned < SEQUENCER_BATCH {
                return Ok(());
            }
        }
    }

    /// The events of `tenant_id` (every tenant's when `None`) after `after_position` (of
    /// `event_types`, all when empty), then each new one as it is positioned, until the stream
    /// is dropped.
    ///
    /// Pull-based: a page of [`PAGE_SIZE`] events is read only when the consumer asks for an
    /// item and the previous page is used up, so a slow consumer slows the reads down and
    /// nothing beyond one page is held. When caught up it waits until this process's
    /// sequencer positions new events, or `poll_interval` (another process's sequencer). A
    /// failed read yields the error, and the next item retries after `poll_interval` from the
    /// same cursor; the consumer decides whether to go on.
    ///
    /// To resume after a restart, pass the position of the last event applied.
    pub fn subscribe(
        &self,
        tenant_id: Option<String>,
        after_position: i64,
        event_types: Vec<String>,
        poll_interval: Duration,
    ) -> impl Stream<Item = Result<StoredEvent, DbErr>> + Send + 'static {
        let subscription = Subscription {
            positioned: self.inner.positioned.subscribe(),
            outbox: self.clone(),
            tenant_id,
            cursor: after_position,
            event_types,
            poll_interval,
            page: VecDeque::new(),
            wait_before_read: false,
        };
        futures::stream::unfold(subscription, |mut subscription| async move {
            let item = subscription.next().await;
            Some((item, subscription))
        })
    }
}

struct Subscription {
    /// Keeps the watch's sender alive, so `changed` waits rather than fails.
    outbox: Outbox,
    positioned: watch::Receiver<u64>,
    tenant_id: Option<String>,
    /// The position of the last event yielded (or the starting point).
    cursor: i64,
    event_types: Vec<String>,
    poll_interval: Duration,
    /// The rest of the last page read: at most [`PAGE_SIZE`] events.
    page: VecDeque<StoredEvent>,
    /// The last read was short (caught up) or failed: wait before reading again.
    wait_before_read: bool,
}

impl Subscription {
    async fn next(&mut self) -> Result<StoredEvent, DbErr> {
        loop {
            if let Some(event) = self.page.pop_front() {
                self.cursor = event.position;
                return Ok(event);
            }
            if self.wait_before_read {
                let _ = tokio::time::timeout(self.poll_interval, self.positioned.changed()).await;
            }
            // Mark the signal seen before reading: positions assigned after this point wake
            // the next wait even if this read already misses them.
            self.positioned.mark_unchanged();
            // The read runs in a task of its own. This stream is polled by whoever sends its
            // items (hyper, for a feed served over gRPC), and a sender out of flow-control
            // window stops polling. A read suspended inside its poll, between being handed the
            // pool's connection and running, would keep that connection from everyone: on the
            // embedded database the only one. That deadlocked a whole service until the acquire
            // timeout whenever the feed's consumer itself waited on a call to the same service
            // (segmentation fetching customers while following customer-profile's feed). A
            // task runs to completion however this stream is polled.
            let read = tokio::spawn({
                let db = self.outbox.inner.db.clone();
                let tenant_id = self.tenant_id.clone();
                let event_types = self.event_types.clone();
                let cursor = self.cursor;
                async move { read_after(&db, tenant_id.as_deref(), cursor, &event_types, PAGE_SIZE).await }
            });
            let page = match read.await {
                Ok(page) => page,
                // The read task panicked or the runtime is shutting down: report it like a
                // failed read, retried from the same cursor.
                Err(join_error) => Err(DbErr::Custom(format!(
                    "the feed read did not finish: {join_error}"
                ))),
            };
            match page {
                Ok(events) => {
                    self.wait_before_read = (events.len() as u64) < PAGE_SIZE;
                    self.page = events.into();
                }
                Err(error) => {
                    self.wait_before_read = true;
                    return Err(error);
                }
            }
        }
    }
}
