//! The embedded backend: tenant collections as tables in a redb file. ACID, fsync on every
//! commit, pure Rust. Each collection `db.coll` is one table keyed by `_id` holding the
//! document as JSON bytes; a side table keeps byte counts for quotas.

use super::index::{
    document_keys, entry_id, entry_key, plan, same_key_pattern, succ, IndexDef, Plan,
};
use super::query::{Filter, SortPosition, TopK, Update};
use super::{
    Document, Explain, FindQuery, Found, IndexInfo, IndexSpec, IndexState, Namespace, StoreError,
    StoreResult, TenantStore,
};
use crate::domain::{DatabaseName, IndexName, ID_INDEX_NAME};
use async_trait::async_trait;
use redb::{
    Database, ReadOnlyTable, ReadableDatabase, ReadableTable, ReadableTableMetadata,
    TableDefinition, TableHandle,
};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::HashSet;
use std::ops::Bound;
use std::path::Path;
use std::sync::Arc;

/// Per-collection stored bytes, keyed by table name.
const BYTES: TableDefinition<&str, u64> = TableDefinition::new("__bytes");
/// The tenant collections that exist, by table name: a point lookup tells a write whether its
/// collection is there (listing every table per write would cost O(collections)).
const COLLECTIONS: TableDefinition<&str, ()> = TableDefinition::new("__collections");
/// Marker rows: `registry` once `__collections` was filled from the tables of an older file.
const STORE_META: TableDefinition<&str, u64> = TableDefinition::new("__store_meta");

/// Secondary index declarations, keyed by (collection table, index name).
const INDEXES: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("__indexes");

/// An index's entries: encoded key values then the `_id` (see `store::index::entry_key`).
type EntryTable<'a> = TableDefinition<'a, &'static [u8], ()>;

/// The table holding an index's entries; starts with `__`, so it is never taken for a
/// collection.
fn entry_table(table: &str, index: &str) -> String {
    format!("__idx:{table}:{index}")
}

/// An index's log: changes of its entries not yet applied to its entry table, keyed like the
/// entries, valued 1 (the entry is there) or 0 (it is not). A ready non-unique index is
/// changed through its log, written in the same transaction as the documents, so a crash
/// never leaves it behind them; every read of the index reads both, the log winning. The log
/// is small, so a batch of entries scattered over the whole index dirties only its few
/// pages, and a merge (once it holds more than a bound) changes each page of the index once
/// for many batches instead of once a batch.
type LogTable<'a> = TableDefinition<'a, &'static [u8], u8>;

/// The table holding an index's log.
fn log_table(table: &str, index: &str) -> String {
    format!("__ilog:{table}:{index}")
}

/// Changes an index's log holds before a write merges it into the index: the log's pages
/// (about 120 changes a page) are dirtied by every scattered batch, the whole index by each
/// merge. 4,096 and 32,768 wrote more pages a batch than 8,192 and 16,384 did on 100,000
/// documents (benches/RESULTS.md).
pub const INDEX_LOG_BOUND: u64 = 8_192;

/// An index declaration as stored.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct StoredIndex {
    keys: Value,
    unique: bool,
    state: IndexState,
    multikey: bool,
    /// Identifies this declaration: a build goes on only while the declaration it started
    /// on is there (an index dropped and declared again under its name is another one).
    #[serde(default)]
    generation: u64,
}

/// A declared index of one collection.
struct Declared {
    name: String,
    meta: StoredIndex,
}

impl Declared {
    fn def(&self) -> IndexDef {
        IndexDef::from_keys(
            &self.name,
            &self.meta.keys,
            self.meta.unique,
            self.meta.multikey,
        )
    }

    fn info(&self) -> IndexInfo {
        IndexInfo {
            name: self.name.clone(),
            keys: self.meta.keys.clone(),
            unique: self.meta.unique,
            state: self.meta.state,
        }
    }
}

/// The indexes declared on `table`, in name order.
fn declared(
    indexes: &impl ReadableTable<(&'static str, &'static str), &'static [u8]>,
    table: &str,
) -> StoreResult<Vec<Declared>> {
    let mut out = Vec::new();
    for row in indexes.range((table, "")..).map_err(backend)? {
        let (k, v) = row.map_err(backend)?;
        let (t, name) = k.value();
        if t != table {
            break;
        }
        out.push(Declared {
            name: name.to_owned(),
            meta: serde_json::from_slice(v.value()).map_err(backend)?,
        });
    }
    Ok(out)
}

fn declared_in_write(txn: &redb::WriteTransaction, table: &str) -> StoreResult<Vec<Declared>> {
    let indexes = txn.open_table(INDEXES).map_err(backend)?;
    declared(&indexes, table)
}

fn declared_in_read(txn: &redb::ReadTransaction, table: &str) -> StoreResult<Vec<Declared>> {
    match txn.open_table(INDEXES) {
        Ok(t) => declared(&t, table),
        Err(redb::TableError::TableDoesNotExist(_)) => Ok(Vec::new()),
        Err(e) => Err(backend(e)),
    }
}

fn store_meta(
    txn: &redb::WriteTransaction,
    table: &str,
    name: &str,
    meta: &StoredIndex,
) -> StoreResult<()> {
    let bytes = serde_json::to_vec(meta).map_err(backend)?;
    txn.open_table(INDEXES)
        .map_err(backend)?
        .insert((table, name), bytes.as_slice())
        .map_err(backend)?;
    Ok(())
}

/// The index key values of `doc`, for an error message: `{path: value}`, clipped.
fn describe_key(def: &IndexDef, doc: &Document) -> String {
    let mut m = serde_json::Map::new();
    for (parts, _) in &def.fields {
        let mut cur: Option<&Value> = None;
        let mut obj = Some(doc);
        for p in parts {
            cur = obj.and_then(|o| o.get(p.as_str()));
            obj = cur.and_then(Value::as_object);
        }
        m.insert(parts.join("."), cur.cloned().unwrap_or(Value::Null));
    }
    super::query::clip(&Value::Object(m).to_string()).into_owned()
}

/// An index being maintained in one write transaction.
struct Maintained<'t> {
    decl: Declared,
    def: IndexDef,
    entries: redb::Table<'t, &'static [u8], ()>,
    /// The index's log, for a ready non-unique index: its changes go there (see
    /// [`LogTable`]); `None`: changed in place (a unique index, whose duplicate check must see
    /// every entry, or one still building, whose writes race the build's).
    log: Option<redb::Table<'t, &'static [u8], u8>>,
    /// Entry changes, applied in key order by `finish`: a batch's entries scattered over an
    /// index then reach each leaf page once, in order, rather than in document order. Per
    /// entry: whether it was there before this transaction (its first change tells: an
    /// insert means it was not), and whether it is there after (the last change wins, as it
    /// would applied in order). (A unique index is changed at once: its duplicate check
    /// must see this batch's entries.)
    pending: std::collections::BTreeMap<Vec<u8>, (bool, bool)>,
}

/// Keeps a collection's indexes in step with its documents inside one write transaction:
/// every write path hands it each document's old and new version.
struct Maintainer<'t> {
    indexes: Vec<Maintained<'t>>,
    /// Index entry bytes added minus removed.
    added: u64,
    removed: u64,
    /// Indexes that became multikey in this transaction.
    turned_multikey: Vec<usize>,
    /// Merge an index's log into its entries once it holds more changes than this.
    log_bound: u64,
}

impl<'t> Maintainer<'t> {
    fn open(txn: &'t redb::WriteTransaction, table: &str, log_bound: u64) -> StoreResult<Self> {
        let mut indexes = Vec::new();
        for d in declared_in_write(txn, table)? {
            let name = entry_table(table, &d.name);
            let def_t: EntryTable<'_> = TableDefinition::new(&name);
            let entries = txn.open_table(def_t).map_err(backend)?;
            let log = if !d.meta.unique && d.meta.state == IndexState::Ready {
                let lname = log_table(table, &d.name);
                let def_l: LogTable<'_> = TableDefinition::new(&lname);
                Some(txn.open_table(def_l).map_err(backend)?)
            } else {
                None
            };
            let def = d.def();
            indexes.push(Maintained {
                decl: d,
                def,
                entries,
                log,
                pending: Default::default(),
            });
        }
        Ok(Maintainer {
            indexes,
            added: 0,
            removed: 0,
            turned_multikey: Vec::new(),
            log_bound,
        })
    }

