//! Micro-benchmarks of the customer-profile hot paths, each group with a baseline measured in
//! the same run so the figures read as ratios:
//!
//! - `phone`: `normalize_phone(raw, "CN", "phone")` (international and national input) against
//!   `str::to_lowercase` of the same input;
//! - `email`: `normalize_email` against `str::to_lowercase` of the same input;
//! - `snapshot`: `encode_snapshot` / `decode_snapshot` of a customer with a few phones, emails
//!   and attributes, against prost encoding an empty message and prost encoding / decoding the
//!   same customer's proto message (what the snapshot adds over plain prost).
//!
//! `cargo bench -p crm-bench -- --warm-up-time 1 --measurement-time 3`

use std::collections::BTreeMap;
use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use crm_customer_profile::convert::{customer_to_proto, decode_snapshot, encode_snapshot};
use crm_customer_profile::domain::{
    self, AttributeValue, Classification, Customer, CustomerDraft, CustomerKind, ExternalId, Labeled,
    PersonName, normalize_email, normalize_phone,
};
use crm_customer_profile::error::ProfileError;
use crm_proto::customerprofile_v1 as pb;
use prost::Message;

const PHONE_INTERNATIONAL: &str = "+86 138 0013 8000";
const PHONE_NATIONAL: &str = "13800138000";
const EMAIL: &str = "  Li.Lei@Example.CN ";

fn phone(c: &mut Criterion) {
    let mut group = c.benchmark_group("phone");
    group.bench_function("baseline_to_lowercase", |b| {
        b.iter(|| black_box(PHONE_INTERNATIONAL).to_lowercase())
    });
    group.bench_function("normalize_phone_international", |b| {
        b.iter(|| normalize_phone(black_box(PHONE_INTERNATIONAL), "CN", "phone"))
    });
    group.bench_function("normalize_phone_national", |b| {
        b.iter(|| normalize_phone(black_box(PHONE_NATIONAL), "CN", "phone"))
    });
    group.finish();
}

fn email(c: &mut Criterion) {
    let mut group = c.benchmark_group("email");
    group.bench_function("baseline_to_lowercase", |b| {
        b.iter(|| black_box(EMAIL).to_lowercase())
    });
    group.bench_function("normalize_email", |b| {
        b.iter(|| normalize_email(black_box(EMAIL), "email"))
    });
    group.finish();
}

/// A consumer with three phones, two emails, an external id and four attributes.
fn sample_customer() -> Result<Customer, ProfileError> {
    let phones = ["+86 138 0013 8000", "13900139000", "+86 10 6552 9988"]
        .iter()
        .zip(["mobile", "mobile", "work"])
        .map(|(raw, label)| {
            Ok(Labeled {
                value: normalize_phone(raw, "CN", "customer.phones")?,
                label: label.into(),
            })
        })
        .collect::<Result<Vec<_>, ProfileError>>()?;
    let emails = ["Li.Lei@Example.CN", "lilei@work.example.com"]
        .iter()
        .map(|raw| {
            Ok(Labeled {
                value: normalize_email(raw, "customer.emails")?,
                label: String::new(),
            })
        })
        .collect::<Result<Vec<_>, ProfileError>>()?;
    let attributes = BTreeMap::from([
        ("tier".to_owned(), AttributeValue::Text("gold".into())),
        ("visits".to_owned(), AttributeValue::Int(42)),
        ("score".to_owned(), AttributeValue::Float(0.87)),
        ("vip".to_owned(), AttributeValue::Bool(true)),
    ]);
    let draft = CustomerDraft {
        kind: Some(CustomerKind::Consumer),
        display_name: "Li Lei".into(),
        person_name: PersonName {
            given_name: "Lei".into(),
            family_name: "Li".into(),
        },
        classification: Classification {
            country_code: "CN".into(),
            ..Default::default()
        },
        phones,
        emails,
        external_ids: vec![ExternalId {
            system: "erp".into(),
            id: "C-000042".into(),
        }],
        attributes,
        tags: vec!["vip".into(), "newsletter".into()],
        acquisition_channel: "store".into(),
        ..Default::default()
    };
    Customer::create(draft, domain::now())
}

fn snapshot(c: &mut Criterion) {
    let customer = match sample_customer() {
        Ok(customer) => customer,
        Err(error) => {
            eprintln!("cannot build the sample customer: {error}");
            std::process::exit(1);
        }
    };
    let snapshot = encode_snapshot(&customer);
    let message = customer_to_proto(&customer, "");
    let message_bytes = message.encode_to_vec();
    let mut group = c.benchmark_group("snapshot");
    group.bench_function("baseline_prost_encode_empty", |b| {
        b.iter(|| black_box(&()).encode_to_vec())
    });
    group.bench_function("prost_encode_customer_proto", |b| {
        b.iter(|| black_box(&message).encode_to_vec())
    });
    group.bench_function("prost_decode_customer_proto", |b| {
        b.iter(|| pb::Customer::decode(black_box(message_bytes.as_slice())))
    });
    group.bench_function("encode_snapshot", |b| {
        b.iter(|| encode_snapshot(black_box(&customer)))
    });
    group.bench_function("decode_snapshot", |b| {
        b.iter(|| decode_snapshot(black_box(snapshot.as_slice())))
    });
    group.finish();
}

criterion_group!(benches, phone, email, snapshot);
criterion_main!(benches);
