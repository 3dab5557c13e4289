//! The organization routes: create, get, update (incl. rename with data migration), delete.

use super::auth::{authenticate, authenticate_opt, internal};
use super::{json_body, query_param, ApiResult, Reply, Request, RequestLog};
use crate::app::AppState;
use crate::catalog::{
    Actor, AdminRecord, AuditEvent, CatalogError, EventType, OrgRecord, OrgState, Placement, Taken,
};
use crate::domain::{AdminId, Email, OrgId, OrgName, Password};
use crate::error::ApiError;
use crate::movers::{self, MoveError};
use crate::store::{Namespace, StoreError};
use chrono::{DateTime, Utc};
use http::StatusCode;
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::sync::Arc;
use tracing::Instrument;

/// Public view of an organization.
#[derive(Serialize, utoipa::ToSchema)]
pub struct OrgView {
    organization_id: String,
    organization_name: String,
    collection_name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    admin_email: Option<String>,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    #[serde(skip_serializing_if = "Option::is_none")]
    placement: Option<PlacementView>,
}

/// Where the organization's data lives.
#[derive(Serialize, utoipa::ToSchema)]
pub struct PlacementView {
    shard: String,
    database: String,
    collection: String,
    epoch: u64,
    state: &'static str,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

impl PlacementView {
    /// The placement of `org`.
    pub fn of(org: &OrgRecord) -> Self {
        let p: &Placement = &org.placement;
        Self {
            shard: p.shard.to_string(),
            database: p.database.to_string(),
            collection: p.collection.to_string(),
            epoch: p.epoch,
            state: match org.state {
                OrgState::Active => "active",
                OrgState::Creating => "creating",
                OrgState::Renaming { .. } => "moving",
            },
            created_at: p.created_at,
            updated_at: p.updated_at,
        }
    }
}

fn view(org: &OrgRecord, admin_email: Option<&Email>, with_placement: bool) -> OrgView {
    OrgView {
        organization_id: org.id.to_string(),
        organization_name: org.name.to_string(),
        collection_name: org.placement.collection.to_string(),
        admin_email: admin_email.map(|e| e.to_string()),
        created_at: org.created_at,
        updated_at: org.updated_at,
        placement: with_placement.then(|| PlacementView::of(org)),
    }
}

fn conflict(taken: Taken) -> ApiError {
    match taken {
        Taken::OrgName => {
            ApiError::conflict("organization_exists", "organization name already taken")
        }
        Taken::Collection => ApiError::conflict(
            "organization_exists",
            "organization name maps to a collection already in use by another organization",
        ),
        Taken::Email => ApiError::conflict("email_taken", "email already registered"),
    }
}

/// Maps catalog failures to responses.
pub fn catalog_error(e: CatalogError) -> ApiError {
    match e {
        CatalogError::Conflict(t) => conflict(t),
        CatalogError::NotFound => ApiError::conflict(
            "organization_busy",
            "the organization changed concurrently; retry",
        ),
        CatalogError::Stale => ApiError::conflict(
            "concurrent_update",
            "the record changed concurrently; read it again and retry",
        ),
        CatalogError::AdminLimit => ApiError::conflict(
            "admin_limit_reached",
            "the organization already has the most admins allowed",
        ),
        CatalogError::LastAdmin => ApiError::conflict(
            "last_admin",
            "the organization's last admin cannot be deleted",
        ),
        e @ (CatalogError::Unavailable(_) | CatalogError::Backend(_)) => {
            catalog_failure("catalog", e)
        }
    }
}

/// A catalog call that failed: 503 with Retry-After while the catalog is unreachable or has
/// no primary (the caller retries, as for a shard), else a logged 500.
pub fn catalog_failure(what: &str, e: CatalogError) -> ApiError {
    match e {
        CatalogError::Unavailable(detail) => {
            tracing::warn!(%detail, "{what}: catalog unavailable");
            ApiError::unavailable(
                "catalog_unavailable",
                "the catalog is unavailable; retry",
                1,
            )
        }
        e => internal(what, e),
    }
}

/// Maps shard failures to 503 so clients retry, everything else to 500.
pub fn store_error(e: StoreError) -> ApiError {
    match e {
        StoreError::Unavailable(detail) => {
            tracing::warn!(%detail, "shard unavailable");
            ApiError::unavailable(
                "shard_unavailable",
                "the organization's shard is unavailable",
                2,
            )
        }
        StoreError::CollectionMissing => ApiError::unavailable(
            "organization_busy",
            "the organization's data was moved or deleted meanwhile; retry",
            1,
        ),
        StoreError::ConcurrentUpdate(_) => ApiError::conflict(
            "concurrent_update",
            "the document was changed concurrently by other requests; retry the update",
        ),
        other => internal("store", other),
    }
}

/// Cancels a move of the organization (or waits for one in cutover) and returns the record
/// as it is afterwards.
async fn settle_move(lc: &movers::Lifecycle<'_>, org: &OrgRecord) -> Result<OrgRecord, MoveError> {
    // From the catalog, not the cache: a move queued a moment ago must be seen.
    let org = lc
        .catalog
        .org_by_id(org.id)
        .await?
        .ok_or(MoveError::Catalog(CatalogError::NotFound))?;
    if org.moving.is_none() {
        return Ok(org);
    }
    movers::moves::settle(lc, &org, std::time::Duration::from_secs(10))
        .await?
        .ok_or(MoveError::Catalog(CatalogError::NotFound))
}

pub(crate) fn move_error(e: MoveError) -> ApiError {
    match e {
        MoveError::Catalog(c) => catalog_error(c),
        MoveError::Store(s) => store_error(s),
        MoveError::UnknownShard(s) => internal("placement", format!("unknown shard {s}")),
        MoveError::Fence(e) => {
            tracing::warn!(error = %e, "fence failed");
            ApiError::unavailable(
                "fleet_not_converged",
                "not every gateway instance applied the change in time; retry",
                2,
            )
        }
        MoveError::Busy => ApiError::unavailable(
            "organization_busy",
            "another operation on this organization's collection is in progress; retry",
            1,
        ),
    }
}

/// Body of `POST /org/create`.
#[derive(Deserialize, utoipa::ToSchema)]
pub struct CreateBody {
    /// 1 to 64 ASCII letters, digits, spaces, '-' and '_' (surrounding whitespace is trimmed).
    #[schema(
        pattern = r"^[\t\n\u000b\f\r \u0085\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]*[A-Za-z0-9_-](?:[A-Za-z0-9 _-]{0,62}[A-Za-z0-9_-])?[\t\n\u000b\f\r \u0085\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]*$"
    )]
    organization_name: String,
    /// The admin's email address (stored lowercased). The pattern is the ASCII form; letters
    /// and digits of other scripts are accepted too.
    #[schema(format = Email, max_length = 254, pattern = r"^(?=[^@]{1,64}@)[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*@[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)+$")]
    email: String,
    /// The admin's password: 8 to 128 characters, no NUL.
    #[schema(min_length = 8, max_length = 128, pattern = r"^[^\u0000]*$")]
    password: String,
    /// Place the organization on a shard of this region (one of the configured shards'
    /// regions; another is 400 `no_shard_in_region`).
    #[serde(default)]
    region: Option<String>,
}

