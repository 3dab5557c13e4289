//! Operator routes for tenant moves: start, list, inspect, cancel; drain a shard; rebalance.
//! The moves themselves run in the background (`movers::moves`); these routes only queue
//! them and read their journal.

use super::{json_body, query_param, ApiResult, Reply, Request};
use crate::app::AppState;
use crate::catalog::{Location, MoveRecord, MoveState};
use crate::domain::{DatabaseName, OrgName, ShardId};
use crate::error::ApiError;
use crate::movers::balance::{plan_drain, plan_rebalance, PlannedMove, Scope};
use crate::movers::moves::{self, location_of, QueueError};
use crate::placement::DRAINING_SETTING;
use http::StatusCode;
use serde::Deserialize;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

/// Body of `POST /ops/moves`.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StartMove {
    /// The organization to move: 1 to 64 ASCII letters, digits, spaces, '-' and '_' (surrounding whitespace is trimmed).
    #[schema(
        pattern = r"^[\t\n\u000b\f\r \u0085\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]*[A-Za-z0-9_-](?:[A-Za-z0-9 _-]{0,62}[A-Za-z0-9_-])?[\t\n\u000b\f\r \u0085\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]*$"
    )]
    organization_name: String,
    /// Target shard id: 1 to 32 of a-z, 0-9, '_' and '-'; a shard that is not configured is
    /// 400 `unknown_shard`.
    to_shard: String,
    /// Target database on that shard (`<prefix>_<n>`); default: its open database.
    #[serde(default)]
    to_database: Option<String>,
}

/// Body of `POST /ops/rebalance`.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Rebalance {
    /// Only report the moves (default true).
    #[serde(default = "yes")]
    dry_run: bool,
    /// `shards` (tenants per shard by weight, the default) or `databases` (tenants per
    /// database within each shard).
    #[serde(default)]
    #[schema(pattern = "^(shards|databases)$")]
    scope: Option<String>,
    /// Allowed deviation from the ideal count, as a fraction (default 0.1; at least one
    /// tenant).
    #[serde(default)]
    #[schema(minimum = 0.0, maximum = 1.0)]
    tolerance: Option<f64>,
}

fn yes() -> bool {
    true
}

fn catalog_err(e: crate::catalog::CatalogError) -> ApiError {
    super::orgs::catalog_failure("catalog", e)
}

fn move_not_found() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "move_not_found",
        "no move with this id",
    )
}

/// The move id in `/ops/moves/{move_id}`: 32 hex digits, as the gateway makes them.
fn move_id_from_path(path: &str) -> Result<String, ApiError> {
    let raw = path.strip_prefix("/ops/moves/").unwrap_or("");
    if raw.len() == 32 && raw.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(raw.to_ascii_lowercase())
    } else {
        Err(move_not_found())
    }
}

fn view(mv: &MoveRecord) -> Value {
    serde_json::to_value(mv).expect("a move record serializes")
}

/// Resolves and checks a move target: a known shard that accepts tenants, and a database
/// of its naming scheme (or its open one).
fn target(
    state: &AppState,
    shard: &str,
    database: Option<&str>,
    collection: &crate::domain::CollectionName,
) -> Result<Location, ApiError> {
    let shard = ShardId::parse(shard)
        .map_err(|_| ApiError::invalid("unknown_shard", "to_shard is not a shard id"))?;
    let Some(cfg) = state.shards.configs().into_iter().find(|c| c.id == shard) else {
        return Err(ApiError::invalid(
            "unknown_shard",
            format!("no shard {shard} is configured"),
        ));
    };
    if !state.shards.accepts_tenants(&shard) {
        return Err(ApiError::invalid(
            "shard_not_active",
            format!("shard {shard} is draining and takes no tenants"),
        ));
    }
    let database = match database {
        Some(raw) => {
            let parsed: Option<DatabaseName> =
                serde_json::from_value(Value::String(raw.to_owned())).ok();
            let n = parsed
                .and_then(|d| d.number(&cfg.database_prefix))
                .filter(|n| *n <= 100_000)
                .ok_or_else(|| {
                    ApiError::invalid(
                        "invalid_database",
                        format!(
                            "to_database must be {}_<n> with n from 1 to 100000",
                            cfg.database_prefix
                        ),
                    )
                })?;
            DatabaseName::numbered(&cfg.database_prefix, n)
        }
        None => {
            let counts = state.capacity.snapshot();
            crate::placement::database_on(&cfg, &counts)
        }
    };
    Ok(Location {
        shard,
        database,
        collection: collection.clone(),
    })
}

