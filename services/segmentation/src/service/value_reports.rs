//! Value reports: customer equity (per RFM segment, stage and dynamic segment, with the
//! "fewer defections" scenarios from the active model) and retention per period and cohort.

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Utc};
use crm_proto::money::{from_minor_units, to_minor_units};
use crm_proto::segmentation_v1 as pb;
use prost::Message;
use uuid::Uuid;

use super::Segmentation;
use crate::domain::clv::ValueModel;
use crate::domain::feedback::SATISFIED_CSAT;
use crate::domain::retention::{PeriodUnit, RetentionBuilder};
use crate::domain::scores;
use crate::error::SegmentationError;
use crate::scoring::{self, Settings};
use crate::store::ScoresRow;
use crate::valuation::{self, PredictingModel};

/// Most scenarios one equity report evaluates.
pub const MAX_SCENARIOS: usize = 10;
const DEFAULT_DEFECTION_REDUCTION: f64 = 0.05;
const SCORES_PAGE: u64 = 1000;

/// Running sums of one group, in minor units.
#[derive(Debug, Clone, Copy, Default)]
struct GroupSums {
    customers: i64,
    potential_minor: i64,
    historical_minor: i64,
    alive_sum: f64,
    alive_count: i64,
}

impl GroupSums {
    fn add(&mut self, other: &GroupSums) {
        self.customers += other.customers;
        self.potential_minor = self.potential_minor.saturating_add(other.potential_minor);
        self.historical_minor = self.historical_minor.saturating_add(other.historical_minor);
        self.alive_sum += other.alive_sum;
        self.alive_count += other.alive_count;
    }

    fn resource(&self, group: String, currency: &str) -> pb::EquityGroup {
        pb::EquityGroup {
            group,
            customers: self.customers,
            potential_value: Some(from_minor_units(currency, self.potential_minor)),
            historical_value: Some(from_minor_units(currency, self.historical_minor)),
            mean_probability_alive: if self.alive_count > 0 {
                self.alive_sum / self.alive_count as f64
            } else {
                0.0
            },
        }
    }
}

/// Checks the requested reductions (default one of 5%).
pub fn checked_reductions(requested: &[f64]) -> Result<Vec<f64>, SegmentationError> {
    if requested.len() > MAX_SCENARIOS {
        return Err(SegmentationError::invalid(
            "defection_reductions",
            format!("at most {MAX_SCENARIOS}"),
        ));
    }
    for (index, reduction) in requested.iter().enumerate() {
        if !(reduction.is_finite() && *reduction > 0.0 && *reduction < 1.0) {
            return Err(SegmentationError::invalid(
                format!("defection_reductions[{index}]"),
                "must be above 0 and below 1",
            ));
        }
    }
    Ok(if requested.is_empty() {
        vec![DEFAULT_DEFECTION_REDUCTION]
    } else {
        requested.to_vec()
    })
}

impl Segmentation {
    /// Visits every stored score of the tenant with its decoded resource, a page at a time.
    async fn scan_scores(
        &self,
        tenant: &str,
        mut visit: impl FnMut(&ScoresRow, pb::CustomerScores),
    ) -> Result<(), SegmentationError> {
        let mut after = None;
        loop {
            let page = self
                .store
                .scores_page(self.store.db(), tenant, after, SCORES_PAGE)
                .await?;
            let Some(last) = page.last() else { break };
            after = Some(last.customer_id);
            let full = page.len() as u64 == SCORES_PAGE;
            for row in &page {
                let resource =
                    pb::CustomerScores::decode(row.body.as_slice()).map_err(SegmentationError::corrupt)?;
                visit(row, resource);
            }
            if !full {
                break;
            }
        }
        Ok(())
    }

