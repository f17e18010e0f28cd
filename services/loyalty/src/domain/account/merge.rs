//! Merge and unmerge: moving lots, debt and history between two accounts.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use super::Account;
use crate::domain::error::DomainError;
use crate::domain::event::TierChangeReason;
use crate::domain::ids::{CustomerId, EntryId, LotId};
use crate::domain::ledger::{EntryKind, Lot, LotChange, LotMovement, LotState};
use crate::domain::operation::{MergeCommand, MergeOutcome, UnmergeOutcome};
use crate::domain::program::Program;
use crate::domain::tier;

/// Merges `merged` into `survivor`: every lot and all debt of `merged` move to the survivor
/// (MERGE_OUT on `merged`, MERGE_IN on the survivor, which then pays debt from spendable
/// points as usual). The merged account, with its ledger, becomes an absorbed account of
/// the survivor; `merged` is left as an empty account marked merged into the survivor
/// (apply refuses it). The survivor keeps the higher of both tiers, or the tier the combined
/// qualifying value reaches if higher still.
///
/// A re-delivered merge (its MERGE_IN entry exists on the survivor) is a replay. On error
/// neither account changed.
pub fn merge(
    survivor: &mut Account,
    merged: &mut Account,
    program: &Program,
    command: MergeCommand,
) -> Result<MergeOutcome, DomainError> {
    let MergeCommand {
        in_entry_id,
        out_entry_id,
        at,
    } = command;
    validate_entry_ids(&in_entry_id, &out_entry_id)?;
    if let Some(existing) = survivor.find_entry(&in_entry_id) {
        return match &existing.kind {
            EntryKind::MergeIn {
                counterpart,
                unmerge: false,
                ..
            } if counterpart == &merged.customer => Ok(MergeOutcome::Replayed {
                in_entry: existing.clone(),
            }),
            other => Err(DomainError::EntryIdReused {
                entry_id: in_entry_id,
                existing_kind: other.name(),
            }),
        };
    }
    for account in [&*survivor, &*merged] {
        if let Some(into) = &account.merged_into {
            return Err(DomainError::AccountMerged {
                customer: account.customer.clone(),
                survivor: into.clone(),
            });
        }
    }
    if survivor.customer == merged.customer {
        return Err(DomainError::invalid(
            "merged_customer",
            "must differ from the survivor",
        ));
    }
    for (id, account) in [
        (&out_entry_id, &*survivor),
        (&out_entry_id, &*merged),
        (&in_entry_id, &*merged),
    ] {
        if let Some(existing) = account.find_entry(id) {
            return Err(DomainError::EntryIdReused {
                entry_id: id.clone(),
                existing_kind: existing.kind.name(),
            });
        }
    }
    let survivor_customers = survivor.customers();
    if let Some(shared) = merged
        .customers()
        .into_iter()
        .find(|customer| survivor_customers.contains(customer))
    {
        return Err(DomainError::Inconsistent(format!(
            "customer {shared} is part of both accounts"
        )));
    }
    if let Some(shared) = merged
        .lots
        .keys()
        .find(|lot_id| survivor.lots.contains_key(*lot_id))
    {
        return Err(DomainError::Inconsistent(format!(
            "lot {shared} is in both accounts"
        )));
    }

    let debt_moved = merged.debt();
    let moved_lots = std::mem::take(&mut merged.lots);
    let moved_debt = std::mem::take(&mut merged.debt_by_origin);
    let out_kind = EntryKind::MergeOut {
        counterpart: survivor.customer.clone(),
        unmerge: false,
        debt_moved,
    };
    let out_entry = merged.record(
        out_entry_id,
        at,
        out_kind,
        movements(&moved_lots, LotChange::MovedOut),
        -debt_moved,
    );
    merged.merged_into = Some(survivor.customer.clone());
    let husk = Account {
        customer: merged.customer.clone(),
        lots: BTreeMap::new(),
        entries: Vec::new(),
        entry_positions: HashMap::new(),
        debt_by_origin: BTreeMap::new(),
        tier: None,
        tier_evaluated_at: merged.tier_evaluated_at,
        redemption_cancellations: BTreeMap::new(),
        absorbed: Vec::new(),
        merged_into: Some(survivor.customer.clone()),
    };
    let frozen = std::mem::replace(merged, husk);
    let merged_rank = frozen
        .tier
        .as_deref()
        .and_then(|name| program.tier(name))
        .map(|(rank, _)| rank);
    let merged_customer = frozen.customer.clone();

    let mut in_movements = movements(&moved_lots, LotChange::MovedIn);
    survivor.lots.extend(moved_lots);
    add_debt(&mut survivor.debt_by_origin, moved_debt);
    let settled = survivor.settle_debt(at, &mut in_movements);
    survivor.absorbed.push(frozen);
    let qualified_rank = tier::qualifying_tier(program, tier::qualifying_value(survivor, program, at));
    let events = survivor
        .raise_tier(
            program,
            merged_rank.max(qualified_rank),
            at,
            TierChangeReason::Merge,
        )
        .into_iter()
        .collect();
    let in_kind = EntryKind::MergeIn {
        counterpart: merged_customer,
        unmerge: false,
        debt_moved,
    };
    let in_entry = survivor.record(in_entry_id, at, in_kind, in_movements, debt_moved - settled);
    Ok(MergeOutcome::Applied {
        in_entry,
        out_entry,
        events,
    })
}

