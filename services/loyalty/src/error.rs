//! The service's failures, mapped exhaustively onto the one API error model.

use crm_error::ApiError;

use crate::domain::DomainError;
use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum LoyaltyError {
    #[error("{field}: {description}")]
    InvalidField { field: String, description: String },
    #[error("{resource_name} not found")]
    NotFound { resource_name: String },
    #[error("{resource_name} changed since it was read")]
    EtagMismatch { resource_name: String },
    #[error("request_id {request_id:?} was already used for a different request")]
    RequestIdReused { request_id: String },
    /// The tenant has not set a program, so nothing can be earned or spent.
    #[error("the tenant has no loyalty program: set one with UpdateProgram")]
    NoProgram,
    /// Another service of the suite failed a call loyalty depends on.
    #[error("{service}: {status}")]
    Peer {
        service: &'static str,
        status: tonic::Status,
    },
    #[error(transparent)]
    Domain(#[from] DomainError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl LoyaltyError {
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

impl From<LoyaltyError> for ApiError {
    fn from(error: LoyaltyError) -> Self {
        match error {
            LoyaltyError::InvalidField { field, description } => ApiError::invalid_field(field, description),
            LoyaltyError::NotFound { resource_name } => ApiError::NotFound { resource_name },
            LoyaltyError::EtagMismatch { resource_name } => ApiError::EtagMismatch { resource_name },
            LoyaltyError::RequestIdReused { request_id } => ApiError::invalid_field(
                "request_id",
                format!("{request_id:?} was already used for a request with a different payload"),
            ),
            LoyaltyError::NoProgram => ApiError::FailedPrecondition {
                reason: "NO_PROGRAM",
                message: LoyaltyError::NoProgram.to_string(),
            },
            LoyaltyError::Peer { service, status } => ApiError::from_peer(service, &status),
            LoyaltyError::Domain(domain) => domain_error(domain),
            LoyaltyError::Store(store) => store_error(store),
        }
    }
}

fn domain_error(error: DomainError) -> ApiError {
    let message = error.to_string();
    match error {
        DomainError::InvalidField { field, reason } => ApiError::invalid_field(field, reason),
        DomainError::NotFound { resource } => ApiError::NotFound {
            resource_name: resource,
        },
        DomainError::InsufficientPoints { .. } => ApiError::FailedPrecondition {
            reason: "INSUFFICIENT_POINTS",
            message,
        },
        DomainError::AlreadyApplied { .. } => ApiError::FailedPrecondition {
            reason: "ALREADY_APPLIED",
            message,
        },
        // Only a request can reuse an entry id here: ids derive from request ids.
        DomainError::EntryIdReused { .. } => ApiError::invalid_field(
            "request_id",
            format!("was already used for a request of another kind ({message})"),
        ),
        DomainError::OutOfStock { .. } => ApiError::FailedPrecondition {
            reason: "OUT_OF_STOCK",
            message,
        },
        DomainError::RedemptionLimitReached { .. } => ApiError::FailedPrecondition {
            reason: "REDEMPTION_LIMIT_REACHED",
            message,
        },
        // The service resolves merged customers to their survivor before applying; meeting one
        // means a merge committed in between, and the caller's retry resolves again.
        DomainError::AccountMerged { .. } => ApiError::Unavailable {
            reason: "ACCOUNT_MERGED_CONCURRENTLY",
            message,
        },
        DomainError::Inconsistent(detail) => {
            ApiError::internal(format!("account data is inconsistent: {detail}"))
        }
    }
}

fn store_error(error: StoreError) -> ApiError {
    match error {
        StoreError::Db(db_error) => crm_db::api_error(db_error),
        StoreError::Domain(domain) => domain_error(domain),
        StoreError::NotFound { resource } => ApiError::NotFound {
            resource_name: resource,
        },
        StoreError::AlreadyExists { resource } => ApiError::AlreadyExists {
            resource_name: resource,
        },
        StoreError::BudgetExhausted { .. } | StoreError::Conflict(_) => ApiError::Unavailable {
            reason: "CONCURRENT_CHANGE",
            message: format!("{error}; retry"),
        },
        StoreError::DuplicateEntry { .. } | StoreError::InvalidSave(_) | StoreError::Corrupt(_) => {
            ApiError::internal(error.to_string())
        }
    }
}
