use crate::gateway::{assert_problem, Options, TestGateway};
use reqwest::Method;
use serde_json::{json, Value};

const TOKEN: &str = "operator-token-0123456789abcdef";

fn ops(
    gw: &TestGateway,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> reqwest::blocking::Response {
    let mut r = gw
        .client
        .request(method, format!("{}{path}", gw.ops))
        .bearer_auth(TOKEN);
    if let Some(b) = body {
        r = r.json(&b);
    }
    r.send().unwrap()
}

#[test]
fn operator_routes_need_the_operator_token() {
    let gw = TestGateway::start_with(Options {
        config: format!("[ops]\ntoken = \"{TOKEN}\"\n"),
        ..Default::default()
    });
    let jwt = gw.org_with_token("Ops Co", "opsco@example.com");
    for token in [None, Some("wrong"), Some(jwt.as_str())] {
        let mut r = gw.client.get(format!("{}/ops/shards", gw.ops));
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        assert_problem(r.send().unwrap(), 401, "unauthorized");
    }
    assert_eq!(ops(&gw, Method::GET, "/ops/shards", None).status(), 200);
    // with no token configured the routes are off
    let off = TestGateway::start();
    let r = off
        .client
        .get(format!("{}/ops/shards", off.ops))
        .bearer_auth("anything")
        .send()
        .unwrap();
    assert_problem(r, 403, "forbidden");
}

#[test]
fn shards_added_at_runtime_take_tenants_and_persist() {
    let mut gw = TestGateway::start_with(Options {
        config: format!("[ops]\ntoken = \"{TOKEN}\"\n"),
        ..Default::default()
    });
    // With a shared catalog an embedded shard would be a different file on every instance:
    // runtime shards are MongoDB shards there.
    let extra = if crate::gateway::on_mongodb() {
        let embedded = json!({"id": "extra", "kind": "embedded", "path": "shards/extra.redb"});
        let r = ops(&gw, Method::POST, "/ops/shards", Some(embedded));
        assert_problem(r, 400, "invalid_shard");
        let uri = crate::mongo_env::uri().unwrap();
        json!({"id": "extra", "kind": "mongodb", "uri": uri, "database_prefix": "rtx", "weight": 1000.0})
    } else {
        json!({"id": "extra", "kind": "embedded", "path": "shards/extra.redb", "weight": 1000.0})
    };
    let r = ops(&gw, Method::POST, "/ops/shards", Some(extra));
    assert_eq!(r.status(), 201);
    let r = ops(
        &gw,
        Method::POST,
        "/ops/shards",
        Some(json!({"id": "extra", "kind": "embedded", "path": "x.redb"})),
    );
    assert_problem(r, 409, "shard_exists");
    let r = ops(
        &gw,
        Method::POST,
        "/ops/shards",
        Some(json!({"id": "evil", "kind": "embedded", "path": "../../etc/x.redb"})),
    );
    assert_problem(r, 400, "invalid_shard");
    let r = ops(
        &gw,
        Method::POST,
        "/ops/shards",
        Some(json!({"id": "BAD ID", "kind": "embedded", "path": "x.redb"})),
    );
    assert_eq!(r.status(), 400);
    // with weight 1000 against 1, new orgs land on the new shard
    let mut on_extra = 0;
    for i in 0..10 {
        let created: Value = gw
            .create_org(
                &format!("Runtime {i}"),
                &format!("rt{i}@example.com"),
                "password123",
            )
            .json()
            .unwrap();
        on_extra += usize::from(created["placement"]["shard"] == "extra");
    }
    assert!(on_extra >= 8, "{on_extra}");
    gw.restart();
    let shards: Value = ops(&gw, Method::GET, "/ops/shards", None).json().unwrap();
    let ids: Vec<&str> = shards["shards"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap())
        .collect();
    let mut expected = vec!["extra", crate::gateway::default_shard()];
    expected.sort();
    assert_eq!(ids, expected);
    let t = gw
        .login("rt0@example.com", "password123")
        .json::<Value>()
        .unwrap()["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    let r = gw
        .req(Method::POST, "/data")
        .bearer_auth(&t)
        .json(&json!({"a": 1}))
        .send()
        .unwrap();
    assert_eq!(r.status(), 201);
}

#[test]
fn busiest_tenants_are_listed_without_metric_labels() {
    let gw = TestGateway::start_with(Options {
        config: format!("[ops]\ntoken = \"{TOKEN}\"\n"),
        ..Default::default()
    });
    let busy = gw.org_with_token("Busy", "busy@example.com");
    let quiet = gw.org_with_token("Quiet", "quiet@example.com");
    for _ in 0..12 {
        gw.req(Method::POST, "/data/count")
            .bearer_auth(&busy)
            .json(&json!({}))
            .send()
            .unwrap();
    }
    gw.req(Method::POST, "/data/count")
        .bearer_auth(&quiet)
        .json(&json!({}))
        .send()
        .unwrap();
    let top: Value = ops(&gw, Method::GET, "/ops/tenants/top?n=2", None)
        .json()
        .unwrap();
    let orgs = top["organizations"].as_array().unwrap();
    assert_eq!(orgs.len(), 2);
    assert_eq!(orgs[0]["organization_name"], "Busy");
    assert!(orgs[0]["requests"].as_u64().unwrap() >= 12);
    assert_eq!(orgs[1]["organization_name"], "Quiet");
    assert_problem(
        ops(&gw, Method::GET, "/ops/tenants/top?n=0", None),
        400,
        "invalid_query",
    );
    let metrics = gw
        .client
        .get(format!("{}/metrics", gw.ops))
        .send()
        .unwrap()
        .text()
        .unwrap();
    assert!(!metrics.contains(orgs[0]["organization_id"].as_str().unwrap()));
}

#[test]
fn operators_search_organizations_by_name_prefix_a_page_at_a_time() {
    let gw = TestGateway::start_with(Options {
        config: format!("[ops]\ntoken = \"{TOKEN}\"\n"),
        ..Default::default()
    });
    // Created out of order; the search answers in name order.
    let mut expected = Vec::new();
    for i in [7, 3, 11, 0, 9, 1, 5, 10, 2, 8, 4, 6] {
        let name = format!("Search Co {i:02}");
        let r = gw.create_org(&name, &format!("s{i}@search.example"), "password123");
        assert_eq!(r.status(), 201);
        expected.push(name);
    }
    expected.sort();
    for name in ["Searcher", "Other Co", "Sea"] {
        let r = gw.create_org(
            name,
            &format!("{}@other.example", name.replace(' ', "")),
            "password123",
        );
        assert_eq!(r.status(), 201);
    }
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let mut path = "/ops/orgs?prefix=SEARCH%20%20co&limit=5".to_owned();
        if let Some(c) = &cursor {
            path.push_str(&format!("&cursor={c}"));
        }
        let r = ops(&gw, Method::GET, &path, None);
        assert_eq!(r.status(), 200);
        let page: Value = r.json().unwrap();
        let orgs = page["organizations"].as_array().unwrap();
        assert!(orgs.len() <= 5);
        for o in orgs {
            seen.push(o["organization_name"].as_str().unwrap().to_owned());
            assert_eq!(o["organization_id"].as_str().unwrap().len(), 36);
            assert!(o["placement"]["collection"]
                .as_str()
                .unwrap()
                .starts_with("org_search_co_"));
            assert!(o["created_at"].is_string());
            assert!(o.as_object().unwrap().contains_key("size_bytes"));
        }
        pages += 1;
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    assert_eq!(seen, expected);
    assert_eq!(pages, 3);
    // No prefix: everyone, in name order.
    let all: Value = ops(&gw, Method::GET, "/ops/orgs", None).json().unwrap();
    let names: Vec<&str> = all["organizations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["organization_name"].as_str().unwrap())
        .collect();
    assert_eq!(names.len(), 15);
    assert_eq!(names[0], "Other Co");
    assert_eq!(names[1], "Sea");
    assert_eq!(names[14], "Searcher");
    assert_eq!(all["next_cursor"], Value::Null);
    let none: Value = ops(&gw, Method::GET, "/ops/orgs?prefix=zz", None)
        .json()
        .unwrap();
    assert_eq!(none, json!({"organizations": [], "next_cursor": null}));
    // Bad input.
    for (path, code) in [
        ("/ops/orgs?limit=0", "invalid_query"),
        ("/ops/orgs?limit=1001", "invalid_query"),
        ("/ops/orgs?limit=x", "invalid_query"),
        ("/ops/orgs?prefix=a%24", "validation_failed"),
        ("/ops/orgs?cursor=%%%", "invalid_cursor"),
        ("/ops/orgs?cursor=QUNNRQ", "invalid_cursor"),
        ("/ops/orgs?prefix=a&prefix=b", "invalid_query"),
    ] {
        assert_problem(ops(&gw, Method::GET, path, None), 400, code);
    }
    let r = gw
        .client
        .get(format!("{}/ops/orgs", gw.ops))
        .send()
        .unwrap();
    assert_problem(r, 401, "unauthorized");
}