    fn is_empty(&self) -> bool {
        self.indexes.is_empty()
    }

    /// Replaces `old`'s entries (if any) by `new`'s (if any) for the document `id`,
    /// refusing a key a unique index already holds for another document.
    fn apply(
        &mut self,
        id: &str,
        old: Option<&Document>,
        new: Option<&Document>,
    ) -> StoreResult<()> {
        for (i, m) in self.indexes.iter_mut().enumerate() {
            let Maintained {
                decl,
                def,
                entries: table,
                pending,
                ..
            } = m;
            // A stored document's keys were accepted once; an index built later refuses
            // documents it cannot index, so an error here only means "no entries".
            let old_keys = match old {
                Some(d) => document_keys(def, d).map(|(k, _)| k).unwrap_or_default(),
                None => Vec::new(),
            };
            let new_keys = match new {
                Some(d) => {
                    let (keys, multikey) = document_keys(def, d)?;
                    if multikey && !decl.meta.multikey {
                        decl.meta.multikey = true;
                        def.multikey = true;
                        self.turned_multikey.push(i);
                    }
                    keys
                }
                None => Vec::new(),
            };
            if !def.unique {
                for k in old_keys.iter().filter(|k| !new_keys.contains(k)) {
                    pending
                        .entry(entry_key(k, id))
                        .and_modify(|(_, after)| *after = false)
                        .or_insert((true, false));
                }
                for k in new_keys.iter().filter(|k| !old_keys.contains(k)) {
                    pending
                        .entry(entry_key(k, id))
                        .and_modify(|(_, after)| *after = true)
                        .or_insert((false, true));
                }
                continue;
            }
            for k in old_keys.iter().filter(|k| !new_keys.contains(k)) {
                let e = entry_key(k, id);
                if table.remove(e.as_slice()).map_err(backend)?.is_some() {
                    self.removed += e.len() as u64;
                }
            }
            for k in new_keys.iter().filter(|k| !old_keys.contains(k)) {
                // Refused if another document holds the key already.
                {
                    let upper = succ(k);
                    for row in table
                        .range::<&[u8]>(k.as_slice()..upper.as_slice())
                        .map_err(backend)?
                    {
                        let (other, _) = row.map_err(backend)?;
                        if entry_id(other.value()) != Some(id) {
                            return Err(StoreError::DuplicateKey {
                                index: decl.name.clone(),
                                key: new.map(|d| describe_key(def, d)).unwrap_or_default(),
                            });
                        }
                    }
                }
                let e = entry_key(k, id);
                if table.insert(e.as_slice(), ()).map_err(backend)?.is_none() {
                    self.added += e.len() as u64;
                }
            }
        }
        Ok(())
    }

    /// Writes the pending changes, merges logs grown past their bound and records indexes
    /// that became multikey; returns (bytes added, bytes removed).
    fn finish(self, txn: &redb::WriteTransaction, table: &str) -> StoreResult<(u64, u64)> {
        let Maintainer {
            indexes,
            mut added,
            mut removed,
            turned_multikey,
            log_bound,
        } = self;
        let mut metas: Vec<(String, StoredIndex)> = turned_multikey
            .iter()
            .map(|&i| (indexes[i].decl.name.clone(), indexes[i].decl.meta.clone()))
            .collect();
        let mut to_merge = Vec::new();
        for m in indexes {
            let Maintained {
                decl,
                mut entries,
                log,
                pending,
                ..
            } = m;
            match log {
                // The index is in step before this transaction (it is ready), so an entry's
                // first change says whether it was there: only real changes are logged, and
                // they count exactly.
                Some(mut log) => {
                    for (e, (before, after)) in pending {
                        if before == after {
                            continue;
                        }
                        log.insert(e.as_slice(), u8::from(after)).map_err(backend)?;
                        if after {
                            added += e.len() as u64;
                        } else {
                            removed += e.len() as u64;
                        }
                    }
                    if log.len().map_err(backend)? > log_bound {
                        to_merge.push(decl.name.clone());
                    }
                }
                // Writes racing a build may find their entries there already or not yet.
                None => {
                    for (e, (_, insert)) in pending {
                        if insert {
                            if entries.insert(e.as_slice(), ()).map_err(backend)?.is_none() {
                                added += e.len() as u64;
                            }
                        } else if entries.remove(e.as_slice()).map_err(backend)?.is_some() {
                            removed += e.len() as u64;
                        }
                    }
                }
            }
        }
        for name in to_merge {
            merge_log(txn, table, &name)?;
        }
        for (name, meta) in metas.drain(..) {
            store_meta(txn, table, &name, &meta)?;
        }
        Ok((added, removed))
    }
}

/// Applies an index's log to its entries and empties it, in `txn`.
fn merge_log(txn: &redb::WriteTransaction, table: &str, index: &str) -> StoreResult<()> {
    let lname = log_table(table, index);
    let def_l: LogTable<'_> = TableDefinition::new(&lname);
    {
        let log = txn.open_table(def_l).map_err(backend)?;
        if log.is_empty().map_err(backend)? {
            drop(log);
            txn.delete_table(def_l).map_err(backend)?;
            return Ok(());
        }
        let ename = entry_table(table, index);
        let def_e: EntryTable<'_> = TableDefinition::new(&ename);
        let mut entries = txn.open_table(def_e).map_err(backend)?;
        for row in log.iter().map_err(backend)? {
            let (k, op) = row.map_err(backend)?;
            if op.value() == 1 {
                entries.insert(k.value(), ()).map_err(backend)?;
            } else {
                entries.remove(k.value()).map_err(backend)?;
            }
        }
        crate::telemetry::metrics::INDEX_LOG_MERGES.inc();
    }
    // Deleting the table frees its pages at once; the next write opens it again, empty.
    txn.delete_table(def_l).map_err(backend)?;
    Ok(())
}

/// Deletes every index of `table` (declarations and entries).
fn drop_indexes(txn: &redb::WriteTransaction, table: &str) -> StoreResult<()> {
    for d in declared_in_write(txn, table)? {
        let name = entry_table(table, &d.name);
        let def: EntryTable<'_> = TableDefinition::new(&name);
        txn.delete_table(def).map_err(backend)?;
        let lname = log_table(table, &d.name);
        let def_l: LogTable<'_> = TableDefinition::new(&lname);
        txn.delete_table(def_l).map_err(backend)?;
        txn.open_table(INDEXES)
            .map_err(backend)?
            .remove((table, d.name.as_str()))
            .map_err(backend)?;
    }
    Ok(())
}

/// Moves every index of `from` to `to` (a rename).
/// Returns the names of the indexes still building: their builds, which follow the old
/// name, stop, and must start again under the new one.
fn rename_indexes(txn: &redb::WriteTransaction, from: &str, to: &str) -> StoreResult<Vec<String>> {
    // Leftovers of an interrupted attempt at the target go first.
    drop_indexes(txn, to)?;
    let mut building = Vec::new();
    for d in declared_in_write(txn, from)? {
        if d.meta.state == IndexState::Building {
            building.push(d.name.clone());
        }
        let (old, new) = (entry_table(from, &d.name), entry_table(to, &d.name));
        let old_def: EntryTable<'_> = TableDefinition::new(&old);
        let new_def: EntryTable<'_> = TableDefinition::new(&new);
        txn.rename_table(old_def, new_def).map_err(backend)?;
        // The log goes with its index (opening it first creates it if there is none).
        let (old_log, new_log) = (log_table(from, &d.name), log_table(to, &d.name));
        let old_log_def: LogTable<'_> = TableDefinition::new(&old_log);
        let new_log_def: LogTable<'_> = TableDefinition::new(&new_log);
        drop(txn.open_table(old_log_def).map_err(backend)?);
        txn.rename_table(old_log_def, new_log_def)
            .map_err(backend)?;
        let mut indexes = txn.open_table(INDEXES).map_err(backend)?;
        indexes.remove((from, d.name.as_str())).map_err(backend)?;
        let bytes = serde_json::to_vec(&d.meta).map_err(backend)?;
        indexes
            .insert((to, d.name.as_str()), bytes.as_slice())
            .map_err(backend)?;
    }
    Ok(building)
}

