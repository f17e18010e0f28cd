//! A state-machine test: random sequences of earn, redeem, cancel, refund, time passing,
//! expiry, maturity, merge, unmerge, adjust and replay on two customers (bob merges into
//! ann and back), run against the domain and against a deliberately plain reference model:
//! a flat list of lots with an owner, spent first-to-expire first. After every step the
//! invariants must hold and every balance, pending total, debt and lot must agree.

use std::collections::BTreeMap;

use chrono::{DateTime, Months, TimeDelta, Utc};
use proptest::prelude::*;
use proptest::test_runner::Config;

use super::program::tests::sample_program;
use super::*;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Who {
    Ann,
    Bob,
}

impl Who {
    fn customer(self) -> CustomerId {
        match self {
            Self::Ann => CustomerId::from("ann"),
            Self::Bob => CustomerId::from("bob"),
        }
    }
}

#[derive(Debug, Clone)]
enum Step {
    /// A purchase made `back_days` ago (imported late when more than 0).
    Earn {
        who: Who,
        points: i64,
        back_days: i64,
    },
    Redeem {
        who: Who,
        points: i64,
    },
    Cancel {
        pick: usize,
    },
    Refund {
        pick: usize,
        percent: i64,
    },
    Advance {
        days: i64,
    },
    Expire,
    Mature,
    Merge,
    Unmerge,
    Adjust {
        who: Who,
        points: i64,
    },
    /// The tenant changes the expiry period; existing lots keep their dates, so lots earned
    /// later may expire sooner.
    SetExpiry {
        months: u32,
    },
    /// Re-applies the previous step's command, which must change nothing.
    Replay,
}

fn step() -> impl Strategy<Value = Step> {
    let who = prop_oneof![Just(Who::Ann), Just(Who::Bob)];
    prop_oneof![
        5 => (who.clone(), 0..300_i64, prop_oneof![3 => Just(0_i64), 1 => 1..20_i64])
            .prop_map(|(who, points, back_days)| Step::Earn { who, points, back_days }),
        4 => (who.clone(), 1..250_i64).prop_map(|(who, points)| Step::Redeem { who, points }),
        3 => any::<usize>().prop_map(|pick| Step::Cancel { pick }),
        2 => (any::<usize>(), 1..=120_i64).prop_map(|(pick, percent)| Step::Refund { pick, percent }),
        3 => (1..45_i64).prop_map(|days| Step::Advance { days }),
        1 => Just(Step::Expire),
        3 => Just(Step::Mature),
        2 => Just(Step::Merge),
        2 => Just(Step::Unmerge),
        2 => (who, prop_oneof![-200..0_i64, 1..200_i64]).prop_map(|(who, points)| Step::Adjust { who, points }),
        1 => Just(Step::Replay),
        1 => (0..=3_u32).prop_map(|months| Step::SetExpiry { months }),
    ]
}

#[derive(Debug, Clone)]
struct ModelLot {
    id: String,
    owner: Who,
    origin: Who,
    earned_at: DateTime<Utc>,
    matures_at: DateTime<Utc>,
    expires_at: Option<DateTime<Utc>>,
    matured: bool,
    original: i64,
    remaining: i64,
    expired: i64,
    reversed: i64,
    /// Created by an earn, so a refund may reverse it.
    reversible: bool,
}

#[derive(Debug, Clone)]
struct ModelRedemption {
    id: String,
    /// The account it was applied to.
    account: Who,
    consumed: Vec<(String, i64)>,
    cancelled: bool,
}

/// The reference: no ledger, no entries, just lots and debts.
#[derive(Debug, Clone)]
struct Model {
    pending_days: i64,
    expiry_months: u32,
    now: DateTime<Utc>,
    merged: bool,
    lots: Vec<ModelLot>,
    /// (owner, origin) -> points owed.
    debt: BTreeMap<(Who, Who), i64>,
    redemptions: Vec<ModelRedemption>,
}

impl Model {
    fn resolve(&self, who: Who) -> Who {
        if self.merged { Who::Ann } else { who }
    }

    fn expires_at(&self, from: DateTime<Utc>) -> Option<DateTime<Utc>> {
        (self.expiry_months > 0).then(|| from.checked_add_months(Months::new(self.expiry_months)).unwrap())
    }

