//! Operator routes on the ops listener, behind `ops.token` (Bearer, compared in constant
//! time). An org admin's JWT is never accepted here.

use super::orgs::PlacementView;
use super::routes::Route;
use super::{json_body, ApiResult, Reply, Request};
use crate::app::{AppState, RATE_OVERRIDES_SETTING};
use crate::config::{ShardConfig, ShardState, StoreKind};
use crate::domain::OrgId;
use crate::domain::OrgName;
use crate::error::ApiError;
use crate::limits::RateOverride;
use crate::placement::open::{open_store, SHARDS_SETTING};
use crate::placement::{capacity_state, Shard};
use crate::telemetry::metrics;
use http::StatusCode;
use serde_json::json;
use serde_json::Value;
use std::collections::BTreeMap;
use std::collections::HashMap;
use std::time::Duration;
use subtle::ConstantTimeEq;

/// True when the request carries `Authorization: Bearer <expected>`.
pub fn bearer_matches(req: &Request, expected: &str) -> bool {
    let Some(value) = req
        .headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let Some((scheme, token)) = value.split_once(' ') else {
        return false;
    };
    scheme.eq_ignore_ascii_case("bearer")
        && bool::from(token.trim().as_bytes().ct_eq(expected.as_bytes()))
}

/// Dispatches an operator route after checking the operator token.
pub async fn handle(state: &std::sync::Arc<AppState>, route: Route, req: &Request) -> ApiResult {
    let token = state.config.ops.token.expose();
    if token.is_empty() {
        return Err(ApiError::forbidden(
            "operator routes are disabled: set ops.token in the configuration",
        ));
    }
    if !bearer_matches(req, token) {
        return Err(ApiError::unauthorized());
    }
    match route {
        Route::OpsShards => list_shards(state).await,
        Route::OpsShardAdd => add_shard(state, req).await,
        Route::OpsPlacement => placement(state, req).await,
        Route::OpsLimits => set_limits(state, req).await,
        Route::OpsQuotas => quotas(state).await,
        Route::OpsOrgs => search_orgs(state, req).await,
        Route::OpsEvents => super::events::ops_events(state, req).await,
        Route::OpsTopTenants => top_tenants(state, req).await,
        Route::OpsInstances => instances(state).await,
        Route::OpsMoves => super::moves::list(state, req).await,
        Route::OpsMoveStart => super::moves::start(state, req).await,
        Route::OpsMove => super::moves::get(state, req).await,
        Route::OpsMoveCancel => super::moves::cancel(state, req).await,
        Route::OpsShardDrain => super::moves::drain(state, req).await,
        Route::OpsRebalance => super::moves::rebalance(state, req).await,
        Route::OpsDeleted => super::deleted::list(state, req).await,
        Route::OpsDeletedRestore => super::deleted::restore(state, req).await,
        Route::OpsDeletedPurge => super::deleted::purge(state, req).await,
        _ => Err(ApiError::route_not_found()),
    }
}

/// `GET /ops/shards`.
#[utoipa::path(get, path = "/ops/shards", operation_id = "list_shards", tag = "operator", security(("operator" = [])),
    responses((status = 200, description = "Shards with per-database capacity", body = Object),
        (status = 401, description = "Missing or wrong operator token", body = crate::error::ProblemBody, content_type = "application/problem+json"),
        (status = 403, description = "Operator routes disabled (no ops.token)", body = crate::error::ProblemBody, content_type = "application/problem+json"),
    ))]
pub async fn list_shards(state: &AppState) -> ApiResult {
    let shards = capacity_report(state, true).await?;
    Ok(Reply::json(StatusCode::OK, &json!({ "shards": shards })))
}

