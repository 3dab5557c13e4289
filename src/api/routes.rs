//! The route table: method + path -> [`Route`]. Templates (not raw paths) label metrics.

use crate::error::ApiError;
use http::Method;

/// Which listener a request arrived on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listener {
    /// The public API.
    Public,
    /// The operator listener.
    Ops,
}

/// Every route the gateway serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// `GET /healthz` (both listeners).
    Healthz,
    /// `GET /openapi.json` on the public listener: the public routes' document.
    OpenApi,
    /// `GET /openapi.json` on the ops listener: the operator routes' document.
    OpsOpenApi,
    /// `GET /readyz` (ops).
    Readyz,
    /// `GET /metrics` (ops).
    Metrics,
    /// `POST /org/create`.
    OrgCreate,
    /// `GET /org/get`.
    OrgGet,
    /// `PUT /org/update`.
    OrgUpdate,
    /// `DELETE /org/delete`.
    OrgDelete,
    /// `POST /admin/login`.
    AdminLogin,
    /// `GET /org/admins`.
    OrgAdmins,
    /// `POST /org/admins`.
    OrgAdminCreate,
    /// `DELETE /org/admins/{admin_id}`.
    OrgAdminDelete,
    /// `GET /org/events`.
    OrgEvents,
    /// `GET /org/export`.
    OrgExport,
    /// `POST /org/import`.
    OrgImport,
    /// `GET /ops/events`.
    OpsEvents,
    /// `GET /ops/shards`.
    OpsShards,
    /// `POST /ops/shards`.
    OpsShardAdd,
    /// `GET /ops/placements/{organization}`.
    OpsPlacement,
    /// `PUT /ops/orgs/{organization}/limits`.
    OpsLimits,
    /// `GET /ops/orgs`.
    OpsOrgs,
    /// `GET /ops/quotas`.
    OpsQuotas,
    /// `GET /ops/tenants/top`.
    OpsTopTenants,
    /// `GET /ops/instances`.
    OpsInstances,
    /// `GET /ops/moves`.
    OpsMoves,
    /// `POST /ops/moves`.
    OpsMoveStart,
    /// `GET /ops/moves/{move_id}`.
    OpsMove,
    /// `DELETE /ops/moves/{move_id}`.
    OpsMoveCancel,
    /// `POST /ops/shards/{id}/drain`.
    OpsShardDrain,
    /// `POST /ops/rebalance`.
    OpsRebalance,
    /// `GET /ops/deleted`.
    OpsDeleted,
    /// `POST /ops/deleted/{organization_id}/restore`.
    OpsDeletedRestore,
    /// `DELETE /ops/deleted/{organization_id}`.
    OpsDeletedPurge,
    /// `POST /data`.
    DataInsert,
    /// `POST /data/query`.
    DataQuery,
    /// `POST /data/count`.
    DataCount,
    /// `GET /data/{id}`.
    DataGet,
    /// `PATCH /data/{id}`.
    DataPatch,
    /// `DELETE /data/{id}`.
    DataDelete,
    /// `GET /data/indexes`.
    DataIndexes,
    /// `POST /data/indexes`.
    DataIndexCreate,
    /// `DELETE /data/indexes/{name}`.
    DataIndexDrop,
}

