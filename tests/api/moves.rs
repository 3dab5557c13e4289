//! Online tenant moves over HTTP: a writer keeps writing while the tenant moves, and every
//! acknowledged write is on the target afterwards, exactly once.

use crate::gateway::{assert_problem, Options, TestGateway};
use crate::mongo_env::unique_prefix;
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

/// `[moves]` settings for a test whose tenant has a writer. The cutover's work (a fence,
/// the last changes, the recheck) must fit the write pause. With the test's SecantusDB (a
/// slow Python server) as the catalog (TEST_ON_MONGODB=1) or as one of the shards, a fence
/// or a batch of reads often takes more than the default 500 ms under load, and every cutover
/// is abandoned until the move fails; those runs get a larger budget. Embedded shards on the
/// embedded catalog keep the default.
pub fn writer_moves(mongodb_shard: bool) -> &'static str {
    if mongodb_shard {
        // Smaller copy batches too: one SecantusDB call on 1000 documents can outlast its
        // server monitor's timeout when the server is busy (the pool is then cleared).
        "max_write_pause_ms = 3000\nbatch_size = 200"
    } else if crate::gateway::on_mongodb() {
        "max_write_pause_ms = 3000"
    } else {
        ""
    }
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

/// Creates an organization and logs its admin in; returns the token. A 503 (a create
/// abandoned and rolled back, which the API asks clients to retry; seen when the test's
/// SecantusDB is slow) is retried a few times.
pub fn create_org(gw: &TestGateway, name: &str, email: &str) -> String {
    for _ in 0..5 {
        let r = gw.create_org(name, email, "password123");
        if r.status() != 503 {
            assert_eq!(r.status(), 201, "create {name}: {}", r.text().unwrap());
            let r = gw.login(email, "password123");
            assert_eq!(r.status(), 200, "login {email}");
            return r.json::<Value>().unwrap()["access_token"]
                .as_str()
                .unwrap()
                .to_owned();
        }
        std::thread::sleep(Duration::from_secs(1));
    }
    panic!("create {name}: 503 five times\n{}", gw.log());
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
    #[allow(dead_code)] // for other test modules
    pub fn start(gw: Arc<TestGateway>, token: String, seeded: &[String]) -> Writer {
        Writer::paced(gw, token, seeded, Duration::ZERO)
    }

    /// Like [`Writer::start`], waiting `pause` after each write.
    pub fn paced(
        gw: Arc<TestGateway>,
        token: String,
        seeded: &[String],
        pause: Duration,
    ) -> Writer {
        let stop = Arc::new(AtomicBool::new(false));
        let expected: Expected = Arc::new(Mutex::new(
            seeded.iter().map(|id| (id.clone(), Some(-1))).collect(),
        ));
        let (stop2, exp2, seeded) = (stop.clone(), expected.clone(), seeded.to_vec());
        let handle = std::thread::spawn(move || {
            let (mut acked, mut refused) = (0u64, Vec::new());
            let mut i: i64 = 0;
            while !stop2.load(Ordering::Relaxed) {
                std::thread::sleep(pause);
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

impl Drop for Writer {
    /// A test that fails while the writer runs still stops it: the writer's thread holds the
    /// gateway, which would otherwise outlive the test process (its drop kills the child).
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
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

/// Moves `org` (created here, seeded with `docs` documents) to `target` while a writer
/// runs; checks that the move is done and verified, no write failed, and every acknowledged
/// write is there. Returns the final move record.
pub fn move_under_writes(
    gw: &Arc<TestGateway>,
    org: &str,
    email: &str,
    target: Target,
    docs: usize,
) -> Value {
    let token = create_org(gw, org, email);
    move_org_under_writes(gw, org, &token, target, docs)
}

/// [`move_under_writes`] for an organization that already exists (and is empty); `token`
/// is its admin's.
pub fn move_org_under_writes(
    gw: &Arc<TestGateway>,
    org: &str,
    token: &str,
    target: Target,
    docs: usize,
) -> Value {
    move_org_under_paced_writes(gw, org, token, target, docs, Duration::ZERO)
}

/// [`move_org_under_writes`] with a writer that waits `pause` after each write. A move
/// converges only while the tenant writes slower than the target applies its changes: a
/// writer at full speed on an embedded source outpaces the test's SecantusDB as a target.
pub fn move_org_under_paced_writes(
    gw: &Arc<TestGateway>,
    org: &str,
    token: &str,
    target: Target,
    docs: usize,
    pause: Duration,
) -> Value {
    let token = token.to_owned();
    let (from, from_db) = placement(gw, org);
    let to_shard: Option<String> = match target {
        Target::Shard(s) => Some(s.to_owned()),
        Target::OtherOf(list) => Some(list.iter().find(|s| **s != from).unwrap().to_string()),
        Target::NextDatabase => None,
    };
    let to_shard = to_shard.as_deref();
    let seeded = seed(gw, &token, docs, 200);
    let writer = Writer::paced(gw.clone(), token.clone(), &seeded, pause);
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
    // The finished move is an audit event of the organization.
    let (s, events) = ops(
        gw,
        Method::GET,
        &format!(
            "/ops/events?type=tenant.moved&organization={}",
            org.replace(' ', "%20")
        ),
        None,
    );
    assert_eq!(s, 200, "{events}");
    assert_eq!(
        events["events"][0]["details"]["move_id"],
        id.as_str(),
        "{events}"
    );
    assert_eq!(events["events"][0]["actor"]["type"], "system");
    done
}

#[test]
fn embedded_to_embedded_under_writes_keeps_every_acknowledged_write() {
    let gw = Arc::new(TestGateway::start_with(Options {
        config: config(&two_embedded(), writer_moves(false)),
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
            writer_moves(false),
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

// ---------------------------------------------------------------------------------------
// Every direction, validation, cancel, rename/delete during a move, drain, rebalance.

/// One embedded shard.
fn embedded(id: &str) -> String {
    format!("[[shards]]\nid = \"{id}\"\nkind = \"embedded\"\npath = \"shards/{id}.redb\"\n")
}

/// One MongoDB shard with its own database prefix.
fn mongodb(id: &str, uri: &str, prefix: &str) -> String {
    format!(
        "[[shards]]\nid = \"{id}\"\nkind = \"mongodb\"\nuri = \"{uri}\"\ndatabase_prefix = \"{prefix}\"\n"
    )
}

/// Drops the tenant databases of a test's MongoDB shards when the test ends, passed or not.
struct DropMongoDbs(Vec<(String, String)>);

impl Drop for DropMongoDbs {
    fn drop(&mut self) {
        let rt = tokio::runtime::Runtime::new().unwrap();
        for (uri, prefix) in &self.0 {
            for n in 1..=2 {
                rt.block_on(crate::mongo_env::drop_db(uri, &format!("{prefix}_{n}")));
            }
        }
    }
}

/// Documents in one MongoDB collection, or `None` when the collection does not exist.
fn mongo_count(uri: &str, db: &str, coll: &str) -> Option<u64> {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let client = mongodb::Client::with_uri_str(uri).await.unwrap();
        let db = client.database(db);
        let names = db.list_collection_names().await.unwrap();
        if !names.iter().any(|n| n == coll) {
            return None;
        }
        Some(
            db.collection::<mongodb::bson::Document>(coll)
                .count_documents(mongodb::bson::doc! {})
                .await
                .unwrap(),
        )
    })
}

/// Creates organizations `{base} 0`, `{base} 1`, ... until one lands on `shard` (placement
/// hashes the new organization's id, so where one lands is chance); returns its name and
/// its admin's token. The others stay, empty.
fn org_on(gw: &TestGateway, shard: &str, base: &str) -> (String, String) {
    let mut seen = Vec::new();
    for i in 0..40 {
        let name = format!("{base} {i}");
        let email = format!("{}-{i}@example.com", base.to_lowercase().replace(' ', "-"));
        let token = create_org(gw, &name, &email);
        let (on, _) = placement(gw, &name);
        if on == shard {
            return (name, token);
        }
        seen.push(on);
    }
    panic!("no organization landed on {shard}: {seen:?}");
}

/// The operator API without the helper's token handling, for problem checks.
fn ops_raw(
    gw: &TestGateway,
    method: Method,
    path: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> reqwest::blocking::Response {
    let mut r = gw.client.request(method, format!("{}{path}", gw.ops));
    if let Some(t) = token {
        r = r.bearer_auth(t);
    }
    if let Some(b) = body {
        r = r.json(&b);
    }
    r.send().unwrap()
}

/// Polls the move until `done(state)` holds (or panics after `limit`); returns the record.
fn wait_state(gw: &TestGateway, id: &str, limit: Duration, done: impl Fn(&Value) -> bool) -> Value {
    let started = Instant::now();
    loop {
        let (s, v) = ops(gw, Method::GET, &format!("/ops/moves/{id}"), None);
        assert_eq!(s, 200, "{v}");
        if done(&v) {
            return v;
        }
        assert!(
            started.elapsed() < limit,
            "move not there in {limit:?}: {v}\n{}",
            gw.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Every move listed, once none is still running (or panics after `limit`).
fn wait_all_moves(gw: &TestGateway, limit: Duration) -> Vec<Value> {
    let started = Instant::now();
    loop {
        let (s, v) = ops(gw, Method::GET, "/ops/moves", None);
        assert_eq!(s, 200, "{v}");
        let moves = v["moves"].as_array().unwrap().clone();
        let running = moves
            .iter()
            .filter(|m| !["done", "failed", "cancelled"].contains(&m["state"].as_str().unwrap()))
            .count();
        if running == 0 {
            return moves;
        }
        assert!(
            started.elapsed() < limit,
            "{running} moves still running after {limit:?}: {v}\n{}",
            gw.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// `GET /ops/shards`, by shard id.
fn shards_report(gw: &TestGateway) -> BTreeMap<String, Value> {
    let (s, v) = ops(gw, Method::GET, "/ops/shards", None);
    assert_eq!(s, 200, "{v}");
    v["shards"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s["id"].as_str().unwrap().to_owned(), s.clone()))
        .collect()
}

/// Polls `GET /ops/shards` until `settled` holds (or panics after `limit`): a move is
/// journaled `done` a moment before the collection counts the report reads are moved.
fn wait_report(
    gw: &TestGateway,
    limit: Duration,
    settled: impl Fn(&BTreeMap<String, Value>) -> bool,
) -> BTreeMap<String, Value> {
    let started = Instant::now();
    loop {
        let report = shards_report(gw);
        if settled(&report) {
            return report;
        }
        assert!(
            started.elapsed() < limit,
            "shards not as expected after {limit:?}: {report:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn tenants(report: &BTreeMap<String, Value>, shard: &str) -> u64 {
    report[shard]["tenants"].as_u64().unwrap()
}

fn count_docs(gw: &TestGateway, token: &str) -> u64 {
    let (s, v) = call(
        gw,
        token,
        Method::POST,
        "/data/count",
        Some(json!({"filter": {}})),
    );
    assert_eq!(s, 200, "{v}");
    v["count"].as_u64().unwrap()
}

fn login(gw: &TestGateway, email: &str) -> String {
    let r = gw.login(email, "password123");
    assert_eq!(r.status(), 200, "login {email}");
    r.json::<Value>().unwrap()["access_token"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// The API still answers for the tenant after its source is gone.
fn still_answers(gw: &TestGateway, token: &str) {
    let (s, v) = call(gw, token, Method::GET, "/data/seed-000000", None);
    assert_eq!(s, 200, "{v}");
    assert!(count_docs(gw, token) >= 1);
}

/// Starts a move of `org` to `to_shard`; returns its id.
fn start_move(gw: &TestGateway, org: &str, to_shard: &str) -> String {
    let (s, mv) = ops(
        gw,
        Method::POST,
        "/ops/moves",
        Some(json!({"organization_name": org, "to_shard": to_shard})),
    );
    assert_eq!(s, 202, "{mv}");
    mv["move_id"].as_str().unwrap().to_owned()
}

/// Starts a move of `org` (its documents already seeded) to the other of shards a and b and
/// waits until it copies; returns (move id, source shard, target shard).
fn start_slow_move(gw: &TestGateway, org: &str) -> (String, String, String) {
    let (from, _) = placement(gw, org);
    let to = if from == "a" { "b" } else { "a" };
    let id = start_move(gw, org, to);
    let copying = wait_state(gw, &id, Duration::from_secs(30), |v| v["state"] != "queued");
    assert_eq!(
        copying["state"], "copying",
        "the move is slow enough to be caught copying: {copying}"
    );
    (id, from, to.to_owned())
}

/// The gateway log lines that name this move.
fn log_of_move(gw: &TestGateway, id: &str) -> String {
    gw.log()
        .lines()
        .filter(|l| l.contains(id))
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn embedded_to_mongodb_under_writes() {
    let Some(uri) = crate::mongo_env::uri() else {
        return;
    };
    let prefix = unique_prefix("mvem");
    let _dbs = DropMongoDbs(vec![(uri.clone(), prefix.clone())]);
    let gw = Arc::new(TestGateway::start_with(Options {
        config: config(
            &format!("{}{}", embedded("local"), mongodb("mongo", &uri, &prefix)),
            writer_moves(true),
        ),
        ..Options::default()
    }));
    let (org, token) = org_on(&gw, "local", "To Mongo");
    let done = move_org_under_paced_writes(
        &gw,
        &org,
        &token,
        Target::Shard("mongo"),
        1000,
        Duration::from_millis(20),
    );
    assert_eq!(done["from"]["shard"], "local", "{done}");
    assert_eq!(done["to"]["shard"], "mongo", "{done}");
    // The documents are in the MongoDB collection itself, as many as the API counts.
    let (_, db) = placement(&gw, &org);
    let coll = done["to"]["collection"].as_str().unwrap();
    assert_eq!(mongo_count(&uri, &db, coll), Some(count_docs(&gw, &token)));
}

#[test]
fn mongodb_to_embedded_under_writes() {
    let Some(uri) = crate::mongo_env::uri() else {
        return;
    };
    let prefix = unique_prefix("mvme");
    let _dbs = DropMongoDbs(vec![(uri.clone(), prefix.clone())]);
    let gw = Arc::new(TestGateway::start_with(Options {
        config: config(
            &format!("{}{}", mongodb("mongo", &uri, &prefix), embedded("local")),
            writer_moves(true),
        ),
        ..Options::default()
    }));
    let (org, token) = org_on(&gw, "mongo", "From Mongo");
    let done = move_org_under_writes(&gw, &org, &token, Target::Shard("local"), 1000);
    assert_eq!(done["from"]["shard"], "mongo", "{done}");
    // After the grace period (1 s here) the source collection is dropped.
    let (db, coll) = (
        done["from"]["database"].as_str().unwrap(),
        done["from"]["collection"].as_str().unwrap(),
    );
    let started = Instant::now();
    while mongo_count(&uri, db, coll).is_some() {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the source collection was never dropped\n{}",
            gw.log()
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    still_answers(&gw, &token);
}

#[test]
fn mongodb_to_mongodb_on_another_server_under_writes() {
    let (Some(uri_a), Some(uri_b)) = (crate::mongo_env::uri(), crate::mongo_env::uri_2()) else {
        return;
    };
    let (pa, pb) = (unique_prefix("mvma"), unique_prefix("mvmb"));
    let _dbs = DropMongoDbs(vec![
        (uri_a.clone(), pa.clone()),
        (uri_b.clone(), pb.clone()),
    ]);
    let gw = Arc::new(TestGateway::start_with(Options {
        config: config(
            &format!(
                "{}{}",
                mongodb("mongo-a", &uri_a, &pa),
                mongodb("mongo-b", &uri_b, &pb)
            ),
            writer_moves(true),
        ),
        ..Options::default()
    }));
    let (org, token) = org_on(&gw, "mongo-a", "Across Servers");
    let done = move_org_under_writes(&gw, &org, &token, Target::Shard("mongo-b"), 1000);
    assert_eq!(done["from"]["shard"], "mongo-a", "{done}");
    let (_, db) = placement(&gw, &org);
    let coll = done["to"]["collection"].as_str().unwrap();
    assert_eq!(
        mongo_count(&uri_b, &db, coll),
        Some(count_docs(&gw, &token))
    );
}

#[test]
fn move_requests_are_validated() {
    // Slow enough that the first move is still running when the second is asked for.
    let gw = TestGateway::start_with(Options {
        config: config(
            &two_embedded(),
            "copy_docs_per_second = 100\nbatch_size = 100",
        ),
        ..Options::default()
    });
    let token = create_org(&gw, "Valid Org", "valid@example.com");
    seed(&gw, &token, 500, 50);
    let (from, _) = placement(&gw, "Valid Org");
    let to = if from == "a" { "b" } else { "a" };
    let post = |body: Value| ops_raw(&gw, Method::POST, "/ops/moves", Some(OPS_TOKEN), Some(body));

    assert_problem(
        post(json!({"organization_name": "Nobody Here", "to_shard": to})),
        404,
        "organization_not_found",
    );
    assert_problem(
        post(json!({"organization_name": "Valid Org", "to_shard": "nowhere"})),
        400,
        "unknown_shard",
    );
    assert_problem(
        post(json!({"organization_name": "Valid Org", "to_shard": "Not A Shard!"})),
        400,
        "unknown_shard",
    );
    assert_problem(
        post(json!({"organization_name": "Valid Org", "to_shard": from})),
        400,
        "same_location",
    );
    assert_problem(
        post(json!({"organization_name": "Valid Org", "to_shard": to, "to_database": "other_1"})),
        400,
        "invalid_database",
    );
    // Without the operator token, or with a wrong one: 401, and nothing is queued.
    for t in [None, Some("not-the-operator-token-0123456789")] {
        let body = json!({"organization_name": "Valid Org", "to_shard": to});
        assert_problem(
            ops_raw(&gw, Method::POST, "/ops/moves", t, Some(body)),
            401,
            "unauthorized",
        );
        assert_problem(
            ops_raw(&gw, Method::GET, "/ops/moves", t, None),
            401,
            "unauthorized",
        );
    }
    let (_, all) = ops(&gw, Method::GET, "/ops/moves", None);
    assert_eq!(all["moves"], json!([]), "{all}");

    let first = start_move(&gw, "Valid Org", to);
    // A second move of the same organization, to either shard, while the first runs.
    for shard in [to, from.as_str()] {
        assert_problem(
            post(json!({"organization_name": "Valid Org", "to_shard": shard})),
            409,
            "organization_moving",
        );
    }
    // Unknown or malformed move ids.
    let unknown = "0123456789abcdef0123456789abcdef";
    for id in [unknown, "not-a-move", "0123456789ABCDEF", &first[..31]] {
        for m in [Method::GET, Method::DELETE] {
            assert_problem(
                ops_raw(&gw, m, &format!("/ops/moves/{id}"), Some(OPS_TOKEN), None),
                404,
                "move_not_found",
            );
        }
    }
    assert_problem(
        ops_raw(
            &gw,
            Method::GET,
            "/ops/moves?state=bogus",
            Some(OPS_TOKEN),
            None,
        ),
        400,
        "invalid_query",
    );
    // Filters: the running move is not done.
    let (s, v) = ops(&gw, Method::GET, "/ops/moves?state=done", None);
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["moves"], json!([]), "{v}");
    let done = wait_move(&gw, &first, Duration::from_secs(90));
    assert_eq!(done["state"], "done", "{done}");
    // A second move (back) cancelled: each filter lists exactly its own.
    let second = start_move(&gw, "Valid Org", &from);
    let (s, c) = ops(&gw, Method::DELETE, &format!("/ops/moves/{second}"), None);
    assert!(s == 200 || s == 202, "{s} {c}");
    assert_eq!(
        wait_move(&gw, &second, Duration::from_secs(60))["state"],
        "cancelled"
    );
    let ids = |state: &str| -> Vec<String> {
        let (s, v) = ops(&gw, Method::GET, &format!("/ops/moves?state={state}"), None);
        assert_eq!(s, 200, "{v}");
        v["moves"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| {
                assert_eq!(m["state"], state, "{m}");
                m["move_id"].as_str().unwrap().to_owned()
            })
            .collect()
    };
    assert_eq!(ids("done"), vec![first.clone()]);
    assert_eq!(ids("cancelled"), vec![second.clone()]);
    assert!(ids("copying").is_empty());
    let (_, all) = ops(&gw, Method::GET, "/ops/moves", None);
    assert_eq!(all["moves"].as_array().unwrap().len(), 2, "{all}");
    // A finished move cannot be cancelled.
    for id in [&first, &second] {
        assert_problem(
            ops_raw(
                &gw,
                Method::DELETE,
                &format!("/ops/moves/{id}"),
                Some(OPS_TOKEN),
                None,
            ),
            409,
            "move_finished",
        );
    }
}

#[test]
fn cancel_while_copying_keeps_the_tenant_at_the_source() {
    let gw = TestGateway::start_with(Options {
        config: config(&two_embedded(), "copy_docs_per_second = 200"),
        ..Options::default()
    });
    let token = create_org(&gw, "Cancel Me", "cancel@example.com");
    seed(&gw, &token, 3000, 100);
    let (from_before, db_before) = placement(&gw, "Cancel Me");
    let (id, from, to) = start_slow_move(&gw, "Cancel Me");
    // Writes during the copy.
    let (s, v) = call(
        &gw,
        &token,
        Method::POST,
        "/data",
        Some(json!({"_id": "during", "v": 1})),
    );
    assert_eq!(s, 201, "{v}");
    let (s, c) = ops(&gw, Method::DELETE, &format!("/ops/moves/{id}"), None);
    match s {
        200 => assert_eq!(c["state"], "cancelled", "{c}"),
        202 => assert!(
            ["copying", "catching_up", "queued"].contains(&c["state"].as_str().unwrap()),
            "{c}"
        ),
        _ => panic!("cancel: {s} {c}"),
    }
    let cancelled = wait_move(&gw, &id, Duration::from_secs(60));
    assert_eq!(cancelled["state"], "cancelled", "{cancelled}");
    assert!(cancelled["finished_at"].is_string(), "{cancelled}");
    assert!(
        cancelled["docs_copied"].as_u64().unwrap() < 3001,
        "stopped before the copy ended: {cancelled}"
    );
    // The tenant never left.
    assert_eq!(placement(&gw, "Cancel Me"), (from_before, db_before));
    assert_eq!(from, placement(&gw, "Cancel Me").0);
    assert_eq!(count_docs(&gw, &token), 3001);
    for id in ["seed-000000", "seed-001500", "seed-002999", "during"] {
        let (s, v) = call(&gw, &token, Method::GET, &format!("/data/{id}"), None);
        assert_eq!(s, 200, "{id}: {v}");
    }
    // And keeps accepting writes.
    let (s, v) = call(
        &gw,
        &token,
        Method::POST,
        "/data",
        Some(json!({"_id": "after", "v": 2})),
    );
    assert_eq!(s, 201, "{v}");
    let (s, v) = call(
        &gw,
        &token,
        Method::PATCH,
        "/data/seed-000001",
        Some(json!({"$set": {"v": 3}})),
    );
    assert_eq!(s, 200, "{v}");
    let (s, v) = call(&gw, &token, Method::DELETE, "/data/seed-000002", None);
    assert_eq!(s, 200, "{v}");
    assert_eq!(count_docs(&gw, &token), 3001);
    // The cleanup ran: the unused target was dropped and the change log removed.
    let cleaned = wait_state(&gw, &id, Duration::from_secs(30), |v| {
        v["cleanup_done"] == true
    });
    assert_eq!(cleaned["state"], "cancelled");
    assert_problem(
        ops_raw(
            &gw,
            Method::DELETE,
            &format!("/ops/moves/{id}"),
            Some(OPS_TOKEN),
            None,
        ),
        409,
        "move_finished",
    );
    let report = shards_report(&gw);
    assert_eq!(report[&to]["tenants"], 0, "{report:?}");
    assert_eq!(report[&to]["moves_off"], 0, "{report:?}");
    // Moving again to the same place works, and finds no leftover of the first attempt (an
    // undropped target would be set aside as an orphan).
    let again = start_move(&gw, "Cancel Me", &to);
    let done = wait_move(&gw, &again, Duration::from_secs(120));
    assert_eq!(done["state"], "done", "{done}");
    assert_eq!(done["verification"]["matched"], true, "{done}");
    assert!(
        !gw.log().contains("found an orphaned collection"),
        "the cancelled move's target was left behind:\n{}",
        gw.log()
    );
    assert_eq!(placement(&gw, "Cancel Me").0, to);
    assert_eq!(count_docs(&gw, &token), 3001);
    let (s, v) = call(&gw, &token, Method::GET, "/data/seed-000001", None);
    assert_eq!((s, v["v"].as_i64()), (200, Some(3)), "{v}");
}

#[test]
fn rename_during_a_move_cancels_it_and_keeps_every_document() {
    let gw = TestGateway::start_with(Options {
        config: config(&two_embedded(), "copy_docs_per_second = 50"),
        ..Options::default()
    });
    let token = create_org(&gw, "Old Name", "renamer@example.com");
    seed(&gw, &token, 3000, 100);
    let (from_before, _) = placement(&gw, "Old Name");
    let (id, _, _) = start_slow_move(&gw, "Old Name");
    let r = gw
        .req(Method::PUT, "/org/update")
        .bearer_auth(&token)
        .json(&json!({"organization_name": "Old Name", "new_organization_name": "New Name"}))
        .send()
        .unwrap();
    let status = r.status().as_u16();
    let body: Value = r.json().unwrap_or(Value::Null);
    assert_eq!(status, 200, "{body}\n{}", log_of_move(&gw, &id));
    assert_eq!(body["organization_name"], "New Name", "{body}");
    let mv = wait_move(&gw, &id, Duration::from_secs(60));
    assert_eq!(mv["state"], "cancelled", "{mv}");
    // Everything is under the new name, where the tenant was.
    assert_eq!(placement(&gw, "New Name").0, from_before);
    assert_problem(
        ops_raw(
            &gw,
            Method::GET,
            "/ops/placements/Old%20Name",
            Some(OPS_TOKEN),
            None,
        ),
        404,
        "organization_not_found",
    );
    assert_eq!(count_docs(&gw, &token), 3000);
    for i in [0, 1234, 2999] {
        let (s, v) = call(
            &gw,
            &token,
            Method::GET,
            &format!("/data/seed-{i:06}"),
            None,
        );
        assert_eq!(s, 200, "{v}");
        assert_eq!(v["n"], i, "{v}");
    }
    let (s, v) = call(
        &gw,
        &token,
        Method::POST,
        "/data",
        Some(json!({"_id": "renamed"})),
    );
    assert_eq!(s, 201, "{v}");
    // The renamed tenant carries no mark of the old move: a new one can start (and is
    // cancelled again, the copy being slow).
    let to = if from_before == "a" { "b" } else { "a" };
    let again = start_move(&gw, "New Name", to);
    let (s, c) = ops(&gw, Method::DELETE, &format!("/ops/moves/{again}"), None);
    assert!(s == 200 || s == 202, "{s} {c}");
    assert_eq!(
        wait_move(&gw, &again, Duration::from_secs(60))["state"],
        "cancelled"
    );
    assert_eq!(count_docs(&gw, &token), 3001);
}

#[test]
fn delete_during_a_move_cancels_it() {
    let gw = TestGateway::start_with(Options {
        config: config(&two_embedded(), "copy_docs_per_second = 50"),
        ..Options::default()
    });
    let token = create_org(&gw, "Short Lived", "short@example.com");
    seed(&gw, &token, 3000, 100);
    let (id, _, _) = start_slow_move(&gw, "Short Lived");
    let r = gw
        .req(
            Method::DELETE,
            "/org/delete?organization_name=Short%20Lived",
        )
        .bearer_auth(&token)
        .send()
        .unwrap();
    let status = r.status().as_u16();
    let body: Value = r.json().unwrap_or(Value::Null);
    assert_eq!(status, 200, "{body}\n{}", log_of_move(&gw, &id));
    assert_eq!(body["deleted"], true, "{body}");
    let mv = wait_move(&gw, &id, Duration::from_secs(60));
    assert_eq!(mv["state"], "cancelled", "{mv}");
    assert_problem(
        ops_raw(
            &gw,
            Method::GET,
            "/ops/placements/Short%20Lived",
            Some(OPS_TOKEN),
            None,
        ),
        404,
        "organization_not_found",
    );
    // Once cleaned up, the name is free and a new organization under it starts empty, on
    // either shard (neither the source nor the move's target is adopted).
    wait_state(&gw, &id, Duration::from_secs(30), |v| {
        v["cleanup_done"] == true
    });
    let fresh = create_org(&gw, "Short Lived", "short2@example.com");
    assert_eq!(count_docs(&gw, &fresh), 0);
    // Only the new organization is counted, and the deleted one's kept data (until purged).
    wait_report(&gw, Duration::from_secs(30), |r| {
        r.values()
            .map(|s| s["tenants"].as_u64().unwrap())
            .sum::<u64>()
            == 2
    });
}

/// Starts a gateway with only embedded shard `a`, creates `n` organizations there with
/// three documents each, then restarts it with `more` shards added. Returns the gateway
/// and the organizations' (name, email).
fn tenants_on_a(n: usize, more: &[&str], top: &str) -> (TestGateway, Vec<(String, String)>) {
    let mut gw = TestGateway::start_with(Options {
        // `top`: top-level settings, before the first table. No tenant writes here, so the
        // write-pause budget is not under test: with the catalog on SecantusDB
        // (TEST_ON_MONGODB=1) a cutover's fences alone often take more than the default
        // 500 ms, and every cutover would be abandoned and retried many times.
        config: format!(
            "{top}\n{}",
            config(&embedded("a"), "max_write_pause_ms = 5000")
        ),
        ..Options::default()
    });
    let mut orgs = Vec::new();
    for i in 0..n {
        let (name, email) = (format!("Tenant {i:02}"), format!("tenant{i}@example.com"));
        let token = create_org(&gw, &name, &email);
        let docs: Vec<Value> = (0..3)
            .map(|k| json!({"_id": format!("d{k}"), "org": name, "k": k}))
            .collect();
        let (s, v) = call(&gw, &token, Method::POST, "/data", Some(Value::Array(docs)));
        assert_eq!(s, 201, "{v}");
        orgs.push((name, email));
    }
    gw.terminate();
    for id in more {
        // Appended: with TEST_ON_MONGODB the file also names the catalog.
        gw.config_toml.push_str(&format!("\n{}", embedded(id)));
    }
    gw.restart();
    for (name, _) in &orgs {
        assert_eq!(placement(&gw, name).0, "a");
    }
    (gw, orgs)
}

/// Each organization still holds exactly its three documents.
fn check_tenants_intact(gw: &TestGateway, orgs: &[(String, String)]) {
    for (name, email) in orgs {
        let token = login(gw, email);
        assert_eq!(count_docs(gw, &token), 3, "{name}");
        for k in 0..3 {
            let (s, v) = call(gw, &token, Method::GET, &format!("/data/d{k}"), None);
            assert_eq!(s, 200, "{name}: {v}");
            assert_eq!(
                (v["org"].as_str(), v["k"].as_i64()),
                (Some(name.as_str()), Some(k))
            );
        }
    }
}

#[test]
fn draining_a_shard_moves_every_tenant_off() {
    // The drain queues every move within its request (two catalog writes each): with the
    // catalog on the test's SecantusDB (TEST_ON_MONGODB=1) 20 of them can outlast the
    // default 10 s request timeout (503 request_timeout, the drain cut short).
    let (gw, orgs) = tenants_on_a(20, &["b", "c"], "request_timeout_ms = 60000");
    assert_problem(
        ops_raw(
            &gw,
            Method::POST,
            "/ops/shards/nope/drain",
            Some(OPS_TOKEN),
            None,
        ),
        404,
        "shard_not_found",
    );
    let asked = Instant::now();
    let (s, v) = ops(&gw, Method::POST, "/ops/shards/a/drain", None);
    eprintln!("drain answered in {:?}", asked.elapsed());
    assert_eq!(s, 202, "{v}");
    assert_eq!(v["state"], "draining", "{v}");
    assert_eq!(v["moves"].as_array().unwrap().len(), 20, "{v}");
    assert!(v["moves"]
        .as_array()
        .unwrap()
        .iter()
        .all(|m| m["to"]["shard"] != "a" && m["move_id"].is_string()));
    // Draining: no new organization goes to a, even before the moves end.
    let report = shards_report(&gw);
    assert_eq!(report["a"]["state"], "draining", "{report:?}");
    for i in 0..4 {
        let name = format!("Newcomer {i}");
        create_org(&gw, &name, &format!("newcomer{i}@example.com"));
        assert_ne!(placement(&gw, &name).0, "a", "{name}");
    }
    // A drained shard is no move target either.
    assert_problem(
        ops_raw(
            &gw,
            Method::POST,
            "/ops/moves",
            Some(OPS_TOKEN),
            Some(json!({"organization_name": "Newcomer 0", "to_shard": "a"})),
        ),
        400,
        "shard_not_active",
    );
    // Two at a time (moves.max_concurrent), each a few hundred milliseconds on the embedded
    // catalog: a slot that stayed taken after its move ended (until its 15 s lease expired)
    // made this take 150 s. Each catalog call is far slower on SecantusDB.
    let limit = if crate::gateway::on_mongodb() {
        600
    } else {
        120
    };
    let moves = wait_all_moves(&gw, Duration::from_secs(limit));
    assert_eq!(moves.len(), 20, "{moves:?}");
    for m in &moves {
        assert_eq!(m["state"], "done", "{m}");
        assert_eq!(m["reason"], "drain", "{m}");
        // Null only for a move whose driver failed between the switch and journaling `done`
        // (seen when SecantusDB drops connections under load): the next driver finishes it
        // from the switched placement, and the verification is not journaled before the
        // switch.
        assert_ne!(m["verification"]["matched"], false, "{m}");
    }
    let report = wait_report(&gw, Duration::from_secs(60), |r| {
        r["a"]["state"] == "drained"
            // The catalog's counts are exact on the embedded catalog; on SecantusDB a
            // retried `$inc` (a reply lost under load) can count twice.
            && (crate::gateway::on_mongodb() || tenants(r, "b") + tenants(r, "c") == 24)
    });
    assert_eq!(report["a"]["tenants"], 0, "{report:?}");
    assert_eq!(report["a"]["moves_off"], 0, "{report:?}");
    let mut on: BTreeMap<String, usize> = BTreeMap::new();
    for (name, _) in &orgs {
        *on.entry(placement(&gw, name).0).or_default() += 1;
    }
    assert_eq!(on.get("a"), None, "{on:?}");
    assert_eq!(on.len(), 2, "both b and c take some: {on:?}");
    check_tenants_intact(&gw, &orgs);
    for i in 4..8 {
        let name = format!("Newcomer {i}");
        create_org(&gw, &name, &format!("newcomer{i}@example.com"));
        assert_ne!(placement(&gw, &name).0, "a", "{name}");
    }
    // Draining again finds nothing to move.
    let (s, v) = ops(&gw, Method::POST, "/ops/shards/a/drain", None);
    assert_eq!(s, 202, "{v}");
    assert_eq!(v["state"], "drained", "{v}");
    assert_eq!(v["moves"], json!([]), "{v}");
}

#[test]
fn rebalance_dry_run_changes_nothing_and_the_real_one_evens_shards() {
    let (gw, orgs) = tenants_on_a(10, &["b"], "");
    let rebalance = |body: Value| {
        let (s, v) = ops(&gw, Method::POST, "/ops/rebalance", Some(body));
        assert_eq!(s, 200, "{v}");
        v
    };
    assert_problem(
        ops_raw(
            &gw,
            Method::POST,
            "/ops/rebalance",
            Some(OPS_TOKEN),
            Some(json!({"scope": "galaxies"})),
        ),
        400,
        "invalid_scope",
    );
    assert_problem(
        ops_raw(
            &gw,
            Method::POST,
            "/ops/rebalance",
            Some(OPS_TOKEN),
            Some(json!({"tolerance": 2.0})),
        ),
        400,
        "invalid_tolerance",
    );
    // Dry run (the default): the plan, and nothing happens.
    let plan = rebalance(json!({}));
    assert_eq!(plan["dry_run"], true, "{plan}");
    let planned = plan["moves"].as_array().unwrap().clone();
    // 10 against an ideal of 5 each, one tenant of slack: 6 and 4.
    assert_eq!(planned.len(), 4, "{plan}");
    assert!(planned
        .iter()
        .all(|m| m["from"]["shard"] == "a" && m["to"]["shard"] == "b" && m["move_id"].is_null()));
    assert_eq!(rebalance(json!({"dry_run": true}))["moves"], plan["moves"]);
    let (_, all) = ops(&gw, Method::GET, "/ops/moves", None);
    assert_eq!(all["moves"], json!([]), "{all}");
    for (name, _) in &orgs {
        assert_eq!(placement(&gw, name).0, "a");
    }
    // The real one queues the same moves.
    let real = rebalance(json!({"dry_run": false}));
    assert_eq!(real["dry_run"], false, "{real}");
    let queued = real["moves"].as_array().unwrap();
    assert_eq!(queued.len(), 4, "{real}");
    let names = |ms: &[Value]| -> Vec<String> {
        ms.iter()
            .map(|m| m["organization_name"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(names(queued), names(&planned));
    assert!(queued.iter().all(|m| m["move_id"].is_string()), "{real}");
    let moves = wait_all_moves(&gw, Duration::from_secs(180));
    assert_eq!(moves.len(), 4);
    for m in &moves {
        assert_eq!(m["state"], "done", "{m}");
        assert_eq!(m["reason"], "rebalance", "{m}");
    }
    // Each done move took one tenant from a to b: 6 and 4, within the tolerance (the
    // placements below say so; the catalog's counts too, exact on the embedded catalog).
    if !crate::gateway::on_mongodb() {
        wait_report(&gw, Duration::from_secs(60), |r| {
            (tenants(r, "a"), tenants(r, "b")) == (6, 4)
        });
    }
    for (name, _) in &orgs {
        let moved = names(queued).contains(name);
        assert_eq!(
            placement(&gw, name).0,
            if moved { "b" } else { "a" },
            "{name}"
        );
    }
    check_tenants_intact(&gw, &orgs);
    // Balanced now: nothing more to do.
    assert_eq!(rebalance(json!({"dry_run": true}))["moves"], json!([]));
    assert_eq!(rebalance(json!({"dry_run": false}))["moves"], json!([]));
}

#[test]
fn rebalance_databases_evens_a_shard() {
    // Nine tenants per database before a new one opens: 10 tenants make 9 and 1.
    let gw = TestGateway::start_with(Options {
        config: config(
            "[[shards]]\nid = \"a\"\nkind = \"embedded\"\npath = \"shards/a.redb\"\n\
             max_collections_per_database = 10\n",
            "max_write_pause_ms = 5000",
        ),
        ..Options::default()
    });
    // Tenants per database, from their placements, in database order.
    let per_db = |gw: &TestGateway, orgs: &[(String, String)]| -> Vec<u64> {
        let mut dbs: BTreeMap<u32, u64> = BTreeMap::new();
        for (name, _) in orgs {
            let (_, db) = placement(gw, name);
            let n: u32 = db.rsplit('_').next().unwrap().parse().unwrap();
            *dbs.entry(n).or_default() += 1;
        }
        dbs.into_values().collect()
    };
    // Usually 10 are enough; the in-memory counts placement uses are replaced from the
    // catalog every 15 s, and a create in flight then may land one over the split ratio, so
    // go on until a second database holds a tenant.
    let mut orgs = Vec::new();
    while orgs.len() < 10 || per_db(&gw, &orgs).len() < 2 {
        assert!(
            orgs.len() < 14,
            "no second database opened: {:?}",
            per_db(&gw, &orgs)
        );
        let i = orgs.len();
        let (name, email) = (format!("Tenant {i:02}"), format!("tenant{i}@example.com"));
        let token = create_org(&gw, &name, &email);
        let docs: Vec<Value> = (0..3)
            .map(|k| json!({"_id": format!("d{k}"), "org": name, "k": k}))
            .collect();
        let (s, v) = call(&gw, &token, Method::POST, "/data", Some(Value::Array(docs)));
        assert_eq!(s, 201, "{v}");
        orgs.push((name, email));
    }
    let before = per_db(&gw, &orgs);
    assert_eq!(before.len(), 2, "{before:?}");
    assert!(before[0] >= 9, "{before:?}");
    let (s, plan) = ops(
        &gw,
        Method::POST,
        "/ops/rebalance",
        Some(json!({"scope": "databases", "dry_run": false})),
    );
    assert_eq!(s, 200, "{plan}");
    assert_eq!(plan["scope"], "databases");
    // Against an ideal of half each, with one tenant of slack: 9 and 1 make 6 and 4.
    let total: u64 = before.iter().sum();
    assert!(!plan["moves"].as_array().unwrap().is_empty(), "{plan}");
    // Counted from the journal: the reply leaves out a move whose queueing reported a catalog
    // error, although it may have been queued (seen on SecantusDB under load).
    let moves = wait_all_moves(&gw, Duration::from_secs(120));
    for m in &moves {
        assert_eq!(m["state"], "done", "{m}");
        assert_eq!(m["to"]["shard"], "a", "{m}");
        assert_eq!(m["from"]["database"], "db_1", "{m}");
        assert_eq!(m["to"]["database"], "db_2", "{m}");
    }
    let planned = moves.len() as u64;
    assert!(planned >= plan["moves"].as_array().unwrap().len() as u64);
    let expected = vec![before[0] - planned, before[1] + planned];
    let started = Instant::now();
    let mut after = per_db(&gw, &orgs);
    while after != expected {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "databases: {after:?}, expected {expected:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
        after = per_db(&gw, &orgs);
    }
    let ideal = total as f64 / 2.0;
    assert!(
        after.iter().all(|n| (*n as f64 - ideal).abs() <= 1.0),
        "not within one tenant of {ideal}: {after:?}"
    );
    check_tenants_intact(&gw, &orgs);
    let (_, again) = ops(
        &gw,
        Method::POST,
        "/ops/rebalance",
        Some(json!({"scope": "databases"})),
    );
    assert_eq!(again["moves"], json!([]), "{again}");
}
