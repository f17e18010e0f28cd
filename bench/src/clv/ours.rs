//! Our side of `crm-clv`'s measurements: segmentation's customer-value models called as the
//! service calls them (`fit_bg_nbd`, `fit_gamma_gamma` with [`FitOptions::default`], then
//! `score_customers`), on summaries already parsed (parsing is timed apart by the caller).
//!
//! Results go into a [`Report`] of flat metrics, under the same keys the `lifetimes` script
//! (`bench/clv/lifetimes_bench.py`) uses:
//!
//! - `elapsed_s` (the measured work), `fit_bg_s`, `fit_gg_s`, `score_s`;
//! - `bg.r`, `bg.alpha`, `bg.a`, `bg.b`, `gg.p`, `gg.q`, `gg.v`: the fitted parameters in the
//!   data's units; `bg.log_likelihood`, `gg.log_likelihood`: each model's total
//!   log-likelihood at them; `gg.customers`: customers the spend model was fitted on;
//!   `bg.status`, `gg.status` ([`status_number`], 0 = converged), `bg.gradient_norm`,
//!   `gg.gradient_norm`, iterations, evaluations and patterns (ours only);
//! - after scoring, `sum.p_alive`, `sum.expected_purchases` (over the horizon) and `sum.clv`
//!   over all customers: the checksums both sides must agree on.

use std::time::Instant;

use anyhow::Context;
use crm_segmentation::domain::clv::{
    BgNbdParams, ClvSettings, CustomerSummary, FitOptions, FitStatus, GammaGammaParams, ModelFit, TimeUnit,
    ValueModel, ValueSettings, fit_bg_nbd, fit_gamma_gamma, score_customers,
};

use crate::recompute::summary::Report;

/// The `t` of "expected purchases in the next t weeks" (a year).
pub const PURCHASES_HORIZON_WEEKS: f64 = 52.0;
/// The CLV settings: `lifetimes`' `customer_lifetime_value(time=12, discount_rate=0.01,
/// freq="W")`, spend as value (margin 1).
pub const CLV_MONTHS: u32 = 12;
pub const CLV_MONTHLY_DISCOUNT_RATE: f64 = 0.01;

/// The scoring settings matching the `lifetimes` calls of the baseline.
pub fn value_settings() -> ValueSettings {
    ValueSettings {
        purchases_horizon: PURCHASES_HORIZON_WEEKS,
        clv: ClvSettings {
            months: CLV_MONTHS,
            monthly_discount_rate: CLV_MONTHLY_DISCOUNT_RATE,
            time_unit: TimeUnit::Week,
            margin: 1.0,
        },
    }
}

/// Both fits and how long each took.
#[derive(Debug, Clone, Copy)]
pub struct Fitted {
    pub transactions: ModelFit<BgNbdParams>,
    pub spend: ModelFit<GammaGammaParams>,
    pub bg_s: f64,
    pub gg_s: f64,
}

/// BG/NBD on every customer, then Gamma-Gamma (on the repeat buyers with a positive spend,
/// which `fit_gamma_gamma` selects itself, as `lifetimes` is fitted on `frequency > 0`).
/// A fit that ends without converging is kept (its status goes into the report, and the
/// driver fails the run on it: the service rejects such a fit), so the run still shows its
/// time and how far its parameters are from lifetimes'.
pub fn fit(customers: &[CustomerSummary]) -> anyhow::Result<Fitted> {
    let options = FitOptions::default();
    let started = Instant::now();
    let transactions = fit_bg_nbd(customers, &options).context("fit_bg_nbd")?;
    let bg_s = started.elapsed().as_secs_f64();
    let started = Instant::now();
    let spend = fit_gamma_gamma(customers, &options).context("fit_gamma_gamma")?;
    let gg_s = started.elapsed().as_secs_f64();
    Ok(Fitted {
        transactions,
        spend,
        bg_s,
        gg_s,
    })
}

/// A fit's status as a number for the report (0 converged); [`status_name`] reads it back.
pub fn status_number(status: FitStatus) -> f64 {
    match status {
        FitStatus::Converged => 0.0,
        FitStatus::IterationLimit => 1.0,
        FitStatus::NoProgress => 2.0,
        FitStatus::ParameterAtLimit => 3.0,
    }
}

