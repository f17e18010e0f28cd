//! The use cases: apply events to aggregates and rescore, score runs, reads and reports;
//! dynamic segments in [`segments`].

pub mod segments;
pub mod value_models;
pub mod value_reports;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use crm_cache::{Cache, VersionedUpdate, customer_key};
use crm_db::idempotency::RequestKey;
use crm_proto::segmentation_v1 as pb;
use prost::Message;
use sea_orm::DatabaseTransaction;
use uuid::Uuid;

use crate::domain::feedback::FeedbackSums;
use crate::domain::scores::{self, Aggregates, CustomerScores, WindowValues};
use crate::error::SegmentationError;
use crate::scoring::{self, HOT_FIELD_NAMES, HOT_REVISION_FIELD, HOT_SCORES_FIELD, ScoreInput, Settings};
use crate::store::{ScoresColumn, Store, StoredOrigin, StoredRun};
use crate::valuation;
use crm_db::outbox::Outbox;

/// Owners rescored per transaction in a score run.
const RUN_BATCH: usize = 1000;
/// Origins read per query in a score run.
const RUN_PAGE: u64 = 10_000;

/// What one event means here.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    /// A purchase (`purchases` 1) or refund (`purchases` 0, negative net) of `origin`.
    Money {
        origin: Uuid,
        day: i64,
        purchases: i64,
        currency: String,
        net_minor: i64,
        margin_minor: i64,
    },
    /// Feedback of `origin`: a CSAT answer and/or a delivered-value survey's (value, cost)
    /// totals.
    Feedback {
        origin: Uuid,
        csat: Option<i32>,
        survey: Option<(i64, i64)>,
    },
    Created {
        customer: Uuid,
    },
    Merged {
        survivor: Uuid,
        merged: Vec<Uuid>,
    },
    Unmerged {
        survivor: Uuid,
        restored: Vec<Uuid>,
    },
    Erased {
        customer: Uuid,
    },
    /// Customer-profile's current facts of `customer` (encoded, see `membership::facts_of`;
    /// a deleted customer's when customer-profile no longer shows it); None when it was merged
    /// into another.
    Facts {
        customer: Uuid,
        facts: Option<Vec<u8>>,
    },
}

/// A positioned event of a feed.
#[derive(Debug, Clone, PartialEq)]
pub struct FeedChange {
    pub position: i64,
    pub tenant: String,
    pub change: Change,
}

/// The hot-score writes a commit leads to, each with the revision of the transaction.
#[derive(Debug, Default)]
pub struct HotWrites {
    pub set: Vec<(String, pb::CustomerScores, i64)>,
    pub removed: Vec<(String, Uuid, i64)>,
}

/// What a writing transaction stamps on the scores it writes.
#[derive(Debug, Clone, Copy)]
struct Stamp {
    /// The tenant's score revision of the transaction.
    revision: i64,
    now: DateTime<Utc>,
}

pub struct Segmentation {
    store: Store,
    cache: Arc<dyn Cache>,
    cache_ttl: Duration,
    /// Segment entries and exits, written with the change they follow from.
    outbox: Outbox,
}

fn hot_key(tenant: &str, customer: Uuid) -> String {
    customer_key("score", tenant, &customer.to_string())
}

