//! Retention and defection per calendar period and per first-purchase cohort, pure.
//!
//! A customer is *active* in a period when they bought in it; *new* in the period of their
//! first purchase ever; *retained* in a period when they were active in it and in the one
//! before. Retention of a period = retained / active in the previous period; defection is its
//! complement. A cohort is the customers whose first purchase fell in one period, followed
//! through the later ones.

use std::collections::{BTreeMap, HashMap};

use chrono::{Datelike, NaiveDate};

/// Most periods a report holds (20 years of months).
pub const MAX_PERIODS: usize = 240;

/// Calendar periods, UTC.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PeriodUnit {
    Month,
    Quarter,
    Year,
}

fn epoch() -> NaiveDate {
    NaiveDate::from_ymd_opt(1970, 1, 1).unwrap_or_default()
}

fn date_of(day: i64) -> Option<NaiveDate> {
    epoch().checked_add_signed(chrono::Duration::try_days(day)?)
}

impl PeriodUnit {
    fn months(self) -> i64 {
        match self {
            Self::Month => 1,
            Self::Quarter => 3,
            Self::Year => 12,
        }
    }

    /// The period holding an epoch day, as a count of periods since January 1970 (negative
    /// before it).
    pub fn period_of(self, day: i64) -> i64 {
        let Some(date) = date_of(day) else {
            return if day < 0 { i64::MIN } else { i64::MAX };
        };
        let month = i64::from(date.year()) * 12 + i64::from(date.month0()) - 1970 * 12;
        month.div_euclid(self.months())
    }

    /// The first epoch day of a period.
    pub fn start_day(self, period: i64) -> Option<i64> {
        let month = period.checked_mul(self.months())?.checked_add(1970 * 12)?;
        let year = i32::try_from(month.div_euclid(12)).ok()?;
        let month0 = u32::try_from(month.rem_euclid(12)).ok()?;
        let date = NaiveDate::from_ymd_opt(year, month0 + 1, 1)?;
        Some(date.signed_duration_since(epoch()).num_days())
    }
}

/// One period's counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeriodCounts {
    pub period: i64,
    pub active: i64,
    pub new: i64,
    pub retained: i64,
    /// Active customers of the period before (the base of the retention rate).
    pub previous_active: i64,
}

impl PeriodCounts {
    /// Retained over the previous period's active customers; `None` without any.
    pub fn retention_rate(&self) -> Option<f64> {
        (self.previous_active > 0).then(|| self.retained as f64 / self.previous_active as f64)
    }
}

/// One cohort: customers whose first purchase fell in `period`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cohort {
    pub period: i64,
    pub size: i64,
    /// Active members in the cohort's period and each later one up to the report's end.
    pub active_by_period: Vec<i64>,
}

/// The report.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RetentionTable {
    pub periods: Vec<PeriodCounts>,
    pub cohorts: Vec<Cohort>,
}

/// Accumulates customers one at a time (a scan holds one customer's days at once).
#[derive(Debug, Clone)]
pub struct RetentionBuilder {
    unit: PeriodUnit,
    active: HashMap<i64, i64>,
    new: HashMap<i64, i64>,
    retained: HashMap<i64, i64>,
    /// (cohort period, later period) -> active members.
    cohort_active: HashMap<(i64, i64), i64>,
    first_period: Option<i64>,
}

impl RetentionBuilder {
    pub fn new(unit: PeriodUnit) -> Self {
        Self {
            unit,
            active: HashMap::new(),
            new: HashMap::new(),
            retained: HashMap::new(),
            cohort_active: HashMap::new(),
            first_period: None,
        }
    }

    /// Adds a customer by their purchase days, ascending.
    pub fn add_customer(&mut self, purchase_days: impl IntoIterator<Item = i64>) {
        let mut periods: Vec<i64> = purchase_days
            .into_iter()
            .map(|day| self.unit.period_of(day))
            .collect();
        periods.dedup();
        let Some(&first) = periods.first() else { return };
        self.first_period = Some(self.first_period.map_or(first, |known| known.min(first)));
        *self.new.entry(first).or_default() += 1;
        let mut previous: Option<i64> = None;
        for &period in &periods {
            *self.active.entry(period).or_default() += 1;
            if previous == Some(period - 1) {
                *self.retained.entry(period).or_default() += 1;
            }
            *self.cohort_active.entry((first, period)).or_default() += 1;
            previous = Some(period);
        }
    }

