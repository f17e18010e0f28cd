//! Our side with the store: segmentation's score run (`Segmentation::start_run`) over a tenant
//! whose origin aggregates were seeded from the CSV, on SQLite or PostgreSQL.
//!
//! Seeding writes one origin per customer (owner = origin), the aggregates folded from the CSV,
//! with `Store::save_origins` in transactions of 10,000 rows; it is timed but is not part of the
//! score run. The score run is timed from `start_run` until `get_run` reports SUCCEEDED. The
//! profile afterwards repeats the run's steps with the same public store calls, timing each,
//! to show where the run's time goes.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use chrono::{DateTime, Utc};
use crm_cache::{Cache, LocalCache, RedisCache, customer_key};
use crm_db::DbSettings;
use crm_db::sea_orm::{ConnectionTrait, DatabaseConnection, DbBackend};
use crm_db::sea_orm_migration::MigratorTrait;
use crm_proto::segmentation_v1 as pb;
use crm_segmentation::domain::scores::{
    self, AbcClass, Aggregates, CustomerScores, RfmSegment, ValueClass, WindowValues, score_population,
};
use crm_segmentation::scoring::{self, Settings};
use crm_segmentation::service::Segmentation;
use crm_segmentation::store::{Store, StoredOrigin};
use prost::Message;
use uuid::Uuid;

use super::inmem;
use super::summary::{Scored, checks, peak_rss_kib};

/// The schema (PostgreSQL) or file name (SQLite) segmentation uses.
const SCHEMA: &str = "segmentation";
/// Origins per seeding transaction.
const SEED_TRANSACTION: usize = 10_000;
/// The service's own sizes (service.rs: RUN_PAGE and RUN_BATCH), repeated by the profile.
const RUN_PAGE: u64 = 10_000;
const RUN_BATCH: usize = 1_000;
/// Owners per read when checking the stored scores.
const VERIFY_CHUNK: usize = 10_000;
/// How often the score run's progress is read.
const POLL: Duration = Duration::from_millis(200);
/// The `crm` default for `cache.local_max_entries`.
const LOCAL_CACHE_ENTRIES: u64 = 100_000;

/// Customer `n` of the CSV as a UUID: `00000000-0000-7000-8000-<n as 12 hex digits>`. The
/// text of these UUIDs sorts like the numbers, so ABC ties break the same way everywhere.
pub fn customer_uuid(customer_id: u64) -> Uuid {
    Uuid::from_u128(0x0000_0000_0000_7000_8000_0000_0000_0000 | u128::from(customer_id))
}

pub fn customer_id(uuid: Uuid) -> u64 {
    (uuid.as_u128() & 0xFFFF_FFFF_FFFF) as u64
}

/// Where the store lives.
#[derive(Debug, Clone)]
pub enum Backend {
    /// SQLite files under this directory (`segmentation.db`).
    Sqlite(PathBuf),
    /// A PostgreSQL database (schema `segmentation`).
    Postgres(String),
}

impl Backend {
    fn settings(&self) -> DbSettings {
        let (url, data_dir) = match self {
            Backend::Sqlite(dir) => (None, dir.clone()),
            Backend::Postgres(url) => (Some(url.clone()), std::env::temp_dir()),
        };
        DbSettings {
            url,
            data_dir,
            max_connections: 10,
            connect_timeout: Duration::from_secs(30),
        }
    }
}

async fn open(backend: &Backend) -> anyhow::Result<DatabaseConnection> {
    let db = crm_db::connect(&backend.settings(), SCHEMA).await?;
    crm_segmentation::Migrator::up(&db, None)
        .await
        .context("segmentation migrations")?;
    Ok(db)
}

fn seconds(since: Instant) -> f64 {
    since.elapsed().as_secs_f64()
}

