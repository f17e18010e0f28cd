//! What each side of a measurement reports, and the check that both computed the same thing.
//!
//! A child process (ours or the Polars script) prints one flat JSON object on its last line:
//! metrics (`elapsed_s`, `peak_rss_kib`, …) and the *checks*, integers under `check.`:
//!
//! - `check.population`, `check.monetary_total`: customers with a purchase in the window and
//!   their net spend;
//! - `check.segment.<name>`, `check.value_class.<name>`, `check.abc.<A|B|C>`,
//!   `check.r.<1-5>`, `check.f.<1-5>`, `check.m.<1-5>`: customers per class and score;
//! - `check.digest.<r|f|m|segment|value_class|abc>`: the sum over customers of
//!   `(customer_id mod 1000003 + 1) * value` (segments, value classes and ABC classes numbered
//!   from 1 in the order below), so a single customer placed differently changes a digest
//!   even when the counts still agree.
//!
//! The object is flat, its keys have no `,` `:` or `"` and its values are numbers, so a few
//! lines read it; no JSON library needed.

use std::collections::BTreeMap;

use anyhow::{Context, bail};
use crm_segmentation::domain::scores::{AbcClass, CustomerScores, RfmSegment, ValueClass};

/// Weight modulus of the digests (a prime).
pub const DIGEST_MODULUS: u64 = 1_000_003;

/// One customer of the RFM population, as scored by either side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Scored {
    pub customer_id: u64,
    pub monetary_minor: i64,
    pub r: u8,
    pub f: u8,
    pub m: u8,
    pub segment: RfmSegment,
    pub value_class: ValueClass,
    pub abc: AbcClass,
}

impl Scored {
    pub fn new(customer_id: u64, monetary_minor: i64, scores: &CustomerScores) -> Self {
        Self {
            customer_id,
            monetary_minor,
            r: scores.r,
            f: scores.f,
            m: scores.m,
            segment: scores.segment,
            value_class: scores.value_class,
            abc: scores.abc,
        }
    }
}

/// 1-based position in `RfmSegment::ALL` (the Polars script numbers them the same way).
pub fn segment_number(segment: RfmSegment) -> i128 {
    position(&RfmSegment::ALL, &segment)
}

pub fn value_class_number(class: ValueClass) -> i128 {
    position(&ValueClass::ALL, &class)
}

pub fn abc_number(class: AbcClass) -> i128 {
    position(&AbcClass::ALL, &class)
}

fn position<T: PartialEq>(all: &[T], item: &T) -> i128 {
    all.iter()
        .position(|candidate| candidate == item)
        .map_or(0, |index| index as i128 + 1)
}

/// The checks of a scored population, every key present (zero when nobody is in a class).
pub fn checks(population: impl IntoIterator<Item = Scored>) -> BTreeMap<String, i128> {
    let mut checks = BTreeMap::new();
    for key in ["population", "monetary_total"] {
        checks.insert(key.to_owned(), 0);
    }
    for segment in RfmSegment::ALL {
        checks.insert(format!("segment.{}", segment.as_str()), 0);
    }
    for class in ValueClass::ALL {
        checks.insert(format!("value_class.{}", class.as_str()), 0);
    }
    for class in AbcClass::ALL {
        checks.insert(format!("abc.{}", class.as_str()), 0);
    }
    for dimension in ["r", "f", "m"] {
        for score in 1..=5 {
            checks.insert(format!("{dimension}.{score}"), 0);
        }
    }
    for digest in ["r", "f", "m", "segment", "value_class", "abc"] {
        checks.insert(format!("digest.{digest}"), 0);
    }
    let mut add = |key: String, value: i128| {
        *checks.entry(key).or_insert(0) += value;
    };
    for customer in population {
        let weight = i128::from(customer.customer_id % DIGEST_MODULUS) + 1;
        add("population".into(), 1);
        add("monetary_total".into(), i128::from(customer.monetary_minor));
        add(format!("segment.{}", customer.segment.as_str()), 1);
        add(format!("value_class.{}", customer.value_class.as_str()), 1);
        add(format!("abc.{}", customer.abc.as_str()), 1);
        add(format!("r.{}", customer.r), 1);
        add(format!("f.{}", customer.f), 1);
        add(format!("m.{}", customer.m), 1);
        add("digest.r".into(), weight * i128::from(customer.r));
        add("digest.f".into(), weight * i128::from(customer.f));
        add("digest.m".into(), weight * i128::from(customer.m));
        add("digest.segment".into(), weight * segment_number(customer.segment));
        add(
            "digest.value_class".into(),
            weight * value_class_number(customer.value_class),
        );
        add("digest.abc".into(), weight * abc_number(customer.abc));
    }
    checks
}

