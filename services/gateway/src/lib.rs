//! Gateway: the public entry of the suite.
//!
//! It serves the customer 360 (`crm.gateway.v1.Customer360Service`) and, for every service
//! this process does not run, forwards gRPC calls by service name to the peer that does
//! ([`proxy`]). Authentication, REST transcoding and rate limits arrive with the gateway issue.

pub mod grpc;
pub mod proxy;

pub use grpc::Customer360Grpc;
