//! `GET /org/export` and `POST /org/import` over HTTP: NDJSON both ways, streamed.

use crate::gateway::{assert_problem, Options, TestGateway};
use reqwest::blocking::{Body, Response};
use reqwest::Method;
use serde_json::{json, Value};

const NDJSON: &str = "application/x-ndjson";

fn insert(gw: &TestGateway, token: &str, docs: &Value) {
    let r = gw
        .req(Method::POST, "/data")
        .bearer_auth(token)
        .json(docs)
        .send()
        .unwrap();
    assert_eq!(r.status(), 201, "{}", r.text().unwrap());
}

/// The export's body, checked to be NDJSON; one parsed document a line.
fn export(gw: &TestGateway, token: &str) -> (String, Vec<Value>) {
    let r = gw
        .req(Method::GET, "/org/export")
        .bearer_auth(token)
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], NDJSON);
    assert!(r.headers().contains_key("x-request-id"));
    let text = r.text().unwrap();
    let docs = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    (text, docs)
}

fn import(gw: &TestGateway, token: &str, mode: Option<&str>, body: impl Into<Body>) -> Response {
    let path = match mode {
        Some(m) => format!("/org/import?mode={m}"),
        None => "/org/import".to_owned(),
    };
    gw.req(Method::POST, &path)
        .bearer_auth(token)
        .header("content-type", NDJSON)
        .body(body)
        .send()
        .unwrap()
}

fn imported(r: Response) -> u64 {
    assert_eq!(r.status(), 200);
    let body: Value = r.json().unwrap();
    body["imported"].as_u64().unwrap()
}

/// Every document of the token's organization through `/data/query`, in `_id` order.
fn all_docs(gw: &TestGateway, token: &str) -> Vec<Value> {
    let mut out = Vec::new();
    let mut cursor = Value::Null;
    loop {
        let r = gw
            .req(Method::POST, "/data/query")
            .bearer_auth(token)
            .json(&json!({"sort": {"_id": 1}, "limit": 1000, "cursor": cursor}))
            .send()
            .unwrap();
        assert_eq!(r.status(), 200);
        let page: Value = r.json().unwrap();
        out.extend(page["documents"].as_array().unwrap().iter().cloned());
        cursor = page["next_cursor"].clone();
        if cursor.is_null() {
            return out;
        }
    }
}

fn ndjson(docs: &[Value]) -> String {
    docs.iter().map(|d| format!("{d}\n")).collect()
}

#[test]
fn an_export_imported_into_another_org_gives_identical_documents() {
    let gw = TestGateway::start();
    let a = gw.org_with_token("Export Source", "source@example.com");
    let b = gw.org_with_token("Import Target", "target@example.com");
    insert(
        &gw,
        &a,
        &json!([
            {"_id": "k1", "name": "widget", "qty": 3, "price": 2.5, "tags": ["a", "b"]},
            {"_id": "k2", "nested": {"deep": {"x": [1, {"y": null}]}}, "ok": true},
            {"_id": "ünïcode ✓", "text": "line\nbreak \"quoted\"", "big": i64::MAX, "neg": i64::MIN},
            {"empty": {}, "none": [], "f": -0.125e-3},
            {"generated": "id"},
        ]),
    );
    let (text, exported) = export(&gw, &a);
    let source = all_docs(&gw, &a);
    assert_eq!(exported.len(), 5);
    assert_eq!(
        exported, source,
        "the export is /data/query's documents, in _id order"
    );
    assert_eq!(imported(import(&gw, &b, None, text.clone())), 5);
    assert_eq!(all_docs(&gw, &b), source);
    let (again, _) = export(&gw, &b);
    assert_eq!(again, text, "byte for byte");
    let metrics = gw
        .client
        .get(format!("{}/metrics", gw.ops))
        .send()
        .unwrap()
        .text()
        .unwrap();
    for line in [
        "org_gateway_transfer_documents_total{direction=\"export\"} 10",
        "org_gateway_transfer_documents_total{direction=\"import\"} 5",
    ] {
        assert!(metrics.lines().any(|l| l == line), "{line} missing");
    }
    // An empty organization exports nothing.
    let c = gw.org_with_token("Empty Org", "empty@example.com");
    let (empty, docs) = export(&gw, &c);
    assert!(empty.is_empty() && docs.is_empty());
}