/// Seeds the tenant's origins from the CSV. Metrics: `fold_s` (CSV to aggregates), `write_s`
/// (the transactions), `origins`, `blob_bytes`.
pub async fn seed(
    backend: &Backend,
    csv: &std::path::Path,
    tenant: &str,
) -> anyhow::Result<HashMap<String, f64>> {
    let started = Instant::now();
    let folded = inmem::fold_partitioned(csv, 2)?;
    let fold_s = seconds(started);
    let db = open(backend).await?;
    let store = Store::new(db.clone());
    let mut customers: Vec<(u64, &Aggregates)> = folded.customers().collect();
    customers.sort_unstable_by_key(|(id, _)| *id);
    let started = Instant::now();
    let mut blob_bytes = 0_usize;
    for chunk in customers.chunks(SEED_TRANSACTION) {
        let rows: Vec<StoredOrigin> = chunk
            .iter()
            .map(|(id, aggregates)| {
                let id = customer_uuid(*id);
                let days = aggregates.encode();
                blob_bytes += days.len();
                StoredOrigin {
                    origin_id: id,
                    owner_id: id,
                    days,
                    other_currency_events: 0,
                    feedback: Vec::new(),
                }
            })
            .collect();
        let txn = store.begin_write().await?;
        store.save_origins(&txn, tenant, &rows).await?;
        txn.commit().await?;
    }
    if db.get_database_backend() == DbBackend::Postgres {
        // Fresh statistics, as autovacuum would have gathered on a table that grew over time.
        db.execute_unprepared("ANALYZE").await?;
    }
    let write_s = seconds(started);
    db.close().await?;
    Ok(HashMap::from([
        ("fold_s".to_owned(), fold_s),
        ("write_s".to_owned(), write_s),
        ("origins".to_owned(), customers.len() as f64),
        ("blob_bytes".to_owned(), blob_bytes as f64),
    ]))
}

/// What one score run measured.
#[derive(Debug, Default)]
pub struct RunMeasurement {
    pub metrics: HashMap<String, f64>,
    pub checks: std::collections::BTreeMap<String, i128>,
}

