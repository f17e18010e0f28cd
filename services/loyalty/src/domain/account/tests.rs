use chrono::{DateTime, TimeDelta, Utc};

use super::*;
use crate::domain::earn::CampaignAward;
use crate::domain::event::points_expiring_soon;
use crate::domain::ledger::RewardLine;
use crate::domain::operation::{MergeCommand, MergeOutcome, UnmergeOutcome};
use crate::domain::program::TierBasis;
use crate::domain::program::tests::sample_program;
use crate::domain::tier::tier_progress;

/// Midnight UTC, `days` after 2026-01-01.
fn day(days: i64) -> DateTime<Utc> {
    "2026-01-01T00:00:00Z".parse::<DateTime<Utc>>().unwrap() + TimeDelta::days(days)
}

fn ann() -> CustomerId {
    CustomerId::from("ann")
}

fn bob() -> CustomerId {
    CustomerId::from("bob")
}

fn account(customer: CustomerId) -> Account {
    Account::new(customer, &sample_program(), day(0))
}

fn earn_op(points: i64, earned_at: DateTime<Utc>) -> Operation {
    Operation::Earn(Earn {
        points,
        earned_at,
        source: EarnSource::Purchase {
            purchase_id: "p".into(),
            spend_minor: points * 100,
            campaign_awards: Vec::<CampaignAward>::new(),
        },
        origin_customer: None,
    })
}

fn command(id: &str, at: DateTime<Utc>, operation: Operation) -> Command {
    Command {
        entry_id: EntryId::from(id),
        at,
        operation,
    }
}

/// Applies and checks the invariants; panics on a refusal.
fn apply(
    account: &mut Account,
    program: &Program,
    id: &str,
    at: DateTime<Utc>,
    operation: Operation,
) -> Outcome {
    let outcome = account
        .apply(program, command(id, at, operation))
        .unwrap_or_else(|error| panic!("{id} refused: {error}"));
    check_invariants(account).unwrap();
    outcome
}

/// Applies an operation expected to fail, and checks that nothing changed.
fn refuse(
    account: &mut Account,
    program: &Program,
    id: &str,
    at: DateTime<Utc>,
    operation: Operation,
) -> DomainError {
    let before = account.clone();
    let error = account
        .apply(program, command(id, at, operation))
        .expect_err("expected a refusal");
    assert_eq!(*account, before, "a refused operation changed the account");
    error
}

fn earn(account: &mut Account, program: &Program, id: &str, points: i64, at: DateTime<Utc>) -> Outcome {
    apply(account, program, id, at, earn_op(points, at))
}

fn redeem_op(points: i64) -> Operation {
    Operation::Redeem(Redeem { points, reward: None })
}

fn no_pending() -> Program {
    Program {
        pending_days: 0,
        ..sample_program()
    }
}

fn consumed(outcome: &Outcome) -> Vec<(String, i64)> {
    outcome
        .entry()
        .unwrap()
        .movements
        .iter()
        .filter(|movement| movement.change == LotChange::Consumed)
        .map(|movement| (movement.lot_id.to_string(), movement.points))
        .collect()
}

#[test]
fn earned_points_are_pending_until_the_maturity_run() {
    let program = sample_program();
    let mut account = account(ann());
    let outcome = earn(&mut account, &program, "e1", 120, day(0));
    let entry = outcome.entry().unwrap();
    assert_eq!((entry.balance_delta, entry.pending_delta), (0, 120));
    assert_eq!((account.balance(), account.pending_points()), (0, 120));
    assert_eq!(account.lifetime_points(), 120);
    let lot = account.lot(&LotId::from("e1")).unwrap();
    assert_eq!(lot.matures_at, day(14));
    assert_eq!(lot.expires_at, Some("2027-01-01T00:00:00Z".parse().unwrap()));

    assert!(!account.maturity_due(day(13)));
    assert_eq!(
        apply(&mut account, &program, "m0", day(13), Operation::Mature),
        Outcome::NothingDue
    );
    assert!(account.maturity_due(day(14)));
    let matured = apply(&mut account, &program, "m1", day(14), Operation::Mature);
    let entry = matured.entry().unwrap();
    assert_eq!((entry.balance_delta, entry.pending_delta), (120, -120));
    assert_eq!((account.balance(), account.pending_points()), (120, 0));
    assert_eq!(account.spendable_balance(day(14)), 120);
}

#[test]
fn a_program_without_pending_period_matures_at_once_and_backdated_purchases_too() {
    let mut account = account(ann());
    earn(&mut account, &no_pending(), "e1", 50, day(0));
    assert_eq!(account.balance(), 50);
    // A purchase imported after its return window has passed is spendable at once.
    let program = sample_program();
    apply(&mut account, &program, "e2", day(30), earn_op(70, day(1)));
    assert_eq!(account.lot(&LotId::from("e2")).unwrap().state, LotState::Matured);
    assert_eq!(account.balance(), 120);
    // A purchase time after the entry's time is taken as the entry's time.
    apply(&mut account, &program, "e3", day(30), earn_op(1, day(40)));
    assert_eq!(account.lot(&LotId::from("e3")).unwrap().earned_at, day(30));
}

