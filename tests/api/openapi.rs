use crate::gateway::TestGateway;
use org_gateway::api::routes::{Listener, ALL};
use org_gateway::domain::{OrgName, Password, MAX_ORG_NAME_CHARS};
use serde_json::Value;
use std::collections::BTreeSet;

fn fetch(gw: &TestGateway, base: &str) -> Value {
    let r = gw
        .client
        .get(format!("{base}/openapi.json"))
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    r.json().unwrap()
}

/// (method, path) of every operation in a document; asserts each has responses and an id.
fn operations(doc: &Value) -> (BTreeSet<(String, String)>, Vec<String>) {
    let mut documented = BTreeSet::new();
    let mut ids = Vec::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in [
            "get", "put", "post", "delete", "patch", "head", "options", "trace",
        ] {
            if let Some(op) = item.get(method) {
                documented.insert((method.to_uppercase(), path.clone()));
                assert!(op["responses"].as_object().is_some_and(|r| !r.is_empty()));
                let id = op["operationId"].as_str();
                ids.push(
                    id.unwrap_or_else(|| panic!("{method} {path}: no operationId"))
                        .into(),
                );
            }
        }
    }
    (documented, ids)
}

#[test]
fn each_listener_documents_exactly_its_routes_with_unique_operation_ids() {
    let gw = TestGateway::start();
    let mut all_ids = BTreeSet::new();
    for (listener, base) in [(Listener::Public, &gw.base), (Listener::Ops, &gw.ops)] {
        let doc = fetch(&gw, base);
        assert!(
            doc["openapi"].as_str().unwrap().starts_with("3.1"),
            "{}",
            doc["openapi"]
        );
        assert_eq!(doc["servers"][0]["url"], "/", "{listener:?}");
        let (documented, ids) = operations(&doc);
        let served: BTreeSet<(String, String)> = ALL
            .iter()
            .filter(|(l, _, _)| *l == listener)
            .map(|(_, m, p)| (m.to_string(), p.to_string()))
            .collect();
        assert_eq!(documented, served, "{listener:?}");
        let unique: BTreeSet<&String> = ids.iter().collect();
        assert_eq!(unique.len(), ids.len(), "duplicate operationId: {ids:?}");
        // Ids stay unique across both documents too (`/healthz` and `/openapi.json` are the
        // same operation on both).
        all_ids.extend(
            ids.into_iter()
                .filter(|i| i != "healthz" && i != "openapi_document"),
        );
        // Each listener names only its own security scheme.
        let schemes = doc["components"]["securitySchemes"].as_object().unwrap();
        let expected = match listener {
            Listener::Public => "bearer",
            Listener::Ops => "operator",
        };
        assert_eq!(schemes.keys().collect::<Vec<_>>(), vec![expected]);
    }
    assert_eq!(
        all_ids.len() + 4,
        ALL.len(),
        "every route has its own operationId"
    );
    // every route the table lists is actually answered (not 404 route_not_found)
    for (listener, method, template) in ALL {
        let base = match listener {
            Listener::Public => &gw.base,
            Listener::Ops => &gw.ops,
        };
        let path = template.replace("{id}", "x").replace("{organization}", "x");
        let r = gw
            .client
            .request(method.parse().unwrap(), format!("{base}{path}"))
            .send()
            .unwrap();
        if r.status() == 404 {
            let body: Value = r.json().unwrap_or_default();
            assert_ne!(body["code"], "route_not_found", "{method} {path}");
        }
    }
}

#[test]
fn the_schemas_state_the_constraints_the_server_enforces() {
    let gw = TestGateway::start();
    let public = fetch(&gw, &gw.base);
    let schemas = &public["components"]["schemas"];
    for name in [
        "ProblemBody",
        "OrgView",
        "CreateBody",
        "UpdateBody",
        "LoginReply",
        "QueryBody",
        "Document",
    ] {
        assert!(schemas.get(name).is_some(), "missing schema {name}");
    }
    let create = &schemas["CreateBody"]["properties"];
    // The name pattern agrees with OrgName::parse, at the length bound too.
    let name_pattern = create["organization_name"]["pattern"].as_str().unwrap();
    assert!(
        name_pattern.contains(&format!("{{0,{}}}", MAX_ORG_NAME_CHARS - 2)),
        "{name_pattern}"
    );
    assert!(OrgName::parse(&"a".repeat(MAX_ORG_NAME_CHARS)).is_ok());
    assert!(OrgName::parse(&"a".repeat(MAX_ORG_NAME_CHARS + 1)).is_err());
    assert_eq!(create["email"]["format"], "email");
    assert_eq!(create["password"]["minLength"], Password::MIN_CHARS);
    assert_eq!(create["password"]["maxLength"], Password::MAX_CHARS);
    // No shard has a region by default: only an absent or null region is valid.
    assert_eq!(create["region"]["enum"], serde_json::json!([null]));
    // An update must change something.
    assert_eq!(schemas["UpdateBody"]["anyOf"].as_array().unwrap().len(), 3);
    let query = &schemas["QueryBody"]["properties"];
    assert_eq!(query["limit"]["minimum"], 1);
    assert_eq!(query["limit"]["maximum"], 1000);
    assert_eq!(query["skip"]["maximum"], i64::MAX);
    let get = &public["paths"]["/data/{id}"]["get"]["parameters"][0]["schema"];
    assert_eq!(get["maxLength"], 128);
    assert_eq!(get["minLength"], 1);
    let value = schemas["Value"]["anyOf"].as_array().unwrap();
    assert!(value
        .iter()
        .any(|v| v["type"] == "integer" && v["maximum"] == i64::MAX && v["minimum"] == i64::MIN));
    let insert = &public["paths"]["/data"]["post"]["requestBody"]["content"]["application/json"]
        ["schema"]["oneOf"];
    assert_eq!(insert[1]["maxItems"], 1000);

    let ops = fetch(&gw, &gw.ops);
    let schemas = &ops["components"]["schemas"];
    let limits = &schemas["RateOverride"]["properties"];
    assert_eq!(limits["requests_per_minute"]["minimum"], 1);
    assert_eq!(limits["requests_per_hour"]["maximum"], u32::MAX);
    let top = &ops["paths"]["/ops/tenants/top"]["get"]["parameters"][0]["schema"];
    assert_eq!(
        (&top["minimum"], &top["maximum"]),
        (&1.into(), &1000.into())
    );
    let shard = &schemas["ShardConfig"];
    assert_eq!(shard["required"], serde_json::json!(["id", "kind"]));
    assert_eq!(shard["additionalProperties"], false);
    // A move targets one of the shards that take tenants.
    let to_shard = &schemas["StartMove"]["properties"]["to_shard"]["enum"];
    assert_eq!(
        to_shard,
        &serde_json::json!([crate::gateway::default_shard()])
    );
}

#[test]
fn literal_data_paths_are_not_document_ids() {
    // As the document says: `/data/query` and `/data/count` are POST-only routes, not
    // documents `query` and `count` (405 with Allow: POST, before authentication).
    let gw = TestGateway::start();
    for path in ["/data/query", "/data/count"] {
        let r = gw.client.get(format!("{}{path}", gw.base)).send().unwrap();
        assert_eq!(r.status(), 405, "{path}");
        assert_eq!(r.headers()["allow"], "POST", "{path}");
    }
}
