//! End-to-end scenarios against the real `crm` binary over real sockets, in the one-process
//! and the split topology, on the embedded default and on PostgreSQL + Redis.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod interaction;
mod lifecycle;
mod loyalty;
mod loyalty_earning;
mod profile;
mod segmentation;
mod segments;
mod slice;
mod value_models;

use std::path::Path;

/// The binary cargo built for this test target.
pub fn crm() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_crm"))
}
