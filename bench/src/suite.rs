//! The suite under load: a fresh PostgreSQL database per run (made and dropped with `psql` on
//! the server of `DATABASE_URL`) and one `crm serve --listen 127.0.0.1:0` process on it, started
//! the way the e2e harness (`tests/src/lib.rs`, `CrmProcess::start`) does.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tonic::transport::{Channel, Endpoint};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

const START_TIMEOUT: Duration = Duration::from_secs(60);

/// Runs one SQL statement (or a `\copy`) with `psql` (no psqlrc, stop on error) and returns its
/// output, tuples only and unaligned.
pub async fn psql(url: &str, sql: &str) -> anyhow::Result<String> {
    let output = Command::new("psql")
        .arg(url)
        .args(["-X", "-q", "-t", "-A", "-v", "ON_ERROR_STOP=1", "-c", sql])
        .stdin(Stdio::null())
        .output()
        .await
        .context("run psql (is the PostgreSQL client installed?)")?;
    if !output.status.success() {
        bail!(
            "psql -c {sql:?} failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// A PostgreSQL database made for one run; [`BenchDatabase::drop_database`] removes it.
pub struct BenchDatabase {
    admin_url: String,
    pub name: String,
    pub url: String,
}

impl BenchDatabase {
    /// `CREATE DATABASE crm_bench_<uuid>` on the server of `admin_url`.
    pub async fn create(admin_url: &str) -> anyhow::Result<BenchDatabase> {
        let name = format!("crm_bench_{}", uuid::Uuid::now_v7().simple());
        let mut url = url::Url::parse(admin_url).context("DATABASE_URL is not a URL")?;
        url.set_path(&format!("/{name}"));
        psql(admin_url, &format!("CREATE DATABASE \"{name}\""))
            .await
            .context("create the run's database")?;
        Ok(BenchDatabase {
            admin_url: admin_url.to_owned(),
            name,
            url: url.to_string(),
        })
    }

    /// `DROP DATABASE ... WITH (FORCE)`.
    pub async fn drop_database(self) -> anyhow::Result<()> {
        psql(
            &self.admin_url,
            &format!("DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)", self.name),
        )
        .await
        .map(|_| ())
    }
}

/// How to start one `crm serve` process besides the defaults of [`CrmProcess::start`].
#[derive(Debug, Clone, Default)]
pub struct Launch {
    /// Added to the log file's name (`/tmp/crm-bench-<uuid>-<label>.log`).
    pub label: Option<String>,
    /// Flags after `serve`.
    pub args: Vec<String>,
    /// Environment variables besides `DATABASE_URL`, `REDIS_URL` and `CRM_DATA_DIR`.
    pub env: Vec<(String, String)>,
}

/// A running `crm serve` process.
pub struct CrmProcess {
    pub addr: SocketAddr,
    pub log_path: PathBuf,
    data_dir: PathBuf,
    child: Child,
}

impl CrmProcess {
    /// Starts `crm serve --listen 127.0.0.1:0` on `database_url` and `redis_url` with no other
    /// inherited `CRM_*`, `DATABASE_URL`, `REDIS_URL` or OTLP settings, reads the address from
    /// the `crm listening on ADDR` line, and waits until every service is SERVING.
    pub async fn start(binary: &Path, database_url: &str, redis_url: &str) -> anyhow::Result<CrmProcess> {
        Self::start_with(binary, database_url, redis_url, &Launch::default()).await
    }

    /// [`CrmProcess::start`] with extra flags after `serve` (a `--listen` among them replaces
    /// `127.0.0.1:0`) and extra environment (e.g. `CRM_INTERNAL_TOKEN`): one process of a split
    /// suite.
    pub async fn start_with(
        binary: &Path,
        database_url: &str,
        redis_url: &str,
        launch: &Launch,
    ) -> anyhow::Result<CrmProcess> {
        if !binary.is_file() {
            bail!(
                "{} does not exist: build it with `cargo build --release -p crm` or pass --crm-bin",
                binary.display()
            );
        }
        let run = uuid::Uuid::now_v7().simple().to_string();
        let data_dir = std::env::temp_dir().join(format!("crm-bench-{run}-data"));
        std::fs::create_dir_all(&data_dir).context("create the data directory")?;
        let log_path = match &launch.label {
            Some(label) => std::env::temp_dir().join(format!("crm-bench-{run}-{label}.log")),
            None => std::env::temp_dir().join(format!("crm-bench-{run}.log")),
        };
        let log_file = std::fs::File::create(&log_path).context("create the crm log file")?;
        let mut command = Command::new(binary);
        for (key, _) in std::env::vars() {
            if key.starts_with("CRM_")
                || key == "DATABASE_URL"
                || key == "REDIS_URL"
                || key.starts_with("OTEL_")
            {
                command.env_remove(key);
            }
        }
        command.arg("serve");
        if !launch.args.iter().any(|arg| arg == "--listen") {
            command.args(["--listen", "127.0.0.1:0"]);
        }
        command
            .args(&launch.args)
            .envs(launch.env.iter().map(|(key, value)| (key, value)))
            .env("NO_COLOR", "1")
            .env("CRM_DATA_DIR", &data_dir)
            .env("DATABASE_URL", database_url)
            .env("REDIS_URL", redis_url)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log_file))
            .kill_on_drop(true);
        let mut child = command
            .spawn()
            .with_context(|| format!("spawn {}", binary.display()))?;
        let stdout = child.stdout.take().context("the crm process has no stdout")?;
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
            bail!(
                "crm serve did not start; its log ({}):\n{log}",
                log_path.display()
            );
        };
        // Keep draining stdout so the process never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        let mut process = CrmProcess {
            addr,
            log_path,
            data_dir,
            child,
        };
        if let Err(error) = process.wait_serving().await {
            process.stop().await;
            return Err(error);
        }
        Ok(process)
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The process id while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// Polls `grpc.health.v1.Health/Check` for the process-wide entry `""` until SERVING.
    async fn wait_serving(&self) -> anyhow::Result<()> {
        let started = Instant::now();
        loop {
            let status = async {
                let channel = connect(&self.url()).await.ok()?;
                HealthClient::new(channel)
                    .check(HealthCheckRequest {
                        service: String::new(),
                    })
                    .await
                    .ok()
                    .map(|response| response.into_inner().status)
            }
            .await;
            if status == Some(ServingStatus::Serving as i32) {
                return Ok(());
            }
            if started.elapsed() > START_TIMEOUT {
                bail!(
                    "crm serve never became SERVING; its log ({}):\n{}",
                    self.log_path.display(),
                    self.log_tail(40)
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The process's exit status when it has exited (e.g. crashed under load).
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// The last `lines` lines of the process's log.
    pub fn log_tail(&self, lines: usize) -> String {
        let log = std::fs::read_to_string(&self.log_path).unwrap_or_default();
        let all: Vec<&str> = log.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// Kills the process and removes its data directory (the log stays).
    pub async fn stop(&mut self) {
        let _ = self.child.kill().await;
        let _ = std::fs::remove_dir_all(&self.data_dir);
    }
}

/// A channel to `url` (HTTP/2 over plain TCP, no delay), connected now.
pub async fn connect(url: &str) -> anyhow::Result<Channel> {
    Endpoint::from_shared(url.to_owned())
        .with_context(|| format!("bad address {url}"))?
        .tcp_nodelay(true)
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
        .with_context(|| format!("connect to {url}"))
}

/// `count` channels to `url`, each its own HTTP/2 connection.
pub async fn connect_pool(url: &str, count: usize) -> anyhow::Result<Vec<Channel>> {
    let mut channels = Vec::with_capacity(count);
    for _ in 0..count.max(1) {
        channels.push(connect(url).await?);
    }
    Ok(channels)
}
