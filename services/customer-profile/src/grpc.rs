//! The tonic service: unpacks requests, calls the use cases, maps errors.

use std::sync::Arc;
use std::time::Duration;

use crm_cache::Cache;
use crm_db::idempotency::fingerprint;
use crm_proto::customerprofile_v1 as pb;
use crm_proto::customerprofile_v1::customer_profile_service_server::{
    CustomerProfileService, CustomerProfileServiceServer,
};
use crm_runtime::TenantId;
use prost::Message;
use sea_orm::DatabaseConnection;
use tonic::{Request, Response, Status};

use crate::convert::{customer_to_proto, kind_from_proto};
use crate::domain::{parse_customer_name, validate_request_id};
use crate::error::ProfileError;
use crate::service::{CustomerProfile, NewCustomer, RequestIdentity};
use crate::store::SeaOrmCustomerStore;

pub struct CustomerProfileGrpc {
    service: CustomerProfile<SeaOrmCustomerStore>,
}

impl CustomerProfileGrpc {
    /// The service over its own database and the shared cache.
    pub fn server(
        db: DatabaseConnection,
        cache: Arc<dyn Cache>,
        cache_ttl: Duration,
    ) -> CustomerProfileServiceServer<Self> {
        let service = CustomerProfile::new(SeaOrmCustomerStore::new(db), cache, cache_ttl);
        CustomerProfileServiceServer::new(Self { service })
    }
}

fn record_customer(id: &uuid::Uuid) {
    tracing::Span::current().record("customer", tracing::field::display(id));
}

#[tonic::async_trait]
impl CustomerProfileService for CustomerProfileGrpc {
    async fn create_customer(
        &self,
        request: Request<pb::CreateCustomerRequest>,
    ) -> Result<Response<pb::Customer>, Status> {
        let tenant = TenantId::of(&request)?;
        let message = request.into_inner();
        let customer = message
            .customer
            .as_ref()
            .ok_or_else(|| ProfileError::invalid("customer", "is required"))?;
        let new_customer = NewCustomer {
            kind: kind_from_proto(customer.kind, "customer.kind")?,
            display_name: customer.display_name.clone(),
        };
        let identity = if message.request_id.is_empty() {
            None
        } else {
            validate_request_id(&message.request_id)?;
            let payload = pb::CreateCustomerRequest {
                request_id: String::new(),
                ..message.clone()
            };
            Some(RequestIdentity {
                request_id: message.request_id.clone(),
                fingerprint: fingerprint(&payload.encode_to_vec()),
            })
        };
        let created = self
            .service
            .create_customer(&tenant, new_customer, identity)
            .await?;
        record_customer(&created.id);
        Ok(Response::new(customer_to_proto(&created)))
    }

    async fn get_customer(
        &self,
        request: Request<pb::GetCustomerRequest>,
    ) -> Result<Response<pb::Customer>, Status> {
        let tenant = TenantId::of(&request)?;
        let id = parse_customer_name(&request.get_ref().name, "name")?;
        record_customer(&id);
        let customer = self.service.get_customer(&tenant, id).await?;
        Ok(Response::new(customer_to_proto(&customer)))
    }
}
