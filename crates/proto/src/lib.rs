//! Generated protobuf messages, tonic clients and servers for every CRM API, plus the
//! descriptor set (with imports) used by server reflection and REST transcoding.

// Generated code is not ours to lint (an empty service yields a single-arm match, for one).
#![allow(clippy::all)]

/// The encoded `FileDescriptorSet` of every CRM proto and its imports.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/crm_descriptor.bin"));

pub mod crm {
    pub mod customerprofile {
        pub mod v1 {
            tonic::include_proto!("crm.customerprofile.v1");
        }
    }
    pub mod interaction {
        pub mod v1 {
            tonic::include_proto!("crm.interaction.v1");
        }
    }
    pub mod segmentation {
        pub mod v1 {
            tonic::include_proto!("crm.segmentation.v1");
        }
    }
    pub mod loyalty {
        pub mod v1 {
            tonic::include_proto!("crm.loyalty.v1");
        }
    }
    pub mod gateway {
        pub mod v1 {
            tonic::include_proto!("crm.gateway.v1");
        }
    }
    pub mod internal {
        pub mod v1 {
            tonic::include_proto!("crm.internal.v1");
        }
    }
}

pub mod money;

pub mod google {
    pub mod api {
        tonic::include_proto!("google.api");
    }
    pub mod r#type {
        tonic::include_proto!("google.r#type");
    }
}

pub use crm::customerprofile::v1 as customerprofile_v1;
pub use crm::gateway::v1 as gateway_v1;
pub use crm::interaction::v1 as interaction_v1;
pub use crm::internal::v1 as internal_v1;
pub use crm::loyalty::v1 as loyalty_v1;
pub use crm::segmentation::v1 as segmentation_v1;
