//! The service's failures, mapped exhaustively onto the one API error model.

use crm_error::ApiError;
use sea_orm::DbErr;

#[derive(Debug, thiserror::Error)]
pub enum InteractionError {
    #[error("{field}: {description}")]
    InvalidField { field: String, description: String },
    #[error("{resource_name} not found")]
    NotFound { resource_name: String },
    #[error("{resource_name} changed since it was read")]
    EtagMismatch { resource_name: String },
    #[error("{message}")]
    FailedPrecondition { reason: &'static str, message: String },
    #[error("request_id {request_id:?} was already used for a different request")]
    RequestIdReused { request_id: String },
    /// A call to another service failed; its status is passed on (UNAVAILABLE stays
    /// UNAVAILABLE, so callers retry).
    #[error("{service}: {status}")]
    Peer {
        service: &'static str,
        status: tonic::Status,
    },
    #[error("store: {0}")]
    Store(#[from] DbErr),
    #[error("stored data cannot be read: {0}")]
    Corrupt(String),
}

impl InteractionError {
    pub fn invalid(field: impl Into<String>, description: impl Into<String>) -> Self {
        Self::InvalidField {
            field: field.into(),
            description: description.into(),
        }
    }

    pub fn not_found(resource_name: impl Into<String>) -> Self {
        Self::NotFound {
            resource_name: resource_name.into(),
        }
    }

    /// Prefixes the field of a field violation, e.g. `amount` -> `purchase.amount`.
    pub fn within(self, prefix: &str) -> Self {
        match self {
            Self::InvalidField { field, description } => Self::InvalidField {
                field: format!("{prefix}.{field}"),
                description,
            },
            other => other,
        }
    }
}

impl From<InteractionError> for ApiError {
    fn from(error: InteractionError) -> Self {
        match error {
            InteractionError::InvalidField { field, description } => {
                ApiError::invalid_field(field, description)
            }
            InteractionError::NotFound { resource_name } => ApiError::NotFound { resource_name },
            InteractionError::EtagMismatch { resource_name } => ApiError::EtagMismatch { resource_name },
            InteractionError::FailedPrecondition { reason, message } => {
                ApiError::FailedPrecondition { reason, message }
            }
            InteractionError::RequestIdReused { request_id } => ApiError::invalid_field(
                "request_id",
                format!("{request_id:?} was already used for a request with a different payload"),
            ),
            InteractionError::Peer { service, status } => ApiError::from_peer(service, &status),
            InteractionError::Store(db_error) => crm_db::api_error(db_error),
            InteractionError::Corrupt(message) => ApiError::internal(message),
        }
    }
}

impl From<InteractionError> for tonic::Status {
    fn from(error: InteractionError) -> Self {
        ApiError::from(error).into()
    }
}
