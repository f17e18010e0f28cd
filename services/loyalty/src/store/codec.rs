//! How the store encodes what it keeps in blobs and short text columns.
//!
//! Blobs are protobuf, from messages declared here by hand (prost's derive, no `.proto`): the
//! tags below are the format. Add fields with new tags, never reuse or renumber one. Times
//! inside blobs are microseconds since the epoch, the precision of the time columns, so a
//! stored account reads back equal to the one written. Enumerations are small integers in
//! blobs and upper-case names in columns; an unknown value is a [`StoreError::Corrupt`].

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};
use prost::Message;

use super::StoreError;
use crate::domain::{
    CampaignAward, CampaignBonus, CampaignConditions, Currency, CustomerId, EarnRate, EarnSource, EntryId,
    EntryKind, LedgerEntry, LotChange, LotId, LotMovement, LotSource, LotState, Program, RewardLine,
    Rounding, Tier, TierBasis,
};

// ---- ledger entries ----

#[derive(Clone, PartialEq, Message)]
pub(super) struct EntryBodyPb {
    #[prost(message, repeated, tag = "1")]
    pub movements: Vec<MovementPb>,
    #[prost(oneof = "EntryKindPb", tags = "2, 3, 4, 5, 6, 7, 8, 9, 10")]
    pub kind: Option<EntryKindPb>,
}

#[derive(Clone, PartialEq, prost::Oneof)]
pub(super) enum EntryKindPb {
    #[prost(message, tag = "2")]
    Earn(EarnPb),
    #[prost(message, tag = "3")]
    Redeem(RedeemPb),
    #[prost(message, tag = "4")]
    CancelRedemption(CancelRedemptionPb),
    #[prost(message, tag = "5")]
    RefundReversal(RefundReversalPb),
    #[prost(message, tag = "6")]
    Expiry(EmptyPb),
    #[prost(message, tag = "7")]
    Maturity(EmptyPb),
    #[prost(message, tag = "8")]
    Adjust(AdjustPb),
    #[prost(message, tag = "9")]
    MergeIn(MergePb),
    #[prost(message, tag = "10")]
    MergeOut(MergePb),
}

#[derive(Clone, PartialEq, Message)]
pub(super) struct MovementPb {
    #[prost(string, tag = "1")]
    pub lot_id: String,
    /// [`change_code`].
    #[prost(int32, tag = "2")]
    pub change: i32,
    #[prost(int64, tag = "3")]
    pub points: i64,
    #[prost(bool, tag = "4")]
    pub pending: bool,
}

#[derive(Clone, PartialEq, Message)]
pub(super) struct EmptyPb {}

#[derive(Clone, PartialEq, Message)]
pub(super) struct EarnPb {
    #[prost(int64, tag = "1")]
    pub points: i64,
    #[prost(int64, tag = "2")]
    pub earned_at_micros: i64,
    #[prost(string, tag = "3")]
    pub origin_customer: String,
    #[prost(oneof = "EarnSourcePb", tags = "4, 5, 6")]
    pub source: Option<EarnSourcePb>,
}

#[derive(Clone, PartialEq, prost::Oneof)]
pub(super) enum EarnSourcePb {
    #[prost(message, tag = "4")]
    Purchase(PurchasePb),
    #[prost(message, tag = "5")]
    Referral(ReferralPb),
    #[prost(message, tag = "6")]
    Other(OtherSourcePb),
}

#[derive(Clone, PartialEq, Message)]
pub(super) struct OtherSourcePb {
    #[prost(string, tag = "1")]
    pub source: String,
    #[prost(string, tag = "2")]
    pub description: String,
}

#[derive(Clone, PartialEq, Message)]
pub(super) struct PurchasePb {
    #[prost(string, tag = "1")]
    pub purchase_id: String,
    #[prost(int64, tag = "2")]
    pub spend_minor: i64,
    #[prost(message, repeated, tag = "3")]
    pub campaign_awards: Vec<CampaignAwardPb>,
}

#[derive(Clone, PartialEq, Message)]
pub(super) struct CampaignAwardPb {
    #[prost(string, tag = "1")]
    pub campaign_id: String,
    #[prost(int64, tag = "2")]
    pub points: i64,
    #[prost(int64, tag = "3")]
    pub uncapped_points: i64,
}

