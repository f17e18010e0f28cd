//! Setup and callers of each workload. Every request carries `x-tenant-id`.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use crm_proto::customerprofile_v1 as pb;
use futures::StreamExt;
use pb::customer_profile_service_client::CustomerProfileServiceClient;
use tonic::metadata::AsciiMetadataValue;
use tonic::transport::Channel;
use tonic::{Request, Status};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

use crate::driver::{Caller, Step};
use crate::suite::psql;

pub type ProfileClient = CustomerProfileServiceClient<Channel>;

/// The tenant metadata every request carries.
#[derive(Clone)]
pub struct Tenant {
    pub id: String,
    value: AsciiMetadataValue,
}

impl Tenant {
    /// A tenant id unique to this run.
    pub fn unique() -> anyhow::Result<Tenant> {
        let id = format!("bench-{}", uuid::Uuid::now_v7().simple());
        let value = id.parse().context("tenant id as metadata")?;
        Ok(Tenant { id, value })
    }

    pub fn request<T>(&self, message: T) -> Request<T> {
        let mut request = Request::new(message);
        request.metadata_mut().insert("x-tenant-id", self.value.clone());
        request
    }
}

/// `RPC request: status Code (n) "message"`.
pub fn describe_status(rpc: &str, request: &str, status: &Status) -> String {
    format!(
        "{rpc} {request}: status {:?} ({}) {:?}",
        status.code(),
        status.code() as i32,
        status.message()
    )
}

/// The `n`-th benchmark phone: a CN mobile, `138` followed by 8 digits, in national format.
pub fn national_phone(n: u64) -> String {
    format!("138{:08}", n % 100_000_000)
}

/// The same phone in international format, `+86 138 xxxx xxxx`.
pub fn international_phone(n: u64) -> String {
    let digits = n % 100_000_000;
    format!("+86 138 {:04} {:04}", digits / 10_000, digits % 10_000)
}

/// A customer a lookup must find: its phone in national format and its resource name.
#[derive(Debug, Clone)]
pub struct Target {
    pub phone: String,
    pub name: String,
}

/// Sets the tenant's default phone region to CN.
pub async fn configure_tenant(channel: Channel, tenant: &Tenant) -> anyhow::Result<()> {
    let request = pb::UpdateTenantSettingsRequest {
        settings: Some(pb::TenantSettings {
            name: "tenantSettings".into(),
            default_region: "CN".into(),
            ..Default::default()
        }),
        ..Default::default()
    };
    ProfileClient::new(channel)
        .update_tenant_settings(tenant.request(request))
        .await
        .map_err(|status| {
            anyhow::anyhow!(describe_status(
                "UpdateTenantSettings",
                "default_region=CN",
                &status
            ))
        })?;
    Ok(())
}

/// Creates one consumer per number in `numbers` with `CreateCustomer`, `concurrency` calls in
/// flight over the channels round robin; returns them in order.
pub async fn create_customers(
    channels: &[Channel],
    tenant: &Tenant,
    numbers: std::ops::Range<u64>,
    concurrency: usize,
) -> anyhow::Result<Vec<Target>> {
    let calls = numbers.map(|n| {
        let mut client = ProfileClient::new(channels[(n as usize) % channels.len()].clone());
        let phone = international_phone(n);
        let request = tenant.request(pb::CreateCustomerRequest {
            customer: Some(pb::Customer {
                kind: pb::CustomerKind::Consumer as i32,
                display_name: format!("Bench Customer {n}"),
                phones: vec![pb::PhoneNumber {
                    number: phone.clone(),
                    label: "mobile".into(),
                }],
                ..Default::default()
            }),
            request_id: String::new(),
        });
        async move {
            let customer = client
                .create_customer(request)
                .await
                .map_err(|status| {
                    anyhow::anyhow!(describe_status(
                        "CreateCustomer",
                        &format!("phone={phone:?}"),
                        &status
                    ))
                })?
                .into_inner();
            Ok::<_, anyhow::Error>(Target {
                phone: national_phone(n),
                name: customer.name,
            })
        }
    });
    futures::stream::iter(calls)
        .buffered(concurrency.max(1))
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect()
}

