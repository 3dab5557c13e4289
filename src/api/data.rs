//! Tenant data routes. The tenant is always the token's organization: nothing in the URL or
//! body can name another, so isolation holds by construction.

use super::auth::{authenticate, internal};
use super::orgs::store_error;
use super::{ApiResult, Reply, Request, RequestLog};
use crate::app::AppState;
use crate::catalog::{MovePhase, OrgState};
use crate::domain::{IndexKeys, IndexName, OrgId};
use crate::error::ApiError;
use crate::placement::Shard;
use crate::store::query::{
    validate_document, Filter, Projection, QueryError, QueryLimits, Sort, SortPosition, Update,
};
use crate::store::{
    new_object_id, Document, FindQuery, IndexInfo, IndexSpec, IndexState, Namespace, StoreError,
    StoreResult,
};
use crate::telemetry::metrics;
use base64::Engine;
use http::StatusCode;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::future::Future;
use std::sync::Arc;
use tracing::Instrument;

/// Longest accepted `_id`, in characters (as JSON Schema's `maxLength` counts them, so the
/// OpenAPI document states the rule exactly; at most 512 bytes of UTF-8).
const MAX_ID_LEN: usize = 128;

/// A resolved tenant request: where to go and the rate-limit headers to return.
pub(super) struct Tenant {
    pub(super) org: OrgId,
    pub(super) shard: Arc<Shard>,
    pub(super) ns: Namespace,
    pub(super) headers: Vec<(&'static str, String)>,
    /// Held until the handler is done with the placement.
    _gate: crate::fleet::gate::GateGuard,
    /// The catalog, and the move whose change log this tenant's writes append to (while a
    /// move of the tenant captures changes).
    capture: Option<(Arc<dyn crate::catalog::Catalog>, String)>,
    /// The catalog and this instance's write marks (`backup --since`).
    marks: (
        Arc<dyn crate::catalog::Catalog>,
        Arc<crate::backup::WriteMarks>,
    ),
}

impl Tenant {
    pub(super) fn reply(&self, status: StatusCode, body: &impl Serialize) -> Reply {
        let mut r = Reply::json(status, body);
        r.headers.extend(self.headers.iter().cloned());
        r
    }

    /// Runs a store write of the documents `ids` in its own task, holding the request gate
    /// until the write is done: a request cut off by its timeout must not let a fence pass
    /// while its write still runs.
    ///
    /// While a move captures the tenant's changes, the ids are logged before the write (if
    /// that fails, nothing is written: 503) and again after it (so the move re-reads a
    /// document whose first entry it applied before the write landed), both inside the gate.
    pub(super) async fn write<T, F, Fut>(
        &self,
        op: &'static str,
        ids: Vec<String>,
        f: F,
    ) -> Result<T, ApiError>
    where
        T: Send + 'static,
        F: FnOnce(Arc<Shard>, Namespace) -> Fut,
        Fut: Future<Output = StoreResult<T>> + Send + 'static,
    {
        let (catalog, marks) = &self.marks;
        if let Err(e) = marks.before_write(catalog.as_ref(), self.org).await {
            tracing::warn!(error = %e, "cannot record a write mark; write refused");
            return Err(with_headers(
                ApiError::unavailable(
                    "catalog_unavailable",
                    "the catalog did not answer; retry",
                    1,
                ),
                &self.headers,
            ));
        }
        if let Some((catalog, move_id)) = &self.capture {
            if let Err(e) = catalog.log_move_changes(move_id, &ids).await {
                tracing::warn!(error = %e, "cannot log a write for a move; write refused");
                return Err(with_headers(
                    ApiError::unavailable(
                        "organization_busy",
                        "the organization's data is being moved and the catalog did not answer; retry",
                        1,
                    ),
                    &self.headers,
                ));
            }
        }
        let capture = self.capture.clone();
        let held = self._gate.hold();
        let fut = f(self.shard.clone(), self.ns.clone());
        let span = tracing::debug_span!("store", shard = self.shard.id().as_str(), op);
        let task = tokio::spawn(
            async move {
                let out = fut.await;
                if let Some((catalog, move_id)) = capture {
                    if let Err(e) = catalog.log_move_changes(&move_id, &ids).await {
                        // The move compares these documents again at cutover and fails rather
                        // than switch to a stale copy.
                        tracing::warn!(error = %e, "cannot log a write for a move after it");
                    }
                }
                drop(held);
                out
            }
            .instrument(span),
        );
        let result = match task.await {
            Ok(r) => r,
            Err(e) => Err(StoreError::Backend(format!("store task failed: {e}"))),
        };
        self.settle(result)
    }

    /// Runs a store call with shard health tracking and 503 on outages (metrics are recorded
    /// by the store wrapper).
    pub(super) async fn run<T>(
        &self,
        op: &'static str,
        fut: impl Future<Output = StoreResult<T>>,
    ) -> Result<T, ApiError> {
        let span = tracing::debug_span!("store", shard = self.shard.id().as_str(), op);
        self.settle(fut.instrument(span).await)
    }

