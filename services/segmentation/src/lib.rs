//! Segmentation service: each customer's value and stage (RFM, value classes, ABC, grades, lifecycle, CLV) and dynamic segments.
//!
//! Its contract grows with its own issue; this crate already owns the service's database (its
//! schema or file, migrated at start) and registers the gRPC service so health checks and
//! reflection see it. Layers as in every service: `domain` (pure) -> `store` -> `service`
//! -> `grpc`; the first two modules arrive with the first use case.

pub mod grpc;
pub mod store;

pub use grpc::SegmentationGrpc;
pub use store::Migrator;
