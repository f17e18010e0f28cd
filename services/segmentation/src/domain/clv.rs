//! Customer-value models, pure (no IO, no clock): BG/NBD for the transaction process (Fader,
//! Hardie & Lee 2005, "Counting Your Customers the Easy Way"), Gamma-Gamma for the spend per
//! transaction (Fader & Hardie, "The Gamma-Gamma Model of Monetary Value", 2013), and the
//! discounted potential value that the Python `lifetimes` library 0.11.3 computes in
//! `GammaGammaFitter.customer_lifetime_value`.
//!
//! A customer enters the models as a [`CustomerSummary`] (DESIGN §5): frequency = distinct
//! purchase days after the first, recency and age measured from the first purchase, in weeks
//! at day resolution ([`summarize_purchase_days`]), exactly as `lifetimes`'
//! `summary_data_from_transaction_data` with daily periods, divided by 7.
//!
//! Fitting is maximum likelihood: customers are compressed into distinct patterns with
//! weights (the likelihood only depends on the pattern), times are rescaled so that the
//! largest age is 1 (as `lifetimes` does, for conditioning), and BFGS on the log-parameters
//! with a strong-Wolfe line search minimises the mean negative log-likelihood using analytic
//! gradients. A fit reports whether it converged; data that cannot identify a model at all is
//! a [`ClvError`] saying why, never NaN parameters.
//!
//! Per-customer values are checked to be finite (else [`ClvError::NonFinite`]); probabilities
//! stay in [0, 1], expected purchases, spends and values are never negative.

use std::cmp::Ordering;
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

/// Days per week: the models' time unit is the week, measured at day resolution.
pub const DAYS_PER_WEEK: f64 = 7.0;

/// Fewest customers a fit accepts: one customer cannot tell apart the population's
/// heterogeneity from its own behaviour.
pub const MIN_FIT_CUSTOMERS: u64 = 2;

/// A log-parameter further than this from 0 stops the optimiser: the parameter is running
/// off to 0 or infinity (times and spends are rescaled, so sensible values are near 1).
const LOG_PARAMETER_LIMIT: f64 = 30.0;
/// A log-parameter further than this from 0 when the optimiser stops (converged or stuck) is
/// reported as [`FitStatus::ParameterAtLimit`]: the likelihood is (numerically) maximised at
/// the edge of the parameter space, so the data does not identify the model.
const LOG_PARAMETER_BOUNDARY: f64 = 15.0;
/// Largest change of any log-parameter in one line-search step (a factor e^10), so a bad
/// direction cannot overflow `exp`.
const MAX_LOG_STEP: f64 = 10.0;
/// Most terms summed for one hypergeometric series. With z <= 0.999 the series needs about
/// 40,000 terms; the bound only protects against z indistinguishable from 1.
const MAX_SERIES_TERMS: u32 = 1_000_000;

// ---------------------------------------------------------------------------------------
// Errors and inputs
// ---------------------------------------------------------------------------------------

/// Why a model cannot be fitted, or a value cannot be computed. The fitting variants are
/// preconditions on the data (the service answers FAILED_PRECONDITION with the message).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ClvError {
    #[error("no customers: a model cannot be fitted without data")]
    NoCustomers,
    #[error(
        "only {customers} customer(s): at least {required} are needed to separate the \
         population's heterogeneity from one customer's behaviour"
    )]
    TooFewCustomers { customers: u64, required: u64 },
    #[error(
        "no customer has a repeat purchase (everyone bought on a single day), so purchase \
         rates and dropout cannot be estimated"
    )]
    NoRepeatBuyers,
    #[error("no repeat buyer has a positive average spend, so the spend model cannot be fitted")]
    NoPositiveRepeatSpend,
    #[error("every customer was first seen on the calibration end day, so no time was observed")]
    NoObservedTime,
    #[error("customer {index}: {reason}")]
    InvalidCustomer { index: usize, reason: &'static str },
    #[error("invalid customer summary: {0}")]
    InvalidSummary(&'static str),
    #[error("purchase days must be ascending (day {day} after day {previous})")]
    UnsortedPurchaseDays { previous: i64, day: i64 },
    #[error("invalid {name}: {reason}")]
    InvalidParameter {
        name: &'static str,
        reason: &'static str,
    },
    #[error(
        "the spend model has no finite mean (q = {q}; it needs q > 1), so expected spend is \
         unbounded"
    )]
    UnboundedSpend { q: f64 },
    #[error("{quantity} is not a finite number")]
    NonFinite { quantity: &'static str },
}

/// One customer's history as the models see it, in the model's time unit (weeks by the
/// suite's convention): `x`, `t_x`, `T` and the average repeat spend `m` of the literature.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CustomerSummary {
    /// Repeat purchases: distinct purchase days after the first (x).
    pub frequency: u32,
    /// Time from the first to the last purchase (t_x); 0 without repeat purchases.
    pub recency: f64,
    /// Time from the first purchase to the end of the calibration period (T).
    pub age: f64,
    /// Mean spend of the repeat purchase days (the first day excluded); 0 without repeats.
    pub monetary_value: f64,
}

impl CustomerSummary {
    /// Checks what the models assume: finite times with 0 <= recency <= age, recency 0
    /// without repeat purchases, a finite monetary value.
    pub fn check(&self) -> Result<(), &'static str> {
        if !(self.age.is_finite() && self.age >= 0.0) {
            return Err("age must be finite and non-negative");
        }
        if !(self.recency.is_finite() && self.recency >= 0.0) {
            return Err("recency must be finite and non-negative");
        }
        if self.recency > self.age {
            return Err("recency exceeds age");
        }
        if self.frequency == 0 && self.recency > 0.0 {
            return Err("recency must be 0 without repeat purchases");
        }
        if !self.monetary_value.is_finite() {
            return Err("monetary value must be finite");
        }
        Ok(())
    }
}

/// A customer's summary from their purchase days: `(epoch day, spend that day)` ascending
/// (several entries for one day are summed, as `lifetimes` sums a period's transactions),
/// as of `calibration_end_day` inclusive; later days are ignored. Times are in weeks at day
/// resolution; the monetary value is the mean spend of the repeat days. `None` when the
/// customer made no purchase by the end day (they are not in the population yet).
///
/// Days are purchase days: a day with only a refund is not a purchase and must not be passed.
pub fn summarize_purchase_days(
    purchase_days: &[(i64, f64)],
    calibration_end_day: i64,
) -> Result<Option<CustomerSummary>, ClvError> {
    let mut first: Option<i64> = None;
    let mut current: Option<(i64, f64)> = None;
    let mut repeat_days: u32 = 0;
    let mut repeat_spend = 0.0;
    for &(day, spend) in purchase_days {
        if let Some((previous, _)) = current
            && day < previous
        {
            return Err(ClvError::UnsortedPurchaseDays { previous, day });
        }
        if day > calibration_end_day {
            break;
        }
        if !spend.is_finite() {
            return Err(ClvError::InvalidSummary("a day's spend is not finite"));
        }
        current = match current {
            Some((previous, total)) if previous == day => Some((day, total + spend)),
            Some((previous, total)) => {
                if first != Some(previous) {
                    repeat_spend += total;
                }
                repeat_days = repeat_days
                    .checked_add(1)
                    .ok_or(ClvError::InvalidSummary("too many purchase days"))?;
                Some((day, spend))
            }
            None => {
                first = Some(day);
                Some((day, spend))
            }
        };
    }
    let (Some(first), Some((last, last_total))) = (first, current) else {
        return Ok(None);
    };
    if last != first {
        repeat_spend += last_total;
    }
    let span = |later: i64| -> Result<f64, ClvError> {
        later
            .checked_sub(first)
            .map(|days| days as f64 / DAYS_PER_WEEK)
            .ok_or(ClvError::InvalidSummary("purchase days out of range"))
    };
    let summary = CustomerSummary {
        frequency: repeat_days,
        recency: span(last)?,
        age: span(calibration_end_day)?,
        monetary_value: if repeat_days == 0 {
            0.0
        } else {
            repeat_spend / f64::from(repeat_days)
        },
    };
    if !summary.monetary_value.is_finite() {
        return Err(ClvError::NonFinite {
            quantity: "monetary value",
        });
    }
    Ok(Some(summary))
}

// ---------------------------------------------------------------------------------------
// Models
// ---------------------------------------------------------------------------------------

/// BG/NBD parameters: purchase rates ~ Gamma(r, alpha) (alpha in the data's time unit),
/// dropout probability after each purchase ~ Beta(a, b).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BgNbdParams {
    pub r: f64,
    pub alpha: f64,
    pub a: f64,
    pub b: f64,
}

/// Gamma-Gamma parameters: a customer's transaction values ~ Gamma(p, nu), with
/// nu ~ Gamma(q, v) across customers (v in money).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GammaGammaParams {
    pub p: f64,
    pub q: f64,
    pub v: f64,
}

fn check_positive(name: &'static str, value: f64) -> Result<(), ClvError> {
    if value.is_finite() && value > 0.0 {
        Ok(())
    } else {
        Err(ClvError::InvalidParameter {
            name,
            reason: "must be finite and positive",
        })
    }
}

fn finite(quantity: &'static str, value: f64) -> Result<f64, ClvError> {
    if value.is_finite() {
        Ok(value)
    } else {
        Err(ClvError::NonFinite { quantity })
    }
}

fn check_customer(customer: &CustomerSummary) -> Result<(), ClvError> {
    customer.check().map_err(ClvError::InvalidSummary)
}

impl BgNbdParams {
    /// The same model with every customer's dropout probability lowered by `reduction`
    /// (relative, in (0, 1)): the Beta's mean a/(a+b) scaled by 1 - reduction at the same
    /// concentration a+b, so heterogeneity is kept. Purchase rates are unchanged. This is the
    /// textbooks' "5% fewer defections" applied to the fitted population.
    pub fn with_dropout_reduced(&self, reduction: f64) -> Result<Self, ClvError> {
        if !(reduction.is_finite() && reduction > 0.0 && reduction < 1.0) {
            return Err(ClvError::InvalidParameter {
                name: "defection reduction",
                reason: "must be above 0 and below 1",
            });
        }
        let concentration = self.a + self.b;
        let mean = self.a / concentration * (1.0 - reduction);
        Self::new(
            self.r,
            self.alpha,
            mean * concentration,
            (1.0 - mean) * concentration,
        )
    }

    pub fn new(r: f64, alpha: f64, a: f64, b: f64) -> Result<Self, ClvError> {
        let params = Self { r, alpha, a, b };
        params.check()?;
        Ok(params)
    }

    fn check(&self) -> Result<(), ClvError> {
        check_positive("r", self.r)?;
        check_positive("alpha", self.alpha)?;
        check_positive("a", self.a)?;
        check_positive("b", self.b)
    }

    /// Total log-likelihood of the customers (equation 6 of the paper, as `lifetimes`).
    pub fn log_likelihood(&self, customers: &[CustomerSummary]) -> Result<f64, ClvError> {
        self.check()?;
        let mut total = 0.0;
        for (index, customer) in customers.iter().enumerate() {
            customer
                .check()
                .map_err(|reason| ClvError::InvalidCustomer { index, reason })?;
            total += self.customer_log_likelihood(customer);
        }
        finite("log-likelihood", total)
    }

