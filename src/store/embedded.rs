//! The embedded backend: tenant collections as tables in a redb file. ACID, fsync on every
//! commit, pure Rust. Each collection `db.coll` is one table keyed by `_id` holding the
//! document as JSON bytes; a side table keeps byte counts for quotas.

use super::query::{Filter, TopK, Update};
use super::{Document, FindQuery, Found, Namespace, StoreError, StoreResult, TenantStore};
use crate::domain::DatabaseName;
use async_trait::async_trait;
use redb::{
    Database, ReadOnlyTable, ReadableDatabase, ReadableTable, ReadableTableMetadata,
    TableDefinition, TableHandle,
};
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
}

impl EmbeddedStore {
    /// Opens (or creates) the store file.
    pub fn open(path: &Path) -> StoreResult<Self> {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(backend)?;
        }
        let db = Database::create(path).map_err(backend)?;
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
        txn.commit().map_err(backend)?;
        Ok(Self { db: Arc::new(db) })
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
        self.blocking(move |db| {
            let to_def: TableDefinition<&str, &[u8]> = TableDefinition::new(&to);
            let txn = db.begin_write().map_err(backend)?;
            if exists_in(&txn, &from)? {
                let from_def: TableDefinition<&str, &[u8]> = TableDefinition::new(&from);
                // An empty target may exist from an earlier interrupted attempt.
                txn.delete_table(to_def).map_err(backend)?;
                txn.rename_table(from_def, to_def).map_err(backend)?;
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
            Ok(count)
        })
        .await
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
        self.blocking(move |db| {
            let txn = db.begin_write().map_err(backend)?;
            if !exists_in(&txn, &name)? {
                return Err(StoreError::CollectionMissing);
            }
            let mut added = 0u64;
            {
                let def: TableDefinition<&str, &[u8]> = TableDefinition::new(&name);
                let mut table = txn.open_table(def).map_err(backend)?;
                for doc in &docs {
                    let id = doc
                        .get("_id")
                        .and_then(|v| v.as_str())
                        .ok_or_else(|| StoreError::Backend("document without string _id".into()))?;
                    let bytes = serde_json::to_vec(doc).map_err(backend)?;
                    if table.get(id).map_err(backend)?.is_some() {
                        // Dropping the transaction without commit rolls every insert back.
                        return Err(StoreError::DuplicateId(id.to_owned()));
                    }
                    table.insert(id, bytes.as_slice()).map_err(backend)?;
                    added += bytes.len() as u64;
                }
                let mut bytes = txn.open_table(BYTES).map_err(backend)?;
                let current = bytes
                    .get(name.as_str())
                    .map_err(backend)?
                    .map(|g| g.value())
                    .unwrap_or(0);
                bytes
                    .insert(name.as_str(), current + added)
                    .map_err(backend)?;
            }
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
        let query = query.clone();
        let found = self
            .read_collection(ns, move |table| find_in(table, &query))
            .await?;
        Ok(found.unwrap_or_default())
    }

    async fn count(&self, ns: &Namespace, filter: &Filter) -> StoreResult<u64> {
        if filter.is_empty() {
            return self.count_all(ns).await;
        }
        let filter = filter.clone();
        let n = self
            .read_collection(ns, move |table| {
                let mut n = 0;
                for row in table.iter().map_err(backend)? {
                    let (_, v) = row.map_err(backend)?;
                    if filter.matches(&decode(v.value())?) {
                        n += 1;
                    }
                }
                Ok(n)
            })
            .await?;
        Ok(n.unwrap_or(0))
    }

    async fn update_by_id(
        &self,
        ns: &Namespace,
        id: &str,
        update: &Update,
        max_document_bytes: usize,
    ) -> StoreResult<Option<Document>> {
        let (name, id, update) = (table_name(ns), id.to_owned(), update.clone());
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
                let (doc, bytes) =
                    super::updated_document(&decode(&current)?, &update, max_document_bytes)
                        .map_err(StoreError::InvalidUpdate)?;
                table
                    .insert(id.as_str(), bytes.as_slice())
                    .map_err(backend)?;
                let mut sizes = txn.open_table(BYTES).map_err(backend)?;
                let total = sizes
                    .get(name.as_str())
                    .map_err(backend)?
                    .map(|g| g.value())
                    .unwrap_or(0);
                let next = (total + bytes.len() as u64).saturating_sub(current.len() as u64);
                sizes.insert(name.as_str(), next).map_err(backend)?;
                doc
            };
            txn.commit().map_err(backend)?;
            Ok(Some(updated))
        })
        .await
    }

    async fn delete_by_id(&self, ns: &Namespace, id: &str) -> StoreResult<bool> {
        let (name, id) = (table_name(ns), id.to_owned());
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
                    .map(|g| g.value().len() as u64);
                if let Some(len) = removed {
                    let mut sizes = txn.open_table(BYTES).map_err(backend)?;
                    let total = sizes
                        .get(name.as_str())
                        .map_err(backend)?
                        .map(|g| g.value())
                        .unwrap_or(0);
                    sizes
                        .insert(name.as_str(), total.saturating_sub(len))
                        .map_err(backend)?;
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
        self.blocking(move |db| {
            let txn = db.begin_write().map_err(backend)?;
            if !exists_in(&txn, &name)? {
                return Err(StoreError::CollectionMissing);
            }
            let (mut added, mut removed) = (0u64, 0u64);
            {
                let def: TableDefinition<&str, &[u8]> = TableDefinition::new(&name);
                let mut table = txn.open_table(def).map_err(backend)?;
                let mut bytes = Vec::new();
                for doc in &docs {
                    let id = string_id(doc)?;
                    bytes.clear();
                    serde_json::to_writer(&mut bytes, doc).map_err(backend)?;
                    if let Some(old) = table.insert(id, bytes.as_slice()).map_err(backend)? {
                        removed += old.value().len() as u64;
                    }
                    added += bytes.len() as u64;
                }
            }
            adjust_bytes(&txn, &name, added, removed)?;
            txn.commit().map_err(backend)
        })
        .await
    }

    async fn delete_many_ids(&self, ns: &Namespace, ids: &[String]) -> StoreResult<u64> {
        let (name, ids) = (table_name(ns), ids.to_vec());
        self.blocking(move |db| {
            let txn = db.begin_write().map_err(backend)?;
            if !exists_in(&txn, &name)? {
                return Ok(0);
            }
            let (mut deleted, mut removed) = (0u64, 0u64);
            {
                let def: TableDefinition<&str, &[u8]> = TableDefinition::new(&name);
                let mut table = txn.open_table(def).map_err(backend)?;
                for id in &ids {
                    if let Some(old) = table.remove(id.as_str()).map_err(backend)? {
                        deleted += 1;
                        removed += old.value().len() as u64;
                    }
                }
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
