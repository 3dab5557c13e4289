//! HTTP handlers. The listener (`crate::listener`) turns a pingora session into a [`Request`],
//! calls [`handle`], and writes the [`Reply`] or the [`ApiError`] as problem+json.

pub mod admins;
pub mod auth;
pub mod data;
pub mod deleted;
pub mod events;
pub mod health;
pub mod moves;
pub mod openapi;
pub mod ops;
pub mod orgs;
pub mod routes;
pub mod transfer;

use crate::app::AppState;
use crate::domain::OrgId;
use crate::error::ApiError;
use crate::store::query::{clip, Step, Trail};
use bytes::Bytes;
use http::{HeaderMap, Method, StatusCode};
use routes::Route;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;
use std::net::IpAddr;

/// A parsed request with its whole body.
#[derive(Debug)]
pub struct Request {
    /// Method.
    pub method: Method,
    /// Path without the query.
    pub path: String,
    /// Raw query string (without `?`).
    pub query: String,
    /// Headers.
    pub headers: HeaderMap,
    /// The body (bounded by `max_body_bytes`).
    pub body: Bytes,
    /// The request id echoed in `X-Request-Id`.
    pub request_id: String,
    /// Client address, when known: the TCP peer, or the client a trusted proxy reported
    /// (`crate::limits::address::client_address`).
    pub client_ip: Option<IpAddr>,
}

/// What the handler learned that the access log should show.
#[derive(Debug, Default)]
pub struct RequestLog {
    /// The organization the request acted for, once known.
    pub org_id: Option<OrgId>,
}

/// A body read or written in chunks: the request body of a streamed upload (read as it
/// arrives), or the rest of a streamed response (produced as it is sent).
#[async_trait::async_trait]
pub trait Chunks: Send {
    /// The next chunk, or `None` at the end. For a response, an error after the head is sent
    /// can only abort the connection (the client sees an incomplete body).
    async fn next_chunk(&mut self) -> Result<Option<Bytes>, ApiError>;
}

/// A request body of no bytes (routes that read none).
pub struct NoBody;

#[async_trait::async_trait]
impl Chunks for NoBody {
    async fn next_chunk(&mut self) -> Result<Option<Bytes>, ApiError> {
        Ok(None)
    }
}

/// The rest of a streamed response body, after [`Reply::body`].
pub struct Stream(pub Box<dyn Chunks>);

impl std::fmt::Debug for Stream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Stream")
    }
}