    /// Customer equity from the stored scores, and the retention scenarios recomputed now.
    pub async fn customer_equity_report(
        &self,
        tenant: &str,
        reductions: &[f64],
    ) -> Result<pb::CustomerEquityReport, SegmentationError> {
        let db = self.store.db();
        let state = self.store.tenant_state(db, tenant).await?;
        let settings = Settings::of(&state)?;
        let currency = settings.currency.clone();
        let model = self
            .active_value_model(db, tenant, &currency)
            .await?
            .ok_or(SegmentationError::NoActiveModel)?;

        // Groups from the stored scores (what customers' values are now).
        let mut per_customer: HashMap<Uuid, GroupSums> = HashMap::new();
        let mut by_rfm: BTreeMap<i32, GroupSums> = BTreeMap::new();
        let mut by_stage: BTreeMap<i32, GroupSums> = BTreeMap::new();
        let mut overall = GroupSums::default();
        self.scan_scores(tenant, |row, resource| {
            let value = resource.value.unwrap_or_default();
            let minor = |money: Option<&crm_proto::google::r#type::Money>| {
                money
                    .filter(|money| money.currency_code == currency)
                    .and_then(to_minor_units)
                    .unwrap_or(0)
            };
            let sums = GroupSums {
                customers: 1,
                potential_minor: minor(value.potential_value.as_ref()),
                historical_minor: minor(value.historical_value.as_ref()),
                alive_sum: value.probability_alive.unwrap_or(0.0),
                alive_count: i64::from(value.probability_alive.is_some()),
            };
            overall.add(&sums);
            by_rfm.entry(row.segment).or_default().add(&sums);
            by_stage.entry(row.stage).or_default().add(&sums);
            per_customer.insert(row.customer_id, sums);
        })
        .await?;
        let mut by_segment = Vec::new();
        for segment in self.store.segments(db, tenant).await? {
            let mut sums = GroupSums::default();
            for member in self.store.members_of(db, tenant, segment.id).await? {
                if let Some(customer) = per_customer.get(&member) {
                    sums.add(customer);
                }
            }
            by_segment.push(sums.resource(format!("segments/{}", segment.id), &currency));
        }

        // Scenarios: everyone's history as of today under the model and under each change.
        let as_of_day = scores::day_of(Utc::now());
        let mut summaries = Vec::new();
        self.scan_owners(tenant, |_, aggregates| {
            summaries.push(valuation::summary_of(&aggregates, as_of_day, &currency)?);
            Ok(())
        })
        .await?;
        let base = equity_of(&model, &summaries)?;
        let mut scenarios = Vec::with_capacity(reductions.len());
        for reduction in reductions {
            let changed = PredictingModel {
                model: ValueModel {
                    transactions: model
                        .model
                        .transactions
                        .with_dropout_reduced(*reduction)
                        .map_err(|error| {
                            SegmentationError::invalid("defection_reductions", error.to_string())
                        })?,
                    spend: model.model.spend,
                },
                ..model.clone()
            };
            let equity = equity_of(&changed, &summaries)?;
            scenarios.push(pb::RetentionScenario {
                defection_reduction: *reduction,
                potential_value: valuation::money_of(&currency, equity),
                change_percent: if base > 0.0 {
                    (equity - base) / base * 100.0
                } else {
                    0.0
                },
            });
        }

        let name_of = |groups: BTreeMap<i32, GroupSums>, name: fn(i32) -> String| {
            groups
                .into_iter()
                .map(|(key, sums)| sums.resource(name(key), &currency))
                .collect::<Vec<_>>()
        };
        Ok(pb::CustomerEquityReport {
            model: model.name.clone(),
            overall: Some(overall.resource("overall".into(), &currency)),
            by_rfm_segment: name_of(by_rfm, |key| {
                pb::RfmSegment::try_from(key)
                    .unwrap_or(pb::RfmSegment::Unspecified)
                    .as_str_name()
                    .to_owned()
            }),
            by_lifecycle_stage: name_of(by_stage, |key| {
                pb::LifecycleStage::try_from(key)
                    .unwrap_or(pb::LifecycleStage::Unspecified)
                    .as_str_name()
                    .to_owned()
            }),
            by_segment,
            model_potential_value: valuation::money_of(&currency, base),
            scenarios,
        })
    }

    /// Retention and defection per period and cohort, from every owner's purchase days.
    pub async fn retention_report(
        &self,
        tenant: &str,
        unit: pb::RetentionPeriodUnit,
        start: Option<DateTime<Utc>>,
        end: DateTime<Utc>,
    ) -> Result<pb::RetentionReport, SegmentationError> {
        let (unit, period) = match unit {
            pb::RetentionPeriodUnit::Month => (PeriodUnit::Month, unit),
            pb::RetentionPeriodUnit::Quarter => (PeriodUnit::Quarter, unit),
            pb::RetentionPeriodUnit::Year | pb::RetentionPeriodUnit::Unspecified => {
                (PeriodUnit::Year, pb::RetentionPeriodUnit::Year)
            }
        };
        let end_day = scores::day_of(end);
        let mut builder = RetentionBuilder::new(unit);
        self.scan_owners(tenant, |_, aggregates| {
            builder.add_customer(
                aggregates
                    .days()
                    .iter()
                    .take_while(|day| day.day <= end_day)
                    .filter(|day| day.purchases > 0)
                    .map(|day| day.day),
            );
            Ok(())
        })
        .await?;
        let table = builder.finish(start.map(scores::day_of), end_day);
        let start_time = |period: i64| unit.start_day(period).map(scoring::day_start);
        Ok(pb::RetentionReport {
            period: period.into(),
            periods: table
                .periods
                .iter()
                .map(|counts| {
                    let retention = counts.retention_rate();
                    pb::RetentionPeriod {
                        start_time: start_time(counts.period),
                        active_customers: counts.active,
                        new_customers: counts.new,
                        retained_customers: counts.retained,
                        retention_rate: retention,
                        defection_rate: retention.map(|rate| 1.0 - rate),
                    }
                })
                .collect(),
            cohorts: table
                .cohorts
                .into_iter()
                .map(|cohort| pb::RetentionCohort {
                    start_time: start_time(cohort.period),
                    size: cohort.size,
                    active_by_period: cohort.active_by_period,
                })
                .collect(),
        })
    }
}

