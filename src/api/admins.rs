//! Admin management of the caller's own organization: `POST /org/admins`, `GET /org/admins`,
//! `DELETE /org/admins/{admin_id}`. The cap (`limits.max_admins_per_org`), unique emails and
//! "never the last admin" are decided by the catalog atomically; checks here only spare a
//! password hash that the catalog would refuse anyway.

use super::auth::{authenticate, Authenticated};
use super::orgs::catalog_error;
use super::{json_body, ApiResult, Reply, Request, RequestLog};
use crate::app::AppState;
use crate::catalog::{Actor, AdminRecord, EventType, OrgState};
use crate::domain::{AdminId, Email, Password};
use crate::error::ApiError;
use chrono::{DateTime, Utc};
use http::StatusCode;
use serde::{Deserialize, Serialize};
use serde_json::json;

/// Body of `POST /org/admins`.
#[derive(Deserialize, utoipa::ToSchema)]
pub struct AdminBody {
    /// The new admin's login email (stored lowercased), unique across the gateway. The
    /// pattern is the ASCII form; letters and digits of other scripts are accepted too.
    #[schema(format = Email, max_length = 254, pattern = r"^(?=[^@]{1,64}@)[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*@[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)+$")]
    email: String,
    /// The new admin's password: 8 to 128 characters, no NUL.
    #[schema(min_length = 8, max_length = 128, pattern = r"^[^\u0000]*$")]
    password: String,
}

/// An admin as shown to the organization's admins (never a hash).
#[derive(Serialize, utoipa::ToSchema)]
pub struct AdminView {
    admin_id: String,
    email: String,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

impl AdminView {
    fn of(a: &AdminRecord) -> Self {
        Self {
            admin_id: a.id.to_string(),
            email: a.email.to_string(),
            created_at: a.created_at,
            updated_at: a.updated_at,
        }
    }
}

/// Reply of `GET /org/admins`.
#[derive(Serialize, utoipa::ToSchema)]
pub struct AdminList {
    admins: Vec<AdminView>,
}

/// Reply of `DELETE /org/admins/{admin_id}`.
#[derive(Serialize, utoipa::ToSchema)]
pub struct DeletedAdmin {
    deleted: bool,
    admin_id: String,
}

fn admin_not_found() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "admin_not_found",
        "no admin with this id in the organization",
    )
}

/// The caller, its organization's rate limit counted, and the organization not in the middle
/// of a rename (whose journaled credentials change must find its admin).
async fn caller(
    state: &AppState,
    req: &Request,
    log: &mut RequestLog,
) -> Result<(Authenticated, Vec<(&'static str, String)>), ApiError> {
    let caller = authenticate(state, req).await?;
    log.org_id = Some(caller.org.id);
    let headers = super::check_rate(state, caller.org.id).await?;
    Ok((caller, headers))
}

fn require_active(caller: &Authenticated) -> Result<(), ApiError> {
    if caller.org.state != OrgState::Active {
        return Err(ApiError::unavailable(
            "organization_busy",
            "the organization is being renamed; retry shortly",
            1,
        ));
    }
    Ok(())
}

/// `POST /org/admins`: adds an admin to the caller's organization.
#[utoipa::path(post, path = "/org/admins", operation_id = "create_admin", tag = "admins", request_body = AdminBody,
    security(("bearer" = [])),
    responses(
        (status = 201, description = "Admin created", body = AdminView),
        (status = 400, description = "Invalid input", body = crate::error::ProblemBody, content_type = "application/problem+json"),
        (status = 401, description = "Missing, invalid or expired token", body = crate::error::ProblemBody, content_type = "application/problem+json"),
        (status = 409, description = "Email taken (`email_taken`) or the organization has `limits.max_admins_per_org` admins (`admin_limit_reached`)", body = crate::error::ProblemBody, content_type = "application/problem+json"),
        (status = 429, description = "Rate limited (Retry-After)", body = crate::error::ProblemBody, content_type = "application/problem+json"),
        (status = 503, description = "Hashing queue full or organization busy (Retry-After)", body = crate::error::ProblemBody, content_type = "application/problem+json"),
    ))]