impl Route {
    /// The path template, used as the metrics label.
    pub fn template(self) -> &'static str {
        match self {
            Route::Healthz => "/healthz",
            Route::OpenApi | Route::OpsOpenApi => "/openapi.json",
            Route::Readyz => "/readyz",
            Route::Metrics => "/metrics",
            Route::OrgCreate => "/org/create",
            Route::OrgGet => "/org/get",
            Route::OrgUpdate => "/org/update",
            Route::OrgDelete => "/org/delete",
            Route::AdminLogin => "/admin/login",
            Route::OrgAdmins | Route::OrgAdminCreate => "/org/admins",
            Route::OrgAdminDelete => "/org/admins/{admin_id}",
            Route::OrgEvents => "/org/events",
            Route::OrgExport => "/org/export",
            Route::OrgImport => "/org/import",
            Route::OpsEvents => "/ops/events",
            Route::OpsShards | Route::OpsShardAdd => "/ops/shards",
            Route::OpsPlacement => "/ops/placements/{organization}",
            Route::OpsLimits => "/ops/orgs/{organization}/limits",
            Route::OpsOrgs => "/ops/orgs",
            Route::OpsQuotas => "/ops/quotas",
            Route::OpsTopTenants => "/ops/tenants/top",
            Route::OpsInstances => "/ops/instances",
            Route::OpsMoves | Route::OpsMoveStart => "/ops/moves",
            Route::OpsMove | Route::OpsMoveCancel => "/ops/moves/{move_id}",
            Route::OpsShardDrain => "/ops/shards/{id}/drain",
            Route::OpsRebalance => "/ops/rebalance",
            Route::OpsDeleted => "/ops/deleted",
            Route::OpsDeletedRestore => "/ops/deleted/{organization_id}/restore",
            Route::OpsDeletedPurge => "/ops/deleted/{organization_id}",
            Route::DataInsert => "/data",
            Route::DataQuery => "/data/query",
            Route::DataCount => "/data/count",
            Route::DataGet | Route::DataPatch | Route::DataDelete => "/data/{id}",
            Route::DataIndexes | Route::DataIndexCreate => "/data/indexes",
            Route::DataIndexDrop => "/data/indexes/{name}",
        }
    }

    /// Whether the route reads a request body.
    pub fn takes_body(self) -> bool {
        matches!(
            self,
            Route::OrgCreate
                | Route::OrgUpdate
                | Route::AdminLogin
                | Route::OrgAdminCreate
                | Route::OpsShardAdd
                | Route::OpsLimits
                | Route::OpsMoveStart
                | Route::OpsShardDrain
                | Route::OpsRebalance
                | Route::OpsDeletedRestore
                | Route::DataInsert
                | Route::DataQuery
                | Route::DataCount
                | Route::DataPatch
                | Route::DataIndexCreate
        )
    }

    /// Whether the route reads its request body itself, chunk by chunk as it arrives, under
    /// its own bound (not `max_body_bytes`).
    pub fn streams_body(self) -> bool {
        self == Route::OrgImport
    }

    /// Whether the request may run longer than `request_timeout_ms`: the route bounds each
    /// step (a body read, a store batch, a chunk written) by it instead of the whole request.
    pub fn long_running(self) -> bool {
        matches!(self, Route::OrgExport | Route::OrgImport)
    }
}

/// Every route served: (listener, method, path template). `/healthz` and `/openapi.json` are
/// served on both listeners. The OpenAPI test checks the document lists exactly these.
pub const ALL: &[(Listener, &str, &str)] = &[
    (Listener::Public, "GET", "/healthz"),
    (Listener::Public, "GET", "/openapi.json"),
    (Listener::Public, "POST", "/org/create"),
    (Listener::Public, "GET", "/org/get"),
    (Listener::Public, "PUT", "/org/update"),
    (Listener::Public, "DELETE", "/org/delete"),
    (Listener::Public, "POST", "/admin/login"),
    (Listener::Public, "GET", "/org/admins"),
    (Listener::Public, "POST", "/org/admins"),
    (Listener::Public, "DELETE", "/org/admins/{admin_id}"),
    (Listener::Public, "GET", "/org/events"),
    (Listener::Public, "GET", "/org/export"),
    (Listener::Public, "POST", "/org/import"),
    (Listener::Public, "POST", "/data"),
    (Listener::Public, "POST", "/data/query"),
    (Listener::Public, "POST", "/data/count"),
    (Listener::Public, "GET", "/data/{id}"),
    (Listener::Public, "PATCH", "/data/{id}"),
    (Listener::Public, "DELETE", "/data/{id}"),
    (Listener::Public, "GET", "/data/indexes"),
    (Listener::Public, "POST", "/data/indexes"),
    (Listener::Public, "DELETE", "/data/indexes/{name}"),
    (Listener::Ops, "GET", "/healthz"),
    (Listener::Ops, "GET", "/openapi.json"),
    (Listener::Ops, "GET", "/readyz"),
    (Listener::Ops, "GET", "/metrics"),
    (Listener::Ops, "GET", "/ops/shards"),
    (Listener::Ops, "POST", "/ops/shards"),
    (Listener::Ops, "GET", "/ops/placements/{organization}"),
    (Listener::Ops, "PUT", "/ops/orgs/{organization}/limits"),
    (Listener::Ops, "GET", "/ops/orgs"),
    (Listener::Ops, "GET", "/ops/events"),
    (Listener::Ops, "GET", "/ops/quotas"),
    (Listener::Ops, "GET", "/ops/tenants/top"),
    (Listener::Ops, "GET", "/ops/instances"),
    (Listener::Ops, "GET", "/ops/moves"),
    (Listener::Ops, "POST", "/ops/moves"),
    (Listener::Ops, "GET", "/ops/moves/{move_id}"),
    (Listener::Ops, "DELETE", "/ops/moves/{move_id}"),
    (Listener::Ops, "POST", "/ops/shards/{id}/drain"),
    (Listener::Ops, "POST", "/ops/rebalance"),
    (Listener::Ops, "GET", "/ops/deleted"),
    (
        Listener::Ops,
        "POST",
        "/ops/deleted/{organization_id}/restore",
    ),
    (Listener::Ops, "DELETE", "/ops/deleted/{organization_id}"),
];