#[test]
fn a_redelivered_operation_is_a_replay_and_a_reused_id_is_refused() {
    let program = sample_program();
    let mut account = account(ann());
    let first = earn(&mut account, &program, "accrual:p1", 100, day(0));
    let before = account.clone();
    // The same purchase priced differently (say, after a tier change) is still a replay.
    let again = apply(&mut account, &program, "accrual:p1", day(3), earn_op(999, day(0)));
    assert_eq!(
        again,
        Outcome::Replayed {
            entry: first.entry().unwrap().clone()
        }
    );
    assert!(again.events().is_empty());
    assert_eq!(account, before);
    let error = refuse(&mut account, &program, "accrual:p1", day(3), redeem_op(1));
    assert_eq!(
        error,
        DomainError::EntryIdReused {
            entry_id: EntryId::from("accrual:p1"),
            existing_kind: "EARN",
        }
    );
    let error = refuse(&mut account, &program, " ", day(3), redeem_op(1));
    assert!(matches!(error, DomainError::InvalidField { field, .. } if field == "entry_id"));
}

#[test]
fn spends_take_the_soonest_expiry_first_then_earliest_then_lot_id() {
    let mut program = no_pending();
    let mut account = account(ann());
    earn(&mut account, &program, "late", 10, day(20)); // expires day 20 + 12 months
    earn(&mut account, &program, "b-early", 10, day(5));
    earn(&mut account, &program, "a-early", 10, day(5)); // same expiry and earn time: id decides
    program.expiry_months = 0;
    earn(&mut account, &program, "forever", 10, day(1)); // never expires: last
    program.expiry_months = 12;
    let outcome = apply(&mut account, &program, "r1", day(21), redeem_op(35));
    assert_eq!(
        consumed(&outcome),
        vec![
            ("a-early".to_owned(), 10),
            ("b-early".to_owned(), 10),
            ("late".to_owned(), 10),
            ("forever".to_owned(), 5),
        ]
    );
    assert_eq!(account.balance(), 5);
    assert!(matches!(
        outcome.events(),
        [LoyaltyEvent::RedemptionMade { points: 35, .. }]
    ));
}

#[test]
fn spends_skip_pending_and_expired_lots_and_refuse_beyond_spendable() {
    let program = sample_program();
    let mut account = account(ann());
    apply(&mut account, &program, "old", day(400), earn_op(30, day(0))); // expired on day 365
    earn(&mut account, &program, "ok", 20, day(380)); // matured on day 394
    earn(&mut account, &program, "new", 50, day(399)); // pending
    apply(&mut account, &program, "m", day(400), Operation::Mature);
    assert_eq!(account.balance(), 50); // "old" and "ok" matured; "old" awaits the expiry run
    assert_eq!(account.spendable_balance(day(400)), 20);
    let error = refuse(&mut account, &program, "r1", day(400), redeem_op(21));
    assert_eq!(
        error,
        DomainError::InsufficientPoints {
            needed: 21,
            available: 20
        }
    );
    let outcome = apply(&mut account, &program, "r2", day(400), redeem_op(20));
    assert_eq!(consumed(&outcome), vec![("ok".to_owned(), 20)]);
    for bad in [0, -5] {
        let error = refuse(&mut account, &program, "r3", day(400), redeem_op(bad));
        assert!(matches!(error, DomainError::InvalidField { field, .. } if field == "points"));
    }
    let error = refuse(
        &mut account,
        &program,
        "r4",
        day(400),
        Operation::Redeem(Redeem {
            points: 1,
            reward: Some(RewardLine {
                reward_id: "mug".into(),
                quantity: 0,
            }),
        }),
    );
    assert!(matches!(error, DomainError::InvalidField { field, .. } if field == "reward.quantity"));
}

#[test]
fn expiry_run_takes_what_remains_of_due_lots_in_one_entry() {
    let program = no_pending();
    let mut account = account(ann());
    earn(&mut account, &program, "a", 30, day(0));
    earn(&mut account, &program, "b", 40, day(1));
    earn(&mut account, &program, "c", 50, day(100));
    apply(&mut account, &program, "r", day(10), redeem_op(10)); // 10 from "a"
    assert!(!account.expiry_due(day(364)));
    assert_eq!(
        apply(&mut account, &program, "x0", day(364), Operation::Expire),
        Outcome::NothingDue
    );
    let outcome = apply(&mut account, &program, "x1", day(366), Operation::Expire);
    let entry = outcome.entry().unwrap();
    assert_eq!(entry.kind, EntryKind::Expiry);
    assert_eq!(
        entry
            .movements
            .iter()
            .map(|movement| (movement.lot_id.to_string(), movement.points))
            .collect::<Vec<_>>(),
        vec![("a".to_owned(), 20), ("b".to_owned(), 40)]
    );
    assert_eq!(entry.balance_delta, -60);
    assert_eq!(account.balance(), 50);
    assert_eq!(account.lot(&LotId::from("a")).unwrap().expired_points, 20);
    // Lifetime points do not drop with expiry.
    assert_eq!(account.lifetime_points(), 120);
}