async fn queue(
    state: &AppState,
    planned: &PlannedMove,
    reason: &str,
) -> Result<MoveRecord, ApiError> {
    moves::queue(&state.lifecycle(), &planned.org, planned.to.clone(), reason)
        .await
        .map_err(|e| match e {
            QueueError::Busy => ApiError::conflict(
                "organization_moving",
                "the organization is already moving, or being renamed, created or deleted",
            ),
            QueueError::AlreadyThere => ApiError::invalid(
                "same_location",
                "the organization already lives in that shard and database",
            ),
            QueueError::Catalog(e) => catalog_err(e),
        })
}

/// `POST /ops/moves`.
#[utoipa::path(post, path = "/ops/moves", operation_id = "start_move", tag = "operator", security(("operator" = [])),
    request_body = StartMove,
    responses((status = 202, description = "Move queued; follow it with GET /ops/moves/{move_id}", body = MoveRecord),
        (status = 400, description = "Invalid input, unknown or draining target shard, or the organization already lives there", body = crate::error::ProblemBody, content_type = "application/problem+json"),
        (status = 404, description = "Unknown organization", body = crate::error::ProblemBody, content_type = "application/problem+json"),
        (status = 409, description = "The organization is already moving (or busy)", body = crate::error::ProblemBody, content_type = "application/problem+json"),
        (status = 401, description = "Missing or wrong operator token", body = crate::error::ProblemBody, content_type = "application/problem+json"),
    ))]
pub async fn start(state: &AppState, req: &Request) -> ApiResult {
    let body: StartMove = json_body(req)?;
    let name = OrgName::parse(&body.organization_name)?;
    // Fresh from the catalog: the move's compare-and-set pins this revision.
    let lookup = || async {
        state
            .catalog()
            .org_by_name(&name.normalized())
            .await
            .map_err(catalog_err)?
            .ok_or_else(ApiError::org_not_found)
    };
    let mut org = lookup().await?;
    if org.moving.is_some() {
        // A mark whose move ended is cleared; a live one makes the queue below refuse.
        moves::clear_stale_mark(&state.lifecycle(), &org)
            .await
            .map_err(super::orgs::move_error)?;
        org = lookup().await?;
    }
    let to = target(
        state,
        &body.to_shard,
        body.to_database.as_deref(),
        &org.placement.collection,
    )?;
    let mv = queue(state, &PlannedMove { org, to }, "operator").await?;
    Ok(Reply::json(StatusCode::ACCEPTED, &view(&mv)))
}

/// `GET /ops/moves?state=`.
#[utoipa::path(get, path = "/ops/moves", operation_id = "list_moves", tag = "operator", security(("operator" = [])),
    params(("state" = Option<String>, Query, description = "Only moves in this state", pattern = "^(queued|copying|catching_up|cutover|done|failed|cancelled)$")),
    responses((status = 200, description = "Moves, oldest first", body = Object),
        (status = 400, description = "Unknown state", body = crate::error::ProblemBody, content_type = "application/problem+json"),
        (status = 401, description = "Missing or wrong operator token", body = crate::error::ProblemBody, content_type = "application/problem+json"),
    ))]
pub async fn list(state: &AppState, req: &Request) -> ApiResult {
    let wanted = match query_param(req, "state")? {
        Some(s) => Some(MoveState::parse(&s).ok_or_else(|| {
            ApiError::invalid(
                "invalid_query",
                "state must be one of queued, copying, catching_up, cutover, done, failed, cancelled",
            )
        })?),
        None => None,
    };
    let all = state.catalog().list_moves().await.map_err(catalog_err)?;
    let moves: Vec<Value> = all
        .iter()
        .filter(|m| wanted.is_none_or(|w| m.state == w))
        .map(view)
        .collect();
    Ok(Reply::json(StatusCode::OK, &json!({ "moves": moves })))
}

