//! The customer as the domain sees it, and the rules that need no IO.

use chrono::{DateTime, SubsecRound, Utc};
use uuid::Uuid;

use crate::error::ProfileError;

/// Longest display name accepted, in characters.
pub const DISPLAY_NAME_MAX_CHARS: usize = 200;

/// The kind of party a customer is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CustomerKind {
    Consumer,
    Business,
    Intermediary,
    PublicInterest,
    Internal,
}

impl CustomerKind {
    /// The stored form, stable across renames of the Rust or proto names.
    pub fn as_stored(self) -> &'static str {
        match self {
            Self::Consumer => "CONSUMER",
            Self::Business => "BUSINESS",
            Self::Intermediary => "INTERMEDIARY",
            Self::PublicInterest => "PUBLIC_INTEREST",
            Self::Internal => "INTERNAL",
        }
    }

    pub fn from_stored(stored: &str) -> Option<Self> {
        Some(match stored {
            "CONSUMER" => Self::Consumer,
            "BUSINESS" => Self::Business,
            "INTERMEDIARY" => Self::Intermediary,
            "PUBLIC_INTEREST" => Self::PublicInterest,
            "INTERNAL" => Self::Internal,
            _ => return None,
        })
    }
}

/// A customer of one tenant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Customer {
    pub id: Uuid,
    pub kind: CustomerKind,
    pub display_name: String,
    pub create_time: DateTime<Utc>,
    pub update_time: DateTime<Utc>,
    /// Incremented on every change; the etag is derived from it.
    pub revision: i64,
}

impl Customer {
    /// A new customer with a fresh UUIDv7 id, created `now`.
    pub fn create(kind: CustomerKind, display_name: &str, now: DateTime<Utc>) -> Result<Self, ProfileError> {
        // PostgreSQL keeps microseconds: the answer to a create must equal every later read.
        let now = now.trunc_subsecs(6);
        Ok(Self {
            id: Uuid::now_v7(),
            kind,
            display_name: normalize_display_name(display_name)?,
            create_time: now,
            update_time: now,
            revision: 1,
        })
    }

    pub fn resource_name(&self) -> String {
        format!("customers/{}", self.id)
    }

    pub fn etag(&self) -> String {
        format!("\"{}\"", self.revision)
    }
}

/// Trims the name and checks its length.
pub fn normalize_display_name(raw: &str) -> Result<String, ProfileError> {
    let trimmed = raw.trim();
    if trimmed.is_empty() {
        return Err(ProfileError::invalid(
            "customer.display_name",
            "must not be empty",
        ));
    }
    if trimmed.chars().count() > DISPLAY_NAME_MAX_CHARS {
        return Err(ProfileError::invalid(
            "customer.display_name",
            format!("must be at most {DISPLAY_NAME_MAX_CHARS} characters"),
        ));
    }
    if trimmed.chars().any(char::is_control) {
        return Err(ProfileError::invalid(
            "customer.display_name",
            "must not contain control characters",
        ));
    }
    Ok(trimmed.to_owned())
}

/// Parses `customers/{id}`; `field` names the request field in the error.
pub fn parse_customer_name(name: &str, field: &str) -> Result<Uuid, ProfileError> {
    let id = name
        .strip_prefix("customers/")
        .ok_or_else(|| ProfileError::invalid(field, "must be of the form customers/{customer}"))?;
    Uuid::parse_str(id).map_err(|_| ProfileError::invalid(field, "the customer id must be a UUID"))
}

/// Checks an AIP-155 request id: 1 to 128 printable ASCII characters.
pub fn validate_request_id(request_id: &str) -> Result<(), ProfileError> {
    if request_id.len() > 128 || !request_id.bytes().all(|byte| byte.is_ascii_graphic()) {
        return Err(ProfileError::invalid(
            "request_id",
            "must be 1 to 128 printable ASCII characters",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_names_are_trimmed_and_bounded() {
        assert_eq!(normalize_display_name("  Ada Lovelace ").unwrap(), "Ada Lovelace");
        assert!(normalize_display_name("   ").is_err());
        assert!(normalize_display_name(&"x".repeat(201)).is_err());
        assert!(normalize_display_name(&"张".repeat(200)).is_ok());
        assert!(normalize_display_name("a\u{0}b").is_err());
    }

    #[test]
    fn names_parse_only_in_their_pattern() {
        let id = Uuid::now_v7();
        assert_eq!(
            parse_customer_name(&format!("customers/{id}"), "name").unwrap(),
            id
        );
        assert!(parse_customer_name(&id.to_string(), "name").is_err());
        assert!(parse_customer_name("customers/not-a-uuid", "name").is_err());
    }

    #[test]
    fn kinds_round_trip_through_their_stored_form() {
        for kind in [
            CustomerKind::Consumer,
            CustomerKind::Business,
            CustomerKind::Intermediary,
            CustomerKind::PublicInterest,
            CustomerKind::Internal,
        ] {
            assert_eq!(CustomerKind::from_stored(kind.as_stored()), Some(kind));
        }
    }

    #[test]
    fn request_ids_are_printable_ascii() {
        assert!(validate_request_id("7f1c-retry").is_ok());
        assert!(validate_request_id("has space").is_err());
        assert!(validate_request_id(&"a".repeat(129)).is_err());
    }
}
