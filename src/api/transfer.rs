//! `GET /org/export` and `POST /org/import`: the organization's documents as NDJSON (one
//! document a line, in the JSON form `/data/query` returns), streamed both ways in bounded
//! memory.
//!
//! An export reads the collection in `_id` order in batches ([`TenantStore::scan_after`],
//! resuming after the last `_id` sent) and writes each batch to the response as it is read.
//! An import reads the body as it arrives, parses it line by line and writes batches through
//! the same store paths and checks as `POST /data` (document rules, size limit, `_id` rules,
//! unique indexes, the quota). Both resolve the organization's placement again for each
//! batch, holding the request gate only for that batch: a long transfer never holds up a
//! move or a rename, and its next batch follows them.
//!
//! [`TenantStore::scan_after`]: crate::store::TenantStore::scan_after

use super::data::{
    check_quota, limits, prepare_document, quota_exceeded, tenant, tenant_again, usage,
    with_headers, Access, DocProblem, Tenant,
};
use super::{ApiResult, Chunks, Reply, Request, RequestLog, Stream};
use crate::app::AppState;
use crate::domain::OrgId;
use crate::error::ApiError;
use crate::store::query::QueryLimits;
use crate::store::Document;
use crate::telemetry::metrics;
use async_trait::async_trait;
use bytes::Bytes;
use http::StatusCode;
use serde::Serialize;
use serde_json::Value;
use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The media type of both routes' bodies.
pub const NDJSON: &str = "application/x-ndjson";

/// Documents in an export's first batch; later batches aim at [`EXPORT_CHUNK_BYTES`].
const EXPORT_FIRST_BATCH: usize = 64;
/// Most documents an export reads at once.
const EXPORT_MAX_BATCH: usize = 1000;
/// Bytes an export aims to send per batch (the batch size follows the documents' average).
const EXPORT_CHUNK_BYTES: usize = 1024 * 1024;
/// Bytes of documents an import writes at once at most (and at most `data.max_batch`
/// documents).
const IMPORT_BATCH_BYTES: u64 = 4 * 1024 * 1024;
/// Most documents an upsert-mode import writes at once: a MongoDB shard replaces the
/// documents that exist one by one, and each batch must finish within the request timeout.
const UPSERT_BATCH_DOCS: usize = 100;
/// Pause between attempts while the organization is briefly busy (a move's cutover).
const BUSY_RETRY: Duration = Duration::from_millis(50);

/// The placement for the next batch, waiting out a briefly busy organization (503) for up to
/// half the request timeout.
async fn placement(
    state: &AppState,
    org: OrgId,
    headers: &[(&'static str, String)],
    access: Access,
) -> Result<Tenant, ApiError> {
    let started = Instant::now();
    let patience = Duration::from_millis(state.config.request_timeout_ms / 2);
    loop {
        match tenant_again(state, org, headers.to_vec(), access).await {
            Err(e)
                if e.status == StatusCode::SERVICE_UNAVAILABLE && started.elapsed() < patience =>
            {
                tokio::time::sleep(BUSY_RETRY).await;
            }
            other => return other,
        }
    }
}

/// `GET /org/export`: the token's organization's documents as NDJSON, in `_id` order.
#[utoipa::path(get, path = "/org/export", operation_id = "export_documents", tag = "data", security(("bearer" = [])),
    responses(
        (status = 200, description = "Every document of the organization, one JSON object a line in ascending `_id` order (the form `/data/query` returns), streamed with chunked transfer encoding. A failure after the first bytes closes the connection before the last chunk, so a client sees an incomplete body, never a truncated export that looks whole.", content_type = "application/x-ndjson", body = String),
        (status = 401, description = "Missing, invalid or expired token", body = crate::error::ProblemBody, content_type = "application/problem+json"),
        (status = 429, description = "Rate limited (Retry-After)", body = crate::error::ProblemBody, content_type = "application/problem+json"),
        (status = 503, description = "Shard unavailable or tenant being moved (Retry-After)", body = crate::error::ProblemBody, content_type = "application/problem+json"),
    ))]
