//! Between the contract's messages and the domain: every field checked on the way in, with its
//! path in the request when it is refused.

use std::collections::BTreeSet;

use chrono::{DateTime, Utc};
use crm_proto::loyalty_v1 as pb;
use uuid::Uuid;

use crate::domain::{
    Account, Basket, BasketLine, Currency, CustomerId, EarnRate, EarnSource, EntryKind, LedgerEntry,
    LotChange, LotMovement, LoyaltyEvent, Program, Rounding, Tier, TierBasis, TierChangeReason,
    tier_progress,
};
use crate::error::LoyaltyError;
use crate::service::QuoteView;
use crate::store::StoredProgram;

pub mod catalog;

/// `accounts/{customer id}` -> the customer.
pub fn parse_account_name(name: &str, field: &str) -> Result<CustomerId, LoyaltyError> {
    name.strip_prefix("accounts/")
        .and_then(|id| Uuid::parse_str(id).ok())
        .map(|id| CustomerId::new(id.to_string()))
        .ok_or_else(|| LoyaltyError::invalid(field, "must be accounts/{customer id}"))
}

pub fn account_name(customer: &CustomerId) -> String {
    format!("accounts/{customer}")
}

fn non_negative(value: i32, field: &str) -> Result<u32, LoyaltyError> {
    u32::try_from(value).map_err(|_| LoyaltyError::invalid(field, "must not be negative"))
}

/// The program a request sets, its fields converted; the service checks the ranges with
/// [`Program::validate`].
pub fn program_from_pb(program: &pb::Program) -> Result<Program, LoyaltyError> {
    let code = program.currency_code.trim().to_ascii_uppercase();
    let exponent = crm_proto::money::currency_exponent(&code)
        .and_then(|exponent| u8::try_from(exponent).ok())
        .ok_or_else(|| LoyaltyError::invalid("program.currency_code", "is not an ISO 4217 currency code"))?;
    let earn_rate = program
        .earn_rate
        .as_ref()
        .ok_or_else(|| LoyaltyError::invalid("program.earn_rate", "is required"))?;
    let rounding = match pb::Rounding::try_from(program.rounding) {
        Ok(pb::Rounding::Floor) => Rounding::Floor,
        Ok(pb::Rounding::HalfUp) => Rounding::HalfUp,
        Ok(pb::Rounding::Ceil) => Rounding::Ceil,
        Ok(pb::Rounding::Unspecified) | Err(_) => {
            return Err(LoyaltyError::invalid(
                "program.rounding",
                "must be ROUNDING_FLOOR, ROUNDING_HALF_UP or ROUNDING_CEIL",
            ));
        }
    };
    let tier_basis = match pb::TierBasis::try_from(program.tier_basis) {
        Ok(pb::TierBasis::Unspecified | pb::TierBasis::QualifyingPoints) => TierBasis::QualifyingPoints,
        Ok(pb::TierBasis::QualifyingSpend) => TierBasis::QualifyingSpend,
        Err(_) => return Err(LoyaltyError::invalid("program.tier_basis", "is not a tier basis")),
    };
    let tiers = program
        .tiers
        .iter()
        .enumerate()
        .map(|(index, tier)| {
            Ok(Tier {
                name: tier.name.clone(),
                threshold: tier.threshold,
                earn_multiplier_bp: non_negative(
                    tier.earn_multiplier_bp,
                    &format!("program.tiers[{index}].earn_multiplier_bp"),
                )?,
                discount_percent: u8::try_from(tier.discount_percent).map_err(|_| {
                    LoyaltyError::invalid(
                        format!("program.tiers[{index}].discount_percent"),
                        "must be 0 to 100",
                    )
                })?,
            })
        })
        .collect::<Result<Vec<_>, LoyaltyError>>()?;
    let mut excluded_categories = BTreeSet::new();
    for (index, category) in program.excluded_categories.iter().enumerate() {
        if !excluded_categories.insert(category.clone()) {
            return Err(LoyaltyError::invalid(
                format!("program.excluded_categories[{index}]"),
                "is listed twice",
            ));
        }
    }
    let program = Program {
        currency: Currency {
            code,
            minor_unit_exponent: exponent,
        },
        earn_rate: EarnRate {
            points: earn_rate.points,
            per_major_units: earn_rate.per_major_units,
        },
        rounding,
        pending_days: non_negative(program.pending_days, "program.pending_days")?,
        expiry_months: non_negative(program.expiry_months, "program.expiry_months")?,
        tier_basis,
        tier_window_months: non_negative(program.tier_window_months, "program.tier_window_months")?,
        tier_evaluation_period_months: non_negative(
            program.tier_evaluation_period_months,
            "program.tier_evaluation_period_months",
        )?,
        tiers,
        excluded_categories,
        referral_bonus_points: program.referral_bonus_points,
    };
    Ok(program)
}

