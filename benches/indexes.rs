//! Tenant indexes end to end: the real gateway binary on loopback, one embedded shard, a
//! tenant of 100,000 documents of about 150 bytes, one client sending one request at a time
//! (each latency is a whole HTTP round trip, body read).
//!
//! - the same queries without and with indexes, in the same run: an equality on `sku`
//!   (one match), a sorted page of 10 on `qty`, a count of an equality on `cat` (1,000
//!   matches); median and P99 of `ROUNDS` requests each, and the speed-up;
//! - building each index over the 100,000 documents (`POST /data/indexes` until
//!   `GET /data/indexes` says `ready`) while another client keeps reading and writing the
//!   tenant: the build time, and that client's requests and worst latency meanwhile;
//! - inserting 100,000 documents in batches of 1,000 into a tenant without secondary indexes
//!   and into one with two (`sku`, `qty`): documents per second.
//!
//! ```sh
//! cargo bench --bench indexes
//! INDEX_BENCH_ROUNDS=20 cargo bench --bench indexes   # fewer query rounds
//! INDEX_BENCH_SECOND=cat cargo bench --bench indexes   # the second insert index on `cat`
//! ```
//!
//! Without `--bench` (as under `cargo test --all-targets`) a tenant of 2,000 documents only
//! checks that the benchmark still works.

use reqwest::blocking::Client;
use reqwest::StatusCode;
use serde_json::{json, Value};
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_org-gateway");
const BATCH: usize = 1_000;

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

/// The gateway, in a temporary data dir; killed on drop.
struct Gateway {
    child: Child,
    base: String,
    _dir: tempfile::TempDir,
}

