//! `crm-clv`: the customer-value models of segmentation (`crm_segmentation::domain::clv`:
//! BG/NBD, Gamma-Gamma, potential value) timed with their peak RSS, against the Python
//! `lifetimes` library 0.11.3 on the same data in the same run.
//!
//! - [`data`]: the synthetic customers (drawn from the BG/NBD and Gamma-Gamma generative
//!   processes with CDNOW-like parameters) and the summary CSV both sides read;
//! - [`ours`]: our side of each measurement (fits, scores, checksums).

pub mod data;
pub mod ours;
