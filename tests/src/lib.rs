//! End-to-end harness: starts the real `crm` binary in the one-process or the split topology,
//! on the embedded default or on PostgreSQL + Redis, each suite isolated (its own temporary
//! data directory, its own PostgreSQL database, its own tenants), and talks to it over real
//! gRPC sockets.
//!
//! PostgreSQL and Redis come from `DATABASE_URL` and `REDIS_URL`. Without them the production
//! scenarios skip with a message, except under CI (`CI=true`), where they fail.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::{Duration, Instant};

use sea_orm::{ConnectionTrait, Database};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tonic::transport::Channel;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

pub use crm_proto::customerprofile_v1 as profile;
pub use crm_proto::interaction_v1 as interaction;
pub use crm_proto::loyalty_v1 as loyalty;
pub use crm_proto::segmentation_v1 as segmentation;

/// The roles, as `crm serve --services` names them, and their gRPC services.
pub const SERVICES: [(&str, &str); 5] = [
    (
        "customer-profile",
        "crm.customerprofile.v1.CustomerProfileService",
    ),
    ("interaction", "crm.interaction.v1.InteractionService"),
    ("segmentation", "crm.segmentation.v1.SegmentationService"),
    ("loyalty", "crm.loyalty.v1.LoyaltyService"),
    ("gateway", "crm.gateway.v1.Customer360Service"),
];

const START_TIMEOUT: Duration = Duration::from_secs(60);

/// Where the suite keeps its data.
#[derive(Debug, Clone)]
pub enum Backend {
    /// SQLite files and the in-process cache: what `crm serve` does on a bare machine.
    Embedded,
    /// PostgreSQL and Redis.
    Production { database_url: String, redis_url: String },
}

impl Backend {
    /// PostgreSQL + Redis from the environment; `None` (skip) when absent outside CI.
    pub fn production() -> Option<Backend> {
        let database_url = std::env::var("DATABASE_URL").ok().filter(|url| !url.is_empty());
        let redis_url = std::env::var("REDIS_URL").ok().filter(|url| !url.is_empty());
        match (database_url, redis_url) {
            (Some(database_url), Some(redis_url)) => Some(Backend::Production {
                database_url,
                redis_url,
            }),
            _ if std::env::var("CI").is_ok_and(|ci| ci == "true") => {
                panic!("under CI, DATABASE_URL and REDIS_URL must be set (PostgreSQL and Redis must run)")
            }
            _ => {
                eprintln!("skipping the PostgreSQL + Redis scenario: DATABASE_URL or REDIS_URL is not set");
                None
            }
        }
    }

    pub fn is_production(&self) -> bool {
        matches!(self, Backend::Production { .. })
    }
}

/// One process or one process per role.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Topology {
    OneProcess,
    Split,
}

/// A PostgreSQL database made for one suite and dropped with it.
pub struct TestDatabase {
    admin_url: String,
    name: String,
    pub url: String,
}

impl TestDatabase {
    pub async fn create(admin_url: &str) -> TestDatabase {
        let name = format!("crm_test_{}", uuid::Uuid::now_v7().simple());
        let admin = Database::connect(admin_url)
            .await
            .expect("connect to DATABASE_URL");
        admin
            .execute_unprepared(&format!("CREATE DATABASE \"{name}\""))
            .await
            .expect("create test database");
        let _ = admin.close().await;
        let mut url = url::Url::parse(admin_url).expect("DATABASE_URL is a URL");
        url.set_path(&format!("/{name}"));
        TestDatabase {
            admin_url: admin_url.to_owned(),
            name,
            url: url.to_string(),
        }
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let admin_url = self.admin_url.clone();
        let name = self.name.clone();
        // Drop runs outside async; a thread of its own with a small runtime does the cleanup.
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .ok()?;
            runtime.block_on(async {
                let admin = Database::connect(&admin_url).await.ok()?;
                let _ = admin
                    .execute_unprepared(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
                    .await;
                let _ = admin.close().await;
                Some(())
            })
        })
        .join();
    }
}