/// What a child process reported: its metrics and checks.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Report {
    pub metrics: BTreeMap<String, f64>,
    pub checks: BTreeMap<String, i128>,
}

impl Report {
    pub fn metric(&self, key: &str) -> anyhow::Result<f64> {
        self.metrics
            .get(key)
            .copied()
            .with_context(|| format!("the report has no {key}"))
    }

    /// The flat JSON object (checks under `check.`).
    pub fn to_json(&self) -> String {
        let mut fields: Vec<String> = self
            .metrics
            .iter()
            .map(|(key, value)| format!("\"{key}\": {}", json_number(*value)))
            .collect();
        fields.extend(
            self.checks
                .iter()
                .map(|(key, value)| format!("\"check.{key}\": {value}")),
        );
        format!("{{{}}}", fields.join(", "))
    }

    /// Reads a flat JSON object of numbers, as `to_json` and the Polars script write it.
    pub fn parse(text: &str) -> anyhow::Result<Report> {
        let body = text
            .trim()
            .strip_prefix('{')
            .and_then(|rest| rest.strip_suffix('}'))
            .with_context(|| format!("not a JSON object: {text:?}"))?;
        let mut report = Report::default();
        for field in body.split(',').filter(|field| !field.trim().is_empty()) {
            let Some((key, value)) = field.split_once(':') else {
                bail!("not a key and a value: {field:?}");
            };
            let key = key
                .trim()
                .strip_prefix('"')
                .and_then(|rest| rest.strip_suffix('"'))
                .with_context(|| format!("not a quoted key: {key:?}"))?;
            let value = value.trim();
            match key.strip_prefix("check.") {
                Some(check) => {
                    let number = value
                        .parse::<i128>()
                        .with_context(|| format!("{key}: not an integer: {value:?}"))?;
                    report.checks.insert(check.to_owned(), number);
                }
                None => {
                    let number = value
                        .parse::<f64>()
                        .with_context(|| format!("{key}: not a number: {value:?}"))?;
                    report.metrics.insert(key.to_owned(), number);
                }
            }
        }
        Ok(report)
    }
}

fn json_number(value: f64) -> String {
    if value.is_finite() {
        format!("{value}")
    } else {
        "0".into()
    }
}

/// The checks on which two reports differ: (key, ours, theirs), a missing key as `None`.
pub fn differences(
    ours: &BTreeMap<String, i128>,
    theirs: &BTreeMap<String, i128>,
) -> Vec<(String, Option<i128>, Option<i128>)> {
    let mut keys: Vec<&String> = ours.keys().chain(theirs.keys()).collect();
    keys.sort();
    keys.dedup();
    keys.into_iter()
        .filter_map(|key| {
            let (left, right) = (ours.get(key).copied(), theirs.get(key).copied());
            (left != right).then(|| (key.clone(), left, right))
        })
        .collect()
}

/// The peak resident set of this process so far, in KiB (`VmHWM` of `/proc/self/status`).
pub fn peak_rss_kib() -> anyhow::Result<u64> {
    let status = std::fs::read_to_string("/proc/self/status").context("read /proc/self/status")?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|value| value.trim().strip_suffix("kB"))
        .and_then(|value| value.trim().parse().ok())
        .context("no VmHWM in /proc/self/status")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_reads_python_json() -> anyhow::Result<()> {
        let mut report = Report::default();
        report.metrics.insert("elapsed_s".into(), 1.25);
        report.checks.insert("segment.new".into(), 42);
        assert_eq!(Report::parse(&report.to_json())?, report);
        let python = r#"{"elapsed_s": 2.5e-05, "peak_rss_kib": 123, "check.abc.A": 7}"#;
        let parsed = Report::parse(python)?;
        assert_eq!(parsed.metric("peak_rss_kib")?, 123.0);
        assert_eq!(parsed.checks.get("abc.A"), Some(&7));
        assert!(Report::parse("[1]").is_err());
        Ok(())
    }

    #[test]
    fn every_class_is_counted() {
        let scores = CustomerScores {
            r: 5,
            f: 4,
            m: 3,
            segment: RfmSegment::Champions,
            value_class: ValueClass::GeneralValue,
            abc: AbcClass::B,
        };
        let checks = checks([Scored::new(1_000_004, 250, &scores)]);
        assert_eq!(checks.get("segment.champions"), Some(&1));
        assert_eq!(checks.get("segment.new"), Some(&0));
        assert_eq!(checks.get("digest.abc"), Some(&(2 * 2)));
        assert_eq!(checks.get("digest.value_class"), Some(&(2 * 5)));
        assert_eq!(checks.get("monetary_total"), Some(&250));
        assert!(peak_rss_kib().is_ok_and(|kib| kib > 0));
    }
}
