//! The loyalty service without gRPC, on SQLite and, with `DATABASE_URL`, on PostgreSQL:
//! batches of feed events (purchases, refunds, merges, unmerges) applied with their cursor,
//! each event once however often it is delivered; and the jobs (maturity, expiry, tier
//! evaluation) at chosen times.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Months, TimeDelta, Utc};
use crm_cache::LocalCache;
use crm_db::DbSettings;
use crm_loyalty::Migrator;
use crm_loyalty::domain::{CustomerId, EarnRate, Program, Rounding, Tier, TierBasis, check_invariants};
use crm_loyalty::service::{BatchReport, FeedChange, FeedItem, Loyalty, PurchaseFacts, RefundFacts};
use crm_loyalty::store::Store;
use crm_proto::loyalty_v1::LoyaltyEvent;
use prost::Message;
use sea_orm::ConnectionTrait;
use sea_orm_migration::MigratorTrait;
use uuid::Uuid;

const TENANT: &str = "tenant-s";
const SOURCE: &str = "interaction";

struct TestService {
    service: Loyalty,
    schema: Option<String>,
    label: &'static str,
}

async fn services(data_dir: &std::path::Path) -> Vec<TestService> {
    let settings = |url| DbSettings {
        url,
        data_dir: data_dir.to_owned(),
        max_connections: 4,
        connect_timeout: Duration::from_secs(10),
    };
    let cache = || Arc::new(LocalCache::new(1000)) as Arc<dyn crm_cache::Cache>;
    let mut services = vec![TestService {
        service: Loyalty::new(
            Store::new(crm_db::connect(&settings(None), "loyalty").await.unwrap()),
            cache(),
            Duration::from_secs(60),
        ),
        schema: None,
        label: "sqlite",
    }];
    match std::env::var("DATABASE_URL") {
        Ok(url) => {
            let schema = format!("loyalty_service_{}", Uuid::now_v7().simple());
            services.push(TestService {
                service: Loyalty::new(
                    Store::new(crm_db::connect(&settings(Some(url)), &schema).await.unwrap()),
                    cache(),
                    Duration::from_secs(60),
                ),
                schema: Some(schema),
                label: "postgres",
            });
        }
        Err(_) => assert!(std::env::var("CI").is_err(), "DATABASE_URL must be set under CI"),
    }
    for test in &services {
        Migrator::up(test.service.store().db(), None).await.unwrap();
    }
    services
}

async fn drop_schema(test: TestService) {
    if let Some(schema) = test.schema {
        test.service
            .store()
            .db()
            .execute_unprepared(&format!("DROP SCHEMA \"{schema}\" CASCADE"))
            .await
            .unwrap();
    }
}

/// USD, 1 point per dollar, 14 days pending, 12 months expiry; gold from 100 qualifying
/// points with a 2x multiplier, evaluated every 3 months over a 6-month window.
fn program() -> Program {
    Program {
        currency: crm_loyalty::domain::Currency {
            code: "USD".into(),
            minor_unit_exponent: 2,
        },
        earn_rate: EarnRate {
            points: 1,
            per_major_units: 1,
        },
        rounding: Rounding::Floor,
        pending_days: 14,
        expiry_months: 12,
        tier_basis: TierBasis::QualifyingPoints,
        tier_window_months: 6,
        tier_evaluation_period_months: 3,
        tiers: vec![Tier {
            name: "gold".into(),
            threshold: 100,
            earn_multiplier_bp: 20_000,
            discount_percent: 5,
        }],
        excluded_categories: BTreeSet::new(),
        referral_bonus_points: 0,
    }
}

fn purchase(position: i64, id: &str, customer: &str, minor: i64, at: DateTime<Utc>) -> FeedItem {
    FeedItem {
        position,
        tenant: TENANT.into(),
        change: FeedChange::Purchase(PurchaseFacts {
            purchase_id: id.into(),
            customer: CustomerId::from(customer),
            purchased_at: at,
            currency_code: "USD".into(),
            amount_minor: minor,
            channel: None,
            profile: None,
            segment_ids: BTreeSet::new(),
        }),
    }
}

fn refund(position: i64, id: &str, purchase: &str, customer: &str, minor: i64) -> FeedItem {
    FeedItem {
        position,
        tenant: TENANT.into(),
        change: FeedChange::Refund(RefundFacts {
            refund_id: id.into(),
            purchase_id: purchase.into(),
            customer: CustomerId::from(customer),
            currency_code: "USD".into(),
            amount_minor: minor,
        }),
    }
}

