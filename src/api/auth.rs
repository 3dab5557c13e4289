//! `POST /admin/login` and bearer-token authentication of org-admin requests.

use super::{json_body, ApiResult, Reply, Request, RequestLog};
use crate::app::AppState;
use crate::auth::{Claims, VerifyError};
use crate::catalog::{Actor, AdminRecord, EventType, OrgRecord};
use crate::domain::Email;
use crate::error::ApiError;
use crate::telemetry::metrics;
use http::StatusCode;
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// Body of `POST /admin/login`.
#[derive(Deserialize, utoipa::ToSchema)]
pub struct LoginBody {
    email: String,
    password: String,
}

/// Reply of `POST /admin/login`.
#[derive(Serialize, utoipa::ToSchema)]
pub struct LoginReply {
    access_token: String,
    token_type: &'static str,
    expires_in: i64,
    organization_id: String,
    admin_id: String,
}

/// `POST /admin/login`: every failure gets the same 401 body and costs one argon2 verify.
#[utoipa::path(post, path = "/admin/login", operation_id = "admin_login", tag = "auth", request_body = LoginBody,
    responses(
        (status = 200, description = "Token issued", body = LoginReply),
        (status = 400, description = "Malformed body", body = crate::error::ProblemBody, content_type = "application/problem+json"),
        (status = 401, description = "Invalid email or password (one generic body)", body = crate::error::ProblemBody, content_type = "application/problem+json"),
        (status = 429, description = "Too many failed logins (Retry-After)", body = crate::error::ProblemBody, content_type = "application/problem+json"),
    ))]
pub async fn login(state: &AppState, req: &Request, log: &mut RequestLog) -> ApiResult {
    let body: LoginBody = json_body(req)?;
    // Only a valid email gets a counter of its own (fixed-size key); anything else counts
    // against the client address alone, and cannot match an admin anyway.
    let email = Email::parse(&body.email).ok();
    let local = &state.login_throttle;
    // The attempt counts toward the limits from here, before the hash: concurrent guesses
    // cannot all pass a check made before any of them is recorded.
    let reserved = match &state.redis_limits {
        Some(redis) => {
            redis
                .reserve_login(local, email.as_ref(), req.client_ip)
                .await
        }
        None => local.reserve(email.as_ref(), req.client_ip),
    };
    let attempt = match reserved {
        Ok(attempt) => attempt,
        Err(wait) => {
            metrics::LOGINS.with_label_values(&["throttled"]).inc();
            let mut e = ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "too_many_login_attempts",
                "too many failed logins; try again later",
            );
            e.retry_after = Some(wait);
            return Err(e);
        }
    };
    let verdict = verify_login(state, email.as_ref(), &body.password).await;
    let failed = matches!(verdict, Ok((_, false)));
    match &state.redis_limits {
        Some(redis) => redis.settle_login(attempt, failed).await,
        None if failed => attempt.fail(),
        None => attempt.release(),
    }
    let (found, ok) = verdict?;
    let admin = match found {
        Some(admin) if ok => admin,
        target => {
            metrics::LOGINS.with_label_values(&["failure"]).inc();
            // Only a failure against an existing admin is an event of its organization; the
            // throttle bounds how many there can be.
            if let Some(target) = target {
                let details = serde_json::json!({ "admin_id": target.id });
                super::events::record(
                    state,
                    req,
                    EventType::AdminLoginFailed,
                    Some(target.org_id),
                    Actor::System,
                    details,
                )
                .await;
            }
            return Err(ApiError::bad_credentials());
        }
    };
    metrics::LOGINS.with_label_values(&["success"]).inc();
    log.org_id = Some(admin.org_id);
    super::events::record(
        state,
        req,
        EventType::AdminLoginSucceeded,
        Some(admin.org_id),
        Actor::Admin { admin_id: admin.id },
        serde_json::json!({}),
    )
    .await;
    let token = state
        .jwt
        .issue(admin.id, admin.org_id, admin.credential_version);
    Ok(Reply::json(
        StatusCode::OK,
        &LoginReply {
            access_token: token,
            token_type: "bearer",
            expires_in: state.jwt.ttl_seconds(),
            organization_id: admin.org_id.to_string(),
            admin_id: admin.id.to_string(),
        },
    ))
}