impl Segmentation {
    pub fn new(store: Store, cache: Arc<dyn Cache>, cache_ttl: Duration) -> Self {
        let outbox = Outbox::new(store.db().clone());
        Self {
            store,
            cache,
            cache_ttl,
            outbox,
        }
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn outbox(&self) -> &Outbox {
        &self.outbox
    }

    // ---- events ----

    /// Applies a batch of one feed's events in one transaction with the feed's cursor; events
    /// at or below the stored cursor (applied before, by this or another replica) are skipped.
    /// Writes the hot scores after the commit. Returns how many events were applied.
    pub async fn apply(&self, source: &str, changes: &[FeedChange]) -> Result<usize, SegmentationError> {
        let Some(last) = changes.last().map(|change| change.position) else {
            return Ok(0);
        };
        let now = Utc::now();
        let txn = self.store.begin_write().await?;
        let stored = self.store.lock_feed(&txn, source).await?;
        let fresh: Vec<&FeedChange> = changes.iter().filter(|change| change.position > stored).collect();
        if fresh.is_empty() {
            txn.rollback().await?;
            return Ok(0);
        }
        let mut by_tenant: BTreeMap<&str, Vec<&Change>> = BTreeMap::new();
        for change in &fresh {
            by_tenant
                .entry(change.tenant.as_str())
                .or_default()
                .push(&change.change);
        }
        let mut hot = HotWrites::default();
        // Tenants in a fixed order, so two writers never wait on each other's tenant locks.
        for (tenant, tenant_changes) in by_tenant {
            self.store.lock_tenant(&txn, tenant).await?;
            let revision = self.store.next_score_revision(&txn, tenant).await?;
            let settings = Settings::of(&self.store.tenant_state(&txn, tenant).await?)?;
            let mut touched = BTreeSet::new();
            let mut removed = BTreeSet::new();
            // Runs of purchases and refunds (nearly every event) are applied together, a few
            // queries per run; merges, unmerges and erasures one by one, in order.
            let mut pending_money: Vec<&Change> = Vec::new();
            for change in tenant_changes {
                if matches!(change, Change::Money { .. }) {
                    pending_money.push(change);
                    continue;
                }
                self.apply_money(&txn, tenant, &settings, &pending_money, &mut touched)
                    .await?;
                pending_money.clear();
                self.apply_one(&txn, tenant, change, &mut touched, &mut removed)
                    .await?;
            }
            self.apply_money(&txn, tenant, &settings, &pending_money, &mut touched)
                .await?;
            // Referrers count their referred customers' spend: they are rescored with them.
            let changed: Vec<Uuid> = touched.iter().copied().collect();
            let referrers: BTreeSet<Uuid> = self
                .store
                .referrers_of(&txn, tenant, &changed)
                .await?
                .into_iter()
                .collect();
            touched.extend(
                self.store
                    .resolve_many(&txn, tenant, &referrers)
                    .await?
                    .into_values(),
            );
            // A referrer reached that way may be erased: an erased customer is never rescored
            // (that would bring back their scores).
            removed.extend(self.store.erased_among(&txn, tenant, &touched).await?);
            let touched: Vec<Uuid> = touched.difference(&removed).copied().collect();
            for resource in self
                .rescore(
                    &txn,
                    tenant,
                    &touched,
                    &HashMap::new(),
                    None,
                    Stamp { revision, now },
                )
                .await?
            {
                hot.set.push((tenant.to_owned(), resource, revision));
            }
            hot.removed.extend(
                removed
                    .into_iter()
                    .map(|customer| (tenant.to_owned(), customer, revision)),
            );
        }
        self.store.set_feed_cursor(&txn, source, last).await?;
        txn.commit().await?;
        self.outbox.notify_committed();
        self.write_hot(hot).await;
        Ok(fresh.len())
    }

    /// Applies purchases and refunds to their origins' aggregates: the origins, their owners
    /// and the erased among them read once, written back in one upsert.
    async fn apply_money(
        &self,
        txn: &DatabaseTransaction,
        tenant: &str,
        settings: &Settings,
        changes: &[&Change],
        touched: &mut BTreeSet<Uuid>,
    ) -> Result<(), SegmentationError> {
        let origin_ids: BTreeSet<Uuid> = changes
            .iter()
            .filter_map(|change| match change {
                Change::Money { origin, .. } => Some(*origin),
                _ => None,
            })
            .collect();
        if origin_ids.is_empty() {
            return Ok(());
        }
        let owners = self.store.resolve_many(txn, tenant, &origin_ids).await?;
        let mut checked: BTreeSet<Uuid> = origin_ids.clone();
        checked.extend(owners.values().copied());
        let erased = self.store.erased_among(txn, tenant, &checked).await?;
        let mut stored = self.store.origins_by_id(txn, tenant, &origin_ids).await?;
        let mut aggregates: HashMap<Uuid, Aggregates> = HashMap::new();
        // The origins an event of this run applied to: only these are written back.
        let mut changed: BTreeSet<Uuid> = BTreeSet::new();
        for change in changes {
            let Change::Money {
                origin,
                day,
                purchases,
                currency,
                net_minor,
                margin_minor,
            } = change
            else {
                continue;
            };
            let owner = owners.get(origin).copied().unwrap_or(*origin);
            if erased.contains(origin) || erased.contains(&owner) {
                continue;
            }
            let row = stored.entry(*origin).or_insert_with(|| StoredOrigin {
                origin_id: *origin,
                owner_id: owner,
                days: Vec::new(),
                other_currency_events: 0,
                feedback: Vec::new(),
            });
            row.owner_id = owner;
            if currency == &settings.currency {
                let days = match aggregates.entry(*origin) {
                    std::collections::hash_map::Entry::Occupied(entry) => entry.into_mut(),
                    std::collections::hash_map::Entry::Vacant(entry) => {
                        entry.insert(if row.days.is_empty() {
                            Aggregates::new()
                        } else {
                            Aggregates::decode(&row.days)?
                        })
                    }
                };
                days.record(*day, *purchases, *net_minor, *margin_minor)?;
            } else {
                row.other_currency_events = row.other_currency_events.saturating_add(1);
            }
            changed.insert(*origin);
            touched.insert(owner);
        }
        let mut rows: Vec<StoredOrigin> = Vec::with_capacity(changed.len());
        for origin in changed {
            let Some(mut row) = stored.remove(&origin) else {
                continue;
            };
            if let Some(days) = aggregates.remove(&origin) {
                row.days = days.encode();
            } else if row.days.is_empty() {
                row.days = Aggregates::new().encode();
            }
            rows.push(row);
        }
        self.store.save_origins(txn, tenant, &rows).await
    }

    async fn apply_one(
        &self,
        txn: &DatabaseTransaction,
        tenant: &str,
        change: &Change,
        touched: &mut BTreeSet<Uuid>,
        removed: &mut BTreeSet<Uuid>,
    ) -> Result<(), SegmentationError> {
        match change {
            // Applied in runs by `apply_money`.
            Change::Money { .. } => {}
            Change::Feedback { origin, csat, survey } => {
                let owner = self.store.resolve(txn, tenant, *origin).await?;
                let checked: BTreeSet<Uuid> = [*origin, owner].into_iter().collect();
                if !self.store.erased_among(txn, tenant, &checked).await?.is_empty() {
                    return Ok(());
                }
                let mut row = self
                    .store
                    .origins_by_id(txn, tenant, &BTreeSet::from([*origin]))
                    .await?
                    .remove(origin)
                    .unwrap_or_else(|| StoredOrigin {
                        origin_id: *origin,
                        owner_id: owner,
                        days: Aggregates::new().encode(),
                        other_currency_events: 0,
                        feedback: Vec::new(),
                    });
                row.owner_id = owner;
                let mut sums = FeedbackSums::decode(&row.feedback)?;
                sums.record(*csat, *survey)?;
                row.feedback = sums.encode();
                self.store.save_origins(txn, tenant, &[row]).await?;
                touched.insert(owner);
            }
            Change::Created { customer } => {
                if !self.store.is_erased(txn, tenant, *customer).await?
                    && self.store.resolve(txn, tenant, *customer).await? == *customer
                    && self.store.scores(txn, tenant, *customer).await?.is_none()
                {
                    touched.insert(*customer);
                }
            }
            Change::Merged { survivor, merged } => {
                let root = self.store.resolve(txn, tenant, *survivor).await?;
                for merged_id in merged.iter().filter(|id| *id != survivor && **id != root) {
                    self.store
                        .set_merge_parent(txn, tenant, *merged_id, *survivor)
                        .await?;
                    self.store.reassign_owner(txn, tenant, *merged_id, root).await?;
                    self.store.delete_scores(txn, tenant, *merged_id).await?;
                    self.store.delete_facts(txn, tenant, *merged_id).await?;
                    self.leave_all_segments(txn, tenant, *merged_id).await?;
                    touched.remove(merged_id);
                    removed.insert(*merged_id);
                }
                if !self.store.is_erased(txn, tenant, root).await? {
                    touched.insert(root);
                }
            }
            Change::Unmerged { survivor, restored } => {
                let root = self.store.resolve(txn, tenant, *survivor).await?;
                for restored_id in restored {
                    self.store.remove_merge_parent(txn, tenant, *restored_id).await?;
                    removed.remove(restored_id);
                }
                // Every origin the survivor holds goes back to whichever customer it now
                // resolves to: the restored ones take theirs (and what was merged into them).
                let mut held: BTreeSet<Uuid> = self
                    .store
                    .origins_of(txn, tenant, root)
                    .await?
                    .into_iter()
                    .map(|origin| origin.origin_id)
                    .collect();
                held.extend(restored.iter().copied());
                let resolved = self.store.resolve_many(txn, tenant, &held).await?;
                let moved: HashMap<Uuid, Uuid> = resolved
                    .iter()
                    .filter(|(_, owner)| **owner != root)
                    .map(|(origin, owner)| (*origin, *owner))
                    .collect();
                self.store.set_owners(txn, tenant, &moved).await?;
                let owners: BTreeSet<Uuid> =
                    std::iter::once(root).chain(resolved.values().copied()).collect();
                for owner in owners {
                    if !self.store.is_erased(txn, tenant, owner).await? {
                        touched.insert(owner);
                    }
                }
            }
            Change::Erased { customer } => {
                self.store.mark_erased(txn, tenant, *customer).await?;
                self.store.delete_origins_of(txn, tenant, *customer).await?;
                self.store.delete_scores(txn, tenant, *customer).await?;
                self.store.delete_facts(txn, tenant, *customer).await?;
                self.leave_all_segments(txn, tenant, *customer).await?;
                // Their spend leaves their referrer's referral value.
                if let Some(referrer) = self.store.set_referrer(txn, tenant, *customer, None).await? {
                    touched.insert(self.store.resolve(txn, tenant, referrer).await?);
                }
                touched.remove(customer);
                removed.insert(*customer);
            }
            Change::Facts { customer, facts } => {
                // Facts of an erased or merged-away customer are of no use: the survivor's
                // own facts arrive with the merge.
                if self.store.is_erased(txn, tenant, *customer).await?
                    || self.store.resolve(txn, tenant, *customer).await? != *customer
                {
                    return Ok(());
                }
                let referrer = match facts {
                    Some(body) => {
                        self.store
                            .save_facts(txn, tenant, *customer, body.clone())
                            .await?;
                        referrer_of(body)?
                    }
                    None => {
                        self.store.delete_facts(txn, tenant, *customer).await?;
                        None
                    }
                };
                let before = self.store.set_referrer(txn, tenant, *customer, referrer).await?;
                // A referrer's value counts this customer: a new or former one is rescored.
                for referrer in [before, referrer].into_iter().flatten() {
                    touched.insert(self.store.resolve(txn, tenant, referrer).await?);
                }
                touched.insert(*customer);
            }
        }
        Ok(())
    }

    /// Rescores `owners` from their current aggregates inside `txn` and stores the scores.
    /// `exact` holds the batch scores of a run for owners whose window values are still
    /// `exact_values`; the others are scored against the stored cut-offs.
    async fn rescore(
        &self,
        txn: &DatabaseTransaction,
        tenant: &str,
        owners: &[Uuid],
        exact: &HashMap<Uuid, (WindowValues, CustomerScores)>,
        as_of: Option<DateTime<Utc>>,
        Stamp { revision, now }: Stamp,
    ) -> Result<Vec<pb::CustomerScores>, SegmentationError> {
        if owners.is_empty() {
            return Ok(Vec::new());
        }
        let state = self.store.tenant_state(txn, tenant).await?;
        let settings = Settings::of(&state)?;
        let cutoffs = scoring::cutoffs_of(&state)?;
        let as_of = as_of.unwrap_or(now);
        let mut origins = self.store.origins_of_many(txn, tenant, owners).await?;
        let previous = self.store.scores_many(txn, tenant, owners).await?;
        let facts = self.decoded_facts(txn, tenant, owners).await?;
        let window_days = scoring::window_of(&settings, cutoffs.as_ref());
        let as_of_day = scores::day_of(as_of);
        let mut feedback = Vec::with_capacity(owners.len());
        let mut combined = Vec::with_capacity(owners.len());
        for owner in owners {
            let owned = origins.remove(owner).unwrap_or_default();
            feedback.push(scoring::combine_feedback(&owned)?);
            combined.push(scoring::combine(&owned)?);
        }
        let referral_minor = self.referral_values(txn, tenant, owners).await?;
        let value_model = self.active_value_model(txn, tenant, &settings.currency).await?;
        let predicted = match &value_model {
            Some(model) => {
                let summaries = combined
                    .iter()
                    .map(|(aggregates, _)| valuation::summary_of(aggregates, as_of_day, &settings.currency))
                    .collect::<Result<Vec<_>, _>>()?;
                model.predict(&summaries)?
            }
            None => vec![None; owners.len()],
        };
        let mut resources = Vec::with_capacity(owners.len());
        let mut rows = Vec::with_capacity(owners.len());
        for (((owner, (aggregates, other)), predicted), feedback) in
            owners.iter().zip(combined).zip(predicted).zip(feedback)
        {
            let value = valuation::customer_value(
                valuation::ValueInput {
                    aggregates: &aggregates,
                    feedback: &feedback,
                    as_of_day,
                    settings: &settings,
                    facts: facts.get(owner),
                    referral_minor: referral_minor.get(owner).copied().unwrap_or(0),
                },
                value_model.as_ref().zip(predicted),
            );
            let window = aggregates.window(as_of_day, window_days);
            let exact_scores = exact
                .get(owner)
                .filter(|(values, _)| Some(*values) == window)
                .map(|(_, scores)| *scores);
            let (resource, row) = scoring::score(ScoreInput {
                customer: *owner,
                aggregates: &aggregates,
                other_currency_events: other,
                as_of,
                settings: &settings,
                cutoffs: cutoffs.as_ref(),
                exact: exact_scores,
                previous: previous.get(owner),
                facts: facts.get(owner),
                value,
                revision,
                now,
            })?;
            resources.push(resource);
            rows.push(row);
        }
        self.store.save_scores(txn, tenant, &rows).await?;
        let scored: Vec<(Uuid, &pb::CustomerScores)> = owners.iter().copied().zip(resources.iter()).collect();
        self.update_memberships(txn, tenant, &scored, &facts, now).await?;
        Ok(resources)
    }

    /// Each owner's referral value: the lifetime net spend (scoring currency, minor units) of
    /// the customers they referred, each counted through its current owner (merged-away
    /// referred customers count with their survivor; self-referrals after a merge do not).
    async fn referral_values(
        &self,
        txn: &DatabaseTransaction,
        tenant: &str,
        owners: &[Uuid],
    ) -> Result<HashMap<Uuid, i64>, SegmentationError> {
        let referred = self.store.referred_by(txn, tenant, owners).await?;
        if referred.is_empty() {
            return Ok(HashMap::new());
        }
        let customers: BTreeSet<Uuid> = referred.values().flatten().copied().collect();
        let owner_of = self.store.resolve_many(txn, tenant, &customers).await?;
        let referred_owners: Vec<Uuid> = owner_of
            .values()
            .copied()
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let origins = self.store.origins_of_many(txn, tenant, &referred_owners).await?;
        let mut spend: HashMap<Uuid, i64> = HashMap::new();
        for (owner, owned) in &origins {
            spend.insert(*owner, scoring::combine(owned)?.0.lifetime_net_minor());
        }
        Ok(referred
            .into_iter()
            .map(|(referrer, customers)| {
                let counted: BTreeSet<Uuid> = customers
                    .iter()
                    .filter_map(|customer| owner_of.get(customer).copied())
                    .filter(|owner| *owner != referrer)
                    .collect();
                let total = counted.iter().fold(0_i64, |sum, owner| {
                    sum.saturating_add(spend.get(owner).copied().unwrap_or(0))
                });
                (referrer, total)
            })
            .collect())
    }

    /// Writes committed scores to the hot hashes, each only over an older revision; a removed
    /// customer's fields are dropped and its revision kept, so a late older write cannot bring
    /// them back. Pipelined, up to 1000 hashes per round trip.
    async fn write_hot(&self, hot: HotWrites) {
        let mut updates: Vec<VersionedUpdate<'static>> =
            Vec::with_capacity(hot.set.len() + hot.removed.len());
        for (tenant, resource, revision) in hot.set {
            let Some(customer) = resource
                .customer
                .strip_prefix("customers/")
                .and_then(|id| Uuid::parse_str(id).ok())
            else {
                continue;
            };
            updates.push(VersionedUpdate {
                key: hot_key(&tenant, customer),
                version: revision,
                set: scoring::hot_fields(&resource),
                delete: &[],
            });
        }
        for (tenant, customer, revision) in hot.removed {
            updates.push(VersionedUpdate {
                key: hot_key(&tenant, customer),
                version: revision,
                set: Vec::new(),
                delete: &HOT_FIELD_NAMES,
            });
        }
        for chunk in updates.chunks(1000) {
            self.cache
                .hash_update_many_if_newer(HOT_REVISION_FIELD, chunk, self.cache_ttl)
                .await;
        }
    }

    // ---- reads ----

    /// A customer's scores: the hot hash, else the store (through merges), repopulating the
    /// hash.
    pub async fn scores(
        &self,
        tenant: &str,
        customer: Uuid,
    ) -> Result<pb::CustomerScores, SegmentationError> {
        if let Some(bytes) = self
            .cache
            .hash_get(&hot_key(tenant, customer), HOT_SCORES_FIELD)
            .await
            && let Ok(resource) = pb::CustomerScores::decode(bytes.as_slice())
        {
            return Ok(resource);
        }
        let owner = self.store.resolve(self.store.db(), tenant, customer).await?;
        let row = self
            .store
            .scores(self.store.db(), tenant, owner)
            .await?
            .ok_or_else(|| SegmentationError::not_found(format!("customers/{customer}/scores")))?;
        let resource = pb::CustomerScores::decode(row.body.as_slice()).map_err(SegmentationError::corrupt)?;
        if owner == customer {
            self.cache
                .hash_set(
                    &hot_key(tenant, customer),
                    &scoring::hot_fields(&resource),
                    self.cache_ttl,
                )
                .await;
        }
        Ok(resource)
    }

    // ---- score runs ----

    /// Starts a score run for the tenant, or returns the one in progress.
    pub async fn start_run(
        self: &Arc<Self>,
        tenant: &str,
        as_of: DateTime<Utc>,
        request: Option<RequestKey>,
    ) -> Result<pb::ScoreRun, SegmentationError> {
        if let Some(key) = &request
            && let Some(stored) = self.store.replay(tenant, key.method, &key.request_id).await?
        {
            return replayed(stored, key);
        }
        let txn = self.store.begin_write().await?;
        self.store.lock_tenant(&txn, tenant).await?;
        let run = match self.create_run(&txn, tenant, as_of).await? {
            Err(running) => {
                txn.rollback().await?;
                return Ok(running);
            }
            Ok(run) => run,
        };
        if let Some(key) = &request
            && let Some(stored) = self
                .store
                .claim(&txn, tenant, &key.claim(run.encode_to_vec(), run.name.clone()))
                .await?
        {
            txn.rollback().await?;
            return replayed(stored, key);
        }
        txn.commit().await?;
        self.spawn_run(tenant, &run, as_of)?;
        Ok(run)
    }

    /// Records a new RUNNING run in `txn`, which holds the tenant lock; `Err` with the run in
    /// progress instead when there is one. Start it with [`Self::spawn_run`] after commit.
    pub(crate) async fn create_run(
        &self,
        txn: &DatabaseTransaction,
        tenant: &str,
        as_of: DateTime<Utc>,
    ) -> Result<Result<pb::ScoreRun, pb::ScoreRun>, SegmentationError> {
        if let Some(running) = self
            .store
            .run_in_state(txn, tenant, pb::score_run::State::Running.into())
            .await?
        {
            return Ok(Err(
                pb::ScoreRun::decode(running.body.as_slice()).map_err(SegmentationError::corrupt)?
            ));
        }
        let now = Utc::now();
        let id = Uuid::now_v7();
        let run = pb::ScoreRun {
            name: format!("scoreRuns/{id}"),
            state: pb::score_run::State::Running.into(),
            as_of_time: Some(scoring::timestamp(as_of)),
            create_time: Some(scoring::timestamp(now)),
            ..Default::default()
        };
        self.store
            .save_run(txn, tenant, &stored_run(id, &run), now)
            .await?;
        Ok(Ok(run))
    }

    /// Runs a committed new run in the background.
    pub(crate) fn spawn_run(
        self: &Arc<Self>,
        tenant: &str,
        run: &pb::ScoreRun,
        as_of: DateTime<Utc>,
    ) -> Result<(), SegmentationError> {
        let id = run
            .name
            .strip_prefix("scoreRuns/")
            .and_then(|id| Uuid::parse_str(id).ok())
            .ok_or_else(|| SegmentationError::corrupt(format!("run name {}", run.name)))?;
        let now = run
            .create_time
            .as_ref()
            .and_then(|time| DateTime::from_timestamp(time.seconds, u32::try_from(time.nanos).unwrap_or(0)))
            .unwrap_or_else(Utc::now);
        let service = Arc::clone(self);
        let tenant_owned = tenant.to_owned();
        let started = run.clone();
        tokio::spawn(async move {
            let outcome = service.run(&tenant_owned, id, started.clone(), as_of).await;
            if let Err(error) = outcome {
                tracing::warn!(tenant = tenant_owned, %error, "score run failed");
                let failed = pb::ScoreRun {
                    state: pb::score_run::State::Failed.into(),
                    end_time: Some(scoring::timestamp(Utc::now())),
                    error: error.to_string(),
                    ..started
                };
                if let Err(error) = service
                    .store
                    .save_run(service.store.db(), &tenant_owned, &stored_run(id, &failed), now)
                    .await
                {
                    tracing::warn!(tenant = tenant_owned, %error, "recording a failed score run failed");
                }
            }
        });
        Ok(())
    }

    /// The run itself: reads every owner's window values, computes the population's cut-offs
    /// and exact scores, stores the cut-offs (events from then on score against them) and
    /// rescores every owner batch by batch from its current aggregates.
    async fn run(
        &self,
        tenant: &str,
        id: Uuid,
        mut progress: pb::ScoreRun,
        as_of: DateTime<Utc>,
    ) -> Result<(), SegmentationError> {
        let created = Utc::now();
        let state = self.store.tenant_state(self.store.db(), tenant).await?;
        let settings = Settings::of(&state)?;
        let as_of_day = scores::day_of(as_of);

        // Pass 1: every owner's window values, streaming (owner, origin) order.
        let mut owners: Vec<Uuid> = Vec::new();
        let mut population: Vec<(String, WindowValues)> = Vec::new();
        let mut population_owner: Vec<Uuid> = Vec::new();
        self.scan_owners(tenant, |owner, total| {
            collect(
                owner,
                &total,
                as_of_day,
                settings.window_days,
                &mut owners,
                &mut population,
                &mut population_owner,
            );
            Ok(())
        })
        .await?;

        let (cutoffs, batch_scores) =
            scores::score_population(as_of_day, settings.window_days, &population, settings.abc);
        let exact: HashMap<Uuid, (WindowValues, CustomerScores)> = population_owner
            .iter()
            .zip(population.iter().zip(batch_scores))
            .map(|(owner, ((_, values), scores))| (*owner, (*values, scores)))
            .collect();
        progress.customers_total = owners.len() as i64;
        progress.population = population.len() as i64;

        let txn = self.store.begin_write().await?;
        self.store.lock_tenant(&txn, tenant).await?;
        self.store
            .save_cutoffs(&txn, tenant, cutoffs.encode(), Utc::now())
            .await?;
        self.store
            .save_run(&txn, tenant, &stored_run(id, &progress), created)
            .await?;
        txn.commit().await?;

        // Pass 2: rescore in batches, each its own transaction under the tenant lock.
        for batch in owners.chunks(RUN_BATCH) {
            let now = Utc::now();
            let txn = self.store.begin_write().await?;
            self.store.lock_tenant(&txn, tenant).await?;
            let revision = self.store.next_score_revision(&txn, tenant).await?;
            let resources = self
                .rescore(&txn, tenant, batch, &exact, Some(as_of), Stamp { revision, now })
                .await?;
            progress.customers_done = progress.customers_done.saturating_add(batch.len() as i64);
            self.store
                .save_run(&txn, tenant, &stored_run(id, &progress), created)
                .await?;
            txn.commit().await?;
            self.outbox.notify_committed();
            self.write_hot(HotWrites {
                set: resources
                    .into_iter()
                    .map(|resource| (tenant.to_owned(), resource, revision))
                    .collect(),
                removed: Vec::new(),
            })
            .await;
        }
        progress.state = pb::score_run::State::Succeeded.into();
        progress.end_time = Some(scoring::timestamp(Utc::now()));
        self.store
            .save_run(self.store.db(), tenant, &stored_run(id, &progress), created)
            .await?;
        Ok(())
    }

    /// Visits every owner of the tenant with its combined aggregates, streaming the origins in
    /// (owner, origin) order a page at a time, so memory holds one page and one owner.
    pub(crate) async fn scan_owners(
        &self,
        tenant: &str,
        mut visit: impl FnMut(Uuid, Aggregates) -> Result<(), SegmentationError>,
    ) -> Result<(), SegmentationError> {
        let mut after = None;
        let mut current: Option<(Uuid, Aggregates)> = None;
        loop {
            let page = self.store.origin_page(tenant, after, RUN_PAGE).await?;
            let Some(last) = page.last() else { break };
            after = Some((last.owner_id, last.origin_id));
            let full = page.len() as u64 == RUN_PAGE;
            for origin in page {
                let aggregates = Aggregates::decode(&origin.days)?;
                match &mut current {
                    Some((owner, total)) if *owner == origin.owner_id => total.merge_from(&aggregates)?,
                    _ => {
                        if let Some((owner, total)) = current.take() {
                            visit(owner, total)?;
                        }
                        current = Some((origin.owner_id, aggregates));
                    }
                }
            }
            if !full {
                break;
            }
        }
        if let Some((owner, total)) = current.take() {
            visit(owner, total)?;
        }
        Ok(())
    }

    pub async fn get_run(&self, tenant: &str, id: Uuid) -> Result<pb::ScoreRun, SegmentationError> {
        let run = self
            .store
            .run(self.store.db(), tenant, id)
            .await?
            .ok_or_else(|| SegmentationError::not_found(format!("scoreRuns/{id}")))?;
        pb::ScoreRun::decode(run.body.as_slice()).map_err(SegmentationError::corrupt)
    }

    /// Marks runs a stopped process left RUNNING as failed, so a new one can start. Called at
    /// start, before this process runs any.
    pub async fn fail_interrupted_runs(&self) -> Result<(), SegmentationError> {
        for (tenant, run) in self
            .store
            .runs_in_state(pb::score_run::State::Running.into())
            .await?
        {
            let mut body = pb::ScoreRun::decode(run.body.as_slice()).map_err(SegmentationError::corrupt)?;
            body.state = pb::score_run::State::Failed.into();
            body.error = "interrupted: the service stopped during the run".into();
            body.end_time = Some(scoring::timestamp(Utc::now()));
            let created = body
                .create_time
                .as_ref()
                .and_then(|time| DateTime::from_timestamp(time.seconds, 0))
                .unwrap_or_else(Utc::now);
            self.store
                .save_run(self.store.db(), &tenant, &stored_run(run.id, &body), created)
                .await?;
        }
        Ok(())
    }

    // ---- reports ----

    pub async fn rfm_distribution(&self, tenant: &str) -> Result<pb::RfmDistribution, SegmentationError> {
        let state = self.store.tenant_state(self.store.db(), tenant).await?;
        let cutoffs = scoring::cutoffs_of(&state)?;
        let cells = self.store.rf_cells(tenant).await?;
        let segments = self.store.count_by(tenant, ScoresColumn::Segment).await?;
        let classes = self.store.count_by(tenant, ScoresColumn::ValueClass).await?;
        let count = |counts: &BTreeMap<i32, i64>, key: i32| counts.get(&key).copied().unwrap_or(0);
        Ok(pb::RfmDistribution {
            population: cells.iter().map(|(_, _, count)| count).sum(),
            cells: cells
                .into_iter()
                .map(|(r_score, f_score, count)| pb::RfmCell {
                    r_score,
                    f_score,
                    count,
                })
                .collect(),
            segments: (1..=10)
                .filter_map(|value| pb::RfmSegment::try_from(value).ok())
                .map(|segment| pb::SegmentCount {
                    segment: segment.into(),
                    count: count(&segments, segment.into()),
                })
                .collect(),
            value_classes: (1..=8)
                .filter_map(|value| pb::ValueClass::try_from(value).ok())
                .map(|class| pb::ValueClassCount {
                    value_class: class.into(),
                    count: count(&classes, class.into()),
                })
                .collect(),
            as_of_time: cutoffs.map(|(cutoffs, _)| scoring::day_start(cutoffs.as_of_day())),
        })
    }

    pub async fn pareto_report(&self, tenant: &str) -> Result<pb::ParetoReport, SegmentationError> {
        let state = self.store.tenant_state(self.store.db(), tenant).await?;
        let settings = Settings::of(&state)?;
        let cutoffs = scoring::cutoffs_of(&state)?;
        let totals = self.store.abc_totals(tenant).await?;
        let population: i64 = totals.iter().map(|(_, count, _)| count).sum();
        let total_revenue: i64 = totals
            .iter()
            .map(|(_, _, revenue)| *revenue)
            .fold(0, i64::saturating_add);
        let top = self
            .store
            .top_monetary_sum(tenant, u64::try_from(population).unwrap_or(0).div_ceil(5))
            .await?;
        let share = |part: i64| {
            if total_revenue > 0 {
                part as f64 / total_revenue as f64
            } else {
                0.0
            }
        };
        Ok(pb::ParetoReport {
            total_revenue: Some(crm_proto::money::from_minor_units(
                &settings.currency,
                total_revenue,
            )),
            top_20_percent_share: share(top),
            classes: [pb::AbcClass::A, pb::AbcClass::B, pb::AbcClass::C]
                .into_iter()
                .map(|class| {
                    let (count, revenue) = totals
                        .iter()
                        .find(|(key, _, _)| *key == i32::from(class))
                        .map_or((0, 0), |(_, count, revenue)| (*count, *revenue));
                    pb::AbcShare {
                        abc_class: class.into(),
                        count,
                        revenue: Some(crm_proto::money::from_minor_units(&settings.currency, revenue)),
                        revenue_share: share(revenue),
                    }
                })
                .collect(),
            population,
            as_of_time: cutoffs.map(|(cutoffs, _)| scoring::day_start(cutoffs.as_of_day())),
        })
    }

    pub async fn lifecycle_report(&self, tenant: &str) -> Result<pb::LifecycleReport, SegmentationError> {
        let stages = self.store.count_by(tenant, ScoresColumn::Stage).await?;
        let ended = self.store.count_by(tenant, ScoresColumn::EndedPattern).await?;
        let count = |counts: &BTreeMap<i32, i64>, key: i32| counts.get(&key).copied().unwrap_or(0);
        Ok(pb::LifecycleReport {
            stages: (1..=5)
                .filter_map(|value| pb::LifecycleStage::try_from(value).ok())
                .map(|stage| pb::StageCount {
                    stage: stage.into(),
                    count: count(&stages, stage.into()),
                })
                .collect(),
            ended: (1..=4)
                .filter_map(|value| pb::EndedPattern::try_from(value).ok())
                .map(|pattern| pb::EndedPatternCount {
                    pattern: pattern.into(),
                    count: count(&ended, pattern.into()),
                })
                .collect(),
        })
    }

    // ---- settings ----

    pub async fn settings(&self, tenant: &str) -> Result<pb::ScoringSettings, SegmentationError> {
        scoring::settings_resource(&self.store.tenant_state(self.store.db(), tenant).await?)
    }

    /// Applies `apply` to the current settings and stores the result if `etag` (when given)
    /// is still current.
    pub async fn update_settings(
        &self,
        tenant: &str,
        etag: &str,
        apply: impl FnOnce(&mut pb::ScoringSettings) -> Result<(), SegmentationError>,
        request: Option<RequestKey>,
    ) -> Result<pb::ScoringSettings, SegmentationError> {
        if let Some(key) = &request
            && let Some(stored) = self.store.replay(tenant, key.method, &key.request_id).await?
        {
            return replayed(stored, key);
        }
        let txn = self.store.begin_write().await?;
        let state = self.store.tenant_state(&txn, tenant).await?;
        let mut settings = scoring::settings_resource(&state)?;
        if !etag.is_empty() && etag != settings.etag {
            txn.rollback().await?;
            return Err(SegmentationError::EtagMismatch {
                resource_name: "scoringSettings".into(),
            });
        }
        apply(&mut settings)?;
        settings.update_time = Some(scoring::timestamp(Utc::now()));
        settings.etag = String::new();
        let stored = settings.encode_to_vec();
        if !self
            .store
            .save_settings(&txn, tenant, stored, state.settings_revision)
            .await?
        {
            txn.rollback().await?;
            return Err(SegmentationError::EtagMismatch {
                resource_name: "scoringSettings".into(),
            });
        }
        settings.etag = format!("\"{}\"", state.settings_revision.saturating_add(1));
        if let Some(key) = &request
            && let Some(stored) = self
                .store
                .claim(&txn, tenant, &key.claim(settings.encode_to_vec(), String::new()))
                .await?
        {
            txn.rollback().await?;
            return replayed(stored, key);
        }
        txn.commit().await?;
        Ok(settings)
    }
}

pub(crate) fn collect(
    owner: Uuid,
    total: &Aggregates,
    as_of_day: i64,
    window_days: i64,
    owners: &mut Vec<Uuid>,
    population: &mut Vec<(String, WindowValues)>,
    population_owner: &mut Vec<Uuid>,
) {
    owners.push(owner);
    if let Some(values) = total.window(as_of_day, window_days) {
        population.push((owner.to_string(), values));
        population_owner.push(owner);
    }
}

fn stored_run(id: Uuid, run: &pb::ScoreRun) -> StoredRun {
    StoredRun {
        id,
        state: run.state,
        body: run.encode_to_vec(),
    }
}

/// The stored answer to a retried request, or INVALID_ARGUMENT when the id was used for
/// another payload.
pub(crate) fn replayed<M: Message + Default>(
    stored: crm_db::idempotency::StoredResponse,
    key: &RequestKey,
) -> Result<M, SegmentationError> {
    if stored.fingerprint != key.fingerprint {
        return Err(SegmentationError::RequestIdReused {
            request_id: key.request_id.clone(),
        });
    }
    M::decode(stored.response.as_slice()).map_err(SegmentationError::corrupt)
}

/// The referrer in encoded profile facts.
fn referrer_of(body: &[u8]) -> Result<Option<Uuid>, SegmentationError> {
    let facts = crate::membership::decode_facts(body)?;
    Ok(facts
        .referrer
        .strip_prefix("customers/")
        .and_then(|id| Uuid::parse_str(id).ok()))
}