/// `POST /org/create`.
#[utoipa::path(post, path = "/org/create", operation_id = "create_organization", tag = "organizations", request_body = CreateBody,
    responses(
        (status = 201, description = "Organization created", body = OrgView),
        (status = 400, description = "Invalid input", body = crate::error::ProblemBody, content_type = "application/problem+json"),
        (status = 409, description = "Name or email taken", body = crate::error::ProblemBody, content_type = "application/problem+json"),
        (status = 413, description = "Body too large", body = crate::error::ProblemBody, content_type = "application/problem+json"),
        (status = 429, description = "Too many creates from this client address (Retry-After, RateLimit headers)", body = crate::error::ProblemBody, content_type = "application/problem+json"),
        (status = 503, description = "No shard available", body = crate::error::ProblemBody, content_type = "application/problem+json"),
    ))]
pub async fn create(state: &Arc<AppState>, req: &Request, log: &mut RequestLog) -> ApiResult {
    // Before the body is even parsed: a flood from one address must not reach the hasher.
    let limit_headers =
        super::check_address(state, crate::limits::address::AddressLimit::Creates, req).await?;
    let body: CreateBody = json_body(req)?;
    let name = OrgName::parse(&body.organization_name)?;
    let email = Email::parse(&body.email)?;
    let password = Password::parse(&body.password)?;
    // Cheap pre-checks before the expensive hash; the catalog re-checks atomically.
    if state
        .router
        .org_by_name(&name.normalized())
        .await
        .map_err(|e| catalog_failure("org lookup", e))?
        .is_some()
    {
        return Err(conflict(Taken::OrgName));
    }
    let hash = state
        .hasher
        .hash(&password)
        .await
        .map_err(super::auth::hash_error)?;
    let now = Utc::now();
    let org_id = OrgId::generate();
    log.org_id = Some(org_id);
    let first_admin = AdminId::generate();
    let admin = AdminRecord {
        id: first_admin,
        org_id,
        email: email.clone(),
        password_hash: hash,
        credential_version: 0,
        created_at: now,
        updated_at: now,
        revision: 0,
    };
    // Once the catalog is touched the create runs to completion (or rolls back) even if the
    // client gives up or the request times out, so no organization is left `Creating`.
    let task = tokio::spawn(
        place_and_create(
            Arc::clone(state),
            org_id,
            name,
            admin,
            body.region,
            now,
            req.request_id.clone(),
        )
        .in_current_span(),
    );
    let org = task.await.map_err(|e| internal("create task", e))??;
    let mut reply = Reply::json(StatusCode::CREATED, &view(&org, Some(&email), true));
    reply.headers = limit_headers;
    Ok(reply)
}