#[test]
fn cancelling_a_redemption_returns_points_to_the_same_lots_once() {
    let program = no_pending();
    let mut account = account(ann());
    earn(&mut account, &program, "a", 30, day(0));
    earn(&mut account, &program, "b", 40, day(1));
    apply(&mut account, &program, "r", day(2), redeem_op(50));
    let outcome = apply(
        &mut account,
        &program,
        "c",
        day(3),
        Operation::CancelRedemption {
            redemption_entry_id: EntryId::from("r"),
        },
    );
    let entry = outcome.entry().unwrap();
    assert_eq!(entry.balance_delta, 50);
    assert_eq!(account.lot(&LotId::from("a")).unwrap().remaining_points, 30);
    assert_eq!(account.lot(&LotId::from("b")).unwrap().remaining_points, 40);
    assert!(matches!(
        outcome.events(),
        [LoyaltyEvent::RedemptionCancelled { points: 50, .. }]
    ));
    assert_eq!(
        account.redemption_cancelled_by(&EntryId::from("r")),
        Some(&EntryId::from("c"))
    );

    let cancel_r = Operation::CancelRedemption {
        redemption_entry_id: EntryId::from("r"),
    };
    let error = refuse(&mut account, &program, "c2", day(4), cancel_r);
    assert_eq!(
        error,
        DomainError::AlreadyApplied {
            what: "cancellation of redemption r".into(),
            by_entry_id: Some(EntryId::from("c")),
        }
    );
    let cancel_earn = Operation::CancelRedemption {
        redemption_entry_id: EntryId::from("a"),
    };
    let error = refuse(&mut account, &program, "c3", day(4), cancel_earn);
    assert!(matches!(error, DomainError::InvalidField { field, .. } if field == "redemption_entry_id"));
    let cancel_unknown = Operation::CancelRedemption {
        redemption_entry_id: EntryId::from("nope"),
    };
    let error = refuse(&mut account, &program, "c4", day(4), cancel_unknown);
    assert!(matches!(error, DomainError::NotFound { .. }));
}

#[test]
fn points_returned_to_an_expired_lot_expire_again_at_the_next_run() {
    let program = no_pending();
    let mut account = account(ann());
    earn(&mut account, &program, "a", 30, day(0));
    apply(&mut account, &program, "r", day(1), redeem_op(30));
    // Nothing left in the lot, so nothing to expire.
    assert_eq!(
        apply(&mut account, &program, "x1", day(400), Operation::Expire),
        Outcome::NothingDue
    );
    assert_eq!(account.balance(), 0);
    apply(
        &mut account,
        &program,
        "c",
        day(401),
        Operation::CancelRedemption {
            redemption_entry_id: EntryId::from("r"),
        },
    );
    // Back in the lot, counted in the balance, but not spendable: the lot has expired.
    assert_eq!(account.balance(), 30);
    assert_eq!(account.spendable_balance(day(401)), 0);
    assert!(account.expiry_due(day(401)));
    apply(&mut account, &program, "x2", day(401), Operation::Expire);
    assert_eq!(account.balance(), 0);
    assert_eq!(account.lot(&LotId::from("a")).unwrap().expired_points, 30);
}

fn reverse_op(accrual: &str, points: i64) -> Operation {
    Operation::RefundReversal(RefundReversal {
        accrual_entry_id: EntryId::from(accrual),
        points,
        refunded_spend_minor: 0,
    })
}

#[test]
fn reversing_a_pending_accrual_takes_its_pending_points() {
    let program = sample_program();
    let mut account = account(ann());
    earn(&mut account, &program, "accrual:p1", 100, day(0));
    let outcome = apply(
        &mut account,
        &program,
        "reversal:f1",
        day(3),
        reverse_op("accrual:p1", 40),
    );
    let entry = outcome.entry().unwrap();
    assert_eq!(
        (entry.balance_delta, entry.pending_delta, entry.debt_delta),
        (0, -40, 0)
    );
    assert_eq!(account.pending_points(), 60);
    assert_eq!(account.lifetime_points(), 60);
    apply(
        &mut account,
        &program,
        "reversal:f2",
        day(4),
        reverse_op("accrual:p1", 60),
    );
    assert_eq!(account.pending_points(), 0);
    let error = refuse(
        &mut account,
        &program,
        "reversal:f3",
        day(5),
        reverse_op("accrual:p1", 1),
    );
    assert!(matches!(error, DomainError::AlreadyApplied { .. }));
    // The fully reversed lot matures with nothing in it.
    apply(&mut account, &program, "m", day(14), Operation::Mature);
    assert_eq!(account.balance(), 0);
}