/// Documents one build transaction indexes: short enough that tenant writes wait at most
/// a few milliseconds between batches.
const BUILD_BATCH: usize = 2_000;

/// How long `create_index` waits for a build before answering `building`.
const BUILD_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

/// Indexes every document of `table` in `name`, a batch per write transaction, then marks
/// it ready. Writes meanwhile maintain the index themselves, so each batch only adds what
/// is missing. On a duplicate key or a document it cannot index, the index is dropped and
/// the error returned. Stops quietly if the index is dropped meanwhile.
fn build_index(db: &Database, table: &str, name: &str) -> StoreResult<()> {
    let started = std::time::Instant::now();
    let mut after: Option<String> = None;
    let mut generation: Option<u64> = None;
    loop {
        let txn = db.begin_write().map_err(backend)?;
        let Some(decl) = declared_in_write(&txn, table)?.into_iter().find(|d| {
            d.name == name
                && d.meta.state == IndexState::Building
                && generation.is_none_or(|g| g == d.meta.generation)
        }) else {
            return Ok(());
        };
        generation = Some(decl.meta.generation);
        let docs: Vec<(String, Document)> = {
            let def: TableDefinition<&str, &[u8]> = TableDefinition::new(table);
            let t = txn.open_table(def).map_err(backend)?;
            let lower = match after.as_deref() {
                Some(id) => Bound::Excluded(id),
                None => Bound::Unbounded,
            };
            let mut out = Vec::with_capacity(BUILD_BATCH);
            for row in t
                .range::<&str>((lower, Bound::Unbounded))
                .map_err(backend)?
                .take(BUILD_BATCH)
            {
                let (k, v) = row.map_err(backend)?;
                out.push((k.value().to_owned(), decode(v.value())?));
            }
            out
        };
        if docs.is_empty() {
            let mut meta = decl.meta.clone();
            meta.state = IndexState::Ready;
            store_meta(&txn, table, name, &meta)?;
            txn.commit().map_err(backend)?;
            crate::telemetry::metrics::INDEX_BUILD_SECONDS.observe(started.elapsed().as_secs_f64());
            return Ok(());
        }
        let result = (|| {
            let mut m = Maintainer::open(&txn, table, INDEX_LOG_BOUND)?;
            m.indexes.retain(|m| m.decl.name == name);
            for (id, doc) in &docs {
                // Re-adding what a write already added changes nothing.
                m.apply(id, None, Some(doc))?;
            }
            let (added, _) = m.finish(&txn, table)?;
            adjust_bytes(&txn, table, added, 0)
        })();
        match result {
            Ok(()) => txn.commit().map_err(backend)?,
            Err(e) => {
                drop(txn);
                let txn = db.begin_write().map_err(backend)?;
                let ours = declared_in_write(&txn, table)?
                    .iter()
                    .any(|d| d.name == name && Some(d.meta.generation) == generation);
                if ours {
                    remove_index(&txn, table, name)?;
                }
                txn.commit().map_err(backend)?;
                return Err(e);
            }
        }
        after = docs.last().map(|(id, _)| id.clone());
    }
}

/// Removes one index and its entries; returns whether it existed.
fn remove_index(txn: &redb::WriteTransaction, table: &str, name: &str) -> StoreResult<bool> {
    let existed = txn
        .open_table(INDEXES)
        .map_err(backend)?
        .remove((table, name))
        .map_err(backend)?
        .is_some();
    // The entries' bytes are counted after the log is applied; the log table goes with it.
    merge_log(txn, table, name)?;
    let tname = entry_table(table, name);
    let def: EntryTable<'_> = TableDefinition::new(&tname);
    let mut bytes = 0u64;
    if let Ok(t) = txn.open_table(def) {
        for row in t.iter().map_err(backend)? {
            let (k, _) = row.map_err(backend)?;
            bytes += k.value().len() as u64;
        }
    }
    txn.delete_table(def).map_err(backend)?;
    adjust_bytes(txn, table, 0, bytes)?;
    Ok(existed)
}

/// Starts building an index on its own thread; the receiver gets the outcome.
fn spawn_build(
    db: Arc<Database>,
    table: String,
    name: String,
) -> tokio::sync::oneshot::Receiver<StoreResult<()>> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let spawned = std::thread::Builder::new()
        .name("index-build".into())
        .spawn(move || {
            crate::telemetry::metrics::INDEX_BUILDS_RUNNING.inc();
            let out = build_index(&db, &table, &name);
            crate::telemetry::metrics::INDEX_BUILDS_RUNNING.dec();
            if let Err(e) = &out {
                crate::telemetry::metrics::INDEX_CHANGES
                    .with_label_values(&["failed"])
                    .inc();
                tracing::info!(error = %e, "index build failed; index dropped");
            }
            let _ = tx.send(out);
        });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "cannot start an index build thread");
    }
    rx
}

/// The `_id` index, as both backends list it.
pub(crate) fn id_index() -> IndexInfo {
    IndexInfo {
        name: ID_INDEX_NAME.to_owned(),
        keys: serde_json::json!({"_id": 1}),
        unique: true,
        state: IndexState::Ready,
    }
}

fn table_name(ns: &Namespace) -> String {
    format!("{}.{}", ns.database, ns.collection)
}

fn backend(e: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(e.to_string())
}

/// A redb-backed [`TenantStore`].
#[derive(Clone)]
pub struct EmbeddedStore {
    db: Arc<Database>,
    /// See [`INDEX_LOG_BOUND`].
    log_bound: u64,
}

/// Said of a redb file another process holds open (its file lock): a running gateway.
pub const IN_USE: &str = "the file is in use by another process";

/// An open failure; a file locked by another process says [`IN_USE`].
pub fn open_error(e: redb::DatabaseError) -> String {
    match e {
        redb::DatabaseError::DatabaseAlreadyOpen => IN_USE.to_owned(),
        e => e.to_string(),
    }
}

