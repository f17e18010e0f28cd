//! The interaction workloads: `IngestPurchases` against `psql \copy` of the same rows, and
//! unary `CreatePurchase` in the closed loop.

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use anyhow::bail;
use crm_proto::google::r#type::Money;
use crm_proto::interaction_v1 as pb;
use pb::interaction_service_client::InteractionServiceClient;
use tonic::transport::Channel;

use crate::driver::{Caller, Step};
use crate::workloads::{Bulk, Tenant, copy_csv, describe_status};

pub type InteractionClient = InteractionServiceClient<Channel>;

/// The fields of purchase `n` of customer `customers[n % len]`: order id, amount in cents,
/// and its time (seconds since the epoch, spread over the last year).
fn purchase_row(n: u64) -> (String, i64, i64) {
    let order = format!("order-{n:09}");
    let cents = 500 + i64::try_from(n % 20_000).unwrap_or(0) * 7;
    let time = 1_760_000_000 + i64::try_from(n % 31_000_000).unwrap_or(0);
    (order, cents, time)
}

fn purchase(n: u64) -> pb::Purchase {
    let (order, cents, time) = purchase_row(n);
    pb::Purchase {
        external_order_id: order,
        occur_time: Some(prost_types::Timestamp {
            seconds: time,
            nanos: 0,
        }),
        amount: Some(Money {
            currency_code: "USD".into(),
            units: cents / 100,
            nanos: i32::try_from(cents % 100).unwrap_or(0) * 10_000_000,
        }),
        channel: pb::Channel::Web.into(),
        ..Default::default()
    }
}

/// Purchase `n` made now: [`purchase`]'s order id, amount and channel without an occurrence
/// time, so interaction records it at its own clock (after a loyalty program's start, which
/// the purchases of the last year of [`purchase`] all predate).
pub fn recent_purchase(n: u64) -> pb::Purchase {
    pb::Purchase {
        occur_time: None,
        ..purchase(n)
    }
}

/// `IngestPurchases` of `rows` purchases spread over `customers`, in messages of `batch`
/// rows, one client stream, timed from the call to its response.
pub async fn ingest(
    channel: Channel,
    tenant: &Tenant,
    customers: &[String],
    rows: u64,
    batch: usize,
) -> anyhow::Result<Bulk> {
    ingest_with(channel, tenant, customers, 0..rows, batch, purchase).await
}

/// [`ingest`] of purchases `numbers` (order ids `order-{n}`, customer `n % len`), each made
/// by `make`.
pub async fn ingest_with(
    channel: Channel,
    tenant: &Tenant,
    customers: &[String],
    numbers: std::ops::Range<u64>,
    batch: usize,
    make: fn(u64) -> pb::Purchase,
) -> anyhow::Result<Bulk> {
    if customers.is_empty() {
        bail!("ingest needs customers");
    }
    let rows = numbers.end.saturating_sub(numbers.start);
    let numbers: Vec<u64> = numbers.collect();
    let messages: Vec<pb::IngestPurchasesRequest> = numbers
        .chunks(batch.max(1))
        .map(|chunk| pb::IngestPurchasesRequest {
            rows: chunk
                .iter()
                .map(|&n| pb::PurchaseRow {
                    parent: customers[usize::try_from(n).unwrap_or(0) % customers.len()].clone(),
                    purchase: Some(make(n)),
                })
                .collect(),
        })
        .collect();
    let mut client = InteractionClient::new(channel)
        .max_decoding_message_size(256 * 1024 * 1024)
        .max_encoding_message_size(256 * 1024 * 1024);
    let request = tenant.request(futures::stream::iter(messages));
    let started = Instant::now();
    let result = client.ingest_purchases(request).await;
    let elapsed = started.elapsed();
    match result {
        Ok(response) => {
            let response = response.into_inner();
            let created = u64::try_from(response.created_count).unwrap_or(0);
            let failed = rows.saturating_sub(created);
            let first_error = response
                .results
                .iter()
                .find(|result| result.outcome != i32::from(pb::ingest_row_result::Outcome::Created))
                .map(|result| {
                    format!(
                        "IngestPurchases row {}: {:?} {}",
                        result.row,
                        result.outcome(),
                        result.error
                    )
                });
            Ok(Bulk {
                rows: created,
                failed,
                elapsed,
                first_error,
                timeline: Vec::new(),
            })
        }
        Err(status) => Ok(Bulk {
            rows: 0,
            failed: rows,
            elapsed,
            timeline: Vec::new(),
            first_error: Some(describe_status(
                "IngestPurchases",
                &format!("({rows} rows in batches of {batch})"),
                &status,
            )),
        }),
    }
}

/// The ingest's baseline: `psql \copy` of the same rows (customer, order id, time, currency,
/// amount in minor units, channel) as CSV into a plain table of `database_url`.
pub async fn copy(
    database_url: &str,
    customers: &[String],
    rows: u64,
    csv_dir: &Path,
) -> anyhow::Result<Bulk> {
    let mut csv = String::with_capacity(usize::try_from(rows).unwrap_or(0) * 96);
    for n in 0..rows {
        let (order, cents, time) = purchase_row(n);
        let customer = &customers[usize::try_from(n).unwrap_or(0) % customers.len().max(1)];
        csv.push_str(&format!("{customer},{order},{time},USD,{cents},CHANNEL_WEB\n"));
    }
    copy_csv(
        database_url,
        "bench_copy_purchases",
        "customer text, external_order_id text, occur_time bigint, currency text, amount_minor bigint, channel text",
        &csv,
        rows,
        csv_dir,
    )
    .await
}

/// Unary `CreatePurchase`, each call a new order (ids from a per-caller range) of one of the
/// customers.
pub struct CreatePurchaseCaller {
    client: InteractionClient,
    tenant: Tenant,
    customers: Arc<Vec<String>>,
    first_order: u64,
}

impl CreatePurchaseCaller {
    /// Caller `index`: orders from `base + index * 10^9` on, so callers never collide.
    pub fn new(
        channel: Channel,
        tenant: Tenant,
        customers: Arc<Vec<String>>,
        base: u64,
        index: usize,
    ) -> Self {
        CreatePurchaseCaller {
            client: InteractionClient::new(channel),
            tenant,
            customers,
            first_order: base + u64::try_from(index).unwrap_or(0) * 1_000_000_000,
        }
    }
}

impl Caller for CreatePurchaseCaller {
    async fn call(&mut self, seq: u64) -> Step {
        let n = self.first_order + seq;
        let parent = self.customers[usize::try_from(n).unwrap_or(0) % self.customers.len().max(1)].clone();
        let request = self.tenant.request(pb::CreatePurchaseRequest {
            parent: parent.clone(),
            purchase: Some(purchase(n)),
            request_id: String::new(),
        });
        match self.client.create_purchase(request).await {
            Ok(response) if response.get_ref().name.starts_with(&parent) => Step::Ok,
            Ok(response) => Step::Failed(format!(
                "CreatePurchase: named {} outside {parent}",
                response.get_ref().name
            )),
            Err(status) => Step::Failed(describe_status("CreatePurchase", &format!("order {n}"), &status)),
        }
    }
}
