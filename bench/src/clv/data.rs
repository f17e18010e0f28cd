//! The customers of `crm-clv`'s large measurement, and the summary CSV both sides read.
//!
//! The CSV has one customer per line, in the models' units (weeks at day resolution):
//!
//! ```text
//! frequency,recency,T,monetary_value
//! 2,30.428571428571427,38.857142857142854,22.35
//! ```
//!
//! (`crm-clv` also reads `tests/fixtures/clv/cdnow_summary.csv`, which has an `id` column
//! first: columns are found by name.) Numbers are written as Rust prints an `f64`, the
//! shortest text that reads back to the same value, so Python (pandas with
//! `float_precision="round_trip"`) and Rust parse the same bits.
//!
//! The customers are drawn from the models' own generative processes, with parameters close
//! to what both fit on CDNOW (the 2,357-customer sample of `lifetimes`), and CDNOW's shape:
//!
//! - the first purchase falls on one of 84 days (12 weeks), 27 to 39 weeks before the
//!   calibration end, so T is 189 to 272 days (CDNOW: 27.0 to 38.86 weeks);
//! - BG/NBD: a purchase rate λ ~ Gamma(r, rate α) per week and a dropout probability
//!   p ~ Beta(a, b); purchases follow a Poisson process of rate λ from the first purchase,
//!   and after each repeat purchase the customer drops out with probability p (the process
//!   of `lifetimes.generate_data.beta_geometric_nbd_model`);
//! - Gamma-Gamma: ν ~ Gamma(q, rate v) per customer, each purchase's spend ~ Gamma(p, rate ν),
//!   rounded to cents (at least 0.01);
//! - purchase times are cut to days and the customer is summarised with segmentation's own
//!   [`summarize_purchase_days`] (same-day purchases are one purchase day with their spends
//!   summed; frequency counts the repeat days; monetary value is the mean spend of the repeat
//!   days), as the service does.
//!
//! That is [`Resolution::Day`], what the service sees. [`Resolution::Continuous`] is a
//! stress variant with the same processes: times are not cut to days (the first purchase at
//! any moment of the 84 days, purchases at their exact times) and spends are not rounded, so
//! no two customers share a BG/NBD pattern (x, t_x, T) or a Gamma-Gamma pattern (x, m), and
//! nothing can be computed once for several customers. Frequency counts repeat purchases.
//!
//! The random numbers come from a SplitMix64 ([`Rng`]), seeded, so the same seed, size and
//! resolution give the same file byte for byte.

use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::Path;

use anyhow::{Context, bail};
use crm_segmentation::domain::clv::{CustomerSummary, DAYS_PER_WEEK, summarize_purchase_days};

pub use crate::recompute::data::Rng;

/// The header line of the CSV written here.
pub const CSV_HEADER: &str = "frequency,recency,T,monetary_value";

/// The generative parameters: about CDNOW's fitted BG/NBD (Fader, Hardie & Lee 2005:
/// r = 0.243, α = 4.414, a = 0.793, b = 2.426) and Gamma-Gamma (p = 6.25, q = 3.74,
/// v = 15.44).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GenerativeParams {
    pub r: f64,
    pub alpha: f64,
    pub a: f64,
    pub b: f64,
    pub p: f64,
    pub q: f64,
    pub v: f64,
}

pub const CDNOW_LIKE: GenerativeParams = GenerativeParams {
    r: 0.243,
    alpha: 4.414,
    a: 0.793,
    b: 2.426,
    p: 6.25,
    q: 3.74,
    v: 15.44,
};

/// Shortest age, in days (27 weeks).
pub const MIN_AGE_DAYS: i64 = 189;
/// Days on which first purchases fall (12 weeks): ages are 189 to 272 days.
pub const FIRST_PURCHASE_DAYS: u64 = 84;
/// The calibration end as a day number (2026-06-30); only differences matter.
pub const CALIBRATION_END_DAY: i64 = 20_634;
/// A bound on one customer's purchases, so an extreme draw (a very high rate and a tiny
/// dropout probability) cannot run for long; a customer at the bound simply stops buying.
const MAX_PURCHASES: usize = 10_000;

/// How the synthetic customers' times and spends are recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, clap::ValueEnum)]
pub enum Resolution {
    /// Purchase days and spends in cents, summarised with [`summarize_purchase_days`] (what the
    /// service does): many customers share a pattern.
    Day,
    /// Exact times and spends: every customer is a pattern of their own.
    Continuous,
}

