//! Layered configuration: defaults, then a TOML file, then `CRM_*` environment variables
//! (`__` separates nested keys: `CRM_CACHE__TTL_SECS`), then `DATABASE_URL`, `REDIS_URL` and
//! `OTEL_EXPORTER_OTLP_ENDPOINT`, then command-line flags. Every value is checked before
//! anything starts; an error names the key.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crm_telemetry::LogFormat;
use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};

/// A role `crm serve` can run. One process runs any subset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ServiceKind {
    CustomerProfile,
    Interaction,
    Segmentation,
    Loyalty,
    Gateway,
}

impl ServiceKind {
    pub const ALL: [ServiceKind; 5] = [
        Self::CustomerProfile,
        Self::Interaction,
        Self::Segmentation,
        Self::Loyalty,
        Self::Gateway,
    ];

    /// The name used on the command line and in config (`customer-profile`).
    pub fn name(self) -> &'static str {
        match self {
            Self::CustomerProfile => "customer-profile",
            Self::Interaction => "interaction",
            Self::Segmentation => "segmentation",
            Self::Loyalty => "loyalty",
            Self::Gateway => "gateway",
        }
    }

    /// The PostgreSQL schema or SQLite file name of the service's own data.
    pub fn schema(self) -> &'static str {
        match self {
            Self::CustomerProfile => "customer_profile",
            Self::Interaction => "interaction",
            Self::Segmentation => "segmentation",
            Self::Loyalty => "loyalty",
            Self::Gateway => "gateway",
        }
    }

    /// The fully qualified gRPC service the role serves (also its health-check name).
    pub fn grpc_service(self) -> &'static str {
        match self {
            Self::CustomerProfile => "crm.customerprofile.v1.CustomerProfileService",
            Self::Interaction => "crm.interaction.v1.InteractionService",
            Self::Segmentation => "crm.segmentation.v1.SegmentationService",
            Self::Loyalty => "crm.loyalty.v1.LoyaltyService",
            Self::Gateway => "crm.gateway.v1.Customer360Service",
        }
    }

    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|kind| kind.name() == name)
    }

    /// The services this role calls (reads and event subscriptions): each runs in the same
    /// process or has a peer address.
    pub fn dependencies(self) -> &'static [ServiceKind] {
        match self {
            Self::CustomerProfile | Self::Gateway => &[],
            Self::Interaction => &[Self::CustomerProfile],
            // Follows both event logs through their internal feeds.
            Self::Segmentation => &[Self::CustomerProfile, Self::Interaction],
            // Earns from interaction's purchases, follows customer-profile's merges and reads
            // profiles, checks campaign segments with segmentation.
            Self::Loyalty => &[Self::CustomerProfile, Self::Interaction, Self::Segmentation],
        }
    }
}

