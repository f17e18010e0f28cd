//! `crm-recompute`: a full recompute of a tenant's scores for a synthetic population (default
//! 1,000,000 customers, 10,000,000 purchases over three years, about 2 % refunded), time and
//! peak RSS, against Polars doing RFM + ABC on the same CSV in the same run.
//!
//! ```sh
//! cargo build --release -p crm-bench
//! python3 -m venv /tmp/polars-venv && /tmp/polars-venv/bin/pip install -r bench/recompute/requirements.txt
//! DATABASE_URL=postgres://postgres@127.0.0.1:5432/test \
//!   target/release/crm-recompute run --python /tmp/polars-venv/bin/python
//! ```
//!
//! Every measurement runs in a child process of its own, so each peak RSS is that
//! measurement's alone: the Polars script (the baseline), the in-memory recompute (our code
//! without a store, one thread and two), and per backend the seeding of the store (reported,
//! not compared) and the service's score run. Each side's counts per segment, value class, ABC
//! class and score, and per-customer digests, must equal Polars'; a mismatch fails the run.

use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};
use std::time::Instant;

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand, ValueEnum};
use crm_bench::recompute::data::{AS_OF_DAY, generate};
use crm_bench::recompute::inmem;
use crm_bench::recompute::service::{self, Backend};
use crm_bench::recompute::summary::{Report, checks, differences, peak_rss_kib};
use crm_bench::report::grouped;
use crm_bench::suite::BenchDatabase;
use crm_segmentation::domain::scores::AbcThresholds;

/// The RFM window of the service's default settings.
const WINDOW_DAYS: i64 = 365;
/// The issue's goals: no slower than Polars, under 1 GB (10^9 bytes) of RSS.
const GOAL_RATIO: f64 = 1.0;
const GOAL_RSS_KIB: f64 = 1e9 / 1024.0;
/// Marks a child's result line on its stdout.
const RESULT_PREFIX: &str = "RESULT ";

#[derive(Debug, Parser)]
#[command(
    name = "crm-recompute",
    about = "A full score recompute (RFM, segments, value classes, ABC) timed with its peak RSS, against Polars on the same data in the same run"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Generate the data set, run every measurement and print the table.
    Run(RunArgs),
    /// Only write the data set's CSV.
    Generate {
        #[arg(long)]
        out: PathBuf,
        #[command(flatten)]
        size: Size,
    },
    #[command(hide = true)]
    ChildInMemory {
        #[arg(long)]
        csv: PathBuf,
        /// 1: fold rows as they are read; more: parse and fold partitions on this many threads.
        #[arg(long, default_value_t = 1)]
        threads: usize,
    },
    #[command(hide = true)]
    ChildSeed {
        #[arg(long)]
        csv: PathBuf,
        #[arg(long)]
        tenant: String,
        #[command(flatten)]
        store: StoreArgs,
    },
    #[command(hide = true)]
    ChildScoreRun {
        #[arg(long)]
        tenant: String,
        #[command(flatten)]
        store: StoreArgs,
        #[arg(long)]
        redis_url: Option<String>,
        #[arg(long)]
        no_profile: bool,
    },
}

#[derive(Debug, Clone, Args)]
struct Size {
    /// Customers (each buys at least once).
    #[arg(long, default_value_t = 1_000_000)]
    customers: u64,
    /// Purchases (refunds, about 2 % of them, come on top).
    #[arg(long, default_value_t = 10_000_000)]
    purchases: u64,
    /// Seed of the generator: the same seed and sizes give the same file.
    #[arg(long, default_value_t = 20_261_122)]
    seed: u64,
}

#[derive(Debug, Clone, Args)]
struct StoreArgs {
    /// SQLite: the directory of `segmentation.db`.
    #[arg(long, conflicts_with = "database_url")]
    sqlite_dir: Option<PathBuf>,
    /// PostgreSQL: the database's URL.
    #[arg(long)]
    database_url: Option<String>,
}