/// (balance, pending, tier) of the account holding `customer`'s points.
async fn state(service: &Loyalty, customer: &str) -> (i64, i64, Option<String>) {
    let view = service
        .account(TENANT, &CustomerId::from(customer))
        .await
        .unwrap();
    check_invariants(&view.account).unwrap();
    (
        view.account.balance(),
        view.account.pending_points(),
        view.account.tier().map(str::to_owned),
    )
}

#[tokio::test]
async fn feed_batches_apply_each_event_once() {
    let dir = tempfile::tempdir().unwrap();
    for test in services(dir.path()).await {
        let service = &test.service;
        let label = test.label;
        service
            .update_program(TENANT, program(), None, None)
            .await
            .unwrap();
        // Purchases made before the program started earn nothing; these are after it.
        let bought = Utc::now();

        // 60 + 50 for Ann (110: gold at once), 30 for Ben; one batch, one transaction.
        let first = vec![
            purchase(1, "p1", "ann", 6_099, bought),
            purchase(2, "p2", "ben", 3_000, bought),
            purchase(3, "p3", "ann", 5_000, bought),
        ];
        let report = service.apply_feed(SOURCE, &first).await.unwrap();
        assert_eq!(report.applied, 3, "{label}");
        assert_eq!(
            state(service, "ann").await,
            (0, 110, Some("gold".into())),
            "{label}"
        );
        assert_eq!(state(service, "ben").await, (0, 30, None), "{label}");

        // The same batch again, as after a crash before the cursor moved: the cursor leaves
        // it out. Each event again past the cursor (a re-delivery): the entries refuse it.
        assert_eq!(
            service.apply_feed(SOURCE, &first).await.unwrap(),
            BatchReport::default()
        );
        let again: Vec<FeedItem> = first
            .iter()
            .cloned()
            .map(|mut item| {
                item.position += 10;
                item
            })
            .chain([purchase(14, "p4", "ben", 1_000, bought)])
            .collect();
        let report = service.apply_feed(SOURCE, &again).await.unwrap();
        assert_eq!((report.applied, report.replayed), (1, 3), "{label}");
        // Ben's 10 is after Ann turned gold, but Ben is not gold: 1x.
        assert_eq!(state(service, "ben").await, (0, 40, None), "{label}");

        // Gold earns 2x from now on.
        service
            .apply_feed(SOURCE, &[purchase(15, "p5", "ann", 1_000, bought)])
            .await
            .unwrap();
        assert_eq!(
            state(service, "ann").await,
            (0, 130, Some("gold".into())),
            "{label}"
        );

        // Refunds of p1 (60.99 earned 60) in three parts: 20.33 -> 20, 20.33 -> 20, the rest
        // -> 20; they add up to the accrual. A refund of an unknown purchase is skipped.
        let refunds = [
            refund(16, "r1", "p1", "ann", 2_033),
            refund(17, "r2", "p1", "ann", 2_033),
            refund(18, "r3", "p1", "ann", 2_033),
            refund(19, "r4", "nope", "ann", 100),
        ];
        let report = service.apply_feed(SOURCE, &refunds).await.unwrap();
        assert_eq!((report.applied, report.skipped), (3, 1), "{label}");
        assert_eq!(state(service, "ann").await.1, 70, "{label}");

        // Ben merged into Ann: his 40 move; Ann's purchase for Ben lands on Ann's account;
        // the unmerge gives Ben his lots back, including the one earned while merged.
        let merged = FeedItem {
            position: 1,
            tenant: TENANT.into(),
            change: FeedChange::Merged {
                survivor: CustomerId::from("ann"),
                merged: vec![CustomerId::from("ben")],
            },
        };
        service
            .apply_feed("customer-profile", std::slice::from_ref(&merged))
            .await
            .unwrap();
        assert_eq!(state(service, "ann").await.1, 110, "{label}");
        let view = service.account(TENANT, &CustomerId::from("ben")).await.unwrap();
        assert_eq!(view.account.customer(), &CustomerId::from("ann"), "{label}");
        service
            .apply_feed(SOURCE, &[purchase(20, "p6", "ben", 500, bought)])
            .await
            .unwrap();
        // Ann is gold, and Ben's purchase is earned on her account at her multiplier.
        assert_eq!(state(service, "ann").await.1, 120, "{label}");
        // The merge delivered again (a new position) is a no-op.
        let mut merged_again = merged;
        merged_again.position = 2;
        let report = service
            .apply_feed("customer-profile", &[merged_again])
            .await
            .unwrap();
        assert_eq!(report.replayed, 1, "{label}");
        let unmerged = FeedItem {
            position: 3,
            tenant: TENANT.into(),
            change: FeedChange::Unmerged {
                survivor: CustomerId::from("ann"),
                restored: vec![CustomerId::from("ben")],
            },
        };
        service.apply_feed("customer-profile", &[unmerged]).await.unwrap();
        assert_eq!(state(service, "ben").await.1, 50, "{label}");
        assert_eq!(state(service, "ann").await.1, 70, "{label}");
        drop_schema(test).await;
    }
}