pub async fn export(state: &Arc<AppState>, req: &Request, log: &mut RequestLog) -> ApiResult {
    let t = tenant(state, req, log, Access::Read).await?;
    let headers = t.headers.clone();
    let org = t.org;
    drop(t);
    let mut export = Export {
        state: Arc::clone(state),
        org,
        headers: headers.clone(),
        after: None,
        limit: EXPORT_FIRST_BATCH,
        done: false,
    };
    // The first batch is read before the head is sent: a failure there is still a problem
    // response.
    let step = Duration::from_millis(state.config.request_timeout_ms);
    let first = tokio::time::timeout(step, export.next_batch())
        .await
        .map_err(|_| {
            ApiError::unavailable(
                "request_timeout",
                "the request took too long and was abandoned",
                1,
            )
        })??;
    Ok(Reply {
        status: StatusCode::OK,
        body: first.map(Vec::from).unwrap_or_default(),
        content_type: NDJSON,
        headers,
        stream: Some(Stream(Box::new(export))),
    })
}

/// An export in progress: where it stands in `_id` order.
struct Export {
    state: Arc<AppState>,
    org: OrgId,
    headers: Vec<(&'static str, String)>,
    /// The last `_id` sent.
    after: Option<String>,
    /// Documents to read in the next batch.
    limit: usize,
    done: bool,
}

impl Export {
    async fn next_batch(&mut self) -> Result<Option<Bytes>, ApiError> {
        if self.done {
            return Ok(None);
        }
        let t = placement(&self.state, self.org, &self.headers, Access::Read).await?;
        let docs = t
            .run(
                "scan_after",
                t.shard
                    .store
                    .scan_after(&t.ns, self.after.as_deref(), self.limit),
            )
            .await?;
        drop(t);
        if docs.len() < self.limit {
            self.done = true;
        }
        let Some(last) = docs.last() else {
            return Ok(None);
        };
        self.after = match last.get("_id") {
            Some(Value::String(id)) => Some(id.clone()),
            _ => {
                return Err(super::auth::internal(
                    "export",
                    "a stored document without a string _id",
                ))
            }
        };
        let mut out = Vec::with_capacity(EXPORT_CHUNK_BYTES);
        for d in &docs {
            serde_json::to_writer(&mut out, d).expect("a JSON object always serializes");
            out.push(b'\n');
        }
        metrics::TRANSFER_DOCUMENTS
            .with_label_values(&["export"])
            .inc_by(docs.len() as u64);
        let average = out.len() / docs.len();
        self.limit = (EXPORT_CHUNK_BYTES / average.max(1)).clamp(1, EXPORT_MAX_BATCH);
        Ok(Some(Bytes::from(out)))
    }
}

#[async_trait]
impl Chunks for Export {
    async fn next_chunk(&mut self) -> Result<Option<Bytes>, ApiError> {
        self.next_batch().await
    }
}

/// How an import writes documents.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// A document whose `_id` exists is refused (400 naming its line).
    Insert,
    /// A document whose `_id` exists replaces it.
    Upsert,
}

/// Reply of `POST /org/import`.
#[derive(Serialize, utoipa::ToSchema)]
pub struct ImportReply {
    /// Documents written.
    imported: u64,
}

