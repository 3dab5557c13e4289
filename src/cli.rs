//! Command line: `org-gateway serve [--config FILE] [--listen ADDR] [--ops-listen ADDR]
//! [--data-dir DIR]` and `org-gateway bench [--base-url URL] [--scenario ...] ...`.

use crate::config::{Config, Overrides};
use clap::{Parser, Subcommand};
use std::net::SocketAddr;
use std::path::PathBuf;

/// Tenant-aware gateway for collection-per-organization MongoDB deployments.
#[derive(Debug, Parser)]
#[command(name = "org-gateway", version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the gateway (public API and operator listener).
    Serve(ServeArgs),
    /// Load-test a running gateway (or any implementation of its API) and report throughput
    /// and latency percentiles against targets.
    Bench(crate::bench::BenchArgs),
}

/// Flags of `serve`; each overrides the config file, which overrides `ORG_GATEWAY_*` env.
#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// TOML config file (see config/gateway.toml for every key and its default).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Public API address [default: 127.0.0.1:8080].
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<SocketAddr>,
    /// Operator address: /healthz, /readyz, /metrics, /ops/* [default: 127.0.0.1:9090].
    #[arg(long, value_name = "ADDR")]
    pub ops_listen: Option<SocketAddr>,
    /// Directory for the catalog, the embedded store and the signing key [default: ./data].
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
}

impl ServeArgs {
    /// Resolves the configuration from all layers.
    pub fn load_config(&self) -> Result<Config, String> {
        Config::load(
            self.config.as_deref(),
            Overrides {
                listen: self.listen,
                ops_listen: self.ops_listen,
                data_dir: self.data_dir.clone(),
            },
        )
    }
}
