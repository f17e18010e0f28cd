//! The loyalty workloads of `crm-load`, on a split suite of their own: P1 runs
//! customer-profile, interaction, segmentation and the gateway, P2 runs loyalty alone with P1
//! as its peers (both with the same `CRM_INTERNAL_TOKEN`), on a database of their own.
//!
//! - **accruals**: loyalty's catch-up rate. With P2 stopped, N purchases are ingested into P1
//!   and segmentation is let catch up; then P2 starts and follows interaction's internal feed
//!   from its start, one transaction per batch of events. Timed from the first accrual (the
//!   ledger's earliest `entry_time`) until loyalty's cursor on the feed reaches the last
//!   purchase's position (polled every 20 ms: a one-row read, where counting the ledger every
//!   20 ms would itself load the two cores); the ledger then holds exactly N entries. The
//!   baseline, **feed-read**, is a bare consumer of the same feed from cursor `""`, filtered to
//!   purchases, decoding each payload as `crm.interaction.v1.InteractionEvent`: the ceiling of
//!   any follower. **accruals-live** (optional): more purchases ingested while loyalty runs,
//!   timed from the ingest's start to the last accrual.
//! - **redeem-contended**: RedeemReward (1 unit of a 1-point reward, no stock or member limit)
//!   on ONE account from every task of the closed loop; baseline **get-account**, the same loop
//!   of GetAccount on that account. **get-account-grown** repeats the baseline on the account
//!   afterwards, with one ledger entry per redemption. **redeem-spread**: the same loop with each
//!   task on an account of its own; its baseline **get-account-spread** is GetAccount the same
//!   way.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use crm_db::sea_orm::{ConnectOptions, ConnectionTrait, Database, DatabaseConnection, DbBackend, Statement};
use crm_proto::interaction_v1 as interaction;
use crm_proto::internal_v1 as internal;
use crm_proto::loyalty_v1 as pb;
use internal::interaction_event_feed_service_client::InteractionEventFeedServiceClient;
use pb::loyalty_service_client::LoyaltyServiceClient;
use prost::Message as _;
use tonic::transport::Channel;

use crate::driver::{Caller, Measured, Step, closed_loop};
use crate::purchases;
use crate::report::{Row, grouped};
use crate::suite::{BenchDatabase, CrmProcess, Launch, connect_pool};
use crate::workloads::{self, Tenant, describe_status};

pub type LoyaltyClient = LoyaltyServiceClient<Channel>;

/// The internal token both processes share (the feeds refuse any other).
pub const INTERNAL_TOKEN: &str = "crm-bench-internal-token-0123456789";
const FRONT_SERVICES: &str = "customer-profile,interaction,segmentation,gateway";
/// P2's log filter: the follower's per-batch debug line is counted for the batch sizes.
const LOYALTY_LOG_FILTER: &str = "info,crm_loyalty::follower=debug";
const APPLIED_LINE: &str = "interaction events applied";
/// How often the cursors are polled.
const POLL: Duration = Duration::from_millis(20);
/// The reward every redemption takes.
const REWARD_ID: &str = "bench-reward";
/// Points each redeeming account starts with.
const START_BALANCE: i64 = 100_000_000;

/// The split suite of the loyalty workloads.
pub struct LoyaltySuite {
    binary: PathBuf,
    redis_url: String,
    database: Option<BenchDatabase>,
    pub front: CrmProcess,
    pub loyalty: Option<CrmProcess>,
    loyalty_listen: SocketAddr,
    /// Every log P2 wrote (one per start).
    pub loyalty_logs: Vec<PathBuf>,
    db: DatabaseConnection,
}

/// A free port on 127.0.0.1 for P2 (P1's gateway needs its address before P2 exists).
fn free_port() -> anyhow::Result<SocketAddr> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").context("find a free port")?;
    listener.local_addr().context("find a free port")
}

impl LoyaltySuite {
    /// A database of its own on the server of `admin_url`, then P1, then P2.
    pub async fn start(binary: &Path, admin_url: &str, redis_url: &str) -> anyhow::Result<LoyaltySuite> {
        let database = BenchDatabase::create(admin_url).await?;
        let started = Self::start_on(binary, &database, redis_url).await;
        match started {
            Ok((front, listen, db)) => {
                let mut suite = LoyaltySuite {
                    binary: binary.to_owned(),
                    redis_url: redis_url.to_owned(),
                    database: Some(database),
                    front,
                    loyalty: None,
                    loyalty_listen: listen,
                    loyalty_logs: Vec::new(),
                    db,
                };
                if let Err(error) = suite.start_loyalty().await {
                    suite.stop().await;
                    return Err(error);
                }
                Ok(suite)
            }
            Err(error) => {
                let _ = database.drop_database().await;
                Err(error)
            }
        }
    }