#[test]
fn upsert_replaces_and_insert_refuses_a_duplicate_naming_its_line() {
    let gw = TestGateway::start();
    let t = gw.org_with_token("Upserts", "upserts@example.com");
    insert(&gw, &t, &json!([{"_id": "a", "v": 1, "old": true}]));
    let body = ndjson(&[json!({"_id": "a", "v": 2}), json!({"_id": "b", "v": 3})]);
    assert_eq!(imported(import(&gw, &t, Some("upsert"), body)), 2);
    assert_eq!(
        all_docs(&gw, &t),
        vec![json!({"_id": "a", "v": 2}), json!({"_id": "b", "v": 3})]
    );
    // Insert mode (the default): the third line's _id exists already.
    let body = ndjson(&[
        json!({"_id": "c"}),
        json!({"_id": "d"}),
        json!({"_id": "a", "v": 9}),
        json!({"_id": "e"}),
    ]);
    let p = assert_problem(import(&gw, &t, None, body.clone()), 400, "duplicate_id");
    assert_eq!(
        (p["line"].clone(), p["imported"].clone()),
        (json!(3), json!(2))
    );
    assert!(p["detail"].as_str().unwrap().contains("line 3"), "{p}");
    // Again, explicitly: now the first line's _id exists.
    let p = assert_problem(import(&gw, &t, Some("insert"), body), 400, "duplicate_id");
    assert_eq!(
        (p["line"].clone(), p["imported"].clone()),
        (json!(1), json!(0))
    );
    let ids: Vec<Value> = all_docs(&gw, &t)
        .into_iter()
        .map(|d| d["_id"].clone())
        .collect();
    assert_eq!(ids, vec![json!("a"), json!("b"), json!("c"), json!("d")]);
    assert_eq!(all_docs(&gw, &t)[0], json!({"_id": "a", "v": 2}));
    // The same _id twice in one body, insert mode: the second is the bad line.
    let body = "{\"_id\": \"f\"}\n\n{\"_id\": \"f\"}\n";
    let p = assert_problem(import(&gw, &t, None, body), 400, "duplicate_id");
    assert_eq!(
        (p["line"].clone(), p["imported"].clone()),
        (json!(3), json!(1))
    );
    // Upsert mode applies repeated _ids in order.
    let body = ndjson(&[json!({"_id": "g", "n": 1}), json!({"_id": "g", "n": 2})]);
    assert_eq!(imported(import(&gw, &t, Some("upsert"), body)), 2);
    let r = gw
        .req(Method::GET, "/data/g")
        .bearer_auth(&t)
        .send()
        .unwrap();
    assert_eq!(r.json::<Value>().unwrap(), json!({"_id": "g", "n": 2}));
    // A unique index's key taken: 400 duplicate_key at its line, in either mode.
    let t = gw.org_with_token("Unique Keys", "unique-keys@example.com");
    let r = gw
        .req(Method::POST, "/data/indexes")
        .bearer_auth(&t)
        .json(&json!({"keys": {"sku": 1}, "unique": true}))
        .send()
        .unwrap();
    assert_eq!(r.status(), 201);
    insert(&gw, &t, &json!({"_id": "s1", "sku": "X"}));
    for mode in ["insert", "upsert"] {
        let body = ndjson(&[
            json!({"_id": format!("ok-{mode}"), "sku": mode}),
            json!({"_id": "s2", "sku": "X"}),
        ]);
        let p = assert_problem(import(&gw, &t, Some(mode), body), 400, "duplicate_key");
        assert_eq!(
            (p["line"].clone(), p["imported"].clone()),
            (json!(2), json!(1)),
            "{mode}: {p}"
        );
    }
    // An unknown mode.
    assert_problem(import(&gw, &t, Some("merge"), "{}\n"), 400, "invalid_query");
}

