//! Tenant collection backends. [`TenantStore`] is the one interface the rest of the gateway
//! uses; [`embedded::EmbeddedStore`] (redb) and [`mongo::MongoStore`] implement it, and both
//! pass the same conformance suite (`tests/conformance/store.rs`).

pub mod embedded;
pub mod index;
pub mod mongo;
pub mod observed;
pub mod query;

use crate::domain::{CollectionName, DatabaseName, IndexKeys, IndexName};
use async_trait::async_trait;
use query::{Filter, Projection, Sort, SortPosition, Update};
use std::fmt;

/// A JSON document as stored: always an object with a string `_id`.
pub type Document = serde_json::Map<String, serde_json::Value>;

/// Where a tenant's documents live on a shard.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Namespace {
    /// Database on the shard.
    pub database: DatabaseName,
    /// The tenant's collection.
    pub collection: CollectionName,
}

impl fmt::Display for Namespace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.database, self.collection)
    }
}

/// A backend failure.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The shard cannot be reached or selected in time: clients get 503.
    #[error("shard unavailable: {0}")]
    Unavailable(String),
    /// A create found the collection already there (an orphan, never adopted).
    #[error("collection already exists")]
    CollectionExists,
    /// A write found no collection: the organization was deleted or renamed meanwhile.
    /// Writes never create collections, so none can outlive its organization.
    #[error("collection does not exist")]
    CollectionMissing,
    /// An insert reused an `_id` already in the collection.
    #[error("duplicate _id {0:?}")]
    DuplicateId(String),
    /// The update produced a document the gateway refuses to store.
    #[error("invalid update: {0}")]
    InvalidUpdate(query::QueryError),
    /// The document kept changing under a compare-and-set update until the retries ran out:
    /// clients get 409 and may retry.
    #[error("document {0:?} was changed concurrently; update not applied")]
    ConcurrentUpdate(String),
    /// The backend refused to sort that many documents in memory (MongoDB's sort memory
    /// limit): clients get the same 400 as for a window over `data.max_sort_window`.
    #[error("sort exceeds the backend's memory limit: {0}")]
    SortTooLarge(String),
    /// A write (or an index build) would give two documents the same key in a unique
    /// index: clients get 409 `duplicate_key` naming the index.
    #[error("duplicate key in unique index {index}: {key}")]
    DuplicateKey {
        /// The index's name.
        index: String,
        /// The duplicated key, as JSON (clipped).
        key: String,
    },
    /// An index of that name exists with other keys or options, or one with the same keys
    /// exists under another name.
    #[error("index conflict: {0}")]
    IndexConflict(String),
    /// No index of that name.
    #[error("index not found")]
    IndexNotFound,
    /// The collection already has the most indexes allowed.
    #[error("too many indexes (at most {0})")]
    TooManyIndexes(usize),
    /// A document has arrays at two fields of one compound index (MongoDB's "cannot index
    /// parallel arrays"): refused on both backends.
    #[error("cannot index parallel arrays: {0}")]
    ParallelArrays(String),
    /// Anything else the backend reported.
    #[error("store error: {0}")]
    Backend(String),
}

/// A validated index declaration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexSpec {
    /// Its name.
    pub name: IndexName,
    /// Its key pattern.
    pub keys: IndexKeys,
    /// Whether two documents may not share a key.
    pub unique: bool,
}

/// Where an index stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IndexState {
    /// Being built over existing documents; writes already maintain it, queries do not use it.
    Building,
    /// Complete: maintained by every write and used by the planner.
    Ready,
}

/// An index as a backend reports it.
#[derive(Debug, Clone, PartialEq)]
pub struct IndexInfo {
    /// The name (`_id_` for the `_id` index).
    pub name: String,
    /// The key pattern, `{"path": 1 | -1}`.
    pub keys: serde_json::Value,
    /// Unique keys.
    pub unique: bool,
    /// Building or ready.
    pub state: IndexState,
}

/// How a query was answered (`"explain": true`).
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct Explain {
    /// The index used, or `None` for a collection scan.
    pub index: Option<String>,
    /// Index keys read.
    pub keys_examined: u64,
    /// Documents read.
    pub docs_examined: u64,
}

