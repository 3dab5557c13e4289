//! Online tenant moves over HTTP: a writer keeps writing while the tenant moves, and every
//! acknowledged write is on the target afterwards, exactly once.

use crate::gateway::{Options, TestGateway};
use reqwest::Method;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const OPS_TOKEN: &str = "ops-token-for-tests-0123456789";

/// Config with an operator token, generous limits, and the given shards.
pub fn config(shards: &str, extra: &str) -> String {
    format!(
        "[ops]\ntoken = \"{OPS_TOKEN}\"\n\
         [limits]\nrequests_per_minute = 1000000\nrequests_per_hour = 10000000\n\
         [moves]\nsource_grace_seconds = 1\n{extra}\n{shards}"
    )
}

/// Two embedded shards, `a` and `b`.
pub fn two_embedded() -> String {
    "[[shards]]\nid = \"a\"\nkind = \"embedded\"\npath = \"shards/a.redb\"\n\
     [[shards]]\nid = \"b\"\nkind = \"embedded\"\npath = \"shards/b.redb\"\n"
        .to_owned()
}

pub fn ops(gw: &TestGateway, method: Method, path: &str, body: Option<Value>) -> (u16, Value) {
    let mut r = gw
        .client
        .request(method, format!("{}{path}", gw.ops))
        .bearer_auth(OPS_TOKEN);
    if let Some(b) = body {
        r = r.json(&b);
    }
    let resp = r.send().unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().unwrap_or(Value::Null))
}

/// Where the organization lives now: (shard, database).
pub fn placement(gw: &TestGateway, org: &str) -> (String, String) {
    let (s, v) = ops(gw, Method::GET, &format!("/ops/placements/{org}"), None);
    assert_eq!(s, 200, "{v}");
    (
        v["placement"]["shard"].as_str().unwrap().to_owned(),
        v["placement"]["database"].as_str().unwrap().to_owned(),
    )
}