    fn settle<T>(&self, result: StoreResult<T>) -> Result<T, ApiError> {
        match result {
            Ok(v) => {
                if !self.shard.is_up() {
                    self.shard.set_up(true);
                }
                Ok(v)
            }
            Err(e) => {
                if matches!(e, StoreError::Unavailable(_)) {
                    self.shard.set_up(false);
                }
                Err(match e {
                    StoreError::DuplicateId(id) => ApiError::conflict(
                        "duplicate_id",
                        format!("a document with _id {id:?} already exists"),
                    ),
                    StoreError::InvalidUpdate(q) => query_error(q),
                    StoreError::DuplicateKey { index, key } => with_headers(
                        ApiError::conflict(
                            "duplicate_key",
                            format!("unique index {index} already holds the key {key}"),
                        ),
                        &self.headers,
                    ),
                    StoreError::IndexConflict(detail) => {
                        with_headers(ApiError::conflict("index_conflict", detail), &self.headers)
                    }
                    StoreError::IndexNotFound => with_headers(
                        ApiError::new(
                            StatusCode::NOT_FOUND,
                            "index_not_found",
                            "no index with that name",
                        ),
                        &self.headers,
                    ),
                    StoreError::TooManyIndexes(max) => with_headers(
                        ApiError::conflict(
                            "too_many_indexes",
                            format!("a collection has at most {max} indexes besides _id"),
                        ),
                        &self.headers,
                    ),
                    StoreError::ParallelArrays(detail) => with_headers(
                        ApiError::invalid("cannot_index_parallel_arrays", detail),
                        &self.headers,
                    ),
                    StoreError::SortTooLarge(detail) => {
                        tracing::info!(%detail, "backend refused a sort over its memory limit");
                        with_headers(
                            ApiError::invalid(
                                "sort_window_exceeded",
                                "the shard cannot sort that many documents at once (skip + limit); \
                                 page with next_cursor instead of skip",
                            ),
                            &self.headers,
                        )
                    }
                    other => with_headers(store_error(other), &self.headers),
                })
            }
        }
    }
}

/// The 400 for a sorted query holding more than `data.max_sort_window` documents at once,
/// the same on both backends (MongoDB's own sort memory limit maps to it too).
fn sort_window_exceeded(window: u64) -> ApiError {
    ApiError::invalid(
        "sort_window_exceeded",
        format!(
            "a sorted query may span at most {window} documents (skip + limit); \
             page with next_cursor instead of skip"
        ),
    )
}

pub(super) fn with_headers(mut e: ApiError, headers: &[(&'static str, String)]) -> ApiError {
    e.extra_headers.extend(headers.iter().cloned());
    e
}

fn query_error(e: QueryError) -> ApiError {
    ApiError::invalid(e.code, e.to_string())
}

/// Whether a tenant request reads or writes: writes wait out a move's cutover.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Access {
    Read,
    Write,
}

/// Authenticates, applies the org's rate limit and resolves its placement. A write to an
/// organization whose move is cutting over waits (outside the request gate, so the cutover's
/// fence does not wait for it) until the placement switches or the cutover is abandoned.
pub(super) async fn tenant(
    state: &AppState,
    req: &Request,
    log: &mut RequestLog,
    access: Access,
) -> Result<Tenant, ApiError> {
    // Counted in before the placement is resolved, so a fence waits for this request.
    let gate = state.fleet.enter();
    if !state.fleet.serving() {
        return Err(fenced());
    }
    let caller = authenticate(state, req).await?;
    let org = caller.org;
    log.org_id = Some(org.id);
    let headers = super::check_rate(state, org.id).await?;
    place(state, gate, org, headers, access).await
}

fn fenced() -> ApiError {
    ApiError::unavailable(
        "instance_fenced",
        "this gateway instance lost its registry lease; retry (another instance serves)",
        1,
    )
}

/// The placement of an organization already authenticated and rate-limited (`headers`), read
/// afresh: a long request (an export or an import) resolves it again for each batch, holding
/// the request gate only meanwhile, so moves and renames are not held up by it and its
/// batches follow them. The organization gone is 401 (its tokens are void).
pub(super) async fn tenant_again(
    state: &AppState,
    org: OrgId,
    headers: Vec<(&'static str, String)>,
    access: Access,
) -> Result<Tenant, ApiError> {
    let gate = state.fleet.enter();
    if !state.fleet.serving() {
        return Err(fenced());
    }
    let record = state
        .router
        .org(org)
        .await
        .map_err(|e| super::orgs::catalog_failure("catalog", e))?
        .ok_or_else(ApiError::unauthorized)?;
    place(state, gate, record, headers, access).await
}

async fn place(
    state: &AppState,
    mut gate: crate::fleet::gate::GateGuard,
    mut org: Arc<crate::catalog::OrgRecord>,
    headers: Vec<(&'static str, String)>,
    access: Access,
) -> Result<Tenant, ApiError> {
    if access == Access::Write && in_cutover(&org) {
        let started = std::time::Instant::now();
        // As long as the request may run (less a margin to answer): the cutover ends within
        // its pause budget, but releasing the held writes waits for every instance to route
        // to the target, which a slow instance can stretch to a fence timeout.
        let limit = std::time::Duration::from_millis(
            state
                .config
                .request_timeout_ms
                .saturating_sub(500)
                .max(state.config.moves.max_write_pause_ms * 2 + 1_000),
        );
        while in_cutover(&org) {
            if started.elapsed() > limit {
                return Err(with_headers(
                    ApiError::unavailable(
                        "organization_busy",
                        "the organization's data is being moved; retry shortly",
                        1,
                    ),
                    &headers,
                ));
            }
            drop(gate);
            tokio::time::sleep(std::time::Duration::from_millis(2)).await;
            gate = state.fleet.enter();
            org = state
                .router
                .org(org.id)
                .await
                .map_err(|e| super::orgs::catalog_failure("catalog", e))?
                .ok_or_else(ApiError::unauthorized)?;
        }
        metrics::MOVE_HELD_WRITES.observe(started.elapsed().as_secs_f64());
    }
    if org.state != OrgState::Active {
        return Err(with_headers(
            ApiError::unavailable(
                "organization_busy",
                "the organization's data is being moved; retry shortly",
                1,
            ),
            &headers,
        ));
    }
    let shard = state.shards.get(&org.placement.shard).ok_or_else(|| {
        internal(
            "placement",
            format!("unknown shard {}", org.placement.shard),
        )
    })?;
    Ok(Tenant {
        org: org.id,
        shard,
        ns: Namespace {
            database: org.placement.database.clone(),
            collection: org.placement.collection.clone(),
        },
        headers,
        _gate: gate,
        capture: match &org.moving {
            Some(m) if access == Access::Write && m.phase == MovePhase::Capturing => {
                Some((state.catalog().clone(), m.move_id.clone()))
            }
            _ => None,
        },
        marks: (state.catalog().clone(), state.write_marks.clone()),
    })
}

fn in_cutover(org: &crate::catalog::OrgRecord) -> bool {
    org.moving
        .as_ref()
        .is_some_and(|m| m.phase == MovePhase::Cutover)
}

pub(super) fn limits(state: &AppState) -> QueryLimits {
    let d = &state.config.data;
    QueryLimits {
        max_depth: d.max_filter_depth,
        max_nodes: d.max_filter_nodes,
        max_in_len: d.max_in_len,
    }
}

fn doc_id(req: &Request) -> Result<String, ApiError> {
    let id = path_value(req.path.trim_start_matches("/data/"));
    check_id(&id)?;
    Ok(id)
}

/// A percent-decoded path segment (`+` stays a plus sign).
fn path_value(raw: &str) -> String {
    url::form_urlencoded::parse(format!("i={raw}").replace('+', "%2B").as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default()
}

fn check_id(id: &str) -> Result<(), ApiError> {
    if id.is_empty() || id.chars().count() > MAX_ID_LEN || id.contains('\0') {
        return Err(ApiError::invalid(
            "invalid_id",
            format!("_id must be a string of 1 to {MAX_ID_LEN} characters without NUL"),
        ));
    }
    Ok(())
}

/// The organization's measured-or-cached usage in bytes.
pub(super) async fn usage(state: &AppState, t: &Tenant) -> Result<u64, ApiError> {
    Ok(match state.quotas.cached(t.org) {
        Some(u) => u,
        None => {
            let measured = t
                .run("collection_bytes", t.shard.store.collection_bytes(&t.ns))
                .await?;
            state.quotas.set_measured(t.org, measured);
            measured
        }
    })
}

/// The 507 for `extra` more bytes over an organization using `used`.
pub(super) fn quota_exceeded(
    state: &AppState,
    headers: &[(&'static str, String)],
    used: u64,
    extra: u64,
) -> ApiError {
    metrics::QUOTA_REJECTIONS.inc();
    with_headers(
        ApiError::new(
            StatusCode::INSUFFICIENT_STORAGE,
            "quota_exceeded",
            format!(
                "storage quota of {} bytes would be exceeded ({} used, {} more requested)",
                state.quotas.limit_bytes, used, extra
            ),
        ),
        headers,
    )
}

/// Measured-or-cached usage, then a quota check for `extra` bytes.
pub(super) async fn check_quota(state: &AppState, t: &Tenant, extra: u64) -> Result<(), ApiError> {
    let used = usage(state, t).await?;
    if !state.quotas.fits(used, extra) {
        return Err(quota_exceeded(state, &t.headers, used, extra));
    }
    Ok(())
}

/// Why a document cannot be stored ([`prepare_document`]).
pub(super) enum DocProblem {
    /// `_id` is not a string.
    IdNotString,
    /// `_id` is a string breaking [`check_id`]'s rules.
    InvalidId(ApiError),
    /// [`validate_document`] refused it.
    Invalid(QueryError),
    /// Over `data.max_document_bytes` (its size as JSON).
    TooLarge(usize),
}

impl DocProblem {
    /// The stable code a client sees.
    pub(super) fn code(&self) -> &'static str {
        match self {
            DocProblem::IdNotString | DocProblem::InvalidId(_) => "invalid_id",
            DocProblem::Invalid(e) => e.code,
            DocProblem::TooLarge(_) => "document_too_large",
        }
    }
}

/// A document ready for the store: its `_id` (generated when absent) first, validated, within
/// the size limit. Returns the `_id`, the document and its size in bytes as JSON.
pub(super) fn prepare_document(
    mut doc: Document,
    lim: &QueryLimits,
    max_document_bytes: usize,
) -> Result<(String, Document, u64), DocProblem> {
    let id = match doc.get("_id") {
        None => new_object_id(),
        Some(Value::String(s)) => {
            check_id(s).map_err(DocProblem::InvalidId)?;
            s.clone()
        }
        Some(_) => return Err(DocProblem::IdNotString),
    };
    doc.shift_remove("_id");
    let mut with_id = Document::with_capacity(doc.len() + 1);
    with_id.insert("_id".into(), Value::String(id.clone()));
    with_id.extend(doc);
    validate_document(&with_id, lim).map_err(DocProblem::Invalid)?;
    let size = serde_json::to_vec(&with_id)
        .map(|v| v.len())
        .unwrap_or(usize::MAX);
    if size > max_document_bytes {
        return Err(DocProblem::TooLarge(size));
    }
    Ok((id, with_id, size as u64))
}

#[utoipa::path(post, path = "/data", operation_id = "insert_documents", tag = "data", security(("bearer" = [])),
    request_body(content = Object, description = "One document, or an array of 1 to `data.max_batch` (1000 by default)"),
    responses(
        (status = 400, description = "Invalid input", body = crate::error::ProblemBody, content_type = "application/problem+json"),
        (status = 401, description = "Missing, invalid or expired token", body = crate::error::ProblemBody, content_type = "application/problem+json"),
        (status = 429, description = "Rate limited (Retry-After)", body = crate::error::ProblemBody, content_type = "application/problem+json"),
        (status = 503, description = "Shard unavailable or tenant being moved (Retry-After)", body = crate::error::ProblemBody, content_type = "application/problem+json"),
        (status = 201, description = "Inserted", body = InsertReply),
        (status = 409, description = "Duplicate _id (stored already, or twice in the batch)", body = crate::error::ProblemBody, content_type = "application/problem+json"),
        (status = 413, description = "Body too large", body = crate::error::ProblemBody, content_type = "application/problem+json"),
        (status = 507, description = "Storage quota exceeded", body = crate::error::ProblemBody, content_type = "application/problem+json"),
    ))]
/// `POST /data`: one object or an array of up to `max_batch`, inserted in one round trip.
pub async fn insert(state: &AppState, req: &Request, log: &mut RequestLog) -> ApiResult {
    let t = tenant(state, req, log, Access::Write).await?;
    // Any JSON: an object, or an array of them for a batch.
    let body = super::json_value(req)?;
    let raw_docs = match body {
        Value::Object(o) => vec![o],
        Value::Array(items) => {
            if items.is_empty() || items.len() > state.config.data.max_batch {
                return Err(ApiError::invalid(
                    "invalid_batch",
                    format!(
                        "a batch holds 1 to {} documents",
                        state.config.data.max_batch
                    ),
                ));
            }
            items
                .into_iter()
                .enumerate()
                .map(|(i, v)| match v {
                    Value::Object(o) => Ok(o),
                    _ => Err(ApiError::invalid(
                        "invalid_document",
                        format!("item {i} is not a JSON object"),
                    )),
                })
                .collect::<Result<_, _>>()?
        }
        _ => {
            return Err(ApiError::invalid(
                "invalid_document",
                "body must be a JSON object or an array of objects",
            ))
        }
    };
    let lim = limits(state);
    let mut docs: Vec<Document> = Vec::with_capacity(raw_docs.len());
    let mut ids = Vec::with_capacity(raw_docs.len());
    let mut bytes = 0u64;
    let mut seen = std::collections::HashSet::new();
    let max_document_bytes = state.config.data.max_document_bytes;
    for (i, doc) in raw_docs.into_iter().enumerate() {
        let (id, with_id, size) =
            prepare_document(doc, &lim, max_document_bytes).map_err(|p| match p {
                DocProblem::IdNotString => {
                    ApiError::invalid("invalid_id", format!("document {i}: _id must be a string"))
                }
                DocProblem::InvalidId(e) => e,
                DocProblem::Invalid(e) => ApiError::invalid(e.code, format!("document {i}: {e}")),
                DocProblem::TooLarge(size) => ApiError::invalid(
                    "document_too_large",
                    format!("document {i} is {size} bytes; the limit is {max_document_bytes}"),
                ),
            })?;
        // 409 like a collision with a stored document (and like MongoDB's own answer): JSON
        // Schema cannot say that `_id`s within a batch differ, so the 400s stay schema errors.
        if !seen.insert(id.clone()) {
            return Err(ApiError::conflict(
                "duplicate_id",
                format!("_id {id:?} appears twice in the batch"),
            ));
        }
        bytes += size;
        ids.push(id);
        docs.push(with_id);
    }
    check_quota(state, &t, bytes).await?;
    t.write("insert_many", ids.clone(), move |shard, ns| async move {
        shard.store.insert_many(&ns, docs).await
    })
    .await?;
    state.quotas.add(t.org, bytes as i64);
    Ok(t.reply(StatusCode::CREATED, &InsertReply { inserted_ids: ids }))
}

/// `GET /data/{id}`.
#[utoipa::path(get, path = "/data/{id}", operation_id = "get_document", tag = "data", security(("bearer" = [])),
    params(("id" = String, Path, description = "Document _id: 1 to 128 characters, no NUL. `/data/query`, `/data/count` and `/data/indexes` are routes, not documents: a document whose _id is `query`, `count` or `indexes` is reached through POST /data/query", min_length = 1, max_length = 128, pattern = r"^[^\u0000]*$")),
    responses(
        (status = 400, description = "Invalid input", body = crate::error::ProblemBody, content_type = "application/problem+json"),
        (status = 401, description = "Missing, invalid or expired token", body = crate::error::ProblemBody, content_type = "application/problem+json"),
        (status = 429, description = "Rate limited (Retry-After)", body = crate::error::ProblemBody, content_type = "application/problem+json"),
        (status = 503, description = "Shard unavailable or tenant being moved (Retry-After)", body = crate::error::ProblemBody, content_type = "application/problem+json"),
        (status = 200, description = "The document", body = serde_json::Value),
        (status = 404, description = "No such document", body = crate::error::ProblemBody, content_type = "application/problem+json"),
    ))]
pub async fn get(state: &AppState, req: &Request, log: &mut RequestLog) -> ApiResult {
    let t = tenant(state, req, log, Access::Read).await?;
    let id = doc_id(req)?;
    match t.run("get", t.shard.store.get(&t.ns, &id)).await? {
        Some(doc) => Ok(t.reply(StatusCode::OK, &doc)),
        None => Err(not_found(&t)),
    }
}

fn not_found(t: &Tenant) -> ApiError {
    with_headers(
        ApiError::new(
            StatusCode::NOT_FOUND,
            "document_not_found",
            "no document with that _id",
        ),
        &t.headers,
    )
}

/// `PATCH /data/{id}`: `$set`/`$unset`/`$inc` operators, or a JSON merge patch.
#[utoipa::path(patch, path = "/data/{id}", operation_id = "update_document", tag = "data", security(("bearer" = [])),
    params(("id" = String, Path, description = "Document _id: 1 to 128 characters, no NUL. `/data/query`, `/data/count` and `/data/indexes` are routes, not documents: a document whose _id is `query`, `count` or `indexes` is reached through POST /data/query", min_length = 1, max_length = 128, pattern = r"^[^\u0000]*$")),
    request_body(content = Object, description = "Update operators (`$set`, `$unset`, `$inc`) or a JSON merge patch: a JSON object"),
    responses(
        (status = 400, description = "Invalid input", body = crate::error::ProblemBody, content_type = "application/problem+json"),
        (status = 401, description = "Missing, invalid or expired token", body = crate::error::ProblemBody, content_type = "application/problem+json"),
        (status = 429, description = "Rate limited (Retry-After)", body = crate::error::ProblemBody, content_type = "application/problem+json"),
        (status = 503, description = "Shard unavailable or tenant being moved (Retry-After)", body = crate::error::ProblemBody, content_type = "application/problem+json"),
        (status = 200, description = "The updated document", body = serde_json::Value),
        (status = 404, description = "No such document", body = crate::error::ProblemBody, content_type = "application/problem+json"),
        (status = 409, description = "The document kept changing concurrently (concurrent_update); nothing was applied, retry", body = crate::error::ProblemBody, content_type = "application/problem+json"),
        (status = 507, description = "Storage quota exceeded", body = crate::error::ProblemBody, content_type = "application/problem+json"),
    ))]