/// Each shard with its databases, counts, ratios and capacity states; refreshes the capacity
/// gauges as a side effect. With `probe`, pings every shard first.
pub async fn capacity_report(state: &AppState, probe: bool) -> Result<Vec<Value>, ApiError> {
    let counts = state
        .catalog()
        .collection_counts()
        .await
        .map_err(|e| super::orgs::catalog_failure("catalog", e))?;
    let mut per_shard: BTreeMap<String, Vec<(String, u64)>> = BTreeMap::new();
    let mut organizations = 0u64;
    for (shard, db, n) in counts {
        organizations += n;
        per_shard
            .entry(shard.to_string())
            .or_default()
            .push((db.to_string(), n));
    }
    metrics::ORGANIZATIONS.set(organizations as i64);
    let draining: Vec<crate::domain::ShardId> = state
        .shards
        .configs()
        .into_iter()
        .filter(|c| c.state != ShardState::Active)
        .map(|c| c.id)
        .collect();
    // Moves still to run (or finish) off each shard.
    let mut moving_off: HashMap<crate::domain::ShardId, u64> = HashMap::new();
    for m in state
        .catalog()
        .list_moves()
        .await
        .map_err(|e| super::orgs::catalog_failure("catalog", e))?
    {
        if !m.state.is_final() {
            *moving_off.entry(m.from.shard.clone()).or_insert(0) += 1;
        }
    }
    let mut out = Vec::new();
    for shard in state.shards.all() {
        let cfg = &shard.config;
        let up = if probe {
            let up = matches!(
                tokio::time::timeout(Duration::from_secs(3), shard.store.ping()).await,
                Ok(Ok(()))
            );
            shard.set_up(up);
            up
        } else {
            shard.is_up()
        };
        let mut dbs = per_shard.remove(shard.id().as_str()).unwrap_or_default();
        dbs.retain(|(_, n)| *n > 0);
        dbs.sort_by(|a, b| (a.0.len(), &a.0).cmp(&(b.0.len(), &b.0)));
        let max = cfg.max_collections_per_database;
        let id = shard.id().as_str();
        let databases: Vec<_> = dbs
            .iter()
            .map(|(name, n)| {
                let ratio = *n as f64 / max as f64;
                metrics::DB_COLLECTIONS
                    .with_label_values(&[id, name])
                    .set(*n as i64);
                metrics::DB_COLLECTIONS_MAX
                    .with_label_values(&[id, name])
                    .set(i64::from(max));
                metrics::DB_COLLECTIONS_RATIO
                    .with_label_values(&[id, name])
                    .set(ratio);
                json!({
                    "name": name,
                    "collections": n,
                    "max_collections": max,
                    "ratio": ratio,
                    "state": capacity_state(*n, cfg),
                })
            })
            .collect();
        metrics::SHARD_DATABASES
            .with_label_values(&[id])
            .set(databases.len() as i64);
        let tenants: u64 = dbs.iter().map(|(_, n)| *n).sum();
        let state_now = if draining.contains(shard.id()) || cfg.state != ShardState::Active {
            if tenants == 0 && moving_off.get(shard.id()).copied().unwrap_or(0) == 0 {
                ShardState::Drained
            } else {
                ShardState::Draining
            }
        } else {
            ShardState::Active
        };
        out.push(json!({
            "id": shard.id(),
            "kind": cfg.kind,
            "uri": shard.display_uri(),
            "state": state_now,
            "tenants": tenants,
            "moves_off": moving_off.get(shard.id()).copied().unwrap_or(0),
            "up": up,
            "region": cfg.region,
            "weight": cfg.weight,
            "max_collections_per_database": max,
            "alert_ratio": cfg.alert_ratio,
            "split_ratio": cfg.split_ratio,
            "databases": databases,
        }));
    }
    Ok(out)
}

fn org_from_path(path: &str, prefix: &str, suffix: &str) -> Result<OrgName, ApiError> {
    let raw = path
        .strip_prefix(prefix)
        .and_then(|p| p.strip_suffix(suffix))
        .unwrap_or("");
    let decoded = url::form_urlencoded::parse(format!("n={raw}").as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default();
    Ok(OrgName::parse(&decoded)?)
}

/// `PUT /ops/orgs/{organization}/limits`.
#[utoipa::path(put, path = "/ops/orgs/{organization}/limits", operation_id = "set_organization_limits", tag = "operator", security(("operator" = [])),
    params(("organization" = String, Path, description = "Organization name: 1 to 64 ASCII letters, digits, spaces, '-' and '_' (surrounding whitespace is trimmed)", pattern = r"^[\t\n\u000b\f\r \u0085\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]*[A-Za-z0-9_-](?:[A-Za-z0-9 _-]{0,62}[A-Za-z0-9_-])?[\t\n\u000b\f\r \u0085\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]*$")),
    request_body(content = Option<RateOverride>, description = "New limits, or null to remove the override"),
    responses((status = 200, description = "Limits in force", body = Object),
        (status = 400, description = "Invalid limits", body = crate::error::ProblemBody, content_type = "application/problem+json"),
        (status = 404, description = "Unknown organization", body = crate::error::ProblemBody, content_type = "application/problem+json"),
        (status = 401, description = "Missing or wrong operator token", body = crate::error::ProblemBody, content_type = "application/problem+json"),
        (status = 403, description = "Operator routes disabled (no ops.token)", body = crate::error::ProblemBody, content_type = "application/problem+json"),
    ))]
