//! What segment expressions and grading rules see of a customer: the fields of the language
//! (DESIGN section 5, "Dynamic segments"), read from the customer's scores and the profile
//! facts kept from customer-profile; and the evaluation of grades and memberships.

use std::collections::BTreeSet;

use chrono::DateTime;
use crm_proto::customerprofile_v1 as profile;
use crm_proto::segmentation_v1 as pb;
use prost::Message;
use uuid::Uuid;

use crate::domain::expr::{self, Expr, FieldCatalog, FieldType, ParseError, Subject, Value};
use crate::error::SegmentationError;

/// Most grading rules a tenant may have.
pub const MAX_GRADE_RULES: usize = 50;
/// Longest grade.
pub const MAX_GRADE_CHARS: usize = 32;

/// The fixed fields, all but `grade` (grading rules cannot read the grade they give).
const SCORE_FIELDS: [(&str, FieldType); 30] = [
    ("r", FieldType::Number),
    ("f", FieldType::Number),
    ("m", FieldType::Number),
    ("rfm.r_score", FieldType::Number),
    ("rfm.f_score", FieldType::Number),
    ("rfm.m_score", FieldType::Number),
    ("rfm.code", FieldType::Text),
    ("rfm.segment", FieldType::Text),
    ("value_class", FieldType::Text),
    ("abc", FieldType::Text),
    ("stage", FieldType::Text),
    ("ended_pattern", FieldType::Text),
    ("lifetime.purchases", FieldType::Number),
    ("lifetime.net_spend", FieldType::Number),
    ("lifetime.margin", FieldType::Number),
    ("kind", FieldType::Text),
    ("relationship_level", FieldType::Text),
    ("market", FieldType::Text),
    ("other_currency_events", FieldType::Number),
    ("clv.historical", FieldType::Number),
    ("clv.current", FieldType::Number),
    ("clv.potential", FieldType::Number),
    ("clv.p_alive", FieldType::Number),
    ("clv.churn_risk", FieldType::Number),
    ("clv.expected_purchases", FieldType::Number),
    ("share_of_wallet", FieldType::Number),
    ("csat", FieldType::Number),
    ("delivered_value", FieldType::Number),
    ("satisfaction_trap", FieldType::Bool),
    ("clv.referral", FieldType::Number),
];

/// The fields segment expressions may read.
pub fn segment_catalog() -> FieldCatalog {
    let mut fields: Vec<(&'static str, FieldType)> = SCORE_FIELDS.to_vec();
    fields.push(("grade", FieldType::Text));
    FieldCatalog::new(&fields)
}

/// The fields grading conditions may read.
pub fn grade_catalog() -> FieldCatalog {
    FieldCatalog::new(&SCORE_FIELDS)
}

/// A parse failure as a field violation naming the column, e.g.
/// `segment.expression: at column 12: expected a value, found end of input`.
pub fn invalid_expression(field: &str, error: &ParseError) -> SegmentationError {
    SegmentationError::invalid(field, error.to_string())
}

/// Parses a segment expression, failing on `field` with the column.
pub fn parse_segment(source: &str, field: &str) -> Result<Expr, SegmentationError> {
    if source.trim().is_empty() {
        return Err(SegmentationError::invalid(field, "is required"));
    }
    expr::parse(source, &segment_catalog()).map_err(|error| invalid_expression(field, &error))
}

/// A tenant's grading rules, parsed: (grade, condition), first match wins.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GradeRules {
    rules: Vec<(String, Expr)>,
}

impl GradeRules {
    /// Parses and checks the rules of `settings`, naming the offending field.
    pub fn of(rules: &[pb::ValueGradeRule]) -> Result<Self, SegmentationError> {
        if rules.len() > MAX_GRADE_RULES {
            return Err(SegmentationError::invalid(
                "settings.value_grade_rules",
                format!("at most {MAX_GRADE_RULES} rules"),
            ));
        }
        let catalog = grade_catalog();
        let mut parsed = Vec::with_capacity(rules.len());
        for (index, rule) in rules.iter().enumerate() {
            let grade = rule.grade.trim();
            if grade.is_empty() || grade.chars().count() > MAX_GRADE_CHARS || grade != rule.grade {
                return Err(SegmentationError::invalid(
                    format!("settings.value_grade_rules[{index}].grade"),
                    format!("must be 1 to {MAX_GRADE_CHARS} characters without surrounding spaces"),
                ));
            }
            let field = format!("settings.value_grade_rules[{index}].condition");
            if rule.condition.trim().is_empty() {
                return Err(SegmentationError::invalid(field, "is required"));
            }
            let condition =
                expr::parse(&rule.condition, &catalog).map_err(|error| invalid_expression(&field, &error))?;
            parsed.push((rule.grade.clone(), condition));
        }
        Ok(Self { rules: parsed })
    }

