//! `crm-load`: a closed-loop gRPC load generator against a `crm` process it starts itself, each
//! workload reported next to a baseline measured in the same run. The loyalty workloads
//! (`accruals`, `redeem-contended`, `redeem-spread`) start a split suite of their own
//! (`crm_bench::loyalty`) and are not in the default list.
//!
//! ```sh
//! cargo build --release -p crm -p crm-bench
//! DATABASE_URL=postgres://postgres@127.0.0.1:5432/test REDIS_URL=redis://127.0.0.1:6379 \
//!   target/release/crm-load --crm-bin target/release/crm --duration 10 --concurrency 50
//! ```

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::{Parser, ValueEnum};
use crm_bench::driver::closed_loop;
use crm_bench::echo::EchoServer;
use crm_bench::loyalty::{self, AccrualOptions, LoyaltySuite, RedeemOptions};
use crm_bench::purchases;
use crm_bench::report::{Row, grouped, table};
use crm_bench::suite::{BenchDatabase, CrmProcess, connect_pool};
use crm_bench::workloads::{self, ColdLookupCaller, EchoCaller, Tenant, WarmLookupCaller};
use tonic::transport::Channel;

/// Above this share of failed calls a workload fails the run.
const MAX_ERROR_RATIO: f64 = 0.001;

/// The goal of the lookup issue: warm lookups at >= 0.5x echo req/s with p99 <= 2 ms.
const GOAL_WARM_RATIO: f64 = 0.5;
const GOAL_WARM_P99_MICROS: u64 = 2_000;
/// The goal of the interaction issue: IngestPurchases at >= 0.5x `psql \copy` rows/s.
const GOAL_INGEST_RATIO: f64 = 0.5;
/// The goal of the loyalty earning issue: >= 5,000 accruals/s on PostgreSQL.
const GOAL_ACCRUALS_PER_SECOND: f64 = 5_000.0;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Workload {
    /// Health/Check on a bare tonic server (the baseline of the lookups).
    Echo,
    /// LookupCustomer by phone over a hot set that was looked up once before.
    LookupWarm,
    /// LookupCustomer by phone of customers never looked up before.
    LookupCold,
    /// ImportCustomers (client streaming), against `psql \copy` of the same rows.
    Import,
    /// IngestPurchases (client streaming), against `psql \copy` of the same rows.
    IngestPurchases,
    /// Unary CreatePurchase, each a new order, against echo.
    CreatePurchase,
    /// A purchase's delay until the hot-score hash in Redis shows it, under a steady purchase
    /// rate, against the same delay with no other load.
    HotScores,
    /// loyalty's catch-up on N purchases (split topology, loyalty stopped during the ingest),
    /// against a bare consumer reading the same N events from interaction's internal feed.
    Accruals,
    /// RedeemReward from every task on ONE account, against GetAccount of that account.
    RedeemContended,
    /// RedeemReward with each task on an account of its own, against GetAccount of those
    /// accounts.
    RedeemSpread,
    /// BatchGetCustomers of `--batch-get-size` names a call, against GetCustomer of one name a
    /// call, in names per second.
    BatchGet,
}

