//! `crm-clv`: segmentation's customer-value models (BG/NBD, Gamma-Gamma, potential value;
//! `crm_segmentation::domain::clv`) timed with their peak RSS, against the Python
//! `lifetimes` library 0.11.3 on the same data in the same run.
//!
//! ```sh
//! cargo build --release -p crm-bench --bin crm-clv
//! python3 -m venv /tmp/clv-venv && /tmp/clv-venv/bin/pip install -r bench/clv/requirements.txt
//! target/release/crm-clv run --python /tmp/clv-venv/bin/python
//! ```
//!
//! Two measurements, each side in a child process of its own so each peak RSS is that
//! measurement's alone:
//!
//! - **CDNOW fit**: the BG/NBD fit and the Gamma-Gamma fit (repeat buyers) on the 2,357
//!   CDNOW customers shipped with `lifetimes` (`tests/fixtures/clv/cdnow_summary.csv`), each
//!   side `--fit-repeat` times in one process, best time reported. Goal: ours <= 0.25x.
//! - **Fit + score + 12-month CLV for 1,000,000 customers**: a CSV of synthetic customers
//!   (see `crm_bench::clv::data`) that both sides read; both fits, then P(alive), expected
//!   purchases over 52 weeks and the 12-month CLV (1 % a month, weekly data) of every
//!   customer. `--rounds` rounds, alternating the sides; best time reported. Goal: ours <=
//!   0.1x. Two data sets (`--resolutions`): `day`, the customers as the service summarises
//!   them (purchase days, spends in cents, so many share a pattern and our code computes
//!   each pattern once), and `continuous`, a stress variant in which no two customers are
//!   alike.
//!
//! Times exclude parsing the CSV (reported apart) and Python's imports. Both sides print
//! their fitted parameters, log-likelihoods and the sums of P(alive), expected purchases and
//! CLV over all customers; a relative difference above `--tolerance` fails the run (exit 1).
//! Errors exit 2.

use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};
use std::time::Instant;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand, ValueEnum};
use crm_bench::clv::data::{CDNOW_LIKE, Resolution, generate, read_summaries};
use crm_bench::clv::ours;
use crm_bench::recompute::summary::{Report, peak_rss_kib};
use crm_bench::report::grouped;
use crm_segmentation::domain::clv::FitOptions;

/// The issue's goals: ours at most this fraction of lifetimes' time.
const GOAL_FIT: f64 = 0.25;
const GOAL_SCORE: f64 = 0.1;
/// Marks a child's result line on its stdout.
const RESULT_PREFIX: &str = "RESULT ";
/// The version the script and its pins are written for.
const LIFETIMES_VERSION: &str = "0.11.3";

const PARAMETERS: [&str; 7] = ["bg.r", "bg.alpha", "bg.a", "bg.b", "gg.p", "gg.q", "gg.v"];
const LOG_LIKELIHOODS: [&str; 2] = ["bg.log_likelihood", "gg.log_likelihood"];
const SUMS: [&str; 3] = ["sum.p_alive", "sum.expected_purchases", "sum.clv"];

#[derive(Debug, Parser)]
#[command(
    name = "crm-clv",
    about = "BG/NBD + Gamma-Gamma fits and CLV scoring of segmentation, timed with peak RSS against Python lifetimes 0.11.3 on the same data in the same run"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Task {
    /// Both fits only.
    Fit,
    /// Both fits, then P(alive), expected purchases and CLV for every customer.
    Score,
}

impl Task {
    fn as_str(self) -> &'static str {
        match self {
            Self::Fit => "fit",
            Self::Score => "score",
        }
    }
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run both measurements on both sides and print the table.
    Run(RunArgs),
    /// Only write the synthetic customers' CSV.
    Generate {
        #[arg(long)]
        out: PathBuf,
        #[arg(long, default_value_t = 1_000_000)]
        customers: u64,
        #[arg(long, default_value_t = 20_261_124)]
        seed: u64,
        #[arg(long, value_enum, default_value = "day")]
        resolution: Resolution,
    },
    /// One measurement of our side (what `run` starts as a child).
    #[command(hide = true)]
    ChildOurs {
        #[arg(long)]
        csv: PathBuf,
        #[arg(long, value_enum)]
        task: Task,
        #[arg(long, default_value_t = 1)]
        repeat: usize,
    },
}