impl StoreArgs {
    fn backend(&self) -> anyhow::Result<Backend> {
        match (&self.sqlite_dir, &self.database_url) {
            (Some(dir), None) => Ok(Backend::Sqlite(dir.clone())),
            (None, Some(url)) => Ok(Backend::Postgres(url.clone())),
            _ => bail!("give --sqlite-dir or --database-url"),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum BackendKind {
    /// The embedded store (a SQLite file in the work directory).
    Sqlite,
    /// PostgreSQL: a database `crm_bench_<uuid>` made on the server of DATABASE_URL.
    Postgres,
}

#[derive(Debug, Clone, Args)]
struct RunArgs {
    #[command(flatten)]
    size: Size,
    /// Python with polars installed (see bench/recompute/requirements.txt).
    #[arg(long, default_value = "python3")]
    python: String,
    /// The Polars script.
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/recompute/rfm_abc_polars.py"))]
    polars_script: PathBuf,
    /// Runs of Polars and of each in-memory variant (alternating); the median time is reported.
    #[arg(long, default_value_t = 3)]
    repeat: usize,
    /// Stores to run the service's score run on, comma separated.
    #[arg(long, value_enum, value_delimiter = ',', default_value = "sqlite,postgres")]
    backends: Vec<BackendKind>,
    /// Skip the service's score runs (only Polars and the in-memory recompute).
    #[arg(long)]
    no_service: bool,
    /// PostgreSQL server for the postgres backend (a fresh database is made and dropped).
    #[arg(long, env = "DATABASE_URL")]
    database_url: Option<String>,
    /// Write the service's hot scores to this Redis instead of the in-process cache.
    #[arg(long)]
    redis_url: Option<String>,
    /// Skip the timed repeat of the score run's steps.
    #[arg(long)]
    no_profile: bool,
    /// Where the CSV and the SQLite file go (default: a new directory under the temp dir).
    #[arg(long)]
    work_dir: Option<PathBuf>,
    /// Keep the work directory (CSV, SQLite file) at the end.
    #[arg(long)]
    keep_data: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let outcome = match cli.command {
        Command::Run(args) => run(&args),
        Command::Generate { out, size } => {
            generate(&out, size.customers, size.purchases, size.seed).map(|made| {
                eprintln!(
                    "wrote {}: {} customers, {} purchases, {} refunds, {} bytes",
                    out.display(),
                    made.customers,
                    made.purchases,
                    made.refunds,
                    made.bytes
                );
                ExitCode::SUCCESS
            })
        }
        Command::ChildInMemory { csv, threads } => child_in_memory(&csv, threads),
        Command::ChildSeed { csv, tenant, store } => {
            runtime().and_then(|runtime| runtime.block_on(child_seed(&csv, &tenant, &store)))
        }
        Command::ChildScoreRun {
            tenant,
            store,
            redis_url,
            no_profile,
        } => runtime().and_then(|runtime| {
            runtime.block_on(child_score_run(
                &tenant,
                &store,
                redis_url.as_deref(),
                !no_profile,
            ))
        }),
    };
    match outcome {
        Ok(code) => code,
        Err(error) => {
            eprintln!("crm-recompute: {error:#}");
            ExitCode::from(2)
        }
    }
}

/// A multi-thread runtime with a worker per core, as the `crm` process has.
fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread().enable_all().build()?)
}

fn print_result(report: &Report) -> ExitCode {
    println!("{RESULT_PREFIX}{}", report.to_json());
    ExitCode::SUCCESS
}

// ---- children ----

fn child_in_memory(csv: &Path, threads: usize) -> anyhow::Result<ExitCode> {
    let started = Instant::now();
    let folded = if threads > 1 {
        inmem::fold_partitioned(csv, threads)?
    } else {
        inmem::fold(csv)?
    };
    let fold_s = started.elapsed().as_secs_f64();
    let scored = inmem::score(&folded, AS_OF_DAY, WINDOW_DAYS, AbcThresholds::default())?;
    let elapsed_s = started.elapsed().as_secs_f64();
    let peak = peak_rss_kib()?;
    let mut report = Report::default();
    report.metrics.insert("elapsed_s".into(), elapsed_s);
    report.metrics.insert("fold_s".into(), fold_s);
    report.metrics.insert("peak_rss_kib".into(), peak as f64);
    report.metrics.insert("rows".into(), folded.rows as f64);
    report.metrics.insert("customers".into(), folded.len() as f64);
    report.checks = checks(scored);
    Ok(print_result(&report))
}

async fn child_seed(csv: &Path, tenant: &str, store: &StoreArgs) -> anyhow::Result<ExitCode> {
    let metrics = service::seed(&store.backend()?, csv, tenant).await?;
    let mut report = Report::default();
    report.metrics.extend(metrics);
    Ok(print_result(&report))
}

async fn child_score_run(
    tenant: &str,
    store: &StoreArgs,
    redis_url: Option<&str>,
    profile: bool,
) -> anyhow::Result<ExitCode> {
    let measured = service::score_run(&store.backend()?, tenant, AS_OF_DAY, redis_url, profile).await?;
    let mut report = Report::default();
    report.metrics.extend(measured.metrics);
    report.checks = measured.checks;
    Ok(print_result(&report))
}

// ---- the driver ----

/// Runs a child and reads its report: the line after `prefix` (or the last line when the prefix
/// is empty) of its stdout. Its stderr goes to ours.
fn run_child(mut command: std::process::Command, what: &str, prefix: &str) -> anyhow::Result<Report> {
    let output = command
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .stdout(Stdio::piped())
        .output()
        .with_context(|| format!("start {what}"))?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        bail!("{what} failed ({}); its output: {}", output.status, stdout.trim());
    }
    let line = if prefix.is_empty() {
        stdout.lines().rev().find(|line| !line.trim().is_empty())
    } else {
        stdout.lines().rev().find_map(|line| line.strip_prefix(prefix))
    };
    let line = line.with_context(|| format!("{what} printed no result: {}", stdout.trim()))?;
    Report::parse(line).with_context(|| format!("the result of {what}"))
}

