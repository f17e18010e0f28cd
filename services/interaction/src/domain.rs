//! The rules of touchpoint records, pure (no IO): names, money, times, limits, and what a
//! valid touchpoint, purchase, refund, feedback or callback is.
//!
//! A record's content is its proto message (without its name, which derives from where it is
//! stored): the messages are the contract, and a second set of structs mirroring them field by
//! field would add conversions and nothing else. What is ours is here: validation that names
//! each bad field, money as integer minor units, and what erasure removes.

use chrono::{DateTime, Duration, SubsecRound, TimeZone, Utc};
use crm_proto::google::r#type::Money as ProtoMoney;
use crm_proto::interaction_v1 as pb;
use uuid::Uuid;

use crate::error::InteractionError;

/// How far in the future an occurrence may lie (clocks of source systems drift).
pub const MAX_FUTURE_SKEW: Duration = Duration::hours(24);
/// How far ahead a callback may be scheduled.
pub const MAX_CALLBACK_HORIZON: Duration = Duration::days(3660);
/// The longest touchpoint.
pub const MAX_INTERACTION_DURATION: Duration = Duration::days(7);
/// Lines per purchase.
pub const MAX_LINE_ITEMS: usize = 1000;

/// What kind of record a row of the records table holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RecordKind {
    Interaction,
    Purchase,
    Refund,
    Feedback,
}

impl RecordKind {
    pub fn as_stored(self) -> &'static str {
        match self {
            Self::Interaction => "interaction",
            Self::Purchase => "purchase",
            Self::Refund => "refund",
            Self::Feedback => "feedback",
        }
    }

    pub fn from_stored(stored: &str) -> Option<Self> {
        match stored {
            "interaction" => Some(Self::Interaction),
            "purchase" => Some(Self::Purchase),
            "refund" => Some(Self::Refund),
            "feedback" => Some(Self::Feedback),
            _ => None,
        }
    }

    /// The collection id in resource names.
    pub fn collection(self) -> &'static str {
        match self {
            Self::Interaction => "interactions",
            Self::Purchase => "purchases",
            Self::Refund => "refunds",
            Self::Feedback => "feedback",
        }
    }
}

pub fn new_id() -> Uuid {
    Uuid::now_v7()
}

/// Now, at the microsecond precision every stored time has.
pub fn now() -> DateTime<Utc> {
    Utc::now().trunc_subsecs(6)
}

pub fn customer_name(customer: Uuid) -> String {
    format!("customers/{customer}")
}

/// The name of a record directly under a customer (not refunds).
pub fn record_name(kind: RecordKind, customer: Uuid, id: Uuid) -> String {
    format!("customers/{customer}/{}/{id}", kind.collection())
}

pub fn refund_name(customer: Uuid, purchase: Uuid, id: Uuid) -> String {
    format!("customers/{customer}/purchases/{purchase}/refunds/{id}")
}

pub fn callback_name(customer: Uuid, id: Uuid) -> String {
    format!("customers/{customer}/callbacks/{id}")
}

fn parse_id(text: &str) -> Option<Uuid> {
    // Only the canonical hyphenated lower-case form, so one resource has one name.
    let id = Uuid::parse_str(text).ok()?;
    (id.hyphenated().to_string() == text).then_some(id)
}

/// `customers/{id}`.
pub fn parse_customer_name(name: &str, field: &str) -> Result<Uuid, InteractionError> {
    name.strip_prefix("customers/").and_then(parse_id).ok_or_else(|| {
        InteractionError::invalid(
            field,
            format!("{name:?} is not a customer name (customers/{{id}})"),
        )
    })
}

/// The customer part of a record name: a customer, or `-` for any.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CustomerPart {
    Any,
    Customer(Uuid),
}