#[test]
fn bad_lines_are_400_naming_the_line_and_never_echoing_it() {
    let gw = TestGateway::start();
    let t = gw.org_with_token("Bad Lines", "bad-lines@example.com");
    let secret = "SECRET-7f3a9c";
    let cases: Vec<(String, &str)> = vec![
        (format!("{{\"x\": \"{secret}\""), "invalid_json"),
        (format!("[\"{secret}\"]"), "invalid_document"),
        (format!("\"{secret}\""), "invalid_document"),
        (format!("{{\"${secret}\": 1}}"), "invalid_field_name"),
        (format!("{{\"_id\": 5, \"s\": \"{secret}\"}}"), "invalid_id"),
        (
            format!("{{\"{secret}\": 99999999999999999999}}"),
            "number_out_of_range",
        ),
        (
            format!("{{\"{secret}\": {{\"nested\": [1, 99999999999999999999]}}}}"),
            "number_out_of_range",
        ),
    ];
    for (i, (bad, code)) in cases.iter().enumerate() {
        // Two good lines (one of them after blank lines and with CRLF), then the bad one.
        let body = format!(
            "{{\"_id\": \"good-{i}-1\"}}\r\n\n   \n{{\"_id\": \"good-{i}-2\"}}\n{bad}\n{{\"_id\": \"after-{i}\"}}\n"
        );
        let r = import(&gw, &t, None, body);
        let status = r.status().as_u16();
        let text = r.text().unwrap();
        assert_eq!(status, 400, "{text}");
        let p: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(p["code"], *code, "{p}");
        assert_eq!(p["line"], 5, "{p}");
        assert_eq!(p["imported"], 2, "{p}");
        assert!(!text.contains(secret), "{text}");
    }
    assert!(!gw.log_contains(secret), "a line reached the log");
    let ids: Vec<Value> = all_docs(&gw, &t)
        .into_iter()
        .map(|d| d["_id"].clone())
        .collect();
    assert_eq!(ids.len(), 2 * cases.len(), "{ids:?}");
    assert!(ids
        .iter()
        .all(|id| id.as_str().unwrap().starts_with("good-")));
}

#[test]
fn an_export_larger_than_one_batch_is_complete_and_in_order() {
    let gw = TestGateway::start();
    let t = gw.org_with_token("Big Export", "big-export@example.com");
    let n = 3000;
    // Inserted out of order: the export is in _id order whatever the insertion order.
    let all: Vec<Value> = (0..n)
        .map(|i| {
            let k = (i * 7919) % n;
            json!({"_id": format!("doc-{k:05}"), "k": k, "pad": "p".repeat(k % 97)})
        })
        .collect();
    for chunk in all.chunks(1000) {
        insert(&gw, &t, &Value::Array(chunk.to_vec()));
    }
    let (_, exported) = export(&gw, &t);
    assert_eq!(exported.len(), n);
    for (i, d) in exported.iter().enumerate() {
        assert_eq!(d["_id"], format!("doc-{i:05}"));
        assert_eq!(d["k"], i);
        assert_eq!(d["pad"], "p".repeat(i % 97));
    }
}

#[test]
fn an_import_larger_than_max_body_bytes_succeeds() {
    let gw = TestGateway::start_with(Options {
        config: "max_body_bytes = 65536\n".into(),
        ..Default::default()
    });
    let t = gw.org_with_token("Big Import", "big-import@example.com");
    let line = |i: usize| json!({"_id": format!("i{i:05}"), "blob": "b".repeat(200)});
    let docs: Vec<Value> = (0..2500).map(line).collect();
    let body = ndjson(&docs);
    assert!(body.len() > 8 * 65536);
    // Other routes keep their bound.
    let r = gw
        .req(Method::POST, "/data")
        .bearer_auth(&t)
        .json(&Value::Array(docs[..400].to_vec()))
        .send()
        .unwrap();
    assert_problem(r, 413, "payload_too_large");
    // With a Content-Length.
    assert_eq!(imported(import(&gw, &t, None, body.clone())), 2500);
    let r = gw
        .req(Method::POST, "/data/count")
        .bearer_auth(&t)
        .json(&json!({}))
        .send()
        .unwrap();
    assert_eq!(r.json::<Value>().unwrap()["count"], 2500);
    assert_eq!(all_docs(&gw, &t), docs);
    // Chunked (no length), no trailing newline, upsert mode, into another organization
    // (upserting over existing documents is covered above; on MongoDB it replaces them one
    // by one, slow for thousands).
    let other = gw.org_with_token("Big Import Two", "big-import-two@example.com");
    let body = body.trim_end().to_owned();
    let reader = Body::new(std::io::Cursor::new(body.into_bytes()));
    assert_eq!(imported(import(&gw, &other, Some("upsert"), reader)), 2500);
    assert_eq!(all_docs(&gw, &other), docs);
}

