//! Interaction service: every touchpoint of a customer (contacts, purchases and refunds,
//! feedback, callbacks), the timeline across them, and the event log others consume.
//!
//! Layers, each depending only on the ones before it:
//! - [`domain`]: names, money, times and what a valid record is, pure (no IO);
//! - [`store`]: persistence in domain terms (sea-orm underneath) and the migrations;
//! - [`directory`]: which customers exist, asked of customer-profile;
//! - [`service`]: one method per use case: check, write idempotently with events, read;
//! - [`follower`]: applies customer-profile's merges, unmerges and erasures;
//! - [`grpc`]: proto <-> records and the tonic service.

pub mod convert;
pub mod directory;
pub mod domain;
pub mod error;
pub mod follower;
pub mod grpc;
pub mod service;
pub mod store;

pub use grpc::InteractionGrpc;
pub use store::migrations::Migrator;