fn ourselves(args: &[&str]) -> anyhow::Result<std::process::Command> {
    let mut command = std::process::Command::new(std::env::current_exe().context("locate crm-recompute")?);
    command.args(args);
    Ok(command)
}

/// One row of the table.
struct Measured {
    name: String,
    size: String,
    elapsed_s: f64,
    peak_rss_kib: f64,
    notes: Vec<String>,
}

/// The run with the median time among `runs` (and the largest peak RSS of all of them).
fn median(mut runs: Vec<Report>) -> anyhow::Result<(Report, f64, Vec<f64>)> {
    let mut times = runs
        .iter()
        .map(|run| run.metric("elapsed_s"))
        .collect::<anyhow::Result<Vec<f64>>>()?;
    let peak = runs
        .iter()
        .filter_map(|run| run.metric("peak_rss_kib").ok())
        .fold(0.0, f64::max);
    runs.sort_by(|a, b| {
        a.metrics
            .get("elapsed_s")
            .partial_cmp(&b.metrics.get("elapsed_s"))
            .unwrap_or(std::cmp::Ordering::Equal)
    });
    let middle = runs.len() / 2;
    let chosen = runs.into_iter().nth(middle).context("no run")?;
    times.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    Ok((chosen, peak, times))
}

fn check_against(name: &str, ours: &Report, polars: &Report, failures: &mut Vec<String>) {
    let differ = differences(&ours.checks, &polars.checks);
    if differ.is_empty() {
        eprintln!(
            "crm-recompute: {name}: all {} checks equal Polars'",
            ours.checks.len()
        );
        return;
    }
    for (key, left, right) in &differ {
        eprintln!("crm-recompute: {name}: {key}: ours {left:?}, Polars {right:?}");
    }
    failures.push(format!(
        "{name}: {} of {} checks differ from Polars (first: {})",
        differ.len(),
        polars.checks.len(),
        differ.first().map_or("", |(key, _, _)| key.as_str())
    ));
}

fn run(args: &RunArgs) -> anyhow::Result<ExitCode> {
    if args.repeat == 0 {
        bail!("--repeat must be at least 1");
    }
    let work_dir = args.work_dir.clone().unwrap_or_else(|| {
        std::env::temp_dir().join(format!("crm-recompute-{}", uuid::Uuid::now_v7().simple()))
    });
    std::fs::create_dir_all(&work_dir).with_context(|| format!("create {}", work_dir.display()))?;
    let outcome = measure_all(args, &work_dir);
    if args.keep_data {
        eprintln!("crm-recompute: data kept in {}", work_dir.display());
    } else if let Err(error) = std::fs::remove_dir_all(&work_dir) {
        eprintln!("crm-recompute: could not remove {}: {error}", work_dir.display());
    }
    outcome
}