/// Picks the placement, records the organization, creates its collection and activates it;
/// rolls back (freeing the name) if the shard fails.
async fn place_and_create(
    state: Arc<AppState>,
    org_id: OrgId,
    name: OrgName,
    admin: AdminRecord,
    region: Option<String>,
    now: DateTime<Utc>,
    request_id: String,
) -> Result<OrgRecord, ApiError> {
    let state = state.as_ref();
    let first_admin = admin.id;
    let body = CreatePlacement { region };
    // However this create ends, its reservation stops being in flight (when this drops).
    let _settle;
    let mut org = {
        let choice = state
            .capacity
            .reserve(org_id, body.region.as_deref(), &state.shards.configs())
            .ok_or_else(|| match &body.region {
                Some(r) => ApiError::invalid(
                    "no_shard_in_region",
                    format!("no active shard in region {r:?}"),
                ),
                None => ApiError::unavailable(
                    "no_active_shard",
                    "no active shard accepts new organizations",
                    30,
                ),
            })?;
        _settle = Settle {
            capacity: &state.capacity,
            shard: choice.shard.clone(),
            database: choice.database.clone(),
        };
        let org = OrgRecord {
            id: org_id,
            placement: Placement {
                shard: choice.shard,
                database: choice.database,
                collection: name.collection_name(),
                epoch: 1,
                created_at: now,
                updated_at: now,
            },
            name,
            state: OrgState::Creating,
            created_at: now,
            updated_at: now,
            revision: 0,
            moving: None,
        };
        match state.catalog().insert_org(&org, &admin).await {
            Ok(stored) => stored,
            Err(e) => {
                state
                    .capacity
                    .release(&org.placement.shard, &org.placement.database);
                return Err(catalog_error(e));
            }
        }
    };
    let ns = Namespace {
        database: org.placement.database.clone(),
        collection: org.placement.collection.clone(),
    };
    let lc = state.lifecycle();
    let created = movers::create_collection(&lc, &org.placement.shard, &ns).await;
    if let Err(e) = created {
        // Roll back so the name is free again; the drop is journaled if it fails too.
        if let Err(undo) = movers::delete(&lc, &org).await {
            tracing::error!(error = %undo, "rollback of failed create deferred");
        }
        return Err(move_error(e));
    }
    org.state = OrgState::Active;
    // Recorded with the activation: the organization never exists without its event.
    let event = AuditEvent::new(
        EventType::OrganizationCreated,
        Some(org.id),
        Actor::Admin {
            admin_id: first_admin,
        },
        Some(&request_id),
        json!({
            "organization_name": org.name.as_str(),
            "admin_id": first_admin,
            "collection": org.placement.collection.as_str(),
            "shard": org.placement.shard.as_str(),
            "database": org.placement.database.to_string(),
        }),
    );
    // Compare-and-set on the revision inserted: recovery may have rolled a slow create back.
    let org = state
        .catalog()
        .put_org_with_event(&org, &event)
        .await
        .map_err(|e| match e {
            CatalogError::Stale => ApiError::unavailable(
                "create_abandoned",
                "the create took too long and was rolled back; retry",
                1,
            ),
            e => catalog_error(e),
        })?;
    crate::telemetry::metrics::ORGANIZATIONS.inc();
    tracing::info!(org_id = %org.id, shard = %org.placement.shard, database = %org.placement.database, collection = %org.placement.collection, "organization created");
    Ok(org)
}

