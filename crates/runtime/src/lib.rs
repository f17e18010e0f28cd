//! The runtime every `crm` process shares: configuration, tenant metadata, the RPC layer
//! (spans, trace context, deadlines), channels to peers and local services, and the server
//! with health, reflection and graceful shutdown.

pub mod channel;
pub mod config;
pub mod context;
pub mod internal;
pub mod rpc_layer;
pub mod server;
pub mod tenant;

pub use config::{Config, ConfigError, ServiceKind};
pub use tenant::{TenantId, require_tenant};