impl fmt::Display for ServiceKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Address of the one gRPC port of this process. Port 0 picks a free port; the chosen
    /// address is printed on standard output as `crm listening on ADDR`.
    pub listen: SocketAddr,
    /// The roles this process runs.
    pub services: Vec<ServiceKind>,
    /// Where the embedded default keeps its SQLite files.
    pub data_dir: PathBuf,
    /// PostgreSQL URL; unset means SQLite under `data_dir`.
    pub database_url: Option<String>,
    /// Redis URL; unset means an in-process cache.
    pub redis_url: Option<String>,
    pub database: DatabaseConfig,
    pub cache: CacheConfig,
    /// Addresses of the roles this process does not run (split topology).
    pub peers: PeersConfig,
    /// The secret every process of a split deployment shares to call the internal services
    /// (the all-tenant event feeds); at least 16 characters. Required when a role here calls a
    /// peer; in one process an unset token is a random one the process keeps to itself.
    pub internal_token: Option<String>,
    /// How long a SIGTERM waits for in-flight calls before the process exits anyway.
    pub shutdown_grace_secs: u64,
    /// How long `request_id` idempotency records are kept (at least 24).
    pub idempotency_retention_hours: u64,
    pub log: LogConfig,
    pub otel: OtelConfig,
    pub loyalty: LoyaltyConfig,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LoyaltyConfig {
    /// How often the loyalty jobs run: pending points mature, due points expire, tiers due for
    /// their evaluation are evaluated. Each run catches up on everything due, so a longer
    /// interval delays these changes but loses none.
    pub job_interval_secs: u64,
    /// How far ahead the jobs announce points expiring soon (POINTS_EXPIRING_SOON), in days.
    pub expiry_notice_days: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DatabaseConfig {
    /// Pool size per service on PostgreSQL.
    pub max_connections: u32,
    pub connect_timeout_secs: u64,
    /// How often each service checks its store for the health status.
    pub health_probe_interval_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CacheConfig {
    /// Backstop expiry of every cached entry.
    pub ttl_secs: u64,
    /// A Redis call slower than this counts as a miss, so a stalled Redis never stalls a call.
    pub operation_timeout_ms: u64,
    /// Capacity of the in-process cache.
    pub local_max_entries: u64,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PeersConfig {
    pub customer_profile: Option<String>,
    pub interaction: Option<String>,
    pub segmentation: Option<String>,
    pub loyalty: Option<String>,
    pub gateway: Option<String>,
}

impl PeersConfig {
    pub fn get(&self, kind: ServiceKind) -> Option<&str> {
        match kind {
            ServiceKind::CustomerProfile => self.customer_profile.as_deref(),
            ServiceKind::Interaction => self.interaction.as_deref(),
            ServiceKind::Segmentation => self.segmentation.as_deref(),
            ServiceKind::Loyalty => self.loyalty.as_deref(),
            ServiceKind::Gateway => self.gateway.as_deref(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    pub format: LogFormat,
    /// `EnvFilter` directives, e.g. `info,crm_runtime=debug`.
    pub filter: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OtelConfig {
    /// OTLP/gRPC endpoint (`OTEL_EXPORTER_OTLP_ENDPOINT`); traces are exported only when set.
    pub endpoint: Option<String>,
    pub service_name: String,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([0, 0, 0, 0], 50051)),
            services: ServiceKind::ALL.to_vec(),
            data_dir: PathBuf::from("./data"),
            database_url: None,
            redis_url: None,
            database: DatabaseConfig::default(),
            cache: CacheConfig::default(),
            peers: PeersConfig::default(),
            internal_token: None,
            shutdown_grace_secs: 10,
            idempotency_retention_hours: 48,
            log: LogConfig::default(),
            otel: OtelConfig::default(),
            loyalty: LoyaltyConfig::default(),
        }
    }
}

impl Default for LoyaltyConfig {
    fn default() -> Self {
        Self {
            job_interval_secs: 300,
            expiry_notice_days: 30,
        }
    }
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        Self {
            max_connections: 10,
            connect_timeout_secs: 5,
            health_probe_interval_ms: 2000,
        }
    }
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self {
            ttl_secs: 300,
            operation_timeout_ms: 100,
            local_max_entries: 100_000,
        }
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            format: LogFormat::Text,
            filter: "info".into(),
        }
    }
}

impl Default for OtelConfig {
    fn default() -> Self {
        Self {
            endpoint: None,
            service_name: "crm".into(),
        }
    }
}

/// A configuration value that cannot be used, with the key that holds it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("config key `{key}`: {message}")]
pub struct ConfigError {
    pub key: String,
    pub message: String,
}

impl ConfigError {
    fn new(key: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            message: message.into(),
        }
    }
}

/// Top-level keys, so that unrelated `CRM_*` variables in the environment are not read as
/// (unknown) configuration.
const TOP_LEVEL_KEYS: [&str; 13] = [
    "listen",
    "services",
    "data_dir",
    "database_url",
    "redis_url",
    "database",
    "cache",
    "peers",
    "internal_token",
    "shutdown_grace_secs",
    "idempotency_retention_hours",
    "log",
    "otel",
];

