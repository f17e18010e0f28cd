//! The tenant of a call.
//!
//! It arrives as `x-tenant-id` request metadata (until the gateway derives it from the
//! caller's credential), never in a request message. Every CRM service is wrapped in
//! [`require_tenant`], so a handler can rely on [`TenantId::of`].

use crm_error::ApiError;
use tonic::{Request, Status};

/// The metadata key carrying the tenant.
pub const TENANT_METADATA_KEY: &str = "x-tenant-id";

/// A validated tenant id: 1 to 64 characters of ASCII letters, digits, `-`, `_` and `.`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TenantId(String);

impl TenantId {
    pub fn parse(raw: &str) -> Result<Self, ApiError> {
        let valid = !raw.is_empty()
            && raw.len() <= 64
            && raw
                .bytes()
                .all(|byte| byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.'));
        if valid {
            Ok(Self(raw.to_owned()))
        } else {
            Err(ApiError::invalid_field(
                TENANT_METADATA_KEY,
                "must be 1 to 64 ASCII letters, digits, '-', '_' or '.'",
            ))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The tenant [`require_tenant`] put on the request.
    pub fn of<T>(request: &Request<T>) -> Result<Self, Status> {
        request.extensions().get::<TenantId>().cloned().ok_or_else(|| {
            // Reaching a handler without the interceptor is a wiring bug, not a client error.
            Status::from(ApiError::internal("service is not wrapped in require_tenant"))
        })
    }
}

impl std::fmt::Display for TenantId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// A tonic interceptor: rejects a call without a valid tenant and records the tenant on the
/// request for the handler.
pub fn require_tenant(mut request: Request<()>) -> Result<Request<()>, Status> {
    let Some(raw) = request.metadata().get(TENANT_METADATA_KEY) else {
        return Err(ApiError::Unauthenticated {
            reason: "TENANT_MISSING",
            message: format!("the {TENANT_METADATA_KEY} metadata is required"),
        }
        .into());
    };
    let raw = raw
        .to_str()
        .map_err(|_| Status::from(ApiError::invalid_field(TENANT_METADATA_KEY, "must be ASCII")))?;
    let tenant = TenantId::parse(raw)?;
    request.extensions_mut().insert(tenant);
    Ok(request)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::Code;

    #[test]
    fn a_call_without_tenant_is_unauthenticated() {
        assert_eq!(
            require_tenant(Request::new(())).unwrap_err().code(),
            Code::Unauthenticated
        );
    }

    #[test]
    fn a_malformed_tenant_names_the_metadata_key() {
        let mut request = Request::new(());
        request
            .metadata_mut()
            .insert(TENANT_METADATA_KEY, "a/b".parse().unwrap());
        let status = require_tenant(request).unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument);
        assert!(status.message().contains(TENANT_METADATA_KEY));
    }

    #[test]
    fn a_valid_tenant_reaches_the_handler() {
        let mut request = Request::new(());
        request
            .metadata_mut()
            .insert(TENANT_METADATA_KEY, "acme-eu".parse().unwrap());
        let request = require_tenant(request).unwrap();
        assert_eq!(TenantId::of(&request).unwrap().as_str(), "acme-eu");
    }
}