/// A successful response.
#[derive(Debug)]
pub struct Reply {
    /// Status.
    pub status: StatusCode,
    /// Body bytes.
    pub body: Vec<u8>,
    /// `Content-Type`.
    pub content_type: &'static str,
    /// Extra headers.
    pub headers: Vec<(&'static str, String)>,
    /// When set, the body goes on with these chunks after `body` (sent without a
    /// `Content-Length`, chunked).
    pub stream: Option<Stream>,
}

impl Reply {
    /// A JSON reply.
    pub fn json(status: StatusCode, value: &impl Serialize) -> Self {
        Self {
            status,
            body: serde_json::to_vec(value).expect("response serializes"),
            content_type: "application/json",
            headers: Vec::new(),
            stream: None,
        }
    }
}

/// Result of a handler.
pub type ApiResult = Result<Reply, ApiError>;

/// Runs the handler for a matched route. `body` is the request body still to read, for the
/// routes that stream theirs ([`Route::streams_body`]); the others find theirs in `req.body`.
pub async fn handle(
    state: &std::sync::Arc<AppState>,
    route: Route,
    req: &Request,
    body: &mut dyn Chunks,
    log: &mut RequestLog,
) -> ApiResult {
    match route {
        Route::OrgExport => transfer::export(state, req, log).await,
        Route::OrgImport => transfer::import(state, req, body, log).await,
        Route::Healthz => health::healthz(state).await,
        Route::OpenApi => openapi::openapi_json(state, routes::Listener::Public).await,
        Route::OpsOpenApi => openapi::openapi_json(state, routes::Listener::Ops).await,
        Route::Readyz => health::readyz(state).await,
        Route::Metrics => health::metrics(state, req).await,
        Route::OrgCreate => orgs::create(state, req, log).await,
        Route::OrgGet => orgs::get(state, req, log).await,
        Route::OrgUpdate => orgs::update(state, req, log).await,
        Route::OrgDelete => orgs::delete(state, req, log).await,
        Route::AdminLogin => auth::login(state, req, log).await,
        Route::OrgAdmins => admins::list(state, req, log).await,
        Route::OrgAdminCreate => admins::create(state, req, log).await,
        Route::OrgAdminDelete => admins::delete(state, req, log).await,
        Route::OrgEvents => events::org_events(state, req, log).await,
        Route::OpsShards
        | Route::OpsShardAdd
        | Route::OpsPlacement
        | Route::OpsLimits
        | Route::OpsOrgs
        | Route::OpsEvents
        | Route::OpsQuotas
        | Route::OpsTopTenants
        | Route::OpsInstances
        | Route::OpsMoves
        | Route::OpsMoveStart
        | Route::OpsMove
        | Route::OpsMoveCancel
        | Route::OpsShardDrain
        | Route::OpsRebalance
        | Route::OpsDeleted
        | Route::OpsDeletedRestore
        | Route::OpsDeletedPurge => ops::handle(state, route, req).await,
        Route::DataInsert => data::insert(state, req, log).await,
        Route::DataQuery => data::query(state, req, log).await,
        Route::DataCount => data::count(state, req, log).await,
        Route::DataGet => data::get(state, req, log).await,
        Route::DataPatch => data::patch(state, req, log).await,
        Route::DataDelete => data::delete(state, req, log).await,
        Route::DataIndexes => data::list_indexes(state, req, log).await,
        Route::DataIndexCreate => data::create_index(state, req, log).await,
        Route::DataIndexDrop => data::drop_index(state, req, log).await,
    }
}

/// Most JSON values (objects, arrays and scalars, nested ones included) one request body may
/// hold. Every check after parsing walks the body once or a few times in linear time, so this
/// bounds the work a request costs whatever `max_body_bytes` is (a 1 MiB body holds at most
/// about 525,000 values); nesting is bounded by serde_json's recursion limit (128).
pub const MAX_BODY_VALUES: usize = 1_000_000;

/// Parses a JSON body that must be an object into `T`, with a 400 that says what was wrong:
/// `invalid_json` when it is not JSON, `invalid_body` when it is not an object (serde would
/// otherwise read a JSON array positionally into a struct) or does not fit `T`, and the
/// [`json_value`] checks. The content type is not checked: clients that forget the header
/// still get their JSON parsed.
///
/// Integer range is left to `T`'s typed fields (an unknown field is ignored, whatever it
/// holds); tenant data goes through [`data_body`] or [`json_value`] instead.
pub fn json_body<T: DeserializeOwned>(req: &Request) -> Result<T, ApiError> {
    let value = parse(req, Integers::AsTyped)?;
    if !value.is_object() {
        return Err(not_an_object());
    }
    from_value(value)
}

/// [`json_body`] for a body carrying tenant data (filters, sorts): every integer in it must
/// fit a signed 64-bit integer, as for documents ([`json_value`]).
pub fn data_body<T: DeserializeOwned>(req: &Request) -> Result<T, ApiError> {
    let value = json_value(req)?;
    if !value.is_object() {
        return Err(not_an_object());
    }
    from_value(value)
}

/// Like [`json_body`], for a body that may also be `null` (`None`).
pub fn json_body_or_null<T: DeserializeOwned>(req: &Request) -> Result<Option<T>, ApiError> {
    match parse(req, Integers::AsTyped)? {
        Value::Null => Ok(None),
        v @ Value::Object(_) => from_value(v).map(Some),
        _ => Err(not_an_object()),
    }
}

/// Parses a body of any JSON type. Integers must fit a signed 64-bit integer
/// (`number_out_of_range`; MongoDB stores no larger ones, so both backends hold the same
/// values) and the body may hold at most [`MAX_BODY_VALUES`] values (`body_too_complex`).
pub fn json_value(req: &Request) -> Result<Value, ApiError> {
    parse(req, Integers::Int64)
}

/// Which integers a body may hold.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Integers {
    /// Tenant data: every integer fits a signed 64-bit integer.
    Int64,
    /// A body read into typed fields, which check their own range.
    AsTyped,
}