#[test]
fn reversal_validation() {
    let program = sample_program();
    let mut account = account(ann());
    earn(&mut account, &program, "e", 100, day(0));
    apply(
        &mut account,
        &program,
        "adj",
        day(0),
        Operation::Adjust {
            points: 5,
            reason: "goodwill".into(),
        },
    );
    let error = refuse(&mut account, &program, "f", day(1), reverse_op("e", 101));
    assert!(matches!(error, DomainError::InvalidField { field, .. } if field == "points"));
    let error = refuse(&mut account, &program, "f", day(1), reverse_op("missing", 1));
    assert!(matches!(error, DomainError::NotFound { .. }));
    let error = refuse(&mut account, &program, "f", day(1), reverse_op("adj", 1));
    assert!(matches!(error, DomainError::InvalidField { field, .. } if field == "accrual_entry_id"));
    let too_much_spend = Operation::RefundReversal(RefundReversal {
        accrual_entry_id: EntryId::from("e"),
        points: 1,
        refunded_spend_minor: 10_001,
    });
    let error = refuse(&mut account, &program, "f", day(1), too_much_spend);
    assert!(matches!(error, DomainError::InvalidField { field, .. } if field == "refunded_spend_minor"));
}

#[test]
fn a_spent_accrual_is_covered_by_other_points_then_by_debt_paid_from_later_earns() {
    let program = no_pending();
    let mut account = account(ann());
    earn(&mut account, &program, "accrual:p1", 100, day(0));
    earn(&mut account, &program, "accrual:p2", 30, day(1));
    apply(&mut account, &program, "r", day(2), redeem_op(90)); // all of p1's 100 but 10
    assert_eq!(account.balance(), 40);
    // Refund p1 entirely: 10 left in its lot, 90 spent: 30 from p2, 60 owed.
    let outcome = apply(
        &mut account,
        &program,
        "reversal:f1",
        day(3),
        reverse_op("accrual:p1", 100),
    );
    let entry = outcome.entry().unwrap();
    assert_eq!(
        entry.kind,
        EntryKind::RefundReversal {
            accrual_entry_id: EntryId::from("accrual:p1"),
            points: 100,
            from_remaining: 10,
            from_expired: 0,
            shortfall: 90,
            refunded_spend_minor: 0,
        }
    );
    assert_eq!((entry.balance_delta, entry.debt_delta), (-40, 60));
    assert_eq!((account.balance(), account.debt()), (0, 60));
    let error = refuse(&mut account, &program, "r2", day(3), redeem_op(1));
    assert_eq!(
        error,
        DomainError::InsufficientPoints {
            needed: 1,
            available: 0
        }
    );

    // The next earn pays the debt first.
    let outcome = earn(&mut account, &program, "accrual:p3", 50, day(4));
    let entry = outcome.entry().unwrap();
    assert_eq!((entry.balance_delta, entry.debt_delta), (0, -50));
    assert_eq!((account.balance(), account.debt()), (0, 10));
    earn(&mut account, &program, "accrual:p4", 25, day(5));
    assert_eq!((account.balance(), account.debt()), (15, 0));
    assert!(account.debt_by_origin().is_empty());
}

#[test]
fn pending_points_pay_debt_when_they_mature() {
    let program = sample_program();
    let mut account = account(ann());
    apply(&mut account, &program, "e1", day(20), earn_op(100, day(0))); // matured at once
    apply(&mut account, &program, "r", day(20), redeem_op(100));
    apply(&mut account, &program, "f", day(21), reverse_op("e1", 100));
    assert_eq!(account.debt(), 100);
    earn(&mut account, &program, "e2", 80, day(22)); // pending: debt stays
    assert_eq!((account.pending_points(), account.debt()), (80, 100));
    let outcome = apply(&mut account, &program, "m", day(36), Operation::Mature);
    assert_eq!(outcome.entry().unwrap().debt_delta, -80);
    assert_eq!((account.balance(), account.debt()), (0, 20));
}

#[test]
fn reversing_expired_points_creates_no_debt() {
    let program = no_pending();
    let mut account = account(ann());
    earn(&mut account, &program, "e1", 100, day(0));
    apply(&mut account, &program, "r", day(1), redeem_op(30));
    apply(&mut account, &program, "x", day(366), Operation::Expire); // 70 expire
    let outcome = apply(&mut account, &program, "f", day(367), reverse_op("e1", 100));
    assert!(matches!(
        outcome.entry().unwrap().kind,
        EntryKind::RefundReversal {
            from_remaining: 0,
            from_expired: 70,
            shortfall: 30,
            ..
        }
    ));
    assert_eq!(account.debt(), 30);
    let lot = account.lot(&LotId::from("e1")).unwrap();
    assert_eq!((lot.expired_points, lot.reversed_points), (0, 100));
}

