//! The loyalty store on SQLite and, with `DATABASE_URL`, on PostgreSQL (a schema of its own,
//! dropped afterwards; under CI a missing `DATABASE_URL` fails instead of skipping).
//!
//! Accounts go through the store one operation per transaction and must read back equal to
//! the same operations applied in memory; concurrent redemptions, stock takes and campaign
//! charges must never overspend.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, TimeDelta, Utc};
use crm_db::DbSettings;
use crm_loyalty::Migrator;
use crm_loyalty::domain::{
    Account, Campaign, CampaignBonus, CampaignConditions, Command, Currency, CustomerId, DomainError, Earn,
    EarnRate, EarnSource, EntryId, EntryKind, LotChange, MergeCommand, Operation, Outcome, Program, Redeem,
    RefundReversal, Reward, RewardLine, Rounding, Tier, TierBasis, UnmergeOutcome, check_invariants, merge,
    unmerge,
};
use crm_loyalty::store::{PageOrder, Store, StoreError, StoredAccount};
use sea_orm::{ConnectionTrait, DatabaseConnection};
use sea_orm_migration::MigratorTrait;
use uuid::Uuid;

const TENANT: &str = "tenant-a";

struct TestDb {
    store: Store,
    schema: Option<String>,
    label: &'static str,
}

impl TestDb {
    async fn drop_schema(self) {
        if let Some(schema) = self.schema {
            self.store
                .db()
                .execute_unprepared(&format!("DROP SCHEMA \"{schema}\" CASCADE"))
                .await
                .unwrap();
        }
    }
}

/// SQLite (one connection, as `crm_db::connect` makes it) and, when configured, PostgreSQL
/// with `max_connections`.
async fn databases(data_dir: &std::path::Path, max_connections: u32) -> Vec<TestDb> {
    let settings = |url| DbSettings {
        url,
        data_dir: data_dir.to_owned(),
        max_connections,
        connect_timeout: Duration::from_secs(10),
    };
    let mut databases = vec![TestDb {
        store: Store::new(crm_db::connect(&settings(None), "loyalty").await.unwrap()),
        schema: None,
        label: "sqlite",
    }];
    match std::env::var("DATABASE_URL") {
        Ok(url) => {
            let schema = format!("loyalty_store_{}", Uuid::now_v7().simple());
            databases.push(TestDb {
                store: Store::new(crm_db::connect(&settings(Some(url)), &schema).await.unwrap()),
                schema: Some(schema),
                label: "postgres",
            });
        }
        Err(_) => {
            assert!(std::env::var("CI").is_err(), "DATABASE_URL must be set under CI");
            eprintln!("skipping PostgreSQL: DATABASE_URL is not set");
        }
    }
    for database in &databases {
        Migrator::up(database.store.db(), None).await.unwrap();
    }
    databases
}

fn db(database: &TestDb) -> &DatabaseConnection {
    database.store.db()
}

/// EUR, 1 point per 1.00, 14 days pending, 12 months expiry, silver from 0 and gold from 500
/// qualifying points.
fn program() -> Program {
    Program {
        currency: Currency {
            code: "EUR".into(),
            minor_unit_exponent: 2,
        },
        earn_rate: EarnRate {
            points: 1,
            per_major_units: 1,
        },
        rounding: Rounding::HalfUp,
        pending_days: 14,
        expiry_months: 12,
        tier_basis: TierBasis::QualifyingPoints,
        tier_window_months: 12,
        tier_evaluation_period_months: 6,
        tiers: vec![
            Tier {
                name: "silver".into(),
                threshold: 0,
                earn_multiplier_bp: 10_000,
                discount_percent: 0,
            },
            Tier {
                name: "gold".into(),
                threshold: 500,
                earn_multiplier_bp: 15_000,
                discount_percent: 5,
            },
        ],
        excluded_categories: BTreeSet::from(["tobacco".to_owned()]),
        referral_bonus_points: 50,
    }
}

