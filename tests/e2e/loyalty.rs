//! Loyalty: the program, adjustments, the ledger, rewards, redemptions and campaigns over real
//! gRPC, in both topologies and on both backends. A request id applies once however many times
//! it arrives at the same moment; the balance is the sum of the ledger; concurrent redemptions
//! never overspend points nor oversell stock; another tenant's account, reward or campaign is a
//! missing one.

use crm_tests::loyalty::loyalty_service_client::LoyaltyServiceClient;
use crm_tests::loyalty::{self as pb, ledger_entry, lot_movement};
use crm_tests::{Backend, Suite, Topology, unique_tenant, violated_field, with_tenant};
use tonic::Code;
use tonic::transport::Channel;
use tonic_types::StatusExt;

use crate::crm;

type Client = LoyaltyServiceClient<Channel>;

fn program() -> pb::Program {
    pb::Program {
        currency_code: "EUR".into(),
        earn_rate: Some(pb::EarnRate {
            points: 1,
            per_major_units: 1,
        }),
        rounding: pb::Rounding::Floor as i32,
        pending_days: 14,
        expiry_months: 24,
        tier_basis: pb::TierBasis::QualifyingPoints as i32,
        tier_window_months: 12,
        tier_evaluation_period_months: 12,
        tiers: vec![
            pb::Tier {
                name: "silver".into(),
                threshold: 1_000,
                earn_multiplier_bp: 12_500,
                discount_percent: 0,
            },
            pb::Tier {
                name: "gold".into(),
                threshold: 5_000,
                earn_multiplier_bp: 15_000,
                discount_percent: 5,
            },
        ],
        ..Default::default()
    }
}

fn account(customer: &uuid::Uuid) -> String {
    format!("accounts/{customer}")
}

fn adjust(customer: &uuid::Uuid, points: i64, reason: &str, request_id: &str) -> pb::AdjustPointsRequest {
    pb::AdjustPointsRequest {
        account: account(customer),
        points,
        reason: reason.into(),
        request_id: request_id.into(),
    }
}

fn reason_of(status: &tonic::Status) -> Option<String> {
    status
        .get_error_details()
        .error_info()
        .map(|info| info.reason.clone())
}

/// Every entry of an account's ledger, oldest first, read in pages of `page_size`.
async fn whole_ledger(
    client: &mut Client,
    tenant: &str,
    customer: &uuid::Uuid,
    page_size: i32,
) -> Vec<pb::LedgerEntry> {
    let mut entries = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = client
            .list_ledger_entries(with_tenant(
                tenant,
                pb::ListLedgerEntriesRequest {
                    parent: account(customer),
                    page_size,
                    page_token: page_token.clone(),
                    oldest_first: true,
                },
            ))
            .await
            .unwrap()
            .into_inner();
        assert!(page.entries.len() <= page_size as usize);
        entries.extend(page.entries);
        if page.next_page_token.is_empty() {
            return entries;
        }
        page_token = page.next_page_token;
    }
}