#[test]
fn cancelling_a_redemption_pays_outstanding_debt_first() {
    let program = no_pending();
    let mut account = account(ann());
    earn(&mut account, &program, "e1", 100, day(0));
    apply(&mut account, &program, "r", day(1), redeem_op(100));
    apply(&mut account, &program, "f", day(2), reverse_op("e1", 100));
    assert_eq!(account.debt(), 100);
    apply(
        &mut account,
        &program,
        "c",
        day(3),
        Operation::CancelRedemption {
            redemption_entry_id: EntryId::from("r"),
        },
    );
    // The refunded purchase's points came back and went straight to the debt: even.
    assert_eq!((account.balance(), account.debt()), (0, 0));
}

#[test]
fn adjustments() {
    let program = no_pending();
    let mut account = account(ann());
    let outcome = apply(
        &mut account,
        &program,
        "adj1",
        day(0),
        Operation::Adjust {
            points: 40,
            reason: " goodwill ".into(),
        },
    );
    assert_eq!(
        outcome.entry().unwrap().kind,
        EntryKind::Adjust {
            points: 40,
            reason: "goodwill".into()
        }
    );
    let lot = account.lot(&LotId::from("adj1")).unwrap();
    assert_eq!((lot.source, lot.state), (LotSource::Adjust, LotState::Matured));
    assert_eq!(account.lifetime_points(), 40);
    let take = |points| Operation::Adjust {
        points,
        reason: "correction".into(),
    };
    let error = refuse(&mut account, &program, "adj2", day(1), take(-41));
    assert_eq!(
        error,
        DomainError::InsufficientPoints {
            needed: 41,
            available: 40
        }
    );
    apply(&mut account, &program, "adj3", day(1), take(-15));
    assert_eq!(account.balance(), 25);
    for (points, reason, field) in [(0, "x", "points"), (5, "  ", "reason"), (5, "", "reason")] {
        let operation = Operation::Adjust {
            points,
            reason: reason.into(),
        };
        let error = refuse(&mut account, &program, "adj4", day(1), operation);
        assert!(matches!(error, DomainError::InvalidField { field: got, .. } if got == field));
    }
}

#[test]
fn tiers_upgrade_at_once_and_downgrade_only_at_evaluation() {
    let program = no_pending();
    let mut account = account(ann());
    assert_eq!(account.tier(), Some("member"));
    let outcome = earn(&mut account, &program, "e1", 999, day(0));
    assert!(outcome.events().is_empty());
    let outcome = earn(&mut account, &program, "e2", 1, day(1));
    assert_eq!(
        outcome.events(),
        &[LoyaltyEvent::TierChanged {
            customer: ann(),
            from_tier: Some("member".into()),
            to_tier: Some("silver".into()),
            reason: TierChangeReason::Earned,
            at: day(1),
        }]
    );
    // A refund drops the qualifying points but not the tier...
    apply(&mut account, &program, "f", day(2), reverse_op("e1", 500));
    assert_eq!(account.tier(), Some("silver"));
    let progress = tier_progress(&account, &program, day(2));
    assert_eq!(progress.qualifying_value, 500);
    assert_eq!(progress.qualified_tier.as_deref(), Some("member"));
    assert_eq!(progress.next_tier.as_deref(), Some("gold"));
    assert_eq!(progress.needed_for_next, 4_500);
    // ...until the evaluation, one period after enrolment.
    assert!(!account.tier_evaluation_due(&program, day(300)));
    assert!(account.tier_evaluation_due(&program, day(365)));
    let event = account.evaluate_tier(&program, day(365));
    assert!(matches!(
        event,
        Some(LoyaltyEvent::TierChanged {
            reason: TierChangeReason::Evaluation,
            ..
        })
    ));
    assert_eq!(account.tier(), Some("member"));
    assert_eq!(account.tier_evaluated_at(), day(365));
    assert!(!account.tier_evaluation_due(&program, day(366)));
    // Outside the rolling window nothing qualifies any more.
    assert_eq!(
        crate::domain::tier::qualifying_value(&account, &program, day(366)),
        0
    );
}

#[test]
fn earn_uses_the_tier_before_the_earn_and_can_jump_tiers() {
    let program = no_pending();
    let mut account = account(ann());
    let outcome = earn(&mut account, &program, "e1", 6_000, day(0));
    assert!(matches!(
        outcome.events(),
        [LoyaltyEvent::TierChanged { to_tier: Some(tier), .. }] if tier == "gold"
    ));
    let progress = tier_progress(&account, &program, day(0));
    assert_eq!((progress.next_tier, progress.needed_for_next), (None, 0));
}

