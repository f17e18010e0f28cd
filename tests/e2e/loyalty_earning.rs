//! Loyalty earning from the suite's own events: purchases recorded with interaction earn
//! points (with the referrer's bonus on a referred customer's first purchase), refunds take
//! back their share, merges and unmerges in customer-profile move the points; every event
//! re-delivered changes nothing, and loyalty killed during a stream of purchases catches up
//! with nothing lost and nothing doubled. Embedded and PostgreSQL + Redis, one process and
//! split.

use std::collections::HashMap;
use std::time::Duration;

use crm_tests::loyalty::loyalty_service_client::LoyaltyServiceClient;
use crm_tests::loyalty::{self as pb, ledger_entry};
use crm_tests::{Backend, Suite, Topology, interaction, new_customer, profile, unique_tenant, with_tenant};
use sea_orm::ConnectionTrait;
use tonic::transport::Channel;

use crate::crm;
use crate::segmentation::{Interactions, Profiles, eventually, import_customers, usd_minor};
use crate::segments::create_customer;

type Loyalty = LoyaltyServiceClient<Channel>;

const WAIT: Duration = Duration::from_secs(60);

/// 1 point per whole dollar, rounded down, spendable at once; 50 points for a referral.
fn program() -> pb::Program {
    pb::Program {
        currency_code: "USD".into(),
        earn_rate: Some(pb::EarnRate {
            points: 1,
            per_major_units: 1,
        }),
        rounding: pb::Rounding::Floor as i32,
        pending_days: 0,
        expiry_months: 24,
        tier_basis: pb::TierBasis::QualifyingPoints as i32,
        tier_window_months: 12,
        tier_evaluation_period_months: 12,
        tiers: vec![pb::Tier {
            name: "silver".into(),
            threshold: 1_000,
            earn_multiplier_bp: 12_500,
            discount_percent: 0,
        }],
        referral_bonus_points: 50,
        ..Default::default()
    }
}

async fn set_program(loyalty: &mut Loyalty, tenant: &str) {
    loyalty
        .update_program(with_tenant(
            tenant,
            pb::UpdateProgramRequest {
                program: Some(program()),
                request_id: String::new(),
            },
        ))
        .await
        .unwrap();
}

fn account_of(customer: &str) -> String {
    customer.replacen("customers/", "accounts/", 1)
}

/// The account holding `customer`'s points, or None without one.
async fn account(loyalty: &mut Loyalty, tenant: &str, customer: &str) -> Option<pb::Account> {
    match loyalty
        .get_account(with_tenant(
            tenant,
            pb::GetAccountRequest {
                name: account_of(customer),
            },
        ))
        .await
    {
        Ok(response) => Some(response.into_inner()),
        Err(status) if status.code() == tonic::Code::NotFound => None,
        Err(status) => panic!("GetAccount {customer}: {status}"),
    }
}

async fn balance(loyalty: &mut Loyalty, tenant: &str, customer: &str) -> Option<i64> {
    account(loyalty, tenant, customer)
        .await
        .map(|account| account.balance)
}

/// Waits until every customer's balance is what `want` says.
async fn balances_become(loyalty: &Loyalty, tenant: &str, want: &[(&str, i64)], what: &str) {
    eventually(what, WAIT, || {
        let mut loyalty = loyalty.clone();
        let want: Vec<(String, i64)> = want
            .iter()
            .map(|(customer, points)| ((*customer).to_owned(), *points))
            .collect();
        let tenant = tenant.to_owned();
        async move {
            for (customer, points) in want {
                if balance(&mut loyalty, &tenant, &customer).await != Some(points) {
                    return false;
                }
            }
            true
        }
    })
    .await;
}

