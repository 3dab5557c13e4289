//! Deleted organizations on the operator listener: list, restore, purge.

use super::auth::internal;
use super::ops::OrgSummary;
use super::{ApiResult, Reply, Request};
use crate::app::AppState;
use crate::catalog::{Actor, EventType, Tombstone};
use crate::domain::{OrgId, OrgName};
use crate::error::ApiError;
use crate::movers::deleted::RestoreError;
use chrono::{DateTime, Utc};
use http::StatusCode;
use serde_json::json;
use std::sync::Arc;
use tracing::Instrument;

/// Largest page of `GET /ops/deleted`.
const MAX_LIMIT: usize = 1000;

/// One deleted organization.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct DeletedSummary {
    organization_id: String,
    organization_name: String,
    deleted_at: DateTime<Utc>,
    /// After this the sweeper purges it.
    restorable_until: DateTime<Utc>,
    /// Stored bytes when deleted, as quotas count them (null if unknown).
    size_bytes: Option<u64>,
    /// How many admins a restore brings back.
    admins: usize,
}

impl DeletedSummary {
    fn of(t: &Tombstone) -> Self {
        Self {
            organization_id: t.org.id.to_string(),
            organization_name: t.org.name.to_string(),
            deleted_at: t.deleted_at,
            restorable_until: t.restorable_until,
            size_bytes: t.size_bytes,
            admins: t.admins.len(),
        }
    }
}

/// Reply of `GET /ops/deleted`.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct DeletedPage {
    organizations: Vec<DeletedSummary>,
    /// Pass back as `cursor` for the next page; null on the last one.
    next_cursor: Option<String>,
}

/// Body of `POST /ops/deleted/{organization_id}/restore` (optional).
#[derive(serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RestoreBody {
    /// Restore under this name instead of the old one: 1 to 64 ASCII letters, digits, spaces,
    /// '-' and '_' (surrounding whitespace is trimmed).
    #[schema(
        pattern = r"^[\t\n\u000b\f\r \u0085\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]*[A-Za-z0-9_-](?:[A-Za-z0-9 _-]{0,62}[A-Za-z0-9_-])?[\t\n\u000b\f\r \u0085\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]*$"
    )]
    organization_name: Option<String>,
}

/// Reply of `DELETE /ops/deleted/{organization_id}`.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct Purged {
    purged: bool,
    organization_id: String,
    organization_name: String,
}

fn not_found() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "deleted_organization_not_found",
        "no deleted organization with that id",
    )
}

/// The id in `/ops/deleted/{organization_id}[/restore]`: 400 unless it is an organization id
/// (the path is never echoed back).
fn id_from_path(path: &str, suffix: &str) -> Result<OrgId, ApiError> {
    let raw = path
        .strip_prefix("/ops/deleted/")
        .and_then(|p| p.strip_suffix(suffix))
        .unwrap_or("");
    raw.parse::<OrgId>().map_err(|_| {
        ApiError::invalid(
            "invalid_organization_id",
            "organization_id must be an organization id (a UUID)",
        )
    })
}

/// `GET /ops/deleted`: deleted organizations kept for restore, in id order, a page at a time.
#[utoipa::path(get, path = "/ops/deleted", operation_id = "list_deleted_organizations", tag = "operator", security(("operator" = [])),
    params(
        ("limit" = Option<u32>, Query, description = "Page size (default 100)", minimum = 1, maximum = 1000),
        ("cursor" = Option<String>, Query, description = "`next_cursor` of the previous page (opaque)", pattern = r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"),
    ),
    responses((status = 200, description = "A page of deleted organizations", body = DeletedPage),
        (status = 400, description = "Invalid limit or cursor", body = crate::error::ProblemBody, content_type = "application/problem+json"),
        (status = 401, description = "Missing or wrong operator token", body = crate::error::ProblemBody, content_type = "application/problem+json"),
        (status = 403, description = "Operator routes disabled (no ops.token)", body = crate::error::ProblemBody, content_type = "application/problem+json"),
    ))]
pub async fn list(state: &AppState, req: &Request) -> ApiResult {
    let limit = match super::query_param(req, "limit")? {
        Some(raw) => raw
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=MAX_LIMIT).contains(n))
            .ok_or_else(|| {
                ApiError::invalid("invalid_query", format!("limit must be 1 to {MAX_LIMIT}"))
            })?,
        None => 100,
    };
    let after = super::query_param(req, "cursor")?
        .map(|c| {
            c.parse::<OrgId>()
                .map_err(|_| ApiError::invalid("invalid_cursor", "cursor is malformed"))
        })
        .transpose()?;
    let mut page = state
        .catalog()
        .tombstones(after, limit + 1)
        .await
        .map_err(|e| super::orgs::catalog_failure("deleted organizations", e))?;
    let next_cursor = if page.len() > limit {
        page.truncate(limit);
        page.last().map(|t| t.org.id.to_string())
    } else {
        None
    };
    Ok(Reply::json(
        StatusCode::OK,
        &DeletedPage {
            organizations: page.iter().map(DeletedSummary::of).collect(),
            next_cursor,
        },
    ))
}