#[test]
fn spend_basis_counts_purchase_amounts_net_of_refunds() {
    let program = Program {
        tier_basis: TierBasis::QualifyingSpend,
        ..no_pending()
    };
    let mut account = account(ann());
    // 9 points for 900 minor units (see earn_op): silver needs 1000 minor units.
    earn(&mut account, &program, "e1", 9, day(0));
    assert_eq!(account.tier(), Some("member"));
    let outcome = earn(&mut account, &program, "e2", 1, day(1));
    assert_eq!(outcome.events().len(), 1);
    let refund = Operation::RefundReversal(RefundReversal {
        accrual_entry_id: EntryId::from("e1"),
        points: 9,
        refunded_spend_minor: 900,
    });
    apply(&mut account, &program, "f", day(2), refund);
    assert_eq!(
        crate::domain::tier::qualifying_value(&account, &program, day(2)),
        100
    );
}

#[test]
fn origin_customer_must_belong_to_the_account() {
    let program = sample_program();
    let mut account = account(ann());
    let operation = Operation::Earn(Earn {
        origin_customer: Some(bob()),
        ..match earn_op(1, day(0)) {
            Operation::Earn(earn) => earn,
            _ => unreachable!(),
        }
    });
    let error = refuse(&mut account, &program, "e", day(0), operation);
    assert!(matches!(error, DomainError::InvalidField { field, .. } if field == "origin_customer"));
}

#[test]
fn merge_moves_lots_and_debt_and_unmerge_moves_them_back() {
    let program = no_pending();
    let mut survivor = account(ann());
    let mut merged = account(bob());
    earn(&mut survivor, &program, "a1", 100, day(0));
    earn(&mut merged, &program, "b1", 50, day(0));
    apply(&mut merged, &program, "br", day(1), redeem_op(50));
    apply(&mut merged, &program, "bf", day(2), reverse_op("b1", 20)); // 20 owed
    assert_eq!(merged.debt(), 20);

    let outcome = merge(
        &mut survivor,
        &mut merged,
        &program,
        MergeCommand::from_event("ev1", day(3)),
    )
    .unwrap();
    check_invariants(&survivor).unwrap();
    check_invariants(&merged).unwrap();
    let MergeOutcome::Applied {
        in_entry,
        out_entry,
        events,
    } = outcome
    else {
        panic!("expected a merge");
    };
    assert_eq!(out_entry.customer, bob());
    assert_eq!(out_entry.debt_delta, -20);
    assert_eq!((in_entry.debt_delta, in_entry.balance_delta), (0, -20)); // paid at once
    assert!(events.is_empty());
    assert_eq!((survivor.balance(), survivor.debt()), (80, 0));
    assert_eq!(merged.merged_into(), Some(&ann()));
    assert!(matches!(
        merged.apply(&program, command("x", day(3), redeem_op(1))),
        Err(DomainError::AccountMerged { .. })
    ));
    // History of the merged customer is reachable through the survivor.
    assert!(survivor.find_entry(&EntryId::from("br")).is_some());
    assert_eq!(survivor.customers(), vec![&ann(), &bob()]);

    // Re-delivery is a replay.
    let replay = merge(
        &mut survivor,
        &mut merged,
        &program,
        MergeCommand::from_event("ev1", day(4)),
    )
    .unwrap();
    assert!(matches!(replay, MergeOutcome::Replayed { .. }));

    // While merged, bob's purchases earn on the survivor with bob as origin.
    let bob_purchase = Operation::Earn(Earn {
        origin_customer: Some(bob()),
        ..match earn_op(30, day(5)) {
            Operation::Earn(earn) => earn,
            _ => unreachable!(),
        }
    });
    apply(&mut survivor, &program, "b2", day(5), bob_purchase);
    assert_eq!(survivor.balance(), 110);

    let outcome = unmerge(&mut survivor, &bob(), MergeCommand::from_event("ev2", day(6))).unwrap();
    let UnmergeOutcome::Applied {
        restored,
        out_entry,
        in_entry,
        ..
    } = outcome
    else {
        panic!("expected an unmerge");
    };
    check_invariants(&survivor).unwrap();
    check_invariants(&restored).unwrap();
    assert_eq!(out_entry.balance_delta, -30);
    assert_eq!(in_entry.balance_delta, 30);
    // b1 went back with nothing left in it, b2 with its 30; the debt was paid while merged.
    assert_eq!(
        restored.lots().map(|lot| lot.id.to_string()).collect::<Vec<_>>(),
        vec!["b1", "b2"]
    );
    assert_eq!((restored.balance(), restored.debt()), (30, 0));
    assert_eq!(survivor.balance(), 80);
    assert!(survivor.absorbed().is_empty());
    assert_eq!(restored.merged_into(), None);
    assert_eq!(restored.entries().last(), Some(&in_entry));

    let replay = unmerge(&mut survivor, &bob(), MergeCommand::from_event("ev2", day(7))).unwrap();
    assert!(matches!(replay, UnmergeOutcome::Replayed { .. }));
    let error = unmerge(&mut survivor, &bob(), MergeCommand::from_event("ev3", day(7))).unwrap_err();
    assert!(matches!(error, DomainError::NotFound { .. }));
}

