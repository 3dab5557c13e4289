//! Online tenant moves against the real gateway binary on loopback: two embedded shards, one
//! tenant of 10,000 documents of 1 KiB each.
//!
//! - **idle moves**: the tenant moves between the shards with nothing else running; the time
//!   from `POST /ops/moves` until `GET /ops/moves/{id}` says `done` (polled every 10 ms), the
//!   same from the move record's own timestamps, and the phases as the polls saw them.
//! - **moves under writes**: an open-loop writer sends about 500 writes/s through the public
//!   API (half inserts of new 1 KiB documents, half `PATCH` `$set` of existing ones) while the
//!   tenant moves back and forth; each move's `write_pause_ms`, and from the client every
//!   write's latency (from the moment it was due, so a held write is charged for the whole
//!   hold) and status. Every write must succeed.
//!
//! ```sh
//! cargo bench --bench moves
//! # another write rate; every write and move state to a CSV file for a timeline
//! MOVE_BENCH_WRITES_PER_SECOND=250 MOVE_BENCH_SAMPLES=moves.csv cargo bench --bench moves
//! ```
//!
//! For diagnosis, `MOVE_BENCH_GATEWAY` runs another gateway binary, `MOVE_BENCH_LOG` keeps
//! its log in that file and `MOVE_BENCH_RUST_LOG` sets its log filter.
//!
//! The gateway is the binary built with the bench profile (release); it runs with
//! `[moves] source_grace_seconds = 1` (the next move back waits until the previous move has
//! dropped its source) and otherwise default move settings. Without `--bench` (as under
//! `cargo test --all-targets`) a small tenant and one move of each kind only check that the
//! benchmark still works. Every wait is bounded; the run stops by itself.

use hdrhistogram::Histogram;
use reqwest::{Client, Method, StatusCode};
use serde_json::{json, Value};
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The gateway binary built with the benchmark; `MOVE_BENCH_GATEWAY` names another.
const BIN: &str = env!("CARGO_BIN_EXE_org-gateway");
const OPS_TOKEN: &str = "bench-operator-token-0123456789abcdef";
const ORG: &str = "Moving Bench";
const EMAIL: &str = "mover@bench.example";
const PASSWORD: &str = "bench-password-1";
const DOC_BYTES: usize = 1_024;
/// Documents per `POST /data` when seeding (1 MiB body limit).
const SEED_BATCH: usize = 500;
const POLL: Duration = Duration::from_millis(10);

/// How much to do: the benchmark, or a smoke run under `cargo test`.
#[derive(Debug, Clone, Copy)]
struct Sizes {
    docs: usize,
    idle_moves: usize,
    moves_under_writes: usize,
    writes_per_second: f64,
    /// Writes measured before the first and after the last move under writes.
    baseline: Duration,
    /// Pause between moves under writes (writes go on).
    gap: Duration,
    /// A move not done after this is cancelled and the run stops (after its report).
    move_limit: Duration,
    /// The whole run is abandoned (panic, gateway killed) past this.
    limit: Duration,
}

const BENCH: Sizes = Sizes {
    docs: 10_000,
    idle_moves: 6,
    moves_under_writes: 16,
    writes_per_second: 500.0,
    baseline: Duration::from_secs(3),
    gap: Duration::from_secs(1),
    move_limit: Duration::from_secs(60),
    limit: Duration::from_secs(15 * 60),
};

const SMOKE: Sizes = Sizes {
    docs: 300,
    idle_moves: 1,
    moves_under_writes: 1,
    writes_per_second: 100.0,
    baseline: Duration::from_millis(300),
    gap: Duration::from_millis(100),
    move_limit: Duration::from_secs(60),
    limit: Duration::from_secs(120),
};

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .expect("bind 127.0.0.1:0")
        .local_addr()
        .expect("local addr")
        .port()
}

/// The gateway under test, with two embedded shards in a temporary data dir; killed on drop.
struct Gateway {
    child: Child,
    base: String,
    ops: String,
    /// The data dir, removed on drop.
    _dir: tempfile::TempDir,
    log_path: std::path::PathBuf,
}