    /// The rules in canonical spelling, as stored.
    pub fn canonical(&self) -> Vec<pb::ValueGradeRule> {
        self.rules
            .iter()
            .map(|(grade, condition)| pb::ValueGradeRule {
                grade: grade.clone(),
                condition: condition.canonical(),
            })
            .collect()
    }

    /// The grade of the first rule that holds; empty when none does.
    pub fn grade(&self, customer: &CustomerView<'_>) -> String {
        self.rules
            .iter()
            .find(|(_, condition)| condition.matches(customer))
            .map(|(grade, _)| grade.clone())
            .unwrap_or_default()
    }
}

/// A stored segment, parsed.
#[derive(Debug, Clone)]
pub struct CompiledSegment {
    pub id: Uuid,
    pub expr: Expr,
}

/// The segments `customer` belongs in: none while soft-deleted.
pub fn segments_for(segments: &[CompiledSegment], customer: &CustomerView<'_>) -> BTreeSet<Uuid> {
    if !customer.is_active() {
        return BTreeSet::new();
    }
    segments
        .iter()
        .filter(|segment| segment.expr.matches(customer))
        .map(|segment| segment.id)
        .collect()
}

/// The part of a customer-profile `Customer` expressions read, kept by segmentation: kind,
/// relationship level, market, attributes, tags and state. Nothing else (no names, no
/// identities) is kept, so erasure has no personal data here to remove but the attributes.
pub fn facts_of(customer: &profile::Customer) -> profile::Customer {
    profile::Customer {
        kind: customer.kind,
        relationship_level: customer.relationship_level,
        classification: customer
            .classification
            .as_ref()
            .map(|classification| profile::Classification {
                market: classification.market,
                ..Default::default()
            }),
        attributes: customer.attributes.clone(),
        tags: customer.tags.clone(),
        state: customer.state,
        // For referral value: the referrer's value counts this customer's spend.
        referrer: customer.referrer.clone(),
        ..Default::default()
    }
}

/// The facts of a customer customer-profile no longer shows (soft-deleted or purged): in no
/// segment.
pub fn deleted_facts() -> profile::Customer {
    profile::Customer {
        state: profile::customer::State::Deleted.into(),
        ..Default::default()
    }
}

/// Decodes stored facts.
pub fn decode_facts(bytes: &[u8]) -> Result<profile::Customer, SegmentationError> {
    profile::Customer::decode(bytes).map_err(SegmentationError::corrupt)
}

/// One customer as expressions see it.
pub struct CustomerView<'a> {
    pub scores: &'a pb::CustomerScores,
    /// None until customer-profile's facts arrived (or after the customer vanished there).
    pub facts: Option<&'a profile::Customer>,
}

impl CustomerView<'_> {
    fn is_active(&self) -> bool {
        self.facts
            .is_none_or(|facts| facts.state() != profile::customer::State::Deleted)
    }
}

fn money_units(money: Option<&crm_proto::google::r#type::Money>) -> Option<Value> {
    money.map(|money| Value::Number(money.units as f64 + f64::from(money.nanos) / 1e9))
}

fn text(value: &str) -> Option<Value> {
    (!value.is_empty()).then(|| Value::Text(value.to_owned()))
}

/// An enum's proto name without its `PREFIX_`, None for the unspecified value.
fn enum_text(name: &str, prefix: &str) -> Option<Value> {
    name.strip_prefix(prefix)
        .filter(|rest| *rest != "UNSPECIFIED")
        .and_then(text)
}