/// `customers/{customer}/{collection}/{id}`, with `-` allowed as the customer.
pub fn parse_record_name(
    name: &str,
    collection: &str,
    field: &str,
) -> Result<(CustomerPart, Uuid), InteractionError> {
    let invalid = || {
        InteractionError::invalid(
            field,
            format!("{name:?} is not a name of the form customers/{{customer}}/{collection}/{{id}}"),
        )
    };
    let parts: Vec<&str> = name.split('/').collect();
    let ["customers", customer, found_collection, id] = parts.as_slice() else {
        return Err(invalid());
    };
    if *found_collection != collection {
        return Err(invalid());
    }
    let customer = match *customer {
        "-" => CustomerPart::Any,
        other => CustomerPart::Customer(parse_id(other).ok_or_else(invalid)?),
    };
    Ok((customer, parse_id(id).ok_or_else(invalid)?))
}

/// `customers/{customer}/purchases/{purchase}/refunds/{id}`.
pub fn parse_refund_name(name: &str, field: &str) -> Result<(CustomerPart, Uuid, Uuid), InteractionError> {
    let invalid = || {
        InteractionError::invalid(
            field,
            format!(
                "{name:?} is not a refund name (customers/{{customer}}/purchases/{{purchase}}/refunds/{{id}})"
            ),
        )
    };
    let (purchase_name, refund) = name.rsplit_once("/refunds/").ok_or_else(invalid)?;
    let (customer, purchase) = parse_record_name(purchase_name, "purchases", field).map_err(|_| invalid())?;
    Ok((customer, purchase, parse_id(refund).ok_or_else(invalid)?))
}

/// `customers/{customer}/touchpointStats`.
pub fn parse_stats_name(name: &str) -> Result<Uuid, InteractionError> {
    name.strip_suffix("/touchpointStats")
        .and_then(|customer| customer.strip_prefix("customers/"))
        .and_then(parse_id)
        .ok_or_else(|| {
            InteractionError::invalid(
                "name",
                format!("{name:?} is not of the form customers/{{customer}}/touchpointStats"),
            )
        })
}

/// An amount in integer minor units of an ISO 4217 currency (cents for USD, yen for JPY).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Money {
    pub currency: String,
    pub minor_units: i64,
}

/// 10^(9 - exponent): how many nanos make one minor unit.
fn nanos_per_minor_unit(exponent: u32) -> i64 {
    10_i64.pow(9 - exponent)
}

fn currency_exponent(code: &str, field: &str) -> Result<u32, InteractionError> {
    let currency = iso_currency::Currency::from_code(code).ok_or_else(|| {
        InteractionError::invalid(
            format!("{field}.currency_code"),
            format!("{code:?} is not an ISO 4217 currency"),
        )
    })?;
    // Funds and metals (XAU, XDR…) have no minor unit; they are not money a customer pays in.
    currency
        .exponent()
        .map(u32::from)
        .filter(|exponent| *exponent <= 9)
        .ok_or_else(|| {
            InteractionError::invalid(
                format!("{field}.currency_code"),
                format!("{code:?} is not a currency customers pay in"),
            )
        })
}

/// Reads a `google.type.Money`. `allow_negative` is for margins (a sale at a loss); amounts paid
/// are never negative. The value must be a whole number of minor units and fit in an i64.
pub fn money_from_proto(
    money: Option<&ProtoMoney>,
    field: &str,
    allow_negative: bool,
) -> Result<Money, InteractionError> {
    let money = money.ok_or_else(|| InteractionError::invalid(field, "is required"))?;
    let exponent = currency_exponent(&money.currency_code, field)?;
    if money.nanos.abs() >= 1_000_000_000 {
        return Err(InteractionError::invalid(
            format!("{field}.nanos"),
            "must be within ±999,999,999",
        ));
    }
    if (money.units > 0 && money.nanos < 0) || (money.units < 0 && money.nanos > 0) {
        return Err(InteractionError::invalid(
            format!("{field}.nanos"),
            "must have the sign of units",
        ));
    }
    if !allow_negative && (money.units < 0 || money.nanos < 0) {
        return Err(InteractionError::invalid(field, "must not be negative"));
    }
    let per_minor = nanos_per_minor_unit(exponent);
    if i64::from(money.nanos) % per_minor != 0 {
        return Err(InteractionError::invalid(
            format!("{field}.nanos"),
            format!("is finer than the minor unit of {}", money.currency_code),
        ));
    }
    let minor_units = money
        .units
        .checked_mul(10_i64.pow(exponent))
        .and_then(|major| major.checked_add(i64::from(money.nanos) / per_minor))
        .ok_or_else(|| InteractionError::invalid(field, "is too large"))?;
    Ok(Money {
        currency: money.currency_code.clone(),
        minor_units,
    })
}