impl EmbeddedStore {
    /// Opens (or creates) the store file.
    pub fn open(path: &Path) -> StoreResult<Self> {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(backend)?;
        }
        let db = Database::create(path).map_err(|e| backend(open_error(e)))?;
        let txn = db.begin_write().map_err(backend)?;
        {
            let mut meta = txn.open_table(STORE_META).map_err(backend)?;
            if meta.get("registry").map_err(backend)?.is_none() {
                // Files written before the registry existed: register their tables once.
                let names: Vec<String> = txn
                    .list_tables()
                    .map_err(backend)?
                    .map(|t| t.name().to_owned())
                    .filter(|n| !n.starts_with("__"))
                    .collect();
                let mut registry = txn.open_table(COLLECTIONS).map_err(backend)?;
                for n in names {
                    registry.insert(n.as_str(), ()).map_err(backend)?;
                }
                meta.insert("registry", 1).map_err(backend)?;
            }
        }
        let unfinished: Vec<(String, String)> = {
            let indexes = txn.open_table(INDEXES).map_err(backend)?;
            let mut out = Vec::new();
            for row in indexes.iter().map_err(backend)? {
                let (k, v) = row.map_err(backend)?;
                let meta: StoredIndex = serde_json::from_slice(v.value()).map_err(backend)?;
                if meta.state == IndexState::Building {
                    let (t, n) = k.value();
                    out.push((t.to_owned(), n.to_owned()));
                }
            }
            out
        };
        txn.commit().map_err(backend)?;
        let db = Arc::new(db);
        // Builds interrupted by a stop or a crash start again (adding entries is idempotent).
        for (table, name) in unfinished {
            drop(spawn_build(db.clone(), table, name));
        }
        Ok(Self {
            db,
            log_bound: INDEX_LOG_BOUND,
        })
    }

    /// The same store with another bound on index logs ([`INDEX_LOG_BOUND`]): 0 merges every
    /// write's changes at once, `u64::MAX` never merges (tests of both paths).
    pub fn with_index_log_bound(mut self, bound: u64) -> Self {
        self.log_bound = bound;
        self
    }

    /// Runs `f` on the collection's table in a read transaction, off the event loop; `None`
    /// when the collection does not exist.
    async fn read_collection<T, F>(&self, ns: &Namespace, f: F) -> StoreResult<Option<T>>
    where
        T: Send + 'static,
        F: FnOnce(&ReadOnlyTable<&'static str, &'static [u8]>) -> StoreResult<T> + Send + 'static,
    {
        let name = table_name(ns);
        self.blocking(move |db| read_table(db, &name, f)).await
    }

    /// Like `read_collection`, on the calling thread: only for reads bounded by a few B-tree
    /// pages (a point read), where the hand-off to the blocking pool (a lock and two thread
    /// wake-ups) costs more than the read itself. A page not in redb's cache is read from disk
    /// on this thread.
    fn read_collection_inline<T>(
        &self,
        ns: &Namespace,
        f: impl FnOnce(&ReadOnlyTable<&'static str, &'static [u8]>) -> StoreResult<T>,
    ) -> StoreResult<Option<T>> {
        read_table(&self.db, &table_name(ns), f)
    }

    /// Runs blocking redb work off the event loop.
    async fn blocking<T, F>(&self, f: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&Database) -> StoreResult<T> + Send + 'static,
    {
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || f(&db))
            .await
            .map_err(backend)?
    }
}

/// Largest stored document a point read decodes on the worker thread; larger ones are decoded
/// on the blocking pool.
const INLINE_DECODE_BYTES: usize = 64 * 1024;

/// Runs `f` on the collection's table in a read transaction; `None` if it does not exist.
fn read_table<T>(
    db: &Database,
    name: &str,
    f: impl FnOnce(&ReadOnlyTable<&'static str, &'static [u8]>) -> StoreResult<T>,
) -> StoreResult<Option<T>> {
    let txn = db.begin_read().map_err(backend)?;
    let def: TableDefinition<&str, &[u8]> = TableDefinition::new(name);
    match txn.open_table(def) {
        Ok(table) => f(&table).map(Some),
        Err(redb::TableError::TableDoesNotExist(_)) => Ok(None),
        Err(e) => Err(backend(e)),
    }
}

/// Runs a query on one table, in one read transaction (a consistent snapshot).
///
/// `_id` order is the table's key order: the scan starts after the cursor's `_id`, runs
/// forwards or backwards and stops once `skip + limit` documents matched. Any other order
/// streams the table through a [`TopK`] of `skip + limit` positions (never every matching
/// document), then reads the page's documents by `_id` from the same snapshot.
fn find_in(
    table: &ReadOnlyTable<&'static str, &'static [u8]>,
    q: &FindQuery,
    explain: &mut Explain,
) -> StoreResult<Vec<Found>> {
    let skip = usize::try_from(q.skip).unwrap_or(usize::MAX);
    let limit = usize::try_from(q.limit).unwrap_or(usize::MAX);
    let page = |doc: &Document| Found {
        document: q.projection.apply(doc),
        position: q.sort.position(doc),
    };
    let mut out = Vec::new();
    if let Some(descending) = q.sort.id_order() {
        let after = q.after.as_ref().map(|p| p.id());
        let (lower, upper) = match (after, descending) {
            (None, _) => (Bound::Unbounded, Bound::Unbounded),
            (Some(id), false) => (Bound::Excluded(id), Bound::Unbounded),
            (Some(id), true) => (Bound::Unbounded, Bound::Excluded(id)),
        };
        let range = table.range::<&str>((lower, upper)).map_err(backend)?;
        let rows: Box<dyn Iterator<Item = _>> = if descending {
            Box::new(range.rev())
        } else {
            Box::new(range)
        };
        let mut skipped = 0;
        for row in rows {
            if out.len() >= limit {
                break;
            }
            let (_, v) = row.map_err(backend)?;
            let doc = decode(v.value())?;
            explain.docs_examined += 1;
            if !q.filter.matches(&doc) {
                continue;
            }
            if skipped < skip {
                skipped += 1;
                continue;
            }
            out.push(page(&doc));
        }
        return Ok(out);
    }
    let mut top = TopK::new(&q.sort, skip.saturating_add(limit));
    for row in table.iter().map_err(backend)? {
        let (_, v) = row.map_err(backend)?;
        let doc = decode(v.value())?;
        explain.docs_examined += 1;
        if !q.filter.matches(&doc) {
            continue;
        }
        if let Some(after) = &q.after {
            if q.sort.compare_to(&doc, after) != std::cmp::Ordering::Greater {
                continue;
            }
        }
        top.offer(&doc);
    }
    for pos in top.into_sorted().into_iter().skip(skip) {
        // The snapshot still holds every document the scan saw.
        let row = table.get(pos.id()).map_err(backend)?;
        let Some(row) = row else {
            return Err(StoreError::Backend(
                "document vanished within a snapshot".into(),
            ));
        };
        let doc = decode(row.value())?;
        out.push(Found {
            document: q.projection.apply(&doc),
            position: pos,
        });
    }
    Ok(out)
}

/// Largest `skip + limit` for which a query in `_id` order is answered from a secondary
/// index (through a top-k of that many positions); beyond, it streams the `_id` order.
const MAX_PLANNED_WINDOW: u64 = 10_000;

type DocTable = ReadOnlyTable<&'static str, &'static [u8]>;
type EntryReader = ReadOnlyTable<&'static [u8], ()>;
type LogReader = ReadOnlyTable<&'static [u8], u8>;

/// An index as a read sees it: its entries and its log (`None`: no log).
struct IndexReader {
    entries: EntryReader,
    log: Option<LogReader>,
}

impl IndexReader {
    /// Whether the log holds no row in `[lo, hi)` (then the entries alone answer).
    fn log_quiet(&self, lo: &[u8], hi: Option<&[u8]>) -> StoreResult<bool> {
        let Some(log) = &self.log else {
            return Ok(true);
        };
        let mut rows = match hi {
            Some(h) => log.range::<&[u8]>(lo..h),
            None => log.range::<&[u8]>(lo..),
        }
        .map_err(backend)?;
        Ok(rows.next().is_none())
    }