/// `POST /org/import?mode=insert|upsert`: NDJSON documents into the token's organization.
#[utoipa::path(post, path = "/org/import", operation_id = "import_documents", tag = "data", security(("bearer" = [])),
    params(("mode" = Option<String>, Query, description = "`insert` (default): a document whose `_id` exists already is a bad line; `upsert`: it is replaced", pattern = "^(insert|upsert)$")),
    request_body(content = String, content_type = "application/x-ndjson", description = "One document a line (a JSON object, the rules of `POST /data`; `_id` generated when absent); blank lines are skipped. Read as it arrives and written in batches: the body may be as large as the organization's remaining storage quota (not bounded by `max_body_bytes`); one line at most `max(max_body_bytes, data.max_document_bytes)` bytes."),
    responses(
        (status = 200, description = "Every line imported", body = ImportReply),
        (status = 400, description = "A bad line: not JSON, not an object, an invalid document, or (insert mode) an `_id` that exists or appears on an earlier line, or a unique index's key taken. The problem names the line (`line`, counted from 1) and the documents imported before it (`imported`): every document on the lines before it is stored, none from it on (except on a MongoDB shard in upsert mode, where a unique key refused may leave later lines of the same batch of up to 100 written).", body = crate::error::ProblemBody, content_type = "application/problem+json"),
        (status = 401, description = "Missing, invalid or expired token", body = crate::error::ProblemBody, content_type = "application/problem+json"),
        (status = 415, description = "Content-Type is not application/x-ndjson", body = crate::error::ProblemBody, content_type = "application/problem+json"),
        (status = 429, description = "Rate limited (Retry-After)", body = crate::error::ProblemBody, content_type = "application/problem+json"),
        (status = 503, description = "Shard unavailable or tenant being moved (Retry-After); `imported` says how many documents were written", body = crate::error::ProblemBody, content_type = "application/problem+json"),
        (status = 507, description = "Storage quota exceeded (the body is larger than the remaining quota, or a batch would exceed it); `imported` says how many documents were written", body = crate::error::ProblemBody, content_type = "application/problem+json"),
    ))]
pub async fn import(
    state: &Arc<AppState>,
    req: &Request,
    body: &mut dyn Chunks,
    log: &mut RequestLog,
) -> ApiResult {
    let t = tenant(state, req, log, Access::Write).await?;
    let mode = match super::query_param(req, "mode")
        .map_err(|e| with_headers(e, &t.headers))?
        .as_deref()
    {
        None | Some("insert") => Mode::Insert,
        Some("upsert") => Mode::Upsert,
        Some(_) => {
            return Err(with_headers(
                ApiError::invalid("invalid_query", "mode must be insert or upsert"),
                &t.headers,
            ))
        }
    };
    if !is_ndjson(req) {
        return Err(with_headers(
            ApiError::unsupported_media_type_of(NDJSON),
            &t.headers,
        ));
    }
    let used = usage(state, &t).await?;
    let remaining = state.quotas.limit_bytes.saturating_sub(used);
    let declared = req
        .headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if let Some(len) = declared.filter(|len| *len > remaining) {
        return Err(quota_exceeded(state, &t.headers, used, len).with_extension("imported", 0));
    }
    let headers = t.headers.clone();
    let mut import = Import {
        state: Arc::clone(state),
        org: t.org,
        headers: headers.clone(),
        mode,
        lim: limits(state),
        batch: Vec::new(),
        batch_bytes: 0,
        ids: HashSet::new(),
        imported: 0,
    };
    drop(t);
    let max_line = state
        .config
        .max_body_bytes
        .max(state.config.data.max_document_bytes);
    let mut partial: Vec<u8> = Vec::new();
    let mut line_no = 0u64;
    let mut received = 0u64;
    loop {
        let chunk = match body.next_chunk().await {
            Ok(Some(c)) => c,
            Ok(None) => break,
            Err(e) => return Err(import.stopped(e)),
        };
        received += chunk.len() as u64;
        if received > remaining {
            let e = quota_exceeded(state, &headers, used, received);
            return Err(import.stopped(e));
        }
        let mut rest = &chunk[..];
        while let Some(end) = rest.iter().position(|b| *b == b'\n') {
            line_no += 1;
            if partial.len() + end > max_line {
                return Err(import.bad_line(line_no, line_too_long(max_line)).await);
            }
            if partial.is_empty() {
                import.line(line_no, &rest[..end]).await?;
            } else {
                partial.extend_from_slice(&rest[..end]);
                let line = std::mem::take(&mut partial);
                import.line(line_no, &line).await?;
            }
            rest = &rest[end + 1..];
        }
        if partial.len() + rest.len() > max_line {
            return Err(import.bad_line(line_no + 1, line_too_long(max_line)).await);
        }
        partial.extend_from_slice(rest);
    }
    if !partial.is_empty() {
        line_no += 1;
        import.line(line_no, &partial).await?;
    }
    import.flush().await?;
    let mut reply = Reply::json(
        StatusCode::OK,
        &ImportReply {
            imported: import.imported,
        },
    );
    reply.headers.extend(headers);
    Ok(reply)
}