/// Day `day` of the test calendar, whole seconds (stored times have microsecond precision).
fn day(day: i64) -> DateTime<Utc> {
    "2026-03-01T10:00:00Z".parse::<DateTime<Utc>>().unwrap() + TimeDelta::days(day)
}

fn customer(name: &str) -> CustomerId {
    CustomerId::from(name)
}

fn command(entry_id: &str, at: DateTime<Utc>, operation: Operation) -> Command {
    Command {
        entry_id: EntryId::from(entry_id),
        at,
        operation,
    }
}

fn earn(purchase_id: &str, points: i64, earned_at: DateTime<Utc>, at: DateTime<Utc>) -> Command {
    earn_for(purchase_id, points, earned_at, at, None)
}

fn earn_for(
    purchase_id: &str,
    points: i64,
    earned_at: DateTime<Utc>,
    at: DateTime<Utc>,
    origin_customer: Option<CustomerId>,
) -> Command {
    Command {
        entry_id: EntryId::accrual(purchase_id),
        at,
        operation: Operation::Earn(Earn {
            points,
            earned_at,
            source: EarnSource::Purchase {
                purchase_id: purchase_id.to_owned(),
                spend_minor: points * 100,
                campaign_awards: Vec::new(),
            },
            origin_customer,
        }),
    }
}

fn redeem(entry_id: &str, points: i64, reward: Option<(&str, u32)>, at: DateTime<Utc>) -> Command {
    command(
        entry_id,
        at,
        Operation::Redeem(Redeem {
            points,
            reward: reward.map(|(reward_id, quantity)| RewardLine {
                reward_id: reward_id.to_owned(),
                quantity,
            }),
        }),
    )
}

/// One operation in its own transaction: load (which must equal `mirror`, the same account
/// kept in memory), apply, save, commit; the mirror applies it too and both outcomes agree.
async fn step(store: &Store, mirror: &mut Account, program: &Program, command: Command) -> Outcome {
    let txn = store.begin_write().await.unwrap();
    let mut stored = store
        .load_account(&txn, TENANT, mirror.customer())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stored.account(), &*mirror, "loaded before {:?}", command.entry_id);
    let outcome = stored.account_mut().apply(program, command.clone()).unwrap();
    store.save_account(&txn, TENANT, &mut stored).await.unwrap();
    txn.commit().await.unwrap();
    assert_eq!(mirror.apply(program, command).unwrap(), outcome);
    outcome
}

async fn create(store: &Store, program: &Program, name: &str, at: DateTime<Utc>) -> Account {
    let fresh = Account::new(customer(name), program, at);
    let txn = store.begin_write().await.unwrap();
    let stored = store
        .load_or_create_account(&txn, TENANT, fresh.clone())
        .await
        .unwrap();
    txn.commit().await.unwrap();
    assert_eq!(stored.account(), &fresh);
    fresh
}

async fn load(store: &Store, name: &str) -> StoredAccount {
    let txn = store.begin_read().await.unwrap();
    let stored = store
        .read_account(&txn, TENANT, &customer(name))
        .await
        .unwrap()
        .unwrap();
    txn.commit().await.unwrap();
    stored
}