#[test]
fn an_import_over_the_storage_quota_is_507() {
    let gw = TestGateway::start_with(Options {
        config: "[limits]\nstorage_quota_bytes = 8192\n".into(),
        ..Default::default()
    });
    let t = gw.org_with_token("Quota Import", "quota-import@example.com");
    let docs: Vec<Value> = (0..40)
        .map(|i| json!({"_id": format!("q{i:02}"), "blob": "x".repeat(400)}))
        .collect();
    let body = ndjson(&docs);
    // Declared larger than the remaining quota: refused before any document is written.
    let p = assert_problem(import(&gw, &t, None, body.clone()), 507, "quota_exceeded");
    assert_eq!(p["imported"], 0);
    // Streamed without a length: refused once the body passes the remaining quota.
    let reader = Body::new(std::io::Cursor::new(body.into_bytes()));
    let p = assert_problem(import(&gw, &t, None, reader), 507, "quota_exceeded");
    assert!(p["imported"].as_u64().unwrap() < 40, "{p}");
    // A body within the quota is imported.
    let r = gw
        .req(Method::POST, "/data/count")
        .bearer_auth(&t)
        .json(&json!({}))
        .send()
        .unwrap();
    let stored = r.json::<Value>().unwrap()["count"].as_u64().unwrap();
    assert_eq!(stored, p["imported"].as_u64().unwrap());
    let small = ndjson(&[json!({"_id": "small"})]);
    assert_eq!(imported(import(&gw, &t, None, small)), 1);
}

#[test]
fn import_needs_ndjson_and_both_routes_a_token() {
    let gw = TestGateway::start();
    let t = gw.org_with_token("Media Types", "media@example.com");
    for ct in [Some("application/json"), Some("text/plain"), None] {
        let mut r = gw
            .req(Method::POST, "/org/import")
            .bearer_auth(&t)
            .body("{\"_id\": \"x\"}\n");
        if let Some(ct) = ct {
            r = r.header("content-type", ct);
        }
        assert_problem(r.send().unwrap(), 415, "unsupported_media_type");
    }
    // Parameters are allowed.
    let r = gw
        .req(Method::POST, "/org/import")
        .bearer_auth(&t)
        .header("content-type", "Application/X-NDJSON; charset=utf-8")
        .body("{\"_id\": \"x\"}\n")
        .send()
        .unwrap();
    assert_eq!(imported(r), 1);
    let r = gw.req(Method::GET, "/org/export").send().unwrap();
    assert_problem(r, 401, "unauthorized");
    let r = gw
        .req(Method::GET, "/org/export")
        .bearer_auth("not-a-token")
        .send()
        .unwrap();
    assert_problem(r, 401, "unauthorized");
    let r = gw
        .req(Method::POST, "/org/import")
        .header("content-type", NDJSON)
        .body("{\"_id\": \"y\"}\n")
        .send()
        .unwrap();
    assert_problem(r, 401, "unauthorized");
    assert_eq!(all_docs(&gw, &t).len(), 1);
}

#[test]
fn an_export_follows_a_rename_that_happens_while_it_streams() {
    use std::io::Read;
    let gw = TestGateway::start();
    let t = gw.org_with_token("Streaming Source", "streaming@example.com");
    let n = 3000;
    // About 6 MB: far more than the socket buffers hold, so the export is still streaming
    // (blocked on the client) when the rename happens.
    let all: Vec<Value> = (0..n)
        .map(|i| json!({"_id": format!("r{i:05}"), "pad": "z".repeat(2000)}))
        .collect();
    for chunk in all.chunks(500) {
        insert(&gw, &t, &Value::Array(chunk.to_vec()));
    }
    let mut r = gw
        .req(Method::GET, "/org/export")
        .bearer_auth(&t)
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    let mut head = vec![0u8; 64 * 1024];
    r.read_exact(&mut head).unwrap();
    let renamed = gw
        .req(Method::PUT, "/org/update")
        .bearer_auth(&t)
        .json(&json!({"organization_name": "Streaming Source", "new_organization_name": "Streaming Renamed"}))
        .send()
        .unwrap();
    assert_eq!(renamed.status(), 200, "{}", renamed.text().unwrap());
    let mut rest = Vec::new();
    r.read_to_end(&mut rest).unwrap();
    head.extend(rest);
    let text = String::from_utf8(head).unwrap();
    let exported: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(exported, all);
}

