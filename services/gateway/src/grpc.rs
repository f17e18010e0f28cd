//! The customer-360 service. The proto declares no methods yet, so there is nothing to answer
//! UNIMPLEMENTED.

use crm_proto::gateway_v1::customer360_service_server::{Customer360Service, Customer360ServiceServer};

pub struct Customer360Grpc;

impl Customer360Grpc {
    pub fn server() -> Customer360ServiceServer<Self> {
        Customer360ServiceServer::new(Self)
    }
}

impl Customer360Service for Customer360Grpc {}
