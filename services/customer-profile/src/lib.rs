//! Customer-profile service: knows each customer of a tenant.
//!
//! Layers, each depending only on the ones before it:
//! - [`domain`]: the customer and its rules, pure (no IO);
//! - [`store`]: persistence behind a trait in domain terms, sea-orm underneath, and the
//!   service's migrations;
//! - [`service`]: one method per use case: validate, apply the domain, write through the store
//!   (idempotently), keep the cache right;
//! - [`grpc`]: proto <-> domain conversions and the tonic service.

pub mod convert;
pub mod domain;
pub mod error;
pub mod grpc;
pub mod query;
pub mod service;
pub mod store;

pub use grpc::CustomerProfileGrpc;
pub use store::migrations::Migrator;