/// Runs the tenant's score run as of the end of `as_of_day` and waits for it. Metrics:
/// `elapsed_s` (start_run until SUCCEEDED seen), `peak_rss_kib` (read right then),
/// `run_server_s` (the run's end_time - create_time), `pass1_seen_s` (until the run showed
/// its population: pass 1, score_population and the cut-offs' commit), `pass2_s`, and with
/// `profile` the timed repeats of its steps (`profile.*`). The checks come from the stored
/// scores.
pub async fn score_run(
    backend: &Backend,
    tenant: &str,
    as_of_day: i64,
    redis_url: Option<&str>,
    profile: bool,
) -> anyhow::Result<RunMeasurement> {
    let db = open(backend).await?;
    let cache: Arc<dyn Cache> = match redis_url {
        Some(url) => Arc::new(RedisCache::connect(url, Duration::from_millis(500))?),
        None => Arc::new(LocalCache::new(LOCAL_CACHE_ENTRIES)),
    };
    let store = Store::new(db.clone());
    let service = Arc::new(Segmentation::new(
        store.clone(),
        Arc::clone(&cache),
        Duration::from_secs(3600),
    ));
    let as_of = DateTime::from_timestamp((as_of_day + 1) * scores::SECONDS_PER_DAY - 1, 0)
        .context("as-of day out of range")?;

    let started = Instant::now();
    let run = service.start_run(tenant, as_of, None).await?;
    let id = run
        .name
        .strip_prefix("scoreRuns/")
        .and_then(|id| Uuid::parse_str(id).ok())
        .with_context(|| format!("unexpected run name {:?}", run.name))?;
    let mut pass1_seen = None;
    let finished = loop {
        tokio::time::sleep(POLL).await;
        let run = service.get_run(tenant, id).await?;
        if pass1_seen.is_none() && run.customers_total > 0 {
            pass1_seen = Some(seconds(started));
        }
        match run.state() {
            pb::score_run::State::Succeeded => break run,
            pb::score_run::State::Failed => bail!("the score run failed: {}", run.error),
            _ => {}
        }
    };
    let elapsed_s = seconds(started);
    let peak = peak_rss_kib()?;
    let server = |time: &Option<prost_types::Timestamp>| {
        time.as_ref()
            .map(|time| time.seconds as f64 + f64::from(time.nanos) / 1e9)
    };
    let run_server_s = match (server(&finished.create_time), server(&finished.end_time)) {
        (Some(start), Some(end)) => end - start,
        _ => 0.0,
    };
    let pass1_seen_s = pass1_seen.unwrap_or(elapsed_s);
    let mut metrics = HashMap::from([
        ("elapsed_s".to_owned(), elapsed_s),
        ("peak_rss_kib".to_owned(), peak as f64),
        ("run_server_s".to_owned(), run_server_s),
        ("pass1_seen_s".to_owned(), pass1_seen_s),
        ("pass2_s".to_owned(), elapsed_s - pass1_seen_s),
        ("customers_total".to_owned(), finished.customers_total as f64),
        ("population".to_owned(), finished.population as f64),
    ]);
    eprintln!(
        "crm-recompute: score run done in {elapsed_s:.1} s ({} customers, population {}), peak RSS {} MiB",
        finished.customers_total,
        finished.population,
        peak / 1024
    );

    if db.get_database_backend() == DbBackend::Postgres {
        // Statistics for what the run wrote, as autovacuum gathers them (this server may run
        // without it): without them the planner cannot tell that 500 customer ids select 500
        // rows, and reads every one of the tenant's scores for each batch of the checks below.
        let autovacuum = db
            .query_one_raw(crm_db::sea_orm::Statement::from_string(
                DbBackend::Postgres,
                "SELECT current_setting('autovacuum') = 'on' AS on",
            ))
            .await?
            .and_then(|row| row.try_get::<bool>("", "on").ok())
            .unwrap_or(false);
        metrics.insert("autovacuum".to_owned(), if autovacuum { 1.0 } else { 0.0 });
        db.execute_unprepared("ANALYZE").await?;
    }
    // Pass 1 again (read only) for the owners and the batch scores, then the check of the
    // stored scores, then pass 2's steps on a sample (they write the same scores again).
    let pass1 = profile_pass1(&store, tenant, as_of).await?;
    let checks = stored_checks(&store, tenant, &pass1.owners).await?;
    if profile {
        metrics.extend(pass1.timings.clone());
        metrics.extend(profile_pass2(&store, cache.as_ref(), tenant, &pass1).await?);
    }
    db.close().await?;
    Ok(RunMeasurement { metrics, checks })
}

/// Pass 1 and score_population (with the map of exact scores the run builds) repeated with
/// the run's store calls, each step timed.
struct Pass1 {
    owners: Vec<Uuid>,
    /// `profile.pass1_read_s`, `profile.pass1_decode_window_s`, `profile.score_population_s`.
    timings: HashMap<String, f64>,
}

fn add(timings: &mut HashMap<String, f64>, key: &str, value: f64) {
    *timings.entry(format!("profile.{key}")).or_insert(0.0) += value;
}

