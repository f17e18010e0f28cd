//! How long a purchase takes to show in its customer's hot-score hash (DESIGN section 6) while
//! other purchases arrive at a steady rate: a probe buys for a customer of its own, then reads
//! the hash in Redis until the purchase count there has grown.
//!
//! The baseline is the same probe with no other load, measured in the same run.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use crm_proto::interaction_v1 as pb;
use crm_proto::segmentation_v1::CustomerScores;
use hdrhistogram::Histogram;
use pb::interaction_service_client::InteractionServiceClient;
use prost::Message as _;
use tonic::transport::Channel;

use crate::driver::new_histogram;
use crate::workloads::Tenant;

/// A probe waits at most this long for its purchase to show; longer counts as missed.
const PROBE_LIMIT: Duration = Duration::from_secs(10);
/// How often a probe reads the hash.
const POLL: Duration = Duration::from_millis(2);

/// What a run of probes saw.
pub struct Probed {
    /// Microseconds from the purchase's acknowledgement to the hash showing it.
    pub latency: Histogram<u64>,
    pub missed: u64,
    /// Background purchases acknowledged per second while probing (0 for the baseline).
    pub background_rate: f64,
    pub background_errors: u64,
    pub elapsed: Duration,
}

fn purchase(order: String) -> pb::Purchase {
    pb::Purchase {
        external_order_id: order,
        amount: Some(crm_proto::money::from_minor_units("USD", 1_999)),
        channel: pb::Channel::MobileApp.into(),
        ..Default::default()
    }
}

/// The purchase count the hash shows for `customer` (`customers/{id}`), if any.
async fn hot_count(
    redis: &mut redis::aio::MultiplexedConnection,
    tenant: &Tenant,
    customer: &str,
) -> Option<i64> {
    let id = customer.strip_prefix("customers/")?;
    let key = format!("crm:score:{{{}/{id}}}", tenant.id);
    let bytes: Option<Vec<u8>> = redis::cmd("HGET")
        .arg(&key)
        .arg("segmentation")
        .query_async(redis)
        .await
        .ok()?;
    let scores = CustomerScores::decode(bytes?.as_slice()).ok()?;
    Some(scores.lifetime.map_or(0, |lifetime| lifetime.purchase_count))
}

/// Probes for `duration` with `background_per_second` other purchases a second spread over
/// `background` customers (none for the baseline). `probes` are customers no one else buys for.
#[allow(clippy::too_many_arguments)]
pub async fn measure(
    channels: &[Channel],
    tenant: &Tenant,
    redis_url: &str,
    probes: &[String],
    background: Arc<Vec<String>>,
    background_per_second: u64,
    duration: Duration,
    run: &str,
) -> anyhow::Result<Probed> {
    let redis_client = redis::Client::open(redis_url).context("REDIS_URL")?;
    let mut redis = redis_client
        .get_multiplexed_async_connection()
        .await
        .context("connecting to Redis")?;
    let channel = channels.first().context("no channel")?.clone();

    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let acknowledged = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let mut load = None;
    if background_per_second > 0 && !background.is_empty() {
        let channels = channels.to_vec();
        let tenant = tenant.clone();
        let stop = Arc::clone(&stop);
        let acknowledged = Arc::clone(&acknowledged);
        let failed = Arc::clone(&failed);
        let run = run.to_owned();
        load = Some(tokio::spawn(async move {
            // Open loop: every 10 ms the purchases due, whether or not earlier ones returned.
            let per_tick = background_per_second.div_ceil(100).max(1);
            let mut ticker = tokio::time::interval(Duration::from_millis(10));
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            let mut n: u64 = 0;
            while !stop.load(Ordering::Relaxed) {
                ticker.tick().await;
                for _ in 0..per_tick {
                    n += 1;
                    let customer = background[usize::try_from(n).unwrap_or(0) % background.len()].clone();
                    let mut client = InteractionServiceClient::new(
                        channels[usize::try_from(n).unwrap_or(0) % channels.len()].clone(),
                    );
                    let request = tenant.request(pb::CreatePurchaseRequest {
                        parent: customer,
                        purchase: Some(purchase(format!("{run}-bg-{n}"))),
                        request_id: String::new(),
                    });
                    let acknowledged = Arc::clone(&acknowledged);
                    let failed = Arc::clone(&failed);
                    tokio::spawn(async move {
                        match client.create_purchase(request).await {
                            Ok(_) => acknowledged.fetch_add(1, Ordering::Relaxed),
                            Err(_) => failed.fetch_add(1, Ordering::Relaxed),
                        };
                    });
                }
            }
        }));
        // Let the load settle before probing.
        tokio::time::sleep(Duration::from_secs(2)).await;
    }

    let mut client = InteractionServiceClient::new(channel);
    let mut latency = new_histogram()?;
    let mut missed = 0;
    let mut counts = vec![None::<i64>; probes.len()];
    let started = Instant::now();
    let acknowledged_at_start = acknowledged.load(Ordering::Relaxed);
    let mut probe: u64 = 0;
    while started.elapsed() < duration {
        let index = usize::try_from(probe).unwrap_or(0) % probes.len().max(1);
        let customer = &probes[index];
        let before = match counts[index] {
            Some(count) => count,
            None => hot_count(&mut redis, tenant, customer).await.unwrap_or(0),
        };
        client
            .create_purchase(tenant.request(pb::CreatePurchaseRequest {
                parent: customer.clone(),
                purchase: Some(purchase(format!("{run}-probe-{probe}"))),
                request_id: String::new(),
            }))
            .await
            .context("a probe purchase failed")?;
        let acked = Instant::now();
        loop {
            if hot_count(&mut redis, tenant, customer)
                .await
                .is_some_and(|count| count > before)
            {
                latency.record(u64::try_from(acked.elapsed().as_micros()).unwrap_or(u64::MAX))?;
                counts[index] = Some(before + 1);
                break;
            }
            if acked.elapsed() > PROBE_LIMIT {
                missed += 1;
                counts[index] = None;
                break;
            }
            tokio::time::sleep(POLL).await;
        }
        probe += 1;
    }
    let elapsed = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    if let Some(load) = load {
        let _ = load.await;
    }
    let background_done = acknowledged
        .load(Ordering::Relaxed)
        .saturating_sub(acknowledged_at_start);
    Ok(Probed {
        latency,
        missed,
        background_rate: background_done as f64 / elapsed.as_secs_f64().max(f64::EPSILON),
        background_errors: failed.load(Ordering::Relaxed),
        elapsed,
    })
}
