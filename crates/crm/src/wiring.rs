//! The wiring of a `crm` process, readable in one place: which services run, what each is
//! given (its own database, the shared cache), and how the rest is reached.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use crm_cache::{Cache, LocalCache, RedisCache};
use crm_db::DbSettings;
use crm_db::sea_orm::DatabaseConnection;
use crm_db::sea_orm_migration::MigratorTrait;
use crm_runtime::channel::{in_process_pair, network_channel};
use crm_runtime::internal::InternalToken;
use crm_runtime::server::{HealthEntry, ProbeFn, Suite};
use crm_runtime::{Config, ServiceKind, require_tenant};
use crm_telemetry::TelemetrySettings;
use tonic::service::interceptor::InterceptedService;
use tonic::service::{Routes, RoutesBuilder};

fn db_settings(config: &Config) -> DbSettings {
    DbSettings {
        url: config.database_url.clone(),
        data_dir: config.data_dir.clone(),
        max_connections: config.database.max_connections,
        connect_timeout: Duration::from_secs(config.database.connect_timeout_secs),
    }
}

/// Whether the role keeps data of its own.
fn has_store(kind: ServiceKind) -> bool {
    kind != ServiceKind::Gateway
}

/// Connects the role to its own schema or file and applies its migrations.
async fn open_store(kind: ServiceKind, settings: &DbSettings) -> anyhow::Result<DatabaseConnection> {
    let db = crm_db::connect(settings, kind.schema()).await?;
    let migrated = match kind {
        ServiceKind::CustomerProfile => crm_customer_profile::Migrator::up(&db, None).await,
        ServiceKind::Interaction => crm_interaction::Migrator::up(&db, None).await,
        ServiceKind::Segmentation => crm_segmentation::Migrator::up(&db, None).await,
        ServiceKind::Loyalty => crm_loyalty::Migrator::up(&db, None).await,
        ServiceKind::Gateway => Ok(()),
    };
    migrated.with_context(|| format!("migrating {kind}"))?;
    Ok(db)
}

/// `crm migrate`: applies the selected roles' migrations.
pub async fn migrate(config: Config) -> anyhow::Result<()> {
    let settings = db_settings(&config);
    for kind in config.services.iter().copied().filter(|kind| has_store(*kind)) {
        let db = open_store(kind, &settings).await?;
        let _ = db.close().await;
        println!("migrated {kind}");
    }
    Ok(())
}

fn store_probe(db: DatabaseConnection) -> ProbeFn {
    Arc::new(move || {
        let db = db.clone();
        Box::pin(async move { crm_db::ping(&db).await })
    })
}

/// Deletes expired idempotency records of one store, hourly.
fn spawn_idempotency_purge(kind: ServiceKind, db: DatabaseConnection, retention: Duration) {
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(Duration::from_secs(3600));
        loop {
            ticker.tick().await;
            match crm_db::idempotency::purge_expired(&db, retention).await {
                Ok(0) => {}
                Ok(purged) => tracing::info!(service = %kind, purged, "expired idempotency records purged"),
                Err(error) => tracing::warn!(service = %kind, %error, "idempotency purge failed"),
            }
        }
    });
}

fn build_cache(config: &Config) -> anyhow::Result<Arc<dyn Cache>> {
    Ok(match &config.redis_url {
        Some(url) => Arc::new(RedisCache::connect(
            url,
            Duration::from_millis(config.cache.operation_timeout_ms),
        )?),
        None => Arc::new(LocalCache::new(config.cache.local_max_entries)),
    })
}

/// `crm serve`: opens every selected role's store, registers its gRPC service behind the tenant
/// check, routes the rest to peers when the gateway runs here, then serves until SIGTERM/SIGINT.
pub async fn serve(config: Config) -> anyhow::Result<()> {
    let telemetry = crm_telemetry::init(&TelemetrySettings {
        log_format: config.log.format,
        log_filter: config.log.filter.clone(),
        otlp_endpoint: config.otel.endpoint.clone(),
        service_name: config.otel.service_name.clone(),
    })?;
    let result = serve_with_telemetry(&config).await;
    telemetry.shutdown();
    result
}

