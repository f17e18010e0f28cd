//! Loyalty service: a points ledger of lots, tiers, rewards, campaigns and referrals.
//!
//! Its contract grows with its own issue; this crate already owns the service's database (its
//! schema or file, migrated at start) and registers the gRPC service so health checks and
//! reflection see it. Layers as in every service: `domain` (pure) -> `store` -> `service`
//! -> `grpc`. The pure [`domain`] (lots, ledger operations, tiers, campaigns, rewards, merge
//! and unmerge, checked against a reference model by a proptest state machine) and the
//! [`store`] (accounts locked per operation, ledger entries unique per tenant, stock and
//! campaign budgets decremented atomically) are in place; service and RPCs come next.

pub mod domain;
pub mod grpc;
pub mod store;

pub use grpc::LoyaltyGrpc;
pub use store::Migrator;
