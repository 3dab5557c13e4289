//! Gateway configuration. Sources, lowest to highest precedence: built-in defaults, environment
//! (`ORG_GATEWAY_*`, nested keys joined by `__`), the TOML config file, command-line flags.
//! `config/gateway.toml` documents every key with its default.

use crate::domain::ShardId;
use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// A secret from the configuration: serialized as is, never shown by `Debug`.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// The secret itself.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Whether none is set.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_empty() {
            "\"\""
        } else {
            "<redacted>"
        })
    }
}

impl From<&str> for Secret {
    fn from(s: &str) -> Self {
        Self(s.to_owned())
    }
}

/// A MongoDB connection string: used as is, shown (`Debug`, logs, operator API) only with its
/// password redacted.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ConnectionUri(String);

impl std::ops::Deref for ConnectionUri {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for ConnectionUri {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", redact_uri(&self.0))
    }
}

impl From<&str> for ConnectionUri {
    fn from(s: &str) -> Self {
        Self(s.to_owned())
    }
}

impl From<String> for ConnectionUri {
    fn from(s: String) -> Self {
        Self(s)
    }
}

/// The whole configuration.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Address of the public API listener.
    pub listen: SocketAddr,
    /// Address of the operator listener (health, readiness, metrics, operator routes).
    pub ops_listen: SocketAddr,
    /// Directory holding the catalog, the embedded store and the generated signing key.
    pub data_dir: PathBuf,
    /// Worker threads per listener.
    pub threads: usize,
    /// Largest request body accepted, in bytes (larger: 413).
    pub max_body_bytes: usize,
    /// Time allowed per request before it is answered with 503.
    pub request_timeout_ms: u64,
    /// On SIGTERM/SIGINT, how long in-flight requests get to finish.
    pub shutdown_grace_seconds: u64,
    /// JWT and password hashing.
    pub auth: AuthConfig,
    /// The tenant metadata cache.
    pub cache: CacheConfig,
    /// Logging.
    pub log: LogConfig,
    /// Where the catalog lives.
    pub catalog: CatalogConfig,
    /// Operator API settings.
    pub ops: OpsConfig,
    /// Rate limits, login throttling and quotas.
    pub limits: crate::limits::LimitsConfig,
    /// Several instances on one catalog: registry lease, degraded-feed cache TTL.
    pub fleet: crate::fleet::FleetConfig,
    /// Online tenant moves: concurrency, write pause, copy rate, source grace period.
    pub moves: crate::movers::moves::MovesConfig,
    /// Tenant data API bounds.
    pub data: DataConfig,
    /// Tenant lifecycle: audit event retention.
    pub lifecycle: LifecycleConfig,
    /// Shards tenants are placed on. Empty means one embedded shard `local` in the data dir.
    pub shards: Vec<ShardConfig>,
}

/// Bounds of the tenant data API (`[data]`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DataConfig {
    /// Largest stored document, in bytes of JSON.
    pub max_document_bytes: usize,
    /// Documents per bulk insert.
    pub max_batch: usize,
    /// Page size when a query names none.
    pub default_limit: u64,
    /// Largest page size.
    pub max_limit: u64,
    /// Deepest nesting of filter operators.
    pub max_filter_depth: usize,
    /// Most nodes in one filter.
    pub max_filter_nodes: usize,
    /// Longest `$in` / `$nin` list.
    pub max_in_len: usize,
    /// Most documents a sorted query (any order but `_id` order) may span: `skip + limit`.
    /// The embedded store keeps that many sort positions in a heap; MongoDB sorts that many
    /// in memory and refuses past its own limit (100 MB), which 10,000 documents of 10 KB
    /// reach. Beyond it, 400 `sort_window_exceeded` on both backends: page with cursors.
    pub max_sort_window: u64,
    /// Most indexes a tenant may declare on its collection, besides `_id`.
    pub max_indexes_per_collection: usize,
}