pub async fn set_limits(state: &AppState, req: &Request) -> ApiResult {
    let name = org_from_path(&req.path, "/ops/orgs/", "/limits")?;
    let org = super::org_named(state, &name).await?;
    // `null` removes the override.
    let body: Option<RateOverride> = super::json_body_or_null(req)?;
    if let Some(l) = &body {
        if l.requests_per_minute == 0 || l.requests_per_hour == 0 {
            return Err(ApiError::invalid(
                "invalid_limits",
                "requests_per_minute and requests_per_hour must be > 0",
            ));
        }
    }
    let changed = super::events::event(
        req,
        crate::catalog::EventType::LimitsChanged,
        Some(org.id),
        crate::catalog::Actor::Operator,
        json!({ "override": body }),
    );
    // Every organization's override is one setting: changed by compare-and-set, so
    // operators changing two organizations at once both keep theirs.
    crate::catalog::update_setting(
        state.catalog().as_ref(),
        RATE_OVERRIDES_SETTING,
        &[changed],
        |current| {
            let mut all: HashMap<OrgId, RateOverride> =
                crate::catalog::decode_setting(RATE_OVERRIDES_SETTING, current)?;
            match body {
                Some(l) => all.insert(org.id, l),
                None => all.remove(&org.id),
            };
            Ok(serde_json::to_value(&all).expect("serializable"))
        },
    )
    .await
    .map_err(|e| super::orgs::catalog_failure("catalog", e))?;
    state.rate_limits.set_override(org.id, body);
    let effective = state.rate_limits.limits_of(org.id);
    Ok(Reply::json(
        StatusCode::OK,
        &json!({
            "organization_id": org.id.to_string(),
            "organization_name": org.name.to_string(),
            "overridden": body.is_some(),
            "limits": effective,
        }),
    ))
}

/// `GET /ops/tenants/top?n=10`: the busiest organizations by requests.
#[utoipa::path(get, path = "/ops/tenants/top", operation_id = "top_tenants", tag = "operator", security(("operator" = [])),
    params(("n" = Option<u32>, Query, description = "How many (default 10)", minimum = 1, maximum = 1000)),
    responses((status = 200, description = "Busiest organizations of the last minute", body = Object),
        (status = 400, description = "n out of range", body = crate::error::ProblemBody, content_type = "application/problem+json"),
        (status = 401, description = "Missing or wrong operator token", body = crate::error::ProblemBody, content_type = "application/problem+json"),
        (status = 403, description = "Operator routes disabled (no ops.token)", body = crate::error::ProblemBody, content_type = "application/problem+json"),
    ))]
pub async fn top_tenants(state: &AppState, req: &Request) -> ApiResult {
    let n = match super::query_param(req, "n")? {
        Some(raw) => raw
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=1000).contains(n))
            .ok_or_else(|| ApiError::invalid("invalid_query", "n must be 1 to 1000"))?,
        None => 10,
    };
    let (top, seconds) = state.top_tenants.top(n);
    let mut orgs = Vec::with_capacity(top.len());
    for (id, requests) in top {
        let name = org_name(state, id).await;
        orgs.push(json!({
            "organization_id": id.to_string(),
            "organization_name": name,
            "requests": requests,
            "requests_per_second": requests as f64 / seconds,
        }));
    }
    Ok(Reply::json(
        StatusCode::OK,
        &json!({ "window_seconds": seconds, "organizations": orgs }),
    ))
}