/// `POST /ops/deleted/{organization_id}/restore`.
#[utoipa::path(post, path = "/ops/deleted/{organization_id}/restore", operation_id = "restore_organization", tag = "operator", security(("operator" = [])),
    params(("organization_id" = String, Path, description = "The deleted organization's id", pattern = r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")),
    request_body(content = Option<RestoreBody>, description = "Optional: a new name (default: the old one)"),
    responses((status = 200, description = "Restored: the organization as `GET /ops/orgs` shows it", body = OrgSummary),
        (status = 400, description = "Invalid organization id or name", body = crate::error::ProblemBody, content_type = "application/problem+json"),
        (status = 404, description = "No such deleted organization", body = crate::error::ProblemBody, content_type = "application/problem+json"),
        (status = 409, description = "The name or an admin's email is taken now", body = crate::error::ProblemBody, content_type = "application/problem+json"),
        (status = 401, description = "Missing or wrong operator token", body = crate::error::ProblemBody, content_type = "application/problem+json"),
        (status = 403, description = "Operator routes disabled (no ops.token)", body = crate::error::ProblemBody, content_type = "application/problem+json"),
        (status = 503, description = "Not every instance applied it in time, or a shard is unavailable (Retry-After)", body = crate::error::ProblemBody, content_type = "application/problem+json"),
    ))]
pub async fn restore(state: &Arc<AppState>, req: &Request) -> ApiResult {
    let id = id_from_path(&req.path, "/restore")?;
    let body: Option<RestoreBody> = if req.body.iter().all(u8::is_ascii_whitespace) {
        None
    } else {
        super::json_body_or_null(req)?
    };
    let name = body
        .and_then(|b| b.organization_name)
        .map(|n| OrgName::parse(&n))
        .transpose()?;
    let st = Arc::clone(state);
    let event = super::events::event(
        req,
        EventType::OrganizationRestored,
        Some(id),
        Actor::Operator,
        json!({}),
    );
    let restored = tokio::spawn(
        async move {
            let lc = st.lifecycle();
            crate::movers::deleted::restore(&lc, id, name, event).await
        }
        .in_current_span(),
    )
    .await
    .map_err(|e| internal("restore task", e))?;
    let org = match restored {
        Ok(org) => org,
        Err(RestoreError::NotFound) => return Err(not_found()),
        Err(RestoreError::NameTaken(name)) => {
            return Err(ApiError::conflict(
                "organization_exists",
                format!("the organization name {:?} is taken now", name.as_str()),
            ))
        }
        Err(RestoreError::EmailTaken(Some(email))) => {
            return Err(ApiError::conflict(
                "email_taken",
                format!(
                    "the admin email {:?} is registered to another organization now",
                    email.as_str()
                ),
            ))
        }
        Err(RestoreError::EmailTaken(None)) => {
            return Err(ApiError::conflict(
                "email_taken",
                "an admin's email is registered to another organization now",
            ))
        }
        Err(RestoreError::Move(e)) => return Err(super::orgs::move_error(e)),
    };
    crate::telemetry::metrics::ORGANIZATIONS.inc();
    tracing::info!(org_id = %org.id, "organization restored");
    Ok(Reply::json(StatusCode::OK, &OrgSummary::of(state, &org)))
}

/// `DELETE /ops/deleted/{organization_id}`: drops the kept data at once.
#[utoipa::path(delete, path = "/ops/deleted/{organization_id}", operation_id = "purge_organization", tag = "operator", security(("operator" = [])),
    params(("organization_id" = String, Path, description = "The deleted organization's id", pattern = r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")),
    responses((status = 200, description = "Purged", body = Purged),
        (status = 400, description = "Invalid organization id", body = crate::error::ProblemBody, content_type = "application/problem+json"),
        (status = 404, description = "No such deleted organization", body = crate::error::ProblemBody, content_type = "application/problem+json"),
        (status = 409, description = "Being restored or purged concurrently", body = crate::error::ProblemBody, content_type = "application/problem+json"),
        (status = 401, description = "Missing or wrong operator token", body = crate::error::ProblemBody, content_type = "application/problem+json"),
        (status = 403, description = "Operator routes disabled (no ops.token)", body = crate::error::ProblemBody, content_type = "application/problem+json"),
        (status = 503, description = "A shard is unavailable (Retry-After)", body = crate::error::ProblemBody, content_type = "application/problem+json"),
    ))]
pub async fn purge(state: &Arc<AppState>, req: &Request) -> ApiResult {
    let id = id_from_path(&req.path, "")?;
    let st = Arc::clone(state);
    let event = super::events::event(
        req,
        EventType::OrganizationPurged,
        Some(id),
        Actor::Operator,
        json!({ "reason": "operator" }),
    );
    let purged = tokio::spawn(
        async move {
            let lc = st.lifecycle();
            crate::movers::deleted::purge(&lc, id, event).await
        }
        .in_current_span(),
    )
    .await
    .map_err(|e| internal("purge task", e))?
    .map_err(super::orgs::move_error)?
    .ok_or_else(not_found)?;
    tracing::info!(org_id = %id, "deleted organization purged");
    Ok(Reply::json(
        StatusCode::OK,
        &Purged {
            purged: true,
            organization_id: id.to_string(),
            organization_name: purged.org.name.to_string(),
        },
    ))
}

/// One run of the sweeper: purges deleted organizations past their retention and records
/// their events (actor `system`).
pub async fn sweep(state: &Arc<AppState>) {
    let now = match state.catalog().now().await {
        Ok(t) => t,
        Err(e) => {
            tracing::warn!(error = %e, "purge sweep: no catalog clock");
            return;
        }
    };
    let purged = match crate::movers::deleted::purge_expired(&state.lifecycle(), now, 1_000).await {
        Ok(p) => p,
        Err(e) => {
            tracing::warn!(error = %e, "purge sweep failed");
            return;
        }
    };
    for t in purged {
        tracing::info!(org_id = %t.org.id, "deleted organization purged after its retention");
    }
}