/// Every kind of entry, a tier evaluation, a merge (with a cancellation of the merged
/// customer's redemption afterwards) and an unmerge, one transaction each: what the store
/// reads back equals the domain's account every time, and satisfies the invariants.
#[tokio::test]
async fn accounts_round_trip_through_every_operation() {
    let dir = tempfile::tempdir().unwrap();
    for database in databases(dir.path(), 4).await {
        let started = Instant::now();
        let store = &database.store;
        let program = program();

        // The program.
        let txn = store.begin_write().await.unwrap();
        assert_eq!(
            store
                .put_program(&txn, TENANT, &program, Some(0), Utc::now())
                .await
                .unwrap(),
            1
        );
        txn.commit().await.unwrap();
        let stored_program = store.program(db(&database), TENANT).await.unwrap().unwrap();
        assert_eq!(
            (stored_program.program, stored_program.revision),
            (program.clone(), 1)
        );
        let txn = store.begin_write().await.unwrap();
        assert_eq!(
            store
                .put_program(&txn, TENANT, &program, Some(1), Utc::now())
                .await
                .unwrap(),
            2
        );
        assert!(matches!(
            store
                .put_program(&txn, TENANT, &program, Some(1), Utc::now())
                .await,
            Err(StoreError::Conflict(_))
        ));
        txn.rollback().await.unwrap();
        assert!(store.program(db(&database), "tenant-b").await.unwrap().is_none());

        // Alice: every operation.
        let mut alice = create(store, &program, "alice", day(0)).await;
        step(store, &mut alice, &program, earn("p1", 300, day(0), day(0))).await;
        step(store, &mut alice, &program, earn("p2", 200, day(-30), day(1))).await;
        step(
            store,
            &mut alice,
            &program,
            command("mature-1", day(15), Operation::Mature),
        )
        .await;
        step(
            store,
            &mut alice,
            &program,
            redeem("r1", 100, Some(("mug", 1)), day(16)),
        )
        .await;
        step(
            store,
            &mut alice,
            &program,
            command(
                "a1",
                day(17),
                Operation::Adjust {
                    points: 50,
                    reason: "goodwill".into(),
                },
            ),
        )
        .await;
        step(
            store,
            &mut alice,
            &program,
            command(
                "c1",
                day(18),
                Operation::CancelRedemption {
                    redemption_entry_id: EntryId::from("r1"),
                },
            ),
        )
        .await;
        step(store, &mut alice, &program, redeem("r2", 450, None, day(19))).await;
        step(
            store,
            &mut alice,
            &program,
            command(
                "rev1",
                day(20),
                Operation::RefundReversal(RefundReversal {
                    accrual_entry_id: EntryId::accrual("p1"),
                    points: 150,
                    refunded_spend_minor: 15_000,
                }),
            ),
        )
        .await;
        step(
            store,
            &mut alice,
            &program,
            command(
                "a2",
                day(21),
                Operation::Adjust {
                    points: 200,
                    reason: "repays the debt".into(),
                },
            ),
        )
        .await;
        step(
            store,
            &mut alice,
            &program,
            command("expire-1", day(400), Operation::Expire),
        )
        .await;

        // A tier evaluation changes the account without an entry.
        let txn = store.begin_write().await.unwrap();
        let mut stored = store
            .load_account(&txn, TENANT, &customer("alice"))
            .await
            .unwrap()
            .unwrap();
        let revision = stored.revision().unwrap();
        let change = stored.account_mut().evaluate_tier(&program, day(400));
        assert!(change.is_some(), "gold lapses after a year without points");
        store.save_account(&txn, TENANT, &mut stored).await.unwrap();
        txn.commit().await.unwrap();
        assert_eq!(alice.evaluate_tier(&program, day(400)), change);
        assert_eq!(load(store, "alice").await.revision(), Some(revision + 1));

        // Bob earns and redeems, then is merged into Alice; both accounts locked in id order.
        let mut bob = create(store, &program, "bob", day(380)).await;
        step(store, &mut bob, &program, earn("p3", 80, day(350), day(401))).await;
        step(
            store,
            &mut bob,
            &program,
            redeem("rb1", 30, Some(("mug", 1)), day(401)),
        )
        .await;
        step(store, &mut alice, &program, earn("p4", 40, day(350), day(401))).await;
        let merge_command = MergeCommand::from_event("evt-merge", day(402));
        let txn = store.begin_write().await.unwrap();
        let mut survivor = store
            .load_account(&txn, TENANT, &customer("alice"))
            .await
            .unwrap()
            .unwrap();
        let mut merged = store
            .load_account(&txn, TENANT, &customer("bob"))
            .await
            .unwrap()
            .unwrap();
        merge(
            survivor.account_mut(),
            merged.account_mut(),
            &program,
            merge_command.clone(),
        )
        .unwrap();
        store
            .save_accounts(&txn, TENANT, &mut [&mut survivor, &mut merged])
            .await
            .unwrap();
        txn.commit().await.unwrap();
        merge(&mut alice, &mut bob, &program, merge_command).unwrap();
        assert_eq!(load(store, "alice").await.account(), &alice);
        // Bob's row is his frozen account inside Alice's.
        assert_eq!(load(store, "bob").await.account(), &alice.absorbed()[0]);
        assert_eq!(
            store
                .resolve_holder(db(&database), TENANT, &customer("bob"))
                .await
                .unwrap(),
            Some(customer("alice"))
        );

        // Alice earns for Bob and cancels Bob's redemption (recorded in his frozen ledger).
        step(
            store,
            &mut alice,
            &program,
            earn_for("p5", 60, day(403), day(403), Some(customer("bob"))),
        )
        .await;
        step(
            store,
            &mut alice,
            &program,
            command(
                "cb1",
                day(404),
                Operation::CancelRedemption {
                    redemption_entry_id: EntryId::from("rb1"),
                },
            ),
        )
        .await;

        // Unmerge: Bob comes back with his lots, saved together with Alice.
        let unmerge_command = MergeCommand::from_event("evt-unmerge", day(405));
        let txn = store.begin_write().await.unwrap();
        let mut survivor = store
            .load_account(&txn, TENANT, &customer("alice"))
            .await
            .unwrap()
            .unwrap();
        let UnmergeOutcome::Applied { restored, .. } =
            unmerge(survivor.account_mut(), &customer("bob"), unmerge_command.clone()).unwrap()
        else {
            panic!("the unmerge was not applied");
        };
        let mut restored = StoredAccount::new(*restored);
        store
            .save_accounts(&txn, TENANT, &mut [&mut survivor, &mut restored])
            .await
            .unwrap();
        txn.commit().await.unwrap();
        let UnmergeOutcome::Applied {
            restored: restored_bob,
            ..
        } = unmerge(&mut alice, &customer("bob"), unmerge_command).unwrap()
        else {
            panic!("the mirror's unmerge was not applied");
        };
        let mut bob = *restored_bob;
        step(
            store,
            &mut bob,
            &program,
            redeem("rb2", 20, Some(("mug", 2)), day(406)),
        )
        .await;
        step(store, &mut alice, &program, earn("p6", 10, day(406), day(406))).await;

        for (name, mirror) in [("alice", &alice), ("bob", &bob)] {
            let stored = load(store, name).await;
            assert_eq!(stored.account(), mirror, "{name} on {}", database.label);
            check_invariants(stored.account()).unwrap();
            let ledger_sum: i64 = stored
                .account()
                .entries()
                .iter()
                .map(|entry| entry.balance_delta)
                .sum();
            assert_eq!(ledger_sum, stored.account().balance());
        }

        // Reads past one account.
        let entry = store
            .find_entry(db(&database), TENANT, &EntryId::from("rb1"))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(Some(&entry), bob.find_entry(&EntryId::from("rb1")));
        assert!(
            store
                .find_entry(db(&database), "tenant-b", &EntryId::from("rb1"))
                .await
                .unwrap()
                .is_none()
        );
        // rb1 was cancelled; rb2 took 2.
        assert_eq!(
            store
                .redeemed_units(db(&database), TENANT, &[&customer("bob")], "mug")
                .await
                .unwrap(),
            2
        );
        // r1 (Alice's) was cancelled too.
        assert_eq!(
            store
                .redeemed_units(db(&database), TENANT, &[&customer("alice")], "mug")
                .await
                .unwrap(),
            0
        );
        for order in [PageOrder::OldestFirst, PageOrder::NewestFirst] {
            let mut seen = Vec::new();
            let mut after = None;
            loop {
                let page = store
                    .entries_page(db(&database), TENANT, &customer("alice"), after, 3, order)
                    .await
                    .unwrap();
                let Some(last) = page.last() else { break };
                after = Some(last.seq);
                seen.extend(page.into_iter().map(|stored| stored.entry));
            }
            let mut want = alice.entries().to_vec();
            if order == PageOrder::NewestFirst {
                want.reverse();
            }
            assert_eq!(seen, want, "{order:?}");
        }
        eprintln!("{}: round trip in {:?}", database.label, started.elapsed());
        database.drop_schema().await;
    }
}

