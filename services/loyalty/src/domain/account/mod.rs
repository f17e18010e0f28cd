//! A member's account: its lots, its ledger, its debt and tier, and the operations that
//! change them.
//!
//! # Model
//!
//! - Points live in **lots**. A lot is `Pending` during the return window, then `Matured`;
//!   only matured lots whose `expires_at` is still ahead are spendable. Spends take lots
//!   in order of expiry (never-expiring last), then earn time, then lot id.
//! - `balance` is the sum of what remains in matured lots, `pending` of what remains in
//!   pending lots, and each equals the sum of the matching delta over the ledger. A matured
//!   lot past its `expires_at` still counts in `balance` until the expiry job runs (the
//!   ledger only changes through entries); [`Account::spendable_balance`] leaves it out. Run
//!   [`Operation::Mature`] and [`Operation::Expire`] before a spend when
//!   [`Account::maturity_due`] / [`Account::expiry_due`] say so.
//! - **Debt**: a refund reversal takes what remains of the accrual's lot; the part of it
//!   already spent is first taken from the member's other spendable points and only the
//!   rest becomes debt. Whenever points become spendable (an earn, a maturity, a positive
//!   adjustment, a cancelled redemption, a merge), outstanding debt is paid from them first,
//!   in the same entry. So `debt > 0` implies nothing is spendable, and the balance is never
//!   negative.
//! - **Merges**: the survivor takes the merged account's lots and debt (a MERGE_OUT on the
//!   merged account, a MERGE_IN on the survivor) and keeps the merged account itself, with
//!   its ledger, as an *absorbed* account: history, replay detection and cancellations see
//!   its entries. Lots remember their `origin_customer`, debt is kept per origin, so an
//!   unmerge moves back exactly the lots and debt that came from the merged customer (or
//!   were earned for it since), with what is left of them.
//!
//! An `Account` is the whole aggregate the rules need. The store may load less (the open
//! lots and the entries an operation refers to) as long as the operation finds what it
//! reads; [`check_invariants`] needs everything.

mod invariants;
mod merge;

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Months, Utc};

pub use invariants::check_invariants;
pub use merge::{merge, unmerge};

use super::error::DomainError;
use super::event::{LoyaltyEvent, TierChangeReason};
use super::ids::{CustomerId, EntryId, LotId};
use super::ledger::{EarnSource, EntryKind, LedgerEntry, Lot, LotChange, LotMovement, LotSource, LotState};
use super::operation::{Command, Earn, Operation, Outcome, Redeem, RefundReversal};
use super::program::{MAX_POINTS_PER_ENTRY, Program};
use super::tier;

pub const ADJUST_REASON_MAX_CHARS: usize = 500;

/// A member's account. Fields are private so every change goes through an entry; use
/// [`Account::into_parts`] / [`Account::from_parts`] to store and load one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    customer: CustomerId,
    lots: BTreeMap<LotId, Lot>,
    entries: Vec<LedgerEntry>,
    entry_positions: HashMap<EntryId, usize>,
    /// Outstanding debt per customer whose refund caused it; no zero amounts.
    debt_by_origin: BTreeMap<CustomerId, i64>,
    tier: Option<String>,
    tier_evaluated_at: DateTime<Utc>,
    /// Redemption entry id (in this ledger) -> the entry that cancelled it (in whichever
    /// account held the lots then). Kept with the redemption, so it follows an unmerge.
    redemption_cancellations: BTreeMap<EntryId, EntryId>,
    /// Accounts merged into this one, in merge order, frozen at the merge (no lots, no
    /// debt; their ledgers end with MERGE_OUT).
    absorbed: Vec<Account>,
    /// Set on an account merged into another.
    merged_into: Option<CustomerId>,
}

/// The stored form of an [`Account`], field for field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccountParts {
    pub customer: CustomerId,
    pub lots: Vec<Lot>,
    /// In the order they were applied.
    pub entries: Vec<LedgerEntry>,
    pub debt_by_origin: BTreeMap<CustomerId, i64>,
    pub tier: Option<String>,
    pub tier_evaluated_at: DateTime<Utc>,
    pub redemption_cancellations: BTreeMap<EntryId, EntryId>,
    pub absorbed: Vec<AccountParts>,
    pub merged_into: Option<CustomerId>,
}

