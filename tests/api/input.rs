//! Hard edges on request input: bodies crafted to cost the most CPU per byte, non-object
//! bodies, integers out of range, and authentication before validation.

use crate::gateway::{assert_problem, Options, TestGateway};
use reqwest::Method;
use serde_json::{json, Value};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The default `max_body_bytes`.
const MAX_BODY: usize = 1024 * 1024;

/// A 400 KiB field name: long keys are what made per-element path strings quadratic.
fn long_key() -> String {
    "k".repeat(400 * 1024)
}

/// `[x,x,...]` with as many items as fit in `bytes`.
fn array_of(item: &str, bytes: usize) -> String {
    let n = bytes / (item.len() + 1);
    let mut s = String::with_capacity(bytes + 2);
    s.push('[');
    for i in 0..n {
        if i > 0 {
            s.push(',');
        }
        s.push_str(item);
    }
    s.push(']');
    s
}

/// `{"<400 KiB key>": <value>}` as raw JSON.
fn under_long_key(value: &str) -> String {
    format!("{{\"{}\":{value}}}", long_key())
}

/// Room left in a 1 MiB body after a 400 KiB key and some framing.
fn room() -> usize {
    MAX_BODY - 400 * 1024 - 4096
}

fn nested(open: &str, close: &str, depth: usize, inner: &str) -> String {
    format!("{}{inner}{}", open.repeat(depth), close.repeat(depth))
}

/// Pings `/healthz` until stopped; keeps the slowest answer.
struct Prober {
    stop: Arc<AtomicBool>,
    slowest: Arc<Mutex<Duration>>,
    handle: Option<std::thread::JoinHandle<usize>>,
}

impl Prober {
    fn start(base: &str) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let slowest = Arc::new(Mutex::new(Duration::ZERO));
        let (s, w, url) = (stop.clone(), slowest.clone(), format!("{base}/healthz"));
        let handle = std::thread::spawn(move || {
            // The timeout only stops a hang from hanging the test.
            let client = reqwest::blocking::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .unwrap();
            let mut n = 0;
            while !s.load(Ordering::Relaxed) {
                let t = Instant::now();
                let r = client.get(&url).send().expect("healthz answers");
                assert_eq!(r.status(), 200);
                let took = t.elapsed();
                let mut slowest = w.lock().unwrap();
                *slowest = (*slowest).max(took);
                n += 1;
                std::thread::sleep(Duration::from_millis(2));
            }
            n
        });
        Prober {
            stop,
            slowest,
            handle: Some(handle),
        }
    }

    /// Stops; the number of probes answered and the slowest one.
    fn finish(mut self) -> (usize, Duration) {
        self.stop.store(true, Ordering::Relaxed);
        let n = self.handle.take().unwrap().join().expect("prober ok");
        let slowest = *self.slowest.lock().unwrap();
        (n, slowest)
    }
}

/// Sends a raw body; returns (status, body, time to the answer).
fn send(
    gw: &TestGateway,
    token: &str,
    method: Method,
    path: &str,
    body: String,
) -> (u16, Value, Duration) {
    let t = Instant::now();
    let r = gw
        .req(method, path)
        .bearer_auth(token)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .expect("answered");
    let took = t.elapsed();
    let status = r.status().as_u16();
    let body: Value = r.json().unwrap_or(Value::Null);
    (status, body, took)
}

