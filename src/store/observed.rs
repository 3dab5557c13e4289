//! [`Observed`]: wraps any [`TenantStore`] to record operation latency and errors per shard and
//! operation (`org_gateway_shard_operation_*`), and the shard's health.

use super::query::{Filter, Update};
use super::{
    Document, Explain, FindQuery, Found, IndexInfo, IndexSpec, Namespace, StoreError, StoreResult,
    TenantStore,
};
use crate::domain::{DatabaseName, IndexName};
use crate::telemetry::metrics::{SHARD_OP_ERRORS, SHARD_OP_SECONDS};
use async_trait::async_trait;
use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

/// A store with metrics.
pub struct Observed {
    shard: String,
    inner: Arc<dyn TenantStore>,
}

impl Observed {
    /// Wraps `inner`, labelling its metrics with `shard`.
    pub fn new(shard: &str, inner: Arc<dyn TenantStore>) -> Self {
        Self {
            shard: shard.to_owned(),
            inner,
        }
    }

    async fn run<T>(
        &self,
        op: &'static str,
        fut: impl Future<Output = StoreResult<T>>,
    ) -> StoreResult<T> {
        let started = Instant::now();
        let out = fut.await;
        SHARD_OP_SECONDS
            .with_label_values(&[&self.shard, op])
            .observe(started.elapsed().as_secs_f64());
        // Duplicate ids and refused updates are the caller's doing, not the shard's.
        if matches!(
            out,
            Err(StoreError::Unavailable(_)) | Err(StoreError::Backend(_))
        ) {
            SHARD_OP_ERRORS.with_label_values(&[&self.shard, op]).inc();
        }
        out
    }
}

#[async_trait]
impl TenantStore for Observed {
    async fn ping(&self) -> StoreResult<()> {
        self.run("ping", self.inner.ping()).await
    }
    async fn create_collection(&self, ns: &Namespace) -> StoreResult<()> {
        self.run("create_collection", self.inner.create_collection(ns))
            .await
    }
    async fn set_aside(&self, ns: &Namespace, new_name: &str) -> StoreResult<()> {
        self.run("set_aside", self.inner.set_aside(ns, new_name))
            .await
    }
    async fn drop_collection(&self, ns: &Namespace) -> StoreResult<()> {
        self.run("drop_collection", self.inner.drop_collection(ns))
            .await
    }
    async fn rename_collection(&self, from: &Namespace, to: &Namespace) -> StoreResult<u64> {
        self.run("rename_collection", self.inner.rename_collection(from, to))
            .await
    }
    async fn list_collections(&self, database: &DatabaseName) -> StoreResult<Vec<String>> {
        self.run("list_collections", self.inner.list_collections(database))
            .await
    }
    async fn insert_many(&self, ns: &Namespace, docs: Vec<Document>) -> StoreResult<()> {
        self.run("insert_many", self.inner.insert_many(ns, docs))
            .await
    }
    async fn get(&self, ns: &Namespace, id: &str) -> StoreResult<Option<Document>> {
        self.run("get", self.inner.get(ns, id)).await
    }
    async fn count_all(&self, ns: &Namespace) -> StoreResult<u64> {
        self.run("count_all", self.inner.count_all(ns)).await
    }
    async fn find(&self, ns: &Namespace, query: &FindQuery) -> StoreResult<Vec<Found>> {
        self.run("find", self.inner.find(ns, query)).await
    }
    async fn count(&self, ns: &Namespace, filter: &Filter) -> StoreResult<u64> {
        self.run("count", self.inner.count(ns, filter)).await
    }
    async fn update_by_id(
        &self,
        ns: &Namespace,
        id: &str,
        update: &Update,
        max_document_bytes: usize,
    ) -> StoreResult<Option<Document>> {
        self.run(
            "update",
            self.inner.update_by_id(ns, id, update, max_document_bytes),
        )
        .await
    }
    async fn delete_by_id(&self, ns: &Namespace, id: &str) -> StoreResult<bool> {
        self.run("delete", self.inner.delete_by_id(ns, id)).await
    }
    async fn collection_bytes(&self, ns: &Namespace) -> StoreResult<u64> {
        self.run("collection_bytes", self.inner.collection_bytes(ns))
            .await
    }
    async fn scan_after(
        &self,
        ns: &Namespace,
        after: Option<&str>,
        limit: usize,
    ) -> StoreResult<Vec<Document>> {
        self.run("scan_after", self.inner.scan_after(ns, after, limit))
            .await
    }
    async fn get_many(&self, ns: &Namespace, ids: &[String]) -> StoreResult<Vec<Document>> {
        self.run("get_many", self.inner.get_many(ns, ids)).await
    }
    async fn upsert_many(&self, ns: &Namespace, docs: Vec<Document>) -> StoreResult<()> {
        self.run("upsert_many", self.inner.upsert_many(ns, docs))
            .await
    }
    async fn delete_many_ids(&self, ns: &Namespace, ids: &[String]) -> StoreResult<u64> {
        self.run("delete_many_ids", self.inner.delete_many_ids(ns, ids))
            .await
    }
    async fn create_index(
        &self,
        ns: &Namespace,
        spec: &IndexSpec,
        max_indexes: usize,
    ) -> StoreResult<IndexInfo> {
        self.run(
            "create_index",
            self.inner.create_index(ns, spec, max_indexes),
        )
        .await
    }
    async fn list_indexes(&self, ns: &Namespace) -> StoreResult<Vec<IndexInfo>> {
        self.run("list_indexes", self.inner.list_indexes(ns)).await
    }
    async fn drop_index(&self, ns: &Namespace, name: &IndexName) -> StoreResult<()> {
        self.run("drop_index", self.inner.drop_index(ns, name))
            .await
    }
    async fn explain_find(
        &self,
        ns: &Namespace,
        query: &FindQuery,
    ) -> StoreResult<(Vec<Found>, Explain)> {
        self.run("find", self.inner.explain_find(ns, query)).await
    }
}