    fn customer_log_likelihood(&self, customer: &CustomerSummary) -> f64 {
        let Self { r, alpha, a, b } = *self;
        let x = f64::from(customer.frequency);
        let a1 = ln_gamma(r + x) - ln_gamma(r) + r * alpha.ln();
        let a2 = ln_gamma(a + b) + ln_gamma(b + x) - ln_gamma(b) - ln_gamma(a + b + x);
        let a3 = -(r + x) * (alpha + customer.age).ln();
        if customer.frequency == 0 {
            return a1 + a2 + a3;
        }
        let a4 = a.ln() - (b + x - 1.0).ln() - (r + x) * (alpha + customer.recency).ln();
        a1 + a2 + log_add_exp(a3, a4)
    }

    /// P(alive | x, t_x, T) (Fader, Hardie & Lee, note 021); 1 without repeat purchases, as
    /// in the model a customer can only drop out right after a purchase.
    pub fn probability_alive(&self, customer: &CustomerSummary) -> Result<f64, ClvError> {
        self.check()?;
        check_customer(customer)?;
        finite("P(alive)", self.probability_alive_unchecked(customer))
    }

    /// Churn risk = 1 - P(alive).
    pub fn churn_risk(&self, customer: &CustomerSummary) -> Result<f64, ClvError> {
        Ok(1.0 - self.probability_alive(customer)?)
    }

    fn probability_alive_unchecked(&self, customer: &CustomerSummary) -> f64 {
        if customer.frequency == 0 {
            return 1.0;
        }
        let x = f64::from(customer.frequency);
        let log_odds_dead = (self.r + x)
            * ((self.alpha + customer.age) / (self.alpha + customer.recency)).ln()
            + (self.a / (self.b + x - 1.0)).ln();
        logistic(-log_odds_dead)
    }

    /// E[X(t) | x, t_x, T]: expected purchases in the next `t` (same unit as the summary),
    /// equation 10 of the paper.
    pub fn conditional_expected_purchases(
        &self,
        t: f64,
        customer: &CustomerSummary,
    ) -> Result<f64, ClvError> {
        self.check()?;
        check_customer(customer)?;
        check_time("t", t)?;
        let if_alive = self
            .purchases_if_alive(customer.frequency, customer.age, t)
            .ok_or(ClvError::NonFinite {
                quantity: "expected purchases",
            })?;
        let expected = self.probability_alive_unchecked(customer) * if_alive;
        Ok(finite("expected purchases", expected)?.max(0.0))
    }

    /// E[X(t) | x, t_x, T] / P(alive): the expected purchases of a customer known to be
    /// alive, which depends on x and T only. Equation 10's numerator, rewritten with Euler's
    /// transformation: with eps = a - 1, c = a + b + x - 1, z = t / (alpha + T + t),
    ///
    /// ```text
    /// c/eps * (1 - (1 - z)^eps * 2F1(a + b - 1 - r, eps; c; z))
    ///   = c * (1 - (1 - z)^eps) / eps - (1 - z)^eps * c * (2F1(..) - 1) / eps
    /// ```
    ///
    /// The series' parameters no longer grow with x (so it converges fast for frequent
    /// buyers), and dividing eps out of the series term by term keeps a = 1 exact instead
    /// of 0/0.
    fn purchases_if_alive(&self, frequency: u32, age: f64, t: f64) -> Option<f64> {
        let Self { r, alpha, a, b } = *self;
        let x = f64::from(frequency);
        let c = a + b + x - 1.0;
        let eps = a - 1.0;
        let p = a + b - 1.0 - r;
        let ln_one_minus_z = -(t / (alpha + age)).ln_1p();
        let z = t / (alpha + age + t);
        let decay = if eps == 0.0 {
            -ln_one_minus_z
        } else {
            -(eps * ln_one_minus_z).exp_m1() / eps
        };
        let tail = hypergeometric_tail(p, eps, c, z)?;
        let value = c * decay - (eps * ln_one_minus_z).exp() * tail;
        value.is_finite().then_some(value.max(0.0))
    }

    /// Sum over months 1..=months of the increase in expected purchases (if alive) during
    /// that month, discounted: `lifetimes`' `_customer_lifetime_value` without P(alive) and
    /// the spend, which factor out.
    fn discounted_purchases_if_alive(&self, frequency: u32, age: f64, settings: &ClvSettings) -> Option<f64> {
        let periods = settings.time_unit.periods_per_month();
        let mut previous = 0.0;
        let mut total = 0.0;
        for month in 1..=settings.months {
            let time = f64::from(month) * periods;
            let cumulative = self.purchases_if_alive(frequency, age, time)?;
            total += (cumulative - previous) / (1.0 + settings.monthly_discount_rate).powf(time / periods);
            previous = cumulative;
        }
        total.is_finite().then_some(total.max(0.0))
    }
}

impl GammaGammaParams {
    pub fn new(p: f64, q: f64, v: f64) -> Result<Self, ClvError> {
        let params = Self { p, q, v };
        params.check()?;
        Ok(params)
    }

    fn check(&self) -> Result<(), ClvError> {
        check_positive("p", self.p)?;
        check_positive("q", self.q)?;
        check_positive("v", self.v)
    }

    /// Total log-likelihood (note 025, equation 1a) over the customers the model is fitted
    /// on: those with repeat purchases and a positive monetary value.
    pub fn log_likelihood(&self, customers: &[CustomerSummary]) -> Result<f64, ClvError> {
        self.check()?;
        let Self { p, q, v } = *self;
        let mut total = 0.0;
        for (index, customer) in customers.iter().enumerate() {
            customer
                .check()
                .map_err(|reason| ClvError::InvalidCustomer { index, reason })?;
            if customer.frequency == 0 || customer.monetary_value <= 0.0 {
                continue;
            }
            let x = f64::from(customer.frequency);
            let m = customer.monetary_value;
            total += ln_gamma(p * x + q) - ln_gamma(p * x) - ln_gamma(q)
                + q * v.ln()
                + (p * x - 1.0) * m.ln()
                + p * x * x.ln()
                - (p * x + q) * (x * m + v).ln();
        }
        finite("log-likelihood", total)
    }

    /// Population mean spend per transaction, v p / (q - 1); unbounded when q <= 1.
    pub fn mean_spend(&self) -> Result<f64, ClvError> {
        self.check()?;
        if self.q <= 1.0 {
            return Err(ClvError::UnboundedSpend { q: self.q });
        }
        finite("mean spend", self.v * self.p / (self.q - 1.0))
    }

    /// E[M | x, m]: the customer's expected average spend per transaction (note 025,
    /// equation 5), a weighted mean of the population mean and their own average. Never
    /// negative (a non-positive average, impossible in the model, counts as 0).
    pub fn conditional_expected_average_spend(
        &self,
        frequency: u32,
        monetary_value: f64,
    ) -> Result<f64, ClvError> {
        let population = self.mean_spend()?;
        if !monetary_value.is_finite() {
            return Err(ClvError::InvalidSummary("monetary value must be finite"));
        }
        Ok(self.expected_average_spend_unchecked(population, frequency, monetary_value))
    }

    fn expected_average_spend_unchecked(
        &self,
        population_mean: f64,
        frequency: u32,
        monetary_value: f64,
    ) -> f64 {
        let px = self.p * f64::from(frequency);
        let weight = px / (px + self.q - 1.0);
        ((1.0 - weight) * population_mean + weight * monetary_value).max(0.0)
    }
}

/// The time unit of the summaries, which fixes how many of them make the month that the
/// CLV horizon and discount rate are expressed in (`lifetimes`' `freq`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TimeUnit {
    Hour,
    Day,
    Week,
    Month,
}

impl TimeUnit {
    /// Units per month, as `lifetimes` counts them: 720 hours, 30 days, 4.345 weeks.
    pub fn periods_per_month(self) -> f64 {
        match self {
            Self::Hour => 30.0 * 24.0,
            Self::Day => 30.0,
            Self::Week => 4.345,
            Self::Month => 1.0,
        }
    }
}

/// How potential value (CLV) is computed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ClvSettings {
    /// Horizon in months (`lifetimes`' `time`).
    pub months: u32,
    /// Discount rate per month (`lifetimes`' `discount_rate`), > -1.
    pub monthly_discount_rate: f64,
    /// Unit of the summaries' times (`lifetimes`' `freq`).
    pub time_unit: TimeUnit,
    /// Fraction of spend that is value (1 = spend itself, as `lifetimes`), >= 0.
    pub margin: f64,
}

impl Default for ClvSettings {
    /// `lifetimes`' defaults (12 months, 1% a month) on the suite's weekly summaries.
    fn default() -> Self {
        Self {
            months: 12,
            monthly_discount_rate: 0.01,
            time_unit: TimeUnit::Week,
            margin: 1.0,
        }
    }
}

impl ClvSettings {
    fn check(&self) -> Result<(), ClvError> {
        if !(self.monthly_discount_rate.is_finite() && self.monthly_discount_rate > -1.0) {
            return Err(ClvError::InvalidParameter {
                name: "monthly_discount_rate",
                reason: "must be finite and greater than -1",
            });
        }
        if !(self.margin.is_finite() && self.margin >= 0.0) {
            return Err(ClvError::InvalidParameter {
                name: "margin",
                reason: "must be finite and non-negative",
            });
        }
        Ok(())
    }
}

fn check_time(name: &'static str, t: f64) -> Result<(), ClvError> {
    if t.is_finite() && t >= 0.0 {
        Ok(())
    } else {
        Err(ClvError::InvalidParameter {
            name,
            reason: "must be finite and non-negative",
        })
    }
}

/// Potential value: what `lifetimes`' `GammaGammaFitter.customer_lifetime_value(bgf,
/// frequency, recency, T, monetary_value, time, discount_rate, freq)` computes (the month by
/// month increase of expected purchases, times the expected average spend, discounted
/// monthly), times the margin. Never negative.
pub fn customer_lifetime_value(
    transactions: &BgNbdParams,
    spend: &GammaGammaParams,
    customer: &CustomerSummary,
    settings: &ClvSettings,
) -> Result<f64, ClvError> {
    transactions.check()?;
    settings.check()?;
    check_customer(customer)?;
    let population_mean = spend.mean_spend()?;
    let discounted = transactions
        .discounted_purchases_if_alive(customer.frequency, customer.age, settings)
        .ok_or(ClvError::NonFinite {
            quantity: "discounted expected purchases",
        })?;
    let average_spend =
        spend.expected_average_spend_unchecked(population_mean, customer.frequency, customer.monetary_value);
    let value =
        settings.margin * average_spend * transactions.probability_alive_unchecked(customer) * discounted;
    Ok(finite("potential value", value)?.max(0.0))
}

/// The two fitted models together.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ValueModel {
    pub transactions: BgNbdParams,
    pub spend: GammaGammaParams,
}

/// What a score run asks of the models.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ValueSettings {
    /// The `t` of "expected purchases in the next t", in the summaries' time unit.
    pub purchases_horizon: f64,
    pub clv: ClvSettings,
}

impl Default for ValueSettings {
    /// A year ahead (52 weeks) and [`ClvSettings::default`].
    fn default() -> Self {
        Self {
            purchases_horizon: 52.0,
            clv: ClvSettings::default(),
        }
    }
}