impl Resolution {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Day => "day",
            Self::Continuous => "continuous",
        }
    }
}

/// What [`generate`] wrote.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Generated {
    pub customers: u64,
    /// Customers with frequency > 0 (those the spend model is fitted on).
    pub repeat_buyers: u64,
    /// Purchase days (purchases, for [`Resolution::Continuous`]) over all customers, first
    /// ones included.
    pub purchase_days: u64,
    pub bytes: u64,
}

/// Gamma(shape, scale) by Marsaglia and Tsang's method (shape < 1 through shape + 1 and
/// a uniform power).
pub fn gamma(rng: &mut Rng, shape: f64, scale: f64) -> f64 {
    if shape < 1.0 {
        let boost = (1.0 - rng.unit()).powf(1.0 / shape);
        return gamma(rng, shape + 1.0, scale) * boost;
    }
    let d = shape - 1.0 / 3.0;
    let c = 1.0 / (9.0 * d).sqrt();
    loop {
        let x = rng.normal();
        let base = 1.0 + c * x;
        if base <= 0.0 {
            continue;
        }
        let v = base * base * base;
        let u = 1.0 - rng.unit();
        if u < 1.0 - 0.0331 * x.powi(4) || u.ln() < 0.5 * x * x + d * (1.0 - v + v.ln()) {
            return d * v * scale;
        }
    }
}

/// Beta(a, b) as X / (X + Y) with X ~ Gamma(a), Y ~ Gamma(b).
pub fn beta(rng: &mut Rng, a: f64, b: f64) -> f64 {
    let x = gamma(rng, a, 1.0);
    let y = gamma(rng, b, 1.0);
    if x + y > 0.0 { x / (x + y) } else { 0.5 }
}

/// Exponential with this rate.
pub fn exponential(rng: &mut Rng, rate: f64) -> f64 {
    -(1.0 - rng.unit()).ln() / rate
}

/// One customer's purchase days (`(day, spend)`, ascending, first purchase first) as of
/// [`CALIBRATION_END_DAY`].
pub fn draw_purchase_days(rng: &mut Rng, params: &GenerativeParams, days: &mut Vec<(i64, f64)>) {
    days.clear();
    let age_days = MIN_AGE_DAYS + rng.below(FIRST_PURCHASE_DAYS) as i64;
    let first_day = CALIBRATION_END_DAY - age_days;
    let rate = gamma(rng, params.r, 1.0 / params.alpha);
    let dropout = beta(rng, params.a, params.b);
    let spend_rate = gamma(rng, params.q, 1.0 / params.v);
    let spend = |rng: &mut Rng| {
        let amount = gamma(rng, params.p, 1.0 / spend_rate);
        ((amount * 100.0).round() / 100.0).max(0.01)
    };
    days.push((first_day, spend(rng)));
    if !(rate > 0.0 && rate.is_finite()) {
        return;
    }
    let mut time = 0.0;
    while days.len() < MAX_PURCHASES {
        time += exponential(rng, rate);
        // Weeks since the first purchase; past the calibration end nothing is observed.
        if time * DAYS_PER_WEEK > age_days as f64 {
            break;
        }
        let offset = (time * DAYS_PER_WEEK).floor() as i64;
        days.push((first_day + offset.min(age_days), spend(rng)));
        if rng.unit() < dropout {
            break;
        }
    }
}

/// One customer of [`Resolution::Continuous`]: the same draws as [`draw_purchase_days`],
/// summarised at exact times (weeks) with exact spends.
pub fn draw_continuous(rng: &mut Rng, params: &GenerativeParams) -> CustomerSummary {
    let age = (MIN_AGE_DAYS as f64 + rng.unit() * FIRST_PURCHASE_DAYS as f64) / DAYS_PER_WEEK;
    let rate = gamma(rng, params.r, 1.0 / params.alpha);
    let dropout = beta(rng, params.a, params.b);
    let spend_rate = gamma(rng, params.q, 1.0 / params.v);
    let mut summary = CustomerSummary {
        frequency: 0,
        recency: 0.0,
        age,
        monetary_value: 0.0,
    };
    // The first purchase's spend is drawn (as in the day variant) but not part of m.
    gamma(rng, params.p, 1.0 / spend_rate);
    if !(rate > 0.0 && rate.is_finite()) {
        return summary;
    }
    let mut time = 0.0;
    let mut total = 0.0;
    while (summary.frequency as usize) < MAX_PURCHASES {
        time += exponential(rng, rate);
        if time > age {
            break;
        }
        summary.frequency += 1;
        summary.recency = time;
        total += gamma(rng, params.p, 1.0 / spend_rate);
        if rng.unit() < dropout {
            break;
        }
    }
    if summary.frequency > 0 {
        summary.monetary_value = total / f64::from(summary.frequency);
    }
    summary
}