#[derive(Clone, PartialEq, Message)]
pub(super) struct ReferralPb {
    #[prost(string, tag = "1")]
    pub referred_customer: String,
    #[prost(string, tag = "2")]
    pub purchase_id: String,
}

#[derive(Clone, PartialEq, Message)]
pub(super) struct RedeemPb {
    #[prost(int64, tag = "1")]
    pub points: i64,
    #[prost(message, optional, tag = "2")]
    pub reward: Option<RewardLinePb>,
}

#[derive(Clone, PartialEq, Message)]
pub(super) struct RewardLinePb {
    #[prost(string, tag = "1")]
    pub reward_id: String,
    #[prost(uint32, tag = "2")]
    pub quantity: u32,
}

#[derive(Clone, PartialEq, Message)]
pub(super) struct CancelRedemptionPb {
    #[prost(string, tag = "1")]
    pub redemption_entry_id: String,
    #[prost(int64, tag = "2")]
    pub points: i64,
}

#[derive(Clone, PartialEq, Message)]
pub(super) struct RefundReversalPb {
    #[prost(string, tag = "1")]
    pub accrual_entry_id: String,
    #[prost(int64, tag = "2")]
    pub points: i64,
    #[prost(int64, tag = "3")]
    pub from_remaining: i64,
    #[prost(int64, tag = "4")]
    pub from_expired: i64,
    #[prost(int64, tag = "5")]
    pub shortfall: i64,
    #[prost(int64, tag = "6")]
    pub refunded_spend_minor: i64,
}

#[derive(Clone, PartialEq, Message)]
pub(super) struct AdjustPb {
    #[prost(int64, tag = "1")]
    pub points: i64,
    #[prost(string, tag = "2")]
    pub reason: String,
}

#[derive(Clone, PartialEq, Message)]
pub(super) struct MergePb {
    #[prost(string, tag = "1")]
    pub counterpart: String,
    #[prost(bool, tag = "2")]
    pub unmerge: bool,
    #[prost(int64, tag = "3")]
    pub debt_moved: i64,
}

fn change_code(change: LotChange) -> i32 {
    match change {
        LotChange::Created => 1,
        LotChange::Matured => 2,
        LotChange::Consumed => 3,
        LotChange::SettledDebt => 4,
        LotChange::Returned => 5,
        LotChange::Expired => 6,
        LotChange::Reversed => 7,
        LotChange::ReversedExpired => 8,
        LotChange::MovedIn => 9,
        LotChange::MovedOut => 10,
    }
}

fn change_from_code(code: i32) -> Result<LotChange, StoreError> {
    Ok(match code {
        1 => LotChange::Created,
        2 => LotChange::Matured,
        3 => LotChange::Consumed,
        4 => LotChange::SettledDebt,
        5 => LotChange::Returned,
        6 => LotChange::Expired,
        7 => LotChange::Reversed,
        8 => LotChange::ReversedExpired,
        9 => LotChange::MovedIn,
        10 => LotChange::MovedOut,
        other => return Err(StoreError::corrupt(format!("unknown lot change {other}"))),
    })
}

