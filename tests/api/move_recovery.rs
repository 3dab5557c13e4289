//! Crash safety of online tenant moves: a gateway that aborts at any step of a move (the
//! `move_*` failpoints) finishes the move after a restart on the same data dir, with every
//! document intact, every acknowledged write kept, writes accepted again, and the source
//! collection dropped once the move is done.
//!
//! A writer runs through the whole scenario, crash included. A write whose reply was lost in
//! the crash may or may not have landed: the model keeps every state it may have left, and
//! the final check accepts any of them (and nothing else).

use crate::gateway::{Options, TestGateway};
use crate::moves::{config, ops, placement, two_embedded, wait_move};
use org_gateway::catalog::Location;
use org_gateway::store::{Namespace, TenantStore};
use reqwest::blocking::Client;
use reqwest::Method;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Every state a document may be in: one when the last write to it was acknowledged, more
/// while the outcome of a write cut off by the crash is unknown. `None`: no such document.
type Model = Arc<Mutex<BTreeMap<String, Vec<Option<Value>>>>>;

/// What the writer saw.
#[derive(Default, Debug)]
struct WriterReport {
    /// Writes acknowledged (2xx), and 404s that agree with the model.
    acked: u64,
    /// Writes whose outcome is unknown (connection cut, timeout, 5xx such as 503 while the
    /// tenant's writes are held by a cutover that the crash interrupted).
    unsure: u64,
    /// Writes that never reached a gateway (connection refused while it was down).
    not_sent: u64,
    /// Count of each status answered.
    statuses: BTreeMap<u16, u64>,
    /// Replies the model says are impossible (a lost or duplicated write).
    violations: Vec<String>,
}

/// Inserts, patches and deletes documents through whatever gateway `base` names (it changes
/// at a restart) until stopped.
struct CrashWriter {
    base: Arc<Mutex<String>>,
    stop: Arc<AtomicBool>,
    acked: Arc<AtomicU64>,
    handle: Option<JoinHandle<WriterReport>>,
}

/// One write and what it may leave behind.
enum Op {
    Insert(String, Value),
    Patch(String, i64),
    Delete(String),
}

fn patched(doc: &Value, v: i64) -> Value {
    let mut d = doc.clone();
    d["v"] = json!(v);
    d
}