impl Default for DataConfig {
    fn default() -> Self {
        Self {
            max_document_bytes: 1024 * 1024,
            max_batch: 1000,
            default_limit: 100,
            max_limit: 1000,
            max_filter_depth: 8,
            max_filter_nodes: 256,
            max_in_len: 1000,
            max_sort_window: 10_000,
            max_indexes_per_collection: 16,
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8080".parse().expect("static address"),
            ops_listen: "127.0.0.1:9090".parse().expect("static address"),
            data_dir: PathBuf::from("data"),
            threads: 2,
            max_body_bytes: 1024 * 1024,
            request_timeout_ms: 10_000,
            shutdown_grace_seconds: 3,
            auth: AuthConfig::default(),
            cache: CacheConfig::default(),
            log: LogConfig::default(),
            catalog: CatalogConfig::default(),
            ops: OpsConfig::default(),
            limits: crate::limits::LimitsConfig::default(),
            fleet: crate::fleet::FleetConfig::default(),
            moves: crate::movers::moves::MovesConfig::default(),
            data: DataConfig::default(),
            lifecycle: LifecycleConfig::default(),
            shards: Vec::new(),
        }
    }
}

/// JWT signing and password hashing settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// HS256 signing secret: the key is the UTF-8 bytes of this text as written (at least 32
    /// characters; `org-gateway keys generate` prints one). Empty: generated on first start
    /// and kept in `<data_dir>/jwt_secret` with mode 0600, in the same format.
    pub jwt_secret: Secret,
    /// Key id written to the JWT header.
    pub jwt_kid: String,
    /// Keys being rotated out: tokens they signed still verify (by `kid`); new tokens use
    /// `jwt_secret`. Drop an entry once its tokens have expired.
    pub verification_keys: Vec<VerificationKey>,
    /// `iss` claim issued and required.
    pub issuer: String,
    /// `aud` claim issued and required.
    pub audience: String,
    /// Token lifetime.
    pub token_ttl_seconds: u64,
    /// Clock skew tolerated on exp/nbf.
    pub leeway_seconds: u64,
    /// argon2 hashing threads; each holds one scratch buffer of `argon2_memory_kib`.
    pub hash_concurrency: usize,
    /// Most jobs allowed to wait for a thread, per lane (password checks, served first; new
    /// hashes); beyond that, 503 at once.
    pub hash_queue_limit: usize,
    /// Longest queueing a lane admits: it holds as many jobs as the threads hash in this time
    /// at the measured hash time (at least one per thread, at most `hash_queue_limit`).
    /// 0 admits up to `hash_queue_limit` whatever the hash time.
    pub hash_queue_wait_ms: u64,
    /// Niceness of the hashing threads (0-19) relative to the request path, so that hashing at
    /// full tilt (a create flood) takes only what requests leave of the CPU; 0 runs them as
    /// equals (e.g. when other busy processes share the host and hashing must not yield).
    pub hash_thread_niceness: u8,
    /// Recently verified credentials remembered (as keyed MACs, never the password), so a
    /// login with the same password as a recent create or login costs no second hash. 0: none.
    pub credential_cache_entries: u64,
    /// How long a verified credential is remembered.
    pub credential_cache_seconds: u64,
    /// argon2id memory cost in KiB (OWASP minimum 19456).
    pub argon2_memory_kib: u32,
    /// argon2id iterations (OWASP minimum 2).
    pub argon2_iterations: u32,
    /// argon2id lanes.
    pub argon2_parallelism: u32,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            jwt_secret: Secret::default(),
            jwt_kid: "k1".into(),
            verification_keys: Vec::new(),
            issuer: "org-gateway".into(),
            audience: "org-gateway".into(),
            token_ttl_seconds: 3600,
            leeway_seconds: 5,
            hash_concurrency: 2,
            hash_queue_limit: 256,
            hash_queue_wait_ms: 5_000,
            hash_thread_niceness: 10,
            credential_cache_entries: 10_000,
            credential_cache_seconds: 1_200,
            argon2_memory_kib: 19_456,
            argon2_iterations: 2,
            argon2_parallelism: 1,
        }
    }
}

/// A verification-only JWT key.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VerificationKey {
    /// The `kid` tokens signed with it carry.
    pub kid: String,
    /// The HS256 secret, in the same format as `jwt_secret`.
    pub secret: Secret,
}

