//! Copy throughput of a tenant move, embedded store to embedded store: 10,000 documents of
//! 1 KiB each, 1,000 per batch, into a fresh target file per iteration (redb, fsync on every
//! commit). Also the fingerprint of the same collection.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use org_gateway::domain::{CollectionName, DatabaseName};
use org_gateway::movers::copy::{copy_collection, fingerprint};
use org_gateway::store::embedded::EmbeddedStore;
use org_gateway::store::{Document, Namespace, TenantStore};
use serde_json::json;
use std::time::{Duration, Instant};

const DOCS: usize = 10_000;
const DOC_BYTES: usize = 1_024;
const BATCH: usize = 1_000;

fn ns(name: &str) -> Namespace {
    Namespace {
        database: DatabaseName::numbered("db", 1),
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

fn copy(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let source = EmbeddedStore::open(&dir.path().join("source.redb")).unwrap();
    let from = ns("source");
    rt.block_on(async {
        source.create_collection(&from).await.unwrap();
        let docs: Vec<Document> = (0..DOCS).map(document).collect();
        assert_eq!(serde_json::to_vec(&docs[0]).unwrap().len(), DOC_BYTES);
        for chunk in docs.chunks(BATCH) {
            source.insert_many(&from, chunk.to_vec()).await.unwrap();
        }
    });

    let mut group = c.benchmark_group("move_copy");
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(15));
    group.throughput(Throughput::Elements(DOCS as u64));
    group.bench_function("embedded_to_embedded_10k_1KiB", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let target_dir = tempfile::tempdir().unwrap();
                let target = EmbeddedStore::open(&target_dir.path().join("t.redb")).unwrap();
                let to = ns("target");
                rt.block_on(target.create_collection(&to)).unwrap();
                let started = Instant::now();
                let done = rt
                    .block_on(copy_collection(
                        &source,
                        &from,
                        &target,
                        &to,
                        None,
                        BATCH,
                        |_| {},
                    ))
                    .unwrap();
                total += started.elapsed();
                assert_eq!(done.documents, DOCS as u64);
            }
            total
        })
    });
    group.bench_function("fingerprint_embedded_10k_1KiB", |b| {
        b.iter(|| rt.block_on(fingerprint(&source, &from)).unwrap())
    });
    group.finish();
}

criterion_group!(benches, copy);
criterion_main!(benches);
