//! The MongoDB backend: each tenant collection is a MongoDB collection on the shard's
//! deployment. Documents keep their string `_id` (never an ObjectId) and are converted between
//! JSON and BSON so that a round trip returns the same JSON (integers stay integers).
//!
//! Updates are computed by the gateway with the shared update code and written with a
//! compare-and-set on the whole document, retried when another write got in between, so they
//! are atomic without a transaction (see `update_by_id`).
//!
//! The client connects lazily: opening a store never waits for the server, so a shard that is
//! down at startup only makes its own tenants' requests fail with [`StoreError::Unavailable`].
//!
//! The helpers shared with the MongoDB catalog (client options, error classification, credential
//! scrubbing, JSON <-> BSON) live here too.

use super::query::{Filter, QueryError, Update};
use super::{
    Document, Explain, FindQuery, Found, IndexInfo, IndexSpec, IndexState, Namespace, StoreError,
    StoreResult, TenantStore,
};
use crate::config::ShardConfig;
use crate::domain::{DatabaseName, IndexName, ShardId, ID_INDEX_NAME};
use async_trait::async_trait;
use bson::{doc, Bson};
use futures_util::TryStreamExt;
use mongodb::error::{Error as MongoError, ErrorKind, WriteFailure};
use mongodb::options::{
    Acknowledgment, ClientOptions, ConnectionString, IndexOptions, ReadPreference,
    SelectionCriteria, WriteConcern,
};
use mongodb::{Client, Collection, IndexModel};
use serde_json::{json, Value};
use std::future::Future;
use std::time::Duration;
use tokio::sync::OnceCell;

/// Documents copied per batch when `renameCollection` is not available.
const COPY_BATCH: usize = 500;

/// Server error codes that mean "the deployment cannot serve this right now": the request may
/// succeed later or on another node, so clients get 503.
const UNAVAILABLE_CODES: &[i32] = &[
    6,     // HostUnreachable
    7,     // HostNotFound
    50,    // MaxTimeMSExpired
    64,    // WriteConcernFailed (wtimeout)
    89,    // NetworkTimeout
    91,    // ShutdownInProgress
    133,   // FailedToSatisfyReadPreference
    189,   // PrimarySteppedDown
    262,   // ExceededTimeLimit
    9001,  // SocketException
    10107, // NotWritablePrimary
    11600, // InterruptedAtShutdown
    11602, // InterruptedDueToReplStateChange
    13435, // NotPrimaryNoSecondaryOk
    13436, // NotPrimaryOrSecondary
];

/// Duplicate key.
pub(crate) const DUPLICATE_KEY: i32 = 11000;
/// No index of that name.
const INDEX_NOT_FOUND: i32 = 27;
/// An index with these keys or this name exists with other options.
const INDEX_CONFLICT_CODES: &[i32] = &[85, 86];
/// A document has arrays at two fields of a compound index.
const PARALLEL_ARRAYS: i32 = 171;

/// The index and key a duplicate-key message names (`... index: NAME dup key: { ... }`),
/// when it names an index other than `_id_`.
fn duplicate_index(message: &str) -> Option<(String, String)> {
    let rest = &message[message.find("index: ")? + "index: ".len()..];
    let end = rest.find(" dup key")?;
    let name = rest[..end].trim();
    if name == ID_INDEX_NAME || name.is_empty() {
        return None;
    }
    let key = rest[end..]
        .trim_start_matches(" dup key")
        .trim_start_matches(':')
        .trim();
    Some((
        super::query::clip(name).into_owned(),
        super::query::clip(key).into_owned(),
    ))
}
/// `create` on an existing collection (older servers), `renameCollection` onto an existing one.
const NAMESPACE_EXISTS: i32 = 48;
/// The collection does not exist.
const NAMESPACE_NOT_FOUND: i32 = 26;
/// Codes with which a server refuses an in-memory sort over its memory limit.
const SORT_MEMORY_CODES: &[i32] = &[
    292,   // QueryExceededMemoryLimitNoDiskUseAllowed (4.4+)
    16819, // "Sort exceeded memory limit" (before 4.4)
    16820, // the same, with a different buffer
];
/// Codes with which a server refuses a command it does not implement or allow.
const UNSUPPORTED_CODES: &[i32] = &[
    20,  // IllegalOperation
    59,  // CommandNotFound
    115, // CommandNotSupported
];

// ---------------------------------------------------------------------------------------------
// Errors

/// How a driver error should be reported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Failure {
    /// Server selection, connection, network or timeout trouble.
    Unavailable(String),
    /// A unique index rejected a write; `index` is the failed write's position in a batch.
    Duplicate {
        /// Position of the failed write in an `insert_many` batch, when known.
        index: Option<usize>,
        /// The server's message (names the index).
        message: String,
    },
    /// Anything else, with its server code if any.
    Other {
        /// Server error code, if the server answered.
        code: Option<i32>,
        /// Description.
        message: String,
    },
}

impl Failure {
    /// The server's error code, if it answered with one.
    pub(crate) fn code(&self) -> Option<i32> {
        match self {
            Failure::Duplicate { .. } => Some(DUPLICATE_KEY),
            Failure::Other { code, .. } => *code,
            Failure::Unavailable(_) => None,
        }
    }

    /// The description.
    pub(crate) fn message(&self) -> &str {
        match self {
            Failure::Unavailable(m) | Failure::Duplicate { message: m, .. } => m,
            Failure::Other { message, .. } => message,
        }
    }
}

/// Credentials in a connection string, to be scrubbed from any message derived from it.
#[derive(Clone, Default)]
pub(crate) struct Secrets(Vec<String>);

impl Secrets {
    /// The password in `uri`'s userinfo, raw and percent-decoded.
    pub(crate) fn of_uri(uri: &str) -> Self {
        let mut out = Vec::new();
        if let Some(scheme_end) = uri.find("://") {
            let rest = &uri[scheme_end + 3..];
            let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
            let authority = &rest[..authority_end];
            if let Some((_, password)) = authority
                .rfind('@')
                .and_then(|at| authority[..at].split_once(':'))
            {
                out.push(password.to_owned());
                out.push(percent_decode(password));
            }
        }
        out.retain(|s| !s.is_empty());
        // Longest first, so a shorter form inside a longer one does not break its match.
        out.sort_by_key(|s| std::cmp::Reverse(s.len()));
        out.dedup();
        Self(out)
    }

