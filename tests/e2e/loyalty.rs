//! Loyalty: the program, adjustments and the ledger over real gRPC, in both topologies and on
//! both backends. A request id applies once however many times it arrives at the same moment;
//! the balance is the sum of the ledger; another tenant's account is a missing one.

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