/// One customer's model values.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CustomerValue {
    pub probability_alive: f64,
    /// 1 - P(alive).
    pub churn_risk: f64,
    /// E[X(t) | x, t_x, T] for t = the settings' purchases horizon.
    pub expected_purchases: f64,
    /// Gamma-Gamma E[M | x, m].
    pub expected_average_spend: f64,
    /// [`customer_lifetime_value`] with the settings' CLV settings.
    pub potential_value: f64,
}

/// Scores many customers, computing the horizon's expected purchases and the discounted
/// purchases once per distinct (frequency, age): the parts that cost series evaluations.
/// The outer error is about the model or settings (every customer would fail); each
/// customer has their own result.
pub fn score_customers(
    model: &ValueModel,
    customers: &[CustomerSummary],
    settings: &ValueSettings,
) -> Result<Vec<Result<CustomerValue, ClvError>>, ClvError> {
    model.transactions.check()?;
    settings.clv.check()?;
    check_time("purchases_horizon", settings.purchases_horizon)?;
    let population_mean = model.spend.mean_spend()?;
    let mut cache: PatternMap<(u32, u64), Option<(f64, f64)>> = PatternMap::default();
    let scores = customers
        .iter()
        .map(|customer| {
            check_customer(customer)?;
            let key = (customer.frequency, (customer.age + 0.0).to_bits());
            let (horizon, discounted) = cache
                .entry(key)
                .or_insert_with(|| {
                    let horizon = model.transactions.purchases_if_alive(
                        customer.frequency,
                        customer.age,
                        settings.purchases_horizon,
                    )?;
                    let discounted = model.transactions.discounted_purchases_if_alive(
                        customer.frequency,
                        customer.age,
                        &settings.clv,
                    )?;
                    Some((horizon, discounted))
                })
                .ok_or(ClvError::NonFinite {
                    quantity: "expected purchases",
                })?;
            let alive = finite(
                "P(alive)",
                model.transactions.probability_alive_unchecked(customer),
            )?;
            let spend = model.spend.expected_average_spend_unchecked(
                population_mean,
                customer.frequency,
                customer.monetary_value,
            );
            Ok(CustomerValue {
                probability_alive: alive,
                churn_risk: 1.0 - alive,
                expected_purchases: finite("expected purchases", alive * horizon)?.max(0.0),
                expected_average_spend: finite("expected average spend", spend)?,
                potential_value: finite(
                    "potential value",
                    settings.clv.margin * spend * alive * discounted,
                )?
                .max(0.0),
            })
        })
        .collect();
    Ok(scores)
}

/// [`score_customers`] for one customer.
pub fn score_customer(
    model: &ValueModel,
    customer: &CustomerSummary,
    settings: &ValueSettings,
) -> Result<CustomerValue, ClvError> {
    score_customers(model, std::slice::from_ref(customer), settings)?
        .into_iter()
        .next()
        .unwrap_or(Err(ClvError::NoCustomers))
}

// ---------------------------------------------------------------------------------------
// Fitting
// ---------------------------------------------------------------------------------------

/// How a fit ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FitStatus {
    /// The gradient of the mean log-likelihood (in log-parameters) is within tolerance, or
    /// within [`FitOptions::precision_limit_tolerance`] where no lower point exists.
    Converged,
    /// `max_iterations` ran out first.
    IterationLimit,
    /// The line search found no lower point while the gradient was still above
    /// [`FitOptions::precision_limit_tolerance`].
    NoProgress,
    /// A parameter ran off towards 0 or infinity: the likelihood has no interior maximum for
    /// this data, so the parameters do not describe it.
    ParameterAtLimit,
}

/// Optimiser settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FitOptions {
    pub max_iterations: u32,
    /// Converged when every component of the mean negative log-likelihood's gradient with
    /// respect to the log-parameters is at most this (`scipy`'s `gtol`, whose default
    /// `lifetimes` tightens to 1e-7).
    pub gradient_tolerance: f64,
    /// When the line search finds no lower point at all (the objective is flat to the
    /// precision of doubles) with every gradient component at most this, the fit is at the
    /// maximum as far as floating point can tell, and converged. Large data sets of distinct
    /// customers stopped that way at 1.5e-8, parameters equal to lifetimes' to 3e-7, and were
    /// wrongly reported as NoProgress.
    pub precision_limit_tolerance: f64,
}

impl Default for FitOptions {
    fn default() -> Self {
        Self {
            max_iterations: 500,
            gradient_tolerance: 1e-8,
            precision_limit_tolerance: 1e-6,
        }
    }
}

/// A fitted model: the parameters (in the data's units) and how the fit went.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ModelFit<P> {
    pub params: P,
    /// Total log-likelihood of the fitted customers, in the data's units.
    pub log_likelihood: f64,
    pub status: FitStatus,
    pub iterations: u32,
    /// Likelihood evaluations (each with its gradient).
    pub evaluations: u32,
    /// Largest gradient component at the result (see [`FitOptions::gradient_tolerance`]).
    pub gradient_norm: f64,
    /// Customers the model was fitted on.
    pub customers: u64,
    /// Distinct patterns they compress into.
    pub patterns: usize,
}

impl<P> ModelFit<P> {
    pub fn converged(&self) -> bool {
        self.status == FitStatus::Converged
    }
}

/// Fits BG/NBD to the customers by maximum likelihood.
pub fn fit_bg_nbd(
    customers: &[CustomerSummary],
    options: &FitOptions,
) -> Result<ModelFit<BgNbdParams>, ClvError> {
    let data = BgNbdData::new(customers)?;
    let mut scratch = BgNbdScratch::default();
    // lifetimes' starting point (every log-parameter 0.1, times rescaled to a largest age
    // of 1).
    let minimum = minimize_bfgs(|theta| data.objective(theta, &mut scratch), [0.1; 4], options)?;
    let [r, alpha, a, b] = minimum.theta.map(f64::exp);
    let params = BgNbdParams {
        r,
        alpha: alpha / data.scale,
        a,
        b,
    };
    params.check()?;
    // Rescaling times by s multiplies each customer's likelihood by s^-x (x purchase-time
    // densities), which the data's units take back.
    let log_likelihood = finite(
        "log-likelihood",
        -minimum.value * data.total_weight + data.scale.ln() * data.weighted_frequency,
    )?;
    Ok(ModelFit {
        params,
        log_likelihood,
        status: minimum.status,
        iterations: minimum.iterations,
        evaluations: minimum.evaluations,
        gradient_norm: minimum.gradient_norm,
        customers: data.customers,
        patterns: data.patterns.len(),
    })
}

/// Fits Gamma-Gamma by maximum likelihood on the customers with repeat purchases and a
/// positive monetary value (the others carry no spend observation), as `lifetimes` is fitted
/// on `frequency > 0`.
pub fn fit_gamma_gamma(
    customers: &[CustomerSummary],
    options: &FitOptions,
) -> Result<ModelFit<GammaGammaParams>, ClvError> {
    let data = GammaGammaData::new(customers)?;
    // p = 1, q = 2, v = 1: a population mean of v p / (q - 1) = 1, the rescaled data's.
    let minimum = minimize_bfgs(
        |theta| data.objective(theta),
        [0.0, std::f64::consts::LN_2, 0.0],
        options,
    )?;
    let [p, q, v] = minimum.theta.map(f64::exp);
    let params = GammaGammaParams {
        p,
        q,
        v: v / data.scale,
    };
    params.check()?;
    // Rescaling spends by s multiplies each customer's density by 1/s.
    let log_likelihood = finite(
        "log-likelihood",
        -minimum.value * data.total_weight + data.scale.ln() * data.total_weight,
    )?;
    Ok(ModelFit {
        params,
        log_likelihood,
        status: minimum.status,
        iterations: minimum.iterations,
        evaluations: minimum.evaluations,
        gradient_norm: minimum.gradient_norm,
        customers: data.customers,
        patterns: data.patterns.len(),
    })
}

/// A fast, deterministic hasher for pattern keys (integers and f64 bits): a multiply-rotate
/// mix with a final avalanche, since float bits often differ only in high bits.
#[derive(Default)]
struct PatternHasher(u64);

impl PatternHasher {
    fn add(&mut self, value: u64) {
        self.0 = (self.0.rotate_left(5) ^ value).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
}

impl Hasher for PatternHasher {
    fn finish(&self) -> u64 {
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn write(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            self.add(u64::from(byte));
        }
    }

    fn write_u32(&mut self, value: u32) {
        self.add(u64::from(value));
    }

    fn write_u64(&mut self, value: u64) {
        self.add(value);
    }
}

type PatternMap<K, V> = HashMap<K, V, BuildHasherDefault<PatternHasher>>;

/// Sorted distinct values.
fn distinct_sorted(mut values: Vec<f64>) -> Vec<f64> {
    values.sort_unstable_by(f64::total_cmp);
    values.dedup_by(|a, b| a.total_cmp(b) == Ordering::Equal);
    values
}

/// Index of `value` in `values`, sorted distinct values that hold it.
fn position(values: &[f64], value: f64) -> usize {
    values
        .binary_search_by(|probe| probe.total_cmp(&value))
        .unwrap_or_else(|insert_at| insert_at)
}

/// One distinct (x, t_x, T) with its weight; indices point into [`BgNbdData`]'s distinct
/// ages, recencies and frequencies.
struct BgNbdPattern {
    frequency: f64,
    frequency_index: usize,
    recency_index: usize,
    age_index: usize,
    weight: f64,
}

/// Customers compressed for the BG/NBD likelihood, times rescaled by `scale`.
struct BgNbdData {
    customers: u64,
    total_weight: f64,
    /// Sum of x over customers.
    weighted_frequency: f64,
    scale: f64,
    ages: Vec<f64>,
    recencies: Vec<f64>,
    /// Distinct x > 0 with the number of customers having it.
    frequencies: Vec<(f64, f64)>,
    patterns: Vec<BgNbdPattern>,
}

#[derive(Default)]
struct BgNbdScratch {
    age_ln: Vec<f64>,
    age_inv: Vec<f64>,
    recency_ln: Vec<f64>,
    recency_inv: Vec<f64>,
    frequency_ln: Vec<f64>,
    frequency_inv: Vec<f64>,
}

impl BgNbdData {
    fn new(customers: &[CustomerSummary]) -> Result<Self, ClvError> {
        let mut counts: PatternMap<(u32, u64, u64), u64> = PatternMap::default();
        let mut max_age: f64 = 0.0;
        let mut repeat_buyers = 0_u64;
        for (index, customer) in customers.iter().enumerate() {
            customer
                .check()
                .map_err(|reason| ClvError::InvalidCustomer { index, reason })?;
            max_age = max_age.max(customer.age);
            if customer.frequency > 0 {
                repeat_buyers += 1;
            }
            // + 0.0 turns -0.0 into 0.0, so equal times share a key.
            let key = (
                customer.frequency,
                (customer.recency + 0.0).to_bits(),
                (customer.age + 0.0).to_bits(),
            );
            *counts.entry(key).or_insert(0) += 1;
        }
        let total = customers.len() as u64;
        if total == 0 {
            return Err(ClvError::NoCustomers);
        }
        if total < MIN_FIT_CUSTOMERS {
            return Err(ClvError::TooFewCustomers {
                customers: total,
                required: MIN_FIT_CUSTOMERS,
            });
        }
        if max_age <= 0.0 {
            return Err(ClvError::NoObservedTime);
        }
        if repeat_buyers == 0 {
            return Err(ClvError::NoRepeatBuyers);
        }
        let scale = 1.0 / max_age;
        let mut distinct: Vec<(u32, f64, f64, f64)> = counts
            .into_iter()
            .map(|((frequency, recency, age), count)| {
                (
                    frequency,
                    f64::from_bits(recency) * scale,
                    f64::from_bits(age) * scale,
                    count as f64,
                )
            })
            .collect();
        // A fixed order makes the sums, hence the fit, independent of the input's order.
        distinct.sort_unstable_by(|left, right| {
            left.0
                .cmp(&right.0)
                .then(left.2.total_cmp(&right.2))
                .then(left.1.total_cmp(&right.1))
        });
        let ages = distinct_sorted(distinct.iter().map(|pattern| pattern.2).collect());
        let recencies = distinct_sorted(
            distinct
                .iter()
                .filter(|pattern| pattern.0 > 0)
                .map(|pattern| pattern.1)
                .collect(),
        );
        let mut frequencies: Vec<(f64, f64)> = Vec::new();
        let mut weighted_frequency = 0.0;
        let mut patterns = Vec::with_capacity(distinct.len());
        for (frequency, recency, age, weight) in distinct {
            let x = f64::from(frequency);
            weighted_frequency += weight * x;
            if frequency > 0 {
                match frequencies.last_mut() {
                    Some((last, total)) if *last == x => *total += weight,
                    _ => frequencies.push((x, weight)),
                }
            }
            patterns.push(BgNbdPattern {
                frequency: x,
                frequency_index: frequencies.len().saturating_sub(1),
                recency_index: position(&recencies, recency),
                age_index: position(&ages, age),
                weight,
            });
        }
        Ok(Self {
            customers: total,
            total_weight: total as f64,
            weighted_frequency,
            scale,
            ages,
            recencies,
            frequencies,
            patterns,
        })
    }