fn polars_available(args: &RunArgs) -> anyhow::Result<()> {
    let probe = std::process::Command::new(&args.python)
        .args(["-c", "import polars"])
        .stdin(Stdio::null())
        .output();
    match probe {
        Ok(output) if output.status.success() => Ok(()),
        _ => bail!(
            "`{} -c 'import polars'` failed: the baseline needs Polars. Install it with\n  \
             python3 -m venv /tmp/polars-venv\n  \
             /tmp/polars-venv/bin/pip install -r bench/recompute/requirements.txt\n\
             and pass --python /tmp/polars-venv/bin/python",
            args.python
        ),
    }
}

fn measure_all(args: &RunArgs, work_dir: &Path) -> anyhow::Result<ExitCode> {
    polars_available(args)?;
    if !args.polars_script.is_file() {
        bail!(
            "no Polars script at {} (--polars-script)",
            args.polars_script.display()
        );
    }
    let csv = work_dir.join("events.csv");
    let size = &args.size;
    let started = Instant::now();
    let made = generate(&csv, size.customers, size.purchases, size.seed)?;
    eprintln!(
        "crm-recompute: generated {} ({} customers, {} purchases, {} refunds, {} MB) in {:.1} s",
        csv.display(),
        grouped(made.customers),
        grouped(made.purchases),
        grouped(made.refunds),
        made.bytes / 1_000_000,
        started.elapsed().as_secs_f64()
    );
    let size_label = format!("{} / {}", grouped(made.customers), grouped(made.purchases));
    let csv_text = csv.to_string_lossy().into_owned();
    let as_of = AS_OF_DAY.to_string();
    let window = WINDOW_DAYS.to_string();

    // Polars and the in-memory variants, alternating so drift hits them alike.
    let mut polars_runs = Vec::new();
    let mut single_runs = Vec::new();
    let mut partitioned_runs = Vec::new();
    for round in 1..=args.repeat {
        eprintln!("crm-recompute: round {round}/{}: Polars", args.repeat);
        let mut command = std::process::Command::new(&args.python);
        command.arg(&args.polars_script).args([
            csv_text.as_str(),
            "--as-of-day",
            as_of.as_str(),
            "--window-days",
            window.as_str(),
        ]);
        polars_runs.push(run_child(command, "the Polars script", "")?);
        eprintln!(
            "crm-recompute: round {round}/{}: in-memory, 1 thread",
            args.repeat
        );
        single_runs.push(run_child(
            ourselves(&["child-in-memory", "--csv", csv_text.as_str()])?,
            "the in-memory recompute",
            RESULT_PREFIX,
        )?);
        eprintln!(
            "crm-recompute: round {round}/{}: in-memory, 2 threads (partitioned)",
            args.repeat
        );
        partitioned_runs.push(run_child(
            ourselves(&["child-in-memory", "--csv", csv_text.as_str(), "--threads", "2"])?,
            "the in-memory recompute (partitioned)",
            RESULT_PREFIX,
        )?);
    }
    let mut failures = Vec::new();
    let (polars, polars_peak, polars_times) = median(polars_runs)?;
    let mut rows = vec![Measured {
        name: "Polars: RFM + ABC (baseline)".into(),
        size: size_label.clone(),
        elapsed_s: polars.metric("elapsed_s")?,
        peak_rss_kib: polars_peak,
        notes: vec![format!(
            "median of {:?} s; `import polars` {:.2} s not included; {} threads",
            rounded(&polars_times),
            polars.metric("import_s").unwrap_or(0.0),
            polars.metric("threads").unwrap_or(0.0)
        )],
    }];
    for (name, runs) in [
        ("in-memory recompute, 1 thread", single_runs),
        ("in-memory recompute, 2 threads (partitioned)", partitioned_runs),
    ] {
        let (report, peak, times) = median(runs)?;
        check_against(name, &report, &polars, &mut failures);
        rows.push(Measured {
            name: name.into(),
            size: size_label.clone(),
            elapsed_s: report.metric("elapsed_s")?,
            peak_rss_kib: peak,
            notes: vec![format!(
                "median of {:?} s; CSV -> aggregates {:.2} s",
                rounded(&times),
                report.metric("fold_s").unwrap_or(0.0)
            )],
        });
    }

    let backends: &[BackendKind] = if args.no_service { &[] } else { &args.backends };
    for kind in backends {
        let outcome = match kind {
            BackendKind::Sqlite => {
                let dir = work_dir.join("sqlite");
                std::fs::create_dir_all(&dir)?;
                let dir_text = dir.to_string_lossy().into_owned();
                service_run(args, &csv_text, "SQLite", &["--sqlite-dir", dir_text.as_str()])
            }
            BackendKind::Postgres => match &args.database_url {
                None => {
                    eprintln!("crm-recompute: DATABASE_URL is not set: the postgres backend is skipped");
                    continue;
                }
                Some(admin_url) => postgres_run(args, &csv_text, admin_url),
            },
        };
        match outcome {
            Ok(runs) => {
                for (measured, report) in runs {
                    check_against(&measured.name, &report, &polars, &mut failures);
                    rows.push(Measured {
                        size: size_label.clone(),
                        ..measured
                    });
                }
            }
            Err(error) => failures.push(format!("{kind:?}: {error:#}")),
        }
    }

    println!();
    println!("{}", table(&rows));
    for row in &rows {
        for note in &row.notes {
            println!("- {}: {note}", row.name);
        }
    }
    if failures.is_empty() {
        println!(
            "- checks: every measurement's counts per segment, value class, ABC class and R/F/M score, and its per-customer digests, equal Polars'"
        );
        Ok(ExitCode::SUCCESS)
    } else {
        for failure in &failures {
            println!("- FAILED: {failure}");
        }
        Ok(ExitCode::from(1))
    }
}

