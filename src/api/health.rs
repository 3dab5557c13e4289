//! `/healthz`, `/readyz` and `/metrics`.

use super::{ApiResult, Reply, Request};
use crate::app::AppState;
use crate::error::ApiError;
use crate::telemetry::metrics;
use http::StatusCode;
use serde_json::json;
use std::time::Duration;

/// Liveness: the process answers.
#[utoipa::path(get, path = "/healthz", operation_id = "healthz", tag = "health", responses((status = 200, description = "Alive", body = Object)))]
pub async fn healthz(state: &AppState) -> ApiResult {
    Ok(Reply::json(
        StatusCode::OK,
        &json!({"status": "ok", "uptime_seconds": state.started.elapsed().as_secs()}),
    ))
}

/// Readiness: the catalog and each shard answer. 503 if the catalog or every shard is down.
/// `rate_limits` shows whether the limit store answers (informational).
#[utoipa::path(get, path = "/readyz", operation_id = "readyz", tag = "health", responses((status = 200, description = "Ready, with per-shard status", body = Object), (status = 503, description = "Not ready", body = Object)))]
pub async fn readyz(state: &AppState) -> ApiResult {
    let catalog_ok = state.catalog().get_setting("readiness-probe").await.is_ok();
    let mut shards = Vec::new();
    let mut any_up = false;
    for shard in state.shards.all() {
        let ok = matches!(
            tokio::time::timeout(Duration::from_secs(3), shard.store.ping()).await,
            Ok(Ok(()))
        );
        shard.set_up(ok);
        any_up |= ok;
        shards.push(json!({"id": shard.id(), "kind": shard.config.kind, "up": ok}));
    }
    // A limit store that is down degrades the limits to per instance; it is not unreadiness.
    let rate_limits = match &state.redis_limits {
        Some(redis) => {
            let timeout = Duration::from_millis(state.config.limits.redis_timeout_ms);
            json!({"store": "redis", "up": redis.probe(timeout).await})
        }
        None => json!({"store": "local", "up": true}),
    };
    let ready = catalog_ok && any_up;
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let (feed, applied) = state.fleet.status();
    Ok(Reply::json(
        status,
        &json!({
            "ready": ready,
            "catalog": {"up": catalog_ok, "feed": feed.as_str(), "applied_revision": applied},
            "instance": {"id": state.fleet.instance_id(), "serving": state.fleet.serving()},
            "shards": shards,
            "rate_limits": rate_limits,
        }),
    ))
}

/// Prometheus exposition; bearer-protected when `ops.metrics_token` is set.
#[utoipa::path(get, path = "/metrics", operation_id = "metrics", tag = "health", responses((status = 200, description = "Prometheus text format", body = String, content_type = "text/plain"), (status = 401, description = "metrics_token required", body = crate::error::ProblemBody, content_type = "application/problem+json")))]
pub async fn metrics(state: &AppState, req: &Request) -> ApiResult {
    let token = state.config.ops.metrics_token.expose();
    if !token.is_empty() && !super::ops::bearer_matches(req, token) {
        return Err(ApiError::unauthorized());
    }
    metrics::CACHE_ENTRIES.set(state.router.cached_tenants() as i64);
    Ok(Reply {
        status: StatusCode::OK,
        body: metrics::render(),
        content_type: "text/plain; version=0.0.4; charset=utf-8",
        headers: Vec::new(),
        stream: None,
    })
}