/// An entry id is unique per tenant across every ledger: the database refuses a second one
/// even when the account applying it cannot see the first. A stale read cannot be saved.
#[tokio::test]
async fn duplicate_entries_and_stale_saves_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    for database in databases(dir.path(), 4).await {
        let store = &database.store;
        let program = program();
        let mut alice = create(store, &program, "alice", day(0)).await;
        let mut carol = create(store, &program, "carol", day(0)).await;
        step(store, &mut alice, &program, earn("p1", 100, day(-30), day(0))).await;

        // Carol's ledger does not hold accrual:p1, so the domain applies it; the store does not.
        let txn = store.begin_write().await.unwrap();
        let mut stored = store
            .load_account(&txn, TENANT, &customer("carol"))
            .await
            .unwrap()
            .unwrap();
        stored
            .account_mut()
            .apply(&program, earn("p1", 100, day(-30), day(1)))
            .unwrap();
        match store.save_account(&txn, TENANT, &mut stored).await {
            Err(StoreError::DuplicateEntry { entry_id }) => assert_eq!(entry_id, EntryId::accrual("p1")),
            other => panic!("expected a duplicate entry on {}, got {other:?}", database.label),
        }
        txn.rollback().await.unwrap();
        assert_eq!(load(store, "carol").await.account(), &carol);
        // Another tenant may use the id.
        let txn = store.begin_write().await.unwrap();
        let mut other_tenant = store
            .load_or_create_account(
                &txn,
                "tenant-b",
                Account::new(customer("carol"), &program, day(0)),
            )
            .await
            .unwrap();
        other_tenant
            .account_mut()
            .apply(&program, earn("p1", 100, day(-30), day(1)))
            .unwrap();
        store
            .save_account(&txn, "tenant-b", &mut other_tenant)
            .await
            .unwrap();
        txn.commit().await.unwrap();

        // A read that went stale: another write moved the revision since.
        let mut stale = load(store, "carol").await;
        step(store, &mut carol, &program, earn("p2", 10, day(-30), day(2))).await;
        let txn = store.begin_write().await.unwrap();
        stale
            .account_mut()
            .apply(&program, earn("p3", 10, day(-30), day(3)))
            .unwrap();
        match store.save_account(&txn, TENANT, &mut stale).await {
            Err(error @ StoreError::Conflict(_)) => assert!(error.is_retryable()),
            other => panic!("expected a conflict on {}, got {other:?}", database.label),
        }
        txn.rollback().await.unwrap();
        assert_eq!(load(store, "carol").await.account(), &carol);

        // A merge saved without the merged account is refused before anything is written.
        let txn = store.begin_write().await.unwrap();
        let mut survivor = store
            .load_account(&txn, TENANT, &customer("alice"))
            .await
            .unwrap()
            .unwrap();
        let mut merged = store
            .load_account(&txn, TENANT, &customer("carol"))
            .await
            .unwrap()
            .unwrap();
        merge(
            survivor.account_mut(),
            merged.account_mut(),
            &program,
            MergeCommand::from_event("evt", day(4)),
        )
        .unwrap();
        assert!(matches!(
            store.save_account(&txn, TENANT, &mut merged).await,
            Err(StoreError::InvalidSave(_))
        ));
        txn.rollback().await.unwrap();
        database.drop_schema().await;
    }
}

