//! The records: lots of points and the append-only ledger entries that change them.
//!
//! Every entry lists the lots it touched ([`LotMovement`]) and carries three deltas:
//! `balance_delta` (matured points), `pending_delta` (points still in their return window)
//! and `debt_delta` (points owed after a refund of already spent points). The deltas are the
//! sums of the movements' effects, so for every account
//! `balance = Σ balance_delta`, `pending = Σ pending_delta` and `debt = Σ debt_delta` over
//! its ledger (checked by [`check_invariants`](super::check_invariants)).

use chrono::{DateTime, Utc};

use super::earn::CampaignAward;
use super::ids::{CustomerId, EntryId, LotId};

/// Whether a lot's points are spendable yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LotState {
    /// In the return window: counted in `pending`, not spendable.
    Pending,
    /// Counted in `balance`; spendable while `expires_at` is in the future.
    Matured,
}

/// What created a lot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LotSource {
    /// An EARN entry (purchase or referral). Only these count as lifetime and qualifying
    /// points and can be reversed by a refund.
    Earn,
    /// A positive ADJUST entry: counts as lifetime points, never as qualifying.
    Adjust,
    /// Points a cancelled redemption returned for a lot that had left the account (see
    /// [`LotId::returned`]); neither lifetime nor qualifying, they were counted once already.
    Returned,
}

/// A lot: the points one entry created, and what is left of them.
///
/// Counters, always: `0 <= remaining_points <= original_points`,
/// `remaining_points + expired_points <= original_points` and
/// `reversed_points <= original_points`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lot {
    pub id: LotId,
    /// The customer whose activity created the lot. It never changes, even when a merge moves
    /// the lot to the survivor, which is what lets an unmerge move it back.
    pub origin_customer: CustomerId,
    pub source: LotSource,
    pub earned_at: DateTime<Utc>,
    pub matures_at: DateTime<Utc>,
    /// `None`: never expires.
    pub expires_at: Option<DateTime<Utc>>,
    pub state: LotState,
    pub original_points: i64,
    pub remaining_points: i64,
    /// Points the expiry job took (net of those a later refund reversal reclassified).
    pub expired_points: i64,
    /// Points refund reversals took back, including the part that became debt; at most
    /// `original_points`.
    pub reversed_points: i64,
    /// Purchase amount in minor units, net of refunds, for spend-based tiers (0 unless the
    /// lot was earned by a purchase).
    pub qualifying_spend_minor: i64,
}

impl Lot {
    /// Points of this lot that count towards tiers on the points basis.
    pub fn qualifying_points(&self) -> i64 {
        match self.source {
            LotSource::Earn => self.original_points - self.reversed_points,
            LotSource::Adjust | LotSource::Returned => 0,
        }
    }

    /// Points of this lot that count as lifetime points.
    pub fn lifetime_points(&self) -> i64 {
        match self.source {
            LotSource::Earn | LotSource::Adjust => self.original_points - self.reversed_points,
            LotSource::Returned => 0,
        }
    }

    /// Spendable at `at`: matured, not yet expired, something left.
    pub fn is_spendable_at(&self, at: DateTime<Utc>) -> bool {
        self.state == LotState::Matured
            && self.remaining_points > 0
            && self.expires_at.is_none_or(|expires_at| expires_at > at)
    }
}

/// What happened to a lot in one entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LotChange {
    /// The entry created the lot with `points`.
    Created,
    /// The pending lot matured: its remaining points move from pending to balance.
    Matured,
    /// Spent by a redemption or a negative adjustment.
    Consumed,
    /// Taken to pay down debt.
    SettledDebt,
    /// Given back by a cancelled redemption.
    Returned,
    /// Taken by the expiry job.
    Expired,
    /// Taken back by a refund reversal.
    Reversed,
    /// A refund reversal reclassified already expired points as reversed; no balance effect,
    /// kept so the lot's counters can be traced.
    ReversedExpired,
    /// The lot arrived with a merge or unmerge; `points` is what remained.
    MovedIn,
    /// The lot left with a merge or unmerge; `points` is what remained.
    MovedOut,
}

/// One lot touched by one entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LotMovement {
    pub lot_id: LotId,
    pub change: LotChange,
    /// Non-negative; the sign follows from `change`.
    pub points: i64,
    /// The lot was pending when it changed (its points count in `pending`, not `balance`).
    pub pending: bool,
}

impl LotMovement {
    /// The movement's effect as `(on balance, on pending)`.
    pub fn effect(&self) -> (i64, i64) {
        let signed = match self.change {
            LotChange::Matured => return (self.points, -self.points),
            LotChange::ReversedExpired => return (0, 0),
            LotChange::Created | LotChange::Returned | LotChange::MovedIn => self.points,
            LotChange::Consumed
            | LotChange::SettledDebt
            | LotChange::Expired
            | LotChange::Reversed
            | LotChange::MovedOut => -self.points,
        };
        if self.pending { (0, signed) } else { (signed, 0) }
    }
}

/// Where earned points came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EarnSource {
    /// A purchase (its entry id is [`EntryId::accrual`] of `purchase_id`).
    Purchase {
        purchase_id: String,
        /// The eligible purchase amount in minor units; counts for spend-based tiers.
        spend_minor: i64,
        /// What each campaign added (already inside the entry's points), so the store can
        /// charge campaign budgets.
        campaign_awards: Vec<CampaignAward>,
    },
    /// The referral bonus for a referred customer's first purchase (entry id
    /// [`EntryId::referral`] of `purchase_id`).
    Referral {
        referred_customer: CustomerId,
        purchase_id: String,
    },
    /// Points for something other than a purchase (`AccruePoints`: a survey answered, a
    /// partner's purchase, a check-in), under the caller's label.
    Other { source: String, description: String },
}

