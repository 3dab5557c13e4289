use crate::gateway::{assert_problem, Options, TestGateway};
use reqwest::Method;
use serde_json::{json, Value};

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

#[test]
fn crud_round_trip() {
    let gw = TestGateway::start();
    let t = gw.org_with_token("Data Co", "data@example.com");
    let r = call(
        &gw,
        &t,
        Method::POST,
        "/data",
        Some(json!({"name": "widget", "qty": 3, "tags": ["a", "b"]})),
    );
    assert_eq!(r.status(), 201);
    let ids: Value = r.json().unwrap();
    let id = ids["inserted_ids"][0].as_str().unwrap().to_owned();
    assert_eq!(id.len(), 24, "ObjectId hex");
    let r = call(&gw, &t, Method::GET, &format!("/data/{id}"), None);
    assert_eq!(r.status(), 200);
    let doc: Value = r.json().unwrap();
    assert_eq!(
        doc,
        json!({"_id": id, "name": "widget", "qty": 3, "tags": ["a", "b"]})
    );

    let r = call(
        &gw,
        &t,
        Method::PATCH,
        &format!("/data/{id}"),
        Some(json!({"$inc": {"qty": 2}, "$set": {"color": "red"}})),
    );
    assert_eq!(r.status(), 200);
    let doc: Value = r.json().unwrap();
    assert_eq!(doc["qty"], 5);
    assert_eq!(doc["color"], "red");
    // merge patch: null removes
    let r = call(
        &gw,
        &t,
        Method::PATCH,
        &format!("/data/{id}"),
        Some(json!({"color": null, "size": "L"})),
    );
    let doc: Value = r.json().unwrap();
    assert!(doc.get("color").is_none());
    assert_eq!(doc["size"], "L");

    let r = call(
        &gw,
        &t,
        Method::POST,
        "/data/count",
        Some(json!({"filter": {"qty": {"$gte": 5}}})),
    );
    assert_eq!(r.json::<Value>().unwrap()["count"], 1);

    let r = call(&gw, &t, Method::DELETE, &format!("/data/{id}"), None);
    assert_eq!(r.status(), 200);
    assert_problem(
        call(&gw, &t, Method::GET, &format!("/data/{id}"), None),
        404,
        "document_not_found",
    );
    assert_problem(
        call(&gw, &t, Method::DELETE, &format!("/data/{id}"), None),
        404,
        "document_not_found",
    );
    assert_problem(
        call(
            &gw,
            &t,
            Method::PATCH,
            &format!("/data/{id}"),
            Some(json!({"$set": {"a": 1}})),
        ),
        404,
        "document_not_found",
    );
}

#[test]
fn client_ids_duplicates_and_bad_documents() {
    let gw = TestGateway::start();
    let t = gw.org_with_token("Ids Co", "ids@example.com");
    let r = call(
        &gw,
        &t,
        Method::POST,
        "/data",
        Some(json!({"_id": "sku-1", "v": 1})),
    );
    assert_eq!(r.json::<Value>().unwrap()["inserted_ids"], json!(["sku-1"]));
    assert_problem(
        call(
            &gw,
            &t,
            Method::POST,
            "/data",
            Some(json!({"_id": "sku-1"})),
        ),
        409,
        "duplicate_id",
    );
    // a failing batch inserts nothing
    let r = call(
        &gw,
        &t,
        Method::POST,
        "/data",
        Some(json!([{"_id": "new-1"}, {"_id": "sku-1"}])),
    );
    assert_problem(r, 409, "duplicate_id");
    // the same `_id` twice in one batch is the same conflict
    let r = call(
        &gw,
        &t,
        Method::POST,
        "/data",
        Some(json!([{"_id": "twice"}, {"_id": "twice"}])),
    );
    assert_problem(r, 409, "duplicate_id");
    assert_problem(
        call(&gw, &t, Method::GET, "/data/new-1", None),
        404,
        "document_not_found",
    );
    assert_problem(
        call(&gw, &t, Method::POST, "/data", Some(json!({"$where": "1"}))),
        400,
        "invalid_field_name",
    );
    assert_problem(
        call(
            &gw,
            &t,
            Method::POST,
            "/data",
            Some(json!({"a": {"b\u{0}c": 1}})),
        ),
        400,
        "invalid_field_name",
    );
    assert_problem(
        call(&gw, &t, Method::POST, "/data", Some(json!({"_id": 5}))),
        400,
        "invalid_id",
    );
    assert_problem(
        call(&gw, &t, Method::POST, "/data", Some(json!(42))),
        400,
        "invalid_document",
    );
    assert_problem(
        call(&gw, &t, Method::POST, "/data", Some(json!([]))),
        400,
        "invalid_batch",
    );
    assert_problem(
        call(
            &gw,
            &t,
            Method::PATCH,
            "/data/sku-1",
            Some(json!({"$rename": {"v": "w"}})),
        ),
        400,
        "unsupported_operator",
    );
    assert_problem(
        call(
            &gw,
            &t,
            Method::PATCH,
            "/data/sku-1",
            Some(json!({"$inc": {"v": "x"}})),
        ),
        400,
        "invalid_update",
    );
}