#[derive(Debug, Clone, clap::Args)]
struct RunArgs {
    /// Python with lifetimes 0.11.3 installed (see bench/clv/requirements.txt).
    #[arg(long, default_value = "python3")]
    python: String,
    /// The lifetimes script.
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/clv/lifetimes_bench.py"))]
    script: PathBuf,
    /// The CDNOW summary (id,frequency,recency,T,monetary_value).
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/clv/cdnow_summary.csv"))]
    cdnow: PathBuf,
    /// Fits of CDNOW per side, in one process each; the best time is reported.
    #[arg(long, default_value_t = 3)]
    fit_repeat: usize,
    /// Synthetic customers of the fit + score measurement.
    #[arg(long, default_value_t = 1_000_000)]
    customers: u64,
    /// Seed of the synthetic customers: the same seed and size give the same file.
    #[arg(long, default_value_t = 20_261_124)]
    seed: u64,
    /// Rounds of the fit + score measurement (each side once per round, alternating, each in
    /// a new process); the best time is reported.
    #[arg(long, default_value_t = 2)]
    rounds: usize,
    /// Resolutions of the synthetic customers, comma separated: `day` (what the service sees:
    /// many customers share a pattern) and `continuous` (exact times and spends: no two alike).
    #[arg(long, value_enum, value_delimiter = ',', default_value = "day,continuous")]
    resolutions: Vec<Resolution>,
    /// Skip the fit + score measurement (CDNOW only).
    #[arg(long)]
    no_score: bool,
    /// Largest relative difference allowed between the two sides' parameters,
    /// log-likelihoods and sums.
    #[arg(long, default_value_t = 1e-4)]
    tolerance: f64,
    /// Where the synthetic CSV goes (default: a new directory under the temp dir).
    #[arg(long)]
    work_dir: Option<PathBuf>,
    /// Keep the work directory at the end.
    #[arg(long)]
    keep_data: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let outcome = match cli.command {
        Command::Run(args) => run(&args),
        Command::Generate {
            out,
            customers,
            seed,
            resolution,
        } => generate(&out, customers, seed, &CDNOW_LIKE, resolution).map(|made| {
            eprintln!(
                "wrote {}: {} customers ({} repeat buyers, {} purchase days), {} bytes",
                out.display(),
                made.customers,
                made.repeat_buyers,
                made.purchase_days,
                made.bytes
            );
            ExitCode::SUCCESS
        }),
        Command::ChildOurs { csv, task, repeat } => child_ours(&csv, task, repeat),
    };
    match outcome {
        Ok(code) => code,
        Err(error) => {
            eprintln!("crm-clv: {error:#}");
            ExitCode::from(2)
        }
    }
}

// ---- our side, in a child ----