#[test]
fn crafted_bodies_are_answered_without_stalling_the_gateway() {
    let gw = TestGateway::start();
    let t = gw.org_with_token("Crafted Co", "crafted@example.com");
    // A document for filters and updates to meet.
    let (s, _, _) = send(
        &gw,
        &t,
        Method::POST,
        "/data",
        r#"{"_id": "d1", "a": 1}"#.into(),
    );
    assert_eq!(s, 201);

    let key = long_key();
    let ints = array_of("1", room());
    let empties = array_of("[]", room());
    let objects = array_of("{}", room());
    let mut overflow = array_of("1", room() - 32);
    overflow.insert_str(overflow.len() - 1, ",18446744073709551615");
    let many_keys = {
        let fields: Vec<String> = (0..70_000).map(|i| format!("\"f{i}\":0")).collect();
        format!("{{{}}}", fields.join(","))
    };
    let dotted = vec!["a"; 300_000].join(".");
    let long_dotted = [key.as_str(); 2].join(".");
    let patch_leaves = {
        let fields: Vec<String> = (0..50_000).map(|i| format!("\"f{i}\":1")).collect();
        format!("{{{}}}", fields.join(","))
    };
    let cases: Vec<(&str, Method, &str, String, &[u16])> = vec![
        // Long key x many items, in a document.
        (
            "doc: long key x 300k ints",
            Method::POST,
            "/data",
            under_long_key(&ints),
            &[201, 400],
        ),
        (
            "doc: long key x empty arrays",
            Method::POST,
            "/data",
            under_long_key(&empties),
            &[201, 400],
        ),
        (
            "doc: long key x empty objects",
            Method::POST,
            "/data",
            under_long_key(&objects),
            &[201, 400],
        ),
        (
            "doc: long key x ints, one out of range",
            Method::POST,
            "/data",
            under_long_key(&overflow),
            &[400],
        ),
        (
            "batch: 300k ints",
            Method::POST,
            "/data",
            array_of("1", MAX_BODY - 16),
            &[400],
        ),
        // ... in a filter.
        (
            "filter: long key x 300k ints",
            Method::POST,
            "/data/query",
            format!("{{\"filter\":{}}}", under_long_key(&ints)),
            &[200],
        ),
        (
            "filter: long key x empty arrays",
            Method::POST,
            "/data/count",
            format!("{{\"filter\":{}}}", under_long_key(&empties)),
            &[200],
        ),
        (
            "filter: $in of 300k",
            Method::POST,
            "/data/count",
            format!(
                "{{\"filter\":{}}}",
                under_long_key(&format!("{{\"$in\":{ints}}}"))
            ),
            &[400],
        ),
        (
            "filter: $and of 150k",
            Method::POST,
            "/data/count",
            format!(
                "{{\"filter\":{{\"$and\":{}}}}}",
                array_of("{}", MAX_BODY - 64)
            ),
            &[400],
        ),
        // ... in an update.
        (
            "patch: $set long key x 300k ints",
            Method::PATCH,
            "/data/d1",
            format!("{{\"$set\":{}}}", under_long_key(&ints)),
            &[200, 400],
        ),
        (
            "patch: merge long key x 50k leaves",
            Method::PATCH,
            "/data/d1",
            under_long_key(&patch_leaves),
            &[400],
        ),
        // Deep nesting: past serde_json's recursion limit, and just inside it.
        (
            "doc: 500k nested arrays",
            Method::POST,
            "/data",
            nested("[", "]", MAX_BODY / 2 - 16, ""),
            &[400],
        ),
        (
            "doc: 100k nested objects",
            Method::POST,
            "/data",
            nested("{\"a\":", "}", 100_000, "1"),
            &[400],
        ),
        (
            "doc: 120 nested objects",
            Method::POST,
            "/data",
            nested("{\"a\":", "}", 120, "1"),
            &[400],
        ),
        (
            "filter: 120 nested $and",
            Method::POST,
            "/data/query",
            format!("{{\"filter\":{}}}", nested("{\"$and\":[", "]}", 60, "{}")),
            &[400],
        ),
        (
            "patch: 120 nested objects",
            Method::PATCH,
            "/data/d1",
            nested("{\"a\":", "}", 120, "1"),
            &[400],
        ),
        // Many small keys.
        (
            "doc: 70k keys",
            Method::POST,
            "/data",
            many_keys.clone(),
            &[201],
        ),
        (
            "filter: 70k keys",
            Method::POST,
            "/data/count",
            format!("{{\"filter\":{many_keys}}}"),
            &[400],
        ),
        (
            "projection: 70k keys",
            Method::POST,
            "/data/query",
            format!("{{\"projection\":{many_keys}}}"),
            &[400],
        ),
        (
            "sort: 70k keys",
            Method::POST,
            "/data/query",
            format!("{{\"sort\":{many_keys}}}"),
            &[400],
        ),
        (
            "patch: 70k keys",
            Method::PATCH,
            "/data/d1",
            many_keys.clone(),
            &[400],
        ),
        // Long dotted paths.
        (
            "filter: 300k-part path",
            Method::POST,
            "/data/query",
            format!("{{\"filter\":{{\"{dotted}\":1}}}}"),
            &[400],
        ),
        (
            "projection: 300k-part path",
            Method::POST,
            "/data/query",
            format!("{{\"projection\":{{\"{dotted}\":1}}}}"),
            &[400],
        ),
        (
            "sort: 300k-part path",
            Method::POST,
            "/data/query",
            format!("{{\"sort\":{{\"{dotted}\":1}}}}"),
            &[400],
        ),
        (
            "patch: $set 300k-part path",
            Method::PATCH,
            "/data/d1",
            format!("{{\"$set\":{{\"{dotted}\":1}}}}"),
            &[400],
        ),
        (
            "filter: two 400 KiB parts",
            Method::POST,
            "/data/count",
            format!("{{\"filter\":{{\"{long_dotted}\":1}}}}"),
            &[200, 400],
        ),
        (
            "patch: $unset two 400 KiB parts",
            Method::PATCH,
            "/data/d1",
            format!("{{\"$unset\":{{\"{long_dotted}\":1}}}}"),
            &[200, 400],
        ),
        // Object routes given a huge array.
        (
            "query: 300k-item array body",
            Method::POST,
            "/data/query",
            array_of("1", MAX_BODY - 16),
            &[400],
        ),
        (
            "create: long key",
            Method::POST,
            "/org/create",
            under_long_key(&ints),
            &[400],
        ),
    ];
    let mut worst = (String::new(), Duration::ZERO);
    for (name, method, path, body, expected) in cases {
        assert!(body.len() <= MAX_BODY, "{name}: {} bytes", body.len());
        let prober = Prober::start(&gw.base);
        let (status, reply, took) = send(&gw, &t, method, path, body);
        let (probes, slowest) = prober.finish();
        eprintln!("{name}: {status} in {took:?}; /healthz x{probes}, slowest {slowest:?}");
        assert!(expected.contains(&status), "{name}: {status} {reply}");
        if status >= 400 {
            // Problem bodies quote paths clipped, never the 400 KiB key.
            let text = reply.to_string();
            assert!(text.len() < 2048, "{name}: {} byte error body", text.len());
            assert!(reply["code"].is_string(), "{name}: {reply}");
        }
        if took > worst.1 {
            worst = (name.to_owned(), took);
        }
    }
    eprintln!("slowest: {} in {:?}", worst.0, worst.1);
    // The gateway still works.
    let (s, doc, _) = send(&gw, &t, Method::POST, "/data/count", "{}".into());
    assert_eq!(s, 200, "{doc}");
}

