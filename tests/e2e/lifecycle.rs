//! The process as an operator sees it: configuration errors, health, graceful shutdown under
//! load, a missing Redis, a peer going down and coming back.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crm_tests::profile::{CreateCustomerRequest, CustomerKind, GetCustomerRequest};
use crm_tests::{Backend, Suite, Topology, crm_command, new_customer, unique_tenant, with_tenant};
use tonic::Code;

use crate::crm;

async fn config_check(env: &[(&str, &str)], args: &[&str]) -> (Option<i32>, String, String) {
    let output = crm_command(crm())
        .args(["config", "check"])
        .args(args)
        .envs(env.iter().copied())
        .output()
        .await
        .expect("run crm config check");
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[tokio::test]
async fn a_bad_config_names_the_key_and_exits_2() {
    let (code, stdout, _) = config_check(&[], &[]).await;
    assert_eq!(code, Some(0), "{stdout}");

    let (code, _, stderr) = config_check(&[("CRM_CACHE__TTL_SECS", "soon")], &[]).await;
    assert_eq!(code, Some(2));
    assert!(stderr.contains("cache.ttl_secs"), "{stderr}");

    let (code, _, stderr) = config_check(&[("DATABASE_URL", "mysql://db/crm")], &[]).await;
    assert_eq!(code, Some(2));
    assert!(stderr.contains("database_url"), "{stderr}");

    let (code, _, stderr) = config_check(&[], &["--services", "gateway"]).await;
    assert_eq!(code, Some(2));
    assert!(stderr.contains("peers.customer_profile"), "{stderr}");

    // Loyalty follows customer-profile and interaction and checks segments with segmentation.
    let (code, _, stderr) = config_check(&[], &["--services", "loyalty"]).await;
    assert_eq!(code, Some(2));
    assert!(stderr.contains("peers.customer_profile"), "{stderr}");

    let (code, _, stderr) = config_check(&[], &["--services", "billing"]).await;
    assert_eq!(code, Some(2));
    assert!(stderr.contains("billing"), "{stderr}");

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("crm.toml");
    std::fs::write(&file, "[log]\nfilter = \"info,[\"\n").unwrap();
    let (code, _, stderr) = config_check(&[], &["--config", file.to_str().unwrap()]).await;
    assert_eq!(code, Some(2));
    assert!(stderr.contains("log.filter"), "{stderr}");

    // `serve` refuses the same way, before binding anything.
    let output = crm_command(crm())
        .args(["serve", "--listen", "127.0.0.1:0"])
        .env("CRM_SHUTDOWN_GRACE_SECS", "-3")
        .output()
        .await
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(!String::from_utf8_lossy(&output.stdout).contains("listening"));
    assert!(String::from_utf8_lossy(&output.stderr).contains("shutdown_grace_secs"));
}

#[tokio::test]
async fn config_print_shows_the_effective_values_without_passwords() {
    let output = crm_command(crm())
        .args(["config", "print", "--services", "customer-profile"])
        .env("DATABASE_URL", "postgres://crm:hunter2@db:5432/crm")
        .env("CRM_CACHE__TTL_SECS", "42")
        .output()
        .await
        .unwrap();
    assert_eq!(output.status.code(), Some(0));
    let printed = String::from_utf8_lossy(&output.stdout);
    assert!(printed.contains("ttl_secs = 42"), "{printed}");
    assert!(printed.contains("services = [\"customer-profile\"]"), "{printed}");
    assert!(!printed.contains("hunter2"), "{printed}");
}

/// SIGTERM while clients keep writing: the process exits within its grace period, every
/// call it acknowledged is durable, every failure a client saw is a transport one, and
/// retrying the failed requests with their request ids applies each exactly once.
async fn sigterm_under_load(backend: Backend) {
    let mut suite = Suite::start_with(
        crm(),
        Topology::OneProcess,
        backend,
        &[("CRM_SHUTDOWN_GRACE_SECS", "5")],
    )
    .await;
    let tenant = unique_tenant("drain");
    let acknowledged = Arc::new(Mutex::new(Vec::<String>::new()));
    let failures = Arc::new(Mutex::new(Vec::<(Code, CreateCustomerRequest)>::new()));
    let stop_at = Instant::now() + Duration::from_secs(20);
    let mut writers = Vec::new();
    for writer in 0..4 {
        let mut client = suite.profile_client().await;
        let (tenant, acknowledged, failures) =
            (tenant.clone(), Arc::clone(&acknowledged), Arc::clone(&failures));
        writers.push(tokio::spawn(async move {
            let mut sequence = 0;
            while Instant::now() < stop_at {
                sequence += 1;
                let request = CreateCustomerRequest {
                    customer: Some(new_customer(
                        CustomerKind::Consumer,
                        &format!("Writer {writer} #{sequence}"),
                    )),
                    request_id: format!("w{writer}-{sequence}"),
                };
                match client
                    .create_customer(with_tenant(&tenant, request.clone()))
                    .await
                {
                    Ok(response) => acknowledged.lock().unwrap().push(response.into_inner().name),
                    Err(status) => {
                        eprintln!("shutdown failure seen by a client: {status:?}");
                        failures.lock().unwrap().push((status.code(), request));
                        // The server is going away; stop once it refuses.
                        return;
                    }
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let before_signal = acknowledged.lock().unwrap().len();
    assert!(before_signal > 0, "no write succeeded before the signal");

    let signalled = Instant::now();
    suite.processes[0].signal("TERM").await;
    let status = suite.processes[0]
        .wait_exit(Duration::from_secs(5 + 3))
        .await
        .expect("exited within the grace period");
    assert!(
        status.success(),
        "exit status {status:?}; log:\n{}",
        suite.processes[0].log()
    );
    let shutdown_took = signalled.elapsed();
    for writer in writers {
        writer.await.unwrap();
    }
    let failures = failures.lock().unwrap().clone();
    // UNAVAILABLE: connection refused or stream refused after GOAWAY. CANCELLED: hyper's
    // "connection closed" for a request still queued on the client when the server closed the
    // connection. Both are transport failures, retried below with the same request id.
    assert!(
        failures
            .iter()
            .all(|(code, _)| matches!(code, Code::Unavailable | Code::Cancelled)),
        "clients saw non-transport errors during shutdown: {failures:?}"
    );
    assert!(
        suite.processes[0].log().contains("drained"),
        "{}",
        suite.processes[0].log()
    );

    // Restart on the same data: every acknowledged customer is there.
    suite.restart(0, &[]).await;
    suite.wait_serving().await;
    let mut client = suite.profile_client().await;
    let acknowledged = acknowledged.lock().unwrap().clone();
    let unique: HashSet<&String> = acknowledged.iter().collect();
    assert_eq!(
        unique.len(),
        acknowledged.len(),
        "a create was acknowledged twice"
    );
    for name in &acknowledged {
        client
            .get_customer(with_tenant(&tenant, GetCustomerRequest { name: name.clone() }))
            .await
            .unwrap();
    }
    // Retrying what failed applies each request once, whether or not it had reached the store.
    for (_, request) in &failures {
        client
            .create_customer(with_tenant(&tenant, request.clone()))
            .await
            .unwrap();
        client
            .create_customer(with_tenant(&tenant, request.clone()))
            .await
            .unwrap();
    }
    let stored = suite.count_customers(&tenant).await;
    assert_eq!(
        stored,
        (acknowledged.len() + failures.len()) as i64,
        "acknowledged + retried != stored"
    );
    eprintln!(
        "drain: {} writes acknowledged ({} before SIGTERM), {} refused, shutdown took {shutdown_took:?}",
        acknowledged.len(),
        before_signal,
        failures.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_load_embedded() {
    sigterm_under_load(Backend::Embedded).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_load_postgres_redis() {
    if let Some(backend) = Backend::production() {
        sigterm_under_load(backend).await;
    }
}

/// Redis that never answers costs speed, not availability: the services start, report
/// SERVING and answer from PostgreSQL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_start_and_serve_without_redis() {
    let Some(Backend::Production { database_url, .. }) = Backend::production() else {
        return;
    };
    // Nothing listens on port 1 of the loopback.
    let backend = Backend::Production {
        database_url,
        redis_url: "redis://127.0.0.1:1".into(),
    };
    let suite = Suite::start(crm(), Topology::OneProcess, backend).await;
    let mut client = suite.profile_client().await;
    let tenant = unique_tenant("no-redis");
    let created = client
        .create_customer(with_tenant(
            &tenant,
            CreateCustomerRequest {
                customer: Some(new_customer(CustomerKind::Business, "Acme")),
                request_id: "a".into(),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    let started = Instant::now();
    let fetched = client
        .get_customer(with_tenant(
            &tenant,
            GetCustomerRequest {
                name: created.name.clone(),
            },
        ))
        .await
        .unwrap();
    assert_eq!(fetched.into_inner(), created);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "a missing Redis must not stall reads"
    );
}

/// Split topology: a service process dies, its calls through the gateway fail fast with
/// UNAVAILABLE; it comes back on its address and the gateway recovers without a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_down_is_unavailable_and_recovers() {
    let mut suite = Suite::start(crm(), Topology::Split, Backend::Embedded).await;
    let tenant = unique_tenant("peer");
    let mut client = suite.profile_client().await;
    let created = client
        .create_customer(with_tenant(
            &tenant,
            CreateCustomerRequest {
                customer: Some(new_customer(CustomerKind::Consumer, "Lin")),
                request_id: String::new(),
            },
        ))
        .await
        .unwrap()
        .into_inner();

    let profile_index = suite
        .processes
        .iter()
        .position(|process| process.role == "customer-profile")
        .unwrap();
    let address = suite.processes[profile_index].addr;
    suite.processes[profile_index].kill().await;
    let started = Instant::now();
    let status = client
        .get_customer(with_tenant(
            &tenant,
            GetCustomerRequest {
                name: created.name.clone(),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "took {:?}",
        started.elapsed()
    );

    suite
        .restart(
            profile_index,
            &[
                "--services".into(),
                "customer-profile".into(),
                "--listen".into(),
                address.to_string(),
            ],
        )
        .await;
    suite.wait_serving().await;
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        match client
            .get_customer(with_tenant(
                &tenant,
                GetCustomerRequest {
                    name: created.name.clone(),
                },
            ))
            .await
        {
            Ok(fetched) => {
                assert_eq!(fetched.into_inner(), created);
                break;
            }
            Err(status) if status.code() == Code::Unavailable && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(status) => panic!("the gateway did not recover: {status:?}"),
        }
    }
}

/// With `OTEL_EXPORTER_OTLP_ENDPOINT` set, spans reach the collector (at the latest when
/// shutdown flushes them). The collector here records the gRPC paths it is sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traces_are_exported_over_otlp_when_configured() {
    let seen_paths = Arc::new(Mutex::new(Vec::<String>::new()));
    let recorder = Arc::clone(&seen_paths);
    let collector = axum::Router::new().fallback(move |request: axum::extract::Request| {
        recorder.lock().unwrap().push(request.uri().path().to_owned());
        async { tonic::Status::ok("").into_http::<axum::body::Body>() }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(tonic::transport::Server::builder().serve_with_incoming(
        tonic::service::Routes::from(collector),
        tokio_stream::wrappers::TcpListenerStream::new(listener),
    ));

    let mut suite = Suite::start_with(
        crm(),
        Topology::OneProcess,
        Backend::Embedded,
        &[("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint)],
    )
    .await;
    let mut client = suite.profile_client().await;
    client
        .create_customer(with_tenant(
            &unique_tenant("otel"),
            CreateCustomerRequest {
                customer: Some(new_customer(CustomerKind::Consumer, "Traced")),
                request_id: String::new(),
            },
        ))
        .await
        .unwrap();
    suite.processes[0].signal("TERM").await;
    suite.processes[0]
        .wait_exit(Duration::from_secs(15))
        .await
        .expect("exited");
    let paths = seen_paths.lock().unwrap().clone();
    assert!(
        paths
            .iter()
            .any(|path| path == "/opentelemetry.proto.collector.trace.v1.TraceService/Export"),
        "no trace export reached the collector: {paths:?}\n{}",
        suite.processes[0].log()
    );
}
