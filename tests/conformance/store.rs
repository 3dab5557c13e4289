//! The store conformance suite: every test runs against the embedded store, the MongoDB store
//! and the MongoDB store forced to rename by copying.

use crate::mongo_env;
use org_gateway::config::{ShardConfig, StoreKind};
use org_gateway::domain::{CollectionName, DatabaseName, IndexKeys, IndexName, ShardId};
use org_gateway::store::embedded::EmbeddedStore;
use org_gateway::store::mongo::{MongoStore, RenameStrategy};
use org_gateway::store::query::{QueryLimits, Update};
use org_gateway::store::{
    Document, FindQuery, IndexSpec, IndexState, Namespace, StoreError, TenantStore,
};
use serde_json::json;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A store under test plus what it needs to clean up.
pub struct Fixture {
    pub store: Arc<dyn TenantStore>,
    /// Unique prefix: the test's databases are `<prefix>_1` and `<prefix>_2`.
    pub prefix: String,
    _dir: Option<tempfile::TempDir>,
    mongo_uri: Option<String>,
}

impl Fixture {
    pub fn embedded() -> Self {
        Self::embedded_with_log_bound(org_gateway::store::embedded::INDEX_LOG_BOUND)
    }

    /// An embedded store whose index logs merge once they hold more than `bound` changes.
    pub fn embedded_with_log_bound(bound: u64) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = EmbeddedStore::open(&dir.path().join("shard.redb"))
            .expect("open store")
            .with_index_log_bound(bound);
        Self {
            store: Arc::new(store),
            prefix: "db".into(),
            _dir: Some(dir),
            mongo_uri: None,
        }
    }

    pub async fn mongo(strategy: RenameStrategy) -> Option<Self> {
        Some(Self::mongo_at(mongo_env::uri()?, strategy).await)
    }

    /// A MongoDB store on the deployment at `uri`.
    pub async fn mongo_at(uri: String, strategy: RenameStrategy) -> Self {
        let mut config = mongo_shard("conformance", &uri);
        config.max_pool_size = 10;
        config.min_pool_size = 0;
        let store = MongoStore::open(&config)
            .await
            .expect("open MongoDB store")
            .with_rename_strategy(strategy);
        Self {
            store: Arc::new(store),
            prefix: mongo_env::unique_db("st"),
            _dir: None,
            mongo_uri: Some(uri),
        }
    }

    pub fn db(&self, n: u32) -> DatabaseName {
        DatabaseName::numbered(&self.prefix, n)
    }

    pub fn ns(&self, n: u32, collection: &str) -> Namespace {
        Namespace {
            database: self.db(n),
            collection: coll(collection),
        }
    }

    pub async fn cleanup(self) {
        if let Some(uri) = &self.mongo_uri {
            for n in [1, 2] {
                mongo_env::drop_db(uri, self.db(n).as_str()).await;
            }
        }
    }
}

/// A MongoDB shard config with test-friendly timeouts.
pub fn mongo_shard(id: &str, uri: &str) -> ShardConfig {
    let mut c = ShardConfig::local_embedded();
    c.id = ShardId::parse(id).expect("shard id");
    c.kind = StoreKind::Mongodb;
    c.uri = Some(uri.into());
    c.path = None;
    c.server_selection_timeout_ms = 3_000;
    c
}

fn coll(name: &str) -> CollectionName {
    CollectionName::from_stored(&format!("org_{name}")).expect("collection name")
}

fn doc(v: serde_json::Value) -> Document {
    match v {
        serde_json::Value::Object(m) => m,
        _ => panic!("not an object"),
    }
}

/// Creates the collection unless it exists, then inserts: writes never create collections.
async fn fill(f: &Fixture, ns: &Namespace, docs: Vec<Document>) -> Result<(), StoreError> {
    match f.store.create_collection(ns).await {
        Ok(()) | Err(StoreError::CollectionExists) => {}
        Err(e) => return Err(e),
    }
    f.store.insert_many(ns, docs).await
}

fn numbered(ids: std::ops::Range<usize>) -> Vec<Document> {
    ids.map(|i| doc(json!({"_id": format!("d{i:05}"), "i": i, "half": i as f64 / 2.0})))
        .collect()
}

macro_rules! conformance {
    ($($test:ident),* $(,)?) => {
        mod embedded {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    let f = super::Fixture::embedded();
                    super::$test(&f).await;
                    f.cleanup().await;
                }
            )*
        }
        mod mongo {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    let Some(f) = super::Fixture::mongo(
                        org_gateway::store::mongo::RenameStrategy::Command,
                    ).await else { return };
                    super::$test(&f).await;
                    f.cleanup().await;
                }
            )*
        }
        mod mongo_copy_rename {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    let Some(f) = super::Fixture::mongo(
                        org_gateway::store::mongo::RenameStrategy::Copy,
                    ).await else { return };
                    super::$test(&f).await;
                    f.cleanup().await;
                }
            )*
        }
    };
}

conformance!(
    ping_answers,
    create_is_exclusive_and_listed,
    set_aside_keeps_documents_under_a_new_name,
    documents_round_trip,
    missing_collection_reads_as_empty,
    duplicate_id_inserts_nothing,
    document_without_string_id_is_refused,
    drop_removes_and_is_idempotent,
    rename_moves_documents_and_is_idempotent,
    rename_replaces_empty_leftover_target,
    rename_resumes_interrupted_copy,
    rename_of_missing_source_yields_empty_target,
    rename_moves_many_documents,
    concurrent_increments_all_land,
    refused_updates_change_nothing,
    concurrent_delete_makes_updates_find_nothing,
    scan_after_pages_in_id_order,
    upsert_many_inserts_replaces_and_is_idempotent,
    upsert_many_never_creates_the_collection,
    delete_many_ids_removes_those_there,
    indexes_are_declared_listed_and_dropped,
    unique_index_refuses_duplicates_on_every_write,
    unique_index_build_over_duplicates_fails,
    rename_keeps_indexes,
    indexed_queries_answer_like_scans,
    one_batch_changing_a_document_twice_leaves_only_its_last_entries,
    indexes_follow_every_write,
);

async fn ping_answers(f: &Fixture) {
    f.store.ping().await.expect("ping");
}

async fn create_is_exclusive_and_listed(f: &Fixture) {
    let a = f.ns(1, "alpha");
    f.store.create_collection(&a).await.unwrap();
    fill(f, &a, numbered(0..2)).await.unwrap();
    // A second create never adopts what is there.
    assert!(
        matches!(
            f.store.create_collection(&a).await,
            Err(StoreError::CollectionExists)
        ),
        "a create adopted an existing collection"
    );
    assert_eq!(f.store.count_all(&a).await.unwrap(), 2);
    f.store.drop_collection(&a).await.unwrap();
    f.store.create_collection(&a).await.unwrap();
    f.store.create_collection(&f.ns(1, "beta")).await.unwrap();
    f.store.create_collection(&f.ns(2, "gamma")).await.unwrap();
    let listed = f.store.list_collections(&f.db(1)).await.unwrap();
    assert_eq!(listed, vec!["org_alpha".to_owned(), "org_beta".to_owned()]);
    assert_eq!(
        f.store.list_collections(&f.db(2)).await.unwrap(),
        vec!["org_gamma".to_owned()]
    );
    assert_eq!(f.store.count_all(&a).await.unwrap(), 0);
}

async fn documents_round_trip(f: &Fixture) {
    let ns = f.ns(1, "rt");
    f.store.create_collection(&ns).await.unwrap();
    let original = doc(json!({
        "_id": "65f0c0ffee0000000000beef",
        "small": 42,
        "negative": -7,
        "big": 9_007_199_254_740_993_i64,
        "min": i64::MIN,
        "max": i64::MAX,
        "float": 3.25,
        "whole_float": 10.0,
        "tiny": 1e-300,
        "text": "héllo \u{1F600}",
        "flag": false,
        "nothing": null,
        "list": [1, 2.5, "three", [4], {"five": 5}],
        "nested": {"deep": {"deeper": {"n": 1}}, "empty": {}, "none": []},
    }));
    let second = doc(json!({"_id": "plain", "v": 1}));
    // Floats come back bit for bit, also those whose shortest decimal form is long.
    let floats: Vec<f64> = (1..2_000).map(|i| i as f64 / 3.0).collect();
    let third = doc(json!({"_id": "floats", "v": floats}));
    fill(
        f,
        &ns,
        vec![original.clone(), second.clone(), third.clone()],
    )
    .await
    .unwrap();
    let got = f.store.get(&ns, "floats").await.unwrap().expect("floats");
    let mismatch = (got["v"].as_array().unwrap().iter())
        .zip(third["v"].as_array().unwrap())
        .find(|(a, b)| a != b);
    assert_eq!(
        mismatch, None,
        "a float changed on its way through the store"
    );
    assert_eq!(got, third);
    let got = f.store.get(&ns, "65f0c0ffee0000000000beef").await.unwrap();
    assert_eq!(got, Some(original));
    assert_eq!(f.store.get(&ns, "plain").await.unwrap(), Some(second));
    assert_eq!(f.store.get(&ns, "absent").await.unwrap(), None);
    assert_eq!(f.store.count_all(&ns).await.unwrap(), 3);
    // Empty batches are a no-op.
    fill(f, &ns, Vec::new()).await.unwrap();
    assert_eq!(f.store.count_all(&ns).await.unwrap(), 3);
}