impl Account {
    /// A new member, enrolled at `enrolled_at`, in the tier a qualifying value of 0 reaches
    /// (the first tier when its threshold is 0). The first tier evaluation is one evaluation
    /// period later.
    pub fn new(customer: CustomerId, program: &Program, enrolled_at: DateTime<Utc>) -> Self {
        Self {
            customer,
            lots: BTreeMap::new(),
            entries: Vec::new(),
            entry_positions: HashMap::new(),
            debt_by_origin: BTreeMap::new(),
            tier: tier::qualifying_tier(program, 0)
                .and_then(|rank| program.tiers.get(rank))
                .map(|tier| tier.name.clone()),
            tier_evaluated_at: enrolled_at,
            redemption_cancellations: BTreeMap::new(),
            absorbed: Vec::new(),
            merged_into: None,
        }
    }

    /// Rebuilds an account from stored parts; refuses duplicate ids and non-positive debt
    /// (the full rules are [`check_invariants`]).
    pub fn from_parts(parts: AccountParts) -> Result<Self, DomainError> {
        let mut lots = BTreeMap::new();
        for lot in parts.lots {
            let id = lot.id.clone();
            if lots.insert(id.clone(), lot).is_some() {
                return Err(DomainError::Inconsistent(format!("lot {id} appears twice")));
            }
        }
        let mut entry_positions = HashMap::new();
        for (position, entry) in parts.entries.iter().enumerate() {
            if entry_positions.insert(entry.id.clone(), position).is_some() {
                return Err(DomainError::Inconsistent(format!(
                    "ledger entry {} appears twice",
                    entry.id
                )));
            }
        }
        if let Some((origin, amount)) = parts.debt_by_origin.iter().find(|(_, amount)| **amount <= 0) {
            return Err(DomainError::Inconsistent(format!(
                "debt of {amount} points for {origin} is not positive"
            )));
        }
        let absorbed = parts
            .absorbed
            .into_iter()
            .map(Self::from_parts)
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            customer: parts.customer,
            lots,
            entries: parts.entries,
            entry_positions,
            debt_by_origin: parts.debt_by_origin,
            tier: parts.tier,
            tier_evaluated_at: parts.tier_evaluated_at,
            redemption_cancellations: parts.redemption_cancellations,
            absorbed,
            merged_into: parts.merged_into,
        })
    }

    pub fn into_parts(self) -> AccountParts {
        AccountParts {
            customer: self.customer,
            lots: self.lots.into_values().collect(),
            entries: self.entries,
            debt_by_origin: self.debt_by_origin,
            tier: self.tier,
            tier_evaluated_at: self.tier_evaluated_at,
            redemption_cancellations: self.redemption_cancellations,
            absorbed: self.absorbed.into_iter().map(Self::into_parts).collect(),
            merged_into: self.merged_into,
        }
    }

    pub fn customer(&self) -> &CustomerId {
        &self.customer
    }

    /// The survivor, when this account was merged into another.
    pub fn merged_into(&self) -> Option<&CustomerId> {
        self.merged_into.as_ref()
    }

    pub fn tier(&self) -> Option<&str> {
        self.tier.as_deref()
    }

    pub fn tier_evaluated_at(&self) -> DateTime<Utc> {
        self.tier_evaluated_at
    }

    /// Every lot the account owns (including used-up ones), by lot id.
    pub fn lots(&self) -> impl Iterator<Item = &Lot> {
        self.lots.values()
    }

    pub fn lot(&self, id: &LotId) -> Option<&Lot> {
        self.lots.get(id)
    }

    /// This account's own ledger, in application order (absorbed accounts' ledgers are in
    /// [`Account::absorbed`]).
    pub fn entries(&self) -> &[LedgerEntry] {
        &self.entries
    }

    /// Accounts merged into this one, frozen at their merge.
    pub fn absorbed(&self) -> &[Account] {
        &self.absorbed
    }

    /// Matured points left (including matured lots past expiry that the expiry job has not
    /// taken yet) = the sum of the ledger's balance deltas.
    pub fn balance(&self) -> i64 {
        self.sum_remaining(|lot| lot.state == LotState::Matured)
    }

    /// Points still in their return window.
    pub fn pending_points(&self) -> i64 {
        self.sum_remaining(|lot| lot.state == LotState::Pending)
    }

    /// Points a spend at `at` could take.
    pub fn spendable_balance(&self, at: DateTime<Utc>) -> i64 {
        self.sum_remaining(|lot| lot.is_spendable_at(at))
    }

    /// Points earned or granted, net of reversals; spends and expiry do not lower it.
    pub fn lifetime_points(&self) -> i64 {
        self.lots.values().map(Lot::lifetime_points).sum()
    }

    /// Points owed after refunds of spent points.
    pub fn debt(&self) -> i64 {
        self.debt_by_origin.values().sum()
    }

    /// Debt per customer whose refund caused it (an unmerge moves it back by origin).
    pub fn debt_by_origin(&self) -> &BTreeMap<CustomerId, i64> {
        &self.debt_by_origin
    }

    /// Whether some pending lot has reached its maturity at `at`.
    pub fn maturity_due(&self, at: DateTime<Utc>) -> bool {
        self.lots
            .values()
            .any(|lot| lot.state == LotState::Pending && lot.matures_at <= at)
    }

    /// Whether some lot with points left has reached its expiry at `at`.
    pub fn expiry_due(&self, at: DateTime<Utc>) -> bool {
        self.lots.values().any(|lot| is_expiry_due(lot, at))
    }

    /// Whether a tier evaluation is due at `now` (one evaluation period after the last).
    pub fn tier_evaluation_due(&self, program: &Program, now: DateTime<Utc>) -> bool {
        !program.tiers.is_empty()
            && self.merged_into.is_none()
            && self
                .tier_evaluated_at
                .checked_add_months(Months::new(program.tier_evaluation_period_months))
                .is_some_and(|due| due <= now)
    }

    /// The entry with this id in this account's ledger or an absorbed one.
    pub fn find_entry(&self, id: &EntryId) -> Option<&LedgerEntry> {
        if let Some(position) = self.entry_positions.get(id) {
            return self.entries.get(*position);
        }
        self.absorbed.iter().find_map(|absorbed| absorbed.find_entry(id))
    }

    /// The entry that cancelled this redemption, if any (in this or an absorbed ledger).
    pub fn redemption_cancelled_by(&self, redemption_entry_id: &EntryId) -> Option<&EntryId> {
        self.redemption_cancellations
            .get(redemption_entry_id)
            .or_else(|| {
                self.absorbed
                    .iter()
                    .find_map(|absorbed| absorbed.redemption_cancelled_by(redemption_entry_id))
            })
    }

    /// This account's customer and every customer merged into it, directly or not.
    pub fn customers(&self) -> Vec<&CustomerId> {
        let mut customers = vec![&self.customer];
        for absorbed in &self.absorbed {
            customers.extend(absorbed.customers());
        }
        customers
    }

    /// Applies one operation. On error nothing changed; on success the new entry is in the
    /// ledger and comes back with the events to publish. A command whose entry id exists
    /// returns that entry ([`Outcome::Replayed`]) if it is of the same kind, and
    /// [`DomainError::EntryIdReused`] if not; the payload is not compared, because an accrual
    /// re-delivered after a tier change would price differently and must still be a no-op.
    pub fn apply(&mut self, program: &Program, command: Command) -> Result<Outcome, DomainError> {
        let Command {
            entry_id,
            at,
            operation,
        } = command;
        if let Some(survivor) = &self.merged_into {
            return Err(DomainError::AccountMerged {
                customer: self.customer.clone(),
                survivor: survivor.clone(),
            });
        }
        entry_id.validate("entry_id")?;
        if let Some(existing) = self.find_entry(&entry_id) {
            if existing.kind.name() == operation.entry_kind_name() {
                return Ok(Outcome::Replayed {
                    entry: existing.clone(),
                });
            }
            return Err(DomainError::EntryIdReused {
                entry_id,
                existing_kind: existing.kind.name(),
            });
        }
        match operation {
            Operation::Earn(earn) => self.earn(program, entry_id, at, earn),
            Operation::Redeem(redeem) => self.redeem(entry_id, at, redeem),
            Operation::CancelRedemption { redemption_entry_id } => {
                self.cancel_redemption(program, entry_id, at, redemption_entry_id)
            }
            Operation::RefundReversal(reversal) => self.reverse_refund(entry_id, at, reversal),
            Operation::Expire => Ok(self.expire(entry_id, at)),
            Operation::Mature => Ok(self.mature(entry_id, at)),
            Operation::Adjust { points, reason } => self.adjust(program, entry_id, at, points, reason),
        }
    }

    /// The scheduled evaluation: the member gets the tier the qualifying value reaches at
    /// `now`, up or down (possibly several tiers down), and the evaluation clock restarts.
    /// Returns the change, if any.
    pub fn evaluate_tier(&mut self, program: &Program, now: DateTime<Utc>) -> Option<LoyaltyEvent> {
        if self.merged_into.is_some() {
            return None;
        }
        self.tier_evaluated_at = now;
        let qualified = tier::qualifying_tier(program, tier::qualifying_value(self, program, now))
            .and_then(|rank| program.tiers.get(rank))
            .map(|tier| tier.name.clone());
        if qualified == self.tier {
            return None;
        }
        let from_tier = std::mem::replace(&mut self.tier, qualified.clone());
        Some(LoyaltyEvent::TierChanged {
            customer: self.customer.clone(),
            from_tier,
            to_tier: qualified,
            reason: TierChangeReason::Evaluation,
            at: now,
        })
    }

    fn earn(
        &mut self,
        program: &Program,
        entry_id: EntryId,
        at: DateTime<Utc>,
        earn: Earn,
    ) -> Result<Outcome, DomainError> {
        check_points("points", earn.points, 0)?;
        let qualifying_spend_minor = match &earn.source {
            EarnSource::Purchase { spend_minor, .. } => {
                if *spend_minor < 0 {
                    return Err(DomainError::invalid("source.spend_minor", "must not be negative"));
                }
                *spend_minor
            }
            EarnSource::Referral { .. } | EarnSource::Other { .. } => 0,
        };
        let origin_customer = match earn.origin_customer {
            Some(origin) if !self.customers().contains(&&origin) => {
                return Err(DomainError::invalid(
                    "origin_customer",
                    format!("{origin} is neither {} nor merged into it", self.customer),
                ));
            }
            Some(origin) => origin,
            None => self.customer.clone(),
        };
        let lot_id = LotId::of_entry(&entry_id);
        self.refuse_existing_lot(&lot_id, &entry_id)?;
        let earned_at = earn.earned_at.min(at);
        let matures_at = program.matures_at(earned_at)?;
        let expires_at = program.expires_at(earned_at)?;
        let state = if matures_at > at {
            LotState::Pending
        } else {
            LotState::Matured
        };

        let mut movements = vec![LotMovement {
            lot_id: lot_id.clone(),
            change: LotChange::Created,
            points: earn.points,
            pending: state == LotState::Pending,
        }];
        self.lots.insert(
            lot_id.clone(),
            Lot {
                id: lot_id,
                origin_customer: origin_customer.clone(),
                source: LotSource::Earn,
                earned_at,
                matures_at,
                expires_at,
                state,
                original_points: earn.points,
                remaining_points: earn.points,
                expired_points: 0,
                reversed_points: 0,
                qualifying_spend_minor,
            },
        );
        let settled = self.settle_debt(at, &mut movements);
        let events = self.upgrade_tier(program, at).into_iter().collect();
        let kind = EntryKind::Earn {
            points: earn.points,
            earned_at,
            source: earn.source,
            origin_customer,
        };
        let entry = self.record(entry_id, at, kind, movements, -settled);
        Ok(Outcome::Applied { entry, events })
    }

    fn redeem(
        &mut self,
        entry_id: EntryId,
        at: DateTime<Utc>,
        redeem: Redeem,
    ) -> Result<Outcome, DomainError> {
        check_points("points", redeem.points, 1)?;
        if let Some(reward) = &redeem.reward {
            if reward.reward_id.trim().is_empty() {
                return Err(DomainError::invalid("reward.reward_id", "must not be empty"));
            }
            if reward.quantity == 0 {
                return Err(DomainError::invalid("reward.quantity", "must be at least 1"));
            }
        }
        let (plan, covered) = self.spend_plan(at, redeem.points);
        if covered < redeem.points {
            return Err(DomainError::InsufficientPoints {
                needed: redeem.points,
                available: covered,
            });
        }

        let mut movements = Vec::new();
        self.consume(&plan, LotChange::Consumed, &mut movements);
        let event = LoyaltyEvent::RedemptionMade {
            customer: self.customer.clone(),
            entry_id: entry_id.clone(),
            points: redeem.points,
            reward: redeem.reward.clone(),
            at,
        };
        let kind = EntryKind::Redeem {
            points: redeem.points,
            reward: redeem.reward,
        };
        let entry = self.record(entry_id, at, kind, movements, 0);
        Ok(Outcome::Applied {
            entry,
            events: vec![event],
        })
    }

    /// Gives the points back to the very lots they came from, so they keep their expiry: a
    /// lot that expired meanwhile gets its points back and the next expiry run takes them
    /// again (they are not spendable in between). A lot that has left the account (an
    /// unmerge moved it to the customer it came from) cannot be touched here; its points come
    /// back as a new matured lot that expires like an adjustment made now.
    fn cancel_redemption(
        &mut self,
        program: &Program,
        entry_id: EntryId,
        at: DateTime<Utc>,
        redemption_entry_id: EntryId,
    ) -> Result<Outcome, DomainError> {
        redemption_entry_id.validate("redemption_entry_id")?;
        let redemption = self
            .find_entry(&redemption_entry_id)
            .ok_or_else(|| DomainError::not_found(format!("ledger entry {redemption_entry_id}")))?;
        let EntryKind::Redeem { points, .. } = &redemption.kind else {
            return Err(DomainError::invalid(
                "redemption_entry_id",
                format!("names a {} entry, not a redemption", redemption.kind.name()),
            ));
        };
        if let Some(cancelled_by) = self.redemption_cancelled_by(&redemption_entry_id) {
            return Err(DomainError::AlreadyApplied {
                what: format!("cancellation of redemption {redemption_entry_id}"),
                by_entry_id: Some(cancelled_by.clone()),
            });
        }
        let points = *points;
        let consumed: Vec<(LotId, i64)> = redemption
            .movements
            .iter()
            .filter(|movement| movement.change == LotChange::Consumed)
            .map(|movement| (movement.lot_id.clone(), movement.points))
            .collect();
        let returned_expires_at = if consumed.iter().any(|(lot_id, _)| !self.lots.contains_key(lot_id)) {
            program.expires_at(at)?
        } else {
            None
        };
        for (lot_id, _) in &consumed {
            if !self.lots.contains_key(lot_id) {
                self.refuse_existing_lot(&LotId::returned(&entry_id, lot_id), &entry_id)?;
            }
        }

        let mut movements = Vec::new();
        for (lot_id, returned) in consumed {
            if let Some(lot) = self.lots.get_mut(&lot_id) {
                lot.remaining_points += returned;
                movements.push(LotMovement {
                    lot_id,
                    change: LotChange::Returned,
                    points: returned,
                    pending: lot.state == LotState::Pending,
                });
                continue;
            }
            let replacement_id = LotId::returned(&entry_id, &lot_id);
            movements.push(LotMovement {
                lot_id: replacement_id.clone(),
                change: LotChange::Created,
                points: returned,
                pending: false,
            });
            self.lots.insert(
                replacement_id.clone(),
                Lot {
                    id: replacement_id,
                    origin_customer: self.customer.clone(),
                    source: LotSource::Returned,
                    earned_at: at,
                    matures_at: at,
                    expires_at: returned_expires_at,
                    state: LotState::Matured,
                    original_points: returned,
                    remaining_points: returned,
                    expired_points: 0,
                    reversed_points: 0,
                    qualifying_spend_minor: 0,
                },
            );
        }
        if let Some(holder) = self.holder_of_entry_mut(&redemption_entry_id) {
            holder
                .redemption_cancellations
                .insert(redemption_entry_id.clone(), entry_id.clone());
        }
        let settled = self.settle_debt(at, &mut movements);
        let event = LoyaltyEvent::RedemptionCancelled {
            customer: self.customer.clone(),
            redemption_entry_id: redemption_entry_id.clone(),
            entry_id: entry_id.clone(),
            points,
            at,
        };
        let kind = EntryKind::CancelRedemption {
            redemption_entry_id,
            points,
        };
        let entry = self.record(entry_id, at, kind, movements, -settled);
        Ok(Outcome::Applied {
            entry,
            events: vec![event],
        })
    }

    /// Takes back `points` of an accrual: what remains of its lot first, then what of it
    /// already expired (the member lost those anyway), and the rest, which was spent, from
    /// the member's other spendable points; whatever those cannot cover becomes debt.
    fn reverse_refund(
        &mut self,
        entry_id: EntryId,
        at: DateTime<Utc>,
        reversal: RefundReversal,
    ) -> Result<Outcome, DomainError> {
        // 0 points is a refund too small to take a point back under the rounding: it still
        // records the refunded spend, which later refunds of the purchase count from.
        check_points("points", reversal.points, 0)?;
        reversal.accrual_entry_id.validate("accrual_entry_id")?;
        if reversal.refunded_spend_minor < 0 {
            return Err(DomainError::invalid(
                "refunded_spend_minor",
                "must not be negative",
            ));
        }
        if reversal.points == 0 && reversal.refunded_spend_minor == 0 {
            return Err(DomainError::invalid(
                "points",
                "a reversal must take back points or refunded spend",
            ));
        }
        let lot_id = LotId::of_entry(&reversal.accrual_entry_id);
        let lot = self
            .lots
            .get(&lot_id)
            .ok_or_else(|| DomainError::not_found(format!("accrual {}", reversal.accrual_entry_id)))?;
        if lot.source != LotSource::Earn {
            return Err(DomainError::invalid(
                "accrual_entry_id",
                "names points that were not earned (only accruals can be reversed)",
            ));
        }
        let reversible = lot.original_points - lot.reversed_points;
        if reversible == 0 && reversal.points > 0 {
            return Err(DomainError::AlreadyApplied {
                what: format!("reversal of all points of accrual {}", reversal.accrual_entry_id),
                by_entry_id: None,
            });
        }
        if reversal.points > reversible {
            return Err(DomainError::invalid(
                "points",
                format!(
                    "exceeds the {reversible} points of accrual {} not yet reversed",
                    reversal.accrual_entry_id
                ),
            ));
        }
        if reversal.refunded_spend_minor > lot.qualifying_spend_minor {
            return Err(DomainError::invalid(
                "refunded_spend_minor",
                format!(
                    "exceeds the {} of accrual {} not yet refunded",
                    lot.qualifying_spend_minor, reversal.accrual_entry_id
                ),
            ));
        }
        let from_remaining = reversal.points.min(lot.remaining_points);
        let from_expired = (reversal.points - from_remaining).min(lot.expired_points);
        let shortfall = reversal.points - from_remaining - from_expired;
        let pending = lot.state == LotState::Pending;
        let origin = lot.origin_customer.clone();

        let mut movements = Vec::new();
        if let Some(lot) = self.lots.get_mut(&lot_id) {
            lot.remaining_points -= from_remaining;
            lot.expired_points -= from_expired;
            lot.reversed_points += reversal.points;
            lot.qualifying_spend_minor -= reversal.refunded_spend_minor;
        }
        if from_remaining > 0 {
            movements.push(LotMovement {
                lot_id: lot_id.clone(),
                change: LotChange::Reversed,
                points: from_remaining,
                pending,
            });
        }
        if from_expired > 0 {
            movements.push(LotMovement {
                lot_id,
                change: LotChange::ReversedExpired,
                points: from_expired,
                pending,
            });
        }
        if shortfall > 0 {
            *self.debt_by_origin.entry(origin).or_insert(0) += shortfall;
        }
        let settled = self.settle_debt(at, &mut movements);
        let kind = EntryKind::RefundReversal {
            accrual_entry_id: reversal.accrual_entry_id,
            points: reversal.points,
            from_remaining,
            from_expired,
            shortfall,
            refunded_spend_minor: reversal.refunded_spend_minor,
        };
        let entry = self.record(entry_id, at, kind, movements, shortfall - settled);
        Ok(Outcome::Applied {
            entry,
            events: Vec::new(),
        })
    }

    /// One entry per run, one movement per expired lot (pending ones included, should an
    /// expiry ever come before maturity).
    fn expire(&mut self, entry_id: EntryId, at: DateTime<Utc>) -> Outcome {
        let mut movements = Vec::new();
        for lot in self.lots.values_mut().filter(|lot| is_expiry_due(lot, at)) {
            movements.push(LotMovement {
                lot_id: lot.id.clone(),
                change: LotChange::Expired,
                points: lot.remaining_points,
                pending: lot.state == LotState::Pending,
            });
            lot.expired_points += lot.remaining_points;
            lot.remaining_points = 0;
        }
        if movements.is_empty() {
            return Outcome::NothingDue;
        }
        let entry = self.record(entry_id, at, EntryKind::Expiry, movements, 0);
        Outcome::Applied {
            entry,
            events: Vec::new(),
        }
    }

    fn mature(&mut self, entry_id: EntryId, at: DateTime<Utc>) -> Outcome {
        let mut movements = Vec::new();
        for lot in self.lots.values_mut() {
            if lot.state == LotState::Pending && lot.matures_at <= at {
                lot.state = LotState::Matured;
                movements.push(LotMovement {
                    lot_id: lot.id.clone(),
                    change: LotChange::Matured,
                    points: lot.remaining_points,
                    pending: true,
                });
            }
        }
        if movements.is_empty() {
            return Outcome::NothingDue;
        }
        let settled = self.settle_debt(at, &mut movements);
        let entry = self.record(entry_id, at, EntryKind::Maturity, movements, -settled);
        Outcome::Applied {
            entry,
            events: Vec::new(),
        }
    }

    /// Positive: a matured lot expiring like points earned now (never qualifying for tiers).
    /// Negative: consumed like a spend, refused beyond the spendable balance.
    fn adjust(
        &mut self,
        program: &Program,
        entry_id: EntryId,
        at: DateTime<Utc>,
        points: i64,
        reason: String,
    ) -> Result<Outcome, DomainError> {
        if points == 0 || points.unsigned_abs() > MAX_POINTS_PER_ENTRY.unsigned_abs() {
            return Err(DomainError::invalid(
                "points",
                format!("must be non-zero and at most {MAX_POINTS_PER_ENTRY} either way"),
            ));
        }
        let reason = reason.trim().to_owned();
        if reason.is_empty() {
            return Err(DomainError::invalid("reason", "is required for an adjustment"));
        }
        if reason.chars().count() > ADJUST_REASON_MAX_CHARS {
            return Err(DomainError::invalid(
                "reason",
                format!("must be at most {ADJUST_REASON_MAX_CHARS} characters"),
            ));
        }

        let mut movements = Vec::new();
        let debt_delta = if points > 0 {
            let lot_id = LotId::of_entry(&entry_id);
            self.refuse_existing_lot(&lot_id, &entry_id)?;
            let expires_at = program.expires_at(at)?;
            movements.push(LotMovement {
                lot_id: lot_id.clone(),
                change: LotChange::Created,
                points,
                pending: false,
            });
            self.lots.insert(
                lot_id.clone(),
                Lot {
                    id: lot_id,
                    origin_customer: self.customer.clone(),
                    source: LotSource::Adjust,
                    earned_at: at,
                    matures_at: at,
                    expires_at,
                    state: LotState::Matured,
                    original_points: points,
                    remaining_points: points,
                    expired_points: 0,
                    reversed_points: 0,
                    qualifying_spend_minor: 0,
                },
            );
            -self.settle_debt(at, &mut movements)
        } else {
            let wanted = -points;
            let (plan, covered) = self.spend_plan(at, wanted);
            if covered < wanted {
                return Err(DomainError::InsufficientPoints {
                    needed: wanted,
                    available: covered,
                });
            }
            self.consume(&plan, LotChange::Consumed, &mut movements);
            0
        };
        let entry = self.record(
            entry_id,
            at,
            EntryKind::Adjust { points, reason },
            movements,
            debt_delta,
        );
        Ok(Outcome::Applied {
            entry,
            events: Vec::new(),
        })
    }

    fn sum_remaining(&self, include: impl Fn(&Lot) -> bool) -> i64 {
        self.lots
            .values()
            .filter(|lot| include(lot))
            .map(|lot| lot.remaining_points)
            .sum()
    }

    /// A lot id in use means the entry was applied where this account cannot see it (an
    /// accrual recorded on the survivor before an unmerge): applied, not to repeat.
    fn refuse_existing_lot(&self, lot_id: &LotId, entry_id: &EntryId) -> Result<(), DomainError> {
        if self.lots.contains_key(lot_id) {
            return Err(DomainError::AlreadyApplied {
                what: format!("lot {lot_id} of entry {entry_id}"),
                by_entry_id: None,
            });
        }
        Ok(())
    }

    /// Up to `points` from spendable lots in spend order; returns the plan and how much it
    /// covers.
    fn spend_plan(&self, at: DateTime<Utc>, points: i64) -> (Vec<(LotId, i64)>, i64) {
        let mut candidates: Vec<&Lot> = self.lots.values().filter(|lot| lot.is_spendable_at(at)).collect();
        candidates.sort_by(|left, right| spend_order_key(left).cmp(&spend_order_key(right)));
        let mut plan = Vec::new();
        let mut left = points;
        for lot in candidates {
            if left <= 0 {
                break;
            }
            let take = left.min(lot.remaining_points);
            plan.push((lot.id.clone(), take));
            left -= take;
        }
        (plan, points - left)
    }

    fn consume(&mut self, plan: &[(LotId, i64)], change: LotChange, movements: &mut Vec<LotMovement>) {
        for (lot_id, points) in plan {
            if let Some(lot) = self.lots.get_mut(lot_id) {
                lot.remaining_points -= points;
                movements.push(LotMovement {
                    lot_id: lot_id.clone(),
                    change,
                    points: *points,
                    pending: false,
                });
            }
        }
    }

    /// Pays outstanding debt from spendable points at `at`; returns the points paid.
    fn settle_debt(&mut self, at: DateTime<Utc>, movements: &mut Vec<LotMovement>) -> i64 {
        let owed = self.debt();
        if owed <= 0 {
            return 0;
        }
        let (plan, paid) = self.spend_plan(at, owed);
        if paid == 0 {
            return 0;
        }
        self.consume(&plan, LotChange::SettledDebt, movements);
        let mut left = paid;
        for amount in self.debt_by_origin.values_mut() {
            let share = left.min(*amount);
            *amount -= share;
            left -= share;
        }
        self.debt_by_origin.retain(|_, amount| *amount > 0);
        paid
    }

    /// Appends an entry whose balance and pending deltas are its movements' effects.
    fn record(
        &mut self,
        id: EntryId,
        at: DateTime<Utc>,
        kind: EntryKind,
        movements: Vec<LotMovement>,
        debt_delta: i64,
    ) -> LedgerEntry {
        let (balance_delta, pending_delta) = movements
            .iter()
            .map(LotMovement::effect)
            .fold((0, 0), |(balance, pending), (on_balance, on_pending)| {
                (balance + on_balance, pending + on_pending)
            });
        let entry = LedgerEntry {
            id,
            customer: self.customer.clone(),
            at,
            kind,
            movements,
            balance_delta,
            pending_delta,
            debt_delta,
        };
        self.entry_positions.insert(entry.id.clone(), self.entries.len());
        self.entries.push(entry.clone());
        entry
    }

    /// Upgrades at once when the qualifying value reaches a higher tier.
    fn upgrade_tier(&mut self, program: &Program, at: DateTime<Utc>) -> Option<LoyaltyEvent> {
        let qualified = tier::qualifying_tier(program, tier::qualifying_value(self, program, at));
        self.raise_tier(program, qualified, at, TierChangeReason::Earned)
    }

    /// Moves to the tier of rank `candidate` if it is above the current one.
    fn raise_tier(
        &mut self,
        program: &Program,
        candidate: Option<usize>,
        at: DateTime<Utc>,
        reason: TierChangeReason,
    ) -> Option<LoyaltyEvent> {
        let candidate = candidate?;
        let current = self
            .tier
            .as_deref()
            .and_then(|name| program.tier(name))
            .map(|(rank, _)| rank);
        if current.is_some_and(|current| current >= candidate) {
            return None;
        }
        let to_tier = program.tiers.get(candidate)?.name.clone();
        let from_tier = self.tier.replace(to_tier.clone());
        Some(LoyaltyEvent::TierChanged {
            customer: self.customer.clone(),
            from_tier,
            to_tier: Some(to_tier),
            reason,
            at,
        })
    }

    fn holder_of_entry_mut(&mut self, id: &EntryId) -> Option<&mut Account> {
        if self.entry_positions.contains_key(id) {
            return Some(self);
        }
        self.absorbed
            .iter_mut()
            .find_map(|absorbed| absorbed.holder_of_entry_mut(id))
    }
}

/// The order spends take lots in: soonest expiry first (never-expiring last), then earliest
/// earned, then lot id, so the order is total and the same on every replica.
pub fn spend_order_key(lot: &Lot) -> (bool, Option<DateTime<Utc>>, DateTime<Utc>, &LotId) {
    (lot.expires_at.is_none(), lot.expires_at, lot.earned_at, &lot.id)
}

fn is_expiry_due(lot: &Lot, at: DateTime<Utc>) -> bool {
    lot.remaining_points > 0 && lot.expires_at.is_some_and(|expires_at| expires_at <= at)
}

fn check_points(field: &str, points: i64, minimum: i64) -> Result<(), DomainError> {
    if !(minimum..=MAX_POINTS_PER_ENTRY).contains(&points) {
        return Err(DomainError::invalid(
            field,
            format!("must be between {minimum} and {MAX_POINTS_PER_ENTRY}"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests;