/// A validated query: filter, order, projection and the page to return.
#[derive(Debug, Clone)]
pub struct FindQuery {
    /// Which documents.
    pub filter: Filter,
    /// Their order (always total: ties broken by `_id`).
    pub sort: Sort,
    /// Which fields to return.
    pub projection: Projection,
    /// Documents to skip (after `after`, when given).
    pub skip: u64,
    /// Documents to return at most.
    pub limit: u64,
    /// Keyset paging: only documents strictly after this position in `sort`'s order.
    pub after: Option<SortPosition>,
}

impl FindQuery {
    /// Documents a sorted query has to hold at once: `skip + limit`. Orders other than
    /// `_id` order are refused beyond a bound on this (`data.max_sort_window`), checked
    /// before the store is reached so both backends answer alike.
    pub fn window(&self) -> u64 {
        self.skip.saturating_add(self.limit)
    }
}

/// One document of a query's page and its position in the query's order (taken before the
/// projection, which may drop the sort fields), from which a keyset cursor continues.
#[derive(Debug, Clone)]
pub struct Found {
    /// The document, projected.
    pub document: Document,
    /// Where it stands in the query's sort.
    pub position: SortPosition,
}

/// Result alias for store operations.
pub type StoreResult<T> = Result<T, StoreError>;

