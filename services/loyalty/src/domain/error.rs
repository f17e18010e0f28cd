//! The one error type of the loyalty domain.

use super::ids::{CustomerId, EntryId};

/// Why a domain rule refused an input or an operation.
///
/// Suggested mapping onto gRPC codes (the service owns the final mapping):
///
/// | variant | code |
/// |---|---|
/// | [`InvalidField`](Self::InvalidField) | `INVALID_ARGUMENT` with a field violation on `field` |
/// | [`EntryIdReused`](Self::EntryIdReused) | `INVALID_ARGUMENT` (like a reused `request_id`) |
/// | [`InsufficientPoints`](Self::InsufficientPoints), [`OutOfStock`](Self::OutOfStock), [`RedemptionLimitReached`](Self::RedemptionLimitReached), [`AlreadyApplied`](Self::AlreadyApplied), [`AccountMerged`](Self::AccountMerged) | `FAILED_PRECONDITION` |
/// | [`NotFound`](Self::NotFound) | `NOT_FOUND` |
/// | [`Inconsistent`](Self::Inconsistent) | `INTERNAL` (stored data breaks a rule) |
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DomainError {
    /// An input field breaks a rule. `field` is a path such as `program.tiers[1].threshold`.
    #[error("{field}: {reason}")]
    InvalidField { field: String, reason: String },

    /// A spend needs more spendable points than the account has.
    #[error("insufficient points: {needed} needed, {available} available")]
    InsufficientPoints { needed: i64, available: i64 },

    /// The effect asked for already happened under another entry id (a redemption cancelled
    /// twice, an accrual reversed beyond what it earned, an accrual recorded outside this
    /// account's ledgers).
    #[error("{what} was already applied")]
    AlreadyApplied {
        what: String,
        /// The entry that applied it, when known.
        by_entry_id: Option<EntryId>,
    },

    /// The entry id exists, but for another kind of operation: a caller bug, not a retry.
    #[error("ledger entry {entry_id} already exists as a {existing_kind} entry")]
    EntryIdReused {
        entry_id: EntryId,
        existing_kind: &'static str,
    },

    /// A referenced entry, lot or merge does not exist in this account.
    #[error("{resource} not found")]
    NotFound { resource: String },

    #[error("reward {reward_id} is out of stock: {requested} requested, {in_stock} in stock")]
    OutOfStock {
        reward_id: String,
        requested: u32,
        in_stock: i64,
    },

    #[error(
        "reward {reward_id} allows {limit} per member: {already_redeemed} already redeemed, \
         {requested} requested"
    )]
    RedemptionLimitReached {
        reward_id: String,
        limit: u32,
        already_redeemed: u32,
        requested: u32,
    },

    /// The account was merged into another; the service resolves merges before applying.
    #[error("customer {customer} was merged into {survivor}")]
    AccountMerged {
        customer: CustomerId,
        survivor: CustomerId,
    },

    /// Stored parts do not form a valid account (duplicate ids and the like).
    #[error("account data is inconsistent: {0}")]
    Inconsistent(String),
}

impl DomainError {
    /// An [`InvalidField`](Self::InvalidField) error.
    pub fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::InvalidField {
            field: field.into(),
            reason: reason.into(),
        }
    }

    pub fn not_found(resource: impl Into<String>) -> Self {
        Self::NotFound {
            resource: resource.into(),
        }
    }
}