/// A command for the binary with an environment the test controls: no inherited `CRM_*`,
/// `DATABASE_URL`, `REDIS_URL` or OTLP settings.
pub fn crm_command(binary: &Path) -> Command {
    let mut command = Command::new(binary);
    for (key, _) in std::env::vars() {
        if key.starts_with("CRM_") || key == "DATABASE_URL" || key == "REDIS_URL" || key.starts_with("OTEL_")
        {
            command.env_remove(key);
        }
    }
    command.env("NO_COLOR", "1");
    command
}

/// A running `crm serve` process.
pub struct CrmProcess {
    pub role: String,
    pub addr: SocketAddr,
    child: Child,
    log_path: PathBuf,
}

impl CrmProcess {
    /// Starts `crm serve` with `args` and waits for the `crm listening on ADDR` line.
    pub async fn start(
        binary: &Path,
        role: &str,
        args: &[String],
        env: &[(String, String)],
        log_dir: &Path,
    ) -> CrmProcess {
        let log_path = log_dir.join(format!("{role}-{}.log", uuid::Uuid::now_v7().simple()));
        let log_file = std::fs::File::create(&log_path).expect("create log file");
        let mut command = crm_command(binary);
        command
            .arg("serve")
            .args(args)
            .envs(env.iter().cloned())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log_file))
            .kill_on_drop(true);
        let mut child = command
            .spawn()
            .unwrap_or_else(|error| panic!("spawn {}: {error}", binary.display()));
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = BufReader::new(stdout).lines();
        let addr = tokio::time::timeout(START_TIMEOUT, async {
            while let Ok(Some(line)) = lines.next_line().await {
                if let Some(addr) = line.strip_prefix("crm listening on ") {
                    return addr.trim().parse::<SocketAddr>().ok();
                }
            }
            None
        })
        .await
        .ok()
        .flatten();
        let Some(addr) = addr else {
            let _ = child.kill().await;
            let log = std::fs::read_to_string(&log_path).unwrap_or_default();
            panic!("crm serve ({role}) did not start; its log:\n{log}");
        };
        // Keep draining stdout so the process never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        CrmProcess {
            role: role.to_owned(),
            addr,
            child,
            log_path,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn pid(&self) -> u32 {
        self.child.id().expect("process is running")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// Sends a signal with the system's `kill`.
    pub async fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.pid().to_string())
            .status()
            .await
            .expect("run kill");
        assert!(status.success(), "kill -{signal} failed");
    }

    /// Waits for the process to exit, at most `limit`.
    pub async fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        tokio::time::timeout(limit, self.child.wait())
            .await
            .ok()
            .map(|status| status.expect("wait"))
    }

    pub async fn kill(&mut self) {
        let _ = self.child.kill().await;
    }
}

/// A running suite in one topology on one backend.
pub struct Suite {
    pub topology: Topology,
    pub backend: Backend,
    /// Every process, the gateway (or the single process) last.
    pub processes: Vec<CrmProcess>,
    pub data_dir: tempfile::TempDir,
    pub database: Option<TestDatabase>,
    binary: PathBuf,
}

impl Suite {
    /// Starts the `binary` (the e2e target passes `env!("CARGO_BIN_EXE_crm")`).
    pub async fn start(binary: &Path, topology: Topology, backend: Backend) -> Suite {
        Self::start_with(binary, topology, backend, &[]).await
    }

    /// Starts the suite with extra environment for every process.
    pub async fn start_with(
        binary: &Path,
        topology: Topology,
        backend: Backend,
        extra_env: &[(&str, &str)],
    ) -> Suite {
        let binary = binary.to_owned();
        let data_dir = tempfile::tempdir().expect("temp dir");
        let database = match &backend {
            Backend::Production { database_url, .. } => Some(TestDatabase::create(database_url).await),
            Backend::Embedded => None,
        };
        let mut suite = Suite {
            topology,
            backend,
            processes: Vec::new(),
            data_dir,
            database,
            binary,
        };
        let extra_env: Vec<(String, String)> = extra_env
            .iter()
            .map(|(key, value)| ((*key).to_owned(), (*value).to_owned()))
            .collect();
        match topology {
            Topology::OneProcess => {
                let process = suite.spawn("all", &[], &extra_env).await;
                suite.processes.push(process);
            }
            Topology::Split => {
                let mut peer_flags = Vec::new();
                // Roles start in dependency order; each learns the addresses of those before it.
                for (role, _) in SERVICES.iter().filter(|(role, _)| *role != "gateway") {
                    let mut args = vec!["--services".to_owned(), (*role).to_owned()];
                    args.extend(peer_flags.iter().cloned());
                    let process = suite.spawn(role, &args, &extra_env).await;
                    peer_flags.push("--peer".to_owned());
                    peer_flags.push(format!("{role}={}", process.url()));
                    suite.processes.push(process);
                }
                let mut args = vec!["--services".to_owned(), "gateway".to_owned()];
                args.extend(peer_flags);
                let gateway = suite.spawn("gateway", &args, &extra_env).await;
                suite.processes.push(gateway);
            }
        }
        suite.wait_serving().await;
        suite
    }

