//! The tonic service. The proto declares no methods yet, so there is nothing to answer
//! UNIMPLEMENTED.

use crm_proto::segmentation_v1::segmentation_service_server::{
    SegmentationService, SegmentationServiceServer,
};

pub struct SegmentationGrpc;

impl SegmentationGrpc {
    pub fn server() -> SegmentationServiceServer<Self> {
        SegmentationServiceServer::new(Self)
    }
}

impl SegmentationService for SegmentationGrpc {}