pub fn program_to_pb(stored: &StoredProgram) -> pb::Program {
    let program = &stored.program;
    pb::Program {
        name: "program".into(),
        currency_code: program.currency.code.clone(),
        earn_rate: Some(pb::EarnRate {
            points: program.earn_rate.points,
            per_major_units: program.earn_rate.per_major_units,
        }),
        rounding: match program.rounding {
            Rounding::Floor => pb::Rounding::Floor,
            Rounding::HalfUp => pb::Rounding::HalfUp,
            Rounding::Ceil => pb::Rounding::Ceil,
        } as i32,
        pending_days: saturating_i32(program.pending_days),
        expiry_months: saturating_i32(program.expiry_months),
        tier_basis: match program.tier_basis {
            TierBasis::QualifyingPoints => pb::TierBasis::QualifyingPoints,
            TierBasis::QualifyingSpend => pb::TierBasis::QualifyingSpend,
        } as i32,
        tier_window_months: saturating_i32(program.tier_window_months),
        tier_evaluation_period_months: saturating_i32(program.tier_evaluation_period_months),
        tiers: program
            .tiers
            .iter()
            .map(|tier| pb::Tier {
                name: tier.name.clone(),
                threshold: tier.threshold,
                earn_multiplier_bp: saturating_i32(tier.earn_multiplier_bp),
                discount_percent: i32::from(tier.discount_percent),
            })
            .collect(),
        excluded_categories: program.excluded_categories.iter().cloned().collect(),
        referral_bonus_points: program.referral_bonus_points,
        etag: program_etag(stored.revision),
        start_time: stored.start_time.map(timestamp),
    }
}

fn saturating_i32(value: u32) -> i32 {
    i32::try_from(value).unwrap_or(i32::MAX)
}

pub fn program_etag(revision: i64) -> String {
    revision_etag(revision)
}

/// An etag -> the revision it names; `None` for an empty one (no check).
pub fn parse_program_etag(etag: &str) -> Result<Option<i64>, LoyaltyError> {
    parse_etag(etag, "program.etag")
}

/// The etag of a resource at `revision` (the program, a reward, a campaign).
pub fn revision_etag(revision: i64) -> String {
    format!("r{revision}")
}

/// An etag in `field` -> the revision it names; `None` for an empty one (no check).
pub fn parse_etag(etag: &str, field: &str) -> Result<Option<i64>, LoyaltyError> {
    if etag.is_empty() {
        return Ok(None);
    }
    etag.strip_prefix('r')
        .and_then(|revision| revision.parse::<i64>().ok())
        .filter(|revision| *revision >= 0)
        .map(Some)
        .ok_or_else(|| LoyaltyError::invalid(field, "is not an etag this service returned"))
}

pub fn account_to_pb(account: &Account, program: Option<&Program>, at: DateTime<Utc>) -> pb::Account {
    let tier_progress = program
        .filter(|program| !program.tiers.is_empty())
        .map(|program| {
            let progress = tier_progress(account, program, at);
            pb::TierProgress {
                qualifying_value: progress.qualifying_value,
                qualified_tier: progress.qualified_tier.unwrap_or_default(),
                next_tier: progress.next_tier.unwrap_or_default(),
                needed_for_next: progress.needed_for_next,
            }
        });
    pb::Account {
        name: account_name(account.customer()),
        balance: account.balance(),
        pending_points: account.pending_points(),
        lifetime_points: account.lifetime_points(),
        debt: account.debt(),
        tier: account.tier().unwrap_or_default().to_owned(),
        tier_progress,
        merged_customers: account
            .customers()
            .into_iter()
            .skip(1)
            .map(|customer| format!("customers/{customer}"))
            .collect(),
        spendable_points: account.spendable_balance(at),
    }
}

