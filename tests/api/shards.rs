//! Shards, placement and routing over real servers: the embedded store plus MongoDB
//! deployments (`MONGODB_URI`, `MONGODB_URI_2`; a private SecantusDB for the outage test).

use crate::gateway::{Options, TestGateway};
use crate::mongo_env;
use crate::mongo_env::unique_prefix;
use crate::secantus::OwnServer;
use reqwest::Method;
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

const OPS_TOKEN: &str = "ops-token-for-tests-0123456789";

fn ops_get(gw: &TestGateway, path: &str) -> Value {
    let r = gw
        .client
        .get(format!("{}{path}", gw.ops))
        .bearer_auth(OPS_TOKEN)
        .send()
        .unwrap();
    assert_eq!(r.status(), 200, "{path}");
    r.json().unwrap()
}

fn mongo_collections(uri: &str, db: &str) -> BTreeSet<String> {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let client = mongodb::Client::with_uri_str(uri).await.unwrap();
        client
            .database(db)
            .list_collection_names()
            .await
            .unwrap()
            .into_iter()
            .filter(|c| c.starts_with("org_"))
            .collect()
    })
}

#[test]
fn thirty_orgs_spread_over_three_shards_land_only_where_placed() {
    let (Some(uri_a), Some(uri_b)) = (mongo_env::uri(), mongo_env::uri_2()) else {
        return;
    };
    let (pa, pb) = (unique_prefix("pa"), unique_prefix("pb"));
    let gw = TestGateway::start_with(Options {
        config: format!(
            "[ops]\ntoken = \"{OPS_TOKEN}\"\n\
             [[shards]]\nid = \"mongo-a\"\nkind = \"mongodb\"\nuri = \"{uri_a}\"\ndatabase_prefix = \"{pa}\"\n\
             [[shards]]\nid = \"mongo-b\"\nkind = \"mongodb\"\nuri = \"{uri_b}\"\ndatabase_prefix = \"{pb}\"\n\
             [[shards]]\nid = \"local\"\nkind = \"embedded\"\npath = \"shards/local.redb\"\n"
        ),
        ..Default::default()
    });
    let mut placed: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for i in 0..30 {
        let name = format!("Spread {i}");
        let r = gw.create_org(&name, &format!("spread{i}@example.com"), "password123");
        assert_eq!(r.status(), 201);
        let created: Value = r.json().unwrap();
        let p = ops_get(&gw, &format!("/ops/placements/Spread%20{i}"));
        assert_eq!(p["placement"], created["placement"]);
        placed
            .entry(p["placement"]["shard"].as_str().unwrap().to_owned())
            .or_default()
            .insert(p["placement"]["collection"].as_str().unwrap().to_owned());
    }
    assert_eq!(placed.len(), 3, "every shard gets some: {placed:?}");
    // each org's collection exists only where its placement says
    let in_a = mongo_collections(&uri_a, &format!("{pa}_1"));
    let in_b = mongo_collections(&uri_b, &format!("{pb}_1"));
    assert_eq!(in_a, placed["mongo-a"]);
    assert_eq!(in_b, placed["mongo-b"]);
    for c in &placed["local"] {
        assert!(!in_a.contains(c) && !in_b.contains(c));
    }
    // tenants are routed to their shard: write through the API, read straight from MongoDB
    let token = gw
        .login("spread0@example.com", "password123")
        .json::<Value>()
        .unwrap()["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    let r = gw
        .req(Method::POST, "/data")
        .bearer_auth(&token)
        .json(&json!({"_id": "routed"}))
        .send()
        .unwrap();
    assert_eq!(r.status(), 201);
    // counts in /ops/shards are exact
    let shards = ops_get(&gw, "/ops/shards");
    let mut total = 0;
    for s in shards["shards"].as_array().unwrap() {
        let id = s["id"].as_str().unwrap();
        let dbs = s["databases"].as_array().unwrap();
        assert_eq!(dbs.len(), 1, "{s}");
        assert_eq!(
            dbs[0]["collections"].as_u64().unwrap() as usize,
            placed[id].len(),
            "{s}"
        );
        assert_eq!(dbs[0]["state"], "ok");
        assert_eq!(s["up"], true);
        total += placed[id].len();
    }
    assert_eq!(total, 30);
    // the driver's pool reports into the metrics
    let metrics = gw
        .client
        .get(format!("{}/metrics", gw.ops))
        .send()
        .unwrap()
        .text()
        .unwrap();
    let open = metrics
        .lines()
        .find(|l| {
            l.starts_with("org_gateway_shard_pool_connections{shard=\"mongo-a\",state=\"open\"}")
        })
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(0.0);
    assert!(open >= 1.0, "pool gauge missing or zero");
    for (uri, p) in [(&uri_a, &pa), (&uri_b, &pb)] {
        tokio::runtime::Runtime::new()
            .unwrap()
            .block_on(mongo_env::drop_db(uri, &format!("{p}_1")));
    }
}

#[test]
fn databases_fill_to_the_split_ratio_then_move_on() {
    let gw = TestGateway::start_with(Options {
        config: format!(
            "[ops]\ntoken = \"{OPS_TOKEN}\"\n\
             [[shards]]\nid = \"local\"\nkind = \"embedded\"\npath = \"shards/local.redb\"\nmax_collections_per_database = 10\n"
        ),
        ..Default::default()
    });
    for i in 0..25 {
        let r = gw.create_org(
            &format!("Fill {i}"),
            &format!("fill{i}@example.com"),
            "password123",
        );
        assert_eq!(r.status(), 201);
    }
    let summary = |gw: &TestGateway| -> Vec<(String, u64, String)> {
        let shards = ops_get(gw, "/ops/shards");
        shards["shards"][0]["databases"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| {
                (
                    d["name"].as_str().unwrap().to_owned(),
                    d["collections"].as_u64().unwrap(),
                    d["state"].as_str().unwrap().to_owned(),
                )
            })
            .collect()
    };
    assert_eq!(
        summary(&gw),
        vec![
            ("db_1".into(), 9, "split".into()),
            ("db_2".into(), 9, "split".into()),
            ("db_3".into(), 7, "ok".into()),
        ]
    );
    let shards = ops_get(&gw, "/ops/shards");
    assert_eq!(shards["shards"][0]["databases"][0]["ratio"], 0.9);
    // deleting one org of db_1 keeps its data (still 90%) until purged, then 80%: alert
    let p = ops_get(&gw, "/ops/placements/Fill%200");
    assert_eq!(p["placement"]["database"], "db_1");
    let token = gw
        .login("fill0@example.com", "password123")
        .json::<Value>()
        .unwrap()["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    let r = gw
        .req(Method::DELETE, "/org/delete?organization_name=Fill%200")
        .bearer_auth(&token)
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    let id = r.json::<Value>().unwrap()["organization_id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(summary(&gw)[0], ("db_1".into(), 9, "split".into()));
    let r = gw
        .client
        .delete(format!("{}/ops/deleted/{id}", gw.ops))
        .bearer_auth(OPS_TOKEN)
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(summary(&gw)[0], ("db_1".into(), 8, "alert".into()));
    // counts survive a restart (reconciled against the store)
    let mut gw = gw;
    gw.restart();
    assert_eq!(summary(&gw)[0], ("db_1".into(), 8, "alert".into()));
}

#[test]
fn catalog_on_mongodb_survives_a_restart() {
    let Some(uri) = mongo_env::uri() else {
        return;
    };
    let db = unique_prefix("cat");
    let prefix = unique_prefix("d");
    let mut gw = TestGateway::start_with(Options {
        config: format!(
            "[catalog]\nkind = \"mongodb\"\nuri = \"{uri}\"\ndatabase = \"{db}\"\n\
             [[shards]]\nid = \"mongo\"\nkind = \"mongodb\"\nuri = \"{uri}\"\ndatabase_prefix = \"{prefix}\"\n"
        ),
        ..Default::default()
    });
    let token = gw.org_with_token("Mongo Catalog", "mc@example.com");
    let r = gw
        .req(Method::POST, "/data")
        .bearer_auth(&token)
        .json(&json!([{"_id": "one"}, {"_id": "two"}]))
        .send()
        .unwrap();
    assert_eq!(r.status(), 201);
    let before: Value = gw
        .req(Method::GET, "/org/get?organization_name=Mongo%20Catalog")
        .bearer_auth(&token)
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(before["placement"]["shard"], "mongo");
    gw.restart();
    let after: Value = gw
        .req(Method::GET, "/org/get?organization_name=Mongo%20Catalog")
        .bearer_auth(&token)
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(before, after);
    assert_eq!(gw.login("mc@example.com", "password123").status(), 200);
    let n: Value = gw
        .req(Method::POST, "/data/count")
        .bearer_auth(&token)
        .json(&json!({}))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(n["count"], 2);
    assert_eq!(
        gw.create_org("mongo catalog", "other@example.com", "password123")
            .status(),
        409
    );
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(mongo_env::drop_db(&uri, &db));
    rt.block_on(mongo_env::drop_db(&uri, &format!("{prefix}_1")));
}

#[test]
fn a_down_shard_fails_only_its_own_tenants_and_recovers() {
    let Some(mut server) = OwnServer::start() else {
        return;
    };
    let gw = TestGateway::start_with(Options {
        config: format!(
            "[limits]\nrequests_per_minute = 100000\nrequests_per_hour = 100000\n\
             [[shards]]\nid = \"victim\"\nkind = \"mongodb\"\nuri = \"{}\"\nserver_selection_timeout_ms = 1500\n\
             [[shards]]\nid = \"local\"\nkind = \"embedded\"\npath = \"shards/local.redb\"\n",
            server.uri()
        ),
        ..Default::default()
    });
    let mut tokens: BTreeMap<String, String> = BTreeMap::new();
    for i in 0..40 {
        let r = gw.create_org(
            &format!("Bulkhead {i}"),
            &format!("bh{i}@example.com"),
            "password123",
        );
        assert_eq!(r.status(), 201);
        let shard = r.json::<Value>().unwrap()["placement"]["shard"]
            .as_str()
            .unwrap()
            .to_owned();
        if let std::collections::btree_map::Entry::Vacant(slot) = tokens.entry(shard) {
            let t = gw
                .login(&format!("bh{i}@example.com"), "password123")
                .json::<Value>()
                .unwrap()["access_token"]
                .as_str()
                .unwrap()
                .to_owned();
            slot.insert(t);
        }
        if tokens.len() == 2 {
            break;
        }
    }
    assert_eq!(tokens.len(), 2, "need a tenant on each shard");
    let count = |shard: &str| {
        let started = Instant::now();
        let r = gw
            .req(Method::POST, "/data/count")
            .bearer_auth(&tokens[shard])
            .json(&json!({}))
            .send()
            .unwrap();
        let retry = r.headers().get("retry-after").is_some();
        (r.status().as_u16(), started.elapsed(), retry)
    };
    assert_eq!(count("victim").0, 200);
    server.down();
    let (status, took, retry) = count("victim");
    assert_eq!(status, 503);
    assert!(retry, "503 carries Retry-After");
    assert!(took < Duration::from_secs(3), "took {took:?}");
    let (status, took, _) = count("local");
    assert_eq!(status, 200);
    assert!(
        took < Duration::from_millis(2500),
        "healthy tenants are not held up: {took:?}"
    );
    let ready: Value = gw
        .client
        .get(format!("{}/readyz", gw.ops))
        .send()
        .unwrap()
        .json()
        .unwrap();
    let victim = ready["shards"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["id"] == "victim")
        .unwrap()
        .clone();
    assert_eq!(victim["up"], false);
    server.up();
    let started = Instant::now();
    loop {
        if count("victim").0 == 200 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "shard did not recover"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

#[test]
fn collection_counts_are_reconciled_with_the_shard_at_startup() {
    let Some(uri) = mongo_env::uri() else {
        return;
    };
    let prefix = unique_prefix("rc");
    let mut gw = TestGateway::start_with(Options {
        config: format!(
            "[ops]\ntoken = \"{OPS_TOKEN}\"\n\
             [[shards]]\nid = \"mongo\"\nkind = \"mongodb\"\nuri = \"{uri}\"\ndatabase_prefix = \"{prefix}\"\n"
        ),
        ..Default::default()
    });
    for i in 0..3 {
        assert_eq!(
            gw.create_org(
                &format!("Recount {i}"),
                &format!("rc{i}@example.com"),
                "password123"
            )
            .status(),
            201
        );
    }
    let count = |gw: &TestGateway| {
        ops_get(gw, "/ops/shards")["shards"][0]["databases"][0]["collections"].as_u64()
    };
    assert_eq!(count(&gw), Some(3));
    // Drift: a tenant-style collection appears on the shard behind the gateway's back.
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let client = mongodb::Client::with_uri_str(&uri).await.unwrap();
        client
            .database(&format!("{prefix}_1"))
            .create_collection("org_stray_one")
            .await
            .unwrap();
    });
    gw.restart();
    assert_eq!(count(&gw), Some(4));
    assert!(
        gw.log_contains("collection count drifted"),
        "drift is logged"
    );
    rt.block_on(mongo_env::drop_db(&uri, &format!("{prefix}_1")));
}

/// Invariant 2 through a primary step-down of a MongoDB shard (SecantusDB answers
/// `replSetStepDown` as a single-node replica set does: a secondary for the window, writes
/// refused with "not primary", reads served). Every acknowledged insert and increment is
/// there afterwards, none is applied twice, a refused write is a 503 with Retry-After, reads
/// go on during the window, and writes succeed again after it.
#[test]
fn a_shard_step_down_loses_no_acknowledged_write_and_applies_none_twice() {
    let Some(server) = OwnServer::start() else {
        return;
    };
    // The driver's defaults (retryable writes on: a write refused as "not primary" is retried
    // once on the next primary), with two changes. SecantusDB ends the window without
    // announcing a new topology (a real primary that wins its election does), so the driver
    // learns it is writable at its next heartbeat: make that soon. And the patient connect
    // timeout of the test servers (see `mongo_env::patient`).
    let uri = format!(
        "{}/?heartbeatFrequencyMS=500&connectTimeoutMS={}",
        server.uri(),
        mongo_env::PATIENT_MS
    );
    let gw = TestGateway::start_with(Options {
        config: format!(
            "[limits]\nrequests_per_minute = 1000000\nrequests_per_hour = 10000000\n\
             [[shards]]\nid = \"stepping\"\nkind = \"mongodb\"\nuri = \"{uri}\"\n\
             server_selection_timeout_ms = 1000\n"
        ),
        ..Default::default()
    });
    let token = gw.org_with_token("Failover Co", "failover@example.com");
    let call = |method: Method, path: &str, body: Value| {
        let r = gw
            .req(method, path)
            .bearer_auth(&token)
            .json(&body)
            .send()
            .unwrap();
        let retry = r.headers().contains_key("retry-after");
        (r.status().as_u16(), retry)
    };
    assert_eq!(
        call(Method::POST, "/data", json!({"_id": "counter", "n": 0})).0,
        201
    );
    let (mut acked, mut maybe) = (BTreeSet::new(), BTreeSet::new());
    let (mut incs_acked, mut incs_maybe) = (0u64, 0u64);
    let mut refused_during = 0;
    let mut stepped = None;
    let read_during = std::thread::scope(|scope| {
        let mut reader = None;
        let started = Instant::now();
        let mut i = 0;
        while started.elapsed() < Duration::from_secs(9) {
            i += 1;
            if stepped.is_none() && started.elapsed() > Duration::from_secs(1) {
                step_down(&uri, 3);
                stepped = Some(Instant::now());
                // Reads of a document written before, all through the window, beside the
                // writes.
                let (gw, token) = (&gw, &token);
                let first = acked.iter().next().cloned().expect("a write before");
                reader = Some(scope.spawn(move || {
                    let mut served = false;
                    let window = Instant::now();
                    while window.elapsed() < Duration::from_millis(2_500) {
                        let r = gw
                            .req(Method::GET, &format!("/data/{first}"))
                            .bearer_auth(token)
                            .send()
                            .unwrap();
                        let s = r.status().as_u16();
                        assert!(s == 200 || s == 503, "read during the window: {s}");
                        served |= s == 200;
                        std::thread::sleep(Duration::from_millis(50));
                    }
                    served
                }));
            }
            let id = format!("d-{i:05}");
            let (s, retry) = call(Method::POST, "/data", json!({"_id": id, "i": i}));
            match s {
                201 => {
                    acked.insert(id);
                }
                503 => {
                    assert!(retry, "a refused write says when to retry");
                    refused_during += 1;
                    maybe.insert(id);
                }
                other => panic!("insert {id}: {other}\n{}", gw.log()),
            }
            let (s, retry) = call(Method::PATCH, "/data/counter", json!({"$inc": {"n": 1}}));
            match s {
                200 => incs_acked += 1,
                503 => {
                    assert!(retry, "a refused write says when to retry");
                    incs_maybe += 1;
                }
                other => panic!("increment: {other}\n{}", gw.log()),
            }
        }
        reader.map(|r| r.join().unwrap()).unwrap_or(false)
    });
    assert!(stepped.is_some());
    assert!(
        refused_during + incs_maybe > 0,
        "a 3 s window outlasts the 1 s selection timeout: some write is refused"
    );
    assert!(
        read_during,
        "reads are served while the shard has no primary"
    );
    // Writes go through again once the window is over.
    let after = Instant::now();
    while call(Method::POST, "/data", json!({"_id": "after", "ok": true})).0 != 201 {
        assert!(
            after.elapsed() < Duration::from_secs(20),
            "writes never resumed\n{}",
            gw.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // Every acknowledged insert is there; a refused one may or may not be, nothing else is.
    let mut found = BTreeSet::new();
    let mut cursor = Value::Null;
    loop {
        let mut body = json!({"filter": {"i": {"$exists": true}}, "limit": 1000});
        if !cursor.is_null() {
            body["cursor"] = cursor;
        }
        let r = gw
            .req(Method::POST, "/data/query")
            .bearer_auth(&token)
            .json(&body)
            .send()
            .unwrap();
        assert_eq!(r.status(), 200);
        let page: Value = r.json().unwrap();
        found.extend(
            page["documents"]
                .as_array()
                .unwrap()
                .iter()
                .map(|d| d["_id"].as_str().unwrap().to_owned()),
        );
        cursor = page["next_cursor"].clone();
        if cursor.is_null() {
            break;
        }
    }
    let missing: Vec<_> = acked.difference(&found).collect();
    assert!(missing.is_empty(), "acknowledged inserts lost: {missing:?}");
    let unknown: Vec<_> = found
        .iter()
        .filter(|id| !acked.contains(*id) && !maybe.contains(*id))
        .collect();
    assert!(unknown.is_empty(), "documents nobody wrote: {unknown:?}");
    // Each acknowledged increment counted once; a refused one at most once.
    let r = gw
        .req(Method::GET, "/data/counter")
        .bearer_auth(&token)
        .send()
        .unwrap();
    let n = r.json::<Value>().unwrap()["n"].as_u64().unwrap();
    assert!(
        (incs_acked..=incs_acked + incs_maybe).contains(&n),
        "counter {n}: {incs_acked} increments acknowledged, {incs_maybe} refused"
    );
    eprintln!(
        "step-down: {} inserts acknowledged, {refused_during} refused; {incs_acked} increments acknowledged, {incs_maybe} refused; counter {n}",
        acked.len()
    );
}

/// Asks a SecantusDB to step down for `seconds` and checks that it did (it then answers
/// `hello` as a secondary).
fn step_down(uri: &str, seconds: i32) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let client = mongodb::Client::with_uri_str(uri).await.unwrap();
        let asked = Instant::now();
        // A real primary closes connections as it steps down: the answer may be lost.
        let _ = client
            .database("admin")
            .run_command(bson::doc! { "replSetStepDown": seconds, "force": true })
            .await;
        let direct = mongodb::Client::with_uri_str(format!("{uri}&directConnection=true"))
            .await
            .unwrap();
        let hello = direct
            .database("admin")
            .run_command(bson::doc! { "hello": 1 })
            .await
            .unwrap();
        // (A loaded machine may only ask after the window.)
        if asked.elapsed() < Duration::from_secs(seconds as u64) {
            assert_eq!(
                hello.get_bool("isWritablePrimary").ok(),
                Some(false),
                "{hello}"
            );
        }
        // Stopped before the runtime is: their background tasks must not outlive it.
        client.shutdown().await;
        direct.shutdown().await;
    });
}

/// The catalog's primary steps down (a MongoDB catalog on a private SecantusDB) while
/// organizations are created, admins log in and a tenant writes: every answer is a success or
/// a 503 with Retry-After (`catalog_unavailable` when the catalog refused), never a 500, and
/// creates succeed again after the window.
#[test]
fn a_catalog_step_down_is_503_with_retry_after_never_500() {
    let Some(server) = OwnServer::start() else {
        return;
    };
    let uri = format!(
        "{}/?connectTimeoutMS={}&heartbeatFrequencyMS=500",
        server.uri(),
        mongo_env::PATIENT_MS
    );
    let gw = TestGateway::start_with(Options {
        config: format!(
            "[limits]\nrequests_per_minute = 1000000\nrequests_per_hour = 10000000\n\
             creates_per_minute_per_address = 100000\n\
             [catalog]\nkind = \"mongodb\"\nuri = \"{uri}\"\ndatabase = \"stepcat\"\n\
             recovery_grace_seconds = 0\n"
        ),
        ..Default::default()
    });
    let token = gw.org_with_token("Catalog Step", "catstep@example.com");
    let check = |what: &str, r: reqwest::blocking::Response, ok: u16| -> bool {
        let status = r.status().as_u16();
        if status == ok {
            return true;
        }
        assert_eq!(status, 503, "{what}: {status}\n{}", gw.log());
        assert!(
            r.headers().contains_key("retry-after"),
            "{what}: no Retry-After"
        );
        let body: Value = r.json().unwrap();
        assert!(
            // `instance_fenced`: its registry lease lapsed while the catalog refused writes.
            [
                "catalog_unavailable",
                "shard_unavailable",
                "organization_busy",
                "instance_fenced",
            ]
            .contains(&body["code"].as_str().unwrap_or("")),
            "{what}: {body}"
        );
        false
    };
    let started = Instant::now();
    let (mut stepped, mut refused) = (false, 0);
    let mut i = 0;
    while started.elapsed() < Duration::from_secs(8) {
        i += 1;
        if !stepped && started.elapsed() > Duration::from_secs(1) {
            step_down(&uri, 3);
            stepped = true;
        }
        let created = gw.create_org(
            &format!("Step Org {i}"),
            &format!("step{i}@example.com"),
            "password123",
        );
        refused += usize::from(!check("create", created, 201));
        refused += usize::from(!check(
            "login",
            gw.login("catstep@example.com", "password123"),
            200,
        ));
        let insert = gw
            .req(Method::POST, "/data")
            .bearer_auth(&token)
            .json(&json!({"_id": format!("c-{i}")}))
            .send()
            .unwrap();
        refused += usize::from(!check("insert", insert, 201));
    }
    assert!(stepped);
    let after = Instant::now();
    while gw
        .create_org("After Step", "after@example.com", "password123")
        .status()
        != 201
    {
        assert!(
            after.elapsed() < Duration::from_secs(20),
            "creates never resumed\n{}",
            gw.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // Deterministically: while the gateway's catalog writes are refused as "not primary"
    // (the driver's one retry included), a create is a 503 `catalog_unavailable`: when its
    // first write (the revision counter's findAndModify) is refused, and when only a later
    // one (the organization's insert) is.
    for commands in [
        &["insert", "update", "delete", "findAndModify"][..],
        &["insert"][..],
    ] {
        fail_gateway_writes(&uri, commands);
        let r = gw.create_org("Refused Org", "refused@example.com", "password123");
        fail_gateway_writes(&uri, &[]);
        assert_eq!(r.status(), 503, "{commands:?}\n{}", gw.log());
        assert!(r.headers().contains_key("retry-after"));
        assert_eq!(r.json::<Value>().unwrap()["code"], "catalog_unavailable");
    }
    assert_eq!(
        gw.create_org("Refused Org", "refused@example.com", "password123")
            .status(),
        201
    );
    eprintln!("catalog step-down: {i} rounds, {refused} answers were 503");
}

/// Turns on a failpoint refusing these commands of the gateway's MongoDB clients
/// (application name `org-gateway`) with 10107 "not primary"; none turns it off.
fn fail_gateway_writes(uri: &str, commands: &[&str]) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let client = mongodb::Client::with_uri_str(format!("{uri}&appName=test-runner"))
            .await
            .unwrap();
        let mode = if commands.is_empty() {
            bson::bson!("off")
        } else {
            bson::bson!("alwaysOn")
        };
        client
            .database("admin")
            .run_command(bson::doc! {
                "configureFailPoint": "failCommand",
                "mode": mode,
                "data": {
                    "failCommands": commands,
                    "errorCode": 10107,
                    "appName": "org-gateway",
                },
            })
            .await
            .unwrap();
        client.shutdown().await;
    });
}
