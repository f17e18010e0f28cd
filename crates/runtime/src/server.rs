//! Serving a set of services on one port: health (`grpc.health.v1`, SERVING per service only
//! while its store answers), server reflection, the RPC layer, an in-process transport for
//! local clients, and graceful shutdown with a hard drain limit.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tonic::service::Routes;
use tonic::transport::server::TcpIncoming;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

use crate::channel::InProcessIncoming;
use crate::rpc_layer::RpcLayer;

/// Asks whether a service's store is ready.
pub type ProbeFn = Arc<dyn Fn() -> Pin<Box<dyn Future<Output = bool> + Send>> + Send + Sync>;

/// One served gRPC service as health checks see it.
pub struct HealthEntry {
    /// Fully qualified gRPC service name, e.g. `crm.loyalty.v1.LoyaltyService`.
    pub service: &'static str,
    /// The store check; `None` for a service without a store of its own.
    pub probe: Option<ProbeFn>,
}

/// Everything one `crm serve` process serves.
pub struct Suite {
    pub listener: TcpListener,
    /// The CRM services (already wrapped in the tenant interceptor) and proxies to peers.
    pub routes: Routes,
    pub health: Vec<HealthEntry>,
    pub probe_interval: Duration,
    /// Connections from this process's own clients, served like TCP ones.
    pub in_process: Option<InProcessIncoming>,
    /// How long in-flight calls may take to finish after the shutdown signal.
    pub shutdown_grace: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("reflection cannot be built from the descriptor sets: {0}")]
    Reflection(String),
    #[error("the gRPC server failed: {0}")]
    Transport(String),
}

/// Waits for SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut stream) => {
                stream.recv().await;
            }
            Err(error) => {
                tracing::error!(%error, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        _ = terminate => tracing::info!(signal = "SIGTERM", "shutdown requested"),
        result = tokio::signal::ctrl_c() => match result {
            Ok(()) => tracing::info!(signal = "SIGINT", "shutdown requested"),
            Err(error) => {
                tracing::error!(%error, "cannot listen for SIGINT");
                std::future::pending::<()>().await;
            }
        },
    }
}

async fn set_all(reporter: &HealthReporter, entries: &[HealthEntry], status: ServingStatus) {
    for entry in entries {
        reporter.set_service_status(entry.service, status).await;
    }
    reporter.set_service_status("", status).await;
}

/// Checks every store once and publishes the result; the whole process ("") is SERVING only
/// when every service is.
async fn probe_once(reporter: &HealthReporter, entries: &[HealthEntry], last: &mut [Option<bool>]) {
    let mut all_ready = true;
    for (index, entry) in entries.iter().enumerate() {
        let ready = match &entry.probe {
            Some(probe) => probe().await,
            None => true,
        };
        all_ready &= ready;
        if last[index] != Some(ready) {
            if last[index].is_some() {
                tracing::warn!(service = entry.service, ready, "store readiness changed");
            }
            last[index] = Some(ready);
            let status = if ready {
                ServingStatus::Serving
            } else {
                ServingStatus::NotServing
            };
            reporter.set_service_status(entry.service, status).await;
        }
    }
    let overall = if all_ready {
        ServingStatus::Serving
    } else {
        ServingStatus::NotServing
    };
    reporter.set_service_status("", overall).await;
}

