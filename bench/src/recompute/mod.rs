//! `crm-recompute`: a full recompute of a tenant's scores (RFM scores, segments, value classes,
//! ABC) for a synthetic population, timed and with its peak RSS, against Polars doing RFM + ABC
//! on the same CSV in the same run.
//!
//! - [`data`]: the deterministic data set and its CSV;
//! - [`inmem`]: our side without a store (CSV -> aggregates -> `score_population`);
//! - [`service`]: our side with the store (seeding, then segmentation's score run);
//! - [`summary`]: what each side reports and the check that both agree.

pub mod data;
pub mod inmem;
pub mod service;
pub mod summary;
