//! `GET /openapi.json`: the OpenAPI 3.1 document, generated from the handlers' annotations
//! and the request/response types.

use super::{ApiResult, Reply};
use http::StatusCode;
use once_cell::sync::Lazy;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

/// The whole API description.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "org-gateway",
        description = "Tenant-aware gateway: organization and admin-login API, tenant data, operator routes. Errors are application/problem+json with a stable `code`."
    ),
    paths(
        super::orgs::create,
        super::orgs::get,
        super::orgs::update,
        super::orgs::delete,
        super::auth::login,
        super::data::insert,
        super::data::query,
        super::data::count,
        super::data::get,
        super::data::patch,
        super::data::delete,
        super::health::healthz,
        super::health::readyz,
        super::health::metrics,
        super::ops::list_shards,
        super::ops::add_shard,
        super::ops::placement,
        super::ops::set_limits,
        super::ops::quotas,
        super::ops::top_tenants,
        super::ops::instances,
        super::moves::start,
        super::moves::list,
        super::moves::get,
        super::moves::cancel,
        super::moves::drain,
        super::moves::rebalance,
        openapi_json,
    ),
    modifiers(&Security),
    tags(
        (name = "organizations", description = "Create, read, update (rename with data migration), delete"),
        (name = "auth", description = "Admin login"),
        (name = "data", description = "Tenant documents, scoped to the token's organization"),
        (name = "operator", description = "Operator listener; Bearer ops.token"),
        (name = "health", description = "Liveness, readiness, metrics"),
    )
)]
pub struct ApiDoc;

struct Security;

impl Modify for Security {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .build(),
            ),
        );
        components.add_security_scheme(
            "operator",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

static DOCUMENT: Lazy<Vec<u8>> = Lazy::new(|| {
    ApiDoc::openapi()
        .to_json()
        .expect("OpenAPI document serializes")
        .into_bytes()
});

/// `GET /openapi.json`.
#[utoipa::path(get, path = "/openapi.json", tag = "health",
    responses((status = 200, description = "This document", body = Object)))]
pub async fn openapi_json() -> ApiResult {
    Ok(Reply {
        status: StatusCode::OK,
        body: DOCUMENT.clone(),
        content_type: "application/json",
        headers: Vec::new(),
    })
}