#[test]
fn codes_of_crafted_bodies() {
    let gw = TestGateway::start();
    let t = gw.org_with_token("Codes Co", "codes@example.com");
    let code = |method: Method, path: &str, body: String| {
        let (s, b, _) = send(&gw, &t, method, path, body);
        assert_eq!(s, 400, "{b}");
        b["code"].as_str().unwrap().to_owned()
    };
    let key = long_key();
    let mut overflow = array_of("1", room() - 32);
    overflow.insert_str(overflow.len() - 1, ",18446744073709551615");
    let r = send(&gw, &t, Method::POST, "/data", under_long_key(&overflow)).1;
    assert_eq!(r["code"], "number_out_of_range");
    let detail = r["detail"].as_str().unwrap();
    assert!(detail.contains("kkkk") && detail.contains('…'), "{detail}");
    assert_eq!(
        code(Method::POST, "/data", nested("[", "]", 200_000, "")),
        "invalid_json"
    );
    assert_eq!(
        code(Method::POST, "/data", nested("{\"a\":", "}", 120, "1")),
        "document_too_deep"
    );
    assert_eq!(
        code(
            Method::POST,
            "/data/query",
            format!("{{\"filter\":{{\"{}\":1}}}}", vec!["a"; 300_000].join("."))
        ),
        "invalid_field_name"
    );
    assert_eq!(
        code(
            Method::PATCH,
            "/data/x",
            under_long_key(&format!(
                "{{{}}}",
                (0..300)
                    .map(|i| format!("\"f{i}\":1"))
                    .collect::<Vec<_>>()
                    .join(",")
            ))
        ),
        "invalid_update"
    );
    let r = send(
        &gw,
        &t,
        Method::POST,
        "/data/count",
        format!("{{\"filter\":{{\"${key}\":1}}}}"),
    )
    .1;
    assert_eq!(r["code"], "unsupported_operator");
    assert!(r["detail"].as_str().unwrap().len() < 512, "{r}");
}