pub fn money_to_proto(currency: &str, minor_units: i64) -> ProtoMoney {
    // Stored currencies were validated on the way in.
    crm_proto::money::from_minor_units(currency, minor_units)
}

pub fn timestamp(time: DateTime<Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: time.timestamp(),
        nanos: i32::try_from(time.timestamp_subsec_nanos()).unwrap_or(0),
    }
}

/// A stored time: to microseconds, at or after 1970.
pub fn time_from_proto(
    time: &prost_types::Timestamp,
    field: &str,
) -> Result<DateTime<Utc>, InteractionError> {
    let nanos = u32::try_from(time.nanos)
        .ok()
        .filter(|nanos| *nanos < 1_000_000_000)
        .ok_or_else(|| InteractionError::invalid(format!("{field}.nanos"), "must be 0 to 999,999,999"))?;
    if time.seconds < 0 {
        return Err(InteractionError::invalid(field, "must not be before 1970"));
    }
    Utc.timestamp_opt(time.seconds, nanos)
        .single()
        .map(|time| time.trunc_subsecs(6))
        .ok_or_else(|| InteractionError::invalid(field, "is out of range"))
}

/// When something happened: given, or now; never more than [`MAX_FUTURE_SKEW`] ahead.
pub fn occur_time(
    time: Option<&prost_types::Timestamp>,
    field: &str,
    now: DateTime<Utc>,
) -> Result<DateTime<Utc>, InteractionError> {
    let Some(time) = time else { return Ok(now) };
    let time = time_from_proto(time, field)?;
    if time > now + MAX_FUTURE_SKEW {
        return Err(InteractionError::invalid(
            field,
            "lies more than 24 hours in the future",
        ));
    }
    Ok(time)
}

fn check_len(text: &str, max: usize, field: &str) -> Result<(), InteractionError> {
    if text.chars().count() > max {
        return Err(InteractionError::invalid(
            field,
            format!("must be at most {max} characters"),
        ));
    }
    Ok(())
}

fn check_reference(text: &str, field: &str) -> Result<(), InteractionError> {
    check_len(text, 200, field)?;
    if text.chars().any(char::is_control) || text.trim() != text {
        return Err(InteractionError::invalid(
            field,
            "must not contain control characters or surrounding spaces",
        ));
    }
    Ok(())
}

fn check_enum<E>(
    value: i32,
    field: &str,
    required: bool,
    parse: impl Fn(i32) -> Option<E>,
) -> Result<(), InteractionError> {
    if parse(value).is_none() {
        return Err(InteractionError::invalid(
            field,
            format!("{value} is not a known value"),
        ));
    }
    if required && value == 0 {
        return Err(InteractionError::invalid(field, "is required"));
    }
    Ok(())
}

fn channel(value: i32, field: &str, required: bool) -> Result<(), InteractionError> {
    check_enum(value, field, required, |value| pb::Channel::try_from(value).ok())
}