/// THE concurrency test: 200 tasks, each in its own transaction, redeem 1 point from a
/// balance of 100 held in four lots: exactly 100 succeed, the others get InsufficientPoints,
/// and the ledger adds up.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_redemptions_never_overspend() {
    let dir = tempfile::tempdir().unwrap();
    for database in databases(dir.path(), 8).await {
        let store = database.store.clone();
        let program = Arc::new(program());
        let mut dave = create(&store, &program, "dave", day(0)).await;
        for (index, earned) in [-60, -50, -40, -30].into_iter().enumerate() {
            step(
                &store,
                &mut dave,
                &program,
                earn(&format!("d{index}"), 25, day(earned), day(0)),
            )
            .await;
        }
        assert_eq!(dave.spendable_balance(day(1)), 100);

        let started = Instant::now();
        let mut tasks = tokio::task::JoinSet::new();
        for task in 0..200 {
            let store = store.clone();
            let program = Arc::clone(&program);
            tasks.spawn(async move {
                let txn = store.begin_write().await.unwrap();
                let mut stored = store
                    .load_account(&txn, TENANT, &customer("dave"))
                    .await
                    .unwrap()
                    .unwrap();
                let redeemed = stored
                    .account_mut()
                    .apply(&program, redeem(&format!("redeem-{task}"), 1, None, day(1)));
                match redeemed {
                    Ok(Outcome::Applied { .. }) => {
                        store.save_account(&txn, TENANT, &mut stored).await.unwrap();
                        txn.commit().await.unwrap();
                        true
                    }
                    Err(DomainError::InsufficientPoints { .. }) => {
                        txn.rollback().await.unwrap();
                        false
                    }
                    other => panic!("unexpected outcome {other:?}"),
                }
            });
        }
        let mut succeeded = 0;
        let mut refused = 0;
        while let Some(result) = tasks.join_next().await {
            if result.unwrap() {
                succeeded += 1;
            } else {
                refused += 1;
            }
        }
        let elapsed = started.elapsed();
        assert_eq!((succeeded, refused), (100, 100), "{}", database.label);

        let account = load(&store, "dave").await.into_account();
        check_invariants(&account).unwrap();
        assert_eq!(account.balance(), 0);
        let ledger_sum: i64 = account.entries().iter().map(|entry| entry.balance_delta).sum();
        assert_eq!(ledger_sum, account.balance());
        let redemptions: Vec<_> = account
            .entries()
            .iter()
            .filter(|entry| matches!(entry.kind, EntryKind::Redeem { .. }))
            .collect();
        assert_eq!(redemptions.len(), 100);
        for entry in redemptions {
            assert_eq!(entry.points_moved(LotChange::Consumed), 1);
            for movement in &entry.movements {
                assert_eq!(movement.change, LotChange::Consumed);
                assert!(
                    account.lot(&movement.lot_id).is_some(),
                    "{} links to a lot",
                    entry.id
                );
            }
        }
        assert!(account.lots().all(|lot| lot.remaining_points == 0));
        eprintln!("{}: 200 concurrent redemptions in {elapsed:?}", database.label);
        database.drop_schema().await;
    }
}