/// Undoes the merge of `merged_customer` (merged into `survivor` directly or through another
/// merged customer): its absorbed account comes back to life with the lots whose origin is
/// it (or a customer merged into it) and the debt those customers caused, each with what is
/// left of it now. Spends, expiries and debt payments made while merged stay as they were:
/// they were made by the merged member and are in the survivor's history. The restored
/// account keeps the tier it had when merged; the survivor keeps its tier until its next
/// evaluation.
///
/// A re-delivered unmerge (its MERGE_OUT entry exists on the survivor) is a replay. On
/// error nothing changed.
pub fn unmerge(
    survivor: &mut Account,
    merged_customer: &CustomerId,
    command: MergeCommand,
) -> Result<UnmergeOutcome, DomainError> {
    let MergeCommand {
        in_entry_id,
        out_entry_id,
        at,
    } = command;
    validate_entry_ids(&in_entry_id, &out_entry_id)?;
    if let Some(existing) = survivor.find_entry(&out_entry_id) {
        return match &existing.kind {
            EntryKind::MergeOut {
                counterpart,
                unmerge: true,
                ..
            } if counterpart == merged_customer => Ok(UnmergeOutcome::Replayed {
                out_entry: existing.clone(),
            }),
            other => Err(DomainError::EntryIdReused {
                entry_id: out_entry_id,
                existing_kind: other.name(),
            }),
        };
    }
    if let Some(into) = &survivor.merged_into {
        return Err(DomainError::AccountMerged {
            customer: survivor.customer.clone(),
            survivor: into.clone(),
        });
    }
    if let Some(existing) = survivor.find_entry(&in_entry_id) {
        return Err(DomainError::EntryIdReused {
            entry_id: in_entry_id,
            existing_kind: existing.kind.name(),
        });
    }
    let Some(mut restored) = take_absorbed(survivor, merged_customer) else {
        return Err(DomainError::not_found(format!(
            "merge of customer {merged_customer} into {}",
            survivor.customer
        )));
    };

    let origins: BTreeSet<CustomerId> = restored.customers().into_iter().cloned().collect();
    let leaving: Vec<_> = survivor
        .lots
        .values()
        .filter(|lot| origins.contains(&lot.origin_customer))
        .map(|lot| lot.id.clone())
        .collect();
    let moved_lots: BTreeMap<_, _> = leaving
        .into_iter()
        .filter_map(|lot_id| survivor.lots.remove_entry(&lot_id))
        .collect();
    let moved_debt: BTreeMap<CustomerId, i64> = origins
        .iter()
        .filter_map(|origin| survivor.debt_by_origin.remove_entry(origin))
        .collect();
    let debt_moved: i64 = moved_debt.values().sum();

    let out_kind = EntryKind::MergeOut {
        counterpart: restored.customer.clone(),
        unmerge: true,
        debt_moved,
    };
    let out_entry = survivor.record(
        out_entry_id,
        at,
        out_kind,
        movements(&moved_lots, LotChange::MovedOut),
        -debt_moved,
    );

    restored.merged_into = None;
    let mut in_movements = movements(&moved_lots, LotChange::MovedIn);
    restored.lots.extend(moved_lots);
    add_debt(&mut restored.debt_by_origin, moved_debt);
    let settled = restored.settle_debt(at, &mut in_movements);
    let in_kind = EntryKind::MergeIn {
        counterpart: survivor.customer.clone(),
        unmerge: true,
        debt_moved,
    };
    let in_entry = restored.record(in_entry_id, at, in_kind, in_movements, debt_moved - settled);
    Ok(UnmergeOutcome::Applied {
        restored: Box::new(restored),
        out_entry,
        in_entry,
        events: Vec::new(),
    })
}

fn validate_entry_ids(in_entry_id: &EntryId, out_entry_id: &EntryId) -> Result<(), DomainError> {
    in_entry_id.validate("in_entry_id")?;
    out_entry_id.validate("out_entry_id")?;
    if in_entry_id == out_entry_id {
        return Err(DomainError::invalid(
            "out_entry_id",
            "must differ from in_entry_id",
        ));
    }
    Ok(())
}

/// One movement per lot, carrying what remains of it.
fn movements(lots: &BTreeMap<LotId, Lot>, change: LotChange) -> Vec<LotMovement> {
    lots.values()
        .map(|lot| LotMovement {
            lot_id: lot.id.clone(),
            change,
            points: lot.remaining_points,
            pending: lot.state == LotState::Pending,
        })
        .collect()
}

fn add_debt(debt_by_origin: &mut BTreeMap<CustomerId, i64>, moved: BTreeMap<CustomerId, i64>) {
    for (origin, amount) in moved {
        *debt_by_origin.entry(origin).or_insert(0) += amount;
    }
}

fn take_absorbed(account: &mut Account, customer: &CustomerId) -> Option<Account> {
    if let Some(position) = account
        .absorbed
        .iter()
        .position(|absorbed| &absorbed.customer == customer)
    {
        return Some(account.absorbed.remove(position));
    }
    account
        .absorbed
        .iter_mut()
        .find_map(|absorbed| take_absorbed(absorbed, customer))
}