fn child_ours(csv: &Path, task: Task, repeat: usize) -> anyhow::Result<ExitCode> {
    let started = Instant::now();
    let customers = read_summaries(csv)?;
    let parse_s = started.elapsed().as_secs_f64();
    let mut report = match task {
        Task::Fit => ours::fit_only(&customers, repeat)?,
        Task::Score => ours::fit_and_score(&customers)?,
    };
    report.metrics.insert("parse_s".into(), parse_s);
    report
        .metrics
        .insert("peak_rss_kib".into(), peak_rss_kib()? as f64);
    println!("{RESULT_PREFIX}{}", report.to_json());
    Ok(ExitCode::SUCCESS)
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

fn ours_child(csv: &str, task: Task, repeat: usize) -> anyhow::Result<Report> {
    let mut command = std::process::Command::new(std::env::current_exe().context("locate crm-clv")?);
    let repeat = repeat.to_string();
    command.args([
        "child-ours",
        "--csv",
        csv,
        "--task",
        task.as_str(),
        "--repeat",
        repeat.as_str(),
    ]);
    run_child(command, "our measurement", RESULT_PREFIX)
}

fn lifetimes_child(args: &RunArgs, csv: &str, task: Task, extra: &[&str]) -> anyhow::Result<Report> {
    let mut command = std::process::Command::new(&args.python);
    command
        .arg(&args.script)
        .args([csv, "--task", task.as_str()])
        .args(extra);
    run_child(command, "the lifetimes script", "")
}

/// Checks that `--python` can import lifetimes and its stack, and returns its version.
fn lifetimes_version(args: &RunArgs) -> anyhow::Result<String> {
    let hint = "python3 -m venv /tmp/clv-venv\n  \
                /tmp/clv-venv/bin/pip install -r bench/clv/requirements.txt\n\
                and pass --python /tmp/clv-venv/bin/python";
    let probe = std::process::Command::new(&args.python)
        .args([
            "-c",
            "import numpy, scipy, pandas, autograd, lifetimes; print(lifetimes.__version__)",
        ])
        .stdin(Stdio::null())
        .output();
    match probe {
        Ok(output) if output.status.success() => {
            Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
        }
        Ok(output) => {
            let stderr = String::from_utf8_lossy(&output.stderr);
            let last = stderr
                .lines()
                .rev()
                .find(|line| !line.trim().is_empty())
                .unwrap_or("");
            bail!(
                "`{} -c 'import lifetimes'` failed ({last}): the baseline needs lifetimes {LIFETIMES_VERSION} \
                 with numpy, scipy, pandas and autograd. Install them with\n  {hint}",
                args.python
            )
        }
        Err(error) => bail!(
            "cannot run `{}` ({error}): pass --python with the path of a Python that has lifetimes {LIFETIMES_VERSION}, e.g.\n  {hint}",
            args.python
        ),
    }
}

fn run(args: &RunArgs) -> anyhow::Result<ExitCode> {
    if args.fit_repeat == 0 || args.rounds == 0 {
        bail!("--fit-repeat and --rounds must be at least 1");
    }
    let version = lifetimes_version(args)?;
    if version != LIFETIMES_VERSION {
        eprintln!(
            "crm-clv: warning: {} has lifetimes {version}, the baseline is written for {LIFETIMES_VERSION}",
            args.python
        );
    }
    if !args.script.is_file() {
        bail!("no lifetimes script at {} (--script)", args.script.display());
    }
    if !args.cdnow.is_file() {
        bail!("no CDNOW summary at {} (--cdnow)", args.cdnow.display());
    }
    let work_dir = args
        .work_dir
        .clone()
        .unwrap_or_else(|| std::env::temp_dir().join(format!("crm-clv-{}", uuid::Uuid::now_v7().simple())));
    std::fs::create_dir_all(&work_dir).with_context(|| format!("create {}", work_dir.display()))?;
    let outcome = measure_all(args, &version, &work_dir);
    if args.keep_data {
        eprintln!("crm-clv: data kept in {}", work_dir.display());
    } else if let Err(error) = std::fs::remove_dir_all(&work_dir) {
        eprintln!("crm-clv: could not remove {}: {error}", work_dir.display());
    }
    outcome
}

/// One row of the table.
struct Measured {
    name: String,
    customers: u64,
    elapsed_s: f64,
    parse_s: f64,
    peak_rss_kib: f64,
    /// The goal (largest time ratio) for our rows; `None` for the baseline.
    goal: Option<f64>,
    /// Our fits that did not converge (named in the goal column).
    unconverged: Vec<&'static str>,
}

/// Our models whose fit did not converge in this report.
fn unconverged(report: &Report) -> Vec<&'static str> {
    [("BG/NBD", "bg.status"), ("Gamma-Gamma", "gg.status")]
        .into_iter()
        .filter(|(_, key)| report.metric(key).is_ok_and(|status| status != 0.0))
        .map(|(model, _)| model)
        .collect()
}

