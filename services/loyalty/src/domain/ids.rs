//! Identifiers: customers, ledger entries and lots, and the derived ids that make
//! re-delivered operations idempotent.

use std::fmt;

use super::error::DomainError;

/// Longest accepted id, in bytes; ids become primary keys.
pub const ID_MAX_BYTES: usize = 256;

macro_rules! string_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name(String);

        impl $name {
            pub fn new(value: impl Into<String>) -> Self {
                Self(value.into())
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl From<&str> for $name {
            fn from(value: &str) -> Self {
                Self(value.to_owned())
            }
        }

        impl From<String> for $name {
            fn from(value: String) -> Self {
                Self(value)
            }
        }
    };
}

string_id!(
    /// A customer (member) of the tenant, as customer-profile names it (the `{id}` of
    /// `customers/{id}`).
    CustomerId
);

string_id!(
    /// A ledger entry. Supplied by the caller and unique per tenant forever, which is what
    /// makes a retried or re-delivered operation a no-op. Use the derivations below when an
    /// operation comes from another service's event.
    EntryId
);

string_id!(
    /// A lot of points. A lot is created by exactly one entry and takes that entry's id
    /// ([`LotId::of_entry`]), so lot ids are unique wherever entry ids are.
    LotId
);

impl EntryId {
    /// The accrual for a purchase: one per purchase, so re-delivery of the purchase event
    /// finds the existing entry.
    pub fn accrual(purchase_id: &str) -> Self {
        Self(format!("accrual:{purchase_id}"))
    }

    /// The referral bonus paid to the referrer for the referred customer's first purchase.
    pub fn referral(purchase_id: &str) -> Self {
        Self(format!("referral:{purchase_id}"))
    }

    /// The reversal of an accrual for one refund.
    pub fn reversal(refund_id: &str) -> Self {
        Self(format!("reversal:{refund_id}"))
    }

    /// Refuses empty, blank or over-long ids; `field` names the request field.
    pub fn validate(&self, field: &str) -> Result<(), DomainError> {
        if self.0.trim().is_empty() {
            return Err(DomainError::invalid(field, "must not be empty"));
        }
        if self.0.len() > ID_MAX_BYTES {
            return Err(DomainError::invalid(
                field,
                format!("must be at most {ID_MAX_BYTES} bytes"),
            ));
        }
        Ok(())
    }
}

impl LotId {
    /// The lot created by an entry (an earn or a positive adjustment).
    pub fn of_entry(entry_id: &EntryId) -> Self {
        Self(entry_id.0.clone())
    }

    /// The lot a cancellation creates when a consumed lot no longer belongs to the account
    /// (it left with an unmerge). Should a caller's own id ever clash with it, the
    /// cancellation is refused rather than a lot overwritten.
    pub fn returned(cancel_entry_id: &EntryId, consumed_lot_id: &LotId) -> Self {
        Self(format!("{}>{}", cancel_entry_id.0, consumed_lot_id.0))
    }
}
