//! Customer-value models end to end: the CDNOW sample (2,357 customers, 39-week calibration)
//! goes in through the suite's own ingestion (customers imported, purchases ingested), and
//! FitValueModels reproduces the published BG/NBD and Gamma-Gamma estimates; predictions for
//! every customer agree with `lifetimes` 0.11.3 fitted on the same day-level data
//! (tests/fixtures/clv/make_fixtures.py); a fit applies to customers' scores through a score
//! run; degenerate tenants get FAILED_PRECONDITION saying why; a fit that does not converge is
//! kept as REJECTED and never used.

use std::collections::HashMap;
use std::time::Duration;

use crm_tests::segmentation::{self as seg};
use crm_tests::{interaction, new_customer, profile, unique_tenant, violated_field, with_tenant};
use tonic::Code;

use crate::segmentation::{
    Interactions, Profiles, Segments, buy, eventually, import_customers, lifetime_totals, rows, run_and_wait,
    timestamp, usd_minor,
};
use crate::segments::{create_customer, int_attribute};

const CDNOW_TRANSACTIONS: &str = include_str!("../fixtures/clv/cdnow_transactions.csv");
const CDNOW_DAY_CUSTOMERS: &str = include_str!("../fixtures/clv/cdnow_day_customers.csv");

/// Fader, Hardie & Lee (2005) as `lifetimes` reproduces them, and its log-likelihood.
const PUBLISHED_BG_NBD: [f64; 4] = [0.2426, 4.4135, 0.7929, 2.4258];
const PUBLISHED_BG_NBD_LOG_LIKELIHOOD: f64 = -9582.43;
const PUBLISHED_GAMMA_GAMMA: [f64; 3] = [6.2488, 3.7446, 15.4477];
/// The end of CDNOW's 39-week calibration period.
const CDNOW_END: &str = "1997-09-30T23:59:59Z";

fn relative_error(actual: f64, expected: f64) -> f64 {
    if expected == 0.0 {
        actual.abs()
    } else {
        ((actual - expected) / expected).abs()
    }
}

async fn fit(
    segments: &mut Segments,
    tenant: &str,
    calibration_end: &str,
    request_id: &str,
) -> Result<seg::ValueModel, tonic::Status> {
    segments
        .fit_value_models(with_tenant(
            tenant,
            seg::FitValueModelsRequest {
                calibration_end_time: Some(timestamp(calibration_end)),
                settings: None,
                request_id: request_id.to_owned(),
            },
        ))
        .await
        .map(tonic::Response::into_inner)
}