/// Imports one consumer per number in `numbers` with a phone and an external id, over
/// `streams` concurrent `ImportCustomers` calls of `batch`-row messages; returns them in order.
pub async fn import_customers_with_phones(
    channels: &[Channel],
    tenant: &Tenant,
    numbers: std::ops::Range<u64>,
    streams: usize,
    batch: usize,
) -> anyhow::Result<Vec<Target>> {
    let numbers: Vec<u64> = numbers.collect();
    let streams = streams.max(1);
    let share = numbers.len().div_ceil(streams).max(1);
    let calls = numbers.chunks(share).enumerate().map(|(index, part)| {
        let mut client = ProfileClient::new(channels[index % channels.len()].clone());
        let messages: Vec<pb::ImportCustomersRequest> = part
            .chunks(batch.max(1))
            .map(|rows| pb::ImportCustomersRequest {
                customers: rows
                    .iter()
                    .map(|&n| pb::Customer {
                        kind: pb::CustomerKind::Consumer as i32,
                        display_name: format!("Cold Customer {n}"),
                        phones: vec![pb::PhoneNumber {
                            number: international_phone(n),
                            label: "mobile".into(),
                        }],
                        external_ids: vec![pb::ExternalId {
                            system: "erp".into(),
                            id: format!("cold-{n}"),
                        }],
                        ..Default::default()
                    })
                    .collect(),
            })
            .collect();
        let request = tenant.request(futures::stream::iter(messages));
        let part = part.to_vec();
        async move {
            let response = client
                .import_customers(request)
                .await
                .map_err(|status| {
                    anyhow::anyhow!(describe_status("ImportCustomers", "(cold customers)", &status))
                })?
                .into_inner();
            if let Some(failed) = response.results.iter().find(|result| result.outcome != "CREATED") {
                bail!(
                    "ImportCustomers (cold customers): row {} {}: {}",
                    failed.row,
                    failed.outcome,
                    failed.error
                );
            }
            if response.results.len() != part.len() {
                bail!(
                    "ImportCustomers (cold customers): {} results for {} rows",
                    response.results.len(),
                    part.len()
                );
            }
            Ok(part
                .iter()
                .zip(response.results)
                .map(|(&n, result)| Target {
                    phone: national_phone(n),
                    name: result.name,
                })
                .collect::<Vec<_>>())
        }
    });
    let parts = futures::future::join_all(calls).await;
    let mut targets = Vec::with_capacity(numbers.len());
    for part in parts {
        targets.extend(part?);
    }
    Ok(targets)
}

/// Looks up `target` by phone and checks the answer is its customer.
async fn lookup(client: &mut ProfileClient, tenant: &Tenant, target: &Target) -> Step {
    let request = tenant.request(pb::LookupCustomerRequest {
        key: Some(pb::lookup_customer_request::Key::Phone(target.phone.clone())),
    });
    match client.lookup_customer(request).await {
        Ok(response) if response.get_ref().name == target.name => Step::Ok,
        Ok(response) => Step::Failed(format!(
            "LookupCustomer phone={:?}: answered {:?} instead of {:?}",
            target.phone,
            response.get_ref().name,
            target.name
        )),
        Err(status) => Step::Failed(describe_status(
            "LookupCustomer",
            &format!("phone={:?}", target.phone),
            &status,
        )),
    }
}

/// Looks each target up once (fills the caches for the warm workload).
pub async fn prime(channels: &[Channel], tenant: &Tenant, targets: &[Target]) -> anyhow::Result<()> {
    for (index, target) in targets.iter().enumerate() {
        let mut client = ProfileClient::new(channels[index % channels.len()].clone());
        if let Step::Failed(error) = lookup(&mut client, tenant, target).await {
            bail!("priming the hot set: {error}");
        }
    }
    Ok(())
}

/// The baseline: `grpc.health.v1.Health/Check` on the bare tonic server.
pub struct EchoCaller {
    client: HealthClient<Channel>,
    tenant: Tenant,
}

impl EchoCaller {
    pub fn new(channel: Channel, tenant: Tenant) -> Self {
        EchoCaller {
            client: HealthClient::new(channel),
            tenant,
        }
    }
}

impl Caller for EchoCaller {
    async fn call(&mut self, _seq: u64) -> Step {
        let request = self.tenant.request(HealthCheckRequest {
            service: String::new(),
        });
        match self.client.check(request).await {
            Ok(response) if response.get_ref().status == ServingStatus::Serving as i32 => Step::Ok,
            Ok(response) => Step::Failed(format!(
                "Health/Check: status {} instead of SERVING",
                response.get_ref().status
            )),
            Err(status) => Step::Failed(describe_status("Health/Check", "service=\"\"", &status)),
        }
    }
}

/// `LookupCustomer` over a hot set, round robin: caller `index` of `stride` takes targets
/// `index`, `index + stride`, ...
pub struct WarmLookupCaller {
    client: ProfileClient,
    tenant: Tenant,
    hot: Arc<Vec<Target>>,
    index: usize,
    stride: usize,
}

impl WarmLookupCaller {
    pub fn new(channel: Channel, tenant: Tenant, hot: Arc<Vec<Target>>, index: usize, stride: usize) -> Self {
        WarmLookupCaller {
            client: ProfileClient::new(channel),
            tenant,
            hot,
            index,
            stride: stride.max(1),
        }
    }
}