pub async fn patch(state: &AppState, req: &Request, log: &mut RequestLog) -> ApiResult {
    let t = tenant(state, req, log, Access::Write).await?;
    let id = doc_id(req)?;
    let body = super::json_value(req)?;
    if !body.is_object() {
        return Err(ApiError::invalid(
            "invalid_update",
            "an update must be a JSON object",
        ));
    }
    let update = Update::parse(&body, &limits(state)).map_err(query_error)?;
    check_quota(state, &t, 0).await?;
    let max = state.config.data.max_document_bytes;
    let target = id.clone();
    match t
        .write("update", vec![id.clone()], move |shard, ns| async move {
            shard.store.update_by_id(&ns, &target, &update, max).await
        })
        .await?
    {
        Some(doc) => Ok(t.reply(StatusCode::OK, &doc)),
        None => Err(not_found(&t)),
    }
}

/// `DELETE /data/{id}`.
#[utoipa::path(delete, path = "/data/{id}", operation_id = "delete_document", tag = "data", security(("bearer" = [])),
    params(("id" = String, Path, description = "Document _id: 1 to 128 characters, no NUL. `/data/query`, `/data/count` and `/data/indexes` are routes, not documents: a document whose _id is `query`, `count` or `indexes` is reached through POST /data/query", min_length = 1, max_length = 128, pattern = r"^[^\u0000]*$")),
    responses(
        (status = 400, description = "Invalid input", body = crate::error::ProblemBody, content_type = "application/problem+json"),
        (status = 401, description = "Missing, invalid or expired token", body = crate::error::ProblemBody, content_type = "application/problem+json"),
        (status = 429, description = "Rate limited (Retry-After)", body = crate::error::ProblemBody, content_type = "application/problem+json"),
        (status = 503, description = "Shard unavailable or tenant being moved (Retry-After)", body = crate::error::ProblemBody, content_type = "application/problem+json"),
        (status = 200, description = "Deleted", body = DeleteReply),
        (status = 404, description = "No such document", body = crate::error::ProblemBody, content_type = "application/problem+json"),
    ))]