    async fn start_on(
        binary: &Path,
        database: &BenchDatabase,
        redis_url: &str,
    ) -> anyhow::Result<(CrmProcess, SocketAddr, DatabaseConnection)> {
        let listen = free_port()?;
        let front = CrmProcess::start_with(
            binary,
            &database.url,
            redis_url,
            &Launch {
                label: Some("front".into()),
                args: vec![
                    "--services".into(),
                    FRONT_SERVICES.into(),
                    "--peer".into(),
                    format!("loyalty=http://{listen}"),
                ],
                env: vec![("CRM_INTERNAL_TOKEN".into(), INTERNAL_TOKEN.into())],
            },
        )
        .await
        .context("start P1 (customer-profile, interaction, segmentation, gateway)")?;
        let mut options = ConnectOptions::new(database.url.clone());
        options
            .max_connections(2)
            .connect_timeout(Duration::from_secs(10))
            .sqlx_logging(false);
        let db = Database::connect(options)
            .await
            .context("connect to the run's database")?;
        Ok((front, listen, db))
    }

    pub fn database_name(&self) -> &str {
        self.database
            .as_ref()
            .map_or("", |database| database.name.as_str())
    }

    pub fn front_url(&self) -> String {
        self.front.url()
    }

    pub fn loyalty_url(&self) -> String {
        format!("http://{}", self.loyalty_listen)
    }

    /// Starts P2 (loyalty alone, P1 as its peers) on its fixed address, waits until SERVING.
    pub async fn start_loyalty(&mut self) -> anyhow::Result<()> {
        let front = self.front.url();
        let database_url = self
            .database
            .as_ref()
            .map(|database| database.url.clone())
            .context("the suite's database is gone")?;
        let process = CrmProcess::start_with(
            &self.binary,
            &database_url,
            &self.redis_url,
            &Launch {
                label: Some("loyalty".into()),
                args: vec![
                    "--services".into(),
                    "loyalty".into(),
                    "--listen".into(),
                    self.loyalty_listen.to_string(),
                    "--peer".into(),
                    format!("customer-profile={front}"),
                    "--peer".into(),
                    format!("interaction={front}"),
                    "--peer".into(),
                    format!("segmentation={front}"),
                ],
                env: vec![
                    ("CRM_INTERNAL_TOKEN".into(), INTERNAL_TOKEN.into()),
                    ("CRM_LOG__FILTER".into(), LOYALTY_LOG_FILTER.into()),
                ],
            },
        )
        .await
        .context("start P2 (loyalty)")?;
        self.loyalty_logs.push(process.log_path.clone());
        self.loyalty = Some(process);
        Ok(())
    }

    /// Kills P2.
    pub async fn stop_loyalty(&mut self) {
        if let Some(mut process) = self.loyalty.take() {
            process.stop().await;
        }
    }

    /// A crash of either process during the run, with the end of its log.
    pub fn crashed(&mut self) -> Option<String> {
        let mut crashed = Vec::new();
        if let Some(status) = self.front.exited() {
            crashed.push(format!(
                "P1 exited during the run ({status}); the end of its log ({}):\n{}",
                self.front.log_path.display(),
                self.front.log_tail(40)
            ));
        }
        if let Some(process) = &mut self.loyalty
            && let Some(status) = process.exited()
        {
            crashed.push(format!(
                "P2 (loyalty) exited during the run ({status}); the end of its log ({}):\n{}",
                process.log_path.display(),
                process.log_tail(40)
            ));
        }
        (!crashed.is_empty()).then(|| crashed.join("\n"))
    }

    /// Kills both processes and drops the database.
    pub async fn stop(mut self) {
        self.stop_loyalty().await;
        self.front.stop().await;
        let _ = self.db.clone().close().await;
        if let Some(database) = self.database.take()
            && let Err(error) = database.drop_database().await
        {
            eprintln!("crm-load: could not drop the loyalty run's database: {error:#}");
        }
    }

    async fn query_i64s(
        &self,
        sql: &str,
        tenant: Option<&str>,
        columns: &[&str],
    ) -> anyhow::Result<Vec<i64>> {
        let statement = match tenant {
            Some(tenant) => Statement::from_sql_and_values(DbBackend::Postgres, sql, [tenant.into()]),
            None => Statement::from_string(DbBackend::Postgres, sql),
        };
        let row = self
            .db
            .query_one_raw(statement)
            .await
            .with_context(|| format!("query {sql}"))?
            .with_context(|| format!("no row from {sql}"))?;
        columns
            .iter()
            .map(|column| {
                row.try_get::<Option<i64>>("", column)
                    .map(|value| value.unwrap_or(0))
                    .with_context(|| format!("column {column} of {sql}"))
            })
            .collect()
    }

