//! Loyalty service: a points ledger of lots, tiers, rewards, campaigns and referrals.
//!
//! Layers as in every service: `domain` (pure) -> `store` -> `service` -> `grpc`. The pure
//! [`domain`] (lots, ledger operations, tiers, campaigns, rewards, merge and unmerge, checked
//! against a reference model by a proptest state machine), the [`store`] (accounts locked per
//! operation, ledger entries unique per tenant, stock and campaign budgets decremented
//! atomically), the [`service`] (one transaction per request, retried on concurrent change,
//! balance and tier to the hot-score hash after commit) and the first RPCs (program, accounts,
//! adjustments, the ledger). Earning from purchase events, rewards, campaigns, referrals,
//! quotes, the customer-event follower, the jobs and the event stream come next.

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