impl Gateway {
    fn start() -> Gateway {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = dir.path().join("gateway.toml");
        std::fs::write(
            &config,
            format!(
                "[ops]\ntoken = \"{OPS_TOKEN}\"\n\
                 [limits]\nrequests_per_minute = 100000000\nrequests_per_hour = 1000000000\n\
                 creates_per_minute_per_address = 1000000\n\
                 [moves]\nsource_grace_seconds = 1\n\
                 [[shards]]\nid = \"a\"\nkind = \"embedded\"\npath = \"shards/a.redb\"\n\
                 [[shards]]\nid = \"b\"\nkind = \"embedded\"\npath = \"shards/b.redb\"\n"
            ),
        )
        .expect("write config");
        let (port, ops_port) = (free_port(), free_port());
        let log_path = std::env::var_os("MOVE_BENCH_LOG")
            .map(std::path::PathBuf::from)
            .unwrap_or_else(|| dir.path().join("gateway.log"));
        let log = std::fs::File::create(&log_path).expect("log file");
        let bin = std::env::var_os("MOVE_BENCH_GATEWAY").unwrap_or_else(|| BIN.into());
        let mut cmd = Command::new(bin);
        cmd.args(["serve", "--config"])
            .arg(&config)
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(["--ops-listen", &format!("127.0.0.1:{ops_port}")])
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .current_dir(dir.path())
            // No access log; the movers' own lines stay.
            .env(
                "RUST_LOG",
                std::env::var("MOVE_BENCH_RUST_LOG")
                    .unwrap_or_else(|_| "warn,org_gateway::movers=info".into()),
            )
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone log"))
            .stderr(log);
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("ORG_GATEWAY_") {
                cmd.env_remove(key);
            }
        }
        let child = cmd.spawn().expect("start the gateway");
        let gw = Gateway {
            child,
            base: format!("http://127.0.0.1:{port}"),
            ops: format!("http://127.0.0.1:{ops_port}"),
            _dir: dir,
            log_path,
        };
        gw.wait_healthy();
        gw
    }

    fn wait_healthy(&self) {
        let client = reqwest::blocking::Client::new();
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(30) {
            let up = |base: &str| {
                client
                    .get(format!("{base}/healthz"))
                    .timeout(Duration::from_millis(500))
                    .send()
                    .is_ok_and(|r| r.status() == StatusCode::OK)
            };
            if up(&self.base) && up(&self.ops) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("gateway not healthy after 30 s:\n{}", self.log());
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let log = self.log();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            eprintln!("--- gateway log (last lines) ---");
            for line in tail.into_iter().rev() {
                eprintln!("{line}");
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Clients of both listeners, and the run's deadline.
#[derive(Clone)]
struct Api {
    http: Client,
    base: String,
    ops: String,
    deadline: Instant,
}

impl Api {
    fn check_deadline(&self, what: &str) {
        assert!(
            Instant::now() < self.deadline,
            "the benchmark ran past its time limit ({what})"
        );
    }

    async fn ops_call(&self, method: Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut rb = self
            .http
            .request(method, format!("{}{path}", self.ops))
            .bearer_auth(OPS_TOKEN);
        if let Some(b) = body {
            rb = rb.json(&b);
        }
        let resp = rb.send().await.expect("operator request");
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    async fn public(&self, method: Method, path: &str, token: Option<&str>, body: &Value) -> u16 {
        let mut rb = self
            .http
            .request(method, format!("{}{path}", self.base))
            .json(body);
        if let Some(t) = token {
            rb = rb.bearer_auth(t);
        }
        match rb.send().await {
            // Read the whole body: the latency includes it and the connection stays reusable.
            Ok(resp) => {
                let status = resp.status().as_u16();
                match resp.bytes().await {
                    Ok(_) => status,
                    Err(_) => 0,
                }
            }
            Err(_) => 0,
        }
    }

    /// Creates the organization and returns its admin's token.
    async fn organization(&self) -> String {
        let body = json!({"organization_name": ORG, "email": EMAIL, "password": PASSWORD});
        let status = self.public(Method::POST, "/org/create", None, &body).await;
        assert_eq!(status, 201, "create the organization");
        let resp = self
            .http
            .post(format!("{}/admin/login", self.base))
            .json(&json!({"email": EMAIL, "password": PASSWORD}))
            .send()
            .await
            .expect("login");
        assert_eq!(resp.status(), StatusCode::OK, "login");
        let v: Value = resp.json().await.expect("login body");
        v["access_token"].as_str().expect("access_token").to_owned()
    }

    async fn shard_of(&self, org: &str) -> String {
        let path = format!("/ops/placements/{}", org.replace(' ', "%20"));
        let (s, v) = self.ops_call(Method::GET, &path, None).await;
        assert_eq!(s, 200, "placement: {v}");
        v["placement"]["shard"].as_str().expect("shard").to_owned()
    }

    async fn get_move(&self, id: &str) -> Value {
        let (s, v) = self
            .ops_call(Method::GET, &format!("/ops/moves/{id}"), None)
            .await;
        assert_eq!(s, 200, "GET /ops/moves/{id}: {v}");
        v
    }

    /// Queues a move to `to` and polls it to its end; the states in the order seen. A move
    /// that has not ended after `limit` is asked to cancel and reported as an error, as is
    /// one that ended other than done and verified.
    async fn run_move(&self, to: &str, limit: Duration) -> Result<MoveRun, String> {
        let body = json!({"organization_name": ORG, "to_shard": to});
        let posted = Instant::now();
        let (s, v) = self.ops_call(Method::POST, "/ops/moves", Some(body)).await;
        assert_eq!(s, 202, "POST /ops/moves: {v}");
        let id = v["move_id"].as_str().expect("move_id").to_owned();
        let mut seen = vec![("queued".to_owned(), Duration::ZERO)];
        loop {
            self.check_deadline("waiting for a move");
            tokio::time::sleep(POLL).await;
            let record = self.get_move(&id).await;
            let state = record["state"].as_str().unwrap_or("?").to_owned();
            let at = posted.elapsed();
            if seen.last().is_some_and(|(s, _)| *s != state) {
                seen.push((state.clone(), at));
            }
            if matches!(state.as_str(), "done" | "failed" | "cancelled") {
                if state != "done" || record["verification"]["matched"] != true {
                    return Err(format!("the move ended {state}: {record}"));
                }
                return Ok(MoveRun {
                    id,
                    posted,
                    done_seen: at,
                    seen,
                    record,
                });
            }
            if at > limit {
                let (s, _) = self
                    .ops_call(Method::DELETE, &format!("/ops/moves/{id}"), None)
                    .await;
                return Err(format!(
                    "not done after {} s (cancel answered {s}): {record}",
                    limit.as_secs()
                ));
            }
        }
    }

    /// Waits until a finished move has dropped its source (after the grace period), so the
    /// tenant can move back there.
    async fn wait_cleanup(&self, id: &str) {
        loop {
            self.check_deadline("waiting for a move's cleanup");
            if self.get_move(id).await["cleanup_done"] == true {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn metrics(&self) -> String {
        self.http
            .get(format!("{}/metrics", self.ops))
            .send()
            .await
            .expect("GET /metrics")
            .text()
            .await
            .expect("metrics body")
    }
}

/// One move as the client saw it.
struct MoveRun {
    id: String,
    posted: Instant,
    /// When a poll first saw `done`, from the POST.
    done_seen: Duration,
    /// Each state and when a poll first saw it.
    seen: Vec<(String, Duration)>,
    record: Value,
}

impl MoveRun {
    fn ms(&self, field: &str) -> u64 {
        self.record[field].as_u64().unwrap_or(0)
    }

    fn timestamp_ms(&self, field: &str) -> i64 {
        let raw = self.record[field].as_str().unwrap_or_default();
        chrono::DateTime::parse_from_rfc3339(raw)
            .unwrap_or_else(|e| panic!("{field} {raw:?}: {e}"))
            .timestamp_millis()
    }

    /// created_at to finished_at, by the gateway's clock.
    fn recorded(&self) -> Duration {
        let ms = self.timestamp_ms("finished_at") - self.timestamp_ms("created_at");
        Duration::from_millis(ms.max(0) as u64)
    }

    /// The cutover that succeeded, in wall-clock ms: [finished_at - write_pause_ms, finished_at].
    fn cutover_window(&self) -> (i64, i64) {
        let end = self.timestamp_ms("finished_at");
        (end - self.ms("write_pause_ms") as i64, end)
    }

    /// How long a poll first saw each state, in seen order, as `state ms` pairs.
    fn phases(&self) -> String {
        let mut out = Vec::new();
        for (i, (state, at)) in self.seen.iter().enumerate() {
            if let Some((_, next)) = self.seen.get(i + 1) {
                out.push(format!("{state} {}", (*next - *at).as_millis()));
            }
        }
        out.join(", ")
    }
}

/// A document of exactly `DOC_BYTES` as JSON.
fn document(id: &str, i: usize) -> Value {
    let mut d = json!({
        "_id": id,
        "n": i,
        "price": i as f64 / 3.0,
        "tags": ["alpha", "beta", i % 10],
        "nested": {"owner": format!("user-{}", i % 97), "active": i % 2 == 0},
        "pad": "",
    });
    let len = serde_json::to_vec(&d).expect("json").len();
    d["pad"] = json!("x".repeat(DOC_BYTES.saturating_sub(len)));
    d
}

fn seed_id(i: usize) -> String {
    format!("seed-{i:06}")
}

async fn seed(api: &Api, token: &str, n: usize) {
    for start in (0..n).step_by(SEED_BATCH) {
        let docs: Vec<Value> = (start..(start + SEED_BATCH).min(n))
            .map(|i| document(&seed_id(i), i))
            .collect();
        let status = api
            .public(Method::POST, "/data", Some(token), &Value::Array(docs))
            .await;
        assert_eq!(status, 201, "seeding documents {start}..");
    }
}

/// The machine's load average (1, 5, 15 minutes), as the kernel reports it.
fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("histogram bounds")
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

// ------------------------------------------------------------------------------------------
// idle moves

/// Returns where the tenant is, and why a move failed (the run then stops after reporting).
async fn idle_moves(api: &Api, sizes: Sizes) -> (String, Option<String>) {
    println!(
        "\n## Idle moves: {} documents of {DOC_BYTES} B, embedded shard to embedded shard\n",
        sizes.docs
    );
    println!("| # | from -> to | POST to done seen (ms) | created_at to finished_at (ms) | phases as polled (ms) | documents copied | write pause (ms) |");
    println!("|---:|---|---:|---:|---|---:|---:|");
    let mut from = api.shard_of(ORG).await;
    let mut totals = Vec::new();
    let mut failure = None;
    for n in 1..=sizes.idle_moves {
        let to = if from == "a" { "b" } else { "a" };
        let run = match api.run_move(to, sizes.move_limit).await {
            Ok(run) => run,
            Err(e) => {
                println!("| {n} | {from} -> {to} | {e} |");
                failure = Some(e);
                break;
            }
        };
        println!(
            "| {n} | {from} -> {to} | {:.0} | {} | {} | {} | {} |",
            ms(run.done_seen),
            run.recorded().as_millis(),
            run.phases(),
            run.ms("docs_copied"),
            run.ms("write_pause_ms"),
        );
        totals.push(ms(run.done_seen));
        api.wait_cleanup(&run.id).await;
        from = to.to_owned();
    }
    if !totals.is_empty() {
        let mut sorted = totals.clone();
        let med = median(&mut sorted);
        println!(
            "\nPOST to done: median {med:.0} ms, min {:.0} ms, max {:.0} ms (goal < 5000 ms); load average {}",
            sorted[0],
            sorted[sorted.len() - 1],
            loadavg()
        );
    }
    (from, failure)
}

// ------------------------------------------------------------------------------------------
// moves under writes

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Insert,
    Patch,
}

/// One write as the client saw it.
struct Sample {
    /// When it was due (open loop), on the client's monotonic clock.
    due: Instant,
    /// The same in wall-clock ms, to compare with the move records.
    due_wall_ms: i64,
    /// From `due` until the whole response arrived.
    latency: Duration,
    kind: Kind,
    /// HTTP status, 0 for a transport failure.
    status: u16,
}

/// Sends writes at `rate` per second until `stop`, each on its own task (a slow write never
/// delays the next one), and returns every write.
async fn writer(
    api: Api,
    token: Arc<str>,
    docs: usize,
    rate: f64,
    stop: Arc<AtomicBool>,
) -> Vec<Sample> {
    let start = Instant::now();
    let wall_start_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_millis() as i64;
    // Bounded, so an overloaded gateway is not buried; a write waiting here is still timed
    // from when it was due.
    let in_flight = Arc::new(tokio::sync::Semaphore::new(256));
    let mut tasks = tokio::task::JoinSet::new();
    let mut out = Vec::new();
    let mut k: u64 = 0;
    while !stop.load(Ordering::Relaxed) {
        let due = start + Duration::from_secs_f64(k as f64 / rate);
        tokio::time::sleep_until(due.into()).await;
        let permit = in_flight.clone().acquire_owned().await.expect("semaphore");
        let (api, token) = (api.clone(), token.clone());
        let due_wall_ms = wall_start_ms + (due - start).as_millis() as i64;
        tasks.spawn(async move {
            let kind = if k % 2 == 0 {
                Kind::Insert
            } else {
                Kind::Patch
            };
            let status = match kind {
                Kind::Insert => {
                    let doc = document(&format!("w-{k:09}"), k as usize);
                    api.public(Method::POST, "/data", Some(&token), &doc).await
                }
                Kind::Patch => {
                    let id = seed_id((k as usize).wrapping_mul(7_919) % docs);
                    let patch = json!({"$set": {"v": k}});
                    api.public(Method::PATCH, &format!("/data/{id}"), Some(&token), &patch)
                        .await
                }
            };
            let latency = due.elapsed();
            drop(permit);
            Sample {
                due,
                due_wall_ms,
                latency,
                kind,
                status,
            }
        });
        // Collect finished writes as we go.
        while let Some(done) = tasks.try_join_next() {
            out.push(done.expect("writer task"));
        }
        k += 1;
    }
    while let Some(done) = tasks.join_next().await {
        out.push(done.expect("writer task"));
    }
    out
}

fn describe(name: &str, samples: &[&Sample], seconds: Option<f64>) {
    if samples.is_empty() {
        println!("| {name} | 0 | | | | | | |");
        return;
    }
    let mut h = histogram();
    for s in samples {
        h.record((s.latency.as_micros() as u64).max(1))
            .expect("record");
    }
    let failed = samples
        .iter()
        .filter(|s| !(200..300).contains(&s.status))
        .count();
    let q = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    let rate = seconds
        .map(|s| format!("{:.0}", samples.len() as f64 / s))
        .unwrap_or_default();
    println!(
        "| {name} | {} | {rate} | {:.2} | {:.2} | {:.2} | {:.1} | {failed} |",
        samples.len(),
        q(0.5),
        q(0.99),
        q(0.999),
        h.max() as f64 / 1000.0,
    );
}

fn wall_ms(at: Instant) -> i64 {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_millis() as i64;
    now - at.elapsed().as_millis() as i64
}

/// With `MOVE_BENCH_SAMPLES=<file>`: every write (`write,<due ms>,<latency µs>,<kind>,<status>`)
/// and every move's states as polled (`move,<n>,<state>,<ms>`), times in Unix ms, for a
/// timeline of the run.
fn dump(path: &std::path::Path, samples: &[Sample], runs: &[MoveRun]) {
    use std::fmt::Write as _;
    let mut out = String::new();
    for s in samples {
        let kind = match s.kind {
            Kind::Insert => "insert",
            Kind::Patch => "patch",
        };
        let _ = writeln!(
            out,
            "write,{},{},{kind},{}",
            s.due_wall_ms,
            s.latency.as_micros(),
            s.status
        );
    }
    for (n, r) in runs.iter().enumerate() {
        let posted = wall_ms(r.posted);
        for (state, at) in &r.seen {
            let _ = writeln!(
                out,
                "move,{},{state},{}",
                n + 1,
                posted + at.as_millis() as i64
            );
        }
        let _ = writeln!(
            out,
            "move,{},done_seen,{}",
            n + 1,
            posted + r.done_seen.as_millis() as i64
        );
        let (a, b) = r.cutover_window();
        let _ = writeln!(out, "move,{},pause_from,{a}", n + 1);
        let _ = writeln!(out, "move,{},pause_to,{b}", n + 1);
    }
    std::fs::write(path, out).expect("write the samples file");
    println!("samples written to {}", path.display());
}

/// Returns why a move failed or writes failed, if one did.
async fn moves_under_writes(
    api: &Api,
    token: &str,
    sizes: Sizes,
    mut from: String,
) -> Option<String> {
    println!(
        "\n## Moves under writes: about {:.0} writes/s (half inserts of {DOC_BYTES} B documents, half PATCH $set), open loop\n",
        sizes.writes_per_second
    );
    let stop = Arc::new(AtomicBool::new(false));
    let writing = tokio::spawn(writer(
        api.clone(),
        Arc::from(token),
        sizes.docs,
        sizes.writes_per_second,
        stop.clone(),
    ));
    let writes_started = Instant::now();
    tokio::time::sleep(sizes.baseline).await;
    let mut runs = Vec::new();
    println!("| # | from -> to | documents at start | POST to done seen (ms) | phases as polled (ms) | documents copied | abandoned cutovers | write pause (ms) |");
    println!("|---:|---|---:|---:|---|---:|---:|---:|");
    let mut failure = None;
    for n in 1..=sizes.moves_under_writes {
        let to = if from == "a" { "b" } else { "a" };
        let run = match api.run_move(to, sizes.move_limit).await {
            Ok(run) => run,
            Err(e) => {
                println!("| {n} | {from} -> {to} | {e} |");
                failure = Some(e);
                break;
            }
        };
        println!(
            "| {n} | {from} -> {to} | {} | {:.0} | {} | {} | {} | {} |",
            run.ms("docs_total"),
            ms(run.done_seen),
            run.phases(),
            run.ms("docs_copied"),
            run.ms("cutover_attempts"),
            run.ms("write_pause_ms"),
        );
        api.wait_cleanup(&run.id).await;
        runs.push(run);
        from = to.to_owned();
        tokio::time::sleep(sizes.gap).await;
    }
    tokio::time::sleep(sizes.baseline).await;
    stop.store(true, Ordering::Relaxed);
    let samples = writing.await.expect("writer");
    let elapsed = writes_started.elapsed().as_secs_f64();
    if let Some(path) = std::env::var_os("MOVE_BENCH_SAMPLES") {
        dump(std::path::Path::new(&path), &samples, &runs);
    }

    // The write pause of each successful cutover, from the move records.
    let mut pauses: Vec<f64> = runs.iter().map(|r| r.ms("write_pause_ms") as f64).collect();
    pauses.sort_by(f64::total_cmp);
    if !pauses.is_empty() {
        let pick =
            |q: f64| pauses[((pauses.len() as f64 * q).ceil() as usize).clamp(1, pauses.len()) - 1];
        println!(
            "\nwrite_pause_ms over {} moves: P50 {:.0}, P99 {:.0}, max {:.0} (goal: P99 < 100 ms); load average {}",
            pauses.len(),
            pick(0.5),
            pick(0.99),
            pauses[pauses.len() - 1],
            loadavg()
        );
    }
    let abandoned: u64 = runs.iter().map(|r| r.ms("cutover_attempts")).sum();
    println!("abandoned cutovers (each held writes up to moves.max_write_pause_ms): {abandoned}");

    // The writes, by when they were due.
    let in_move = |s: &Sample| {
        runs.iter()
            .any(|r| s.due >= r.posted && s.due <= r.posted + r.done_seen)
    };
    let in_cutover = |s: &Sample| {
        runs.iter().any(|r| {
            let (a, b) = r.cutover_window();
            s.due_wall_ms >= a && s.due_wall_ms <= b
        })
    };
    let all: Vec<&Sample> = samples.iter().collect();
    let outside: Vec<&Sample> = samples.iter().filter(|s| !in_move(s)).collect();
    let during: Vec<&Sample> = samples.iter().filter(|s| in_move(s)).collect();
    let cutover: Vec<&Sample> = samples.iter().filter(|s| in_cutover(s)).collect();
    let inserts: Vec<&Sample> = during
        .iter()
        .copied()
        .filter(|s| s.kind == Kind::Insert)
        .collect();
    let patches: Vec<&Sample> = during
        .iter()
        .copied()
        .filter(|s| s.kind == Kind::Patch)
        .collect();
    let moving: f64 = runs.iter().map(|r| r.done_seen.as_secs_f64()).sum();
    println!("\nClient-side write latency, from the moment each write was due (ms):\n");
    println!("| writes | count | per s | P50 | P99 | P99.9 | max | failed |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|");
    describe("all", &all, Some(elapsed));
    describe("outside moves", &outside, Some(elapsed - moving));
    describe("during moves (POST to done seen)", &during, Some(moving));
    describe("... inserts", &inserts, None);
    describe("... patches", &patches, None);
    describe("due during a successful cutover", &cutover, None);
    let failed: Vec<u16> = samples
        .iter()
        .filter(|s| !(200..300).contains(&s.status))
        .map(|s| s.status)
        .collect();

    // What the gateway itself counted.
    let metrics = api.metrics().await;
    println!("\nGateway metrics after the run:");
    for line in metrics.lines() {
        if line.starts_with("org_gateway_move_held_write_seconds_count")
            || line.starts_with("org_gateway_move_held_write_seconds_sum")
            || line.starts_with("org_gateway_move_cutovers_abandoned_total")
            || line.starts_with("org_gateway_move_write_pause_seconds_count")
            || line.starts_with("org_gateway_move_write_pause_seconds_sum")
            || line.starts_with("org_gateway_move_documents_copied_total")
            || line.starts_with("org_gateway_moves{")
        {
            println!("  {line}");
        }
    }
    if !failed.is_empty() {
        failure.get_or_insert(format!(
            "{} writes failed (statuses {:?})",
            failed.len(),
            &failed[..failed.len().min(20)]
        ));
    }
    failure
}

fn main() {
    // `cargo bench` passes `--bench`; a filter argument that does not match skips the run.
    if std::env::args()
        .skip(1)
        .any(|a| !a.starts_with('-') && !"moves".contains(a.as_str()))
    {
        return;
    }
    // `cargo test --all-targets` runs benches without `--bench`: then only a short smoke run.
    let mut sizes = if std::env::args().any(|a| a == "--bench") {
        BENCH
    } else {
        println!("moves: smoke run; `cargo bench --bench moves` for figures");
        SMOKE
    };
    if let Some(rate) = std::env::var("MOVE_BENCH_WRITES_PER_SECOND")
        .ok()
        .and_then(|r| r.parse::<f64>().ok())
        .filter(|r| *r > 0.0)
    {
        sizes.writes_per_second = rate;
    }
    let gw = Gateway::start();
    let api = Api {
        http: Client::builder()
            .timeout(Duration::from_secs(30))
            .tcp_nodelay(true)
            .build()
            .expect("http client"),
        base: gw.base.clone(),
        ops: gw.ops.clone(),
        deadline: Instant::now() + sizes.limit,
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let token = api.organization().await;
        let seeding = Instant::now();
        seed(&api, &token, sizes.docs).await;
        println!(
            "seeded {} documents of {DOC_BYTES} B in {:.2} s; load average {}",
            sizes.docs,
            seeding.elapsed().as_secs_f64(),
            loadavg()
        );
        let (from, failure) = idle_moves(&api, sizes).await;
        if let Some(e) = failure {
            panic!("idle move failed: {e}");
        }
        if let Some(e) = moves_under_writes(&api, &token, sizes, from).await {
            panic!("moves under writes: {e}");
        }
    });
    drop(gw);
}
