//! The tonic service. The proto declares no methods yet, so there is nothing to answer
//! UNIMPLEMENTED.

use crm_proto::loyalty_v1::loyalty_service_server::{LoyaltyService, LoyaltyServiceServer};

pub struct LoyaltyGrpc;

impl LoyaltyGrpc {
    pub fn server() -> LoyaltyServiceServer<Self> {
        LoyaltyServiceServer::new(Self)
    }
}

impl LoyaltyService for LoyaltyGrpc {}