fn attribute(value: &profile::AttributeValue) -> Option<Value> {
    use profile::attribute_value::Value as Attribute;
    match value.value.as_ref()? {
        Attribute::StringValue(text) => Some(Value::Text(text.clone())),
        Attribute::IntValue(number) => Some(Value::Number(*number as f64)),
        Attribute::DoubleValue(number) => Some(Value::Number(*number)),
        Attribute::BoolValue(flag) => Some(Value::Bool(*flag)),
        Attribute::TimeValue(time) => {
            DateTime::from_timestamp(time.seconds, time.nanos.max(0).unsigned_abs())
                .map(|time| Value::Text(time.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)))
        }
    }
}

impl Subject for CustomerView<'_> {
    fn value(&self, field: &str) -> Option<Value> {
        let scores = self.scores;
        let rfm = scores.rfm.as_ref();
        let lifetime = scores.lifetime.as_ref();
        let value = scores.value.as_ref();
        if let Some(key) = field.strip_prefix("attributes.") {
            return self.facts?.attributes.get(key).and_then(attribute);
        }
        match field {
            "r" => rfm.map(|rfm| Value::Number(rfm.recency_days as f64)),
            "f" => rfm.map(|rfm| Value::Number(rfm.frequency as f64)),
            "m" => rfm.and_then(|rfm| money_units(rfm.monetary.as_ref())),
            "rfm.r_score" => rfm.map(|rfm| Value::Number(f64::from(rfm.r_score))),
            "rfm.f_score" => rfm.map(|rfm| Value::Number(f64::from(rfm.f_score))),
            "rfm.m_score" => rfm.map(|rfm| Value::Number(f64::from(rfm.m_score))),
            "rfm.code" => rfm.and_then(|rfm| text(&rfm.code)),
            "rfm.segment" => rfm.and_then(|rfm| {
                enum_text(rfm.segment().as_str_name(), "RFM_SEGMENT_").map(|name| lowercase(&name))
            }),
            "value_class" => {
                enum_text(scores.value_class().as_str_name(), "VALUE_CLASS_").map(|name| lowercase(&name))
            }
            "abc" => enum_text(scores.abc_class().as_str_name(), "ABC_CLASS_"),
            "grade" => text(&scores.value_grade),
            "stage" => enum_text(scores.lifecycle_stage().as_str_name(), "LIFECYCLE_STAGE_"),
            "ended_pattern" => enum_text(scores.ended_pattern().as_str_name(), "ENDED_PATTERN_"),
            "lifetime.purchases" => lifetime.map(|lifetime| Value::Number(lifetime.purchase_count as f64)),
            "lifetime.net_spend" => lifetime.and_then(|lifetime| money_units(lifetime.net_spend.as_ref())),
            "lifetime.margin" => lifetime.and_then(|lifetime| money_units(lifetime.margin.as_ref())),
            "other_currency_events" => Some(Value::Number(scores.other_currency_events as f64)),
            "clv.historical" => value.and_then(|value| money_units(value.historical_value.as_ref())),
            "clv.current" => value.and_then(|value| money_units(value.current_value.as_ref())),
            "clv.potential" => value.and_then(|value| money_units(value.potential_value.as_ref())),
            "clv.p_alive" => value.and_then(|value| value.probability_alive).map(Value::Number),
            "clv.churn_risk" => value.and_then(|value| value.churn_risk).map(Value::Number),
            "clv.expected_purchases" => value
                .and_then(|value| value.expected_purchases)
                .map(Value::Number),
            "share_of_wallet" => value.and_then(|value| value.share_of_wallet).map(Value::Number),
            "csat" => value.and_then(|value| value.mean_csat).map(Value::Number),
            "delivered_value" => value.and_then(|value| value.delivered_value).map(Value::Number),
            "satisfaction_trap" => value.map(|value| Value::Bool(value.satisfaction_trap)),
            "clv.referral" => value.and_then(|value| money_units(value.referral_value.as_ref())),
            "kind" => self
                .facts
                .and_then(|facts| enum_text(facts.kind().as_str_name(), "CUSTOMER_KIND_")),
            "relationship_level" => self
                .facts
                .and_then(|facts| enum_text(facts.relationship_level().as_str_name(), "RELATIONSHIP_LEVEL_")),
            "market" => self
                .facts
                .and_then(|facts| facts.classification.as_ref())
                .and_then(|classification| enum_text(classification.market().as_str_name(), "MARKET_")),
            _ => None,
        }
    }

    fn has_tag(&self, tag: &str) -> bool {
        self.facts
            .is_some_and(|facts| facts.tags.iter().any(|held| held == tag))
    }
}