impl Gateway {
    fn start() -> Gateway {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = dir.path().join("gateway.toml");
        std::fs::write(
            &config,
            "[limits]\nrequests_per_minute = 100000000\nrequests_per_hour = 1000000000\n",
        )
        .expect("config");
        let (port, ops_port) = (free_port(), free_port());
        let log = std::fs::File::create(dir.path().join("gateway.log")).expect("log");
        let mut cmd = Command::new(BIN);
        cmd.args(["serve", "--config"])
            .arg(&config)
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(["--ops-listen", &format!("127.0.0.1:{ops_port}")])
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log);
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("ORG_GATEWAY_") {
                cmd.env_remove(key);
            }
        }
        let gw = Gateway {
            child: cmd.spawn().expect("start the gateway"),
            base: format!("http://127.0.0.1:{port}"),
            _dir: dir,
        };
        let client = Client::new();
        let started = Instant::now();
        while !client
            .get(format!("{}/healthz", gw.base))
            .send()
            .is_ok_and(|r| r.status() == StatusCode::OK)
        {
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "gateway not up"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        gw
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One tenant's client.
#[derive(Clone)]
struct Tenant {
    http: Client,
    base: String,
    token: String,
}

impl Tenant {
    fn create(base: &str, name: &str) -> Tenant {
        let http = Client::builder()
            .tcp_nodelay(true)
            .timeout(Duration::from_secs(60))
            .build()
            .expect("client");
        let email = format!("{}@bench.example", name.to_lowercase().replace(' ', "-"));
        let r = http
            .post(format!("{base}/org/create"))
            .json(
                &json!({"organization_name": name, "email": email, "password": "bench-password-1"}),
            )
            .send()
            .expect("create");
        assert_eq!(r.status(), StatusCode::CREATED, "create {name}");
        let v: Value = http
            .post(format!("{base}/admin/login"))
            .json(&json!({"email": email, "password": "bench-password-1"}))
            .send()
            .expect("login")
            .json()
            .expect("login body");
        Tenant {
            http,
            base: base.to_owned(),
            token: v["access_token"].as_str().expect("token").to_owned(),
        }
    }

    fn call(&self, method: reqwest::Method, path: &str, body: Option<&Value>) -> (u16, Value) {
        let mut rb = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.token);
        if let Some(b) = body {
            rb = rb.json(b);
        }
        let r = rb.send().expect("request");
        let status = r.status().as_u16();
        (status, r.json().unwrap_or(Value::Null))
    }

    fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        self.call(reqwest::Method::POST, path, Some(body))
    }

    /// Inserts `n` documents in batches; returns documents per second.
    fn seed(&self, n: usize, tag: &str) -> f64 {
        let started = Instant::now();
        for start in (0..n).step_by(BATCH) {
            let docs: Vec<Value> = (start..(start + BATCH).min(n))
                .map(|i| doc(i, tag))
                .collect();
            let (s, v) = self.post("/data", &json!(docs));
            assert_eq!(s, 201, "insert: {v}");
        }
        n as f64 / started.elapsed().as_secs_f64()
    }

    /// Declares an index and waits until it is ready; returns the time taken.
    fn build(&self, keys: Value) -> Duration {
        let started = Instant::now();
        let (s, v) = self.post("/data/indexes", &json!({ "keys": keys }));
        assert_eq!(s, 201, "create index: {v}");
        let name = v["name"].as_str().expect("name").to_owned();
        loop {
            let (_, list) = self.call(reqwest::Method::GET, "/data/indexes", None);
            let ready = list["indexes"]
                .as_array()
                .expect("indexes")
                .iter()
                .any(|i| i["name"] == name.as_str() && i["state"] == "ready");
            if ready {
                return started.elapsed();
            }
            assert!(
                started.elapsed() < Duration::from_secs(120),
                "build too slow"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

/// About 150 bytes of JSON.
fn doc(i: usize, tag: &str) -> Value {
    json!({
        "_id": format!("{tag}{i:06}"),
        "sku": format!("S-{i:05}"),
        "qty": (i * 7919) % 1000,
        "cat": format!("c{:02}", i % 100),
        "price": (i % 5000) as f64 / 100.0,
        "name": format!("item number {i} of the catalogue"),
    })
}

struct Timing {
    median: Duration,
    p99: Duration,
}

fn time(rounds: usize, mut f: impl FnMut()) -> Timing {
    f(); // warm-up
    let mut all: Vec<Duration> = (0..rounds)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed()
        })
        .collect();
    all.sort();
    Timing {
        median: all[all.len() / 2],
        p99: all[(all.len() * 99 / 100).min(all.len() - 1)],
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn main() {
    if std::env::args()
        .skip(1)
        .any(|a| !a.starts_with('-') && !"indexes".contains(a.as_str()))
    {
        return;
    }
    let bench = std::env::args().any(|a| a == "--bench");
    let (docs, mut rounds) = if bench { (100_000, 200) } else { (2_000, 5) };
    // Fewer rounds for a profile of the other parts.
    if let Some(r) = std::env::var("INDEX_BENCH_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
    {
        rounds = r;
    }
    if !bench {
        println!("indexes: smoke run; `cargo bench --bench indexes` for figures");
    }
    let gw = Gateway::start();
    let t = Tenant::create(&gw.base, "Index Bench");
    let plain_rate = t.seed(docs, "d");
    let probe = format!("S-{:05}", docs * 7 / 9);
    let queries: Vec<(&str, &str, Value)> = vec![
        (
            "equality on sku (1 match)",
            "/data/query",
            json!({"filter": {"sku": probe}}),
        ),
        (
            "sorted page of 10 on qty",
            "/data/query",
            json!({"sort": {"qty": 1}, "limit": 10}),
        ),
        (
            "count of cat equality",
            "/data/count",
            json!({"filter": {"cat": "c07"}}),
        ),
    ];
    let run = |label: &str| -> Vec<(Timing, Value)> {
        queries
            .iter()
            .map(|(_, path, body)| {
                let mut last = Value::Null;
                let timing = time(rounds, || {
                    let (s, v) = t.post(path, body);
                    assert_eq!(s, 200, "{label}: {v}");
                    last = v;
                });
                (timing, last)
            })
            .collect()
    };
    let before = run("unindexed");

    // Builds while another client reads and writes the tenant.
    let busy = Arc::new(AtomicBool::new(true));
    let (done, worst) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let side = {
        let (t, busy, done, worst) = (t.clone(), busy.clone(), done.clone(), worst.clone());
        std::thread::spawn(move || {
            let mut i = 0usize;
            while busy.load(Ordering::Relaxed) {
                let started = Instant::now();
                let (s, v) = if i % 2 == 0 {
                    // Outside every measured query's answer, so answers compare equal.
                    t.post(
                        "/data",
                        &json!({"_id": format!("w{i:07}"), "sku": format!("W-{i}"), "qty": 5000 + i, "cat": "w"}),
                    )
                } else {
                    t.call(
                        reqwest::Method::GET,
                        &format!("/data/d{:06}", i % 1000),
                        None,
                    )
                };
                assert!(s == 200 || s == 201, "during a build: {s} {v}");
                worst.fetch_max(started.elapsed().as_micros() as u64, Ordering::Relaxed);
                done.fetch_add(1, Ordering::Relaxed);
                i += 1;
            }
        })
    };
    let mut builds = Vec::new();
    for keys in [json!({"sku": 1}), json!({"qty": 1}), json!({"cat": 1})] {
        let (d0, w0) = (done.load(Ordering::Relaxed), Instant::now());
        worst.store(0, Ordering::Relaxed);
        let took = t.build(keys.clone());
        let served = done.load(Ordering::Relaxed) - d0;
        builds.push((
            keys,
            took,
            served,
            served as f64 / w0.elapsed().as_secs_f64(),
            Duration::from_micros(worst.load(Ordering::Relaxed)),
        ));
    }
    busy.store(false, Ordering::Relaxed);
    side.join().expect("side client");
    let after = run("indexed");

    // Insert throughput: a fresh tenant without secondary indexes, one with two, their
    // batches alternating (one each in turn), so that load from elsewhere on the machine
    // falls on both alike; each tenant's rate counts only its own requests.
    let bare = Tenant::create(&gw.base, "Insert Bare");
    let two = Tenant::create(&gw.base, "Insert Two");
    // `INDEX_BENCH_SECOND=price` puts the second index on a field that grows with the
    // inserts (appends) instead of one scattered over the whole index.
    let second = std::env::var("INDEX_BENCH_SECOND").unwrap_or_else(|_| "qty".into());
    two.build(json!({"sku": 1}));
    two.build(json!({ second.as_str(): 1 }));
    let (mut bare_time, mut two_time) = (Duration::ZERO, Duration::ZERO);
    let mut slowest_two = Duration::ZERO;
    for start in (0..docs).step_by(BATCH) {
        for (tenant, tag, total) in [(&bare, "b", &mut bare_time), (&two, "t", &mut two_time)] {
            let batch: Vec<Value> = (start..(start + BATCH).min(docs))
                .map(|i| doc(i, tag))
                .collect();
            let started = Instant::now();
            let (s, v) = tenant.post("/data", &json!(batch));
            let took = started.elapsed();
            assert_eq!(s, 201, "insert: {v}");
            *total += took;
            if tag == "t" {
                slowest_two = slowest_two.max(took);
            }
        }
    }
    let bare_rate = docs as f64 / bare_time.as_secs_f64();
    let two_rate = docs as f64 / two_time.as_secs_f64();
    // Queries on the tenant just written (on the embedded store some of its latest index
    // changes may still be in the indexes' logs).
    let fresh: Vec<(&str, Value)> = vec![
        (
            "equality on sku (1 match)",
            json!({"filter": {"sku": probe}}),
        ),
        (
            "sorted page of 10 on the second index",
            json!({"sort": { second.as_str(): 1 }, "limit": 10}),
        ),
    ];
    let fresh_timings: Vec<(&str, Timing)> = fresh
        .iter()
        .map(|(label, body)| {
            let timing = time(rounds, || {
                let (s, v) = two.post("/data/query", body);
                assert_eq!(s, 200, "{label}: {v}");
                let n = v["documents"].as_array().map_or(0, Vec::len);
                assert!(n == 1 || n == 10, "{label}: {n} documents");
            });
            (*label, timing)
        })
        .collect();

    println!("\n## Tenant indexes ({docs} documents of about 150 bytes, embedded store, HTTP end to end)\n");
    println!("| query | unindexed median | P99 | indexed median | P99 | speed-up | index used |");
    println!("|---|---:|---:|---:|---:|---:|---|");
    for (i, (label, path, body)) in queries.iter().enumerate() {
        let (b, _) = &before[i];
        let (a, _) = &after[i];
        let mut explain = body.clone();
        let index = if *path == "/data/query" {
            explain["explain"] = json!(true);
            let (_, v) = t.post(path, &explain);
            v["explain"]["index"].as_str().unwrap_or("none").to_owned()
        } else {
            "-".to_owned()
        };
        println!(
            "| {label} | {:.2} ms | {:.2} ms | {:.3} ms | {:.3} ms | {:.0}x | {index} |",
            ms(b.median),
            ms(b.p99),
            ms(a.median),
            ms(a.p99),
            b.median.as_secs_f64() / a.median.as_secs_f64(),
        );
        assert_eq!(
            before[i].1, after[i].1,
            "{label}: same answer with and without indexes"
        );
    }
    println!("\n| index build (while another client reads and writes) | time | side requests | side req/s | side worst latency |");
    println!("|---|---:|---:|---:|---:|");
    for (keys, took, served, rate, worst) in &builds {
        println!(
            "| {keys} | {:.0} ms | {served} | {rate:.0} | {:.1} ms |",
            ms(*took),
            ms(*worst)
        );
    }
    println!("\n| inserts in batches of {BATCH} | documents/s |");
    println!("|---|---:|");
    println!("| first tenant, no secondary index (seeding) | {plain_rate:.0} |");
    println!(
        "| fresh tenant, no secondary index (batches alternating with the next) | {bare_rate:.0} |"
    );
    println!(
        "| fresh tenant, two secondary indexes (`sku`, `{second}`) | {two_rate:.0} ({:.2} of the above; slowest batch {:.1} ms) |",
        two_rate / bare_rate,
        ms(slowest_two)
    );
    println!("\n| query on the two-index tenant after its inserts | median | P99 |");
    println!("|---|---:|---:|");
    for (label, t) in &fresh_timings {
        println!("| {label} | {:.3} ms | {:.3} ms |", ms(t.median), ms(t.p99));
    }
}