pub async fn delete(state: &AppState, req: &Request, log: &mut RequestLog) -> ApiResult {
    let t = tenant(state, req, log, Access::Write).await?;
    let id = doc_id(req)?;
    let target = id.clone();
    if t.write("delete", vec![id.clone()], move |shard, ns| async move {
        shard.store.delete_by_id(&ns, &target).await
    })
    .await?
    {
        // Usage is re-measured later; drop the cached figure so the next write measures.
        state.quotas.forget(t.org);
        Ok(t.reply(StatusCode::OK, &DeleteReply { deleted: true, id }))
    } else {
        Err(not_found(&t))
    }
}

/// Body of `POST /data/query`.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct QueryBody {
    /// Filter (MongoDB subset); `{}`, `null` or no filter matches all.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    filter: Value,
    /// `{field: 1 | -1}`; ties are broken by `_id`. `null` is the same as none.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    sort: Value,
    /// Inclusion `{a: 1}` or exclusion `{a: 0}`. `null` is the same as none.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    projection: Value,
    /// Page size: 1 to `data.max_limit` (1000 by default); default `data.default_limit`.
    #[serde(default, deserialize_with = "crate::domain::whole::opt_u64")]
    #[schema(minimum = 1, maximum = 1000)]
    limit: Option<u64>,
    /// Documents to skip; not with `cursor`. A sorted query (any order but `_id` order)
    /// may span at most `data.max_sort_window` documents (`skip + limit`, default 10,000):
    /// beyond, 400 `sort_window_exceeded`.
    #[serde(default, deserialize_with = "crate::domain::whole::opt_u64")]
    #[schema(minimum = 0, maximum = 9223372036854775807_i64)]
    skip: Option<u64>,
    /// A previous page's `next_cursor` (same filter and sort; not with `skip`): the page
    /// continues strictly after that page's last document, whatever was inserted or deleted
    /// meanwhile.
    #[serde(default)]
    cursor: Option<String>,
    /// Also say how the query was answered: the index used (null for a collection scan)
    /// and how many index keys and documents were read.
    #[serde(default)]
    explain: Option<bool>,
}

