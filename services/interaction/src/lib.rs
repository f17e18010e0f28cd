//! Interaction service: every touchpoint of a customer (contacts, purchases and refunds, feedback, callbacks) and the event log others consume.
//!
//! Its contract grows with its own issue; this crate already owns the service's database (its
//! schema or file, migrated at start) and registers the gRPC service so health checks and
//! reflection see it. Layers as in every service: `domain` (pure) -> `store` -> `service`
//! -> `grpc`; the first two modules arrive with the first use case.

pub mod grpc;
pub mod store;

pub use grpc::InteractionGrpc;
pub use store::Migrator;