impl CrashWriter {
    fn start(gw: &TestGateway, token: &str, seeded: &[String], model: Model) -> CrashWriter {
        let base = Arc::new(Mutex::new(gw.base.clone()));
        let stop = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(AtomicU64::new(0));
        let (base2, stop2, acked2, model2) = (base.clone(), stop.clone(), acked.clone(), model);
        let (token, seeded) = (token.to_owned(), seeded.to_vec());
        let handle = std::thread::spawn(move || {
            let client = Client::builder()
                .timeout(Duration::from_secs(20))
                .build()
                .unwrap();
            let mut report = WriterReport::default();
            let mut i: i64 = 0;
            while !stop2.load(Ordering::Relaxed) {
                i += 1;
                let op = match i % 4 {
                    0 | 1 => {
                        let id = format!("w-{i:08}");
                        Op::Insert(id.clone(), json!({"_id": id, "v": i}))
                    }
                    2 => Op::Patch(seeded[(i as usize * 7) % seeded.len()].clone(), i),
                    _ => Op::Delete(format!("w-{:08}", i - 2)),
                };
                let url = base2.lock().unwrap().clone();
                let req = match &op {
                    Op::Insert(_, doc) => client.post(format!("{url}/data")).json(doc),
                    Op::Patch(id, v) => client
                        .patch(format!("{url}/data/{id}"))
                        .json(&json!({"$set": {"v": v}})),
                    Op::Delete(id) => client.delete(format!("{url}/data/{id}")),
                };
                let reply = match req.bearer_auth(&token).send() {
                    Err(e) if e.is_connect() => {
                        // The gateway is down: nothing was sent.
                        report.not_sent += 1;
                        std::thread::sleep(Duration::from_millis(20));
                        continue;
                    }
                    Err(_) => None,
                    Ok(r) => {
                        let status = r.status().as_u16();
                        *report.statuses.entry(status).or_insert(0) += 1;
                        Some((status, r.json::<Value>().unwrap_or(Value::Null)))
                    }
                };
                let mut model = model2.lock().unwrap();
                let (id, doc_id) = match &op {
                    Op::Insert(id, _) | Op::Patch(id, _) | Op::Delete(id) => (id.clone(), id),
                };
                let states = model.entry(id.clone()).or_insert_with(|| vec![None]);
                let mut violation = |what: String| report.violations.push(what);
                match (&op, reply) {
                    (Op::Insert(_, doc), Some((201, _))) => {
                        if !states.is_empty() && !states.contains(&None) {
                            violation(format!("insert of {doc_id} acknowledged over {states:?}"));
                        }
                        *states = vec![Some(doc.clone())];
                    }
                    (Op::Insert(_, doc), Some((409, _))) => {
                        // Only an earlier insert cut off by the crash can be there.
                        if !states.contains(&Some(doc.clone())) {
                            violation(format!("insert of {doc_id}: 409 over {states:?}"));
                        }
                        *states = vec![Some(doc.clone())];
                    }
                    (Op::Patch(_, v), Some((200, got))) => {
                        let possible: Vec<Value> =
                            states.iter().flatten().map(|d| patched(d, *v)).collect();
                        if !possible.contains(&got) {
                            violation(format!(
                                "patch of {doc_id} returned {got}, expected one of {possible:?}"
                            ));
                        }
                        *states = vec![Some(got)];
                    }
                    (Op::Delete(_), Some((200, _))) => {
                        if !states.iter().any(Option::is_some) {
                            violation(format!("delete of {doc_id} acknowledged over {states:?}"));
                        }
                        *states = vec![None];
                    }
                    (Op::Patch(..) | Op::Delete(_), Some((404, _))) => {
                        if !states.contains(&None) {
                            violation(format!("{doc_id} not found, expected {states:?}"));
                        }
                        *states = vec![None];
                    }
                    (op, reply) => {
                        // Cut off, timed out or refused: it may have landed or not.
                        // (A 5xx may come after the write landed; a 4xx never should.)
                        if let Some((status, body)) = &reply {
                            if *status < 500 {
                                violation(format!("{doc_id}: unexpected {status} {body}"));
                            }
                        }
                        report.unsure += 1;
                        let after: Vec<Option<Value>> = match op {
                            Op::Insert(_, doc) => vec![Some(doc.clone())],
                            Op::Patch(_, v) => states
                                .iter()
                                .flatten()
                                .map(|d| Some(patched(d, *v)))
                                .collect(),
                            Op::Delete(_) => vec![None],
                        };
                        for s in after {
                            if !states.contains(&s) {
                                states.push(s);
                            }
                        }
                        continue;
                    }
                }
                report.acked += 1;
                acked2.fetch_add(1, Ordering::Relaxed);
            }
            report
        });
        CrashWriter {
            base,
            stop,
            acked,
            handle: Some(handle),
        }
    }

    fn acked(&self) -> u64 {
        self.acked.load(Ordering::Relaxed)
    }

    /// Points the writer at a restarted gateway.
    fn retarget(&self, gw: &TestGateway) {
        *self.base.lock().unwrap() = gw.base.clone();
    }

    fn stop(mut self) -> WriterReport {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.take().unwrap().join().unwrap()
    }
}