    /// Mean negative log-likelihood and its gradient in log-parameters (log r, log alpha,
    /// log a, log b), times rescaled.
    fn objective(&self, theta: &[f64; 4], scratch: &mut BgNbdScratch) -> (f64, [f64; 4]) {
        let [r, alpha, a, b] = theta.map(f64::exp);
        fill(&mut scratch.age_ln, &self.ages, |age| (alpha + age).ln());
        fill(&mut scratch.age_inv, &self.ages, |age| 1.0 / (alpha + age));
        fill(&mut scratch.recency_ln, &self.recencies, |recency| {
            (alpha + recency).ln()
        });
        fill(&mut scratch.recency_inv, &self.recencies, |recency| {
            1.0 / (alpha + recency)
        });
        scratch.frequency_ln.clear();
        scratch.frequency_inv.clear();
        for &(x, _) in &self.frequencies {
            scratch.frequency_ln.push((b + x - 1.0).ln());
            scratch.frequency_inv.push(1.0 / (b + x - 1.0));
        }

        let ln_alpha = alpha.ln();
        let ln_a = a.ln();
        // Terms that depend on x only, summed per distinct x.
        let mut ll = self.total_weight * r * ln_alpha;
        let mut d_r = self.total_weight * ln_alpha;
        let mut d_alpha = self.total_weight * r / alpha;
        let mut d_a = 0.0;
        let mut d_b = 0.0;
        let (ln_gamma_r, digamma_r) = (ln_gamma(r), digamma(r));
        let (ln_gamma_b, digamma_b) = (ln_gamma(b), digamma(b));
        let (ln_gamma_ab, digamma_ab) = (ln_gamma(a + b), digamma(a + b));
        for &(x, weight) in &self.frequencies {
            let digamma_abx = digamma(a + b + x);
            ll += weight
                * (ln_gamma(r + x) - ln_gamma_r + ln_gamma_ab + ln_gamma(b + x)
                    - ln_gamma_b
                    - ln_gamma(a + b + x));
            d_r += weight * (digamma(r + x) - digamma_r);
            d_a += weight * (digamma_ab - digamma_abx);
            d_b += weight * (digamma_ab + digamma(b + x) - digamma_b - digamma_abx);
        }

        for pattern in &self.patterns {
            let age_ln = scratch.age_ln.get(pattern.age_index).copied().unwrap_or(f64::NAN);
            let age_inv = scratch
                .age_inv
                .get(pattern.age_index)
                .copied()
                .unwrap_or(f64::NAN);
            let rx = r + pattern.frequency;
            let a3 = -rx * age_ln;
            if pattern.frequency == 0.0 {
                ll += pattern.weight * a3;
                d_r -= pattern.weight * age_ln;
                d_alpha -= pattern.weight * rx * age_inv;
                continue;
            }
            let recency_ln = scratch
                .recency_ln
                .get(pattern.recency_index)
                .copied()
                .unwrap_or(f64::NAN);
            let recency_inv = scratch
                .recency_inv
                .get(pattern.recency_index)
                .copied()
                .unwrap_or(f64::NAN);
            let frequency_ln = scratch
                .frequency_ln
                .get(pattern.frequency_index)
                .copied()
                .unwrap_or(f64::NAN);
            let frequency_inv = scratch
                .frequency_inv
                .get(pattern.frequency_index)
                .copied()
                .unwrap_or(f64::NAN);
            let a4 = ln_a - frequency_ln - rx * recency_ln;
            // log(e^a3 + e^a4) = a3 + softplus(a4 - a3); sigma = the weight of the a4 branch.
            let d = a4 - a3;
            let e = (-d.abs()).exp();
            let softplus = d.max(0.0) + e.ln_1p();
            let sigma = if d >= 0.0 { 1.0 / (1.0 + e) } else { e / (1.0 + e) };
            let w = pattern.weight;
            ll += w * (a3 + softplus);
            d_r -= w * ((1.0 - sigma) * age_ln + sigma * recency_ln);
            d_alpha -= w * rx * ((1.0 - sigma) * age_inv + sigma * recency_inv);
            d_a += w * sigma / a;
            d_b -= w * sigma * frequency_inv;
        }
        let n = self.total_weight;
        (
            -ll / n,
            [-d_r * r / n, -d_alpha * alpha / n, -d_a * a / n, -d_b * b / n],
        )
    }
}

fn fill(target: &mut Vec<f64>, source: &[f64], f: impl Fn(f64) -> f64) {
    target.clear();
    target.extend(source.iter().map(|&value| f(value)));
}

/// One distinct (x, m) with its weight, m rescaled.
struct GammaGammaPattern {
    frequency: f64,
    /// x * m (rescaled).
    total: f64,
    weight: f64,
}

/// Spend observations compressed for the Gamma-Gamma likelihood, spends rescaled by
/// `scale` (to a mean of 1).
struct GammaGammaData {
    customers: u64,
    total_weight: f64,
    scale: f64,
    /// Distinct x: (x, ln x, customers, sum of ln m over them).
    frequencies: Vec<(f64, f64, f64, f64)>,
    patterns: Vec<GammaGammaPattern>,
}

impl GammaGammaData {
    fn new(customers: &[CustomerSummary]) -> Result<Self, ClvError> {
        let mut counts: PatternMap<(u32, u64), u64> = PatternMap::default();
        let mut repeat_buyers = 0_u64;
        let mut used = 0_u64;
        let mut spend_sum = 0.0;
        for (index, customer) in customers.iter().enumerate() {
            customer
                .check()
                .map_err(|reason| ClvError::InvalidCustomer { index, reason })?;
            if customer.frequency == 0 {
                continue;
            }
            repeat_buyers += 1;
            if customer.monetary_value <= 0.0 {
                continue;
            }
            used += 1;
            spend_sum += customer.monetary_value;
            *counts
                .entry((customer.frequency, customer.monetary_value.to_bits()))
                .or_insert(0) += 1;
        }
        if customers.is_empty() {
            return Err(ClvError::NoCustomers);
        }
        if repeat_buyers == 0 {
            return Err(ClvError::NoRepeatBuyers);
        }
        if used == 0 {
            return Err(ClvError::NoPositiveRepeatSpend);
        }
        if used < MIN_FIT_CUSTOMERS {
            return Err(ClvError::TooFewCustomers {
                customers: used,
                required: MIN_FIT_CUSTOMERS,
            });
        }
        let scale = used as f64 / spend_sum;
        if !(scale.is_finite() && scale > 0.0) {
            return Err(ClvError::NonFinite {
                quantity: "mean monetary value",
            });
        }
        let mut distinct: Vec<(u32, f64, f64)> = counts
            .into_iter()
            .map(|((frequency, money), count)| (frequency, f64::from_bits(money) * scale, count as f64))
            .collect();
        distinct.sort_unstable_by(|left, right| left.0.cmp(&right.0).then(left.1.total_cmp(&right.1)));
        let mut frequencies: Vec<(f64, f64, f64, f64)> = Vec::new();
        let mut patterns = Vec::with_capacity(distinct.len());
        for (frequency, money, weight) in distinct {
            let x = f64::from(frequency);
            let ln_money = money.ln();
            match frequencies.last_mut() {
                Some((last, _, total, ln_sum)) if *last == x => {
                    *total += weight;
                    *ln_sum += weight * ln_money;
                }
                _ => frequencies.push((x, x.ln(), weight, weight * ln_money)),
            }
            patterns.push(GammaGammaPattern {
                frequency: x,
                total: x * money,
                weight,
            });
        }
        Ok(Self {
            customers: used,
            total_weight: used as f64,
            scale,
            frequencies,
            patterns,
        })
    }