    /// The position of the last event of interaction's outbox once the sequencer has
    /// positioned every committed event.
    async fn last_interaction_position(&self) -> anyhow::Result<i64> {
        let started = Instant::now();
        loop {
            let values = self
                .query_i64s(
                    "SELECT MAX(position) AS last, COUNT(*) FILTER (WHERE position IS NULL) AS unpositioned \
                     FROM interaction.outbox_events",
                    None,
                    &["last", "unpositioned"],
                )
                .await?;
            if values[1] == 0 {
                return Ok(values[0]);
            }
            if started.elapsed() > Duration::from_secs(120) {
                bail!(
                    "interaction's outbox still has {} unpositioned events after 120 s",
                    values[1]
                );
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// A consumer's cursor on interaction's feed (`schema.feed_cursors`), 0 before its first batch.
    async fn cursor(&self, schema: &str) -> anyhow::Result<i64> {
        let statement = Statement::from_string(
            DbBackend::Postgres,
            format!("SELECT position FROM {schema}.feed_cursors WHERE source = 'interaction'"),
        );
        // The table exists only once the service's migrations ran.
        Ok(match self.db.query_one_raw(statement).await {
            Ok(Some(row)) => row.try_get::<i64>("", "position").unwrap_or(0),
            Ok(None) | Err(_) => 0,
        })
    }

    /// Polls `schema`'s cursor every [`POLL`] until it reaches `target`; the wall-clock time
    /// it did, or `None` after `limit`.
    async fn wait_cursor(
        &self,
        schema: &str,
        target: i64,
        limit: Duration,
    ) -> anyhow::Result<Option<SystemTime>> {
        let started = Instant::now();
        loop {
            if self.cursor(schema).await? >= target {
                return Ok(Some(SystemTime::now()));
            }
            if started.elapsed() > limit {
                return Ok(None);
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// The tenant's ledger: entries, and the earliest and latest entry time (µs since the epoch).
    async fn ledger(&self, tenant: &str) -> anyhow::Result<(i64, i64, i64)> {
        let values = self
            .query_i64s(
                "SELECT COUNT(*) AS entries, \
                 (EXTRACT(EPOCH FROM MIN(entry_time)) * 1000000)::bigint AS first, \
                 (EXTRACT(EPOCH FROM MAX(entry_time)) * 1000000)::bigint AS last \
                 FROM loyalty.ledger_entries WHERE tenant_id = $1",
                Some(tenant),
                &["entries", "first", "last"],
            )
            .await?;
        Ok((values[0], values[1], values[2]))
    }

    /// The lines of P2's current log with `needle`.
    fn loyalty_log_lines(&self, needle: &str) -> usize {
        self.loyalty
            .as_ref()
            .and_then(|process| std::fs::read_to_string(&process.log_path).ok())
            .map_or(0, |log| log.lines().filter(|line| line.contains(needle)).count())
    }
}

fn micros_since_epoch(time: SystemTime) -> i64 {
    time.duration_since(UNIX_EPOCH)
        .map(|since| i64::try_from(since.as_micros()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

fn micros(value: i64) -> Duration {
    Duration::from_micros(u64::try_from(value).unwrap_or(0))
}

// ---- CPU accounting ----

/// CPU seconds (user + system) of a process from `/proc/<pid>/stat`, at 100 ticks a second.
fn cpu_of(stat_path: &Path) -> Option<(String, f64)> {
    let stat = std::fs::read_to_string(stat_path).ok()?;
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let comm = stat.get(open + 1..close)?.to_owned();
    let fields: Vec<&str> = stat.get(close + 1..)?.split_whitespace().collect();
    // Fields 14 and 15 of the line; the rest starts at field 3.
    let user: f64 = fields.get(11)?.parse().ok()?;
    let system: f64 = fields.get(12)?.parse().ok()?;
    Some((comm, (user + system) / 100.0))
}

/// CPU seconds used so far by the suite's processes, PostgreSQL, Redis and this tool.
#[derive(Debug, Clone, Copy, Default)]
struct Cpu {
    front: f64,
    loyalty: f64,
    postgres: f64,
    redis: f64,
    load: f64,
    at: Option<Instant>,
}

impl Cpu {
    fn take(suite: &LoyaltySuite) -> Cpu {
        let of_pid = |pid: Option<u32>| {
            pid.and_then(|pid| cpu_of(&PathBuf::from(format!("/proc/{pid}/stat"))))
                .map_or(0.0, |(_, seconds)| seconds)
        };
        let mut cpu = Cpu {
            front: of_pid(suite.front.pid()),
            loyalty: of_pid(suite.loyalty.as_ref().and_then(CrmProcess::pid)),
            load: cpu_of(Path::new("/proc/self/stat")).map_or(0.0, |(_, seconds)| seconds),
            at: Some(Instant::now()),
            ..Cpu::default()
        };
        if let Ok(entries) = std::fs::read_dir("/proc") {
            for entry in entries.flatten() {
                if !entry
                    .file_name()
                    .to_string_lossy()
                    .bytes()
                    .all(|byte| byte.is_ascii_digit())
                {
                    continue;
                }
                match cpu_of(&entry.path().join("stat")) {
                    Some((comm, seconds)) if comm == "postgres" => cpu.postgres += seconds,
                    Some((comm, seconds)) if comm.starts_with("redis-server") => cpu.redis += seconds,
                    _ => {}
                }
            }
        }
        cpu
    }

    /// `CPU over 12.3 s: loyalty 10.1 s (82 % of one core), …` since `before`. PostgreSQL's
    /// figure misses backends that exited in between.
    fn since(&self, before: &Cpu) -> String {
        let wall = match (before.at, self.at) {
            (Some(from), Some(to)) => to.duration_since(from).as_secs_f64(),
            _ => 0.0,
        };
        let share = |seconds: f64| {
            if wall > 0.0 {
                format!("{seconds:.1} s ({:.0} % of a core)", seconds / wall * 100.0)
            } else {
                format!("{seconds:.1} s")
            }
        };
        format!(
            "CPU over {wall:.1} s (2 cores): loyalty (P2) {}, P1 {}, PostgreSQL {}, Redis {}, crm-load {}",
            share(self.loyalty - before.loyalty),
            share(self.front - before.front),
            share((self.postgres - before.postgres).max(0.0)),
            share(self.redis - before.redis),
            share(self.load - before.load),
        )
    }
}

// ---- setup ----

/// The program of the run: USD, 1 point per whole dollar rounded down, spendable at once,
/// expiring after 24 months, no referral bonus (it would read profiles for first purchases);
/// with `tiers`, silver at 1,000 and gold at 10,000 qualifying points (1.25x and 1.5x).
pub fn program(tiers: bool) -> pb::Program {
    let mut program = pb::Program {
        currency_code: "USD".into(),
        earn_rate: Some(pb::EarnRate {
            points: 1,
            per_major_units: 1,
        }),
        rounding: pb::Rounding::Floor as i32,
        pending_days: 0,
        expiry_months: 24,
        referral_bonus_points: 0,
        ..Default::default()
    };
    if tiers {
        program.tier_basis = pb::TierBasis::QualifyingPoints as i32;
        program.tier_window_months = 12;
        program.tier_evaluation_period_months = 12;
        program.tiers = vec![
            pb::Tier {
                name: "silver".into(),
                threshold: 1_000,
                earn_multiplier_bp: 12_500,
                discount_percent: 0,
            },
            pb::Tier {
                name: "gold".into(),
                threshold: 10_000,
                earn_multiplier_bp: 15_000,
                discount_percent: 0,
            },
        ];
    }
    program
}

pub async fn set_program(channel: Channel, tenant: &Tenant, tiers: bool) -> anyhow::Result<()> {
    LoyaltyClient::new(channel)
        .update_program(tenant.request(pb::UpdateProgramRequest {
            program: Some(program(tiers)),
            request_id: String::new(),
        }))
        .await
        .map_err(|status| anyhow::anyhow!(describe_status("UpdateProgram", "", &status)))?;
    Ok(())
}

fn account_of(customer: &str) -> String {
    customer.replacen("customers/", "accounts/", 1)
}

/// `+points` on each account (AdjustPoints opens it).
async fn fund(channel: &Channel, tenant: &Tenant, accounts: &[String], points: i64) -> anyhow::Result<()> {
    let mut client = LoyaltyClient::new(channel.clone());
    for (index, account) in accounts.iter().enumerate() {
        client
            .adjust_points(tenant.request(pb::AdjustPointsRequest {
                account: account.clone(),
                points,
                reason: "crm-load: starting balance".into(),
                request_id: format!("fund-{index}-{}", account.trim_start_matches("accounts/")),
            }))
            .await
            .map_err(|status| anyhow::anyhow!(describe_status("AdjustPoints", account, &status)))?;
    }
    Ok(())
}

async fn create_reward(channel: &Channel, tenant: &Tenant) -> anyhow::Result<String> {
    let reward = LoyaltyClient::new(channel.clone())
        .create_reward(tenant.request(pb::CreateRewardRequest {
            reward: Some(pb::Reward {
                display_name: "Bench reward".into(),
                points_cost: 1,
                stock: None,
                per_member_limit: None,
                ..Default::default()
            }),
            reward_id: REWARD_ID.into(),
            request_id: String::new(),
        }))
        .await
        .map_err(|status| anyhow::anyhow!(describe_status("CreateReward", REWARD_ID, &status)))?
        .into_inner();
    Ok(reward.name)
}

// ---- the feed baseline ----

/// What the bare consumer read.
struct FeedRead {
    purchases: u64,
    elapsed: Duration,
    error: Option<String>,
}

/// Reads interaction's internal feed from `""`, filtered to purchases, until `count` purchases
/// of `tenant` were decoded; timed from the call.
async fn read_feed(channel: Channel, tenant: &Tenant, count: u64) -> anyhow::Result<FeedRead> {
    let mut client =
        InteractionEventFeedServiceClient::new(channel).max_decoding_message_size(64 * 1024 * 1024);
    let mut request = tonic::Request::new(internal::StreamInteractionEventsRequest {
        cursor: String::new(),
        event_types: vec![
            interaction::interaction_event::Type::PurchaseRecorded
                .as_str_name()
                .to_owned(),
        ],
    });
    request.metadata_mut().insert(
        "x-crm-internal-token",
        INTERNAL_TOKEN.parse().context("token as metadata")?,
    );
    let started = Instant::now();
    let mut stream = client
        .stream_interaction_events(request)
        .await
        .map_err(|status| anyhow::anyhow!(describe_status("StreamInteractionEvents", "from \"\"", &status)))?
        .into_inner();
    let mut purchases = 0;
    let mut error = None;
    while purchases < count {
        let message = match tokio::time::timeout(Duration::from_secs(30), stream.message()).await {
            Ok(Ok(Some(message))) => message,
            Ok(Ok(None)) => {
                error = Some("the feed ended".to_owned());
                break;
            }
            Ok(Err(status)) => {
                error = Some(describe_status("StreamInteractionEvents", "reading", &status));
                break;
            }
            Err(_) => {
                error = Some(format!("no event for 30 s after {purchases}"));
                break;
            }
        };
        let Some(event) = message.event else { continue };
        let decoded = interaction::InteractionEvent::decode(event.payload.as_slice())
            .context("decode a feed event's payload")?;
        if event.tenant == tenant.id
            && matches!(
                decoded.record,
                Some(interaction::interaction_event::Record::Purchase(_))
            )
        {
            purchases += 1;
        }
    }
    Ok(FeedRead {
        purchases,
        elapsed: started.elapsed(),
        error,
    })
}

// ---- accruals ----

/// Flags of the accruals workload.
#[derive(Debug, Clone, Copy)]
pub struct AccrualOptions {
    pub purchases: u64,
    pub live_purchases: u64,
    pub batch: usize,
    pub tiers: bool,
    /// How long loyalty may take to catch up before the row reports what it did.
    pub limit: Duration,
    /// `ANALYZE` the database after the ingest and loyalty's tables this often while it
    /// catches up (what autovacuum's autoanalyze would do on a server that runs it); `None`
    /// leaves statistics alone.
    pub analyze_every: Option<Duration>,
}

/// Runs `ANALYZE` on loyalty's ledger tables every `every` until stopped; counts the runs.
struct Analyzer {
    stop: Arc<std::sync::atomic::AtomicBool>,
    runs: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Analyzer {
    fn start(db: DatabaseConnection, every: Duration) -> Analyzer {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let runs = Arc::new(AtomicU64::new(0));
        let task = {
            let (stop, runs) = (Arc::clone(&stop), Arc::clone(&runs));
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    tokio::time::sleep(every).await;
                    // Before loyalty's first migration the tables do not exist yet.
                    if db
                        .execute_unprepared(
                            "ANALYZE loyalty.ledger_entries, loyalty.lots, loyalty.accounts, loyalty.first_purchases",
                        )
                        .await
                        .is_ok()
                    {
                        runs.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        };
        Analyzer { stop, runs, task }
    }

    async fn stop(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        self.task.abort();
        let _ = self.task.await;
        self.runs.load(Ordering::Relaxed)
    }
}

fn bulk_row(
    workload: &str,
    unit: &'static str,
    done: u64,
    wanted: u64,
    elapsed: Duration,
    baseline: Option<&str>,
) -> Row {
    let failed = wanted.saturating_sub(done);
    Row {
        workload: workload.to_owned(),
        unit,
        count: done,
        elapsed,
        latency: None,
        errors: failed,
        error_ratio: if wanted == 0 {
            0.0
        } else {
            failed as f64 / wanted as f64
        },
        first_error: None,
        baseline: baseline.map(str::to_owned),
        note: None,
    }
}

/// The accruals workload (and its baseline), on a suite whose P2 runs; P2 runs again after it.
pub async fn accruals(
    suite: &mut LoyaltySuite,
    tenant: &Tenant,
    front: &[Channel],
    customers: &[String],
    options: AccrualOptions,
) -> anyhow::Result<Vec<Row>> {
    let mut rows = Vec::new();
    let n = options.purchases.max(1);
    suite.stop_loyalty().await;
    eprintln!("accruals: loyalty stopped; IngestPurchases of {n} purchases into P1");
    let ingested = purchases::ingest_with(
        front[0].clone(),
        tenant,
        customers,
        0..n,
        options.batch,
        purchases::recent_purchase,
    )
    .await?;
    if ingested.rows != n {
        bail!(
            "accruals: {} of {n} purchases ingested; first error: {}",
            ingested.rows,
            ingested.first_error.as_deref().unwrap_or("(none)")
        );
    }
    let target = suite.last_interaction_position().await?;
    let waiting = Instant::now();
    eprintln!(
        "accruals: ingested in {:.1} s; waiting for segmentation to reach position {target}",
        ingested.elapsed.as_secs_f64()
    );
    let segmentation_done = suite
        .wait_cursor("segmentation", target, Duration::from_secs(600))
        .await?;
    let segmentation_note = match segmentation_done {
        Some(_) => format!(
            "segmentation caught up {:.1} s after the ingest",
            waiting.elapsed().as_secs_f64()
        ),
        None => "segmentation had NOT caught up after 600 s; measured anyway".to_owned(),
    };

    if options.analyze_every.is_some() {
        // The outbox is complete now: its statistics stay exact for both readers.
        suite
            .db
            .execute_unprepared("ANALYZE")
            .await
            .context("ANALYZE the run's database")?;
    }
    eprintln!("accruals: feed-read baseline (bare consumer of {n} purchase events)");
    let cpu_before = Cpu::take(suite);
    let read = read_feed(front[0].clone(), tenant, n).await?;
    let cpu_feed = Cpu::take(suite).since(&cpu_before);
    let mut feed_row = bulk_row("feed-read", "events", read.purchases, n, read.elapsed, None);
    feed_row.first_error = read.error;
    feed_row.note = Some(format!(
        "a bare consumer of crm.internal.v1.InteractionEventFeedService/StreamInteractionEvents from cursor \"\" filtered to TYPE_PURCHASE_RECORDED, each payload decoded as crm.interaction.v1.InteractionEvent, timed from the call to the {}th event (P2 stopped, segmentation idle); {cpu_feed}",
        grouped(n)
    ));
    rows.push(feed_row);

    eprintln!("accruals: starting loyalty; waiting for it to accrue {n} purchases");
    let analyzer = options
        .analyze_every
        .map(|every| Analyzer::start(suite.db.clone(), every));
    let started_wall = SystemTime::now();
    let started = Instant::now();
    let cpu_before = Cpu::take(suite);
    suite.start_loyalty().await?;
    let serving = started.elapsed();
    let done_at = suite.wait_cursor("loyalty", target, options.limit).await?;
    let cpu = Cpu::take(suite).since(&cpu_before);
    let analyzed = match &analyzer {
        Some(analyzer) => format!(
            "; ANALYZE of the whole database after the ingest and of loyalty's tables every {} s during the catch-up ({} runs; this server runs without autovacuum)",
            options.analyze_every.unwrap_or_default().as_secs(),
            analyzer.runs.load(Ordering::Relaxed)
        ),
        None => "; no ANALYZE (this server runs without autovacuum, so loyalty's tables have no statistics)"
            .to_owned(),
    };
    let end_wall = done_at.unwrap_or_else(SystemTime::now);
    let (entries, first, _) = suite.ledger(&tenant.id).await?;
    let batches = suite.loyalty_log_lines(APPLIED_LINE);
    let warnings = suite.loyalty_log_lines(" WARN ") + suite.loyalty_log_lines(" ERROR ");
    let entries = u64::try_from(entries).unwrap_or(0);
    let end = micros_since_epoch(end_wall);
    let from_first = micros(end - first);
    let from_start = micros(end - micros_since_epoch(started_wall));
    let mut row = bulk_row("accruals", "accruals", entries, n, from_first, Some("feed-read"));
    if done_at.is_none() {
        row.first_error = Some(format!(
            "loyalty had not caught up after {} s: {entries} of {n} accruals",
            options.limit.as_secs()
        ));
    } else if entries != n {
        row.first_error = Some(format!("the ledger holds {entries} entries for {n} purchases"));
    }
    row.note = Some(format!(
        "loyalty (P2, split topology) catching up on {} purchases over {} customers ({}): timed from the first accrual (its entry_time) until loyalty's cursor reached the last purchase (polled every 20 ms), then the ledger held {} entries; P2 start to SERVING {:.2} s, to the first accrual {:.2} s, to the last {:.2} s ({:.0} accruals/s from P2's start); {} batch transactions ({:.0} events each on average); {} WARN/ERROR lines in P2's log; {cpu}; {segmentation_note}; the ingest itself took {:.1} s{analyzed}",
        grouped(n),
        grouped(customers.len() as u64),
        if options.tiers {
            "program with 2 tiers"
        } else {
            "program without tiers"
        },
        grouped(entries),
        serving.as_secs_f64(),
        micros(first - micros_since_epoch(started_wall)).as_secs_f64(),
        from_start.as_secs_f64(),
        entries as f64 / from_start.as_secs_f64().max(f64::EPSILON),
        grouped(batches as u64),
        entries as f64 / (batches.max(1) as f64),
        warnings,
        ingested.elapsed.as_secs_f64(),
    ));
    rows.push(row);

    if options.live_purchases > 0 && done_at.is_some() {
        let live = options.live_purchases;
        eprintln!("accruals-live: IngestPurchases of {live} purchases with loyalty running");
        let before = entries;
        let batches_before = suite.loyalty_log_lines(APPLIED_LINE);
        let started_wall = SystemTime::now();
        let cpu_before = Cpu::take(suite);
        let ingested = purchases::ingest_with(
            front[0].clone(),
            tenant,
            customers,
            n..n + live,
            options.batch,
            purchases::recent_purchase,
        )
        .await?;
        let target = suite.last_interaction_position().await?;
        let done_at = suite.wait_cursor("loyalty", target, options.limit).await?;
        let cpu = Cpu::take(suite).since(&cpu_before);
        let end_wall = done_at.unwrap_or_else(SystemTime::now);
        let (entries, _, _) = suite.ledger(&tenant.id).await?;
        let added = u64::try_from(entries).unwrap_or(0).saturating_sub(before);
        let elapsed = micros(micros_since_epoch(end_wall) - micros_since_epoch(started_wall));
        let mut row = bulk_row(
            "accruals-live",
            "accruals",
            added,
            live,
            elapsed,
            Some("feed-read"),
        );
        if added != live {
            row.first_error = Some(format!("{added} accruals for {live} purchases"));
        }
        let batches = suite
            .loyalty_log_lines(APPLIED_LINE)
            .saturating_sub(batches_before);
        row.note = Some(format!(
            "{} more purchases ingested (one IngestPurchases stream, {:.1} s, {:.0} rows/s) while loyalty and segmentation follow; timed from the ingest's start to the last accrual, which came {:.1} s after the ingest's response; {} batch transactions ({:.0} events each); {cpu}",
            grouped(live),
            ingested.elapsed.as_secs_f64(),
            ingested.rows as f64 / ingested.elapsed.as_secs_f64().max(f64::EPSILON),
            elapsed.saturating_sub(ingested.elapsed).as_secs_f64(),
            grouped(batches as u64),
            added as f64 / (batches.max(1) as f64),
        ));
        rows.push(row);
    }
    if let Some(analyzer) = analyzer {
        analyzer.stop().await;
    }
    Ok(rows)
}

// ---- redemptions ----

/// Successful calls per second of a run, warm-up included.
pub struct Timeline {
    start: Instant,
    seconds: Vec<AtomicU64>,
}

impl Timeline {
    fn new(seconds: u64) -> Arc<Timeline> {
        Arc::new(Timeline {
            start: Instant::now(),
            seconds: (0..seconds + 5).map(|_| AtomicU64::new(0)).collect(),
        })
    }

    fn record(&self) {
        let second = usize::try_from(self.start.elapsed().as_secs()).unwrap_or(usize::MAX);
        if let Some(counter) = self.seconds.get(second.min(self.seconds.len() - 1)) {
            counter.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn total(&self) -> u64 {
        self.seconds
            .iter()
            .map(|counter| counter.load(Ordering::Relaxed))
            .sum()
    }

    /// `1,234, 1,100, …` for the first `seconds` seconds.
    fn describe(&self, seconds: u64) -> String {
        self.seconds
            .iter()
            .take(usize::try_from(seconds).unwrap_or(0))
            .map(|counter| grouped(counter.load(Ordering::Relaxed)))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// GetAccount of one account.
pub struct GetAccountCaller {
    client: LoyaltyClient,
    tenant: Tenant,
    account: String,
}

impl Caller for GetAccountCaller {
    async fn call(&mut self, _seq: u64) -> Step {
        let request = self.tenant.request(pb::GetAccountRequest {
            name: self.account.clone(),
        });
        match self.client.get_account(request).await {
            Ok(response) if response.get_ref().name == self.account => Step::Ok,
            Ok(response) => Step::Failed(format!(
                "GetAccount {}: answered {}",
                self.account,
                response.get_ref().name
            )),
            Err(status) => Step::Failed(describe_status("GetAccount", &self.account, &status)),
        }
    }
}

/// RedeemReward of one unit on one account, a fresh request id each call.
pub struct RedeemCaller {
    client: LoyaltyClient,
    tenant: Tenant,
    account: String,
    reward: String,
    prefix: String,
    timeline: Arc<Timeline>,
}

impl Caller for RedeemCaller {
    async fn call(&mut self, seq: u64) -> Step {
        let request_id = format!("{}-{seq}", self.prefix);
        let request = self.tenant.request(pb::RedeemRewardRequest {
            account: self.account.clone(),
            reward: self.reward.clone(),
            quantity: 1,
            request_id: request_id.clone(),
        });
        match self.client.redeem_reward(request).await {
            Ok(response)
                if response.get_ref().kind == pb::ledger_entry::Kind::Redeem as i32
                    && response.get_ref().balance_delta == -1 =>
            {
                self.timeline.record();
                Step::Ok
            }
            Ok(response) => Step::Failed(format!(
                "RedeemReward {request_id}: answered kind {} balance_delta {}",
                response.get_ref().kind,
                response.get_ref().balance_delta
            )),
            Err(status) => Step::Failed(describe_status("RedeemReward", &request_id, &status)),
        }
    }
}

/// Flags of the redemption workloads.
#[derive(Debug, Clone, Copy)]
pub struct RedeemOptions {
    pub contended: bool,
    pub spread: bool,
    pub concurrency: usize,
    pub warmup: Duration,
    pub duration: Duration,
}

async fn balance(channel: &Channel, tenant: &Tenant, account: &str) -> anyhow::Result<i64> {
    Ok(LoyaltyClient::new(channel.clone())
        .get_account(tenant.request(pb::GetAccountRequest {
            name: account.to_owned(),
        }))
        .await
        .map_err(|status| anyhow::anyhow!(describe_status("GetAccount", account, &status)))?
        .into_inner()
        .balance)
}

/// The redemption workloads; `customers` has `concurrency + 1` customers nobody else uses.
pub async fn redemptions(
    suite: &LoyaltySuite,
    tenant: &Tenant,
    loyalty: &[Channel],
    customers: &[String],
    options: RedeemOptions,
) -> anyhow::Result<Vec<Row>> {
    let concurrency = options.concurrency.max(1);
    let accounts: Vec<String> = customers.iter().map(|customer| account_of(customer)).collect();
    let (contended, spread) = accounts.split_first().context("redemptions need customers")?;
    if spread.len() < concurrency {
        bail!("redemptions need {} customers", concurrency + 1);
    }
    let spread = &spread[..concurrency];
    let started = Instant::now();
    fund(
        &loyalty[0],
        tenant,
        std::slice::from_ref(contended),
        START_BALANCE,
    )
    .await?;
    if options.spread {
        fund(&loyalty[0], tenant, spread, START_BALANCE).await?;
    }
    let reward = create_reward(&loyalty[0], tenant).await?;
    eprintln!(
        "redeem: funded the accounts with {} points and created {reward} (1 point, no stock, no limit) in {:.1} s",
        grouped(START_BALANCE as u64),
        started.elapsed().as_secs_f64()
    );
    let mut rows = Vec::new();
    let get_account = |account: &str| -> Vec<GetAccountCaller> {
        (0..concurrency)
            .map(|task| GetAccountCaller {
                client: LoyaltyClient::new(loyalty[task % loyalty.len()].clone()),
                tenant: tenant.clone(),
                account: account.to_owned(),
            })
            .collect()
    };

    eprintln!("get-account: measuring");
    let cpu_before = Cpu::take(suite);
    let measured = closed_loop(get_account(contended), options.warmup, options.duration).await?;
    let cpu = Cpu::take(suite).since(&cpu_before);
    let mut row = Row::from_measured("get-account", &measured, None);
    row.note = Some(format!(
        "GetAccount of one account (one adjustment in its ledger) from all {concurrency} tasks; {cpu}"
    ));
    rows.push(row);

    if options.contended {
        eprintln!("redeem-contended: measuring");
        let timeline = Timeline::new(options.warmup.as_secs() + options.duration.as_secs());
        let callers = (0..concurrency)
            .map(|task| RedeemCaller {
                client: LoyaltyClient::new(loyalty[task % loyalty.len()].clone()),
                tenant: tenant.clone(),
                account: contended.clone(),
                reward: reward.clone(),
                prefix: format!("contended-{task}"),
                timeline: Arc::clone(&timeline),
            })
            .collect();
        let cpu_before = Cpu::take(suite);
        let measured = closed_loop(callers, options.warmup, options.duration).await?;
        let cpu = Cpu::take(suite).since(&cpu_before);
        let redeemed = timeline.total();
        let balance = balance(&loyalty[0], tenant, contended).await?;
        let expected = START_BALANCE - i64::try_from(redeemed).unwrap_or(0);
        let mut row = Row::from_measured("redeem-contended", &measured, Some("get-account"));
        row.note = Some(format!(
            "RedeemReward (1 unit, 1 point, a fresh request_id each) on ONE account from all {concurrency} tasks; {} redemptions in all (warm-up included), the balance after is {} ({}); redemptions by second of the run (the first {} s warm-up): {}; {cpu}",
            grouped(redeemed),
            grouped(u64::try_from(balance).unwrap_or(0)),
            if balance == expected {
                "as expected".to_owned()
            } else {
                format!("EXPECTED {expected}")
            },
            options.warmup.as_secs(),
            timeline.describe(options.warmup.as_secs() + options.duration.as_secs()),
        ));
        if balance != expected {
            row.first_error.get_or_insert_with(|| {
                format!("balance {balance} after {redeemed} redemptions, expected {expected}")
            });
            row.errors += 1;
            row.error_ratio = row.error_ratio.max(1.0);
        }
        rows.push(row);

        eprintln!("get-account-grown: measuring");
        let cpu_before = Cpu::take(suite);
        let measured = closed_loop(get_account(contended), options.warmup, options.duration).await?;
        let cpu = Cpu::take(suite).since(&cpu_before);
        let mut row = Row::from_measured("get-account-grown", &measured, Some("get-account"));
        row.note = Some(format!(
            "the baseline again on the same account after redeem-contended, now with {} ledger entries; {cpu}",
            grouped(redeemed + 1)
        ));
        rows.push(row);
    }

    if options.spread {
        eprintln!("get-account-spread: measuring");
        let callers = spread
            .iter()
            .enumerate()
            .map(|(task, account)| GetAccountCaller {
                client: LoyaltyClient::new(loyalty[task % loyalty.len()].clone()),
                tenant: tenant.clone(),
                account: account.clone(),
            })
            .collect();
        let cpu_before = Cpu::take(suite);
        let measured = closed_loop(callers, options.warmup, options.duration).await?;
        let cpu = Cpu::take(suite).since(&cpu_before);
        let mut row = Row::from_measured("get-account-spread", &measured, None);
        row.note = Some(format!(
            "GetAccount with each of the {concurrency} tasks on an account of its own (one adjustment in each ledger); {cpu}"
        ));
        rows.push(row);

        eprintln!("redeem-spread: measuring");
        let timeline = Timeline::new(options.warmup.as_secs() + options.duration.as_secs());
        let callers = spread
            .iter()
            .enumerate()
            .map(|(task, account)| RedeemCaller {
                client: LoyaltyClient::new(loyalty[task % loyalty.len()].clone()),
                tenant: tenant.clone(),
                account: account.clone(),
                reward: reward.clone(),
                prefix: format!("spread-{task}"),
                timeline: Arc::clone(&timeline),
            })
            .collect();
        let cpu_before = Cpu::take(suite);
        let measured: Measured = closed_loop(callers, options.warmup, options.duration).await?;
        let cpu = Cpu::take(suite).since(&cpu_before);
        let mut row = Row::from_measured("redeem-spread", &measured, Some("get-account-spread"));
        row.note = Some(format!(
            "the same RedeemReward loop with each of the {concurrency} tasks on an account of its own (no contention); {} redemptions in all; by second: {}; {cpu}",
            grouped(timeline.total()),
            timeline.describe(options.warmup.as_secs() + options.duration.as_secs()),
        ));
        rows.push(row);
    }
    Ok(rows)
}

/// Setup shared by the loyalty workloads: the tenant's phone region, `count` customers created
/// on P1 from `first`, as `customers/{id}`.
pub async fn customers(
    front: &[Channel],
    tenant: &Tenant,
    first: u64,
    count: u64,
    concurrency: usize,
) -> anyhow::Result<Vec<String>> {
    Ok(
        workloads::create_customers(front, tenant, first..first + count, concurrency)
            .await?
            .into_iter()
            .map(|target| target.name)
            .collect(),
    )
}

/// Channels to P1 and P2.
pub async fn channels(
    suite: &LoyaltySuite,
    connections: usize,
) -> anyhow::Result<(Vec<Channel>, Vec<Channel>)> {
    Ok((
        connect_pool(&suite.front_url(), connections).await?,
        connect_pool(&suite.loyalty_url(), connections).await?,
    ))
}