#[tokio::test]
async fn jobs_mature_expire_and_evaluate_tiers() {
    let dir = tempfile::tempdir().unwrap();
    for test in services(dir.path()).await {
        let service = &test.service;
        let label = test.label;
        service
            .update_program(TENANT, program(), None, None)
            .await
            .unwrap();
        let bought = Utc::now();
        service
            .apply_feed(
                SOURCE,
                &[
                    purchase(1, "j1", "cat", 12_000, bought),
                    purchase(2, "j2", "dan", 4_000, bought),
                ],
            )
            .await
            .unwrap();
        assert_eq!(
            state(service, "cat").await,
            (0, 120, Some("gold".into())),
            "{label}"
        );

        // Nothing is due yet.
        let report = service.run_jobs(Utc::now()).await.unwrap();
        assert_eq!(
            (report.matured_accounts, report.expired_accounts),
            (0, 0),
            "{label}"
        );

        // After the 14-day return window both lots are spendable; a second run at the same
        // time finds nothing.
        let matured = bought + TimeDelta::days(15);
        let report = service.run_jobs(matured).await.unwrap();
        assert_eq!(report.matured_accounts, 2, "{label}");
        assert_eq!(
            state(service, "cat").await,
            (120, 0, Some("gold".into())),
            "{label}"
        );
        assert_eq!(
            service.run_jobs(matured).await.unwrap().matured_accounts,
            0,
            "{label}"
        );

        // At the evaluation 3 months on, Cat's 120 are still inside the 6-month window: she
        // stays gold. At 9 months they are outside it: down to no tier. The points stay.
        let report = service
            .run_jobs(bought.checked_add_months(Months::new(3)).unwrap() + TimeDelta::minutes(1))
            .await
            .unwrap();
        assert_eq!(report.evaluated_accounts, 2, "{label}");
        assert_eq!(state(service, "cat").await.2.as_deref(), Some("gold"), "{label}");
        service
            .run_jobs(bought.checked_add_months(Months::new(9)).unwrap())
            .await
            .unwrap();
        assert_eq!(state(service, "cat").await, (120, 0, None), "{label}");

        // 12 months after earning, the lots expire: balance 0, the ledger says why.
        // 11.5 months on, both lots expire within the 30 days' notice: announced once.
        let notice = bought.checked_add_months(Months::new(11)).unwrap() + TimeDelta::days(15);
        assert_eq!(
            service.run_jobs(notice).await.unwrap().expiry_notices,
            2,
            "{label}"
        );
        assert_eq!(
            service
                .run_jobs(notice + TimeDelta::days(1))
                .await
                .unwrap()
                .expiry_notices,
            0,
            "{label}"
        );

        let expired = bought.checked_add_months(Months::new(12)).unwrap() + TimeDelta::seconds(1);
        let report = service.run_jobs(expired).await.unwrap();
        assert_eq!(report.expired_accounts, 2, "{label}");
        assert_eq!(state(service, "cat").await.0, 0, "{label}");
        assert_eq!(state(service, "dan").await.0, 0, "{label}");
        assert_eq!(
            service.run_jobs(expired).await.unwrap().expired_accounts,
            0,
            "{label}"
        );

        // What the event log says, in order: Cat up to gold on earning, down at evaluation,
        // then both members' points expiring soon.
        let db = service.store().db();
        crm_db::outbox::assign_positions(db).await.unwrap();
        let events: Vec<(String, LoyaltyEvent)> = crm_db::outbox::read_after(db, Some(TENANT), 0, &[], 100)
            .await
            .unwrap()
            .into_iter()
            .map(|stored| {
                (
                    stored.event_type,
                    LoyaltyEvent::decode(stored.payload.as_slice()).unwrap(),
                )
            })
            .collect();
        let summary: Vec<(&str, &str, &str, &str, i64)> = events
            .iter()
            .map(|(kind, event)| {
                (
                    kind.as_str(),
                    event.account.as_str(),
                    event.from_tier.as_str(),
                    event.to_tier.as_str(),
                    event.points,
                )
            })
            .collect();
        assert_eq!(
            summary,
            vec![
                ("TYPE_TIER_CHANGED", "accounts/cat", "", "gold", 0),
                ("TYPE_TIER_CHANGED", "accounts/cat", "gold", "", 0),
                ("TYPE_POINTS_EXPIRING_SOON", "accounts/cat", "", "", 120),
                ("TYPE_POINTS_EXPIRING_SOON", "accounts/dan", "", "", 40),
            ],
            "{label}"
        );
        drop_schema(test).await;
    }
}