#[derive(Debug, Parser)]
#[command(
    name = "crm-load",
    about = "Closed-loop gRPC load against a crm process, each workload as a ratio to a baseline of the same run"
)]
struct Args {
    /// The `crm` binary to run (`crm serve --listen 127.0.0.1:0`).
    #[arg(long, default_value = "target/release/crm")]
    crm_bin: PathBuf,
    /// Seconds each closed-loop workload is measured.
    #[arg(long, default_value_t = 10)]
    duration: u64,
    /// Requests in flight (tokio tasks issuing requests back to back).
    #[arg(long, default_value_t = 50)]
    concurrency: usize,
    /// Workloads to run, comma separated.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "echo,lookup-warm,lookup-cold,import,ingest-purchases,create-purchase"
    )]
    workloads: Vec<Workload>,
    /// HTTP/2 connections per server; tasks use them round robin.
    #[arg(long, default_value_t = 4)]
    connections: usize,
    /// Seconds of unmeasured load before echo and lookup-warm are measured.
    #[arg(long, default_value_t = 1)]
    warmup: u64,
    /// Customers created with CreateCustomer for lookup-warm.
    #[arg(long, default_value_t = 2_000)]
    lookup_customers: u64,
    /// Customers batch-get reads.
    #[arg(long, default_value_t = 2_000)]
    batch_get_customers: u64,
    /// Names per BatchGetCustomers call.
    #[arg(long, default_value_t = 100)]
    batch_get_size: usize,
    /// Size of the hot set of lookup-warm.
    #[arg(long, default_value_t = 100)]
    hot_set: usize,
    /// Customers imported for lookup-cold, each looked up at most once.
    #[arg(long, default_value_t = 40_000)]
    cold_customers: u64,
    /// Rows of the import workload.
    #[arg(long, default_value_t = 100_000)]
    import_rows: u64,
    /// Rows per ImportCustomers message.
    #[arg(long, default_value_t = 1_000)]
    import_batch: usize,
    /// Customers the purchase workloads buy for (created with CreateCustomer).
    #[arg(long, default_value_t = 1_000)]
    purchase_customers: u64,
    /// Rows of the ingest-purchases workload.
    #[arg(long, default_value_t = 100_000)]
    ingest_rows: u64,
    /// Rows per IngestPurchases message.
    #[arg(long, default_value_t = 1_000)]
    ingest_batch: usize,
    /// Background purchases per second while hot-scores probes.
    #[arg(long, default_value_t = 1_000)]
    hot_scores_rate: u64,
    /// Purchases loyalty catches up on in the accruals workload.
    #[arg(long, default_value_t = 100_000)]
    accrual_purchases: u64,
    /// Purchases ingested while loyalty runs after the catch-up (accruals-live); 0 for none.
    #[arg(long, default_value_t = 20_000)]
    accrual_live_purchases: u64,
    /// Customers the accruals' purchases are spread over.
    #[arg(long, default_value_t = 2_000)]
    accrual_customers: u64,
    /// Give the loyalty program two tiers (silver at 1,000, gold at 10,000 qualifying points).
    #[arg(long)]
    accrual_tiers: bool,
    /// Seconds loyalty may take to catch up before accruals reports what it did.
    #[arg(long, default_value_t = 900)]
    accrual_timeout: u64,
    /// `ANALYZE` the database after the accruals' ingest, then loyalty's tables every this many
    /// seconds while it catches up (what autovacuum's autoanalyze does on a server that runs
    /// it); 0 never.
    #[arg(long, default_value_t = 0)]
    accrual_analyze_secs: u64,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    match run(args).await {
        Ok(code) => code,
        Err(error) => {
            eprintln!("crm-load: {error:#}");
            ExitCode::from(2)
        }
    }
}

fn required_env(name: &str) -> anyhow::Result<String> {
    match std::env::var(name) {
        Ok(value) if !value.is_empty() => Ok(value),
        _ => bail!(
            "{name} is not set: crm-load runs the suite on PostgreSQL and Redis and needs DATABASE_URL \
             (e.g. postgres://postgres@127.0.0.1:5432/test; a database crm_bench_<uuid> is made on its \
             server for the run) and REDIS_URL (e.g. redis://127.0.0.1:6379)"
        ),
    }
}

/// What a run measured so far, and what it needs.
struct Run<'a> {
    args: &'a Args,
    tenant: Tenant,
    echo_channels: Vec<Channel>,
    crm: Option<(&'a CrmProcess, &'a BenchDatabase)>,
    /// DATABASE_URL and REDIS_URL, when a workload needs the suite.
    env: Option<(String, String)>,
    /// The split suite of the loyalty workloads, started when they start.
    loyalty: Option<LoyaltySuite>,
    rows: Vec<Row>,
}