/// Polls the move until it reaches a final state (or panics after `limit`).
pub fn wait_move(gw: &TestGateway, id: &str, limit: Duration) -> Value {
    let started = Instant::now();
    loop {
        let (s, v) = ops(gw, Method::GET, &format!("/ops/moves/{id}"), None);
        assert_eq!(s, 200, "{v}");
        if ["done", "failed", "cancelled"].contains(&v["state"].as_str().unwrap_or("")) {
            return v;
        }
        assert!(
            started.elapsed() < limit,
            "move did not finish in {limit:?}: {v}\n{}",
            gw.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub fn call(
    gw: &TestGateway,
    token: &str,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut r = gw.req(method, path).bearer_auth(token);
    if let Some(b) = body {
        r = r.json(&b);
    }
    match r.send() {
        Ok(resp) => {
            let status = resp.status().as_u16();
            (status, resp.json().unwrap_or(Value::Null))
        }
        Err(_) => (0, Value::Null),
    }
}

/// Inserts `n` documents of about `size` bytes in batches; returns their ids.
pub fn seed(gw: &TestGateway, token: &str, n: usize, size: usize) -> Vec<String> {
    let pad = "x".repeat(size);
    let mut ids = Vec::new();
    for chunk in (0..n).collect::<Vec<_>>().chunks(500) {
        let docs: Vec<Value> = chunk
            .iter()
            .map(|i| json!({"_id": format!("seed-{i:06}"), "n": i, "pad": pad}))
            .collect();
        let (s, v) = call(gw, token, Method::POST, "/data", Some(Value::Array(docs)));
        assert_eq!(s, 201, "{v}");
        ids.extend(chunk.iter().map(|i| format!("seed-{i:06}")));
    }
    ids
}

/// The expected state of each document, from acknowledged writes only.
pub type Expected = Arc<Mutex<BTreeMap<String, Option<i64>>>>;

/// A writer that inserts, updates and deletes documents until stopped; records what every
/// acknowledged write left behind, and every refusal.
pub struct Writer {
    stop: Arc<AtomicBool>,
    handle: Option<std::thread::JoinHandle<(u64, Vec<u16>)>>,
    pub expected: Expected,
}

impl Writer {
    pub fn start(gw: Arc<TestGateway>, token: String, seeded: &[String]) -> Writer {
        let stop = Arc::new(AtomicBool::new(false));
        let expected: Expected = Arc::new(Mutex::new(
            seeded.iter().map(|id| (id.clone(), Some(-1))).collect(),
        ));
        let (stop2, exp2, seeded) = (stop.clone(), expected.clone(), seeded.to_vec());
        let handle = std::thread::spawn(move || {
            let (mut acked, mut refused) = (0u64, Vec::new());
            let mut i: i64 = 0;
            while !stop2.load(Ordering::Relaxed) {
                i += 1;
                let (status, id, value) = match i % 4 {
                    // Insert a new document.
                    0 | 1 => {
                        let id = format!("w-{i:08}");
                        let (s, _) = call(
                            &gw,
                            &token,
                            Method::POST,
                            "/data",
                            Some(json!({"_id": id, "v": i})),
                        );
                        (s, id, Some(i))
                    }
                    // Update a seeded document.
                    2 => {
                        let id = seeded[(i as usize * 7) % seeded.len()].clone();
                        let (s, _) = call(
                            &gw,
                            &token,
                            Method::PATCH,
                            &format!("/data/{id}"),
                            Some(json!({"$set": {"v": i}})),
                        );
                        (s, id, Some(i))
                    }
                    // Delete one of the writer's own documents.
                    _ => {
                        let id = format!("w-{:08}", i - 2);
                        let (s, _) =
                            call(&gw, &token, Method::DELETE, &format!("/data/{id}"), None);
                        (s, id, None)
                    }
                };
                if status == 200 || status == 201 {
                    acked += 1;
                    let mut exp = exp2.lock().unwrap();
                    // An update of a document deleted meanwhile is a 404, never acked.
                    exp.insert(id, value);
                } else {
                    refused.push(status);
                }
            }
            (acked, refused)
        });
        Writer {
            stop,
            handle: Some(handle),
            expected,
        }
    }

    /// Stops the writer; returns (acknowledged writes, statuses of refused ones).
    pub fn stop(mut self) -> (u64, Vec<u16>) {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.take().unwrap().join().unwrap()
    }
}

/// Every acknowledged write is visible through the API exactly as the writer left it, and
/// nothing else is there.
pub fn check_expected(gw: &TestGateway, token: &str, expected: &Expected) {
    let exp = expected.lock().unwrap().clone();
    let present: BTreeMap<&String, i64> = exp
        .iter()
        .filter_map(|(id, v)| v.map(|v| (id, v)))
        .collect();
    let (s, v) = call(
        gw,
        token,
        Method::POST,
        "/data/count",
        Some(json!({"filter": {}})),
    );
    assert_eq!(s, 200, "{v}");
    assert_eq!(
        v["count"].as_u64().unwrap(),
        present.len() as u64,
        "document count after the move"
    );
    for (id, value) in &exp {
        let (s, doc) = call(gw, token, Method::GET, &format!("/data/{id}"), None);
        match value {
            Some(v) => {
                assert_eq!(s, 200, "acknowledged document {id} missing: {doc}");
                if *v >= 0 {
                    assert_eq!(doc["v"].as_i64(), Some(*v), "document {id}: {doc}");
                }
            }
            None => assert_eq!(s, 404, "deleted document {id} is back: {doc}"),
        }
    }
}

/// Moves `org` (created here, seeded with `docs` documents) to `to_shard` while a writer
/// runs; checks that the move is done and verified, no write failed, and every acknowledged
/// write is there. Returns the final move record.
/// Where a test moves a tenant.
#[allow(dead_code)]
pub enum Target<'a> {
    /// This shard.
    Shard(&'a str),
    /// Whichever of these shards the tenant is not on.
    OtherOf(&'a [&'a str]),
    /// The next database on the same shard.
    NextDatabase,
}

pub fn move_under_writes(
    gw: &Arc<TestGateway>,
    org: &str,
    email: &str,
    target: Target,
    docs: usize,
) -> Value {
    let token = gw.org_with_token(org, email);
    let (from, from_db) = placement(gw, org);
    let to_shard: Option<String> = match target {
        Target::Shard(s) => Some(s.to_owned()),
        Target::OtherOf(list) => Some(list.iter().find(|s| **s != from).unwrap().to_string()),
        Target::NextDatabase => None,
    };
    let to_shard = to_shard.as_deref();
    let seeded = seed(gw, &token, docs, 200);
    let writer = Writer::start(gw.clone(), token.clone(), &seeded);
    std::thread::sleep(Duration::from_millis(300));
    let mut body = json!({"organization_name": org, "to_shard": to_shard.unwrap_or(&from)});
    if to_shard.is_none() {
        // Database to database on the same shard.
        let n: u32 = from_db.rsplit('_').next().unwrap().parse().unwrap();
        let prefix = &from_db[..from_db.len() - n.to_string().len() - 1];
        body["to_database"] = json!(format!("{prefix}_{}", n + 1));
    }
    let (s, mv) = ops(gw, Method::POST, "/ops/moves", Some(body.clone()));
    assert_eq!(s, 202, "{mv}");
    assert_eq!(mv["state"], "queued");
    let id = mv["move_id"].as_str().unwrap().to_owned();
    // A second move of the same org is refused while this one runs.
    let (s, again) = ops(gw, Method::POST, "/ops/moves", Some(body));
    assert_eq!(s, 409, "{again}");
    let done = wait_move(gw, &id, Duration::from_secs(90));
    std::thread::sleep(Duration::from_millis(300));
    let expected = writer.expected.clone();
    let (acked, refused) = writer.stop();
    assert_eq!(done["state"], "done", "{done}\n{}", gw.log());
    assert_eq!(done["verification"]["matched"], true, "{done}");
    assert!(acked > 20, "the writer made progress: {acked}");
    assert!(
        refused.is_empty(),
        "writes failed during the move: {refused:?}\n{}",
        gw.log()
            .lines()
            .filter(|l| !l.contains("status=20"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    let (shard, db) = placement(gw, org);
    assert_eq!(shard, to_shard.unwrap_or(&from));
    if to_shard.is_none() {
        assert_ne!(db, from_db);
    }
    check_expected(gw, &token, &expected);
    done
}

#[test]
fn embedded_to_embedded_under_writes_keeps_every_acknowledged_write() {
    let gw = Arc::new(TestGateway::start_with(Options {
        config: config(&two_embedded(), ""),
        ..Options::default()
    }));
    let done = move_under_writes(
        &gw,
        "Move Me",
        "mover@example.com",
        Target::OtherOf(&["a", "b"]),
        3000,
    );
    eprintln!("move: {done}");
}

#[test]
fn database_to_database_on_one_shard_under_writes() {
    let gw = Arc::new(TestGateway::start_with(Options {
        config: config(
            "[[shards]]\nid = \"one\"\nkind = \"embedded\"\npath = \"shards/one.redb\"\n",
            "",
        ),
        ..Options::default()
    }));
    move_under_writes(
        &gw,
        "Db Hopper",
        "hopper@example.com",
        Target::NextDatabase,
        1000,
    );
}