impl Config {
    /// Loads every layer and validates the result. `overrides` holds the command-line flags.
    pub fn load(file: Option<&Path>, overrides: impl figment::Provider) -> Result<Self, ConfigError> {
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        if let Some(path) = file {
            if !path.is_file() {
                return Err(ConfigError::new(
                    "config",
                    format!("file {} does not exist", path.display()),
                ));
            }
            figment = figment.merge(Toml::file_exact(path));
        }
        figment = figment.merge(Env::prefixed("CRM_").split("__").filter(|key| {
            let top = key.as_str().split('.').next().unwrap_or_default();
            TOP_LEVEL_KEYS.iter().any(|known| known.eq_ignore_ascii_case(top))
        }));
        for (variable, key) in [
            ("DATABASE_URL", "database_url"),
            ("REDIS_URL", "redis_url"),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "otel.endpoint"),
        ] {
            // An empty variable means unset, as shells and compose files often leave them.
            if let Ok(value) = std::env::var(variable)
                && !value.trim().is_empty()
            {
                figment = figment.merge(Serialized::global(key, value));
            }
        }
        figment = figment.merge(overrides);
        let config: Config = figment.extract().map_err(|error| {
            let key = if error.path.is_empty() {
                "config".to_owned()
            } else {
                error.path.join(".")
            };
            let source = error.metadata.as_ref().map(|metadata| metadata.name.to_string());
            let message = match source {
                Some(source) => format!("{} (from {source})", error.kind),
                None => error.kind.to_string(),
            };
            ConfigError::new(key, message)
        })?;
        config.validate()?;
        Ok(config)
    }

    /// Checks what serde cannot: ranges, URLs, and that every role this process fronts but does
    /// not run has a peer address.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.services.is_empty() {
            return Err(ConfigError::new("services", "at least one service must run"));
        }
        if self.loyalty.expiry_notice_days > 3650 {
            return Err(ConfigError::new(
                "loyalty.expiry_notice_days",
                "must be at most 3650",
            ));
        }
        if self.loyalty.job_interval_secs == 0 {
            return Err(ConfigError::new(
                "loyalty.job_interval_secs",
                "must be at least 1",
            ));
        }
        if let Some(url) = &self.database_url {
            check_database_url(url).map_err(|message| ConfigError::new("database_url", message))?;
        }
        if let Some(url) = &self.redis_url {
            let parsed =
                url::Url::parse(url).map_err(|error| ConfigError::new("redis_url", error.to_string()))?;
            if !matches!(parsed.scheme(), "redis" | "rediss") {
                return Err(ConfigError::new(
                    "redis_url",
                    "scheme must be redis:// or rediss://",
                ));
            }
        }
        if let Some(endpoint) = &self.otel.endpoint {
            check_http_url(endpoint).map_err(|message| ConfigError::new("otel.endpoint", message))?;
        }
        for kind in ServiceKind::ALL {
            if let Some(url) = self.peers.get(kind) {
                check_http_url(url).map_err(|message| ConfigError::new(peer_key(kind), message))?;
            }
        }
        for kind in self.services.iter().copied() {
            for dependency in kind.dependencies() {
                if self.runs(*dependency) {
                    continue;
                }
                if self.peers.get(*dependency).is_none() {
                    return Err(ConfigError::new(
                        peer_key(*dependency),
                        format!(
                            "{kind} calls {dependency}, which this process does not run: set its address"
                        ),
                    ));
                }
                if self.internal_token.is_none() {
                    return Err(ConfigError::new(
                        "internal_token",
                        format!("{kind} calls {dependency} on a peer: set the token the deployment shares"),
                    ));
                }
            }
        }
        if self.runs(ServiceKind::Gateway) {
            for kind in ServiceKind::ALL
                .into_iter()
                .filter(|kind| *kind != ServiceKind::Gateway)
            {
                if !self.runs(kind) && self.peers.get(kind).is_none() {
                    return Err(ConfigError::new(
                        peer_key(kind),
                        format!(
                            "the gateway fronts {kind}, which this process does not run: set its address"
                        ),
                    ));
                }
            }
        }
        if let Some(token) = &self.internal_token
            && (token.chars().count() < 16 || token.chars().any(|c| !c.is_ascii_graphic()))
        {
            return Err(ConfigError::new(
                "internal_token",
                "must be at least 16 printable ASCII characters without spaces",
            ));
        }
        crm_telemetry::validate_filter(&self.log.filter)
            .map_err(|error| ConfigError::new("log.filter", error.to_string()))?;
        in_range("shutdown_grace_secs", self.shutdown_grace_secs, 1, 3600)?;
        in_range(
            "idempotency_retention_hours",
            self.idempotency_retention_hours,
            24,
            24 * 365,
        )?;
        in_range(
            "database.max_connections",
            u64::from(self.database.max_connections),
            1,
            1000,
        )?;
        in_range(
            "database.connect_timeout_secs",
            self.database.connect_timeout_secs,
            1,
            600,
        )?;
        in_range(
            "database.health_probe_interval_ms",
            self.database.health_probe_interval_ms,
            100,
            600_000,
        )?;
        in_range("cache.ttl_secs", self.cache.ttl_secs, 1, 7 * 24 * 3600)?;
        in_range(
            "cache.operation_timeout_ms",
            self.cache.operation_timeout_ms,
            1,
            60_000,
        )?;
        in_range(
            "cache.local_max_entries",
            self.cache.local_max_entries,
            1,
            100_000_000,
        )?;
        if self.otel.service_name.trim().is_empty() {
            return Err(ConfigError::new("otel.service_name", "must not be empty"));
        }
        Ok(())
    }

    pub fn runs(&self, kind: ServiceKind) -> bool {
        self.services.contains(&kind)
    }

    pub fn shutdown_grace(&self) -> Duration {
        Duration::from_secs(self.shutdown_grace_secs)
    }

    /// The configuration as TOML with passwords in URLs masked (for `crm config print`).
    pub fn to_redacted_toml(&self) -> String {
        let mut shown = self.clone();
        shown.database_url = shown.database_url.as_deref().map(redact_url);
        shown.redis_url = shown.redis_url.as_deref().map(redact_url);
        if shown.internal_token.is_some() {
            shown.internal_token = Some("********".into());
        }
        toml_string(&shown)
    }
}

