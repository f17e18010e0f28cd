//! Segmentation end to end: scores computed from events equal an independent pandas reference
//! on a generated data set (RFM, named segments, value classes, ABC, lifecycle, Pareto); hot
//! scores land in the cache; merges combine aggregates, unmerges split them, erasure removes
//! them; bad input names the field; and killing segmentation mid-stream loses and doubles
//! nothing. On the embedded default and on PostgreSQL + Redis, in one process and split.

use std::collections::HashMap;
use std::time::Duration;

use crm_tests::interaction::interaction_service_client::InteractionServiceClient;
use crm_tests::profile::customer_profile_service_client::CustomerProfileServiceClient;
use crm_tests::segmentation::segmentation_service_client::SegmentationServiceClient;
use crm_tests::segmentation::{self as seg};
use crm_tests::{
    Backend, Suite, Topology, interaction, new_customer, profile, unique_tenant, violated_field, with_tenant,
};
use tonic::Code;

use crate::crm;

pub(crate) type Interactions = InteractionServiceClient<tonic::transport::Channel>;
pub(crate) type Profiles = CustomerProfileServiceClient<tonic::transport::Channel>;
pub(crate) type Segments = SegmentationServiceClient<tonic::transport::Channel>;
type Money = crm_proto::google::r#type::Money;

const PURCHASES: &str = include_str!("../fixtures/segmentation/purchases.csv");
const REFUNDS: &str = include_str!("../fixtures/segmentation/refunds.csv");
const EXPECTED: &str = include_str!("../fixtures/segmentation/expected.csv");
const SUMMARY: &str = include_str!("../fixtures/segmentation/expected_summary.csv");

pub(crate) fn rows(csv: &str) -> Vec<Vec<&str>> {
    csv.lines()
        .skip(1)
        .filter(|line| !line.is_empty())
        .map(|line| line.split(',').collect())
        .collect()
}

pub(crate) fn usd_minor(minor: i64) -> Money {
    crm_proto::money::from_minor_units("USD", minor)
}

pub(crate) fn timestamp(rfc3339: &str) -> prost_types::Timestamp {
    let time = chrono::DateTime::parse_from_rfc3339(rfc3339).unwrap();
    prost_types::Timestamp {
        seconds: time.timestamp(),
        nanos: 0,
    }
}