    /// The `_id`s of the entries in `[lo, hi)`, in key order or reversed (see `range`).
    fn ids<'a>(
        &'a self,
        lo: &[u8],
        hi: Option<&[u8]>,
        reverse: bool,
    ) -> StoreResult<Box<dyn Iterator<Item = StoreResult<String>> + 'a>> {
        let id = |k: &[u8]| {
            entry_id(k)
                .map(str::to_owned)
                .ok_or_else(|| StoreError::Backend("malformed index entry".into()))
        };
        if !self.log_quiet(lo, hi)? {
            return Ok(Box::new(self.range(lo, hi, reverse)?.map(move |k| id(&k?))));
        }
        let rows = match hi {
            Some(h) => self.entries.range::<&[u8]>(lo..h),
            None => self.entries.range::<&[u8]>(lo..),
        }
        .map_err(backend)?
        .map(move |row| id(row.map_err(backend)?.0.value()));
        Ok(if reverse {
            Box::new(rows.rev())
        } else {
            Box::new(rows)
        })
    }

    /// How many entries `[lo, hi)` holds: the index's, corrected by each log row there.
    fn count(&self, lo: &[u8], hi: Option<&[u8]>) -> StoreResult<u64> {
        let mut n = match hi {
            Some(h) => self.entries.range::<&[u8]>(lo..h),
            None => self.entries.range::<&[u8]>(lo..),
        }
        .map_err(backend)?
        .try_fold(0u64, |n, row| row.map(|_| n + 1))
        .map_err(backend)?;
        if let Some(log) = &self.log {
            let rows = match hi {
                Some(h) => log.range::<&[u8]>(lo..h),
                None => log.range::<&[u8]>(lo..),
            }
            .map_err(backend)?;
            for row in rows {
                let (k, op) = row.map_err(backend)?;
                let indexed = self.entries.get(k.value()).map_err(backend)?.is_some();
                match (op.value() == 1, indexed) {
                    (true, false) => n += 1,
                    (false, true) => n -= 1,
                    _ => {}
                }
            }
        }
        Ok(n)
    }

    /// The entry keys in `[lo, hi)` (`hi` `None`: to the end), in key order or reversed:
    /// the entries merged with the log, where a log row replaces the entry of its key (1:
    /// there, 0: not there).
    fn range<'a>(
        &'a self,
        lo: &[u8],
        hi: Option<&[u8]>,
        reverse: bool,
    ) -> StoreResult<impl Iterator<Item = StoreResult<Vec<u8>>> + 'a> {
        let entries = match hi {
            Some(h) => self.entries.range::<&[u8]>(lo..h),
            None => self.entries.range::<&[u8]>(lo..),
        }
        .map_err(backend)?
        .map(|row| row.map(|(k, _)| k.value().to_vec()).map_err(backend));
        let entries: Box<dyn Iterator<Item = StoreResult<Vec<u8>>> + 'a> = if reverse {
            Box::new(entries.rev())
        } else {
            Box::new(entries)
        };
        let log: Box<dyn Iterator<Item = StoreResult<(Vec<u8>, bool)>> + 'a> = match &self.log {
            None => Box::new(std::iter::empty()),
            Some(log) => {
                let rows = match hi {
                    Some(h) => log.range::<&[u8]>(lo..h),
                    None => log.range::<&[u8]>(lo..),
                }
                .map_err(backend)?
                .map(|row| {
                    row.map(|(k, v)| (k.value().to_vec(), v.value() == 1))
                        .map_err(backend)
                });
                if reverse {
                    Box::new(rows.rev())
                } else {
                    Box::new(rows)
                }
            }
        };
        Ok(Merged {
            entries: entries.peekable(),
            log: log.peekable(),
            reverse,
        })
    }
}

/// Entry keys merged with log rows, both in the same order (see [`IndexReader::range`]).
struct Merged<E: Iterator, L: Iterator> {
    entries: std::iter::Peekable<E>,
    log: std::iter::Peekable<L>,
    reverse: bool,
}

impl<E, L> Iterator for Merged<E, L>
where
    E: Iterator<Item = StoreResult<Vec<u8>>>,
    L: Iterator<Item = StoreResult<(Vec<u8>, bool)>>,
{
    type Item = StoreResult<Vec<u8>>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            let order = match (self.entries.peek(), self.log.peek()) {
                (None, None) => return None,
                (Some(Err(_)), _) | (Some(Ok(_)), None) => return self.entries.next(),
                (_, Some(Err(_))) | (None, Some(Ok(_))) => std::cmp::Ordering::Greater,
                (Some(Ok(e)), Some(Ok((l, _)))) => {
                    let o = e.cmp(l);
                    if self.reverse {
                        o.reverse()
                    } else {
                        o
                    }
                }
            };
            match order {
                std::cmp::Ordering::Less => return self.entries.next(),
                std::cmp::Ordering::Equal => {
                    // The log row stands for this entry.
                    self.entries.next();
                }
                std::cmp::Ordering::Greater => {}
            }
            match self.log.next()? {
                Err(e) => return Some(Err(e)),
                Ok((key, true)) => return Some(Ok(key)),
                Ok((_, false)) => continue,
            }
        }
    }
}

/// The collection's ready indexes and its tables in one read transaction, or `None` when
/// the collection does not exist.
struct Snapshot {
    table: DocTable,
    txn: redb::ReadTransaction,
    ready: Vec<Declared>,
}

impl Snapshot {
    fn open(db: &Database, name: &str) -> StoreResult<Option<Self>> {
        let txn = db.begin_read().map_err(backend)?;
        let def: TableDefinition<&str, &[u8]> = TableDefinition::new(name);
        let table = match txn.open_table(def) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
            Err(e) => return Err(backend(e)),
        };
        let ready = declared_in_read(&txn, name)?
            .into_iter()
            .filter(|d| d.meta.state == IndexState::Ready)
            .collect();
        Ok(Some(Snapshot { table, txn, ready }))
    }

    fn plan(&self, filter: &Filter, sort: Option<&super::query::Sort>) -> Option<Plan> {
        if self.ready.is_empty() {
            return None;
        }
        let defs: Vec<IndexDef> = self.ready.iter().map(Declared::def).collect();
        plan(&defs, filter, sort)
    }

    fn entries(&self, name: &str, plan: &Plan) -> StoreResult<IndexReader> {
        let index = &self.ready[plan.index].name;
        let tname = entry_table(name, index);
        let def: EntryTable<'_> = TableDefinition::new(&tname);
        let entries = self.txn.open_table(def).map_err(backend)?;
        let lname = log_table(name, index);
        let def_l: LogTable<'_> = TableDefinition::new(&lname);
        let log = match self.txn.open_table(def_l) {
            Ok(t) => Some(t),
            Err(redb::TableError::TableDoesNotExist(_)) => None,
            Err(e) => return Err(backend(e)),
        };
        Ok(IndexReader { entries, log })
    }

    fn doc(&self, id: &str) -> StoreResult<Document> {
        match self.table.get(id).map_err(backend)? {
            Some(row) => decode(row.value()),
            // The snapshot holds every document its index entries point to.
            None => Err(StoreError::Backend(
                "index entry without its document".into(),
            )),
        }
    }
}

/// The `_id`s of a plan's entries, in scan order.
fn scan_ids<'a>(
    entries: &'a IndexReader,
    plan: &'a Plan,
) -> impl Iterator<Item = StoreResult<String>> + 'a {
    let ranges: Vec<&(Vec<u8>, Option<Vec<u8>>)> = if plan.reverse {
        plan.ranges.iter().rev().collect()
    } else {
        plan.ranges.iter().collect()
    };
    ranges.into_iter().flat_map(move |(lo, hi)| {
        match entries.ids(lo, hi.as_deref(), plan.reverse) {
            Ok(rows) => rows,
            Err(e) => Box::new(std::iter::once(Err(e))),
        }
    })
}