/// Writes `customers` synthetic customers to `path` (see the module's documentation).
pub fn generate(
    path: &Path,
    customers: u64,
    seed: u64,
    params: &GenerativeParams,
    resolution: Resolution,
) -> anyhow::Result<Generated> {
    let file = File::create(path).with_context(|| format!("create {}", path.display()))?;
    let mut out = BufWriter::with_capacity(1 << 20, file);
    writeln!(out, "{CSV_HEADER}")?;
    let mut bytes = CSV_HEADER.len() as u64 + 1;
    let mut rng = Rng::new(seed);
    let mut days = Vec::new();
    let mut line = String::new();
    let mut made = Generated {
        customers: 0,
        repeat_buyers: 0,
        purchase_days: 0,
        bytes: 0,
    };
    for _ in 0..customers {
        let summary = match resolution {
            Resolution::Day => {
                draw_purchase_days(&mut rng, params, &mut days);
                summarize_purchase_days(&days, CALIBRATION_END_DAY)
                    .context("summarise a synthetic customer")?
                    .context("a synthetic customer has no purchase by the calibration end")?
            }
            Resolution::Continuous => draw_continuous(&mut rng, params),
        };
        if let Err(reason) = summary.check() {
            bail!("a synthetic customer is invalid ({reason}): {summary:?}");
        }
        made.customers += 1;
        made.purchase_days += u64::from(summary.frequency) + 1;
        if summary.frequency > 0 {
            made.repeat_buyers += 1;
        }
        line.clear();
        use std::fmt::Write as _;
        writeln!(
            line,
            "{},{},{},{}",
            summary.frequency, summary.recency, summary.age, summary.monetary_value
        )?;
        out.write_all(line.as_bytes())?;
        bytes += line.len() as u64;
    }
    out.flush()?;
    made.bytes = bytes;
    Ok(made)
}

/// Reads a summary CSV (columns `frequency`, `recency`, `T`, `monetary_value` found by name
/// in the header; others, such as `id`, ignored).
pub fn read_summaries(path: &Path) -> anyhow::Result<Vec<CustomerSummary>> {
    let file = File::open(path).with_context(|| format!("open {}", path.display()))?;
    let mut reader = BufReader::with_capacity(1 << 20, file);
    let mut header = String::new();
    reader.read_line(&mut header)?;
    let names: Vec<&str> = header.trim().split(',').map(str::trim).collect();
    let column = |name: &str| {
        names
            .iter()
            .position(|candidate| *candidate == name)
            .with_context(|| format!("{}: no column {name} in {:?}", path.display(), header.trim()))
    };
    let columns = [
        column("frequency")?,
        column("recency")?,
        column("T")?,
        column("monetary_value")?,
    ];
    let mut customers = Vec::new();
    let mut line = String::new();
    let mut number_of_line = 1;
    loop {
        line.clear();
        if reader.read_line(&mut line)? == 0 {
            break;
        }
        number_of_line += 1;
        let text = line.trim();
        if text.is_empty() {
            continue;
        }
        let mut wanted: [Option<&str>; 4] = [None; 4];
        for (at, field) in text.split(',').enumerate() {
            for (slot, column) in wanted.iter_mut().zip(columns) {
                if column == at {
                    *slot = Some(field);
                }
            }
        }
        let number = |slot: usize| -> anyhow::Result<f64> {
            let field = wanted[slot]
                .with_context(|| format!("{}: line {number_of_line}: too few fields", path.display()))?;
            field.parse().with_context(|| {
                format!(
                    "{}: line {number_of_line}: not a number: {field:?}",
                    path.display()
                )
            })
        };
        let frequency = number(0)?;
        if !(frequency >= 0.0 && frequency.fract() == 0.0 && frequency <= f64::from(u32::MAX)) {
            bail!(
                "{}: line {number_of_line}: frequency {frequency} is not a count",
                path.display()
            );
        }
        customers.push(CustomerSummary {
            frequency: frequency as u32,
            recency: number(1)?,
            age: number(2)?,
            monetary_value: number(3)?,
        });
    }
    Ok(customers)
}
