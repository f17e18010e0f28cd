//! Command line: subcommands and the flags that form the last configuration layer.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use crm_runtime::config::parse_peer_flag;
use crm_runtime::{Config, ConfigError, ServiceKind};
use figment::providers::Serialized;
use figment::value::{Dict, Value};

#[derive(Debug, Parser)]
#[command(
    name = "crm",
    version,
    about = "Self-hostable CRM backend: customer profile, interaction, segmentation, loyalty and a gateway"
)]
pub struct Cli {
    /// TOML configuration file (layered over the defaults, under CRM_* variables and flags).
    #[arg(long, global = true, env = "CRM_CONFIG")]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the selected services (all by default) on one port.
    Serve {
        #[command(flatten)]
        flags: ServeFlags,
    },
    /// Apply the selected services' database migrations and exit.
    Migrate {
        #[command(flatten)]
        flags: ServeFlags,
    },
    /// Check or print the effective configuration.
    Config {
        #[command(subcommand)]
        action: ConfigAction,
    },
}

#[derive(Debug, Subcommand)]
pub enum ConfigAction {
    /// Validate the configuration; exit 2 naming the bad key.
    Check {
        #[command(flatten)]
        flags: ServeFlags,
    },
    /// Print the effective configuration as TOML, passwords masked.
    Print {
        #[command(flatten)]
        flags: ServeFlags,
    },
}

#[derive(Debug, Args, Default)]
pub struct ServeFlags {
    /// Address of the gRPC port (`listen`).
    #[arg(long)]
    pub listen: Option<SocketAddr>,
    /// Comma-separated roles to run: customer-profile, interaction, segmentation, loyalty, gateway.
    #[arg(long, value_delimiter = ',', value_parser = parse_service)]
    pub services: Option<Vec<ServiceKind>>,
    /// Directory of the embedded SQLite files (`data_dir`).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Address of a role run elsewhere, NAME=URL (repeatable), e.g. loyalty=http://10.0.0.5:50051.
    #[arg(long = "peer", value_parser = parse_peer_flag)]
    pub peers: Vec<(ServiceKind, String)>,
}

fn parse_service(name: &str) -> Result<ServiceKind, String> {
    ServiceKind::parse(name.trim()).ok_or_else(|| {
        let known: Vec<_> = ServiceKind::ALL.iter().map(|kind| kind.name()).collect();
        format!("{name:?} is not a service; expected one of {}", known.join(", "))
    })
}

impl ServeFlags {
    /// The flags as the last configuration layer; only flags given override anything.
    fn overrides(&self) -> Dict {
        let mut dict = Dict::new();
        if let Some(listen) = self.listen {
            dict.insert("listen".into(), Value::from(listen.to_string()));
        }
        if let Some(services) = &self.services {
            let names: Vec<Value> = services
                .iter()
                .map(|kind| Value::from(kind.name().to_owned()))
                .collect();
            dict.insert("services".into(), Value::from(names));
        }
        if let Some(data_dir) = &self.data_dir {
            dict.insert("data_dir".into(), Value::from(data_dir.display().to_string()));
        }
        if !self.peers.is_empty() {
            let mut peers = Dict::new();
            for (kind, url) in &self.peers {
                peers.insert(kind.schema().into(), Value::from(url.clone()));
            }
            dict.insert("peers".into(), Value::from(peers));
        }
        dict
    }
}

impl Cli {
    fn flags(&self) -> &ServeFlags {
        match &self.command {
            Command::Serve { flags }
            | Command::Migrate { flags }
            | Command::Config {
                action: ConfigAction::Check { flags } | ConfigAction::Print { flags },
            } => flags,
        }
    }

    pub fn load_config(&self) -> Result<Config, ConfigError> {
        Config::load(
            self.config.as_deref(),
            Serialized::defaults(self.flags().overrides()),
        )
    }
}

pub fn service_list(config: &Config) -> String {
    config
        .services
        .iter()
        .map(|kind| kind.name())
        .collect::<Vec<_>>()
        .join(", ")
}