/// Tenant metadata cache (moka).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CacheConfig {
    /// Entries expire this long after being loaded.
    pub ttl_seconds: u64,
    /// Upper bound on cached tenants.
    pub max_entries: u64,
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self {
            ttl_seconds: 300,
            max_entries: 100_000,
        }
    }
}

/// Log output.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// A tracing filter such as `info` or `org_gateway=debug`; `RUST_LOG` overrides it.
    pub level: String,
    /// `text` or `json`.
    pub format: LogFormat,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            level: "info".into(),
            format: LogFormat::Text,
        }
    }
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Where the catalog (orgs, admins, placements) lives.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CatalogConfig {
    /// `embedded` (a file in the data dir) or `mongodb`.
    pub kind: StoreKind,
    /// MongoDB URI when `kind = "mongodb"`.
    pub uri: Option<ConnectionUri>,
    /// MongoDB database holding the catalog.
    pub database: String,
    /// With a shared (MongoDB) catalog, other instances may be mid-way through a create,
    /// rename or delete: interrupted operations are only finished once untouched this long.
    /// (The embedded catalog belongs to one process, which resumes everything at start.)
    pub recovery_grace_seconds: u64,
}

impl Default for CatalogConfig {
    fn default() -> Self {
        Self {
            kind: StoreKind::Embedded,
            uri: None,
            database: "org_gateway_catalog".into(),
            recovery_grace_seconds: 60,
        }
    }
}

/// Operator API settings.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OpsConfig {
    /// Bearer token required on `/ops/*` routes. Empty: operator routes are disabled (403).
    pub token: Secret,
    /// Optional bearer token for `/metrics`; empty means unauthenticated.
    pub metrics_token: Secret,
}

/// Tenant lifecycle settings (`[lifecycle]`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LifecycleConfig {
    /// Days audit events are kept; older ones are removed by a background sweep.
    pub event_retention_days: u32,
    /// Days a deleted organization (data, admins) is kept for restore before the sweeper
    /// purges it. Fractions are allowed (0.5 is twelve hours).
    pub retention_days: f64,
    /// Seconds between two runs of the sweeper that purges deleted organizations past their
    /// retention.
    pub purge_interval_seconds: f64,
    /// Seconds between two write marks of one organization by one instance (what
    /// `backup --since` reads): each instance records at most one catalog write per
    /// organization per interval, and `--since T` includes organizations marked at or after
    /// `T` minus this interval.
    pub write_mark_interval_seconds: f64,
    /// On a MongoDB catalog, also keep a TTL index on the audit events' time, so the server
    /// removes them past `event_retention_days` as well. Turn it off on servers whose TTL
    /// monitor is costly (SecantusDB scans each collection with one in full under its global
    /// lock every minute); the gateway's own purge removes them either way.
    pub event_ttl_index: bool,
}

impl Default for LifecycleConfig {
    fn default() -> Self {
        Self {
            event_retention_days: 90,
            retention_days: 30.0,
            purge_interval_seconds: 60.0,
            write_mark_interval_seconds: 60.0,
            event_ttl_index: true,
        }
    }
}

impl LifecycleConfig {
    /// How long a deleted organization is kept.
    pub fn retention(&self) -> std::time::Duration {
        std::time::Duration::from_secs_f64(self.retention_days * 86_400.0)
    }

    /// How often the purge sweeper runs.
    pub fn purge_interval(&self) -> std::time::Duration {
        std::time::Duration::from_secs_f64(self.purge_interval_seconds)
    }

    /// Time between two write marks of one organization by one instance.
    pub fn write_mark_interval(&self) -> std::time::Duration {
        std::time::Duration::from_secs_f64(self.write_mark_interval_seconds)
    }
}

/// Backend kind of a shard or of the catalog.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StoreKind {
    /// The built-in durable store (redb).
    Embedded,
    /// A MongoDB deployment.
    Mongodb,
}