fn postgres_run(args: &RunArgs, csv: &str, admin_url: &str) -> anyhow::Result<Vec<(Measured, Report)>> {
    let runtime = runtime()?;
    let database = runtime.block_on(BenchDatabase::create(admin_url))?;
    eprintln!("crm-recompute: PostgreSQL database {}", database.name);
    let outcome = service_run(
        args,
        csv,
        "PostgreSQL",
        &["--database-url", database.url.as_str()],
    );
    if let Err(error) = runtime.block_on(database.drop_database()) {
        eprintln!("crm-recompute: could not drop the run's database: {error:#}");
    }
    outcome
}

/// Seeds the store, then runs the score run twice, each in its own child: first over a store
/// with no scores yet, then again over the scores the first run stored (what every run after
/// the first does). The profile runs after the second.
fn service_run(
    args: &RunArgs,
    csv: &str,
    label: &str,
    store: &[&str],
) -> anyhow::Result<Vec<(Measured, Report)>> {
    let tenant = format!("bench-{}", uuid::Uuid::now_v7().simple());
    eprintln!("crm-recompute: {label}: seeding tenant {tenant}");
    let mut seed_args = vec!["child-seed", "--csv", csv, "--tenant", tenant.as_str()];
    seed_args.extend_from_slice(store);
    let seeded = run_child(ourselves(&seed_args)?, "seeding", RESULT_PREFIX)?;
    let mut measured = Vec::new();
    for (round, name) in [
        (
            1,
            format!("service score run, {label}, first (no scores stored yet)"),
        ),
        (
            2,
            format!("service score run, {label}, again (over the stored scores)"),
        ),
    ] {
        eprintln!("crm-recompute: {name}");
        let mut run_args = vec!["child-score-run", "--tenant", tenant.as_str()];
        run_args.extend_from_slice(store);
        if let Some(url) = &args.redis_url {
            run_args.extend_from_slice(&["--redis-url", url.as_str()]);
        }
        if round == 1 || args.no_profile {
            run_args.push("--no-profile");
        }
        let report = run_child(ourselves(&run_args)?, "the score run", RESULT_PREFIX)?;
        let mut notes = Vec::new();
        if round == 1 {
            notes.push(format!(
                "seeding (not counted): CSV -> aggregates {:.1} s, {} origins written in {:.1} s ({} MB of aggregates)",
                seeded.metric("fold_s").unwrap_or(0.0),
                grouped(seeded.metric("origins").unwrap_or(0.0) as u64),
                seeded.metric("write_s").unwrap_or(0.0),
                (seeded.metric("blob_bytes").unwrap_or(0.0) / 1e6).round()
            ));
        }
        notes.extend(run_notes(args, &report));
        measured.push((
            Measured {
                name,
                size: String::new(),
                elapsed_s: report.metric("elapsed_s")?,
                peak_rss_kib: report.metric("peak_rss_kib")?,
                notes,
            },
            report,
        ));
    }
    Ok(measured)
}

