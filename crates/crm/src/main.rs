//! `crm`: one binary for every role of the CRM suite.
//!
//! `crm serve` runs every service and the gateway in one process (or a subset with
//! `--services`), `crm migrate` applies the services' migrations, `crm config check | print`
//! validate and show the effective configuration. A configuration error exits with status 2
//! before anything is bound or connected.

mod cli;
mod wiring;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    let config = match cli.load_config() {
        Ok(config) => config,
        Err(error) => {
            eprintln!("error: {error}");
            return ExitCode::from(2);
        }
    };
    match cli.command {
        cli::Command::Config {
            action: cli::ConfigAction::Check { .. },
        } => {
            println!(
                "config ok: {} service(s): {}",
                config.services.len(),
                cli::service_list(&config)
            );
            ExitCode::SUCCESS
        }
        cli::Command::Config {
            action: cli::ConfigAction::Print { .. },
        } => {
            print!("{}", config.to_redacted_toml());
            ExitCode::SUCCESS
        }
        cli::Command::Migrate { .. } => run(wiring::migrate(config)),
        cli::Command::Serve { .. } => run(wiring::serve(config)),
    }
}

fn run(work: impl Future<Output = anyhow::Result<()>>) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(work) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}
