//! Customer value from stored aggregates: the value models' inputs (purchase summaries), the
//! fitted models as resources and back, and a customer's `CustomerValue`.
//!
//! Money stays in integer minor units everywhere it is stored; the models work in units of
//! the currency as floats (their parameters are continuous), and what they predict is rounded
//! back to minor units at the edge.

use std::time::Duration;

use crm_proto::customerprofile_v1 as profile;
use crm_proto::google::r#type::Money;
use crm_proto::money::{currency_exponent, from_minor_units, to_minor_units};
use crm_proto::segmentation_v1 as pb;

use crate::domain::clv::{
    self, BgNbdParams, ClvError, ClvSettings, CustomerSummary, CustomerValue, FitStatus, GammaGammaParams,
    ModelFit, TimeUnit, ValueModel, ValueSettings,
};
use crate::domain::feedback::{FeedbackSums, in_satisfaction_trap};
use crate::domain::scores::{self, Aggregates};
use crate::error::SegmentationError;
use crate::scoring::Settings;

pub const DEFAULT_CLV_MONTHS: i32 = 12;
pub const DEFAULT_MONTHLY_DISCOUNT_RATE: f64 = 0.01;
pub const DEFAULT_EXPECTED_PURCHASES_DAYS: i32 = 90;
/// Current value is the margin of this many days ending on the as-of day.
pub const CURRENT_VALUE_DAYS: i64 = 365;
const MAX_CLV_MONTHS: i32 = 120;
const MAX_EXPECTED_PURCHASES_DAYS: i32 = 3650;

/// Checks requested settings (field names under `field`) and fills every default but the
/// margin ratio, which needs the tenant's data.
pub fn checked_settings(
    field: &str,
    requested: Option<&pb::ValueModelSettings>,
) -> Result<pb::ValueModelSettings, SegmentationError> {
    let requested = requested.cloned().unwrap_or_default();
    let months = requested.clv_horizon_months.unwrap_or(DEFAULT_CLV_MONTHS);
    if !(1..=MAX_CLV_MONTHS).contains(&months) {
        return Err(SegmentationError::invalid(
            format!("{field}.clv_horizon_months"),
            format!("must be 1-{MAX_CLV_MONTHS}"),
        ));
    }
    let rate = requested
        .monthly_discount_rate
        .unwrap_or(DEFAULT_MONTHLY_DISCOUNT_RATE);
    if !(rate.is_finite() && (0.0..1.0).contains(&rate)) {
        return Err(SegmentationError::invalid(
            format!("{field}.monthly_discount_rate"),
            "must be at least 0 and below 1",
        ));
    }
    if let Some(margin) = requested.margin_ratio
        && !(margin.is_finite() && margin > 0.0 && margin <= 1.0)
    {
        return Err(SegmentationError::invalid(
            format!("{field}.margin_ratio"),
            "must be above 0 and at most 1",
        ));
    }
    let days = checked_purchases_days(
        &format!("{field}.expected_purchases_days"),
        requested.expected_purchases_days,
    )?
    .unwrap_or(DEFAULT_EXPECTED_PURCHASES_DAYS);
    Ok(pb::ValueModelSettings {
        clv_horizon_months: Some(months),
        monthly_discount_rate: Some(rate),
        margin_ratio: requested.margin_ratio,
        expected_purchases_days: Some(days),
    })
}

/// Checks an expected-purchases period in days.
pub fn checked_purchases_days(field: &str, days: Option<i32>) -> Result<Option<i32>, SegmentationError> {
    match days {
        Some(days) if !(1..=MAX_EXPECTED_PURCHASES_DAYS).contains(&days) => Err(SegmentationError::invalid(
            field,
            format!("must be 1-{MAX_EXPECTED_PURCHASES_DAYS}"),
        )),
        other => Ok(other),
    }
}

/// Minor units per unit of a currency (100 for USD).
fn minor_per_unit(currency: &str) -> f64 {
    f64::from(10_u32.pow(currency_exponent(currency).unwrap_or(2)))
}

/// A float amount of the currency as Money, rounded to its minor unit; `None` if not finite
/// or beyond what minor units hold.
pub fn money_of(currency: &str, amount: f64) -> Option<Money> {
    let minor = (amount * minor_per_unit(currency)).round();
    // i64::MAX as f64 rounds up to 2^63, so the bound is exclusive.
    (minor.is_finite() && minor.abs() < i64::MAX as f64).then(|| from_minor_units(currency, minor as i64))
}

/// Money as a float amount of `currency`, which it must be in.
pub fn amount_of(currency: &str, money: &Money) -> Option<f64> {
    if money.currency_code != currency {
        return None;
    }
    to_minor_units(money).map(|minor| minor as f64 / minor_per_unit(currency))
}