async fn scenario(suite: &Suite) {
    let tenant = unique_tenant("loyalty");
    let mut client = suite.loyalty_client().await;
    let member = uuid::Uuid::now_v7();

    // Without a program there is nothing to read and nothing can be earned or spent.
    let missing = client
        .get_program(with_tenant(&tenant, pb::GetProgramRequest {}))
        .await
        .unwrap_err();
    assert_eq!(missing.code(), Code::NotFound);
    let no_program = client
        .adjust_points(with_tenant(&tenant, adjust(&member, 10, "welcome", "early")))
        .await
        .unwrap_err();
    assert_eq!(no_program.code(), Code::FailedPrecondition);
    assert_eq!(reason_of(&no_program).as_deref(), Some("NO_PROGRAM"));

    // A program is checked field by field.
    let mut unrounded = program();
    unrounded.rounding = pb::Rounding::Unspecified as i32;
    let mut unordered = program();
    unordered.tiers[1].threshold = 500;
    let mut foreign = program();
    foreign.currency_code = "XYZ".into();
    for (bad, field) in [
        (unrounded, "program.rounding"),
        (unordered, "program.tiers[1].threshold"),
        (foreign, "program.currency_code"),
    ] {
        let refused = client
            .update_program(with_tenant(
                &tenant,
                pb::UpdateProgramRequest {
                    program: Some(bad),
                    request_id: String::new(),
                },
            ))
            .await
            .unwrap_err();
        assert_eq!(refused.code(), Code::InvalidArgument, "{field}");
        assert_eq!(violated_field(&refused).as_deref(), Some(field));
    }

    // Set, read back, and updated only over the version read.
    let set = client
        .update_program(with_tenant(
            &tenant,
            pb::UpdateProgramRequest {
                program: Some(program()),
                request_id: "program-1".into(),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(set.name, "program");
    let read = client
        .get_program(with_tenant(&tenant, pb::GetProgramRequest {}))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(read, set);
    // The same request again answers the same, without a second version.
    let retried = client
        .update_program(with_tenant(
            &tenant,
            pb::UpdateProgramRequest {
                program: Some(program()),
                request_id: "program-1".into(),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(retried, set);
    let mut longer = read.clone();
    longer.expiry_months = 36;
    let updated = client
        .update_program(with_tenant(
            &tenant,
            pb::UpdateProgramRequest {
                program: Some(longer.clone()),
                request_id: String::new(),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_ne!(updated.etag, set.etag);
    let stale = client
        .update_program(with_tenant(
            &tenant,
            pb::UpdateProgramRequest {
                program: Some(longer),
                request_id: String::new(),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(stale.code(), Code::Aborted);

    // Adjustments need a reason, a request id and a real account name.
    for (request, field) in [
        (adjust(&member, 10, "  ", "r-reason"), "reason"),
        (adjust(&member, 10, "welcome", ""), "request_id"),
        (adjust(&member, 0, "welcome", "r-zero"), "points"),
        (
            pb::AdjustPointsRequest {
                account: "customers/42".into(),
                ..adjust(&member, 10, "welcome", "r-name")
            },
            "account",
        ),
    ] {
        let refused = client
            .adjust_points(with_tenant(&tenant, request))
            .await
            .unwrap_err();
        assert_eq!(refused.code(), Code::InvalidArgument, "{field}");
        assert_eq!(violated_field(&refused).as_deref(), Some(field));
    }

    // The same request id 50 times at once: one entry, one effect, the same answer to all.
    let same = (0..50).map(|_| {
        let mut client = client.clone();
        let tenant = tenant.clone();
        async move {
            client
                .adjust_points(with_tenant(
                    &tenant,
                    adjust(&member, 100, "welcome bonus", "welcome"),
                ))
                .await
                .map(tonic::Response::into_inner)
        }
    });
    let answers = futures::future::join_all(same).await;
    let first = answers[0].as_ref().unwrap().clone();
    for answer in &answers {
        assert_eq!(answer.as_ref().unwrap(), &first);
    }
    assert_eq!(first.kind, ledger_entry::Kind::Adjust as i32);
    assert_eq!(first.balance_delta, 100);
    assert_eq!(
        first.name,
        format!("accounts/{member}/ledgerEntries/{}", first.entry_id)
    );
    // The same id for another request is refused, naming the id.
    let reused = client
        .adjust_points(with_tenant(
            &tenant,
            adjust(&member, 500, "welcome bonus", "welcome"),
        ))
        .await
        .unwrap_err();
    assert_eq!(reused.code(), Code::InvalidArgument);
    assert_eq!(violated_field(&reused).as_deref(), Some("request_id"));

    // A spend may not take more than there is, and records the lot it took from.
    let overdrawn = client
        .adjust_points(with_tenant(
            &tenant,
            adjust(&member, -150, "correction", "too-much"),
        ))
        .await
        .unwrap_err();
    assert_eq!(overdrawn.code(), Code::FailedPrecondition);
    assert_eq!(reason_of(&overdrawn).as_deref(), Some("INSUFFICIENT_POINTS"));
    let spent = client
        .adjust_points(with_tenant(
            &tenant,
            adjust(&member, -40, "correction", "correct-1"),
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(spent.balance_delta, -40);
    assert_eq!(spent.movements.len(), 1);
    assert_eq!(spent.movements[0].change, lot_movement::Change::Consumed as i32);
    assert_eq!(spent.movements[0].lot_id, first.movements[0].lot_id);

    // Twenty different adjustments at once all apply.
    let many = (0..20).map(|index| {
        let mut client = client.clone();
        let tenant = tenant.clone();
        async move {
            client
                .adjust_points(with_tenant(
                    &tenant,
                    adjust(&member, 1, "goodwill", &format!("goodwill-{index}")),
                ))
                .await
                .map(tonic::Response::into_inner)
        }
    });
    for answer in futures::future::join_all(many).await {
        answer.unwrap();
    }

    let read = client
        .get_account(with_tenant(
            &tenant,
            pb::GetAccountRequest {
                name: account(&member),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(read.name, account(&member));
    assert_eq!(
        (read.balance, read.spendable_points, read.pending_points),
        (80, 80, 0)
    );
    assert_eq!(read.lifetime_points, 120);
    // Adjustments never qualify for tiers.
    let progress = read.tier_progress.unwrap();
    assert_eq!(
        (progress.qualifying_value, progress.next_tier.as_str()),
        (0, "silver")
    );
    assert_eq!(progress.needed_for_next, 1_000);

    // The ledger, paged, sums to the balance: 1 welcome + 1 correction + 20 goodwill.
    let ledger = whole_ledger(&mut client, &tenant, &member, 7).await;
    assert_eq!(ledger.len(), 22);
    assert_eq!(
        ledger.iter().map(|entry| entry.balance_delta).sum::<i64>(),
        read.balance
    );
    assert_eq!(ledger[0], first);
    let newest = client
        .list_ledger_entries(with_tenant(
            &tenant,
            pb::ListLedgerEntriesRequest {
                parent: account(&member),
                page_size: 1,
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(newest.entries[0], ledger[21]);

    // Another tenant's account looks exactly like a missing one.
    let other = unique_tenant("loyalty-other");
    for status in [
        client
            .get_account(with_tenant(
                &other,
                pb::GetAccountRequest {
                    name: account(&member),
                },
            ))
            .await
            .unwrap_err(),
        client
            .list_ledger_entries(with_tenant(
                &other,
                pb::ListLedgerEntriesRequest {
                    parent: account(&member),
                    ..Default::default()
                },
            ))
            .await
            .unwrap_err(),
        client
            .get_account(with_tenant(
                &tenant,
                pb::GetAccountRequest {
                    name: account(&uuid::Uuid::now_v7()),
                },
            ))
            .await
            .unwrap_err(),
    ] {
        assert_eq!(status.code(), Code::NotFound);
    }

    // Balance and tier went to the customer's hot-score hash.
    if let Backend::Production { redis_url, .. } = &suite.backend {
        let redis = redis::Client::open(redis_url.as_str()).unwrap();
        let mut connection = redis.get_multiplexed_async_connection().await.unwrap();
        let key = format!("crm:score:{{{tenant}/{member}}}");
        let points: Option<String> = redis::cmd("HGET")
            .arg(&key)
            .arg("points")
            .query_async(&mut connection)
            .await
            .unwrap();
        assert_eq!(points.as_deref(), Some("80"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loyalty_embedded() {
    let suite = Suite::start(crm(), Topology::OneProcess, Backend::Embedded).await;
    scenario(&suite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loyalty_postgres_redis() {
    if let Some(backend) = Backend::production() {
        let suite = Suite::start(crm(), Topology::OneProcess, backend).await;
        scenario(&suite).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loyalty_split_postgres_redis() {
    if let Some(backend) = Backend::production() {
        let suite = Suite::start(crm(), Topology::Split, backend).await;
        scenario(&suite).await;
    }
}

// ---- rewards, redemptions and campaigns ----

async fn set_program(client: &mut Client, tenant: &str) {
    client
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

/// Adds one lot per element of `lots` to the member's account.
async fn fund(client: &mut Client, tenant: &str, member: &uuid::Uuid, lots: &[i64]) -> Vec<pb::LedgerEntry> {
    let mut entries = Vec::new();
    for (index, points) in lots.iter().enumerate() {
        let entry = client
            .adjust_points(with_tenant(
                tenant,
                adjust(member, *points, "funding", &format!("fund-{member}-{index}")),
            ))
            .await
            .unwrap()
            .into_inner();
        entries.push(entry);
    }
    entries
}

fn reward(
    display_name: &str,
    points_cost: i64,
    stock: Option<i64>,
    per_member_limit: Option<i32>,
) -> pb::Reward {
    pb::Reward {
        display_name: display_name.into(),
        points_cost,
        stock,
        per_member_limit,
        ..Default::default()
    }
}

async fn create_reward(client: &mut Client, tenant: &str, reward_id: &str, reward: pb::Reward) -> pb::Reward {
    client
        .create_reward(with_tenant(
            tenant,
            pb::CreateRewardRequest {
                reward: Some(reward),
                reward_id: reward_id.into(),
                request_id: String::new(),
            },
        ))
        .await
        .unwrap()
        .into_inner()
}

async fn get_reward(client: &mut Client, tenant: &str, name: &str) -> Result<pb::Reward, tonic::Status> {
    client
        .get_reward(with_tenant(tenant, pb::GetRewardRequest { name: name.into() }))
        .await
        .map(tonic::Response::into_inner)
}

fn redeem(member: &uuid::Uuid, reward: &str, quantity: i32, request_id: &str) -> pb::RedeemRewardRequest {
    pb::RedeemRewardRequest {
        account: account(member),
        reward: reward.into(),
        quantity,
        request_id: request_id.into(),
    }
}

fn cancel(member: &uuid::Uuid, redemption_entry_id: &str, request_id: &str) -> pb::CancelRedemptionRequest {
    pb::CancelRedemptionRequest {
        account: account(member),
        redemption_entry_id: redemption_entry_id.into(),
        request_id: request_id.into(),
    }
}

async fn balance(client: &mut Client, tenant: &str, member: &uuid::Uuid) -> i64 {
    client
        .get_account(with_tenant(
            tenant,
            pb::GetAccountRequest {
                name: account(member),
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .balance
}

/// Refusals of a code, counted by their ErrorInfo reason.
fn count_refusals(
    answers: &[Result<pb::LedgerEntry, tonic::Status>],
    code: Code,
) -> std::collections::BTreeMap<String, usize> {
    let mut reasons = std::collections::BTreeMap::new();
    for refusal in answers.iter().filter_map(|answer| answer.as_ref().err()) {
        assert_eq!(refusal.code(), code, "{refusal:?}");
        *reasons.entry(reason_of(refusal).unwrap_or_default()).or_insert(0) += 1;
    }
    reasons
}

/// Concurrent redemptions: they never overspend a balance nor oversell a stock, and every spend
/// records the lots it took, oldest expiry first.
async fn redemption_races(suite: &Suite) {
    let tenant = unique_tenant("loyalty-races");
    let mut client = suite.loyalty_client().await;
    set_program(&mut client, &tenant).await;

    // 200 redemptions of 1 point at once against 100 points in four lots: exactly 100 succeed.
    let member = uuid::Uuid::now_v7();
    let lots = fund(&mut client, &tenant, &member, &[25, 25, 25, 25]).await;
    let sticker = create_reward(&mut client, &tenant, "sticker", reward("Sticker", 1, None, None)).await;
    let attempts = (0..200).map(|index| {
        let mut client = client.clone();
        let (tenant, sticker) = (tenant.clone(), sticker.name.clone());
        async move {
            client
                .redeem_reward(with_tenant(
                    &tenant,
                    redeem(&member, &sticker, 1, &format!("sticker-{index}")),
                ))
                .await
                .map(tonic::Response::into_inner)
        }
    });
    let answers = futures::future::join_all(attempts).await;
    assert_eq!(answers.iter().filter(|answer| answer.is_ok()).count(), 100);
    assert_eq!(
        count_refusals(&answers, Code::FailedPrecondition),
        std::collections::BTreeMap::from([("INSUFFICIENT_POINTS".to_owned(), 100)])
    );
    assert_eq!(balance(&mut client, &tenant, &member).await, 0);
    let ledger = whole_ledger(&mut client, &tenant, &member, 1000).await;
    assert_eq!(ledger.len(), 104);
    assert_eq!(ledger.iter().map(|entry| entry.balance_delta).sum::<i64>(), 0);
    let spends: Vec<&pb::LedgerEntry> = ledger
        .iter()
        .filter(|entry| entry.kind == ledger_entry::Kind::Redeem as i32)
        .collect();
    assert_eq!(spends.len(), 100);
    let funding_order: Vec<&str> = lots.iter().map(|lot| lot.movements[0].lot_id.as_str()).collect();
    let mut consumed_lots = Vec::new();
    for spend in &spends {
        assert_eq!((spend.points, spend.balance_delta), (1, -1));
        assert_eq!(
            (spend.reward.as_str(), spend.reward_quantity),
            (sticker.name.as_str(), 1)
        );
        assert_eq!(spend.movements.len(), 1, "{spend:?}");
        let movement = &spend.movements[0];
        assert_eq!(
            (movement.change, movement.points),
            (lot_movement::Change::Consumed as i32, 1)
        );
        consumed_lots.push(
            funding_order
                .iter()
                .position(|lot| *lot == movement.lot_id)
                .unwrap(),
        );
    }
    // Oldest expiry first: the lots funded first (they expire first) are emptied first.
    assert!(consumed_lots.windows(2).all(|pair| pair[0] <= pair[1]));
    for lot in 0..4 {
        assert_eq!(consumed_lots.iter().filter(|used| **used == lot).count(), 25);
    }

    // 50 members at once for a reward with 10 in stock, while an administrator renames it:
    // exactly 10 get one, and no rename gives taken units back.
    let lamp = create_reward(&mut client, &tenant, "lamp", reward("Lamp", 5, Some(10), None)).await;
    let members: Vec<uuid::Uuid> = (0..50).map(|_| uuid::Uuid::now_v7()).collect();
    let funding = members.iter().map(|member| {
        let mut client = client.clone();
        let tenant = tenant.clone();
        async move { fund(&mut client, &tenant, member, &[10]).await }
    });
    futures::future::join_all(funding).await;
    let redemptions = members.iter().map(|member| {
        let mut client = client.clone();
        let (tenant, lamp) = (tenant.clone(), lamp.name.clone());
        async move {
            client
                .redeem_reward(with_tenant(
                    &tenant,
                    redeem(member, &lamp, 1, &format!("lamp-{member}")),
                ))
                .await
                .map(tonic::Response::into_inner)
        }
    });
    let renames = async {
        let mut client = client.clone();
        for index in 0..5 {
            client
                .update_reward(with_tenant(
                    &tenant,
                    pb::UpdateRewardRequest {
                        reward: Some(pb::Reward {
                            name: lamp.name.clone(),
                            display_name: format!("Lamp {index}"),
                            ..Default::default()
                        }),
                        update_mask: Some(prost_types::FieldMask {
                            paths: vec!["display_name".into()],
                        }),
                        request_id: String::new(),
                    },
                ))
                .await
                .unwrap();
        }
    };
    let (answers, ()) = tokio::join!(futures::future::join_all(redemptions), renames);
    assert_eq!(answers.iter().filter(|answer| answer.is_ok()).count(), 10);
    assert_eq!(
        count_refusals(&answers, Code::FailedPrecondition),
        std::collections::BTreeMap::from([("OUT_OF_STOCK".to_owned(), 40)])
    );
    let lamp = get_reward(&mut client, &tenant, &lamp.name).await.unwrap();
    assert_eq!(lamp.stock, Some(0));
    assert_eq!(lamp.etag, "r6", "five renames");
}

/// The catalogue, a redemption's life (limits, retries, cancellation), campaigns, field
/// violations and tenancy.
async fn catalog_scenario(suite: &Suite) {
    let tenant = unique_tenant("loyalty-catalog");
    let mut client = suite.loyalty_client().await;
    set_program(&mut client, &tenant).await;

    // Rewards are checked field by field.
    let create = |reward: Option<pb::Reward>, reward_id: &str| pb::CreateRewardRequest {
        reward,
        reward_id: reward_id.into(),
        request_id: String::new(),
    };
    for (request, field) in [
        (create(None, ""), "reward"),
        (
            create(Some(reward("Mug", 0, None, None)), ""),
            "reward.points_cost",
        ),
        (
            create(Some(reward("  ", 10, None, None)), ""),
            "reward.display_name",
        ),
        (
            create(Some(reward("Mug", 10, Some(-1), None)), ""),
            "reward.stock",
        ),
        (
            create(Some(reward("Mug", 10, None, Some(0))), ""),
            "reward.per_member_limit",
        ),
        (
            create(Some(reward("Mug", 10, None, None)), "Big Mug"),
            "reward_id",
        ),
    ] {
        let refused = client
            .create_reward(with_tenant(&tenant, request))
            .await
            .unwrap_err();
        assert_eq!(refused.code(), Code::InvalidArgument, "{field}");
        assert_eq!(violated_field(&refused).as_deref(), Some(field));
    }

    // Created once under a request id, whatever the retries; the id is taken afterwards.
    let mug_request = pb::CreateRewardRequest {
        reward: Some(reward("Mug", 30, Some(5), Some(2))),
        reward_id: "mug".into(),
        request_id: "mug-1".into(),
    };
    let mug = client
        .create_reward(with_tenant(&tenant, mug_request.clone()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (mug.name.as_str(), mug.display_name.as_str(), mug.etag.as_str()),
        ("rewards/mug", "Mug", "r1")
    );
    let retried = client
        .create_reward(with_tenant(&tenant, mug_request.clone()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(retried, mug);
    let taken = client
        .create_reward(with_tenant(
            &tenant,
            pb::CreateRewardRequest {
                request_id: "mug-2".into(),
                ..mug_request.clone()
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(taken.code(), Code::AlreadyExists);
    let reused = client
        .create_reward(with_tenant(
            &tenant,
            pb::CreateRewardRequest {
                reward_id: "cup".into(),
                ..mug_request
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(violated_field(&reused).as_deref(), Some("request_id"));
    let tv = create_reward(&mut client, &tenant, "", reward("TV", 1_000, None, None)).await;
    assert!(uuid::Uuid::parse_str(tv.name.strip_prefix("rewards/").unwrap()).is_ok());
    let sold_out = create_reward(&mut client, &tenant, "sold-out", reward("Rare", 1, Some(0), None)).await;

    // Read back, listed by id in pages.
    assert_eq!(
        get_reward(&mut client, &tenant, "rewards/mug").await.unwrap(),
        mug
    );
    let mut listed = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = client
            .list_rewards(with_tenant(
                &tenant,
                pb::ListRewardsRequest {
                    page_size: 2,
                    page_token: page_token.clone(),
                },
            ))
            .await
            .unwrap()
            .into_inner();
        listed.extend(page.rewards);
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    assert_eq!(listed, vec![tv.clone(), mug.clone(), sold_out.clone()]);

    // Updated field by field under the etag read.
    let rename = |name: &str, etag: &str, paths: &[&str]| pb::UpdateRewardRequest {
        reward: Some(pb::Reward {
            name: name.into(),
            display_name: "Big mug".into(),
            etag: etag.into(),
            ..Default::default()
        }),
        update_mask: Some(prost_types::FieldMask {
            paths: paths.iter().map(|path| (*path).to_owned()).collect(),
        }),
        request_id: String::new(),
    };
    let renamed = client
        .update_reward(with_tenant(
            &tenant,
            rename("rewards/mug", "r1", &["display_name"]),
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (
            renamed.display_name.as_str(),
            renamed.etag.as_str(),
            renamed.points_cost,
            renamed.stock
        ),
        ("Big mug", "r2", 30, Some(5))
    );
    let stale = client
        .update_reward(with_tenant(
            &tenant,
            rename("rewards/mug", "r1", &["display_name"]),
        ))
        .await
        .unwrap_err();
    assert_eq!(stale.code(), Code::Aborted);
    for (request, field) in [
        (rename("rewards/mug", "", &["name"]), "update_mask"),
        (rename("rewards/mug", "", &[]), "reward.points_cost"),
        (rename("mug", "", &["display_name"]), "reward.name"),
        (rename("rewards/mug", "2", &["display_name"]), "reward.etag"),
    ] {
        let refused = client
            .update_reward(with_tenant(&tenant, request))
            .await
            .unwrap_err();
        assert_eq!(refused.code(), Code::InvalidArgument, "{field}");
        assert_eq!(violated_field(&refused).as_deref(), Some(field));
    }

    // A redemption: its points, its lots, its stock; a retry is the first answer.
    let member = uuid::Uuid::now_v7();
    let funded = fund(&mut client, &tenant, &member, &[40, 60]).await;
    let first = client
        .redeem_reward(with_tenant(
            &tenant,
            redeem(&member, "rewards/mug", 2, "mug-for-me"),
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(first.kind, ledger_entry::Kind::Redeem as i32);
    assert_eq!(first.entry_id, "redeem:mug-for-me");
    assert_eq!((first.points, first.balance_delta), (60, -60));
    assert_eq!((first.reward.as_str(), first.reward_quantity), ("rewards/mug", 2));
    let taken: Vec<(&str, i64)> = first
        .movements
        .iter()
        .map(|movement| (movement.lot_id.as_str(), movement.points))
        .collect();
    assert_eq!(
        taken,
        vec![
            (funded[0].movements[0].lot_id.as_str(), 40),
            (funded[1].movements[0].lot_id.as_str(), 20)
        ]
    );
    let again = client
        .redeem_reward(with_tenant(
            &tenant,
            redeem(&member, "rewards/mug", 2, "mug-for-me"),
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again, first);
    assert_eq!(
        get_reward(&mut client, &tenant, "rewards/mug")
            .await
            .unwrap()
            .stock,
        Some(3)
    );
    let other_member = uuid::Uuid::now_v7();
    fund(&mut client, &tenant, &other_member, &[100]).await;
    for request in [
        redeem(&member, "rewards/mug", 1, "mug-for-me"),
        redeem(&other_member, "rewards/mug", 2, "mug-for-me"),
    ] {
        let reused = client
            .redeem_reward(with_tenant(&tenant, request))
            .await
            .unwrap_err();
        assert_eq!(reused.code(), Code::InvalidArgument);
        assert_eq!(violated_field(&reused).as_deref(), Some("request_id"));
    }

    // Refusals: the member's limit, the stock, the points; missing things; malformed fields.
    for (request, reason) in [
        (
            redeem(&member, "rewards/mug", 1, "third-mug"),
            "REDEMPTION_LIMIT_REACHED",
        ),
        (redeem(&member, &sold_out.name, 1, "rare"), "OUT_OF_STOCK"),
        (redeem(&member, &tv.name, 1, "tv"), "INSUFFICIENT_POINTS"),
    ] {
        let refused = client
            .redeem_reward(with_tenant(&tenant, request))
            .await
            .unwrap_err();
        assert_eq!(refused.code(), Code::FailedPrecondition, "{reason}");
        assert_eq!(reason_of(&refused).as_deref(), Some(reason));
    }
    for request in [
        redeem(&member, "rewards/nothing", 1, "nothing"),
        redeem(&uuid::Uuid::now_v7(), "rewards/mug", 1, "stranger"),
    ] {
        let missing = client
            .redeem_reward(with_tenant(&tenant, request))
            .await
            .unwrap_err();
        assert_eq!(missing.code(), Code::NotFound);
    }
    for (request, field) in [
        (redeem(&member, "rewards/mug", 0, "zero"), "quantity"),
        (redeem(&member, "rewards/mug", 1_001, "many"), "quantity"),
        (redeem(&member, "mug", 1, "bare"), "reward"),
        (redeem(&member, "rewards/mug", 1, ""), "request_id"),
        (
            pb::RedeemRewardRequest {
                account: "customers/42".into(),
                ..redeem(&member, "rewards/mug", 1, "named")
            },
            "account",
        ),
    ] {
        let refused = client
            .redeem_reward(with_tenant(&tenant, request))
            .await
            .unwrap_err();
        assert_eq!(refused.code(), Code::InvalidArgument, "{field}");
        assert_eq!(violated_field(&refused).as_deref(), Some(field));
    }

    // Cancelling gives the points back to the same lots and the units back to the stock, once.
    let cancelled = client
        .cancel_redemption(with_tenant(&tenant, cancel(&member, &first.entry_id, "undo-mug")))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(cancelled.kind, ledger_entry::Kind::CancelRedemption as i32);
    assert_eq!(cancelled.redemption_entry_id, first.entry_id);
    assert_eq!((cancelled.points, cancelled.balance_delta), (60, 60));
    let returned: Vec<(&str, i64)> = cancelled
        .movements
        .iter()
        .map(|movement| {
            assert_eq!(movement.change, lot_movement::Change::Returned as i32);
            (movement.lot_id.as_str(), movement.points)
        })
        .collect();
    assert_eq!(returned, taken);
    assert_eq!(balance(&mut client, &tenant, &member).await, 100);
    assert_eq!(
        get_reward(&mut client, &tenant, "rewards/mug")
            .await
            .unwrap()
            .stock,
        Some(5)
    );
    let retried = client
        .cancel_redemption(with_tenant(&tenant, cancel(&member, &first.entry_id, "undo-mug")))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(retried, cancelled);
    let twice = client
        .cancel_redemption(with_tenant(
            &tenant,
            cancel(&member, &first.entry_id, "undo-again"),
        ))
        .await
        .unwrap_err();
    assert_eq!(twice.code(), Code::FailedPrecondition);
    assert_eq!(reason_of(&twice).as_deref(), Some("ALREADY_APPLIED"));
    assert_eq!(balance(&mut client, &tenant, &member).await, 100);
    let not_redemption = client
        .cancel_redemption(with_tenant(
            &tenant,
            cancel(&member, &funded[0].entry_id, "undo-fund"),
        ))
        .await
        .unwrap_err();
    assert_eq!(
        violated_field(&not_redemption).as_deref(),
        Some("redemption_entry_id")
    );
    for request in [
        cancel(&member, "redeem:never", "undo-never"),
        cancel(&other_member, &first.entry_id, "undo-other"),
    ] {
        let missing = client
            .cancel_redemption(with_tenant(&tenant, request))
            .await
            .unwrap_err();
        assert_eq!(missing.code(), Code::NotFound);
    }
    // The cancelled units no longer count against the limit.
    let second = client
        .redeem_reward(with_tenant(
            &tenant,
            redeem(&member, "rewards/mug", 2, "mug-again"),
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(second.balance_delta, -60);

    // Campaigns: checked field by field, created, read, updated under their etag, deleted.
    let spring = pb::Campaign {
        start_time: Some(prost_types::Timestamp {
            seconds: 1_900_000_000,
            nanos: 0,
        }),
        end_time: Some(prost_types::Timestamp {
            seconds: 1_902_000_000,
            nanos: 0,
        }),
        conditions: Some(pb::CampaignConditions {
            channels: vec!["CHANNEL_WEB".into(), "CHANNEL_MOBILE_APP".into()],
            categories: vec!["shoes".into()],
            min_amount_minor: 5_000,
            first_purchase_only: true,
            ..Default::default()
        }),
        bonus: Some(pb::CampaignBonus {
            kind: Some(pb::campaign_bonus::Kind::ExtraMultiplierBp(10_000)),
        }),
        budget_points: Some(50_000),
        awarded_points: 999,
        ..Default::default()
    };
    let mut backwards = spring.clone();
    backwards.end_time = backwards.start_time;
    let mut bad_channel = spring.clone();
    bad_channel.conditions.as_mut().unwrap().channels[1] = "APP".into();
    let mut no_bonus = spring.clone();
    no_bonus.bonus = None;
    let mut nothing = spring.clone();
    nothing.bonus = Some(pb::CampaignBonus {
        kind: Some(pb::campaign_bonus::Kind::FixedPoints(0)),
    });
    for (campaign, field) in [
        (backwards, "campaign.end_time"),
        (bad_channel, "campaign.conditions.channels[1]"),
        (no_bonus, "campaign.bonus"),
        (nothing, "campaign.bonus.fixed_points"),
    ] {
        let refused = client
            .create_campaign(with_tenant(
                &tenant,
                pb::CreateCampaignRequest {
                    campaign: Some(campaign),
                    campaign_id: "spring".into(),
                    request_id: String::new(),
                },
            ))
            .await
            .unwrap_err();
        assert_eq!(refused.code(), Code::InvalidArgument, "{field}");
        assert_eq!(violated_field(&refused).as_deref(), Some(field));
    }
    let created = client
        .create_campaign(with_tenant(
            &tenant,
            pb::CreateCampaignRequest {
                campaign: Some(spring.clone()),
                campaign_id: "spring".into(),
                request_id: "spring-1".into(),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (
            created.name.as_str(),
            created.awarded_points,
            created.etag.as_str()
        ),
        ("campaigns/spring", 0, "r1")
    );
    assert_eq!(
        created.conditions.as_ref().unwrap().channels,
        vec!["CHANNEL_MOBILE_APP", "CHANNEL_WEB"]
    );
    assert_eq!(
        (created.start_time, created.bonus),
        (spring.start_time, spring.bonus)
    );
    let read = client
        .get_campaign(with_tenant(
            &tenant,
            pb::GetCampaignRequest {
                name: "campaigns/spring".into(),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(read, created);
    let listed = client
        .list_campaigns(with_tenant(&tenant, pb::ListCampaignsRequest::default()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.campaigns, vec![created.clone()]);
    let budget = |etag: &str| pb::UpdateCampaignRequest {
        campaign: Some(pb::Campaign {
            name: "campaigns/spring".into(),
            budget_points: None,
            etag: etag.into(),
            ..Default::default()
        }),
        update_mask: Some(prost_types::FieldMask {
            paths: vec!["budget_points".into()],
        }),
        request_id: String::new(),
    };
    let unlimited = client
        .update_campaign(with_tenant(&tenant, budget("r1")))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((unlimited.budget_points, unlimited.etag.as_str()), (None, "r2"));
    assert_eq!(unlimited.conditions, created.conditions);
    let stale = client
        .update_campaign(with_tenant(&tenant, budget("r1")))
        .await
        .unwrap_err();
    assert_eq!(stale.code(), Code::Aborted);
    let delete = |etag: &str| pb::DeleteCampaignRequest {
        name: "campaigns/spring".into(),
        etag: etag.into(),
        request_id: "spring-gone".into(),
    };
    let stale = client
        .delete_campaign(with_tenant(&tenant, delete("r1")))
        .await
        .unwrap_err();
    assert_eq!(stale.code(), Code::Aborted);
    for _ in 0..2 {
        client
            .delete_campaign(with_tenant(&tenant, delete("r2")))
            .await
            .unwrap();
    }
    let gone = client
        .get_campaign(with_tenant(
            &tenant,
            pb::GetCampaignRequest {
                name: "campaigns/spring".into(),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(gone.code(), Code::NotFound);

    // Another tenant's rewards, redemptions and campaigns look exactly like missing ones.
    let other = unique_tenant("loyalty-catalog-other");
    set_program(&mut client, &other).await;
    fund(&mut client, &other, &member, &[500]).await;
    let elsewhere = [
        get_reward(&mut client, &other, "rewards/mug").await.unwrap_err(),
        client
            .redeem_reward(with_tenant(
                &other,
                redeem(&member, "rewards/mug", 1, "elsewhere"),
            ))
            .await
            .unwrap_err(),
        client
            .cancel_redemption(with_tenant(
                &other,
                cancel(&member, &second.entry_id, "elsewhere"),
            ))
            .await
            .unwrap_err(),
        client
            .update_reward(with_tenant(&other, rename("rewards/mug", "", &["display_name"])))
            .await
            .unwrap_err(),
        client
            .delete_reward(with_tenant(
                &other,
                pb::DeleteRewardRequest {
                    name: "rewards/mug".into(),
                    ..Default::default()
                },
            ))
            .await
            .unwrap_err(),
    ];
    for status in elsewhere {
        assert_eq!(status.code(), Code::NotFound, "{status:?}");
    }
    let none = client
        .list_rewards(with_tenant(&other, pb::ListRewardsRequest::default()))
        .await
        .unwrap()
        .into_inner();
    assert!(none.rewards.is_empty());

    // A reward that left the catalogue: its redemption can still be cancelled.
    client
        .delete_reward(with_tenant(
            &tenant,
            pb::DeleteRewardRequest {
                name: "rewards/mug".into(),
                ..Default::default()
            },
        ))
        .await
        .unwrap();
    assert_eq!(
        get_reward(&mut client, &tenant, "rewards/mug")
            .await
            .unwrap_err()
            .code(),
        Code::NotFound
    );
    client
        .cancel_redemption(with_tenant(
            &tenant,
            cancel(&member, &second.entry_id, "undo-second"),
        ))
        .await
        .unwrap();
    assert_eq!(balance(&mut client, &tenant, &member).await, 100);
    let ledger = whole_ledger(&mut client, &tenant, &member, 100).await;
    assert_eq!(ledger.iter().map(|entry| entry.balance_delta).sum::<i64>(), 100);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loyalty_rewards_embedded() {
    let suite = Suite::start(crm(), Topology::OneProcess, Backend::Embedded).await;
    redemption_races(&suite).await;
    catalog_scenario(&suite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loyalty_rewards_postgres_redis() {
    if let Some(backend) = Backend::production() {
        let suite = Suite::start(crm(), Topology::OneProcess, backend).await;
        redemption_races(&suite).await;
        catalog_scenario(&suite).await;
    }
}