/// A side's measurement over several runs: the run with the best time, every time, and the
/// largest peak RSS.
struct Best {
    report: Report,
    times: Vec<f64>,
    peak_rss_kib: f64,
}

fn best_of(runs: Vec<Report>) -> anyhow::Result<Best> {
    let mut times = Vec::new();
    let mut peak: f64 = 0.0;
    let mut best: Option<(f64, Report)> = None;
    for run in runs {
        let elapsed = run.metric("elapsed_s")?;
        times.push(elapsed);
        peak = peak.max(run.metric("peak_rss_kib")?);
        if best.as_ref().is_none_or(|(time, _)| elapsed < *time) {
            best = Some((elapsed, run));
        }
    }
    let (_, report) = best.context("no run")?;
    Ok(Best {
        report,
        times,
        peak_rss_kib: peak,
    })
}

fn relative_difference(ours: f64, theirs: f64) -> f64 {
    if theirs == 0.0 {
        ours.abs()
    } else {
        ((ours - theirs) / theirs).abs()
    }
}

/// The side-by-side table of `keys` and the failures beyond the tolerance.
fn compare(
    title: &str,
    keys: &[&str],
    lifetimes: &Report,
    ours: &Report,
    tolerance: f64,
    failures: &mut Vec<String>,
) -> anyhow::Result<(String, f64)> {
    let mut out = format!("| {title} | lifetimes | ours | relative difference |\n|---|---:|---:|---:|\n");
    let mut worst: f64 = 0.0;
    for key in keys {
        let (theirs, mine) = (lifetimes.metric(key)?, ours.metric(key)?);
        let difference = relative_difference(mine, theirs);
        // A NaN on either side is a failure too.
        if difference.is_nan() || difference > tolerance {
            failures.push(format!(
                "{title}: {key}: ours {mine}, lifetimes {theirs} (relative difference {difference:.2e} > {tolerance:.0e})"
            ));
        }
        worst = worst.max(difference);
        out.push_str(&format!(
            "| {key} | {theirs:.9} | {mine:.9} | {difference:.1e} |\n"
        ));
    }
    Ok((out, worst))
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|text| text.split_whitespace().next().map(str::to_owned))
        .unwrap_or_else(|| "?".into())
}