    /// A lot earned at `earned_at`. Lots `from_earn` wait out the pending period and can
    /// be reversed by a refund; adjustments and returned points can't.
    fn new_lot(
        &mut self,
        id: &str,
        owner: Who,
        origin: Who,
        points: i64,
        earned_at: DateTime<Utc>,
        from_earn: bool,
    ) {
        let matures_at = if from_earn {
            earned_at + TimeDelta::days(self.pending_days)
        } else {
            earned_at
        };
        self.lots.push(ModelLot {
            id: id.to_owned(),
            owner,
            origin,
            earned_at,
            matures_at,
            expires_at: self.expires_at(earned_at),
            matured: matures_at <= self.now,
            original: points,
            remaining: points,
            expired: 0,
            reversed: 0,
            reversible: from_earn,
        });
    }

    /// Indices of the owner's spendable lots, first to spend first.
    fn spendable(&self, owner: Who) -> Vec<usize> {
        let mut indices: Vec<usize> = (0..self.lots.len())
            .filter(|index| {
                let lot = &self.lots[*index];
                lot.owner == owner
                    && lot.matured
                    && lot.remaining > 0
                    && lot.expires_at.is_none_or(|expires_at| expires_at > self.now)
            })
            .collect();
        indices.sort_by_key(|index| {
            let lot = &self.lots[*index];
            (
                lot.expires_at.is_none(),
                lot.expires_at,
                lot.earned_at,
                lot.id.clone(),
            )
        });
        indices
    }

    fn spendable_total(&self, owner: Who) -> i64 {
        self.spendable(owner)
            .iter()
            .map(|index| self.lots[*index].remaining)
            .sum()
    }

    fn take(&mut self, owner: Who, points: i64) -> Vec<(String, i64)> {
        let mut left = points;
        let mut taken = Vec::new();
        for index in self.spendable(owner) {
            if left == 0 {
                break;
            }
            let lot = &mut self.lots[index];
            let share = left.min(lot.remaining);
            lot.remaining -= share;
            left -= share;
            taken.push((lot.id.clone(), share));
        }
        assert_eq!(left, 0, "model took more than spendable");
        taken
    }

    fn debt_of(&self, owner: Who) -> i64 {
        self.debt
            .iter()
            .filter(|((debtor, _), _)| *debtor == owner)
            .map(|(_, amount)| amount)
            .sum()
    }

    fn settle(&mut self, owner: Who) {
        let pay = self.debt_of(owner).min(self.spendable_total(owner));
        if pay == 0 {
            return;
        }
        self.take(owner, pay);
        let mut left = pay;
        for ((debtor, _), amount) in self.debt.iter_mut() {
            if *debtor == owner {
                let share = left.min(*amount);
                *amount -= share;
                left -= share;
            }
        }
        self.debt.retain(|_, amount| *amount > 0);
    }

    fn balance(&self, owner: Who) -> i64 {
        self.lots
            .iter()
            .filter(|lot| lot.owner == owner && lot.matured)
            .map(|lot| lot.remaining)
            .sum()
    }

    fn pending(&self, owner: Who) -> i64 {
        self.lots
            .iter()
            .filter(|lot| lot.owner == owner && !lot.matured)
            .map(|lot| lot.remaining)
            .sum()
    }

    fn lots_of(&self, owner: Who) -> BTreeMap<String, (i64, bool)> {
        self.lots
            .iter()
            .filter(|lot| lot.owner == owner)
            .map(|lot| (lot.id.clone(), (lot.remaining, lot.matured)))
            .collect()
    }
}

struct Harness {
    program: Program,
    ann: Account,
    bob: Account,
    model: Model,
    next_id: u64,
    /// The previous step's command and where it went, for `Replay`.
    last: Option<(Who, Command)>,
}

impl Harness {
    fn new(pending_days: u32, expiry_months: u32) -> Self {
        let program = Program {
            pending_days,
            expiry_months,
            ..sample_program()
        };
        program.validate().unwrap();
        let start: DateTime<Utc> = "2026-01-01T00:00:00Z".parse().unwrap();
        Self {
            ann: Account::new(Who::Ann.customer(), &program, start),
            bob: Account::new(Who::Bob.customer(), &program, start),
            model: Model {
                pending_days: i64::from(pending_days),
                expiry_months,
                now: start,
                merged: false,
                lots: Vec::new(),
                debt: BTreeMap::new(),
                redemptions: Vec::new(),
            },
            program,
            next_id: 0,
            last: None,
        }
    }

    fn fresh_id(&mut self) -> String {
        self.next_id += 1;
        format!("e{}", self.next_id)
    }