    /// Mean negative log-likelihood and its gradient in (log p, log q, log v), spends
    /// rescaled.
    fn objective(&self, theta: &[f64; 3]) -> (f64, [f64; 3]) {
        let [p, q, v] = theta.map(f64::exp);
        let ln_v = v.ln();
        let (ln_gamma_q, digamma_q) = (ln_gamma(q), digamma(q));
        let mut ll = 0.0;
        let mut d_p = 0.0;
        let mut d_q = 0.0;
        let mut d_v = 0.0;
        for &(x, ln_x, weight, ln_money_sum) in &self.frequencies {
            let px = p * x;
            let digamma_pxq = digamma(px + q);
            ll += weight * (ln_gamma(px + q) - ln_gamma(px) - ln_gamma_q + q * ln_v + px * ln_x)
                + (px - 1.0) * ln_money_sum;
            d_p += weight * x * (digamma_pxq - digamma(px) + ln_x) + x * ln_money_sum;
            d_q += weight * (digamma_pxq - digamma_q + ln_v);
            d_v += weight * q / v;
        }
        for pattern in &self.patterns {
            let px_q = p * pattern.frequency + q;
            let denominator = pattern.total + v;
            let ln_denominator = denominator.ln();
            let w = pattern.weight;
            ll -= w * px_q * ln_denominator;
            d_p -= w * pattern.frequency * ln_denominator;
            d_q -= w * ln_denominator;
            d_v -= w * px_q / denominator;
        }
        let n = self.total_weight;
        (-ll / n, [-d_p * p / n, -d_q * q / n, -d_v * v / n])
    }
}

// ---------------------------------------------------------------------------------------
// BFGS with a strong-Wolfe line search
// ---------------------------------------------------------------------------------------

struct Minimum<const N: usize> {
    theta: [f64; N],
    value: f64,
    gradient_norm: f64,
    status: FitStatus,
    iterations: u32,
    evaluations: u32,
}

/// A point of the line search: step, value, gradient, directional derivative.
#[derive(Clone, Copy)]
struct Probe<const N: usize> {
    step: f64,
    value: f64,
    gradient: [f64; N],
    slope: f64,
}

fn dot<const N: usize>(left: &[f64; N], right: &[f64; N]) -> f64 {
    left.iter().zip(right).map(|(l, r)| l * r).sum()
}

fn norm_inf<const N: usize>(vector: &[f64; N]) -> f64 {
    vector.iter().fold(0.0, |max, value| max.max(value.abs()))
}

fn identity<const N: usize>() -> [[f64; N]; N] {
    let mut matrix = [[0.0; N]; N];
    for (i, row) in matrix.iter_mut().enumerate() {
        for (j, cell) in row.iter_mut().enumerate() {
            if i == j {
                *cell = 1.0;
            }
        }
    }
    matrix
}

fn all_finite<const N: usize>(value: f64, gradient: &[f64; N]) -> bool {
    value.is_finite() && gradient.iter().all(|g| g.is_finite())
}

/// Minimises `objective` (value and gradient) from `start`. Non-finite values are treated
/// as +infinity by the line search, so the result is always a finite point.
fn minimize_bfgs<const N: usize>(
    mut objective: impl FnMut(&[f64; N]) -> (f64, [f64; N]),
    start: [f64; N],
    options: &FitOptions,
) -> Result<Minimum<N>, ClvError> {
    let mut theta = start;
    let (mut value, mut gradient) = objective(&theta);
    let mut evaluations = 1_u32;
    if !all_finite(value, &gradient) {
        return Err(ClvError::NonFinite {
            quantity: "log-likelihood at the starting parameters",
        });
    }
    let mut inverse_hessian = identity::<N>();
    let mut fresh = true;
    let mut status = FitStatus::IterationLimit;
    let mut iterations = 0_u32;
    while iterations < options.max_iterations {
        if norm_inf(&gradient) <= options.gradient_tolerance {
            status = FitStatus::Converged;
            break;
        }
        iterations += 1;
        let mut direction = [0.0; N];
        for (d, row) in direction.iter_mut().zip(&inverse_hessian) {
            *d = -dot(row, &gradient);
        }
        let mut slope = dot(&gradient, &direction);
        if !(slope < 0.0 && slope.is_finite()) {
            // Lost positive definiteness: restart from steepest descent.
            inverse_hessian = identity::<N>();
            fresh = true;
            direction = gradient.map(|g| -g);
            slope = dot(&gradient, &direction);
        }
        let largest = norm_inf(&direction);
        let max_step = if largest > 0.0 {
            MAX_LOG_STEP / largest
        } else {
            1.0
        };
        let search = line_search(
            &mut objective,
            &theta,
            value,
            slope,
            &direction,
            1.0_f64.min(max_step),
            max_step,
            &mut evaluations,
        );
        let Some(accepted) = search else {
            if fresh {
                status = if norm_inf(&gradient) <= options.precision_limit_tolerance {
                    FitStatus::Converged
                } else {
                    FitStatus::NoProgress
                };
                break;
            }
            inverse_hessian = identity::<N>();
            fresh = true;
            continue;
        };
        let mut step = [0.0; N];
        let mut next = theta;
        for ((s, x), d) in step.iter_mut().zip(next.iter_mut()).zip(&direction) {
            *s = accepted.step * d;
            *x += *s;
        }
        let mut change = [0.0; N];
        for ((y, new), old) in change.iter_mut().zip(&accepted.gradient).zip(&gradient) {
            *y = new - old;
        }
        let curvature = dot(&change, &step);
        if curvature > 1e-12 * dot(&step, &step).sqrt() * dot(&change, &change).sqrt() {
            if fresh {
                // Nocedal & Wright (6.20): scale the first approximation to the curvature.
                let scale = curvature / dot(&change, &change);
                inverse_hessian = identity::<N>();
                for row in inverse_hessian.iter_mut() {
                    for cell in row.iter_mut() {
                        *cell *= scale;
                    }
                }
            }
            bfgs_update(&mut inverse_hessian, &step, &change, curvature);
            fresh = false;
        }
        theta = next;
        value = accepted.value;
        gradient = accepted.gradient;
        if theta.iter().any(|t| t.abs() > LOG_PARAMETER_LIMIT) {
            status = FitStatus::ParameterAtLimit;
            break;
        }
    }
    if status == FitStatus::IterationLimit && norm_inf(&gradient) <= options.gradient_tolerance {
        status = FitStatus::Converged;
    }
    if matches!(status, FitStatus::Converged | FitStatus::NoProgress)
        && theta.iter().any(|t| t.abs() > LOG_PARAMETER_BOUNDARY)
    {
        status = FitStatus::ParameterAtLimit;
    }
    Ok(Minimum {
        theta,
        value,
        gradient_norm: norm_inf(&gradient),
        status,
        iterations,
        evaluations,
    })
}

/// H <- (I - rho s y') H (I - rho y s') + rho s s', rho = 1 / (y's).
fn bfgs_update<const N: usize>(
    inverse_hessian: &mut [[f64; N]; N],
    step: &[f64; N],
    change: &[f64; N],
    curvature: f64,
) {
    let rho = 1.0 / curvature;
    let mut h_y = [0.0; N];
    for (hy, row) in h_y.iter_mut().zip(inverse_hessian.iter()) {
        *hy = dot(row, change);
    }
    let y_h_y = dot(change, &h_y);
    let coefficient = rho * rho * y_h_y + rho;
    for ((row, s_i), hy_i) in inverse_hessian.iter_mut().zip(step).zip(&h_y) {
        for ((cell, s_j), hy_j) in row.iter_mut().zip(step).zip(&h_y) {
            *cell += -rho * (s_i * hy_j + hy_i * s_j) + coefficient * s_i * s_j;
        }
    }
}

const WOLFE_DECREASE: f64 = 1e-4;
const WOLFE_CURVATURE: f64 = 0.9;
const LINE_SEARCH_EVALUATIONS: u32 = 60;

/// Nocedal & Wright algorithms 3.5 and 3.6: a step satisfying the strong Wolfe conditions,
/// or the best sufficient-decrease step found; `None` when no step decreases the value.
#[allow(clippy::too_many_arguments)]
fn line_search<const N: usize>(
    objective: &mut impl FnMut(&[f64; N]) -> (f64, [f64; N]),
    theta: &[f64; N],
    value: f64,
    slope: f64,
    direction: &[f64; N],
    first_step: f64,
    max_step: f64,
    evaluations: &mut u32,
) -> Option<Probe<N>> {
    let first_evaluation = *evaluations;
    let mut probe = |step: f64, evaluations: &mut u32| -> Probe<N> {
        let mut point = *theta;
        for (x, d) in point.iter_mut().zip(direction) {
            *x += step * d;
        }
        let (value, gradient) = objective(&point);
        *evaluations = evaluations.saturating_add(1);
        if all_finite(value, &gradient) {
            Probe {
                step,
                value,
                gradient,
                slope: dot(&gradient, direction),
            }
        } else {
            Probe {
                step,
                value: f64::INFINITY,
                gradient,
                slope: f64::NAN,
            }
        }
    };
    let sufficient = |p: &Probe<N>| p.value <= value + WOLFE_DECREASE * p.step * slope;
    let curvature_ok = |p: &Probe<N>| p.slope.abs() <= -WOLFE_CURVATURE * slope;

    let origin = Probe {
        step: 0.0,
        value,
        gradient: [0.0; N],
        slope,
    };
    let mut previous = origin;
    let mut step = first_step;
    let (mut low, mut high);
    loop {
        let current = probe(step, evaluations);
        if !sufficient(&current) || (previous.step > 0.0 && current.value >= previous.value) {
            low = previous;
            high = current;
            break;
        }
        if curvature_ok(&current) {
            return Some(current);
        }
        if current.slope >= 0.0 {
            low = current;
            high = previous;
            break;
        }
        if step >= max_step || *evaluations - first_evaluation >= LINE_SEARCH_EVALUATIONS {
            // Still descending at the largest allowed step: take it.
            return Some(current);
        }
        previous = current;
        step = (2.0 * step).min(max_step);
    }
    // Zoom: `low` satisfies sufficient decrease with the lowest value so far; the minimum
    // lies between `low` and `high`.
    while *evaluations - first_evaluation < LINE_SEARCH_EVALUATIONS {
        let (left, right) = if low.step < high.step {
            (low.step, high.step)
        } else {
            (high.step, low.step)
        };
        if right - left <= 1e-14 * right.max(1e-300) {
            break;
        }
        let margin = 0.1 * (right - left);
        let trial = cubic_minimizer(&low, &high)
            .filter(|s| *s >= left + margin && *s <= right - margin)
            .unwrap_or(0.5 * (left + right));
        let current = probe(trial, evaluations);
        if !sufficient(&current) || current.value >= low.value {
            high = current;
        } else {
            if curvature_ok(&current) {
                return Some(current);
            }
            if current.slope * (high.step - low.step) >= 0.0 {
                high = low;
            }
            low = current;
        }
    }
    (low.step > 0.0 && low.value < value).then_some(low)
}

/// Minimiser of the cubic matching both probes' values and slopes (Nocedal & Wright
/// 3.59), if it exists.
fn cubic_minimizer<const N: usize>(one: &Probe<N>, other: &Probe<N>) -> Option<f64> {
    if !(one.value.is_finite() && other.value.is_finite()) {
        return None;
    }
    let d1 = one.slope + other.slope - 3.0 * (one.value - other.value) / (one.step - other.step);
    let discriminant = d1 * d1 - one.slope * other.slope;
    if discriminant.is_nan() || discriminant < 0.0 {
        return None;
    }
    let d2 = (other.step - one.step).signum() * discriminant.sqrt();
    let step =
        other.step - (other.step - one.step) * (other.slope + d2 - d1) / (other.slope - one.slope + 2.0 * d2);
    step.is_finite().then_some(step)
}

// ---------------------------------------------------------------------------------------
// Special functions
// ---------------------------------------------------------------------------------------

/// ln(e^a + e^b) without overflow.
fn log_add_exp(a: f64, b: f64) -> f64 {
    let high = a.max(b);
    let low = a.min(b);
    high + (low - high).exp().ln_1p()
}

/// 1 / (1 + e^-z) without overflow.
fn logistic(z: f64) -> f64 {
    if z >= 0.0 {
        1.0 / (1.0 + (-z).exp())
    } else {
        let e = z.exp();
        e / (1.0 + e)
    }
}

/// Arguments below this are shifted up by the recurrences before the asymptotic series,
/// whose first omitted term is then below 2e-18 (ln Γ) and 5e-17 (ψ).
const ASYMPTOTIC_FROM: f64 = 10.0;

/// ln Γ(x) for x > 0: Stirling's series after shifting x to at least 10 with
/// Γ(x) = Γ(x + n) / (x (x + 1) ... (x + n - 1)). Absolute error ~1e-15 near the
/// minimum, relative ~1e-16 for large x. NaN for x <= 0 or NaN.
pub fn ln_gamma(x: f64) -> f64 {
    if x.is_nan() || x <= 0.0 {
        return f64::NAN;
    }
    if x.is_infinite() {
        return f64::INFINITY;
    }
    let mut shifted = x;
    let mut product = 1.0;
    while shifted < ASYMPTOTIC_FROM {
        product *= shifted;
        shifted += 1.0;
    }
    // Bernoulli terms B_2k / (2k (2k - 1) x^(2k - 1)), k = 1..8.
    const STIRLING: [f64; 8] = [
        1.0 / 12.0,
        -1.0 / 360.0,
        1.0 / 1260.0,
        -1.0 / 1680.0,
        1.0 / 1188.0,
        -691.0 / 360_360.0,
        1.0 / 156.0,
        -3617.0 / 122_400.0,
    ];
    let inverse = 1.0 / shifted;
    let inverse_squared = inverse * inverse;
    let series = STIRLING
        .iter()
        .rev()
        .fold(0.0, |sum, coefficient| sum * inverse_squared + coefficient)
        * inverse;
    let half_ln_two_pi = 0.918_938_533_204_672_8;
    (shifted - 0.5) * shifted.ln() - shifted + half_ln_two_pi + series - product.ln()
}

/// ψ(x) = d ln Γ(x) / dx for x > 0: the asymptotic series after shifting x to at least 10
/// with ψ(x) = ψ(x + 1) - 1/x. NaN for x <= 0 or NaN.
pub fn digamma(x: f64) -> f64 {
    if x.is_nan() || x <= 0.0 {
        return f64::NAN;
    }
    if x.is_infinite() {
        return f64::INFINITY;
    }
    let mut shifted = x;
    let mut correction = 0.0;
    while shifted < ASYMPTOTIC_FROM {
        correction += 1.0 / shifted;
        shifted += 1.0;
    }
    // B_2k / (2k x^2k), k = 1..7.
    const ASYMPTOTIC: [f64; 7] = [
        1.0 / 12.0,
        -1.0 / 120.0,
        1.0 / 252.0,
        -1.0 / 240.0,
        1.0 / 132.0,
        -691.0 / 32_760.0,
        1.0 / 12.0,
    ];
    let inverse_squared = 1.0 / (shifted * shifted);
    let series = ASYMPTOTIC
        .iter()
        .rev()
        .fold(0.0, |sum, coefficient| sum * inverse_squared + coefficient)
        * inverse_squared;
    shifted.ln() - 0.5 / shifted - series - correction
}

/// c (2F1(p, eps; c; z) - 1) / eps for 0 <= z < 1, by its power series, whose terms are
/// those of 2F1 with eps divided out (so eps = 0 gives the limit). Stops when a bound on
/// every later term ratio proves the remaining tail below 1e-16 of the sum; `None` if the
/// series has not converged within [`MAX_SERIES_TERMS`] terms or is not finite.
fn hypergeometric_tail(p: f64, eps: f64, c: f64, z: f64) -> Option<f64> {
    if !(z.is_finite() && (0.0..1.0).contains(&z)) {
        return None;
    }
    let mut term = p * z;
    let mut sum = term;
    if term == 0.0 {
        return Some(0.0);
    }
    let mut n = 1.0;
    for _ in 0..MAX_SERIES_TERMS {
        term *= (p + n) * (eps + n) / ((c + n) * (n + 1.0)) * z;
        sum += term;
        if !sum.is_finite() {
            return None;
        }
        if term == 0.0 {
            return Some(sum);
        }
        n += 1.0;
        // For k >= n: (p + k) / (k + 1) and (eps + k) / (c + k) move monotonically to 1,
        // so each later ratio is at most `bound` once every factor is positive.
        if p + n > 0.0 && eps + n > 0.0 && c + n > 0.0 {
            let bound = z * ((p + n) / (n + 1.0)).max(1.0) * ((eps + n) / (c + n)).max(1.0);
            if bound < 1.0 && term.abs() * bound / (1.0 - bound) <= 1e-16 * sum.abs() {
                return Some(sum);
            }
        }
    }
    None
}

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]
mod tests {
    use std::time::Instant;