fn measure_all(args: &RunArgs, version: &str, work_dir: &Path) -> anyhow::Result<ExitCode> {
    let mut failures = Vec::new();
    let mut rows = Vec::new();
    let mut notes = Vec::new();
    let mut comparisons = Vec::new();
    notes.push(format!(
        "lifetimes {version} with {}; load average before the run {}",
        args.python,
        load_average()
    ));

    // ---- 1. CDNOW: both fits ----
    let cdnow = args.cdnow.to_string_lossy().into_owned();
    let repeat = args.fit_repeat.to_string();
    eprintln!("crm-clv: CDNOW fits: lifetimes ({} runs)", args.fit_repeat);
    let theirs = lifetimes_child(
        args,
        &cdnow,
        Task::Fit,
        &["--repeat", repeat.as_str(), "--check-cdnow"],
    )?;
    eprintln!("crm-clv: CDNOW fits: ours ({} runs)", args.fit_repeat);
    let mine = ours_child(&cdnow, Task::Fit, args.fit_repeat)?;
    check_converged("CDNOW", &mine, &mut failures);
    let customers = theirs.metric("customers")? as u64;
    if mine.metric("customers")? as u64 != customers {
        failures.push(format!(
            "CDNOW: lifetimes read {customers} customers, ours {}",
            mine.metric("customers")?
        ));
    }
    if theirs.metric("cdnow_matches_lifetimes").unwrap_or(0.0) < 1.0 {
        notes.push(format!(
            "CDNOW: {} is NOT the sample shipped with lifetimes",
            args.cdnow.display()
        ));
    }
    for (name, report, goal) in [
        (
            "lifetimes: BG/NBD + Gamma-Gamma fit, CDNOW (baseline)",
            &theirs,
            None,
        ),
        ("ours: fit_bg_nbd + fit_gamma_gamma, CDNOW", &mine, Some(GOAL_FIT)),
    ] {
        let runs = (1..=args.fit_repeat)
            .map(|run| report.metric(&format!("run.{run}_s")))
            .collect::<anyhow::Result<Vec<f64>>>()?;
        rows.push(Measured {
            name: name.into(),
            customers,
            elapsed_s: report.metric("elapsed_s")?,
            parse_s: report.metric("parse_s")?,
            peak_rss_kib: report.metric("peak_rss_kib")?,
            goal,
            unconverged: unconverged(report),
        });
        notes.push(format!(
            "{name}: best of {} runs in one process: {} ms (the first {:.2} ms); of the best run, BG/NBD {:.2} ms, Gamma-Gamma {:.2} ms{}",
            runs.len(),
            milliseconds(&runs),
            report.metric("first_s")? * 1e3,
            report.metric("fit_bg_s")? * 1e3,
            report.metric("fit_gg_s")? * 1e3,
            fit_detail(report),
        ));
    }
    if let Ok(import_s) = theirs.metric("import_s") {
        notes.push(format!(
            "lifetimes: `import lifetimes` (with numpy, scipy, pandas, autograd) {import_s:.2} s, not included"
        ));
    }
    comparisons.push(compare(
        "CDNOW: parameter",
        &PARAMETERS,
        &theirs,
        &mine,
        args.tolerance,
        &mut failures,
    )?);
    comparisons.push(compare(
        "CDNOW: log-likelihood",
        &LOG_LIKELIHOODS,
        &theirs,
        &mine,
        args.tolerance,
        &mut failures,
    )?);

    // ---- 2. 1,000,000 synthetic customers: fits, scores, CLV ----
    let resolutions: &[Resolution] = if args.no_score { &[] } else { &args.resolutions };
    for &resolution in resolutions {
        score_measurement(
            args,
            work_dir,
            resolution,
            &mut Collected {
                rows: &mut rows,
                notes: &mut notes,
                comparisons: &mut comparisons,
                failures: &mut failures,
            },
        )?;
    }
    if !resolutions.is_empty() {
        notes.push(format!(
            "the generating parameters: BG/NBD r {}, alpha {}, a {}, b {}; Gamma-Gamma p {}, q {}, v {}",
            CDNOW_LIKE.r,
            CDNOW_LIKE.alpha,
            CDNOW_LIKE.a,
            CDNOW_LIKE.b,
            CDNOW_LIKE.p,
            CDNOW_LIKE.q,
            CDNOW_LIKE.v
        ));
    }

    println!();
    println!("{}", table(&rows));
    for note in &notes {
        println!("- {note}");
    }
    println!();
    for (comparison, worst) in &comparisons {
        println!("{comparison}");
        println!("largest relative difference: {worst:.1e}");
        println!();
    }
    if failures.is_empty() {
        println!(
            "- checks: both sides' parameters, log-likelihoods and sums agree within a relative {:.0e}",
            args.tolerance
        );
        Ok(ExitCode::SUCCESS)
    } else {
        for failure in &failures {
            println!("- FAILED: {failure}");
        }
        Ok(ExitCode::from(1))
    }
}

/// Where a measurement's rows, notes, comparisons and failures go.
struct Collected<'a> {
    rows: &'a mut Vec<Measured>,
    notes: &'a mut Vec<String>,
    comparisons: &'a mut Vec<(String, f64)>,
    failures: &'a mut Vec<String>,
}

