//! The rules every account satisfies after every operation, checked from scratch.

use std::collections::HashSet;

use super::Account;
use crate::domain::ids::{EntryId, LotId};
use crate::domain::ledger::{EntryKind, LedgerEntry, LotChange, LotMovement};

/// Checks `account` and the accounts absorbed into it:
///
/// - every lot: `0 <= remaining <= original`, `remaining + expired <= original`,
///   `0 <= reversed <= original`, qualifying spend not negative, origin is the account's
///   customer or one merged into it; lot and entry ids unique across the whole tree;
/// - `balance = Σ remaining of matured lots = Σ balance_delta`, likewise `pending` and
///   `debt`; all three are never negative, and no origin holds zero debt;
/// - every entry: applied to this account, its deltas are its movements' effects, and its
///   kind's own sums hold (a redemption's consumed lots sum to its points, a reversal's
///   parts to its points, debt deltas match the debt incurred and paid);
/// - cancellations point at redemptions of this ledger; absorbed accounts hold no lots and
///   no debt and name this account as their survivor.
///
/// Needs the full ledger; meant for tests and for checking stored data.
pub fn check_invariants(account: &Account) -> Result<(), String> {
    let mut entry_ids = HashSet::new();
    let mut lot_ids = HashSet::new();
    check_account(account, &mut entry_ids, &mut lot_ids)
}

fn check_account(
    account: &Account,
    entry_ids: &mut HashSet<EntryId>,
    lot_ids: &mut HashSet<LotId>,
) -> Result<(), String> {
    let customer = account.customer();
    let customers = account.customers();
    for (key, lot) in &account.lots {
        let id = &lot.id;
        if key != id {
            return Err(format!("lot {id} is filed under {key}"));
        }
        if !lot_ids.insert(id.clone()) {
            return Err(format!("lot {id} appears twice"));
        }
        if lot.remaining_points < 0 || lot.remaining_points > lot.original_points {
            return Err(format!(
                "lot {id}: remaining {} outside 0..={}",
                lot.remaining_points, lot.original_points
            ));
        }
        if lot.expired_points < 0 || lot.remaining_points + lot.expired_points > lot.original_points {
            return Err(format!(
                "lot {id}: remaining {} + expired {} exceed original {}",
                lot.remaining_points, lot.expired_points, lot.original_points
            ));
        }
        if lot.reversed_points < 0 || lot.reversed_points > lot.original_points {
            return Err(format!(
                "lot {id}: reversed {} outside 0..={}",
                lot.reversed_points, lot.original_points
            ));
        }
        if lot.qualifying_spend_minor < 0 {
            return Err(format!("lot {id}: negative qualifying spend"));
        }
        if !customers.contains(&&lot.origin_customer) {
            return Err(format!(
                "lot {id} of {} is held by {customer}, which it was never merged into",
                lot.origin_customer
            ));
        }
    }

    let (mut balance_sum, mut pending_sum, mut debt_sum) = (0_i64, 0_i64, 0_i64);
    for entry in &account.entries {
        if !entry_ids.insert(entry.id.clone()) {
            return Err(format!("ledger entry {} appears twice", entry.id));
        }
        if &entry.customer != customer {
            return Err(format!(
                "entry {} of {} is in the ledger of {customer}",
                entry.id, entry.customer
            ));
        }
        check_entry(entry)
            .map_err(|reason| format!("entry {} ({}): {reason}", entry.id, entry.kind.name()))?;
        balance_sum += entry.balance_delta;
        pending_sum += entry.pending_delta;
        debt_sum += entry.debt_delta;
    }

    let (balance, pending, debt) = (account.balance(), account.pending_points(), account.debt());
    if balance < 0 || pending < 0 || debt < 0 {
        return Err(format!(
            "{customer}: negative total (balance {balance}, pending {pending}, debt {debt})"
        ));
    }
    if balance != balance_sum {
        return Err(format!(
            "{customer}: balance {balance} but ledger sums to {balance_sum}"
        ));
    }
    if pending != pending_sum {
        return Err(format!(
            "{customer}: pending {pending} but ledger sums to {pending_sum}"
        ));
    }
    if debt != debt_sum {
        return Err(format!("{customer}: debt {debt} but ledger sums to {debt_sum}"));
    }
    if let Some((origin, amount)) = account.debt_by_origin.iter().find(|(_, amount)| **amount <= 0) {
        return Err(format!("{customer}: debt of {amount} for {origin}"));
    }

    for (redemption, cancellation) in &account.redemption_cancellations {
        let is_redemption = account
            .entry_positions
            .get(redemption)
            .and_then(|position| account.entries.get(*position))
            .is_some_and(|entry| matches!(entry.kind, EntryKind::Redeem { .. }));
        if !is_redemption {
            return Err(format!(
                "{customer}: cancellation {cancellation} names {redemption}, not a redemption of this ledger"
            ));
        }
    }
    for (id, position) in &account.entry_positions {
        if account.entries.get(*position).is_none_or(|entry| &entry.id != id) {
            return Err(format!("{customer}: index of entry {id} is stale"));
        }
    }
    if account.entry_positions.len() != account.entries.len() {
        return Err(format!("{customer}: entry index and ledger differ in size"));
    }

    for absorbed in &account.absorbed {
        if absorbed.merged_into.as_ref() != Some(customer) {
            return Err(format!(
                "{} is absorbed by {customer} but marked merged into {:?}",
                absorbed.customer, absorbed.merged_into
            ));
        }
        if !absorbed.lots.is_empty() || !absorbed.debt_by_origin.is_empty() {
            return Err(format!("absorbed {} still holds lots or debt", absorbed.customer));
        }
        check_account(absorbed, entry_ids, lot_ids)?;
    }
    Ok(())
}

