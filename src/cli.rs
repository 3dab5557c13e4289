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
    /// Write every tenant collection and the catalog into a directory in mongodump's layout.
    #[command(long_about = BACKUP_HELP)]
    Backup(BackupArgs),
    /// Load a backup into a gateway's catalog and shards.
    #[command(long_about = RESTORE_HELP)]
    Restore(RestoreArgs),
}

const BACKUP_HELP: &str = "\
Write every organization's collection on every shard (embedded ones included) and the
catalog's records of them into a new directory in mongodump's layout:
<DIR>/<database>/<collection>.bson and .metadata.json (the indexes), the catalog in
<DIR>/org_gateway_backup_catalog/ (organizations, admins with their password hashes, rate-limit
overrides, audit events), and manifest.json last. It is built as <DIR>.partial and renamed once complete.

The directory holds password hashes: keep it as secret as the catalog (it is created
readable by its owner only). To load only tenant data with mongorestore, leave the catalog
out: --nsExclude 'org_gateway_backup_catalog.*'.

With an embedded catalog or embedded shards, stop the gateway first (the files are locked).
With the catalog and shards on MongoDB it runs online; each collection is read in _id order
while writes go on, so a backup is consistent per collection, not a point in time across
organizations.

--since T (RFC 3339) keeps only organizations written at or after T, as recorded by the
gateways' write marks (reaching back lifecycle.write_mark_interval_seconds plus
request_timeout_ms, so writes in flight at T are covered); pass the started_at of the
previous backup's manifest.";

const RESTORE_HELP: &str = "\
Load a backup written by `org-gateway backup` into the catalog and shards of the gateway
described by --config, organization by organization: same ids, admins and password hashes
(logins keep working), documents and indexes. An organization goes back on its shard and
database when that shard is configured, else where the placement policy puts a new one.

An organization whose name, id, admin id or admin email is taken in the target catalog, or
whose collection exists on the target shard, is refused with a message naming it and nothing
of it is written; the others are restored, and the exit status is non-zero.

Incremental backups (--since) hold complete copies of the organizations written since: to
rebuild from a full backup and incrementals, restore the newest first, then each older one
with --skip-existing (organizations already restored are skipped, not refused).";

/// Flags of `backup`.
#[derive(Debug, clap::Args)]
pub struct BackupArgs {
    /// The gateway's TOML config file (catalog, shards, data dir).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Data directory, if not the config's.
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Directory to create for the backup (must not exist).
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// Back up only this organization.
    #[arg(long, value_name = "NAME")]
    pub organization: Option<String>,
    /// Only organizations written since this time (RFC 3339, e.g. 2026-01-31T12:00:00Z).
    #[arg(long, value_name = "TIMESTAMP", value_parser = parse_timestamp)]
    pub since: Option<chrono::DateTime<chrono::Utc>>,
}

/// Flags of `restore`.
#[derive(Debug, clap::Args)]
pub struct RestoreArgs {
    /// The gateway's TOML config file (catalog, shards, data dir).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Data directory, if not the config's.
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// The backup directory.
    #[arg(long, value_name = "DIR")]
    pub from: PathBuf,
    /// Restore only this organization.
    #[arg(long, value_name = "NAME")]
    pub organization: Option<String>,
    /// Skip organizations whose id the target already has, instead of refusing them (restore
    /// the newest incremental backup first, then older ones and the full one).
    #[arg(long)]
    pub skip_existing: bool,
}

fn parse_timestamp(raw: &str) -> Result<chrono::DateTime<chrono::Utc>, String> {
    chrono::DateTime::parse_from_rfc3339(raw)
        .map(|t| t.with_timezone(&chrono::Utc))
        .map_err(|e| format!("{e}: expected RFC 3339, e.g. 2026-01-31T12:00:00Z"))
}

/// The configuration of a command that works on a gateway's data offline.
pub fn tool_config(
    file: Option<&std::path::Path>,
    data_dir: Option<PathBuf>,
) -> Result<Config, String> {
    Config::load(
        file,
        Overrides {
            listen: None,
            ops_listen: None,
            data_dir,
        },
    )
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