/// Fit + score + CLV of the synthetic customers at one resolution: the CSV, then `--rounds`
/// rounds of lifetimes and ours, alternating.
fn score_measurement(
    args: &RunArgs,
    work_dir: &Path,
    resolution: Resolution,
    out: &mut Collected<'_>,
) -> anyhow::Result<()> {
    let csv = work_dir.join(format!("customers-{}.csv", resolution.as_str()));
    let started = Instant::now();
    let made = generate(&csv, args.customers, args.seed, &CDNOW_LIKE, resolution)?;
    let generate_s = started.elapsed().as_secs_f64();
    let (label, unit) = match resolution {
        Resolution::Day => ("day resolution", "purchase days"),
        Resolution::Continuous => ("continuous times, no two customers alike", "purchases"),
    };
    eprintln!(
        "crm-clv: generated {} ({} customers, {} repeat buyers, {} MB) in {generate_s:.1} s",
        csv.display(),
        grouped(made.customers),
        grouped(made.repeat_buyers),
        made.bytes / 1_000_000,
    );
    out.notes.push(format!(
        "synthetic customers, {label}: {} ({} repeat buyers, {} {unit}), seed {}, {} MB of CSV, generated in {generate_s:.1} s (not counted)",
        grouped(made.customers),
        grouped(made.repeat_buyers),
        grouped(made.purchase_days),
        args.seed,
        made.bytes / 1_000_000,
    ));
    let csv_text = csv.to_string_lossy().into_owned();
    let mut their_runs = Vec::new();
    let mut my_runs = Vec::new();
    for round in 1..=args.rounds {
        eprintln!(
            "crm-clv: {label}: round {round}/{}: lifetimes, fit + score",
            args.rounds
        );
        their_runs.push(lifetimes_child(args, &csv_text, Task::Score, &[])?);
        eprintln!(
            "crm-clv: {label}: round {round}/{}: ours, fit + score",
            args.rounds
        );
        my_runs.push(ours_child(&csv_text, Task::Score, 1)?);
    }
    let theirs = best_of(their_runs)?;
    let mine = best_of(my_runs)?;
    check_converged(&format!("synthetic, {label}"), &mine.report, out.failures);
    for key in [
        "nonfinite.p_alive",
        "nonfinite.expected_purchases",
        "nonfinite.clv",
    ] {
        let count = theirs.report.metric(key).unwrap_or(0.0);
        if count > 0.0 {
            out.notes.push(format!(
                "lifetimes, {label}: {count} customers with a non-finite {key} (left out of its sum)"
            ));
        }
    }
    for (name, best, goal) in [
        (
            format!("lifetimes: fit both + P(alive), E[X(52 weeks)], 12-month CLV, {label} (baseline)"),
            &theirs,
            None,
        ),
        (
            format!("ours: fit_bg_nbd + fit_gamma_gamma + score_customers, {label}"),
            &mine,
            Some(GOAL_SCORE),
        ),
    ] {
        let report = &best.report;
        out.rows.push(Measured {
            name: name.clone(),
            customers: report.metric("customers")? as u64,
            elapsed_s: report.metric("elapsed_s")?,
            parse_s: report.metric("parse_s")?,
            peak_rss_kib: best.peak_rss_kib,
            goal,
            unconverged: unconverged(report),
        });
        out.notes.push(format!(
            "{name}: best of {:?} s (one process per run); of the best run, BG/NBD fit {:.2} s, Gamma-Gamma fit {:.2} s, scoring {:.2} s; parsing the CSV {:.2} s (not counted){}",
            rounded(&best.times),
            report.metric("fit_bg_s")?,
            report.metric("fit_gg_s")?,
            report.metric("score_s")?,
            report.metric("parse_s")?,
            fit_detail(report),
        ));
    }
    for (what, keys) in [
        ("parameter", &PARAMETERS[..]),
        ("log-likelihood", &LOG_LIKELIHOODS[..]),
        ("sum over all customers", &SUMS[..]),
    ] {
        out.comparisons.push(compare(
            &format!("synthetic, {label}: {what}"),
            keys,
            &theirs.report,
            &mine.report,
            args.tolerance,
            out.failures,
        )?);
    }
    Ok(())
}