/// A reward with stock 10 and 50 concurrent takes: exactly 10 succeed. A campaign with a
/// budget of 100 and 20 concurrent charges of 10: exactly 10 succeed.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn stock_and_budgets_are_never_overspent() {
    let dir = tempfile::tempdir().unwrap();
    for database in databases(dir.path(), 8).await {
        let store = database.store.clone();
        let lamp = Reward {
            id: "lamp".into(),
            name: "Desk lamp".into(),
            points_cost: 500,
            stock: Some(10),
            per_member_limit: Some(1),
        };
        let unlimited = Reward {
            id: "voucher".into(),
            name: "Voucher".into(),
            points_cost: 100,
            stock: None,
            per_member_limit: None,
        };
        store.create_reward(db(&database), TENANT, &lamp).await.unwrap();
        store
            .create_reward(db(&database), TENANT, &unlimited)
            .await
            .unwrap();
        assert!(matches!(
            store.create_reward(db(&database), TENANT, &lamp).await,
            Err(StoreError::AlreadyExists { .. })
        ));
        let stored = store
            .reward(db(&database), TENANT, "lamp")
            .await
            .unwrap()
            .unwrap();
        assert_eq!((stored.reward, stored.revision), (lamp.clone(), 1));
        let page = store.rewards_page(db(&database), TENANT, None, 10).await.unwrap();
        assert_eq!(page.len(), 2);
        assert!(
            store
                .reward(db(&database), "tenant-b", "lamp")
                .await
                .unwrap()
                .is_none()
        );

        let started = Instant::now();
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..50 {
            let store = store.clone();
            tasks.spawn(async move {
                let txn = store.begin_write().await.unwrap();
                match store.take_stock(&txn, TENANT, "lamp", 1).await {
                    Ok(()) => {
                        txn.commit().await.unwrap();
                        true
                    }
                    Err(StoreError::Domain(DomainError::OutOfStock { .. })) => {
                        txn.rollback().await.unwrap();
                        false
                    }
                    Err(other) => panic!("unexpected {other:?}"),
                }
            });
        }
        let mut taken = 0;
        while let Some(result) = tasks.join_next().await {
            taken += usize::from(result.unwrap());
        }
        assert_eq!(taken, 10, "{}", database.label);
        let stock = |reward: Option<crm_loyalty::store::StoredReward>| reward.unwrap().reward.stock;
        assert_eq!(
            stock(store.reward(db(&database), TENANT, "lamp").await.unwrap()),
            Some(0)
        );
        assert!(
            store
                .return_stock(db(&database), TENANT, "lamp", 2)
                .await
                .unwrap()
        );
        assert_eq!(
            stock(store.reward(db(&database), TENANT, "lamp").await.unwrap()),
            Some(2)
        );
        store
            .take_stock(db(&database), TENANT, "voucher", 1_000)
            .await
            .unwrap();
        assert_eq!(
            stock(store.reward(db(&database), TENANT, "voucher").await.unwrap()),
            None
        );
        assert!(matches!(
            store.take_stock(db(&database), TENANT, "missing", 1).await,
            Err(StoreError::NotFound { .. })
        ));
        let renamed = Reward {
            name: "Lamp".into(),
            ..lamp.clone()
        };
        assert_eq!(
            store
                .update_reward(db(&database), TENANT, &renamed, Some(1))
                .await
                .unwrap(),
            2
        );
        assert!(matches!(
            store
                .update_reward(db(&database), TENANT, &renamed, Some(1))
                .await,
            Err(StoreError::Conflict(_))
        ));
        assert!(
            store
                .delete_reward(db(&database), TENANT, "voucher")
                .await
                .unwrap()
        );
        assert!(
            !store
                .delete_reward(db(&database), TENANT, "voucher")
                .await
                .unwrap()
        );

        let campaign = Campaign {
            id: "spring".into(),
            starts_at: day(0),
            ends_at: day(30),
            conditions: CampaignConditions {
                channels: BTreeSet::from(["web".to_owned()]),
                min_amount_minor: 1_000,
                first_purchase_only: true,
                ..CampaignConditions::default()
            },
            bonus: CampaignBonus::ExtraMultiplier { basis_points: 5_000 },
            budget_points: Some(100),
            awarded_points: 0,
        };
        store
            .create_campaign(db(&database), TENANT, &campaign)
            .await
            .unwrap();
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..20 {
            let store = store.clone();
            tasks.spawn(async move {
                let txn = store.begin_write().await.unwrap();
                match store.charge_campaign(&txn, TENANT, "spring", 10).await {
                    Ok(()) => {
                        txn.commit().await.unwrap();
                        true
                    }
                    Err(StoreError::BudgetExhausted { .. }) => {
                        txn.rollback().await.unwrap();
                        false
                    }
                    Err(other) => panic!("unexpected {other:?}"),
                }
            });
        }
        let mut charged = 0;
        while let Some(result) = tasks.join_next().await {
            charged += usize::from(result.unwrap());
        }
        assert_eq!(charged, 10, "{}", database.label);
        let elapsed = started.elapsed();
        let stored = store
            .campaign(db(&database), TENANT, "spring")
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            stored.campaign,
            Campaign {
                awarded_points: 100,
                ..campaign.clone()
            }
        );
        // A new definition keeps what was awarded.
        let extended = Campaign {
            ends_at: day(60),
            budget_points: Some(150),
            awarded_points: 0,
            ..campaign.clone()
        };
        assert_eq!(
            store
                .update_campaign(db(&database), TENANT, &extended, None)
                .await
                .unwrap(),
            2
        );
        let running = store
            .campaigns_running(db(&database), TENANT, day(45))
            .await
            .unwrap();
        assert_eq!(
            running,
            vec![Campaign {
                awarded_points: 100,
                ..extended
            }]
        );
        assert!(
            store
                .campaigns_running(db(&database), TENANT, day(60))
                .await
                .unwrap()
                .is_empty()
        );
        eprintln!("{}: stock and budget races in {elapsed:?}", database.label);
        database.drop_schema().await;
    }
}