/// The blob of an entry: its kind's data and its movements.
pub(super) fn encode_entry_body(entry: &LedgerEntry) -> Vec<u8> {
    let kind = match &entry.kind {
        EntryKind::Earn {
            points,
            earned_at,
            source,
            origin_customer,
        } => EntryKindPb::Earn(EarnPb {
            points: *points,
            earned_at_micros: earned_at.timestamp_micros(),
            origin_customer: origin_customer.as_str().to_owned(),
            source: Some(match source {
                EarnSource::Purchase {
                    purchase_id,
                    spend_minor,
                    campaign_awards,
                } => EarnSourcePb::Purchase(PurchasePb {
                    purchase_id: purchase_id.clone(),
                    spend_minor: *spend_minor,
                    campaign_awards: campaign_awards
                        .iter()
                        .map(|award| CampaignAwardPb {
                            campaign_id: award.campaign_id.clone(),
                            points: award.points,
                            uncapped_points: award.uncapped_points,
                        })
                        .collect(),
                }),
                EarnSource::Referral {
                    referred_customer,
                    purchase_id,
                } => EarnSourcePb::Referral(ReferralPb {
                    referred_customer: referred_customer.as_str().to_owned(),
                    purchase_id: purchase_id.clone(),
                }),
                EarnSource::Other { source, description } => EarnSourcePb::Other(OtherSourcePb {
                    source: source.clone(),
                    description: description.clone(),
                }),
            }),
        }),
        EntryKind::Redeem { points, reward } => EntryKindPb::Redeem(RedeemPb {
            points: *points,
            reward: reward.as_ref().map(|line| RewardLinePb {
                reward_id: line.reward_id.clone(),
                quantity: line.quantity,
            }),
        }),
        EntryKind::CancelRedemption {
            redemption_entry_id,
            points,
        } => EntryKindPb::CancelRedemption(CancelRedemptionPb {
            redemption_entry_id: redemption_entry_id.as_str().to_owned(),
            points: *points,
        }),
        EntryKind::RefundReversal {
            accrual_entry_id,
            points,
            from_remaining,
            from_expired,
            shortfall,
            refunded_spend_minor,
        } => EntryKindPb::RefundReversal(RefundReversalPb {
            accrual_entry_id: accrual_entry_id.as_str().to_owned(),
            points: *points,
            from_remaining: *from_remaining,
            from_expired: *from_expired,
            shortfall: *shortfall,
            refunded_spend_minor: *refunded_spend_minor,
        }),
        EntryKind::Expiry => EntryKindPb::Expiry(EmptyPb {}),
        EntryKind::Maturity => EntryKindPb::Maturity(EmptyPb {}),
        EntryKind::Adjust { points, reason } => EntryKindPb::Adjust(AdjustPb {
            points: *points,
            reason: reason.clone(),
        }),
        EntryKind::MergeIn {
            counterpart,
            unmerge,
            debt_moved,
        } => EntryKindPb::MergeIn(MergePb {
            counterpart: counterpart.as_str().to_owned(),
            unmerge: *unmerge,
            debt_moved: *debt_moved,
        }),
        EntryKind::MergeOut {
            counterpart,
            unmerge,
            debt_moved,
        } => EntryKindPb::MergeOut(MergePb {
            counterpart: counterpart.as_str().to_owned(),
            unmerge: *unmerge,
            debt_moved: *debt_moved,
        }),
    };
    EntryBodyPb {
        movements: entry
            .movements
            .iter()
            .map(|movement| MovementPb {
                lot_id: movement.lot_id.as_str().to_owned(),
                change: change_code(movement.change),
                points: movement.points,
                pending: movement.pending,
            })
            .collect(),
        kind: Some(kind),
    }
    .encode_to_vec()
}

/// The kind and movements of an entry from its blob.
pub(super) fn decode_entry_body(body: &[u8]) -> Result<(EntryKind, Vec<LotMovement>), StoreError> {
    let decoded =
        EntryBodyPb::decode(body).map_err(|error| StoreError::corrupt(format!("entry body: {error}")))?;
    let movements = decoded
        .movements
        .into_iter()
        .map(|movement| {
            Ok(LotMovement {
                lot_id: LotId::from(movement.lot_id),
                change: change_from_code(movement.change)?,
                points: movement.points,
                pending: movement.pending,
            })
        })
        .collect::<Result<Vec<_>, StoreError>>()?;
    let kind = match decoded.kind {
        Some(EntryKindPb::Earn(earn)) => EntryKind::Earn {
            points: earn.points,
            earned_at: from_micros(earn.earned_at_micros)?,
            origin_customer: CustomerId::from(earn.origin_customer),
            source: match earn.source {
                Some(EarnSourcePb::Purchase(purchase)) => EarnSource::Purchase {
                    purchase_id: purchase.purchase_id,
                    spend_minor: purchase.spend_minor,
                    campaign_awards: purchase
                        .campaign_awards
                        .into_iter()
                        .map(|award| CampaignAward {
                            campaign_id: award.campaign_id,
                            points: award.points,
                            uncapped_points: award.uncapped_points,
                        })
                        .collect(),
                },
                Some(EarnSourcePb::Referral(referral)) => EarnSource::Referral {
                    referred_customer: CustomerId::from(referral.referred_customer),
                    purchase_id: referral.purchase_id,
                },
                Some(EarnSourcePb::Other(other)) => EarnSource::Other {
                    source: other.source,
                    description: other.description,
                },
                None => return Err(StoreError::corrupt("earn entry without a source")),
            },
        },
        Some(EntryKindPb::Redeem(redeem)) => EntryKind::Redeem {
            points: redeem.points,
            reward: redeem.reward.map(|line| RewardLine {
                reward_id: line.reward_id,
                quantity: line.quantity,
            }),
        },
        Some(EntryKindPb::CancelRedemption(cancel)) => EntryKind::CancelRedemption {
            redemption_entry_id: EntryId::from(cancel.redemption_entry_id),
            points: cancel.points,
        },
        Some(EntryKindPb::RefundReversal(reversal)) => EntryKind::RefundReversal {
            accrual_entry_id: EntryId::from(reversal.accrual_entry_id),
            points: reversal.points,
            from_remaining: reversal.from_remaining,
            from_expired: reversal.from_expired,
            shortfall: reversal.shortfall,
            refunded_spend_minor: reversal.refunded_spend_minor,
        },
        Some(EntryKindPb::Expiry(_)) => EntryKind::Expiry,
        Some(EntryKindPb::Maturity(_)) => EntryKind::Maturity,
        Some(EntryKindPb::Adjust(adjust)) => EntryKind::Adjust {
            points: adjust.points,
            reason: adjust.reason,
        },
        Some(EntryKindPb::MergeIn(merge)) => EntryKind::MergeIn {
            counterpart: CustomerId::from(merge.counterpart),
            unmerge: merge.unmerge,
            debt_moved: merge.debt_moved,
        },
        Some(EntryKindPb::MergeOut(merge)) => EntryKind::MergeOut {
            counterpart: CustomerId::from(merge.counterpart),
            unmerge: merge.unmerge,
            debt_moved: merge.debt_moved,
        },
        None => return Err(StoreError::corrupt("entry body without a kind")),
    };
    Ok((kind, movements))
}