/// A keyset cursor, sent to clients as base64url of this JSON: where the last page ended
/// and which query it belongs to. Not a secret (a client may read or craft one for its own
/// data): everything in it is checked like any other input.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Cursor {
    /// Fingerprint of the filter and sort the cursor belongs to.
    h: String,
    /// The last returned document's position ([`SortPosition::to_json`]).
    p: Value,
}

/// Longest cursor accepted, in characters (a position holds up to 8 sort key values).
const MAX_CURSOR_LEN: usize = 64 * 1024;

fn encode_cursor(hash: String, pos: &SortPosition) -> String {
    let c = Cursor {
        h: hash,
        p: pos.to_json(),
    };
    let json = serde_json::to_vec(&c).expect("a cursor always serializes");
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(json)
}

/// The position a cursor continues after; any malformed, tampered or foreign cursor is a
/// 400 `invalid_cursor` (never echoed back).
fn decode_cursor(raw: &str, hash: &str, sort: &Sort) -> Result<SortPosition, ApiError> {
    let malformed = || ApiError::invalid("invalid_cursor", "cursor is malformed");
    if raw.len() > MAX_CURSOR_LEN {
        return Err(malformed());
    }
    let c = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(raw)
        .ok()
        .and_then(|b| serde_json::from_slice::<Cursor>(&b).ok())
        .ok_or_else(malformed)?;
    if c.h != hash {
        return Err(ApiError::invalid(
            "invalid_cursor",
            "cursor belongs to a different filter or sort",
        ));
    }
    SortPosition::from_json(&c.p, sort).ok_or_else(malformed)
}