/// The jobs' reads: lots expiring in a window and pending lots due to mature, across the
/// tenant, page by page.
#[tokio::test]
async fn due_lots_page_through_the_tenant() {
    let dir = tempfile::tempdir().unwrap();
    for database in databases(dir.path(), 4).await {
        let store = &database.store;
        let program = program();
        let mut expected_expiring = Vec::new();
        for name in ["erin", "frank", "gina"] {
            let mut account = create(store, &program, name, day(0)).await;
            for offset in 0..3 {
                let earned = day(-20 - offset);
                step(
                    store,
                    &mut account,
                    &program,
                    earn(&format!("{name}-{offset}"), 10, earned, day(0)),
                )
                .await;
                // Pending: earned now, matures in 14 days.
                step(
                    store,
                    &mut account,
                    &program,
                    earn(&format!("{name}-pending-{offset}"), 5, day(offset), day(offset)),
                )
                .await;
            }
            expected_expiring.extend(account.lots().filter(|lot| lot.remaining_points > 0).cloned());
        }
        // Everything expires about a year on; nothing is due before.
        let before = store
            .lots_expiring(db(&database), TENANT, None, day(300), None, 100)
            .await
            .unwrap();
        assert!(before.is_empty());
        let mut seen = Vec::new();
        let mut after = None;
        loop {
            let page = store
                .lots_expiring(db(&database), TENANT, Some(day(300)), day(400), after.as_ref(), 4)
                .await
                .unwrap();
            let Some(last) = page.last() else { break };
            after = last.expiry_cursor();
            seen.extend(page);
        }
        expected_expiring
            .sort_by(|left, right| (left.expires_at, &left.id).cmp(&(right.expires_at, &right.id)));
        assert_eq!(
            seen.iter().map(|held| held.lot.clone()).collect::<Vec<_>>(),
            expected_expiring
        );
        assert!(
            seen.iter()
                .all(|held| held.lot.id.as_str().contains(held.holder.as_str()))
        );

        let maturing = store
            .lots_maturing(db(&database), TENANT, day(15), None, 100)
            .await
            .unwrap();
        // Pending lots earned on days 0 and 1 mature by day 15, for each of the three.
        assert_eq!(maturing.len(), 6);
        let first_page = store
            .lots_maturing(db(&database), TENANT, day(100), None, 5)
            .await
            .unwrap();
        let second_page = store
            .lots_maturing(
                db(&database),
                TENANT,
                day(100),
                first_page.last().map(|held| held.maturity_cursor()).as_ref(),
                5,
            )
            .await
            .unwrap();
        assert_eq!((first_page.len(), second_page.len()), (5, 4));
        database.drop_schema().await;
    }
}