/// The customer's purchase days up to `as_of_day` with each day's net spend in units of the
/// currency: the models' transactions. A day with only refunds is not a purchase day; a
/// same-day refund lowers that day's spend.
pub fn purchase_days(aggregates: &Aggregates, as_of_day: i64, currency: &str) -> Vec<(i64, f64)> {
    let per_unit = minor_per_unit(currency);
    aggregates
        .days()
        .iter()
        .take_while(|day| day.day <= as_of_day)
        .filter(|day| day.purchases > 0)
        .map(|day| (day.day, day.net_minor as f64 / per_unit))
        .collect()
}

/// The customer's summary as of a day; `None` without a purchase by then.
pub fn summary_of(
    aggregates: &Aggregates,
    as_of_day: i64,
    currency: &str,
) -> Result<Option<CustomerSummary>, SegmentationError> {
    clv::summarize_purchase_days(&purchase_days(aggregates, as_of_day, currency), as_of_day)
        .map_err(|error| SegmentationError::corrupt(format!("purchase history: {error}")))
}

/// Known margin of the days in `(as_of_day - days, as_of_day]`.
fn margin_between(aggregates: &Aggregates, as_of_day: i64, days: i64) -> i64 {
    let after = as_of_day.saturating_sub(days);
    aggregates
        .days()
        .iter()
        .filter(|day| day.day > after && day.day <= as_of_day)
        .fold(0_i64, |sum, day| sum.saturating_add(day.margin_minor))
}

/// A model that predicts: the active version (or any converged one) in domain terms.
#[derive(Debug, Clone, PartialEq)]
pub struct PredictingModel {
    /// `valueModels/{version}`.
    pub name: String,
    pub currency: String,
    pub model: ValueModel,
    pub settings: ValueSettings,
}

impl PredictingModel {
    /// The model of a stored resource; `None` for one that was rejected (it must not
    /// predict).
    pub fn of(resource: &pb::ValueModel) -> Result<Option<Self>, SegmentationError> {
        if resource.state() == pb::value_model::State::Rejected {
            return Ok(None);
        }
        let corrupt = |what: &str| SegmentationError::corrupt(format!("{}: {what}", resource.name));
        let transactions = resource
            .transactions
            .as_ref()
            .ok_or_else(|| corrupt("no transactions model"))?;
        let spend = resource.spend.as_ref().ok_or_else(|| corrupt("no spend model"))?;
        let settings = resource.settings.as_ref().ok_or_else(|| corrupt("no settings"))?;
        let model = ValueModel {
            transactions: BgNbdParams::new(
                transactions.r,
                transactions.alpha,
                transactions.a,
                transactions.b,
            )
            .map_err(|error| corrupt(&error.to_string()))?,
            spend: GammaGammaParams::new(spend.p, spend.q, spend.v)
                .map_err(|error| corrupt(&error.to_string()))?,
        };
        let days = settings
            .expected_purchases_days
            .unwrap_or(DEFAULT_EXPECTED_PURCHASES_DAYS);
        Ok(Some(Self {
            name: resource.name.clone(),
            currency: resource.currency_code.clone(),
            model,
            settings: ValueSettings {
                purchases_horizon: f64::from(days) / clv::DAYS_PER_WEEK,
                clv: ClvSettings {
                    months: u32::try_from(settings.clv_horizon_months.unwrap_or(DEFAULT_CLV_MONTHS))
                        .unwrap_or(0),
                    monthly_discount_rate: settings
                        .monthly_discount_rate
                        .unwrap_or(DEFAULT_MONTHLY_DISCOUNT_RATE),
                    time_unit: TimeUnit::Week,
                    margin: settings.margin_ratio.unwrap_or(1.0),
                },
            },
        }))
    }

    /// The same model predicting expected purchases over another period.
    pub fn with_purchases_days(mut self, days: i32) -> Self {
        self.settings.purchases_horizon = f64::from(days) / clv::DAYS_PER_WEEK;
        self
    }

    /// Predictions for many summaries at once (the costly series are shared between equal
    /// frequency and age). A summary the model cannot evaluate gets no values; that is a
    /// bug or corrupt data, logged rather than failing everyone.
    pub fn predict(
        &self,
        summaries: &[Option<CustomerSummary>],
    ) -> Result<Vec<Option<CustomerValue>>, SegmentationError> {
        let present: Vec<CustomerSummary> = summaries.iter().flatten().copied().collect();
        let scored = clv::score_customers(&self.model, &present, &self.settings)
            .map_err(|error| SegmentationError::corrupt(format!("{}: {error}", self.name)))?;
        let mut scored = scored.into_iter();
        Ok(summaries
            .iter()
            .map(|summary| {
                summary.and_then(|_| match scored.next() {
                    Some(Ok(value)) => Some(value),
                    Some(Err(error)) => {
                        tracing::warn!(model = self.name, %error, "a customer's value cannot be computed");
                        None
                    }
                    None => None,
                })
            })
            .collect())
    }
}