impl Caller for WarmLookupCaller {
    async fn call(&mut self, seq: u64) -> Step {
        if self.hot.is_empty() {
            return Step::Exhausted;
        }
        let position = (self.index as u64 + seq * self.stride as u64) % self.hot.len() as u64;
        let target = &self.hot[position as usize];
        lookup(&mut self.client, &self.tenant, target).await
    }
}

/// `LookupCustomer` of customers never looked up before: each target once, shared by all
/// callers; exhausted when the pool runs out.
pub struct ColdLookupCaller {
    client: ProfileClient,
    tenant: Tenant,
    pool: Arc<Vec<Target>>,
    next: Arc<AtomicUsize>,
}

impl ColdLookupCaller {
    pub fn new(channel: Channel, tenant: Tenant, pool: Arc<Vec<Target>>, next: Arc<AtomicUsize>) -> Self {
        ColdLookupCaller {
            client: ProfileClient::new(channel),
            tenant,
            pool,
            next,
        }
    }
}

impl Caller for ColdLookupCaller {
    async fn call(&mut self, _seq: u64) -> Step {
        let position = self.next.fetch_add(1, Ordering::Relaxed);
        let Some(target) = self.pool.get(position) else {
            return Step::Exhausted;
        };
        lookup(&mut self.client, &self.tenant, target).await
    }
}

/// The `n`-th import row: display name, external id `erp:row-<n>`, email.
fn import_row(n: u64) -> (String, String, String) {
    (
        format!("Import Customer {n}"),
        format!("row-{n}"),
        format!("row-{n}@bench.example.com"),
    )
}

/// What one import (or copy) moved.
#[derive(Debug)]
pub struct Bulk {
    pub rows: u64,
    pub failed: u64,
    pub elapsed: Duration,
    pub first_error: Option<String>,
    /// Rows/s of each tenth of the rows, from the server's clock (see [`server_timeline`]).
    pub timeline: Vec<f64>,
}

/// Rows/s of each tenth of an import, read from the server's own clock: a created customer's
/// id is a UUIDv7, whose first 48 bits are its creation time in milliseconds.
pub fn server_timeline(results: &[pb::ImportRowResult]) -> Vec<f64> {
    let times: Vec<f64> = results
        .iter()
        .filter_map(|result| result.name.strip_prefix("customers/"))
        .filter_map(|id| uuid::Uuid::parse_str(id).ok())
        .filter_map(|id| id.get_timestamp())
        .map(|timestamp| {
            let (seconds, nanos) = timestamp.to_unix();
            seconds as f64 + f64::from(nanos) / 1e9
        })
        .collect();
    if times.len() < 20 {
        return Vec::new();
    }
    (0..10)
        .map(|tenth| {
            let start = tenth * times.len() / 10;
            let end = (tenth + 1) * times.len() / 10;
            // Each tenth runs from the previous tenth's last row to its own last row.
            let from = if start == 0 { times[0] } else { times[start - 1] };
            let seconds = times[end - 1] - from;
            let rows = if start == 0 { end - 1 } else { end - start };
            if seconds > 0.0 { rows as f64 / seconds } else { 0.0 }
        })
        .collect()
}

/// `ImportCustomers` of `rows` rows in messages of `batch` rows, one client stream, timed
/// from the call to its response (messages are built before the clock starts).
pub async fn import(channel: Channel, tenant: &Tenant, rows: u64, batch: usize) -> anyhow::Result<Bulk> {
    let numbers: Vec<u64> = (0..rows).collect();
    let messages: Vec<pb::ImportCustomersRequest> = numbers
        .chunks(batch.max(1))
        .map(|chunk| pb::ImportCustomersRequest {
            customers: chunk
                .iter()
                .map(|&n| {
                    let (display_name, id, email) = import_row(n);
                    pb::Customer {
                        kind: pb::CustomerKind::Consumer as i32,
                        display_name,
                        external_ids: vec![pb::ExternalId {
                            system: "erp".into(),
                            id,
                        }],
                        emails: vec![pb::EmailAddress {
                            address: email,
                            label: String::new(),
                        }],
                        ..Default::default()
                    }
                })
                .collect(),
        })
        .collect();
    let mut client = ProfileClient::new(channel)
        .max_decoding_message_size(256 * 1024 * 1024)
        .max_encoding_message_size(256 * 1024 * 1024);
    let request = tenant.request(futures::stream::iter(messages));
    let started = Instant::now();
    let result = client.import_customers(request).await;
    let elapsed = started.elapsed();
    match result {
        Ok(response) => {
            let response = response.into_inner();
            let first_error = response
                .results
                .iter()
                .find(|result| result.outcome == "FAILED")
                .map(|result| format!("ImportCustomers row {}: FAILED {}", result.row, result.error));
            // Rows the response does not account for count as failed too.
            let accounted = response.created_count + response.updated_count + response.failed_count;
            let missing = rows.saturating_sub(u64::try_from(accounted).unwrap_or(0));
            let failed = u64::try_from(response.failed_count).unwrap_or(0) + missing;
            let first_error = first_error.or_else(|| {
                (failed > 0).then(|| {
                    format!(
                        "ImportCustomers: created {}, updated {}, failed {} of {rows} rows",
                        response.created_count, response.updated_count, response.failed_count
                    )
                })
            });
            Ok(Bulk {
                rows: rows.saturating_sub(failed),
                failed,
                elapsed,
                first_error,
                timeline: server_timeline(&response.results),
            })
        }
        Err(status) => Ok(Bulk {
            rows: 0,
            failed: rows,
            elapsed,
            timeline: Vec::new(),
            first_error: Some(describe_status(
                "ImportCustomers",
                &format!("({rows} rows in batches of {batch})"),
                &status,
            )),
        }),
    }
}