fn toml_string(config: &Config) -> String {
    // Plain structs of strings and numbers always serialise.
    toml::to_string_pretty(config)
        .unwrap_or_else(|error| format!("# cannot render the configuration: {error}\n"))
}

fn redact_url(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut parsed) if parsed.password().is_some() => {
            let _ = parsed.set_password(Some("********"));
            parsed.to_string()
        }
        _ => url.to_owned(),
    }
}

fn check_database_url(url: &str) -> Result<(), String> {
    let parsed = url::Url::parse(url).map_err(|error| error.to_string())?;
    match parsed.scheme() {
        "postgres" | "postgresql" => Ok(()),
        other => Err(format!(
            "scheme {other:?} is not supported; use postgres:// (unset it for embedded SQLite)"
        )),
    }
}

fn check_http_url(url: &str) -> Result<(), String> {
    let parsed = url::Url::parse(url).map_err(|error| format!("{url:?} is not a URL: {error}"))?;
    if !matches!(parsed.scheme(), "http" | "https") || parsed.host().is_none() {
        return Err(format!(
            "{url:?} must be an http:// or https:// address with a host"
        ));
    }
    Ok(())
}

fn peer_key(kind: ServiceKind) -> String {
    format!("peers.{}", kind.schema())
}

fn in_range(key: &str, value: u64, min: u64, max: u64) -> Result<(), ConfigError> {
    if value < min || value > max {
        return Err(ConfigError::new(
            key,
            format!("{value} is out of range {min}..={max}"),
        ));
    }
    Ok(())
}

pub fn parse_peer_flag(flag: &str) -> Result<(ServiceKind, String), String> {
    let (name, url) = flag
        .split_once('=')
        .ok_or_else(|| format!("{flag:?} is not NAME=URL"))?;
    let kind = ServiceKind::parse(name.trim()).ok_or_else(|| format!("{name:?} is not a service"))?;
    Ok((kind, url.trim().to_owned()))
}

