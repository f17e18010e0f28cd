//! The operations an account accepts and what applying one returns.

use chrono::{DateTime, Utc};

use super::event::LoyaltyEvent;
use super::ids::{CustomerId, EntryId};
use super::ledger::{EarnSource, LedgerEntry, RewardLine};

/// An operation on one account, under a caller-supplied entry id, at a time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Command {
    /// Unique per tenant forever. Applying a command whose id exists returns the existing
    /// entry ([`Outcome::Replayed`]) instead of applying it twice.
    pub entry_id: EntryId,
    /// When the entry is applied (the service's clock), not when the purchase happened.
    pub at: DateTime<Utc>,
    pub operation: Operation,
}

/// What to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Operation {
    /// EARN: create a lot.
    Earn(Earn),
    /// SPEND / REDEEM: consume spendable points, oldest expiry first.
    Redeem(Redeem),
    /// CANCEL_REDEMPTION: give a redemption's points back to the lots it took them from.
    CancelRedemption { redemption_entry_id: EntryId },
    /// REFUND_REVERSAL: take back (part of) an accrual.
    RefundReversal(RefundReversal),
    /// EXPIRY: the expiry job at `at`: every lot with `expires_at <= at` loses what remains.
    Expire,
    /// The maturity job at `at`: every pending lot with `matures_at <= at` becomes spendable.
    Mature,
    /// ADJUST by an administrator; `reason` is required.
    Adjust { points: i64, reason: String },
}

impl Operation {
    /// The [`EntryKind::name`](super::ledger::EntryKind::name) of the entry this operation
    /// records; a replayed id must name an entry of the same kind.
    pub fn entry_kind_name(&self) -> &'static str {
        match self {
            Self::Earn(_) => "EARN",
            Self::Redeem(_) => "REDEEM",
            Self::CancelRedemption { .. } => "CANCEL_REDEMPTION",
            Self::RefundReversal(_) => "REFUND_REVERSAL",
            Self::Expire => "EXPIRY",
            Self::Mature => "MATURITY",
            Self::Adjust { .. } => "ADJUST",
        }
    }
}

/// Points earned, usually built by [`EarnQuote::to_earn`](super::earn::EarnQuote::to_earn)
/// or [`ReferralBonus::to_earn`](super::earn::ReferralBonus::to_earn).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Earn {
    /// 0 is allowed: a purchase that earns nothing still counts as qualifying spend.
    pub points: i64,
    /// When the purchase happened. Maturity and expiry count from it; a time after the
    /// command's `at` is taken as `at` (a purchase cannot be recorded before it happens).
    pub earned_at: DateTime<Utc>,
    pub source: EarnSource,
    /// Whose purchase it was when that is not the account's own customer (a survivor earning
    /// for a customer merged into it). Must be the account's customer or one merged into it.
    pub origin_customer: Option<CustomerId>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Redeem {
    /// More than 0.
    pub points: i64,
    /// The reward paid for, if any (a plain spend has none).
    pub reward: Option<RewardLine>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefundReversal {
    /// The EARN entry to reverse (e.g. [`EntryId::accrual`] of the refunded purchase).
    pub accrual_entry_id: EntryId,
    /// Points to take back, at most what of the accrual is not yet reversed; 0 only with a
    /// refunded spend (a refund too small to take a point back)
    /// (see [`reversal_points`](super::earn::reversal_points)).
    pub points: i64,
    /// Refunded amount in minor units, removed from the accrual's qualifying spend.
    pub refunded_spend_minor: i64,
}

/// What applying a command did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// A new entry; the store appends it and publishes the events.
    Applied {
        entry: LedgerEntry,
        events: Vec<LoyaltyEvent>,
    },
    /// The entry id existed: nothing changed, here is the first result.
    Replayed { entry: LedgerEntry },
    /// A job (expire, mature) found nothing due; no entry is recorded, so idle runs do not
    /// fill the ledger.
    NothingDue,
}

impl Outcome {
    /// The new or replayed entry.
    pub fn entry(&self) -> Option<&LedgerEntry> {
        match self {
            Self::Applied { entry, .. } | Self::Replayed { entry } => Some(entry),
            Self::NothingDue => None,
        }
    }

    /// Events to publish; none for a replay (they were published the first time).
    pub fn events(&self) -> &[LoyaltyEvent] {
        match self {
            Self::Applied { events, .. } => events,
            Self::Replayed { .. } | Self::NothingDue => &[],
        }
    }
}

/// Entry ids and time of a merge or an unmerge. It records two entries: MERGE_OUT on the
/// account the lots leave, MERGE_IN on the one they join.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MergeCommand {
    pub in_entry_id: EntryId,
    pub out_entry_id: EntryId,
    pub at: DateTime<Utc>,
}

impl MergeCommand {
    /// Entry ids derived from the customer-profile event that caused it, so a re-delivered
    /// event is a replay.
    pub fn from_event(event_id: &str, at: DateTime<Utc>) -> Self {
        Self {
            in_entry_id: EntryId::new(format!("merge-in:{event_id}")),
            out_entry_id: EntryId::new(format!("merge-out:{event_id}")),
            at,
        }
    }
}

/// What a merge did.
// Returned once per merge, never kept in bulk: boxing the larger variant buys nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MergeOutcome {
    Applied {
        /// Recorded on the survivor.
        in_entry: LedgerEntry,
        /// Recorded on the merged customer's account.
        out_entry: LedgerEntry,
        events: Vec<LoyaltyEvent>,
    },
    /// The merge was applied before (its MERGE_IN entry exists).
    Replayed { in_entry: LedgerEntry },
}

/// What an unmerge did.
// Returned once per merge, never kept in bulk: boxing the larger variant buys nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UnmergeOutcome {
    Applied {
        /// The merged customer's account again, with the lots and debt that came from it.
        restored: Box<super::account::Account>,
        /// Recorded on the survivor.
        out_entry: LedgerEntry,
        /// Recorded on the restored account.
        in_entry: LedgerEntry,
        events: Vec<LoyaltyEvent>,
    },
    /// The unmerge was applied before (its MERGE_OUT entry exists on the survivor).
    Replayed { out_entry: LedgerEntry },
}
