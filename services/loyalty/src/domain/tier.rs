//! Tier qualification: the qualifying value over the rolling window, the tier it reaches,
//! and the progress towards the next one. Tier *changes* live on
//! [`Account`] (upgrade on earn, [`Account::evaluate_tier`]).

use chrono::{DateTime, Months, Utc};

use super::account::Account;
use super::program::{Program, TierBasis};

/// The member's qualifying value at `now`: over earn lots with `earned_at` in
/// `(now - window, now]`, the points they earned net of reversals, or the purchase amounts
/// net of refunds, per [`Program::tier_basis`]. Pending points count: an upgrade happens at
/// once on earn, and a refund that follows only shows at the next evaluation.
pub fn qualifying_value(account: &Account, program: &Program, now: DateTime<Utc>) -> i64 {
    // A window reaching before the calendar's start counts everything.
    let window_start = now.checked_sub_months(Months::new(program.tier_window_months));
    account
        .lots()
        .filter(|lot| lot.earned_at <= now && window_start.is_none_or(|start| lot.earned_at > start))
        .map(|lot| match program.tier_basis {
            TierBasis::QualifyingPoints => lot.qualifying_points(),
            TierBasis::QualifyingSpend => lot.qualifying_spend_minor,
        })
        .sum()
}

/// The rank (index into [`Program::tiers`]) of the highest tier whose threshold `value`
/// reaches; `None` below the first threshold or without tiers.
pub fn qualifying_tier(program: &Program, value: i64) -> Option<usize> {
    program.tiers.iter().rposition(|tier| tier.threshold <= value)
}

/// Where a member stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TierProgress {
    /// The tier the member holds (kept until an evaluation, even if no longer qualified).
    pub current_tier: Option<String>,
    /// The tier the qualifying value reaches now.
    pub qualified_tier: Option<String>,
    pub basis: TierBasis,
    /// Points or minor units, per `basis`.
    pub qualifying_value: i64,
    /// The tier above the current one; `None` at the top.
    pub next_tier: Option<String>,
    /// Qualifying value still needed for `next_tier` (0 at the top).
    pub needed_for_next: i64,
}

/// Progress of `account` towards the tier above the one it holds, at `now`.
pub fn tier_progress(account: &Account, program: &Program, now: DateTime<Utc>) -> TierProgress {
    let value = qualifying_value(account, program, now);
    let current_rank = account
        .tier()
        .and_then(|name| program.tier(name))
        .map(|(rank, _)| rank);
    let next = match current_rank {
        Some(rank) => program.tiers.get(rank + 1),
        None => program.tiers.first(),
    };
    TierProgress {
        current_tier: account.tier().map(str::to_owned),
        qualified_tier: qualifying_tier(program, value)
            .and_then(|rank| program.tiers.get(rank))
            .map(|tier| tier.name.clone()),
        basis: program.tier_basis,
        qualifying_value: value,
        next_tier: next.map(|tier| tier.name.clone()),
        needed_for_next: next.map_or(0, |tier| (tier.threshold - value).max(0)),
    }
}