/// Inserts `n` documents of about 200 bytes; records them in the model; returns their ids.
fn seed(gw: &TestGateway, token: &str, n: usize, model: &Model) -> Vec<String> {
    let pad = "p".repeat(200);
    let mut ids = Vec::new();
    for chunk in (0..n).collect::<Vec<_>>().chunks(500) {
        let docs: Vec<Value> = chunk
            .iter()
            .map(|i| json!({"_id": format!("s-{i:06}"), "n": i, "pad": pad, "nested": {"i": i}}))
            .collect();
        let r = gw
            .req(Method::POST, "/data")
            .bearer_auth(token)
            .json(&docs)
            .send()
            .unwrap();
        assert_eq!(r.status(), 201, "{}", r.text().unwrap());
        let mut m = model.lock().unwrap();
        for d in docs {
            let id = d["_id"].as_str().unwrap().to_owned();
            m.insert(id.clone(), vec![Some(d)]);
            ids.push(id);
        }
    }
    ids
}

/// Every document of the tenant, by id, read in `_id` order a page at a time; panics on a
/// duplicate id.
fn all_documents(gw: &TestGateway, token: &str) -> BTreeMap<String, Value> {
    let mut out = BTreeMap::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut body = json!({"filter": {}, "sort": {"_id": 1}, "limit": 1000});
        if let Some(c) = &cursor {
            body["cursor"] = json!(c);
        }
        let r = gw
            .req(Method::POST, "/data/query")
            .bearer_auth(token)
            .json(&body)
            .send()
            .unwrap();
        assert_eq!(r.status(), 200);
        let page: Value = r.json().unwrap();
        for d in page["documents"].as_array().unwrap() {
            let id = d["_id"].as_str().unwrap().to_owned();
            assert!(
                out.insert(id.clone(), d.clone()).is_none(),
                "document {id} listed twice"
            );
        }
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => return out,
        }
    }
}

/// The tenant holds exactly the documents the model allows: each in one of its possible
/// states, nothing else, and the count agrees.
fn check_model(gw: &TestGateway, token: &str, model: &Model) {
    let model = model.lock().unwrap().clone();
    let found = all_documents(gw, token);
    let mut problems = Vec::new();
    for (id, states) in &model {
        let actual = found.get(id).cloned();
        if !states.contains(&actual) {
            problems.push(format!(
                "{id}: found {actual:?}, expected one of {states:?}"
            ));
        }
    }
    for id in found.keys().filter(|id| !model.contains_key(*id)) {
        problems.push(format!("{id}: present but never written"));
    }
    assert!(
        problems.is_empty(),
        "{} documents wrong after the move:\n{}",
        problems.len(),
        problems
            .iter()
            .take(20)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
    let r = gw
        .req(Method::POST, "/data/count")
        .bearer_auth(token)
        .json(&json!({"filter": {}}))
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.json::<Value>().unwrap()["count"].as_u64(),
        Some(found.len() as u64),
        "count disagrees with the listing"
    );
}

/// The tenant takes inserts, patches and deletes, and reads them back.
fn check_writes_accepted(gw: &TestGateway, token: &str) {
    let send = |m: Method, path: &str, body: Option<Value>| {
        let mut r = gw.req(m, path).bearer_auth(token);
        if let Some(b) = body {
            r = r.json(&b);
        }
        let r = r.send().unwrap();
        let status = r.status().as_u16();
        (status, r.json::<Value>().unwrap_or(Value::Null))
    };
    let (s, v) = send(
        Method::POST,
        "/data",
        Some(json!({"_id": "after-move", "k": 1})),
    );
    assert_eq!(s, 201, "{v}");
    let (s, v) = send(
        Method::PATCH,
        "/data/after-move",
        Some(json!({"$set": {"k": 2}})),
    );
    assert_eq!(s, 200, "{v}");
    let (s, v) = send(Method::GET, "/data/after-move", None);
    assert_eq!((s, v), (200, json!({"_id": "after-move", "k": 2})));
    let (s, v) = send(Method::DELETE, "/data/after-move", None);
    assert_eq!(s, 200, "{v}");
    let (s, _) = send(Method::GET, "/data/after-move", None);
    assert_eq!(s, 404);
}