    /// The table over the periods holding `start_day` (default: the first purchase) to
    /// `end_day`, the last [`MAX_PERIODS`] of them when there are more.
    pub fn finish(self, start_day: Option<i64>, end_day: i64) -> RetentionTable {
        let last = self.unit.period_of(end_day);
        let Some(first) = start_day
            .map(|day| self.unit.period_of(day))
            .or(self.first_period)
        else {
            return RetentionTable::default();
        };
        let first = first.max(last.saturating_sub(MAX_PERIODS as i64 - 1));
        if first > last {
            return RetentionTable::default();
        }
        let count = |map: &HashMap<i64, i64>, period: i64| map.get(&period).copied().unwrap_or(0);
        let periods = (first..=last)
            .map(|period| PeriodCounts {
                period,
                active: count(&self.active, period),
                new: count(&self.new, period),
                retained: count(&self.retained, period),
                previous_active: count(&self.active, period - 1),
            })
            .collect();
        let mut by_cohort: BTreeMap<i64, Vec<i64>> = BTreeMap::new();
        for (&(cohort, period), &active) in &self.cohort_active {
            if cohort < first || cohort > last || period > last {
                continue;
            }
            let row = by_cohort
                .entry(cohort)
                .or_insert_with(|| vec![0; usize::try_from(last - cohort + 1).unwrap_or(0)]);
            if let Some(slot) = usize::try_from(period - cohort)
                .ok()
                .and_then(|offset| row.get_mut(offset))
            {
                *slot = active;
            }
        }
        let cohorts = by_cohort
            .into_iter()
            .map(|(period, active_by_period)| Cohort {
                period,
                size: count(&self.new, period),
                active_by_period,
            })
            .collect();
        RetentionTable { periods, cohorts }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn day(y: i32, m: u32, d: u32) -> i64 {
        NaiveDate::from_ymd_opt(y, m, d)
            .unwrap()
            .signed_duration_since(epoch())
            .num_days()
    }

    #[test]
    fn retention_periods_are_calendar_periods() {
        assert_eq!(PeriodUnit::Month.period_of(day(1970, 1, 31)), 0);
        assert_eq!(PeriodUnit::Month.period_of(day(1970, 2, 1)), 1);
        assert_eq!(PeriodUnit::Quarter.period_of(day(1970, 4, 1)), 1);
        assert_eq!(PeriodUnit::Year.period_of(day(1969, 12, 31)), -1);
        assert_eq!(
            PeriodUnit::Quarter.period_of(day(1997, 9, 30)),
            (1997 - 1970) * 4 + 2
        );
        for unit in [PeriodUnit::Month, PeriodUnit::Quarter, PeriodUnit::Year] {
            for period in [-30, -1, 0, 1, 57, 300] {
                let start = unit.start_day(period).unwrap();
                assert_eq!(unit.period_of(start), period);
                assert_eq!(unit.period_of(start - 1), period - 1);
            }
        }
    }

    #[test]
    fn retention_counts_retained_new_and_cohorts() {
        let mut builder = RetentionBuilder::new(PeriodUnit::Year);
        // A: 2020, 2021, 2023. B: 2021, 2022. C: 2022 twice. D: 2019 only (before the start).
        builder.add_customer([day(2020, 3, 1), day(2021, 5, 1), day(2023, 1, 1)]);
        builder.add_customer([day(2021, 1, 1), day(2022, 12, 31)]);
        builder.add_customer([day(2022, 1, 1), day(2022, 6, 1)]);
        builder.add_customer([day(2019, 1, 1)]);
        builder.add_customer(std::iter::empty());
        let table = builder.finish(Some(day(2020, 1, 1)), day(2023, 6, 1));
        let rows: Vec<(i64, i64, i64, i64)> = table
            .periods
            .iter()
            .map(|p| (p.active, p.new, p.retained, p.previous_active))
            .collect();
        assert_eq!(rows, vec![(1, 1, 0, 1), (2, 1, 1, 1), (2, 1, 1, 2), (1, 0, 0, 2)]);
        assert_eq!(table.periods[1].retention_rate(), Some(1.0));
        assert_eq!(table.periods[3].retention_rate(), Some(0.0));
        let cohorts: Vec<(i64, i64, Vec<i64>)> = table
            .cohorts
            .iter()
            .map(|c| (c.period, c.size, c.active_by_period.clone()))
            .collect();
        assert_eq!(
            cohorts,
            vec![
                (50, 1, vec![1, 1, 0, 1]),
                (51, 1, vec![1, 1, 0]),
                (52, 1, vec![1, 0]),
            ]
        );
    }

    #[test]
    fn retention_defaults_to_the_first_purchase_and_caps_the_periods() {
        let mut builder = RetentionBuilder::new(PeriodUnit::Month);
        builder.add_customer([day(1990, 1, 1)]);
        let table = builder.finish(None, day(2026, 11, 22));
        assert_eq!(table.periods.len(), MAX_PERIODS);
        assert!(table.cohorts.is_empty());
        assert_eq!(
            RetentionBuilder::new(PeriodUnit::Year).finish(None, 0),
            RetentionTable::default()
        );
    }
}
