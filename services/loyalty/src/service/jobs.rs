//! The scheduled jobs: pending points mature after their return window, points past their
//! expiry expire, tiers due for their evaluation are evaluated (a downgrade happens only
//! here; upgrades happen at once on earning), and points whose expiry comes within the notice
//! period are announced, each lot once.
//!
//! Each run takes everything due at its time, tenant by tenant, a page of accounts per
//! transaction. Entry ids name the account and the run's time, so two replicas running at
//! once cannot apply one run twice, and a later run finds nothing left of an earlier one.

use std::time::Duration;

use chrono::{DateTime, Months, Utc};

use super::{Loyalty, MAX_ATTEMPTS, commit, gave_up, now, retryable};
use crate::domain::{
    Account, Command, CustomerId, DomainError, EntryId, ExpiringLot, LoyaltyEvent, Operation, Outcome,
    Program,
};
use crate::error::LoyaltyError;
use crate::store::{HeldLot, StoreError, StoredAccount};

/// Accounts per transaction, and tenants, lots and accounts per page read.
const PAGE: u64 = 200;

/// What one run changed, for the log and the tests.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct JobReport {
    pub matured_accounts: usize,
    pub expired_accounts: usize,
    pub evaluated_accounts: usize,
    /// POINTS_EXPIRING_SOON events recorded.
    pub expiry_notices: usize,
}

/// Runs the jobs every `interval`, from now on.
pub fn spawn(service: Loyalty, interval: Duration) {
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            match service.run_jobs(now()).await {
                Ok(report) if report != JobReport::default() => tracing::info!(?report, "loyalty jobs ran"),
                Ok(_) => {}
                Err(error) => tracing::warn!(%error, "loyalty jobs failed; the next run catches up"),
            }
        }
    });
}

/// Which job a pass runs.
#[derive(Debug, Clone, Copy)]
enum Job {
    Mature,
    Expire,
    EvaluateTier,
}

impl Loyalty {
    /// Everything due at `at`, in every tenant with a program.
    pub async fn run_jobs(&self, at: DateTime<Utc>) -> Result<JobReport, LoyaltyError> {
        let mut report = JobReport::default();
        let mut after: Option<String> = None;
        loop {
            let tenants = self
                .store
                .program_tenants(self.store.db(), after.as_deref(), PAGE)
                .await?;
            let Some(last) = tenants.last().cloned() else {
                return Ok(report);
            };
            for tenant in &tenants {
                self.run_tenant_jobs(tenant, at, &mut report).await?;
            }
            after = Some(last);
        }
    }

    async fn run_tenant_jobs(
        &self,
        tenant: &str,
        at: DateTime<Utc>,
        report: &mut JobReport,
    ) -> Result<(), LoyaltyError> {
        let db = self.store.db();
        let Some(program) = self.store.program(db, tenant).await? else {
            return Ok(());
        };
        let program = program.program;

        // Maturity first, so points that mature and expire in one run are expired as matured.
        let mut cursor = None;
        loop {
            let lots = self
                .store
                .lots_maturing(db, tenant, at, cursor.as_ref(), PAGE)
                .await?;
            let Some(last) = lots.last() else { break };
            cursor = Some(last.maturity_cursor());
            report.matured_accounts += self
                .run_job(tenant, &program, &holders(&lots), Job::Mature, at)
                .await?;
        }

        let mut cursor = None;
        loop {
            let lots = self
                .store
                .lots_expiring(db, tenant, None, at, cursor.as_ref(), PAGE)
                .await?;
            let Some(last) = lots.last() else { break };
            cursor = last.expiry_cursor();
            report.expired_accounts += self
                .run_job(tenant, &program, &holders(&lots), Job::Expire, at)
                .await?;
            if cursor.is_none() {
                break;
            }
        }

        let Some(evaluated_by) = at.checked_sub_months(Months::new(program.tier_evaluation_period_months))
        else {
            return Ok(());
        };
        let mut after: Option<CustomerId> = None;
        loop {
            let due = self
                .store
                .accounts_due_for_tier_evaluation(db, tenant, evaluated_by, after.as_ref(), PAGE)
                .await?;
            let Some(last) = due.last().cloned() else { break };
            report.evaluated_accounts += self
                .run_job(tenant, &program, &due, Job::EvaluateTier, at)
                .await?;
            after = Some(last);
        }
        report.expiry_notices += self.announce_expiring(tenant, at).await?;
        Ok(())
    }