async fn profile_pass1(store: &Store, tenant: &str, as_of: DateTime<Utc>) -> anyhow::Result<Pass1> {
    let state = store.tenant_state(store.db(), tenant).await?;
    let settings = Settings::of(&state)?;
    let as_of_day = scores::day_of(as_of);
    let mut timings: HashMap<String, f64> = HashMap::new();

    // Pass 1.
    let mut owners: Vec<Uuid> = Vec::new();
    let mut population: Vec<(String, WindowValues)> = Vec::new();
    let mut population_owner: Vec<Uuid> = Vec::new();
    let mut after = None;
    let mut current: Option<(Uuid, Aggregates)> = None;
    let mut finish = |owner: Uuid, total: &Aggregates| {
        owners.push(owner);
        if let Some(values) = total.window(as_of_day, settings.window_days) {
            population.push((owner.to_string(), values));
            population_owner.push(owner);
        }
    };
    loop {
        let started = Instant::now();
        let page = store.origin_page(tenant, after, RUN_PAGE).await?;
        add(&mut timings, "pass1_read_s", seconds(started));
        let Some(last) = page.last() else { break };
        after = Some((last.owner_id, last.origin_id));
        let full = page.len() as u64 == RUN_PAGE;
        let started = Instant::now();
        for origin in page {
            let aggregates = Aggregates::decode(&origin.days)?;
            match &mut current {
                Some((owner, total)) if *owner == origin.owner_id => total.merge_from(&aggregates)?,
                _ => {
                    if let Some((owner, total)) = current.take() {
                        finish(owner, &total);
                    }
                    current = Some((origin.owner_id, aggregates));
                }
            }
        }
        add(&mut timings, "pass1_decode_window_s", seconds(started));
        if !full {
            break;
        }
    }
    if let Some((owner, total)) = current.take() {
        finish(owner, &total);
    }
    let started = Instant::now();
    let (_, batch_scores) = score_population(as_of_day, settings.window_days, &population, settings.abc);
    let exact: HashMap<Uuid, (WindowValues, CustomerScores)> = population_owner
        .iter()
        .zip(population.iter().zip(batch_scores))
        .map(|(owner, ((_, values), scores))| (*owner, (*values, scores)))
        .collect();
    add(&mut timings, "score_population_s", seconds(started));
    std::hint::black_box(exact.len());
    Ok(Pass1 { owners, timings })
}

/// Pass 2's store calls on a sample of batches spread over the owners, each timed and scaled
/// to all the batches (`profile.pass2_*`): the transaction with the tenant lock and the next
/// revision, reading the batch's origins and previous scores, writing its scores (the rows just
/// read, written back as they are), the commit, and the hot-score writes. What the run does
/// besides (scoring and encoding each customer, and whatever else `Segmentation::rescore`
/// does, which this repeat does not copy) is the rest of the observed pass 2.
async fn profile_pass2(
    store: &Store,
    cache: &dyn Cache,
    tenant: &str,
    pass1: &Pass1,
) -> anyhow::Result<HashMap<String, f64>> {
    let mut timings: HashMap<String, f64> = HashMap::new();
    let batches: Vec<&[Uuid]> = pass1.owners.chunks(RUN_BATCH).collect();
    let sample = 20.min(batches.len());
    let step = batches.len().checked_div(sample).unwrap_or(1).max(1);
    let mut sampled = 0_usize;
    for batch in batches.iter().step_by(step).take(sample) {
        sampled += 1;
        let started = Instant::now();
        let txn = store.begin_write().await?;
        store.lock_tenant(&txn, tenant).await?;
        let revision = store.next_score_revision(&txn, tenant).await?;
        let state = store.tenant_state(&txn, tenant).await?;
        let _ = scoring::cutoffs_of(&state)?;
        add(&mut timings, "pass2_begin_s", seconds(started));
        let started = Instant::now();
        let origins = store.origins_of_many(&txn, tenant, batch).await?;
        add(&mut timings, "pass2_read_origins_s", seconds(started));
        let started = Instant::now();
        let previous = store.scores_many(&txn, tenant, batch).await?;
        add(&mut timings, "pass2_read_scores_s", seconds(started));
        let started = Instant::now();
        let mut combined = 0_usize;
        for owner in batch.iter() {
            let (aggregates, _) = scoring::combine(origins.get(owner).map_or(&[], Vec::as_slice))?;
            combined += aggregates.days().len();
        }
        add(&mut timings, "pass2_combine_s", seconds(started));
        let rows: Vec<_> = batch
            .iter()
            .filter_map(|owner| previous.get(owner).cloned())
            .collect();
        let started = Instant::now();
        store.save_scores(&txn, tenant, &rows).await?;
        add(&mut timings, "pass2_write_s", seconds(started));
        let started = Instant::now();
        txn.commit().await?;
        add(&mut timings, "pass2_commit_s", seconds(started));
        let started = Instant::now();
        for row in &rows {
            let resource = pb::CustomerScores::decode(row.body.as_slice()).context("stored scores body")?;
            cache
                .hash_update_if_newer(
                    &customer_key("score", tenant, &row.customer_id.to_string()),
                    scoring::HOT_REVISION_FIELD,
                    revision,
                    &scoring::hot_fields(&resource),
                    &[],
                    Duration::from_secs(3600),
                )
                .await;
        }
        add(&mut timings, "pass2_hot_s", seconds(started));
        std::hint::black_box(combined);
    }
    // Scale the sampled batches to the whole run.
    let scale = batches.len() as f64 / sampled.max(1) as f64;
    for (key, value) in timings.iter_mut() {
        if key.starts_with("profile.pass2_") {
            *value *= scale;
        }
    }
    timings.insert("profile.pass2_sampled_batches".into(), sampled as f64);
    Ok(timings)
}

