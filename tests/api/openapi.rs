use crate::gateway::TestGateway;
use org_gateway::api::routes::ALL;
use serde_json::Value;
use std::collections::BTreeSet;

#[test]
fn openapi_document_lists_exactly_the_routes_served() {
    let gw = TestGateway::start();
    let r = gw
        .client
        .get(format!("{}/openapi.json", gw.base))
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    let doc: Value = r.json().unwrap();
    assert!(
        doc["openapi"].as_str().unwrap().starts_with("3.1"),
        "{}",
        doc["openapi"]
    );
    let mut documented = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in ["get", "put", "post", "delete", "patch"] {
            if let Some(op) = item.get(method) {
                documented.insert((method.to_uppercase(), path.clone()));
                assert!(op["responses"].as_object().is_some_and(|r| !r.is_empty()));
            }
        }
    }
    let served: BTreeSet<(String, String)> = ALL
        .iter()
        .map(|(_, m, p)| (m.to_string(), p.to_string()))
        .collect();
    assert_eq!(documented, served);
    // problem+json errors and the request/response schemas are described
    let schemas = doc["components"]["schemas"].as_object().unwrap();
    for name in [
        "ProblemBody",
        "OrgView",
        "CreateBody",
        "LoginReply",
        "QueryBody",
    ] {
        assert!(schemas.contains_key(name), "missing schema {name}");
    }
    // every route the table lists is actually answered (not 404 route_not_found)
    for (listener, method, template) in ALL {
        let base = match listener {
            org_gateway::api::routes::Listener::Public => &gw.base,
            org_gateway::api::routes::Listener::Ops => &gw.ops,
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