    /// Announces the lots whose expiry came within the notice period since the last run: one
    /// POINTS_EXPIRING_SOON per account and page of lots. The period announced so far is kept
    /// per tenant as a cursor (microseconds), moved in the transaction that records the
    /// events, so each lot is announced once whatever the number of replicas.
    async fn announce_expiring(&self, tenant: &str, at: DateTime<Utc>) -> Result<usize, LoyaltyError> {
        let horizon = at + chrono::TimeDelta::days(i64::from(self.expiry_notice_days));
        let source = format!("expiring-soon/{tenant}");
        for _ in 0..MAX_ATTEMPTS {
            let txn = self.store.begin_write().await?;
            let announced = self.store.lock_feed(&txn, &source).await?;
            let from = DateTime::from_timestamp_micros(announced).map_or(at, |announced| announced.max(at));
            if from >= horizon {
                txn.rollback().await.map_err(StoreError::from)?;
                return Ok(0);
            }
            let mut events = Vec::new();
            let mut cursor = None;
            loop {
                let lots = self
                    .store
                    .lots_expiring(&txn, tenant, Some(from), horizon, cursor.as_ref(), PAGE)
                    .await?;
                let Some(last) = lots.last() else { break };
                cursor = last.expiry_cursor();
                events.extend(expiring_events(&lots, at));
                if cursor.is_none() {
                    break;
                }
            }
            let recorded = self.record_events(&txn, tenant, &events).await;
            let moved = match recorded {
                Ok(()) => {
                    self.store
                        .set_feed_cursor(&txn, &source, horizon.timestamp_micros())
                        .await
                }
                Err(error) => Err(error),
            };
            if retryable(moved)?.is_none() {
                continue;
            }
            if !commit(txn).await? {
                continue;
            }
            self.events_committed();
            return Ok(events.len());
        }
        Err(gave_up())
    }

    /// Runs one job on the accounts of `holders` in one transaction; returns how many it
    /// changed. Accounts merged away since the page was read are left to their survivor.
    async fn run_job(
        &self,
        tenant: &str,
        program: &Program,
        holders: &[CustomerId],
        job: Job,
        at: DateTime<Utc>,
    ) -> Result<usize, LoyaltyError> {
        for _ in 0..MAX_ATTEMPTS {
            let txn = self.store.begin_write().await?;
            let Some(mut accounts) = retryable(self.store.load_accounts(&txn, tenant, holders).await)? else {
                continue;
            };
            let mut changed: Vec<&mut StoredAccount> = Vec::new();
            let mut events = Vec::new();
            for stored in accounts.values_mut() {
                if stored.account().merged_into().is_some() {
                    continue;
                }
                if let Some(announced) = apply_job(stored.account_mut(), program, job, at)? {
                    events.extend(announced);
                    changed.push(stored);
                }
            }
            let count = changed.len();
            let saved = match self.store.save_accounts(&txn, tenant, &mut changed).await {
                Ok(()) => self.record_events(&txn, tenant, &events).await,
                Err(error) => Err(error),
            };
            if retryable(saved)?.is_none() {
                continue;
            }
            if !commit(txn).await? {
                continue;
            }
            if !events.is_empty() {
                self.events_committed();
            }
            self.publish_hot_many(
                accounts
                    .values()
                    .filter(|stored| stored.account().merged_into().is_none())
                    .map(|stored| (tenant, stored)),
            )
            .await;
            return Ok(count);
        }
        Err(gave_up())
    }
}

/// Applies one job to one account: whether it changed, and what it announces.
fn apply_job(
    account: &mut Account,
    program: &Program,
    job: Job,
    at: DateTime<Utc>,
) -> Result<Option<Vec<LoyaltyEvent>>, DomainError> {
    let run = |name: &str| EntryId::new(format!("{name}:{}:{}", account.customer(), at.timestamp_micros()));
    let (entry_id, operation) = match job {
        Job::EvaluateTier => {
            // Evaluating restarts the evaluation clock even when the tier stays.
            return Ok(Some(account.evaluate_tier(program, at).into_iter().collect()));
        }
        Job::Mature => (run("maturity"), Operation::Mature),
        Job::Expire => (run("expiry"), Operation::Expire),
    };
    let command = Command {
        entry_id,
        at,
        operation,
    };
    Ok(match account.apply(program, command)? {
        Outcome::Applied { events, .. } => Some(events),
        Outcome::Replayed { .. } | Outcome::NothingDue => None,
    })
}

/// One POINTS_EXPIRING_SOON per account of `lots`, soonest lot first.
fn expiring_events(lots: &[HeldLot], at: DateTime<Utc>) -> Vec<LoyaltyEvent> {
    let mut by_holder: std::collections::BTreeMap<&CustomerId, Vec<ExpiringLot>> =
        std::collections::BTreeMap::new();
    for held in lots {
        if let Some(expires_at) = held.lot.expires_at {
            by_holder.entry(&held.holder).or_default().push(ExpiringLot {
                lot_id: held.lot.id.clone(),
                points: held.lot.remaining_points,
                expires_at,
            });
        }
    }
    by_holder
        .into_iter()
        .filter_map(|(holder, mut expiring)| {
            expiring.sort_by(|left, right| {
                (left.expires_at, &left.lot_id).cmp(&(right.expires_at, &right.lot_id))
            });
            let earliest_expires_at = expiring.first()?.expires_at;
            Some(LoyaltyEvent::PointsExpiringSoon {
                customer: holder.clone(),
                points: expiring.iter().map(|lot| lot.points).sum(),
                earliest_expires_at,
                lots: expiring,
                as_of: at,
            })
        })
        .collect()
}

fn holders(lots: &[HeldLot]) -> Vec<CustomerId> {
    let mut holders: Vec<CustomerId> = lots.iter().map(|held| held.holder.clone()).collect();
    holders.sort();
    holders.dedup();
    holders
}
