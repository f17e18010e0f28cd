//! Which customers exist: asked of customer-profile (its GetCustomer resolves a merged-away
//! customer to the survivor), through a generated client over the in-process or network
//! channel, with a short-lived cache of positive answers.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use crm_proto::customerprofile_v1 as profile;
use crm_proto::customerprofile_v1::customer_profile_service_client::CustomerProfileServiceClient;
use crm_runtime::TenantId;
use crm_runtime::context::OutgoingContext;
use futures::{StreamExt, TryStreamExt};
use tonic::transport::Channel;
use uuid::Uuid;

use crate::domain;
use crate::error::InteractionError;

/// How many customer checks one ingest batch runs at once.
const CHECK_CONCURRENCY: usize = 16;

#[async_trait]
pub trait CustomerDirectory: Send + Sync {
    /// The customer `id` is now (itself, or the survivor it was merged into); `None` when the
    /// tenant has no such customer.
    async fn resolve(&self, tenant: &TenantId, id: Uuid) -> Result<Option<Uuid>, InteractionError>;

    /// [`Self::resolve`] for many, in the order given.
    async fn resolve_many(
        &self,
        tenant: &TenantId,
        ids: &[Uuid],
    ) -> Result<Vec<Option<Uuid>>, InteractionError> {
        futures::stream::iter(ids.iter().copied())
            .map(|id| self.resolve(tenant, id))
            .buffered(CHECK_CONCURRENCY)
            .try_collect()
            .await
    }
}

pub struct ProfileDirectory {
    channel: Channel,
    /// (tenant, asked id) -> resolved id. Positive answers only, briefly: a customer deleted
    /// meanwhile is accepted for up to the TTL, and merges are resolved again in the write's
    /// transaction anyway.
    known: moka::sync::Cache<(TenantId, Uuid), Uuid>,
}

impl ProfileDirectory {
    pub fn new(channel: Channel) -> Arc<Self> {
        Arc::new(Self {
            channel,
            known: moka::sync::Cache::builder()
                .max_capacity(200_000)
                .time_to_live(Duration::from_secs(30))
                .build(),
        })
    }
}

#[async_trait]
impl CustomerDirectory for ProfileDirectory {
    async fn resolve(&self, tenant: &TenantId, id: Uuid) -> Result<Option<Uuid>, InteractionError> {
        let key = (tenant.clone(), id);
        if let Some(resolved) = self.known.get(&key) {
            return Ok(Some(resolved));
        }
        let mut client = CustomerProfileServiceClient::with_interceptor(
            self.channel.clone(),
            OutgoingContext::new(tenant.clone()),
        );
        let answer = client
            .get_customer(profile::GetCustomerRequest {
                name: domain::customer_name(id),
            })
            .await;
        match answer {
            Ok(customer) => {
                let resolved =
                    domain::parse_customer_name(&customer.get_ref().name, "name").map_err(|_| {
                        InteractionError::Corrupt(format!(
                            "customer-profile answered with the name {:?}",
                            customer.get_ref().name
                        ))
                    })?;
                self.known.insert(key, resolved);
                Ok(Some(resolved))
            }
            Err(status) if status.code() == tonic::Code::NotFound => Ok(None),
            Err(status) => Err(InteractionError::Peer {
                service: "customer-profile",
                status,
            }),
        }
    }
}
