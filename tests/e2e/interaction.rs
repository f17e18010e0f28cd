//! Interaction end to end: the event log under concurrent writers with a subscriber killed and
//! resumed (and a transaction that commits late), re-sent records changing nothing, bad input
//! named field by field with nothing written, the due-callback queue, the timeline and stats,
//! and merges, unmerges and erasures followed from customer-profile. Each runs on the embedded
//! default and on PostgreSQL + Redis; the customer-following scenario also in the split
//! topology.

use std::collections::HashMap;
use std::time::Duration;

use crm_tests::interaction::interaction_service_client::InteractionServiceClient;
use crm_tests::interaction::*;
use crm_tests::profile::customer_profile_service_client::CustomerProfileServiceClient;
use crm_tests::{
    Backend, Suite, Topology, new_customer, profile, unique_tenant, violated_field, with_tenant,
};
use futures::StreamExt;
use prost::Message;
use tonic::Code;

use crate::crm;

type Client = InteractionServiceClient<tonic::transport::Channel>;
type Profiles = CustomerProfileServiceClient<tonic::transport::Channel>;
type Money = crm_proto::google::r#type::Money;

fn usd(units: i64, cents: i32) -> Money {
    Money {
        currency_code: "USD".into(),
        units,
        nanos: cents * 10_000_000,
    }
}

fn now_seconds() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        .try_into()
        .unwrap()
}

/// A time relative to one instant fixed when the tests start, so two calls made on either side
/// of a second boundary still compare as their offsets do. Offsets here are minutes to hours,
/// so the base stays "now" for the time rules (at most 24 h ahead) over a test run.
fn at(offset_seconds: i64) -> prost_types::Timestamp {
    static BASE_SECONDS: std::sync::OnceLock<i64> = std::sync::OnceLock::new();
    prost_types::Timestamp {
        seconds: *BASE_SECONDS.get_or_init(now_seconds) + offset_seconds,
        nanos: 0,
    }
}

