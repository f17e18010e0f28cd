//! From stored aggregates to a customer's scores resource: the tenant's settings, the cut-offs
//! of the last score run, and the stage history carried over from the previous scores.

use chrono::{DateTime, Utc};
use crm_proto::customerprofile_v1 as profile;
use crm_proto::money::from_minor_units;
use crm_proto::segmentation_v1 as pb;
use prost::Message;
use uuid::Uuid;

use crate::domain::feedback::FeedbackSums;
use crate::domain::scores::{
    self, AbcClass, AbcThresholds, Aggregates, CustomerScores, Cutoffs, EndedPattern, LifecycleParams,
    LifecycleStage, RfmSegment, ValueClass, WindowValues,
};
use crate::error::SegmentationError;
use crate::membership::{CustomerView, GradeRules};
use crate::store::{ScoresRow, StoredOrigin, TenantStateRow};

pub const DEFAULT_CURRENCY: &str = "USD";
pub const DEFAULT_WINDOW_DAYS: i32 = 365;
pub const DEFAULT_ABC_A_SHARE: f64 = 0.8;
pub const DEFAULT_ABC_B_SHARE: f64 = 0.95;

/// The tenant's settings with defaults filled in.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    pub currency: String,
    pub window_days: i64,
    pub abc: AbcThresholds,
    pub lifecycle: LifecycleParams,
    /// The value-grading rules, parsed.
    pub grades: GradeRules,
}

/// The stored settings resource with every unset field at its default.
pub fn settings_resource(state: &TenantStateRow) -> Result<pb::ScoringSettings, SegmentationError> {
    let mut settings = if state.settings.is_empty() {
        pb::ScoringSettings::default()
    } else {
        pb::ScoringSettings::decode(state.settings.as_slice()).map_err(SegmentationError::corrupt)?
    };
    settings.name = "scoringSettings".into();
    if settings.currency_code.is_empty() {
        settings.currency_code = DEFAULT_CURRENCY.into();
    }
    if settings.rfm_window_days == 0 {
        settings.rfm_window_days = DEFAULT_WINDOW_DAYS;
    }
    if settings.abc_a_share == 0.0 {
        settings.abc_a_share = DEFAULT_ABC_A_SHARE;
    }
    if settings.abc_b_share == 0.0 {
        settings.abc_b_share = DEFAULT_ABC_B_SHARE;
    }
    settings.etag = format!("\"{}\"", state.settings_revision);
    Ok(settings)
}

impl Settings {
    pub fn of(state: &TenantStateRow) -> Result<Self, SegmentationError> {
        let resource = settings_resource(state)?;
        Ok(Self {
            currency: resource.currency_code,
            window_days: i64::from(resource.rfm_window_days),
            abc: AbcThresholds::new(resource.abc_a_share, resource.abc_b_share)?,
            lifecycle: LifecycleParams {
                ended_after_days: i64::from(resource.rfm_window_days),
                ..LifecycleParams::default()
            },
            // Checked when stored, so a failure here is stored data gone bad.
            grades: GradeRules::of(&resource.value_grade_rules)
                .map_err(|error| SegmentationError::corrupt(format!("stored grading rules: {error}")))?,
        })
    }
}

/// The cut-offs of the last score run, with when they were computed.
pub fn cutoffs_of(state: &TenantStateRow) -> Result<Option<(Cutoffs, DateTime<Utc>)>, SegmentationError> {
    match (&state.cutoffs, state.cutoffs_time) {
        (Some(bytes), Some(time)) => Ok(Some((Cutoffs::decode(bytes)?, time))),
        _ => Ok(None),
    }
}

/// A customer's aggregates: the sum of the origins it owns.
pub fn combine(origins: &[StoredOrigin]) -> Result<(Aggregates, i64), SegmentationError> {
    let mut total = Aggregates::new();
    let mut other_currency_events = 0_i64;
    for origin in origins {
        total.merge_from(&Aggregates::decode(&origin.days)?)?;
        other_currency_events = other_currency_events.saturating_add(origin.other_currency_events);
    }
    Ok((total, other_currency_events))
}

/// A customer's feedback: the sum of the origins it owns.
pub fn combine_feedback(origins: &[StoredOrigin]) -> Result<FeedbackSums, SegmentationError> {
    let mut total = FeedbackSums::default();
    for origin in origins {
        total.merge_from(&FeedbackSums::decode(&origin.feedback)?)?;
    }
    Ok(total)
}

