//! The tonic service. The proto declares no methods yet, so there is nothing to answer
//! UNIMPLEMENTED.

use crm_proto::interaction_v1::interaction_service_server::{InteractionService, InteractionServiceServer};

pub struct InteractionGrpc;

impl InteractionGrpc {
    pub fn server() -> InteractionServiceServer<Self> {
        InteractionServiceServer::new(Self)
    }
}

impl InteractionService for InteractionGrpc {}