/// One backend holding tenant collections (a shard).
///
/// Every method is idempotent where it can be, because the movers retry them after a crash.
#[async_trait]
pub trait TenantStore: Send + Sync + 'static {
    /// Checks the backend answers.
    async fn ping(&self) -> StoreResult<()>;

    /// Creates the collection; [`StoreError::CollectionExists`] if it is already there, so
    /// a new organization never inherits documents it did not write.
    async fn create_collection(&self, ns: &Namespace) -> StoreResult<()>;

    /// Moves a collection aside under `new_name` (an orphan found where a tenant's collection
    /// is about to be created), keeping its documents for an operator to inspect.
    async fn set_aside(&self, ns: &Namespace, new_name: &str) -> StoreResult<()>;

    /// Drops the collection and its documents; succeeds if it does not exist.
    async fn drop_collection(&self, ns: &Namespace) -> StoreResult<()>;

    /// Moves every document of `from` into `to` (same database) and removes `from`.
    /// Crash-safe and idempotent: when `from` is gone and `to` exists, it has already happened.
    /// Returns the number of documents in `to` afterwards.
    async fn rename_collection(&self, from: &Namespace, to: &Namespace) -> StoreResult<u64>;

    /// Names of the collections in a database (tenant collections and any others).
    async fn list_collections(&self, database: &DatabaseName) -> StoreResult<Vec<String>>;

    /// Inserts documents that already carry their `_id`, all or nothing. Like every write,
    /// fails with [`StoreError::CollectionMissing`] (embedded store) rather than create the
    /// collection; on MongoDB, fences keep writes away from collections being dropped.
    async fn insert_many(&self, ns: &Namespace, docs: Vec<Document>) -> StoreResult<()>;

    /// The document with this `_id`, if any.
    async fn get(&self, ns: &Namespace, id: &str) -> StoreResult<Option<Document>>;

    /// Number of documents in the collection.
    async fn count_all(&self, ns: &Namespace) -> StoreResult<u64>;

    /// Documents matching the query, sorted, projected and paged, with their positions.
    /// Never loads the whole collection: `_id` order streams and stops once the page is
    /// full; other orders keep a top-k of `skip + limit`.
    async fn find(&self, ns: &Namespace, query: &FindQuery) -> StoreResult<Vec<Found>>;

    /// Number of documents matching the filter.
    async fn count(&self, ns: &Namespace, filter: &Filter) -> StoreResult<u64>;

    /// Applies an update to the document with this `_id`; returns the updated document, or
    /// `None` when there is no such document (also when it is deleted meanwhile). The update
    /// has been validated; the result is computed with [`updated_document`] and stored only
    /// if it passes. Atomic: a concurrent write to the document is never lost, and a refused
    /// result is never stored, not even briefly. May fail with
    /// [`StoreError::ConcurrentUpdate`] when the document keeps changing.
    async fn update_by_id(
        &self,
        ns: &Namespace,
        id: &str,
        update: &Update,
        max_document_bytes: usize,
    ) -> StoreResult<Option<Document>>;

    /// Deletes the document with this `_id`; false when there was none.
    async fn delete_by_id(&self, ns: &Namespace, id: &str) -> StoreResult<bool>;

    /// Bytes the collection's documents occupy (for quotas).
    async fn collection_bytes(&self, ns: &Namespace) -> StoreResult<u64>;

    /// Up to `limit` documents whose `_id` is greater than `after` (all when `None`), in
    /// ascending `_id` order: resumable batched reading for moves. Both backends order string
    /// `_id`s by their UTF-8 bytes (redb keys; MongoDB's binary string comparison, as tenant
    /// collections have no collation). A missing collection reads as empty.
    async fn scan_after(
        &self,
        ns: &Namespace,
        after: Option<&str>,
        limit: usize,
    ) -> StoreResult<Vec<Document>>;

    /// Inserts each document or replaces the one with its `_id` (a batch should not repeat an
    /// `_id`). Idempotent, so a move can replay a batch after a crash. Like
    /// [`TenantStore::insert_many`] it never creates the collection on the embedded store
    /// ([`StoreError::CollectionMissing`]); not atomic across the batch on MongoDB.
    async fn upsert_many(&self, ns: &Namespace, docs: Vec<Document>) -> StoreResult<()>;

    /// The documents with these `_id`s that exist, in any order, read where the last
    /// acknowledged write is certain to be (MongoDB: the primary, whatever the shard's read
    /// preference): a move copies what it reads here.
    async fn get_many(&self, ns: &Namespace, ids: &[String]) -> StoreResult<Vec<Document>>;

    /// Deletes the documents with these `_id`s (a move's catch-up applies deletes); returns
    /// how many there were. A missing collection has nothing to delete.
    async fn delete_many_ids(&self, ns: &Namespace, ids: &[String]) -> StoreResult<u64>;

    /// Creates an index on the collection (at most `max_indexes` besides `_id`). Building
    /// over existing documents may go on after this returns (`state: building`); a unique
    /// index that existing documents violate fails with [`StoreError::DuplicateKey`] (here,
    /// or later by disappearing, when the build outlives the call). Creating the same index
    /// again (same name, keys and options) succeeds and changes nothing.
    async fn create_index(
        &self,
        ns: &Namespace,
        spec: &IndexSpec,
        max_indexes: usize,
    ) -> StoreResult<IndexInfo>;

    /// Every index of the collection, `_id_` first. A missing collection has none.
    async fn list_indexes(&self, ns: &Namespace) -> StoreResult<Vec<IndexInfo>>;

    /// Drops an index; [`StoreError::IndexNotFound`] when there is none of that name.
    async fn drop_index(&self, ns: &Namespace, name: &IndexName) -> StoreResult<()>;

    /// Like [`TenantStore::find`], and says how the query was answered.
    async fn explain_find(
        &self,
        ns: &Namespace,
        query: &FindQuery,
    ) -> StoreResult<(Vec<Found>, Explain)>;
}

/// Applies a validated update to a copy of `current` with the shared update code and checks
/// the result as every backend must: a valid document of at most `max_document_bytes` (as
/// JSON). Returns the new document and its JSON bytes; nothing is written.
pub fn updated_document(
    current: &Document,
    update: &Update,
    max_document_bytes: usize,
) -> Result<(Document, Vec<u8>), query::QueryError> {
    let mut doc = current.clone();
    update.apply(&mut doc)?;
    query::validate_document(&doc, &query::QueryLimits::default())?;
    let bytes = serde_json::to_vec(&doc).expect("a JSON object always serializes");
    if bytes.len() > max_document_bytes {
        return Err(query::QueryError {
            code: "document_too_large",
            path: String::new(),
            operator: None,
            message: format!("updated document exceeds {max_document_bytes} bytes"),
        });
    }
    Ok((doc, bytes))
}

/// Generates a document id in MongoDB ObjectId form (24 hex digits), time-ordered.
pub fn new_object_id() -> String {
    bson::oid::ObjectId::new().to_hex()
}