async fn ingest(interactions: &mut Interactions, tenant: &str, rows: Vec<interaction::PurchaseRow>) {
    let count = rows.len() as i64;
    let batches: Vec<interaction::IngestPurchasesRequest> = rows
        .chunks(1000)
        .map(|chunk| interaction::IngestPurchasesRequest { rows: chunk.to_vec() })
        .collect();
    let ingested = interactions
        .ingest_purchases(with_tenant(tenant, tokio_stream::iter(batches)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ingested.created_count, count);
}

fn purchase(customer: &str, order: String, day: &str, cents: i64) -> interaction::PurchaseRow {
    interaction::PurchaseRow {
        parent: customer.to_owned(),
        purchase: Some(interaction::Purchase {
            external_order_id: order,
            occur_time: Some(timestamp(&format!("{day}T12:00:00Z"))),
            amount: Some(usd_minor(cents)),
            ..Default::default()
        }),
    }
}

/// Waits until segmentation has applied `purchases` purchases of `customers`.
async fn applied(segments: &Segments, tenant: &str, customers: &[String], purchases: i64) {
    eventually(
        "segmentation applied every purchase",
        Duration::from_secs(180),
        || {
            let mut segments = segments.clone();
            let tenant = tenant.to_owned();
            let customers = customers.to_vec();
            async move { lifetime_totals(&mut segments, &tenant, &customers).await.0 == purchases }
        },
    )
    .await;
}

pub(crate) async fn cdnow_through_the_service(
    interactions: &mut Interactions,
    profiles: &mut Profiles,
    segments: &mut Segments,
) {
    let tenant = unique_tenant("cdnow");
    let reference = rows(CDNOW_DAY_CUSTOMERS);
    assert_eq!(reference.len(), 2357);
    let keys: Vec<String> = reference.iter().map(|row| format!("cdnow-{}", row[0])).collect();
    let key_refs: Vec<&str> = keys.iter().map(String::as_str).collect();
    let names = import_customers(profiles, &tenant, &key_refs).await;
    let customer_of: HashMap<&str, &String> = reference.iter().map(|row| row[0]).zip(&names).collect();

    let transactions = rows(CDNOW_TRANSACTIONS);
    let purchase_rows: Vec<interaction::PurchaseRow> = transactions
        .iter()
        .enumerate()
        .map(|(index, row)| {
            let cents = (row[2].parse::<f64>().unwrap() * 100.0).round() as i64;
            purchase(customer_of[row[0]], format!("cdnow-{index}"), row[1], cents)
        })
        .collect();
    ingest(interactions, &tenant, purchase_rows).await;
    applied(segments, &tenant, &names, transactions.len() as i64).await;

    // Before any fit there is no active model.
    let missing = segments
        .get_value_model(with_tenant(
            &tenant,
            seg::GetValueModelRequest {
                name: "valueModels/active".into(),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(missing.code(), Code::NotFound);

    let model = fit(segments, &tenant, CDNOW_END, "fit-cdnow").await.unwrap();
    eprintln!("CDNOW through the service: {model:?}");
    assert_eq!(
        model.state(),
        seg::value_model::State::Active,
        "{}",
        model.rejection_reason
    );
    assert_eq!(model.name, "valueModels/1");
    assert_eq!(model.currency_code, "USD");
    let transactions_model = model.transactions.unwrap();
    let fit_report = transactions_model.fit.unwrap();
    assert_eq!(fit_report.status(), seg::FitStatus::Converged);
    assert_eq!(fit_report.customers, 2357);
    for (found, published) in [
        transactions_model.r,
        transactions_model.alpha,
        transactions_model.a,
        transactions_model.b,
    ]
    .into_iter()
    .zip(PUBLISHED_BG_NBD)
    {
        assert!((found - published).abs() < 1e-3, "{found} vs {published}");
    }
    assert!(
        (fit_report.log_likelihood - PUBLISHED_BG_NBD_LOG_LIKELIHOOD).abs() < 0.01,
        "{}",
        fit_report.log_likelihood
    );
    let spend_model = model.spend.unwrap();
    let spend_report = spend_model.fit.unwrap();
    assert_eq!(spend_report.status(), seg::FitStatus::Converged);
    assert_eq!(spend_report.customers, 946);
    for (found, published) in [spend_model.p, spend_model.q, spend_model.v]
        .into_iter()
        .zip(PUBLISHED_GAMMA_GAMMA)
    {
        assert!((found - published).abs() < 1e-3, "{found} vs {published}");
    }
    assert!(model.fit_duration.is_some());
    let settings = model.settings.unwrap();
    assert_eq!(settings.clv_horizon_months, Some(12));
    // CDNOW's purchases carry no margin: spend is the value.
    assert_eq!(settings.margin_ratio, Some(1.0));

    // A retry returns the same version instead of fitting again.
    let again = fit(segments, &tenant, CDNOW_END, "fit-cdnow").await.unwrap();
    assert_eq!(again, model);
    let active = segments
        .get_value_model(with_tenant(
            &tenant,
            seg::GetValueModelRequest {
                name: "valueModels/active".into(),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(active, model);

    // The paper's worked example, as a what-if: E[X(39) | x = 2, t_x = 30.43, T = 38.86].
    let what_if = segments
        .predict_customer_values(with_tenant(
            &tenant,
            seg::PredictCustomerValuesRequest {
                model: model.name.clone(),
                summaries: vec![seg::PurchaseSummary {
                    frequency: 2,
                    recency_weeks: 30.43,
                    age_weeks: 38.86,
                    average_repeat_spend: Some(usd_minor(2235)),
                }],
                expected_purchases_days: Some(273),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    let expected = what_if.summary_predictions[0].expected_purchases.unwrap();
    assert!((expected - 1.2259).abs() < 1e-4, "{expected}");

    // Every customer, summarised by the service as of the calibration end, agrees with
    // lifetimes fitted on the same data.
    let mut worst = (0.0_f64, 0.0_f64);
    for (chunk_rows, chunk_names) in reference.chunks(1000).zip(names.chunks(1000)) {
        let predicted = segments
            .predict_customer_values(with_tenant(
                &tenant,
                seg::PredictCustomerValuesRequest {
                    model: "valueModels/active".into(),
                    as_of_time: Some(timestamp(CDNOW_END)),
                    customers: chunk_names.to_vec(),
                    expected_purchases_days: Some(273),
                    ..Default::default()
                },
            ))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(predicted.model, model.name);
        for ((row, name), prediction) in chunk_rows
            .iter()
            .zip(chunk_names)
            .zip(&predicted.customer_predictions)
        {
            assert_eq!(&prediction.customer, name);
            let summary = prediction.summary.as_ref().unwrap();
            assert_eq!(summary.frequency, row[1].parse::<i64>().unwrap(), "{name}");
            assert!(
                (summary.recency_weeks - row[2].parse::<f64>().unwrap()).abs() < 1e-9,
                "{name}"
            );
            assert!(
                (summary.age_weeks - row[3].parse::<f64>().unwrap()).abs() < 1e-9,
                "{name}"
            );
            let alive = relative_error(prediction.probability_alive.unwrap(), row[5].parse().unwrap());
            let purchases = relative_error(prediction.expected_purchases.unwrap(), row[6].parse().unwrap());
            worst = (worst.0.max(alive), worst.1.max(purchases));
            assert!(alive < 1e-6, "{name}: P(alive) off by {alive:e}");
            assert!(
                purchases < 1e-6,
                "{name}: expected purchases off by {purchases:e}"
            );
        }
    }
    eprintln!(
        "CDNOW vs lifetimes: worst relative error P(alive) {:e}, E[X(39)] {:e}",
        worst.0, worst.1
    );

    // The fit started a score run that gives every customer their value.
    assert!(model.score_run.starts_with("scoreRuns/"), "{model:?}");
    eventually(
        "the fit's score run gave customers their value",
        Duration::from_secs(120),
        || {
            let mut segments = segments.clone();
            let tenant = tenant.clone();
            let name = names[0].clone();
            let model_name = model.name.clone();
            async move {
                let scores = segments
                    .get_customer_scores(with_tenant(
                        &tenant,
                        seg::GetCustomerScoresRequest {
                            name: format!("{name}/scores"),
                        },
                    ))
                    .await
                    .unwrap()
                    .into_inner();
                scores.value.is_some_and(|value| value.model == model_name)
            }
        },
    )
    .await;
    let value = segments
        .get_customer_scores(with_tenant(
            &tenant,
            seg::GetCustomerScoresRequest {
                name: format!("{}/scores", names[0]),
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .value
        .unwrap();
    // Customer 1: three purchase days of 22.35 (no margin known), scored as of today, decades
    // after CDNOW: almost surely gone, and a CLV that is never negative.
    let alive = value.probability_alive.unwrap();
    assert!((0.0..=1.0).contains(&alive), "{alive}");
    assert!((value.churn_risk.unwrap() - (1.0 - alive)).abs() < 1e-12);
    let clv = value.potential_value.unwrap();
    assert!(clv.units >= 0 && clv.nanos >= 0, "{clv:?}");
    assert_eq!(value.historical_value.unwrap(), usd_minor(0));

    // Versions: a second fit supersedes the first.
    let second = fit(segments, &tenant, CDNOW_END, "fit-cdnow-2").await.unwrap();
    assert_eq!(second.name, "valueModels/2");
    assert_eq!(second.state(), seg::value_model::State::Active);
    let listed = segments
        .list_value_models(with_tenant(
            &tenant,
            seg::ListValueModelsRequest {
                page_size: 1,
                page_token: String::new(),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.value_models.len(), 1);
    assert_eq!(listed.value_models[0].name, "valueModels/2");
    let rest = segments
        .list_value_models(with_tenant(
            &tenant,
            seg::ListValueModelsRequest {
                page_size: 10,
                page_token: listed.next_page_token,
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(rest.value_models.len(), 1);
    assert_eq!(rest.value_models[0].name, "valueModels/1");
    assert_eq!(rest.value_models[0].state(), seg::value_model::State::Superseded);
    assert!(rest.next_page_token.is_empty());
    run_and_wait(segments, &tenant, None).await;
    reports_on_cdnow(segments, &tenant, &names, &transactions, &customer_of).await;
}

/// Quarter of a `YYYY-MM-DD` day: (year, quarter 0-3).
fn quarter(day: &str) -> (i32, u32) {
    let date = chrono::NaiveDate::parse_from_str(day, "%Y-%m-%d").unwrap();
    (chrono::Datelike::year(&date), chrono::Datelike::month0(&date) / 3)
}

/// Retention per quarter against counts computed here from the raw log, and customer equity
/// against the customers' own values.
async fn reports_on_cdnow(
    segments: &mut Segments,
    tenant: &str,
    names: &[String],
    transactions: &[Vec<&str>],
    customer_of: &HashMap<&str, &String>,
) {
    // Independent reference: which quarters of 1997 each customer bought in.
    let mut quarters: HashMap<&String, std::collections::BTreeSet<(i32, u32)>> = HashMap::new();
    for row in transactions {
        quarters
            .entry(customer_of[row[0]])
            .or_default()
            .insert(quarter(row[1]));
    }
    let q = |index: u32| (1997, index);
    let active = |index: u32| quarters.values().filter(|set| set.contains(&q(index))).count() as i64;
    let retained = |index: u32| {
        quarters
            .values()
            .filter(|set| set.contains(&q(index)) && set.contains(&q(index - 1)))
            .count() as i64
    };
    let report = segments
        .get_retention_report(with_tenant(
            tenant,
            seg::GetRetentionReportRequest {
                period: seg::RetentionPeriodUnit::Quarter.into(),
                start_time: None,
                end_time: Some(timestamp(CDNOW_END)),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    eprintln!("CDNOW retention by quarter: {report:?}");
    assert_eq!(report.periods.len(), 3);
    assert_eq!(
        report.periods[0].start_time,
        Some(timestamp("1997-01-01T00:00:00Z"))
    );
    assert_eq!(report.periods[0].active_customers, 2357);
    assert_eq!(report.periods[0].new_customers, 2357);
    for index in 1..3 {
        let period = &report.periods[index as usize];
        assert_eq!(period.active_customers, active(index));
        assert_eq!(period.new_customers, 0);
        assert_eq!(period.retained_customers, retained(index));
        let rate = retained(index) as f64 / active(index - 1) as f64;
        assert!((period.retention_rate.unwrap() - rate).abs() < 1e-12);
        assert!((period.defection_rate.unwrap() - (1.0 - rate)).abs() < 1e-12);
    }
    assert_eq!(report.cohorts.len(), 1);
    assert_eq!(report.cohorts[0].size, 2357);
    assert_eq!(
        report.cohorts[0].active_by_period,
        vec![2357, active(1), active(2)]
    );

    // Equity: the sum of the customers' own potential values, per group and overall; fewer
    // defections raise it, more so the larger the reduction.
    let equity = segments
        .get_customer_equity_report(with_tenant(
            tenant,
            seg::GetCustomerEquityReportRequest {
                defection_reductions: vec![0.05, 0.10],
            },
        ))
        .await
        .unwrap()
        .into_inner();
    eprintln!(
        "CDNOW equity: overall {:?}, model {:?}, scenarios {:?}",
        equity.overall, equity.model_potential_value, equity.scenarios
    );
    let mut customers_sum = 0_i64;
    for chunk in names.chunks(1000) {
        let found = segments
            .batch_get_customer_scores(with_tenant(
                tenant,
                seg::BatchGetCustomerScoresRequest {
                    names: chunk.iter().map(|name| format!("{name}/scores")).collect(),
                },
            ))
            .await
            .unwrap()
            .into_inner();
        customers_sum += found
            .scores
            .iter()
            .map(|scores| {
                crm_proto::money::to_minor_units(
                    scores.value.as_ref().unwrap().potential_value.as_ref().unwrap(),
                )
                .unwrap()
            })
            .sum::<i64>();
    }
    let overall = equity.overall.clone().unwrap();
    assert_eq!(overall.customers, 2357);
    let minor = |money: Option<&crm_proto::google::r#type::Money>| {
        crm_proto::money::to_minor_units(money.unwrap()).unwrap()
    };
    assert_eq!(minor(overall.potential_value.as_ref()), customers_sum);
    let grouped: i64 = equity
        .by_rfm_segment
        .iter()
        .map(|group| minor(group.potential_value.as_ref()))
        .sum();
    assert_eq!(grouped, customers_sum);
    assert_eq!(
        equity
            .by_lifecycle_stage
            .iter()
            .map(|group| group.customers)
            .sum::<i64>(),
        2357
    );
    // Recomputed now from the same histories: equal up to each customer's rounding to a cent.
    assert!((minor(equity.model_potential_value.as_ref()) - customers_sum).abs() <= 2357);
    assert_eq!(equity.scenarios.len(), 2);
    assert!(equity.scenarios[0].change_percent > 0.0, "{:?}", equity.scenarios);
    assert!(equity.scenarios[1].change_percent > equity.scenarios[0].change_percent);

    let status = segments
        .get_customer_equity_report(with_tenant(
            tenant,
            seg::GetCustomerEquityReportRequest {
                defection_reductions: vec![1.5],
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(
        violated_field(&status).as_deref(),
        Some("defection_reductions[0]")
    );
}

/// Tenants whose data cannot identify a model get FAILED_PRECONDITION saying why; a fit that
/// does not converge is kept as REJECTED, never active, and cannot predict; bad input names
/// the field.
pub(crate) async fn degenerate_tenants_and_bad_input(
    interactions: &mut Interactions,
    profiles: &mut Profiles,
    segments: &mut Segments,
) {
    let end = "2026-06-30T23:59:59Z";
    let precondition = |status: tonic::Status, why: &str| {
        assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
        assert!(
            status.message().contains(why),
            "{:?} lacks {why:?}",
            status.message()
        );
    };

    let empty = unique_tenant("clv-empty");
    precondition(fit(segments, &empty, end, "").await.unwrap_err(), "no customers");
    precondition(
        segments
            .get_customer_equity_report(with_tenant(
                &empty,
                seg::GetCustomerEquityReportRequest::default(),
            ))
            .await
            .unwrap_err(),
        "no active value model",
    );

    let single = unique_tenant("clv-one");
    let names = import_customers(profiles, &single, &["only"]).await;
    ingest(
        interactions,
        &single,
        vec![
            purchase(&names[0], "o1".into(), "2026-05-01", 1000),
            purchase(&names[0], "o2".into(), "2026-06-01", 1000),
        ],
    )
    .await;
    applied(segments, &single, &names, 2).await;
    precondition(
        fit(segments, &single, end, "").await.unwrap_err(),
        "only 1 customer",
    );

    let one_day = unique_tenant("clv-one-day");
    let names = import_customers(profiles, &one_day, &["a", "b", "c"]).await;
    let rows = names
        .iter()
        .enumerate()
        .flat_map(|(index, name)| {
            [
                purchase(name, format!("{index}-1"), "2026-06-01", 1000),
                purchase(name, format!("{index}-2"), "2026-06-01", 500),
            ]
        })
        .collect();
    ingest(interactions, &one_day, rows).await;
    applied(segments, &one_day, &names, 6).await;
    precondition(
        fit(segments, &one_day, end, "").await.unwrap_err(),
        "no customer has a repeat purchase",
    );

    // Two customers cannot pin down BG/NBD's four parameters: the fit runs off to the
    // boundary, is kept for inspection and is never used. (One repeat buyer in five purchase
    // days of a week, thirty weeks ago; one who came back once after 29 weeks.)
    let tiny = unique_tenant("clv-tiny");
    let names = import_customers(profiles, &tiny, &["a", "b"]).await;
    let mut rows = vec![
        purchase(&names[1], "b1".into(), "2025-12-02", 1000),
        purchase(&names[1], "b2".into(), "2026-06-23", 100_000),
    ];
    for (index, day) in [
        "2025-12-02",
        "2025-12-03",
        "2025-12-04",
        "2025-12-05",
        "2025-12-07",
        "2025-12-09",
    ]
    .into_iter()
    .enumerate()
    {
        rows.push(purchase(&names[0], format!("a{index}"), day, 100));
    }
    ingest(interactions, &tiny, rows).await;
    applied(segments, &tiny, &names, 8).await;
    let rejected = fit(segments, &tiny, end, "").await.unwrap();
    assert_eq!(rejected.state(), seg::value_model::State::Rejected);
    assert!(
        rejected.rejection_reason.contains("BG/NBD"),
        "{}",
        rejected.rejection_reason
    );
    assert!(rejected.score_run.is_empty());
    let status = segments
        .get_value_model(with_tenant(
            &tiny,
            seg::GetValueModelRequest {
                name: "valueModels/active".into(),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    let status = segments
        .predict_customer_values(with_tenant(
            &tiny,
            seg::PredictCustomerValuesRequest {
                model: rejected.name.clone(),
                customers: names.clone(),
                ..Default::default()
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");

    // Share of wallet: the last 365 days' net spend over the declared category spend.
    let wallet = unique_tenant("clv-wallet");
    let declared = create_customer(profiles, &wallet, {
        let mut customer = new_customer(profile::CustomerKind::Consumer, "Dana");
        customer
            .attributes
            .insert("declared_category_spend".into(), int_attribute(200));
        customer
    })
    .await;
    buy(interactions, &wallet, &declared, "w1", 5000).await;
    eventually("the share of wallet is 25%", Duration::from_secs(60), || {
        let mut segments = segments.clone();
        let wallet = wallet.clone();
        let declared = declared.clone();
        async move {
            segments
                .get_customer_scores(with_tenant(
                    &wallet,
                    seg::GetCustomerScoresRequest {
                        name: format!("{declared}/scores"),
                    },
                ))
                .await
                .ok()
                .and_then(|scores| scores.into_inner().value)
                .and_then(|value| value.share_of_wallet)
                .is_some_and(|share| (share - 25.0).abs() < 1e-9)
        }
    })
    .await;

    // Bad input.
    let bad = |status: tonic::Status, field: &str| {
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        assert_eq!(violated_field(&status).as_deref(), Some(field), "{status:?}");
    };
    let request = |settings: seg::ValueModelSettings| seg::FitValueModelsRequest {
        settings: Some(settings),
        ..Default::default()
    };
    for (settings, field) in [
        (
            seg::ValueModelSettings {
                monthly_discount_rate: Some(1.5),
                ..Default::default()
            },
            "settings.monthly_discount_rate",
        ),
        (
            seg::ValueModelSettings {
                clv_horizon_months: Some(0),
                ..Default::default()
            },
            "settings.clv_horizon_months",
        ),
        (
            seg::ValueModelSettings {
                margin_ratio: Some(-0.5),
                ..Default::default()
            },
            "settings.margin_ratio",
        ),
        (
            seg::ValueModelSettings {
                expected_purchases_days: Some(5000),
                ..Default::default()
            },
            "settings.expected_purchases_days",
        ),
    ] {
        bad(
            segments
                .fit_value_models(with_tenant(&tiny, request(settings)))
                .await
                .unwrap_err(),
            field,
        );
    }
    bad(
        segments
            .fit_value_models(with_tenant(
                &tiny,
                seg::FitValueModelsRequest {
                    calibration_end_time: Some(timestamp("2999-01-01T00:00:00Z")),
                    ..Default::default()
                },
            ))
            .await
            .unwrap_err(),
        "calibration_end_time",
    );
    bad(
        segments
            .predict_customer_values(with_tenant(
                &tiny,
                seg::PredictCustomerValuesRequest {
                    model: rejected.name.clone(),
                    customers: vec!["bogus".into()],
                    ..Default::default()
                },
            ))
            .await
            .unwrap_err(),
        "customers[0]",
    );
    bad(
        segments
            .get_value_model(with_tenant(
                &tiny,
                seg::GetValueModelRequest {
                    name: "models/1".into(),
                },
            ))
            .await
            .unwrap_err(),
        "name",
    );
    // Another tenant's version looks exactly like a missing one.
    let status = segments
        .get_value_model(with_tenant(
            &empty,
            seg::GetValueModelRequest {
                name: rejected.name.clone(),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
}

fn days_ago(days: i64) -> String {
    (chrono::Utc::now() - chrono::Duration::days(days))
        .format("%Y-%m-%d")
        .to_string()
}

async fn give_feedback(
    interactions: &mut Interactions,
    tenant: &str,
    customer: &str,
    csat: i32,
    survey: Option<interaction::DeliveredValueSurvey>,
) {
    interactions
        .create_feedback(with_tenant(
            tenant,
            interaction::CreateFeedbackRequest {
                parent: customer.to_owned(),
                feedback: Some(interaction::Feedback {
                    csat: Some(csat),
                    delivered_value: survey,
                    ..Default::default()
                }),
                request_id: String::new(),
            },
        ))
        .await
        .unwrap();
}

/// Feedback reaches segmentation: mean CSAT, delivered value (value minus cost of the survey)
/// and the satisfaction trap (satisfied, yet no longer buying) per customer, and the
/// satisfaction report over them.
pub(crate) async fn feedback_delivered_value_and_the_trap(
    interactions: &mut Interactions,
    profiles: &mut Profiles,
    segments: &mut Segments,
) {
    let tenant = unique_tenant("clv-feedback");
    let names = import_customers(profiles, &tenant, &["lapsed-fan", "regular", "unhappy"]).await;
    let (lapsed, regular, unhappy) = (&names[0], &names[1], &names[2]);
    let mut rows = vec![
        purchase(lapsed, "l1".into(), &days_ago(700), 5000),
        purchase(lapsed, "l2".into(), &days_ago(400), 5000),
        purchase(unhappy, "u1".into(), &days_ago(30), 5000),
    ];
    for (index, days) in [10, 40, 100, 200, 300].into_iter().enumerate() {
        rows.push(purchase(regular, format!("r{index}"), &days_ago(days), 2000));
    }
    ingest(interactions, &tenant, rows).await;
    give_feedback(interactions, &tenant, lapsed, 5, None).await;
    give_feedback(interactions, &tenant, lapsed, 4, None).await;
    let survey = interaction::DeliveredValueSurvey {
        product_value: 8,
        service_value: 9,
        personnel_value: 7,
        image_value: 6,
        monetary_cost: 3,
        time_cost: 2,
        energy_cost: 2,
        physical_cost: 1,
    };
    give_feedback(interactions, &tenant, regular, 5, Some(survey)).await;
    give_feedback(interactions, &tenant, unhappy, 2, None).await;

    let value_of = |name: &String| {
        let mut segments = segments.clone();
        let tenant = tenant.clone();
        let name = name.clone();
        async move {
            segments
                .get_customer_scores(with_tenant(
                    &tenant,
                    seg::GetCustomerScoresRequest {
                        name: format!("{name}/scores"),
                    },
                ))
                .await
                .ok()
                .and_then(|scores| scores.into_inner().value)
                .unwrap_or_default()
        }
    };
    eventually(
        "every feedback reached segmentation",
        Duration::from_secs(60),
        || {
            let lapsed = value_of(lapsed);
            let regular = value_of(regular);
            let unhappy = value_of(unhappy);
            async move {
                lapsed.await.csat_responses == 2
                    && regular.await.csat_responses == 1
                    && unhappy.await.csat_responses == 1
            }
        },
    )
    .await;
    let lapsed_value = value_of(lapsed).await;
    assert_eq!(lapsed_value.mean_csat, Some(4.5));
    assert_eq!(lapsed_value.delivered_value, None);
    assert!(lapsed_value.satisfaction_trap, "{lapsed_value:?}");
    let regular_value = value_of(regular).await;
    assert_eq!(regular_value.mean_csat, Some(5.0));
    // (8 + 9 + 7 + 6) - (3 + 2 + 2 + 1).
    assert_eq!(regular_value.delivered_value, Some(22.0));
    assert!(!regular_value.satisfaction_trap);
    let unhappy_value = value_of(unhappy).await;
    assert_eq!(unhappy_value.mean_csat, Some(2.0));
    assert!(!unhappy_value.satisfaction_trap);

    let report = segments
        .get_satisfaction_report(with_tenant(&tenant, seg::GetSatisfactionReportRequest {}))
        .await
        .unwrap()
        .into_inner();
    let overall = report.overall.unwrap();
    assert_eq!(overall.customers, 3);
    assert_eq!(overall.responding_customers, 3);
    assert_eq!(overall.satisfied_customers, 2);
    assert_eq!(overall.trapped_customers, 1);
    assert_eq!(overall.surveyed_customers, 1);
    assert_eq!(overall.mean_delivered_value, Some(22.0));
    assert!((overall.mean_csat.unwrap() - (4.5 + 5.0 + 2.0) / 3.0).abs() < 1e-12);
    assert_eq!(report.trapped_customers, vec![lapsed.clone()]);
    assert_eq!(
        report
            .by_rfm_segment
            .iter()
            .map(|group| group.customers)
            .sum::<i64>(),
        3
    );
}

/// A referrer's referral value is what the customers they referred spent, and follows their
/// purchases as they arrive.
pub(crate) async fn referral_value_follows_referred_spend(
    interactions: &mut Interactions,
    profiles: &mut Profiles,
    segments: &mut Segments,
) {
    let tenant = unique_tenant("clv-referral");
    let referrer = create_customer(
        profiles,
        &tenant,
        new_customer(profile::CustomerKind::Consumer, "Ann"),
    )
    .await;
    let mut referred = Vec::new();
    for name in ["Ben", "Cat"] {
        referred.push(
            create_customer(profiles, &tenant, {
                let mut customer = new_customer(profile::CustomerKind::Consumer, name);
                customer.referrer = referrer.clone();
                customer
            })
            .await,
        );
    }
    buy(interactions, &tenant, &referred[0], "b1", 3000).await;
    buy(interactions, &tenant, &referred[1], "c1", 1250).await;
    buy(interactions, &tenant, &referrer, "a1", 999).await;
    let referral_value = || {
        let mut segments = segments.clone();
        let tenant = tenant.clone();
        let referrer = referrer.clone();
        async move {
            segments
                .get_customer_scores(with_tenant(
                    &tenant,
                    seg::GetCustomerScoresRequest {
                        name: format!("{referrer}/scores"),
                    },
                ))
                .await
                .ok()
                .and_then(|scores| scores.into_inner().value)
                .and_then(|value| value.referral_value)
        }
    };
    eventually(
        "the referrer's value counts both referred purchases",
        Duration::from_secs(60),
        || {
            let value = referral_value();
            async move { value.await == Some(usd_minor(4250)) }
        },
    )
    .await;
    buy(interactions, &tenant, &referred[1], "c2", 750).await;
    eventually(
        "a later referred purchase raises it",
        Duration::from_secs(60),
        || {
            let value = referral_value();
            async move { value.await == Some(usd_minor(5000)) }
        },
    )
    .await;

    // Erasing a referred customer takes their spend out of the referrer's value.
    let erase = |name: String| {
        let mut profiles = profiles.clone();
        let tenant = tenant.clone();
        async move {
            profiles
                .erase_customer(with_tenant(
                    &tenant,
                    profile::EraseCustomerRequest {
                        name,
                        ..Default::default()
                    },
                ))
                .await
                .unwrap();
        }
    };
    erase(referred[0].clone()).await;
    eventually(
        "the erased customer's spend left the referral value",
        Duration::from_secs(60),
        || {
            let value = referral_value();
            async move { value.await == Some(usd_minor(2000)) }
        },
    )
    .await;
    // An erased referrer stays without scores when a customer they referred buys.
    erase(referrer.clone()).await;
    eventually(
        "the erased referrer's scores are gone",
        Duration::from_secs(60),
        || {
            let value = referral_value();
            async move { value.await.is_none() }
        },
    )
    .await;
    buy(interactions, &tenant, &referred[1], "c3", 500).await;
    eventually(
        "the referred customer's purchase is applied",
        Duration::from_secs(60),
        || {
            let mut segments = segments.clone();
            let tenant = tenant.clone();
            let customer = referred[1].clone();
            async move { lifetime_totals(&mut segments, &tenant, &[customer]).await.0 == 3 }
        },
    )
    .await;
    let status = segments
        .get_customer_scores(with_tenant(
            &tenant,
            seg::GetCustomerScoresRequest {
                name: format!("{referrer}/scores"),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(
        status.code(),
        Code::NotFound,
        "an erased referrer was rescored: {status:?}"
    );
}
