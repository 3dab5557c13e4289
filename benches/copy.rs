//! Copy throughput of a tenant move: 10,000 documents of 1 KiB each, 1,000 per batch, into a
//! fresh target collection per iteration, next to a plain bulk `insert_many` of the same
//! documents in the same batches (what loading them costs without reading a source).
//!
//! - embedded store to embedded store (redb, fsync on every commit), and the fingerprint of
//!   the same collection (what verifying a copy reads);
//! - with `MONGODB_URI` set, the same to and from that MongoDB deployment: embedded to
//!   MongoDB, `insert_many` into MongoDB, MongoDB to embedded, and the fingerprint of the
//!   MongoDB collection (reading it alone). The shard settings are the gateway's defaults
//!   (`w: majority`, journal). These are timed by a plain loop, after one untimed copy, in
//!   `MONGODB_RUNS` (5) rounds of the four operations in turn, not by criterion: against a
//!   slow server one round takes tens of seconds.
//!
//! ```sh
//! cargo bench --bench copy
//! MONGODB_URI=mongodb://127.0.0.1:27017 cargo bench --bench copy
//! ```
//!
//! A summary at the end gives each operation's median time and throughput over its timed
//! runs (criterion's warm-up included) and the ratio of each copy to a plain `insert_many`
//! into the same target, and of the copy from MongoDB to reading MongoDB alone. Without
//! `--bench` (as under `cargo test --all-targets`) 1,000 documents and one run each.

use criterion::measurement::WallTime;
use criterion::{BenchmarkGroup, Criterion, Throughput};
use org_gateway::config::{ShardConfig, StoreKind};
use org_gateway::domain::{CollectionName, DatabaseName, ShardId};
use org_gateway::movers::copy::{copy_collection, fingerprint};
use org_gateway::store::embedded::EmbeddedStore;
use org_gateway::store::mongo::MongoStore;
use org_gateway::store::{Document, Namespace, TenantStore};
use serde_json::json;
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use tokio::runtime::Runtime;

const DOC_BYTES: usize = 1_024;
const BATCH: usize = 1_000;
/// Rounds of the MongoDB operations under `cargo bench`.
const MONGODB_RUNS: usize = 5;

fn ns(database: &DatabaseName, name: &str) -> Namespace {
    Namespace {
        database: database.clone(),
        collection: CollectionName::from_stored(&format!("org_{name}")).unwrap(),
    }
}

/// A document of exactly `DOC_BYTES` as JSON, with a few typical fields and padding.
fn document(i: usize) -> Document {
    let mut d = json!({
        "_id": format!("{i:024x}"),
        "n": i,
        "price": i as f64 / 3.0,
        "tags": ["alpha", "beta", i % 10],
        "nested": {"owner": format!("user-{}", i % 97), "active": i % 2 == 0},
        "pad": "",
    });
    let len = serde_json::to_vec(&d).unwrap().len();
    d["pad"] = json!("x".repeat(DOC_BYTES - len));
    match d {
        serde_json::Value::Object(m) => m,
        _ => unreachable!(),
    }
}

/// Every timed run of each operation, for the summary.
type Timings = RefCell<BTreeMap<&'static str, Vec<Duration>>>;

fn record(timings: &Timings, label: &'static str, elapsed: Duration) {
    timings.borrow_mut().entry(label).or_default().push(elapsed);
}

async fn insert_all(store: &dyn TenantStore, to: &Namespace, docs: &[Document]) {
    for chunk in docs.chunks(BATCH) {
        store.insert_many(to, chunk.to_vec()).await.unwrap();
    }
}

/// Where an iteration writes: a fresh embedded file, or a fresh collection on MongoDB.
enum Target<'a> {
    Embedded,
    Mongo(&'a MongoStore, &'a DatabaseName),
}