/// The reward a redemption paid for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RewardLine {
    pub reward_id: String,
    pub quantity: u32,
}

/// The kind of an entry and the request data it keeps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntryKind {
    /// EARN: created one lot.
    Earn {
        points: i64,
        earned_at: DateTime<Utc>,
        source: EarnSource,
        /// Whose activity earned it (see [`Lot::origin_customer`]).
        origin_customer: CustomerId,
    },
    /// SPEND / REDEEM: consumed `points` from matured lots, oldest expiry first.
    Redeem { points: i64, reward: Option<RewardLine> },
    /// CANCEL_REDEMPTION: gave a redemption's points back to the lots it consumed.
    CancelRedemption {
        redemption_entry_id: EntryId,
        points: i64,
    },
    /// REFUND_REVERSAL: took back `points` of an accrual: first what remains of its lot,
    /// then what of it already expired (no effect on balance), and the rest, which was
    /// spent, as debt.
    RefundReversal {
        accrual_entry_id: EntryId,
        points: i64,
        from_remaining: i64,
        from_expired: i64,
        shortfall: i64,
        refunded_spend_minor: i64,
    },
    /// EXPIRY: a run of the expiry job; one movement per expired lot.
    Expiry,
    /// A run of the maturity job; one movement per matured lot.
    Maturity,
    /// ADJUST by an administrator: positive creates a lot, negative consumes like a spend.
    Adjust { points: i64, reason: String },
    /// MERGE_IN: the lots and debt of `counterpart` arrived (or, with `unmerge`, came back).
    MergeIn {
        counterpart: CustomerId,
        unmerge: bool,
        debt_moved: i64,
    },
    /// MERGE_OUT: this account's lots and debt left for `counterpart` (or, with `unmerge`,
    /// the lots and debt that came from `counterpart` went back to it).
    MergeOut {
        counterpart: CustomerId,
        unmerge: bool,
        debt_moved: i64,
    },
}

impl EntryKind {
    /// Replaces every mention of customer `from` (whose purchase it was, who was referred, the
    /// other side of a merge) with `to`: erasure keeps the ledger under a pseudonym.
    pub fn rename_customer(&mut self, from: &CustomerId, to: &CustomerId) {
        let rename = |customer: &mut CustomerId| {
            if customer == from {
                *customer = to.clone();
            }
        };
        match self {
            Self::Earn {
                origin_customer,
                source,
                ..
            } => {
                rename(origin_customer);
                if let EarnSource::Referral {
                    referred_customer, ..
                } = source
                {
                    rename(referred_customer);
                }
            }
            Self::MergeIn { counterpart, .. } | Self::MergeOut { counterpart, .. } => rename(counterpart),
            Self::Redeem { .. }
            | Self::CancelRedemption { .. }
            | Self::RefundReversal { .. }
            | Self::Expiry
            | Self::Maturity
            | Self::Adjust { .. } => {}
        }
    }

    /// The stable name of the kind (for storage and for replay checks).
    pub fn name(&self) -> &'static str {
        match self {
            Self::Earn { .. } => "EARN",
            Self::Redeem { .. } => "REDEEM",
            Self::CancelRedemption { .. } => "CANCEL_REDEMPTION",
            Self::RefundReversal { .. } => "REFUND_REVERSAL",
            Self::Expiry => "EXPIRY",
            Self::Maturity => "MATURITY",
            Self::Adjust { .. } => "ADJUST",
            Self::MergeIn { .. } => "MERGE_IN",
            Self::MergeOut { .. } => "MERGE_OUT",
        }
    }
}

/// One immutable ledger entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LedgerEntry {
    pub id: EntryId,
    /// The account the entry was applied to.
    pub customer: CustomerId,
    pub at: DateTime<Utc>,
    pub kind: EntryKind,
    /// Every lot the entry changed, in the order it changed them.
    pub movements: Vec<LotMovement>,
    pub balance_delta: i64,
    pub pending_delta: i64,
    pub debt_delta: i64,
}

impl LedgerEntry {
    /// Points the entry took from or gave to a change kind, summed.
    pub fn points_moved(&self, change: LotChange) -> i64 {
        self.movements
            .iter()
            .filter(|movement| movement.change == change)
            .map(|movement| movement.points)
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn movement(change: LotChange, points: i64, pending: bool) -> LotMovement {
        LotMovement {
            lot_id: LotId::from("lot"),
            change,
            points,
            pending,
        }
    }

    #[test]
    fn movement_effects() {
        assert_eq!(movement(LotChange::Created, 5, true).effect(), (0, 5));
        assert_eq!(movement(LotChange::Created, 5, false).effect(), (5, 0));
        assert_eq!(movement(LotChange::Matured, 5, true).effect(), (5, -5));
        assert_eq!(movement(LotChange::Consumed, 5, false).effect(), (-5, 0));
        assert_eq!(movement(LotChange::SettledDebt, 5, false).effect(), (-5, 0));
        assert_eq!(movement(LotChange::Returned, 5, false).effect(), (5, 0));
        assert_eq!(movement(LotChange::Expired, 5, true).effect(), (0, -5));
        assert_eq!(movement(LotChange::Reversed, 5, false).effect(), (-5, 0));
        assert_eq!(movement(LotChange::ReversedExpired, 5, false).effect(), (0, 0));
        assert_eq!(movement(LotChange::MovedIn, 5, true).effect(), (0, 5));
        assert_eq!(movement(LotChange::MovedOut, 5, false).effect(), (-5, 0));
    }
}
