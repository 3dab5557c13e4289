//! Command line: `org-gateway serve [--config FILE] [--listen ADDR] [--ops-listen ADDR]
//! [--data-dir DIR]`, `org-gateway bench [--base-url URL] [--scenario ...] ...` and
//! `org-gateway keys generate`.

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
    /// Manage JWT signing secrets.
    #[command(subcommand)]
    Keys(KeysCommand),
}

/// Subcommands of `keys`.
#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Print a new signing secret (64 hex characters, 256 random bits) on one line.
    #[command(long_about = KEYS_GENERATE_HELP)]
    Generate,
}

const KEYS_GENERATE_HELP: &str = "\
Print a new JWT signing secret on stdout: 64 lowercase hex characters (256 random bits
from the operating system), one line, nothing else.

The signing key is the secret's text exactly as written, the same format as the file
<data_dir>/jwt_secret, so the printed line can be used as is wherever a secret goes.

One secret for several instances: run this once and give every instance behind the load
balancer the printed secret as auth.jwt_secret in its config file (or in the environment
variable ORG_GATEWAY_AUTH__JWT_SECRET):
    [auth]
    jwt_secret = \"<printed secret>\"

Rotation: generate a new secret, and on every instance make it auth.jwt_secret under a new
auth.jwt_kid, keeping the previous secret and kid under auth.verification_keys:
    [auth]
    jwt_secret = \"<new secret>\"
    jwt_kid = \"k2\"
    verification_keys = [{ kid = \"k1\", secret = \"<previous secret>\" }]
Tokens name their key by kid, so those signed with the previous secret keep verifying while
new ones are signed with the new secret. Once the old tokens have expired
(auth.token_ttl_seconds after the last instance switched), remove the verification_keys
entry and restart the instances.";

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