async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let wants = |workload: Workload| args.workloads.contains(&workload);
    let needs_echo = wants(Workload::Echo)
        || wants(Workload::LookupWarm)
        || wants(Workload::LookupCold)
        || wants(Workload::CreatePurchase);
    let needs_suite = wants(Workload::LookupWarm)
        || wants(Workload::LookupCold)
        || wants(Workload::Import)
        || wants(Workload::IngestPurchases)
        || wants(Workload::CreatePurchase)
        || wants(Workload::HotScores)
        || wants(Workload::BatchGet);
    let env = if needs_suite || needs_loyalty(&args) {
        Some((required_env("DATABASE_URL")?, required_env("REDIS_URL")?))
    } else {
        None
    };
    let tenant = Tenant::unique()?;

    let echo = EchoServer::start()?;
    let echo_channels = if needs_echo {
        connect_pool(&echo.url(), args.connections).await?
    } else {
        Vec::new()
    };

    let mut suite = None;
    if let Some((database_url, redis_url)) = env.as_ref().filter(|_| needs_suite) {
        let database = BenchDatabase::create(database_url).await?;
        eprintln!(
            "database {} created; starting {}",
            database.name,
            args.crm_bin.display()
        );
        match CrmProcess::start(&args.crm_bin, &database.url, redis_url).await {
            Ok(process) => suite = Some((process, database)),
            Err(error) => {
                let _ = database.drop_database().await;
                return Err(error);
            }
        }
    }

    println!(
        "crm-load: {} in flight, {} s per workload (+{} s warm-up for echo and lookup-warm), {} HTTP/2 \
         connection(s) per server used round robin, tenant {}",
        args.concurrency, args.duration, args.warmup, args.connections, tenant.id
    );
    println!(
        "echo baseline: bare tonic grpc.health.v1 Health/Check on {}",
        echo.addr
    );
    if let Some((process, database)) = &suite {
        println!(
            "suite: {} serve on {} (database {}, log {})",
            args.crm_bin.display(),
            process.addr,
            database.name,
            process.log_path.display()
        );
    }

    let mut context = Run {
        args: &args,
        tenant,
        echo_channels,
        crm: suite.as_ref().map(|(process, database)| (process, database)),
        env: env.clone(),
        loyalty: None,
        rows: Vec::new(),
    };
    let outcome = tokio::select! {
        outcome = measure(&mut context) => outcome,
        _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
    };
    let rows = std::mem::take(&mut context.rows);
    let loyalty_suite = context.loyalty.take();
    drop(context);

    let mut crashed = None;
    if let Some(mut loyalty_suite) = loyalty_suite {
        crashed = loyalty_suite.crashed();
        loyalty_suite.stop().await;
    }
    if let Some((mut process, database)) = suite {
        if let Some(status) = process.exited() {
            let message = format!(
                "the crm process exited during the run ({status}); the end of its log ({}):\n{}",
                process.log_path.display(),
                process.log_tail(40)
            );
            crashed = Some(match crashed {
                Some(loyalty) => format!("{loyalty}\n{message}"),
                None => message,
            });
        }
        process.stop().await;
        if let Err(error) = database.drop_database().await {
            eprintln!("crm-load: could not drop the run's database: {error:#}");
        }
    }
    echo.stop();

    println!();
    print!("{}", table(&rows));
    for row in &rows {
        if let Some(note) = &row.note {
            println!("- {}: {note}", row.workload);
        }
    }
    print_goal(&rows);
    print_ingest_goal(&rows);
    print_accruals_goal(&rows);

    let mut failed = false;
    for row in &rows {
        if row.error_ratio > MAX_ERROR_RATIO {
            failed = true;
            println!(
                "FAILED {}: {} errors ({:.3}% > {:.1}%); first error: {}",
                row.workload,
                row.errors,
                row.error_ratio * 100.0,
                MAX_ERROR_RATIO * 100.0,
                row.first_error.as_deref().unwrap_or("(none recorded)")
            );
        } else if let Some(error) = &row.first_error {
            println!("{}: {} error(s), first: {error}", row.workload, row.errors);
        }
    }
    if let Some(crashed) = crashed {
        println!("FAILED: {crashed}");
        failed = true;
    }
    if let Err(error) = outcome {
        println!("FAILED: {error:#}");
        failed = true;
    }
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