/// Identifies a query's order and selection: a cursor continues only the query it came
/// from (the projection may change between pages).
fn fingerprint(filter: &Filter, sort: &Sort) -> String {
    let text = json!([filter.to_json(), sort.to_json()]).to_string();
    // FNV-1a is enough to catch a cursor reused with another query.
    let mut h: u64 = 0xcbf29ce484222325;
    for b in text.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x100000001b3);
    }
    format!("{h:016x}")
}

/// `POST /data/query`: `{filter, sort, projection, limit, skip, cursor}` ->
/// `{documents, next_cursor}`.
#[utoipa::path(post, path = "/data/query", operation_id = "query_documents", tag = "data", security(("bearer" = [])), request_body = QueryBody,
    responses(
        (status = 400, description = "Invalid input", body = crate::error::ProblemBody, content_type = "application/problem+json"),
        (status = 401, description = "Missing, invalid or expired token", body = crate::error::ProblemBody, content_type = "application/problem+json"),
        (status = 429, description = "Rate limited (Retry-After)", body = crate::error::ProblemBody, content_type = "application/problem+json"),
        (status = 503, description = "Shard unavailable or tenant being moved (Retry-After)", body = crate::error::ProblemBody, content_type = "application/problem+json"),
        (status = 200, description = "A page of documents", body = QueryReply),
    ))]
pub async fn query(state: &AppState, req: &Request, log: &mut RequestLog) -> ApiResult {
    let t = tenant(state, req, log, Access::Read).await?;
    let body: QueryBody = super::data_body(req)?;
    let lim = limits(state);
    let filter = Filter::parse(&body.filter, &lim).map_err(query_error)?;
    let sort = Sort::parse(&body.sort).map_err(query_error)?;
    let projection = Projection::parse(&body.projection).map_err(query_error)?;
    let d = &state.config.data;
    let limit = body.limit.unwrap_or(d.default_limit);
    if limit == 0 || limit > d.max_limit {
        return Err(ApiError::invalid(
            "invalid_limit",
            format!("limit must be 1 to {}", d.max_limit),
        ));
    }
    let hash = fingerprint(&filter, &sort);
    let (skip, after) = match (&body.cursor, body.skip) {
        (Some(_), Some(_)) => {
            return Err(ApiError::invalid(
                "invalid_cursor",
                "give either cursor or skip, not both",
            ))
        }
        (Some(c), None) => (0, Some(decode_cursor(c, &hash, &sort)?)),
        (None, skip) => (skip.unwrap_or(0), None),
    };
    // One more than the page, to know whether another follows.
    let q = FindQuery {
        filter,
        sort,
        projection,
        skip,
        limit: limit + 1,
        after,
    };
    if q.sort.id_order().is_none() && skip.saturating_add(limit) > d.max_sort_window {
        return Err(sort_window_exceeded(d.max_sort_window));
    }
    let explain = body.explain.unwrap_or(false);
    let (mut found, explained) = if explain {
        let (found, e) = t.run("find", t.shard.store.explain_find(&t.ns, &q)).await?;
        (found, Some(e))
    } else {
        (t.run("find", t.shard.store.find(&t.ns, &q)).await?, None)
    };
    let more = found.len() as u64 > limit;
    found.truncate(limit as usize);
    let next = match found.last() {
        Some(last) if more => Some(encode_cursor(hash, &last.position)),
        _ => None,
    };
    let docs = found.into_iter().map(|f| f.document).collect();
    Ok(t.reply(
        StatusCode::OK,
        &QueryReply {
            documents: docs,
            next_cursor: next,
            explain: explained.map(|e| ExplainReply {
                index: e.index,
                keys_examined: e.keys_examined,
                docs_examined: e.docs_examined,
            }),
        },
    ))
}

