//! The result table, as Markdown (readable in a terminal, pasteable into RESULTS.md).

use std::fmt::Write as _;
use std::time::Duration;

use hdrhistogram::Histogram;

use crate::driver::{Measured, per_second};
use crate::workloads::Bulk;

/// Latency percentiles in microseconds.
#[derive(Debug, Clone, Copy)]
pub struct Latency {
    pub p50: u64,
    pub p99: u64,
    pub p999: u64,
}

impl Latency {
    pub fn of(histogram: &Histogram<u64>) -> Option<Latency> {
        (!histogram.is_empty()).then(|| Latency {
            p50: histogram.value_at_quantile(0.50),
            p99: histogram.value_at_quantile(0.99),
            p999: histogram.value_at_quantile(0.999),
        })
    }
}

/// One line of the table.
#[derive(Debug, Clone)]
pub struct Row {
    pub workload: String,
    /// `req` or `rows`.
    pub unit: &'static str,
    pub count: u64,
    pub elapsed: Duration,
    pub latency: Option<Latency>,
    pub errors: u64,
    pub error_ratio: f64,
    pub first_error: Option<String>,
    /// The baseline's workload name; `None` for a baseline itself.
    pub baseline: Option<String>,
    /// A note printed under the table.
    pub note: Option<String>,
}

impl Row {
    pub fn from_measured(workload: &str, measured: &Measured, baseline: Option<&str>) -> Row {
        Row {
            workload: workload.to_owned(),
            unit: "req",
            count: measured.ok,
            elapsed: measured.elapsed,
            latency: Latency::of(&measured.histogram),
            errors: measured.errors,
            error_ratio: measured.error_ratio(),
            first_error: measured.first_error.clone(),
            baseline: baseline.map(str::to_owned),
            note: None,
        }
    }

    pub fn from_bulk(workload: &str, bulk: &Bulk, baseline: Option<&str>) -> Row {
        let all = bulk.rows + bulk.failed;
        Row {
            workload: workload.to_owned(),
            unit: "rows",
            count: bulk.rows,
            elapsed: bulk.elapsed,
            latency: None,
            errors: bulk.failed,
            error_ratio: if all == 0 {
                0.0
            } else {
                bulk.failed as f64 / all as f64
            },
            first_error: bulk.first_error.clone(),
            baseline: baseline.map(str::to_owned),
            note: None,
        }
    }

    pub fn rate(&self) -> f64 {
        per_second(self.count, self.elapsed)
    }
}

/// `0.36x`, or two significant digits below 0.1 (`0.0012x`).
pub fn ratio(value: f64) -> String {
    if !value.is_finite() || value <= 0.0 {
        return "n/a".into();
    }
    let decimals = if value >= 0.1 {
        2
    } else {
        (-value.log10()).ceil() as usize + 1
    };
    format!("{value:.decimals$}x")
}

fn millis(micros: u64) -> String {
    format!("{:.3} ms", micros as f64 / 1000.0)
}

/// `12,345`.
pub fn grouped(value: u64) -> String {
    let digits = value.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (index, digit) in digits.chars().enumerate() {
        if index > 0 && (digits.len() - index).is_multiple_of(3) {
            out.push(',');
        }
        out.push(digit);
    }
    out
}

/// The table: one line per workload, with its throughput and p99 as ratios to its baseline.
pub fn table(rows: &[Row]) -> String {
    let mut out = String::new();
    out.push_str(
        "| workload | requests / rows | rate | p50 | p99 | p99.9 | errors | baseline | rate vs baseline | p99 vs baseline |\n",
    );
    out.push_str("|---|---:|---:|---:|---:|---:|---:|---|---:|---:|\n");
    for row in rows {
        let (p50, p99, p999) = match row.latency {
            Some(latency) => (millis(latency.p50), millis(latency.p99), millis(latency.p999)),
            None => ("n/a".into(), "n/a".into(), "n/a".into()),
        };
        let baseline = row
            .baseline
            .as_ref()
            .and_then(|name| rows.iter().find(|other| &other.workload == name));
        let (baseline_name, rate_ratio, p99_ratio) = match (&row.baseline, baseline) {
            (None, _) => ("(baseline)".to_owned(), "1.00x".to_owned(), "1.00x".to_owned()),
            (Some(name), None) => (name.clone(), "n/a".to_owned(), "n/a".to_owned()),
            (Some(name), Some(base)) => {
                let rate = if base.rate() > 0.0 {
                    ratio(row.rate() / base.rate())
                } else {
                    "n/a".into()
                };
                let p99 = match (row.latency, base.latency) {
                    (Some(mine), Some(theirs)) if theirs.p99 > 0 => {
                        ratio(mine.p99 as f64 / theirs.p99 as f64)
                    }
                    _ => "n/a".into(),
                };
                (name.clone(), rate, p99)
            }
        };
        let _ = writeln!(
            out,
            "| {} | {} {} | {} {}/s | {} | {} | {} | {} ({:.3}%) | {} | {} | {} |",
            row.workload,
            grouped(row.count),
            row.unit,
            grouped(row.rate().round() as u64),
            row.unit,
            p50,
            p99,
            p999,
            row.errors,
            row.error_ratio * 100.0,
            baseline_name,
            rate_ratio,
            p99_ratio,
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_thousands() {
        assert_eq!(grouped(0), "0");
        assert_eq!(grouped(999), "999");
        assert_eq!(grouped(1_000), "1,000");
        assert_eq!(grouped(1_234_567), "1,234,567");
    }

    #[test]
    fn ratios_keep_two_significant_digits_when_small() {
        assert_eq!(ratio(0.357), "0.36x");
        assert_eq!(ratio(1.0), "1.00x");
        assert_eq!(ratio(0.0606), "0.061x");
        assert_eq!(ratio(0.001163), "0.0012x");
        assert_eq!(ratio(0.0), "n/a");
    }
}