fn needs_loyalty(args: &Args) -> bool {
    [
        Workload::Accruals,
        Workload::RedeemContended,
        Workload::RedeemSpread,
    ]
    .iter()
    .any(|workload| args.workloads.contains(workload))
}

fn print_accruals_goal(rows: &[Row]) {
    let Some(accruals) = rows.iter().find(|row| row.workload == "accruals") else {
        return;
    };
    let ratio = rows
        .iter()
        .find(|row| row.workload == "feed-read")
        .filter(|feed| feed.rate() > 0.0)
        .map(|feed| accruals.rate() / feed.rate());
    println!(
        "goal accruals >= {} accruals/s on PostgreSQL: {} ({:.0} accruals/s over a catch-up of {}{})",
        GOAL_ACCRUALS_PER_SECOND,
        if accruals.rate() >= GOAL_ACCRUALS_PER_SECOND && accruals.errors == 0 {
            "MET"
        } else {
            "MISSED"
        },
        accruals.rate(),
        grouped(accruals.count),
        ratio
            .map(|ratio| format!(", {ratio:.3}x the bare feed read"))
            .unwrap_or_default()
    );
}

fn print_ingest_goal(rows: &[Row]) {
    let (Some(ingest), Some(copy)) = (
        rows.iter().find(|row| row.workload == "ingest-purchases"),
        rows.iter().find(|row| row.workload == "copy-purchases"),
    ) else {
        return;
    };
    let ratio = if copy.rate() > 0.0 {
        ingest.rate() / copy.rate()
    } else {
        0.0
    };
    println!(
        "goal ingest-purchases >= {GOAL_INGEST_RATIO}x psql \\copy rows/s: {} ({ratio:.3}x)",
        if ratio >= GOAL_INGEST_RATIO {
            "MET"
        } else {
            "MISSED"
        }
    );
}

fn print_goal(rows: &[Row]) {
    let (Some(warm), Some(echo)) = (
        rows.iter().find(|row| row.workload == "lookup-warm"),
        rows.iter().find(|row| row.workload == "echo"),
    ) else {
        return;
    };
    let ratio = if echo.rate() > 0.0 {
        warm.rate() / echo.rate()
    } else {
        0.0
    };
    let p99 = warm.latency.map(|latency| latency.p99);
    let met = ratio >= GOAL_WARM_RATIO && p99.is_some_and(|p99| p99 <= GOAL_WARM_P99_MICROS);
    println!(
        "goal lookup-warm >= {GOAL_WARM_RATIO}x echo req/s and p99 <= {} ms: {} ({:.2}x echo, p99 {})",
        GOAL_WARM_P99_MICROS as f64 / 1000.0,
        if met { "MET" } else { "MISSED" },
        ratio,
        p99.map(|p99| format!("{:.3} ms", p99 as f64 / 1000.0))
            .unwrap_or_else(|| "n/a".into())
    );
}

/// Runs the selected workloads in order, pushing one row per measurement.
async fn measure(context: &mut Run<'_>) -> anyhow::Result<()> {
    let args = context.args;
    let duration = Duration::from_secs(args.duration);
    let warmup = Duration::from_secs(args.warmup);
    let concurrency = args.concurrency.max(1);

    if !context.echo_channels.is_empty() {
        eprintln!("echo: measuring");
        let callers = (0..concurrency)
            .map(|task| {
                EchoCaller::new(
                    context.echo_channels[task % context.echo_channels.len()].clone(),
                    context.tenant.clone(),
                )
            })
            .collect();
        let measured = closed_loop(callers, warmup, duration).await?;
        context.rows.push(Row::from_measured("echo", &measured, None));
    }
    if let Some((process, database)) = context.crm {
        measure_suite(context, process, database).await?;
    }
    if needs_loyalty(args) {
        measure_loyalty(context).await?;
    }
    Ok(())
}