/// `POST /data/count`: `{filter}` -> `{count}`.
#[utoipa::path(post, path = "/data/count", operation_id = "count_documents", tag = "data", security(("bearer" = [])), request_body = CountBody,
    responses(
        (status = 400, description = "Invalid input", body = crate::error::ProblemBody, content_type = "application/problem+json"),
        (status = 401, description = "Missing, invalid or expired token", body = crate::error::ProblemBody, content_type = "application/problem+json"),
        (status = 429, description = "Rate limited (Retry-After)", body = crate::error::ProblemBody, content_type = "application/problem+json"),
        (status = 503, description = "Shard unavailable or tenant being moved (Retry-After)", body = crate::error::ProblemBody, content_type = "application/problem+json"),
        (status = 200, description = "Matching documents", body = CountReply),
    ))]
pub async fn count(state: &AppState, req: &Request, log: &mut RequestLog) -> ApiResult {
    let t = tenant(state, req, log, Access::Read).await?;
    let body: CountBody = super::data_body(req)?;
    let filter = Filter::parse(&body.filter, &limits(state)).map_err(query_error)?;
    let n = t.run("count", t.shard.store.count(&t.ns, &filter)).await?;
    Ok(t.reply(StatusCode::OK, &CountReply { count: n }))
}

/// Body of `POST /data/count`.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CountBody {
    /// Filter (MongoDB subset); `{}`, `null` or no filter matches all.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    filter: Value,
}

/// Reply of `POST /data`.
#[derive(Serialize, utoipa::ToSchema)]
pub struct InsertReply {
    /// `_id`s in request order.
    inserted_ids: Vec<String>,
}

/// Reply of `DELETE /data/{id}`.
#[derive(Serialize, utoipa::ToSchema)]
pub struct DeleteReply {
    deleted: bool,
    #[serde(rename = "_id")]
    id: String,
}

/// Reply of `POST /data/query`.
#[derive(Serialize, utoipa::ToSchema)]
pub struct QueryReply {
    /// The page.
    #[schema(value_type = Vec<Object>)]
    documents: Vec<Document>,
    /// Opaque keyset cursor: pass it back as `cursor` with the same filter and sort for the
    /// next page; null on the last page.
    next_cursor: Option<String>,
    /// With `"explain": true`: how the query was answered.
    #[serde(skip_serializing_if = "Option::is_none")]
    explain: Option<ExplainReply>,
}

/// How a query was answered.
#[derive(Serialize, utoipa::ToSchema)]
pub struct ExplainReply {
    /// The index used; null for a collection scan.
    index: Option<String>,
    /// Index keys read.
    keys_examined: u64,
    /// Documents read.
    docs_examined: u64,
}

/// Body of `POST /data/indexes`.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateIndexBody {
    /// Key pattern `{"path": 1 | -1, ...}` in key order: 1 to 8 dotted field paths (the
    /// filter's path rules: no empty component, none starting with `$`, no NUL).
    #[schema(value_type = Object)]
    keys: Value,
    /// Refuse two documents with the same key (a missing field is the key `null`).
    #[serde(default)]
    unique: Option<bool>,
    /// 1 to 128 bytes, no NUL or `/`, not starting with `$`; default `path_1_other_-1`.
    #[serde(default)]
    #[schema(
        min_length = 1,
        max_length = 128,
        pattern = r"^[^$/\u0000][^/\u0000]*$"
    )]
    name: Option<String>,
}

/// An index of the tenant's collection.
#[derive(Serialize, utoipa::ToSchema)]
pub struct IndexReply {
    /// Its name (`_id_` for the `_id` index).
    name: String,
    /// Key pattern `{"path": 1 | -1}`.
    #[schema(value_type = Object)]
    keys: Value,
    /// Whether keys are unique.
    unique: bool,
    /// `building` (over existing documents; queries do not use it yet) or `ready`.
    #[schema(value_type = String)]
    state: IndexState,
}

impl From<IndexInfo> for IndexReply {
    fn from(i: IndexInfo) -> Self {
        IndexReply {
            name: i.name,
            keys: i.keys,
            unique: i.unique,
            state: i.state,
        }
    }
}

/// Reply of `GET /data/indexes`.
#[derive(Serialize, utoipa::ToSchema)]
pub struct IndexList {
    /// `_id_` first.
    indexes: Vec<IndexReply>,
}

/// Reply of `DELETE /data/indexes/{name}`.
#[derive(Serialize, utoipa::ToSchema)]
pub struct IndexDropped {
    dropped: bool,
    name: String,
}

/// Reply of `POST /data/count`.
#[derive(Serialize, utoipa::ToSchema)]
pub struct CountReply {
    count: u64,
}

