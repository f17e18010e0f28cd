//! Segmentation service: each customer's value and stage (RFM, value classes, ABC, lifecycle),
//! kept current from the interaction and customer-profile event logs.
//!
//! Layers, each depending only on the ones before it:
//! - [`domain`]: the score definitions and the segment expression language, pure (no IO);
//! - [`store`]: persistence in domain terms (sea-orm underneath) and the migrations;
//! - [`scoring`]: from stored aggregates, settings and cut-offs to a customer's scores;
//! - [`valuation`]: from stored aggregates to the value models' summaries, fits and values;
//! - [`service`]: one method per use case: apply events, score runs, reads and reports;
//! - [`follower`]: follows the internal feeds of interaction and customer-profile;
//! - [`grpc`]: proto <-> use cases and the tonic service.

pub mod domain;
pub mod error;
pub mod follower;
pub mod grpc;
pub mod membership;
pub mod scoring;
pub mod service;
pub mod store;
pub mod valuation;

pub use follower::Feeds;
pub use grpc::SegmentationGrpc;
pub use store::migrations::Migrator;