#[test]
fn the_value_budget_bounds_bodies_whatever_max_body_bytes_is() {
    let gw = TestGateway::start_with(Options {
        config: format!("max_body_bytes = {}\n", 8 * MAX_BODY),
        ..Default::default()
    });
    let t = gw.org_with_token("Budget Co", "budget@example.com");
    // 1.2 million values: refused before any other check walks them.
    let (s, b, took) = send(
        &gw,
        &t,
        Method::POST,
        "/data/query",
        format!("{{\"filter\":{{\"a\":{}}}}}", array_of("0", 2_400_000)),
    );
    eprintln!("1.2M values: {s} in {took:?}");
    assert_eq!(
        (s, b["code"].as_str()),
        (400, Some("body_too_complex")),
        "{b}"
    );
    let (s, b, _) = send(
        &gw,
        &t,
        Method::POST,
        "/data",
        format!("{{\"a\":{}}}", array_of("[]", 3_300_000)),
    );
    assert_eq!(
        (s, b["code"].as_str()),
        (400, Some("body_too_complex")),
        "{b}"
    );
    // Just under the budget is let through to the other checks.
    let (s, b, _) = send(
        &gw,
        &t,
        Method::POST,
        "/data/count",
        format!("{{\"filter\":{{\"a\":{}}}}}", array_of("0", 1_900_000)),
    );
    assert_eq!(s, 200, "{b}");
}