/// Runs `work` on a fresh, empty target collection (not timed: making and removing it).
fn with_target(
    rt: &Runtime,
    target: &Target,
    work: impl FnOnce(&dyn TenantStore, &Namespace) -> Duration,
) -> Duration {
    match target {
        Target::Embedded => {
            let dir = tempfile::tempdir().unwrap();
            let store = EmbeddedStore::open(&dir.path().join("t.redb")).unwrap();
            let to = ns(&DatabaseName::numbered("db", 1), "target");
            rt.block_on(store.create_collection(&to)).unwrap();
            work(&store, &to)
        }
        Target::Mongo(store, db) => {
            let to = ns(db, "target");
            let _ = rt.block_on(store.drop_collection(&to));
            rt.block_on(store.create_collection(&to)).unwrap();
            let elapsed = work(*store, &to);
            rt.block_on(store.drop_collection(&to)).unwrap();
            elapsed
        }
    }
}

/// One timed copy of the whole source into a fresh target.
fn copy_once(
    rt: &Runtime,
    source: &dyn TenantStore,
    from: &Namespace,
    target: &Target,
    n: usize,
) -> Duration {
    with_target(rt, target, |store, to| {
        let started = Instant::now();
        let done = rt
            .block_on(copy_collection(
                source,
                from,
                store,
                to,
                None,
                BATCH,
                |_| {},
            ))
            .unwrap();
        let elapsed = started.elapsed();
        assert_eq!(done.documents, n as u64);
        elapsed
    })
}

/// One timed `insert_many` of every document, in copy-sized batches, into a fresh target.
fn insert_once(rt: &Runtime, docs: &[Document], target: &Target) -> Duration {
    with_target(rt, target, |store, to| {
        let started = Instant::now();
        rt.block_on(insert_all(store, to, docs));
        started.elapsed()
    })
}

/// Drops a MongoDB database when dropped (best effort), so a failed run leaves nothing.
struct DropDatabase<'a> {
    rt: &'a Runtime,
    uri: String,
    database: String,
}

impl Drop for DropDatabase<'_> {
    fn drop(&mut self) {
        self.rt.block_on(async {
            if let Ok(client) = mongodb::Client::with_uri_str(&self.uri).await {
                let _ = client.database(&self.database).drop().await;
            }
        });
    }
}

/// A criterion benchmark of `once`, every timed run also counted in the summary.
fn bench(
    group: &mut BenchmarkGroup<'_, WallTime>,
    id: &str,
    label: &'static str,
    timings: &Timings,
    once: impl Fn() -> Duration,
) {
    group.bench_function(id, |b| {
        b.iter_custom(|iters| {
            (0..iters)
                .map(|_| {
                    let elapsed = once();
                    record(timings, label, elapsed);
                    elapsed
                })
                .sum()
        })
    });
}