struct CreatePlacement {
    region: Option<String>,
}

/// Ends a create's reservation in the in-memory capacity counts when dropped.
struct Settle<'a> {
    capacity: &'a crate::placement::CapacityCounts,
    shard: crate::domain::ShardId,
    database: crate::domain::DatabaseName,
}

impl Drop for Settle<'_> {
    fn drop(&mut self) {
        self.capacity.settle(&self.shard, &self.database);
    }
}

fn name_param(req: &Request) -> Result<OrgName, ApiError> {
    let raw = query_param(req, "organization_name")?.ok_or_else(|| {
        ApiError::invalid(
            "validation_failed",
            "query parameter `organization_name` is required",
        )
    })?;
    Ok(OrgName::parse(&raw)?)
}

/// `GET /org/get?organization_name=`: public metadata; the admin email and placement only
/// for that organization's own admins.
#[utoipa::path(get, path = "/org/get", operation_id = "get_organization", tag = "organizations",
    params(("organization_name" = String, Query, description = "1 to 64 ASCII letters, digits, spaces, '-' and '_' (surrounding whitespace is trimmed)", pattern = r"^[\t\n\u000b\f\r \u0085\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]*[A-Za-z0-9_-](?:[A-Za-z0-9 _-]{0,62}[A-Za-z0-9_-])?[\t\n\u000b\f\r \u0085\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]*$")),
    security((), ("bearer" = [])),
    responses(
        (status = 200, description = "Organization metadata", body = OrgView),
        (status = 400, description = "Invalid input", body = crate::error::ProblemBody, content_type = "application/problem+json"),
        (status = 401, description = "A token was sent and is invalid", body = crate::error::ProblemBody, content_type = "application/problem+json"),
        (status = 404, description = "Unknown organization", body = crate::error::ProblemBody, content_type = "application/problem+json"),
        (status = 429, description = "Too many token-less reads from this client address, or requests of the token's organization (Retry-After, RateLimit headers)", body = crate::error::ProblemBody, content_type = "application/problem+json"),
    ))]