/// The admin with that email, if any, and whether the password is theirs (one argon2 verify
/// either way), or an error with no verdict (store or hasher trouble).
async fn verify_login(
    state: &AppState,
    email: Option<&Email>,
    password: &str,
) -> Result<(Option<AdminRecord>, bool), ApiError> {
    let admin = match email {
        Some(email) => state
            .catalog()
            .admin_by_email(email)
            .await
            .map_err(|e| super::orgs::catalog_failure("admin lookup", e))?,
        None => None,
    };
    // Longer than any valid password: refuse without spending a hash on it.
    let password_ok = password.len() <= 1024
        && state
            .hasher
            .verify(password, admin.as_ref().map(|a| a.password_hash.as_str()))
            .await
            .map_err(hash_error)?;
    Ok((admin, password_ok))
}

/// An authenticated org admin.
pub struct Authenticated {
    /// Verified claims.
    pub claims: std::sync::Arc<Claims>,
    /// The admin (current record).
    pub admin: Arc<AdminRecord>,
    /// The admin's organization (current record).
    pub org: Arc<OrgRecord>,
}

fn bearer(req: &Request) -> Option<&str> {
    let value = req
        .headers
        .get(http::header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then_some(token.trim())
}

fn reject(reason: VerifyError) -> ApiError {
    metrics::JWT_FAILURES
        .with_label_values(&[reason.label()])
        .inc();
    ApiError::unauthorized()
}

/// Verifies the bearer token and that its admin, credential version and organization are
/// still current. `Ok(None)` when no Authorization header was sent and `required` is false.
#[tracing::instrument(level = "debug", name = "auth", skip_all)]
pub async fn authenticate_opt(
    state: &AppState,
    req: &Request,
    required: bool,
) -> Result<Option<Authenticated>, ApiError> {
    let Some(token) = bearer(req) else {
        if required || req.headers.contains_key(http::header::AUTHORIZATION) {
            return Err(reject(VerifyError::Missing));
        }
        return Ok(None);
    };
    let claims = state.jwt.verify(token).map_err(reject)?;
    let admin = state
        .router
        .admin(claims.sub)
        .await
        .map_err(|e| super::orgs::catalog_failure("admin lookup", e))?
        .ok_or_else(|| reject(VerifyError::Revoked))?;
    if admin.org_id != claims.org || admin.credential_version != claims.cv {
        return Err(reject(VerifyError::Revoked));
    }
    let org = state
        .router
        .org(claims.org)
        .await
        .map_err(|e| super::orgs::catalog_failure("org lookup", e))?
        .ok_or_else(|| reject(VerifyError::Revoked))?;
    Ok(Some(Authenticated { claims, admin, org }))
}

/// Like [`authenticate_opt`] with a token required.
pub async fn authenticate(state: &AppState, req: &Request) -> Result<Authenticated, ApiError> {
    authenticate_opt(state, req, true)
        .await?
        .ok_or_else(ApiError::unauthorized)
}

/// Maps a hashing failure: overload is a 503 the client retries, anything else a 500.
pub fn hash_error(e: crate::auth::password::HashError) -> ApiError {
    match e {
        // Retry-After of 1 to 3 s at random: a burst refused together does not come back
        // together.
        crate::auth::password::HashError::Overloaded => ApiError::unavailable(
            "overloaded",
            "too many password operations in flight; retry shortly",
            rand::Rng::gen_range(&mut rand::thread_rng(), 1..=3),
        ),
        other => internal("password hashing", other),
    }
}

/// Logs an unexpected failure and turns it into a 500 (or 503 for store outages).
pub fn internal(what: &str, e: impl std::fmt::Display) -> ApiError {
    tracing::error!(error = %e, "{what} failed");
    ApiError::internal()
}