/// Fails the run when one of our fits did not converge (the service rejects such a fit,
/// `FitOutcome::rejection`), saying how it ended.
fn check_converged(what: &str, report: &Report, failures: &mut Vec<String>) {
    for (model, prefix) in [("BG/NBD", "bg"), ("Gamma-Gamma", "gg")] {
        let status = report.metric(&format!("{prefix}.status")).unwrap_or(f64::NAN);
        if status != 0.0 {
            failures.push(format!(
                "{what}: our {model} fit ended {} (largest gradient component {:.2e}, tolerance {:.0e}, after {} iterations and {} evaluations): the service would reject this fit",
                ours::status_name(status),
                report.metric(&format!("{prefix}.gradient_norm")).unwrap_or(f64::NAN),
                FitOptions::default().gradient_tolerance,
                report.metric(&format!("{prefix}.iterations")).unwrap_or(f64::NAN),
                report.metric(&format!("{prefix}.evaluations")).unwrap_or(f64::NAN),
            ));
        }
    }
}

/// Iterations and patterns of our fits (lifetimes does not report them).
fn fit_detail(report: &Report) -> String {
    match (
        report.metric("bg.iterations"),
        report.metric("bg.patterns"),
        report.metric("gg.iterations"),
        report.metric("gg.patterns"),
        report.metric("gg.customers"),
    ) {
        (Ok(bg_iterations), Ok(bg_patterns), Ok(gg_iterations), Ok(gg_patterns), Ok(gg_customers)) => {
            format!(
                "; BG/NBD {bg_iterations} BFGS iterations over {} distinct (x, t_x, T) patterns, Gamma-Gamma {gg_iterations} iterations over {} distinct (x, m) of {} repeat buyers",
                grouped(bg_patterns as u64),
                grouped(gg_patterns as u64),
                grouped(gg_customers as u64)
            )
        }
        _ => String::new(),
    }
}

fn milliseconds(times: &[f64]) -> String {
    let parts: Vec<String> = times.iter().map(|time| format!("{:.2}", time * 1e3)).collect();
    format!("[{}]", parts.join(", "))
}

fn rounded(times: &[f64]) -> Vec<f64> {
    times.iter().map(|time| (time * 100.0).round() / 100.0).collect()
}

fn ratio(value: f64) -> String {
    if value >= 10.0 {
        format!("{value:.0}x")
    } else if value >= 0.1 {
        format!("{value:.2}x")
    } else if value >= 0.001 {
        format!("{value:.3}x")
    } else {
        format!("{value:.1e}x")
    }
}

fn duration(seconds: f64) -> String {
    if seconds >= 1.0 {
        format!("{seconds:.2} s")
    } else {
        format!("{:.2} ms", seconds * 1e3)
    }
}

fn table(rows: &[Measured]) -> String {
    let mut out = String::from(
        "| measurement | customers | time | parse (not counted) | peak RSS | time vs lifetimes | RSS vs lifetimes | goal |\n|---|---:|---:|---:|---:|---:|---:|---|\n",
    );
    let mut baseline: Option<&Measured> = None;
    for row in rows {
        if row.goal.is_none() {
            baseline = Some(row);
        }
        let (time_ratio, rss_ratio) = match baseline {
            Some(base) if base.elapsed_s > 0.0 && base.peak_rss_kib > 0.0 => (
                row.elapsed_s / base.elapsed_s,
                row.peak_rss_kib / base.peak_rss_kib,
            ),
            _ => (f64::NAN, f64::NAN),
        };
        let mut goal = match row.goal {
            None => "(baseline)".to_owned(),
            Some(goal) if time_ratio <= goal => format!("met (<= {goal}x)"),
            Some(goal) => format!("**missed** (<= {goal}x)"),
        };
        if !row.unconverged.is_empty() {
            goal.push_str(&format!(
                "; **{} fit not converged**",
                row.unconverged.join(" and ")
            ));
        }
        out.push_str(&format!(
            "| {} | {} | {} | {} | {} MiB | {} | {} | {} |\n",
            row.name,
            grouped(row.customers),
            duration(row.elapsed_s),
            duration(row.parse_s),
            grouped((row.peak_rss_kib / 1024.0).round() as u64),
            ratio(time_ratio),
            ratio(rss_ratio),
            goal,
        ));
    }
    out
}