async fn missing_collection_reads_as_empty(f: &Fixture) {
    let ns = f.ns(1, "never");
    assert_eq!(f.store.get(&ns, "x").await.unwrap(), None);
    assert_eq!(f.store.count_all(&ns).await.unwrap(), 0);
    assert!(f.store.list_collections(&f.db(1)).await.unwrap().is_empty());
}

async fn duplicate_id_inserts_nothing(f: &Fixture) {
    let ns = f.ns(1, "dups");
    f.store.create_collection(&ns).await.unwrap();
    fill(f, &ns, vec![doc(json!({"_id": "a", "v": 1}))])
        .await
        .unwrap();
    let batch = vec![
        doc(json!({"_id": "b"})),
        doc(json!({"_id": "a", "v": 2})),
        doc(json!({"_id": "c"})),
    ];
    match fill(f, &ns, batch).await {
        Err(StoreError::DuplicateId(id)) => assert_eq!(id, "a"),
        other => panic!("expected DuplicateId, got {other:?}"),
    }
    assert_eq!(f.store.get(&ns, "b").await.unwrap(), None);
    assert_eq!(f.store.get(&ns, "c").await.unwrap(), None);
    assert_eq!(
        f.store.get(&ns, "a").await.unwrap(),
        Some(doc(json!({"_id": "a", "v": 1})))
    );
    // A duplicate inside one batch.
    let batch = vec![doc(json!({"_id": "x"})), doc(json!({"_id": "x"}))];
    assert!(matches!(
        fill(f, &ns, batch).await,
        Err(StoreError::DuplicateId(id)) if id == "x"
    ));
    assert_eq!(f.store.get(&ns, "x").await.unwrap(), None);
    assert_eq!(f.store.count_all(&ns).await.unwrap(), 1);
}

async fn document_without_string_id_is_refused(f: &Fixture) {
    let ns = f.ns(1, "noid");
    f.store.create_collection(&ns).await.unwrap();
    for bad in [json!({"v": 1}), json!({"_id": 5})] {
        let r = fill(f, &ns, vec![doc(bad)]).await;
        assert!(matches!(r, Err(StoreError::Backend(_))), "{r:?}");
    }
    assert_eq!(f.store.count_all(&ns).await.unwrap(), 0);
}

async fn set_aside_keeps_documents_under_a_new_name(f: &Fixture) {
    let ns = f.ns(1, "orphan");
    fill(f, &ns, numbered(0..3)).await.unwrap();
    f.store.set_aside(&ns, "quarantine_orphan_1").await.unwrap();
    assert_eq!(
        f.store.list_collections(&f.db(1)).await.unwrap(),
        vec!["quarantine_orphan_1".to_owned()]
    );
    // The name is free: a create starts empty.
    f.store.create_collection(&ns).await.unwrap();
    assert_eq!(f.store.count_all(&ns).await.unwrap(), 0);
    // Setting aside what is not there is a no-op.
    f.store
        .set_aside(&f.ns(1, "nothing"), "quarantine_nothing_1")
        .await
        .unwrap();
}

async fn drop_removes_and_is_idempotent(f: &Fixture) {
    let ns = f.ns(1, "gone");
    let keep = f.ns(1, "kept");
    fill(f, &ns, numbered(0..3)).await.unwrap();
    fill(f, &keep, numbered(0..2)).await.unwrap();
    f.store.drop_collection(&ns).await.unwrap();
    f.store.drop_collection(&ns).await.unwrap();
    assert_eq!(f.store.count_all(&ns).await.unwrap(), 0);
    assert_eq!(f.store.get(&ns, "d00000").await.unwrap(), None);
    assert_eq!(
        f.store.list_collections(&f.db(1)).await.unwrap(),
        vec!["org_kept".to_owned()]
    );
    assert_eq!(f.store.count_all(&keep).await.unwrap(), 2);
    // Writes after the drop never bring the collection back (embedded store; on MongoDB a
    // fence keeps writers away before a drop).
    if f.mongo_uri.is_none() {
        let r = f.store.insert_many(&ns, numbered(5..6)).await;
        assert!(matches!(r, Err(StoreError::CollectionMissing)), "{r:?}");
        assert_eq!(
            f.store
                .update_by_id(&ns, "d00000", &inc_update(), 1 << 20)
                .await
                .unwrap(),
            None
        );
        assert!(!f.store.delete_by_id(&ns, "d00000").await.unwrap());
        assert_eq!(
            f.store.list_collections(&f.db(1)).await.unwrap(),
            vec!["org_kept".to_owned()]
        );
    }
    // Recreating starts empty.
    f.store.create_collection(&ns).await.unwrap();
    assert_eq!(f.store.count_all(&ns).await.unwrap(), 0);
}

async fn rename_moves_documents_and_is_idempotent(f: &Fixture) {
    let (from, to) = (f.ns(1, "old_name"), f.ns(1, "new_name"));
    let docs = numbered(0..3);
    fill(f, &from, docs.clone()).await.unwrap();
    assert_eq!(f.store.rename_collection(&from, &to).await.unwrap(), 3);
    let listed = f.store.list_collections(&f.db(1)).await.unwrap();
    assert_eq!(listed, vec!["org_new_name".to_owned()]);
    for d in &docs {
        let id = d["_id"].as_str().unwrap();
        assert_eq!(f.store.get(&to, id).await.unwrap().as_ref(), Some(d));
        assert_eq!(f.store.get(&from, id).await.unwrap(), None);
    }
    // Running it again (a resumed mover) changes nothing.
    assert_eq!(f.store.rename_collection(&from, &to).await.unwrap(), 3);
    assert_eq!(f.store.count_all(&to).await.unwrap(), 3);
    assert_eq!(f.store.count_all(&from).await.unwrap(), 0);
}

fn inc_update() -> org_gateway::store::query::Update {
    org_gateway::store::query::Update::parse(
        &json!({"$inc": {"i": 1}}),
        &org_gateway::store::query::QueryLimits::default(),
    )
    .expect("update")
}

async fn rename_replaces_empty_leftover_target(f: &Fixture) {
    let (from, to) = (f.ns(1, "src"), f.ns(1, "dst"));
    fill(f, &from, numbered(0..4)).await.unwrap();
    f.store.create_collection(&to).await.unwrap();
    assert_eq!(f.store.rename_collection(&from, &to).await.unwrap(), 4);
    assert_eq!(
        f.store.list_collections(&f.db(1)).await.unwrap(),
        vec!["org_dst".to_owned()]
    );
}

async fn rename_resumes_interrupted_copy(f: &Fixture) {
    // An earlier attempt copied part of the documents and stopped.
    let (from, to) = (f.ns(1, "half_src"), f.ns(1, "half_dst"));
    let docs = numbered(0..10);
    fill(f, &from, docs.clone()).await.unwrap();
    fill(f, &to, docs[..4].to_vec()).await.unwrap();
    assert_eq!(f.store.rename_collection(&from, &to).await.unwrap(), 10);
    assert_eq!(
        f.store.list_collections(&f.db(1)).await.unwrap(),
        vec!["org_half_dst".to_owned()]
    );
    for d in &docs {
        let id = d["_id"].as_str().unwrap();
        assert_eq!(f.store.get(&to, id).await.unwrap().as_ref(), Some(d));
    }
}

async fn rename_of_missing_source_yields_empty_target(f: &Fixture) {
    let (from, to) = (f.ns(1, "nothing"), f.ns(1, "something"));
    assert_eq!(f.store.rename_collection(&from, &to).await.unwrap(), 0);
    assert_eq!(
        f.store.list_collections(&f.db(1)).await.unwrap(),
        vec!["org_something".to_owned()]
    );
}

async fn rename_moves_many_documents(f: &Fixture) {
    // More than one copy batch.
    let (from, to) = (f.ns(2, "bulk_src"), f.ns(2, "bulk_dst"));
    let docs = numbered(0..1_234);
    for chunk in docs.chunks(400) {
        fill(f, &from, chunk.to_vec()).await.unwrap();
    }
    assert_eq!(f.store.rename_collection(&from, &to).await.unwrap(), 1_234);
    assert_eq!(f.store.count_all(&from).await.unwrap(), 0);
    assert_eq!(
        f.store.get(&to, "d01233").await.unwrap().as_ref(),
        Some(&docs[1_233])
    );
}

