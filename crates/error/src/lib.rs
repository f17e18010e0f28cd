//! The one error model of the suite.
//!
//! Every crate has its own `thiserror` enum for its own failures and converts it, with an
//! exhaustive `match`, into [`ApiError`]; [`ApiError`] is the only thing turned into a
//! [`tonic::Status`], so every RPC error carries a `google.rpc.ErrorInfo` (domain [`DOMAIN`])
//! and, for bad input, `google.rpc.BadRequest` field violations naming the field.

use std::collections::HashMap;
use std::time::Duration;

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

/// `google.rpc.ErrorInfo.domain` of every error the suite returns.
pub const DOMAIN: &str = "crm";

/// One bad field of a request: `field` is the path in the request message (`customer.kind`)
/// or the metadata key (`x-tenant-id`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldViolation {
    pub field: String,
    pub description: String,
}

/// A failure as the API reports it.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ApiError {
    /// The request is malformed; nothing was written.
    #[error("invalid argument: {}", describe_violations(.violations))]
    InvalidArgument { violations: Vec<FieldViolation> },
    /// No such resource in the caller's tenant (another tenant's resource looks the same).
    #[error("{resource_name} not found")]
    NotFound { resource_name: String },
    /// A resource with the same unique key exists.
    #[error("{resource_name} already exists")]
    AlreadyExists { resource_name: String },
    /// The request's etag does not match the resource's current one.
    #[error("{resource_name} changed since it was read (etag mismatch)")]
    EtagMismatch { resource_name: String },
    /// The system is not in a state that allows the request.
    #[error("{message}")]
    FailedPrecondition { reason: &'static str, message: String },
    /// No valid credential or tenant.
    #[error("{message}")]
    Unauthenticated { reason: &'static str, message: String },
    /// The credential does not allow the request.
    #[error("{message}")]
    PermissionDenied { reason: &'static str, message: String },
    /// A quota or rate limit is exhausted; retry after the given delay.
    #[error("{message}")]
    ResourceExhausted {
        reason: &'static str,
        message: String,
        retry_after: Option<Duration>,
    },
    /// A dependency (database, peer service) cannot be reached now; safe to retry.
    #[error("{message}")]
    Unavailable { reason: &'static str, message: String },
    /// A bug or an unexpected failure; the details are logged, not returned.
    #[error("internal error")]
    Internal { message: String },
}

fn describe_violations(violations: &[FieldViolation]) -> String {
    violations
        .iter()
        .map(|violation| format!("{}: {}", violation.field, violation.description))
        .collect::<Vec<_>>()
        .join("; ")
}

impl ApiError {
    /// A call to another service of the suite failed: UNAVAILABLE (retryable) when the peer
    /// could not answer in time or at all, INTERNAL otherwise.
    pub fn from_peer(service: &str, status: &tonic::Status) -> Self {
        match status.code() {
            tonic::Code::Unavailable | tonic::Code::DeadlineExceeded | tonic::Code::Cancelled => {
                Self::Unavailable {
                    reason: "PEER_UNAVAILABLE",
                    message: format!("{service} cannot be reached: {}", status.message()),
                }
            }
            _ => Self::internal(format!("{service} failed: {status}")),
        }
    }

    /// A single bad field.
    pub fn invalid_field(field: impl Into<String>, description: impl Into<String>) -> Self {
        Self::InvalidArgument {
            violations: vec![FieldViolation {
                field: field.into(),
                description: description.into(),
            }],
        }
    }

    pub fn not_found(resource_name: impl Into<String>) -> Self {
        Self::NotFound {
            resource_name: resource_name.into(),
        }
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::Internal {
            message: message.into(),
        }
    }

    pub fn code(&self) -> Code {
        match self {
            Self::InvalidArgument { .. } => Code::InvalidArgument,
            Self::NotFound { .. } => Code::NotFound,
            Self::AlreadyExists { .. } => Code::AlreadyExists,
            Self::EtagMismatch { .. } => Code::Aborted,
            Self::FailedPrecondition { .. } => Code::FailedPrecondition,
            Self::Unauthenticated { .. } => Code::Unauthenticated,
            Self::PermissionDenied { .. } => Code::PermissionDenied,
            Self::ResourceExhausted { .. } => Code::ResourceExhausted,
            Self::Unavailable { .. } => Code::Unavailable,
            Self::Internal { .. } => Code::Internal,
        }
    }

    /// The `google.rpc.ErrorInfo.reason`: a stable UPPER_SNAKE identifier clients can match on.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::InvalidArgument { .. } => "INVALID_FIELD",
            Self::NotFound { .. } => "RESOURCE_NOT_FOUND",
            Self::AlreadyExists { .. } => "RESOURCE_ALREADY_EXISTS",
            Self::EtagMismatch { .. } => "ETAG_MISMATCH",
            Self::FailedPrecondition { reason, .. }
            | Self::Unauthenticated { reason, .. }
            | Self::PermissionDenied { reason, .. }
            | Self::ResourceExhausted { reason, .. }
            | Self::Unavailable { reason, .. } => reason,
            Self::Internal { .. } => "INTERNAL",
        }
    }
}

impl From<ApiError> for Status {
    fn from(error: ApiError) -> Self {
        let mut metadata = HashMap::new();
        let mut details = ErrorDetails::new();
        match &error {
            ApiError::InvalidArgument { violations } => {
                for violation in violations {
                    details.add_bad_request_violation(violation.field.clone(), violation.description.clone());
                }
            }
            ApiError::NotFound { resource_name }
            | ApiError::AlreadyExists { resource_name }
            | ApiError::EtagMismatch { resource_name } => {
                metadata.insert("resource_name".to_owned(), resource_name.clone());
            }
            ApiError::ResourceExhausted { retry_after, .. } => {
                details.set_retry_info(*retry_after);
            }
            ApiError::Internal { message } => {
                // The cause stays in our logs; clients learn only that it was ours.
                tracing::error!(error.message = %message, "internal error");
            }
            ApiError::FailedPrecondition { .. }
            | ApiError::Unauthenticated { .. }
            | ApiError::PermissionDenied { .. }
            | ApiError::Unavailable { .. } => {}
        }
        details.set_error_info(error.reason(), DOMAIN, metadata);
        Status::with_error_details(error.code(), error.to_string(), details)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_argument_names_the_field_in_bad_request() {
        let status = Status::from(ApiError::invalid_field("customer.kind", "must be set"));
        assert_eq!(status.code(), Code::InvalidArgument);
        assert!(status.message().contains("customer.kind"));
        let details = status.get_error_details();
        let bad_request = details.bad_request().expect("bad request details");
        assert_eq!(bad_request.field_violations[0].field, "customer.kind");
        let info = details.error_info().expect("error info");
        assert_eq!(info.domain, DOMAIN);
        assert_eq!(info.reason, "INVALID_FIELD");
    }

    #[test]
    fn etag_mismatch_is_aborted_and_internal_hides_its_cause() {
        assert_eq!(
            Status::from(ApiError::EtagMismatch {
                resource_name: "customers/1".into()
            })
            .code(),
            Code::Aborted
        );
        let status = Status::from(ApiError::internal("disk on fire"));
        assert_eq!(status.code(), Code::Internal);
        assert!(!status.message().contains("disk"));
    }

    #[test]
    fn resource_exhausted_carries_retry_info() {
        let status = Status::from(ApiError::ResourceExhausted {
            reason: "RATE_LIMITED",
            message: "slow down".into(),
            retry_after: Some(Duration::from_secs(2)),
        });
        let retry = status
            .get_error_details()
            .retry_info()
            .cloned()
            .expect("retry info");
        assert_eq!(retry.retry_delay, Some(Duration::from_secs(2)));
    }
}