/// Runs a query in one read snapshot, through the best index or a scan.
fn find_snapshot(snap: &Snapshot, name: &str, q: &FindQuery) -> StoreResult<(Vec<Found>, Explain)> {
    let mut explain = Explain::default();
    let sort = q.sort.id_order().is_none().then_some(&q.sort);
    let chosen = snap
        .plan(&q.filter, sort)
        .filter(|p| p.sorted || q.window() <= MAX_PLANNED_WINDOW);
    let Some(plan) = chosen else {
        let found = find_in(&snap.table, q, &mut explain)?;
        return Ok((found, explain));
    };
    explain.index = Some(snap.ready[plan.index].name.clone());
    let mut plan = plan;
    if let (Some(after), Some(seek), [(lo, hi)]) =
        (&q.after, &plan.seek, plan.ranges.as_mut_slice())
    {
        // A keyset page starts at its cursor's key (the entries with that very key and an
        // earlier `_id` are dropped below with every other earlier document).
        if let Some(at) = seek.key(after.keys()) {
            if plan.reverse {
                let end = succ(&at);
                if hi.as_ref().is_none_or(|h| end < *h) {
                    *hi = Some(end.max(lo.clone()));
                }
            } else if at > *lo {
                *lo = match hi {
                    Some(h) if at > *h => h.clone(),
                    _ => at,
                };
            }
        }
    }
    let entries = snap.entries(name, &plan)?;
    let skip = usize::try_from(q.skip).unwrap_or(usize::MAX);
    let limit = usize::try_from(q.limit).unwrap_or(usize::MAX);
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    if plan.sorted {
        let mut skipped = 0usize;
        let mut group: Vec<(SortPosition, Document)> = Vec::new();
        let mut emit = |group: &mut Vec<(SortPosition, Document)>, out: &mut Vec<Found>| {
            group.sort_by(|a, b| q.sort.compare_positions(&a.0, &b.0));
            for (position, doc) in group.drain(..) {
                if skipped < skip {
                    skipped += 1;
                } else if out.len() < limit {
                    out.push(Found {
                        document: q.projection.apply(&doc),
                        position,
                    });
                }
            }
        };
        for id in scan_ids(&entries, &plan) {
            if out.len() >= limit {
                break;
            }
            let id = id?;
            explain.keys_examined += 1;
            if plan.dedupe && !seen.insert(id.clone()) {
                continue;
            }
            let doc = snap.doc(&id)?;
            explain.docs_examined += 1;
            if !q.filter.matches(&doc) {
                continue;
            }
            if let Some(after) = &q.after {
                if q.sort.compare_to(&doc, after) != std::cmp::Ordering::Greater {
                    continue;
                }
            }
            let position = q.sort.position(&doc);
            // A run of equal sort keys is reordered by `_id` before it is paged.
            if group
                .first()
                .is_some_and(|(first, _)| !plan.regroup || !q.sort.same_keys(first, &position))
            {
                emit(&mut group, &mut out);
            }
            group.push((position, doc));
        }
        emit(&mut group, &mut out);
        return Ok((out, explain));
    }
    let mut top = TopK::new(&q.sort, skip.saturating_add(limit));
    for id in scan_ids(&entries, &plan) {
        let id = id?;
        explain.keys_examined += 1;
        if plan.dedupe && !seen.insert(id.clone()) {
            continue;
        }
        let doc = snap.doc(&id)?;
        explain.docs_examined += 1;
        if !q.filter.matches(&doc) {
            continue;
        }
        if let Some(after) = &q.after {
            if q.sort.compare_to(&doc, after) != std::cmp::Ordering::Greater {
                continue;
            }
        }
        top.offer(&doc);
    }
    for pos in top.into_sorted().into_iter().skip(skip) {
        let doc = snap.doc(pos.id())?;
        out.push(Found {
            document: q.projection.apply(&doc),
            position: pos,
        });
    }
    Ok((out, explain))
}

/// Counts matching documents in one read snapshot, through the best index or a scan.
fn count_snapshot(snap: &Snapshot, name: &str, filter: &Filter) -> StoreResult<u64> {
    let Some(plan) = snap.plan(filter, None) else {
        let mut n = 0;
        for row in snap.table.iter().map_err(backend)? {
            let (_, v) = row.map_err(backend)?;
            if filter.matches(&decode(v.value())?) {
                n += 1;
            }
        }
        return Ok(n);
    };
    let entries = snap.entries(name, &plan)?;
    let mut n = 0;
    if plan.exact {
        // Each matching document has exactly one entry in the ranges.
        for (lo, hi) in &plan.ranges {
            n += entries.count(lo, hi.as_deref())?;
        }
        return Ok(n);
    }
    let mut seen = HashSet::new();
    for id in scan_ids(&entries, &plan) {
        let id = id?;
        if plan.dedupe && !seen.insert(id.clone()) {
            continue;
        }
        if filter.matches(&snap.doc(&id)?) {
            n += 1;
        }
    }
    Ok(n)
}

pub(crate) fn decode(bytes: &[u8]) -> StoreResult<Document> {
    serde_json::from_slice(bytes).map_err(backend)
}

/// Whether the collection exists, seen from inside a write transaction (so the answer holds
/// until it commits: redb has one writer at a time).
fn exists_in(txn: &redb::WriteTransaction, name: &str) -> StoreResult<bool> {
    let registry = txn.open_table(COLLECTIONS).map_err(backend)?;
    let found = registry.get(name).map_err(backend)?.is_some();
    Ok(found)
}

/// Adds `added` and subtracts `removed` bytes from the collection's byte count.
fn adjust_bytes(
    txn: &redb::WriteTransaction,
    name: &str,
    added: u64,
    removed: u64,
) -> StoreResult<()> {
    let mut sizes = txn.open_table(BYTES).map_err(backend)?;
    let total = sizes
        .get(name)
        .map_err(backend)?
        .map(|g| g.value())
        .unwrap_or(0);
    sizes
        .insert(name, (total + added).saturating_sub(removed))
        .map_err(backend)?;
    Ok(())
}

fn string_id(doc: &Document) -> StoreResult<&str> {
    doc.get("_id")
        .and_then(|v| v.as_str())
        .ok_or_else(|| StoreError::Backend("document without string _id".into()))
}

/// Records that the collection exists (`true`) or not.
fn register(txn: &redb::WriteTransaction, name: &str, exists: bool) -> StoreResult<()> {
    let mut registry = txn.open_table(COLLECTIONS).map_err(backend)?;
    if exists {
        registry.insert(name, ()).map_err(backend)?;
    } else {
        registry.remove(name).map_err(backend)?;
    }
    Ok(())
}

#[async_trait]
impl TenantStore for EmbeddedStore {
    async fn ping(&self) -> StoreResult<()> {
        self.blocking(|db| db.begin_read().map(|_| ()).map_err(backend))
            .await
    }

    async fn create_collection(&self, ns: &Namespace) -> StoreResult<()> {
        let name = table_name(ns);
        self.blocking(move |db| {
            let txn = db.begin_write().map_err(backend)?;
            if exists_in(&txn, &name)? {
                return Err(StoreError::CollectionExists);
            }
            {
                let def: TableDefinition<&str, &[u8]> = TableDefinition::new(&name);
                txn.open_table(def).map_err(backend)?;
            }
            register(&txn, &name, true)?;
            txn.commit().map_err(backend)
        })
        .await
    }

    async fn set_aside(&self, ns: &Namespace, new_name: &str) -> StoreResult<()> {
        let (name, to) = (table_name(ns), format!("{}.{new_name}", ns.database));
        self.blocking(move |db| {
            let txn = db.begin_write().map_err(backend)?;
            if exists_in(&txn, &name)? {
                let from: TableDefinition<&str, &[u8]> = TableDefinition::new(&name);
                let to_def: TableDefinition<&str, &[u8]> = TableDefinition::new(&to);
                txn.rename_table(from, to_def).map_err(backend)?;
                drop_indexes(&txn, &name)?;
                let mut bytes = txn.open_table(BYTES).map_err(backend)?;
                bytes.remove(name.as_str()).map_err(backend)?;
                register(&txn, &name, false)?;
            }
            txn.commit().map_err(backend)
        })
        .await
    }

    async fn drop_collection(&self, ns: &Namespace) -> StoreResult<()> {
        let name = table_name(ns);
        self.blocking(move |db| {
            let txn = db.begin_write().map_err(backend)?;
            {
                let def: TableDefinition<&str, &[u8]> = TableDefinition::new(&name);
                txn.delete_table(def).map_err(backend)?;
                drop_indexes(&txn, &name)?;
                let mut bytes = txn.open_table(BYTES).map_err(backend)?;
                bytes.remove(name.as_str()).map_err(backend)?;
            }
            register(&txn, &name, false)?;
            txn.commit().map_err(backend)
        })
        .await
    }

    async fn rename_collection(&self, from: &Namespace, to: &Namespace) -> StoreResult<u64> {
        let (from, to) = (table_name(from), table_name(to));
        let target = to.clone();
        let (count, building) = self
            .blocking(move |db| {
                let to_def: TableDefinition<&str, &[u8]> = TableDefinition::new(&to);
                let txn = db.begin_write().map_err(backend)?;
                let mut building = Vec::new();
                if exists_in(&txn, &from)? {
                    let from_def: TableDefinition<&str, &[u8]> = TableDefinition::new(&from);
                    // An empty target may exist from an earlier interrupted attempt.
                    txn.delete_table(to_def).map_err(backend)?;
                    txn.rename_table(from_def, to_def).map_err(backend)?;
                    // Indexes belong to the collection: they go with it, in the same commit.
                    building = rename_indexes(&txn, &from, &to)?;
                    let mut bytes = txn.open_table(BYTES).map_err(backend)?;
                    let moved = bytes
                        .remove(from.as_str())
                        .map_err(backend)?
                        .map(|g| g.value())
                        .unwrap_or(0);
                    bytes.insert(to.as_str(), moved).map_err(backend)?;
                    register(&txn, &from, false)?;
                }
                register(&txn, &to, true)?;
                let count = txn
                    .open_table(to_def)
                    .map_err(backend)?
                    .len()
                    .map_err(backend)?;
                txn.commit().map_err(backend)?;
                Ok((count, building))
            })
            .await?;
        for name in building {
            drop(spawn_build(self.db.clone(), target.clone(), name));
        }
        Ok(count)
    }