/// Polls the move until `cleanup_done` (the source handed to the drops and dropped).
fn wait_cleanup(gw: &TestGateway, id: &str, limit: Duration) -> Value {
    let started = Instant::now();
    loop {
        let (s, v) = ops(gw, Method::GET, &format!("/ops/moves/{id}"), None);
        assert_eq!(s, 200, "{v}");
        if v["cleanup_done"] == true {
            return v;
        }
        assert!(
            started.elapsed() < limit,
            "move cleanup not done in {limit:?}: {v}\n{}",
            log_of(gw)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Tenants per shard according to `GET /ops/shards`.
fn tenants_per_shard(gw: &TestGateway) -> BTreeMap<String, u64> {
    let (s, v) = ops(gw, Method::GET, "/ops/shards", None);
    assert_eq!(s, 200, "{v}");
    v["shards"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["id"].as_str().unwrap().to_owned(),
                s["tenants"].as_u64().unwrap(),
            )
        })
        .collect()
}

/// With the gateway stopped: the collections of `loc`'s database in its embedded shard file,
/// and the document count of `loc`'s collection.
fn collections_on_disk(gw: &TestGateway, loc: &Location) -> (Vec<String>, u64) {
    let path = gw.data_dir().join(format!("shards/{}.redb", loc.shard));
    let store = org_gateway::store::embedded::EmbeddedStore::open(&path).unwrap();
    let ns = Namespace {
        database: loc.database.clone(),
        collection: loc.collection.clone(),
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let names = store.list_collections(&loc.database).await.unwrap();
        let count = store.count_all(&ns).await.unwrap_or(0);
        (names, count)
    })
}

/// The gateway's log so far, read lossily (a process that aborts may cut a line short).
fn log_of(gw: &TestGateway) -> String {
    let bytes = std::fs::read(gw.data_dir().join("gateway.log")).unwrap_or_default();
    String::from_utf8_lossy(&bytes).into_owned()
}

/// Per-scenario settings.
struct Crash {
    failpoint: &'static str,
    /// `[moves]` settings (besides the helper's `source_grace_seconds = 1`). The write pause
    /// is generous: on a loaded machine a debug build does not always fit the cutover in the
    /// default 500 ms, and a move failed for that is not what these tests are about.
    moves: &'static str,
    docs: usize,
    org: &'static str,
}