#[test]
fn a_bad_line_in_a_later_batch_keeps_every_line_before_it() {
    let gw = TestGateway::start();
    let t = gw.org_with_token("Later Batch", "later-batch@example.com");
    insert(&gw, &t, &json!({"_id": "l01234", "existing": true}));
    // 1,500 lines; line 1,235 holds the _id that exists: the first batch of 1,000 is written,
    // then the second is refused as a whole and written line by line up to the duplicate.
    let docs: Vec<Value> = (0..1500)
        .map(|i| json!({"_id": format!("l{i:05}")}))
        .collect();
    let p = assert_problem(import(&gw, &t, None, ndjson(&docs)), 400, "duplicate_id");
    assert_eq!(
        (p["line"].clone(), p["imported"].clone()),
        (json!(1235), json!(1234))
    );
    let stored = all_docs(&gw, &t);
    assert_eq!(stored.len(), 1235);
    assert_eq!(stored[1234], json!({"_id": "l01234", "existing": true}));
    assert_eq!(stored.last().unwrap()["_id"], "l01234");
}

#[test]
fn a_body_that_stops_arriving_is_408_with_the_count_imported() {
    use std::io::{Read, Write};
    let gw = TestGateway::start_with(Options {
        // Short, but long enough for creating an organization on a MongoDB catalog.
        config: "request_timeout_ms = 4000\n".into(),
        ..Default::default()
    });
    let t = gw.org_with_token("Stalled Body", "stalled@example.com");
    let addr = gw.base.trim_start_matches("http://").to_owned();
    let mut s = std::net::TcpStream::connect(&addr).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(20)))
        .unwrap();
    let lines = "{\"_id\": \"s1\"}\n{\"_id\": \"s2\"}\n";
    write!(
        s,
        "POST /org/import HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {t}\r\nContent-Type: {NDJSON}\r\nContent-Length: 100000\r\n\r\n{lines}"
    )
    .unwrap();
    s.flush().unwrap();
    let mut answer = Vec::new();
    let _ = s.read_to_end(&mut answer);
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    let body: Value = serde_json::from_str(answer.split("\r\n\r\n").nth(1).unwrap()).unwrap();
    assert_eq!(body["code"], "body_timeout");
    assert_eq!(body["imported"], 0, "the lines had not filled a batch");
    // Lines received before the stall but not yet written are not imported.
    assert!(all_docs(&gw, &t).is_empty());
}

#[test]
fn an_export_to_an_http_1_0_client_ends_with_the_connection_and_head_has_no_body() {
    use std::io::{Read, Write};
    let gw = TestGateway::start();
    let t = gw.org_with_token("Old Client", "old-client@example.com");
    let docs: Vec<Value> = (0..200)
        .map(|i| json!({"_id": format!("o{i:03}"), "pad": "o".repeat(100)}))
        .collect();
    insert(&gw, &t, &Value::Array(docs.clone()));
    let addr = gw.base.trim_start_matches("http://").to_owned();
    let mut s = std::net::TcpStream::connect(&addr).unwrap();
    write!(
        s,
        "GET /org/export HTTP/1.0\r\nHost: {addr}\r\nAuthorization: Bearer {t}\r\n\r\n"
    )
    .unwrap();
    let mut answer = Vec::new();
    s.read_to_end(&mut answer).unwrap();
    let answer = String::from_utf8(answer).unwrap();
    let (head, body) = answer.split_once("\r\n\r\n").unwrap();
    assert!(
        head.starts_with("HTTP/1.1 200") || head.starts_with("HTTP/1.0 200"),
        "{head}"
    );
    let head = head.to_ascii_lowercase();
    assert!(!head.contains("transfer-encoding"), "{head}");
    assert!(!head.contains("content-length"), "{head}");
    assert_eq!(body, ndjson(&docs));
    // HEAD: the headers of the export, no body.
    let r = gw
        .req(Method::HEAD, "/org/export")
        .bearer_auth(&t)
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], NDJSON);
    assert!(r.text().unwrap().is_empty());
}

#[test]
fn a_line_longer_than_the_bound_is_400_line_too_long() {
    let gw = TestGateway::start();
    let t = gw.org_with_token("Long Lines", "long-lines@example.com");
    // The bound is max(max_body_bytes, data.max_document_bytes): 1 MiB by default.
    let long = format!(
        "{{\"_id\": \"long\", \"s\": \"{}\"}}",
        "x".repeat(1_100_000)
    );
    for tail in ["\n{\"_id\": \"after\"}\n", ""] {
        let body = format!("{{\"_id\": \"first{}\"}}\n{long}{tail}", tail.len());
        let p = assert_problem(import(&gw, &t, None, body), 400, "line_too_long");
        assert_eq!(
            (p["line"].clone(), p["imported"].clone()),
            (json!(2), json!(1))
        );
    }
    assert_eq!(all_docs(&gw, &t).len(), 2);
}
