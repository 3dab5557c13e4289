//! Copying a collection between every pair of backends (embedded and MongoDB, in both
//! directions, and between two databases of one kind), verified by fingerprints.

use crate::mongo_env;
use crate::store::Fixture;
use org_gateway::movers::copy::{copy_collection, fingerprint, CopyProgress, Fingerprint};
use org_gateway::store::mongo::RenameStrategy;
use org_gateway::store::query::{QueryLimits, Update};
use org_gateway::store::{Document, Namespace, TenantStore};
use serde_json::json;

const DOCS: usize = 2_500;

/// Documents with every JSON shape a move must carry unchanged.
fn varied(i: usize) -> Document {
    let v = json!({
        "_id": format!("{i:06x}"),
        "n": i,
        "whole": 2.0,
        "half": 2.5,
        "third": i as f64 / 3.0,
        "big": i64::MAX - i as i64,
        "negative": -(i as i64) * 1_000_000_007,
        "ключ": "значение",
        "日本語": {"キー": [i, "ü", null, true]},
        "nested": {"deep": {"list": [1, 2.0, {"x": i % 7}], "empty": {}}, "none": []},
        "text": format!("document {i} \u{1F600}"),
    });
    match v {
        serde_json::Value::Object(m) => m,
        _ => unreachable!(),
    }
}

async fn create(store: &dyn TenantStore, ns: &Namespace) {
    store
        .create_collection(ns)
        .await
        .expect("create collection");
}

async fn copy_all(
    from: &dyn TenantStore,
    from_ns: &Namespace,
    to: &dyn TenantStore,
    to_ns: &Namespace,
    after: Option<String>,
) -> (CopyProgress, Vec<CopyProgress>) {
    let mut reports = Vec::new();
    let done = copy_collection(from, from_ns, to, to_ns, after, 300, |p| {
        reports.push(p.clone())
    })
    .await
    .expect("copy");
    (done, reports)
}

async fn check_copy(source: &Fixture, target: &Fixture) {
    let (from, to) = (source.store.as_ref(), target.store.as_ref());
    let (from_ns, to_ns) = (source.ns(1, "source"), target.ns(2, "target"));
    create(from, &from_ns).await;
    create(to, &to_ns).await;
    let docs: Vec<Document> = (0..DOCS).map(varied).collect();
    for chunk in docs.chunks(500) {
        from.insert_many(&from_ns, chunk.to_vec()).await.unwrap();
    }
    let source_fp = fingerprint(from, &from_ns).await.unwrap();
    assert_eq!(source_fp.count, DOCS as u64);
    assert_ne!(fingerprint(to, &to_ns).await.unwrap(), source_fp);

    let (done, reports) = copy_all(from, &from_ns, to, &to_ns, None).await;
    assert_eq!(done.documents, DOCS as u64);
    assert_eq!(
        done.last_id.as_deref(),
        Some(format!("{:06x}", DOCS - 1).as_str())
    );
    assert!(done.bytes > DOCS as u64 * 250, "bytes: {}", done.bytes);
    assert_eq!(reports.len(), DOCS.div_ceil(300));
    assert!(reports.windows(2).all(|w| w[0].last_id < w[1].last_id));
    assert_eq!(reports.last(), Some(&done));
    assert_eq!(fingerprint(to, &to_ns).await.unwrap(), source_fp);
    assert_eq!(to.count_all(&to_ns).await.unwrap(), DOCS as u64);
    for i in [0, 1_234, DOCS - 1] {
        let id = format!("{i:06x}");
        assert_eq!(to.get(&to_ns, &id).await.unwrap(), Some(varied(i)));
    }

    // A crashed copy resumed from a middle id (and a full replay) change nothing.
    let middle = reports[3].last_id.clone();
    let (resumed, _) = copy_all(from, &from_ns, to, &to_ns, middle).await;
    assert_eq!(resumed.documents, (DOCS - 4 * 300) as u64);
    copy_all(from, &from_ns, to, &to_ns, None).await;
    assert_eq!(fingerprint(to, &to_ns).await.unwrap(), source_fp);
    assert_eq!(to.count_all(&to_ns).await.unwrap(), DOCS as u64);

    // A change on either side shows in the fingerprint, even int 2 for float 2.0.
    let id = format!("{:06x}", 777);
    let set = Update::parse(&json!({"$set": {"whole": 2}}), &QueryLimits::default()).unwrap();
    to.update_by_id(&to_ns, &id, &set, 1 << 20)
        .await
        .unwrap()
        .unwrap();
    let changed = fingerprint(to, &to_ns).await.unwrap();
    assert_eq!(changed.count, source_fp.count);
    assert_ne!(changed, source_fp);
    to.upsert_many(&to_ns, vec![varied(777)]).await.unwrap();
    assert_eq!(fingerprint(to, &to_ns).await.unwrap(), source_fp);
    from.delete_many_ids(&from_ns, std::slice::from_ref(&id))
        .await
        .unwrap();
    let fewer = fingerprint(from, &from_ns).await.unwrap();
    assert_eq!(fewer.count, DOCS as u64 - 1);
    assert_ne!(fewer, source_fp);
    // Catch-up applies the delete, and both sides agree again.
    to.delete_many_ids(&to_ns, &[id]).await.unwrap();
    assert_eq!(fingerprint(to, &to_ns).await.unwrap(), fewer);
    assert_eq!(
        fingerprint(to, &target.ns(1, "never")).await.unwrap(),
        Fingerprint::default()
    );
}

async fn mongo(second: bool) -> Option<Fixture> {
    let uri = if second {
        mongo_env::uri_2()?
    } else {
        mongo_env::uri()?
    };
    Some(Fixture::mongo_at(uri, RenameStrategy::Command).await)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_to_embedded() {
    let (a, b) = (Fixture::embedded(), Fixture::embedded());
    check_copy(&a, &b).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_to_mongo() {
    let Some(b) = mongo(false).await else { return };
    let a = Fixture::embedded();
    check_copy(&a, &b).await;
    b.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mongo_to_embedded() {
    let Some(a) = mongo(false).await else { return };
    let b = Fixture::embedded();
    check_copy(&a, &b).await;
    a.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mongo_to_mongo() {
    let (Some(a), Some(b)) = (mongo(false).await, mongo(true).await) else {
        return;
    };
    check_copy(&a, &b).await;
    a.cleanup().await;
    b.cleanup().await;
}
