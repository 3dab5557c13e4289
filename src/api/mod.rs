//! HTTP handlers. The listener (`crate::listener`) turns a pingora session into a [`Request`],
//! calls [`handle`], and writes the [`Reply`] or the [`ApiError`] as problem+json.

pub mod auth;
pub mod data;
pub mod health;
pub mod moves;
pub mod openapi;
pub mod ops;
pub mod orgs;
pub mod routes;

use crate::app::AppState;
use crate::domain::OrgId;
use crate::error::ApiError;
use bytes::Bytes;
use http::{HeaderMap, Method, StatusCode};
use routes::Route;
use serde::de::DeserializeOwned;
use serde::Serialize;
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
    /// Client address, when known.
    pub client_ip: Option<IpAddr>,
}

/// What the handler learned that the access log should show.
#[derive(Debug, Default)]
pub struct RequestLog {
    /// The organization the request acted for, once known.
    pub org_id: Option<OrgId>,
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
}

impl Reply {
    /// A JSON reply.
    pub fn json(status: StatusCode, value: &impl Serialize) -> Self {
        Self {
            status,
            body: serde_json::to_vec(value).expect("response serializes"),
            content_type: "application/json",
            headers: Vec::new(),
        }
    }
}

/// Result of a handler.
pub type ApiResult = Result<Reply, ApiError>;

/// Runs the handler for a matched route.
pub async fn handle(
    state: &std::sync::Arc<AppState>,
    route: Route,
    req: &Request,
    log: &mut RequestLog,
) -> ApiResult {
    match route {
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
        Route::OpsShards
        | Route::OpsShardAdd
        | Route::OpsPlacement
        | Route::OpsLimits
        | Route::OpsQuotas
        | Route::OpsTopTenants
        | Route::OpsInstances
        | Route::OpsMoves
        | Route::OpsMoveStart
        | Route::OpsMove
        | Route::OpsMoveCancel
        | Route::OpsShardDrain
        | Route::OpsRebalance => ops::handle(state, route, req).await,
        Route::DataInsert => data::insert(state, req, log).await,
        Route::DataQuery => data::query(state, req, log).await,
        Route::DataCount => data::count(state, req, log).await,
        Route::DataGet => data::get(state, req, log).await,
        Route::DataPatch => data::patch(state, req, log).await,
        Route::DataDelete => data::delete(state, req, log).await,
    }
}

/// Parses a JSON body into `T`, with a 400 that says what was wrong. The content type is not
/// checked: clients that forget the header still get their JSON parsed.
pub fn json_body<T: DeserializeOwned>(req: &Request) -> Result<T, ApiError> {
    if req.body.is_empty() {
        return Err(ApiError::invalid(
            "invalid_json",
            "request body must be a JSON object",
        ));
    }
    serde_json::from_slice(&req.body).map_err(|e| {
        let code = if e.is_data() {
            "invalid_body"
        } else {
            "invalid_json"
        };
        ApiError::invalid(code, format!("invalid request body: {e}"))
    })
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
        .map_err(|e| auth::internal("org lookup", e))?
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