/// The loyalty workloads, on a split suite of their own (see `crm_bench::loyalty`).
async fn measure_loyalty(context: &mut Run<'_>) -> anyhow::Result<()> {
    let args = context.args;
    let wants = |workload: Workload| args.workloads.contains(&workload);
    let concurrency = args.concurrency.max(1);
    let (database_url, redis_url) = context
        .env
        .clone()
        .context("the loyalty workloads need DATABASE_URL and REDIS_URL")?;
    eprintln!(
        "loyalty: starting the split suite (P1: customer-profile, interaction, segmentation, gateway; P2: loyalty)"
    );
    let suite = LoyaltySuite::start(&args.crm_bin, &database_url, &redis_url).await?;
    println!(
        "loyalty suite: P1 on {} (log {}), P2 (loyalty) on {} (log {}), database {}",
        suite.front.addr,
        suite.front.log_path.display(),
        suite.loyalty_url(),
        suite
            .loyalty_logs
            .last()
            .map(|path| path.display().to_string())
            .unwrap_or_default(),
        suite.database_name()
    );
    let suite = context.loyalty.insert(suite);
    let (front, loyalty_channels) = loyalty::channels(suite, args.connections).await?;
    workloads::configure_tenant(front[0].clone(), &context.tenant).await?;
    loyalty::set_program(loyalty_channels[0].clone(), &context.tenant, args.accrual_tiers).await?;

    if wants(Workload::Accruals) {
        let started = Instant::now();
        let customers = loyalty::customers(
            &front,
            &context.tenant,
            40_000_000,
            args.accrual_customers.max(1),
            concurrency,
        )
        .await
        .context("setup of accruals")?;
        eprintln!(
            "accruals: created {} customers in {:.1} s",
            customers.len(),
            started.elapsed().as_secs_f64()
        );
        let rows = loyalty::accruals(
            suite,
            &context.tenant,
            &front,
            &customers,
            AccrualOptions {
                purchases: args.accrual_purchases,
                live_purchases: args.accrual_live_purchases,
                batch: args.ingest_batch,
                tiers: args.accrual_tiers,
                limit: Duration::from_secs(args.accrual_timeout),
                analyze_every: (args.accrual_analyze_secs > 0)
                    .then(|| Duration::from_secs(args.accrual_analyze_secs)),
            },
        )
        .await?;
        context.rows.extend(rows);
    }

    if wants(Workload::RedeemContended) || wants(Workload::RedeemSpread) {
        let customers = loyalty::customers(
            &front,
            &context.tenant,
            50_000_000,
            concurrency as u64 + 1,
            concurrency,
        )
        .await
        .context("setup of the redemptions")?;
        // P2 may have restarted (accruals): new connections to it.
        let (_, loyalty_channels) = loyalty::channels(suite, args.connections).await?;
        let rows = loyalty::redemptions(
            suite,
            &context.tenant,
            &loyalty_channels,
            &customers,
            RedeemOptions {
                contended: wants(Workload::RedeemContended),
                spread: wants(Workload::RedeemSpread),
                concurrency,
                warmup: Duration::from_secs(args.warmup),
                duration: Duration::from_secs(args.duration),
            },
        )
        .await?;
        context.rows.extend(rows);
    }
    Ok(())
}

