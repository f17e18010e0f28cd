//! Loyalty service: a points ledger of lots, tiers, rewards, campaigns and referrals.
//!
//! Layers as in every service: `domain` (pure) -> `store` -> `service` -> `grpc`. The pure
//! [`domain`] (lots, ledger operations, tiers, campaigns, rewards, merge and unmerge, checked
//! against a reference model by a proptest state machine), the [`store`] (accounts locked per
//! operation, ledger entries unique per tenant, stock and campaign budgets decremented
//! atomically, batches of members loaded and saved together), the [`service`] (one
//! transaction per request or per batch of feed events, retried on concurrent change, events
//! to the outbox in the same transaction, balance and tier to the hot-score hash after
//! commit; the jobs), the [`follower`] of interaction's purchases and refunds and
//! customer-profile's merges, unmerges and erasures, and the [`grpc`] service.

pub mod convert;
pub mod domain;
pub mod error;
pub mod follower;
pub mod grpc;
pub mod service;
pub mod store;

pub use follower::Feeds;
pub use grpc::LoyaltyGrpc;
pub use store::Migrator;
