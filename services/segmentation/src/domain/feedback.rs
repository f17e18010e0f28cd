//! What a customer's feedback says about the relationship, pure: satisfaction (CSAT, 1-5),
//! customer delivered value (让渡价值: total customer value minus total customer cost, from the
//! delivered-value survey) and the satisfaction trap (satisfied, yet repeat purchasing is low
//! or declining).
//!
//! Kept per origin customer like the purchase aggregates, as sums, so merging is exact and an
//! unmerge splits them back.

use crate::domain::scores::{Aggregates, LifecycleStage, ScoreError};

/// A mean CSAT at or above this is "satisfied" (4 = satisfied on the 1-5 scale).
pub const SATISFIED_CSAT: f64 = 4.0;
/// The window repeat purchasing is judged over, in days.
pub const REPEAT_WINDOW_DAYS: i64 = 365;

/// A customer's feedback reduced to sums.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct FeedbackSums {
    pub csat_responses: i64,
    pub csat_total: i64,
    pub surveys: i64,
    /// Sum over surveys of product + service + personnel + image value.
    pub value_total: i64,
    /// Sum over surveys of monetary + time + energy + physical cost.
    pub cost_total: i64,
}

const ENCODING_VERSION: u8 = 1;
const FIELDS: usize = 5;

impl FeedbackSums {
    /// Adds one piece of feedback: a CSAT answer and/or a survey's value and cost totals.
    pub fn record(&mut self, csat: Option<i32>, survey: Option<(i64, i64)>) -> Result<(), ScoreError> {
        if let Some(csat) = csat {
            self.csat_responses = add(self.csat_responses, 1)?;
            self.csat_total = add(self.csat_total, i64::from(csat))?;
        }
        if let Some((value, cost)) = survey {
            self.surveys = add(self.surveys, 1)?;
            self.value_total = add(self.value_total, value)?;
            self.cost_total = add(self.cost_total, cost)?;
        }
        Ok(())
    }

    pub fn merge_from(&mut self, other: &FeedbackSums) -> Result<(), ScoreError> {
        *self = FeedbackSums {
            csat_responses: add(self.csat_responses, other.csat_responses)?,
            csat_total: add(self.csat_total, other.csat_total)?,
            surveys: add(self.surveys, other.surveys)?,
            value_total: add(self.value_total, other.value_total)?,
            cost_total: add(self.cost_total, other.cost_total)?,
        };
        Ok(())
    }

    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }

    /// Mean CSAT; `None` without an answer.
    pub fn mean_csat(&self) -> Option<f64> {
        (self.csat_responses > 0).then(|| self.csat_total as f64 / self.csat_responses as f64)
    }

    /// Mean delivered value per survey (total value minus total cost, each 4 answers of
    /// 0-10, so -40 to 40); `None` without a survey.
    pub fn delivered_value(&self) -> Option<f64> {
        (self.surveys > 0).then(|| (self.value_total - self.cost_total) as f64 / self.surveys as f64)
    }

    /// Version byte and five little-endian i64; empty for no feedback (the stored default).
    pub fn encode(&self) -> Vec<u8> {
        if self.is_empty() {
            return Vec::new();
        }
        let mut bytes = Vec::with_capacity(1 + 8 * FIELDS);
        bytes.push(ENCODING_VERSION);
        for field in [
            self.csat_responses,
            self.csat_total,
            self.surveys,
            self.value_total,
            self.cost_total,
        ] {
            bytes.extend_from_slice(&field.to_le_bytes());
        }
        bytes
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, ScoreError> {
        if bytes.is_empty() {
            return Ok(Self::default());
        }
        let (&version, rest) = bytes.split_first().ok_or(ScoreError::Truncated)?;
        if version != ENCODING_VERSION || rest.len() != 8 * FIELDS {
            return Err(ScoreError::Truncated);
        }
        let mut fields = [0_i64; FIELDS];
        for (field, chunk) in fields.iter_mut().zip(rest.chunks_exact(8)) {
            let bytes: [u8; 8] = chunk.try_into().map_err(|_| ScoreError::Truncated)?;
            *field = i64::from_le_bytes(bytes);
        }
        let [csat_responses, csat_total, surveys, value_total, cost_total] = fields;
        Ok(Self {
            csat_responses,
            csat_total,
            surveys,
            value_total,
            cost_total,
        })
    }
}