async fn serve_with_telemetry(config: &Config) -> anyhow::Result<()> {
    let settings = db_settings(config);
    let cache = build_cache(config)?;
    let cache_ttl = Duration::from_secs(config.cache.ttl_secs);
    let retention = Duration::from_secs(config.idempotency_retention_hours * 3600);

    // Local services reach each other through the in-process transport, remote ones through
    // their peer address; the same generated clients either way.
    let (local_channel, local_incoming) = in_process_pair();
    let connect_timeout = Duration::from_secs(config.database.connect_timeout_secs);
    let channel_to = |kind: ServiceKind| -> anyhow::Result<tonic::transport::Channel> {
        if config.runs(kind) {
            return Ok(local_channel.clone());
        }
        let url = config
            .peers
            .get(kind)
            .with_context(|| format!("no address for {kind} (validated config always has one)"))?;
        Ok(network_channel(url, connect_timeout)?)
    };

    let internal_token = InternalToken::configured_or_random(config.internal_token.as_deref());

    let mut builder = RoutesBuilder::default();
    let mut health = Vec::new();
    for kind in config.services.iter().copied() {
        let db = if has_store(kind) {
            Some(open_store(kind, &settings).await?)
        } else {
            None
        };
        match (kind, db.clone()) {
            (ServiceKind::CustomerProfile, Some(db)) => {
                let (service, feed) =
                    crm_customer_profile::CustomerProfileGrpc::server(db, Arc::clone(&cache), cache_ttl);
                builder.add_service(InterceptedService::new(service, require_tenant));
                builder.add_service(InterceptedService::new(feed, internal_token.require()));
            }
            (ServiceKind::Interaction, Some(db)) => {
                let (service, feed) =
                    crm_interaction::InteractionGrpc::server(db, channel_to(ServiceKind::CustomerProfile)?);
                builder.add_service(InterceptedService::new(service, require_tenant));
                builder.add_service(InterceptedService::new(feed, internal_token.require()));
            }
            (ServiceKind::Segmentation, Some(db)) => {
                builder.add_service(InterceptedService::new(
                    crm_segmentation::SegmentationGrpc::server(
                        db,
                        Arc::clone(&cache),
                        cache_ttl,
                        crm_segmentation::Feeds {
                            customer_profile: channel_to(ServiceKind::CustomerProfile)?,
                            interaction: channel_to(ServiceKind::Interaction)?,
                            token: internal_token.clone(),
                        },
                    ),
                    require_tenant,
                ));
            }
            (ServiceKind::Loyalty, Some(db)) => {
                builder.add_service(InterceptedService::new(
                    crm_loyalty::LoyaltyGrpc::server(
                        db,
                        Arc::clone(&cache),
                        cache_ttl,
                        crm_loyalty::Feeds {
                            customer_profile: channel_to(ServiceKind::CustomerProfile)?,
                            interaction: channel_to(ServiceKind::Interaction)?,
                            segmentation: channel_to(ServiceKind::Segmentation)?,
                            token: internal_token.clone(),
                        },
                        Duration::from_secs(config.loyalty.job_interval_secs),
                        config.loyalty.expiry_notice_days,
                    ),
                    require_tenant,
                ));
            }
            (ServiceKind::Gateway, None) => {
                builder.add_service(InterceptedService::new(
                    crm_gateway::Customer360Grpc::server(),
                    require_tenant,
                ));
            }
            (kind, db) => anyhow::bail!("role {kind} wired with store={}", db.is_some()),
        }
        if let Some(db) = db {
            spawn_idempotency_purge(kind, db.clone(), retention);
            health.push(HealthEntry {
                service: kind.grpc_service(),
                probe: Some(store_probe(db)),
            });
        } else {
            health.push(HealthEntry {
                service: kind.grpc_service(),
                probe: None,
            });
        }
        tracing::info!(service = %kind, "service ready");
    }

    let mut routes: Routes = builder.routes();
    if config.runs(ServiceKind::Gateway) {
        let mut peers = Vec::new();
        for kind in ServiceKind::ALL.into_iter().filter(|kind| !config.runs(*kind)) {
            if let Some(url) = config.peers.get(kind) {
                peers.push((kind.grpc_service(), network_channel(url, connect_timeout)?));
                tracing::info!(service = %kind, peer = url, "routing to peer");
            }
        }
        routes = crm_gateway::proxy::add_proxy_routes(routes, peers);
    }

    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("binding {}", config.listen))?;
    let address = listener.local_addr()?;
    // The one line on standard output: how scripts and tests learn a port chosen with :0.
    println!("crm listening on {address}");
    tracing::info!(%address, services = %crate::cli::service_list(config), "serving");

    crm_runtime::server::serve(
        Suite {
            listener,
            routes,
            health,
            probe_interval: Duration::from_millis(config.database.health_probe_interval_ms),
            in_process: Some(local_incoming),
            shutdown_grace: config.shutdown_grace(),
        },
        crm_runtime::server::shutdown_signal(),
    )
    .await?;
    Ok(())
}