#[test]
fn unmerge_moves_outstanding_debt_back_by_origin() {
    let program = sample_program();
    let mut survivor = account(ann());
    let mut merged = account(bob());
    apply(&mut merged, &program, "b1", day(20), earn_op(50, day(0)));
    apply(&mut merged, &program, "br", day(20), redeem_op(50));
    apply(&mut merged, &program, "bf", day(21), reverse_op("b1", 50));
    earn(&mut survivor, &program, "a1", 100, day(21)); // pending, cannot pay
    merge(
        &mut survivor,
        &mut merged,
        &program,
        MergeCommand::from_event("m", day(22)),
    )
    .unwrap();
    assert_eq!(survivor.debt_by_origin().get(&bob()), Some(&50));
    let UnmergeOutcome::Applied { restored, .. } =
        unmerge(&mut survivor, &bob(), MergeCommand::from_event("u", day(23))).unwrap()
    else {
        panic!("expected an unmerge");
    };
    assert_eq!(restored.debt(), 50);
    assert_eq!(survivor.debt(), 0);
    assert_eq!(survivor.pending_points(), 100);
    check_invariants(&survivor).unwrap();
    check_invariants(&restored).unwrap();
}

#[test]
fn merge_keeps_the_higher_tier_and_refuses_bad_pairs() {
    let program = no_pending();
    let mut survivor = account(ann());
    let mut merged = account(bob());
    earn(&mut merged, &program, "b1", 1_200, day(0));
    assert_eq!(merged.tier(), Some("silver"));
    let mut same = account(ann());
    let error = merge(
        &mut survivor,
        &mut same,
        &program,
        MergeCommand::from_event("m0", day(1)),
    )
    .unwrap_err();
    assert!(matches!(error, DomainError::InvalidField { .. }));
    let MergeOutcome::Applied { events, .. } = merge(
        &mut survivor,
        &mut merged,
        &program,
        MergeCommand::from_event("m1", day(1)),
    )
    .unwrap() else {
        panic!("expected a merge");
    };
    assert!(matches!(
        events.as_slice(),
        [LoyaltyEvent::TierChanged { reason: TierChangeReason::Merge, to_tier: Some(tier), .. }] if tier == "silver"
    ));
    let mut husk = merged;
    let mut other = account(CustomerId::from("cat"));
    let error = merge(
        &mut other,
        &mut husk,
        &program,
        MergeCommand::from_event("m2", day(2)),
    )
    .unwrap_err();
    assert!(matches!(error, DomainError::AccountMerged { .. }));
}

#[test]
fn nested_merges_unmerge_the_whole_branch() {
    let program = no_pending();
    let mut ann_account = account(ann());
    let mut bob_account = account(bob());
    let mut cat_account = account(CustomerId::from("cat"));
    earn(&mut ann_account, &program, "a1", 1, day(0));
    earn(&mut bob_account, &program, "b1", 10, day(0));
    earn(&mut cat_account, &program, "c1", 100, day(0));
    merge(
        &mut bob_account,
        &mut cat_account,
        &program,
        MergeCommand::from_event("m1", day(1)),
    )
    .unwrap();
    merge(
        &mut ann_account,
        &mut bob_account,
        &program,
        MergeCommand::from_event("m2", day(2)),
    )
    .unwrap();
    check_invariants(&ann_account).unwrap();
    assert_eq!(ann_account.balance(), 111);
    // Unmerging bob takes cat's lots with it, since cat is merged into bob.
    let UnmergeOutcome::Applied { restored, .. } =
        unmerge(&mut ann_account, &bob(), MergeCommand::from_event("u1", day(3))).unwrap()
    else {
        panic!("expected an unmerge");
    };
    assert_eq!((ann_account.balance(), restored.balance()), (1, 110));
    check_invariants(&restored).unwrap();
    // Cat can then be unmerged from bob alone.
    let mut bob_again = *restored;
    let UnmergeOutcome::Applied {
        restored: cat_again, ..
    } = unmerge(
        &mut bob_again,
        &CustomerId::from("cat"),
        MergeCommand::from_event("u2", day(4)),
    )
    .unwrap()
    else {
        panic!("expected an unmerge");
    };
    assert_eq!((bob_again.balance(), cat_again.balance()), (10, 100));
    check_invariants(&bob_again).unwrap();
    check_invariants(&cat_again).unwrap();
}