    /// The environment a process of this suite gets.
    pub fn env(&self) -> Vec<(String, String)> {
        let mut env = vec![
            (
                "CRM_DATA_DIR".to_owned(),
                self.data_dir.path().display().to_string(),
            ),
            // Shared by the processes of a split suite so they may read each other's feeds.
            (
                "CRM_INTERNAL_TOKEN".to_owned(),
                "e2e-internal-token-0123456789".to_owned(),
            ),
        ];
        if let (Backend::Production { redis_url, .. }, Some(database)) = (&self.backend, &self.database) {
            env.push(("DATABASE_URL".to_owned(), database.url.clone()));
            env.push(("REDIS_URL".to_owned(), redis_url.clone()));
        }
        env
    }

    async fn spawn(&self, role: &str, args: &[String], extra_env: &[(String, String)]) -> CrmProcess {
        let mut all_args = Vec::new();
        if !args.iter().any(|arg| arg == "--listen") {
            all_args.extend(["--listen".to_owned(), "127.0.0.1:0".to_owned()]);
        }
        all_args.extend_from_slice(args);
        let mut env = self.env();
        env.extend_from_slice(extra_env);
        CrmProcess::start(&self.binary, role, &all_args, &env, self.data_dir.path()).await
    }

    /// Restarts the process at `index` with its role's flags (same data, same peers).
    pub async fn restart(&mut self, index: usize, args: &[String]) {
        self.processes[index].kill().await;
        let role = self.processes[index].role.clone();
        self.processes[index] = self.spawn(&role, args, &[]).await;
    }

    /// The process clients talk to: the single process, or the gateway.
    pub fn entry(&self) -> &CrmProcess {
        self.processes.last().expect("a started suite has processes")
    }

    pub async fn channel(&self) -> Channel {
        connect(self.entry().addr).await
    }

    pub async fn profile_client(
        &self,
    ) -> profile::customer_profile_service_client::CustomerProfileServiceClient<Channel> {
        profile::customer_profile_service_client::CustomerProfileServiceClient::new(self.channel().await)
    }

    pub async fn interaction_client(
        &self,
    ) -> interaction::interaction_service_client::InteractionServiceClient<Channel> {
        interaction::interaction_service_client::InteractionServiceClient::new(self.channel().await)
            .max_decoding_message_size(64 * 1024 * 1024)
    }

    pub async fn segmentation_client(
        &self,
    ) -> segmentation::segmentation_service_client::SegmentationServiceClient<Channel> {
        segmentation::segmentation_service_client::SegmentationServiceClient::new(self.channel().await)
            .max_decoding_message_size(64 * 1024 * 1024)
    }

    pub async fn loyalty_client(&self) -> loyalty::loyalty_service_client::LoyaltyServiceClient<Channel> {
        loyalty::loyalty_service_client::LoyaltyServiceClient::new(self.channel().await)
    }

    /// A connection of the test's own to a service's store (its PostgreSQL schema or SQLite
    /// file), for what only the database can do, such as holding a transaction open.
    pub async fn store(&self, schema: &str) -> sea_orm::DatabaseConnection {
        let settings = crm_db::DbSettings {
            url: self.database.as_ref().map(|database| database.url.clone()),
            data_dir: self.data_dir.path().to_owned(),
            max_connections: 2,
            connect_timeout: Duration::from_secs(10),
        };
        crm_db::connect(&settings, schema)
            .await
            .expect("connect to the service's store")
    }

