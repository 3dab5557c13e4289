//! `GET /openapi.json`: one OpenAPI 3.1 document per listener, generated from the handlers'
//! annotations and the request/response types. Each listener describes only the routes it
//! serves (see [`super::routes::ALL`]), so a client or a fuzzer pointed at a listener meets no
//! operation that answers 404 there.

use super::routes::{Listener, ALL};
use super::{ApiResult, Reply};
use crate::app::AppState;
use http::StatusCode;
use serde_json::{json, Value};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::server::Server;
use utoipa::openapi::OpenApi as Document;
use utoipa::{Modify, OpenApi};

/// Every route of both listeners; [`document`] cuts it per listener.
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
        super::admins::create,
        super::admins::list,
        super::admins::delete,
        super::data::insert,
        super::data::query,
        super::data::count,
        super::data::get,
        super::data::patch,
        super::data::delete,
        super::data::create_index,
        super::data::list_indexes,
        super::data::drop_index,
        super::transfer::export,
        super::transfer::import,
        super::health::healthz,
        super::health::readyz,
        super::health::metrics,
        super::ops::list_shards,
        super::ops::add_shard,
        super::ops::placement,
        super::ops::set_limits,
        super::ops::search_orgs,
        super::events::org_events,
        super::events::ops_events,
        super::ops::quotas,
        super::ops::top_tenants,
        super::ops::instances,
        super::moves::start,
        super::moves::list,
        super::moves::get,
        super::moves::cancel,
        super::moves::drain,
        super::moves::rebalance,
        super::deleted::list,
        super::deleted::restore,
        super::deleted::purge,
        openapi_json,
    ),
    modifiers(&Security),
    tags(
        (name = "organizations", description = "Create, read, update (rename with data migration), delete"),
        (name = "auth", description = "Admin login"),
        (name = "admins", description = "Admins of the token's organization"),
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

/// The document served on `listener`: only its routes, its security scheme and its tags,
/// with a relative server (`/`) so it is valid wherever the listener is reached.
pub fn document(listener: Listener) -> Document {
    let mut doc = ApiDoc::openapi();
    let served = |method: &str, path: &str| {
        ALL.iter()
            .any(|(l, m, p)| *l == listener && *m == method && *p == path)
    };
    doc.paths.paths.retain(|path, item| {
        for (method, op) in [
            ("GET", &mut item.get),
            ("PUT", &mut item.put),
            ("POST", &mut item.post),
            ("DELETE", &mut item.delete),
            ("PATCH", &mut item.patch),
            ("HEAD", &mut item.head),
            ("OPTIONS", &mut item.options),
            ("TRACE", &mut item.trace),
        ] {
            if !served(method, path) {
                *op = None;
            }
        }
        [&item.get, &item.put, &item.post, &item.delete, &item.patch]
            .iter()
            .any(|op| op.is_some())
    });
    let (title, description, unused_scheme, unused_tags): (_, _, _, &[&str]) = match listener {
        Listener::Public => (
            "org-gateway public API",
            "Organizations, admin login and tenant data. Errors are application/problem+json with a stable `code`.",
            "operator",
            &["operator"],
        ),
        Listener::Ops => (
            "org-gateway operator API",
            "Health, readiness, metrics and the operator routes (Bearer `ops.token`). Errors are application/problem+json with a stable `code`.",
            "bearer",
            &["organizations", "auth", "data"],
        ),
    };
    doc.info.title = title.to_owned();
    doc.info.description = Some(description.to_owned());
    doc.servers = Some(vec![Server::new("/")]);
    if let Some(c) = doc.components.as_mut() {
        c.security_schemes.remove(unused_scheme);
    }
    if let Some(tags) = doc.tags.as_mut() {
        tags.retain(|t| !unused_tags.contains(&t.name.as_str()));
    }
    doc
}

/// What the document states that depends on the running configuration: the values a
/// request must name (regions, shards) and the configurable bounds.
#[derive(Debug, Clone)]
pub struct Live {
    /// Regions of the shards that take new organizations.
    pub regions: Vec<String>,
    /// Shards that take tenants, with their database prefixes.
    pub shards: Vec<(String, String)>,
    /// `data.max_limit`.
    pub max_limit: u64,
    /// `data.max_batch`.
    pub max_batch: usize,
}

impl Live {
    /// The values in force in `state`.
    pub fn of(state: &AppState) -> Self {
        let configs = state.shards.configs();
        let accepting: Vec<_> = configs
            .iter()
            .filter(|c| state.shards.accepts_tenants(&c.id))
            .collect();
        let mut regions: Vec<String> = accepting.iter().filter_map(|c| c.region.clone()).collect();
        regions.sort();
        regions.dedup();
        Self {
            regions,
            shards: accepting
                .iter()
                .map(|c| (c.id.to_string(), c.database_prefix.clone()))
                .collect(),
            max_limit: state.config.data.max_limit,
            max_batch: state.config.data.max_batch,
        }
    }
}

/// A stored field name: not empty, no leading `$`, no `.` or NUL.
const FIELD_NAME: &str = "^[^$.\\u0000][^.\\u0000]*$";

/// The document of `listener` as JSON, with the constraints that the annotations cannot state
/// (they depend on the configuration, or span several fields) filled in from `live`.
pub fn document_json(listener: Listener, live: &Live) -> Value {
    let mut doc = serde_json::to_value(document(listener)).expect("OpenAPI document serializes");
    catalog_may_be_unavailable(&mut doc);
    match listener {
        Listener::Public => {
            let schemas = &mut doc["components"]["schemas"];
            // An unknown region is 400 `no_shard_in_region`.
            let mut regions: Vec<Value> = live.regions.iter().map(|r| json!(r)).collect();
            regions.push(Value::Null);
            schemas["CreateBody"]["properties"]["region"]["enum"] = Value::Array(regions);
            // At least one change, else 400 `nothing_to_update`.
            schemas["UpdateBody"]["anyOf"] = json!(["new_organization_name", "email", "password"]
                .iter()
                .map(|f| json!({"required": [f], "properties": {*f: {"type": "string"}}}))
                .collect::<Vec<_>>());
            schemas["QueryBody"]["properties"]["limit"]["maximum"] = json!(live.max_limit);
            // Stored documents: field names and `_id` rules, integers within int64.
            schemas["Document"] = json!({
                "type": "object",
                "description": "A JSON object; field names must not be empty, start with `$` or contain `.` or NUL; `_id` (optional, generated when absent) is a string of 1 to 128 characters without NUL; nesting at most 32 levels.",
                "propertyNames": {"pattern": FIELD_NAME},
                "properties": {"_id": {"type": "string", "minLength": 1, "maxLength": 128, "pattern": "^[^\\u0000]*$"}},
                "additionalProperties": {"$ref": "#/components/schemas/Value"},
            });
            schemas["Value"] = json!({
                "description": "Any JSON value; integers must fit a signed 64-bit integer.",
                "anyOf": [
                    {"type": ["null", "boolean", "string"]},
                    {"type": "number", "not": {"type": "integer"}},
                    {"type": "integer", "minimum": i64::MIN, "maximum": i64::MAX},
                    {"type": "array", "items": {"$ref": "#/components/schemas/Value"}},
                    {"type": "object", "propertyNames": {"pattern": FIELD_NAME}, "additionalProperties": {"$ref": "#/components/schemas/Value"}},
                ],
            });
            let insert = &mut doc["paths"]["/data"]["post"]["requestBody"]["content"]
                ["application/json"]["schema"];
            *insert = json!({"oneOf": [
                {"$ref": "#/components/schemas/Document"},
                {"type": "array", "minItems": 1, "maxItems": live.max_batch, "items": {"$ref": "#/components/schemas/Document"}},
            ]});
        }
        Listener::Ops => {
            // `null` removes the override; a body is required.
            doc["paths"]["/ops/orgs/{organization}/limits"]["put"]["requestBody"]["required"] =
                json!(true);
            doc["components"]["schemas"]["ShardConfig"] = shard_config_schema();
            doc["paths"]["/ops/shards"]["post"]["requestBody"]["content"]["application/json"]
                ["schema"] = json!({"$ref": "#/components/schemas/ShardConfig"});
            let schemas = &mut doc["components"]["schemas"];
            // A shard that is not configured, or takes no tenants, is 400 `unknown_shard` or
            // `shard_not_active`.
            let shards: Vec<Value> = live.shards.iter().map(|(id, _)| json!(id)).collect();
            let to_shard = &mut schemas["StartMove"]["properties"]["to_shard"];
            if shards.is_empty() {
                to_shard["not"] = json!({});
            } else {
                to_shard["enum"] = Value::Array(shards);
            }
            let mut prefixes: Vec<String> =
                live.shards.iter().map(|(_, p)| regex_escape(p)).collect();
            prefixes.sort();
            prefixes.dedup();
            schemas["StartMove"]["properties"]["to_database"]["pattern"] = json!(format!(
                "^({})_([1-9][0-9]{{0,4}}|100000)$",
                prefixes.join("|")
            ));
        }
    }
    doc
}

/// Every route that reads or writes the catalog answers 503 `catalog_unavailable` with
/// Retry-After while the catalog cannot be reached or has no primary: each gets that 503
/// here, or a mention of it in the 503 it states already. Liveness, metrics and this document do not touch the catalog.
fn catalog_may_be_unavailable(doc: &mut Value) {
    const WITHOUT_CATALOG: [&str; 3] = ["/healthz", "/metrics", "/openapi.json"];
    let Some(paths) = doc["paths"].as_object_mut() else {
        return;
    };
    for (path, item) in paths {
        if WITHOUT_CATALOG.contains(&path.as_str()) {
            continue;
        }
        let Some(item) = item.as_object_mut() else {
            continue;
        };
        for op in item.values_mut() {
            let Some(responses) = op.get_mut("responses").and_then(Value::as_object_mut) else {
                continue;
            };
            match responses.get_mut("503") {
                Some(stated) => {
                    if let Some(Value::String(d)) = stated.get_mut("description") {
                        d.push_str("; or the catalog unavailable (`catalog_unavailable`)");
                    }
                }
                None => {
                    responses.insert(
                        "503".into(),
                        json!({
                            "description": "Catalog unavailable (`catalog_unavailable`, Retry-After)",
                            "content": {"application/problem+json": {
                                "schema": {"$ref": "#/components/schemas/ProblemBody"}
                            }},
                        }),
                    );
                }
            }
        }
    }
}

/// The body of `POST /ops/shards`: a `[[shards]]` table of the configuration. Rules between
/// fields (`alert_ratio <= split_ratio`, `min_pool_size <= max_pool_size`) are in the
/// descriptions only: JSON Schema cannot compare two fields.
fn shard_config_schema() -> Value {
    let count = json!({"type": "integer", "minimum": 0, "maximum": u32::MAX});
    let millis = json!({"type": "integer", "minimum": 0, "maximum": u64::MAX});
    let ratio = json!({"type": "number", "exclusiveMinimum": 0, "maximum": 1});
    json!({
        "type": "object",
        "additionalProperties": false,
        "required": ["id", "kind"],
        "properties": {
            "id": {"type": "string", "pattern": "^[a-z0-9_-]{1,32}$"},
            "kind": {"enum": ["embedded", "mongodb"]},
            "uri": {"type": ["string", "null"], "description": "MongoDB connection string (required for kind = mongodb)"},
            "path": {"type": ["string", "null"], "description": "Store file under the data dir, relative and without `..` (required for kind = embedded; with a MongoDB catalog only MongoDB shards can be added)"},
            "max_pool_size": count,
            "min_pool_size": {"type": "integer", "minimum": 0, "maximum": u32::MAX, "description": "At most max_pool_size"},
            "max_idle_time_ms": millis,
            "server_selection_timeout_ms": millis,
            "read_preference": {"type": "string"},
            "write_concern": {"type": "string", "description": "`majority` or a number"},
            "journal": {"type": "boolean"},
            "database_prefix": {"type": "string", "pattern": "^[A-Za-z0-9_]{1,20}$"},
            "max_collections_per_database": {"type": "integer", "minimum": 1, "maximum": u32::MAX},
            "alert_ratio": ratio,
            "split_ratio": {"type": "number", "exclusiveMinimum": 0, "maximum": 1, "description": "At least alert_ratio"},
            "weight": {"type": "number", "exclusiveMinimum": 0},
            "region": {"type": ["string", "null"]},
            "state": {"enum": ["active", "draining", "drained"]},
        },
        "oneOf": [
            {"properties": {"kind": {"const": "mongodb"}, "uri": {"type": "string"}}, "required": ["uri"]},
            {"properties": {"kind": {"const": "embedded"}, "path": {"type": "string"}}, "required": ["path"]},
        ],
    })
}

/// Database prefixes are letters, digits and `_`, none special in a pattern; escaped anyway.
fn regex_escape(raw: &str) -> String {
    raw.chars()
        .flat_map(|c| {
            let special = !(c.is_ascii_alphanumeric() || c == '_');
            special
                .then_some('\\')
                .into_iter()
                .chain(std::iter::once(c))
        })
        .collect()
}

/// `GET /openapi.json`: the document of the listener the request arrived on. Rendered per
/// request (it is small and rarely asked for) so it follows shards added at runtime.
#[utoipa::path(get, path = "/openapi.json", tag = "health", operation_id = "openapi_document",
    responses((status = 200, description = "This document", body = Object)))]
pub async fn openapi_json(state: &AppState, listener: Listener) -> ApiResult {
    let doc = document_json(listener, &Live::of(state));
    Ok(Reply {
        status: StatusCode::OK,
        body: serde_json::to_vec(&doc).expect("OpenAPI document serializes"),
        content_type: "application/json",
        headers: Vec::new(),
        stream: None,
    })
}
