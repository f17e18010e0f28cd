//! The use cases: validate, apply the domain rules, write through the store (idempotently), and
//! keep the hot cache right.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use crm_cache::{Cache, customer_key};
use crm_db::idempotency::IdempotencyClaim;
use crm_runtime::TenantId;
use uuid::Uuid;

use crate::convert::{decode_snapshot, encode_snapshot};
use crate::domain::{Customer, CustomerKind};
use crate::error::ProfileError;
use crate::store::{CreateOutcome, CustomerStore};

/// The cache entry kind of a customer's profile snapshot.
const CACHE_KIND: &str = "customer";

/// A validated create request.
#[derive(Debug, Clone)]
pub struct NewCustomer {
    pub kind: CustomerKind,
    pub display_name: String,
}

/// Identifies a mutating request for idempotency: its `request_id` and payload fingerprint.
#[derive(Debug, Clone)]
pub struct RequestIdentity {
    pub request_id: String,
    pub fingerprint: String,
}

pub struct CustomerProfile<S> {
    store: S,
    cache: Arc<dyn Cache>,
    cache_ttl: Duration,
}

impl<S: CustomerStore> CustomerProfile<S> {
    pub fn new(store: S, cache: Arc<dyn Cache>, cache_ttl: Duration) -> Self {
        Self {
            store,
            cache,
            cache_ttl,
        }
    }

    /// Creates a customer once per request id: a retry gets the first result back, a different
    /// payload under the same id is refused.
    pub async fn create_customer(
        &self,
        tenant: &TenantId,
        new_customer: NewCustomer,
        request: Option<RequestIdentity>,
    ) -> Result<Customer, ProfileError> {
        let customer = Customer::create(new_customer.kind, &new_customer.display_name, Utc::now())?;
        let claim = request.map(|request| IdempotencyClaim {
            method: "CreateCustomer",
            request_id: request.request_id,
            fingerprint: request.fingerprint,
            response: encode_snapshot(&customer),
        });
        match self
            .store
            .create_customer(tenant, &customer, claim.as_ref())
            .await?
        {
            CreateOutcome::Created => {
                tracing::info!(customer = %customer.id, "customer created");
                Ok(customer)
            }
            CreateOutcome::Replayed(stored) => {
                let Some(claim) = claim else {
                    return Err(ProfileError::Corrupt("a replay without a request id".into()));
                };
                if stored.fingerprint != claim.fingerprint {
                    return Err(ProfileError::RequestIdReused {
                        request_id: claim.request_id,
                    });
                }
                decode_snapshot(&stored.response)
            }
        }
    }

    /// Reads through the hot cache; a miss (or an unreachable cache) falls back to the store and
    /// refills the cache.
    pub async fn get_customer(&self, tenant: &TenantId, id: Uuid) -> Result<Customer, ProfileError> {
        let key = customer_key(CACHE_KIND, tenant.as_str(), &id.to_string());
        if let Some(bytes) = self.cache.get(&key).await {
            match decode_snapshot(&bytes) {
                Ok(customer) => return Ok(customer),
                Err(error) => tracing::warn!(%error, "unreadable cache entry, reading the store"),
            }
        }
        let customer = self
            .store
            .get_customer(tenant, id)
            .await?
            .ok_or_else(|| ProfileError::NotFound {
                resource_name: format!("customers/{id}"),
            })?;
        self.cache
            .set(&key, &encode_snapshot(&customer), self.cache_ttl)
            .await;
        Ok(customer)
    }
}