pub fn status_name(number: f64) -> &'static str {
    match number as i64 {
        0 => "converged",
        1 => "at the iteration limit (IterationLimit)",
        2 => "without progress before converging (NoProgress)",
        3 => "with a parameter at its limit (ParameterAtLimit)",
        _ => "with an unknown status",
    }
}

fn put_fit(report: &mut Report, fitted: &Fitted) {
    let BgNbdParams { r, alpha, a, b } = fitted.transactions.params;
    let GammaGammaParams { p, q, v } = fitted.spend.params;
    let metrics = [
        ("bg.r", r),
        ("bg.alpha", alpha),
        ("bg.a", a),
        ("bg.b", b),
        ("bg.log_likelihood", fitted.transactions.log_likelihood),
        ("bg.iterations", f64::from(fitted.transactions.iterations)),
        ("bg.evaluations", f64::from(fitted.transactions.evaluations)),
        ("bg.patterns", fitted.transactions.patterns as f64),
        ("bg.customers", fitted.transactions.customers as f64),
        ("bg.status", status_number(fitted.transactions.status)),
        ("bg.gradient_norm", fitted.transactions.gradient_norm),
        ("gg.p", p),
        ("gg.q", q),
        ("gg.v", v),
        ("gg.log_likelihood", fitted.spend.log_likelihood),
        ("gg.iterations", f64::from(fitted.spend.iterations)),
        ("gg.evaluations", f64::from(fitted.spend.evaluations)),
        ("gg.patterns", fitted.spend.patterns as f64),
        ("gg.customers", fitted.spend.customers as f64),
        ("gg.status", status_number(fitted.spend.status)),
        ("gg.gradient_norm", fitted.spend.gradient_norm),
        ("fit_bg_s", fitted.bg_s),
        ("fit_gg_s", fitted.gg_s),
    ];
    for (key, value) in metrics {
        report.metrics.insert(key.into(), value);
    }
}

/// The fit measurement: both fits, `repeat` times in this process; `elapsed_s` is the best,
/// `first_s` the first, `run.<n>_s` each. The parameters are the last run's (every run
/// computes the same).
pub fn fit_only(customers: &[CustomerSummary], repeat: usize) -> anyhow::Result<Report> {
    let mut report = Report::default();
    let mut best = f64::INFINITY;
    for run in 1..=repeat.max(1) {
        let started = Instant::now();
        let fitted = fit(customers)?;
        let elapsed = started.elapsed().as_secs_f64();
        report.metrics.insert(format!("run.{run}_s"), elapsed);
        if run == 1 {
            report.metrics.insert("first_s".into(), elapsed);
        }
        if elapsed < best {
            best = elapsed;
            put_fit(&mut report, &fitted);
        }
    }
    report.metrics.insert("elapsed_s".into(), best);
    report.metrics.insert("customers".into(), customers.len() as f64);
    Ok(report)
}

/// The full measurement: both fits, then P(alive), expected purchases over the horizon and
/// potential value (CLV) for every customer with `score_customers`. `elapsed_s` covers all
/// of it; the sums are taken after the clock stops.
pub fn fit_and_score(customers: &[CustomerSummary]) -> anyhow::Result<Report> {
    let started = Instant::now();
    let fitted = fit(customers)?;
    let scoring = Instant::now();
    let model = ValueModel {
        transactions: fitted.transactions.params,
        spend: fitted.spend.params,
    };
    let scores = score_customers(&model, customers, &value_settings()).context("score_customers")?;
    let score_s = scoring.elapsed().as_secs_f64();
    let elapsed_s = started.elapsed().as_secs_f64();

    let mut report = Report::default();
    put_fit(&mut report, &fitted);
    let (mut alive, mut purchases, mut clv) = (0.0, 0.0, 0.0);
    for (index, score) in scores.iter().enumerate() {
        let value = score
            .as_ref()
            .map_err(|error| anyhow::anyhow!("customer {index} ({:?}): {error}", customers.get(index)))?;
        alive += value.probability_alive;
        purchases += value.expected_purchases;
        clv += value.potential_value;
    }
    for (key, value) in [
        ("elapsed_s", elapsed_s),
        ("score_s", score_s),
        ("customers", customers.len() as f64),
        ("sum.p_alive", alive),
        ("sum.expected_purchases", purchases),
        ("sum.clv", clv),
    ] {
        report.metrics.insert(key.into(), value);
    }
    Ok(report)
}