    async fn list_collections(&self, database: &DatabaseName) -> StoreResult<Vec<String>> {
        let prefix = format!("{database}.");
        self.blocking(move |db| {
            let txn = db.begin_read().map_err(backend)?;
            let names = txn
                .list_tables()
                .map_err(backend)?
                .filter_map(|t| t.name().strip_prefix(&prefix).map(str::to_owned))
                .collect();
            Ok(names)
        })
        .await
    }

    async fn insert_many(&self, ns: &Namespace, docs: Vec<Document>) -> StoreResult<()> {
        let name = table_name(ns);
        let log_bound = self.log_bound;
        self.blocking(move |db| {
            let txn = db.begin_write().map_err(backend)?;
            if !exists_in(&txn, &name)? {
                return Err(StoreError::CollectionMissing);
            }
            let mut added = 0u64;
            let (index_added, _) = {
                let def: TableDefinition<&str, &[u8]> = TableDefinition::new(&name);
                let mut table = txn.open_table(def).map_err(backend)?;
                let mut indexes = Maintainer::open(&txn, &name, log_bound)?;
                for doc in &docs {
                    let id = string_id(doc)?;
                    let bytes = serde_json::to_vec(doc).map_err(backend)?;
                    if table.get(id).map_err(backend)?.is_some() {
                        // Dropping the transaction without commit rolls every insert back.
                        return Err(StoreError::DuplicateId(id.to_owned()));
                    }
                    table.insert(id, bytes.as_slice()).map_err(backend)?;
                    indexes.apply(id, None, Some(doc))?;
                    added += bytes.len() as u64;
                }
                indexes.finish(&txn, &name)?
            };
            adjust_bytes(&txn, &name, added + index_added, 0)?;
            txn.commit().map_err(backend)
        })
        .await
    }

    async fn get(&self, ns: &Namespace, id: &str) -> StoreResult<Option<Document>> {
        enum Read {
            Decoded(Document),
            Large(Vec<u8>),
        }
        let found = self.read_collection_inline(ns, |table| {
            let Some(row) = table.get(id).map_err(backend)? else {
                return Ok(None);
            };
            let bytes = row.value();
            Ok(Some(if bytes.len() > INLINE_DECODE_BYTES {
                Read::Large(bytes.to_vec())
            } else {
                Read::Decoded(decode(bytes)?)
            }))
        })?;
        match found.flatten() {
            None => Ok(None),
            Some(Read::Decoded(doc)) => Ok(Some(doc)),
            // Decoding a large document would hold the worker (and its other connections)
            // for milliseconds.
            Some(Read::Large(bytes)) => tokio::task::spawn_blocking(move || decode(&bytes))
                .await
                .map_err(backend)?
                .map(Some),
        }
    }

    async fn get_many(&self, ns: &Namespace, ids: &[String]) -> StoreResult<Vec<Document>> {
        let ids = ids.to_vec();
        let found = self
            .read_collection(ns, move |table| {
                let mut out = Vec::with_capacity(ids.len());
                for id in &ids {
                    if let Some(g) = table.get(id.as_str()).map_err(backend)? {
                        out.push(decode(g.value())?);
                    }
                }
                Ok(out)
            })
            .await?;
        Ok(found.unwrap_or_default())
    }

    async fn count_all(&self, ns: &Namespace) -> StoreResult<u64> {
        let n = self
            .read_collection(ns, |table| table.len().map_err(backend))
            .await?;
        Ok(n.unwrap_or(0))
    }

    async fn find(&self, ns: &Namespace, query: &FindQuery) -> StoreResult<Vec<Found>> {
        Ok(self.explain_find(ns, query).await?.0)
    }

    async fn explain_find(
        &self,
        ns: &Namespace,
        query: &FindQuery,
    ) -> StoreResult<(Vec<Found>, Explain)> {
        let (name, query) = (table_name(ns), query.clone());
        self.blocking(move |db| match Snapshot::open(db, &name)? {
            Some(snap) => find_snapshot(&snap, &name, &query),
            None => Ok((Vec::new(), Explain::default())),
        })
        .await
    }

    async fn count(&self, ns: &Namespace, filter: &Filter) -> StoreResult<u64> {
        if filter.is_empty() {
            return self.count_all(ns).await;
        }
        let (name, filter) = (table_name(ns), filter.clone());
        self.blocking(move |db| match Snapshot::open(db, &name)? {
            Some(snap) => count_snapshot(&snap, &name, &filter),
            None => Ok(0),
        })
        .await
    }

    async fn create_index(
        &self,
        ns: &Namespace,
        spec: &IndexSpec,
        max_indexes: usize,
    ) -> StoreResult<IndexInfo> {
        let (name, spec) = (table_name(ns), spec.clone());
        let keys = spec.keys.to_json();
        let info = IndexInfo {
            name: spec.name.as_str().to_owned(),
            keys: keys.clone(),
            unique: spec.unique,
            state: IndexState::Building,
        };
        let table = name.clone();
        let existing = self
            .blocking(move |db| {
                let txn = db.begin_write().map_err(backend)?;
                if !exists_in(&txn, &table)? {
                    return Err(StoreError::CollectionMissing);
                }
                let declared = declared_in_write(&txn, &table)?;
                if let Some(d) = declared.iter().find(|d| d.name == spec.name.as_str()) {
                    if same_key_pattern(&d.meta.keys, &keys) && d.meta.unique == spec.unique {
                        return Ok(Some(d.info()));
                    }
                    return Err(StoreError::IndexConflict(format!(
                        "an index named {} exists with other keys or options",
                        spec.name
                    )));
                }
                if let Some(d) = declared
                    .iter()
                    .find(|d| same_key_pattern(&d.meta.keys, &keys))
                {
                    return Err(StoreError::IndexConflict(format!(
                        "index {} has the same keys",
                        d.name
                    )));
                }
                if declared.len() >= max_indexes {
                    return Err(StoreError::TooManyIndexes(max_indexes));
                }
                let meta = StoredIndex {
                    keys,
                    unique: spec.unique,
                    state: IndexState::Building,
                    multikey: false,
                    generation: rand::random(),
                };
                store_meta(&txn, &table, spec.name.as_str(), &meta)?;
                let tname = entry_table(&table, spec.name.as_str());
                let def: EntryTable<'_> = TableDefinition::new(&tname);
                txn.open_table(def).map_err(backend)?;
                let lname = log_table(&table, spec.name.as_str());
                let def_l: LogTable<'_> = TableDefinition::new(&lname);
                txn.delete_table(def_l).map_err(backend)?;
                txn.commit().map_err(backend)?;
                Ok(None)
            })
            .await?;
        if let Some(info) = existing {
            return Ok(info);
        }
        crate::telemetry::metrics::INDEX_CHANGES
            .with_label_values(&["created"])
            .inc();
        let done = spawn_build(self.db.clone(), name, info.name.clone());
        match tokio::time::timeout(BUILD_WAIT, done).await {
            // Still building: the build goes on by itself.
            Err(_) => Ok(info),
            Ok(Ok(Ok(()))) => Ok(IndexInfo {
                state: IndexState::Ready,
                ..info
            }),
            Ok(Ok(Err(e))) => Err(e),
            Ok(Err(_)) => Err(StoreError::Backend(
                "index build ended without an answer".into(),
            )),
        }
    }