fn main() {
    // `cargo bench` passes `--bench`; without it (`cargo test --all-targets`) a quick check.
    let full = std::env::args().any(|a| a == "--bench");
    let n = if full { 10_000 } else { 1_000 };
    let mut c = Criterion::default().configure_from_args();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let timings: Timings = RefCell::new(BTreeMap::new());
    let docs: Vec<Document> = (0..n).map(document).collect();
    assert_eq!(serde_json::to_vec(&docs[0]).unwrap().len(), DOC_BYTES);

    let dir = tempfile::tempdir().unwrap();
    let source = EmbeddedStore::open(&dir.path().join("source.redb")).unwrap();
    let from = ns(&DatabaseName::numbered("db", 1), "source");
    rt.block_on(async {
        source.create_collection(&from).await.unwrap();
        insert_all(&source, &from, &docs).await;
    });

    let mut group = c.benchmark_group("move_copy");
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(15));
    group.throughput(Throughput::Elements(n as u64));
    bench(
        &mut group,
        "embedded_to_embedded_10k_1KiB",
        "copy embedded -> embedded",
        &timings,
        || copy_once(&rt, &source, &from, &Target::Embedded, n),
    );
    bench(
        &mut group,
        "insert_many_embedded_10k_1KiB",
        "insert_many -> embedded",
        &timings,
        || insert_once(&rt, &docs, &Target::Embedded),
    );
    bench(
        &mut group,
        "fingerprint_embedded_10k_1KiB",
        "fingerprint embedded",
        &timings,
        || {
            let started = Instant::now();
            rt.block_on(fingerprint(&source, &from)).unwrap();
            started.elapsed()
        },
    );
    group.finish();

    match std::env::var("MONGODB_URI")
        .ok()
        .filter(|u| !u.trim().is_empty())
    {
        None => eprintln!("skipping the MongoDB copies: MONGODB_URI not set"),
        Some(uri) => {
            let mut config = ShardConfig::local_embedded();
            config.id = ShardId::parse("bench").unwrap();
            config.kind = StoreKind::Mongodb;
            config.uri = Some(uri.as_str().into());
            config.path = None;
            config.min_pool_size = 0;
            let mongo = rt.block_on(MongoStore::open(&config)).unwrap();
            // A database of its own, dropped at the end (also when a step fails).
            let prefix = format!("bench_copy_{}", std::process::id());
            let db = DatabaseName::numbered(&prefix, 1);
            let _cleanup = DropDatabase {
                rt: &rt,
                uri: uri.clone(),
                database: db.as_str().to_owned(),
            };
            let msource = ns(&db, "source");
            rt.block_on(async {
                mongo.ping().await.expect("MongoDB at MONGODB_URI answers");
                mongo.create_collection(&msource).await.unwrap();
                insert_all(&mongo, &msource, &docs).await;
            });
            let on_mongo = Target::Mongo(&mongo, &db);
            let rounds = if full { MONGODB_RUNS } else { 1 };
            if full {
                // Warm-up, not timed: the first collection of a new database can be much
                // slower on some servers.
                let warm = copy_once(&rt, &source, &from, &on_mongo, n);
                println!(
                    "move_copy_mongodb warm-up: copy embedded -> MongoDB {:>8.0} ms (not counted)",
                    warm.as_secs_f64() * 1000.0
                );
            }
            for round in 1..=rounds {
                let runs: [(&'static str, &dyn Fn() -> Duration); 4] = [
                    ("copy embedded -> MongoDB", &|| {
                        copy_once(&rt, &source, &from, &on_mongo, n)
                    }),
                    ("insert_many -> MongoDB", &|| {
                        insert_once(&rt, &docs, &on_mongo)
                    }),
                    ("copy MongoDB -> embedded", &|| {
                        copy_once(&rt, &mongo, &msource, &Target::Embedded, n)
                    }),
                    ("fingerprint MongoDB", &|| {
                        let started = Instant::now();
                        rt.block_on(fingerprint(&mongo, &msource)).unwrap();
                        started.elapsed()
                    }),
                ];
                for (label, once) in runs {
                    let elapsed = once();
                    println!(
                        "move_copy_mongodb round {round}/{rounds}: {label:<26} {:>8.0} ms",
                        elapsed.as_secs_f64() * 1000.0
                    );
                    record(&timings, label, elapsed);
                }
            }
        }
    }

    // Medians of every timed run (criterion's warm-up included).
    let t = timings.borrow();
    let median = |label: &str| {
        t.get(label).map(|runs| {
            let mut runs = runs.clone();
            runs.sort();
            runs[runs.len() / 2]
        })
    };
    let per_second = |d: Duration| n as f64 / d.as_secs_f64();
    println!("\nsummary ({n} documents of {DOC_BYTES} B, batches of {BATCH}; medians):");
    for (label, runs) in t.iter() {
        let m = median(label).expect("runs");
        let (lo, hi) = (runs.iter().min().unwrap(), runs.iter().max().unwrap());
        println!(
            "  {label:<26} {:>9.1} ms ({:.1} to {:.1}) {:>8.0} documents/s {:>6.1} MiB/s  ({} runs)",
            m.as_secs_f64() * 1000.0,
            lo.as_secs_f64() * 1000.0,
            hi.as_secs_f64() * 1000.0,
            per_second(m),
            per_second(m) * DOC_BYTES as f64 / (1024.0 * 1024.0),
            runs.len()
        );
    }
    for (a, b) in [
        ("copy embedded -> embedded", "insert_many -> embedded"),
        ("copy embedded -> MongoDB", "insert_many -> MongoDB"),
        ("copy MongoDB -> embedded", "insert_many -> embedded"),
        ("copy MongoDB -> embedded", "fingerprint MongoDB"),
    ] {
        if let (Some(x), Some(y)) = (median(a), median(b)) {
            println!(
                "  throughput of {a} / {b}: {:.2}",
                y.as_secs_f64() / x.as_secs_f64()
            );
        }
    }
    c.final_summary();
}