#[test]
fn queries_validate_filters_and_page_with_cursors() {
    let gw = TestGateway::start();
    let t = gw.org_with_token("Query Co", "query@example.com");
    let docs: Vec<Value> = (0..25)
        .map(|i| json!({"_id": format!("d{i:02}"), "n": i, "even": i % 2 == 0}))
        .collect();
    assert_eq!(
        call(&gw, &t, Method::POST, "/data", Some(Value::Array(docs))).status(),
        201
    );
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut body = json!({"filter": {"even": true}, "sort": {"n": -1}, "projection": {"n": 1}, "limit": 5});
        if let Some(c) = &cursor {
            body["cursor"] = json!(c);
        }
        let page: Value = call(&gw, &t, Method::POST, "/data/query", Some(body))
            .json()
            .unwrap();
        for d in page["documents"].as_array().unwrap() {
            assert!(d.get("even").is_none(), "projection applied");
            seen.push(d["n"].as_i64().unwrap());
        }
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    assert_eq!(
        seen,
        (0..25).rev().filter(|i| i % 2 == 0).collect::<Vec<i64>>()
    );

    let bad = |filter: Value, code: &str| {
        let r = call(
            &gw,
            &t,
            Method::POST,
            "/data/query",
            Some(json!({"filter": filter})),
        );
        let body = assert_problem(r, 400, code);
        body["detail"].as_str().unwrap().to_owned()
    };
    let detail = bad(
        json!({"a.b": {"$where": "sleep(1)"}}),
        "unsupported_operator",
    );
    assert!(
        detail.contains("$where") && detail.contains("a.b"),
        "{detail}"
    );
    bad(json!({"$expr": {"$eq": [1, 1]}}), "unsupported_operator");
    bad(json!({"a": {"$regex": ".*"}}), "unsupported_operator");
    bad(json!({"a": {"$function": {}}}), "unsupported_operator");
    let deep = (0..20).fold(json!({"x": 1}), |acc, _| json!({"$and": [acc]}));
    bad(deep, "filter_too_deep");
    let many: Vec<i32> = (0..1001).collect();
    bad(json!({"a": {"$in": many}}), "in_list_too_long");
    let r = call(
        &gw,
        &t,
        Method::POST,
        "/data/query",
        Some(json!({"limit": 1001})),
    );
    assert_problem(r, 400, "invalid_limit");
    let r = call(
        &gw,
        &t,
        Method::POST,
        "/data/query",
        Some(json!({"cursor": "garbage"})),
    );
    assert_problem(r, 400, "invalid_cursor");
    let r = call(
        &gw,
        &t,
        Method::POST,
        "/data/query",
        Some(json!({"bogus": 1})),
    );
    assert_problem(r, 400, "invalid_body");
}

#[test]
fn bulk_insert_of_a_thousand_documents_in_one_request() {
    let gw = TestGateway::start();
    let t = gw.org_with_token("Bulk Co", "bulk@example.com");
    let docs: Vec<Value> = (0..1000)
        .map(|i| json!({"i": i, "payload": "x".repeat(100)}))
        .collect();
    let r = call(&gw, &t, Method::POST, "/data", Some(Value::Array(docs)));
    assert_eq!(r.status(), 201);
    let ids: Value = r.json().unwrap();
    assert_eq!(ids["inserted_ids"].as_array().unwrap().len(), 1000);
    let r = call(&gw, &t, Method::POST, "/data/count", Some(json!({})));
    assert_eq!(r.json::<Value>().unwrap()["count"], 1000);
    let too_many: Vec<Value> = (0..1001).map(|i| json!({"i": i})).collect();
    assert_problem(
        call(&gw, &t, Method::POST, "/data", Some(Value::Array(too_many))),
        400,
        "invalid_batch",
    );
}