async fn purchase(
    interactions: &mut Interactions,
    tenant: &str,
    customer: &str,
    order: &str,
    minor: i64,
) -> String {
    interactions
        .create_purchase(with_tenant(
            tenant,
            interaction::CreatePurchaseRequest {
                parent: customer.to_owned(),
                purchase: Some(interaction::Purchase {
                    external_order_id: order.to_owned(),
                    amount: Some(usd_minor(minor)),
                    channel: interaction::Channel::Web as i32,
                    ..Default::default()
                }),
                request_id: String::new(),
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .name
}

async fn refund(interactions: &mut Interactions, tenant: &str, purchase: &str, minor: i64) {
    interactions
        .create_refund(with_tenant(
            tenant,
            interaction::CreateRefundRequest {
                parent: purchase.to_owned(),
                refund: Some(interaction::Refund {
                    amount: Some(usd_minor(minor)),
                    ..Default::default()
                }),
                request_id: String::new(),
            },
        ))
        .await
        .unwrap();
}

/// An account's own ledger, oldest first.
async fn ledger(loyalty: &mut Loyalty, tenant: &str, customer: &str) -> Vec<pb::LedgerEntry> {
    loyalty
        .list_ledger_entries(with_tenant(
            tenant,
            pb::ListLedgerEntriesRequest {
                parent: account_of(customer),
                page_size: 1000,
                page_token: String::new(),
                oldest_first: true,
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .entries
}

fn id_of(name: &str) -> &str {
    name.rsplit('/').next().unwrap()
}

/// Purchases earn, the referrer is paid once, refunds reverse their share, merges and
/// unmerges move points; returns the tenant and each customer's final balance.
async fn earning(suite: &Suite) -> (String, Vec<(String, i64)>) {
    let tenant = unique_tenant("earn");
    let mut profiles: Profiles = suite.profile_client().await;
    let mut interactions: Interactions = suite.interaction_client().await;
    let mut loyalty = suite.loyalty_client().await;

    let ann = create_customer(
        &mut profiles,
        &tenant,
        new_customer(profile::CustomerKind::Consumer, "Ann"),
    )
    .await;
    let ben = create_customer(&mut profiles, &tenant, {
        let mut customer = new_customer(profile::CustomerKind::Consumer, "Ben");
        customer.referrer = ann.clone();
        customer
    })
    .await;
    let cat = create_customer(
        &mut profiles,
        &tenant,
        new_customer(profile::CustomerKind::Consumer, "Cat"),
    )
    .await;

    // Before the tenant has a program, purchases earn nothing (and never will).
    let early = purchase(&mut interactions, &tenant, &cat, "c0", 5_000).await;
    set_program(&mut loyalty, &tenant).await;

    // 120.50 earns 120, and Ben's first purchase pays Ann's referral bonus; his second doesn't.
    let b1 = purchase(&mut interactions, &tenant, &ben, "b1", 12_050).await;
    let b2 = purchase(&mut interactions, &tenant, &ben, "b2", 8_000).await;
    balances_become(
        &loyalty,
        &tenant,
        &[(&ben, 200), (&ann, 50)],
        "Ben earned 200, Ann 50",
    )
    .await;

    // Refunding half of b1 takes back floor(120 × 60.25 / 120.50) = 60; the rest of it the
    // other 60, so partial refunds add up to the accrual.
    refund(&mut interactions, &tenant, &b1, 6_025).await;
    balances_become(&loyalty, &tenant, &[(&ben, 140)], "the refund took 60 back").await;
    refund(&mut interactions, &tenant, &b1, 6_025).await;
    balances_become(
        &loyalty,
        &tenant,
        &[(&ben, 80)],
        "the second refund took the other 60",
    )
    .await;
    // Refunding the purchase before the program reverses nothing.
    refund(&mut interactions, &tenant, &early, 1_000).await;

    let entries = ledger(&mut loyalty, &tenant, &ben).await;
    let kinds: Vec<(i32, String)> = entries
        .iter()
        .map(|entry| (entry.kind, entry.entry_id.clone()))
        .collect();
    assert_eq!(
        kinds,
        vec![
            (ledger_entry::Kind::Earn as i32, format!("accrual:{}", id_of(&b1))),
            (ledger_entry::Kind::Earn as i32, format!("accrual:{}", id_of(&b2))),
            (ledger_entry::Kind::RefundReversal as i32, kinds[2].1.clone()),
            (ledger_entry::Kind::RefundReversal as i32, kinds[3].1.clone()),
        ]
    );
    assert_eq!(entries.iter().map(|entry| entry.balance_delta).sum::<i64>(), 80);
    let ann_entries = ledger(&mut loyalty, &tenant, &ann).await;
    assert_eq!(ann_entries.len(), 1);
    assert_eq!(ann_entries[0].entry_id, format!("referral:{}", id_of(&b1)));

    // Cat earns 30, is merged into Ben (her points follow), buys while merged (Ben's account
    // earns it for her), and is split off again with both her lots.
    purchase(&mut interactions, &tenant, &cat, "c1", 3_000).await;
    balances_become(&loyalty, &tenant, &[(&cat, 30)], "Cat earned 30").await;
    profiles
        .merge_customers(with_tenant(
            &tenant,
            profile::MergeCustomersRequest {
                survivor: ben.clone(),
                merged: vec![cat.clone()],
                ..Default::default()
            },
        ))
        .await
        .unwrap();
    eventually("Cat's points moved to Ben", WAIT, || {
        let mut loyalty = loyalty.clone();
        let (tenant, cat, ben) = (tenant.clone(), cat.clone(), ben.clone());
        async move {
            let held = account(&mut loyalty, &tenant, &cat).await;
            held.is_some_and(|held| held.name == account_of(&ben) && held.balance == 110)
        }
    })
    .await;
    purchase(&mut interactions, &tenant, &cat, "c2", 1_000).await;
    balances_become(
        &loyalty,
        &tenant,
        &[(&ben, 120)],
        "Cat's purchase while merged went to Ben",
    )
    .await;
    profiles
        .unmerge_customer(with_tenant(
            &tenant,
            profile::UnmergeCustomerRequest {
                name: cat.clone(),
                request_id: String::new(),
            },
        ))
        .await
        .unwrap();
    balances_become(
        &loyalty,
        &tenant,
        &[(&ben, 80), (&cat, 40)],
        "the unmerge gave Cat her 40 back",
    )
    .await;

    // The hot-score hash carries the balance.
    if let Backend::Production { redis_url, .. } = &suite.backend {
        let redis = redis::Client::open(redis_url.as_str()).unwrap();
        let mut connection = redis.get_multiplexed_async_connection().await.unwrap();
        let key = format!("crm:score:{{{tenant}/{}}}", id_of(&cat));
        let points: Option<String> = redis::cmd("HGET")
            .arg(&key)
            .arg("points")
            .query_async(&mut connection)
            .await
            .unwrap();
        assert_eq!(points.as_deref(), Some("40"), "{key}");
    }
    (tenant, vec![(ann, 50), (ben, 80), (cat, 40)])
}

/// Every event of both feeds delivered a second time (the cursors wound back to the start
/// while loyalty is down) changes no balance and adds no entry.
async fn redelivered_events_change_nothing(suite: &mut Suite, tenant: &str, want: &[(String, i64)]) {
    let mut loyalty = suite.loyalty_client().await;
    let mut entry_counts = HashMap::new();
    for (customer, _) in want {
        entry_counts.insert(
            customer.clone(),
            ledger(&mut loyalty, tenant, customer).await.len(),
        );
    }
    let index = suite
        .processes
        .iter()
        .position(|process| process.role == "loyalty" || process.role == "all")
        .unwrap();
    suite.processes[index].kill().await;
    let store = suite.store("loyalty").await;
    let rewound = store
        .execute_unprepared(
            "UPDATE feed_cursors SET position = 0 WHERE source IN ('interaction', 'customer-profile')",
        )
        .await
        .unwrap();
    assert_eq!(rewound.rows_affected(), 2, "both feeds had a cursor");
    drop(store);
    let args = loyalty_args(suite, index);
    suite.restart(index, &args).await;
    suite.wait_serving().await;
    let mut loyalty = suite.loyalty_client().await;
    // Wait until the feeds are read again to the end (both cursors back where they were).
    let store = suite.store("loyalty").await;
    eventually("the feeds were read again", WAIT, || {
        let store = store.clone();
        async move {
            let row = store
                .query_one_raw(sea_orm::Statement::from_string(
                    store.get_database_backend(),
                    "SELECT MIN(position) AS low FROM feed_cursors \
                     WHERE source IN ('interaction', 'customer-profile')",
                ))
                .await
                .unwrap()
                .unwrap();
            row.try_get::<i64>("", "low").unwrap() > 0
        }
    })
    .await;
    // A last event after the replay proves the follower is past the old ones.
    for (customer, points) in want {
        assert_eq!(
            balance(&mut loyalty, tenant, customer).await,
            Some(*points),
            "{customer}"
        );
        assert_eq!(
            ledger(&mut loyalty, tenant, customer).await.len(),
            entry_counts[customer],
            "{customer}: no entry added by the re-delivery"
        );
    }
}

/// Erasing Cat in customer-profile: her account no longer answers to her id, Ben's points
/// (some earned for her while merged) are untouched, her hot-score hash loses its points.
async fn erasure(suite: &Suite, tenant: &str, want: &[(String, i64)]) {
    let mut profiles: Profiles = suite.profile_client().await;
    let loyalty = suite.loyalty_client().await;
    let (ben, cat) = (&want[1].0, &want[2].0);
    profiles
        .erase_customer(with_tenant(
            tenant,
            profile::EraseCustomerRequest {
                name: cat.clone(),
                request_id: String::new(),
            },
        ))
        .await
        .unwrap();
    eventually("Cat's account no longer answers to her", WAIT, || {
        let mut loyalty = loyalty.clone();
        let (tenant, cat) = (tenant.to_owned(), cat.clone());
        async move { account(&mut loyalty, &tenant, &cat).await.is_none() }
    })
    .await;
    let mut loyalty = loyalty;
    assert_eq!(balance(&mut loyalty, tenant, ben).await, Some(want[1].1));
    if let Backend::Production { redis_url, .. } = &suite.backend {
        let redis = redis::Client::open(redis_url.as_str()).unwrap();
        let mut connection = redis.get_multiplexed_async_connection().await.unwrap();
        let key = format!("crm:score:{{{tenant}/{}}}", id_of(cat));
        let points: Option<String> = redis::cmd("HGET")
            .arg(&key)
            .arg("points")
            .query_async(&mut connection)
            .await
            .unwrap();
        assert_eq!(points, None, "{key}");
    }
}

/// The flags to restart the process at `index` with: its role, its address, its peers.
fn loyalty_args(suite: &Suite, index: usize) -> Vec<String> {
    let process = &suite.processes[index];
    if process.role == "all" {
        return Vec::new();
    }
    let mut args = vec![
        "--services".to_owned(),
        "loyalty".to_owned(),
        "--listen".to_owned(),
        process.addr.to_string(),
    ];
    for peer in &suite.processes[..index] {
        args.push("--peer".to_owned());
        args.push(format!("{}={}", peer.role, peer.url()));
    }
    args
}

/// Loyalty killed while 2,000 purchases stream in, restarted: every customer's balance is
/// the sum of what their purchases earn, none lost, none doubled.
async fn killed_during_accruals(suite: &mut Suite) {
    let tenant = unique_tenant("earnkill");
    let mut profiles: Profiles = suite.profile_client().await;
    let mut interactions: Interactions = suite.interaction_client().await;
    let mut loyalty = suite.loyalty_client().await;
    // Without tiers, so each purchase earns its whole dollars whatever came before it.
    loyalty
        .update_program(with_tenant(
            &tenant,
            pb::UpdateProgramRequest {
                program: Some(pb::Program {
                    tiers: Vec::new(),
                    ..program()
                }),
                request_id: String::new(),
            },
        ))
        .await
        .unwrap();
    let keys: Vec<String> = (0..50).map(|index| format!("earnkill-{index:03}")).collect();
    let key_refs: Vec<&str> = keys.iter().map(String::as_str).collect();
    let customers = import_customers(&mut profiles, &tenant, &key_refs).await;
    let index = suite
        .processes
        .iter()
        .position(|process| process.role == "loyalty")
        .unwrap();
    let mut expected: HashMap<String, i64> = HashMap::new();
    for round in 0..20 {
        let rows: Vec<interaction::PurchaseRow> = (0..100)
            .map(|row| {
                let customer = &customers[(round * 7 + row) % customers.len()];
                let minor = 1_000 + (round * 100 + row) as i64 * 7;
                *expected.entry(customer.clone()).or_default() += minor / 100;
                interaction::PurchaseRow {
                    parent: customer.clone(),
                    purchase: Some(interaction::Purchase {
                        external_order_id: format!("k-{round}-{row}"),
                        amount: Some(usd_minor(minor)),
                        ..Default::default()
                    }),
                }
            })
            .collect();
        let ingested = interactions
            .ingest_purchases(with_tenant(
                &tenant,
                tokio_stream::iter([interaction::IngestPurchasesRequest { rows }]),
            ))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(ingested.created_count, 100);
        if round == 6 {
            suite.processes[index].kill().await;
        }
        if round == 13 {
            let args = loyalty_args(suite, index);
            suite.restart(index, &args).await;
        }
    }
    let want: Vec<(&str, i64)> = customers
        .iter()
        .map(|customer| (customer.as_str(), expected.get(customer).copied().unwrap_or(0)))
        .collect();
    let loyalty = suite.loyalty_client().await;
    balances_become(&loyalty, &tenant, &want, "loyalty caught up after the restart").await;
    let mut loyalty = loyalty;
    for customer in &customers {
        let entries = ledger(&mut loyalty, &tenant, customer).await;
        let purchases = entries
            .iter()
            .filter(|entry| entry.kind == ledger_entry::Kind::Earn as i32)
            .count();
        let mut ids: Vec<&str> = entries.iter().map(|entry| entry.entry_id.as_str()).collect();
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(ids.len(), entries.len(), "{customer}: an entry twice");
        assert!(purchases > 0, "{customer}");
    }
}

fn campaign(
    start: prost_types::Timestamp,
    conditions: pb::CampaignConditions,
    bonus: pb::campaign_bonus::Kind,
    budget: Option<i64>,
) -> pb::Campaign {
    pb::Campaign {
        start_time: Some(start),
        end_time: Some(prost_types::Timestamp {
            seconds: start.seconds + 86_400,
            nanos: 0,
        }),
        conditions: Some(conditions),
        bonus: Some(pb::CampaignBonus { kind: Some(bonus) }),
        budget_points: budget,
        ..Default::default()
    }
}

async fn quote(
    loyalty: &mut Loyalty,
    tenant: &str,
    customer: &str,
    minor: i64,
    channel: &str,
) -> Result<pb::PointsQuote, tonic::Status> {
    loyalty
        .quote_points(with_tenant(
            tenant,
            pb::QuotePointsRequest {
                account: account_of(customer),
                lines: vec![pb::BasketLine {
                    amount: Some(usd_minor(minor)),
                    category: String::new(),
                }],
                channel: channel.into(),
                purchase_time: None,
            },
        ))
        .await
        .map(tonic::Response::into_inner)
}

async fn next(stream: &mut tonic::Streaming<pb::LoyaltyEvent>) -> pb::LoyaltyEvent {
    tokio::time::timeout(WAIT, stream.message())
        .await
        .expect("an event in time")
        .unwrap()
        .unwrap()
}

/// Campaigns award on recorded purchases as a quote said they would, within their budget;
/// AccruePoints earns for other sources once per request id.
async fn campaigns_quotes_and_other_sources(suite: &Suite) {
    let tenant = unique_tenant("campaign");
    let mut profiles: Profiles = suite.profile_client().await;
    let mut interactions: Interactions = suite.interaction_client().await;
    let mut loyalty = suite.loyalty_client().await;
    loyalty
        .update_program(with_tenant(
            &tenant,
            pb::UpdateProgramRequest {
                program: Some(pb::Program {
                    tiers: Vec::new(),
                    referral_bonus_points: 0,
                    ..program()
                }),
                request_id: String::new(),
            },
        ))
        .await
        .unwrap();
    let start = {
        let now = chrono::Utc::now() - chrono::TimeDelta::minutes(1);
        prost_types::Timestamp {
            seconds: now.timestamp(),
            nanos: 0,
        }
    };
    // An opening promotion of 100 points with 150 to give, and double points on the web from
    // 50.00.
    for (id, conditions, bonus, budget) in [
        (
            "opening",
            pb::CampaignConditions {
                first_purchase_only: true,
                ..Default::default()
            },
            pb::campaign_bonus::Kind::FixedPoints(100),
            Some(150),
        ),
        (
            "web-double",
            pb::CampaignConditions {
                channels: vec!["CHANNEL_WEB".into()],
                min_amount_minor: 5_000,
                ..Default::default()
            },
            pb::campaign_bonus::Kind::ExtraMultiplierBp(10_000),
            None,
        ),
    ] {
        loyalty
            .create_campaign(with_tenant(
                &tenant,
                pb::CreateCampaignRequest {
                    campaign: Some(campaign(start, conditions, bonus, budget)),
                    campaign_id: id.into(),
                    request_id: String::new(),
                },
            ))
            .await
            .unwrap();
    }
    let mut buyers = Vec::new();
    for name in ["Ida", "Jon", "Kim"] {
        buyers.push(
            create_customer(
                &mut profiles,
                &tenant,
                new_customer(profile::CustomerKind::Consumer, name),
            )
            .await,
        );
    }
    let (ida, jon, kim) = (&buyers[0], &buyers[1], &buyers[2]);

    // The quote: 60 base, 60 for the web, 100 for a first purchase.
    let before = quote(&mut loyalty, &tenant, ida, 6_000, "CHANNEL_WEB")
        .await
        .unwrap();
    assert_eq!(
        (before.base_points, before.total_points, before.first_purchase),
        (60, 220, true)
    );
    assert_eq!(before.campaign_awards.len(), 2);
    // In a store, no web bonus.
    assert_eq!(
        quote(&mut loyalty, &tenant, ida, 6_000, "CHANNEL_STORE")
            .await
            .unwrap()
            .total_points,
        160
    );
    purchase(&mut interactions, &tenant, ida, "i1", 6_000).await;
    balances_become(&loyalty, &tenant, &[(ida, 220)], "Ida earned what the quote said").await;
    let after = quote(&mut loyalty, &tenant, ida, 6_000, "CHANNEL_WEB")
        .await
        .unwrap();
    assert_eq!((after.total_points, after.first_purchase), (120, false));

    // Jon's opening bonus is cut to the 50 left; Kim's is gone.
    purchase(&mut interactions, &tenant, jon, "j1", 6_000).await;
    balances_become(
        &loyalty,
        &tenant,
        &[(jon, 170)],
        "Jon got the 50 left of the budget",
    )
    .await;
    purchase(&mut interactions, &tenant, kim, "k1", 6_000).await;
    balances_become(&loyalty, &tenant, &[(kim, 120)], "Kim got no opening bonus").await;
    let opening = loyalty
        .get_campaign(with_tenant(
            &tenant,
            pb::GetCampaignRequest {
                name: "campaigns/opening".into(),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(opening.awarded_points, 150);

    // Points from another source, once per request id.
    let accrue = |request_id: &str, source: &str| pb::AccruePointsRequest {
        account: account_of(kim),
        points: 25,
        source: source.into(),
        description: "answered the survey".into(),
        request_id: request_id.into(),
    };
    let first = loyalty
        .accrue_points(with_tenant(&tenant, accrue("survey-1", "survey")))
        .await
        .unwrap()
        .into_inner();
    let again = loyalty
        .accrue_points(with_tenant(&tenant, accrue("survey-1", "survey")))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(first, again);
    assert_eq!(
        (first.earn_source.as_str(), first.reason.as_str()),
        ("survey", "answered the survey")
    );
    assert_eq!(balance(&mut loyalty, &tenant, kim).await, Some(145));
    let reserved = loyalty
        .accrue_points(with_tenant(&tenant, accrue("survey-2", "purchase")))
        .await
        .unwrap_err();
    assert_eq!(crm_tests::violated_field(&reserved).as_deref(), Some("source"));
    let reused = loyalty
        .accrue_points(with_tenant(&tenant, accrue("survey-1", "partner")))
        .await
        .unwrap_err();
    assert_eq!(crm_tests::violated_field(&reused).as_deref(), Some("request_id"));
    let bad_channel = quote(&mut loyalty, &tenant, kim, 100, "CHANNEL_NOPE")
        .await
        .unwrap_err();
    assert_eq!(
        crm_tests::violated_field(&bad_channel).as_deref(),
        Some("channel")
    );
    let euros = loyalty
        .quote_points(with_tenant(
            &tenant,
            pb::QuotePointsRequest {
                account: account_of(kim),
                lines: vec![pb::BasketLine {
                    amount: Some(crm_proto::money::from_minor_units("EUR", 100)),
                    category: String::new(),
                }],
                ..Default::default()
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(
        crm_tests::violated_field(&euros).as_deref(),
        Some("basket.currency_code")
    );

    // A redemption and its cancellation are announced on the tenant's event stream, which
    // resumes after a cursor it gave.
    loyalty
        .create_reward(with_tenant(
            &tenant,
            pb::CreateRewardRequest {
                reward: Some(pb::Reward {
                    display_name: "Mug".into(),
                    points_cost: 40,
                    ..Default::default()
                }),
                reward_id: "mug".into(),
                request_id: String::new(),
            },
        ))
        .await
        .unwrap();
    let redeemed = loyalty
        .redeem_reward(with_tenant(
            &tenant,
            pb::RedeemRewardRequest {
                account: account_of(kim),
                reward: "rewards/mug".into(),
                quantity: 2,
                request_id: "mug-1".into(),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    loyalty
        .cancel_redemption(with_tenant(
            &tenant,
            pb::CancelRedemptionRequest {
                account: account_of(kim),
                redemption_entry_id: redeemed.entry_id.clone(),
                request_id: "mug-1-cancel".into(),
            },
        ))
        .await
        .unwrap();
    let mut stream = loyalty
        .subscribe_loyalty_events(with_tenant(&tenant, pb::SubscribeLoyaltyEventsRequest::default()))
        .await
        .unwrap()
        .into_inner();
    let made = next(&mut stream).await;
    assert_eq!(made.r#type, pb::loyalty_event::Type::RedemptionMade as i32);
    assert_eq!(
        (
            made.account.as_str(),
            made.points,
            made.reward.as_str(),
            made.reward_quantity
        ),
        (account_of(kim).as_str(), 80, "rewards/mug", 2)
    );
    assert_eq!(made.redemption_entry_id, redeemed.entry_id);
    let cancelled = next(&mut stream).await;
    assert_eq!(
        cancelled.r#type,
        pb::loyalty_event::Type::RedemptionCancelled as i32
    );
    assert_eq!(cancelled.points, 80);
    drop(stream);
    let mut resumed = loyalty
        .subscribe_loyalty_events(with_tenant(
            &tenant,
            pb::SubscribeLoyaltyEventsRequest {
                cursor: made.cursor.clone(),
                types: Vec::new(),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(next(&mut resumed).await.cursor, cancelled.cursor);
    let bad_cursor = loyalty
        .subscribe_loyalty_events(with_tenant(
            &tenant,
            pb::SubscribeLoyaltyEventsRequest {
                cursor: "yesterday".into(),
                types: Vec::new(),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(crm_tests::violated_field(&bad_cursor).as_deref(), Some("cursor"));
}

/// A campaign for a segment's members asks segmentation, a birthday campaign reads the
/// customer's `birthday` attribute: both apply to the customer they name and to no one else,
/// in the quote and in the recorded purchase.
async fn segment_and_birthday_campaigns(suite: &Suite) {
    let tenant = unique_tenant("campaign-who");
    let mut profiles: Profiles = suite.profile_client().await;
    let mut interactions: Interactions = suite.interaction_client().await;
    let mut segments = suite.segmentation_client().await;
    let mut loyalty = suite.loyalty_client().await;
    loyalty
        .update_program(with_tenant(
            &tenant,
            pb::UpdateProgramRequest {
                program: Some(pb::Program {
                    tiers: Vec::new(),
                    referral_bonus_points: 0,
                    ..program()
                }),
                request_id: String::new(),
            },
        ))
        .await
        .unwrap();
    let vip = segments
        .create_segment(with_tenant(
            &tenant,
            crm_tests::segmentation::CreateSegmentRequest {
                segment: Some(crm_tests::segmentation::Segment {
                    display_name: "VIP".into(),
                    expression: r#""vip" in tags"#.into(),
                    ..Default::default()
                }),
                request_id: String::new(),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    let today = chrono::Utc::now().format("%m-%d").to_string();
    let vic = create_customer(&mut profiles, &tenant, {
        let mut customer = new_customer(profile::CustomerKind::Consumer, "Vic");
        customer.tags = vec!["vip".into()];
        customer.attributes.insert(
            "birthday".into(),
            profile::AttributeValue {
                value: Some(profile::attribute_value::Value::StringValue(format!(
                    "1990-{today}"
                ))),
            },
        );
        customer
    })
    .await;
    let reg = create_customer(
        &mut profiles,
        &tenant,
        new_customer(profile::CustomerKind::Consumer, "Reg"),
    )
    .await;
    eventually("Vic is in the VIP segment", WAIT, || {
        let mut segments = segments.clone();
        let (tenant, segment, vic) = (tenant.clone(), vip.name.clone(), vic.clone());
        async move {
            segments
                .check_segment_membership(with_tenant(
                    &tenant,
                    crm_tests::segmentation::CheckSegmentMembershipRequest {
                        segment,
                        customer: vic,
                    },
                ))
                .await
                .is_ok_and(|response| response.into_inner().member)
        }
    })
    .await;
    let start = {
        let now = chrono::Utc::now() - chrono::TimeDelta::minutes(1);
        prost_types::Timestamp {
            seconds: now.timestamp(),
            nanos: 0,
        }
    };
    let segment_id = vip.name.trim_start_matches("segments/").to_owned();
    for (id, conditions, points) in [
        (
            "vip-bonus",
            pb::CampaignConditions {
                segment_ids: vec![segment_id],
                ..Default::default()
            },
            7,
        ),
        (
            "birthday",
            pb::CampaignConditions {
                birthday_only: true,
                ..Default::default()
            },
            11,
        ),
    ] {
        loyalty
            .create_campaign(with_tenant(
                &tenant,
                pb::CreateCampaignRequest {
                    campaign: Some(campaign(
                        start,
                        conditions,
                        pb::campaign_bonus::Kind::FixedPoints(points),
                        None,
                    )),
                    campaign_id: id.into(),
                    request_id: String::new(),
                },
            ))
            .await
            .unwrap();
    }
    let quoted = quote(&mut loyalty, &tenant, &vic, 2_000, "").await.unwrap();
    let mut awarded: Vec<(String, i64)> = quoted
        .campaign_awards
        .iter()
        .map(|award| (award.campaign.clone(), award.points))
        .collect();
    awarded.sort();
    assert_eq!(
        awarded,
        vec![
            ("campaigns/birthday".to_owned(), 11),
            ("campaigns/vip-bonus".to_owned(), 7)
        ]
    );
    assert_eq!(quoted.total_points, 38);
    assert_eq!(
        quote(&mut loyalty, &tenant, &reg, 2_000, "")
            .await
            .unwrap()
            .total_points,
        20
    );
    purchase(&mut interactions, &tenant, &vic, "v1", 2_000).await;
    purchase(&mut interactions, &tenant, &reg, "r1", 2_000).await;
    balances_become(
        &loyalty,
        &tenant,
        &[(&vic, 38), (&reg, 20)],
        "Vic got both bonuses, Reg none",
    )
    .await;
}

async fn run(topology: Topology, backend: Backend) {
    let mut suite = Suite::start(crm(), topology, backend).await;
    campaigns_quotes_and_other_sources(&suite).await;
    segment_and_birthday_campaigns(&suite).await;
    let (tenant, want) = earning(&suite).await;
    redelivered_events_change_nothing(&mut suite, &tenant, &want).await;
    erasure(&suite, &tenant, &want).await;
    if topology == Topology::Split {
        killed_during_accruals(&mut suite).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loyalty_earning_embedded() {
    run(Topology::OneProcess, Backend::Embedded).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loyalty_earning_postgres_redis() {
    if let Some(backend) = Backend::production() {
        run(Topology::OneProcess, backend).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loyalty_earning_split_postgres_redis() {
    if let Some(backend) = Backend::production() {
        run(Topology::Split, backend).await;
    }
}