fn check_entry(entry: &LedgerEntry) -> Result<(), String> {
    let (balance, pending) = entry
        .movements
        .iter()
        .map(LotMovement::effect)
        .fold((0, 0), |(balance, pending), (on_balance, on_pending)| {
            (balance + on_balance, pending + on_pending)
        });
    if (balance, pending) != (entry.balance_delta, entry.pending_delta) {
        return Err(format!(
            "deltas ({}, {}) but movements add up to ({balance}, {pending})",
            entry.balance_delta, entry.pending_delta
        ));
    }
    for movement in &entry.movements {
        if movement.points < 0 {
            return Err(format!("negative movement on lot {}", movement.lot_id));
        }
        let takes_from_spendable = matches!(movement.change, LotChange::Consumed | LotChange::SettledDebt);
        if takes_from_spendable && (movement.points == 0 || movement.pending) {
            return Err(format!(
                "lot {} spent {} points while pending={}",
                movement.lot_id, movement.points, movement.pending
            ));
        }
    }

    let moved = |change| entry.points_moved(change);
    let only = |allowed: &[LotChange]| {
        entry
            .movements
            .iter()
            .all(|movement| allowed.contains(&movement.change))
    };
    let settled = moved(LotChange::SettledDebt);
    let ok = match &entry.kind {
        EntryKind::Earn { points, .. } => {
            only(&[LotChange::Created, LotChange::SettledDebt])
                && entry
                    .movements
                    .iter()
                    .filter(|movement| movement.change == LotChange::Created)
                    .map(|movement| movement.points)
                    .eq([*points])
                && entry.debt_delta == -settled
        }
        EntryKind::Redeem { points, .. } => {
            only(&[LotChange::Consumed]) && moved(LotChange::Consumed) == *points && entry.debt_delta == 0
        }
        EntryKind::CancelRedemption { points, .. } => {
            only(&[LotChange::Returned, LotChange::Created, LotChange::SettledDebt])
                && moved(LotChange::Returned) + moved(LotChange::Created) == *points
                && entry.debt_delta == -settled
        }
        EntryKind::RefundReversal {
            points,
            from_remaining,
            from_expired,
            shortfall,
            ..
        } => {
            only(&[
                LotChange::Reversed,
                LotChange::ReversedExpired,
                LotChange::SettledDebt,
            ]) && from_remaining + from_expired + shortfall == *points
                && moved(LotChange::Reversed) == *from_remaining
                && moved(LotChange::ReversedExpired) == *from_expired
                && entry.debt_delta == shortfall - settled
        }
        EntryKind::Expiry => only(&[LotChange::Expired]) && entry.debt_delta == 0,
        EntryKind::Maturity => {
            only(&[LotChange::Matured, LotChange::SettledDebt]) && entry.debt_delta == -settled
        }
        EntryKind::Adjust { points, .. } if *points > 0 => {
            only(&[LotChange::Created, LotChange::SettledDebt])
                && moved(LotChange::Created) == *points
                && entry.debt_delta == -settled
        }
        EntryKind::Adjust { points, .. } => {
            only(&[LotChange::Consumed]) && moved(LotChange::Consumed) == -*points && entry.debt_delta == 0
        }
        EntryKind::MergeIn { debt_moved, .. } => {
            only(&[LotChange::MovedIn, LotChange::SettledDebt]) && entry.debt_delta == debt_moved - settled
        }
        EntryKind::MergeOut { debt_moved, .. } => {
            only(&[LotChange::MovedOut]) && entry.debt_delta == -debt_moved
        }
    };
    if ok {
        Ok(())
    } else {
        Err(format!(
            "movements {:?} and debt delta {} do not match the kind {:?}",
            entry.movements, entry.debt_delta, entry.kind
        ))
    }
}