/// The checks of the scores the run stored, read back by owner.
async fn stored_checks(
    store: &Store,
    tenant: &str,
    owners: &[Uuid],
) -> anyhow::Result<std::collections::BTreeMap<String, i128>> {
    let segments: HashMap<i32, RfmSegment> = RfmSegment::ALL
        .into_iter()
        .map(|segment| (i32::from(scoring::segment_to_proto(segment)), segment))
        .collect();
    let classes: HashMap<i32, ValueClass> = ValueClass::ALL
        .into_iter()
        .map(|class| (i32::from(scoring::value_class_to_proto(class)), class))
        .collect();
    let abc: HashMap<i32, AbcClass> = AbcClass::ALL
        .into_iter()
        .map(|class| (i32::from(scoring::abc_to_proto(class)), class))
        .collect();
    let mut population = Vec::new();
    for chunk in owners.chunks(VERIFY_CHUNK) {
        let rows = store.scores_many(store.db(), tenant, chunk).await?;
        for owner in chunk {
            let row = rows
                .get(owner)
                .with_context(|| format!("no stored scores for customer {owner}"))?;
            if row.r_score == 0 {
                continue;
            }
            let body = pb::CustomerScores::decode(row.body.as_slice()).context("stored scores body")?;
            let m = body.rfm.as_ref().map_or(0, |rfm| rfm.m_score);
            let score = |value: i32| u8::try_from(value).unwrap_or(0);
            let scores = CustomerScores {
                r: score(row.r_score),
                f: score(row.f_score),
                m: score(m),
                segment: *segments
                    .get(&row.segment)
                    .with_context(|| format!("{owner}: segment {}", row.segment))?,
                value_class: *classes
                    .get(&row.value_class)
                    .with_context(|| format!("{owner}: value class {}", row.value_class))?,
                abc: *abc
                    .get(&row.abc_class)
                    .with_context(|| format!("{owner}: ABC class {}", row.abc_class))?,
            };
            population.push(Scored::new(customer_id(*owner), row.monetary_minor, &scores));
        }
    }
    Ok(checks(population))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn customer_uuids_sort_like_their_numbers() {
        let ids = [0_u64, 9, 10, 15, 16, 255, 1_000_000, 0xFFFF_FFFF_FFFF];
        let texts: Vec<String> = ids.iter().map(|id| customer_uuid(*id).to_string()).collect();
        let mut sorted = texts.clone();
        sorted.sort();
        assert_eq!(texts, sorted);
        assert_eq!(
            texts.first().map(String::as_str),
            Some("00000000-0000-7000-8000-000000000000")
        );
        for id in ids {
            assert_eq!(customer_id(customer_uuid(id)), id);
        }
    }
}