    /// `message` with every credential replaced by `***`.
    pub(crate) fn scrub(&self, message: impl Into<String>) -> String {
        let mut message = message.into();
        for secret in &self.0 {
            if message.contains(secret.as_str()) {
                message = message.replace(secret.as_str(), "***");
            }
        }
        message
    }
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let Some(b) = s
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
            {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Whether the server refused an in-memory sort over its memory limit.
fn is_sort_memory_limit(f: &Failure) -> bool {
    f.code().is_some_and(|c| SORT_MEMORY_CODES.contains(&c))
}

/// Classifies a driver error; every message is scrubbed of the URI's credentials.
pub(crate) fn classify(e: &MongoError, secrets: &Secrets) -> Failure {
    let unavailable = |m: String| Failure::Unavailable(secrets.scrub(m));
    let other = |code: Option<i32>, m: String| Failure::Other {
        code,
        message: secrets.scrub(m),
    };
    match e.kind.as_ref() {
        ErrorKind::ServerSelection { message, .. } => {
            unavailable(format!("no server available: {message}"))
        }
        ErrorKind::Io(io) => unavailable(format!("network error: {io}")),
        ErrorKind::ConnectionPoolCleared { message, .. } => {
            unavailable(format!("connection pool cleared: {message}"))
        }
        ErrorKind::DnsResolve { message, .. } => unavailable(format!("DNS resolution: {message}")),
        ErrorKind::Shutdown => unavailable("client shut down".into()),
        ErrorKind::Command(c) => {
            let m = format!("{} ({}): {}", c.code, c.code_name, c.message);
            if c.code == DUPLICATE_KEY {
                Failure::Duplicate {
                    index: None,
                    message: secrets.scrub(m),
                }
            } else if UNAVAILABLE_CODES.contains(&c.code) {
                unavailable(m)
            } else {
                other(Some(c.code), m)
            }
        }
        ErrorKind::Write(WriteFailure::WriteError(w)) => {
            let m = format!("{}: {}", w.code, w.message);
            if w.code == DUPLICATE_KEY {
                Failure::Duplicate {
                    index: Some(0),
                    message: secrets.scrub(m),
                }
            } else if UNAVAILABLE_CODES.contains(&w.code) {
                unavailable(m)
            } else {
                other(Some(w.code), m)
            }
        }
        ErrorKind::Write(WriteFailure::WriteConcernError(w)) => unavailable(format!(
            "write concern not satisfied: {} ({}): {}",
            w.code, w.code_name, w.message
        )),
        ErrorKind::InsertMany(im) => {
            if let Some(w) = im.write_errors.as_ref().and_then(|v| v.first()) {
                let m = format!("{}: {}", w.code, w.message);
                if w.code == DUPLICATE_KEY {
                    return Failure::Duplicate {
                        index: Some(w.index),
                        message: secrets.scrub(m),
                    };
                }
                if UNAVAILABLE_CODES.contains(&w.code) {
                    return unavailable(m);
                }
                return other(Some(w.code), m);
            }
            match &im.write_concern_error {
                Some(w) => unavailable(format!(
                    "write concern not satisfied: {} ({}): {}",
                    w.code, w.code_name, w.message
                )),
                None => other(None, e.kind.to_string()),
            }
        }
        ErrorKind::Authentication { message, .. } => {
            other(None, format!("authentication failed: {message}"))
        }
        kind => {
            if e.contains_label("RetryableWriteError") || e.contains_label("RetryableError") {
                unavailable(kind.to_string())
            } else {
                other(None, kind.to_string())
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Client options

/// Parses a `read_preference` setting.
pub fn parse_read_preference(raw: &str) -> Result<ReadPreference, String> {
    Ok(match raw {
        "primary" => ReadPreference::Primary,
        "primaryPreferred" => ReadPreference::PrimaryPreferred { options: None },
        "secondary" => ReadPreference::Secondary { options: None },
        "secondaryPreferred" => ReadPreference::SecondaryPreferred { options: None },
        "nearest" => ReadPreference::Nearest { options: None },
        other => {
            return Err(format!(
                "read_preference {other:?} is not one of primary, primaryPreferred, secondary, \
                 secondaryPreferred, nearest"
            ))
        }
    })
}

/// Parses a write concern `w` (`majority` or a number of nodes) plus the journal flag.
pub fn parse_write_concern(w: &str, journal: bool) -> Result<WriteConcern, String> {
    let ack = match w {
        "majority" => Acknowledgment::Majority,
        n => match n.parse::<u32>() {
            Ok(n) if n >= 1 => Acknowledgment::Nodes(n),
            _ => {
                return Err(format!(
                    "write_concern {n:?} must be \"majority\" or a number of nodes >= 1"
                ))
            }
        },
    };
    Ok(WriteConcern::builder().w(ack).journal(journal).build())
}

/// Server selection (and connect) timeout when neither the settings nor the URI give one.
const DEFAULT_SERVER_SELECTION_TIMEOUT: Duration = Duration::from_secs(5);

/// Settings applied on top of the URI's own options: `Some` overrides the URI.
#[derive(Clone, Default)]
pub(crate) struct ClientTuning {
    pub(crate) max_pool_size: Option<u32>,
    pub(crate) min_pool_size: Option<u32>,
    pub(crate) max_idle_time: Option<Duration>,
    pub(crate) server_selection_timeout: Option<Duration>,
    pub(crate) read_preference: Option<ReadPreference>,
    pub(crate) write_concern: Option<WriteConcern>,
    /// Used only when neither `write_concern` nor the URI sets one.
    pub(crate) default_write_concern: Option<WriteConcern>,
    /// Shard id labelling the connection-pool gauges; `None` reports nothing.
    pub(crate) pool_metrics_label: Option<String>,
}

impl ClientTuning {
    fn selection_timeout(&self) -> Duration {
        self.server_selection_timeout
            .unwrap_or(DEFAULT_SERVER_SELECTION_TIMEOUT)
    }
}

fn apply_tuning(o: &mut ClientOptions, t: &ClientTuning) {
    o.app_name.get_or_insert_with(|| "org-gateway".to_owned());
    if t.max_pool_size.is_some() {
        o.max_pool_size = t.max_pool_size;
    }
    if t.min_pool_size.is_some() {
        o.min_pool_size = t.min_pool_size;
    }
    if t.max_idle_time.is_some() {
        o.max_idle_time = t.max_idle_time;
    }
    match t.server_selection_timeout {
        Some(d) => o.server_selection_timeout = Some(d),
        None => {
            o.server_selection_timeout
                .get_or_insert(DEFAULT_SERVER_SELECTION_TIMEOUT);
        }
    }
    // The connect timeout stays the URI's (or the driver's 10 s): it is also how long the
    // driver's monitor waits beyond its heartbeat for a server's answer before it declares
    // the server down, clears the pool and interrupts the operations in flight. Tied to the
    // selection timeout (2 s for a shard), a server that answered its heartbeat 2 s late
    // under load had every in-flight operation fail or be retried; requests still give up on
    // an unreachable server after the selection timeout.
    if let Some(rp) = &t.read_preference {
        o.selection_criteria = Some(SelectionCriteria::ReadPreference(rp.clone()));
    }
    if let Some(shard) = &t.pool_metrics_label {
        o.cmap_event_handler = Some(pool_metrics(shard));
    }
    match (&t.write_concern, &t.default_write_concern) {
        (Some(wc), _) => o.write_concern = Some(wc.clone()),
        (None, Some(wc)) if o.write_concern.is_none() => o.write_concern = Some(wc.clone()),
        _ => {}
    }
}

/// Feeds the driver's connection-pool events into `org_gateway_shard_pool_connections`.
fn pool_metrics(shard: &str) -> mongodb::event::EventHandler<mongodb::event::cmap::CmapEvent> {
    use crate::telemetry::metrics::SHARD_POOL_CONNECTIONS;
    use mongodb::event::cmap::CmapEvent;
    let open = SHARD_POOL_CONNECTIONS.with_label_values(&[shard, "open"]);
    let in_use = SHARD_POOL_CONNECTIONS.with_label_values(&[shard, "in_use"]);
    mongodb::event::EventHandler::callback(move |event: CmapEvent| match event {
        CmapEvent::ConnectionCreated(_) => open.inc(),
        CmapEvent::ConnectionClosed(_) => open.dec(),
        CmapEvent::ConnectionCheckedOut(_) => in_use.inc(),
        CmapEvent::ConnectionCheckedIn(_) => in_use.dec(),
        _ => {}
    })
}

/// A client built on first use: building one may need DNS (SRV records), which must not block
/// or fail startup when the deployment is unreachable.
pub(crate) struct LazyClient {
    uri: String,
    tuning: ClientTuning,
    secrets: Secrets,
    client: OnceCell<Client>,
}

impl LazyClient {
    /// Validates the URI syntax now (a malformed URI is a configuration error) and tries to
    /// build the client; unreachable-server trouble is deferred to the first operation.
    pub(crate) async fn new(uri: &str, tuning: ClientTuning) -> Result<Self, String> {
        let secrets = Secrets::of_uri(uri);
        ConnectionString::parse(uri)
            .map_err(|e| secrets.scrub(format!("invalid MongoDB URI: {}", e.kind)))?;
        let lazy = Self {
            uri: uri.to_owned(),
            tuning,
            secrets,
            client: OnceCell::new(),
        };
        match lazy.get().await {
            Ok(_) => Ok(lazy),
            Err(Failure::Unavailable(m)) => {
                tracing::warn!(error = %m, "MongoDB client not built yet; will retry on first use");
                Ok(lazy)
            }
            Err(f) => Err(f.message().to_owned()),
        }
    }

    /// The credentials to scrub from messages.
    pub(crate) fn secrets(&self) -> &Secrets {
        &self.secrets
    }

    /// The client, built on first call (never connects: the driver does that in the
    /// background and per operation).
    pub(crate) async fn get(&self) -> Result<&Client, Failure> {
        self.client
            .get_or_try_init(|| async {
                let timeout = self.tuning.selection_timeout();
                let mut options =
                    match tokio::time::timeout(timeout, ClientOptions::parse(&self.uri)).await {
                        Ok(Ok(o)) => o,
                        Ok(Err(e)) => return Err(classify(&e, &self.secrets)),
                        Err(_) => {
                            return Err(Failure::Unavailable(
                                "timed out resolving the MongoDB URI".into(),
                            ))
                        }
                    };
                apply_tuning(&mut options, &self.tuning);
                Client::with_options(options).map_err(|e| classify(&e, &self.secrets))
            })
            .await
    }
}

// ---------------------------------------------------------------------------------------------
// JSON <-> BSON

/// Converts a JSON value to BSON: integers to Int32 (when they fit) or Int64, other numbers to
/// Double. Keys are kept verbatim; nothing is read as extended JSON. Integers above
/// `i64::MAX` have no exact BSON form and are refused.
pub fn json_to_bson(v: &Value) -> Result<Bson, String> {
    Ok(match v {
        Value::Null => Bson::Null,
        Value::Bool(b) => Bson::Boolean(*b),
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                match i32::try_from(i) {
                    Ok(small) => Bson::Int32(small),
                    Err(_) => Bson::Int64(i),
                }
            } else if n.is_u64() {
                return Err(format!("integer {n} is out of range (max {})", i64::MAX));
            } else {
                Bson::Double(
                    n.as_f64()
                        .ok_or_else(|| format!("number {n} unsupported"))?,
                )
            }
        }
        Value::String(s) => Bson::String(s.clone()),
        Value::Array(items) => {
            Bson::Array(items.iter().map(json_to_bson).collect::<Result<_, _>>()?)
        }
        Value::Object(map) => Bson::Document(json_to_document(map)?),
    })
}

/// Converts a JSON object to a BSON document.
pub fn json_to_document(map: &Document) -> Result<bson::Document, String> {
    let mut out = bson::Document::new();
    for (k, v) in map {
        out.insert(k.clone(), json_to_bson(v)?);
    }
    Ok(out)
}

/// Converts BSON back to JSON: the inverse of [`json_to_bson`]; types JSON lacks (ObjectId,
/// dates, ...) come out as relaxed extended JSON.
pub fn bson_to_json(b: Bson) -> Value {
    match b {
        Bson::Null | Bson::Undefined => Value::Null,
        Bson::Boolean(b) => Value::Bool(b),
        Bson::Int32(i) => Value::from(i),
        Bson::Int64(i) => Value::from(i),
        Bson::Double(f) => serde_json::Number::from_f64(f)
            .map(Value::Number)
            .unwrap_or(Value::Null),
        Bson::String(s) => Value::String(s),
        Bson::Array(items) => Value::Array(items.into_iter().map(bson_to_json).collect()),
        Bson::Document(d) => Value::Object(document_to_json(d)),
        other => other.into_relaxed_extjson(),
    }
}

/// Converts a BSON document to a JSON object.
pub fn document_to_json(d: bson::Document) -> Document {
    d.into_iter().map(|(k, v)| (k, bson_to_json(v))).collect()
}

// ---------------------------------------------------------------------------------------------
// The store

/// How `rename_collection` moves a collection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RenameStrategy {
    /// The `renameCollection` admin command, falling back to copying when the server refuses it.
    Command,
    /// Always copy in batches (upsert by `_id`) and drop the source.
    Copy,
}

/// A [`TenantStore`] on a MongoDB deployment.
pub struct MongoStore {
    shard: ShardId,
    client: LazyClient,
    rename: RenameStrategy,
    /// Striped locks serializing this process's updates of one document, so that they queue
    /// instead of failing each other's compare-and-set; only updates from other processes
    /// (other gateway instances) can still race.
    update_locks: Box<[tokio::sync::Mutex<()>]>,
}

impl MongoStore {
    /// Opens the store of a `kind = "mongodb"` shard. Never waits for the server: the driver
    /// connects in the background, and operations fail with [`StoreError::Unavailable`] while
    /// it is unreachable. Fails only on invalid settings.
    pub async fn open(config: &ShardConfig) -> Result<Self, String> {
        let uri = config
            .uri
            .as_deref()
            .ok_or_else(|| format!("shard {}: kind = \"mongodb\" needs a uri", config.id))?;
        let read_preference = parse_read_preference(&config.read_preference)
            .map_err(|e| format!("shard {}: {e}", config.id))?;
        let write_concern = parse_write_concern(&config.write_concern, config.journal)
            .map_err(|e| format!("shard {}: {e}", config.id))?;
        let tuning = ClientTuning {
            max_pool_size: Some(config.max_pool_size),
            min_pool_size: Some(config.min_pool_size),
            max_idle_time: Some(Duration::from_millis(config.max_idle_time_ms)),
            server_selection_timeout: Some(Duration::from_millis(
                config.server_selection_timeout_ms,
            )),
            read_preference: Some(read_preference),
            write_concern: Some(write_concern),
            default_write_concern: None,
            pool_metrics_label: Some(config.id.to_string()),
        };
        let client = LazyClient::new(uri, tuning)
            .await
            .map_err(|e| format!("shard {}: {e}", config.id))?;
        Ok(Self {
            shard: config.id.clone(),
            client,
            rename: RenameStrategy::Command,
            update_locks: (0..UPDATE_LOCK_STRIPES)
                .map(|_| tokio::sync::Mutex::new(()))
                .collect(),
        })
    }

    /// Chooses how renames are done (the default tries `renameCollection` first).
    pub fn with_rename_strategy(mut self, strategy: RenameStrategy) -> Self {
        self.rename = strategy;
        self
    }

    /// The shard this store serves.
    pub fn shard(&self) -> &ShardId {
        &self.shard
    }

    fn update_lock(&self, ns: &Namespace, id: &str) -> &tokio::sync::Mutex<()> {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        (ns.database.as_str(), ns.collection.as_str(), id).hash(&mut h);
        &self.update_locks[(h.finish() % self.update_locks.len() as u64) as usize]
    }

    fn error(&self, f: Failure) -> StoreError {
        match f {
            Failure::Unavailable(m) => StoreError::Unavailable(m),
            Failure::Duplicate { message, .. } => match duplicate_index(&message) {
                Some((index, key)) => StoreError::DuplicateKey { index, key },
                None => StoreError::DuplicateId(message),
            },
            Failure::Other {
                code: Some(PARALLEL_ARRAYS),
                message,
            } => StoreError::ParallelArrays(message),
            Failure::Other {
                code: Some(c),
                message,
            } if INDEX_CONFLICT_CODES.contains(&c) => StoreError::IndexConflict(message),
            Failure::Other { message, .. } => StoreError::Backend(message),
        }
    }

    /// `find` with a sort, skip and limit, read to the end. A refused in-memory sort (its
    /// memory limit) is [`StoreError::SortTooLarge`].
    async fn find_sorted(
        &self,
        coll: &Collection<bson::Document>,
        filter: bson::Document,
        sort: bson::Document,
        skip: u64,
        limit: u64,
    ) -> StoreResult<Vec<bson::Document>> {
        let fail = |e: MongoError| {
            let f = self.classify(&e);
            if is_sort_memory_limit(&f) {
                StoreError::SortTooLarge(f.message().to_owned())
            } else {
                self.error(f)
            }
        };
        let cursor = coll
            .find(filter)
            .sort(sort)
            .skip(skip)
            .limit(i64::try_from(limit).unwrap_or(i64::MAX))
            .await
            .map_err(fail)?;
        cursor.try_collect().await.map_err(fail)
    }

    fn classify(&self, e: &MongoError) -> Failure {
        classify(e, self.client.secrets())
    }

    async fn client(&self) -> StoreResult<&Client> {
        self.client.get().await.map_err(|f| self.error(f))
    }

    async fn collection(&self, ns: &Namespace) -> StoreResult<Collection<bson::Document>> {
        Ok(self
            .client()
            .await?
            .database(ns.database.as_str())
            .collection(ns.collection.as_str()))
    }

    /// Runs one store operation. Metrics are recorded for every backend by
    /// [`super::observed::Observed`], which wraps this store.
    async fn observed<T>(
        &self,
        _operation: &'static str,
        work: impl Future<Output = StoreResult<T>>,
    ) -> StoreResult<T> {
        work.await
    }

    async fn existing(&self, database: &DatabaseName, names: &[&str]) -> StoreResult<Vec<String>> {
        let db = self.client().await?.database(database.as_str());
        db.list_collection_names()
            .filter(doc! { "name": { "$in": names } })
            .await
            .map_err(|e| self.error(self.classify(&e)))
    }

    async fn count(&self, ns: &Namespace) -> StoreResult<u64> {
        self.collection(ns)
            .await?
            .count_documents(doc! {})
            // Moves and renames compare this count: from the primary, like their reads.
            .selection_criteria(SelectionCriteria::ReadPreference(ReadPreference::Primary))
            .await
            .map_err(|e| self.error(self.classify(&e)))
    }

    /// Creates the collection; `Ok(false)` when it already exists. Newer servers answer an
    /// existing collection's `create` with success, so existence is checked first (callers
    /// hold the collection's lease, and fences keep writers away).
    async fn create_new(&self, ns: &Namespace) -> StoreResult<bool> {
        if !self
            .existing(&ns.database, &[ns.collection.as_str()])
            .await?
            .is_empty()
        {
            return Ok(false);
        }
        let db = self.client().await?.database(ns.database.as_str());
        match db.create_collection(ns.collection.as_str()).await {
            Ok(()) => Ok(true),
            Err(e) => match self.classify(&e) {
                f if f.code() == Some(NAMESPACE_EXISTS) => Ok(false),
                f => Err(self.error(f)),
            },
        }
    }

    /// Creates the collection unless it exists (the target of a rename being finished).
    async fn create(&self, ns: &Namespace) -> StoreResult<()> {
        self.create_new(ns).await.map(|_| ())
    }

    async fn drop(&self, ns: &Namespace) -> StoreResult<()> {
        match self.collection(ns).await?.drop().await {
            Ok(()) => Ok(()),
            Err(e) => match self.classify(&e) {
                f if f.code() == Some(NAMESPACE_NOT_FOUND) => Ok(()),
                f => Err(self.error(f)),
            },
        }
    }

    /// `renameCollection`; `Ok(false)` when the server does not offer it or `to` appeared.
    async fn rename_command(&self, from: &Namespace, to: &Namespace) -> StoreResult<bool> {
        let admin = self.client().await?.database("admin");
        let command = doc! {
            "renameCollection": format!("{}.{}", from.database, from.collection),
            "to": format!("{}.{}", to.database, to.collection),
            "dropTarget": false,
        };
        match admin.run_command(command).await {
            Ok(_) => Ok(true),
            Err(e) => match self.classify(&e) {
                f if f.code() == Some(NAMESPACE_EXISTS) => Ok(false),
                f if f.code().is_some_and(|c| UNSUPPORTED_CODES.contains(&c)) => {
                    tracing::info!(shard = %self.shard, error = f.message(), "renameCollection refused; copying instead");
                    Ok(false)
                }
                // `from` vanished: a concurrent attempt finished; the caller re-checks.
                f if f.code() == Some(NAMESPACE_NOT_FOUND) => Ok(true),
                f => Err(self.error(f)),
            },
        }
    }

    /// Copies every document of `from` into `to` in batches, replacing documents already
    /// there with the same `_id` (so an interrupted copy can simply run again).
    async fn copy_documents(&self, from: &Namespace, to: &Namespace) -> StoreResult<()> {
        let source = self.collection(from).await?;
        let target = self.collection(to).await?;
        let mut cursor = source
            .find(doc! {})
            .sort(doc! { "_id": 1 })
            .batch_size(COPY_BATCH as u32)
            .await
            .map_err(|e| self.error(self.classify(&e)))?;
        let mut batch = Vec::with_capacity(COPY_BATCH);
        loop {
            let next = cursor
                .try_next()
                .await
                .map_err(|e| self.error(self.classify(&e)))?;
            let done = next.is_none();
            if let Some(d) = next {
                batch.push(d);
            }
            if batch.len() >= COPY_BATCH || (done && !batch.is_empty()) {
                self.upsert_batch(&target, std::mem::take(&mut batch))
                    .await?;
            }
            if done {
                return Ok(());
            }
        }
    }

    async fn upsert_batch(
        &self,
        target: &Collection<bson::Document>,
        batch: Vec<bson::Document>,
    ) -> StoreResult<()> {
        // Fast path: insert everything; documents copied by an earlier attempt collide on
        // `_id` and are replaced one by one.
        let result = target.insert_many(&batch).ordered(false).await;
        let Err(e) = result else { return Ok(()) };
        let collided: Vec<usize> = match e.kind.as_ref() {
            ErrorKind::InsertMany(im)
                if im.write_concern_error.is_none()
                    && im
                        .write_errors
                        .as_ref()
                        .is_some_and(|w| w.iter().all(|w| w.code == DUPLICATE_KEY)) =>
            {
                im.write_errors.iter().flatten().map(|w| w.index).collect()
            }
            _ => return Err(self.error(self.classify(&e))),
        };
        for i in collided {
            let d = &batch[i];
            let id = d.get("_id").cloned().unwrap_or(Bson::Null);
            target
                .replace_one(doc! { "_id": id }, d)
                .upsert(true)
                .await
                .map_err(|e| self.error(self.classify(&e)))?;
        }
        Ok(())
    }

    async fn rename(&self, from: &Namespace, to: &Namespace) -> StoreResult<u64> {
        if from == to {
            return self.count(to).await;
        }
        let present = self
            .existing(
                &from.database,
                &[from.collection.as_str(), to.collection.as_str()],
            )
            .await?;
        let from_exists = present.iter().any(|n| n == from.collection.as_str());
        let mut to_exists = present.iter().any(|n| n == to.collection.as_str());
        if !from_exists {
            // Already renamed (or nothing to move): make sure the target exists.
            if !to_exists {
                self.create(to).await?;
            }
            return self.count(to).await;
        }
        if to_exists && self.count(to).await? == 0 {
            // An empty target left by an earlier interrupted attempt.
            self.drop(to).await?;
            to_exists = false;
        }
        if !to_exists
            && self.rename == RenameStrategy::Command
            && self.rename_command(from, to).await?
        {
            return self.count(to).await;
        }
        // The target holds part of an interrupted copy, or the server cannot rename.
        self.copy_documents(from, to).await?;
        self.create(to).await?;
        // Indexes belong to the collection: declared on the target before the source goes.
        self.copy_indexes(from, to).await?;
        self.drop(from).await?;
        self.count(to).await
    }

    /// Declares `from`'s indexes on `to` (an index already there is left alone).
    async fn copy_indexes(&self, from: &Namespace, to: &Namespace) -> StoreResult<()> {
        let target = self.collection(to).await?;
        for info in self.list_indexes(from).await? {
            if info.name == ID_INDEX_NAME {
                continue;
            }
            let model = IndexModel::builder()
                .keys(to_doc(&info.keys)?)
                .options(
                    IndexOptions::builder()
                        .name(info.name.clone())
                        .unique(info.unique)
                        .build(),
                )
                .build();
            if let Err(e) = target.create_index(model).await {
                match self.classify(&e) {
                    f if f.code().is_some_and(|c| INDEX_CONFLICT_CODES.contains(&c)) => {}
                    f => return Err(self.error(f)),
                }
            }
        }
        Ok(())
    }

    async fn insert(&self, ns: &Namespace, docs: Vec<Document>) -> StoreResult<()> {
        if docs.is_empty() {
            return Ok(());
        }
        let mut ids = Vec::with_capacity(docs.len());
        let mut converted = Vec::with_capacity(docs.len());
        for d in &docs {
            let id = d
                .get("_id")
                .and_then(Value::as_str)
                .ok_or_else(|| StoreError::Backend("document without string _id".into()))?;
            ids.push(id.to_owned());
            converted.push(json_to_document(d).map_err(StoreError::Backend)?);
        }
        let coll = self.collection(ns).await?;
        let Err(e) = coll.insert_many(&converted).ordered(true).await else {
            return Ok(());
        };
        let failure = self.classify(&e);
        let unique_index = match &failure {
            Failure::Duplicate { message, .. } => duplicate_index(message),
            _ => None,
        };
        match failure {
            Failure::Duplicate { index, message } => {
                let Some(index) = index.filter(|i| *i < ids.len()) else {
                    return Err(StoreError::Backend(message));
                };
                // All or nothing without a transaction: an ordered insert stopped at `index`,
                // so exactly the documents before it were written by this call.
                if index > 0 {
                    let written: Vec<&String> = ids[..index].iter().collect();
                    coll.delete_many(doc! { "_id": { "$in": written } })
                        .await
                        .map_err(|e| self.error(self.classify(&e)))?;
                }
                Err(match unique_index {
                    Some((index, key)) => StoreError::DuplicateKey { index, key },
                    None => StoreError::DuplicateId(ids[index].clone()),
                })
            }
            f => {
                // Any other refusal may also have stopped the ordered insert part-way.
                if let ErrorKind::InsertMany(im) = e.kind.as_ref() {
                    if let Some(at) = im
                        .write_errors
                        .as_ref()
                        .and_then(|v| v.first())
                        .map(|w| w.index)
                        .filter(|i| *i > 0 && *i < ids.len())
                    {
                        let written: Vec<&String> = ids[..at].iter().collect();
                        coll.delete_many(doc! { "_id": { "$in": written } })
                            .await
                            .map_err(|e| self.error(self.classify(&e)))?;
                    }
                }
                Err(self.error(f))
            }
        }
    }
}

#[async_trait]
impl TenantStore for MongoStore {
    async fn ping(&self) -> StoreResult<()> {
        self.observed("ping", async {
            self.client()
                .await?
                .database("admin")
                .run_command(doc! { "ping": 1 })
                .await
                .map(|_| ())
                .map_err(|e| self.error(self.classify(&e)))
        })
        .await
    }

    async fn create_collection(&self, ns: &Namespace) -> StoreResult<()> {
        match self.create_new(ns).await? {
            true => Ok(()),
            false => Err(StoreError::CollectionExists),
        }
    }

    async fn set_aside(&self, ns: &Namespace, new_name: &str) -> StoreResult<()> {
        let admin = self.client().await?.database("admin");
        let command = doc! {
            "renameCollection": format!("{}.{}", ns.database, ns.collection),
            "to": format!("{}.{new_name}", ns.database),
            "dropTarget": false,
        };
        match admin.run_command(command).await {
            Ok(_) => Ok(()),
            Err(e) => match self.classify(&e) {
                f if f.code() == Some(NAMESPACE_NOT_FOUND) => Ok(()),
                f => Err(self.error(f)),
            },
        }
    }

    async fn drop_collection(&self, ns: &Namespace) -> StoreResult<()> {
        self.observed("drop_collection", self.drop(ns)).await
    }

    async fn rename_collection(&self, from: &Namespace, to: &Namespace) -> StoreResult<u64> {
        self.observed("rename_collection", self.rename(from, to))
            .await
    }

    async fn list_collections(&self, database: &DatabaseName) -> StoreResult<Vec<String>> {
        self.observed("list_collections", async {
            let mut names = self
                .client()
                .await?
                .database(database.as_str())
                .list_collection_names()
                .await
                .map_err(|e| self.error(self.classify(&e)))?;
            names.retain(|n| !n.starts_with("system."));
            names.sort();
            Ok(names)
        })
        .await
    }

    async fn insert_many(&self, ns: &Namespace, docs: Vec<Document>) -> StoreResult<()> {
        self.observed("insert_many", self.insert(ns, docs)).await
    }

    async fn get(&self, ns: &Namespace, id: &str) -> StoreResult<Option<Document>> {
        self.observed("get", async {
            let found = self
                .collection(ns)
                .await?
                .find_one(doc! { "_id": id })
                .await
                .map_err(|e| self.error(self.classify(&e)))?;
            Ok(found.map(document_to_json))
        })
        .await
    }

    async fn count_all(&self, ns: &Namespace) -> StoreResult<u64> {
        self.observed("count_all", self.count(ns)).await
    }

    async fn find(&self, ns: &Namespace, query: &FindQuery) -> StoreResult<Vec<Found>> {
        let sort = to_doc(&query.sort.to_json())?;
        let coll = self.collection(ns).await?;
        // Positions need the sort fields, which a projection may drop: with one, whole
        // documents are read and projected here with the embedded store's code.
        let page = |doc: bson::Document| {
            let doc = document_to_json(doc);
            Found {
                position: query.sort.position(&doc),
                document: if query.projection.is_empty() {
                    doc
                } else {
                    query.projection.apply(&doc)
                },
            }
        };
        let Some(after) = &query.after else {
            let filter = to_doc(&query.filter.to_json())?;
            let docs = self
                .find_sorted(&coll, filter, sort, query.skip, query.limit)
                .await?;
            return Ok(docs.into_iter().map(page).collect());
        };
        // Keyset: the server narrows with a filter that matches at least every document
        // after the cursor; the ones it lets through before it are dropped here. They sort
        // first, so when a full read kept some, the next read needs exactly `dropped + want`.
        let filter = match query.sort.keyset_filter(after) {
            Some(keyset) => json!({"$and": [query.filter.to_json(), keyset]}),
            None => query.filter.to_json(),
        };
        let filter = to_doc(&filter)?;
        let want = query.window();
        let mut fetch = want;
        loop {
            let docs = self
                .find_sorted(&coll, filter.clone(), sort.clone(), 0, fetch)
                .await?;
            let read = docs.len() as u64;
            let kept: Vec<Found> = docs
                .into_iter()
                .map(page)
                .filter(|f| query.sort.compare_positions(&f.position, after).is_gt())
                .collect();
            let kept_n = kept.len() as u64;
            if kept_n >= want || read < fetch {
                return Ok(kept
                    .into_iter()
                    .skip(usize::try_from(query.skip).unwrap_or(usize::MAX))
                    .take(usize::try_from(query.limit).unwrap_or(usize::MAX))
                    .collect());
            }
            fetch = if kept_n > 0 {
                (read - kept_n).saturating_add(want)
            } else {
                fetch.saturating_mul(2)
            };
        }
    }

    async fn explain_find(
        &self,
        ns: &Namespace,
        query: &FindQuery,
    ) -> StoreResult<(Vec<Found>, Explain)> {
        let found = self.find(ns, query).await?;
        // The server's own account of the plan; a server without `explain` reports none.
        let command = doc! {
            "explain": {
                "find": ns.collection.as_str(),
                "filter": to_doc(&query.filter.to_json())?,
                "sort": to_doc(&query.sort.to_json())?,
                "skip": i64::try_from(query.skip).unwrap_or(i64::MAX),
                "limit": i64::try_from(query.limit).unwrap_or(i64::MAX),
            },
            "verbosity": "executionStats",
        };
        let explain = match self
            .client()
            .await?
            .database(ns.database.as_str())
            .run_command(command)
            .await
        {
            Ok(reply) => read_explain(&Value::Object(document_to_json(reply))),
            Err(e) => {
                tracing::debug!(error = %self.classify(&e).message(), "explain not available");
                Explain::default()
            }
        };
        Ok((found, explain))
    }

    async fn create_index(
        &self,
        ns: &Namespace,
        spec: &IndexSpec,
        max_indexes: usize,
    ) -> StoreResult<IndexInfo> {
        // createIndexes would create a missing collection: writes never do.
        if self
            .existing(&ns.database, &[ns.collection.as_str()])
            .await?
            .is_empty()
        {
            return Err(StoreError::CollectionMissing);
        }
        let keys = spec.keys.to_json();
        let existing = self.list_indexes(ns).await?;
        if let Some(i) = existing.iter().find(|i| i.name == spec.name.as_str()) {
            if super::index::same_key_pattern(&i.keys, &keys) && i.unique == spec.unique {
                return Ok(i.clone());
            }
            return Err(StoreError::IndexConflict(format!(
                "an index named {} exists with other keys or options",
                spec.name
            )));
        }
        if let Some(i) = existing
            .iter()
            .find(|i| super::index::same_key_pattern(&i.keys, &keys))
        {
            return Err(StoreError::IndexConflict(format!(
                "index {} has the same keys",
                super::query::clip(&i.name)
            )));
        }
        if existing.iter().filter(|i| i.name != ID_INDEX_NAME).count() >= max_indexes {
            return Err(StoreError::TooManyIndexes(max_indexes));
        }
        let started = std::time::Instant::now();
        let model = IndexModel::builder()
            .keys(to_doc(&keys)?)
            .options(
                IndexOptions::builder()
                    .name(spec.name.as_str().to_owned())
                    .unique(spec.unique)
                    .build(),
            )
            .build();
        let result = self.collection(ns).await?.create_index(model).await;
        if let Err(e) = result {
            crate::telemetry::metrics::INDEX_CHANGES
                .with_label_values(&["failed"])
                .inc();
            return Err(match self.classify(&e) {
                // A build that met a duplicate names the index being built.
                Failure::Duplicate { message, .. } => StoreError::DuplicateKey {
                    index: spec.name.as_str().to_owned(),
                    key: duplicate_index(&message)
                        .map(|(_, k)| k)
                        .unwrap_or_default(),
                },
                f => self.error(f),
            });
        }
        crate::telemetry::metrics::INDEX_BUILD_SECONDS.observe(started.elapsed().as_secs_f64());
        crate::telemetry::metrics::INDEX_CHANGES
            .with_label_values(&["created"])
            .inc();
        // createIndexes returns once the index is built.
        Ok(IndexInfo {
            name: spec.name.as_str().to_owned(),
            keys,
            unique: spec.unique,
            state: IndexState::Ready,
        })
    }

    async fn list_indexes(&self, ns: &Namespace) -> StoreResult<Vec<IndexInfo>> {
        let cursor = match self.collection(ns).await?.list_indexes().await {
            Ok(c) => c,
            Err(e) => {
                return match self.classify(&e) {
                    f if f.code() == Some(NAMESPACE_NOT_FOUND) => Ok(Vec::new()),
                    f => Err(self.error(f)),
                }
            }
        };
        let models: Vec<IndexModel> = cursor
            .try_collect()
            .await
            .map_err(|e| self.error(self.classify(&e)))?;
        let mut out: Vec<IndexInfo> = models
            .into_iter()
            .map(|m| {
                let name = m
                    .options
                    .as_ref()
                    .and_then(|o| o.name.clone())
                    .unwrap_or_default();
                // Directions as 1 / -1 whatever numeric type the server keeps them in.
                let keys = m
                    .keys
                    .into_iter()
                    .map(|(k, v)| {
                        let dir = match bson_to_json(v).as_f64() {
                            Some(d) if d < 0.0 => -1,
                            _ => 1,
                        };
                        (k, Value::from(dir))
                    })
                    .collect();
                let unique = name == ID_INDEX_NAME
                    || m.options.as_ref().and_then(|o| o.unique).unwrap_or(false);
                IndexInfo {
                    name,
                    keys: Value::Object(keys),
                    unique,
                    state: IndexState::Ready,
                }
            })
            .collect();
        // `_id_` first, then by name, as the embedded store lists them.
        out.sort_by(|a, b| {
            (a.name != ID_INDEX_NAME, &a.name).cmp(&(b.name != ID_INDEX_NAME, &b.name))
        });
        Ok(out)
    }

    async fn drop_index(&self, ns: &Namespace, name: &IndexName) -> StoreResult<()> {
        match self.collection(ns).await?.drop_index(name.as_str()).await {
            Ok(()) => {
                crate::telemetry::metrics::INDEX_CHANGES
                    .with_label_values(&["dropped"])
                    .inc();
                Ok(())
            }
            Err(e) => match self.classify(&e) {
                f if matches!(f.code(), Some(INDEX_NOT_FOUND) | Some(NAMESPACE_NOT_FOUND)) => {
                    Err(StoreError::IndexNotFound)
                }
                // Some servers answer a missing index with a message only.
                f if f.message().contains("index not found") => Err(StoreError::IndexNotFound),
                f => Err(self.error(f)),
            },
        }
    }

    async fn count(&self, ns: &Namespace, filter: &Filter) -> StoreResult<u64> {
        let filter = to_doc(&filter.to_json())?;
        self.collection(ns)
            .await?
            .count_documents(filter)
            .await
            .map_err(|e| self.error(self.classify(&e)))
    }

    async fn update_by_id(
        &self,
        ns: &Namespace,
        id: &str,
        update: &Update,
        max_document_bytes: usize,
    ) -> StoreResult<Option<Document>> {
        // Optimistic concurrency: compute the new document from the one read, with the same
        // code as the embedded store, and write it only if the stored document is still
        // exactly the one read. A refused result is never written, so there is nothing to
        // undo, and a concurrent write is never overwritten: it makes the replace match
        // nothing, and the update is recomputed from the new document.
        let _serialized = self.update_lock(ns, id).lock().await;
        let coll = self.collection(ns).await?;
        let mut backoff = Backoff::default();
        for _ in 0..UPDATE_ATTEMPTS {
            let started = std::time::Instant::now();
            // From the primary: a lagging secondary would fail the compare-and-set every time.
            let Some(before) = coll
                .find_one(doc! { "_id": id })
                .selection_criteria(SelectionCriteria::ReadPreference(ReadPreference::Primary))
                .await
                .map_err(|e| self.error(self.classify(&e)))?
            else {
                return Ok(None);
            };
            let (after, _) = super::updated_document(
                &document_to_json(before.clone()),
                update,
                max_document_bytes,
            )
            .map_err(StoreError::InvalidUpdate)?;
            let replacement = json_to_document(&after).map_err(|message| {
                StoreError::InvalidUpdate(QueryError {
                    code: "invalid_update",
                    path: String::new(),
                    operator: None,
                    message,
                })
            })?;
            // The guard compares with the BSON exactly as read (not a JSON round trip), as a
            // `$literal` so that string values starting with `$` are not taken as field paths.
            let guard = doc! {
                "_id": id,
                "$expr": { "$eq": ["$$ROOT", { "$literal": before }] },
            };
            let result = coll
                .replace_one(guard, replacement)
                .await
                .map_err(|e| self.error(self.classify(&e)))?;
            if result.matched_count == 1 {
                return Ok(Some(after));
            }
            tokio::time::sleep(backoff.next(started.elapsed())).await;
        }
        Err(StoreError::ConcurrentUpdate(id.to_owned()))
    }

    async fn delete_by_id(&self, ns: &Namespace, id: &str) -> StoreResult<bool> {
        let result = self
            .collection(ns)
            .await?
            .delete_one(doc! { "_id": id })
            .await
            .map_err(|e| self.error(self.classify(&e)))?;
        Ok(result.deleted_count == 1)
    }

    async fn get_many(&self, ns: &Namespace, ids: &[String]) -> StoreResult<Vec<Document>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let cursor = self
            .collection(ns)
            .await?
            .find(doc! { "_id": { "$in": ids } })
            .selection_criteria(SelectionCriteria::ReadPreference(ReadPreference::Primary))
            .await
            .map_err(|e| self.error(self.classify(&e)))?;
        let docs: Vec<bson::Document> = cursor
            .try_collect()
            .await
            .map_err(|e| self.error(self.classify(&e)))?;
        Ok(docs.into_iter().map(document_to_json).collect())
    }

    async fn scan_after(
        &self,
        ns: &Namespace,
        after: Option<&str>,
        limit: usize,
    ) -> StoreResult<Vec<Document>> {
        // A limit of 0 means "no limit" to MongoDB.
        if limit == 0 {
            return Ok(Vec::new());
        }
        let filter = match after {
            Some(id) => doc! { "_id": { "$gt": id } },
            None => doc! {},
        };
        let cursor = self
            .collection(ns)
            .await?
            .find(filter)
            .sort(doc! { "_id": 1 })
            .limit(i64::try_from(limit).unwrap_or(i64::MAX))
            .batch_size(u32::try_from(limit).unwrap_or(u32::MAX))
            // A move copies and compares what it reads: never a lagging secondary.
            .selection_criteria(SelectionCriteria::ReadPreference(ReadPreference::Primary))
            .await
            .map_err(|e| self.error(self.classify(&e)))?;
        let docs: Vec<bson::Document> = cursor
            .try_collect()
            .await
            .map_err(|e| self.error(self.classify(&e)))?;
        Ok(docs.into_iter().map(document_to_json).collect())
    }

    async fn upsert_many(&self, ns: &Namespace, docs: Vec<Document>) -> StoreResult<()> {
        if docs.is_empty() {
            return Ok(());
        }
        let mut converted = Vec::with_capacity(docs.len());
        for d in &docs {
            if !d.get("_id").is_some_and(Value::is_string) {
                return Err(StoreError::Backend("document without string _id".into()));
            }
            converted.push(json_to_document(d).map_err(StoreError::Backend)?);
        }
        let coll = self.collection(ns).await?;
        self.upsert_batch(&coll, converted).await
    }

    async fn delete_many_ids(&self, ns: &Namespace, ids: &[String]) -> StoreResult<u64> {
        if ids.is_empty() {
            return Ok(0);
        }
        let result = self
            .collection(ns)
            .await?
            .delete_many(doc! { "_id": { "$in": ids } })
            .await
            .map_err(|e| self.error(self.classify(&e)))?;
        Ok(result.deleted_count)
    }

    async fn collection_bytes(&self, ns: &Namespace) -> StoreResult<u64> {
        let db = self.client().await?.database(ns.database.as_str());
        match db
            .run_command(doc! { "collStats": ns.collection.as_str() })
            .await
        {
            Ok(stats) => {
                let number = |b: Option<&Bson>| match b {
                    Some(Bson::Int32(n)) => *n as u64,
                    Some(Bson::Int64(n)) => *n as u64,
                    Some(Bson::Double(n)) => *n as u64,
                    _ => 0,
                };
                // Secondary indexes count toward the quota, as on the embedded store; the
                // `_id` index, which every collection has, does not.
                let id_index = number(
                    stats
                        .get_document("indexSizes")
                        .ok()
                        .and_then(|s| s.get(ID_INDEX_NAME)),
                );
                let indexes = number(stats.get("totalIndexSize")).saturating_sub(id_index);
                Ok(number(stats.get("size")) + indexes)
            }
            Err(e) => match self.classify(&e) {
                f if f.code() == Some(NAMESPACE_NOT_FOUND) => Ok(0),
                f => Err(self.error(f)),
            },
        }
    }
}

/// Compare-and-set attempts of one update before it fails with
/// [`StoreError::ConcurrentUpdate`].
const UPDATE_ATTEMPTS: u32 = 20;

/// Lock stripes per store for [`MongoStore::update_by_id`]: enough that unrelated documents
/// rarely share one.
const UPDATE_LOCK_STRIPES: usize = 1024;

/// Pauses between compare-and-set attempts: random ("full jitter") so that racing writers
/// spread out, over a window that starts at the attempt's own duration (the time another
/// writer needs to get through) and doubles per retry, up to 16 times that and 250 ms.
/// The index and counts of an `explain` reply (`executionStats` verbosity).
fn read_explain(reply: &Value) -> Explain {
    fn index_name(plan: &Value) -> Option<String> {
        if let Some(name) = plan.get("indexName").and_then(Value::as_str) {
            return Some(name.to_owned());
        }
        for key in ["inputStage", "queryPlan"] {
            if let Some(found) = plan.get(key).and_then(index_name) {
                return Some(found);
            }
        }
        plan.get("inputStages")
            .and_then(Value::as_array)
            .and_then(|stages| stages.iter().find_map(index_name))
    }
    let planner = reply.get("queryPlanner");
    let winning = planner.and_then(|p| p.get("winningPlan"));
    let stats = reply.get("executionStats");
    let count = |field: &str| {
        stats
            .and_then(|s| s.get(field))
            .and_then(Value::as_f64)
            .map_or(0, |n| n as u64)
    };
    Explain {
        index: winning.and_then(index_name),
        keys_examined: count("totalKeysExamined"),
        docs_examined: count("totalDocsExamined"),
    }
}

#[derive(Default)]
struct Backoff {
    retries: u32,
}

impl Backoff {
    fn next(&mut self, attempt_took: Duration) -> Duration {
        self.retries += 1;
        let base = attempt_took.max(Duration::from_millis(1));
        let window = (base * (1 << self.retries.min(4))).min(Duration::from_millis(250));
        window.mul_f64(rand::Rng::gen_range(&mut rand::thread_rng(), 0.0..=1.0))
    }
}

fn to_doc(v: &Value) -> StoreResult<bson::Document> {
    match v {
        Value::Object(map) => json_to_document(map).map_err(StoreError::Backend),
        Value::Null => Ok(bson::Document::new()),
        other => Err(StoreError::Backend(format!(
            "expected an object, got {other}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn sort_memory_limit_codes_are_recognised() {
        let other = |code| Failure::Other {
            code,
            message: "Sort exceeded memory limit".into(),
        };
        for code in [292, 16819, 16820] {
            assert!(is_sort_memory_limit(&other(Some(code))), "{code}");
        }
        assert!(!is_sort_memory_limit(&other(Some(2))));
        assert!(!is_sort_memory_limit(&other(None)));
        assert!(!is_sort_memory_limit(&Failure::Unavailable("x".into())));
    }

    #[tokio::test]
    async fn the_connect_timeout_is_not_the_selection_timeout() {
        let tuning = ClientTuning {
            server_selection_timeout: Some(Duration::from_millis(2_000)),
            ..ClientTuning::default()
        };
        let mut derived = ClientOptions::parse("mongodb://127.0.0.1:1/")
            .await
            .unwrap();
        apply_tuning(&mut derived, &tuning);
        assert_eq!(
            derived.server_selection_timeout,
            Some(Duration::from_secs(2))
        );
        assert_eq!(derived.connect_timeout, None, "the driver's default (10 s)");
        let mut kept = ClientOptions::parse("mongodb://127.0.0.1:1/?connectTimeoutMS=30000")
            .await
            .unwrap();
        apply_tuning(&mut kept, &tuning);
        assert_eq!(kept.server_selection_timeout, Some(Duration::from_secs(2)));
        assert_eq!(kept.connect_timeout, Some(Duration::from_secs(30)));
    }

    #[test]
    fn json_round_trips_through_bson() {
        let v = json!({
            "_id": "abc",
            "small": 7,
            "neg": -3,
            "big": 1_i64 << 40,
            "min": i64::MIN,
            "float": 1.5,
            "whole_float": 2.0,
            "s": "x",
            "b": true,
            "n": null,
            "arr": [1, "two", {"three": 3.25}],
            "nested": {"$odd": {"a.b": []}}
        });
        let b = json_to_bson(&v).unwrap();
        let Bson::Document(d) = &b else { panic!() };
        assert_eq!(d.get("small"), Some(&Bson::Int32(7)));
        assert_eq!(d.get("big"), Some(&Bson::Int64(1 << 40)));
        assert_eq!(d.get("whole_float"), Some(&Bson::Double(2.0)));
        assert_eq!(d.get("_id"), Some(&Bson::String("abc".into())));
        assert_eq!(bson_to_json(b), v);
    }

    #[test]
    fn huge_integers_are_refused() {
        assert!(json_to_bson(&json!(u64::MAX)).is_err());
    }

    #[test]
    fn secrets_are_scrubbed() {
        let s = Secrets::of_uri("mongodb://admin:p%40ss%3Aword@h1:27017,h2/db?authSource=admin");
        let msg = s.scrub("failed for admin:p%40ss%3Aword@h1 and p@ss:word");
        assert_eq!(msg, "failed for admin:***@h1 and ***");
        assert!(Secrets::of_uri("mongodb://h:1").scrub("h:1") == "h:1");
    }

    #[test]
    fn settings_parse() {
        assert!(parse_read_preference("nearest").is_ok());
        assert!(parse_read_preference("Nearest").is_err());
        assert!(parse_write_concern("majority", true).is_ok());
        assert!(parse_write_concern("2", false).is_ok());
        assert!(parse_write_concern("0", false).is_err());
        assert!(parse_write_concern("tagged", false).is_err());
    }
}