fn line_too_long(max_line: usize) -> ApiError {
    ApiError::invalid(
        "line_too_long",
        format!("a line may hold at most {max_line} bytes"),
    )
}

/// Whether the request says its body is NDJSON (parameters such as `charset` allowed).
fn is_ndjson(req: &Request) -> bool {
    req.headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|t| t.trim().eq_ignore_ascii_case(NDJSON))
}

/// An import in progress: the batch being gathered and the count written so far.
struct Import {
    state: Arc<AppState>,
    org: OrgId,
    headers: Vec<(&'static str, String)>,
    mode: Mode,
    lim: QueryLimits,
    /// (line number, `_id`, document) of the documents not written yet.
    batch: Vec<(u64, String, Document)>,
    batch_bytes: u64,
    /// The batch's `_id`s.
    ids: HashSet<String>,
    imported: u64,
}

impl Import {
    /// One line of the body (without its `\n`).
    async fn line(&mut self, n: u64, raw: &[u8]) -> Result<(), ApiError> {
        let text = raw.trim_ascii();
        if text.is_empty() {
            return Ok(());
        }
        // Only the kind of problem is reported: the line's bytes are never echoed.
        let value = match super::tenant_json(text) {
            Ok(v) => v,
            Err(e) => {
                // The parser's own messages may name a field of the line: a fixed text.
                let what = match e.code {
                    "invalid_json" => "not valid JSON",
                    "number_out_of_range" => "an integer does not fit a signed 64-bit integer",
                    _ => "too many JSON values",
                };
                let e = ApiError::invalid(e.code, what);
                return Err(self.bad_line(n, e).await);
            }
        };
        let Value::Object(doc) = value else {
            let e = ApiError::invalid("invalid_document", "not a JSON object");
            return Err(self.bad_line(n, e).await);
        };
        let max = self.state.config.data.max_document_bytes;
        let (id, doc, size) = match prepare_document(doc, &self.lim, max) {
            Ok(p) => p,
            Err(p) => {
                let what = match &p {
                    DocProblem::IdNotString => "_id must be a string".to_owned(),
                    DocProblem::InvalidId(e) => e.detail.clone(),
                    DocProblem::Invalid(_) => "invalid document".to_owned(),
                    DocProblem::TooLarge(size) => {
                        format!("document is {size} bytes; the limit is {max}")
                    }
                };
                let e = ApiError::invalid(p.code(), what);
                return Err(self.bad_line(n, e).await);
            }
        };
        if self.ids.contains(&id) {
            match self.mode {
                Mode::Insert => {
                    let e = ApiError::invalid(
                        "duplicate_id",
                        "an earlier line holds a document with the same _id",
                    );
                    return Err(self.bad_line(n, e).await);
                }
                // Applied in order: the earlier line's document first.
                Mode::Upsert => self.flush().await?,
            }
        }
        self.ids.insert(id.clone());
        self.batch.push((n, id, doc));
        self.batch_bytes += size;
        let max_docs = match self.mode {
            Mode::Insert => self.state.config.data.max_batch,
            Mode::Upsert => self.state.config.data.max_batch.min(UPSERT_BATCH_DOCS),
        };
        if self.batch.len() >= max_docs || self.batch_bytes >= IMPORT_BATCH_BYTES {
            self.flush().await?;
        }
        Ok(())
    }

    /// The 400 for line `n`, after writing the documents of the lines before it (if that
    /// fails, its error instead).
    async fn bad_line(&mut self, n: u64, e: ApiError) -> ApiError {
        if let Err(earlier) = self.flush().await {
            return earlier;
        }
        self.at_line(n, e)
    }