/// Whether new organizations may be placed on a shard.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ShardState {
    /// Accepts new organizations.
    Active,
    /// Serves its tenants but receives no new ones (set in the configuration, or by
    /// `POST /ops/shards/{id}/drain`, which also moves its tenants away).
    Draining,
    /// Drained: every tenant moved away (reported by `/ops/shards`, never configured).
    Drained,
}

/// One shard: a MongoDB deployment or an embedded store file.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShardConfig {
    /// Unique id, referenced by placements.
    pub id: ShardId,
    /// Backend kind.
    pub kind: StoreKind,
    /// MongoDB connection string (kind = mongodb).
    #[serde(default)]
    pub uri: Option<ConnectionUri>,
    /// Store file (kind = embedded); relative paths are under the data dir.
    #[serde(default)]
    pub path: Option<PathBuf>,
    /// Connection pool maximum.
    #[serde(default = "defaults::max_pool_size")]
    pub max_pool_size: u32,
    /// Connection pool minimum.
    #[serde(default = "defaults::min_pool_size")]
    pub min_pool_size: u32,
    /// Idle connections are closed after this long.
    #[serde(default = "defaults::max_idle_time_ms")]
    pub max_idle_time_ms: u64,
    /// How long to look for a usable server before failing a request (503).
    #[serde(default = "defaults::server_selection_timeout_ms")]
    pub server_selection_timeout_ms: u64,
    /// `primary`, `primaryPreferred`, `secondary`, `secondaryPreferred`, `nearest`.
    #[serde(default = "defaults::read_preference")]
    pub read_preference: String,
    /// Write concern `w`: `majority` or a number.
    #[serde(default = "defaults::write_concern")]
    pub write_concern: String,
    /// Wait for the journal on writes.
    #[serde(default = "defaults::journal")]
    pub journal: bool,
    /// Databases on this shard are named `<prefix>_<n>`.
    #[serde(default = "defaults::database_prefix")]
    pub database_prefix: String,
    /// Tenant collections per database.
    #[serde(default = "defaults::max_collections")]
    pub max_collections_per_database: u32,
    /// Share of the maximum at which a database is reported `alert`.
    #[serde(default = "defaults::alert_ratio")]
    pub alert_ratio: f64,
    /// Share of the maximum at which new organizations go to the next database.
    #[serde(default = "defaults::split_ratio")]
    pub split_ratio: f64,
    /// Relative share of new organizations (rendezvous weight).
    #[serde(default = "defaults::weight")]
    pub weight: f64,
    /// Optional region; a create request may ask for one.
    #[serde(default)]
    pub region: Option<String>,
    /// `active` or `draining`.
    #[serde(default = "defaults::state")]
    pub state: ShardState,
}

mod defaults {
    use super::ShardState;
    pub fn max_pool_size() -> u32 {
        100
    }
    pub fn min_pool_size() -> u32 {
        10
    }
    pub fn max_idle_time_ms() -> u64 {
        30_000
    }
    pub fn server_selection_timeout_ms() -> u64 {
        2_000
    }
    pub fn read_preference() -> String {
        "primaryPreferred".into()
    }
    pub fn write_concern() -> String {
        "majority".into()
    }
    pub fn journal() -> bool {
        true
    }
    pub fn database_prefix() -> String {
        "db".into()
    }
    pub fn max_collections() -> u32 {
        10_000
    }
    pub fn alert_ratio() -> f64 {
        0.8
    }
    pub fn split_ratio() -> f64 {
        0.9
    }
    pub fn weight() -> f64 {
        1.0
    }
    pub fn state() -> ShardState {
        ShardState::Active
    }
}

impl ShardConfig {
    /// The default shard: embedded store `local` in the data dir.
    pub fn local_embedded() -> Self {
        Self {
            id: ShardId::parse("local").expect("static id"),
            kind: StoreKind::Embedded,
            uri: None,
            path: Some(PathBuf::from("shards/local.redb")),
            max_pool_size: defaults::max_pool_size(),
            min_pool_size: defaults::min_pool_size(),
            max_idle_time_ms: defaults::max_idle_time_ms(),
            server_selection_timeout_ms: defaults::server_selection_timeout_ms(),
            read_preference: defaults::read_preference(),
            write_concern: defaults::write_concern(),
            journal: defaults::journal(),
            database_prefix: defaults::database_prefix(),
            max_collections_per_database: defaults::max_collections(),
            alert_ratio: defaults::alert_ratio(),
            split_ratio: defaults::split_ratio(),
            weight: defaults::weight(),
            region: None,
            state: ShardState::Active,
        }
    }