// ---- MongoDB-only behaviour that needs no server ----------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mongo_down_shard_opens_at_once_and_answers_unavailable() {
    let port = mongo_env::closed_port();
    let uri = format!("mongodb://gateway:hunter2-s3cret@127.0.0.1:{port}/?authSource=admin");
    let mut config = mongo_shard("down-shard", &uri);
    config.server_selection_timeout_ms = 300;
    config.min_pool_size = 0;
    let started = Instant::now();
    let store = MongoStore::open(&config)
        .await
        .expect("opening never waits");
    assert!(started.elapsed() < Duration::from_secs(2));
    // Metrics come from the wrapper every shard gets in the gateway.
    let store =
        org_gateway::store::observed::Observed::new("down-shard", std::sync::Arc::new(store));
    let errors_before = org_gateway::telemetry::metrics::SHARD_OP_ERRORS
        .with_label_values(&["down-shard", "ping"])
        .get();
    let ns = Namespace {
        database: DatabaseName::numbered("db", 1),
        collection: coll("x"),
    };
    let results = [
        store.ping().await.map(|_| ()),
        store.get(&ns, "a").await.map(|_| ()),
        store.insert_many(&ns, vec![doc(json!({"_id": "a"}))]).await,
    ];
    for r in results {
        match r {
            Err(StoreError::Unavailable(m)) => {
                assert!(!m.contains("hunter2"), "credentials leaked: {m}");
            }
            other => panic!("expected Unavailable, got {other:?}"),
        }
    }
    let errors_after = org_gateway::telemetry::metrics::SHARD_OP_ERRORS
        .with_label_values(&["down-shard", "ping"])
        .get();
    assert_eq!(errors_after, errors_before + 1);
    assert!(
        org_gateway::telemetry::metrics::SHARD_OP_SECONDS
            .with_label_values(&["down-shard", "insert_many"])
            .get_sample_count()
            >= 1
    );
}

#[tokio::test]
async fn mongo_invalid_settings_are_refused() {
    let mut config = mongo_shard("bad", "mongodb://127.0.0.1:1");
    config.read_preference = "fastest".into();
    assert!(MongoStore::open(&config).await.is_err());
    let mut config = mongo_shard("bad", "mongodb://127.0.0.1:1");
    config.write_concern = "some".into();
    assert!(MongoStore::open(&config).await.is_err());
    let config = mongo_shard("bad", "mongodb://u:pw-secret@[bad");
    let err = MongoStore::open(&config).await.err().expect("invalid uri");
    assert!(!err.contains("pw-secret"), "{err}");
}

fn update(v: serde_json::Value) -> Update {
    Update::parse(&v, &QueryLimits::default()).expect("valid update")
}