/// Validates a touchpoint to record; returns it with its occurrence time settled and output
/// fields cleared. Fields are named relative to the message (the caller prefixes them).
pub fn validate_interaction(
    mut interaction: pb::Interaction,
    now: DateTime<Utc>,
) -> Result<(pb::Interaction, DateTime<Utc>), InteractionError> {
    check_enum(interaction.form, "form", true, |value| {
        pb::TouchpointForm::try_from(value).ok()
    })?;
    channel(interaction.channel, "channel", true)?;
    check_enum(interaction.direction, "direction", false, |value| {
        pb::Direction::try_from(value).ok()
    })?;
    let occurred = occur_time(interaction.occur_time.as_ref(), "occur_time", now)?;
    check_len(&interaction.agent, 200, "agent")?;
    check_len(&interaction.subject, 500, "subject")?;
    check_len(&interaction.notes, 10_000, "notes")?;
    check_len(&interaction.outcome, 500, "outcome")?;
    check_reference(&interaction.external_reference, "external_reference")?;
    if let Some(duration) = &interaction.duration {
        let valid = duration.seconds >= 0
            && (0..1_000_000_000).contains(&duration.nanos)
            && duration.seconds <= MAX_INTERACTION_DURATION.num_seconds();
        if !valid {
            return Err(InteractionError::invalid("duration", "must be 0 to 7 days"));
        }
    }
    interaction.name.clear();
    interaction.occur_time = Some(timestamp(occurred));
    interaction.create_time = Some(timestamp(now));
    Ok((interaction, occurred))
}

/// A validated purchase and its amounts.
#[derive(Debug, Clone, PartialEq)]
pub struct ValidPurchase {
    pub purchase: pb::Purchase,
    pub occurred: DateTime<Utc>,
    pub amount: Money,
    pub margin: Option<Money>,
}

pub fn validate_purchase(
    mut purchase: pb::Purchase,
    now: DateTime<Utc>,
) -> Result<ValidPurchase, InteractionError> {
    let amount = money_from_proto(purchase.amount.as_ref(), "amount", false)?;
    let margin = match &purchase.margin {
        None => None,
        Some(margin) => {
            let margin = money_from_proto(Some(margin), "margin", true)?;
            if margin.currency != amount.currency {
                return Err(InteractionError::invalid(
                    "margin.currency_code",
                    "must be the amount's currency",
                ));
            }
            if margin.minor_units > amount.minor_units {
                return Err(InteractionError::invalid("margin", "must not exceed the amount"));
            }
            Some(margin)
        }
    };
    let occurred = occur_time(purchase.occur_time.as_ref(), "occur_time", now)?;
    check_reference(&purchase.external_order_id, "external_order_id")?;
    channel(purchase.channel, "channel", false)?;
    if purchase.line_items.len() > MAX_LINE_ITEMS {
        return Err(InteractionError::invalid(
            "line_items",
            format!("must hold at most {MAX_LINE_ITEMS} lines"),
        ));
    }
    for (index, item) in purchase.line_items.iter().enumerate() {
        let field = format!("line_items[{index}]");
        check_len(&item.sku, 200, &format!("{field}.sku"))?;
        check_len(&item.description, 500, &format!("{field}.description"))?;
        if item.quantity < 1 {
            return Err(InteractionError::invalid(
                format!("{field}.quantity"),
                "must be at least 1",
            ));
        }
        if item.unit_price.is_some() {
            let price = money_from_proto(item.unit_price.as_ref(), &format!("{field}.unit_price"), false)?;
            if price.currency != amount.currency {
                return Err(InteractionError::invalid(
                    format!("{field}.unit_price.currency_code"),
                    "must be the amount's currency",
                ));
            }
        }
    }
    purchase.name.clear();
    purchase.refunded_amount = None;
    purchase.occur_time = Some(timestamp(occurred));
    purchase.create_time = Some(timestamp(now));
    Ok(ValidPurchase {
        purchase,
        occurred,
        amount,
        margin,
    })
}