    /// Checks values the type system does not.
    pub fn validate(&self) -> Result<(), String> {
        let id = &self.id;
        match self.kind {
            StoreKind::Mongodb if self.uri.is_none() => {
                return Err(format!("shard {id}: kind = \"mongodb\" needs a uri"))
            }
            StoreKind::Embedded if self.path.is_none() => {
                return Err(format!("shard {id}: kind = \"embedded\" needs a path"))
            }
            _ => {}
        }
        let prefix_ok = (1..=20).contains(&self.database_prefix.len())
            && self
                .database_prefix
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !prefix_ok {
            return Err(format!(
                "shard {id}: database_prefix must be 1 to 20 of a-z, A-Z, 0-9, '_'"
            ));
        }
        if self.max_collections_per_database == 0 {
            return Err(format!(
                "shard {id}: max_collections_per_database must be > 0"
            ));
        }
        if !(0.0 < self.alert_ratio
            && self.alert_ratio <= self.split_ratio
            && self.split_ratio <= 1.0)
        {
            return Err(format!(
                "shard {id}: need 0 < alert_ratio <= split_ratio <= 1"
            ));
        }
        if !(self.weight > 0.0 && self.weight.is_finite()) {
            return Err(format!("shard {id}: weight must be a positive number"));
        }
        if self.min_pool_size > self.max_pool_size {
            return Err(format!("shard {id}: min_pool_size > max_pool_size"));
        }
        Ok(())
    }
}

/// Values given on the command line; `None` leaves lower layers in charge.
#[derive(Debug, Default, Serialize)]
pub struct Overrides {
    /// `--listen`
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<SocketAddr>,
    /// `--ops-listen`
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ops_listen: Option<SocketAddr>,
    /// `--data-dir`
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data_dir: Option<PathBuf>,
}

impl Config {
    /// Builds the configuration from all layers and validates it.
    pub fn load(file: Option<&Path>, overrides: Overrides) -> Result<Self, String> {
        let mut fig = Figment::from(Serialized::defaults(Config::default()))
            .merge(Env::prefixed("ORG_GATEWAY_").split("__"));
        if let Some(path) = file {
            if !path.exists() {
                return Err(format!("config file {} does not exist", path.display()));
            }
            fig = fig.merge(Toml::file(path));
        }
        let config: Config = fig
            .merge(Serialized::defaults(overrides))
            .extract()
            .map_err(|e| format!("invalid configuration: {e}"))?;
        config.validate()?;
        Ok(config)
    }