// ---- accounts ----

#[derive(Clone, PartialEq, Message)]
pub(super) struct DebtsPb {
    #[prost(message, repeated, tag = "1")]
    pub debts: Vec<DebtPb>,
}

#[derive(Clone, PartialEq, Message)]
pub(super) struct DebtPb {
    #[prost(string, tag = "1")]
    pub origin: String,
    #[prost(int64, tag = "2")]
    pub points: i64,
}

/// Debt per origin; empty (zero bytes) without debt.
pub(super) fn encode_debts(debts: &BTreeMap<CustomerId, i64>) -> Vec<u8> {
    if debts.is_empty() {
        return Vec::new();
    }
    DebtsPb {
        debts: debts
            .iter()
            .map(|(origin, points)| DebtPb {
                origin: origin.as_str().to_owned(),
                points: *points,
            })
            .collect(),
    }
    .encode_to_vec()
}

pub(super) fn decode_debts(bytes: &[u8]) -> Result<BTreeMap<CustomerId, i64>, StoreError> {
    let decoded = DebtsPb::decode(bytes).map_err(|error| StoreError::corrupt(format!("debts: {error}")))?;
    Ok(decoded
        .debts
        .into_iter()
        .map(|debt| (CustomerId::from(debt.origin), debt.points))
        .collect())
}

pub(super) fn lot_source_name(source: LotSource) -> &'static str {
    match source {
        LotSource::Earn => "EARN",
        LotSource::Adjust => "ADJUST",
        LotSource::Returned => "RETURNED",
    }
}

pub(super) fn lot_source_from_name(name: &str) -> Result<LotSource, StoreError> {
    Ok(match name {
        "EARN" => LotSource::Earn,
        "ADJUST" => LotSource::Adjust,
        "RETURNED" => LotSource::Returned,
        other => return Err(StoreError::corrupt(format!("unknown lot source {other:?}"))),
    })
}

pub(super) const LOT_PENDING: &str = "PENDING";
pub(super) const LOT_MATURED: &str = "MATURED";

pub(super) fn lot_state_name(state: LotState) -> &'static str {
    match state {
        LotState::Pending => LOT_PENDING,
        LotState::Matured => LOT_MATURED,
    }
}

pub(super) fn lot_state_from_name(name: &str) -> Result<LotState, StoreError> {
    Ok(match name {
        LOT_PENDING => LotState::Pending,
        LOT_MATURED => LotState::Matured,
        other => return Err(StoreError::corrupt(format!("unknown lot state {other:?}"))),
    })
}

// ---- programs ----