#[test]
fn rename_keeps_all_ten_thousand_documents() {
    let gw = TestGateway::start_with(Options {
        config: "[limits]\nrequests_per_minute = 100000\nrequests_per_hour = 100000\n".into(),
        ..Default::default()
    });
    let t = gw.org_with_token("Big Tenant", "big@example.com");
    for chunk in 0..10 {
        let docs: Vec<Value> = (0..1000)
            .map(|i| json!({"_id": format!("doc-{chunk}-{i}"), "chunk": chunk, "i": i}))
            .collect();
        assert_eq!(
            call(&gw, &t, Method::POST, "/data", Some(Value::Array(docs))).status(),
            201
        );
    }
    let r = call(
        &gw,
        &t,
        Method::PUT,
        "/org/update",
        Some(json!({"organization_name": "Big Tenant", "new_organization_name": "Bigger Tenant"})),
    );
    assert_eq!(r.status(), 200, "{}", r.text().unwrap());
    let r = call(&gw, &t, Method::POST, "/data/count", Some(json!({})));
    assert_eq!(r.json::<Value>().unwrap()["count"], 10_000);
    for probe in ["doc-0-0", "doc-9-999", "doc-5-500"] {
        assert_eq!(
            call(&gw, &t, Method::GET, &format!("/data/{probe}"), None).status(),
            200
        );
    }
    let org: Value = gw
        .req(Method::GET, "/org/get?organization_name=Bigger%20Tenant")
        .bearer_auth(&t)
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(org["placement"]["collection"], "org_bigger_tenant");
}

#[test]
fn data_routes_need_a_token() {
    let gw = TestGateway::start();
    let r = gw
        .req(Method::POST, "/data")
        .json(&json!({"a": 1}))
        .send()
        .unwrap();
    assert_problem(r, 401, "unauthorized");
    let r = gw
        .req(Method::GET, "/data/x")
        .bearer_auth("nope")
        .send()
        .unwrap();
    assert_problem(r, 401, "unauthorized");
}

#[test]
fn concurrent_patches_of_one_document_all_apply() {
    let gw = TestGateway::start_with(Options {
        config: "[limits]\nrequests_per_minute = 100000\nrequests_per_hour = 1000000\n".into(),
        ..Default::default()
    });
    let t = gw.org_with_token("Counter Co", "counter@example.com");
    let r = call(
        &gw,
        &t,
        Method::POST,
        "/data",
        Some(json!({"_id": "hits", "n": 0})),
    );
    assert_eq!(r.status(), 201);
    std::thread::scope(|s| {
        for _ in 0..6 {
            s.spawn(|| {
                for _ in 0..10 {
                    let r = call(
                        &gw,
                        &t,
                        Method::PATCH,
                        "/data/hits",
                        Some(json!({"$inc": {"n": 1}})),
                    );
                    assert_eq!(r.status(), 200);
                }
            });
        }
    });
    let doc: Value = call(&gw, &t, Method::GET, "/data/hits", None)
        .json()
        .unwrap();
    assert_eq!(doc["n"], 60);
}

/// Small documents are read on the worker, large ones decoded off it: both read back whole.
#[test]
fn small_and_large_documents_read_back_whole() {
    let gw = TestGateway::start();
    let t = gw.org_with_token("Sizes Co", "sizes@example.com");
    let large = "x".repeat(200 * 1024);
    for (id, body) in [
        ("small", json!({"_id": "small", "v": 1})),
        ("large", json!({"_id": "large", "v": large})),
    ] {
        let r = gw
            .req(Method::POST, "/data")
            .bearer_auth(&t)
            .json(&body)
            .send()
            .unwrap();
        assert_eq!(r.status(), 201);
        let got: Value = gw
            .req(Method::GET, &format!("/data/{id}"))
            .bearer_auth(&t)
            .send()
            .unwrap()
            .json()
            .unwrap();
        assert_eq!(got, body);
    }
}