/// The profile attribute holding a customer's declared annual spend in the category.
pub const DECLARED_CATEGORY_SPEND: &str = "declared_category_spend";

/// Share of wallet in percent: `spend_minor` over the declared annual category spend, capped
/// at 100; `None` without a positive numeric declaration.
fn share_of_wallet(spend_minor: i64, currency: &str, facts: Option<&profile::Customer>) -> Option<f64> {
    use profile::attribute_value::Value as Attribute;
    let declared = match facts?.attributes.get(DECLARED_CATEGORY_SPEND)?.value.as_ref()? {
        Attribute::IntValue(units) => *units as f64,
        Attribute::DoubleValue(units) => *units,
        _ => return None,
    };
    (declared.is_finite() && declared > 0.0)
        .then(|| (spend_minor.max(0) as f64 / minor_per_unit(currency) / declared * 100.0).min(100.0))
}

/// What a customer's value is computed from, besides the model.
pub struct ValueInput<'a> {
    pub aggregates: &'a Aggregates,
    pub feedback: &'a FeedbackSums,
    pub as_of_day: i64,
    pub settings: &'a Settings,
    pub facts: Option<&'a profile::Customer>,
    /// Lifetime net spend of the customers they referred, minor units.
    pub referral_minor: i64,
}

/// A customer's value resource: margins, share of wallet and feedback from the aggregates and
/// profile facts, the rest from the model's prediction when there is one.
pub fn customer_value(
    input: ValueInput<'_>,
    model: Option<(&PredictingModel, CustomerValue)>,
) -> pb::CustomerValue {
    let ValueInput {
        aggregates,
        feedback,
        as_of_day,
        settings,
        facts,
        referral_minor,
    } = input;
    let currency = settings.currency.as_str();
    let recent_spend = aggregates
        .window(as_of_day, CURRENT_VALUE_DAYS)
        .map_or(0, |window| window.monetary_minor);
    let stage = scores::lifecycle_stage(aggregates, as_of_day, &settings.lifecycle);
    let mut value = pb::CustomerValue {
        share_of_wallet: share_of_wallet(recent_spend, currency, facts),
        referral_value: Some(from_minor_units(currency, referral_minor)),
        mean_csat: feedback.mean_csat(),
        csat_responses: feedback.csat_responses,
        delivered_value: feedback.delivered_value(),
        satisfaction_trap: in_satisfaction_trap(feedback, aggregates, stage, as_of_day),
        historical_value: Some(from_minor_units(currency, aggregates.lifetime_margin_minor())),
        current_value: Some(from_minor_units(
            currency,
            margin_between(aggregates, as_of_day, CURRENT_VALUE_DAYS),
        )),
        ..Default::default()
    };
    if let Some((model, predicted)) = model {
        value.model = model.name.clone();
        value.probability_alive = Some(predicted.probability_alive);
        value.churn_risk = Some(predicted.churn_risk);
        value.expected_purchases = Some(predicted.expected_purchases);
        value.potential_value = money_of(currency, predicted.potential_value);
    }
    value
}

/// The prediction resource for one summary.
pub fn prediction(
    customer: String,
    summary: Option<CustomerSummary>,
    predicted: Option<CustomerValue>,
    currency: &str,
) -> pb::CustomerValuePrediction {
    let mut resource = pb::CustomerValuePrediction {
        customer,
        ..Default::default()
    };
    if let (Some(summary), Some(predicted)) = (summary, predicted) {
        resource.summary = Some(pb::PurchaseSummary {
            frequency: i64::from(summary.frequency),
            recency_weeks: summary.recency,
            age_weeks: summary.age,
            average_repeat_spend: money_of(currency, summary.monetary_value),
        });
        resource.probability_alive = Some(predicted.probability_alive);
        resource.churn_risk = Some(predicted.churn_risk);
        resource.expected_purchases = Some(predicted.expected_purchases);
        resource.expected_average_spend = money_of(currency, predicted.expected_average_spend);
        resource.potential_value = money_of(currency, predicted.potential_value);
    }
    resource
}