#[tokio::test]
async fn erasure_keeps_the_ledger_under_a_pseudonym() {
    let dir = tempfile::tempdir().unwrap();
    for test in services(dir.path()).await {
        let service = &test.service;
        let label = test.label;
        service
            .update_program(TENANT, program(), None, None)
            .await
            .unwrap();
        let bought = Utc::now();
        let (ann, ben) = ("cust-ann-0001", "cust-ben-0002");
        let mut referred = purchase(2, "e1", ben, 2_000, bought);
        if let FeedChange::Purchase(facts) = &mut referred.change {
            facts.profile = Some(crm_loyalty::service::ProfileFacts {
                referrer: Some(CustomerId::from(ann)),
                birthday: None,
            });
        }
        let mut with_referral = program();
        with_referral.referral_bonus_points = 5;
        service
            .update_program(TENANT, with_referral, None, None)
            .await
            .unwrap();
        service
            .apply_feed(SOURCE, &[purchase(1, "e0", ann, 1_000, bought), referred])
            .await
            .unwrap();
        assert_eq!(state(service, ann).await.1, 15, "{label}");
        assert_eq!(state(service, ben).await.1, 20, "{label}");
        let merged = FeedItem {
            position: 1,
            tenant: TENANT.into(),
            change: FeedChange::Merged {
                survivor: CustomerId::from(ann),
                merged: vec![CustomerId::from(ben)],
            },
        };
        service.apply_feed("customer-profile", &[merged]).await.unwrap();
        // Ann: 10 + the referral's 5 + Ben's 20.
        assert_eq!(state(service, ann).await.1, 35, "{label}");

        let erased = FeedItem {
            position: 2,
            tenant: TENANT.into(),
            change: FeedChange::Erased {
                customer: CustomerId::from(ben),
                pseudonym: CustomerId::from("anon-ben"),
            },
        };
        let report = service
            .apply_feed("customer-profile", std::slice::from_ref(&erased))
            .await
            .unwrap();
        assert_eq!(report.applied, 1, "{label}");
        // Nothing answers to Ben any more; Ann's points are all there, under the pseudonym.
        assert!(
            service.account(TENANT, &CustomerId::from(ben)).await.is_err(),
            "{label}"
        );
        assert_eq!(state(service, ann).await.1, 35, "{label}");
        let view = service.account(TENANT, &CustomerId::from(ann)).await.unwrap();
        let mut mentions = Vec::new();
        let mut accounts = vec![&view.account];
        while let Some(account) = accounts.pop() {
            mentions.push(account.customer().to_string());
            for entry in account.entries() {
                mentions.push(format!("{} {:?}", entry.id, entry.kind));
            }
            for lot in account.lots() {
                mentions.push(lot.origin_customer.to_string());
            }
            accounts.extend(account.absorbed());
        }
        let all = mentions.join("\n");
        assert!(!all.contains(ben), "{label}: {all}");
        assert!(all.contains("anon-ben"), "{label}: {all}");
        let db = service.store().db();
        let named = db
            .query_one_raw(sea_orm::Statement::from_string(
                db.get_database_backend(),
                format!(
                    "SELECT (SELECT COUNT(*) FROM accounts WHERE customer_id = '{ben}' OR merged_into = '{ben}') \
                     + (SELECT COUNT(*) FROM lots WHERE customer_id = '{ben}' OR origin_customer = '{ben}') \
                     + (SELECT COUNT(*) FROM ledger_entries WHERE customer_id = '{ben}' OR entry_id LIKE '%{ben}%') \
                     + (SELECT COUNT(*) FROM first_purchases WHERE customer_id = '{ben}') AS named"
                ),
            ))
            .await
            .unwrap()
            .unwrap()
            .try_get::<i64>("", "named")
            .unwrap();
        assert_eq!(named, 0, "{label}");

        // Delivered again: nothing left to rename. Ann goes on earning.
        let mut again = erased;
        again.position = 3;
        assert_eq!(
            service
                .apply_feed("customer-profile", &[again])
                .await
                .unwrap()
                .replayed,
            1,
            "{label}"
        );
        service
            .apply_feed(SOURCE, &[purchase(5, "e2", ann, 1_000, bought)])
            .await
            .unwrap();
        assert_eq!(state(service, ann).await.1, 45, "{label}");
        drop_schema(test).await;
    }
}