/// Concurrent read-modify-write updates of one document: none is lost (on MongoDB each is a
/// compare-and-set retried until it applies to the current document).
async fn concurrent_increments_all_land(f: &Fixture) {
    const TASKS: usize = 8;
    const EACH: usize = 25;
    let ns = f.ns(1, "counter");
    fill(
        f,
        &ns,
        vec![doc(
            json!({"_id": "c", "n": 0, "f": 0.5, "big": i64::MAX - 1}),
        )],
    )
    .await
    .unwrap();
    let mut tasks = Vec::new();
    for t in 0..TASKS {
        let (store, ns) = (f.store.clone(), ns.clone());
        tasks.push(tokio::spawn(async move {
            let inc = update(json!({"$inc": {"n": 1, format!("per.t{t}"): 1}}));
            for _ in 0..EACH {
                let updated = store.update_by_id(&ns, "c", &inc, 1 << 20).await;
                assert!(matches!(updated, Ok(Some(_))), "{updated:?}");
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let got = f.store.get(&ns, "c").await.unwrap().unwrap();
    assert_eq!(got["n"], json!(TASKS * EACH), "{got:?}");
    for t in 0..TASKS {
        assert_eq!(got["per"][format!("t{t}")], json!(EACH), "{got:?}");
    }
    // Untouched fields keep their exact values and types.
    assert_eq!(
        (&got["f"], &got["big"]),
        (&json!(0.5), &json!(i64::MAX - 1))
    );
}

/// An update whose result must be refused is never stored, on any backend.
async fn refused_updates_change_nothing(f: &Fixture) {
    let ns = f.ns(1, "refused");
    // Strings that look like field paths or operators, doubles with integral values and
    // 64-bit integers: the compare-and-set must match such documents exactly.
    let original = doc(json!({
        "_id": "r",
        "s": "text",
        "path": "$s",
        "vars": "$$ROOT",
        "n": 1,
        "whole": 2.0,
        "big": 1_i64 << 40,
        "list": [1, "$x", {"k": 2.0}],
        "nested": {"a": {"b": "$literal"}},
    }));
    fill(f, &ns, vec![original.clone()]).await.unwrap();
    let bad_inc = f
        .store
        .update_by_id(&ns, "r", &update(json!({"$inc": {"s": 1}})), 1 << 20)
        .await;
    match bad_inc {
        Err(StoreError::InvalidUpdate(e)) => assert_eq!(e.code, "invalid_update"),
        other => panic!("expected InvalidUpdate, got {other:?}"),
    }
    assert_eq!(
        f.store.get(&ns, "r").await.unwrap().as_ref(),
        Some(&original)
    );
    let too_big = update(json!({"$set": {"blob": "x".repeat(2_000)}}));
    match f.store.update_by_id(&ns, "r", &too_big, 1_000).await {
        Err(StoreError::InvalidUpdate(e)) => assert_eq!(e.code, "document_too_large"),
        other => panic!("expected InvalidUpdate, got {other:?}"),
    }
    assert_eq!(
        f.store.get(&ns, "r").await.unwrap().as_ref(),
        Some(&original)
    );
    // A valid update of the same document applies, and keeps everything else as it was.
    let updated = f
        .store
        .update_by_id(&ns, "r", &update(json!({"$inc": {"n": 1}})), 1 << 20)
        .await
        .unwrap()
        .unwrap();
    let mut expected = original.clone();
    expected.insert("n".into(), json!(2));
    assert_eq!(updated, expected);
    assert_eq!(f.store.get(&ns, "r").await.unwrap(), Some(expected));
}

/// Updates racing a delete of their document end in `None` (404), never in an error, and
/// never bring the document back.
async fn concurrent_delete_makes_updates_find_nothing(f: &Fixture) {
    let ns = f.ns(1, "deleted");
    for round in 0..5 {
        fill(f, &ns, vec![doc(json!({"_id": "d", "n": 0}))])
            .await
            .unwrap();
        let mut tasks = Vec::new();
        for _ in 0..4 {
            let (store, ns) = (f.store.clone(), ns.clone());
            tasks.push(tokio::spawn(async move {
                let inc = update(json!({"$inc": {"n": 1}}));
                let mut outcomes = Vec::new();
                for _ in 0..20 {
                    let r = store.update_by_id(&ns, "d", &inc, 1 << 20).await;
                    let found = r
                        .unwrap_or_else(|e| panic!("update failed: {e:?}"))
                        .is_some();
                    outcomes.push(found);
                }
                outcomes
            }));
        }
        tokio::time::sleep(Duration::from_millis(5 * round)).await;
        assert!(f.store.delete_by_id(&ns, "d").await.unwrap());
        for t in tasks {
            let outcomes = t.await.unwrap();
            // Once a task has seen the document gone, it stays gone.
            if let Some(gone) = outcomes.iter().position(|found| !found) {
                assert!(outcomes[gone..].iter().all(|found| !found), "{outcomes:?}");
            }
        }
        assert_eq!(f.store.get(&ns, "d").await.unwrap(), None, "round {round}");
    }
}

fn ids(docs: &[Document]) -> Vec<String> {
    docs.iter()
        .map(|d| d["_id"].as_str().unwrap().to_owned())
        .collect()
}

async fn scan_after_pages_in_id_order(f: &Fixture) {
    let ns = f.ns(1, "scan");
    assert!(f.store.scan_after(&ns, None, 10).await.unwrap().is_empty());
    // Inserted out of order, with ids whose byte order differs from a case-insensitive or
    // numeric one, and a multi-byte character (sorts after every ASCII id).
    let mut docs = numbered(0..25);
    docs.reverse();
    for id in ["B", "a", "10", "9", "\u{e9}t\u{e9}"] {
        docs.push(doc(json!({"_id": id})));
    }
    fill(f, &ns, docs.clone()).await.unwrap();
    let mut expected = ids(&docs);
    expected.sort();
    let mut seen = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page = f.store.scan_after(&ns, after.as_deref(), 7).await.unwrap();
        assert!(page.len() <= 7);
        if page.is_empty() {
            break;
        }
        seen.extend(ids(&page));
        after = seen.last().cloned();
    }
    assert_eq!(seen, expected);
    // Pages hold whole documents, and `after` need not be an existing id.
    let page = f.store.scan_after(&ns, Some("d00003x"), 2).await.unwrap();
    assert_eq!(page, numbered(4..6));
    assert!(f.store.scan_after(&ns, None, 0).await.unwrap().is_empty());
    let last = expected.last().unwrap();
    assert!(f
        .store
        .scan_after(&ns, Some(last), 5)
        .await
        .unwrap()
        .is_empty());
}

async fn upsert_many_inserts_replaces_and_is_idempotent(f: &Fixture) {
    let ns = f.ns(1, "upsert");
    fill(f, &ns, numbered(0..10)).await.unwrap();
    let mut batch = numbered(5..15);
    for d in &mut batch {
        d.insert("replaced".into(), json!(true));
    }
    f.store.upsert_many(&ns, batch.clone()).await.unwrap();
    assert_eq!(f.store.count_all(&ns).await.unwrap(), 15);
    let all = f.store.scan_after(&ns, None, 100).await.unwrap();
    let mut expected = numbered(0..5);
    expected.extend(batch.clone());
    assert_eq!(all, expected);
    // Replaying the batch changes nothing, not even the byte count.
    let bytes = f.store.collection_bytes(&ns).await.unwrap();
    f.store.upsert_many(&ns, batch.clone()).await.unwrap();
    assert_eq!(f.store.scan_after(&ns, None, 100).await.unwrap(), expected);
    assert_eq!(f.store.collection_bytes(&ns).await.unwrap(), bytes);
    // A replacement drops fields the new document lacks and counts its size.
    let bigger = doc(json!({"_id": "d00007", "pad": "x".repeat(2_000)}));
    f.store
        .upsert_many(&ns, vec![bigger.clone()])
        .await
        .unwrap();
    assert_eq!(f.store.get(&ns, "d00007").await.unwrap(), Some(bigger));
    assert!(f.store.collection_bytes(&ns).await.unwrap() > bytes + 1_500);
    f.store.upsert_many(&ns, Vec::new()).await.unwrap();
    assert_eq!(f.store.count_all(&ns).await.unwrap(), 15);
    assert!(f
        .store
        .upsert_many(&ns, vec![doc(json!({"v": 1}))])
        .await
        .is_err());
}

async fn upsert_many_never_creates_the_collection(f: &Fixture) {
    let ns = f.ns(1, "absent");
    let result = f.store.upsert_many(&ns, numbered(0..2)).await;
    if f.mongo_uri.is_none() {
        // The embedded store refuses, like every write; MongoDB relies on fences instead.
        assert!(matches!(result, Err(StoreError::CollectionMissing)));
        assert!(f.store.list_collections(&f.db(1)).await.unwrap().is_empty());
    } else {
        result.unwrap();
    }
}

async fn delete_many_ids_removes_those_there(f: &Fixture) {
    let ns = f.ns(1, "del");
    assert_eq!(
        f.store.delete_many_ids(&ns, &["x".into()]).await.unwrap(),
        0
    );
    fill(f, &ns, numbered(0..10)).await.unwrap();
    let gone: Vec<String> = ["d00001", "d00003", "d00003", "nope"]
        .map(String::from)
        .to_vec();
    assert_eq!(f.store.delete_many_ids(&ns, &gone).await.unwrap(), 2);
    assert_eq!(f.store.delete_many_ids(&ns, &gone).await.unwrap(), 0);
    assert_eq!(f.store.delete_many_ids(&ns, &[]).await.unwrap(), 0);
    assert_eq!(f.store.count_all(&ns).await.unwrap(), 8);
    assert_eq!(f.store.get(&ns, "d00001").await.unwrap(), None);
    let all: Vec<String> = numbered(0..10)
        .iter()
        .map(|d| d["_id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(f.store.delete_many_ids(&ns, &all).await.unwrap(), 8);
    assert_eq!(f.store.count_all(&ns).await.unwrap(), 0);
    if f.mongo_uri.is_none() {
        assert_eq!(f.store.collection_bytes(&ns).await.unwrap(), 0);
    }
}

fn index(name: &str, keys: serde_json::Value, unique: bool) -> IndexSpec {
    IndexSpec {
        name: IndexName::parse(name).unwrap(),
        keys: IndexKeys::parse(&keys).unwrap(),
        unique,
    }
}

/// Creates an index and waits until it is ready (a build may outlast the call).
async fn ready_index(f: &Fixture, ns: &Namespace, spec: &IndexSpec) {
    let info = f.store.create_index(ns, spec, 16).await.unwrap();
    assert_eq!(info.name, spec.name.as_str());
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let listed = f.store.list_indexes(ns).await.unwrap();
        let it = listed
            .iter()
            .find(|i| i.name == spec.name.as_str())
            .unwrap();
        if it.state == IndexState::Ready {
            return;
        }
        assert!(Instant::now() < deadline, "index build did not finish");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn indexes_are_declared_listed_and_dropped(f: &Fixture) {
    let ns = f.ns(1, "idx");
    assert!(f.store.list_indexes(&ns).await.unwrap().is_empty());
    let sku = index("sku_1", json!({"sku": 1}), false);
    assert!(matches!(
        f.store.create_index(&ns, &sku, 16).await,
        Err(StoreError::CollectionMissing)
    ));
    fill(f, &ns, numbered(0..20)).await.unwrap();
    ready_index(f, &ns, &sku).await;
    let compound = index("by_i", json!({"i": -1, "half": 1}), false);
    ready_index(f, &ns, &compound).await;
    let listed = f.store.list_indexes(&ns).await.unwrap();
    let names: Vec<&str> = listed.iter().map(|i| i.name.as_str()).collect();
    assert_eq!(names, ["_id_", "by_i", "sku_1"]);
    assert_eq!(listed[0].keys, json!({"_id": 1}));
    assert!(listed[0].unique);
    assert_eq!(listed[1].keys.to_string(), r#"{"i":-1,"half":1}"#);
    assert!(!listed[1].unique);
    // The same declaration again changes nothing; a different one under the name is refused,
    // and so are the same keys under another name.
    f.store.create_index(&ns, &sku, 16).await.unwrap();
    assert!(matches!(
        f.store
            .create_index(&ns, &index("sku_1", json!({"sku": -1}), false), 16)
            .await,
        Err(StoreError::IndexConflict(_))
    ));
    assert!(matches!(
        f.store
            .create_index(&ns, &index("other", json!({"sku": 1}), false), 16)
            .await,
        Err(StoreError::IndexConflict(_))
    ));
    assert!(matches!(
        f.store
            .create_index(&ns, &index("third", json!({"x": 1}), false), 2)
            .await,
        Err(StoreError::TooManyIndexes(2))
    ));
    f.store
        .drop_index(&ns, &IndexName::parse("sku_1").unwrap())
        .await
        .unwrap();
    assert!(matches!(
        f.store
            .drop_index(&ns, &IndexName::parse("sku_1").unwrap())
            .await,
        Err(StoreError::IndexNotFound)
    ));
    let names: Vec<String> = f
        .store
        .list_indexes(&ns)
        .await
        .unwrap()
        .into_iter()
        .map(|i| i.name)
        .collect();
    assert_eq!(names, ["_id_", "by_i"]);
    // Dropping the collection drops its indexes.
    f.store.drop_collection(&ns).await.unwrap();
    assert!(f.store.list_indexes(&ns).await.unwrap().is_empty());
}

fn duplicate_in(e: StoreError, name: &str) {
    match e {
        StoreError::DuplicateKey { index, .. } => assert_eq!(index, name),
        other => panic!("expected a duplicate key in {name}, got {other:?}"),
    }
}

async fn unique_index_refuses_duplicates_on_every_write(f: &Fixture) {
    let ns = f.ns(1, "uniq");
    fill(
        f,
        &ns,
        vec![
            doc(json!({"_id": "a", "sku": "S-1", "n": 1})),
            doc(json!({"_id": "b", "sku": "S-2", "n": 2})),
        ],
    )
    .await
    .unwrap();
    ready_index(f, &ns, &index("sku_u", json!({"sku": 1}), true)).await;
    let e = f
        .store
        .insert_many(&ns, vec![doc(json!({"_id": "c", "sku": "S-1"}))])
        .await
        .unwrap_err();
    duplicate_in(e, "sku_u");
    // A batch with one duplicate inserts nothing, wherever the duplicate is.
    let e = f
        .store
        .insert_many(
            &ns,
            vec![
                doc(json!({"_id": "d", "sku": "S-4"})),
                doc(json!({"_id": "e", "sku": "S-5"})),
                doc(json!({"_id": "f", "sku": "S-2"})),
            ],
        )
        .await
        .unwrap_err();
    duplicate_in(e, "sku_u");
    assert_eq!(f.store.count_all(&ns).await.unwrap(), 2);
    // An update to a taken key changes nothing.
    let e = f
        .store
        .update_by_id(&ns, "b", &update(json!({"$set": {"sku": "S-1"}})), 1 << 20)
        .await
        .unwrap_err();
    duplicate_in(e, "sku_u");
    assert_eq!(f.store.get(&ns, "b").await.unwrap().unwrap()["sku"], "S-2");
    // An update keeping its own key is fine; a freed key can be taken.
    f.store
        .update_by_id(&ns, "b", &update(json!({"$inc": {"n": 1}})), 1 << 20)
        .await
        .unwrap();
    assert!(f.store.delete_by_id(&ns, "a").await.unwrap());
    f.store
        .insert_many(&ns, vec![doc(json!({"_id": "c", "sku": "S-1"}))])
        .await
        .unwrap();
    // A missing field is a null key: only one document may lack it.
    f.store
        .insert_many(&ns, vec![doc(json!({"_id": "g"}))])
        .await
        .unwrap();
    let e = f
        .store
        .insert_many(&ns, vec![doc(json!({"_id": "h", "sku": null}))])
        .await
        .unwrap_err();
    duplicate_in(e, "sku_u");
    // Moves' writes keep the index too.
    f.store
        .upsert_many(&ns, vec![doc(json!({"_id": "g", "sku": "S-9"}))])
        .await
        .unwrap();
    f.store
        .insert_many(&ns, vec![doc(json!({"_id": "h", "sku": null}))])
        .await
        .unwrap();
    assert_eq!(
        f.store.delete_many_ids(&ns, &["h".into()]).await.unwrap(),
        1
    );
    f.store
        .insert_many(&ns, vec![doc(json!({"_id": "i"}))])
        .await
        .unwrap();
}

async fn unique_index_build_over_duplicates_fails(f: &Fixture) {
    let ns = f.ns(1, "uniqbuild");
    let mut docs = numbered(0..50);
    docs.push(doc(json!({"_id": "dup", "i": 7})));
    fill(f, &ns, docs).await.unwrap();
    let e = f
        .store
        .create_index(&ns, &index("i_u", json!({"i": 1}), true), 16)
        .await
        .unwrap_err();
    duplicate_in(e, "i_u");
    let names: Vec<String> = f
        .store
        .list_indexes(&ns)
        .await
        .unwrap()
        .into_iter()
        .map(|i| i.name)
        .collect();
    assert_eq!(names, ["_id_"]);
    // Nothing is enforced afterwards.
    f.store
        .insert_many(&ns, vec![doc(json!({"_id": "dup2", "i": 7}))])
        .await
        .unwrap();
}

async fn rename_keeps_indexes(f: &Fixture) {
    let (from, to) = (f.ns(1, "idxfrom"), f.ns(1, "idxto"));
    fill(f, &from, numbered(0..30)).await.unwrap();
    ready_index(f, &from, &index("i_u", json!({"i": 1}), true)).await;
    assert_eq!(f.store.rename_collection(&from, &to).await.unwrap(), 30);
    let names: Vec<String> = f
        .store
        .list_indexes(&to)
        .await
        .unwrap()
        .into_iter()
        .map(|i| i.name)
        .collect();
    assert_eq!(names, ["_id_", "i_u"]);
    assert!(f.store.list_indexes(&from).await.unwrap().is_empty());
    let e = f
        .store
        .insert_many(&to, vec![doc(json!({"_id": "x", "i": 3}))])
        .await
        .unwrap_err();
    duplicate_in(e, "i_u");
}

/// A batch that writes the same document twice (an upsert batch repeating an `_id`) leaves
/// index entries for its last version only, as if the writes were applied one by one.
async fn one_batch_changing_a_document_twice_leaves_only_its_last_entries(f: &Fixture) {
    let ns = f.ns(1, "idxtwice");
    fill(f, &ns, numbered(0..5)).await.unwrap();
    ready_index(f, &ns, &index("qty_1", json!({"qty": 1}), false)).await;
    f.store
        .upsert_many(
            &ns,
            vec![
                doc(json!({"_id": "twice", "qty": 1})),
                doc(json!({"_id": "d00001", "qty": 1})),
                doc(json!({"_id": "twice", "qty": 2})),
                doc(json!({"_id": "d00001", "qty": 3})),
                doc(json!({"_id": "d00001", "qty": 1})),
            ],
        )
        .await
        .unwrap();
    let by_qty = |qty: i64| FindQuery {
        filter: org_gateway::store::query::Filter::parse(
            &json!({ "qty": qty }),
            &QueryLimits::default(),
        )
        .unwrap(),
        sort: org_gateway::store::query::Sort::parse(&json!(null)).unwrap(),
        projection: org_gateway::store::query::Projection::parse(&json!(null)).unwrap(),
        skip: 0,
        limit: 1000,
        after: None,
    };
    for (qty, want) in [(1, vec!["d00001"]), (2, vec!["twice"]), (3, vec![])] {
        let (found, explain) = f.store.explain_find(&ns, &by_qty(qty)).await.unwrap();
        assert_eq!(explain.index.as_deref(), Some("qty_1"));
        let got: Vec<&str> = found
            .iter()
            .map(|d| d.document["_id"].as_str().unwrap())
            .collect();
        assert_eq!(got, want, "qty {qty}");
    }
}

async fn indexed_queries_answer_like_scans(f: &Fixture) {
    let ns = f.ns(1, "idxq");
    let docs: Vec<Document> = (0..300)
        .map(|i| {
            let mut d = doc(json!({
                "_id": format!("q{i:04}"),
                "sku": format!("S-{:03}", i % 100),
                "qty": (i * 7) % 50,
                "tags": [format!("t{}", i % 3), format!("t{}", i % 5)],
                "nested": {"v": i % 10},
            }));
            if i % 11 == 0 {
                d.remove("qty");
            }
            if i % 13 == 0 {
                d.insert("qty".into(), json!(format!("{}", i % 7)));
            }
            d
        })
        .collect();
    fill(f, &ns, docs).await.unwrap();
    let queries = [
        (json!({"sku": "S-042"}), json!(null)),
        (json!({"qty": {"$gte": 10, "$lt": 20}}), json!({"qty": 1})),
        (json!({"qty": {"$gt": 45}}), json!({"qty": -1})),
        (json!({"qty": null}), json!(null)),
        (
            json!({"qty": {"$in": [1, 2, "3", null]}}),
            json!({"sku": 1}),
        ),
        (json!({"tags": "t2"}), json!({"qty": 1})),
        (
            json!({"tags": {"$in": ["t1", "t4"]}, "qty": {"$lt": 5}}),
            json!(null),
        ),
        (
            json!({"nested.v": 3, "sku": {"$gte": "S-050"}}),
            json!({"qty": -1}),
        ),
        (json!({}), json!({"qty": 1})),
        (json!({}), json!({"qty": -1, "_id": -1})),
        (json!({"sku": {"$gt": "S-090"}}), json!({"sku": -1})),
    ];
    let run = |filter: &serde_json::Value, sort: &serde_json::Value, skip: u64| FindQuery {
        filter: org_gateway::store::query::Filter::parse(filter, &QueryLimits::default()).unwrap(),
        sort: org_gateway::store::query::Sort::parse(sort).unwrap(),
        projection: org_gateway::store::query::Projection::parse(&json!(null)).unwrap(),
        skip,
        limit: 1000,
        after: None,
    };
    let mut before = Vec::new();
    for (filter, sort) in &queries {
        for skip in [0, 7] {
            let q = run(filter, sort, skip);
            before.push((
                ids(&f
                    .store
                    .find(&ns, &q)
                    .await
                    .unwrap()
                    .into_iter()
                    .map(|x| x.document)
                    .collect::<Vec<_>>()),
                f.store.count(&ns, &q.filter).await.unwrap(),
            ));
        }
    }
    for (name, keys) in [
        ("sku_1", json!({"sku": 1})),
        ("qty_1", json!({"qty": 1})),
        ("tags_1", json!({"tags": 1})),
        ("nv_sku", json!({"nested.v": 1, "sku": -1})),
    ] {
        ready_index(f, &ns, &index(name, keys, false)).await;
    }
    let mut after = Vec::new();
    for (filter, sort) in &queries {
        for skip in [0, 7] {
            let q = run(filter, sort, skip);
            after.push((
                ids(&f
                    .store
                    .find(&ns, &q)
                    .await
                    .unwrap()
                    .into_iter()
                    .map(|x| x.document)
                    .collect::<Vec<_>>()),
                f.store.count(&ns, &q.filter).await.unwrap(),
            ));
        }
    }
    for (i, (b, a)) in before.iter().zip(&after).enumerate() {
        assert_eq!(b, a, "query {} differs with indexes", i / 2);
    }
    assert!(before.iter().any(|(ids, _)| !ids.is_empty()));
    let (_, explain) = f
        .store
        .explain_find(&ns, &run(&json!({"sku": "S-042"}), &json!(null), 0))
        .await
        .unwrap();
    if f.prefix == "db" {
        // The embedded store says what it did (a MongoDB server may not support explain).
        assert_eq!(explain.index.as_deref(), Some("sku_1"));
        assert_eq!(explain.docs_examined, 3);
    }
}

mod planner_equivalence {
    //! Random documents, indexes and queries: the embedded store answers every query the
    //! same through its indexes as by scanning (one collection with indexes, one without).
    use super::*;
    use org_gateway::store::query::{Filter, Projection, Sort};
    use proptest::prelude::*;
    use serde_json::Value;

    fn scalar() -> impl Strategy<Value = Value> {
        prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            (-2i64..3).prop_map(|i| json!(i)),
            (-2i64..3).prop_map(|i| json!(i as f64 + 0.5)),
            prop::sample::select(vec!["", "x", "y", "xy"]).prop_map(|s| json!(s)),
        ]
    }

    /// `a` may be an array (of scalars or of `{b: ...}` objects) or an object; `b` and `c`
    /// are scalars, so no compound index meets two arrays.
    fn document() -> impl Strategy<Value = Value> {
        let a = prop_oneof![
            scalar(),
            prop::collection::vec(scalar(), 0..4).prop_map(Value::Array),
            scalar().prop_map(|v| json!({ "b": v })),
            prop::collection::vec(scalar().prop_map(|v| json!({ "b": v })), 0..3)
                .prop_map(Value::Array),
        ];
        (
            prop::option::of(a),
            prop::option::of(scalar()),
            prop::option::of(scalar()),
        )
            .prop_map(|(a, b, c)| {
                let mut d = serde_json::Map::new();
                for (k, v) in [("a", a), ("b", b), ("c", c)] {
                    if let Some(v) = v {
                        d.insert(k.into(), v);
                    }
                }
                Value::Object(d)
            })
    }

    fn predicate() -> impl Strategy<Value = Value> {
        let path = prop::sample::select(vec!["a", "b", "c", "a.b"]);
        let op = prop::sample::select(vec![
            "eq", "$eq", "$gt", "$gte", "$lt", "$lte", "$in", "$ne", "$exists",
        ]);
        (path, op, scalar(), prop::collection::vec(scalar(), 0..3)).prop_map(
            |(path, op, v, list)| match op {
                "eq" => json!({ path: v }),
                "$in" => json!({ path: {"$in": list} }),
                "$exists" => json!({ path: {"$exists": v.as_bool().unwrap_or(true)} }),
                _ => json!({ path: { op: v } }),
            },
        )
    }

    fn filter() -> impl Strategy<Value = Value> {
        prop::collection::vec(predicate(), 0..4).prop_map(|preds| {
            let mut all = serde_json::Map::new();
            let mut and = Vec::new();
            for p in preds {
                let (k, v) = p.as_object().unwrap().iter().next().unwrap();
                if all.contains_key(k) {
                    and.push(p.clone());
                } else {
                    all.insert(k.clone(), v.clone());
                }
            }
            if !and.is_empty() {
                all.insert("$and".into(), Value::Array(and));
            }
            Value::Object(all)
        })
    }

    fn sort() -> impl Strategy<Value = Value> {
        prop::sample::select(vec![
            json!(null),
            json!({"a": 1}),
            json!({"b": -1}),
            json!({"b": 1}),
            json!({"c": 1, "b": 1}),
            json!({"c": -1, "b": -1}),
            json!({"b": 1, "_id": -1}),
            json!({"a.b": 1}),
            json!({"_id": -1}),
        ])
    }

    const INDEXES: &[(&str, &str)] = &[
        ("a_1", r#"{"a": 1}"#),
        ("b_-1", r#"{"b": -1}"#),
        ("c_b", r#"{"c": 1, "b": 1}"#),
        ("a_c", r#"{"a": 1, "c": -1}"#),
        ("ab_1", r#"{"a.b": 1}"#),
    ];

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]
        #[test]
        fn indexed_answers_equal_scans(
            docs in prop::collection::vec(document(), 0..40),
            changes in prop::collection::vec((0usize..45, document()), 0..12),
            deletes in prop::collection::vec(0usize..45, 0..6),
            bound in prop::sample::select(vec![0u64, 3, u64::MAX]),
            queries in prop::collection::vec((filter(), sort(), 0u64..3, 1u64..6), 1..8),
        ) {
            let rt = tokio::runtime::Runtime::new().unwrap();
            rt.block_on(async {
                // Index logs merged at every write, every few changes, or never.
                let f = Fixture::embedded_with_log_bound(bound);
                let (plain, indexed) = (f.ns(1, "plain"), f.ns(1, "indexed"));
                let docs: Vec<Document> = docs
                    .into_iter()
                    .enumerate()
                    .map(|(i, d)| {
                        let mut d = d.as_object().unwrap().clone();
                        d.insert("_id".into(), json!(format!("p{i:02}")));
                        d
                    })
                    .collect();
                // Half the indexes exist before the documents, half are built over them.
                for (i, (name, keys)) in INDEXES.iter().enumerate() {
                    if i % 2 == 0 {
                        f.store.create_collection(&indexed).await.ok();
                        let spec = index(name, serde_json::from_str(keys).unwrap(), false);
                        ready_index(&f, &indexed, &spec).await;
                    }
                }
                fill(&f, &plain, docs.clone()).await.unwrap();
                fill(&f, &indexed, docs).await.unwrap();
                for (i, (name, keys)) in INDEXES.iter().enumerate() {
                    if i % 2 == 1 {
                        let spec = index(name, serde_json::from_str(keys).unwrap(), false);
                        ready_index(&f, &indexed, &spec).await;
                    }
                }
                // Then documents replaced, added and deleted (entries removed and added).
                let changed: Vec<Document> = changes
                    .into_iter()
                    .map(|(i, d)| {
                        let mut d = d.as_object().unwrap().clone();
                        d.insert("_id".into(), json!(format!("p{i:02}")));
                        d
                    })
                    .collect();
                let gone: Vec<String> = deletes.iter().map(|i| format!("p{i:02}")).collect();
                for ns in [&plain, &indexed] {
                    f.store.upsert_many(ns, changed.clone()).await.unwrap();
                    f.store.delete_many_ids(ns, &gone).await.unwrap();
                }
                for (filter, sort, skip, limit) in &queries {
                    let q = FindQuery {
                        filter: Filter::parse(filter, &QueryLimits::default()).unwrap(),
                        sort: Sort::parse(sort).unwrap(),
                        projection: Projection::parse(&json!(null)).unwrap(),
                        skip: *skip,
                        limit: *limit,
                        after: None,
                    };
                    let want = f.store.find(&plain, &q).await.unwrap();
                    let (got, explain) = f.store.explain_find(&indexed, &q).await.unwrap();
                    let ids = |v: &[org_gateway::store::Found]| -> Vec<String> {
                        v.iter().map(|x| x.document["_id"].as_str().unwrap().to_owned()).collect()
                    };
                    assert_eq!(ids(&got), ids(&want), "filter {filter} sort {sort} skip {skip} limit {limit} via {:?}", explain.index);
                    assert_eq!(
                        f.store.count(&indexed, &q.filter).await.unwrap(),
                        f.store.count(&plain, &q.filter).await.unwrap(),
                        "count of {filter}"
                    );
                    // Keyset pages through the index give the same documents as one read.
                    let all = FindQuery { skip: 0, limit: 1000, ..q.clone() };
                    let whole = ids(&f.store.find(&plain, &all).await.unwrap());
                    let mut paged = Vec::new();
                    let mut after = None;
                    loop {
                        let page = FindQuery { skip: 0, limit: 2, after: after.clone(), ..q.clone() };
                        let found = f.store.find(&indexed, &page).await.unwrap();
                        let Some(last) = found.last() else { break };
                        after = Some(last.position.clone());
                        paged.extend(ids(&found));
                        assert!(paged.len() <= whole.len(), "paging runs on for {filter} {sort}");
                    }
                    assert_eq!(paged, whole, "pages of {filter} sort {sort}");
                }
                f.cleanup().await;
            });
        }
    }
}

/// A rename while an index is still being built: the build goes on under the new name and
/// the index ends up ready and complete there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_rename_during_an_index_build_finishes_the_build() {
    let f = Fixture::embedded();
    let (from, to) = (f.ns(1, "bigfrom"), f.ns(1, "bigto"));
    f.store.create_collection(&from).await.unwrap();
    for chunk in (0..40_000usize).collect::<Vec<_>>().chunks(5_000) {
        let docs = chunk
            .iter()
            .map(|i| doc(json!({"_id": format!("b{i:06}"), "k": i % 977})))
            .collect();
        f.store.insert_many(&from, docs).await.unwrap();
    }
    let spec = index("k_1", json!({"k": 1}), false);
    let info = f.store.create_index(&from, &spec, 16).await.unwrap();
    eprintln!("state when the rename starts: {:?}", info.state);
    assert_eq!(f.store.rename_collection(&from, &to).await.unwrap(), 40_000);
    ready_index(&f, &to, &spec).await;
    let q = FindQuery {
        filter: org_gateway::store::query::Filter::parse(&json!({"k": 5}), &QueryLimits::default())
            .unwrap(),
        sort: org_gateway::store::query::Sort::parse(&json!(null)).unwrap(),
        projection: org_gateway::store::query::Projection::parse(&json!(null)).unwrap(),
        skip: 0,
        limit: 1000,
        after: None,
    };
    let (found, explain) = f.store.explain_find(&to, &q).await.unwrap();
    assert_eq!(explain.index.as_deref(), Some("k_1"));
    // 40,000 / 977 rounds up to 41 for the first 920 values of k.
    assert_eq!(found.len(), 41);
    assert_eq!(f.store.count(&to, &q.filter).await.unwrap(), 41);
}

/// An index dropped and declared again while its first build runs: the first build stops
/// and the second index ends up complete.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_redeclaring_during_a_build_gives_a_complete_index() {
    let f = Fixture::embedded();
    let ns = f.ns(1, "redeclare");
    f.store.create_collection(&ns).await.unwrap();
    for chunk in (0..40_000usize).collect::<Vec<_>>().chunks(5_000) {
        let docs = chunk
            .iter()
            .map(|i| doc(json!({"_id": format!("r{i:06}"), "k": i % 977})))
            .collect();
        f.store.insert_many(&ns, docs).await.unwrap();
    }
    let spec = index("k_1", json!({"k": 1}), false);
    let first = f.store.create_index(&ns, &spec, 16).await.unwrap();
    eprintln!("first declaration: {:?}", first.state);
    f.store
        .drop_index(&ns, &IndexName::parse("k_1").unwrap())
        .await
        .unwrap();
    ready_index(&f, &ns, &spec).await;
    let filter = org_gateway::store::query::Filter::parse(
        &json!({"k": {"$gte": 0}}),
        &QueryLimits::default(),
    )
    .unwrap();
    // An exact plan counts index keys: every document has exactly one.
    assert_eq!(f.store.count(&ns, &filter).await.unwrap(), 40_000);
}

/// The answers of indexed queries that read an index forwards, backwards, by equality, by
/// range and by count (ids of each page, counts), to compare with the same queries on a
/// collection without indexes.
async fn index_answers(
    store: &dyn TenantStore,
    ns: &Namespace,
) -> Vec<(Vec<String>, u64, Option<String>)> {
    let queries = [
        (json!({"qty": 7}), json!(null)),
        (json!({"qty": {"$gte": 3, "$lt": 9}}), json!({"qty": 1})),
        (json!({}), json!({"qty": 1})),
        (json!({}), json!({"qty": -1})),
        (json!({}), json!({"qty": -1, "_id": -1})),
        (json!({"qty": {"$gt": 15}}), json!({"qty": -1})),
        (json!({"qty": {"$in": [0, 4, 19, null]}}), json!(null)),
        (json!({"sku": {"$gte": "S-0100"}}), json!({"sku": -1})),
        (json!({"sku": "S-0042"}), json!(null)),
        (json!({"cat": "c3", "qty": {"$lte": 10}}), json!({"qty": 1})),
    ];
    let mut out = Vec::new();
    for (filter, sort) in &queries {
        for (skip, limit) in [(0, 1000), (3, 5)] {
            let q = FindQuery {
                filter: org_gateway::store::query::Filter::parse(filter, &QueryLimits::default())
                    .unwrap(),
                sort: org_gateway::store::query::Sort::parse(sort).unwrap(),
                projection: org_gateway::store::query::Projection::parse(&json!(null)).unwrap(),
                skip,
                limit,
                after: None,
            };
            let (found, explain) = store.explain_find(ns, &q).await.unwrap();
            let found: Vec<Document> = found.into_iter().map(|x| x.document).collect();
            out.push((
                ids(&found),
                store.count(ns, &q.filter).await.unwrap(),
                explain.index,
            ));
        }
    }
    out
}

/// Applies one step of [`index_workload`] to a collection.
/// `unique`: the collection has the unique index on `sku` (else the refused batch is
/// skipped).
async fn index_step(
    store: &dyn TenantStore,
    ns: &Namespace,
    step: usize,
    unique: bool,
) -> Result<(), StoreError> {
    let item = |i: usize, qty: usize| {
        doc(json!({
            "_id": format!("w{i:04}"),
            "sku": format!("S-{i:04}"),
            "qty": qty,
            "cat": format!("c{}", i % 5),
        }))
    };
    match step {
        // Inserts scattered over the `qty` index.
        0 => {
            store
                .insert_many(ns, (0..150).map(|i| item(i, (i * 7) % 20)).collect())
                .await
        }
        // Updates of the indexed field (entries removed and added), one to a missing field.
        1 => {
            for i in (0..150).step_by(4) {
                let u = update(json!({"$set": {"qty": (i * 3) % 20}}));
                assert!(store
                    .update_by_id(ns, &format!("w{i:04}"), &u, 1 << 20)
                    .await?
                    .is_some());
            }
            let u = update(json!({"$unset": {"qty": ""}}));
            store
                .update_by_id(ns, "w0001", &u, 1 << 20)
                .await
                .map(|_| ())
        }
        // Deletes, one by one and many at once.
        2 => {
            for i in (0..150).step_by(9) {
                assert!(store.delete_by_id(ns, &format!("w{i:04}")).await?);
            }
            let many: Vec<String> = (100..120).map(|i| format!("w{i:04}")).collect();
            store.delete_many_ids(ns, &many).await.map(|_| ())
        }
        // Replacements and re-inserts of deleted documents, some twice in one batch.
        3 => {
            let mut docs: Vec<Document> = (90..130).map(|i| item(i, (i * 11) % 20)).collect();
            docs.push(item(95, 19));
            docs.push(item(9, 4));
            store.upsert_many(ns, docs).await
        }
        // A duplicate of a unique key (when the collection has the unique index): the whole
        // batch is refused, its other entries with it.
        4 if !unique => Ok(()),
        4 => {
            let docs = vec![item(500, 1), item(501, 2), {
                let mut d = item(502, 3);
                d.insert("sku".into(), json!("S-0042"));
                d
            }];
            match store.insert_many(ns, docs).await {
                Err(StoreError::DuplicateKey { .. }) => Ok(()),
                Ok(()) => panic!("a duplicate unique key was accepted"),
                other => other,
            }
        }
        _ => unreachable!(),
    }
}

const INDEX_STEPS: usize = 5;

/// A collection changed while its indexes exist answers every query as the same collection
/// without indexes, after each kind of write: inserts, updates and deletes of indexed
/// values, replacements, a refused batch. On the embedded store these changes go through
/// the indexes' logs.
async fn indexes_follow_every_write(f: &Fixture) {
    let (plain, indexed) = (f.ns(1, "wplain"), f.ns(1, "windexed"));
    for ns in [&plain, &indexed] {
        f.store.create_collection(ns).await.unwrap();
    }
    ready_index(f, &indexed, &index("qty_1", json!({"qty": 1}), false)).await;
    ready_index(f, &indexed, &index("sku_1", json!({"sku": 1}), true)).await;
    ready_index(
        f,
        &indexed,
        &index("cat_qty", json!({"cat": 1, "qty": -1}), false),
    )
    .await;
    for step in 0..INDEX_STEPS {
        index_step(f.store.as_ref(), &plain, step, false)
            .await
            .unwrap();
        index_step(f.store.as_ref(), &indexed, step, true)
            .await
            .unwrap();
        let (want, got) = (
            index_answers(f.store.as_ref(), &plain).await,
            index_answers(f.store.as_ref(), &indexed).await,
        );
        for (i, (w, g)) in want.iter().zip(&got).enumerate() {
            assert_eq!(
                (&w.0, w.1),
                (&g.0, g.1),
                "step {step} query {i} via {:?}",
                g.2
            );
        }
        if f.prefix == "db" {
            assert!(
                got.iter().all(|g| g.2.is_some()),
                "every query planned: {got:?}"
            );
        }
    }
    let refused = f.store.get(&indexed, "w0500").await.unwrap();
    assert!(refused.is_none(), "a refused batch left a document");
}

/// The embedded store's index logs: with every bound (merged at each write, every few
/// writes, never), indexed answers equal scans after each step, and the stored bytes are
/// the same whatever the bound (entries count once, logged or merged). Then the file is
/// opened again with changes still in the logs (as after a crash: logs are written in the
/// documents' transactions) and answers the same; a rename carries the logs; dropping an
/// index with a pending log gives back exactly its entries' bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_index_logs_answer_like_scans_before_and_after_merges() {
    let mut bytes_by_bound = Vec::new();
    for bound in [0u64, 3, u64::MAX] {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("shard.redb");
        let store = EmbeddedStore::open(&path)
            .unwrap()
            .with_index_log_bound(bound);
        let f = Fixture {
            store: Arc::new(store),
            prefix: "db".into(),
            _dir: None,
            mongo_uri: None,
        };
        let (plain, indexed) = (f.ns(1, "lplain"), f.ns(1, "lindexed"));
        for ns in [&plain, &indexed] {
            f.store.create_collection(ns).await.unwrap();
        }
        // Entries before the index is ready go to the index itself (the build), later ones
        // through its log.
        index_step(f.store.as_ref(), &plain, 0, false)
            .await
            .unwrap();
        index_step(f.store.as_ref(), &indexed, 0, false)
            .await
            .unwrap();
        ready_index(&f, &indexed, &index("qty_1", json!({"qty": 1}), false)).await;
        ready_index(&f, &indexed, &index("sku_1", json!({"sku": 1}), true)).await;
        ready_index(
            &f,
            &indexed,
            &index("cat_qty", json!({"cat": 1, "qty": -1}), false),
        )
        .await;
        for step in 1..INDEX_STEPS {
            index_step(f.store.as_ref(), &plain, step, false)
                .await
                .unwrap();
            index_step(f.store.as_ref(), &indexed, step, true)
                .await
                .unwrap();
            let (want, got) = (
                index_answers(f.store.as_ref(), &plain).await,
                index_answers(f.store.as_ref(), &indexed).await,
            );
            for (i, (w, g)) in want.iter().zip(&got).enumerate() {
                assert_eq!(
                    (&w.0, w.1),
                    (&g.0, g.1),
                    "bound {bound} step {step} query {i}"
                );
                assert!(g.2.is_some(), "bound {bound} query {i} planned");
            }
        }
        let plain_bytes = f.store.collection_bytes(&plain).await.unwrap();
        let indexed_bytes = f.store.collection_bytes(&indexed).await.unwrap();
        assert!(indexed_bytes > plain_bytes);
        bytes_by_bound.push(indexed_bytes);
        let want = index_answers(f.store.as_ref(), &plain).await;
        drop(f);

        // Opened again: the logs are there, read as before. (A build's thread may hold the
        // file a moment longer.)
        let deadline = Instant::now() + Duration::from_secs(10);
        let store = loop {
            match EmbeddedStore::open(&path) {
                Ok(s) => break s,
                Err(e) if Instant::now() < deadline => {
                    eprintln!("reopen: {e}");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(e) => panic!("reopen: {e}"),
            }
        };
        let got = index_answers(&store, &indexed).await;
        for (i, (w, g)) in want.iter().zip(&got).enumerate() {
            assert_eq!(
                (&w.0, w.1),
                (&g.0, g.1),
                "reopened, bound {bound} query {i}"
            );
        }
        // A rename carries indexes and logs.
        let renamed = Namespace {
            database: indexed.database.clone(),
            collection: coll("lrenamed"),
        };
        store.rename_collection(&indexed, &renamed).await.unwrap();
        let got = index_answers(&store, &renamed).await;
        for (i, (w, g)) in want.iter().zip(&got).enumerate() {
            assert_eq!((&w.0, w.1), (&g.0, g.1), "renamed, bound {bound} query {i}");
            assert!(g.2.is_some());
        }
        // Writes after the reopen merge (bound 0) and still answer the same.
        let store = store.with_index_log_bound(0);
        let u = update(json!({"$set": {"qty": 12}}));
        for ns in [&plain, &renamed] {
            store.update_by_id(ns, "w0002", &u, 1 << 20).await.unwrap();
        }
        let (want, got) = (
            index_answers(&store, &plain).await,
            index_answers(&store, &renamed).await,
        );
        assert_eq!(
            want.iter().map(|w| (&w.0, w.1)).collect::<Vec<_>>(),
            got.iter().map(|g| (&g.0, g.1)).collect::<Vec<_>>(),
            "merged after the reopen, bound {bound}"
        );
        // Dropping every index gives back exactly their entries' bytes.
        for name in ["qty_1", "sku_1", "cat_qty"] {
            store
                .drop_index(&renamed, &IndexName::parse(name).unwrap())
                .await
                .unwrap();
        }
        assert_eq!(
            store.collection_bytes(&renamed).await.unwrap(),
            store.collection_bytes(&plain).await.unwrap(),
            "bound {bound}: index bytes left after the drops"
        );
    }
    assert!(
        bytes_by_bound.windows(2).all(|w| w[0] == w[1]),
        "stored bytes depend on the log bound: {bytes_by_bound:?}"
    );
}

/// A process killed while it writes through index logs (some writes merging them) leaves a
/// file whose index answers as its documents: every count by `qty` and the whole `qty` order
/// match a scan after the file is opened again. The test runs itself as the writer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_index_logs_survive_a_kill_mid_write() {
    const TEST: &str = "store::embedded_index_logs_survive_a_kill_mid_write";
    let ns = Namespace {
        database: DatabaseName::numbered("db", 1),
        collection: coll("crash"),
    };
    if let Ok(path) = std::env::var("INDEX_LOG_CRASH_WRITER") {
        let store = EmbeddedStore::open(std::path::Path::new(&path))
            .unwrap()
            .with_index_log_bound(3_000);
        for round in 0usize.. {
            let docs = (0..500)
                .map(|j| {
                    let i = (round * 500 + j * 7) % 4_000;
                    doc(json!({"_id": format!("k{i:04}"), "qty": (round * 7 + j * 13) % 20}))
                })
                .collect();
            store.upsert_many(&ns, docs).await.unwrap();
            let gone: Vec<String> = (0..50)
                .map(|j| format!("k{:04}", (round * 131 + j * 17) % 4_000))
                .collect();
            store.delete_many_ids(&ns, &gone).await.unwrap();
            eprintln!("round {round}");
        }
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("shard.redb");
    let open = || async {
        // A killed writer's file, or a build's thread holding it a moment longer.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match EmbeddedStore::open(&path) {
                Ok(s) => break s,
                Err(e) if Instant::now() < deadline => {
                    eprintln!("open: {e}");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(e) => panic!("open: {e}"),
            }
        }
    };
    {
        let store = open().await;
        store.create_collection(&ns).await.unwrap();
        let f = Fixture {
            store: Arc::new(store),
            prefix: "db".into(),
            _dir: None,
            mongo_uri: None,
        };
        ready_index(&f, &ns, &index("qty_1", json!({"qty": 1}), false)).await;
    }
    for (kill, after) in [(1, 900u64), (2, 1_700)] {
        let mut writer = std::process::Command::new(std::env::current_exe().unwrap())
            .args([TEST, "--exact", "--nocapture", "--test-threads=1"])
            .env("INDEX_LOG_CRASH_WRITER", &path)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        tokio::time::sleep(Duration::from_millis(after)).await;
        writer.kill().unwrap();
        let out = writer.wait_with_output().unwrap();
        let log = String::from_utf8_lossy(&out.stderr);
        let rounds = log.lines().filter(|l| l.starts_with("round ")).count();
        eprintln!("kill {kill}: the writer finished {rounds} rounds");
        assert!(!log.contains("panicked"), "writer failed: {log}");

        let store = open().await;
        let all = store.scan_after(&ns, None, 100_000).await.unwrap();
        let qty = |d: &Document| d["qty"].as_u64().unwrap();
        for q in 0..20u64 {
            let filter = org_gateway::store::query::Filter::parse(
                &json!({ "qty": q }),
                &QueryLimits::default(),
            )
            .unwrap();
            let want = all.iter().filter(|d| qty(d) == q).count() as u64;
            assert_eq!(
                store.count(&ns, &filter).await.unwrap(),
                want,
                "kill {kill}, qty {q}"
            );
        }
        let mut want: Vec<(u64, String)> = all
            .iter()
            .map(|d| (qty(d), d["_id"].as_str().unwrap().to_owned()))
            .collect();
        want.sort();
        let q = FindQuery {
            filter: org_gateway::store::query::Filter::parse(&json!({}), &QueryLimits::default())
                .unwrap(),
            sort: org_gateway::store::query::Sort::parse(&json!({"qty": 1})).unwrap(),
            projection: org_gateway::store::query::Projection::parse(&json!(null)).unwrap(),
            skip: 0,
            limit: 100_000,
            after: None,
        };
        let (found, explain) = store.explain_find(&ns, &q).await.unwrap();
        assert_eq!(explain.index.as_deref(), Some("qty_1"));
        assert_eq!(explain.keys_examined, all.len() as u64, "kill {kill}");
        let got: Vec<(u64, String)> = found
            .iter()
            .map(|x| {
                (
                    qty(&x.document),
                    x.document["_id"].as_str().unwrap().to_owned(),
                )
            })
            .collect();
        assert_eq!(got, want, "kill {kill}: index order");
    }
}
