//! Keyset paging of `POST /data/query` under concurrent writes, the sort window bound and
//! cursor validation. Run on the embedded store and, with `TEST_ON_MONGODB=1`, on MongoDB:
//! the answers must be the same.

use crate::gateway::{assert_problem, Options, TestGateway};
use base64::Engine;
use reqwest::Method;
use serde_json::{json, Value};
use std::collections::{BTreeSet, HashSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

fn busy_gateway() -> TestGateway {
    TestGateway::start_with(Options {
        config: "[limits]\nrequests_per_minute = 100000\nrequests_per_hour = 1000000\n".into(),
        ..Default::default()
    })
}

fn query(gw: &TestGateway, token: &str, body: &Value) -> reqwest::blocking::Response {
    gw.req(Method::POST, "/data/query")
        .bearer_auth(token)
        .json(body)
        .send()
        .unwrap()
}

fn insert(gw: &TestGateway, token: &str, docs: Vec<Value>) {
    let r = gw
        .req(Method::POST, "/data")
        .bearer_auth(token)
        .json(&Value::Array(docs))
        .send()
        .unwrap();
    assert_eq!(r.status(), 201, "{}", r.text().unwrap());
}

/// `n` with ties (17 values) and a missing field on every tenth document, so the sort key
/// repeats and nulls sort among the values.
fn doc(id: String, i: usize) -> Value {
    if i % 10 == 3 {
        json!({"_id": id, "i": i})
    } else {
        json!({"_id": id, "i": i, "n": i % 17})
    }
}

/// The sort key a document has under `{"n": -1}` then `_id` ascending, as a value that
/// orders the same way (a missing `n` is null, below every number, so last descending).
fn key_desc(d: &Value) -> (std::cmp::Reverse<i64>, String) {
    let n = d.get("n").and_then(Value::as_i64).unwrap_or(i64::MIN);
    (std::cmp::Reverse(n), d["_id"].as_str().unwrap().to_owned())
}

/// Pages through `sort` while another thread inserts documents and deletes pre-existing
/// ones: every page continues strictly after the last, so no document appears twice, the
/// concatenation is in sort order, and every pre-existing document that was not deleted is
/// read (a deleted one may or may not be, depending on when it went).
fn page_under_writes(sort: Value, ordered: fn(&[Value]) -> bool) {
    let gw = busy_gateway();
    let t = gw.org_with_token("Paging Co", "paging@example.com");
    let existing: Vec<String> = (0..300).map(|i| format!("p{i:03}")).collect();
    insert(
        &gw,
        &t,
        existing
            .iter()
            .enumerate()
            .map(|(i, id)| doc(id.clone(), i))
            .collect(),
    );
    let doomed: HashSet<String> = existing.iter().step_by(5).cloned().collect();
    let done = AtomicBool::new(false);
    let writes = AtomicUsize::new(0);
    let (mut seen, mut pages) = (Vec::<Value>::new(), 0);
    std::thread::scope(|s| {
        s.spawn(|| {
            let mut doomed: Vec<&String> = doomed.iter().collect();
            doomed.sort();
            let mut j = 0usize;
            while !done.load(Ordering::Relaxed) {
                // New ids land all over the `_id` order, new `n`s all over the sort.
                let id = format!("{}{j:04}", ["a", "p15", "q", "p2"][j % 4]);
                insert(&gw, &t, vec![doc(id, j * 7)]);
                if let Some(victim) = doomed.pop() {
                    let r = gw
                        .req(Method::DELETE, &format!("/data/{victim}"))
                        .bearer_auth(&t)
                        .send()
                        .unwrap();
                    assert_eq!(r.status(), 200);
                }
                writes.fetch_add(1, Ordering::Relaxed);
                j += 1;
            }
        });
        let mut cursor: Option<String> = None;
        loop {
            let mut body = json!({"sort": sort, "limit": 7, "projection": {"i": 0}});
            if let Some(c) = &cursor {
                body["cursor"] = json!(c);
            }
            let r = query(&gw, &t, &body);
            assert_eq!(r.status(), 200);
            let page: Value = r.json().unwrap();
            let docs = page["documents"].as_array().unwrap();
            assert!(docs.len() <= 7);
            assert!(docs.iter().all(|d| d.get("i").is_none()), "projection");
            seen.extend(docs.iter().cloned());
            pages += 1;
            match page["next_cursor"].as_str() {
                Some(c) => cursor = Some(c.to_owned()),
                None => break,
            }
            // Let the writer get in between pages.
            std::thread::sleep(std::time::Duration::from_millis(3));
        }
        done.store(true, Ordering::Relaxed);
    });
    let during = writes.load(Ordering::Relaxed);
    assert!(during >= 10, "only {during} writes happened while paging");
    let ids: Vec<&str> = seen.iter().map(|d| d["_id"].as_str().unwrap()).collect();
    let unique: BTreeSet<&str> = ids.iter().copied().collect();
    assert_eq!(unique.len(), ids.len(), "a document came twice");
    let missing: Vec<&String> = existing
        .iter()
        .filter(|id| !doomed.contains(*id) && !unique.contains(id.as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "pre-existing documents skipped: {missing:?}"
    );
    assert!(ordered(&seen), "pages are not in sort order");
    assert!(pages >= 300 / 5 / 7, "{pages} pages");
}

#[test]
fn keyset_pages_by_a_sort_field_survive_concurrent_inserts_and_deletes() {
    page_under_writes(json!({"n": -1}), |docs| {
        docs.windows(2).all(|w| key_desc(&w[0]) < key_desc(&w[1]))
    });
}

#[test]
fn keyset_pages_in_id_order_survive_concurrent_inserts_and_deletes() {
    page_under_writes(Value::Null, |docs| {
        docs.windows(2)
            .all(|w| w[0]["_id"].as_str() < w[1]["_id"].as_str())
    });
}

#[test]
fn sorted_queries_beyond_the_window_are_refused() {
    let gw = TestGateway::start();
    let t = gw.org_with_token("Window Co", "window@example.com");
    insert(
        &gw,
        &t,
        (0..5)
            .map(|i| json!({"_id": format!("w{i}"), "n": i}))
            .collect(),
    );
    // The default window: skip + limit <= 10,000 for sorted queries.
    let body = json!({"sort": {"n": 1}, "skip": 9_500, "limit": 501});
    let problem = assert_problem(query(&gw, &t, &body), 400, "sort_window_exceeded");
    assert!(
        problem["detail"].as_str().unwrap().contains("10000"),
        "{problem}"
    );
    let r = query(
        &gw,
        &t,
        &json!({"sort": {"n": -1}, "skip": 9_000, "limit": 1000}),
    );
    assert_eq!(r.status(), 200);
    let page: Value = r.json().unwrap();
    assert_eq!(page["documents"], json!([]));
    // `_id` order streams from the index: no window.
    for sort in [Value::Null, json!({"_id": -1, "n": 1})] {
        let r = query(
            &gw,
            &t,
            &json!({"sort": sort, "skip": 1_000_000, "limit": 1000}),
        );
        assert_eq!(r.status(), 200, "sort {sort}");
    }
    let r = query(
        &gw,
        &t,
        &json!({"sort": {"_id": -1}, "skip": 1, "limit": 2}),
    );
    let page: Value = r.json().unwrap();
    assert_eq!(
        page["documents"],
        json!([{"_id": "w3", "n": 3}, {"_id": "w2", "n": 2}])
    );
    // A sorted query within the window pages by cursor as far as it likes.
    let r = query(&gw, &t, &json!({"sort": {"n": -1}, "skip": 3, "limit": 1}));
    let page: Value = r.json().unwrap();
    assert_eq!(page["documents"], json!([{"_id": "w1", "n": 1}]));
    let next = page["next_cursor"].as_str().unwrap();
    let r = query(
        &gw,
        &t,
        &json!({"sort": {"n": -1}, "limit": 1000, "cursor": next}),
    );
    let page: Value = r.json().unwrap();
    assert_eq!(page["documents"], json!([{"_id": "w0", "n": 0}]));
    assert_eq!(page["next_cursor"], Value::Null);
}

fn b64(v: &Value) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
}

#[test]
fn invalid_cursors_are_refused_and_never_fail_the_server() {
    let gw = TestGateway::start();
    let t = gw.org_with_token("Cursor Co", "cursor@example.com");
    insert(
        &gw,
        &t,
        (0..4)
            .map(|i| json!({"_id": format!("c{i}"), "n": i}))
            .collect(),
    );
    let first: Value = query(&gw, &t, &json!({"sort": {"n": 1}, "limit": 2}))
        .json()
        .unwrap();
    let good = first["next_cursor"].as_str().unwrap().to_owned();
    // The projection may change between pages; filter and sort may not.
    let r = query(
        &gw,
        &t,
        &json!({"sort": {"n": 1}, "limit": 2, "projection": {"n": 0}, "cursor": good}),
    );
    assert_eq!(r.status(), 200);
    let page: Value = r.json().unwrap();
    assert_eq!(page["documents"], json!([{"_id": "c2"}, {"_id": "c3"}]));
    for body in [
        json!({"sort": {"n": -1}, "cursor": good}),
        json!({"sort": {"n": 1}, "filter": {"n": {"$gt": 0}}, "cursor": good}),
        json!({"cursor": good}),
        json!({"sort": {"n": 1}, "cursor": good, "skip": 1}),
    ] {
        assert_problem(query(&gw, &t, &body), 400, "invalid_cursor");
    }
    let decoded: Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(&good)
            .unwrap(),
    )
    .unwrap();
    let h = decoded["h"].clone();
    let secret = "s3cr3t-in-a-cursor";
    for raw in [
        "garbage!".to_owned(),
        "".to_owned(),
        b64(&json!("just a string")),
        b64(&json!({"h": h})),
        b64(&json!({"h": h, "p": [[[1]], "c1"], "x": 1})),
        b64(&json!({"h": h, "p": [[[1], [2]], "c1"]})),
        b64(&json!({"h": h, "p": [[], "c1"]})),
        b64(&json!({"h": h, "p": [[[1]], ""]})),
        b64(&json!({"h": h, "p": [[[1]], "x".repeat(200)]})),
        b64(&json!({"h": h, "p": [[[18446744073709551615u64]], "c1"]})),
        b64(&json!({"h": h, "p": [[[1]], secret], "q": secret})),
        "A".repeat(100_000),
    ] {
        let body = assert_problem(
            query(&gw, &t, &json!({"sort": {"n": 1}, "cursor": raw})),
            400,
            "invalid_cursor",
        );
        assert!(!body.to_string().contains(secret), "{body}");
    }
    // A well-formed position of any type is accepted, also one no document has.
    for at in [
        json!([]),
        json!([null]),
        json!(["s"]),
        json!([{"$x": [1]}]),
        json!([1.5]),
    ] {
        let raw = b64(&json!({"h": h, "p": [[at], "c1"]}));
        let r = query(&gw, &t, &json!({"sort": {"n": 1}, "cursor": raw}));
        assert_eq!(r.status(), 200, "position {at}");
    }
    let raw = b64(&json!({"h": h, "p": [[[1.5]], "zzz"]}));
    let page: Value = query(&gw, &t, &json!({"sort": {"n": 1}, "cursor": raw}))
        .json()
        .unwrap();
    assert_eq!(
        page["documents"],
        json!([{"_id": "c2", "n": 2}, {"_id": "c3", "n": 3}])
    );
}