/// What one customer is scored from.
pub struct ScoreInput<'a> {
    pub customer: Uuid,
    pub aggregates: &'a Aggregates,
    pub other_currency_events: i64,
    pub as_of: DateTime<Utc>,
    pub settings: &'a Settings,
    /// The last run's cut-offs; without them (before the first run) there is no RFM.
    pub cutoffs: Option<&'a (Cutoffs, DateTime<Utc>)>,
    /// The scores a score run computed for this customer exactly (batch ranks); `None` to score
    /// against the cut-offs.
    pub exact: Option<CustomerScores>,
    /// The customer's scores before, for the stage history.
    pub previous: Option<&'a ScoresRow>,
    /// The customer's profile facts, which grading rules may read.
    pub facts: Option<&'a profile::Customer>,
    /// The customer's value (margins, and the active value model's predictions).
    pub value: pb::CustomerValue,
    /// The writing transaction's score revision.
    pub revision: i64,
    pub now: DateTime<Utc>,
}

/// The window an input is scored over: the run's when there are cut-offs (so a customer is
/// compared with the population on the same terms), the settings' otherwise.
pub fn window_of(input_settings: &Settings, cutoffs: Option<&(Cutoffs, DateTime<Utc>)>) -> i64 {
    cutoffs.map_or(input_settings.window_days, |(cutoffs, _)| cutoffs.window_days())
}

/// Scores one customer: the resource and the row to store.
pub fn score(input: ScoreInput<'_>) -> Result<(pb::CustomerScores, ScoresRow), SegmentationError> {
    let as_of_day = scores::day_of(input.as_of);
    let window_days = window_of(input.settings, input.cutoffs);
    let window = input.aggregates.window(as_of_day, window_days);
    let computed = match (input.exact, window, input.cutoffs) {
        (Some(exact), Some(_), _) => Some(exact),
        (None, Some(values), Some((cutoffs, _))) => Some(cutoffs.score(&values)),
        _ => None,
    };
    let stage = scores::lifecycle_stage(input.aggregates, as_of_day, &input.settings.lifecycle);
    let ended_pattern = if stage == LifecycleStage::Ended {
        scores::ended_in(input.aggregates, &input.settings.lifecycle).and_then(EndedPattern::from_stage)
    } else {
        None
    };

    let previous = match input.previous {
        Some(row) => {
            Some(pb::CustomerScores::decode(row.body.as_slice()).map_err(SegmentationError::corrupt)?)
        }
        None => None,
    };
    let mut history = previous
        .as_ref()
        .map(|p| p.stage_history.clone())
        .unwrap_or_default();
    let stage_proto = stage_to_proto(stage);
    let previous_stage = previous
        .as_ref()
        .map_or(pb::LifecycleStage::Unspecified, |p| p.lifecycle_stage());
    if previous_stage != stage_proto {
        history.push(pb::StageTransition {
            from_stage: previous_stage.into(),
            to_stage: stage_proto.into(),
            time: Some(timestamp(input.now)),
        });
    }

    let currency = &input.settings.currency;
    let rfm = match (computed, window) {
        (Some(scores), Some(values)) => Some(rfm_proto(&scores, &values, as_of_day, currency)),
        _ => None,
    };
    let lifetime = pb::Lifetime {
        first_purchase_time: input.aggregates.first_purchase_day().map(day_start),
        last_purchase_time: input.aggregates.last_purchase_day().map(day_start),
        purchase_count: input.aggregates.lifetime_purchases(),
        net_spend: Some(from_minor_units(currency, input.aggregates.lifetime_net_minor())),
        margin: Some(from_minor_units(
            currency,
            input.aggregates.lifetime_margin_minor(),
        )),
    };
    let mut resource = pb::CustomerScores {
        name: format!("customers/{}/scores", input.customer),
        customer: format!("customers/{}", input.customer),
        rfm,
        value_class: computed
            .map_or(pb::ValueClass::Unspecified, |s| {
                value_class_to_proto(s.value_class)
            })
            .into(),
        abc_class: computed
            .map_or(pb::AbcClass::Unspecified, |s| abc_to_proto(s.abc))
            .into(),
        lifecycle_stage: stage_proto.into(),
        ended_pattern: ended_pattern
            .map_or(pb::EndedPattern::Unspecified, ended_to_proto)
            .into(),
        stage_history: history,
        lifetime: Some(lifetime),
        other_currency_events: input.other_currency_events,
        as_of_time: Some(timestamp(input.as_of)),
        cutoffs_time: input.cutoffs.map(|(_, time)| timestamp(*time)),
        update_time: Some(timestamp(input.now)),
        value_grade: String::new(),
        value: Some(input.value),
    };
    resource.value_grade = input.settings.grades.grade(&CustomerView {
        scores: &resource,
        facts: input.facts,
    });
    let row = row_of(input.customer, &resource, input.revision, input.now);
    Ok((resource, row))
}

