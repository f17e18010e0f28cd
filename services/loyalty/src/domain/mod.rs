//! The loyalty rules, pure: no database, no gRPC, no clock, no async. Every function takes
//! the time it applies at, and every change to a member's points is an entry in an
//! append-only ledger of lots.
//!
//! - [`program`]: the tenant's program (earn rate, rounding, pending and expiry periods,
//!   tiers) and its validation.
//! - [`earn`]: what a purchase earns (base rate, tier multiplier, campaigns within budget),
//!   quotes, referral bonuses, points a refund takes back.
//! - [`account`]: a member's lots, ledger, debt and tier; [`Account::apply`] runs EARN,
//!   REDEEM, CANCEL_REDEMPTION, REFUND_REVERSAL, EXPIRY, maturity and ADJUST; [`merge`] and
//!   [`unmerge`] move lots between accounts; [`check_invariants`] states the rules.
//! - [`tier`]: qualifying value, tier reached, progress to the next tier.
//! - [`reward`]: the catalogue and [`can_redeem`].
//! - [`event`]: what the service publishes (tier changed, redemption made or cancelled,
//!   points expiring soon).
//!
//! Points are `i64`; money is `i64` minor units of the program's currency; no floating
//! point anywhere. Every refusal is a [`DomainError`], whose `InvalidField` names the field.

pub mod account;
pub mod earn;
pub mod error;
pub mod event;
pub mod ids;
pub mod ledger;
pub mod operation;
pub mod program;
pub mod reward;
pub mod tier;

#[cfg(test)]
mod model_tests;

pub use account::{Account, AccountParts, check_invariants, merge, spend_order_key, unmerge};
pub use earn::{
    Basket, BasketLine, Birthday, Campaign, CampaignAward, CampaignBonus, CampaignConditions, EarnContext,
    EarnQuote, ReferralBonus, quote_points, referral_bonus, reversal_points,
};
pub use error::DomainError;
pub use event::{ExpiringLot, LoyaltyEvent, TierChangeReason, points_expiring_soon};
pub use ids::{CustomerId, EntryId, LotId};
pub use ledger::{
    EarnSource, EntryKind, LedgerEntry, Lot, LotChange, LotMovement, LotSource, LotState, RewardLine,
};
pub use operation::{
    Command, Earn, MergeCommand, MergeOutcome, Operation, Outcome, Redeem, RefundReversal, UnmergeOutcome,
};
pub use program::{Currency, EarnRate, Program, Rounding, Tier, TierBasis};
pub use reward::{Reward, can_redeem};
pub use tier::{TierProgress, qualifying_tier, qualifying_value, tier_progress};