#[derive(Clone, PartialEq, Message)]
pub(super) struct ProgramPb {
    #[prost(string, tag = "1")]
    pub currency_code: String,
    #[prost(uint32, tag = "2")]
    pub minor_unit_exponent: u32,
    #[prost(int64, tag = "3")]
    pub earn_points: i64,
    #[prost(int64, tag = "4")]
    pub earn_per_major_units: i64,
    /// 1 floor, 2 half up, 3 ceil.
    #[prost(int32, tag = "5")]
    pub rounding: i32,
    #[prost(uint32, tag = "6")]
    pub pending_days: u32,
    #[prost(uint32, tag = "7")]
    pub expiry_months: u32,
    /// 1 qualifying points, 2 qualifying spend.
    #[prost(int32, tag = "8")]
    pub tier_basis: i32,
    #[prost(uint32, tag = "9")]
    pub tier_window_months: u32,
    #[prost(uint32, tag = "10")]
    pub tier_evaluation_period_months: u32,
    #[prost(message, repeated, tag = "11")]
    pub tiers: Vec<TierPb>,
    #[prost(string, repeated, tag = "12")]
    pub excluded_categories: Vec<String>,
    #[prost(int64, tag = "13")]
    pub referral_bonus_points: i64,
}

#[derive(Clone, PartialEq, Message)]
pub(super) struct TierPb {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(int64, tag = "2")]
    pub threshold: i64,
    #[prost(uint32, tag = "3")]
    pub earn_multiplier_bp: u32,
    #[prost(uint32, tag = "4")]
    pub discount_percent: u32,
}

pub(super) fn encode_program(program: &Program) -> Vec<u8> {
    ProgramPb {
        currency_code: program.currency.code.clone(),
        minor_unit_exponent: u32::from(program.currency.minor_unit_exponent),
        earn_points: program.earn_rate.points,
        earn_per_major_units: program.earn_rate.per_major_units,
        rounding: match program.rounding {
            Rounding::Floor => 1,
            Rounding::HalfUp => 2,
            Rounding::Ceil => 3,
        },
        pending_days: program.pending_days,
        expiry_months: program.expiry_months,
        tier_basis: match program.tier_basis {
            TierBasis::QualifyingPoints => 1,
            TierBasis::QualifyingSpend => 2,
        },
        tier_window_months: program.tier_window_months,
        tier_evaluation_period_months: program.tier_evaluation_period_months,
        tiers: program
            .tiers
            .iter()
            .map(|tier| TierPb {
                name: tier.name.clone(),
                threshold: tier.threshold,
                earn_multiplier_bp: tier.earn_multiplier_bp,
                discount_percent: u32::from(tier.discount_percent),
            })
            .collect(),
        excluded_categories: program.excluded_categories.iter().cloned().collect(),
        referral_bonus_points: program.referral_bonus_points,
    }
    .encode_to_vec()
}

pub(super) fn decode_program(bytes: &[u8]) -> Result<Program, StoreError> {
    let decoded =
        ProgramPb::decode(bytes).map_err(|error| StoreError::corrupt(format!("program: {error}")))?;
    let narrow = |field: &str, value: u32| {
        u8::try_from(value).map_err(|_| StoreError::corrupt(format!("program {field} {value} out of range")))
    };
    Ok(Program {
        currency: Currency {
            code: decoded.currency_code,
            minor_unit_exponent: narrow("minor_unit_exponent", decoded.minor_unit_exponent)?,
        },
        earn_rate: EarnRate {
            points: decoded.earn_points,
            per_major_units: decoded.earn_per_major_units,
        },
        rounding: match decoded.rounding {
            1 => Rounding::Floor,
            2 => Rounding::HalfUp,
            3 => Rounding::Ceil,
            other => return Err(StoreError::corrupt(format!("unknown rounding {other}"))),
        },
        pending_days: decoded.pending_days,
        expiry_months: decoded.expiry_months,
        tier_basis: match decoded.tier_basis {
            1 => TierBasis::QualifyingPoints,
            2 => TierBasis::QualifyingSpend,
            other => return Err(StoreError::corrupt(format!("unknown tier basis {other}"))),
        },
        tier_window_months: decoded.tier_window_months,
        tier_evaluation_period_months: decoded.tier_evaluation_period_months,
        tiers: decoded
            .tiers
            .into_iter()
            .map(|tier| {
                Ok(Tier {
                    name: tier.name,
                    threshold: tier.threshold,
                    earn_multiplier_bp: tier.earn_multiplier_bp,
                    discount_percent: narrow("discount_percent", tier.discount_percent)?,
                })
            })
            .collect::<Result<Vec<_>, StoreError>>()?,
        excluded_categories: decoded.excluded_categories.into_iter().collect(),
        referral_bonus_points: decoded.referral_bonus_points,
    })
}