/// The row storing `resource`.
pub fn row_of(customer: Uuid, resource: &pb::CustomerScores, revision: i64, now: DateTime<Utc>) -> ScoresRow {
    let rfm = resource.rfm.as_ref();
    ScoresRow {
        customer_id: customer,
        stage: resource.lifecycle_stage,
        ended_pattern: resource.ended_pattern,
        r_score: rfm.map_or(0, |rfm| rfm.r_score),
        f_score: rfm.map_or(0, |rfm| rfm.f_score),
        segment: rfm.map_or(0, |rfm| rfm.segment),
        value_class: resource.value_class,
        abc_class: resource.abc_class,
        monetary_minor: rfm
            .and_then(|rfm| rfm.monetary.as_ref())
            .and_then(crm_proto::money::to_minor_units)
            .unwrap_or(0),
        revision,
        body: resource.encode_to_vec(),
        update_time: now,
    }
}

/// The fields of the hot-score hash (DESIGN section 6) this service owns.
pub fn hot_fields(resource: &pb::CustomerScores) -> Vec<(&'static str, Vec<u8>)> {
    let rfm = resource.rfm.as_ref();
    let value = resource.value.as_ref();
    let text = |value: &str| value.as_bytes().to_vec();
    vec![
        ("rfm", text(rfm.map_or("", |rfm| rfm.code.as_str()))),
        ("segment", text(rfm.map_or("", |rfm| rfm.segment().as_str_name()))),
        ("value_class", text(resource.value_class().as_str_name())),
        ("abc", text(resource.abc_class().as_str_name())),
        ("stage", text(resource.lifecycle_stage().as_str_name())),
        ("grade", text(&resource.value_grade)),
        (
            "clv",
            text(
                &value
                    .and_then(|value| value.potential_value.as_ref())
                    .map_or_else(String::new, decimal_text),
            ),
        ),
        (
            "p_alive",
            text(
                &value
                    .and_then(|value| value.probability_alive)
                    .map_or_else(String::new, |p| format!("{p:.6}")),
            ),
        ),
        (
            "churn_risk",
            text(
                &value
                    .and_then(|value| value.churn_risk)
                    .map_or_else(String::new, |p| format!("{p:.6}")),
            ),
        ),
        (
            "share_of_wallet",
            text(
                &value
                    .and_then(|value| value.share_of_wallet)
                    .map_or_else(String::new, |share| format!("{share:.2}")),
            ),
        ),
        (
            "historical_value",
            text(&money_field(
                value.and_then(|value| value.historical_value.as_ref()),
            )),
        ),
        (
            "current_value",
            text(&money_field(value.and_then(|value| value.current_value.as_ref()))),
        ),
        (
            "referral_value",
            text(&money_field(
                value.and_then(|value| value.referral_value.as_ref()),
            )),
        ),
        (
            "expected_purchases",
            text(
                &value
                    .and_then(|value| value.expected_purchases)
                    .map_or_else(String::new, |expected| format!("{expected:.6}")),
            ),
        ),
        (
            "delivered_value",
            text(
                &value
                    .and_then(|value| value.delivered_value)
                    .map_or_else(String::new, |delivered| format!("{delivered:.2}")),
            ),
        ),
        (
            "updated_at",
            text(
                &resource
                    .update_time
                    .as_ref()
                    .map_or(0, |time| {
                        time.seconds.saturating_mul(1000) + i64::from(time.nanos / 1_000_000)
                    })
                    .to_string(),
            ),
        ),
        (HOT_SCORES_FIELD, resource.encode_to_vec()),
    ]
}

/// The hash field holding the revision of what the hash holds (see `ScoresRow::revision`).
pub const HOT_REVISION_FIELD: &str = "segmentation_revision";

/// The hash field holding the whole encoded `CustomerScores`, which GetCustomerScores reads.
pub const HOT_SCORES_FIELD: &str = "segmentation";

/// Every hash field this service writes (erasure removes them).
pub const HOT_FIELD_NAMES: [&str; 17] = [
    "rfm",
    "segment",
    "value_class",
    "abc",
    "stage",
    "grade",
    "clv",
    "p_alive",
    "churn_risk",
    "share_of_wallet",
    "historical_value",
    "current_value",
    "referral_value",
    "expected_purchases",
    "delivered_value",
    "updated_at",
    HOT_SCORES_FIELD,
];

