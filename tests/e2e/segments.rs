//! Dynamic segments and value grades end to end: membership follows purchases (interaction's
//! feed) and profile changes (customer-profile's feed: tags, attributes, deletion), entries
//! and exits are streamed, CheckSegmentMembership explains, PreviewSegment counts without
//! saving, an expression with a syntax error is INVALID_ARGUMENT with its column. Run by
//! segmentation.rs in both topologies and on both backends.

use std::time::Duration;

use crm_tests::segmentation as seg;
use crm_tests::{new_customer, profile, unique_tenant, violated_field, with_tenant};
use futures::StreamExt;
use tonic::Code;

use crate::segmentation::{Interactions, Profiles, Segments, buy, eventually};

const WAIT: Duration = Duration::from_secs(30);

pub(crate) fn int_attribute(value: i64) -> profile::AttributeValue {
    profile::AttributeValue {
        value: Some(profile::attribute_value::Value::IntValue(value)),
    }
}

pub(crate) async fn create_customer(
    profiles: &mut Profiles,
    tenant: &str,
    customer: profile::Customer,
) -> String {
    profiles
        .create_customer(with_tenant(
            tenant,
            profile::CreateCustomerRequest {
                customer: Some(customer),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .name
}

pub(crate) async fn members(segments: &mut Segments, tenant: &str, segment: &str) -> Vec<String> {
    let mut all = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = segments
            .list_segment_members(with_tenant(
                tenant,
                seg::ListSegmentMembersRequest {
                    segment: segment.to_owned(),
                    page_size: 3,
                    page_token,
                },
            ))
            .await
            .unwrap()
            .into_inner();
        all.extend(page.members.into_iter().map(|member| member.customer));
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    all.sort();
    all
}

async fn wait_for_members(segments: &Segments, tenant: &str, segment: &str, want: &[&String]) {
    let mut want: Vec<String> = want.iter().map(|name| (*name).clone()).collect();
    want.sort();
    eventually(&format!("{segment} holds {want:?}"), WAIT, || {
        let mut segments = segments.clone();
        let want = want.clone();
        async move { members(&mut segments, tenant, segment).await == want }
    })
    .await;
}

async fn grade_of(segments: &mut Segments, tenant: &str, customer: &str) -> Option<String> {
    segments
        .get_customer_scores(with_tenant(
            tenant,
            seg::GetCustomerScoresRequest {
                name: format!("{customer}/scores"),
            },
        ))
        .await
        .ok()
        .map(|scores| scores.into_inner().value_grade)
}

/// The stream's next event, None when none comes within `limit`.
async fn next_within(
    stream: &mut tonic::Streaming<seg::SegmentEvent>,
    limit: Duration,
) -> Option<seg::SegmentEvent> {
    tokio::time::timeout(limit, stream.next())
        .await
        .ok()
        .flatten()
        .map(|event| event.unwrap())
}

fn expect_invalid(result: Result<impl std::fmt::Debug, tonic::Status>, field: &str, message_part: &str) {
    let status = result.expect_err("bad input must be rejected");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert_eq!(violated_field(&status).as_deref(), Some(field), "{status:?}");
    assert!(
        status.message().contains(message_part),
        "{:?} should mention {message_part:?}",
        status.message()
    );
}

pub async fn dynamic_segments_and_grades(
    interactions: &mut Interactions,
    profiles: &mut Profiles,
    segments: &mut Segments,
) {
    let tenant = unique_tenant("segdyn");
    let tenant = tenant.as_str();

    // Grades: ordered rules, first match wins; a broken rule names the rule and the column.
    let grading = |rules: Vec<seg::ValueGradeRule>| seg::UpdateScoringSettingsRequest {
        settings: Some(seg::ScoringSettings {
            name: "scoringSettings".into(),
            value_grade_rules: rules,
            ..Default::default()
        }),
        update_mask: Some(prost_types::FieldMask {
            paths: vec!["value_grade_rules".into()],
        }),
        request_id: String::new(),
    };
    let rule = |grade: &str, condition: &str| seg::ValueGradeRule {
        grade: grade.into(),
        condition: condition.into(),
    };
    expect_invalid(
        segments
            .update_scoring_settings(with_tenant(
                tenant,
                grading(vec![rule("A", "m >= 1"), rule("B", "lifetime.net_spend >= ")]),
            ))
            .await,
        "settings.value_grade_rules[1].condition",
        "column 23",
    );
    let settings = segments
        .update_scoring_settings(with_tenant(
            tenant,
            grading(vec![
                rule("A", "attributes.annual_revenue >= 10000000"),
                rule("B", "lifetime.net_spend >= 100"),
            ]),
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(settings.value_grade_rules.len(), 2);

    let alice = create_customer(profiles, tenant, {
        let mut customer = new_customer(profile::CustomerKind::Business, "Alice Ltd");
        customer.tags = vec!["vip".into()];
        customer
            .attributes
            .insert("annual_revenue".into(), int_attribute(12_000_000));
        customer
    })
    .await;
    let bob = create_customer(
        profiles,
        tenant,
        new_customer(profile::CustomerKind::Consumer, "Bob"),
    )
    .await;
    let carol = create_customer(profiles, tenant, {
        let mut customer = new_customer(profile::CustomerKind::Consumer, "Carol");
        customer.tags = vec!["vip".into()];
        customer
    })
    .await;

    // Alice's attributes have reached segmentation once she is graded A.
    eventually("Alice is graded from her attributes", WAIT, || {
        let mut segments = segments.clone();
        let alice = alice.clone();
        async move { grade_of(&mut segments, tenant, &alice).await.as_deref() == Some("A") }
    })
    .await;

    // Syntax errors and unknown fields: INVALID_ARGUMENT on the field, with the column.
    let draft = |expression: &str| seg::CreateSegmentRequest {
        segment: Some(seg::Segment {
            display_name: "VIP spenders".into(),
            expression: expression.into(),
            ..Default::default()
        }),
        request_id: String::new(),
    };
    expect_invalid(
        segments
            .create_segment(with_tenant(
                tenant,
                draft(r#"rfm.segment in ["champions" and m >= 500"#),
            ))
            .await,
        "segment.expression",
        "column 29",
    );
    expect_invalid(
        segments
            .create_segment(with_tenant(tenant, draft("monetary >= 500")))
            .await,
        "segment.expression",
        "column 1",
    );
    expect_invalid(
        segments
            .preview_segment(with_tenant(
                tenant,
                seg::PreviewSegmentRequest {
                    expression: "m >=".into(),
                    sample_size: 0,
                },
            ))
            .await,
        "expression",
        "column 5",
    );

    // The events of this tenant, from the start.
    let mut events = segments
        .subscribe_segment_events(with_tenant(tenant, seg::SubscribeSegmentEventsRequest::default()))
        .await
        .unwrap()
        .into_inner();

    let vip = segments
        .create_segment(with_tenant(
            tenant,
            seg::CreateSegmentRequest {
                request_id: "create-vip".into(),
                ..draft(r#""vip" in tags  AND lifetime.net_spend >= 500"#)
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(vip.expression, r#""vip" in tags and lifetime.net_spend >= 500"#);
    assert_eq!(vip.member_count, 0);
    // A retried create is the same segment.
    let retried = segments
        .create_segment(with_tenant(
            tenant,
            seg::CreateSegmentRequest {
                request_id: "create-vip".into(),
                ..draft(r#""vip" in tags  AND lifetime.net_spend >= 500"#)
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(retried.name, vip.name);
    // Alice is graded A already, so she is in at once.
    let grade_a = segments
        .create_segment(with_tenant(
            tenant,
            seg::CreateSegmentRequest {
                segment: Some(seg::Segment {
                    display_name: "Grade A".into(),
                    expression: r#"grade = "A""#.into(),
                    ..Default::default()
                }),
                request_id: String::new(),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(grade_a.member_count, 1);

    // Purchases move customers in as interaction's events arrive.
    buy(interactions, tenant, &alice, "a-1", 60_000).await;
    buy(interactions, tenant, &bob, "b-1", 70_000).await;
    buy(interactions, tenant, &carol, "c-1", 10_000).await;
    wait_for_members(segments, tenant, &vip.name, &[&alice]).await;
    // Grades follow the rules: an attribute for Alice, spend for the others.
    eventually("grades are given", WAIT, || {
        let mut segments = segments.clone();
        let (alice, bob, carol) = (alice.clone(), bob.clone(), carol.clone());
        async move {
            grade_of(&mut segments, tenant, &alice).await.as_deref() == Some("A")
                && grade_of(&mut segments, tenant, &bob).await.as_deref() == Some("B")
                && grade_of(&mut segments, tenant, &carol).await.as_deref() == Some("B")
        }
    })
    .await;
    wait_for_members(segments, tenant, &grade_a.name, &[&alice]).await;

    // A profile change (a tag) moves Bob in, through customer-profile's events.
    let mut bob_tagged = new_customer(profile::CustomerKind::Consumer, "Bob");
    bob_tagged.name = bob.clone();
    bob_tagged.tags = vec!["vip".into()];
    profiles
        .update_customer(with_tenant(
            tenant,
            profile::UpdateCustomerRequest {
                customer: Some(bob_tagged),
                update_mask: Some(prost_types::FieldMask {
                    paths: vec!["tags".into()],
                }),
                request_id: String::new(),
            },
        ))
        .await
        .unwrap();
    wait_for_members(segments, tenant, &vip.name, &[&alice, &bob]).await;
    let current = segments
        .get_segment(with_tenant(
            tenant,
            seg::GetSegmentRequest {
                name: vip.name.clone(),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(current.member_count, 2);

    // Why Carol is out: the tag holds, the spend does not.
    let check = segments
        .check_segment_membership(with_tenant(
            tenant,
            seg::CheckSegmentMembershipRequest {
                segment: vip.name.clone(),
                customer: carol.clone(),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(!check.member);
    let clauses: Vec<(String, bool, String)> = check
        .clauses
        .into_iter()
        .map(|clause| (clause.clause, clause.matched, clause.actual_value))
        .collect();
    assert_eq!(
        clauses,
        [
            (r#""vip" in tags"#.to_owned(), true, "present".to_owned()),
            ("lifetime.net_spend >= 500".to_owned(), false, "100".to_owned()),
        ]
    );
    let check = segments
        .check_segment_membership(with_tenant(
            tenant,
            seg::CheckSegmentMembershipRequest {
                segment: vip.name.clone(),
                customer: alice.clone(),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(check.member && check.enter_time.is_some());

    // Preview counts without saving.
    let preview = segments
        .preview_segment(with_tenant(
            tenant,
            seg::PreviewSegmentRequest {
                expression: "lifetime.net_spend >= 100".into(),
                sample_size: 2,
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((preview.member_count, preview.customers_evaluated), (3, 3));
    assert_eq!(preview.sample.len(), 2);

    // A new expression recomputes the members at once; a stale etag is refused.
    let raise = |etag: &str| seg::UpdateSegmentRequest {
        segment: Some(seg::Segment {
            name: vip.name.clone(),
            expression: r#""vip" in tags and lifetime.net_spend >= 650"#.into(),
            etag: etag.to_owned(),
            ..Default::default()
        }),
        update_mask: Some(prost_types::FieldMask {
            paths: vec!["expression".into()],
        }),
        request_id: String::new(),
    };
    let updated = segments
        .update_segment(with_tenant(tenant, raise(&current.etag)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(updated.member_count, 1);
    assert_eq!(
        members(segments, tenant, &vip.name).await,
        std::slice::from_ref(&bob)
    );
    let stale = segments
        .update_segment(with_tenant(tenant, raise(&current.etag)))
        .await
        .unwrap_err();
    assert_eq!(stale.code(), Code::Aborted, "{stale:?}");

    // A soft-deleted customer leaves every segment.
    profiles
        .delete_customer(with_tenant(
            tenant,
            profile::DeleteCustomerRequest {
                name: bob.clone(),
                ..Default::default()
            },
        ))
        .await
        .unwrap();
    wait_for_members(segments, tenant, &vip.name, &[]).await;
    // Out of every segment, also one that does not read what the delete changed.
    eventually("a deleted customer matches no expression", WAIT, || {
        let mut segments = segments.clone();
        async move {
            segments
                .preview_segment(with_tenant(
                    tenant,
                    seg::PreviewSegmentRequest {
                        expression: "lifetime.net_spend >= 100".into(),
                        sample_size: 0,
                    },
                ))
                .await
                .unwrap()
                .into_inner()
                .member_count
                == 2
        }
    })
    .await;

    // An erased customer leaves every segment too.
    profiles
        .erase_customer(with_tenant(
            tenant,
            profile::EraseCustomerRequest {
                name: alice.clone(),
                ..Default::default()
            },
        ))
        .await
        .unwrap();
    wait_for_members(segments, tenant, &grade_a.name, &[]).await;

    // Another tenant sees nothing.
    let foreign = segments
        .get_segment(with_tenant(
            &unique_tenant("segother"),
            seg::GetSegmentRequest {
                name: vip.name.clone(),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(foreign.code(), Code::NotFound);

    segments
        .delete_segment(with_tenant(
            tenant,
            seg::DeleteSegmentRequest {
                name: vip.name.clone(),
                etag: String::new(),
            },
        ))
        .await
        .unwrap();
    let gone = segments
        .get_segment(with_tenant(
            tenant,
            seg::GetSegmentRequest {
                name: vip.name.clone(),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(gone.code(), Code::NotFound);

    // The stream told it all, in order, once.
    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + WAIT;
    while seen.len() < 7 {
        let event = tokio::time::timeout_at(deadline, events.next())
            .await
            .expect("segment events arrive")
            .unwrap()
            .unwrap();
        seen.push((event.r#type(), event.segment, event.customer));
    }
    use seg::segment_event::Type;
    let vip_name = vip.name.clone();
    assert_eq!(
        seen,
        [
            (Type::Entered, grade_a.name.clone(), alice.clone()),
            (Type::Entered, vip_name.clone(), alice.clone()),
            (Type::Entered, vip_name.clone(), bob.clone()),
            (Type::Exited, vip_name.clone(), alice.clone()),
            (Type::Exited, vip_name.clone(), bob.clone()),
            (Type::Exited, grade_a.name.clone(), alice.clone()),
            (Type::Deleted, vip_name, String::new()),
        ]
    );

    // One segment's events only, and resuming after a cursor skips what came before it.
    let only_grade_a = |cursor: String| {
        let mut segments = segments.clone();
        let segment = grade_a.name.clone();
        async move {
            segments
                .subscribe_segment_events(with_tenant(
                    tenant,
                    seg::SubscribeSegmentEventsRequest { cursor, segment },
                ))
                .await
                .unwrap()
                .into_inner()
        }
    };
    let mut filtered = only_grade_a(String::new()).await;
    let entered = next_within(&mut filtered, Duration::from_secs(1)).await.unwrap();
    let exited = next_within(&mut filtered, Duration::from_secs(1)).await.unwrap();
    assert_eq!(
        [
            (entered.r#type(), &entered.customer),
            (exited.r#type(), &exited.customer)
        ],
        [(Type::Entered, &alice), (Type::Exited, &alice)]
    );
    assert!(
        next_within(&mut filtered, Duration::from_secs(1)).await.is_none(),
        "no other segment's events"
    );
    let mut resumed = only_grade_a(entered.cursor.clone()).await;
    let first = tokio::time::timeout(WAIT, resumed.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!((first.r#type(), first.cursor), (Type::Exited, exited.cursor));
}