fn run_notes(args: &RunArgs, report: &Report) -> Vec<String> {
    let metric = |key: &str| report.metrics.get(key).copied().unwrap_or(0.0);
    let mut notes = vec![format!(
        "{:.1} s until the run showed its population (pass 1 + score_population + cut-offs), then {:.1} s (pass 2); the run's own clock: {:.1} s; {} customers, population {}; hot scores to {}",
        metric("pass1_seen_s"),
        metric("pass2_s"),
        metric("run_server_s"),
        grouped(metric("customers_total") as u64),
        grouped(metric("population") as u64),
        if args.redis_url.is_some() {
            "Redis"
        } else {
            "the in-process cache"
        }
    )];
    if let Some(autovacuum) = report.metrics.get("autovacuum") {
        notes.push(format!(
            "PostgreSQL autovacuum is {} on this server; after the run (not timed) the child ran ANALYZE, so the next run, and the read-back for the checks, plan with statistics of the stored scores",
            if *autovacuum > 0.0 { "on" } else { "off" }
        ));
    }
    if report.metrics.contains_key("profile.pass1_read_s") {
        let pass2_parts = [
            "profile.pass2_begin_s",
            "profile.pass2_read_origins_s",
            "profile.pass2_read_scores_s",
            "profile.pass2_combine_s",
            "profile.pass2_write_s",
            "profile.pass2_commit_s",
            "profile.pass2_hot_s",
        ]
        .iter()
        .map(|key| metric(key))
        .sum::<f64>();
        notes.push(format!(
            "profile (the run's steps repeated with the same calls; pass 2 from {} sampled batches of 1,000, scaled to all): pass 1 reading pages {:.1} s, decoding + summing + windows {:.1} s; score_population {:.1} s; pass 2: transaction + lock + revision {:.1} s, reading origins {:.1} s, reading previous scores {:.1} s, decoding + summing origins {:.1} s, writing scores {:.1} s, commit {:.1} s, hot-score writes {:.1} s; the rest of the observed pass 2 (scoring and encoding each customer, and whatever else the run does per batch) {:.1} s",
            metric("profile.pass2_sampled_batches"),
            metric("profile.pass1_read_s"),
            metric("profile.pass1_decode_window_s"),
            metric("profile.score_population_s"),
            metric("profile.pass2_begin_s"),
            metric("profile.pass2_read_origins_s"),
            metric("profile.pass2_read_scores_s"),
            metric("profile.pass2_combine_s"),
            metric("profile.pass2_write_s"),
            metric("profile.pass2_commit_s"),
            metric("profile.pass2_hot_s"),
            metric("pass2_s") - pass2_parts,
        ));
    }
    notes
}

fn rounded(times: &[f64]) -> Vec<f64> {
    times.iter().map(|time| (time * 100.0).round() / 100.0).collect()
}

fn ratio(value: f64) -> String {
    if value >= 10.0 {
        format!("{value:.0}x")
    } else if value >= 0.1 {
        format!("{value:.2}x")
    } else {
        format!("{value:.3}x")
    }
}

fn table(rows: &[Measured]) -> String {
    let baseline = rows.first();
    let mut out = String::from(
        "| measurement | customers / purchases | time | peak RSS | time vs Polars | RSS vs Polars | no slower than Polars | RSS < 1 GB |\n|---|---|---:|---:|---:|---:|---|---|\n",
    );
    for (index, row) in rows.iter().enumerate() {
        let (time_ratio, rss_ratio) = match baseline {
            Some(base) if base.elapsed_s > 0.0 && base.peak_rss_kib > 0.0 => (
                row.elapsed_s / base.elapsed_s,
                row.peak_rss_kib / base.peak_rss_kib,
            ),
            _ => (0.0, 0.0),
        };
        let met = |ok: bool| if ok { "met" } else { "**missed**" };
        out.push_str(&format!(
            "| {} | {} | {:.2} s | {} MiB | {} | {} | {} | {} |\n",
            row.name,
            row.size,
            row.elapsed_s,
            grouped((row.peak_rss_kib / 1024.0).round() as u64),
            ratio(time_ratio),
            ratio(rss_ratio),
            if index == 0 {
                "(baseline)"
            } else {
                met(time_ratio <= GOAL_RATIO)
            },
            met(row.peak_rss_kib < GOAL_RSS_KIB),
        ));
    }
    out
}