pub async fn get(state: &AppState, req: &Request, log: &mut RequestLog) -> ApiResult {
    // A request without a token is public: limited per client address, before anything else.
    let limit_headers = if req.headers.contains_key(http::header::AUTHORIZATION) {
        Vec::new()
    } else {
        super::check_address(
            state,
            crate::limits::address::AddressLimit::PublicReads,
            req,
        )
        .await?
    };
    let name = name_param(req)?;
    let caller = authenticate_opt(state, req, false).await?;
    // With a token, the caller's organization's rate limit applies instead: one valid token
    // must not read (or scrape) past every limit.
    let limit_headers = match &caller {
        Some(c) => super::check_rate(state, c.org.id).await?,
        None => limit_headers,
    };
    let org = super::org_named(state, &name).await?;
    log.org_id = Some(org.id);
    let own = caller.as_ref().filter(|c| c.org.id == org.id);
    let mut reply = Reply::json(
        StatusCode::OK,
        &view(&org, own.map(|c| &c.admin.email), own.is_some()),
    );
    reply.headers = limit_headers;
    Ok(reply)
}

/// Body of `PUT /org/update`.
#[derive(Deserialize, utoipa::ToSchema)]
pub struct UpdateBody {
    /// The organization to update: 1 to 64 ASCII letters, digits, spaces, '-' and '_' (surrounding whitespace is trimmed).
    #[schema(
        pattern = r"^[\t\n\u000b\f\r \u0085\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]*[A-Za-z0-9_-](?:[A-Za-z0-9 _-]{0,62}[A-Za-z0-9_-])?[\t\n\u000b\f\r \u0085\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]*$"
    )]
    organization_name: String,
    /// Rename to this name (same rules).
    #[serde(default)]
    #[schema(
        pattern = r"^[\t\n\u000b\f\r \u0085\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]*[A-Za-z0-9_-](?:[A-Za-z0-9 _-]{0,62}[A-Za-z0-9_-])?[\t\n\u000b\f\r \u0085\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]*$"
    )]
    new_organization_name: Option<String>,
    /// New admin email address.
    #[serde(default)]
    #[schema(format = Email, max_length = 254, pattern = r"^(?=[^@]{1,64}@)[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*@[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)+$")]
    email: Option<String>,
    /// New admin password: 8 to 128 characters, no NUL.
    #[serde(default)]
    #[schema(min_length = 8, max_length = 128, pattern = r"^[^\u0000]*$")]
    password: Option<String>,
}

/// Resolves the organization named in the request and checks the authenticated caller
/// administers it. The caller is authenticated before the body or query is validated, so a
/// request without a valid token learns nothing but 401.
async fn own_org(
    state: &AppState,
    caller: &super::auth::Authenticated,
    name: &OrgName,
) -> Result<std::sync::Arc<OrgRecord>, ApiError> {
    let org = super::org_named(state, name).await?;
    if org.id != caller.org.id {
        return Err(ApiError::forbidden(
            "the token belongs to another organization",
        ));
    }
    super::check_rate(state, org.id).await?;
    Ok(org)
}

/// `PUT /org/update`: email, password and/or name; a rename moves the data.
#[utoipa::path(put, path = "/org/update", operation_id = "update_organization", tag = "organizations", request_body = UpdateBody,
    security(("bearer" = [])),
    responses(
        (status = 400, description = "Invalid input", body = crate::error::ProblemBody, content_type = "application/problem+json"),
        (status = 401, description = "Missing, invalid or expired token", body = crate::error::ProblemBody, content_type = "application/problem+json"),
        (status = 429, description = "Rate limited (Retry-After)", body = crate::error::ProblemBody, content_type = "application/problem+json"),
        (status = 503, description = "Shard unavailable or tenant being moved (Retry-After)", body = crate::error::ProblemBody, content_type = "application/problem+json"),
        (status = 200, description = "Updated organization", body = OrgView),
        (status = 403, description = "Token of another organization", body = crate::error::ProblemBody, content_type = "application/problem+json"),
        (status = 404, description = "Unknown organization", body = crate::error::ProblemBody, content_type = "application/problem+json"),
        (status = 409, description = "Name or email taken", body = crate::error::ProblemBody, content_type = "application/problem+json"),
    ))]