fn add(left: i64, right: i64) -> Result<i64, ScoreError> {
    left.checked_add(right).ok_or(ScoreError::Overflow)
}

/// The satisfaction trap: satisfied (mean CSAT at least [`SATISFIED_CSAT`]) while repeat
/// purchasing declines (lifecycle DECLINE or ENDED) or stays low (a customer for more than
/// [`REPEAT_WINDOW_DAYS`] with at most one purchase in the last ones).
pub fn in_satisfaction_trap(
    feedback: &FeedbackSums,
    aggregates: &Aggregates,
    stage: LifecycleStage,
    as_of_day: i64,
) -> bool {
    let Some(csat) = feedback.mean_csat() else {
        return false;
    };
    if csat < SATISFIED_CSAT {
        return false;
    }
    if matches!(stage, LifecycleStage::Decline | LifecycleStage::Ended) {
        return true;
    }
    let long_standing = aggregates
        .first_purchase_day()
        .is_some_and(|first| as_of_day - first > REPEAT_WINDOW_DAYS);
    let recent_purchases = aggregates
        .window(as_of_day, REPEAT_WINDOW_DAYS)
        .map_or(0, |window| window.frequency);
    long_standing && recent_purchases <= 1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn feedback_sums_round_trip_and_merge() {
        let mut sums = FeedbackSums::default();
        assert!(sums.encode().is_empty());
        assert_eq!(FeedbackSums::decode(&[]).unwrap(), sums);
        sums.record(Some(5), None).unwrap();
        sums.record(Some(3), Some((30, 12))).unwrap();
        sums.record(None, Some((20, 20))).unwrap();
        assert_eq!(sums.mean_csat(), Some(4.0));
        assert_eq!(sums.delivered_value(), Some(9.0));
        assert_eq!(FeedbackSums::decode(&sums.encode()).unwrap(), sums);
        let mut merged = FeedbackSums::default();
        merged.merge_from(&sums).unwrap();
        merged.merge_from(&sums).unwrap();
        assert_eq!(merged.csat_responses, 4);
        assert_eq!(merged.mean_csat(), Some(4.0));
        assert!(FeedbackSums::decode(&[2, 0]).is_err());
    }

    #[test]
    fn feedback_trap_needs_satisfaction_and_weak_repeat_buying() {
        let mut happy = FeedbackSums::default();
        happy.record(Some(5), None).unwrap();
        let mut unhappy = FeedbackSums::default();
        unhappy.record(Some(2), None).unwrap();
        let mut old_single = Aggregates::new();
        old_single.record(0, 1, 100, 10).unwrap();
        old_single.record(500, 1, 100, 10).unwrap();
        let as_of = 600;
        assert!(in_satisfaction_trap(
            &happy,
            &old_single,
            LifecycleStage::Formation,
            as_of
        ));
        assert!(!in_satisfaction_trap(
            &unhappy,
            &old_single,
            LifecycleStage::Formation,
            as_of
        ));
        assert!(!in_satisfaction_trap(
            &FeedbackSums::default(),
            &old_single,
            LifecycleStage::Decline,
            as_of
        ));
        assert!(in_satisfaction_trap(
            &happy,
            &Aggregates::new(),
            LifecycleStage::Ended,
            as_of
        ));
        let mut regular = old_single.clone();
        regular.record(550, 1, 100, 10).unwrap();
        assert!(!in_satisfaction_trap(
            &happy,
            &regular,
            LifecycleStage::Stability,
            as_of
        ));
    }
}