pub fn timestamp(time: DateTime<Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: time.timestamp(),
        nanos: i32::try_from(time.timestamp_subsec_nanos()).unwrap_or(0),
    }
}

pub fn entry_to_pb(entry: &LedgerEntry) -> pb::LedgerEntry {
    use pb::ledger_entry::Kind;
    let mut earn_source = String::new();
    let (kind, points, reason) = match &entry.kind {
        EntryKind::Earn { points, source, .. } => {
            let description = match source {
                EarnSource::Purchase { .. } => {
                    "purchase".clone_into(&mut earn_source);
                    String::new()
                }
                EarnSource::Referral { .. } => {
                    "referral".clone_into(&mut earn_source);
                    String::new()
                }
                EarnSource::Other { source, description } => {
                    source.clone_into(&mut earn_source);
                    description.clone()
                }
            };
            (Kind::Earn, *points, description)
        }
        EntryKind::Redeem { points, .. } => (Kind::Redeem, *points, String::new()),
        EntryKind::CancelRedemption { points, .. } => (Kind::CancelRedemption, *points, String::new()),
        EntryKind::RefundReversal { points, .. } => (Kind::RefundReversal, *points, String::new()),
        EntryKind::Expiry => (Kind::Expiry, 0, String::new()),
        EntryKind::Maturity => (Kind::Maturity, 0, String::new()),
        EntryKind::Adjust { points, reason } => (Kind::Adjust, *points, reason.clone()),
        EntryKind::MergeIn { .. } => (Kind::MergeIn, 0, String::new()),
        EntryKind::MergeOut { .. } => (Kind::MergeOut, 0, String::new()),
    };
    let (reward, reward_quantity, redemption_entry_id) = catalog::entry_references(&entry.kind);
    pb::LedgerEntry {
        name: format!("{}/ledgerEntries/{}", account_name(&entry.customer), entry.id),
        entry_id: entry.id.as_str().to_owned(),
        create_time: Some(timestamp(entry.at)),
        kind: kind as i32,
        points,
        balance_delta: entry.balance_delta,
        pending_delta: entry.pending_delta,
        debt_delta: entry.debt_delta,
        reason,
        movements: entry.movements.iter().map(movement_to_pb).collect(),
        reward,
        reward_quantity,
        redemption_entry_id,
        earn_source,
    }
}

fn movement_to_pb(movement: &LotMovement) -> pb::LotMovement {
    use pb::lot_movement::Change;
    let change = match movement.change {
        LotChange::Created => Change::Created,
        LotChange::Matured => Change::Matured,
        LotChange::Consumed => Change::Consumed,
        LotChange::SettledDebt => Change::SettledDebt,
        LotChange::Returned => Change::Returned,
        LotChange::Expired => Change::Expired,
        LotChange::Reversed => Change::Reversed,
        LotChange::ReversedExpired => Change::ReversedExpired,
        LotChange::MovedIn => Change::MovedIn,
        LotChange::MovedOut => Change::MovedOut,
    };
    pb::LotMovement {
        lot_id: movement.lot_id.as_str().to_owned(),
        change: change as i32,
        points: movement.points,
        pending: movement.pending,
    }
}