/// Serves until `shutdown` resolves, then marks every service NOT_SERVING, stops accepting,
/// lets in-flight calls finish for at most the grace period, and returns.
pub async fn serve(
    suite: Suite,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let Suite {
        listener,
        routes,
        health,
        probe_interval,
        in_process,
        shutdown_grace,
    } = suite;
    let (reporter, health_service) = tonic_health::server::health_reporter();
    set_all(&reporter, &health, ServingStatus::NotServing).await;

    let reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(crm_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(|error| ServeError::Reflection(error.to_string()))?;
    // grpcurl and older tools still ask the v1alpha service.
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(crm_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()
        .map_err(|error| ServeError::Reflection(error.to_string()))?;
    let routes = routes
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .prepare();

    let health = Arc::new(health);
    let mut readiness = vec![None; health.len()];
    probe_once(&reporter, &health, &mut readiness).await;

    let (stop_sender, stop_receiver) = watch::channel(false);
    let prober = {
        let reporter = reporter.clone();
        let health = Arc::clone(&health);
        let mut stop = stop_receiver.clone();
        tokio::spawn(async move {
            let mut ticker = tokio::time::interval(probe_interval);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = ticker.tick() => probe_once(&reporter, &health, &mut readiness).await,
                    _ = stop.changed() => return,
                }
            }
        })
    };

    let stopped = |mut receiver: watch::Receiver<bool>| async move {
        let _ = receiver.wait_for(|stop| *stop).await;
    };

    // The builder's tcp_nodelay applies only to listeners tonic binds itself; ours comes
    // ready-bound (port 0, printed before serving), so the incoming stream sets it. Without it,
    // Nagle's algorithm adds ~40 ms stalls to small responses.
    let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
    let tcp_server = tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .layer(RpcLayer)
        .serve_with_incoming_shutdown(routes.clone(), incoming, stopped(stop_receiver.clone()));
    let in_process_server = async {
        match in_process {
            Some(incoming) => tonic::transport::Server::builder()
                .layer(RpcLayer)
                .serve_with_incoming_shutdown(routes, incoming, stopped(stop_receiver.clone()))
                .await
                .map_err(|error| ServeError::Transport(error.to_string())),
            None => Ok(()),
        }
    };
    let servers = async {
        let (tcp, local) = tokio::join!(tcp_server, in_process_server);
        tcp.map_err(|error| ServeError::Transport(error.to_string()))?;
        local
    };
    tokio::pin!(servers);

    tokio::select! {
        result = &mut servers => {
            prober.abort();
            return result;
        }
        () = shutdown => {}
    }

    // Load balancers and orchestrators see NOT_SERVING first, then the listener closes and
    // in-flight calls drain.
    prober.abort();
    set_all(&reporter, &health, ServingStatus::NotServing).await;
    let _ = stop_sender.send(true);
    let _ = draining_signal().send_replace(true);
    tracing::info!(
        grace_secs = shutdown_grace.as_secs_f64(),
        "draining in-flight calls"
    );
    // Drain under a hard limit: a long-lived HTTP/2 connection can keep tonic's graceful
    // shutdown waiting forever (hyper issue 4170).
    match tokio::time::timeout(shutdown_grace, &mut servers).await {
        Ok(result) => {
            tracing::info!("drained");
            result
        }
        Err(_) => {
            tracing::warn!("grace period over with calls or connections still open; stopping anyway");
            Ok(())
        }
    }
}

/// Raised once when the process starts draining.
fn draining_signal() -> &'static watch::Sender<bool> {
    static SIGNAL: std::sync::OnceLock<watch::Sender<bool>> = std::sync::OnceLock::new();
    SIGNAL.get_or_init(|| watch::Sender::new(false))
}

/// Completes when this process starts draining. Endless server streams (event subscriptions
/// and feeds) end with it, so graceful shutdown does not wait out the grace period for them;
/// their clients resume from their cursor elsewhere or after the restart.
pub fn draining() -> impl Future<Output = ()> + Send + 'static {
    let mut receiver = draining_signal().subscribe();
    async move {
        let _ = receiver.wait_for(|draining| *draining).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::channel::in_process_pair;
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_client::HealthClient;

    #[tokio::test]
    async fn local_clients_reach_the_server_through_the_in_process_channel() {
        let (channel, incoming) = in_process_pair();
        let ready = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let probe_ready = Arc::clone(&ready);
        let probe: ProbeFn = Arc::new(move || {
            let ready = probe_ready.load(std::sync::atomic::Ordering::SeqCst);
            Box::pin(async move { ready })
        });
        let suite = Suite {
            listener: TcpListener::bind("127.0.0.1:0").await.unwrap(),
            routes: Routes::default(),
            health: vec![HealthEntry {
                service: "crm.test.v1.TestService",
                probe: Some(probe),
            }],
            probe_interval: Duration::from_millis(20),
            in_process: Some(incoming),
            shutdown_grace: Duration::from_secs(2),
        };
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve(suite, async {
            let _ = stopped.await;
        }));

        let mut health = HealthClient::new(channel);
        let status = |health: &mut HealthClient<tonic::transport::Channel>| {
            let mut health = health.clone();
            async move {
                health
                    .check(HealthCheckRequest {
                        service: "crm.test.v1.TestService".into(),
                    })
                    .await
                    .unwrap()
                    .into_inner()
                    .status
            }
        };
        assert_eq!(status(&mut health).await, ServingStatus::Serving as i32);

        // The store stops answering: the service leaves SERVING at the next probe.
        ready.store(false, std::sync::atomic::Ordering::SeqCst);
        let mut seen_not_serving = false;
        for _ in 0..100 {
            if status(&mut health).await == ServingStatus::NotServing as i32 {
                seen_not_serving = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(seen_not_serving, "health did not follow the store");

        stop.send(()).unwrap();
        tokio::time::timeout(Duration::from_secs(5), server)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
    }
}