    async fn list_indexes(&self, ns: &Namespace) -> StoreResult<Vec<IndexInfo>> {
        let name = table_name(ns);
        self.blocking(move |db| {
            let txn = db.begin_read().map_err(backend)?;
            let registry = match txn.open_table(COLLECTIONS) {
                Ok(t) => t,
                Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
                Err(e) => return Err(backend(e)),
            };
            if registry.get(name.as_str()).map_err(backend)?.is_none() {
                return Ok(Vec::new());
            }
            let mut out = vec![id_index()];
            out.extend(declared_in_read(&txn, &name)?.iter().map(Declared::info));
            Ok(out)
        })
        .await
    }

    async fn drop_index(&self, ns: &Namespace, index: &IndexName) -> StoreResult<()> {
        let (name, index) = (table_name(ns), index.as_str().to_owned());
        self.blocking(move |db| {
            let txn = db.begin_write().map_err(backend)?;
            if !remove_index(&txn, &name, &index)? {
                return Err(StoreError::IndexNotFound);
            }
            txn.commit().map_err(backend)?;
            crate::telemetry::metrics::INDEX_CHANGES
                .with_label_values(&["dropped"])
                .inc();
            Ok(())
        })
        .await
    }

    async fn update_by_id(
        &self,
        ns: &Namespace,
        id: &str,
        update: &Update,
        max_document_bytes: usize,
    ) -> StoreResult<Option<Document>> {
        let (name, id, update) = (table_name(ns), id.to_owned(), update.clone());
        let log_bound = self.log_bound;
        self.blocking(move |db| {
            let txn = db.begin_write().map_err(backend)?;
            if !exists_in(&txn, &name)? {
                return Ok(None);
            }
            let updated = {
                let def: TableDefinition<&str, &[u8]> = TableDefinition::new(&name);
                let mut table = txn.open_table(def).map_err(backend)?;
                let Some(current) = table
                    .get(id.as_str())
                    .map_err(backend)?
                    .map(|g| g.value().to_vec())
                else {
                    return Ok(None);
                };
                let old = decode(&current)?;
                let (doc, bytes) = super::updated_document(&old, &update, max_document_bytes)
                    .map_err(StoreError::InvalidUpdate)?;
                table
                    .insert(id.as_str(), bytes.as_slice())
                    .map_err(backend)?;
                let mut indexes = Maintainer::open(&txn, &name, log_bound)?;
                indexes.apply(&id, Some(&old), Some(&doc))?;
                let (ia, ir) = indexes.finish(&txn, &name)?;
                adjust_bytes(
                    &txn,
                    &name,
                    bytes.len() as u64 + ia,
                    current.len() as u64 + ir,
                )?;
                doc
            };
            txn.commit().map_err(backend)?;
            Ok(Some(updated))
        })
        .await
    }

    async fn delete_by_id(&self, ns: &Namespace, id: &str) -> StoreResult<bool> {
        let (name, id) = (table_name(ns), id.to_owned());
        let log_bound = self.log_bound;
        self.blocking(move |db| {
            let txn = db.begin_write().map_err(backend)?;
            if !exists_in(&txn, &name)? {
                return Ok(false);
            }
            let removed = {
                let def: TableDefinition<&str, &[u8]> = TableDefinition::new(&name);
                let mut table = match txn.open_table(def) {
                    Ok(t) => t,
                    Err(e) => return Err(backend(e)),
                };
                let removed = table
                    .remove(id.as_str())
                    .map_err(backend)?
                    .map(|g| g.value().to_vec());
                if let Some(old) = &removed {
                    let mut indexes = Maintainer::open(&txn, &name, log_bound)?;
                    let mut ir = 0;
                    if !indexes.is_empty() {
                        indexes.apply(&id, Some(&decode(old)?), None)?;
                        ir = indexes.finish(&txn, &name)?.1;
                    }
                    adjust_bytes(&txn, &name, 0, old.len() as u64 + ir)?;
                }
                removed.is_some()
            };
            txn.commit().map_err(backend)?;
            Ok(removed)
        })
        .await
    }

    async fn scan_after(
        &self,
        ns: &Namespace,
        after: Option<&str>,
        limit: usize,
    ) -> StoreResult<Vec<Document>> {
        let after = after.map(str::to_owned);
        let found = self
            .read_collection(ns, move |table| {
                let lower = match after.as_deref() {
                    Some(id) => Bound::Excluded(id),
                    None => Bound::Unbounded,
                };
                let mut out = Vec::with_capacity(limit.min(4096));
                for row in table
                    .range::<&str>((lower, Bound::Unbounded))
                    .map_err(backend)?
                    .take(limit)
                {
                    let (_, v) = row.map_err(backend)?;
                    out.push(decode(v.value())?);
                }
                Ok(out)
            })
            .await?;
        Ok(found.unwrap_or_default())
    }

    async fn upsert_many(&self, ns: &Namespace, docs: Vec<Document>) -> StoreResult<()> {
        let name = table_name(ns);
        let log_bound = self.log_bound;
        self.blocking(move |db| {
            let txn = db.begin_write().map_err(backend)?;
            if !exists_in(&txn, &name)? {
                return Err(StoreError::CollectionMissing);
            }
            let (mut added, mut removed) = (0u64, 0u64);
            {
                let def: TableDefinition<&str, &[u8]> = TableDefinition::new(&name);
                let mut table = txn.open_table(def).map_err(backend)?;
                let mut indexes = Maintainer::open(&txn, &name, log_bound)?;
                let mut bytes = Vec::new();
                for doc in &docs {
                    let id = string_id(doc)?;
                    bytes.clear();
                    serde_json::to_writer(&mut bytes, doc).map_err(backend)?;
                    let old = match table.insert(id, bytes.as_slice()).map_err(backend)? {
                        Some(old) => {
                            removed += old.value().len() as u64;
                            (!indexes.is_empty())
                                .then(|| decode(old.value()))
                                .transpose()?
                        }
                        None => None,
                    };
                    indexes.apply(id, old.as_ref(), Some(doc))?;
                    added += bytes.len() as u64;
                }
                let (ia, ir) = indexes.finish(&txn, &name)?;
                added += ia;
                removed += ir;
            }
            adjust_bytes(&txn, &name, added, removed)?;
            txn.commit().map_err(backend)
        })
        .await
    }

    async fn delete_many_ids(&self, ns: &Namespace, ids: &[String]) -> StoreResult<u64> {
        let (name, ids) = (table_name(ns), ids.to_vec());
        let log_bound = self.log_bound;
        self.blocking(move |db| {
            let txn = db.begin_write().map_err(backend)?;
            if !exists_in(&txn, &name)? {
                return Ok(0);
            }
            let (mut deleted, mut removed) = (0u64, 0u64);
            {
                let def: TableDefinition<&str, &[u8]> = TableDefinition::new(&name);
                let mut table = txn.open_table(def).map_err(backend)?;
                let mut indexes = Maintainer::open(&txn, &name, log_bound)?;
                for id in &ids {
                    if let Some(old) = table.remove(id.as_str()).map_err(backend)? {
                        deleted += 1;
                        removed += old.value().len() as u64;
                        if !indexes.is_empty() {
                            indexes.apply(id, Some(&decode(old.value())?), None)?;
                        }
                    }
                }
                removed += indexes.finish(&txn, &name)?.1;
            }
            adjust_bytes(&txn, &name, 0, removed)?;
            txn.commit().map_err(backend)?;
            Ok(deleted)
        })
        .await
    }

    async fn collection_bytes(&self, ns: &Namespace) -> StoreResult<u64> {
        let name = table_name(ns);
        self.blocking(move |db| {
            let txn = db.begin_read().map_err(backend)?;
            let sizes = txn.open_table(BYTES);
            match sizes {
                Ok(t) => Ok(t
                    .get(name.as_str())
                    .map_err(backend)?
                    .map(|g| g.value())
                    .unwrap_or(0)),
                Err(redb::TableError::TableDoesNotExist(_)) => Ok(0),
                Err(e) => Err(backend(e)),
            }
        })
        .await
    }
}