/// Largest page of `GET /ops/orgs`.
const MAX_SEARCH_LIMIT: usize = 1000;

/// One organization in `GET /ops/orgs`.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct OrgSummary {
    organization_id: String,
    organization_name: String,
    placement: PlacementView,
    /// Stored bytes as last measured by this instance (null when not measured lately).
    size_bytes: Option<u64>,
    created_at: chrono::DateTime<chrono::Utc>,
}

impl OrgSummary {
    /// `org` as `GET /ops/orgs` shows it.
    pub fn of(state: &AppState, o: &crate::catalog::OrgRecord) -> Self {
        Self {
            organization_id: o.id.to_string(),
            organization_name: o.name.to_string(),
            placement: PlacementView::of(o),
            size_bytes: state.quotas.cached(o.id),
            created_at: o.created_at,
        }
    }
}

/// Reply of `GET /ops/orgs`.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct OrgPage {
    organizations: Vec<OrgSummary>,
    /// Pass back as `cursor` for the next page; null on the last one.
    next_cursor: Option<String>,
}

/// A cursor of `GET /ops/orgs`: the last normalized name of a page, base64url. Anything
/// else is 400 `invalid_cursor` (never echoed back).
fn decode_org_cursor(raw: &str) -> Result<crate::domain::NormalizedOrgName, ApiError> {
    use base64::Engine;
    let malformed = || ApiError::invalid("invalid_cursor", "cursor is malformed");
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(raw)
        .map_err(|_| malformed())?;
    let text = String::from_utf8(bytes).map_err(|_| malformed())?;
    let name = OrgName::parse(&text).map_err(|_| malformed())?.normalized();
    if name.as_str() != text {
        return Err(malformed());
    }
    Ok(name)
}

fn encode_org_cursor(name: &crate::domain::NormalizedOrgName) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(name.as_str())
}

/// `GET /ops/orgs`: organizations by name prefix, in name order, a page at a time.
#[utoipa::path(get, path = "/ops/orgs", operation_id = "search_organizations", tag = "operator", security(("operator" = [])),
    params(
        ("prefix" = Option<String>, Query, description = "Start of the name, compared case-insensitively with runs of spaces as one (empty: every organization)", max_length = 64, pattern = r"^[A-Za-z0-9 _-]*$"),
        ("limit" = Option<u32>, Query, description = "Page size (default 100)", minimum = 1, maximum = 1000),
        ("cursor" = Option<String>, Query, description = "`next_cursor` of the previous page, with the same prefix (opaque)", pattern = r"^[A-Za-z0-9_-]{1,86}$"),
    ),
    responses((status = 200, description = "A page of organizations", body = OrgPage),
        (status = 400, description = "Invalid prefix, limit or cursor", body = crate::error::ProblemBody, content_type = "application/problem+json"),
        (status = 401, description = "Missing or wrong operator token", body = crate::error::ProblemBody, content_type = "application/problem+json"),
        (status = 403, description = "Operator routes disabled (no ops.token)", body = crate::error::ProblemBody, content_type = "application/problem+json"),
    ))]
pub async fn search_orgs(state: &AppState, req: &Request) -> ApiResult {
    let prefix =
        crate::domain::NamePrefix::parse(&super::query_param(req, "prefix")?.unwrap_or_default())?;
    let limit = match super::query_param(req, "limit")? {
        Some(raw) => raw
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=MAX_SEARCH_LIMIT).contains(n))
            .ok_or_else(|| {
                ApiError::invalid(
                    "invalid_query",
                    format!("limit must be 1 to {MAX_SEARCH_LIMIT}"),
                )
            })?,
        None => 100,
    };
    let after = super::query_param(req, "cursor")?
        .map(|c| decode_org_cursor(&c))
        .transpose()?;
    // One more than the page: whether there is a next one, without another query.
    let mut orgs = state
        .catalog()
        .orgs_by_name(prefix.as_str(), after.as_ref(), limit + 1)
        .await
        .map_err(|e| super::orgs::catalog_failure("organization search", e))?;
    let next_cursor = if orgs.len() > limit {
        orgs.truncate(limit);
        orgs.last().map(|o| encode_org_cursor(&o.normalized_name()))
    } else {
        None
    };
    let organizations = orgs.iter().map(|o| OrgSummary::of(state, o)).collect();
    Ok(Reply::json(
        StatusCode::OK,
        &OrgPage {
            organizations,
            next_cursor,
        },
    ))
}