/// A validated refund: the purchase's currency and remaining amount are checked by the store,
/// in the transaction that records it.
pub fn validate_refund(
    mut refund: pb::Refund,
    now: DateTime<Utc>,
) -> Result<(pb::Refund, DateTime<Utc>, Money), InteractionError> {
    let amount = money_from_proto(refund.amount.as_ref(), "amount", false)?;
    if amount.minor_units == 0 {
        return Err(InteractionError::invalid("amount", "must be more than zero"));
    }
    let occurred = occur_time(refund.occur_time.as_ref(), "occur_time", now)?;
    check_len(&refund.reason, 500, "reason")?;
    check_reference(&refund.external_refund_id, "external_refund_id")?;
    refund.name.clear();
    refund.occur_time = Some(timestamp(occurred));
    refund.create_time = Some(timestamp(now));
    Ok((refund, occurred, amount))
}

pub fn validate_feedback(
    mut feedback: pb::Feedback,
    now: DateTime<Utc>,
) -> Result<(pb::Feedback, DateTime<Utc>), InteractionError> {
    let occurred = occur_time(feedback.occur_time.as_ref(), "occur_time", now)?;
    channel(feedback.channel, "channel", false)?;
    if let Some(csat) = feedback.csat
        && !(1..=5).contains(&csat)
    {
        return Err(InteractionError::invalid("csat", "must be 1 to 5"));
    }
    if let Some(nps) = feedback.nps
        && !(0..=10).contains(&nps)
    {
        return Err(InteractionError::invalid("nps", "must be 0 to 10"));
    }
    check_enum(feedback.kind, "kind", false, |value| {
        pb::FeedbackKind::try_from(value).ok()
    })?;
    check_len(&feedback.comment, 10_000, "comment")?;
    if let Some(survey) = &feedback.delivered_value {
        let answers = [
            ("product_value", survey.product_value),
            ("service_value", survey.service_value),
            ("personnel_value", survey.personnel_value),
            ("image_value", survey.image_value),
            ("monetary_cost", survey.monetary_cost),
            ("time_cost", survey.time_cost),
            ("energy_cost", survey.energy_cost),
            ("physical_cost", survey.physical_cost),
        ];
        for (field, answer) in answers {
            if !(0..=10).contains(&answer) {
                return Err(InteractionError::invalid(
                    format!("delivered_value.{field}"),
                    "must be 1 to 10 (0 when not answered)",
                ));
            }
        }
    }
    feedback.name.clear();
    feedback.occur_time = Some(timestamp(occurred));
    feedback.create_time = Some(timestamp(now));
    Ok((feedback, occurred))
}

pub fn validate_callback(
    mut callback: pb::Callback,
    now: DateTime<Utc>,
) -> Result<(pb::Callback, DateTime<Utc>), InteractionError> {
    let due = callback
        .due_time
        .as_ref()
        .ok_or_else(|| InteractionError::invalid("due_time", "is required"))
        .and_then(|due| time_from_proto(due, "due_time"))?;
    if due > now + MAX_CALLBACK_HORIZON {
        return Err(InteractionError::invalid(
            "due_time",
            "lies more than 10 years ahead",
        ));
    }
    let assignee = callback.assignee.trim().to_owned();
    if assignee.is_empty() {
        return Err(InteractionError::invalid("assignee", "is required"));
    }
    check_len(&assignee, 200, "assignee")?;
    check_len(&callback.reason, 500, "reason")?;
    callback.assignee = assignee;
    callback.name.clear();
    callback.state = pb::callback::State::Open.into();
    callback.outcome.clear();
    callback.due_time = Some(timestamp(due));
    callback.create_time = Some(timestamp(now));
    callback.update_time = Some(timestamp(now));
    callback.close_time = None;
    callback.etag.clear();
    callback.overdue = false;
    Ok((callback, due))
}

pub fn validate_outcome(outcome: &str) -> Result<(), InteractionError> {
    check_len(outcome, 500, "outcome")
}

/// What erasure leaves of a record: amounts, times, channels and scores, no free text.
pub fn scrub_interaction(interaction: &mut pb::Interaction) {
    interaction.subject.clear();
    interaction.notes.clear();
    interaction.outcome.clear();
}