pub async fn update(state: &Arc<AppState>, req: &Request, log: &mut RequestLog) -> ApiResult {
    let caller = authenticate(state, req).await?;
    let body: UpdateBody = json_body(req)?;
    let name = OrgName::parse(&body.organization_name)?;
    let new_name = body
        .new_organization_name
        .as_deref()
        .map(OrgName::parse)
        .transpose()?;
    let email = body.email.as_deref().map(Email::parse).transpose()?;
    let password = body.password.as_deref().map(Password::parse).transpose()?;
    if new_name.is_none() && email.is_none() && password.is_none() {
        return Err(ApiError::invalid(
            "nothing_to_update",
            "give at least one of new_organization_name, email, password",
        ));
    }
    let org = own_org(state, &caller, &name).await?;
    log.org_id = Some(org.id);
    if org.state != OrgState::Active {
        return Err(ApiError::unavailable(
            "organization_busy",
            "the organization is being moved; retry shortly",
            1,
        ));
    }
    let old_name = org.name.clone();
    // Build on the stored admin, not a cached copy: a stale copy would undo a change made
    // elsewhere. The write is a compare-and-set on the revision read here.
    let current = state
        .catalog()
        .admin_by_id(caller.admin.id)
        .await
        .map_err(|e| catalog_failure("admin lookup", e))?
        .filter(|a| a.credential_version == caller.claims.cv && a.org_id == org.id)
        .ok_or_else(ApiError::unauthorized)?;
    let change = if email.is_some() || password.is_some() {
        let mut admin = current.clone();
        if let Some(e) = &email {
            admin.email = e.clone();
        }
        if let Some(p) = &password {
            admin.password_hash = state
                .hasher
                .hash(p)
                .await
                .map_err(super::auth::hash_error)?;
            admin.credential_version += 1;
        }
        admin.updated_at = Utc::now();
        Some(admin)
    } else {
        None
    };
    let actor = Actor::Admin {
        admin_id: caller.admin.id,
    };
    // The credentials' events are written with the admin's change, the rename's with its
    // commit (journaled with it, so whoever completes the rename writes it).
    let mut credential_events = Vec::new();
    if let Some(e) = &email {
        credential_events.push(super::events::event(
            req,
            EventType::OrganizationUpdated,
            Some(org.id),
            actor,
            json!({ "admin_id": caller.admin.id, "email": e.as_str() }),
        ));
    }
    if password.is_some() {
        credential_events.push(super::events::event(
            req,
            EventType::AdminPasswordChanged,
            Some(org.id),
            actor,
            json!({ "admin_id": caller.admin.id }),
        ));
    }
    let (org, admin) = match new_name {
        Some(to) if to != org.name => {
            let renamed = super::events::event(
                req,
                EventType::OrganizationRenamed,
                Some(org.id),
                actor,
                json!({ "from": old_name.as_str(), "to": to.as_str() }),
            );
            // Runs to completion even if the client goes away mid-rename; credentials commit
            // with the rename or not at all.
            let (st, current_org) = (Arc::clone(state), (*org).clone());
            let (renamed, stored) = tokio::spawn(
                async move {
                    let lc = st.lifecycle();
                    // A move of the organization is cancelled (or finishes) first.
                    let current_org = settle_move(&lc, &current_org).await?;
                    let change = change.as_ref().map(|a| (a, credential_events.as_slice()));
                    movers::rename(&lc, &current_org, &to, change, &renamed).await
                }
                .in_current_span(),
            )
            .await
            .map_err(|e| internal("rename task", e))?
            .map_err(move_error)?;
            (renamed, stored.unwrap_or(current))
        }
        _ => {
            let stored = match change {
                Some(a) => {
                    let stored = state
                        .catalog()
                        .update_admin(&a, &credential_events)
                        .await
                        .map_err(catalog_error)?;
                    state.router.invalidate_admin(a.id).await;
                    stored
                }
                None => current,
            };
            ((*org).clone(), stored)
        }
    };
    state.router.invalidate_org(&org).await;
    Ok(Reply::json(
        StatusCode::OK,
        &view(&org, Some(&admin.email), true),
    ))
}