    fn account(&mut self, who: Who) -> &mut Account {
        match who {
            Who::Ann => &mut self.ann,
            Who::Bob => &mut self.bob,
        }
    }

    fn apply(&mut self, who: Who, id: &str, operation: Operation) -> Result<Outcome, DomainError> {
        let command = Command {
            entry_id: EntryId::from(id),
            at: self.model.now,
            operation,
        };
        let program = self.program.clone();
        let result = self.account(who).apply(&program, command.clone());
        if matches!(result, Ok(Outcome::Applied { .. })) {
            self.last = Some((who, command));
        }
        result
    }

    fn run(&mut self, step: &Step) {
        let previous = self.last.take();
        match *step {
            Step::Earn {
                who,
                points,
                back_days,
            } => {
                let id = self.fresh_id();
                let target = self.model.resolve(who);
                let earned_at = self.model.now - TimeDelta::days(back_days);
                let operation = Operation::Earn(Earn {
                    points,
                    earned_at,
                    source: EarnSource::Purchase {
                        purchase_id: id.clone(),
                        spend_minor: points * 100,
                        campaign_awards: Vec::new(),
                    },
                    origin_customer: Some(who.customer()),
                });
                let outcome = self.apply(target, &id, operation);
                assert!(matches!(outcome, Ok(Outcome::Applied { .. })), "{outcome:?}");
                self.model.new_lot(&id, target, who, points, earned_at, true);
                self.model.settle(target);
            }
            Step::Redeem { who, points } => {
                let id = self.fresh_id();
                let target = self.model.resolve(who);
                let spendable = self.model.spendable_total(target);
                let operation = Operation::Redeem(Redeem { points, reward: None });
                let outcome = self.apply(target, &id, operation);
                if points > spendable {
                    assert_eq!(
                        outcome,
                        Err(DomainError::InsufficientPoints {
                            needed: points,
                            available: spendable,
                        })
                    );
                    return;
                }
                let consumed = self.model.take(target, points);
                let entry = outcome.as_ref().ok().and_then(Outcome::entry).cloned();
                let movements: Vec<(String, i64)> = entry
                    .map(|entry| {
                        entry
                            .movements
                            .iter()
                            .map(|movement| (movement.lot_id.to_string(), movement.points))
                            .collect()
                    })
                    .unwrap_or_default();
                assert_eq!(movements, consumed, "lots consumed in another order");
                self.model.redemptions.push(ModelRedemption {
                    id,
                    account: target,
                    consumed,
                    cancelled: false,
                });
            }
            Step::Cancel { pick } => {
                if self.model.redemptions.is_empty() {
                    return;
                }
                let index = pick % self.model.redemptions.len();
                let redemption = self.model.redemptions[index].clone();
                let canceller = self.model.resolve(redemption.account);
                let id = self.fresh_id();
                let operation = Operation::CancelRedemption {
                    redemption_entry_id: EntryId::from(redemption.id.as_str()),
                };
                let outcome = self.apply(canceller, &id, operation);
                if redemption.cancelled {
                    assert!(
                        matches!(outcome, Err(DomainError::AlreadyApplied { .. })),
                        "{outcome:?}"
                    );
                    return;
                }
                assert!(matches!(outcome, Ok(Outcome::Applied { .. })), "{outcome:?}");
                for (lot_id, points) in &redemption.consumed {
                    let lot = self.model.lots.iter_mut().find(|lot| &lot.id == lot_id).unwrap();
                    if lot.owner == canceller {
                        lot.remaining += points;
                    } else {
                        let replacement =
                            LotId::returned(&EntryId::from(id.as_str()), &LotId::from(lot_id.as_str()));
                        let now = self.model.now;
                        self.model
                            .new_lot(replacement.as_str(), canceller, canceller, *points, now, false);
                    }
                }
                self.model.redemptions[index].cancelled = true;
                self.model.settle(canceller);
            }
            Step::Refund { pick, percent } => {
                let reversible: Vec<usize> = (0..self.model.lots.len())
                    .filter(|index| self.model.lots[*index].reversible)
                    .collect();
                if reversible.is_empty() {
                    return;
                }
                let lot_index = reversible[pick % reversible.len()];
                let lot = self.model.lots[lot_index].clone();
                let target = self.model.resolve(lot.origin);
                assert_eq!(
                    lot.owner, target,
                    "model: an earn lot is not with its origin's account"
                );
                let points = (lot.original * percent / 100).max(1);
                let id = self.fresh_id();
                let operation = Operation::RefundReversal(RefundReversal {
                    accrual_entry_id: EntryId::from(lot.id.as_str()),
                    points,
                    refunded_spend_minor: 0,
                });
                let outcome = self.apply(target, &id, operation);
                let left = lot.original - lot.reversed;
                if left == 0 {
                    assert!(
                        matches!(outcome, Err(DomainError::AlreadyApplied { .. })),
                        "{outcome:?}"
                    );
                    return;
                }
                if points > left {
                    assert!(
                        matches!(&outcome, Err(DomainError::InvalidField { field, .. }) if field == "points"),
                        "{outcome:?}"
                    );
                    return;
                }
                assert!(matches!(outcome, Ok(Outcome::Applied { .. })), "{outcome:?}");
                let from_remaining = points.min(lot.remaining);
                let from_expired = (points - from_remaining).min(lot.expired);
                let shortfall = points - from_remaining - from_expired;
                let model_lot = &mut self.model.lots[lot_index];
                model_lot.remaining -= from_remaining;
                model_lot.expired -= from_expired;
                model_lot.reversed += points;
                if shortfall > 0 {
                    *self.model.debt.entry((target, lot.origin)).or_insert(0) += shortfall;
                }
                self.model.settle(target);
            }
            Step::Advance { days } => self.model.now += TimeDelta::days(days),
            Step::Expire => {
                for who in self.active() {
                    let id = self.fresh_id();
                    let now = self.model.now;
                    let mut any = false;
                    for lot in self.model.lots.iter_mut() {
                        if lot.owner == who && lot.remaining > 0 && lot.expires_at.is_some_and(|at| at <= now)
                        {
                            lot.expired += lot.remaining;
                            lot.remaining = 0;
                            any = true;
                        }
                    }
                    let outcome = self.apply(who, &id, Operation::Expire);
                    check_job_outcome(any, &outcome);
                }
            }
            Step::Mature => {
                for who in self.active() {
                    let id = self.fresh_id();
                    let now = self.model.now;
                    let mut any = false;
                    for lot in self.model.lots.iter_mut() {
                        if lot.owner == who && !lot.matured && lot.matures_at <= now {
                            lot.matured = true;
                            any = true;
                        }
                    }
                    self.model.settle(who);
                    let outcome = self.apply(who, &id, Operation::Mature);
                    check_job_outcome(any, &outcome);
                }
            }
            Step::Merge => {
                let id = self.fresh_id();
                let command = MergeCommand::from_event(&id, self.model.now);
                let outcome = merge(&mut self.ann, &mut self.bob, &self.program, command);
                if self.model.merged {
                    assert!(
                        matches!(outcome, Err(DomainError::AccountMerged { .. })),
                        "{outcome:?}"
                    );
                    return;
                }
                assert!(matches!(outcome, Ok(MergeOutcome::Applied { .. })), "{outcome:?}");
                for lot in self.model.lots.iter_mut().filter(|lot| lot.owner == Who::Bob) {
                    lot.owner = Who::Ann;
                }
                let bob_debt: Vec<_> = self
                    .model
                    .debt
                    .iter()
                    .filter(|((debtor, _), _)| *debtor == Who::Bob)
                    .map(|(key, amount)| (*key, *amount))
                    .collect();
                for ((_, origin), amount) in bob_debt {
                    self.model.debt.remove(&(Who::Bob, origin));
                    *self.model.debt.entry((Who::Ann, origin)).or_insert(0) += amount;
                }
                self.model.merged = true;
                self.model.settle(Who::Ann);
            }
            Step::Unmerge => {
                let id = self.fresh_id();
                let command = MergeCommand::from_event(&id, self.model.now);
                let outcome = unmerge(&mut self.ann, &Who::Bob.customer(), command);
                if !self.model.merged {
                    assert!(
                        matches!(outcome, Err(DomainError::NotFound { .. })),
                        "{outcome:?}"
                    );
                    return;
                }
                let Ok(UnmergeOutcome::Applied { restored, .. }) = outcome else {
                    panic!("unmerge refused: {outcome:?}");
                };
                self.bob = *restored;
                for lot in self.model.lots.iter_mut().filter(|lot| lot.origin == Who::Bob) {
                    lot.owner = Who::Bob;
                }
                if let Some(amount) = self.model.debt.remove(&(Who::Ann, Who::Bob)) {
                    *self.model.debt.entry((Who::Bob, Who::Bob)).or_insert(0) += amount;
                }
                self.model.merged = false;
                self.model.settle(Who::Bob);
            }
            Step::Adjust { who, points } => {
                let id = self.fresh_id();
                let target = self.model.resolve(who);
                let operation = Operation::Adjust {
                    points,
                    reason: "model".into(),
                };
                let spendable = self.model.spendable_total(target);
                let outcome = self.apply(target, &id, operation);
                if points > 0 {
                    assert!(matches!(outcome, Ok(Outcome::Applied { .. })), "{outcome:?}");
                    let now = self.model.now;
                    self.model.new_lot(&id, target, target, points, now, false);
                    self.model.settle(target);
                } else if -points > spendable {
                    assert_eq!(
                        outcome,
                        Err(DomainError::InsufficientPoints {
                            needed: -points,
                            available: spendable,
                        })
                    );
                } else {
                    assert!(matches!(outcome, Ok(Outcome::Applied { .. })), "{outcome:?}");
                    self.model.take(target, -points);
                }
            }
            Step::SetExpiry { months } => {
                // A pending period must end before the shortest expiry (program validation).
                if months > 0 && i64::from(months) * 28 <= self.model.pending_days {
                    return;
                }
                self.program.expiry_months = months;
                self.program.validate().unwrap();
                self.model.expiry_months = months;
            }
            Step::Replay => {
                let Some((who, command)) = previous else {
                    return;
                };
                let program = self.program.clone();
                let before = self.account(who).clone();
                let outcome = self.account(who).apply(&program, command);
                assert!(matches!(outcome, Ok(Outcome::Replayed { .. })), "{outcome:?}");
                assert_eq!(*self.account(who), before, "a replay changed the account");
            }
        }
    }