#[cfg(test)]
// figment::Jail's closures return its own (large) error type.
#[allow(clippy::result_large_err)]
mod tests {
    use super::*;
    use figment::providers::Serialized;

    fn no_overrides() -> Serialized<figment::value::Dict> {
        Serialized::defaults(figment::value::Dict::new())
    }

    #[test]
    fn defaults_are_valid() {
        Config::default().validate().unwrap();
    }

    #[test]
    fn a_bad_value_names_its_key() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("crm.toml", "[cache]\nttl_secs = \"soon\"\n")?;
            let error = Config::load(Some(Path::new("crm.toml")), no_overrides()).unwrap_err();
            assert_eq!(error.key, "cache.ttl_secs");
            jail.set_env("CRM_SHUTDOWN_GRACE_SECS", "0");
            let error = Config::load(None, no_overrides()).unwrap_err();
            assert_eq!(error.key, "shutdown_grace_secs");
            Ok(())
        });
    }

    #[test]
    fn layers_apply_in_order_and_env_urls_are_read() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "crm.toml",
                "listen = \"127.0.0.1:7000\"\n[cache]\nttl_secs = 60\n",
            )?;
            jail.set_env("CRM_CACHE__TTL_SECS", "90");
            jail.set_env("CRM_UNRELATED", "ignored");
            jail.set_env("REDIS_URL", "redis://127.0.0.1:6379");
            jail.set_env("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4317");
            let flags = Serialized::global("listen", "127.0.0.1:7001");
            let config = Config::load(Some(Path::new("crm.toml")), flags).unwrap();
            assert_eq!(config.listen, "127.0.0.1:7001".parse().unwrap());
            assert_eq!(config.cache.ttl_secs, 90);
            assert_eq!(config.redis_url.as_deref(), Some("redis://127.0.0.1:6379"));
            assert_eq!(config.otel.endpoint.as_deref(), Some("http://127.0.0.1:4317"));
            Ok(())
        });
    }

    #[test]
    fn a_service_without_the_peers_it_calls_is_refused() {
        let mut config = Config {
            services: vec![ServiceKind::Interaction],
            ..Config::default()
        };
        assert_eq!(config.validate().unwrap_err().key, "peers.customer_profile");
        config.peers.customer_profile = Some("http://127.0.0.1:50051".into());
        assert_eq!(config.validate().unwrap_err().key, "internal_token");
        config.internal_token = Some("short".into());
        assert_eq!(config.validate().unwrap_err().key, "internal_token");
        config.internal_token = Some("0123456789abcdef".into());
        assert!(config.validate().is_ok());
        config.peers.customer_profile = None;
        config.internal_token = None;
        config.services.push(ServiceKind::CustomerProfile);
        assert!(config.validate().is_ok());
    }

    #[test]
    fn a_gateway_without_its_peers_is_refused() {
        let config = Config {
            services: vec![ServiceKind::Gateway],
            ..Config::default()
        };
        assert_eq!(config.validate().unwrap_err().key, "peers.customer_profile");
    }

    #[test]
    fn unknown_service_and_bad_database_url_are_named() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("CRM_SERVICES", "[\"billing\"]");
            assert_eq!(Config::load(None, no_overrides()).unwrap_err().key, "services.0");
            jail.set_env("CRM_SERVICES", "[\"loyalty\"]");
            jail.set_env("DATABASE_URL", "mysql://x");
            assert_eq!(
                Config::load(None, no_overrides()).unwrap_err().key,
                "database_url"
            );
            Ok(())
        });
    }

    #[test]
    fn printed_config_hides_passwords() {
        let config = Config {
            database_url: Some("postgres://crm:secret@db/crm".into()),
            ..Config::default()
        };
        let printed = config.to_redacted_toml();
        assert!(!printed.contains("secret"), "{printed}");
        assert!(printed.contains("[cache]"), "{printed}");
    }
}
