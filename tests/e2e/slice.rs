//! The vertical slice: CreateCustomer (request_id idempotency) and GetCustomer (cache
//! read-through), with tenancy and validation, in every topology on every backend.

use crm_tests::profile::{CreateCustomerRequest, CustomerKind, GetCustomerRequest};
use crm_tests::{
    Backend, SERVICES, Suite, Topology, new_customer, unique_tenant, violated_field, with_tenant,
};
use tonic::Code;

use crate::crm;

async fn run(topology: Topology, backend: Backend) {
    let suite = Suite::start(crm(), topology, backend).await;

    // Reflection at the entry point lists every CRM service, whatever runs where.
    let listed = crm_tests::reflected_services(suite.entry().addr).await;
    for (_, service) in SERVICES {
        assert!(
            listed.iter().any(|name| name == service),
            "{service} missing from reflection: {listed:?}"
        );
    }

    let mut client = suite.profile_client().await;
    let tenant = unique_tenant("slice");
    let create = |request_id: &str, name: &str| CreateCustomerRequest {
        customer: Some(new_customer(CustomerKind::Consumer, name)),
        request_id: request_id.to_owned(),
    };

    // Create, then read back.
    let created = client
        .create_customer(with_tenant(&tenant, create("req-1", "  Ada Lovelace ")))
        .await
        .unwrap()
        .into_inner();
    assert!(created.name.starts_with("customers/"), "{}", created.name);
    assert_eq!(created.display_name, "Ada Lovelace");
    assert_eq!(created.kind, i32::from(CustomerKind::Consumer));
    assert!(created.create_time.is_some() && !created.etag.is_empty());
    let fetched = client
        .get_customer(with_tenant(
            &tenant,
            GetCustomerRequest {
                name: created.name.clone(),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(fetched, created);
    // The second read is served from the cache and must be identical.
    let fetched_again = client
        .get_customer(with_tenant(
            &tenant,
            GetCustomerRequest {
                name: created.name.clone(),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(fetched_again, created);

    // The same request_id again returns the first result and creates nothing.
    let retried = client
        .create_customer(with_tenant(&tenant, create("req-1", "  Ada Lovelace ")))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(retried, created);
    assert_eq!(suite.count_customers(&tenant).await, 1);

    // Concurrent duplicates of one request create one customer.
    let attempts = (0..8).map(|_| {
        let mut client = client.clone();
        let request = with_tenant(&tenant, create("req-2", "Grace Hopper"));
        async move {
            client
                .create_customer(request)
                .await
                .map(|response| response.into_inner().name)
        }
    });
    let names: Vec<String> = futures::future::join_all(attempts)
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    assert!(names.windows(2).all(|pair| pair[0] == pair[1]), "{names:?}");
    assert_eq!(suite.count_customers(&tenant).await, 2);

    // The same request_id with another payload is refused, naming the field.
    let reused = client
        .create_customer(with_tenant(&tenant, create("req-1", "Someone Else")))
        .await
        .unwrap_err();
    assert_eq!(reused.code(), Code::InvalidArgument);
    assert_eq!(violated_field(&reused).as_deref(), Some("request_id"));

    // Another tenant's customer looks exactly like a missing one.
    let other_tenant = unique_tenant("other");
    let foreign = client
        .get_customer(with_tenant(
            &other_tenant,
            GetCustomerRequest {
                name: created.name.clone(),
            },
        ))
        .await
        .unwrap_err();
    let missing = client
        .get_customer(with_tenant(
            &other_tenant,
            GetCustomerRequest {
                name: format!("customers/{}", uuid::Uuid::now_v7()),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(foreign.code(), Code::NotFound);
    assert_eq!(missing.code(), Code::NotFound);

    // No tenant, no service.
    let anonymous = client
        .get_customer(GetCustomerRequest {
            name: created.name.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(anonymous.code(), Code::Unauthenticated);

    // Bad input names the field and writes nothing.
    let cases = [
        (
            CreateCustomerRequest {
                customer: None,
                request_id: String::new(),
            },
            "customer",
        ),
        (
            CreateCustomerRequest {
                customer: Some(new_customer(CustomerKind::Unspecified, "Nobody")),
                request_id: String::new(),
            },
            "customer.kind",
        ),
        (
            CreateCustomerRequest {
                customer: Some(new_customer(CustomerKind::Business, "   ")),
                request_id: String::new(),
            },
            "customer.display_name",
        ),
        (
            CreateCustomerRequest {
                customer: Some(new_customer(CustomerKind::Business, "Acme")),
                request_id: "has spaces".into(),
            },
            "request_id",
        ),
    ];
    for (request, field) in cases {
        let status = client
            .create_customer(with_tenant(&tenant, request))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{field}: {status:?}");
        assert_eq!(violated_field(&status).as_deref(), Some(field));
    }
    let bad_name = client
        .get_customer(with_tenant(
            &tenant,
            GetCustomerRequest {
                name: "people/1".into(),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(violated_field(&bad_name).as_deref(), Some("name"));
    assert_eq!(suite.count_customers(&tenant).await, 2);

    // On the production backend the read went through Redis.
    if let Backend::Production { redis_url, .. } = &suite.backend {
        let id = created.name.trim_start_matches("customers/");
        let key = format!("crm:customer:{{{tenant}/{id}}}");
        let client = redis::Client::open(redis_url.as_str()).unwrap();
        let mut connection = client.get_multiplexed_async_connection().await.unwrap();
        let ttl: i64 = redis::cmd("TTL")
            .arg(&key)
            .query_async(&mut connection)
            .await
            .unwrap();
        assert!(ttl > 0, "{key} should be cached with a TTL, got {ttl}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slice_one_process_embedded() {
    run(Topology::OneProcess, Backend::Embedded).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slice_split_embedded() {
    run(Topology::Split, Backend::Embedded).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slice_one_process_postgres_redis() {
    if let Some(backend) = Backend::production() {
        run(Topology::OneProcess, backend).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slice_split_postgres_redis() {
    if let Some(backend) = Backend::production() {
        run(Topology::Split, backend).await;
    }
}