/// `GET /ops/quotas`.
#[utoipa::path(get, path = "/ops/quotas", operation_id = "list_quotas", tag = "operator", security(("operator" = [])),
    responses((status = 200, description = "Organizations above the quota alert ratio", body = Object),
        (status = 401, description = "Missing or wrong operator token", body = crate::error::ProblemBody, content_type = "application/problem+json"),
        (status = 403, description = "Operator routes disabled (no ops.token)", body = crate::error::ProblemBody, content_type = "application/problem+json"),
    ))]
pub async fn quotas(state: &AppState) -> ApiResult {
    let mut orgs = Vec::new();
    for (id, used) in state.quotas.over_alert() {
        let name = org_name(state, id).await;
        orgs.push(json!({
            "organization_id": id.to_string(),
            "organization_name": name,
            "used_bytes": used,
            "quota_bytes": state.quotas.limit_bytes,
            "ratio": used as f64 / state.quotas.limit_bytes.max(1) as f64,
        }));
    }
    metrics::QUOTA_ALERTS.set(orgs.len() as i64);
    Ok(Reply::json(
        StatusCode::OK,
        &json!({
            "quota_bytes": state.quotas.limit_bytes,
            "alert_ratio": state.quotas.alert_ratio,
            "organizations": orgs,
        }),
    ))
}

/// `POST /ops/shards`.
#[utoipa::path(post, path = "/ops/shards", operation_id = "add_shard", tag = "operator", security(("operator" = [])),
    request_body(content = Object, description = "A shard, with the keys of a [[shards]] table"),
    responses((status = 201, description = "Shard added", body = Object),
        (status = 400, description = "Invalid shard", body = crate::error::ProblemBody, content_type = "application/problem+json"),
        (status = 409, description = "Shard id exists", body = crate::error::ProblemBody, content_type = "application/problem+json"),
        (status = 503, description = "Shard unreachable", body = crate::error::ProblemBody, content_type = "application/problem+json"),
        (status = 401, description = "Missing or wrong operator token", body = crate::error::ProblemBody, content_type = "application/problem+json"),
        (status = 403, description = "Operator routes disabled (no ops.token)", body = crate::error::ProblemBody, content_type = "application/problem+json"),
    ))]
pub async fn add_shard(state: &AppState, req: &Request) -> ApiResult {
    let cfg: ShardConfig = json_body(req)?;
    cfg.validate()
        .map_err(|e| ApiError::invalid("invalid_shard", e))?;
    if state.shards.get(&cfg.id).is_some() {
        return Err(ApiError::conflict(
            "shard_exists",
            format!("shard {} already exists", cfg.id),
        ));
    }
    if cfg.kind == StoreKind::Embedded && state.config.catalog.kind == StoreKind::Mongodb {
        // Each instance would open its own file under that shard id.
        return Err(ApiError::invalid(
            "invalid_shard",
            "with a shared (MongoDB) catalog, shards added at runtime must be MongoDB shards",
        ));
    }
    if cfg.kind == StoreKind::Embedded {
        if let Some(p) = &cfg.path {
            if p.is_absolute()
                || p.components()
                    .any(|c| matches!(c, std::path::Component::ParentDir))
            {
                return Err(ApiError::invalid(
                    "invalid_shard",
                    "an embedded shard's path must be relative to the data dir",
                ));
            }
        }
    }
    let store = open_store(&state.config, &cfg)
        .await
        .map_err(|e| ApiError::invalid("invalid_shard", format!("cannot open shard: {e}")))?;
    if let Err(e) = tokio::time::timeout(
        Duration::from_millis(cfg.server_selection_timeout_ms.saturating_add(1000)),
        store.ping(),
    )
    .await
    .map_err(|_| "timed out".to_string())
    .and_then(|r| r.map_err(|e| e.to_string()))
    {
        return Err(ApiError::unavailable(
            "shard_unreachable",
            format!("shard {} does not answer: {e}", cfg.id),
            5,
        ));
    }
    // Compare-and-set: shards added at once from two instances are both kept.
    crate::catalog::update_setting(state.catalog().as_ref(), SHARDS_SETTING, &[], |current| {
        let mut persisted: Vec<ShardConfig> =
            crate::catalog::decode_setting(SHARDS_SETTING, current)?;
        persisted.retain(|s| s.id != cfg.id);
        persisted.push(cfg.clone());
        Ok(serde_json::to_value(&persisted).expect("serializable"))
    })
    .await
    .map_err(|e| super::orgs::catalog_failure("catalog", e))?;
    let shard = Shard::new(cfg, store);
    let body = json!({"id": shard.id(), "kind": shard.config.kind, "uri": shard.display_uri(), "state": shard.config.state});
    tracing::info!(shard = %shard.id(), uri = %shard.display_uri(), "shard added");
    state.shards.insert(shard);
    Ok(Reply::json(StatusCode::CREATED, &body))
}