/// `GET /ops/moves/{move_id}`.
#[utoipa::path(get, path = "/ops/moves/{move_id}", operation_id = "get_move", tag = "operator", security(("operator" = [])),
    params(("move_id" = String, Path, description = "Move id: 32 hex digits (anything else is an unknown move)")),
    responses((status = 200, description = "The move", body = MoveRecord),
        (status = 404, description = "Unknown move", body = crate::error::ProblemBody, content_type = "application/problem+json"),
        (status = 401, description = "Missing or wrong operator token", body = crate::error::ProblemBody, content_type = "application/problem+json"),
    ))]
pub async fn get(state: &AppState, req: &Request) -> ApiResult {
    let id = move_id_from_path(&req.path)?;
    let mv = state
        .catalog()
        .get_move(&id)
        .await
        .map_err(catalog_err)?
        .ok_or_else(move_not_found)?;
    Ok(Reply::json(StatusCode::OK, &view(&mv)))
}

/// `DELETE /ops/moves/{move_id}`: cancels a move before its cutover.
#[utoipa::path(delete, path = "/ops/moves/{move_id}", operation_id = "cancel_move", tag = "operator", security(("operator" = [])),
    params(("move_id" = String, Path, description = "Move id: 32 hex digits (anything else is an unknown move)")),
    responses((status = 200, description = "Cancelled (the source stays authoritative)", body = MoveRecord),
        (status = 202, description = "Cancel requested; the move stops at its next step", body = MoveRecord),
        (status = 404, description = "Unknown move", body = crate::error::ProblemBody, content_type = "application/problem+json"),
        (status = 409, description = "The move has ended, or is cutting over (it then completes)", body = crate::error::ProblemBody, content_type = "application/problem+json"),
        (status = 401, description = "Missing or wrong operator token", body = crate::error::ProblemBody, content_type = "application/problem+json"),
    ))]
pub async fn cancel(state: &AppState, req: &Request) -> ApiResult {
    let id = move_id_from_path(&req.path)?;
    let catalog = state.catalog();
    let mv = catalog
        .get_move(&id)
        .await
        .map_err(catalog_err)?
        .ok_or_else(move_not_found)?;
    if mv.state.is_final() {
        return Err(ApiError::conflict(
            "move_finished",
            format!("the move has ended ({})", mv.state.as_str()),
        ));
    }
    if !moves::request_cancel(&state.lifecycle(), &mv)
        .await
        .map_err(catalog_err)?
    {
        return Err(ApiError::conflict(
            "move_in_cutover",
            "the move is cutting over and will complete",
        ));
    }
    // The runner stops at its next step; wait a little for it.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let now = catalog
            .get_move(&id)
            .await
            .map_err(catalog_err)?
            .ok_or_else(move_not_found)?;
        if now.state.is_final() && now.state != MoveState::Cancelled {
            // It ended another way meanwhile (completed, or failed).
            return Err(ApiError::conflict(
                "move_finished",
                format!("the move has ended ({})", now.state.as_str()),
            ));
        }
        if now.state == MoveState::Cancelled || Instant::now() >= deadline {
            let status = if now.state.is_final() {
                StatusCode::OK
            } else {
                StatusCode::ACCEPTED
            };
            return Ok(Reply::json(status, &view(&now)));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn planned_view(p: &PlannedMove, mv: Option<&MoveRecord>) -> Value {
    json!({
        "organization_id": p.org.id.to_string(),
        "organization_name": p.org.name.to_string(),
        "from": location_of(&p.org),
        "to": p.to,
        "move_id": mv.map(|m| m.move_id.clone()),
    })
}

/// `POST /ops/shards/{id}/drain`: moves every tenant off a shard; it takes no new ones.
#[utoipa::path(post, path = "/ops/shards/{id}/drain", operation_id = "drain_shard", tag = "operator", security(("operator" = [])),
    params(("id" = String, Path, description = "Shard id (anything that is not a configured shard's id is 404)")),
    responses((status = 202, description = "Draining: the moves queued (progress in GET /ops/shards and /ops/moves)", body = Object),
        (status = 404, description = "Unknown shard", body = crate::error::ProblemBody, content_type = "application/problem+json"),
        (status = 409, description = "No other shard accepts tenants", body = crate::error::ProblemBody, content_type = "application/problem+json"),
        (status = 401, description = "Missing or wrong operator token", body = crate::error::ProblemBody, content_type = "application/problem+json"),
    ))]
