//! Tenant indexes over HTTP: declaration, listing, dropping, unique keys and explain, on the
//! backend the suite runs on (embedded, or MongoDB with `TEST_ON_MONGODB=1`).

use crate::gateway::{assert_problem, on_mongodb, Options, TestGateway};
use reqwest::Method;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

fn call(
    gw: &TestGateway,
    token: &str,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> reqwest::blocking::Response {
    let mut r = gw.req(method, path).bearer_auth(token);
    if let Some(b) = body {
        r = r.json(&b);
    }
    r.send().unwrap()
}

fn names(gw: &TestGateway, t: &str) -> Vec<String> {
    let r = call(gw, t, Method::GET, "/data/indexes", None);
    assert_eq!(r.status(), 200);
    let body: Value = r.json().unwrap();
    body["indexes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["name"].as_str().unwrap().to_owned())
        .collect()
}

/// Waits until the named index is `ready`.
fn wait_ready(gw: &TestGateway, t: &str, name: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let body: Value = call(gw, t, Method::GET, "/data/indexes", None)
            .json()
            .unwrap();
        let state = body["indexes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|i| i["name"] == name)
            .map(|i| i["state"].clone());
        if state == Some(json!("ready")) {
            return;
        }
        assert!(Instant::now() < deadline, "{name} not ready: {body}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn insert(gw: &TestGateway, t: &str, docs: Value) -> reqwest::blocking::Response {
    call(gw, t, Method::POST, "/data", Some(docs))
}

#[test]
fn indexes_are_declared_listed_and_dropped() {
    let gw = TestGateway::start();
    let t = gw.org_with_token("Index Co", "index@example.com");
    // A fresh tenant lists its `_id` index.
    let r = call(&gw, &t, Method::GET, "/data/indexes", None);
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.json::<Value>().unwrap(),
        json!({"indexes": [{"name": "_id_", "keys": {"_id": 1}, "unique": true, "state": "ready"}]})
    );
    let docs: Vec<Value> = (0..50)
        .map(|i| json!({"sku": format!("S-{i}"), "qty": i % 7, "meta": {"w": i}}))
        .collect();
    assert_eq!(insert(&gw, &t, json!(docs)).status(), 201);

    let r = call(
        &gw,
        &t,
        Method::POST,
        "/data/indexes",
        Some(json!({"keys": {"sku": 1}})),
    );
    assert_eq!(r.status(), 201);
    let body: Value = r.json().unwrap();
    assert_eq!(body["name"], "sku_1");
    assert_eq!(body["keys"], json!({"sku": 1}));
    assert_eq!(body["unique"], false);
    assert!(
        body["state"] == "ready" || body["state"] == "building",
        "{body}"
    );
    wait_ready(&gw, &t, "sku_1");
    let r = call(
        &gw,
        &t,
        Method::POST,
        "/data/indexes",
        Some(json!({"keys": {"qty": -1, "meta.w": 1}, "name": "by_qty"})),
    );
    assert_eq!(r.status(), 201);
    wait_ready(&gw, &t, "by_qty");
    assert_eq!(names(&gw, &t), ["_id_", "by_qty", "sku_1"]);
    let listed: Value = call(&gw, &t, Method::GET, "/data/indexes", None)
        .json()
        .unwrap();
    assert_eq!(
        listed["indexes"][1]["keys"].to_string(),
        r#"{"qty":-1,"meta.w":1}"#,
        "key order is kept"
    );

    // The same declaration again is accepted; the name or the keys taken otherwise is 409.
    let again = call(
        &gw,
        &t,
        Method::POST,
        "/data/indexes",
        Some(json!({"keys": {"sku": 1}})),
    );
    assert_eq!(again.status(), 201);
    assert_problem(
        call(
            &gw,
            &t,
            Method::POST,
            "/data/indexes",
            Some(json!({"keys": {"sku": 1}, "unique": true})),
        ),
        409,
        "index_conflict",
    );
    assert_problem(
        call(
            &gw,
            &t,
            Method::POST,
            "/data/indexes",
            Some(json!({"keys": {"sku": 1}, "name": "another"})),
        ),
        409,
        "index_conflict",
    );

    // Invalid declarations are 400 `invalid_index`; an unknown field is `invalid_body`.
    for bad in [
        json!({"keys": {}}),
        json!({"keys": {"a": 2}}),
        json!({"keys": {"$a": 1}}),
        json!({"keys": {"a..b": 1}}),
        json!({"keys": {"a.$b": 1}}),
        json!({"keys": [["a", 1]]}),
        json!({"keys": {"a": 1, "b": 1, "c": 1, "d": 1, "e": 1, "f": 1, "g": 1, "h": 1, "i": 1}}),
        json!({"keys": {"a": 1}, "name": ""}),
        json!({"keys": {"a": 1}, "name": "a/b"}),
        json!({"keys": {"a": 1}, "name": "$a"}),
        json!({"keys": {"a": 1}, "name": "n".repeat(129)}),
        json!({"keys": {"a": 1}, "name": "_id_"}),
        json!({"keys": {"_id": 1}}),
    ] {
        let r = call(&gw, &t, Method::POST, "/data/indexes", Some(bad.clone()));
        assert_problem(r, 400, "invalid_index");
    }
    assert_problem(
        call(
            &gw,
            &t,
            Method::POST,
            "/data/indexes",
            Some(json!({"keys": {"a": 1}, "sparse": true})),
        ),
        400,
        "invalid_body",
    );

    // Without a token: 401 on every index route.
    for (method, path) in [
        (Method::GET, "/data/indexes"),
        (Method::POST, "/data/indexes"),
        (Method::DELETE, "/data/indexes/sku_1"),
    ] {
        let r = gw.req(method, path).send().unwrap();
        assert_eq!(r.status(), 401, "{path}");
    }

    let r = call(&gw, &t, Method::DELETE, "/data/indexes/sku_1", None);
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.json::<Value>().unwrap(),
        json!({"dropped": true, "name": "sku_1"})
    );
    assert_problem(
        call(&gw, &t, Method::DELETE, "/data/indexes/sku_1", None),
        404,
        "index_not_found",
    );
    assert_problem(
        call(&gw, &t, Method::DELETE, "/data/indexes/_id_", None),
        400,
        "invalid_index",
    );
    assert_eq!(names(&gw, &t), ["_id_", "by_qty"]);
    // Another tenant sees none of these.
    let other = gw.org_with_token("Other Index Co", "other-index@example.com");
    assert_eq!(names(&gw, &other), ["_id_"]);
    assert_problem(
        call(&gw, &other, Method::DELETE, "/data/indexes/by_qty", None),
        404,
        "index_not_found",
    );
}

#[test]
fn unique_indexes_refuse_duplicate_keys() {
    let gw = TestGateway::start();
    let t = gw.org_with_token("Unique Co", "unique@example.com");
    assert_eq!(
        insert(
            &gw,
            &t,
            json!([{"_id": "a", "sku": "S-1"}, {"_id": "b", "sku": "S-2"}, {"_id": "c", "sku": "S-2"}])
        )
        .status(),
        201
    );
    // Existing documents that share a key: refused, naming a duplicate key; nothing declared.
    let body = assert_problem(
        call(
            &gw,
            &t,
            Method::POST,
            "/data/indexes",
            Some(json!({"keys": {"sku": 1}, "unique": true, "name": "sku_u"})),
        ),
        409,
        "duplicate_key",
    );
    assert!(body["detail"].as_str().unwrap().contains("sku_u"), "{body}");
    assert!(body["detail"].as_str().unwrap().contains("S-2"), "{body}");
    assert_eq!(names(&gw, &t), ["_id_"]);
    assert_eq!(call(&gw, &t, Method::DELETE, "/data/c", None).status(), 200);
    let r = call(
        &gw,
        &t,
        Method::POST,
        "/data/indexes",
        Some(json!({"keys": {"sku": 1}, "unique": true, "name": "sku_u"})),
    );
    assert_eq!(r.status(), 201);
    wait_ready(&gw, &t, "sku_u");
    let listed: Value = call(&gw, &t, Method::GET, "/data/indexes", None)
        .json()
        .unwrap();
    assert_eq!(listed["indexes"][1]["unique"], true);

    // Inserts, batches and updates that would duplicate a key: 409 naming the index.
    let body = assert_problem(insert(&gw, &t, json!({"sku": "S-1"})), 409, "duplicate_key");
    assert!(body["detail"].as_str().unwrap().contains("sku_u"), "{body}");
    assert_problem(
        insert(
            &gw,
            &t,
            json!([{"_id": "x", "sku": "S-7"}, {"_id": "y", "sku": "S-8"}, {"_id": "z", "sku": "S-2"}]),
        ),
        409,
        "duplicate_key",
    );
    let count = call(&gw, &t, Method::POST, "/data/count", Some(json!({})));
    assert_eq!(count.json::<Value>().unwrap()["count"], 2, "all or nothing");
    assert_problem(
        call(
            &gw,
            &t,
            Method::PATCH,
            "/data/b",
            Some(json!({"$set": {"sku": "S-1"}})),
        ),
        409,
        "duplicate_key",
    );
    let b: Value = call(&gw, &t, Method::GET, "/data/b", None).json().unwrap();
    assert_eq!(b["sku"], "S-2");
    // A key freed by a delete can be taken again.
    assert_eq!(call(&gw, &t, Method::DELETE, "/data/a", None).status(), 200);
    assert_eq!(insert(&gw, &t, json!({"sku": "S-1"})).status(), 201);
    // Dropping the index lifts the rule.
    assert_eq!(
        call(&gw, &t, Method::DELETE, "/data/indexes/sku_u", None).status(),
        200
    );
    assert_eq!(insert(&gw, &t, json!({"sku": "S-1"})).status(), 201);
}

#[test]
fn queries_say_which_index_answered_them() {
    let gw = TestGateway::start();
    let t = gw.org_with_token("Explain Co", "explain@example.com");
    let docs: Vec<Value> = (0..200)
        .map(|i| json!({"_id": format!("e{i:03}"), "sku": format!("S-{}", i % 40), "qty": i}))
        .collect();
    assert_eq!(insert(&gw, &t, json!(docs)).status(), 201);
    let query = json!({"filter": {"sku": "S-7"}, "sort": {"qty": -1}, "explain": true});
    let scan: Value = call(&gw, &t, Method::POST, "/data/query", Some(query.clone()))
        .json()
        .unwrap();
    assert_eq!(scan["explain"]["index"], Value::Null, "{scan}");
    let r = call(
        &gw,
        &t,
        Method::POST,
        "/data/indexes",
        Some(json!({"keys": {"sku": 1, "qty": 1}})),
    );
    assert_eq!(r.status(), 201);
    wait_ready(&gw, &t, "sku_1_qty_1");
    let indexed: Value = call(&gw, &t, Method::POST, "/data/query", Some(query))
        .json()
        .unwrap();
    assert_eq!(indexed["documents"], scan["documents"]);
    let ids: Vec<&str> = indexed["documents"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["e167", "e127", "e087", "e047", "e007"]);
    if !on_mongodb() {
        // The embedded store reads the five entries of the key, backwards, and nothing else
        // (a MongoDB server reports its own plan, if it supports explain at all).
        assert_eq!(
            indexed["explain"],
            json!({"index": "sku_1_qty_1", "keys_examined": 5, "docs_examined": 5})
        );
        let full: Value = call(
            &gw,
            &t,
            Method::POST,
            "/data/query",
            Some(json!({"filter": {"qty": {"$gte": 0}}, "explain": true})),
        )
        .json()
        .unwrap();
        assert_eq!(full["explain"]["index"], Value::Null);
        // `_id` order stops once the page (and one more, for the cursor) is full.
        assert_eq!(full["explain"]["docs_examined"], 101);
    }
    // Without `explain`, replies carry no explanation.
    let plain: Value = call(
        &gw,
        &t,
        Method::POST,
        "/data/query",
        Some(json!({"filter": {"sku": "S-7"}})),
    )
    .json()
    .unwrap();
    assert!(plain.get("explain").is_none());
}

#[test]
fn documents_named_like_routes_are_reached_through_query() {
    let gw = TestGateway::start();
    let t = gw.org_with_token("Route Names Co", "route-names@example.com");
    assert_eq!(
        insert(
            &gw,
            &t,
            json!([{"_id": "indexes", "v": 1}, {"_id": "query", "v": 2}])
        )
        .status(),
        201
    );
    // `/data/indexes` is the index route, not the document.
    let listed: Value = call(&gw, &t, Method::GET, "/data/indexes", None)
        .json()
        .unwrap();
    assert!(listed["indexes"].is_array(), "{listed}");
    let found: Value = call(
        &gw,
        &t,
        Method::POST,
        "/data/query",
        Some(json!({"filter": {"_id": {"$in": ["indexes", "query"]}}})),
    )
    .json()
    .unwrap();
    assert_eq!(
        found["documents"],
        json!([{"_id": "indexes", "v": 1}, {"_id": "query", "v": 2}])
    );
    let r = call(
        &gw,
        &t,
        Method::PATCH,
        "/data/indexes",
        Some(json!({"v": 3})),
    );
    assert_eq!(r.status(), 405);
    assert_eq!(r.headers()["allow"], "GET, POST, HEAD");
}

#[test]
fn index_count_is_bounded_per_collection() {
    let gw = TestGateway::start_with(Options {
        config: "[data]\nmax_indexes_per_collection = 2\n".into(),
        ..Default::default()
    });
    let t = gw.org_with_token("Few Indexes Co", "few-indexes@example.com");
    assert_eq!(insert(&gw, &t, json!({"a": 1})).status(), 201);
    for field in ["a", "b"] {
        let r = call(
            &gw,
            &t,
            Method::POST,
            "/data/indexes",
            Some(json!({"keys": {field: 1}})),
        );
        assert_eq!(r.status(), 201);
    }
    assert_problem(
        call(
            &gw,
            &t,
            Method::POST,
            "/data/indexes",
            Some(json!({"keys": {"c": 1}})),
        ),
        409,
        "too_many_indexes",
    );
}

/// Declares a unique and a compound index on a seeded tenant, moves it to `to`, and checks
/// that the target enforces and uses them.
fn indexes_follow_a_move(shards: &str, extra: &str, to: &str, tag: &str) {
    use crate::moves::{config, create_org, ops, placement, wait_move};
    let gw = TestGateway::start_with(Options {
        config: config(shards, extra),
        ..Default::default()
    });
    let name = format!("Index Mover {tag}");
    let token = create_org(&gw, &name, &format!("index-mover-{tag}@example.com"));
    let (from, _) = placement(&gw, &name);
    let to = if from == to {
        // Placement chose the intended target: go the other way.
        if to == "a" {
            "b"
        } else {
            "a"
        }
    } else {
        to
    };
    let docs: Vec<Value> = (0..300)
        .map(|i| json!({"_id": format!("m{i:03}"), "sku": format!("S-{i}"), "qty": i % 10}))
        .collect();
    assert_eq!(insert(&gw, &token, json!(docs)).status(), 201);
    for body in [
        json!({"keys": {"sku": 1}, "unique": true}),
        json!({"keys": {"qty": -1, "sku": 1}, "name": "by_qty"}),
    ] {
        assert_eq!(
            call(&gw, &token, Method::POST, "/data/indexes", Some(body)).status(),
            201
        );
    }
    wait_ready(&gw, &token, "sku_1");
    wait_ready(&gw, &token, "by_qty");
    let before: Value = call(&gw, &token, Method::GET, "/data/indexes", None)
        .json()
        .unwrap();
    let (s, mv) = ops(
        &gw,
        Method::POST,
        "/ops/moves",
        Some(json!({"organization_name": name, "to_shard": to})),
    );
    assert_eq!(s, 202, "{mv}");
    let done = wait_move(
        &gw,
        mv["move_id"].as_str().unwrap(),
        Duration::from_secs(120),
    );
    assert_eq!(done["state"], "done", "{done}");
    assert_eq!(placement(&gw, &name).0, to);
    let after: Value = call(&gw, &token, Method::GET, "/data/indexes", None)
        .json()
        .unwrap();
    assert_eq!(after, before, "the target has the source's indexes, ready");
    assert_problem(
        insert(&gw, &token, json!({"sku": "S-7"})),
        409,
        "duplicate_key",
    );
    let page: Value = call(
        &gw,
        &token,
        Method::POST,
        "/data/query",
        Some(json!({"filter": {"qty": 3}, "sort": {"sku": 1}, "limit": 2, "explain": true})),
    )
    .json()
    .unwrap();
    let ids: Vec<&str> = page["documents"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["m103", "m113"], "string order");
    if !shards.contains("mongodb") {
        assert_eq!(page["explain"]["index"], "by_qty", "{page}");
    }
}

#[test]
fn indexes_follow_a_move_between_embedded_shards() {
    indexes_follow_a_move(&crate::moves::two_embedded(), "", "b", "ee");
}

#[test]
fn indexes_follow_a_move_to_mongodb() {
    let Some(uri) = crate::mongo_env::uri() else {
        return;
    };
    let prefix = format!("idxmv{:x}", std::process::id() % 4096);
    let shards = format!(
        "[[shards]]\nid = \"a\"\nkind = \"embedded\"\npath = \"shards/a.redb\"\n\
         [[shards]]\nid = \"b\"\nkind = \"mongodb\"\nuri = \"{uri}\"\ndatabase_prefix = \"{prefix}\"\n"
    );
    indexes_follow_a_move(&shards, crate::moves::writer_moves(true), "b", "em");
    let rt = tokio::runtime::Runtime::new().unwrap();
    for n in 1..=2 {
        rt.block_on(crate::mongo_env::drop_db(&uri, &format!("{prefix}_{n}")));
    }
}

#[test]
fn a_rename_keeps_the_indexes() {
    let gw = TestGateway::start();
    let t = gw.org_with_token("Renamed Index Co", "renamed-index@example.com");
    assert_eq!(
        insert(&gw, &t, json!([{"sku": "A"}, {"sku": "B"}])).status(),
        201
    );
    let r = call(
        &gw,
        &t,
        Method::POST,
        "/data/indexes",
        Some(json!({"keys": {"sku": 1}, "unique": true})),
    );
    assert_eq!(r.status(), 201);
    wait_ready(&gw, &t, "sku_1");
    let r = gw
        .req(Method::PUT, "/org/update")
        .bearer_auth(&t)
        .json(&json!({"organization_name": "Renamed Index Co", "new_organization_name": "Index Renamed Co"}))
        .send()
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().unwrap());
    assert_eq!(names(&gw, &t), ["_id_", "sku_1"]);
    assert_problem(insert(&gw, &t, json!({"sku": "A"})), 409, "duplicate_key");
}