/// The import's baseline: `psql \copy` of the same rows as CSV into a plain table (no index,
/// no constraint) of `database_url`, timed around the `psql` command.
pub async fn copy(database_url: &str, rows: u64, csv_dir: &Path) -> anyhow::Result<Bulk> {
    let mut csv = String::with_capacity(rows as usize * 96);
    for n in 0..rows {
        let (display_name, id, email) = import_row(n);
        csv.push_str(&format!(
            "CUSTOMER_KIND_CONSUMER,{display_name},erp,{id},{email}\n"
        ));
    }
    copy_csv(
        database_url,
        "bench_copy",
        "kind text, display_name text, external_system text, external_id text, email text",
        &csv,
        rows,
        csv_dir,
    )
    .await
}

/// `psql \copy` of `csv` (`rows` lines) into a new plain table `table` (`columns`) of
/// `database_url`, timed around the `psql` command; the row count is checked afterwards.
pub async fn copy_csv(
    database_url: &str,
    table: &str,
    columns: &str,
    csv: &str,
    rows: u64,
    csv_dir: &Path,
) -> anyhow::Result<Bulk> {
    let path = csv_dir.join(format!("crm-bench-{table}-{}.csv", uuid::Uuid::now_v7().simple()));
    std::fs::write(&path, csv).with_context(|| format!("write {}", path.display()))?;
    let result = async {
        psql(database_url, &format!("CREATE TABLE {table} ({columns})")).await?;
        let path_text = path.display().to_string().replace('\'', "''");
        let started = Instant::now();
        psql(
            database_url,
            &format!("\\copy {table} FROM '{path_text}' WITH (FORMAT csv)"),
        )
        .await?;
        let elapsed = started.elapsed();
        let count = psql(database_url, &format!("SELECT count(*) FROM {table}")).await?;
        if count.trim() != rows.to_string() {
            bail!("\\copy loaded an unexpected number of rows: {}", count.trim());
        }
        Ok(Bulk {
            rows,
            failed: 0,
            elapsed,
            first_error: None,
            timeline: Vec::new(),
        })
    }
    .await;
    let _ = std::fs::remove_file(&path);
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phones_are_cn_mobiles_in_both_formats() {
        assert_eq!(national_phone(42), "13800000042");
        assert_eq!(international_phone(10_000_042), "+86 138 1000 0042");
        assert_eq!(national_phone(10_000_042), "13810000042");
    }

    #[test]
    fn the_timeline_reads_uuidv7_creation_times() {
        // 100 rows, one every 10 ms for the first half and every 20 ms for the second.
        let mut millis = 1_700_000_000_000_u64;
        let results: Vec<pb::ImportRowResult> = (0..100)
            .map(|row| {
                millis += if row < 50 { 10 } else { 20 };
                let timestamp = uuid::Timestamp::from_unix(
                    uuid::NoContext,
                    millis / 1000,
                    u32::try_from((millis % 1000) * 1_000_000).unwrap(),
                );
                pb::ImportRowResult {
                    row,
                    name: format!("customers/{}", uuid::Uuid::new_v7(timestamp)),
                    outcome: "CREATED".into(),
                    error: String::new(),
                }
            })
            .collect();
        let timeline = server_timeline(&results);
        assert_eq!(timeline.len(), 10);
        assert!((timeline[0] - 100.0).abs() < 1.0, "{timeline:?}");
        assert!((timeline[9] - 50.0).abs() < 1.0, "{timeline:?}");
    }
}