    fn active(&self) -> Vec<Who> {
        if self.model.merged {
            vec![Who::Ann]
        } else {
            vec![Who::Ann, Who::Bob]
        }
    }

    fn check(&self, step: &Step) {
        for account in [&self.ann, &self.bob] {
            if let Err(reason) = check_invariants(account) {
                panic!("after {step:?}: {reason}");
            }
        }
        if self.model.merged {
            assert_eq!(self.bob.merged_into(), Some(&Who::Ann.customer()));
            assert_eq!(self.bob.lots().count(), 0);
        }
        for who in self.active() {
            let account = match who {
                Who::Ann => &self.ann,
                Who::Bob => &self.bob,
            };
            assert_eq!(account.merged_into(), None);
            let model = &self.model;
            assert_eq!(
                account.balance(),
                model.balance(who),
                "{who:?} balance after {step:?}"
            );
            assert_eq!(
                account.pending_points(),
                model.pending(who),
                "{who:?} pending after {step:?}"
            );
            assert_eq!(account.debt(), model.debt_of(who), "{who:?} debt after {step:?}");
            assert_eq!(
                account.spendable_balance(model.now),
                model.spendable_total(who),
                "{who:?} spendable after {step:?}"
            );
            let lots: BTreeMap<String, (i64, bool)> = account
                .lots()
                .map(|lot| {
                    (
                        lot.id.to_string(),
                        (lot.remaining_points, lot.state == LotState::Matured),
                    )
                })
                .collect();
            assert_eq!(lots, model.lots_of(who), "{who:?} lots after {step:?}");
            if account.debt() > 0 {
                assert_eq!(
                    account.spendable_balance(model.now),
                    0,
                    "debt left unpaid after {step:?}"
                );
            }
        }
    }
}

fn check_job_outcome(model_found_due: bool, outcome: &Result<Outcome, DomainError>) {
    if model_found_due {
        assert!(matches!(outcome, Ok(Outcome::Applied { .. })), "{outcome:?}");
    } else {
        assert_eq!(outcome, &Ok(Outcome::NothingDue));
    }
}

proptest! {
    #![proptest_config(Config {
        cases: 256,
        failure_persistence: None,
        ..Config::default()
    })]

    #[test]
    fn ledger_agrees_with_the_model(
        pending_days in prop_oneof![Just(0_u32), Just(7_u32)],
        expiry_months in prop_oneof![Just(0_u32), Just(1_u32), Just(3_u32)],
        steps in proptest::collection::vec(step(), 1..40),
    ) {
        let mut harness = Harness::new(pending_days, expiry_months);
        for step in &steps {
            harness.run(step);
            harness.check(step);
        }
    }
}