pub async fn create(state: &AppState, req: &Request, log: &mut RequestLog) -> ApiResult {
    let (caller, headers) = caller(state, req, log).await?;
    let body: AdminBody = json_body(req)?;
    let email = Email::parse(&body.email)?;
    let password = Password::parse(&body.password)?;
    require_active(&caller)?;
    let max = state.config.limits.max_admins_per_org;
    // Cheap refusals before the hash; the catalog decides again, atomically.
    let catalog = state.catalog();
    if catalog
        .admin_by_email(&email)
        .await
        .map_err(|e| super::orgs::catalog_failure("admin lookup", e))?
        .is_some()
    {
        return Err(catalog_error(crate::catalog::CatalogError::Conflict(
            crate::catalog::Taken::Email,
        )));
    }
    let current = catalog
        .admins_of_org(caller.org.id)
        .await
        .map_err(|e| super::orgs::catalog_failure("admin list", e))?;
    if current.len() >= max as usize {
        return Err(catalog_error(crate::catalog::CatalogError::AdminLimit));
    }
    let hash = state
        .hasher
        .hash(&password)
        .await
        .map_err(super::auth::hash_error)?;
    let now = Utc::now();
    let admin = AdminRecord {
        id: AdminId::generate(),
        org_id: caller.org.id,
        email,
        password_hash: hash,
        credential_version: 0,
        created_at: now,
        updated_at: now,
        revision: 0,
    };
    let created = super::events::event(
        req,
        EventType::AdminCreated,
        Some(admin.org_id),
        Actor::Admin {
            admin_id: caller.admin.id,
        },
        json!({ "admin_id": admin.id, "email": admin.email.as_str() }),
    );
    let stored = catalog
        .add_admin(&admin, max, &[created])
        .await
        .map_err(|e| match e {
            crate::catalog::CatalogError::NotFound => ApiError::unauthorized(),
            e => catalog_error(e),
        })?;
    tracing::info!(org_id = %stored.org_id, admin_id = %stored.id, "admin created");
    let mut reply = Reply::json(StatusCode::CREATED, &AdminView::of(&stored));
    reply.headers = headers;
    Ok(reply)
}

/// `GET /org/admins`: the caller's organization's admins, oldest first.
#[utoipa::path(get, path = "/org/admins", operation_id = "list_admins", tag = "admins",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The organization's admins", body = AdminList),
        (status = 401, description = "Missing, invalid or expired token", body = crate::error::ProblemBody, content_type = "application/problem+json"),
        (status = 429, description = "Rate limited (Retry-After)", body = crate::error::ProblemBody, content_type = "application/problem+json"),
    ))]
pub async fn list(state: &AppState, req: &Request, log: &mut RequestLog) -> ApiResult {
    let (caller, headers) = caller(state, req, log).await?;
    let mut admins = state
        .catalog()
        .admins_of_org(caller.org.id)
        .await
        .map_err(|e| super::orgs::catalog_failure("admin list", e))?;
    admins.sort_by_key(|a| (a.created_at, a.id));
    let mut reply = Reply::json(
        StatusCode::OK,
        &AdminList {
            admins: admins.iter().map(AdminView::of).collect(),
        },
    );
    reply.headers = headers;
    Ok(reply)
}

/// The admin id in `/org/admins/{admin_id}`; anything that is not one is unknown (404).
fn admin_id_from_path(path: &str) -> Result<AdminId, ApiError> {
    path.strip_prefix("/org/admins/")
        .and_then(|raw| raw.parse().ok())
        .ok_or_else(admin_not_found)
}

/// `DELETE /org/admins/{admin_id}`: removes an admin of the caller's organization (the caller
/// too), revoking its tokens at once on every instance.
#[utoipa::path(delete, path = "/org/admins/{admin_id}", operation_id = "delete_admin", tag = "admins",
    params(("admin_id" = String, Path, description = "The admin's id (a UUID)")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Admin deleted", body = DeletedAdmin),
        (status = 401, description = "Missing, invalid or expired token", body = crate::error::ProblemBody, content_type = "application/problem+json"),
        (status = 404, description = "No such admin in the organization", body = crate::error::ProblemBody, content_type = "application/problem+json"),
        (status = 409, description = "The organization's last admin (`last_admin`)", body = crate::error::ProblemBody, content_type = "application/problem+json"),
        (status = 429, description = "Rate limited (Retry-After)", body = crate::error::ProblemBody, content_type = "application/problem+json"),
        (status = 503, description = "Organization busy (Retry-After)", body = crate::error::ProblemBody, content_type = "application/problem+json"),
    ))]
pub async fn delete(state: &AppState, req: &Request, log: &mut RequestLog) -> ApiResult {
    let (caller, headers) = caller(state, req, log).await?;
    let id = admin_id_from_path(&req.path)?;
    require_active(&caller)?;
    let catalog = state.catalog();
    // The event names the email the admin has now (it is written only if the removal is).
    let target = catalog
        .admin_by_id(id)
        .await
        .map_err(|e| super::orgs::catalog_failure("admin lookup", e))?
        .filter(|a| a.org_id == caller.org.id)
        .ok_or_else(admin_not_found)?;
    let deleted = super::events::event(
        req,
        EventType::AdminDeleted,
        Some(target.org_id),
        Actor::Admin {
            admin_id: caller.admin.id,
        },
        json!({ "admin_id": target.id, "email": target.email.as_str() }),
    );
    let removed = catalog
        .remove_admin(caller.org.id, id, &[deleted])
        .await
        .map_err(catalog_error)?
        .ok_or_else(admin_not_found)?;
    // This instance forgets it now; the others through the change feed, as for any admin
    // change (its tokens then find no admin: 401).
    state.router.invalidate_admin(removed.id).await;
    tracing::info!(org_id = %removed.org_id, admin_id = %removed.id, "admin deleted");
    let mut reply = Reply::json(
        StatusCode::OK,
        &DeletedAdmin {
            deleted: true,
            admin_id: removed.id.to_string(),
        },
    );
    reply.headers = headers;
    Ok(reply)
}