/// The workloads of the one-process suite.
async fn measure_suite(
    context: &mut Run<'_>,
    process: &CrmProcess,
    database: &BenchDatabase,
) -> anyhow::Result<()> {
    let args = context.args;
    let wants = |workload: Workload| args.workloads.contains(&workload);
    let duration = Duration::from_secs(args.duration);
    let warmup = Duration::from_secs(args.warmup);
    let concurrency = args.concurrency.max(1);
    let channels = connect_pool(&process.url(), args.connections).await?;
    workloads::configure_tenant(channels[0].clone(), &context.tenant).await?;

    if wants(Workload::LookupWarm) {
        let started = Instant::now();
        let customers =
            workloads::create_customers(&channels, &context.tenant, 0..args.lookup_customers, concurrency)
                .await
                .context("setup of lookup-warm")?;
        let hot: Vec<_> = customers.into_iter().take(args.hot_set.max(1)).collect();
        workloads::prime(&channels, &context.tenant, &hot)
            .await
            .context("setup of lookup-warm")?;
        eprintln!(
            "lookup-warm: created {} customers with CreateCustomer ({} in flight) and looked up a hot set of {} once in {:.1} s; measuring",
            args.lookup_customers,
            concurrency,
            hot.len(),
            started.elapsed().as_secs_f64()
        );
        let hot = Arc::new(hot);
        let callers = (0..concurrency)
            .map(|task| {
                WarmLookupCaller::new(
                    channels[task % channels.len()].clone(),
                    context.tenant.clone(),
                    Arc::clone(&hot),
                    task,
                    concurrency,
                )
            })
            .collect();
        let measured = closed_loop(callers, warmup, duration).await?;
        let mut row = Row::from_measured("lookup-warm", &measured, Some("echo"));
        row.note = Some(format!(
            "LookupCustomer{{phone: \"138xxxxxxxx\"}} round robin over a hot set of {} (of {} customers), each looked up once before",
            hot.len(),
            args.lookup_customers
        ));
        context.rows.push(row);
    }

    if wants(Workload::BatchGet) {
        let started = Instant::now();
        let first = 30_000_000;
        let names: Vec<String> = workloads::create_customers(
            &channels,
            &context.tenant,
            first..first + args.batch_get_customers.max(1),
            concurrency,
        )
        .await
        .context("setup of batch-get")?
        .into_iter()
        .map(|target| target.name)
        .collect();
        eprintln!(
            "batch-get: created {} customers in {:.1} s; measuring get-customer (baseline) then batch-get",
            names.len(),
            started.elapsed().as_secs_f64()
        );
        let names = Arc::new(names);
        let size = args.batch_get_size.max(1);
        let client =
            |task: usize| crm_bench::workloads::ProfileClient::new(channels[task % channels.len()].clone());
        let callers = (0..concurrency)
            .map(|task| {
                crm_bench::batch_get::GetCaller::new(
                    client(task),
                    context.tenant.clone(),
                    Arc::clone(&names),
                    task,
                    concurrency,
                )
            })
            .collect();
        let measured = closed_loop(callers, warmup, duration).await?;
        let mut baseline = Row::from_measured("get-customer", &measured, None);
        baseline.unit = "names";
        baseline.note = Some(format!(
            "GetCustomer of one name a call, round robin over {} customers (cached after the first pass)",
            names.len()
        ));
        context.rows.push(baseline);
        let callers = (0..concurrency)
            .map(|task| {
                crm_bench::batch_get::BatchCaller::new(
                    client(task),
                    context.tenant.clone(),
                    Arc::clone(&names),
                    size,
                    task,
                    concurrency,
                )
            })
            .collect();
        let measured = closed_loop(callers, warmup, duration).await?;
        let mut row = Row::from_measured("batch-get", &measured, Some("get-customer"));
        row.unit = "names";
        row.count = measured.ok * size as u64;
        row.note = Some(format!(
            "BatchGetCustomers of {size} consecutive names a call; latency is per call"
        ));
        context.rows.push(row);
    }

    if wants(Workload::LookupCold) {
        let started = Instant::now();
        let first = 10_000_000;
        let streams = args.connections.max(1);
        let pool = workloads::import_customers_with_phones(
            &channels,
            &context.tenant,
            first..first + args.cold_customers,
            streams,
            args.import_batch,
        )
        .await
        .context("setup of lookup-cold")?;
        eprintln!(
            "lookup-cold: imported {} customers never looked up ({} ImportCustomers streams) in {:.1} s; measuring",
            pool.len(),
            streams,
            started.elapsed().as_secs_f64()
        );
        let pool = Arc::new(pool);
        let next = Arc::new(AtomicUsize::new(0));
        let callers = (0..concurrency)
            .map(|task| {
                ColdLookupCaller::new(
                    channels[task % channels.len()].clone(),
                    context.tenant.clone(),
                    Arc::clone(&pool),
                    Arc::clone(&next),
                )
            })
            .collect();
        let measured = closed_loop(callers, Duration::ZERO, duration).await?;
        let mut row = Row::from_measured("lookup-cold", &measured, Some("echo"));
        row.note = Some(if measured.exhausted {
            format!(
                "each of {} imported customers looked up once; the pool ran out after {:.1} s of {} s (pass a larger --cold-customers)",
                grouped(pool.len() as u64),
                measured.elapsed.as_secs_f64(),
                args.duration
            )
        } else {
            format!(
                "distinct customers, each looked up once (pool of {}, no warm-up)",
                grouped(pool.len() as u64)
            )
        });
        context.rows.push(row);
    }

    if wants(Workload::Import) {
        eprintln!("import: psql \\copy of {} rows (baseline)", args.import_rows);
        let copied = workloads::copy(&database.url, args.import_rows, &std::env::temp_dir()).await?;
        let mut copy_row = Row::from_bulk("copy", &copied, None);
        copy_row.note = Some(format!(
            "`psql \\copy` of the same {} rows as CSV into a plain table (no index) of the run's database, psql start-up included",
            grouped(args.import_rows)
        ));
        context.rows.push(copy_row);
        eprintln!(
            "import: ImportCustomers of {} rows in batches of {}",
            args.import_rows, args.import_batch
        );
        let imported = workloads::import(
            channels[0].clone(),
            &context.tenant,
            args.import_rows,
            args.import_batch,
        )
        .await?;
        let mut row = Row::from_bulk("import", &imported, Some("copy"));
        let mut note = format!(
            "one ImportCustomers client stream of {} messages x {} rows (external id erp:row-<n>, one email), {:.1} s end to end; per-request latency does not apply",
            args.import_rows.div_ceil(args.import_batch.max(1) as u64),
            args.import_batch,
            imported.elapsed.as_secs_f64()
        );
        if !imported.timeline.is_empty() {
            let tenths: Vec<String> = imported
                .timeline
                .iter()
                .map(|rate| grouped(rate.round() as u64))
                .collect();
            note.push_str(&format!(
                "; rows/s by tenth of the stream, from the rows' UUIDv7 creation times: {}",
                tenths.join(", ")
            ));
        }
        row.note = Some(note);
        context.rows.push(row);
    }

    if wants(Workload::HotScores) {
        hot_scores(context, &channels).await?;
    }

    if wants(Workload::IngestPurchases) || wants(Workload::CreatePurchase) {
        let started = Instant::now();
        let first = 20_000_000;
        let customers: Vec<String> = workloads::create_customers(
            &channels,
            &context.tenant,
            first..first + args.purchase_customers.max(1),
            concurrency,
        )
        .await
        .context("setup of the purchase workloads")?
        .into_iter()
        .map(|target| target.name)
        .collect();
        eprintln!(
            "purchases: created {} customers in {:.1} s",
            customers.len(),
            started.elapsed().as_secs_f64()
        );
        if wants(Workload::IngestPurchases) {
            eprintln!(
                "ingest-purchases: psql \\copy of {} rows (baseline)",
                args.ingest_rows
            );
            let copied =
                purchases::copy(&database.url, &customers, args.ingest_rows, &std::env::temp_dir()).await?;
            let mut copy_row = Row::from_bulk("copy-purchases", &copied, None);
            copy_row.note = Some(format!(
                "`psql \\copy` of the same {} purchases (customer, order id, time, currency, minor units, channel) as CSV into a plain table (no index), psql start-up included",
                grouped(args.ingest_rows)
            ));
            context.rows.push(copy_row);
            eprintln!(
                "ingest-purchases: IngestPurchases of {} rows in batches of {}",
                args.ingest_rows, args.ingest_batch
            );
            let ingested = purchases::ingest(
                channels[0].clone(),
                &context.tenant,
                &customers,
                args.ingest_rows,
                args.ingest_batch,
            )
            .await?;
            let mut row = Row::from_bulk("ingest-purchases", &ingested, Some("copy-purchases"));
            row.note = Some(format!(
                "one IngestPurchases client stream of {} messages x {} rows over {} customers (each row: customer check, 5 indexes, an outbox event), {:.1} s end to end",
                args.ingest_rows.div_ceil(args.ingest_batch.max(1) as u64),
                args.ingest_batch,
                customers.len(),
                ingested.elapsed.as_secs_f64()
            ));
            context.rows.push(row);
        }
        if wants(Workload::CreatePurchase) {
            eprintln!("create-purchase: measuring");
            let customers = Arc::new(customers);
            let callers = (0..concurrency)
                .map(|task| {
                    purchases::CreatePurchaseCaller::new(
                        channels[task % channels.len()].clone(),
                        context.tenant.clone(),
                        Arc::clone(&customers),
                        1_000_000_000_000,
                        task,
                    )
                })
                .collect();
            let measured = closed_loop(callers, warmup, duration).await?;
            let mut row = Row::from_measured("create-purchase", &measured, Some("echo"));
            row.note = Some(format!(
                "unary CreatePurchase, each a new order of one of {} customers (customer check from cache, one transaction with its outbox event)",
                customers.len()
            ));
            context.rows.push(row);
        }
    }
    Ok(())
}