/// The sum of potential value over the summaries, in units of the currency.
fn equity_of(
    model: &PredictingModel,
    summaries: &[Option<crate::domain::clv::CustomerSummary>],
) -> Result<f64, SegmentationError> {
    Ok(model
        .predict(summaries)?
        .iter()
        .flatten()
        .map(|value| value.potential_value)
        .sum())
}

/// Most trapped customers a satisfaction report lists.
const TRAPPED_SAMPLE: usize = 100;

/// Running sums of one satisfaction group.
#[derive(Debug, Clone, Copy, Default)]
struct SatisfactionSums {
    customers: i64,
    responding: i64,
    csat_sum: f64,
    surveyed: i64,
    delivered_sum: f64,
    satisfied: i64,
    trapped: i64,
}

impl SatisfactionSums {
    fn of(value: &pb::CustomerValue) -> Self {
        Self {
            customers: 1,
            responding: i64::from(value.mean_csat.is_some()),
            csat_sum: value.mean_csat.unwrap_or(0.0),
            surveyed: i64::from(value.delivered_value.is_some()),
            delivered_sum: value.delivered_value.unwrap_or(0.0),
            satisfied: i64::from(value.mean_csat.is_some_and(|csat| csat >= SATISFIED_CSAT)),
            trapped: i64::from(value.satisfaction_trap),
        }
    }

    fn add(&mut self, other: &SatisfactionSums) {
        self.customers += other.customers;
        self.responding += other.responding;
        self.csat_sum += other.csat_sum;
        self.surveyed += other.surveyed;
        self.delivered_sum += other.delivered_sum;
        self.satisfied += other.satisfied;
        self.trapped += other.trapped;
    }

    fn resource(&self, group: String) -> pb::SatisfactionGroup {
        pb::SatisfactionGroup {
            group,
            customers: self.customers,
            responding_customers: self.responding,
            mean_csat: (self.responding > 0).then(|| self.csat_sum / self.responding as f64),
            surveyed_customers: self.surveyed,
            mean_delivered_value: (self.surveyed > 0).then(|| self.delivered_sum / self.surveyed as f64),
            satisfied_customers: self.satisfied,
            trapped_customers: self.trapped,
        }
    }
}

impl Segmentation {
    /// Satisfaction, delivered value and the satisfaction trap from the stored scores.
    pub async fn satisfaction_report(
        &self,
        tenant: &str,
    ) -> Result<pb::SatisfactionReport, SegmentationError> {
        let db = self.store.db();
        let mut per_customer: HashMap<Uuid, SatisfactionSums> = HashMap::new();
        let mut by_rfm: BTreeMap<i32, SatisfactionSums> = BTreeMap::new();
        let mut overall = SatisfactionSums::default();
        let mut trapped_customers = Vec::new();
        self.scan_scores(tenant, |row, resource| {
            let sums = SatisfactionSums::of(&resource.value.unwrap_or_default());
            if sums.trapped > 0 && trapped_customers.len() < TRAPPED_SAMPLE {
                trapped_customers.push(format!("customers/{}", row.customer_id));
            }
            overall.add(&sums);
            by_rfm.entry(row.segment).or_default().add(&sums);
            per_customer.insert(row.customer_id, sums);
        })
        .await?;
        let mut by_segment = Vec::new();
        for segment in self.store.segments(db, tenant).await? {
            let mut sums = SatisfactionSums::default();
            for member in self.store.members_of(db, tenant, segment.id).await? {
                if let Some(customer) = per_customer.get(&member) {
                    sums.add(customer);
                }
            }
            by_segment.push(sums.resource(format!("segments/{}", segment.id)));
        }
        Ok(pb::SatisfactionReport {
            overall: Some(overall.resource("overall".into())),
            by_rfm_segment: by_rfm
                .into_iter()
                .map(|(key, sums)| {
                    sums.resource(
                        pb::RfmSegment::try_from(key)
                            .unwrap_or(pb::RfmSegment::Unspecified)
                            .as_str_name()
                            .to_owned(),
                    )
                })
                .collect(),
            by_segment,
            trapped_customers,
        })
    }
}