pub fn scrub_purchase(purchase: &mut pb::Purchase) {
    for item in &mut purchase.line_items {
        item.description.clear();
    }
}

pub fn scrub_refund(refund: &mut pb::Refund) {
    refund.reason.clear();
}

pub fn scrub_feedback(feedback: &mut pb::Feedback) {
    feedback.comment.clear();
}

pub fn scrub_callback(callback: &mut pb::Callback) {
    callback.reason.clear();
    callback.outcome.clear();
}

/// The etag of a revision, as every mutable resource of the suite writes it.
pub fn etag(revision: i64) -> String {
    format!("\"{revision}\"")
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;

    fn money(code: &str, units: i64, nanos: i32) -> ProtoMoney {
        ProtoMoney {
            currency_code: code.into(),
            units,
            nanos,
        }
    }

    fn field_of(error: InteractionError) -> String {
        match error {
            InteractionError::InvalidField { field, .. } => field,
            other => panic!("not a field error: {other}"),
        }
    }

    #[test]
    fn money_is_held_in_minor_units_of_its_currency() {
        let usd = money_from_proto(Some(&money("USD", 12, 340_000_000)), "amount", false).unwrap();
        assert_eq!(usd.minor_units, 1234);
        let jpy = money_from_proto(Some(&money("JPY", 500, 0)), "amount", false).unwrap();
        assert_eq!(jpy.minor_units, 500);
        let bhd = money_from_proto(Some(&money("BHD", 1, 5_000_000)), "amount", false).unwrap();
        assert_eq!(bhd.minor_units, 1005);
        assert_eq!(money_to_proto("USD", 1234), money("USD", 12, 340_000_000));
        assert_eq!(money_to_proto("BHD", 1005), money("BHD", 1, 5_000_000));
        let margin = money_from_proto(Some(&money("USD", -1, -500_000_000)), "margin", true).unwrap();
        assert_eq!(margin.minor_units, -150);
        assert_eq!(money_to_proto("USD", -150), money("USD", -1, -500_000_000));
    }

    #[test]
    fn bad_money_names_the_field() {
        let cases = [
            (money("USD", -1, 0), "amount"),
            (money("USD", 0, -10_000_000), "amount"),
            (money("XYZ", 1, 0), "amount.currency_code"),
            (money("usd", 1, 0), "amount.currency_code"),
            (money("XAU", 1, 0), "amount.currency_code"),
            (money("USD", 1, 1), "amount.nanos"),
            (money("JPY", 1, 500_000_000), "amount.nanos"),
            (money("USD", 1, -10_000_000), "amount.nanos"),
            (money("USD", i64::MAX / 10, 0), "amount"),
            (money("USD", 1, 1_000_000_000), "amount.nanos"),
        ];
        for (bad, field) in cases {
            let error = money_from_proto(Some(&bad), "amount", false).unwrap_err();
            assert_eq!(field_of(error), field, "{bad:?}");
        }
        assert_eq!(
            field_of(money_from_proto(None, "amount", false).unwrap_err()),
            "amount"
        );
    }

    #[test]
    fn times_too_far_ahead_are_refused() {
        let now = now();
        let ahead = timestamp(now + Duration::hours(25));
        assert_eq!(
            field_of(occur_time(Some(&ahead), "occur_time", now).unwrap_err()),
            "occur_time"
        );
        let soon = timestamp(now + Duration::hours(1));
        assert!(occur_time(Some(&soon), "occur_time", now).is_ok());
        let before_1970 = prost_types::Timestamp {
            seconds: -1,
            nanos: 0,
        };
        assert!(occur_time(Some(&before_1970), "occur_time", now).is_err());
        assert_eq!(occur_time(None, "occur_time", now).unwrap(), now);
    }

    #[test]
    fn names_parse_only_in_their_canonical_form() {
        let customer = new_id();
        let id = new_id();
        let name = record_name(RecordKind::Purchase, customer, id);
        assert_eq!(
            parse_record_name(&name, "purchases", "name").unwrap(),
            (CustomerPart::Customer(customer), id)
        );
        assert_eq!(
            parse_record_name(&format!("customers/-/purchases/{id}"), "purchases", "name").unwrap(),
            (CustomerPart::Any, id)
        );
        assert!(parse_record_name(&name, "interactions", "name").is_err());
        assert!(parse_record_name(&name.to_uppercase(), "purchases", "name").is_err());
        let refund = new_id();
        assert_eq!(
            parse_refund_name(&refund_name(customer, id, refund), "name").unwrap(),
            (CustomerPart::Customer(customer), id, refund)
        );
        assert_eq!(
            parse_customer_name(&customer_name(customer), "parent").unwrap(),
            customer
        );
        assert!(parse_customer_name("customers/x", "parent").is_err());
        assert_eq!(
            parse_stats_name(&format!("customers/{customer}/touchpointStats")).unwrap(),
            customer
        );
    }

    #[test]
    fn a_touchpoint_needs_form_and_channel() {
        let now = now();
        let valid = pb::Interaction {
            form: pb::TouchpointForm::Contact.into(),
            channel: pb::Channel::CallCenter.into(),
            ..Default::default()
        };
        let (stored, occurred) = validate_interaction(valid.clone(), now).unwrap();
        assert_eq!(occurred, now);
        assert_eq!(stored.create_time, Some(timestamp(now)));
        let no_form = pb::Interaction {
            form: 0,
            ..valid.clone()
        };
        assert_eq!(field_of(validate_interaction(no_form, now).unwrap_err()), "form");
        let unknown_channel = pb::Interaction {
            channel: 99,
            ..valid.clone()
        };
        assert_eq!(
            field_of(validate_interaction(unknown_channel, now).unwrap_err()),
            "channel"
        );
        let long = pb::Interaction {
            duration: Some(prost_types::Duration {
                seconds: 8 * 86_400,
                nanos: 0,
            }),
            ..valid
        };
        assert_eq!(field_of(validate_interaction(long, now).unwrap_err()), "duration");
    }

    #[test]
    fn purchase_lines_and_margin_share_the_amount_currency() {
        let now = now();
        let purchase = pb::Purchase {
            amount: Some(money("EUR", 10, 0)),
            margin: Some(money("USD", 1, 0)),
            ..Default::default()
        };
        assert_eq!(
            field_of(validate_purchase(purchase.clone(), now).unwrap_err()),
            "margin.currency_code"
        );
        let too_much_margin = pb::Purchase {
            margin: Some(money("EUR", 11, 0)),
            ..purchase.clone()
        };
        assert_eq!(
            field_of(validate_purchase(too_much_margin, now).unwrap_err()),
            "margin"
        );
        let bad_line = pb::Purchase {
            margin: None,
            line_items: vec![pb::LineItem {
                quantity: 0,
                ..Default::default()
            }],
            ..purchase
        };
        assert_eq!(
            field_of(validate_purchase(bad_line, now).unwrap_err()),
            "line_items[0].quantity"
        );
    }

    #[test]
    fn feedback_scores_stay_in_their_ranges() {
        let now = now();
        for (feedback, field) in [
            (
                pb::Feedback {
                    csat: Some(0),
                    ..Default::default()
                },
                "csat",
            ),
            (
                pb::Feedback {
                    nps: Some(11),
                    ..Default::default()
                },
                "nps",
            ),
            (
                pb::Feedback {
                    delivered_value: Some(pb::DeliveredValueSurvey {
                        time_cost: 11,
                        ..Default::default()
                    }),
                    ..Default::default()
                },
                "delivered_value.time_cost",
            ),
        ] {
            assert_eq!(field_of(validate_feedback(feedback, now).unwrap_err()), field);
        }
        assert!(
            validate_feedback(
                pb::Feedback {
                    csat: Some(5),
                    nps: Some(0),
                    ..Default::default()
                },
                now
            )
            .is_ok()
        );
    }
}
