//! The service's failures, mapped exhaustively onto the one API error model.

use crm_error::ApiError;
use sea_orm::DbErr;

#[derive(Debug, thiserror::Error)]
pub enum ProfileError {
    #[error("{field}: {description}")]
    InvalidField { field: String, description: String },
    #[error("{resource_name} not found")]
    NotFound { resource_name: String },
    #[error("{identity} belongs to another customer")]
    IdentityTaken { identity: String },
    #[error("{resource_name} changed since it was read")]
    EtagMismatch { resource_name: String },
    #[error("{message}")]
    FailedPrecondition { reason: &'static str, message: String },
    #[error("request_id {request_id:?} was already used for a different request")]
    RequestIdReused { request_id: String },
    #[error("store: {0}")]
    Store(#[from] DbErr),
    #[error("stored data cannot be read: {0}")]
    Corrupt(String),
}

impl ProfileError {
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
}

impl From<ProfileError> for ApiError {
    fn from(error: ProfileError) -> Self {
        match error {
            ProfileError::InvalidField { field, description } => ApiError::invalid_field(field, description),
            ProfileError::NotFound { resource_name } => ApiError::NotFound { resource_name },
            ProfileError::IdentityTaken { identity } => ApiError::AlreadyExists {
                resource_name: identity,
            },
            ProfileError::EtagMismatch { resource_name } => ApiError::EtagMismatch { resource_name },
            ProfileError::FailedPrecondition { reason, message } => {
                ApiError::FailedPrecondition { reason, message }
            }
            ProfileError::RequestIdReused { request_id } => ApiError::invalid_field(
                "request_id",
                format!("{request_id:?} was already used for a request with a different payload"),
            ),
            ProfileError::Store(db_error) => crm_db::api_error(db_error),
            ProfileError::Corrupt(message) => ApiError::internal(message),
        }
    }
}

impl From<ProfileError> for tonic::Status {
    fn from(error: ProfileError) -> Self {
        ApiError::from(error).into()
    }
}