fn parse(req: &Request, integers: Integers) -> Result<Value, ApiError> {
    if req.body.is_empty() {
        return Err(ApiError::invalid(
            "invalid_json",
            "request body must be a JSON object",
        ));
    }
    let value: Value = serde_json::from_slice(&req.body).map_err(|e| {
        ApiError::invalid(
            "invalid_json",
            format!("invalid request body: {}", clip(&e.to_string())),
        )
    })?;
    check_value(&value, &req.body, integers)?;
    Ok(value)
}

/// One JSON text holding tenant data (a line of an import): [`json_value`]'s checks. Errors
/// carry only the kind of problem (their `code`), so a caller may report them without
/// quoting the text.
pub fn tenant_json(text: &[u8]) -> Result<Value, ApiError> {
    let value: Value = serde_json::from_slice(text)
        .map_err(|_| ApiError::invalid("invalid_json", "not valid JSON"))?;
    check_value(&value, text, Integers::Int64)?;
    Ok(value)
}

fn check_value(value: &Value, text: &[u8], integers: Integers) -> Result<(), ApiError> {
    let mut budget = MAX_BODY_VALUES;
    check_json(value, &mut Trail::new(""), &mut budget, integers)?;
    if integers == Integers::Int64 && has_integer_beyond_i64(text) {
        return Err(ApiError::invalid(
            "number_out_of_range",
            "an integer in the request body does not fit a signed 64-bit integer",
        ));
    }
    Ok(())
}

/// Whether valid JSON text holds an integer literal (no fraction, no exponent) outside the
/// signed 64-bit range. serde_json reads those below `i64::MIN` or above `u64::MAX` as
/// floats, so only the text tells them from a float such as `-9.3e18`. One linear pass.
fn has_integer_beyond_i64(json: &[u8]) -> bool {
    let mut i = 0;
    while i < json.len() {
        match json[i] {
            b'"' => {
                i += 1;
                while i < json.len() {
                    match json[i] {
                        b'\\' => i += 2,
                        b'"' => {
                            i += 1;
                            break;
                        }
                        _ => i += 1,
                    }
                }
            }
            b'-' | b'0'..=b'9' => {
                let start = i;
                i += 1;
                while i < json.len() && json[i].is_ascii_digit() {
                    i += 1;
                }
                let digits_end = i;
                let integer = !matches!(json.get(i), Some(b'.' | b'e' | b'E'));
                while i < json.len()
                    && matches!(json[i], b'0'..=b'9' | b'.' | b'e' | b'E' | b'+' | b'-')
                {
                    i += 1;
                }
                if integer
                    && std::str::from_utf8(&json[start..digits_end])
                        .ok()
                        .and_then(|t| t.parse::<i64>().ok())
                        .is_none()
                {
                    return true;
                }
            }
            _ => i += 1,
        }
    }
    false
}

fn not_an_object() -> ApiError {
    ApiError::invalid("invalid_body", "request body must be a JSON object")
}

fn from_value<T: DeserializeOwned>(v: Value) -> Result<T, ApiError> {
    // serde's messages can quote the request (an unknown field, a wrong-typed string).
    serde_json::from_value(v).map_err(|e| {
        ApiError::invalid(
            "invalid_body",
            format!("invalid request body: {}", clip(&e.to_string())),
        )
    })
}