#[test]
fn cancelling_after_an_unmerge() {
    let program = no_pending();
    let mut survivor = account(ann());
    let mut merged = account(bob());
    earn(&mut merged, &program, "b1", 50, day(0));
    apply(&mut merged, &program, "br", day(1), redeem_op(20)); // bob's own redemption
    merge(
        &mut survivor,
        &mut merged,
        &program,
        MergeCommand::from_event("m", day(2)),
    )
    .unwrap();
    apply(&mut survivor, &program, "ar", day(3), redeem_op(10)); // spends bob's lot while merged
    // The survivor cancels bob's pre-merge redemption; the mark stays with bob's ledger.
    let cancel = |id: &str| Operation::CancelRedemption {
        redemption_entry_id: EntryId::from(id),
    };
    apply(&mut survivor, &program, "c1", day(4), cancel("br"));
    assert_eq!(survivor.balance(), 40);
    let UnmergeOutcome::Applied { restored, .. } =
        unmerge(&mut survivor, &bob(), MergeCommand::from_event("u", day(5))).unwrap()
    else {
        panic!("expected an unmerge");
    };
    let mut restored = *restored;
    assert_eq!(restored.balance(), 40);
    let error = refuse(&mut restored, &program, "c2", day(6), cancel("br"));
    assert!(matches!(error, DomainError::AlreadyApplied { .. }));
    // The survivor's own redemption took from bob's lot, which has left: a new lot instead.
    apply(&mut survivor, &program, "c3", day(6), cancel("ar"));
    let replacement = survivor
        .lot(&LotId::returned(&EntryId::from("c3"), &LotId::from("b1")))
        .unwrap();
    assert_eq!(
        (replacement.source, replacement.remaining_points),
        (LotSource::Returned, 10)
    );
    assert_eq!(replacement.origin_customer, ann());
    assert_eq!(survivor.balance(), 10);
    assert_eq!(survivor.lifetime_points(), 0);
}

#[test]
fn expiring_soon_lists_lots_inside_the_notice_period() {
    let program = no_pending();
    let mut account = account(ann());
    earn(&mut account, &program, "a", 10, day(0)); // expires 2027-01-01 = day 365
    earn(&mut account, &program, "b", 20, day(10)); // day 375
    earn(&mut account, &program, "c", 30, day(100));
    assert_eq!(points_expiring_soon(&account, day(300), 30), None);
    let Some(LoyaltyEvent::PointsExpiringSoon {
        points,
        earliest_expires_at,
        lots,
        ..
    }) = points_expiring_soon(&account, day(350), 30)
    else {
        panic!("expected an event");
    };
    assert_eq!(points, 30);
    assert_eq!(earliest_expires_at, day(365));
    assert_eq!(
        lots.iter().map(|lot| lot.lot_id.to_string()).collect::<Vec<_>>(),
        vec!["a", "b"]
    );
    // Already past expiry: the expiry job's business, not "soon".
    let later = points_expiring_soon(&account, day(370), 1).map(|event| match event {
        LoyaltyEvent::PointsExpiringSoon { points, .. } => points,
        _ => 0,
    });
    assert_eq!(later, None);
}

#[test]
fn parts_round_trip_and_duplicates_are_refused() {
    let program = no_pending();
    let mut survivor = account(ann());
    let mut merged = account(bob());
    earn(&mut survivor, &program, "a1", 10, day(0));
    earn(&mut merged, &program, "b1", 10, day(0));
    merge(
        &mut survivor,
        &mut merged,
        &program,
        MergeCommand::from_event("m", day(1)),
    )
    .unwrap();
    let restored = Account::from_parts(survivor.clone().into_parts()).unwrap();
    assert_eq!(restored, survivor);

    let mut parts = survivor.into_parts();
    let lot = parts.lots[0].clone();
    parts.lots.push(lot);
    assert!(matches!(
        Account::from_parts(parts.clone()),
        Err(DomainError::Inconsistent(_))
    ));
    parts.lots.pop();
    parts.debt_by_origin.insert(bob(), 0);
    assert!(matches!(
        Account::from_parts(parts),
        Err(DomainError::Inconsistent(_))
    ));
}

#[test]
fn check_invariants_catches_a_tampered_ledger() {
    let program = no_pending();
    let mut account = account(ann());
    earn(&mut account, &program, "a1", 10, day(0));
    let mut parts = account.into_parts();
    parts.lots[0].remaining_points = 11;
    let tampered = Account::from_parts(parts.clone()).unwrap();
    assert!(check_invariants(&tampered).is_err());
    parts.lots[0].remaining_points = 10;
    parts.entries[0].balance_delta = 9;
    let tampered = Account::from_parts(parts).unwrap();
    assert!(check_invariants(&tampered).is_err());
}