    use chrono::NaiveDate;

    use super::*;

    // -- Reference fixtures (tests/fixtures/clv, made by make_fixtures.py with lifetimes) --

    const CDNOW: &str = include_str!("../../../../tests/fixtures/clv/cdnow_summary.csv");
    const LIFETIMES_PARAMS: &str = include_str!("../../../../tests/fixtures/clv/lifetimes_params.csv");
    const LIFETIMES_CUSTOMERS: &str = include_str!("../../../../tests/fixtures/clv/lifetimes_customers.csv");
    const TRANSACTIONS: &str = include_str!("../../../../tests/fixtures/clv/transactions.csv");
    const TRANSACTION_SUMMARY: &str =
        include_str!("../../../../tests/fixtures/clv/lifetimes_transaction_summary.csv");

    /// Published CDNOW estimates: Fader, Hardie & Lee (2005) for BG/NBD, Fader & Hardie's
    /// note 025 / lifetimes' documentation for Gamma-Gamma.
    const PUBLISHED_BG_NBD: [f64; 4] = [0.2426, 4.4135, 0.7929, 2.4258];
    const PUBLISHED_BG_NBD_LOG_LIKELIHOOD: f64 = -9582.43;
    const PUBLISHED_GAMMA_GAMMA: [f64; 3] = [6.2488, 3.7446, 15.4477];

    fn rows(text: &str) -> Vec<Vec<&str>> {
        text.lines()
            .skip(1)
            .map(str::trim)
            .filter(|line| !line.is_empty())
            .map(|line| line.split(',').collect())
            .collect()
    }

    fn number(text: &str) -> f64 {
        text.parse().unwrap_or_else(|_| panic!("not a number: {text:?}"))
    }

    fn cdnow() -> Vec<CustomerSummary> {
        rows(CDNOW)
            .iter()
            .map(|row| CustomerSummary {
                frequency: row[1].parse().unwrap(),
                recency: number(row[2]),
                age: number(row[3]),
                monetary_value: number(row[4]),
            })
            .collect()
    }