/// One pass over a parsed body: integer range and the value budget. The path of an
/// offending number is rendered only when it is reported.
fn check_json<'a>(
    v: &'a Value,
    trail: &mut Trail<'a>,
    budget: &mut usize,
    integers: Integers,
) -> Result<(), ApiError> {
    if *budget == 0 {
        return Err(ApiError::invalid(
            "body_too_complex",
            format!("request body holds more than {MAX_BODY_VALUES} JSON values"),
        ));
    }
    *budget -= 1;
    match v {
        Value::Number(n) if integers == Integers::Int64 && n.is_u64() && n.as_i64().is_none() => {
            Err(ApiError::invalid(
                "number_out_of_range",
                format!(
                    "integer at `{}` does not fit a signed 64-bit integer",
                    trail.render()
                ),
            ))
        }
        Value::Array(items) => {
            for (i, x) in items.iter().enumerate() {
                trail.push(Step::Index(i));
                check_json(x, trail, budget, integers)?;
                trail.pop();
            }
            Ok(())
        }
        Value::Object(map) => {
            for (k, x) in map {
                trail.push(Step::Key(k));
                check_json(x, trail, budget, integers)?;
                trail.pop();
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

/// Reads a single query parameter (percent-decoded). Repeated parameters are refused.
pub fn query_param(req: &Request, name: &str) -> Result<Option<String>, ApiError> {
    let mut found = None;
    for (k, v) in url::form_urlencoded::parse(req.query.as_bytes()) {
        if k == name {
            if found.is_some() {
                return Err(ApiError::invalid(
                    "invalid_query",
                    format!("query parameter `{name}` given more than once"),
                ));
            }
            found = Some(v.into_owned());
        }
    }
    Ok(found)
}

/// The organization currently named `name`, or 404.
pub async fn org_named(
    state: &AppState,
    name: &crate::domain::OrgName,
) -> Result<std::sync::Arc<crate::catalog::OrgRecord>, ApiError> {
    state
        .router
        .org_by_name(&name.normalized())
        .await
        .map_err(|e| orgs::catalog_failure("org lookup", e))?
        .ok_or_else(ApiError::org_not_found)
}

/// Counts one request against the organization's rate limits (fleet-wide when they are in
/// Redis): the headers to send, or 429.
pub async fn check_rate(
    state: &AppState,
    org: OrgId,
) -> Result<Vec<(&'static str, String)>, ApiError> {
    let decision = match &state.redis_limits {
        Some(redis) => redis.check_rate(org, &state.rate_limits).await,
        None => state.rate_limits.check(org),
    };
    if decision.allowed {
        return Ok(decision.headers);
    }
    let mut e = ApiError::new(
        StatusCode::TOO_MANY_REQUESTS,
        "rate_limited",
        "request rate limit exceeded for this organization",
    );
    e.retry_after = Some(decision.retry_after);
    e.extra_headers = decision.headers;
    Err(e)
}

/// Counts one request of the client against its per-address limit `kind` (fleet-wide when
/// limits are in Redis): the headers to send, or 429. A request without a known address (not
/// over TCP) is not limited.
pub async fn check_address(
    state: &AppState,
    kind: crate::limits::address::AddressLimit,
    req: &Request,
) -> Result<Vec<(&'static str, String)>, ApiError> {
    let Some(ip) = req.client_ip else {
        return Ok(Vec::new());
    };
    let decision = match &state.redis_limits {
        Some(redis) => redis.check_address(kind, ip, &state.address_limits).await,
        None => state.address_limits.check(kind, ip),
    };
    if decision.allowed {
        return Ok(decision.headers);
    }
    let mut e = ApiError::new(
        StatusCode::TOO_MANY_REQUESTS,
        "rate_limited",
        "too many requests from this client address; retry later",
    );
    e.retry_after = Some(decision.retry_after);
    e.extra_headers = decision.headers;
    Err(e)
}

#[cfg(test)]
mod tests {
    use super::has_integer_beyond_i64 as beyond;

    #[test]
    fn integer_literals_beyond_i64_are_found_whatever_serde_reads_them_as() {
        for bad in [
            r#"{"a": -9223372036854775809}"#,
            r#"[1, 18446744073709551616]"#,
            r#"{"a": {"b": [9223372036854775808]}}"#,
            r#"-99999999999999999999999"#,
        ] {
            assert!(beyond(bad.as_bytes()), "{bad}");
        }
        for good in [
            r#"{"a": -9223372036854775808, "b": 9223372036854775807}"#,
            r#"{"a": -9.3e18, "b": 1e30, "c": 18446744073709551616.0, "d": 1E400}"#,
            r#"{"n": "99999999999999999999", "k\"99999999999999999999": 0}"#,
            r#"{"99999999999999999999": [0, -0, 12]}"#,
        ] {
            assert!(!beyond(good.as_bytes()), "{good}");
        }
    }
}