/// A what-if summary from the request (fields named under `field`).
pub fn summary_from_request(
    field: &str,
    summary: &pb::PurchaseSummary,
    currency: &str,
) -> Result<CustomerSummary, SegmentationError> {
    let frequency = u32::try_from(summary.frequency)
        .map_err(|_| SegmentationError::invalid(format!("{field}.frequency"), "must be 0 or more"))?;
    let monetary_value = match &summary.average_repeat_spend {
        None => 0.0,
        Some(money) => amount_of(currency, money).ok_or_else(|| {
            SegmentationError::invalid(
                format!("{field}.average_repeat_spend"),
                format!("must be an amount of {currency}, the model's currency"),
            )
        })?,
    };
    let customer = CustomerSummary {
        frequency,
        recency: summary.recency_weeks,
        age: summary.age_weeks,
        monetary_value,
    };
    customer.check().map_err(|reason| {
        let which = if reason.contains("recency") {
            "recency_weeks"
        } else if reason.contains("age") {
            "age_weeks"
        } else {
            "average_repeat_spend"
        };
        SegmentationError::invalid(format!("{field}.{which}"), reason)
    })?;
    Ok(customer)
}

/// What a fit found, before it is stored.
pub struct FitOutcome {
    pub transactions: ModelFit<BgNbdParams>,
    pub spend: ModelFit<GammaGammaParams>,
    pub duration: Duration,
}

impl FitOutcome {
    /// Why the fit must not be used; `None` when both models converged.
    pub fn rejection(&self) -> Option<String> {
        let mut reasons = Vec::new();
        if !self.transactions.converged() {
            reasons.push(format!(
                "the BG/NBD fit ended {}",
                status_text(self.transactions.status)
            ));
        }
        if !self.spend.converged() {
            reasons.push(format!(
                "the Gamma-Gamma fit ended {}",
                status_text(self.spend.status)
            ));
        }
        (!reasons.is_empty()).then(|| reasons.join("; "))
    }
}

fn status_text(status: FitStatus) -> &'static str {
    match status {
        FitStatus::Converged => "converged",
        FitStatus::IterationLimit => "at the iteration limit without converging",
        FitStatus::NoProgress => "without progress before converging",
        FitStatus::ParameterAtLimit => {
            "with a parameter running off to 0 or infinity (the data has no interior maximum)"
        }
    }
}

fn status_to_proto(status: FitStatus) -> pb::FitStatus {
    match status {
        FitStatus::Converged => pb::FitStatus::Converged,
        FitStatus::IterationLimit => pb::FitStatus::IterationLimit,
        FitStatus::NoProgress => pb::FitStatus::NoProgress,
        FitStatus::ParameterAtLimit => pb::FitStatus::ParameterAtLimit,
    }
}

fn report<P>(fit: &ModelFit<P>) -> pb::ModelFitReport {
    pb::ModelFitReport {
        status: status_to_proto(fit.status).into(),
        iterations: i32::try_from(fit.iterations).unwrap_or(i32::MAX),
        evaluations: i32::try_from(fit.evaluations).unwrap_or(i32::MAX),
        gradient_norm: fit.gradient_norm,
        customers: i64::try_from(fit.customers).unwrap_or(i64::MAX),
        patterns: i64::try_from(fit.patterns).unwrap_or(i64::MAX),
        log_likelihood: fit.log_likelihood,
    }
}

/// The models' parts of the resource.
pub fn fitted_models(outcome: &FitOutcome) -> (pb::BgNbdModel, pb::GammaGammaModel) {
    let BgNbdParams { r, alpha, a, b } = outcome.transactions.params;
    let GammaGammaParams { p, q, v } = outcome.spend.params;
    (
        pb::BgNbdModel {
            r,
            alpha,
            a,
            b,
            fit: Some(report(&outcome.transactions)),
        },
        pb::GammaGammaModel {
            p,
            q,
            v,
            fit: Some(report(&outcome.spend)),
        },
    )
}

/// Fits both models. Data that cannot identify them is [`SegmentationError::CannotFit`].
pub fn fit(customers: &[CustomerSummary]) -> Result<FitOutcome, SegmentationError> {
    let started = std::time::Instant::now();
    let options = clv::FitOptions::default();
    let transactions = clv::fit_bg_nbd(customers, &options)
        .map_err(|error: ClvError| SegmentationError::CannotFit(format!("BG/NBD (purchases): {error}")))?;
    let spend = clv::fit_gamma_gamma(customers, &options).map_err(|error: ClvError| {
        SegmentationError::CannotFit(format!(
            "Gamma-Gamma (spend, fitted on the customers with a repeat purchase): {error}"
        ))
    })?;
    Ok(FitOutcome {
        transactions,
        spend,
        duration: started.elapsed(),
    })
}

/// The margin ratio a fit uses when none is requested: the tenant's known margin over its
/// net spend, clamped to (0, 1]; 1 when purchases carry no margin.
pub fn default_margin_ratio(margin_minor: i64, net_minor: i64) -> f64 {
    if margin_minor <= 0 || net_minor <= 0 {
        return 1.0;
    }
    (margin_minor as f64 / net_minor as f64).min(1.0)
}