pub async fn drain(state: &AppState, req: &Request) -> ApiResult {
    let raw = req
        .path
        .strip_prefix("/ops/shards/")
        .and_then(|p| p.strip_suffix("/drain"))
        .unwrap_or("");
    let not_found = || {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "shard_not_found",
            "no shard with this id is configured",
        )
    };
    let shard = ShardId::parse(raw).map_err(|_| not_found())?;
    if state.shards.get(&shard).is_none() {
        return Err(not_found());
    }
    let configs = state.shards.configs();
    if !configs
        .iter()
        .any(|c| c.id != shard && c.state == crate::config::ShardState::Active)
    {
        return Err(ApiError::conflict(
            "no_target_shard",
            "no other shard accepts tenants: add one before draining this one",
        ));
    }
    // Recorded first: from now no instance places a new organization there.
    let catalog = state.catalog();
    // Compare-and-set: two shards drained at once from two instances both stay drained.
    let stored =
        crate::catalog::update_setting(catalog.as_ref(), DRAINING_SETTING, &[], |current| {
            let mut draining: Vec<ShardId> =
                crate::catalog::decode_setting(DRAINING_SETTING, current)?;
            if !draining.contains(&shard) {
                draining.push(shard.clone());
            }
            Ok(json!(draining))
        })
        .await
        .map_err(catalog_err)?;
    let draining: Vec<ShardId> =
        crate::catalog::decode_setting(DRAINING_SETTING, Some(&stored)).map_err(catalog_err)?;
    state.shards.set_draining(draining);
    let orgs = catalog.list_orgs().await.map_err(catalog_err)?;
    let plan = plan_drain(
        &orgs,
        &shard,
        &state.shards.configs(),
        state.capacity.snapshot(),
    );
    let mut queued = Vec::new();
    for p in &plan {
        // A tenant that started moving or changed meanwhile is left for the next call.
        if let Ok(mv) = queue(state, p, "drain").await {
            queued.push(planned_view(p, Some(&mv)));
        }
    }
    let remaining = orgs.iter().filter(|o| o.placement.shard == shard).count();
    Ok(Reply::json(
        StatusCode::ACCEPTED,
        &json!({
            "shard": shard,
            "state": if remaining == 0 { "drained" } else { "draining" },
            "tenants": remaining,
            "moves": queued,
        }),
    ))
}

/// `POST /ops/rebalance`.
#[utoipa::path(post, path = "/ops/rebalance", operation_id = "rebalance", tag = "operator", security(("operator" = [])),
    request_body = Rebalance,
    responses((status = 200, description = "The moves that even out tenants (queued unless dry_run)", body = Object),
        (status = 400, description = "Invalid input", body = crate::error::ProblemBody, content_type = "application/problem+json"),
        (status = 401, description = "Missing or wrong operator token", body = crate::error::ProblemBody, content_type = "application/problem+json"),
    ))]
pub async fn rebalance(state: &AppState, req: &Request) -> ApiResult {
    let body: Rebalance = json_body(req)?;
    let scope = match body.scope.as_deref() {
        None | Some("shards") => Scope::Shards,
        Some("databases") => Scope::Databases,
        Some(_) => {
            return Err(ApiError::invalid(
                "invalid_scope",
                "scope must be \"shards\" or \"databases\"",
            ))
        }
    };
    let tolerance = body.tolerance.unwrap_or(0.1);
    if !(0.0..=1.0).contains(&tolerance) {
        return Err(ApiError::invalid(
            "invalid_tolerance",
            "tolerance must be between 0 and 1",
        ));
    }
    let orgs = state.catalog().list_orgs().await.map_err(catalog_err)?;
    let plan = plan_rebalance(
        &orgs,
        &state.shards.configs(),
        state.capacity.snapshot(),
        scope,
        tolerance,
    );
    let mut out = Vec::with_capacity(plan.len());
    for p in &plan {
        if body.dry_run {
            out.push(planned_view(p, None));
        } else if let Ok(mv) = queue(state, p, "rebalance").await {
            out.push(planned_view(p, Some(&mv)));
        }
    }
    Ok(Reply::json(
        StatusCode::OK,
        &json!({
            "dry_run": body.dry_run,
            "scope": if scope == Scope::Shards { "shards" } else { "databases" },
            "tolerance": tolerance,
            "moves": out,
        }),
    ))
}
