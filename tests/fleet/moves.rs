//! Online tenant moves in a fleet: two gateways on one MongoDB catalog, two MongoDB shards.
//! A move asked for on one instance (and run by whichever takes its lease) while a client
//! writes through the other loses no acknowledged write, fails none, and leaves both
//! instances routing to the new shard; a move whose runner is killed is resumed by the other
//! instance once the move's lease expires.

use crate::cluster::{authed, ops_get, Cluster, OPS_TOKEN};
use crate::gateway::TestGateway;
use crate::mongo_env::{self, PATIENT_MS};
use reqwest::blocking::Client;
use reqwest::Method;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// A cluster with a second MongoDB shard (`mongo2`, on `MONGODB_URI_2`) besides the
/// cluster's `mongo`; the second shard's database is dropped at the end.
struct TwoShards {
    cluster: Cluster,
    uri_2: String,
    prefix_2: String,
}

impl Drop for TwoShards {
    fn drop(&mut self) {
        let rt = tokio::runtime::Runtime::new().unwrap();
        for n in 1..=2 {
            rt.block_on(mongo_env::drop_db(
                &self.uri_2,
                &format!("{}_{n}", self.prefix_2),
            ));
        }
    }
}

impl TwoShards {
    /// `None` when MongoDB is not configured (the test skips). `moves`: `[moves]` settings
    /// (the tests give the cutover 2 s: on a loaded machine a debug build does not always fit
    /// it in the default 500 ms, and the move then fails after its attempts).
    fn new(moves: &str) -> Option<Self> {
        let uri_2 = mongo_env::uri_2()?;
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        // Shard database prefixes are short (at most 20 characters).
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let prefix_2 = format!(
            "m{:x}{n}x{:x}",
            std::process::id() % 0xffff,
            nanos % 0xfffff
        );
        let extra = format!(
            "[limits]\nrequests_per_minute = 1000000\nrequests_per_hour = 100000000\n\
             [moves]\n{moves}\n\
             [[shards]]\nid = \"mongo2\"\nkind = \"mongodb\"\nuri = \"{uri_2}\"\n\
             database_prefix = \"{prefix_2}\"\nserver_selection_timeout_ms = {PATIENT_MS}\n"
        );
        let mut cluster = Cluster::new(&extra)?;
        // The URIs are patient (see `mongo_env::patient`); the shards' selection timeout
        // matches, so a stalled test server delays a request rather than failing it.
        cluster.config = cluster.config.replace(
            &format!("database_prefix = \"{}\"\n", cluster.prefix),
            &format!(
                "database_prefix = \"{}\"\nserver_selection_timeout_ms = {PATIENT_MS}\n",
                cluster.prefix
            ),
        );
        Some(Self {
            cluster,
            uri_2,
            prefix_2,
        })
    }
}

fn ops_post(gw: &TestGateway, path: &str, body: &Value) -> (u16, Value) {
    let r = gw
        .client
        .post(format!("{}{path}", gw.ops))
        .bearer_auth(OPS_TOKEN)
        .json(body)
        .send()
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().unwrap_or(Value::Null))
}

/// Where `gw` routes the organization: (shard, database).
fn placement(gw: &TestGateway, org: &str) -> (String, String) {
    let v = ops_get(gw, &format!("/ops/placements/{}", org.replace(' ', "%20")));
    (
        v["placement"]["shard"].as_str().unwrap().to_owned(),
        v["placement"]["database"].as_str().unwrap().to_owned(),
    )
}