/// Matches a request to a route: 404 for unknown paths, 405 for a known path with another
/// method.
pub fn match_route(listener: Listener, method: &Method, path: &str) -> Result<Route, ApiError> {
    let candidates: &[(Method, Route)] = match (listener, path) {
        (_, "/healthz") => &[(Method::GET, Route::Healthz)],
        (Listener::Public, "/openapi.json") => &[(Method::GET, Route::OpenApi)],
        (Listener::Ops, "/openapi.json") => &[(Method::GET, Route::OpsOpenApi)],
        (Listener::Ops, "/readyz") => &[(Method::GET, Route::Readyz)],
        (Listener::Ops, "/metrics") => &[(Method::GET, Route::Metrics)],
        (Listener::Public, "/org/create") => &[(Method::POST, Route::OrgCreate)],
        (Listener::Public, "/org/get") => &[(Method::GET, Route::OrgGet)],
        (Listener::Public, "/org/update") => &[(Method::PUT, Route::OrgUpdate)],
        (Listener::Public, "/org/delete") => &[(Method::DELETE, Route::OrgDelete)],
        (Listener::Public, "/admin/login") => &[(Method::POST, Route::AdminLogin)],
        (Listener::Public, "/org/events") => &[(Method::GET, Route::OrgEvents)],
        (Listener::Public, "/org/export") => &[(Method::GET, Route::OrgExport)],
        (Listener::Public, "/org/import") => &[(Method::POST, Route::OrgImport)],
        (Listener::Public, "/org/admins") => &[
            (Method::GET, Route::OrgAdmins),
            (Method::POST, Route::OrgAdminCreate),
        ],
        (Listener::Public, p)
            if p.starts_with("/org/admins/") && p.len() > 12 && !p[12..].contains('/') =>
        {
            &[(Method::DELETE, Route::OrgAdminDelete)]
        }
        (Listener::Ops, "/ops/shards") => &[
            (Method::GET, Route::OpsShards),
            (Method::POST, Route::OpsShardAdd),
        ],
        (Listener::Ops, p) if p.starts_with("/ops/placements/") => {
            &[(Method::GET, Route::OpsPlacement)]
        }
        (Listener::Ops, "/ops/quotas") => &[(Method::GET, Route::OpsQuotas)],
        (Listener::Ops, "/ops/orgs") => &[(Method::GET, Route::OpsOrgs)],
        (Listener::Ops, "/ops/events") => &[(Method::GET, Route::OpsEvents)],
        (Listener::Ops, "/ops/tenants/top") => &[(Method::GET, Route::OpsTopTenants)],
        (Listener::Ops, "/ops/instances") => &[(Method::GET, Route::OpsInstances)],
        (Listener::Ops, "/ops/moves") => &[
            (Method::GET, Route::OpsMoves),
            (Method::POST, Route::OpsMoveStart),
        ],
        (Listener::Ops, p) if p.starts_with("/ops/moves/") && !p[11..].contains('/') => &[
            (Method::GET, Route::OpsMove),
            (Method::DELETE, Route::OpsMoveCancel),
        ],
        (Listener::Ops, p) if p.starts_with("/ops/shards/") && p.ends_with("/drain") => {
            &[(Method::POST, Route::OpsShardDrain)]
        }
        (Listener::Ops, "/ops/rebalance") => &[(Method::POST, Route::OpsRebalance)],
        (Listener::Ops, "/ops/deleted") => &[(Method::GET, Route::OpsDeleted)],
        (Listener::Ops, p)
            if p.starts_with("/ops/deleted/")
                && p.ends_with("/restore")
                && p.len() > 21
                && !p[13..p.len() - 8].contains('/') =>
        {
            &[(Method::POST, Route::OpsDeletedRestore)]
        }
        (Listener::Ops, p)
            if p.starts_with("/ops/deleted/") && p.len() > 13 && !p[13..].contains('/') =>
        {
            &[(Method::DELETE, Route::OpsDeletedPurge)]
        }
        (Listener::Ops, p) if p.starts_with("/ops/orgs/") && p.ends_with("/limits") => {
            &[(Method::PUT, Route::OpsLimits)]
        }
        (Listener::Public, "/data") => &[(Method::POST, Route::DataInsert)],
        // As in the OpenAPI document, where a literal path wins over `/data/{id}`: these
        // three are not document ids (such documents are reached through `/data/query`).
        (Listener::Public, "/data/query") => &[(Method::POST, Route::DataQuery)],
        (Listener::Public, "/data/count") => &[(Method::POST, Route::DataCount)],
        (Listener::Public, "/data/indexes") => &[
            (Method::GET, Route::DataIndexes),
            (Method::POST, Route::DataIndexCreate),
        ],
        (Listener::Public, p)
            if p.starts_with("/data/indexes/") && p.len() > 14 && !p[14..].contains('/') =>
        {
            &[(Method::DELETE, Route::DataIndexDrop)]
        }
        (Listener::Public, p)
            if p.starts_with("/data/") && !p[6..].contains('/') && p.len() > 6 =>
        {
            &[
                (Method::GET, Route::DataGet),
                (Method::PATCH, Route::DataPatch),
                (Method::DELETE, Route::DataDelete),
            ]
        }
        _ => return Err(ApiError::route_not_found()),
    };
    candidates
        .iter()
        .find(|(m, _)| m == method)
        .map(|(_, r)| *r)
        .ok_or_else(|| {
            let mut allow: Vec<&str> = candidates.iter().map(|(m, _)| m.as_str()).collect();
            if allow.contains(&"GET") {
                allow.push("HEAD");
            }
            ApiError::method_not_allowed(allow.join(", "))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_listed_route_matches_its_template() {
        for (listener, method, template) in ALL {
            let path = template
                .replace("{id}", "abc123")
                .replace("{admin_id}", "0190c1d2-0000-7000-8000-000000000000")
                .replace("{name}", "sku_1")
                .replace("{organization}", "Acme%20Corp")
                .replace("{organization_id}", "0190c1d2-0000-7000-8000-000000000000");
            let method: Method = method.parse().unwrap();
            let route = match_route(*listener, &method, &path)
                .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
            assert_eq!(route.template(), *template);
        }
    }

    #[test]
    fn matches_and_rejects() {
        assert_eq!(
            match_route(Listener::Public, &Method::POST, "/org/create").unwrap(),
            Route::OrgCreate
        );
        let wrong = match_route(Listener::Public, &Method::GET, "/org/create").unwrap_err();
        assert_eq!(wrong.status, 405);
        assert_eq!(wrong.extra_headers, vec![("allow", "POST".to_string())]);
        assert_eq!(
            match_route(Listener::Public, &Method::GET, "/nope")
                .unwrap_err()
                .status,
            404
        );
        // `/data/query` and `/data/count` are not document ids
        let query = match_route(Listener::Public, &Method::GET, "/data/query").unwrap_err();
        assert_eq!(query.extra_headers, vec![("allow", "POST".to_string())]);
        assert_eq!(
            match_route(Listener::Public, &Method::GET, "/data/querx").unwrap(),
            Route::DataGet
        );
        // nor is `/data/indexes`; an index name follows it
        let indexes = match_route(Listener::Public, &Method::PATCH, "/data/indexes").unwrap_err();
        assert_eq!(
            indexes.extra_headers,
            vec![("allow", "GET, POST, HEAD".to_string())]
        );
        assert_eq!(
            match_route(Listener::Public, &Method::DELETE, "/data/indexes/sku_1").unwrap(),
            Route::DataIndexDrop
        );
        for path in ["/data/indexes/", "/data/indexes/a/b"] {
            assert_eq!(
                match_route(Listener::Public, &Method::DELETE, path)
                    .unwrap_err()
                    .status,
                404,
                "{path}"
            );
        }
        // operator routes are not on the public listener
        assert_eq!(
            match_route(Listener::Public, &Method::GET, "/ops/shards")
                .unwrap_err()
                .status,
            404
        );
    }
}
