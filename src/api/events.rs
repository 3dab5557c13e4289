//! Audit events: built by the handlers ([`event`]) and handed to the catalog call that makes
//! the change, which writes both together; facts that change nothing (logins) are appended
//! ([`record`]). Read by an organization's admins (`GET /org/events`) and by operators
//! (`GET /ops/events`), oldest first, a page at a time.

use super::auth::authenticate;
use super::{query_param, ApiResult, Reply, Request, RequestLog};
use crate::app::AppState;
use crate::catalog::{Actor, AuditEvent, EventQuery, EventType};
use crate::domain::{OrgId, OrgName};
use crate::error::ApiError;
use chrono::{DateTime, Utc};
use http::StatusCode;
use serde::Serialize;

/// Largest page of events.
const MAX_LIMIT: usize = 1000;

/// An event of the request `req` (its request id), for the catalog call that makes its change.
pub fn event(
    req: &Request,
    kind: EventType,
    organization: Option<OrgId>,
    actor: Actor,
    details: serde_json::Value,
) -> AuditEvent {
    AuditEvent::new(kind, organization, actor, Some(&req.request_id), details)
}

/// Records an event of the request `req` that changes nothing in the catalog (a login).
pub async fn record(
    state: &AppState,
    req: &Request,
    kind: EventType,
    organization: Option<OrgId>,
    actor: Actor,
    details: serde_json::Value,
) {
    let event = event(req, kind, organization, actor, details);
    crate::catalog::events::record(state.catalog().as_ref(), event).await;
}

/// A page of events.
#[derive(Serialize, utoipa::ToSchema)]
pub struct EventList {
    events: Vec<AuditEvent>,
    /// Pass back as `cursor` for the next page; null when there is none yet.
    next_cursor: Option<String>,
}

fn invalid(detail: &str) -> ApiError {
    ApiError::invalid("invalid_query", detail.to_owned())
}

fn limit_param(req: &Request) -> Result<usize, ApiError> {
    match query_param(req, "limit")? {
        Some(raw) => raw
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=MAX_LIMIT).contains(n))
            .ok_or_else(|| invalid("limit must be 1 to 1000")),
        None => Ok(100),
    }
}

fn type_param(req: &Request) -> Result<Option<EventType>, ApiError> {
    query_param(req, "type")?
        .map(|raw| EventType::parse(&raw).ok_or_else(|| invalid("type is not an event type")))
        .transpose()
}

/// A cursor is the id of the last event of a page (a UUID in canonical form); anything else
/// is 400 `invalid_cursor` (never echoed back).
fn cursor_param(req: &Request) -> Result<Option<String>, ApiError> {
    query_param(req, "cursor")?
        .map(|raw| match uuid::Uuid::parse_str(&raw) {
            Ok(u) if u.to_string() == raw => Ok(raw),
            _ => Err(ApiError::invalid("invalid_cursor", "cursor is malformed")),
        })
        .transpose()
}

fn time_param(req: &Request, name: &str) -> Result<Option<DateTime<Utc>>, ApiError> {
    query_param(req, name)?
        .map(|raw| {
            DateTime::parse_from_rfc3339(&raw)
                .map(|t| t.with_timezone(&Utc))
                .map_err(|_| {
                    ApiError::invalid(
                        "invalid_query",
                        format!("{name} must be an RFC 3339 time, like 2026-01-31T12:00:00Z"),
                    )
                })
        })
        .transpose()
}

async fn page(state: &AppState, query: EventQuery) -> ApiResult {
    let page = state
        .catalog()
        .events(&query)
        .await
        .map_err(|e| super::orgs::catalog_failure("audit events", e))?;
    Ok(Reply::json(
        StatusCode::OK,
        &EventList {
            events: page.events,
            next_cursor: page.next_after,
        },
    ))
}

/// `GET /org/events`: the caller's organization's events, oldest first.
#[utoipa::path(get, path = "/org/events", operation_id = "list_organization_events", tag = "organizations",
    params(
        ("type" = Option<EventType>, Query, description = "Only events of this type"),
        ("limit" = Option<u32>, Query, description = "Page size (default 100)", minimum = 1, maximum = 1000),
        ("cursor" = Option<String>, Query, description = "`next_cursor` of the previous page (opaque)", pattern = r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$"),
    ),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "A page of events, oldest first", body = EventList),
        (status = 400, description = "Invalid type, limit or cursor", body = crate::error::ProblemBody, content_type = "application/problem+json"),
        (status = 401, description = "Missing, invalid or expired token", body = crate::error::ProblemBody, content_type = "application/problem+json"),
        (status = 429, description = "Rate limited (Retry-After)", body = crate::error::ProblemBody, content_type = "application/problem+json"),
    ))]
pub async fn org_events(state: &AppState, req: &Request, log: &mut RequestLog) -> ApiResult {
    let caller = authenticate(state, req).await?;
    log.org_id = Some(caller.org.id);
    let headers = super::check_rate(state, caller.org.id).await?;
    let query = EventQuery {
        organization: Some(caller.org.id),
        kind: type_param(req)?,
        after: cursor_param(req)?,
        limit: limit_param(req)?,
        ..EventQuery::default()
    };
    let mut reply = page(state, query).await?;
    reply.headers = headers;
    Ok(reply)
}

/// `GET /ops/events`: every organization's events (or one's), oldest first.
#[utoipa::path(get, path = "/ops/events", operation_id = "list_events", tag = "operator", security(("operator" = [])),
    params(
        ("organization" = Option<String>, Query, description = "An organization id (also of a deleted one), or the current name of an organization"),
        ("type" = Option<EventType>, Query, description = "Only events of this type"),
        ("since" = Option<String>, Query, format = DateTime, description = "Only events at or after this RFC 3339 time (to the millisecond)"),
        ("until" = Option<String>, Query, format = DateTime, description = "Only events at or before this RFC 3339 time"),
        ("limit" = Option<u32>, Query, description = "Page size (default 100)", minimum = 1, maximum = 1000),
        ("cursor" = Option<String>, Query, description = "`next_cursor` of the previous page (opaque)", pattern = r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$"),
    ),
    responses(
        (status = 200, description = "A page of events, oldest first", body = EventList),
        (status = 400, description = "Invalid parameter", body = crate::error::ProblemBody, content_type = "application/problem+json"),
        (status = 404, description = "No organization by that name", body = crate::error::ProblemBody, content_type = "application/problem+json"),
        (status = 401, description = "Missing or wrong operator token", body = crate::error::ProblemBody, content_type = "application/problem+json"),
        (status = 403, description = "Operator routes disabled (no ops.token)", body = crate::error::ProblemBody, content_type = "application/problem+json"),
    ))]
pub async fn ops_events(state: &AppState, req: &Request) -> ApiResult {
    let organization = match query_param(req, "organization")? {
        None => None,
        Some(raw) => match raw.parse::<OrgId>() {
            Ok(id) => Some(id),
            Err(_) => Some(super::org_named(state, &OrgName::parse(&raw)?).await?.id),
        },
    };
    let query = EventQuery {
        organization,
        kind: type_param(req)?,
        since: time_param(req, "since")?,
        until: time_param(req, "until")?,
        after: cursor_param(req)?,
        limit: limit_param(req)?,
    };
    page(state, query).await
}