    fn lifetimes_value(name: &str) -> &'static str {
        rows(LIFETIMES_PARAMS)
            .into_iter()
            .find(|row| row[0] == name)
            .map(|row| row[1])
            .unwrap_or_else(|| panic!("{name} missing from lifetimes_params.csv"))
    }

    fn lifetimes_models() -> (BgNbdParams, GammaGammaParams) {
        let value = |name| number(lifetimes_value(name));
        (
            BgNbdParams::new(
                value("bgnbd_r"),
                value("bgnbd_alpha"),
                value("bgnbd_a"),
                value("bgnbd_b"),
            )
            .unwrap(),
            GammaGammaParams::new(
                value("gamma_gamma_p"),
                value("gamma_gamma_q"),
                value("gamma_gamma_v"),
            )
            .unwrap(),
        )
    }

    fn lifetimes_clv_settings() -> ClvSettings {
        assert_eq!(lifetimes_value("clv_freq"), "W");
        ClvSettings {
            months: lifetimes_value("clv_months").parse().unwrap(),
            monthly_discount_rate: number(lifetimes_value("clv_discount_rate")),
            time_unit: TimeUnit::Week,
            margin: 1.0,
        }
    }

    fn relative_error(actual: f64, expected: f64) -> f64 {
        if expected == 0.0 {
            actual.abs()
        } else {
            ((actual - expected) / expected).abs()
        }
    }

    fn summary(frequency: u32, recency: f64, age: f64, monetary_value: f64) -> CustomerSummary {
        CustomerSummary {
            frequency,
            recency,
            age,
            monetary_value,
        }
    }

    #[test]
    fn clv_bg_nbd_fit_reproduces_the_published_cdnow_estimates() {
        let customers = cdnow();
        assert_eq!(customers.len(), 2357);
        let started = Instant::now();
        let fit = fit_bg_nbd(&customers, &FitOptions::default()).unwrap();
        let elapsed = started.elapsed();
        eprintln!("BG/NBD fit on CDNOW: {elapsed:?}, {fit:?}");
        assert!(fit.converged(), "{fit:?}");
        assert_eq!(fit.customers, 2357);
        let BgNbdParams { r, alpha, a, b } = fit.params;
        for (found, published) in [r, alpha, a, b].into_iter().zip(PUBLISHED_BG_NBD) {
            assert!((found - published).abs() < 1e-3, "{found} vs {published}");
        }
        assert!(
            (fit.log_likelihood - PUBLISHED_BG_NBD_LOG_LIKELIHOOD).abs() < 0.01,
            "{}",
            fit.log_likelihood
        );
        let direct = fit.params.log_likelihood(&customers).unwrap();
        assert!((fit.log_likelihood - direct).abs() < 1e-6, "{direct}");
        // The paper's worked example.
        let expected = fit
            .params
            .conditional_expected_purchases(39.0, &summary(2, 30.43, 38.86, 0.0))
            .unwrap();
        assert!((expected - 1.2259).abs() < 1e-4, "{expected}");
    }

    #[test]
    fn clv_gamma_gamma_fit_reproduces_the_published_cdnow_estimates() {
        let customers = cdnow();
        let started = Instant::now();
        let fit = fit_gamma_gamma(&customers, &FitOptions::default()).unwrap();
        let elapsed = started.elapsed();
        eprintln!("Gamma-Gamma fit on CDNOW: {elapsed:?}, {fit:?}");
        assert!(fit.converged(), "{fit:?}");
        assert_eq!(fit.customers, 946);
        let GammaGammaParams { p, q, v } = fit.params;
        for (found, published) in [p, q, v].into_iter().zip(PUBLISHED_GAMMA_GAMMA) {
            assert!((found - published).abs() < 1e-3, "{found} vs {published}");
        }
        let direct = fit.params.log_likelihood(&customers).unwrap();
        assert!((fit.log_likelihood - direct).abs() < 1e-6, "{direct}");
        let lifetimes = number(lifetimes_value("gamma_gamma_log_likelihood"));
        assert!((fit.log_likelihood - lifetimes).abs() < 1e-4, "{lifetimes}");
    }

    #[test]
    fn clv_log_likelihoods_agree_with_lifetimes_at_its_parameters() {
        let customers = cdnow();
        let (transactions, spend) = lifetimes_models();
        let bg = transactions.log_likelihood(&customers).unwrap();
        let expected = number(lifetimes_value("bgnbd_log_likelihood"));
        assert!(relative_error(bg, expected) < 1e-12, "{bg} vs {expected}");
        let gg = spend.log_likelihood(&customers).unwrap();
        let expected = number(lifetimes_value("gamma_gamma_log_likelihood"));
        assert!(relative_error(gg, expected) < 1e-12, "{gg} vs {expected}");
    }

    #[test]
    fn clv_per_customer_values_agree_with_lifetimes() {
        let customers = cdnow();
        let expected = rows(LIFETIMES_CUSTOMERS);
        assert_eq!(expected.len(), customers.len());
        let (transactions, spend) = lifetimes_models();
        let clv_settings = lifetimes_clv_settings();
        let names = [
            "P(alive)",
            "E[X(1)]",
            "E[X(39)]",
            "expected average spend",
            "CLV 12 months",
        ];
        let mut worst = [0.0_f64; 5];
        for (customer, row) in customers.iter().zip(&expected) {
            let found = [
                transactions.probability_alive(customer).unwrap(),
                transactions
                    .conditional_expected_purchases(1.0, customer)
                    .unwrap(),
                transactions
                    .conditional_expected_purchases(39.0, customer)
                    .unwrap(),
                spend
                    .conditional_expected_average_spend(customer.frequency, customer.monetary_value)
                    .unwrap(),
                customer_lifetime_value(&transactions, &spend, customer, &clv_settings).unwrap(),
            ];
            for ((worst, found), reference) in worst.iter_mut().zip(found).zip(&row[1..]) {
                *worst = worst.max(relative_error(found, number(reference)));
            }
        }
        for (name, worst) in names.iter().zip(worst) {
            eprintln!("largest relative difference from lifetimes, {name}: {worst:.3e}");
            assert!(worst < 1e-6, "{name}: {worst}");
        }
    }

    #[test]
    fn clv_score_customers_matches_the_single_customer_functions() {
        let customers = cdnow();
        let (transactions, spend) = lifetimes_models();
        let model = ValueModel { transactions, spend };
        let settings = ValueSettings {
            purchases_horizon: 39.0,
            clv: ClvSettings {
                margin: 0.3,
                ..lifetimes_clv_settings()
            },
        };
        let scores = score_customers(&model, &customers, &settings).unwrap();
        for (customer, score) in customers.iter().zip(scores) {
            let score = score.unwrap();
            let alive = transactions.probability_alive(customer).unwrap();
            assert_eq!(score.probability_alive, alive);
            assert_eq!(score.churn_risk, 1.0 - alive);
            let purchases = transactions
                .conditional_expected_purchases(39.0, customer)
                .unwrap();
            assert!(relative_error(score.expected_purchases, purchases) < 1e-14);
            let clv = customer_lifetime_value(&transactions, &spend, customer, &settings.clv).unwrap();
            assert!(relative_error(score.potential_value, clv) < 1e-14);
            assert!((0.0..=1.0).contains(&score.probability_alive));
            assert!(score.potential_value >= 0.0 && score.expected_average_spend >= 0.0);
            assert_eq!(score_customer(&model, customer, &settings).unwrap(), score);
        }
    }

    fn epoch_day(date: &str) -> i64 {
        let day = NaiveDate::parse_from_str(date, "%Y-%m-%d").unwrap();
        day.signed_duration_since(NaiveDate::from_ymd_opt(1970, 1, 1).unwrap())
            .num_days()
    }

    #[test]
    fn clv_summaries_agree_with_lifetimes_daily_summary() {
        let end = epoch_day(lifetimes_value("transactions_calibration_end"));
        let mut by_customer: Vec<(u32, Vec<(i64, f64)>)> = Vec::new();
        for row in rows(TRANSACTIONS) {
            let customer: u32 = row[0].parse().unwrap();
            let entry = (epoch_day(row[1]), number(row[2]));
            match by_customer.last_mut() {
                Some((last, days)) if *last == customer => days.push(entry),
                _ => by_customer.push((customer, vec![entry])),
            }
        }
        let expected: HashMap<u32, Vec<&str>> = rows(TRANSACTION_SUMMARY)
            .into_iter()
            .map(|row| (row[0].parse().unwrap(), row))
            .collect();
        let mut summarised = 0;
        for (customer, days) in &by_customer {
            let found = summarize_purchase_days(days, end).unwrap();
            match (found, expected.get(customer)) {
                (None, None) => {}
                (Some(found), Some(row)) => {
                    summarised += 1;
                    assert_eq!(f64::from(found.frequency), number(row[1]), "{customer}");
                    assert!((found.recency - number(row[2])).abs() < 1e-12, "{customer}");
                    assert!((found.age - number(row[3])).abs() < 1e-12, "{customer}");
                    assert!(
                        relative_error(found.monetary_value, number(row[4])) < 1e-12,
                        "{customer}: {found:?} vs {row:?}"
                    );
                    found.check().unwrap();
                }
                (found, row) => panic!("customer {customer}: {found:?} vs {row:?}"),
            }
        }
        assert_eq!(summarised, expected.len());
        assert!(summarised < by_customer.len(), "a customer starts after the end");
    }

    #[test]
    fn clv_summary_edge_cases() {
        assert_eq!(summarize_purchase_days(&[], 100).unwrap(), None);
        assert_eq!(summarize_purchase_days(&[(101, 5.0)], 100).unwrap(), None);
        // Several purchases on one day are one purchase day: no repeat.
        assert_eq!(
            summarize_purchase_days(&[(93, 5.0), (93, 7.0)], 100).unwrap(),
            Some(summary(0, 0.0, 1.0, 0.0))
        );
        // The first day's spend is not part of the monetary value; later days are summed
        // per day; days after the end are ignored.
        assert_eq!(
            summarize_purchase_days(&[(86, 100.0), (93, 4.0), (93, 6.0), (100, 20.0), (107, 1.0)], 100)
                .unwrap(),
            Some(summary(2, 2.0, 2.0, 15.0))
        );
        assert_eq!(
            summarize_purchase_days(&[(10, 1.0), (9, 1.0)], 100),
            Err(ClvError::UnsortedPurchaseDays { previous: 10, day: 9 })
        );
        assert!(matches!(
            summarize_purchase_days(&[(10, f64::NAN)], 100),
            Err(ClvError::InvalidSummary(_))
        ));
        assert!(matches!(
            summarize_purchase_days(&[(i64::MIN, 1.0)], i64::MAX),
            Err(ClvError::InvalidSummary(_))
        ));
    }

    #[test]
    fn clv_degenerate_data_is_a_typed_error() {
        let options = FitOptions::default();
        assert_eq!(fit_bg_nbd(&[], &options), Err(ClvError::NoCustomers));
        assert_eq!(fit_gamma_gamma(&[], &options), Err(ClvError::NoCustomers));
        let one = [summary(3, 10.0, 20.0, 5.0)];
        assert_eq!(
            fit_bg_nbd(&one, &options),
            Err(ClvError::TooFewCustomers {
                customers: 1,
                required: 2
            })
        );
        assert_eq!(
            fit_gamma_gamma(&one, &options),
            Err(ClvError::TooFewCustomers {
                customers: 1,
                required: 2
            })
        );
        // Everyone bought once, on the calibration end day.
        let same_day = [summary(0, 0.0, 0.0, 0.0), summary(0, 0.0, 0.0, 0.0)];
        assert_eq!(fit_bg_nbd(&same_day, &options), Err(ClvError::NoObservedTime));
        assert_eq!(
            fit_gamma_gamma(&same_day, &options),
            Err(ClvError::NoRepeatBuyers)
        );
        // Everyone bought on a single day, earlier.
        let one_day_each = [summary(0, 0.0, 5.0, 0.0), summary(0, 0.0, 9.0, 0.0)];
        assert_eq!(fit_bg_nbd(&one_day_each, &options), Err(ClvError::NoRepeatBuyers));
        let refunded = [summary(2, 3.0, 5.0, -4.0), summary(1, 1.0, 9.0, 0.0)];
        assert_eq!(
            fit_gamma_gamma(&refunded, &options),
            Err(ClvError::NoPositiveRepeatSpend)
        );
        let invalid = [summary(1, 3.0, 5.0, 1.0), summary(1, 6.0, 5.0, 1.0)];
        assert!(matches!(
            fit_bg_nbd(&invalid, &options),
            Err(ClvError::InvalidCustomer { index: 1, .. })
        ));
        let invalid = [summary(1, 3.0, 5.0, 1.0), summary(0, 0.0, f64::NAN, 1.0)];
        assert!(matches!(
            fit_gamma_gamma(&invalid, &options),
            Err(ClvError::InvalidCustomer { index: 1, .. })
        ));
        // Every message says why.
        for error in [
            ClvError::NoCustomers,
            ClvError::NoRepeatBuyers,
            ClvError::NoObservedTime,
        ] {
            assert!(!error.to_string().is_empty());
        }
    }

    #[test]
    fn clv_fits_on_tiny_or_unusual_data_report_their_status_with_finite_parameters() {
        let options = FitOptions::default();
        let cases: [&[CustomerSummary]; 4] = [
            &[summary(1, 1.0, 2.0, 3.0), summary(0, 0.0, 2.0, 0.0)],
            // Every repeat buyer bought on the last day: nobody looks dead.
            &[summary(2, 4.0, 4.0, 3.0), summary(1, 2.0, 2.0, 3.0)],
            // Identical spends: no spend heterogeneity to estimate.
            &[summary(2, 4.0, 8.0, 3.0), summary(2, 4.0, 8.0, 3.0)],
            &[summary(5, 1.0, 30.0, 1.0), summary(1, 29.0, 30.0, 1000.0)],
        ];
        for customers in cases {
            let fit = fit_bg_nbd(customers, &options).unwrap();
            eprintln!("{fit:?}");
            let BgNbdParams { r, alpha, a, b } = fit.params;
            assert!([r, alpha, a, b].iter().all(|v| v.is_finite() && *v > 0.0));
            assert!(fit.log_likelihood.is_finite());
            // Two customers cannot pin down four parameters.
            assert_eq!(fit.status, FitStatus::ParameterAtLimit);
            assert!(!fit.converged());
            let fit = fit_gamma_gamma(customers, &options);
            eprintln!("{fit:?}");
            if let Ok(fit) = fit {
                let GammaGammaParams { p, q, v } = fit.params;
                assert!([p, q, v].iter().all(|v| v.is_finite() && *v > 0.0));
                assert!(fit.log_likelihood.is_finite());
                assert!(!fit.converged());
            }
        }
    }

    #[test]
    fn clv_fit_that_stops_early_is_reported_as_not_converged() {
        let customers = cdnow();
        let options = FitOptions {
            max_iterations: 2,
            ..FitOptions::default()
        };
        let fit = fit_bg_nbd(&customers, &options).unwrap();
        assert_eq!(fit.status, FitStatus::IterationLimit);
        assert!(!fit.converged());
        assert_eq!(fit.iterations, 2);
        assert!(fit.gradient_norm > options.gradient_tolerance);
        let fit = fit_gamma_gamma(&customers, &options).unwrap();
        assert_eq!(fit.status, FitStatus::IterationLimit);
    }

    #[test]
    fn clv_fit_does_not_depend_on_customer_order() {
        let mut customers = cdnow();
        let forward = fit_bg_nbd(&customers, &FitOptions::default()).unwrap();
        customers.reverse();
        let backward = fit_bg_nbd(&customers, &FitOptions::default()).unwrap();
        assert_eq!(forward, backward);
    }

    #[test]
    fn clv_analytic_gradients_match_finite_differences() {
        let customers = cdnow();
        let bg = BgNbdData::new(&customers).unwrap();
        let mut scratch = BgNbdScratch::default();
        let theta = [-1.2, -2.0, -0.3, 0.8];
        let (_, gradient) = bg.objective(&theta, &mut scratch);
        for i in 0..4 {
            let h = 1e-6;
            let mut up = theta;
            up[i] += h;
            let mut down = theta;
            down[i] -= h;
            let numeric =
                (bg.objective(&up, &mut scratch).0 - bg.objective(&down, &mut scratch).0) / (2.0 * h);
            assert!(
                (numeric - gradient[i]).abs() < 1e-7,
                "{i}: {numeric} vs {}",
                gradient[i]
            );
        }
        let gg = GammaGammaData::new(&customers).unwrap();
        let theta = [1.5, 1.0, -0.5];
        let (_, gradient) = gg.objective(&theta);
        for i in 0..3 {
            let h = 1e-6;
            let mut up = theta;
            up[i] += h;
            let mut down = theta;
            down[i] -= h;
            let numeric = (gg.objective(&up).0 - gg.objective(&down).0) / (2.0 * h);
            assert!(
                (numeric - gradient[i]).abs() < 1e-7,
                "{i}: {numeric} vs {}",
                gradient[i]
            );
        }
    }

    #[test]
    fn clv_special_functions_match_known_values() {
        let euler = 0.577_215_664_901_532_9;
        let pi_ln_half = 0.5 * std::f64::consts::PI.ln();
        let cases = [
            (1.0, 0.0),
            (2.0, 0.0),
            (0.5, pi_ln_half),
            (1.5, pi_ln_half - std::f64::consts::LN_2),
            (10.0, 362_880.0_f64.ln()),
            (100.0, 359.134_205_369_575_4),
            (1e-8, 18.420_680_738_180_21),
        ];
        for (x, expected) in cases {
            assert!(
                (ln_gamma(x) - expected).abs() < 1e-13,
                "lnΓ({x}) = {}",
                ln_gamma(x)
            );
        }
        let cases = [
            (1.0, -euler),
            (2.0, 1.0 - euler),
            (0.5, -euler - 2.0 * std::f64::consts::LN_2),
            (10.0, 2.251_752_589_066_721),
            (100.0, 4.600_161_852_738_087),
        ];
        for (x, expected) in cases {
            assert!((digamma(x) - expected).abs() < 1e-13, "ψ({x}) = {}", digamma(x));
        }
        // ψ is the derivative of ln Γ, across the shift boundary too.
        for x in [0.3, 0.9, 3.7, 9.99, 10.01, 57.0] {
            let h = 1e-5;
            let numeric = (ln_gamma(x + h) - ln_gamma(x - h)) / (2.0 * h);
            assert!((numeric - digamma(x)).abs() < 1e-8, "{x}");
        }
        assert!(ln_gamma(0.0).is_nan() && digamma(-1.0).is_nan());
    }

    /// 2F1(p, eps; c; z) summed term by term, for comparison.
    fn naive_hypergeometric(p: f64, eps: f64, c: f64, z: f64) -> f64 {
        let mut term = 1.0;
        let mut sum = 1.0;
        for n in 0..100_000 {
            let n = f64::from(n);
            term *= (p + n) * (eps + n) / ((c + n) * (n + 1.0)) * z;
            sum += term;
            if term.abs() < 1e-300 {
                break;
            }
        }
        sum
    }

    #[test]
    fn clv_hypergeometric_series_is_accurate_and_continuous_at_a_equal_to_one() {
        for (p, eps, c, z) in [
            (2.1, -0.2, 2.4, 0.3),
            (0.5, 0.7, 30.2, 0.9),
            (-0.4, -0.6, 0.3, 0.5),
            (4.0, 2.0, 1.5, 0.95),
        ] {
            let tail = hypergeometric_tail(p, eps, c, z).unwrap();
            let naive = c * (naive_hypergeometric(p, eps, c, z) - 1.0) / eps;
            assert!(relative_error(tail, naive) < 1e-12, "{tail} vs {naive}");
        }
        assert_eq!(hypergeometric_tail(1.0, 1.0, 1.0, 1.0), None);
        let customer = summary(3, 20.0, 30.0, 0.0);
        let at = |a: f64| {
            BgNbdParams::new(0.3, 4.0, a, 2.5)
                .unwrap()
                .conditional_expected_purchases(26.0, &customer)
                .unwrap()
        };
        let exact = at(1.0);
        assert!(exact.is_finite() && exact > 0.0);
        assert!((at(1.0 + 1e-9) - exact).abs() < 1e-8);
        assert!((at(1.0 - 1e-9) - exact).abs() < 1e-8);
        // Frequent buyers converge too.
        let frequent = summary(5000, 30.0, 30.0, 0.0);
        let value = at(0.8);
        assert!(value.is_finite());
        let params = BgNbdParams::new(0.3, 4.0, 0.8, 2.5).unwrap();
        let purchases = params.conditional_expected_purchases(52.0, &frequent).unwrap();
        assert!(purchases.is_finite() && purchases > 1000.0, "{purchases}");
    }

    #[test]
    fn clv_values_are_never_negative_and_settings_are_checked() {
        let (transactions, spend) = lifetimes_models();
        let refunder = summary(2, 10.0, 20.0, -50.0);
        let clv = customer_lifetime_value(&transactions, &spend, &refunder, &ClvSettings::default()).unwrap();
        assert!(clv >= 0.0);
        let zero_margin = ClvSettings {
            margin: 0.0,
            ..ClvSettings::default()
        };
        let customer = summary(2, 10.0, 20.0, 50.0);
        assert_eq!(
            customer_lifetime_value(&transactions, &spend, &customer, &zero_margin).unwrap(),
            0.0
        );
        let no_months = ClvSettings {
            months: 0,
            ..ClvSettings::default()
        };
        assert_eq!(
            customer_lifetime_value(&transactions, &spend, &customer, &no_months).unwrap(),
            0.0
        );
        for settings in [
            ClvSettings {
                monthly_discount_rate: -1.0,
                ..ClvSettings::default()
            },
            ClvSettings {
                margin: f64::NAN,
                ..ClvSettings::default()
            },
        ] {
            assert!(matches!(
                customer_lifetime_value(&transactions, &spend, &customer, &settings),
                Err(ClvError::InvalidParameter { .. })
            ));
        }
        let heavy_tailed = GammaGammaParams::new(2.0, 0.9, 10.0).unwrap();
        assert_eq!(
            customer_lifetime_value(&transactions, &heavy_tailed, &customer, &ClvSettings::default()),
            Err(ClvError::UnboundedSpend { q: 0.9 })
        );
        assert!(BgNbdParams::new(0.0, 1.0, 1.0, 1.0).is_err());
        assert!(GammaGammaParams::new(1.0, f64::INFINITY, 1.0).is_err());
        assert!(matches!(
            transactions.conditional_expected_purchases(-1.0, &customer),
            Err(ClvError::InvalidParameter { .. })
        ));
        assert!(matches!(
            transactions.probability_alive(&summary(0, 1.0, 2.0, 0.0)),
            Err(ClvError::InvalidSummary(_))
        ));
        // A day-unit CLV uses 30 days a month.
        let daily = ClvSettings {
            time_unit: TimeUnit::Day,
            ..ClvSettings::default()
        };
        assert!(customer_lifetime_value(&transactions, &spend, &customer, &daily).unwrap() > 0.0);
        assert_eq!(TimeUnit::Hour.periods_per_month(), 720.0);
    }

    // -- Synthetic population, for the million-customer timing print ----------------------

    /// A small deterministic generator (Knuth's MMIX constants).
    struct Lcg(u64);

    impl Lcg {
        fn uniform(&mut self) -> f64 {
            self.0 = self
                .0
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            ((self.0 >> 11) as f64 + 0.5) / (1_u64 << 53) as f64
        }

        fn normal(&mut self) -> f64 {
            let (u, v) = (self.uniform(), self.uniform());
            (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
        }

        /// Gamma(shape, 1) by Marsaglia & Tsang, boosted for shape < 1.
        fn gamma(&mut self, shape: f64) -> f64 {
            if shape < 1.0 {
                return self.gamma(shape + 1.0) * self.uniform().powf(1.0 / shape);
            }
            let d = shape - 1.0 / 3.0;
            let c = 1.0 / (9.0 * d).sqrt();
            loop {
                let x = self.normal();
                let v = (1.0 + c * x).powi(3);
                if v > 0.0 && self.uniform().ln() < 0.5 * x * x + d - d * v + d * v.ln() {
                    return d * v;
                }
            }
        }
    }

    /// Customers drawn from BG/NBD and Gamma-Gamma with the CDNOW parameters, first
    /// purchases spread over two years, summarised at day resolution.
    fn synthetic_population(customers: usize) -> Vec<CustomerSummary> {
        let mut random = Lcg(20_261_124);
        let end = 730_i64;
        let mut days = Vec::new();
        (0..customers)
            .map(|_| {
                let rate = random.gamma(0.2426) / 4.4135 / 7.0;
                let x = random.gamma(0.7929);
                let dropout = x / (x + random.gamma(2.4258));
                let scale = random.gamma(3.7446) / 15.4477;
                let first = (random.uniform() * end as f64) as i64;
                days.clear();
                let mut now = first as f64;
                loop {
                    days.push((now as i64, random.gamma(6.2488) / scale));
                    if random.uniform() < dropout && days.len() > 1 {
                        break;
                    }
                    now += -random.uniform().ln() / rate.max(1e-12);
                    if now > end as f64 {
                        break;
                    }
                }
                summarize_purchase_days(&days, end).unwrap().unwrap()
            })
            .collect()
    }

    #[test]
    fn clv_fit_recovers_the_parameters_of_a_simulated_population() {
        let customers = synthetic_population(20_000);
        let transactions = fit_bg_nbd(&customers, &FitOptions::default()).unwrap();
        let spend = fit_gamma_gamma(&customers, &FitOptions::default()).unwrap();
        eprintln!("{transactions:?}\n{spend:?}");
        assert!(transactions.converged() && spend.converged());
        let BgNbdParams { r, alpha, a, b } = transactions.params;
        let GammaGammaParams { p, q, v } = spend.params;
        let found = [r, alpha, a, b, p, q, v];
        let truth = [0.2426, 4.4135, 0.7929, 2.4258, 6.2488, 3.7446, 15.4477];
        for (found, truth) in found.into_iter().zip(truth) {
            assert!(relative_error(found, truth) < 0.25, "{found} vs {truth}");
        }
    }

    /// Prints how long fitting both models and scoring a million customers takes; a
    /// measurement, not a timed test (run it in release mode with --ignored --nocapture).
    #[test]
    #[ignore = "a timing print over a million customers; slow in debug builds"]
    fn clv_million_customers_timing() {
        let customers = synthetic_population(1_000_000);
        let started = Instant::now();
        let transactions = fit_bg_nbd(&customers, &FitOptions::default()).unwrap();
        let fitted_transactions = started.elapsed();
        let spend = fit_gamma_gamma(&customers, &FitOptions::default()).unwrap();
        let fitted_spend = started.elapsed();
        let model = ValueModel {
            transactions: transactions.params,
            spend: spend.params,
        };
        let scores = score_customers(&model, &customers, &ValueSettings::default()).unwrap();
        let total = started.elapsed();
        let failed = scores.iter().filter(|score| score.is_err()).count();
        eprintln!(
            "1,000,000 customers: BG/NBD fit {fitted_transactions:?} ({transactions:?}), \
             Gamma-Gamma fit {:?} ({spend:?}), scoring {:?}, total {total:?}, {failed} failed",
            fitted_spend - fitted_transactions,
            total - fitted_spend,
        );
        assert_eq!(failed, 0);
        assert!(transactions.converged() && spend.converged());
    }
}
