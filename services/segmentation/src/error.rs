//! The service's failures, mapped exhaustively onto the one API error model.

use crm_error::ApiError;
use sea_orm::DbErr;

#[derive(Debug, thiserror::Error)]
pub enum SegmentationError {
    #[error("{field}: {description}")]
    InvalidField { field: String, description: String },
    #[error("{resource_name} not found")]
    NotFound { resource_name: String },
    #[error("{resource_name} changed since it was read")]
    EtagMismatch { resource_name: String },
    #[error("request_id {request_id:?} was already used for a different request")]
    RequestIdReused { request_id: String },
    /// A feed or call of another service failed.
    #[error("{service}: {status}")]
    Peer {
        service: &'static str,
        status: tonic::Status,
    },
    #[error("store: {0}")]
    Store(#[from] DbErr),
    #[error("stored data cannot be read: {0}")]
    Corrupt(String),
    /// The tenant's data cannot identify a customer-value model (no repeat buyers, ...).
    #[error("no value model can be fitted: {0}")]
    CannotFit(String),
    /// A report needs the active value model and there is none.
    #[error("no active value model: fit one with FitValueModels")]
    NoActiveModel,
    /// A rejected value model was asked to predict.
    #[error("{name} was rejected ({reason}), so it does not predict")]
    ModelRejected { name: String, reason: String },
}

impl SegmentationError {
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

    pub fn corrupt(what: impl std::fmt::Display) -> Self {
        Self::Corrupt(what.to_string())
    }
}

impl From<crate::domain::scores::ScoreError> for SegmentationError {
    fn from(error: crate::domain::scores::ScoreError) -> Self {
        Self::Corrupt(error.to_string())
    }
}

impl From<SegmentationError> for ApiError {
    fn from(error: SegmentationError) -> Self {
        match error {
            SegmentationError::InvalidField { field, description } => {
                ApiError::invalid_field(field, description)
            }
            SegmentationError::NotFound { resource_name } => ApiError::NotFound { resource_name },
            SegmentationError::EtagMismatch { resource_name } => ApiError::EtagMismatch { resource_name },
            SegmentationError::RequestIdReused { request_id } => ApiError::invalid_field(
                "request_id",
                format!("{request_id:?} was already used for a request with a different payload"),
            ),
            SegmentationError::Peer { service, status } => ApiError::from_peer(service, &status),
            SegmentationError::Store(db_error) => crm_db::api_error(db_error),
            SegmentationError::Corrupt(message) => ApiError::internal(message),
            SegmentationError::CannotFit(why) => ApiError::FailedPrecondition {
                reason: "VALUE_MODEL_NOT_IDENTIFIABLE",
                message: format!("no value model can be fitted: {why}"),
            },
            SegmentationError::NoActiveModel => ApiError::FailedPrecondition {
                reason: "NO_ACTIVE_VALUE_MODEL",
                message: SegmentationError::NoActiveModel.to_string(),
            },
            rejected @ SegmentationError::ModelRejected { .. } => ApiError::FailedPrecondition {
                reason: "VALUE_MODEL_REJECTED",
                message: rejected.to_string(),
            },
        }
    }
}

impl From<SegmentationError> for tonic::Status {
    fn from(error: SegmentationError) -> Self {
        ApiError::from(error).into()
    }
}