    /// Checks cross-field rules.
    pub fn validate(&self) -> Result<(), String> {
        // Both listeners on one port (or one on every address of it) would each take a share
        // of the connections: public requests would land on the operator routes and back.
        let (l, o) = (self.listen, self.ops_listen);
        if l.port() == o.port()
            && l.port() != 0
            && (l.ip() == o.ip() || l.ip().is_unspecified() || o.ip().is_unspecified())
        {
            return Err(format!(
                "listen ({l}) and ops_listen ({o}) overlap: give the operator listener a port of its own"
            ));
        }
        if self.max_body_bytes == 0 || self.threads == 0 || self.auth.hash_concurrency == 0 {
            return Err("max_body_bytes, threads and auth.hash_concurrency must be > 0".into());
        }
        if self.auth.hash_thread_niceness > 19 {
            return Err("auth.hash_thread_niceness must be between 0 and 19".into());
        }
        if self.auth.argon2_memory_kib < 19_456 || self.auth.argon2_iterations < 2 {
            return Err(
                "auth.argon2_memory_kib must be >= 19456 and auth.argon2_iterations >= 2 (OWASP)"
                    .into(),
            );
        }
        if !self.auth.jwt_secret.is_empty() {
            crate::auth::jwt::check_secret("auth.jwt_secret", self.auth.jwt_secret.expose())?;
        }
        let l = &self.limits;
        if l.requests_per_minute == 0
            || l.requests_per_hour == 0
            || l.login_failures_per_minute == 0
        {
            return Err("limits.requests_per_minute, requests_per_hour and login_failures_per_minute must be > 0".into());
        }
        self.limits.validate()?;
        if !(1..=36_500).contains(&self.lifecycle.event_retention_days) {
            return Err("lifecycle.event_retention_days must be 1 to 36500".into());
        }
        let lc = &self.lifecycle;
        if !(lc.retention_days.is_finite()
            && lc.retention_days > 0.0
            && lc.retention_days <= 36_500.0)
        {
            return Err("lifecycle.retention_days must be > 0 and at most 36500".into());
        }
        if !(lc.purge_interval_seconds.is_finite()
            && (0.05..=86_400.0).contains(&lc.purge_interval_seconds))
        {
            return Err("lifecycle.purge_interval_seconds must be 0.05 to 86400".into());
        }
        if !(lc.write_mark_interval_seconds.is_finite()
            && (0.05..=3_600.0).contains(&lc.write_mark_interval_seconds))
        {
            return Err("lifecycle.write_mark_interval_seconds must be 0.05 to 3600".into());
        }
        self.moves.validate()?;
        let d = &self.data;
        if d.max_batch == 0 || d.default_limit == 0 || d.default_limit > d.max_limit {
            return Err(
                "data.max_batch must be > 0 and 0 < data.default_limit <= data.max_limit".into(),
            );
        }
        if d.max_sort_window < d.max_limit {
            return Err("data.max_sort_window must be >= data.max_limit".into());
        }
        if self.catalog.kind == StoreKind::Mongodb && self.catalog.uri.is_none() {
            return Err("catalog.kind = \"mongodb\" needs catalog.uri".into());
        }
        let mut seen = std::collections::HashSet::new();
        for shard in &self.shards {
            shard.validate()?;
            if !seen.insert(shard.id.clone()) {
                return Err(format!("shard id {} appears twice", shard.id));
            }
        }
        Ok(())
    }

    /// The configured shards, or the default embedded shard when none are configured.
    pub fn effective_shards(&self) -> Vec<ShardConfig> {
        if self.shards.is_empty() {
            vec![ShardConfig::local_embedded()]
        } else {
            self.shards.clone()
        }
    }
}