    /// Waits until every service reports SERVING on the process that runs it.
    pub async fn wait_serving(&self) {
        for process in &self.processes {
            let services: Vec<&str> = match process.role.as_str() {
                "all" => SERVICES.iter().map(|(_, service)| *service).collect(),
                role => SERVICES
                    .iter()
                    .filter(|(name, _)| *name == role)
                    .map(|(_, service)| *service)
                    .collect(),
            };
            for service in services {
                let started = Instant::now();
                loop {
                    if health_status(process.addr, service).await == Some(ServingStatus::Serving) {
                        break;
                    }
                    assert!(
                        started.elapsed() < START_TIMEOUT,
                        "{service} on {} never became SERVING:\n{}",
                        process.role,
                        process.log()
                    );
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }

    /// Counts a tenant's customers straight from the customer-profile store.
    pub async fn count_customers(&self, tenant: &str) -> i64 {
        let (url, table) = match &self.database {
            Some(database) => (database.url.clone(), "customer_profile.customers".to_owned()),
            None => (
                format!(
                    "sqlite://{}?mode=ro",
                    self.data_dir.path().join("customer_profile.db").display()
                ),
                "customers".to_owned(),
            ),
        };
        let db = Database::connect(url).await.expect("connect to the store");
        let row = db
            .query_one_raw(sea_orm::Statement::from_sql_and_values(
                db.get_database_backend(),
                match db.get_database_backend() {
                    sea_orm::DbBackend::Postgres => {
                        format!("SELECT COUNT(*) AS n FROM {table} WHERE tenant_id = $1")
                    }
                    _ => format!("SELECT COUNT(*) AS n FROM {table} WHERE tenant_id = ?"),
                },
                [tenant.into()],
            ))
            .await
            .expect("count query")
            .expect("one row");
        let count: i64 = row.try_get("", "n").expect("count column");
        let _ = db.close().await;
        count
    }
}

/// Connects a channel, retrying briefly while the server comes up.
pub async fn connect(addr: SocketAddr) -> Channel {
    let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{addr}")).expect("endpoint");
    let started = Instant::now();
    loop {
        match endpoint.connect().await {
            Ok(channel) => return channel,
            Err(error) if started.elapsed() > START_TIMEOUT => panic!("cannot connect to {addr}: {error}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

/// The health status of `service` at `addr`, or `None` when it cannot be asked.
pub async fn health_status(addr: SocketAddr, service: &str) -> Option<ServingStatus> {
    let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{addr}")).ok()?;
    let channel = endpoint
        .connect_timeout(Duration::from_secs(1))
        .connect()
        .await
        .ok()?;
    let response = HealthClient::new(channel)
        .check(tonic_health::pb::HealthCheckRequest {
            service: service.to_owned(),
        })
        .await
        .ok()?;
    ServingStatus::try_from(response.into_inner().status).ok()
}

/// The services server reflection lists at `addr`.
pub async fn reflected_services(addr: SocketAddr) -> Vec<String> {
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

    let mut client = ServerReflectionClient::new(connect(addr).await);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = client
        .server_reflection_info(tokio_stream::once(request))
        .await
        .expect("reflection")
        .into_inner();
    let response = responses
        .message()
        .await
        .expect("reflection response")
        .expect("one response");
    match response.message_response {
        Some(MessageResponse::ListServicesResponse(list)) => {
            list.service.into_iter().map(|service| service.name).collect()
        }
        other => panic!("unexpected reflection response {other:?}"),
    }
}

/// A request carrying `tenant` as the `x-tenant-id` metadata.
pub fn with_tenant<T>(tenant: &str, message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request
        .metadata_mut()
        .insert("x-tenant-id", tenant.parse().expect("tenant is ASCII"));
    request
}

/// A tenant id no other test uses, so suites sharing one Redis never see each other's keys.
pub fn unique_tenant(prefix: &str) -> String {
    format!("{prefix}-{}", uuid::Uuid::now_v7().simple())
}

/// The field named by the first `BadRequest` violation of an error.
pub fn violated_field(status: &tonic::Status) -> Option<String> {
    use tonic_types::StatusExt;
    status.get_error_details().bad_request().and_then(|bad| {
        bad.field_violations
            .first()
            .map(|violation| violation.field.clone())
    })
}

/// A customer to create.
pub fn new_customer(kind: profile::CustomerKind, display_name: &str) -> profile::Customer {
    profile::Customer {
        kind: kind.into(),
        display_name: display_name.to_owned(),
        ..Default::default()
    }
}