/// Polls until `gw` routes the organization to `shard` (instances apply the switch through
/// the change feed; the move's last fence is best effort).
fn wait_placement(gw: &TestGateway, org: &str, shard: &str, limit: Duration) -> (String, String) {
    let started = Instant::now();
    loop {
        let p = placement(gw, org);
        if p.0 == shard {
            return p;
        }
        assert!(
            started.elapsed() < limit,
            "{} still routes {org} to {p:?} after {limit:?}",
            gw.base
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn get_move(gw: &TestGateway, id: &str) -> Value {
    ops_get(gw, &format!("/ops/moves/{id}"))
}

/// Polls the move on `gw` until it ends; panics after `limit`.
fn wait_move(gw: &TestGateway, id: &str, limit: Duration) -> Value {
    let started = Instant::now();
    loop {
        let v = get_move(gw, id);
        if ["done", "failed", "cancelled"].contains(&v["state"].as_str().unwrap_or("")) {
            return v;
        }
        assert!(
            started.elapsed() < limit,
            "move did not end in {limit:?}: {v}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Whether `gw`'s log shows it started copying this move (it holds the move's lease).
fn ran_copy(gw: &TestGateway, id: &str) -> bool {
    log_of(gw)
        .lines()
        .any(|l| l.contains("move: copying") && l.contains(id))
}

/// Inserts `n` documents of about 200 bytes through `gw`; returns them by id.
fn seed(gw: &TestGateway, token: &str, n: usize) -> BTreeMap<String, Value> {
    let pad = "q".repeat(200);
    let mut out = BTreeMap::new();
    for chunk in (0..n).collect::<Vec<_>>().chunks(500) {
        let docs: Vec<Value> = chunk
            .iter()
            .map(|i| json!({"_id": format!("s-{i:06}"), "n": i, "pad": pad}))
            .collect();
        let r = authed(gw, Method::POST, "/data", token)
            .json(&docs)
            .send()
            .unwrap();
        assert_eq!(r.status(), 201, "{}", r.text().unwrap());
        for d in docs {
            out.insert(d["_id"].as_str().unwrap().to_owned(), d);
        }
    }
    out
}

/// What every acknowledged write left: the document, or `None` when deleted.
type Expected = Arc<Mutex<BTreeMap<String, Option<Value>>>>;

/// What the writer saw.
#[derive(Debug, Default)]
struct Report {
    acked: u64,
    /// Writes not acknowledged: (status, 0 when no reply, what was sent).
    refused: Vec<(u16, String)>,
    /// Replies that contradict an earlier acknowledged write.
    violations: Vec<String>,
    /// Every write: what, which document, the status and the gateway's request id.
    journal: Vec<String>,
    /// Attempts answered 503 `shard_unavailable` (retried).
    shard_outages: u64,
}

impl Report {
    /// The journal's lines about document `id`.
    fn history(&self, id: &str) -> Vec<&String> {
        self.journal
            .iter()
            .filter(|l| l.split_whitespace().nth(1) == Some(id))
            .collect()
    }
}

/// Inserts, patches and deletes documents through one instance until stopped.
struct Writer {
    stop: Arc<AtomicBool>,
    acked: Arc<AtomicU64>,
    handle: Option<JoinHandle<Report>>,
    expected: Expected,
}

impl Writer {
    fn start(base: String, token: String, seeded: BTreeMap<String, Value>) -> Writer {
        let stop = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(AtomicU64::new(0));
        let seeded_ids: Vec<String> = seeded.keys().cloned().collect();
        let expected: Expected = Arc::new(Mutex::new(
            seeded.into_iter().map(|(id, d)| (id, Some(d))).collect(),
        ));
        let (stop2, acked2, exp2) = (stop.clone(), acked.clone(), expected.clone());
        let handle = std::thread::spawn(move || {
            let client = Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .unwrap();
            let mut report = Report::default();
            let mut i: i64 = 0;
            while !stop2.load(Ordering::Relaxed) {
                i += 1;
                let (id, what) = match i % 4 {
                    0 | 1 => (format!("w-{i:08}"), "insert"),
                    2 => (
                        seeded_ids[(i as usize * 7) % seeded_ids.len()].clone(),
                        "patch",
                    ),
                    _ => (format!("w-{:08}", i - 2), "delete"),
                };
                let send = || {
                    let req = match what {
                        "insert" => client
                            .post(format!("{base}/data"))
                            .json(&json!({"_id": id, "v": i})),
                        "patch" => client
                            .patch(format!("{base}/data/{id}"))
                            .json(&json!({"$set": {"v": i}})),
                        _ => client.delete(format!("{base}/data/{id}")),
                    };
                    match req.bearer_auth(&token).send() {
                        Ok(r) => {
                            let s = r.status().as_u16();
                            let rid = r
                                .headers()
                                .get("x-request-id")
                                .and_then(|v| v.to_str().ok())
                                .unwrap_or("-")
                                .to_owned();
                            (s, r.json::<Value>().unwrap_or(Value::Null), rid)
                        }
                        Err(e) => (0, json!(e.to_string()), "-".to_owned()),
                    }
                };
                // A shard outage (the MongoDB driver losing its connection on a loaded
                // machine) has nothing to do with the move: retry the write as a client
                // would. Every write here is idempotent once its first attempt may have
                // landed: a 409 (insert) or 404 (delete) on a retry means it had.
                let mut attempt = 0;
                let (status, body) = loop {
                    let (status, body, request_id) = send();
                    report
                        .journal
                        .push(format!("{what} {id} {status} {request_id}"));
                    let outage = status == 503 && body["code"] == "shard_unavailable";
                    if outage && attempt < 50 {
                        report.shard_outages += 1;
                        attempt += 1;
                        std::thread::sleep(Duration::from_millis(100));
                        continue;
                    }
                    let landed_before = attempt > 0
                        && ((what == "insert" && status == 409)
                            || (what == "delete" && status == 404));
                    break (if landed_before { 200 } else { status }, body);
                };
                if status != 200 && status != 201 {
                    report
                        .refused
                        .push((status, format!("{what} {id}: {body}")));
                    continue;
                }
                let mut exp = exp2.lock().unwrap();
                let next = match what {
                    "insert" => Some(json!({"_id": id, "v": i})),
                    "patch" => {
                        let mut d = exp.get(&id).cloned().flatten().unwrap_or(Value::Null);
                        d["v"] = json!(i);
                        if d != body {
                            report
                                .violations
                                .push(format!("patch of {id} returned {body}, expected {d}"));
                        }
                        Some(body)
                    }
                    _ => None,
                };
                exp.insert(id, next);
                report.acked += 1;
                acked2.fetch_add(1, Ordering::Relaxed);
            }
            report
        });
        Writer {
            stop,
            acked,
            handle: Some(handle),
            expected,
        }
    }

    fn acked(&self) -> u64 {
        self.acked.load(Ordering::Relaxed)
    }

    fn stop(mut self) -> Report {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.take().unwrap().join().unwrap()
    }
}

/// Every document of the tenant as `gw` serves it, read in `_id` order a page at a time;
/// panics on an id listed twice.
fn all_documents(gw: &TestGateway, token: &str) -> BTreeMap<String, Value> {
    let mut out = BTreeMap::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut body = json!({"filter": {}, "sort": {"_id": 1}, "limit": 1000});
        if let Some(c) = &cursor {
            body["cursor"] = json!(c);
        }
        let r = authed(gw, Method::POST, "/data/query", token)
            .json(&body)
            .send()
            .unwrap();
        assert_eq!(r.status(), 200);
        let page: Value = r.json().unwrap();
        for d in page["documents"].as_array().unwrap() {
            let id = d["_id"].as_str().unwrap().to_owned();
            assert!(
                out.insert(id.clone(), d.clone()).is_none(),
                "{id} listed twice"
            );
        }
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => return out,
        }
    }
}

/// `gw` serves exactly the acknowledged state: every document as last acknowledged, no
/// deleted one, nothing else; the count agrees.
fn check_expected(gw: &TestGateway, token: &str, expected: &Expected) {
    let exp = expected.lock().unwrap().clone();
    let found = all_documents(gw, token);
    let mut problems = Vec::new();
    for (id, want) in &exp {
        let got = found.get(id);
        if got != want.as_ref() {
            problems.push(format!("{id}: {got:?}, acknowledged {want:?}"));
        }
    }
    for id in found.keys().filter(|id| !exp.contains_key(*id)) {
        problems.push(format!("{id}: present but never acknowledged"));
    }
    assert!(
        problems.is_empty(),
        "{}: {} documents differ from the acknowledged writes:\n{}",
        gw.base,
        problems.len(),
        problems
            .iter()
            .take(20)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
    let r = authed(gw, Method::POST, "/data/count", token)
        .json(&json!({"filter": {}}))
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.json::<Value>().unwrap()["count"].as_u64(),
        Some(found.len() as u64)
    );
}

/// How many writes `gw` held for a cutover (its `/metrics`).
fn held_writes(gw: &TestGateway) -> u64 {
    let text = gw
        .client
        .get(format!("{}/metrics", gw.ops))
        .bearer_auth(OPS_TOKEN)
        .send()
        .and_then(|r| r.text())
        .unwrap_or_default();
    text.lines()
        .find_map(|l| l.strip_prefix("org_gateway_move_held_write_seconds_count "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0)
}

/// For a failure message: where the document `id` is, as each instance serves it and in the
/// move's source and target collections on MongoDB.
fn locate(shards: &TwoShards, gws: &[&TestGateway], token: &str, mv: &Value, id: &str) -> String {
    let mut out = Vec::new();
    for gw in gws {
        let r = authed(gw, Method::GET, &format!("/data/{id}"), token).send();
        out.push(format!(
            "{}: {:?}",
            gw.base,
            r.map(|r| r.status().as_u16()).map_err(|e| e.to_string())
        ));
    }
    let rt = tokio::runtime::Runtime::new().unwrap();
    for end in ["from", "to"] {
        let loc = &mv[end];
        let uri = if loc["shard"] == "mongo2" {
            &shards.uri_2
        } else {
            &shards.cluster.uri
        };
        let (db, coll) = (
            loc["database"].as_str().unwrap_or(""),
            loc["collection"].as_str().unwrap_or(""),
        );
        let found = rt.block_on(async {
            let client = mongodb::Client::with_uri_str(uri).await?;
            client
                .database(db)
                .collection::<mongodb::bson::Document>(coll)
                .find_one(mongodb::bson::doc! {"_id": id})
                .await
        });
        out.push(format!("{end} {db}.{coll}: {found:?}"));
    }
    out.join("; ")
}

fn other_shard(shard: &str) -> &'static str {
    if shard == "mongo" {
        "mongo2"
    } else {
        "mongo"
    }
}

/// The instance's log so far (read lossily: a process killed mid-line may leave a cut
/// character).
fn log_of(gw: &TestGateway) -> String {
    let bytes = std::fs::read(gw.data_dir.join("gateway.log")).unwrap_or_default();
    String::from_utf8_lossy(&bytes).into_owned()
}

/// Prints the logs of both instances, filtered to what matters for a move.
fn move_logs(gws: &[&TestGateway]) -> String {
    gws.iter()
        .map(|g| {
            let lines: Vec<String> = log_of(g)
                .lines()
                .filter(|l| !l.contains("access: request") || !l.contains("status=20"))
                .map(str::to_owned)
                .collect();
            format!("--- {} ---\n{}", g.base, lines.join("\n"))
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn a_move_asked_on_a_while_b_takes_writes_loses_and_fails_none() {
    // The source is kept (a long grace period) so a failure can show what it held.
    let moves = "copy_docs_per_second = 500\nbatch_size = 100\nmax_write_pause_ms = 2000\n\
                 source_grace_seconds = 3600";
    let Some(shards) = TwoShards::new(moves) else {
        return;
    };
    let a = shards.cluster.start();
    let b = shards.cluster.start();
    let org = "Fleet Mover";
    let token = a.org_with_token(org, "mover@fleet.example");
    let seeded = seed(&b, &token, 2000);
    let (from, _) = placement(&a, org);
    assert_eq!(placement(&b, org).0, from);
    let to = other_shard(&from);
    let writer = Writer::start(b.base.clone(), token.clone(), seeded);
    std::thread::sleep(Duration::from_millis(300));
    let started = Instant::now();
    let (s, mv) = ops_post(
        &a,
        "/ops/moves",
        &json!({"organization_name": org, "to_shard": to}),
    );
    assert_eq!(s, 202, "{mv}");
    let id = mv["move_id"].as_str().unwrap().to_owned();
    let done = wait_move(&a, &id, Duration::from_secs(120));
    let took = started.elapsed();
    // Writes go on for a while after the switch.
    let acked = writer.acked();
    let deadline = Instant::now() + Duration::from_secs(20);
    while writer.acked() < acked + 20 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let expected = writer.expected.clone();
    let report = writer.stop();
    let runner = match (ran_copy(&a, &id), ran_copy(&b, &id)) {
        (true, false) => "A",
        (false, true) => "B",
        (true, true) => "A and B (the lease changed hands)",
        (false, false) => "neither (no copy logged)",
    };
    eprintln!(
        "move {from} -> {to} ran on {runner} in {took:?}: {done}\nwriter through B: {} acknowledged, {} refused, {} shard outages retried, {} held by the cutover",
        report.acked,
        report.refused.len(),
        report.shard_outages,
        held_writes(&b)
    );
    assert_eq!(done["state"], "done", "{done}\n{}", move_logs(&[&a, &b]));
    assert_eq!(done["verification"]["matched"], true, "{done}");
    assert_eq!(get_move(&b, &id)["state"], "done");
    let located: Vec<String> = report
        .refused
        .iter()
        .take(5)
        .map(|(_, what)| {
            let id = what
                .split_whitespace()
                .nth(1)
                .unwrap_or("")
                .trim_end_matches(':');
            format!(
                "{id}: {}; writes {:?}",
                locate(&shards, &[&a, &b], &token, &done, id),
                report.history(id)
            )
        })
        .collect();
    assert!(
        report.refused.is_empty(),
        "writes through B failed during the move (held writes must wait): {:?}\nwhere they are: {located:#?}\n{}",
        &report.refused[..report.refused.len().min(20)],
        move_logs(&[&a, &b])
    );
    assert!(report.violations.is_empty(), "{:?}", report.violations);
    assert!(report.acked > 20, "the writer made progress: {report:?}");
    // Both instances route to the target, where the move record says.
    let want = (
        done["to"]["shard"].as_str().unwrap().to_owned(),
        done["to"]["database"].as_str().unwrap().to_owned(),
    );
    assert_eq!(want.0, to);
    for gw in [&a, &b] {
        assert_eq!(
            wait_placement(gw, org, to, Duration::from_secs(10)),
            want,
            "{}",
            gw.base
        );
    }
    check_expected(&a, &token, &expected);
    check_expected(&b, &token, &expected);
}

#[test]
fn a_move_whose_runner_is_killed_mid_copy_is_resumed_by_the_other_instance() {
    // 2000 documents at 150 a second: the copy lasts over ten seconds.
    let moves = "copy_docs_per_second = 150\nbatch_size = 50\nmax_write_pause_ms = 2000\n\
                 source_grace_seconds = 1";
    let Some(shards) = TwoShards::new(moves) else {
        return;
    };
    let mut gws = [shards.cluster.start(), shards.cluster.start()];
    let org = "Fleet Orphan";
    let token = gws[0].org_with_token(org, "orphan@fleet.example");
    let seeded = seed(&gws[0], &token, 2000);
    let (from, _) = placement(&gws[0], org);
    let to = other_shard(&from);
    let (s, mv) = ops_post(
        &gws[0],
        "/ops/moves",
        &json!({"organization_name": org, "to_shard": to}),
    );
    assert_eq!(s, 202, "{mv}");
    let id = mv["move_id"].as_str().unwrap().to_owned();
    // Find the instance that took the move, and let it copy for a while.
    let started = Instant::now();
    let runner = loop {
        if let Some(i) = (0..2).find(|i| ran_copy(&gws[*i], &id)) {
            break i;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "no instance started copying\n{}",
            move_logs(&[&gws[0], &gws[1]])
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let survivor = 1 - runner;
    let writer = Writer::start(gws[survivor].base.clone(), token.clone(), seeded);
    let started = Instant::now();
    loop {
        let v = get_move(&gws[survivor], &id);
        if v["docs_copied"].as_u64().unwrap_or(0) >= 200 {
            assert_eq!(v["state"], "copying", "the copy should last longer: {v}");
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the copy made no progress: {v}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    gws[runner].kill();
    let killed = Instant::now();
    let at_kill = get_move(&gws[survivor], &id);
    let copied_at_kill = at_kill["docs_copied"].as_u64().unwrap();
    assert_eq!(at_kill["state"], "copying", "{at_kill}");
    // The survivor takes the move once its lease (15 s) expires.
    let resumed = loop {
        let v = get_move(&gws[survivor], &id);
        if v["state"] != "copying" || v["docs_copied"].as_u64().unwrap() > copied_at_kill {
            break killed.elapsed();
        }
        assert!(
            killed.elapsed() < Duration::from_secs(60),
            "the move was not resumed within 60 s of its runner's death: {v}\n{}",
            move_logs(&[&gws[survivor]])
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let done = wait_move(&gws[survivor], &id, Duration::from_secs(120));
    let acked = writer.acked();
    let deadline = Instant::now() + Duration::from_secs(20);
    while writer.acked() < acked + 20 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let expected = writer.expected.clone();
    let report = writer.stop();
    eprintln!(
        "runner killed after {copied_at_kill} documents; resumed after {resumed:?}, done after {:?}: {done}\nwriter: {} acknowledged, {} refused, {} shard outages retried",
        killed.elapsed(),
        report.acked,
        report.refused.len(),
        report.shard_outages
    );
    let g = &gws[survivor];
    assert_eq!(done["state"], "done", "{done}\n{}", move_logs(&[g]));
    assert_eq!(done["verification"]["matched"], true, "{done}");
    assert!(
        log_of(g).contains("move: catching up"),
        "the survivor finished the copy"
    );
    assert!(
        report.refused.is_empty(),
        "writes through the survivor failed: {:?}\n{}",
        &report.refused[..report.refused.len().min(20)],
        move_logs(&[g])
    );
    assert!(report.violations.is_empty(), "{:?}", report.violations);
    assert!(report.acked > 20, "the writer made progress: {report:?}");
    assert_eq!(
        wait_placement(g, org, to, Duration::from_secs(10)),
        (
            to.to_owned(),
            done["to"]["database"].as_str().unwrap().to_owned()
        )
    );
    check_expected(g, &token, &expected);
}