/// `GET /ops/placements/{organization}`.
#[utoipa::path(get, path = "/ops/placements/{organization}", operation_id = "get_placement", tag = "operator", security(("operator" = [])),
    params(("organization" = String, Path, description = "Organization name: 1 to 64 ASCII letters, digits, spaces, '-' and '_' (surrounding whitespace is trimmed)", pattern = r"^[\t\n\u000b\f\r \u0085\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]*[A-Za-z0-9_-](?:[A-Za-z0-9 _-]{0,62}[A-Za-z0-9_-])?[\t\n\u000b\f\r \u0085\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]*$")),
    responses((status = 200, description = "The placement", body = Object),
        (status = 400, description = "Invalid organization name", body = crate::error::ProblemBody, content_type = "application/problem+json"),
        (status = 404, description = "Unknown organization", body = crate::error::ProblemBody, content_type = "application/problem+json"),
        (status = 401, description = "Missing or wrong operator token", body = crate::error::ProblemBody, content_type = "application/problem+json"),
        (status = 403, description = "Operator routes disabled (no ops.token)", body = crate::error::ProblemBody, content_type = "application/problem+json"),
    ))]
pub async fn placement(state: &AppState, req: &Request) -> ApiResult {
    let name = org_from_path(&req.path, "/ops/placements/", "")?;
    let org = super::org_named(state, &name).await?;
    Ok(Reply::json(
        StatusCode::OK,
        &json!({
            "organization_id": org.id.to_string(),
            "organization_name": org.name.to_string(),
            "placement": PlacementView::of(&org),
        }),
    ))
}

/// `GET /ops/instances`: the instance registry.
#[utoipa::path(get, path = "/ops/instances", operation_id = "list_instances", tag = "operator",
    security(("operator" = [])),
    responses(
        (status = 200, description = "Registered instances: `live` while the lease runs", body = Object),
        (status = 401, description = "Missing or wrong operator token", body = crate::error::ProblemBody, content_type = "application/problem+json"),
        (status = 403, description = "Operator routes disabled", body = crate::error::ProblemBody, content_type = "application/problem+json"),
    ))]
pub async fn instances(state: &AppState) -> ApiResult {
    let now = state
        .catalog()
        .now()
        .await
        .map_err(|e| super::orgs::catalog_failure("catalog", e))?;
    let me = state.fleet.instance_id();
    let list: Vec<_> = state
        .catalog()
        .instances()
        .await
        .map_err(|e| super::orgs::catalog_failure("catalog", e))?
        .into_iter()
        .map(|i| {
            let mut v = serde_json::to_value(&i).expect("serializable");
            v["live"] = json!(i.is_live(now));
            v["self"] = json!(i.id == me);
            v
        })
        .collect();
    Ok(Reply::json(StatusCode::OK, &json!({ "instances": list })))
}

/// An organization's current name for an operator's listing, if it still exists.
async fn org_name(state: &AppState, id: OrgId) -> Option<String> {
    state
        .router
        .org(id)
        .await
        .ok()
        .flatten()
        .map(|o| o.name.to_string())
}