fn rfm_proto(scores: &CustomerScores, values: &WindowValues, as_of_day: i64, currency: &str) -> pb::Rfm {
    pb::Rfm {
        recency_days: values.recency_days(as_of_day),
        frequency: values.frequency,
        monetary: Some(from_minor_units(currency, values.monetary_minor)),
        r_score: i32::from(scores.r),
        f_score: i32::from(scores.f),
        m_score: i32::from(scores.m),
        code: scores.rfm_code(),
        segment: segment_to_proto(scores.segment).into(),
    }
}

pub fn timestamp(time: DateTime<Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: time.timestamp(),
        nanos: i32::try_from(time.timestamp_subsec_nanos()).unwrap_or(0),
    }
}

/// The start (00:00 UTC) of an epoch day.
pub fn day_start(day: i64) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: day.saturating_mul(86_400),
        nanos: 0,
    }
}

pub fn segment_to_proto(segment: RfmSegment) -> pb::RfmSegment {
    match segment {
        RfmSegment::Champions => pb::RfmSegment::Champions,
        RfmSegment::Loyal => pb::RfmSegment::Loyal,
        RfmSegment::PotentialLoyalists => pb::RfmSegment::PotentialLoyalists,
        RfmSegment::New => pb::RfmSegment::New,
        RfmSegment::Promising => pb::RfmSegment::Promising,
        RfmSegment::NeedAttention => pb::RfmSegment::NeedAttention,
        RfmSegment::AboutToSleep => pb::RfmSegment::AboutToSleep,
        RfmSegment::AtRisk => pb::RfmSegment::AtRisk,
        RfmSegment::CantLose => pb::RfmSegment::CantLose,
        RfmSegment::Hibernating => pb::RfmSegment::Hibernating,
    }
}

pub fn value_class_to_proto(class: ValueClass) -> pb::ValueClass {
    match class {
        ValueClass::ImportantValue => pb::ValueClass::ImportantValue,
        ValueClass::ImportantDevelopment => pb::ValueClass::ImportantDevelopment,
        ValueClass::ImportantRetention => pb::ValueClass::ImportantRetention,
        ValueClass::ImportantWinBack => pb::ValueClass::ImportantWinBack,
        ValueClass::GeneralValue => pb::ValueClass::GeneralValue,
        ValueClass::GeneralDevelopment => pb::ValueClass::GeneralDevelopment,
        ValueClass::GeneralRetention => pb::ValueClass::GeneralRetention,
        ValueClass::GeneralWinBack => pb::ValueClass::GeneralWinBack,
    }
}

pub fn abc_to_proto(class: AbcClass) -> pb::AbcClass {
    match class {
        AbcClass::A => pb::AbcClass::A,
        AbcClass::B => pb::AbcClass::B,
        AbcClass::C => pb::AbcClass::C,
    }
}

pub fn stage_to_proto(stage: LifecycleStage) -> pb::LifecycleStage {
    match stage {
        LifecycleStage::Exploration => pb::LifecycleStage::Exploration,
        LifecycleStage::Formation => pb::LifecycleStage::Formation,
        LifecycleStage::Stability => pb::LifecycleStage::Stability,
        LifecycleStage::Decline => pb::LifecycleStage::Decline,
        LifecycleStage::Ended => pb::LifecycleStage::Ended,
    }
}

pub fn ended_to_proto(pattern: EndedPattern) -> pb::EndedPattern {
    match pattern {
        EndedPattern::EarlyAbort => pb::EndedPattern::EarlyAbort,
        EndedPattern::MidWay => pb::EndedPattern::MidWay,
        EndedPattern::EarlyExit => pb::EndedPattern::EarlyExit,
        EndedPattern::LongTerm => pb::EndedPattern::LongTerm,
    }
}

/// A hot-hash money field: decimal text, empty when unset.
fn money_field(money: Option<&crm_proto::google::r#type::Money>) -> String {
    money.map_or_else(String::new, decimal_text)
}

/// Money as plain decimal text in its currency's minor-unit precision, e.g. `1234.50`.
pub fn decimal_text(money: &crm_proto::google::r#type::Money) -> String {
    let exponent = crm_proto::money::currency_exponent(&money.currency_code).unwrap_or(2);
    match crm_proto::money::to_minor_units(money) {
        Some(minor) if exponent > 0 => {
            let scale = 10_i64.pow(exponent);
            let sign = if minor < 0 { "-" } else { "" };
            let width = usize::try_from(exponent).unwrap_or(2);
            format!(
                "{sign}{}.{:0width$}",
                (minor / scale).unsigned_abs(),
                (minor % scale).unsigned_abs()
            )
        }
        Some(minor) => minor.to_string(),
        None => String::new(),
    }
}