/// A QuotePoints basket: every line's amount in one currency, in minor units.
pub fn basket_from_pb(lines: &[pb::BasketLine]) -> Result<Basket, LoyaltyError> {
    if lines.is_empty() {
        return Err(LoyaltyError::invalid("lines", "must not be empty"));
    }
    let mut currency_code: Option<&str> = None;
    let mut basket_lines = Vec::with_capacity(lines.len());
    for (index, line) in lines.iter().enumerate() {
        let field = format!("lines[{index}].amount");
        let amount = line
            .amount
            .as_ref()
            .ok_or_else(|| LoyaltyError::invalid(field.clone(), "is required"))?;
        let amount_minor = crm_proto::money::to_minor_units(amount)
            .ok_or_else(|| LoyaltyError::invalid(field.clone(), "must be an amount of a known currency"))?;
        match currency_code {
            Some(code) if code != amount.currency_code => {
                return Err(LoyaltyError::invalid(
                    format!("{field}.currency_code"),
                    "must be the currency of the other lines",
                ));
            }
            _ => currency_code = Some(&amount.currency_code),
        }
        let category = line.category.trim();
        basket_lines.push(BasketLine {
            amount_minor,
            category: (!category.is_empty()).then(|| category.to_owned()),
        });
    }
    Ok(Basket {
        currency_code: currency_code.unwrap_or_default().to_owned(),
        lines: basket_lines,
    })
}

pub fn quote_to_pb(view: &QuoteView) -> pb::PointsQuote {
    let quote = &view.quote;
    pb::PointsQuote {
        total_points: quote.total_points,
        base_points: quote.base_points,
        eligible_amount: Some(crm_proto::money::from_minor_units(
            &view.currency_code,
            quote.eligible_amount_minor,
        )),
        tier: view.tier.clone().unwrap_or_default(),
        tier_multiplier_bp: i32::try_from(quote.tier_multiplier_bp).unwrap_or(i32::MAX),
        first_purchase: view.is_first_purchase,
        campaign_awards: quote
            .campaign_awards
            .iter()
            .map(|award| pb::CampaignAward {
                campaign: format!("campaigns/{}", award.campaign_id),
                points: award.points,
                uncapped_points: award.uncapped_points,
            })
            .collect(),
    }
}

/// A domain event as the event stream carries it (its cursor and time set on reading).
pub fn event_to_pb(event: &LoyaltyEvent) -> pb::LoyaltyEvent {
    use pb::loyalty_event::{TierChangeReason as Reason, Type};
    match event {
        LoyaltyEvent::TierChanged {
            customer,
            from_tier,
            to_tier,
            reason,
            ..
        } => pb::LoyaltyEvent {
            r#type: Type::TierChanged as i32,
            account: account_name(customer),
            from_tier: from_tier.clone().unwrap_or_default(),
            to_tier: to_tier.clone().unwrap_or_default(),
            tier_change_reason: match reason {
                TierChangeReason::Earned => Reason::Earned,
                TierChangeReason::Evaluation => Reason::Evaluation,
                TierChangeReason::Merge => Reason::Merge,
            } as i32,
            ..Default::default()
        },
        LoyaltyEvent::PointsExpiringSoon {
            customer,
            points,
            earliest_expires_at,
            ..
        } => pb::LoyaltyEvent {
            r#type: Type::PointsExpiringSoon as i32,
            account: account_name(customer),
            points: *points,
            earliest_expire_time: Some(timestamp(*earliest_expires_at)),
            ..Default::default()
        },
        LoyaltyEvent::RedemptionMade {
            customer,
            entry_id,
            points,
            reward,
            ..
        } => pb::LoyaltyEvent {
            r#type: Type::RedemptionMade as i32,
            account: account_name(customer),
            points: *points,
            redemption_entry_id: entry_id.as_str().to_owned(),
            reward: reward
                .as_ref()
                .map(|line| format!("rewards/{}", line.reward_id))
                .unwrap_or_default(),
            reward_quantity: reward
                .as_ref()
                .map_or(0, |line| i32::try_from(line.quantity).unwrap_or(i32::MAX)),
            ..Default::default()
        },
        LoyaltyEvent::RedemptionCancelled {
            customer,
            redemption_entry_id,
            points,
            ..
        } => pb::LoyaltyEvent {
            r#type: Type::RedemptionCancelled as i32,
            account: account_name(customer),
            points: *points,
            redemption_entry_id: redemption_entry_id.as_str().to_owned(),
            ..Default::default()
        },
    }
}