/// Polls `check` until it holds: events are applied asynchronously.
pub(crate) async fn eventually<F, Fut>(what: &str, limit: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + limit;
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting until {what}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn scores_name(customer: &str) -> String {
    format!("{customer}/scores")
}

async fn scores_of(segments: &mut Segments, tenant: &str, customers: &[String]) -> Vec<seg::CustomerScores> {
    let mut all = Vec::new();
    for chunk in customers.chunks(1000) {
        let found = segments
            .batch_get_customer_scores(with_tenant(
                tenant,
                seg::BatchGetCustomerScoresRequest {
                    names: chunk.iter().map(|customer| scores_name(customer)).collect(),
                },
            ))
            .await
            .unwrap()
            .into_inner();
        all.extend(found.scores);
    }
    all
}

/// (purchases, net minor units) over all of `customers`' lifetime figures.
pub(crate) async fn lifetime_totals(
    segments: &mut Segments,
    tenant: &str,
    customers: &[String],
) -> (i64, i64) {
    scores_of(segments, tenant, customers)
        .await
        .iter()
        .filter_map(|scores| scores.lifetime.as_ref())
        .fold((0, 0), |(count, net), lifetime| {
            (
                count + lifetime.purchase_count,
                net + lifetime
                    .net_spend
                    .as_ref()
                    .and_then(crm_proto::money::to_minor_units)
                    .unwrap_or(0),
            )
        })
}

pub(crate) async fn import_customers(profiles: &mut Profiles, tenant: &str, keys: &[&str]) -> Vec<String> {
    let batches: Vec<profile::ImportCustomersRequest> = keys
        .chunks(500)
        .map(|chunk| profile::ImportCustomersRequest {
            customers: chunk
                .iter()
                .map(|key| profile::Customer {
                    external_ids: vec![profile::ExternalId {
                        system: "erp".into(),
                        id: (*key).to_owned(),
                    }],
                    ..new_customer(profile::CustomerKind::Consumer, key)
                })
                .collect(),
        })
        .collect();
    let imported = profiles
        .import_customers(with_tenant(tenant, tokio_stream::iter(batches)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        imported.created_count,
        keys.len() as i64,
        "{:?}",
        imported.results.first()
    );
    imported.results.into_iter().map(|result| result.name).collect()
}

pub(crate) async fn run_and_wait(
    segments: &mut Segments,
    tenant: &str,
    as_of: Option<prost_types::Timestamp>,
) -> seg::ScoreRun {
    let run = segments
        .recompute_scores(with_tenant(
            tenant,
            seg::RecomputeScoresRequest {
                as_of_time: as_of,
                request_id: String::new(),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    loop {
        let current = segments
            .get_score_run(with_tenant(
                tenant,
                seg::GetScoreRunRequest {
                    name: run.name.clone(),
                },
            ))
            .await
            .unwrap()
            .into_inner();
        match current.state() {
            seg::score_run::State::Succeeded => return current,
            seg::score_run::State::Running => {}
            other => panic!("score run ended {other:?}: {}", current.error),
        }
        assert!(tokio::time::Instant::now() < deadline, "score run did not finish");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn enum_name(prefix: &str, value: &str) -> String {
    format!("{prefix}{}", value.to_uppercase())
}

/// The generated data set goes in through the public APIs; after a score run as of the
/// reference day, every customer's scores equal the pandas reference.
async fn scores_equal_the_reference(
    suite: &Suite,
    interactions: &mut Interactions,
    profiles: &mut Profiles,
    segments: &mut Segments,
) {
    let tenant = unique_tenant("reference");
    let expected = rows(EXPECTED);
    let keys: Vec<&str> = expected.iter().map(|row| row[0]).collect();
    let names = import_customers(profiles, &tenant, &keys).await;
    let customer_of: HashMap<&str, String> = keys.iter().copied().zip(names.iter().cloned()).collect();

    let purchases = rows(PURCHASES);
    let purchase_rows: Vec<interaction::PurchaseRow> = purchases
        .iter()
        .map(|row| interaction::PurchaseRow {
            parent: customer_of[row[0]].clone(),
            purchase: Some(interaction::Purchase {
                external_order_id: row[1].to_owned(),
                occur_time: Some(timestamp(row[2])),
                amount: Some(usd_minor(row[3].parse().unwrap())),
                margin: Some(usd_minor(row[4].parse().unwrap())),
                ..Default::default()
            }),
        })
        .collect();
    let batches: Vec<interaction::IngestPurchasesRequest> = purchase_rows
        .chunks(1000)
        .map(|chunk| interaction::IngestPurchasesRequest { rows: chunk.to_vec() })
        .collect();
    let ingested = interactions
        .ingest_purchases(with_tenant(&tenant, tokio_stream::iter(batches)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ingested.created_count, purchases.len() as i64);
    let purchase_name: HashMap<&str, String> = purchases
        .iter()
        .zip(&ingested.results)
        .map(|(row, result)| (row[1], result.name.clone()))
        .collect();
    let refunds = rows(REFUNDS);
    for row in &refunds {
        interactions
            .create_refund(with_tenant(
                &tenant,
                interaction::CreateRefundRequest {
                    parent: purchase_name[row[1]].clone(),
                    refund: Some(interaction::Refund {
                        external_refund_id: row[2].to_owned(),
                        occur_time: Some(timestamp(row[3])),
                        amount: Some(usd_minor(row[4].parse().unwrap())),
                        ..Default::default()
                    }),
                    request_id: String::new(),
                },
            ))
            .await
            .unwrap();
    }

    // Every purchase and refund counted exactly once before the run.
    let total_count = purchases.len() as i64;
    let total_net: i64 = purchases
        .iter()
        .map(|row| row[3].parse::<i64>().unwrap())
        .sum::<i64>()
        - refunds
            .iter()
            .map(|row| row[4].parse::<i64>().unwrap())
            .sum::<i64>();
    eventually(
        "segmentation applied every purchase and refund",
        Duration::from_secs(120),
        || {
            let mut segments = segments.clone();
            let tenant = tenant.clone();
            let names = names.clone();
            async move {
                let scored = scores_of(&mut segments, &tenant, &names).await.len();
                scored == names.len()
                    && lifetime_totals(&mut segments, &tenant, &names).await == (total_count, total_net)
            }
        },
    )
    .await;

    let summary: HashMap<&str, &str> = rows(SUMMARY).into_iter().map(|row| (row[0], row[1])).collect();
    // A segment over RFM, created before the run: the run's rescoring keeps it current.
    let best = segments
        .create_segment(with_tenant(
            &tenant,
            seg::CreateSegmentRequest {
                segment: Some(seg::Segment {
                    display_name: "Best".into(),
                    expression: r#"rfm.segment in ["champions", "loyal"] and m >= 500"#.into(),
                    ..Default::default()
                }),
                request_id: String::new(),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    let run = run_and_wait(segments, &tenant, Some(timestamp(summary["as_of"]))).await;
    let mut want_best: Vec<String> = expected
        .iter()
        .filter(|row| {
            ["champions", "loyal"].contains(&row[8])
                && row[3].parse::<i64>().is_ok_and(|minor| minor >= 50_000)
        })
        .map(|row| customer_of[row[0]].clone())
        .collect();
    want_best.sort();
    assert!(!want_best.is_empty());
    let best_now = segments
        .get_segment(with_tenant(
            &tenant,
            seg::GetSegmentRequest {
                name: best.name.clone(),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(best_now.member_count, want_best.len() as i64);
    assert_eq!(
        crate::segments::members(segments, &tenant, &best.name).await,
        want_best
    );
    assert_eq!(
        run.customers_total.to_string(),
        keys.iter()
            .filter(|key| purchases.iter().any(|row| row[0] == **key))
            .count()
            .to_string()
    );
    assert_eq!(run.population.to_string(), summary["population"]);

    let scored: HashMap<String, seg::CustomerScores> = scores_of(segments, &tenant, &names)
        .await
        .into_iter()
        .map(|scores| (scores.customer.clone(), scores))
        .collect();
    let mut mismatches = Vec::new();
    for row in &expected {
        let scores = &scored[&customer_of[row[0]]];
        let stage = enum_name("LIFECYCLE_STAGE_", row[11]);
        let mut actual = vec![scores.lifecycle_stage().as_str_name().to_owned()];
        let mut wanted = vec![stage];
        if !row[12].is_empty() {
            actual.push(scores.ended_pattern().as_str_name().to_owned());
            wanted.push(enum_name("ENDED_PATTERN_", row[12]));
        }
        match &scores.rfm {
            Some(rfm) => {
                actual.extend([
                    rfm.recency_days.to_string(),
                    rfm.frequency.to_string(),
                    crm_proto::money::to_minor_units(rfm.monetary.as_ref().unwrap())
                        .unwrap()
                        .to_string(),
                    rfm.code.clone(),
                    rfm.segment().as_str_name().to_owned(),
                    scores.value_class().as_str_name().to_owned(),
                    scores.abc_class().as_str_name().to_owned(),
                ]);
            }
            None => actual.push("no rfm".into()),
        }
        if row[1].is_empty() {
            wanted.push("no rfm".into());
        } else {
            wanted.extend([
                row[1].to_owned(),
                row[2].to_owned(),
                row[3].to_owned(),
                row[7].to_owned(),
                enum_name("RFM_SEGMENT_", row[8]),
                enum_name("VALUE_CLASS_", row[9]),
                enum_name("ABC_CLASS_", row[10]),
            ]);
        }
        if actual != wanted {
            mismatches.push(format!("{}: got {actual:?}, want {wanted:?}", row[0]));
        }
    }
    assert!(
        mismatches.is_empty(),
        "{} of {} differ, e.g. {:?}",
        mismatches.len(),
        expected.len(),
        &mismatches[..mismatches.len().min(5)]
    );

    let pareto = segments
        .get_pareto_report(with_tenant(&tenant, seg::GetParetoReportRequest {}))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(pareto.population.to_string(), summary["population"]);
    assert!(
        (pareto.top_20_percent_share - summary["top_share"].parse::<f64>().unwrap()).abs() < 1e-6,
        "{pareto:?}"
    );
    for (class, key) in [
        (seg::AbcClass::A, "abc_a"),
        (seg::AbcClass::B, "abc_b"),
        (seg::AbcClass::C, "abc_c"),
    ] {
        let share = pareto
            .classes
            .iter()
            .find(|share| share.abc_class() == class)
            .unwrap();
        assert_eq!(
            share.count.to_string(),
            summary[format!("{key}_customers").as_str()]
        );
        assert_eq!(
            crm_proto::money::to_minor_units(share.revenue.as_ref().unwrap())
                .unwrap()
                .to_string(),
            summary[format!("{key}_monetary_minor").as_str()]
        );
    }
    let distribution = segments
        .get_rfm_distribution(with_tenant(&tenant, seg::GetRfmDistributionRequest {}))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(distribution.population.to_string(), summary["population"]);
    assert_eq!(
        distribution.cells.iter().map(|cell| cell.count).sum::<i64>(),
        distribution.population
    );
    let champions = expected.iter().filter(|row| row[8] == "champions").count() as i64;
    assert_eq!(
        distribution
            .segments
            .iter()
            .find(|count| count.segment() == seg::RfmSegment::Champions)
            .unwrap()
            .count,
        champions
    );
    let lifecycle = segments
        .get_lifecycle_report(with_tenant(&tenant, seg::GetLifecycleReportRequest {}))
        .await
        .unwrap()
        .into_inner();
    for count in &lifecycle.stages {
        let name = count
            .stage()
            .as_str_name()
            .trim_start_matches("LIFECYCLE_STAGE_")
            .to_owned();
        let wanted = expected.iter().filter(|row| row[11] == name).count() as i64;
        assert_eq!(count.count, wanted, "{name}");
    }

    // The hot hash holds the same scores (one hash per customer, hash-tagged).
    if let Backend::Production { redis_url, .. } = &suite.backend {
        let client = redis::Client::open(redis_url.as_str()).unwrap();
        let mut connection = client.get_multiplexed_async_connection().await.unwrap();
        let first = &names[0];
        let id = first.trim_start_matches("customers/");
        let key = format!("crm:score:{{{tenant}/{id}}}");
        let rfm: Option<String> = redis::cmd("HGET")
            .arg(&key)
            .arg("rfm")
            .query_async(&mut connection)
            .await
            .unwrap();
        assert_eq!(
            rfm.as_deref().unwrap_or(""),
            scored[first].rfm.as_ref().map_or("", |rfm| rfm.code.as_str())
        );
        // Customer value joins the hash: historical value (margin to date) as decimal text.
        let historical: Option<String> = redis::cmd("HGET")
            .arg(&key)
            .arg("historical_value")
            .query_async(&mut connection)
            .await
            .unwrap();
        let margin = scored[first]
            .value
            .as_ref()
            .and_then(|value| value.historical_value.clone())
            .unwrap();
        assert_eq!(
            historical.as_deref(),
            Some(format!("{}.{:02}", margin.units, margin.nanos / 10_000_000).as_str())
        );
        let ttl: i64 = redis::cmd("TTL")
            .arg(&key)
            .query_async(&mut connection)
            .await
            .unwrap();
        assert!(ttl > 0, "the hash has a TTL backstop: {ttl}");
    }
}

pub(crate) async fn buy(
    interactions: &mut Interactions,
    tenant: &str,
    customer: &str,
    order: &str,
    minor: i64,
) {
    interactions
        .create_purchase(with_tenant(
            tenant,
            interaction::CreatePurchaseRequest {
                parent: customer.to_owned(),
                purchase: Some(interaction::Purchase {
                    external_order_id: order.to_owned(),
                    amount: Some(usd_minor(minor)),
                    ..Default::default()
                }),
                request_id: String::new(),
            },
        ))
        .await
        .unwrap();
}

async fn lifetime(segments: &mut Segments, tenant: &str, customer: &str) -> Option<(String, i64, i64)> {
    match segments
        .get_customer_scores(with_tenant(
            tenant,
            seg::GetCustomerScoresRequest {
                name: scores_name(customer),
            },
        ))
        .await
    {
        Ok(scores) => {
            let scores = scores.into_inner();
            let lifetime = scores.lifetime.unwrap_or_default();
            Some((
                scores.customer,
                lifetime.purchase_count,
                lifetime
                    .net_spend
                    .as_ref()
                    .and_then(crm_proto::money::to_minor_units)
                    .unwrap_or(0),
            ))
        }
        Err(status) if status.code() == Code::NotFound => None,
        Err(status) => panic!("GetCustomerScores: {status}"),
    }
}

/// A merge combines the two customers' aggregates under the survivor, an unmerge splits them
/// back, an erasure removes the scores; bad input names the field.
async fn merges_unmerges_erasure_and_bad_input(
    interactions: &mut Interactions,
    profiles: &mut Profiles,
    segments: &mut Segments,
) {
    let tenant = unique_tenant("segmerge");
    let create = |name: &'static str| {
        let mut profiles = profiles.clone();
        let tenant = tenant.clone();
        async move {
            profiles
                .create_customer(with_tenant(
                    &tenant,
                    profile::CreateCustomerRequest {
                        customer: Some(new_customer(profile::CustomerKind::Consumer, name)),
                        ..Default::default()
                    },
                ))
                .await
                .unwrap()
                .into_inner()
                .name
        }
    };
    let alice = create("Alice").await;
    let duplicate = create("Alice (duplicate)").await;
    buy(interactions, &tenant, &alice, "a-1", 1000).await;
    buy(interactions, &tenant, &alice, "a-2", 2000).await;
    buy(interactions, &tenant, &duplicate, "d-1", 500).await;
    let until = |customer: &str, want: Option<(String, i64, i64)>| {
        let segments = segments.clone();
        let tenant = tenant.clone();
        let customer = customer.to_owned();
        async move {
            eventually(
                &format!("{customer} scores are {want:?}"),
                Duration::from_secs(30),
                || {
                    let mut segments = segments.clone();
                    let tenant = tenant.clone();
                    let customer = customer.clone();
                    let want = want.clone();
                    async move { lifetime(&mut segments, &tenant, &customer).await == want }
                },
            )
            .await;
        }
    };
    until(&alice, Some((alice.clone(), 2, 3000))).await;
    until(&duplicate, Some((duplicate.clone(), 1, 500))).await;

    profiles
        .merge_customers(with_tenant(
            &tenant,
            profile::MergeCustomersRequest {
                survivor: alice.clone(),
                merged: vec![duplicate.clone()],
                ..Default::default()
            },
        ))
        .await
        .unwrap();
    // The survivor holds both; the merged-away name resolves to it.
    until(&alice, Some((alice.clone(), 3, 3500))).await;
    until(&duplicate, Some((alice.clone(), 3, 3500))).await;
    // A purchase for the merged-away name lands with the survivor, and goes back on unmerge.
    buy(interactions, &tenant, &duplicate, "d-2", 700).await;
    until(&alice, Some((alice.clone(), 4, 4200))).await;

    profiles
        .unmerge_customer(with_tenant(
            &tenant,
            profile::UnmergeCustomerRequest {
                name: duplicate.clone(),
                ..Default::default()
            },
        ))
        .await
        .unwrap();
    until(&alice, Some((alice.clone(), 2, 3000))).await;
    until(&duplicate, Some((duplicate.clone(), 2, 1200))).await;

    profiles
        .erase_customer(with_tenant(
            &tenant,
            profile::EraseCustomerRequest {
                name: duplicate.clone(),
                ..Default::default()
            },
        ))
        .await
        .unwrap();
    until(&duplicate, None).await;
    until(&alice, Some((alice.clone(), 2, 3000))).await;

    // Bad input.
    let status = segments
        .get_customer_scores(with_tenant(
            &tenant,
            seg::GetCustomerScoresRequest {
                name: "customers/nope".into(),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(violated_field(&status).as_deref(), Some("name"));
    let status = segments
        .recompute_scores(with_tenant(
            &tenant,
            seg::RecomputeScoresRequest {
                as_of_time: Some(prost_types::Timestamp {
                    seconds: chrono::Utc::now().timestamp() + 3 * 86_400,
                    nanos: 0,
                }),
                request_id: String::new(),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(violated_field(&status).as_deref(), Some("as_of_time"));
    let settings = segments
        .get_scoring_settings(with_tenant(
            &tenant,
            seg::GetScoringSettingsRequest {
                name: "scoringSettings".into(),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (settings.currency_code.as_str(), settings.rfm_window_days),
        ("USD", 365)
    );
    let status = segments
        .update_scoring_settings(with_tenant(
            &tenant,
            seg::UpdateScoringSettingsRequest {
                settings: Some(seg::ScoringSettings {
                    abc_a_share: 0.9,
                    abc_b_share: 0.5,
                    ..settings.clone()
                }),
                update_mask: Some(prost_types::FieldMask {
                    paths: vec!["abc_a_share".into(), "abc_b_share".into()],
                }),
                request_id: String::new(),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(violated_field(&status).as_deref(), Some("settings.abc_b_share"));
    let updated = segments
        .update_scoring_settings(with_tenant(
            &tenant,
            seg::UpdateScoringSettingsRequest {
                settings: Some(seg::ScoringSettings {
                    rfm_window_days: 180,
                    ..settings.clone()
                }),
                update_mask: Some(prost_types::FieldMask {
                    paths: vec!["rfm_window_days".into()],
                }),
                request_id: "window-180".into(),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(updated.rfm_window_days, 180);
    // The old etag is stale now.
    let status = segments
        .update_scoring_settings(with_tenant(
            &tenant,
            seg::UpdateScoringSettingsRequest {
                settings: Some(seg::ScoringSettings {
                    rfm_window_days: 90,
                    ..settings
                }),
                update_mask: None,
                request_id: String::new(),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Aborted);

    // A retried request is the same run; a run asked while one is going joins it.
    let ask = || seg::RecomputeScoresRequest {
        as_of_time: None,
        request_id: "run-once".into(),
    };
    let first = segments
        .recompute_scores(with_tenant(&tenant, ask()))
        .await
        .unwrap()
        .into_inner();
    let again = segments
        .recompute_scores(with_tenant(&tenant, ask()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(first.name, again.name);
    let done = run_and_wait(segments, &tenant, None).await;
    assert_eq!(
        done.customers_total, 1,
        "alice only: the erased customer has nothing left"
    );
}

/// Segmentation killed while purchases stream in: after a restart it catches up, and every
/// customer's aggregates equal a from-scratch count of what was accepted.
async fn killed_mid_stream_loses_and_doubles_nothing(suite: &mut Suite) {
    let mut interactions = suite.interaction_client().await;
    let mut profiles = suite.profile_client().await;
    let tenant = unique_tenant("segkill");
    let keys: Vec<String> = (0..50).map(|index| format!("kill-{index:03}")).collect();
    let key_refs: Vec<&str> = keys.iter().map(String::as_str).collect();
    let customers = import_customers(&mut profiles, &tenant, &key_refs).await;

    let segmentation_index = suite
        .processes
        .iter()
        .position(|process| process.role == "segmentation")
        .unwrap();
    let mut expected: HashMap<String, (i64, i64)> = HashMap::new();
    for round in 0..20 {
        let rows: Vec<interaction::PurchaseRow> = (0..100)
            .map(|index| {
                let customer = &customers[(round * 7 + index) % customers.len()];
                let minor = 100 + (round * 100 + index) as i64;
                let entry = expected.entry(customer.clone()).or_default();
                entry.0 += 1;
                entry.1 += minor;
                interaction::PurchaseRow {
                    parent: customer.clone(),
                    purchase: Some(interaction::Purchase {
                        external_order_id: format!("k-{round}-{index}"),
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
            suite.processes[segmentation_index].kill().await;
        }
        if round == 13 {
            let process = &suite.processes[segmentation_index];
            let args = vec![
                "--services".to_owned(),
                "segmentation".to_owned(),
                "--listen".to_owned(),
                process.addr.to_string(),
                "--peer".to_owned(),
                format!("customer-profile={}", suite.processes[0].url()),
                "--peer".to_owned(),
                format!("interaction={}", suite.processes[1].url()),
            ];
            suite.restart(segmentation_index, &args).await;
        }
    }
    let mut segments = suite.segmentation_client().await;
    let want_total = expected
        .values()
        .fold((0, 0), |(count, net), (customer_count, customer_net)| {
            (count + customer_count, net + customer_net)
        });
    assert_eq!(want_total.0, 2000);
    eventually(
        "segmentation caught up after the restart",
        Duration::from_secs(60),
        || {
            let mut segments = segments.clone();
            let tenant = tenant.clone();
            let customers = customers.clone();
            async move { lifetime_totals(&mut segments, &tenant, &customers).await == want_total }
        },
    )
    .await;
    for customer in &customers {
        let got = lifetime(&mut segments, &tenant, customer).await.unwrap();
        let want = expected.get(customer).copied().unwrap_or_default();
        assert_eq!((got.1, got.2), want, "{customer}");
    }
}

async fn run(backend: Backend) {
    let suite = Suite::start(crm(), Topology::OneProcess, backend).await;
    let mut interactions = suite.interaction_client().await;
    let mut profiles = suite.profile_client().await;
    let mut segments = suite.segmentation_client().await;
    scores_equal_the_reference(&suite, &mut interactions, &mut profiles, &mut segments).await;
    merges_unmerges_erasure_and_bad_input(&mut interactions, &mut profiles, &mut segments).await;
    crate::segments::dynamic_segments_and_grades(&mut interactions, &mut profiles, &mut segments).await;
    crate::value_models::cdnow_through_the_service(&mut interactions, &mut profiles, &mut segments).await;
    crate::value_models::feedback_delivered_value_and_the_trap(
        &mut interactions,
        &mut profiles,
        &mut segments,
    )
    .await;
    crate::value_models::referral_value_follows_referred_spend(
        &mut interactions,
        &mut profiles,
        &mut segments,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn segmentation_embedded() {
    run(Backend::Embedded).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn segmentation_postgres_redis() {
    if let Some(backend) = Backend::production() {
        run(backend).await;
    }
}

/// Split topology: segmentation in its own process follows the other two over the network
/// (internal feeds with the shared token) and is killed and restarted mid-stream.
async fn run_split(backend: Backend) {
    let mut suite = Suite::start(crm(), Topology::Split, backend).await;
    let mut interactions = suite.interaction_client().await;
    let mut profiles = suite.profile_client().await;
    let mut segments = suite.segmentation_client().await;
    merges_unmerges_erasure_and_bad_input(&mut interactions, &mut profiles, &mut segments).await;
    crate::segments::dynamic_segments_and_grades(&mut interactions, &mut profiles, &mut segments).await;
    crate::value_models::degenerate_tenants_and_bad_input(&mut interactions, &mut profiles, &mut segments)
        .await;
    crate::value_models::feedback_delivered_value_and_the_trap(
        &mut interactions,
        &mut profiles,
        &mut segments,
    )
    .await;
    crate::value_models::referral_value_follows_referred_spend(
        &mut interactions,
        &mut profiles,
        &mut segments,
    )
    .await;
    killed_mid_stream_loses_and_doubles_nothing(&mut suite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn segmentation_split_embedded() {
    run_split(Backend::Embedded).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn segmentation_split_postgres_redis() {
    if let Some(backend) = Backend::production() {
        run_split(backend).await;
    }
}
