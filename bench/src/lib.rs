//! Benchmarks of the suite, each figure reported as a ratio to a baseline measured in the same
//! run (DESIGN.md section 10): the `crm-load` load generator (this library holds its parts) and
//! the criterion micro-benchmarks in `benches/`.
//!
//! - [`driver`]: the closed-loop driver and its latency histograms;
//! - [`echo`]: the bare tonic baseline, a `grpc.health.v1` server in-process;
//! - [`suite`]: a fresh PostgreSQL database and a `crm serve` process per run;
//! - [`workloads`]: setup and callers of each customer-profile workload;
//! - [`batch_get`]: BatchGetCustomers against GetCustomer, in names per second;
//! - [`purchases`]: the interaction workloads (ingest against `\copy`, unary purchases);
//! - [`hot_scores`]: how soon a purchase shows in the hot-score hash under load;
//! - [`loyalty`]: loyalty's catch-up on purchases and redemptions under contention, on a split
//!   suite of its own;
//! - [`report`]: the table;
//! - [`recompute`]: the parts of `crm-recompute` (a full score recompute against Polars).

pub mod batch_get;
pub mod clv;
pub mod driver;
pub mod echo;
pub mod hot_scores;
pub mod loyalty;
pub mod purchases;
pub mod recompute;
pub mod report;
pub mod suite;
pub mod workloads;