    fn at_line(&self, n: u64, e: ApiError) -> ApiError {
        let imported = self.imported;
        let mut e = ApiError::invalid(
            e.code,
            format!(
                "line {n}: {} ({}); {imported} documents were imported before it",
                e.detail, e.code
            ),
        );
        e.extensions = vec![("line", n), ("imported", imported)];
        with_headers(e, &self.headers)
    }

    /// An error that ends the import where it stands, with the count written.
    fn stopped(&self, e: ApiError) -> ApiError {
        let mut e = e.with_extension("imported", self.imported);
        for (name, value) in &self.headers {
            if !e.extra_headers.iter().any(|(n, _)| n == name) {
                e.extra_headers.push((name, value.clone()));
            }
        }
        e
    }

    /// Writes the gathered batch. A duplicate `_id` or unique key refuses the whole batch:
    /// its documents are then written one by one up to the one refused, whose line is
    /// reported.
    async fn flush(&mut self) -> Result<(), ApiError> {
        if self.batch.is_empty() {
            return Ok(());
        }
        let batch = std::mem::take(&mut self.batch);
        let bytes = std::mem::take(&mut self.batch_bytes);
        self.ids.clear();
        let t = placement(&self.state, self.org, &self.headers, Access::Write)
            .await
            .map_err(|e| self.stopped(e))?;
        check_quota(&self.state, &t, bytes)
            .await
            .map_err(|e| self.stopped(e))?;
        let docs: Vec<Document> = batch.iter().map(|(_, _, d)| d.clone()).collect();
        let ids: Vec<String> = batch.iter().map(|(_, id, _)| id.clone()).collect();
        match self.write(&t, ids, docs).await {
            Ok(()) => {
                self.wrote(batch.len() as u64, bytes);
                Ok(())
            }
            Err(e) if is_duplicate(&e) => {
                for (n, id, doc) in batch {
                    let size = serde_json::to_vec(&doc).map_or(0, |v| v.len() as u64);
                    match self.write(&t, vec![id], vec![doc]).await {
                        Ok(()) => self.wrote(1, size),
                        Err(e) if is_duplicate(&e) => {
                            let what = match e.code {
                                "duplicate_id" => "a document with this _id exists already",
                                _ => "a unique index already holds this document's key",
                            };
                            return Err(self.at_line(n, ApiError::invalid(e.code, what)));
                        }
                        Err(e) => return Err(self.stopped(e)),
                    }
                }
                Ok(())
            }
            Err(e) => Err(self.stopped(e)),
        }
    }

    fn wrote(&mut self, docs: u64, bytes: u64) {
        self.imported += docs;
        metrics::TRANSFER_DOCUMENTS
            .with_label_values(&["import"])
            .inc_by(docs);
        match self.mode {
            Mode::Insert => self.state.quotas.add(self.org, bytes as i64),
            // Replaced documents free their old bytes: measured again before the next batch.
            Mode::Upsert => self.state.quotas.forget(self.org),
        }
    }

    /// One store write within the request timeout.
    async fn write(
        &self,
        t: &Tenant,
        ids: Vec<String>,
        docs: Vec<Document>,
    ) -> Result<(), ApiError> {
        let upsert = self.mode == Mode::Upsert;
        let op = if upsert { "upsert_many" } else { "insert_many" };
        let write = t.write(op, ids, move |shard, ns| async move {
            if upsert {
                shard.store.upsert_many(&ns, docs).await
            } else {
                shard.store.insert_many(&ns, docs).await
            }
        });
        let limit = Duration::from_millis(self.state.config.request_timeout_ms);
        match tokio::time::timeout(limit, write).await {
            Ok(r) => r,
            Err(_) => Err(ApiError::unavailable(
                "request_timeout",
                "a batch of the import took too long; its outcome is unknown",
                1,
            )),
        }
    }
}

/// Whether a write was refused for a duplicate `_id` or unique key (409 from the data routes).
fn is_duplicate(e: &ApiError) -> bool {
    e.status == StatusCode::CONFLICT && matches!(e.code, "duplicate_id" | "duplicate_key")
}