// ---- campaigns ----

#[derive(Clone, PartialEq, Message)]
pub(super) struct ConditionsPb {
    #[prost(string, repeated, tag = "1")]
    pub segment_ids: Vec<String>,
    #[prost(string, repeated, tag = "2")]
    pub channels: Vec<String>,
    #[prost(string, repeated, tag = "3")]
    pub categories: Vec<String>,
    #[prost(int64, tag = "4")]
    pub min_amount_minor: i64,
    #[prost(bool, tag = "5")]
    pub first_purchase_only: bool,
    #[prost(bool, tag = "6")]
    pub birthday_only: bool,
}

pub(super) fn encode_conditions(conditions: &CampaignConditions) -> Vec<u8> {
    let list = |set: &BTreeSet<String>| set.iter().cloned().collect();
    ConditionsPb {
        segment_ids: list(&conditions.segment_ids),
        channels: list(&conditions.channels),
        categories: list(&conditions.categories),
        min_amount_minor: conditions.min_amount_minor,
        first_purchase_only: conditions.first_purchase_only,
        birthday_only: conditions.birthday_only,
    }
    .encode_to_vec()
}

pub(super) fn decode_conditions(bytes: &[u8]) -> Result<CampaignConditions, StoreError> {
    let decoded = ConditionsPb::decode(bytes)
        .map_err(|error| StoreError::corrupt(format!("campaign conditions: {error}")))?;
    Ok(CampaignConditions {
        segment_ids: decoded.segment_ids.into_iter().collect(),
        channels: decoded.channels.into_iter().collect(),
        categories: decoded.categories.into_iter().collect(),
        min_amount_minor: decoded.min_amount_minor,
        first_purchase_only: decoded.first_purchase_only,
        birthday_only: decoded.birthday_only,
    })
}

const EXTRA_MULTIPLIER: &str = "EXTRA_MULTIPLIER";
const FIXED_POINTS: &str = "FIXED_POINTS";

/// The bonus as `(kind, value)` columns.
pub(super) fn bonus_columns(bonus: CampaignBonus) -> (&'static str, i64) {
    match bonus {
        CampaignBonus::ExtraMultiplier { basis_points } => (EXTRA_MULTIPLIER, i64::from(basis_points)),
        CampaignBonus::FixedPoints { points } => (FIXED_POINTS, points),
    }
}

pub(super) fn bonus_from_columns(kind: &str, value: i64) -> Result<CampaignBonus, StoreError> {
    match kind {
        EXTRA_MULTIPLIER => u32::try_from(value)
            .map(|basis_points| CampaignBonus::ExtraMultiplier { basis_points })
            .map_err(|_| StoreError::corrupt(format!("campaign multiplier {value} out of range"))),
        FIXED_POINTS => Ok(CampaignBonus::FixedPoints { points: value }),
        other => Err(StoreError::corrupt(format!("unknown campaign bonus {other:?}"))),
    }
}

// ---- times ----

fn from_micros(micros: i64) -> Result<DateTime<Utc>, StoreError> {
    DateTime::from_timestamp_micros(micros)
        .ok_or_else(|| StoreError::corrupt(format!("time {micros} out of range")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_change_code_round_trips() {
        for change in [
            LotChange::Created,
            LotChange::Matured,
            LotChange::Consumed,
            LotChange::SettledDebt,
            LotChange::Returned,
            LotChange::Expired,
            LotChange::Reversed,
            LotChange::ReversedExpired,
            LotChange::MovedIn,
            LotChange::MovedOut,
        ] {
            assert_eq!(change_from_code(change_code(change)).ok(), Some(change));
        }
        assert!(change_from_code(0).is_err());
    }

    #[test]
    fn debts_encode_to_nothing_when_empty() {
        assert!(encode_debts(&BTreeMap::new()).is_empty());
        assert_eq!(decode_debts(&[]).ok(), Some(BTreeMap::new()));
        let debts = BTreeMap::from([(CustomerId::from("a"), 5), (CustomerId::from("b"), 7)]);
        assert_eq!(decode_debts(&encode_debts(&debts)).ok(), Some(debts));
    }
}