/// The hot-scores workload: probes alone (baseline), then probes under the background rate.
async fn hot_scores(context: &mut Run<'_>, channels: &[Channel]) -> anyhow::Result<()> {
    let args = context.args;
    let redis_url = required_env("REDIS_URL")?;
    let first = 30_000_000;
    let customers: Vec<String> = workloads::create_customers(
        channels,
        &context.tenant,
        first..first + args.purchase_customers.max(1) + 20,
        args.concurrency.max(1),
    )
    .await
    .context("setup of hot-scores")?
    .into_iter()
    .map(|target| target.name)
    .collect();
    let (probes, background) = customers.split_at(20);
    let background = Arc::new(background.to_vec());
    let duration = Duration::from_secs(args.duration);
    let mut rows = Vec::new();
    for (name, rate) in [("hot-scores-idle", 0), ("hot-scores", args.hot_scores_rate)] {
        eprintln!("{name}: probing with {rate} background purchases/s");
        let probed = crm_bench::hot_scores::measure(
            channels,
            &context.tenant,
            &redis_url,
            probes,
            Arc::clone(&background),
            rate,
            duration,
            name,
        )
        .await?;
        let mut row = Row {
            workload: name.to_owned(),
            unit: "probe",
            count: probed.latency.len(),
            elapsed: probed.elapsed,
            latency: crm_bench::report::Latency::of(&probed.latency),
            errors: probed.missed,
            error_ratio: probed.missed as f64 / (probed.latency.len() + probed.missed).max(1) as f64,
            first_error: (probed.missed > 0)
                .then(|| format!("{} probes not visible within 10 s", probed.missed)),
            baseline: (rate > 0).then(|| "hot-scores-idle".to_owned()),
            note: None,
        };
        row.note = Some(if rate == 0 {
            "latency = a CreatePurchase's acknowledgement to its customer's hash in Redis showing it (polled every 2 ms); no other load".to_owned()
        } else {
            format!(
                "the same probe while {:.0} other purchases/s were acknowledged (asked {rate}/s, open loop; {} failed) over {} customers",
                probed.background_rate,
                probed.background_errors,
                background.len()
            )
        });
        rows.push(row);
    }
    if let [idle, loaded] = rows.as_slice()
        && let (Some(idle_latency), Some(loaded_latency)) = (idle.latency, loaded.latency)
    {
        println!(
            "hot-scores goal (p99 <= 1 s at 1,000 events/s): p99 {:.1} ms under load ({:.2}x the idle p99 of {:.1} ms): {}",
            loaded_latency.p99 as f64 / 1000.0,
            loaded_latency.p99 as f64 / idle_latency.p99.max(1) as f64,
            idle_latency.p99 as f64 / 1000.0,
            if loaded_latency.p99 <= 1_000_000 {
                "MET"
            } else {
                "MISSED"
            }
        );
    }
    context.rows.extend(rows);
    Ok(())
}