/// Replaces the password in a connection string's userinfo with `***`, so URIs can be logged
/// and shown to operators.
pub fn redact_uri(uri: &str) -> String {
    let Some(scheme_end) = uri.find("://") else {
        return uri.to_owned();
    };
    let rest = &uri[scheme_end + 3..];
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let authority = &rest[..authority_end];
    match authority.rfind('@') {
        Some(at) => {
            let user = authority[..at].split(':').next().unwrap_or("");
            format!("{}://{}:***@{}", &uri[..scheme_end], user, &rest[at + 1..])
        }
        None => uri.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_credentials() {
        assert_eq!(
            redact_uri("mongodb://u:p%40ss@h:27017/db?x=1"),
            "mongodb://u:***@h:27017/db?x=1"
        );
        assert_eq!(redact_uri("mongodb://h:1"), "mongodb://h:1");
    }

    #[test]
    fn listeners_on_one_port_are_refused() {
        let on = |listen: &str, ops: &str| Config {
            listen: listen.parse().unwrap(),
            ops_listen: ops.parse().unwrap(),
            ..Config::default()
        };
        for (listen, ops) in [
            ("127.0.0.1:8080", "127.0.0.1:8080"),
            ("0.0.0.0:8080", "127.0.0.1:8080"),
            ("127.0.0.1:8080", "[::]:8080"),
        ] {
            let e = on(listen, ops).validate().unwrap_err();
            assert!(e.contains("overlap"), "{listen} {ops}: {e}");
        }
        on("127.0.0.1:8080", "127.0.0.1:9090").validate().unwrap();
        on("127.0.0.1:8080", "127.0.0.2:8080").validate().unwrap();
    }

    #[test]
    fn defaults_validate() {
        Config::default().validate().unwrap();
        assert_eq!(Config::default().effective_shards().len(), 1);
    }

    #[test]
    fn documented_config_file_matches_the_defaults() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/gateway.toml");
        let from_file: Config = Figment::from(Toml::file(&path)).extract().unwrap();
        assert_eq!(
            serde_json::to_value(&from_file).unwrap(),
            serde_json::to_value(Config::default()).unwrap()
        );
        let multi = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/multi-shard.toml");
        let multi: Config = Figment::from(Serialized::defaults(Config::default()))
            .merge(Toml::file(&multi))
            .extract()
            .unwrap();
        multi.validate().unwrap();
        assert_eq!(multi.shards.len(), 3);
    }

    #[test]
    fn flags_beat_file_beats_env_beats_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("gateway.toml");
        std::fs::write(&file, "max_body_bytes = 222\ndata_dir = \"from-file\"\n").unwrap();
        // Keys unique to this test, so parallel tests do not see them.
        std::env::set_var("ORG_GATEWAY_MAX_BODY_BYTES", "111");
        std::env::set_var("ORG_GATEWAY_REQUEST_TIMEOUT_MS", "333");
        std::env::set_var("ORG_GATEWAY_AUTH__TOKEN_TTL_SECONDS", "444");
        let c = Config::load(
            Some(&file),
            Overrides {
                data_dir: Some(PathBuf::from("from-flag")),
                ..Overrides::default()
            },
        )
        .unwrap();
        for k in [
            "ORG_GATEWAY_MAX_BODY_BYTES",
            "ORG_GATEWAY_REQUEST_TIMEOUT_MS",
            "ORG_GATEWAY_AUTH__TOKEN_TTL_SECONDS",
        ] {
            std::env::remove_var(k);
        }
        assert_eq!(c.max_body_bytes, 222, "file beats env");
        assert_eq!(c.request_timeout_ms, 333, "env beats default");
        assert_eq!(c.auth.token_ttl_seconds, 444, "nested env keys");
        assert_eq!(c.data_dir, PathBuf::from("from-flag"), "flag beats file");
        assert_eq!(c.threads, 2, "default");
        assert!(Config::load(Some(Path::new("/nonexistent.toml")), Overrides::default()).is_err());
    }

    #[test]
    fn secrets_do_not_show_in_debug_output() {
        let mut c = Config::default();
        c.auth.jwt_secret = Secret::from("a-very-secret-signing-key-of-32-bytes!");
        c.ops.token = Secret::from("operator-token-value");
        c.catalog.uri = Some("mongodb://user:db-password@h:1/".into());
        let shown = format!("{c:?}");
        assert!(!shown.contains("db-password"), "{shown}");
        assert!(!shown.contains("a-very-secret") && !shown.contains("operator-token-value"));
    }

    #[test]
    fn trusted_proxies_are_cidr_networks() {
        let parse = |toml: &str| {
            Figment::from(Serialized::defaults(Config::default()))
                .merge(Toml::string(toml))
                .extract::<Config>()
                .ok()
        };
        let c = parse("[limits]\ntrusted_proxies = [\"10.0.0.0/8\", \"::1\"]\n").unwrap();
        let shown: Vec<String> = c
            .limits
            .trusted_proxies
            .iter()
            .map(|c| c.to_string())
            .collect();
        assert_eq!(shown, ["10.0.0.0/8", "::1/128"]);
        assert!(parse("[limits]\ntrusted_proxies = [\"10.0.0.1/8\"]\n").is_none());
        assert!(parse("[limits]\ntrusted_proxies = [\"proxy.example\"]\n").is_none());
        let mut zero = Config::default();
        zero.limits.creates_per_minute_per_address = 0;
        assert!(zero.validate().is_err());
    }

    #[test]
    fn short_secret_refused() {
        let mut c = Config::default();
        c.auth.jwt_secret = Secret::from("short");
        assert!(c.validate().is_err());
    }
}