/// `POST /data/indexes`: declares an index on the tenant's collection.
#[utoipa::path(post, path = "/data/indexes", operation_id = "create_index", tag = "data", security(("bearer" = [])), request_body = CreateIndexBody,
    responses(
        (status = 400, description = "Invalid input", body = crate::error::ProblemBody, content_type = "application/problem+json"),
        (status = 401, description = "Missing, invalid or expired token", body = crate::error::ProblemBody, content_type = "application/problem+json"),
        (status = 429, description = "Rate limited (Retry-After)", body = crate::error::ProblemBody, content_type = "application/problem+json"),
        (status = 503, description = "Shard unavailable or tenant being moved (Retry-After)", body = crate::error::ProblemBody, content_type = "application/problem+json"),
        (status = 201, description = "Declared: `ready`, or `building` while existing documents are indexed in the background", body = IndexReply),
        (status = 409, description = "`duplicate_key` (a unique index that existing documents violate; nothing is declared), `index_conflict` (the name or the keys are taken by another index) or `too_many_indexes`", body = crate::error::ProblemBody, content_type = "application/problem+json"),
    ))]
pub async fn create_index(state: &AppState, req: &Request, log: &mut RequestLog) -> ApiResult {
    let t = tenant(state, req, log, Access::Write).await?;
    let body: CreateIndexBody = super::data_body(req)?;
    let keys = IndexKeys::parse(&body.keys)
        .map_err(|e| ApiError::invalid("invalid_index", e.to_string()))?;
    if keys.fields().iter().any(|f| f.path == "_id") && keys.fields().len() == 1 {
        return Err(ApiError::invalid(
            "invalid_index",
            "the _id index exists already",
        ));
    }
    let name = match &body.name {
        Some(n) => IndexName::parse(n),
        None => IndexName::parse(&keys.default_name()),
    }
    .map_err(|e| ApiError::invalid("invalid_index", e.to_string()))?;
    if name.is_id() {
        return Err(ApiError::invalid(
            "invalid_index",
            "the name _id_ belongs to the _id index",
        ));
    }
    let spec = IndexSpec {
        name,
        keys,
        unique: body.unique.unwrap_or(false),
    };
    let max = state.config.data.max_indexes_per_collection;
    let info = t
        .write("create_index", Vec::new(), move |shard, ns| async move {
            shard.store.create_index(&ns, &spec, max).await
        })
        .await?;
    // Index entries count toward the quota: measured again at the next write.
    state.quotas.forget(t.org);
    Ok(t.reply(StatusCode::CREATED, &IndexReply::from(info)))
}

/// `GET /data/indexes`: the indexes of the tenant's collection, `_id_` first.
#[utoipa::path(get, path = "/data/indexes", operation_id = "list_indexes", tag = "data", security(("bearer" = [])),
    responses(
        (status = 401, description = "Missing, invalid or expired token", body = crate::error::ProblemBody, content_type = "application/problem+json"),
        (status = 429, description = "Rate limited (Retry-After)", body = crate::error::ProblemBody, content_type = "application/problem+json"),
        (status = 503, description = "Shard unavailable or tenant being moved (Retry-After)", body = crate::error::ProblemBody, content_type = "application/problem+json"),
        (status = 200, description = "The indexes", body = IndexList),
    ))]
pub async fn list_indexes(state: &AppState, req: &Request, log: &mut RequestLog) -> ApiResult {
    let t = tenant(state, req, log, Access::Read).await?;
    let mut indexes = t
        .run("list_indexes", t.shard.store.list_indexes(&t.ns))
        .await?;
    if indexes.is_empty() {
        // A tenant's collection always has its `_id` index, even before its first write
        // reached a MongoDB shard.
        indexes.push(crate::store::embedded::id_index());
    }
    Ok(t.reply(
        StatusCode::OK,
        &IndexList {
            indexes: indexes.into_iter().map(IndexReply::from).collect(),
        },
    ))
}

/// `DELETE /data/indexes/{name}`.
#[utoipa::path(delete, path = "/data/indexes/{name}", operation_id = "drop_index", tag = "data", security(("bearer" = [])),
    params(("name" = String, Path, description = "Index name: 1 to 128 bytes, no NUL or `/`, not starting with `$`; not `_id_`", min_length = 1, max_length = 128, pattern = r"^[^$/\u0000][^/\u0000]*$")),
    responses(
        (status = 400, description = "Invalid input", body = crate::error::ProblemBody, content_type = "application/problem+json"),
        (status = 401, description = "Missing, invalid or expired token", body = crate::error::ProblemBody, content_type = "application/problem+json"),
        (status = 429, description = "Rate limited (Retry-After)", body = crate::error::ProblemBody, content_type = "application/problem+json"),
        (status = 503, description = "Shard unavailable or tenant being moved (Retry-After)", body = crate::error::ProblemBody, content_type = "application/problem+json"),
        (status = 200, description = "Dropped", body = IndexDropped),
        (status = 404, description = "No index with that name", body = crate::error::ProblemBody, content_type = "application/problem+json"),
    ))]
pub async fn drop_index(state: &AppState, req: &Request, log: &mut RequestLog) -> ApiResult {
    let t = tenant(state, req, log, Access::Write).await?;
    let raw = path_value(req.path.trim_start_matches("/data/indexes/"));
    let name =
        IndexName::parse(&raw).map_err(|e| ApiError::invalid("invalid_index", e.to_string()))?;
    if name.is_id() {
        return Err(ApiError::invalid(
            "invalid_index",
            "the _id index cannot be dropped",
        ));
    }
    let target = name.clone();
    t.write("drop_index", Vec::new(), move |shard, ns| async move {
        shard.store.drop_index(&ns, &target).await
    })
    .await?;
    state.quotas.forget(t.org);
    Ok(t.reply(
        StatusCode::OK,
        &IndexDropped {
            dropped: true,
            name: name.as_str().to_owned(),
        },
    ))
}