/// `DELETE /org/delete?organization_name=`.
#[utoipa::path(delete, path = "/org/delete", operation_id = "delete_organization", tag = "organizations",
    params(("organization_name" = String, Query, description = "1 to 64 ASCII letters, digits, spaces, '-' and '_' (surrounding whitespace is trimmed)", pattern = r"^[\t\n\u000b\f\r \u0085\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]*[A-Za-z0-9_-](?:[A-Za-z0-9 _-]{0,62}[A-Za-z0-9_-])?[\t\n\u000b\f\r \u0085\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]*$")),
    security(("bearer" = [])),
    responses(
        (status = 400, description = "Invalid input", body = crate::error::ProblemBody, content_type = "application/problem+json"),
        (status = 401, description = "Missing, invalid or expired token", body = crate::error::ProblemBody, content_type = "application/problem+json"),
        (status = 429, description = "Rate limited (Retry-After)", body = crate::error::ProblemBody, content_type = "application/problem+json"),
        (status = 503, description = "Shard unavailable or tenant being moved (Retry-After)", body = crate::error::ProblemBody, content_type = "application/problem+json"),
        (status = 200, description = "Deleted", body = DeletedOrg),
        (status = 403, description = "Token of another organization", body = crate::error::ProblemBody, content_type = "application/problem+json"),
        (status = 404, description = "Unknown organization", body = crate::error::ProblemBody, content_type = "application/problem+json"),
    ))]
pub async fn delete(state: &Arc<AppState>, req: &Request, log: &mut RequestLog) -> ApiResult {
    let caller = authenticate(state, req).await?;
    let name = name_param(req)?;
    let org = own_org(state, &caller, &name).await?;
    log.org_id = Some(org.id);
    if org.state != OrgState::Active {
        return Err(ApiError::unavailable(
            "organization_busy",
            "the organization is being moved; retry shortly",
            1,
        ));
    }
    let (st, doomed) = (Arc::clone(state), (*org).clone());
    let retention = state.config.lifecycle.retention();
    let deleted = super::events::event(
        req,
        EventType::OrganizationDeleted,
        Some(org.id),
        Actor::Admin {
            admin_id: caller.admin.id,
        },
        json!({ "organization_name": org.name.as_str() }),
    );
    let tomb = tokio::spawn(
        async move {
            let lc = st.lifecycle();
            let doomed = settle_move(&lc, &doomed).await?;
            // Its size as quotas count it, kept with the tombstone (unknown if unmeasurable).
            let size = match lc.shards.get(&doomed.placement.shard) {
                Some(shard) => shard
                    .store
                    .collection_bytes(&crate::store::Namespace {
                        database: doomed.placement.database.clone(),
                        collection: doomed.placement.collection.clone(),
                    })
                    .await
                    .ok()
                    .or_else(|| st.quotas.cached(doomed.id)),
                None => None,
            };
            movers::deleted::soft_delete(&lc, &doomed, retention, size, deleted).await
        }
        .in_current_span(),
    )
    .await
    .map_err(|e| internal("delete task", e))?
    .map_err(move_error)?;
    state.quotas.forget(org.id);
    state.rate_limits.set_override(org.id, None);
    crate::telemetry::metrics::ORGANIZATIONS.dec();
    tracing::info!(org_id = %org.id, "organization deleted");
    Ok(Reply::json(
        StatusCode::OK,
        &DeletedOrg {
            deleted: true,
            organization_id: org.id.to_string(),
            organization_name: org.name.to_string(),
            restorable_until: tomb.restorable_until,
        },
    ))
}

/// Reply of `DELETE /org/delete`.
#[derive(Serialize, utoipa::ToSchema)]
pub struct DeletedOrg {
    deleted: bool,
    organization_id: String,
    organization_name: String,
    /// Until when an operator can restore it (`lifecycle.retention_days` after the delete).
    restorable_until: chrono::DateTime<chrono::Utc>,
}