#[test]
fn integers_above_i64_are_refused_in_filters_skip_limit_and_updates() {
    let gw = TestGateway::start();
    let t = gw.org_with_token("Numbers Co", "numbers@example.com");
    let (s, _, _) = send(
        &gw,
        &t,
        Method::POST,
        "/data",
        r#"{"_id": "n1", "a": 1}"#.into(),
    );
    assert_eq!(s, 201);
    let big = "18446744073709551615";
    for (method, path, body) in [
        (
            Method::POST,
            "/data/query",
            format!(r#"{{"filter": {{"a": {big}}}}}"#),
        ),
        (
            Method::POST,
            "/data/count",
            format!(r#"{{"filter": {{"a": {big}}}}}"#),
        ),
        (
            Method::POST,
            "/data/count",
            format!(r#"{{"filter": {{"a": {{"$in": [1, {big}]}}}}}}"#),
        ),
        (
            Method::POST,
            "/data/count",
            format!(r#"{{"filter": {{"$or": [{{"a": {{"$gt": {big}}}}}]}}}}"#),
        ),
        (Method::POST, "/data/query", format!(r#"{{"skip": {big}}}"#)),
        (
            Method::POST,
            "/data/query",
            r#"{"skip": 9223372036854775808}"#.to_owned(),
        ),
        (
            Method::POST,
            "/data/query",
            format!(r#"{{"limit": {big}}}"#),
        ),
        (
            Method::PATCH,
            "/data/n1",
            format!(r#"{{"$inc": {{"a": {big}}}}}"#),
        ),
        (
            Method::PATCH,
            "/data/n1",
            format!(r#"{{"$set": {{"b": [{big}]}}}}"#),
        ),
        (
            Method::PATCH,
            "/data/n1",
            format!(r#"{{"b": {{"c": {big}}}}}"#),
        ),
        (
            Method::POST,
            "/data",
            format!(r#"[{{"x": 1}}, {{"y": {big}}}]"#),
        ),
        // Below i64::MIN and above u64::MAX serde reads a float: the literal still counts.
        (
            Method::POST,
            "/data",
            r#"[{"_id": "0", "0": {"0": -9223372036854775809}}]"#.to_owned(),
        ),
        (
            Method::POST,
            "/data/count",
            r#"{"filter": {"a": 184467440737095516160}}"#.to_owned(),
        ),
    ] {
        let (s, b, _) = send(&gw, &t, method, path, body.clone());
        assert_eq!(
            (s, b["code"].as_str()),
            (400, Some("number_out_of_range")),
            "{body}: {b}"
        );
    }
    // i64::MAX itself is fine, and nothing above was applied.
    let (s, b, _) = send(
        &gw,
        &t,
        Method::POST,
        "/data/count",
        r#"{"filter": {"a": 9223372036854775807}}"#.into(),
    );
    assert_eq!((s, &b["count"]), (200, &json!(0)), "{b}");
    // (A store may bound how far it skips, but not with this code.)
    let (s, b, _) = send(
        &gw,
        &t,
        Method::POST,
        "/data/query",
        r#"{"skip": 9223372036854775807}"#.into(),
    );
    assert!(
        s == 200 || (s == 400 && b["code"] != "number_out_of_range"),
        "{s} {b}"
    );
    let doc: Value = gw
        .req(Method::GET, "/data/n1")
        .bearer_auth(&t)
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(doc, json!({"_id": "n1", "a": 1}));
}

#[test]
fn object_bodies_must_be_objects() {
    let gw = TestGateway::start_with(Options {
        config: "[ops]\ntoken = \"ops-secret\"\n".into(),
        ..Default::default()
    });
    let t = gw.org_with_token("Shape Co", "shape@example.com");
    // These used to be read positionally into the request structs.
    let r = gw.post("/admin/login", &json!(["shape@example.com", "password123"]));
    assert_problem(r, 400, "invalid_body");
    let r = gw.post(
        "/org/create",
        &json!(["Array Co", "array@example.com", "password123", null]),
    );
    assert_problem(r, 400, "invalid_body");
    let r = gw
        .req(Method::GET, "/org/get?organization_name=array%20co")
        .send()
        .unwrap();
    assert_problem(r, 404, "organization_not_found");
    for (method, path) in [
        (Method::POST, "/data/query"),
        (Method::POST, "/data/count"),
        (Method::PUT, "/org/update"),
        (Method::POST, "/org/admins"),
    ] {
        for body in ["[null,null]", "[]", "\"x\"", "1", "null", "true"] {
            let r = gw
                .req(method.clone(), path)
                .bearer_auth(&t)
                .header("content-type", "application/json")
                .body(body)
                .send()
                .unwrap();
            assert_problem(r, 400, "invalid_body");
        }
    }
    for (method, path) in [
        (Method::POST, "/ops/moves"),
        (Method::POST, "/ops/rebalance"),
        (Method::POST, "/ops/shards"),
        (Method::PUT, "/ops/orgs/shape%20co/limits"),
    ] {
        let r = gw
            .client
            .request(method, format!("{}{path}", gw.ops))
            .bearer_auth("ops-secret")
            .header("content-type", "application/json")
            .body("[1, 2]")
            .send()
            .unwrap();
        assert_problem(r, 400, "invalid_body");
    }
    // `null` still removes a limits override.
    let r = gw
        .client
        .put(format!("{}/ops/orgs/shape%20co/limits", gw.ops))
        .bearer_auth("ops-secret")
        .json(&Value::Null)
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    // Not JSON at all stays invalid_json.
    let r = gw
        .req(Method::POST, "/admin/login")
        .body("[1,")
        .send()
        .unwrap();
    assert_problem(r, 400, "invalid_json");
}

#[test]
fn filter_sort_and_projection_may_be_null() {
    let gw = TestGateway::start();
    let t = gw.org_with_token("Null Co", "null@example.com");
    let (s, _, _) = send(
        &gw,
        &t,
        Method::POST,
        "/data",
        r#"[{"_id": "a"}, {"_id": "b"}]"#.into(),
    );
    assert_eq!(s, 201);
    let (s, b, _) = send(
        &gw,
        &t,
        Method::POST,
        "/data/query",
        r#"{"filter": null, "sort": null, "projection": null}"#.into(),
    );
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["documents"], json!([{"_id": "a"}, {"_id": "b"}]));
    let (s, b, _) = send(
        &gw,
        &t,
        Method::POST,
        "/data/count",
        r#"{"filter": null}"#.into(),
    );
    assert_eq!((s, &b["count"]), (200, &json!(2)), "{b}");
    // The OpenAPI document says so.
    let doc: Value = gw
        .req(Method::GET, "/openapi.json")
        .send()
        .unwrap()
        .json()
        .unwrap();
    for (schema, field) in [
        ("QueryBody", "filter"),
        ("QueryBody", "sort"),
        ("QueryBody", "projection"),
        ("CountBody", "filter"),
    ] {
        let prop = find_schema(&doc, schema).unwrap_or_else(|| panic!("{schema} in the document"))
            ["properties"][field]
            .clone();
        let types = &prop["type"];
        let nullable = prop["nullable"] == json!(true)
            || types
                .as_array()
                .is_some_and(|t| t.contains(&json!("null")) && t.contains(&json!("object")));
        assert!(nullable, "{schema}.{field}: {prop}");
    }
}

/// A named schema wherever the document keeps its components.
fn find_schema<'a>(v: &'a Value, name: &str) -> Option<&'a Value> {
    match v {
        Value::Object(m) => {
            if let Some(s) = m.get("schemas").and_then(|s| s.get(name)) {
                return Some(s);
            }
            m.values().find_map(|x| find_schema(x, name))
        }
        Value::Array(a) => a.iter().find_map(|x| find_schema(x, name)),
        _ => None,
    }
}

#[test]
fn protected_routes_authenticate_before_validating() {
    use org_gateway::api::routes::{Listener, ALL};
    let gw = TestGateway::start_with(Options {
        config: "[ops]\ntoken = \"ops-secret\"\n".into(),
        ..Default::default()
    });
    // Open to anyone (or, /metrics, only behind an optional metrics token).
    let open = [
        "/healthz",
        "/openapi.json",
        "/readyz",
        "/metrics",
        "/org/create",
        "/org/get",
        "/admin/login",
    ];
    let mut walked = 0;
    for (listener, method, template) in ALL {
        if open.contains(template) {
            continue;
        }
        // Every parameter invalid, every body the wrong shape.
        let path = template
            .replace("{organization}", "%24bad")
            .replace("{move_id}", "%00")
            .replace("{admin_id}", "%00")
            .replace("{id}", &"x".repeat(300));
        let base = match listener {
            Listener::Public => &gw.base,
            Listener::Ops => &gw.ops,
        };
        let url = format!("{base}{path}?organization_name=&n=-1&state=bogus");
        for body in ["[1,2]", "{\"organization_name\": \"\"}", "{not json"] {
            let r = gw
                .client
                .request(method.parse().unwrap(), &url)
                .header("content-type", "application/json")
                .body(body)
                .send()
                .unwrap();
            let status = r.status().as_u16();
            assert_eq!(status, 401, "{method} {template} with {body}");
            assert_problem(r, 401, "unauthorized");
        }
        walked += 1;
    }
    assert!(walked >= 20, "{walked} protected routes");
    // A valid token of the public API is no operator token, and vice versa.
    let t = gw.org_with_token("Auth Co", "authfirst@example.com");
    let r = gw
        .req(Method::DELETE, "/org/delete?organization_name=")
        .bearer_auth("ops-secret")
        .send()
        .unwrap();
    assert_problem(r, 401, "unauthorized");
    // With a valid token, validation answers.
    let r = gw
        .req(Method::DELETE, "/org/delete?organization_name=")
        .bearer_auth(&t)
        .send()
        .unwrap();
    assert_problem(r, 400, "validation_failed");
    let r = gw
        .req(Method::PUT, "/org/update")
        .bearer_auth(&t)
        .json(&json!({"organization_name": ""}))
        .send()
        .unwrap();
    assert_problem(r, 400, "validation_failed");
}