fn lowercase(value: &Value) -> Value {
    match value {
        Value::Text(text) => Value::Text(text.to_ascii_lowercase()),
        other => other.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scores() -> pb::CustomerScores {
        pb::CustomerScores {
            rfm: Some(pb::Rfm {
                recency_days: 3,
                frequency: 7,
                monetary: Some(crm_proto::money::from_minor_units("USD", 52_050)),
                r_score: 5,
                f_score: 4,
                m_score: 5,
                code: "545".into(),
                segment: pb::RfmSegment::Champions.into(),
            }),
            value_class: pb::ValueClass::ImportantValue.into(),
            abc_class: pb::AbcClass::A.into(),
            lifecycle_stage: pb::LifecycleStage::Stability.into(),
            value_grade: "gold".into(),
            ..Default::default()
        }
    }

    fn facts() -> profile::Customer {
        let mut customer = profile::Customer {
            kind: profile::CustomerKind::Business.into(),
            tags: vec!["vip".into()],
            state: profile::customer::State::Active.into(),
            ..Default::default()
        };
        customer.attributes.insert(
            "annual_revenue".into(),
            profile::AttributeValue {
                value: Some(profile::attribute_value::Value::IntValue(12_000_000)),
            },
        );
        customer
    }

    #[test]
    fn the_issue_example_reads_scores_and_tags() {
        let scores = scores();
        let facts = facts();
        let view = CustomerView {
            scores: &scores,
            facts: Some(&facts),
        };
        let expr = parse_segment(
            r#"rfm.segment in ["champions", "loyal"] and m >= 500 and "vip" in tags"#,
            "segment.expression",
        )
        .unwrap();
        assert!(expr.matches(&view));
        let expr = parse_segment(
            r#"value_class = "important_value" and abc = "A" and stage = "STABILITY" and kind = "BUSINESS" and attributes.annual_revenue >= 10000000 and grade = "gold" and m = 520.5"#,
            "segment.expression",
        )
        .unwrap();
        assert!(expr.matches(&view));
    }

    #[test]
    fn deleted_customers_are_in_no_segment() {
        let scores = scores();
        let mut facts = facts();
        let segment = CompiledSegment {
            id: Uuid::nil(),
            expr: parse_segment("abc = \"A\"", "segment.expression").unwrap(),
        };
        let view = CustomerView {
            scores: &scores,
            facts: Some(&facts),
        };
        assert_eq!(segments_for(std::slice::from_ref(&segment), &view).len(), 1);
        facts.state = profile::customer::State::Deleted.into();
        let view = CustomerView {
            scores: &scores,
            facts: Some(&facts),
        };
        assert!(segments_for(&[segment], &view).is_empty());
    }

    #[test]
    fn grades_take_the_first_rule_that_holds_and_cannot_read_grade() {
        let rules = GradeRules::of(&[
            pb::ValueGradeRule {
                grade: "A".into(),
                condition: "attributes.annual_revenue >= 10000000".into(),
            },
            pb::ValueGradeRule {
                grade: "B".into(),
                condition: "m >= 100".into(),
            },
        ])
        .unwrap();
        let scores = scores();
        let mut facts = facts();
        assert_eq!(
            rules.grade(&CustomerView {
                scores: &scores,
                facts: Some(&facts)
            }),
            "A"
        );
        facts.attributes.clear();
        assert_eq!(
            rules.grade(&CustomerView {
                scores: &scores,
                facts: Some(&facts)
            }),
            "B"
        );
        assert_eq!(
            rules.grade(&CustomerView {
                scores: &pb::CustomerScores::default(),
                facts: None
            }),
            ""
        );
        let error = GradeRules::of(&[pb::ValueGradeRule {
            grade: "A".into(),
            condition: "grade = \"A\"".into(),
        }])
        .unwrap_err();
        assert!(
            error
                .to_string()
                .contains("settings.value_grade_rules[0].condition"),
            "{error}"
        );
    }

    #[test]
    fn syntax_errors_name_the_field_and_column() {
        let error = parse_segment("m >= ", "segment.expression").unwrap_err();
        let text = error.to_string();
        assert!(text.starts_with("segment.expression: at column 6"), "{text}");
    }
}