/// Starts a move of a seeded tenant under writes with `failpoint` armed, lets the process
/// abort there, restarts without it and checks the move completes with nothing lost.
fn crash_and_resume(c: Crash) {
    let email = format!("{}@example.com", c.org.to_lowercase().replace(' ', "-"));
    let mut config = config(&two_embedded(), c.moves);
    let catalog = mongo_catalog(&mut config);
    let mut gw = TestGateway::start_with(Options {
        config,
        env: vec![("GATEWAY_FAILPOINT".into(), c.failpoint.into())],
        ..Options::default()
    });
    let token = gw.org_with_token(c.org, &email);
    let model: Model = Arc::default();
    let seeded = seed(&gw, &token, c.docs, &model);
    // An index of the tenant's, which the move re-creates on the target whatever it crashed.
    let r = gw
        .req(Method::POST, "/data/indexes")
        .bearer_auth(&token)
        .json(&json!({"keys": {"v": 1}, "name": "by_v"}))
        .send()
        .unwrap();
    assert_eq!(r.status(), 201);
    let (from_shard, _) = placement(&gw, c.org);
    let to_shard = if from_shard == "a" { "b" } else { "a" };
    let writer = CrashWriter::start(&gw, &token, &seeded, model.clone());
    std::thread::sleep(Duration::from_millis(300));
    let acked_at_move = writer.acked();
    let body = json!({"organization_name": c.org, "to_shard": to_shard});
    // The abort may cut this reply off (the runner starts within a tick).
    let started = gw
        .client
        .post(format!("{}/ops/moves", gw.ops))
        .bearer_auth(crate::moves::OPS_TOKEN)
        .json(&body)
        .send()
        .ok()
        .map(|r| (r.status().as_u16(), r.json::<Value>().unwrap_or_default()));
    if let Some((s, v)) = &started {
        assert_eq!(*s, 202, "{v}");
    }
    assert!(
        gw.wait_exit(Duration::from_secs(90)),
        "the gateway never reached {}:\n{}",
        c.failpoint,
        log_of(&gw)
    );
    let acked_before_crash = writer.acked();
    let log = log_of(&gw);
    assert!(
        log.contains("failpoint reached") && log.contains(&format!("\"{}\"", c.failpoint)),
        "the process died elsewhere:\n{log}"
    );
    gw.env.clear();
    gw.restart();
    writer.retarget(&gw);
    let id = match started {
        Some((_, v)) => v["move_id"].as_str().unwrap().to_owned(),
        None => {
            let (s, v) = ops(&gw, Method::GET, "/ops/moves", None);
            assert_eq!(s, 200, "{v}");
            v["moves"][0]["move_id"].as_str().unwrap().to_owned()
        }
    };
    let done = wait_move(&gw, &id, Duration::from_secs(120));
    assert_eq!(done["state"], "done", "{done}\n{}", log_of(&gw));
    eprintln!("{}: {done}", c.failpoint);
    if c.failpoint == "move_in_cutover" {
        // The interrupted cutover was abandoned (writes went back to the source), then
        // tried again; writes acknowledged while the move captured them (so only its change
        // log carried them to the target) were checked.
        assert!(done["cutover_attempts"].as_u64() >= Some(1), "{done}");
        assert!(
            acked_before_crash > acked_at_move,
            "no write was acknowledged while the move ran ({acked_at_move} before it)"
        );
    }
    // The writer goes on for a while on the target.
    let after = writer.acked();
    let deadline = Instant::now() + Duration::from_secs(30);
    while writer.acked() < after + 20 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let report = writer.stop();
    eprintln!(
        "{}: acknowledged {} writes ({acked_before_crash} before the crash), {} unsure, {} not sent; statuses {:?}",
        c.failpoint, report.acked, report.unsure, report.not_sent, report.statuses
    );
    assert!(
        report.violations.is_empty(),
        "replies that contradict acknowledged writes:\n{}\n{}",
        report.violations.join("\n"),
        log_of(&gw)
    );
    assert!(
        acked_before_crash >= 5,
        "the writer made progress before the crash"
    );
    assert!(
        report.acked >= acked_before_crash + 20,
        "the writer made progress after the restart: {report:?}"
    );
    // Where the move record says, which is where it was asked to go.
    let from: Location = serde_json::from_value(done["from"].clone()).unwrap();
    let to: Location = serde_json::from_value(done["to"].clone()).unwrap();
    assert_eq!(from.shard.as_str(), from_shard);
    assert_eq!(to.shard.as_str(), to_shard);
    assert_eq!(
        placement(&gw, c.org),
        (to.shard.to_string(), to.database.to_string()),
        "{done}"
    );
    if c.failpoint != "move_after_switch" {
        // (A crash right after the switch loses the record of the comparison, not the move.)
        assert_eq!(done["verification"]["matched"], true, "{done}");
    }
    check_model(&gw, &token, &model);
    check_writes_accepted(&gw, &token);
    let indexes: Value = gw
        .req(Method::GET, "/data/indexes")
        .bearer_auth(&token)
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert!(
        indexes["indexes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|i| i["name"] == "by_v" && i["state"] == "ready"),
        "{}: {indexes}",
        c.failpoint
    );
    // Its event was written once, with the switch, wherever the process died.
    let (s, events) = ops(
        &gw,
        Method::GET,
        &format!(
            "/ops/events?type=tenant.moved&organization={}",
            c.org.replace(' ', "%20")
        ),
        None,
    );
    assert_eq!(s, 200, "{events}");
    let moved: Vec<&Value> = events["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["details"]["move_id"] == id.as_str())
        .collect();
    assert_eq!(moved.len(), 1, "{}: {events}", c.failpoint);
    // The source is dropped after the grace period (a crash while the drop held the
    // collection's lease delays it until that lease expires: 60 s).
    let waited = Instant::now();
    let cleaned = wait_cleanup(&gw, &id, Duration::from_secs(120));
    eprintln!(
        "{}: source dropped {:?} after the check",
        c.failpoint,
        waited.elapsed()
    );
    assert_eq!(cleaned["state"], "done");
    let tenants = tenants_per_shard(&gw);
    assert_eq!(tenants.get(&from_shard), Some(&0), "{tenants:?}");
    assert_eq!(tenants.get(to_shard), Some(&1), "{tenants:?}");
    let expected = all_documents(&gw, &token).len() as u64;
    gw.kill();
    let (names, _) = collections_on_disk(&gw, &from);
    assert!(
        !names.contains(&from.collection.to_string()),
        "source collection still there after the move: {names:?}"
    );
    let (names, count) = collections_on_disk(&gw, &to);
    assert!(names.contains(&to.collection.to_string()), "{names:?}");
    assert_eq!(count, expected);
    if let Some((uri, db)) = catalog {
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(crate::mongo_env::drop_db(&uri, &db));
    }
}

/// With `TEST_ON_MONGODB=1`, puts the catalog on the test MongoDB server (as the harness
/// would, with its patient client), in a fresh database. Returns the URI and database.
fn mongo_catalog(config: &mut String) -> Option<(String, String)> {
    if !crate::gateway::on_mongodb() {
        return None;
    }
    let uri = crate::mongo_env::uri().expect("TEST_ON_MONGODB needs MONGODB_URI");
    let db = crate::mongo_env::unique_db("mrcat");
    config.push_str(&format!(
        "\n[catalog]\nkind = \"mongodb\"\nuri = \"{uri}\"\ndatabase = \"{db}\"\n\
         recovery_grace_seconds = 0\n"
    ));
    Some((uri, db))
}

#[test]
fn crash_after_capture_is_on_then_resumed_and_completed() {
    crash_and_resume(Crash {
        failpoint: "move_after_capture",
        moves: "copy_docs_per_second = 1000\nbatch_size = 100\nmax_write_pause_ms = 2000",
        docs: 1500,
        org: "Crash Capture",
    });
}

#[test]
fn crash_during_the_copy_resumes_from_the_journal() {
    crash_and_resume(Crash {
        failpoint: "move_during_copy",
        moves: "copy_docs_per_second = 300\nbatch_size = 50\nmax_write_pause_ms = 2000",
        docs: 1500,
        org: "Crash Copy",
    });
}

#[test]
fn crash_after_the_copy_catches_up_and_completes() {
    crash_and_resume(Crash {
        failpoint: "move_after_copy",
        moves: "copy_docs_per_second = 1000\nbatch_size = 100\nmax_write_pause_ms = 2000",
        docs: 1500,
        org: "Crash Copied",
    });
}

/// Writes are held at cutover; the crash abandons the cutover and writes resume on the
/// source: every write acknowledged before the crash (captured in the move's log, or copied)
/// is on the target at the end.
#[test]
fn crash_in_cutover_abandons_it_and_loses_no_acknowledged_write() {
    crash_and_resume(Crash {
        failpoint: "move_in_cutover",
        moves: "copy_docs_per_second = 1000\nbatch_size = 100\nmax_write_pause_ms = 2000",
        docs: 1500,
        org: "Crash Cutover",
    });
}

#[test]
fn crash_right_after_the_switch_finishes_the_bookkeeping() {
    crash_and_resume(Crash {
        failpoint: "move_after_switch",
        moves: "copy_docs_per_second = 1000\nbatch_size = 100\nmax_write_pause_ms = 2000",
        docs: 1500,
        org: "Crash Switch",
    });
}

#[test]
fn crash_after_releasing_the_source_still_drops_it() {
    crash_and_resume(Crash {
        failpoint: "move_after_release",
        moves: "copy_docs_per_second = 1000\nbatch_size = 100\nmax_write_pause_ms = 2000",
        docs: 1500,
        org: "Crash Release",
    });
}