async fn customer(profiles: &mut Profiles, tenant: &str, name: &str) -> String {
    profiles
        .create_customer(with_tenant(
            tenant,
            profile::CreateCustomerRequest {
                customer: Some(new_customer(profile::CustomerKind::Consumer, name)),
                request_id: String::new(),
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .name
}

fn call(reference: &str, notes: &str) -> Interaction {
    Interaction {
        form: TouchpointForm::Contact.into(),
        channel: Channel::CallCenter.into(),
        direction: Direction::Inbound.into(),
        agent: "agent-7".into(),
        subject: "billing question".into(),
        notes: notes.into(),
        external_reference: reference.into(),
        ..Default::default()
    }
}

async fn record_call(
    client: &mut Client,
    tenant: &str,
    parent: &str,
    reference: &str,
    notes: &str,
) -> Interaction {
    client
        .create_interaction(with_tenant(
            tenant,
            CreateInteractionRequest {
                parent: parent.into(),
                interaction: Some(call(reference, notes)),
                request_id: String::new(),
            },
        ))
        .await
        .unwrap()
        .into_inner()
}

fn purchase(order: &str, amount: Money) -> Purchase {
    Purchase {
        external_order_id: order.into(),
        amount: Some(amount),
        channel: Channel::Web.into(),
        line_items: vec![LineItem {
            sku: "SKU-1".into(),
            description: "gift for my sister".into(),
            quantity: 1,
            unit_price: None,
        }],
        ..Default::default()
    }
}

async fn create_purchase(
    client: &mut Client,
    tenant: &str,
    parent: &str,
    purchase: Purchase,
) -> Result<Purchase, tonic::Status> {
    client
        .create_purchase(with_tenant(
            tenant,
            CreatePurchaseRequest {
                parent: parent.into(),
                purchase: Some(purchase),
                request_id: String::new(),
            },
        ))
        .await
        .map(tonic::Response::into_inner)
}

async fn refund(
    client: &mut Client,
    tenant: &str,
    purchase: &str,
    amount: Money,
) -> Result<Refund, tonic::Status> {
    client
        .create_refund(with_tenant(
            tenant,
            CreateRefundRequest {
                parent: purchase.into(),
                refund: Some(Refund {
                    amount: Some(amount),
                    reason: "damaged".into(),
                    ..Default::default()
                }),
                request_id: String::new(),
            },
        ))
        .await
        .map(tonic::Response::into_inner)
}

async fn purchases_of(client: &mut Client, tenant: &str, parent: &str) -> Vec<Purchase> {
    client
        .list_purchases(with_tenant(
            tenant,
            ListPurchasesRequest {
                parent: parent.into(),
                page_size: 1000,
                page_token: String::new(),
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .purchases
}

async fn timeline(client: &mut Client, tenant: &str, parent: &str, page_size: i32) -> Vec<TimelineEntry> {
    let mut entries = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = client
            .list_customer_timeline(with_tenant(
                tenant,
                ListCustomerTimelineRequest {
                    parent: parent.into(),
                    page_size,
                    page_token: page_token.clone(),
                },
            ))
            .await
            .unwrap()
            .into_inner();
        entries.extend(page.entries);
        if page.next_page_token.is_empty() {
            return entries;
        }
        page_token = page.next_page_token;
    }
}

/// Polls `check` until it holds: customer events are applied asynchronously.
async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting until {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

const WRITERS: usize = 8;
const EVENTS_PER_WRITER: usize = 1250;
const BATCH: usize = 25;

fn writer_reference(writer: usize, seq: usize) -> String {
    format!("w{writer}-{seq:05}")
}

/// Opens a subscription from `cursor` and reads until `until` events are seen in all (or the
/// stream is dropped there: the "kill").
async fn read_events(
    client: &Client,
    tenant: &str,
    cursor: &str,
    until: usize,
    seen: &mut Vec<InteractionEvent>,
) {
    let mut stream = client
        .clone()
        .subscribe_interaction_events(with_tenant(
            tenant,
            SubscribeInteractionEventsRequest {
                cursor: cursor.into(),
                types: vec![interaction_event::Type::InteractionRecorded.into()],
            },
        ))
        .await
        .unwrap()
        .into_inner();
    while seen.len() < until {
        let event = tokio::time::timeout(Duration::from_secs(60), stream.next())
            .await
            .expect("the next event arrives")
            .expect("the stream stays open")
            .unwrap();
        seen.push(event);
    }
}

/// 10,000 events from 8 concurrent writers plus one from a transaction held open while they
/// write: a subscriber killed and resumed twice sees each exactly once, in commit order.
async fn events_arrive_once_in_commit_order_across_resumes(
    suite: &Suite,
    client: &Client,
    profiles: &mut Profiles,
) {
    let tenant = unique_tenant("events");
    let parent = customer(profiles, &tenant, "Event Writer").await;
    // One write first registers the tenant (and checks the customer) before the race.
    let mut first = client.clone();
    let warmup = record_call(&mut first, &tenant, &parent, "warmup", "").await;

    // A transaction that appends its event, then waits while the writers commit theirs.
    let store = suite.store("interaction").await;
    let delayed_tenant = tenant.clone();
    let delayed_customer = parent.clone();
    let delayed = tokio::spawn(async move {
        use sea_orm::TransactionTrait;
        let txn = store.begin().await.unwrap();
        let payload = InteractionEvent {
            r#type: interaction_event::Type::InteractionRecorded.into(),
            customer: delayed_customer,
            record: Some(interaction_event::Record::Interaction(call("delayed", ""))),
            ..Default::default()
        };
        crm_db::outbox::append(
            &txn,
            &crm_db::outbox::NewEvent {
                tenant_id: delayed_tenant,
                event_type: "TYPE_INTERACTION_RECORDED".into(),
                subject: "delayed".into(),
                payload: payload.encode_to_vec(),
            },
        )
        .await
        .unwrap();
        tokio::time::sleep(Duration::from_millis(1500)).await;
        txn.commit().await.unwrap();
    });

    let writers: Vec<_> = (0..WRITERS)
        .map(|writer| {
            let mut client = client.clone();
            let tenant = tenant.clone();
            let parent = parent.clone();
            tokio::spawn(async move {
                for batch in 0..EVENTS_PER_WRITER / BATCH {
                    let rows: Vec<InteractionRow> = (0..BATCH)
                        .map(|index| InteractionRow {
                            parent: parent.clone(),
                            interaction: Some(call(&writer_reference(writer, batch * BATCH + index), "")),
                        })
                        .collect();
                    let response = client
                        .ingest_interactions(with_tenant(
                            &tenant,
                            futures::stream::iter([IngestInteractionsRequest { rows }]),
                        ))
                        .await
                        .unwrap()
                        .into_inner();
                    assert_eq!(response.created_count, BATCH as i64);
                }
            })
        })
        .collect();

    let total = WRITERS * EVENTS_PER_WRITER + 2; // + the warm-up and the delayed one
    let mut seen = Vec::new();
    read_events(client, &tenant, "", total / 3, &mut seen).await;
    let cursor = seen.last().unwrap().cursor.clone();
    read_events(client, &tenant, &cursor, 2 * total / 3, &mut seen).await;
    let cursor = seen.last().unwrap().cursor.clone();
    for writer in writers {
        writer.await.unwrap();
    }
    delayed.await.unwrap();
    read_events(client, &tenant, &cursor, total, &mut seen).await;

    let positions: Vec<i64> = seen.iter().map(|event| event.cursor.parse().unwrap()).collect();
    assert!(
        positions.windows(2).all(|pair| pair[0] < pair[1]),
        "cursors strictly increase"
    );
    let references: Vec<String> = seen
        .iter()
        .map(|event| match &event.record {
            Some(interaction_event::Record::Interaction(interaction)) => {
                interaction.external_reference.clone()
            }
            other => panic!("unexpected record {other:?}"),
        })
        .collect();
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for reference in &references {
        *counts.entry(reference.as_str()).or_default() += 1;
    }
    assert_eq!(counts.len(), total, "every event seen, none twice");
    assert!(counts.values().all(|count| *count == 1));
    assert_eq!(counts.get("delayed"), Some(&1), "the late commit is not skipped");
    assert_eq!(
        references.first().map(String::as_str),
        Some(warmup.external_reference.as_str())
    );
    // Each writer's events in the order it committed them.
    for writer in 0..WRITERS {
        let own: Vec<&String> = references
            .iter()
            .filter(|reference| reference.starts_with(&format!("w{writer}-")))
            .collect();
        let expected: Vec<String> = (0..EVENTS_PER_WRITER)
            .map(|seq| writer_reference(writer, seq))
            .collect();
        assert_eq!(own.len(), EVENTS_PER_WRITER);
        assert!(
            own.iter().zip(&expected).all(|(got, want)| *got == want),
            "writer {writer} in order"
        );
    }
    // The service's events carry no free text (the injected one is the test's own).
    assert!(seen.iter().all(|event| match &event.record {
        Some(interaction_event::Record::Interaction(interaction)) => {
            interaction.external_reference == "delayed"
                || (interaction.notes.is_empty() && interaction.subject.is_empty())
        }
        _ => false,
    }));
}

/// The same call id or order id again changes nothing, by unary call or by ingest.
async fn resending_changes_nothing(client: &mut Client, profiles: &mut Profiles) {
    let tenant = unique_tenant("resend");
    let parent = customer(profiles, &tenant, "Resender").await;
    let first = record_call(client, &tenant, &parent, "call-123", "first notes").await;
    let again = record_call(client, &tenant, &parent, "call-123", "other notes").await;
    assert_eq!(again, first, "the stored touchpoint comes back unchanged");

    let order = create_purchase(client, &tenant, &parent, purchase("order-9", usd(25, 50)))
        .await
        .unwrap();
    let resent = create_purchase(client, &tenant, &parent, purchase("order-9", usd(99, 0)))
        .await
        .unwrap();
    assert_eq!(resent, order);
    assert_eq!(purchases_of(client, &tenant, &parent).await.len(), 1);

    // A retried request (same request_id) answers the first result and writes once; the same
    // id with another payload, or a malformed id, is refused on `request_id`.
    let with_request_id = |order: &str, units: i64, request_id: &str| {
        with_tenant(
            &tenant,
            CreatePurchaseRequest {
                parent: parent.clone(),
                purchase: Some(Purchase {
                    external_order_id: String::new(),
                    ..purchase(order, usd(units, 0))
                }),
                request_id: request_id.into(),
            },
        )
    };
    let first_try = client
        .create_purchase(with_request_id("", 3, "buy-1"))
        .await
        .unwrap()
        .into_inner();
    let retry = client
        .create_purchase(with_request_id("", 3, "buy-1"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(retry, first_try);
    assert_eq!(purchases_of(client, &tenant, &parent).await.len(), 2);
    for request in [
        with_request_id("", 4, "buy-1"),
        with_request_id("", 3, "has space"),
    ] {
        let status = client.create_purchase(request).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument);
        assert_eq!(violated_field(&status).as_deref(), Some("request_id"));
    }
    assert_eq!(purchases_of(client, &tenant, &parent).await.len(), 2);

    let rows = |orders: std::ops::Range<usize>| {
        orders
            .map(|index| PurchaseRow {
                parent: parent.clone(),
                purchase: Some(purchase(&format!("bulk-{index}"), usd(10, 0))),
            })
            .collect::<Vec<_>>()
    };
    let ingest = |client: &mut Client, batches: Vec<Vec<PurchaseRow>>| {
        let mut client = client.clone();
        let tenant = tenant.clone();
        async move {
            client
                .ingest_purchases(with_tenant(
                    &tenant,
                    futures::stream::iter(batches.into_iter().map(|rows| IngestPurchasesRequest { rows })),
                ))
                .await
                .unwrap()
                .into_inner()
        }
    };
    let first = ingest(client, vec![rows(0..300), rows(300..500)]).await;
    assert_eq!(
        (first.created_count, first.existing_count, first.failed_count),
        (500, 0, 0)
    );
    // A duplicate inside one batch, and a resent stream.
    let mut duplicated = rows(500..502);
    duplicated.push(duplicated[0].clone());
    let second = ingest(client, vec![rows(0..300), rows(300..500), duplicated]).await;
    assert_eq!(
        (second.created_count, second.existing_count, second.failed_count),
        (2, 501, 0)
    );
    assert_eq!(second.results[0].name, first.results[0].name);
    assert_eq!(second.results[502].name, second.results[500].name);
    assert_eq!(purchases_of(client, &tenant, &parent).await.len(), 504);

    // One event per purchase written, none for the re-sends.
    let mut stream = client
        .subscribe_interaction_events(with_tenant(
            &tenant,
            SubscribeInteractionEventsRequest {
                cursor: String::new(),
                types: vec![interaction_event::Type::PurchaseRecorded.into()],
            },
        ))
        .await
        .unwrap()
        .into_inner();
    let mut purchase_events = 0;
    while let Ok(Some(event)) = tokio::time::timeout(Duration::from_secs(2), stream.next()).await {
        event.unwrap();
        purchase_events += 1;
    }
    assert_eq!(purchase_events, 504);
}

/// Bad amounts, currencies, times, over-refunds and unknown customers fail naming the field,
/// and nothing of them is written; concurrent refunds never exceed the purchase.
async fn bad_input_names_the_field_and_writes_nothing(client: &mut Client, profiles: &mut Profiles) {
    let tenant = unique_tenant("bad");
    let parent = customer(profiles, &tenant, "Careful Buyer").await;
    let order = create_purchase(client, &tenant, &parent, purchase("order-1", usd(100, 0)))
        .await
        .unwrap();

    let bad_purchases = [
        (purchase("neg", usd(-5, 0)), "purchase.amount"),
        (
            purchase(
                "overflow",
                Money {
                    currency_code: "USD".into(),
                    units: i64::MAX / 10,
                    nanos: 0,
                },
            ),
            "purchase.amount",
        ),
        (
            purchase(
                "currency",
                Money {
                    currency_code: "ABC".into(),
                    units: 1,
                    nanos: 0,
                },
            ),
            "purchase.amount.currency_code",
        ),
        (
            Purchase {
                occur_time: Some(at(3 * 24 * 3600)),
                ..purchase("future", usd(1, 0))
            },
            "purchase.occur_time",
        ),
        (
            Purchase {
                amount: None,
                ..purchase("none", usd(1, 0))
            },
            "purchase.amount",
        ),
    ];
    for (bad, field) in bad_purchases {
        let status = create_purchase(client, &tenant, &parent, bad).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{field}: {status:?}");
        assert_eq!(violated_field(&status).as_deref(), Some(field));
    }
    let unknown = format!("customers/{}", uuid::Uuid::now_v7());
    let status = create_purchase(client, &tenant, &unknown, purchase("ghost", usd(1, 0)))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    let status = create_purchase(client, &tenant, "customers/nope", purchase("x", usd(1, 0)))
        .await
        .unwrap_err();
    assert_eq!(violated_field(&status).as_deref(), Some("parent"));
    // Another tenant's customer looks exactly like a missing one.
    let other = customer(profiles, &unique_tenant("other"), "Other Tenant").await;
    let status = create_purchase(client, &tenant, &other, purchase("other", usd(1, 0)))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);

    refund(client, &tenant, &order.name, usd(60, 0)).await.unwrap();
    let status = refund(client, &tenant, &order.name, usd(40, 1))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(violated_field(&status).as_deref(), Some("refund.amount"));
    let status = refund(
        client,
        &tenant,
        &order.name,
        Money {
            currency_code: "EUR".into(),
            units: 1,
            nanos: 0,
        },
    )
    .await
    .unwrap_err();
    assert_eq!(
        violated_field(&status).as_deref(),
        Some("refund.amount.currency_code")
    );
    let status = refund(client, &tenant, &order.name, usd(0, 0)).await.unwrap_err();
    assert_eq!(violated_field(&status).as_deref(), Some("refund.amount"));

    // Ten concurrent refunds of 15 against the 40 left: exactly two get through.
    let attempts: Vec<_> = (0..10)
        .map(|_| {
            let mut client = client.clone();
            let tenant = tenant.clone();
            let name = order.name.clone();
            tokio::spawn(async move { refund(&mut client, &tenant, &name, usd(15, 0)).await })
        })
        .collect();
    let mut accepted = 0;
    for attempt in attempts {
        match attempt.await.unwrap() {
            Ok(_) => accepted += 1,
            Err(status) => assert_eq!(violated_field(&status).as_deref(), Some("refund.amount")),
        }
    }
    assert_eq!(accepted, 2);

    let stored = client
        .get_purchase(with_tenant(
            &tenant,
            GetPurchaseRequest {
                name: order.name.clone(),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(stored.refunded_amount, Some(usd(90, 0)));
    let refunds = client
        .list_refunds(with_tenant(
            &tenant,
            ListRefundsRequest {
                parent: order.name.clone(),
                page_size: 0,
                page_token: String::new(),
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .refunds;
    assert_eq!(refunds.len(), 3);
    assert_eq!(
        purchases_of(client, &tenant, &parent).await.len(),
        1,
        "no refused purchase was written"
    );
    assert_eq!(
        timeline(client, &tenant, &parent, 2).await.len(),
        4,
        "one purchase and three refunds"
    );
}

async fn schedule(
    client: &mut Client,
    tenant: &str,
    parent: &str,
    assignee: &str,
    due_offset: i64,
) -> Callback {
    client
        .create_callback(with_tenant(
            tenant,
            CreateCallbackRequest {
                parent: parent.into(),
                callback: Some(Callback {
                    due_time: Some(at(due_offset)),
                    assignee: assignee.into(),
                    reason: format!("follow up ({due_offset})"),
                    ..Default::default()
                }),
                request_id: String::new(),
            },
        ))
        .await
        .unwrap()
        .into_inner()
}

/// An agent's queue: overdue first, completed and cancelled ones gone, others' not shown.
async fn due_callbacks_come_overdue_first(client: &mut Client, profiles: &mut Profiles) {
    let tenant = unique_tenant("callbacks");
    let parent = customer(profiles, &tenant, "Waiting Customer").await;
    let later = schedule(client, &tenant, &parent, "amy", 3600).await;
    let oldest = schedule(client, &tenant, &parent, "amy", -7200).await;
    let done = schedule(client, &tenant, &parent, "amy", -3600).await;
    let cancelled = schedule(client, &tenant, &parent, "amy", -1800).await;
    let _far = schedule(client, &tenant, &parent, "amy", 5 * 3600).await;
    let _other_agent = schedule(client, &tenant, &parent, "bob", -600).await;
    let touch = record_call(client, &tenant, &parent, "cb-call", "called back").await;

    let completed = client
        .complete_callback(with_tenant(
            &tenant,
            CompleteCallbackRequest {
                name: done.name.clone(),
                outcome: "resolved".into(),
                interaction: touch.name.clone(),
                etag: done.etag.clone(),
                request_id: "complete-1".into(),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(completed.state(), callback::State::Done);
    assert_eq!(completed.interaction, touch.name);
    // A retry of the same request answers the same; a new attempt is refused.
    let retried = client
        .complete_callback(with_tenant(
            &tenant,
            CompleteCallbackRequest {
                name: done.name.clone(),
                outcome: "resolved".into(),
                interaction: touch.name.clone(),
                etag: done.etag.clone(),
                request_id: "complete-1".into(),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(retried, completed);
    let status = client
        .complete_callback(with_tenant(
            &tenant,
            CompleteCallbackRequest {
                name: done.name.clone(),
                outcome: "again".into(),
                ..Default::default()
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition);
    let status = client
        .cancel_callback(with_tenant(
            &tenant,
            CancelCallbackRequest {
                name: cancelled.name.clone(),
                etag: "\"99\"".into(),
                request_id: String::new(),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Aborted);
    client
        .cancel_callback(with_tenant(
            &tenant,
            CancelCallbackRequest {
                name: cancelled.name.clone(),
                etag: cancelled.etag.clone(),
                request_id: String::new(),
            },
        ))
        .await
        .unwrap();

    let mut queue = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = client
            .list_due_callbacks(with_tenant(
                &tenant,
                ListDueCallbacksRequest {
                    assignee: "amy".into(),
                    due_before: Some(at(2 * 3600)),
                    page_size: 1,
                    page_token: page_token.clone(),
                },
            ))
            .await
            .unwrap()
            .into_inner();
        queue.extend(page.callbacks);
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    let names: Vec<&str> = queue.iter().map(|callback| callback.name.as_str()).collect();
    assert_eq!(names, vec![oldest.name.as_str(), later.name.as_str()]);
    assert!(queue[0].overdue && !queue[1].overdue);

    let status = client
        .list_due_callbacks(with_tenant(&tenant, ListDueCallbacksRequest::default()))
        .await
        .unwrap_err();
    assert_eq!(violated_field(&status).as_deref(), Some("assignee"));
}

/// The timeline pages through every kind newest first; stats count touchpoints; a merge moves
/// records to the survivor, an unmerge back, and an erasure removes their free text.
async fn timeline_stats_and_customer_changes(client: &mut Client, profiles: &mut Profiles) {
    let tenant = unique_tenant("timeline");
    let alice = customer(profiles, &tenant, "Alice").await;
    let alias = customer(profiles, &tenant, "Alice (duplicate)").await;

    for (index, channel) in [Channel::CallCenter, Channel::Email, Channel::CallCenter]
        .into_iter()
        .enumerate()
    {
        client
            .create_interaction(with_tenant(
                &tenant,
                CreateInteractionRequest {
                    parent: alice.clone(),
                    interaction: Some(Interaction {
                        channel: channel.into(),
                        occur_time: Some(at(-10_000 + index as i64 * 100)),
                        ..call(&format!("a-{index}"), "private notes")
                    }),
                    request_id: String::new(),
                },
            ))
            .await
            .unwrap();
    }
    let bought = create_purchase(
        client,
        &tenant,
        &alice,
        Purchase {
            occur_time: Some(at(-5000)),
            ..purchase("alice-1", usd(20, 0))
        },
    )
    .await
    .unwrap();
    let feedback = client
        .create_feedback(with_tenant(
            &tenant,
            CreateFeedbackRequest {
                parent: alice.clone(),
                feedback: Some(Feedback {
                    occur_time: Some(at(-100)),
                    csat: Some(4),
                    nps: Some(9),
                    kind: FeedbackKind::Suggestion.into(),
                    comment: "my address is 1 Main St".into(),
                    delivered_value: Some(DeliveredValueSurvey {
                        product_value: 8,
                        monetary_cost: 3,
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                request_id: String::new(),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    let entries = timeline(client, &tenant, &alice, 2).await;
    assert_eq!(entries.len(), 5);
    let times: Vec<i64> = entries
        .iter()
        .map(|entry| entry.occur_time.unwrap().seconds)
        .collect();
    assert!(
        times.windows(2).all(|pair| pair[0] >= pair[1]),
        "newest first: {times:?}"
    );
    assert!(matches!(
        entries[0].record,
        Some(timeline_entry::Record::Feedback(_))
    ));
    assert!(matches!(
        entries[1].record,
        Some(timeline_entry::Record::Purchase(_))
    ));

    let stats = client
        .get_touchpoint_stats(with_tenant(
            &tenant,
            GetTouchpointStatsRequest {
                name: format!("{alice}/touchpointStats"),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(stats.total_count, 3);
    assert_eq!(stats.by_channel[0].channel(), Channel::CallCenter);
    assert_eq!(stats.by_channel[0].count, 2);
    assert_eq!(stats.last_contact_time.unwrap().seconds, times[4] + 200);

    // The duplicate's own records, then the merge.
    let alias_order = create_purchase(client, &tenant, &alias, purchase("alias-1", usd(5, 0)))
        .await
        .unwrap();
    let alias_callback = schedule(client, &tenant, &alias, "amy", 600).await;
    profiles
        .merge_customers(with_tenant(
            &tenant,
            profile::MergeCustomersRequest {
                survivor: alice.clone(),
                merged: vec![alias.clone()],
                ..Default::default()
            },
        ))
        .await
        .unwrap();
    eventually("the merge moves the duplicate's purchase to the survivor", || {
        let mut client = client.clone();
        let (tenant, alice) = (tenant.clone(), alice.clone());
        async move { purchases_of(&mut client, &tenant, &alice).await.len() == 2 }
    })
    .await;
    let moved = client
        .get_purchase(with_tenant(
            &tenant,
            GetPurchaseRequest {
                name: alias_order.name.clone(),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(
        moved.name.starts_with(&alice),
        "the old name resolves, named under the survivor"
    );
    let moved_callback = client
        .get_callback(with_tenant(
            &tenant,
            GetCallbackRequest {
                name: alias_callback.name.clone(),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(moved_callback.name.starts_with(&alice));
    // New records for the merged-away name land with the survivor.
    let late = create_purchase(client, &tenant, &alias, purchase("alias-2", usd(7, 0)))
        .await
        .unwrap();
    assert!(late.name.starts_with(&alice));

    profiles
        .unmerge_customer(with_tenant(
            &tenant,
            profile::UnmergeCustomerRequest {
                name: alias.clone(),
                ..Default::default()
            },
        ))
        .await
        .unwrap();
    eventually("the unmerge gives the duplicate its purchases back", || {
        let mut client = client.clone();
        let (tenant, alias) = (tenant.clone(), alias.clone());
        async move { purchases_of(&mut client, &tenant, &alias).await.len() == 2 }
    })
    .await;
    assert_eq!(purchases_of(client, &tenant, &alice).await.len(), 1);

    // Erasure removes free text and keeps the amounts.
    profiles
        .erase_customer(with_tenant(
            &tenant,
            profile::EraseCustomerRequest {
                name: alice.clone(),
                ..Default::default()
            },
        ))
        .await
        .unwrap();
    eventually("the erasure scrubs the feedback comment", || {
        let mut client = client.clone();
        let (tenant, name) = (tenant.clone(), feedback.name.clone());
        async move {
            let feedback = client
                .get_feedback(with_tenant(&tenant, GetFeedbackRequest { name }))
                .await
                .unwrap()
                .into_inner();
            feedback.comment.is_empty()
        }
    })
    .await;
    for entry in timeline(client, &tenant, &alice, 100).await {
        match entry.record.unwrap() {
            timeline_entry::Record::Interaction(interaction) => {
                assert!(interaction.notes.is_empty() && interaction.subject.is_empty());
                assert!(
                    interaction.channel() == Channel::Email || interaction.channel() == Channel::CallCenter
                );
            }
            timeline_entry::Record::Purchase(purchase) => {
                assert_eq!(purchase.amount, bought.amount);
                assert!(purchase.line_items.iter().all(|item| item.description.is_empty()));
            }
            timeline_entry::Record::Feedback(feedback) => {
                assert_eq!(feedback.csat, Some(4));
                assert!(feedback.comment.is_empty());
            }
            timeline_entry::Record::Refund(refund) => assert!(refund.reason.is_empty()),
        }
    }
}

async fn run(backend: Backend) {
    let suite = Suite::start(crm(), Topology::OneProcess, backend).await;
    let mut client = suite.interaction_client().await;
    let mut profiles = suite.profile_client().await;
    events_arrive_once_in_commit_order_across_resumes(&suite, &client, &mut profiles).await;
    resending_changes_nothing(&mut client, &mut profiles).await;
    bad_input_names_the_field_and_writes_nothing(&mut client, &mut profiles).await;
    due_callbacks_come_overdue_first(&mut client, &mut profiles).await;
    timeline_stats_and_customer_changes(&mut client, &mut profiles).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interaction_embedded() {
    run(Backend::Embedded).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interaction_postgres_redis() {
    if let Some(backend) = Backend::production() {
        run(backend).await;
    }
}

/// Split topology: interaction in its own process reaches customer-profile over the network,
/// for customer checks and for its events; clients go through the gateway.
async fn run_split(backend: Backend) {
    let suite = Suite::start(crm(), Topology::Split, backend).await;
    let mut client = suite.interaction_client().await;
    let mut profiles = suite.profile_client().await;
    bad_input_names_the_field_and_writes_nothing(&mut client, &mut profiles).await;
    timeline_stats_and_customer_changes(&mut client, &mut profiles).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interaction_split_embedded() {
    run_split(Backend::Embedded).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interaction_split_postgres_redis() {
    if let Some(backend) = Backend::production() {
        run_split(backend).await;
    }
}
