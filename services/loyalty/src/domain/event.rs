//! Events the service publishes, and the query that finds points expiring soon.

use chrono::{DateTime, TimeDelta, Utc};

use super::account::Account;
use super::ids::{CustomerId, EntryId, LotId};
use super::ledger::RewardLine;

/// Why a tier changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TierChangeReason {
    /// An earn took the member over a higher threshold (upgrades happen at once).
    Earned,
    /// A scheduled evaluation (the only time a tier goes down).
    Evaluation,
    /// A merge gave the survivor a higher tier.
    Merge,
}

/// A lot expiring soon.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExpiringLot {
    pub lot_id: LotId,
    pub points: i64,
    pub expires_at: DateTime<Utc>,
}

/// Something other services or clients care about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LoyaltyEvent {
    TierChanged {
        customer: CustomerId,
        from_tier: Option<String>,
        to_tier: Option<String>,
        reason: TierChangeReason,
        at: DateTime<Utc>,
    },
    RedemptionMade {
        customer: CustomerId,
        entry_id: EntryId,
        points: i64,
        reward: Option<RewardLine>,
        at: DateTime<Utc>,
    },
    RedemptionCancelled {
        customer: CustomerId,
        redemption_entry_id: EntryId,
        entry_id: EntryId,
        points: i64,
        at: DateTime<Utc>,
    },
    /// Points the member holds that expire within the notice period.
    PointsExpiringSoon {
        customer: CustomerId,
        points: i64,
        earliest_expires_at: DateTime<Utc>,
        /// Soonest first.
        lots: Vec<ExpiringLot>,
        as_of: DateTime<Utc>,
    },
}

/// The points of `account` (matured or pending) that expire in `(now, now + within_days]`,
/// as one event, or `None` when there are none. Lots already past their expiry wait for the
/// expiry job and are not "soon".
pub fn points_expiring_soon(account: &Account, now: DateTime<Utc>, within_days: u32) -> Option<LoyaltyEvent> {
    let horizon = TimeDelta::try_days(i64::from(within_days))
        .and_then(|notice| now.checked_add_signed(notice))
        .unwrap_or(DateTime::<Utc>::MAX_UTC);
    let mut lots: Vec<ExpiringLot> = account
        .lots()
        .filter(|lot| lot.remaining_points > 0)
        .filter_map(|lot| {
            let expires_at = lot.expires_at?;
            (now < expires_at && expires_at <= horizon).then(|| ExpiringLot {
                lot_id: lot.id.clone(),
                points: lot.remaining_points,
                expires_at,
            })
        })
        .collect();
    lots.sort_by(|left, right| (left.expires_at, &left.lot_id).cmp(&(right.expires_at, &right.lot_id)));
    let earliest_expires_at = lots.first()?.expires_at;
    Some(LoyaltyEvent::PointsExpiringSoon {
        customer: account.customer().clone(),
        points: lots.iter().map(|lot| lot.points).sum(),
        earliest_expires_at,
        lots,
        as_of: now,
    })
}
