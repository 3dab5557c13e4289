//! `org-gateway backup` and `org-gateway restore` against the real binary: three
//! organizations over two shards -> backup -> a fresh deployment -> restore -> the same
//! documents, indexes and logins; `--organization`, `--since`, a taken name, a data dir in use.
//! With `TEST_ON_MONGODB=1` the catalog and both shards are on MongoDB (and the backup runs
//! online); otherwise they are embedded.

use crate::gateway::{on_mongodb, Options, TestGateway};
use reqwest::Method;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

const PASSWORD: &str = "password123";
const OPS_TOKEN: &str = "backup-ops-token-0123456789abcdef";

/// The `ratelimit-policy` header of a data request.
fn rate_policy(gw: &TestGateway, t: &str) -> String {
    let r = gw
        .req(Method::POST, "/data/count")
        .bearer_auth(t)
        .json(&json!({}))
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    r.headers()["ratelimit-policy"].to_str().unwrap().to_owned()
}

/// Two shards in regions `ra` and `rb` (embedded, or MongoDB with their own prefixes).
struct Shards {
    toml: String,
    /// MongoDB tenant databases to drop at the end.
    mongo: Option<(String, Vec<String>)>,
}

impl Shards {
    fn new() -> Self {
        if on_mongodb() {
            let uri = crate::mongo_env::uri().expect("TEST_ON_MONGODB needs MONGODB_URI");
            let (a, b) = (
                crate::mongo_env::unique_prefix("bka"),
                crate::mongo_env::unique_prefix("bkb"),
            );
            let toml = format!(
                "[[shards]]\nid = \"a\"\nkind = \"mongodb\"\nuri = \"{uri}\"\ndatabase_prefix = \"{a}\"\nregion = \"ra\"\n\
                 [[shards]]\nid = \"b\"\nkind = \"mongodb\"\nuri = \"{uri}\"\ndatabase_prefix = \"{b}\"\nregion = \"rb\"\n"
            );
            let dbs = vec![format!("{a}_1"), format!("{b}_1")];
            Self {
                toml,
                mongo: Some((uri, dbs)),
            }
        } else {
            Self {
                toml: "[[shards]]\nid = \"a\"\nkind = \"embedded\"\npath = \"shards/a.redb\"\nregion = \"ra\"\n\
                       [[shards]]\nid = \"b\"\nkind = \"embedded\"\npath = \"shards/b.redb\"\nregion = \"rb\"\n"
                    .to_owned(),
                mongo: None,
            }
        }
    }

    /// Drops the tenant databases (the data is lost; only the backup has it).
    fn lose_data(&self) {
        if let Some((uri, dbs)) = &self.mongo {
            let rt = tokio::runtime::Runtime::new().unwrap();
            for db in dbs {
                rt.block_on(crate::mongo_env::drop_db(uri, db));
            }
        }
    }
}

impl Drop for Shards {
    fn drop(&mut self) {
        self.lose_data();
    }
}

fn config(shards: &Shards, extra: &str) -> String {
    format!(
        "{extra}\n[limits]\nrequests_per_minute = 1000000\nrequests_per_hour = 10000000\n{}",
        shards.toml
    )
}

/// Runs the binary with these arguments.
fn run(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_org-gateway"))
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run org-gateway")
}

/// `restore` with extra environment (a failpoint).
fn restore_with_env(config_toml: &str, data_dir: &Path, from: &Path, env: (&str, &str)) -> Output {
    std::fs::create_dir_all(data_dir).unwrap();
    let config = data_dir.join("test-gateway.toml");
    std::fs::write(&config, config_toml).unwrap();
    Command::new(env!("CARGO_BIN_EXE_org-gateway"))
        .args(["restore", "--config"])
        .arg(&config)
        .arg("--data-dir")
        .arg(data_dir)
        .arg("--from")
        .arg(from)
        .env("RUST_LOG", "warn")
        .env(env.0, env.1)
        .output()
        .expect("run org-gateway")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// `backup` with the running (or stopped) gateway's config and data dir.
fn backup(gw: &TestGateway, out: &Path, extra: &[&str]) -> Output {
    let config = gw.data_dir.join("test-gateway.toml");
    let mut args = vec![
        "backup",
        "--config",
        config.to_str().unwrap(),
        "--data-dir",
        gw.data_dir.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    run(&args)
}

/// `restore` into the deployment of `config_toml` with `data_dir`.
fn restore(config_toml: &str, data_dir: &Path, from: &Path, extra: &[&str]) -> Output {
    std::fs::create_dir_all(data_dir).unwrap();
    let config = data_dir.join("test-gateway.toml");
    std::fs::write(&config, config_toml).unwrap();
    let mut args = vec![
        "restore",
        "--config",
        config.to_str().unwrap(),
        "--data-dir",
        data_dir.to_str().unwrap(),
        "--from",
        from.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    run(&args)
}

fn create_in(gw: &TestGateway, name: &str, email: &str, region: &str) -> Value {
    let r = gw.post(
        "/org/create",
        &json!({"organization_name": name, "email": email, "password": PASSWORD, "region": region}),
    );
    assert_eq!(r.status(), 201, "create {name}: {}", r.text().unwrap());
    r.json().unwrap()
}

fn token(gw: &TestGateway, email: &str) -> String {
    let r = gw.login(email, PASSWORD);
    assert_eq!(r.status(), 200, "login {email}");
    r.json::<Value>().unwrap()["access_token"]
        .as_str()
        .unwrap()
        .to_owned()
}

fn call(gw: &TestGateway, t: &str, method: Method, path: &str, body: Option<Value>) -> Value {
    let mut r = gw.req(method, path).bearer_auth(t);
    if let Some(b) = body {
        r = r.json(&b);
    }
    let resp = r.send().unwrap();
    let status = resp.status().as_u16();
    let v: Value = resp.json().unwrap_or(Value::Null);
    assert!((200..300).contains(&status), "{path}: {status} {v}");
    v
}

fn insert(gw: &TestGateway, t: &str, docs: Value) {
    call(gw, t, Method::POST, "/data", Some(docs));
}

/// Every document of the caller's organization, by `_id`.
fn documents(gw: &TestGateway, t: &str) -> BTreeMap<String, Value> {
    let r = gw
        .req(Method::GET, "/org/export")
        .bearer_auth(t)
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    r.text()
        .unwrap()
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            (v["_id"].as_str().unwrap().to_owned(), v)
        })
        .collect()
}

/// The caller's indexes as `(name, keys, unique)`.
fn indexes(gw: &TestGateway, t: &str) -> Vec<(String, Value, bool)> {
    let v = call(gw, t, Method::GET, "/data/indexes", None);
    v["indexes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            (
                i["name"].as_str().unwrap().to_owned(),
                i["keys"].clone(),
                i["unique"].as_bool().unwrap_or(false),
            )
        })
        .collect()
}

/// The documents of a `.bson` file, parsed with the bson crate, as relaxed extended JSON.
fn bson_file(path: &Path) -> Vec<Value> {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut rest = &bytes[..];
    let mut out = Vec::new();
    while !rest.is_empty() {
        let len = i32::from_le_bytes(rest[..4].try_into().unwrap()) as usize;
        let doc = bson::Document::from_reader(&rest[..len]).unwrap();
        out.push(bson::Bson::Document(doc).into_relaxed_extjson());
        rest = &rest[len..];
    }
    out
}

fn manifest(dir: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(dir.join("manifest.json")).unwrap()).unwrap()
}

/// Stops an embedded deployment's gateway (its files are locked while it runs); a MongoDB
/// deployment is backed up online.
fn stop_if_embedded(gw: &mut TestGateway) {
    if !on_mongodb() {
        gw.terminate();
    }
}

/// The config of a fresh deployment on the same shards: on MongoDB with a catalog database
/// of its own (replacing the one the test's gateway config names, if any).
fn fresh_target(config_toml: &str) -> String {
    if !on_mongodb() {
        return config_toml.to_owned();
    }
    let uri = crate::mongo_env::uri().unwrap();
    let Some(start) = config_toml.find("[catalog]") else {
        return format!(
            "{config_toml}\n[catalog]\nkind = \"mongodb\"\nuri = \"{uri}\"\ndatabase = \"{}\"\nrecovery_grace_seconds = 0\n",
            crate::mongo_env::unique_db("bkcat")
        );
    };
    let end = config_toml[start..]
        .find("recovery_grace_seconds = 0\n")
        .map(|i| start + i + "recovery_grace_seconds = 0\n".len())
        .expect("the test catalog section");
    format!(
        "{}{}[catalog]\nkind = \"mongodb\"\nuri = \"{uri}\"\ndatabase = \"{}\"\nrecovery_grace_seconds = 0\n",
        &config_toml[..start],
        &config_toml[end..],
        crate::mongo_env::unique_db("bkcat")
    )
}

struct Org {
    name: &'static str,
    id: String,
    emails: Vec<String>,
    docs: BTreeMap<String, Value>,
    indexes: Vec<(String, Value, bool)>,
    placement: Value,
    /// A token issued before the backup.
    old_token: String,
}

#[test]
fn backup_round_trip_keeps_documents_indexes_and_logins() {
    let shards = Shards::new();
    // One signing secret on both sides, so a token from before the backup would verify.
    let cfg = config(
        &shards,
        &format!(
            "[ops]\ntoken = \"{OPS_TOKEN}\"\n[auth]\njwt_secret = \"{}\"\n",
            "restore-round-trip-signing-secret-0123456789"
        ),
    );
    let mut gw = TestGateway::start_with(Options {
        config: cfg.clone(),
        ..Default::default()
    });
    let mut orgs = Vec::new();
    for (i, (name, region)) in [("Alpha Co", "ra"), ("Beta Co", "rb"), ("Gamma Co", "rb")]
        .into_iter()
        .enumerate()
    {
        let email = format!("owner{i}@backup.test");
        let created = create_in(&gw, name, &email, region);
        let t = token(&gw, &email);
        let mut emails = vec![email];
        for k in 0..=i {
            let extra = format!("admin{k}.{i}@backup.test");
            call(
                &gw,
                &t,
                Method::POST,
                "/org/admins",
                Some(json!({"email": extra, "password": PASSWORD})),
            );
            emails.push(extra);
        }
        let docs: Vec<Value> = (0..25)
            .map(|n| {
                json!({"_id": format!("{name}-{n:03}"), "n": n, "big": 1_i64 << 40, "f": 2.5,
                       "tags": ["x", n.to_string()], "nested": {"ok": n % 2 == 0, "none": null},
                       "email": format!("u{n}@{i}.test")})
            })
            .collect();
        insert(&gw, &t, Value::Array(docs));
        call(
            &gw,
            &t,
            Method::POST,
            "/data/indexes",
            Some(json!({"keys": {"email": 1}, "unique": true})),
        );
        if i != 1 {
            call(
                &gw,
                &t,
                Method::POST,
                "/data/indexes",
                Some(json!({"keys": {"n": -1, "nested.ok": 1}, "name": "by_n"})),
            );
        }
        orgs.push(Org {
            name,
            id: created["organization_id"].as_str().unwrap().to_owned(),
            emails,
            docs: documents(&gw, &t),
            indexes: indexes(&gw, &t),
            placement: created["placement"].clone(),
            old_token: t.clone(),
        });
    }
    // A rate-limit override goes with its organization.
    let r = gw
        .client
        .put(format!("{}/ops/orgs/Beta%20Co/limits", gw.ops))
        .bearer_auth(OPS_TOKEN)
        .json(&json!({"requests_per_minute": 777, "requests_per_hour": 7777}))
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(rate_policy(&gw, &token(&gw, &orgs[1].emails[0])).contains("777"));
    assert_eq!(orgs[0].placement["shard"], "a");
    assert_eq!(orgs[1].placement["shard"], "b");
    assert_eq!(orgs[0].docs.len(), 25);

    stop_if_embedded(&mut gw);
    let work = tempfile::tempdir().unwrap();
    let out = work.path().join("backup");
    let b = backup(&gw, &out, &[]);
    assert!(b.status.success(), "backup: {}", text(&b.stderr));
    assert!(text(&b.stdout).contains("backed up 3 organizations (75 documents)"));
    assert!(!work.path().join("backup.partial").exists());
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&out).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700, "a backup holds password hashes");
    }
    let m = manifest(&out);
    assert_eq!(m["organizations"], 3);
    assert_eq!(m["documents"], 75);
    // After the backup the first owner changes password: the deployment then issues tokens
    // of a credential version the backup never saw.
    if !on_mongodb() {
        gw.restart();
    }
    let r = gw
        .req(Method::PUT, "/org/update")
        .bearer_auth(&orgs[0].old_token)
        .json(&json!({"organization_name": orgs[0].name, "password": "changed-after-backup-1"}))
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = gw.login(&orgs[0].emails[0], "changed-after-backup-1");
    assert_eq!(r.status(), 200);
    let token_after_backup = r.json::<Value>().unwrap()["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    stop_if_embedded(&mut gw);

    // mongodump's layout: every collection parses back with the bson crate as the
    // documents the API serves (string `_id`s, integers and doubles kept apart).
    for org in &orgs {
        let db = out.join(org.placement["database"].as_str().unwrap());
        let coll = org.placement["collection"].as_str().unwrap();
        let parsed = bson_file(&db.join(format!("{coll}.bson")));
        let by_id: BTreeMap<String, Value> = parsed
            .into_iter()
            .map(|d| (d["_id"].as_str().unwrap().to_owned(), d))
            .collect();
        assert_eq!(by_id, org.docs, "{}", org.name);
        let meta: Value = serde_json::from_slice(
            &std::fs::read(db.join(format!("{coll}.metadata.json"))).unwrap(),
        )
        .unwrap();
        assert_eq!(meta["collectionName"], coll);
        let names: Vec<&str> = meta["indexes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["name"].as_str().unwrap())
            .collect();
        let expected: Vec<&str> = org.indexes.iter().map(|i| i.0.as_str()).collect();
        assert_eq!(names, expected);
        let email = meta["indexes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|i| i["name"] == "email_1")
            .unwrap();
        assert_eq!(email["key"], json!({"email": 1}));
        assert_eq!(email["unique"], true);
        assert_eq!(email["v"], 2);
        assert!(
            meta["indexes"][0].get("unique").is_none(),
            "_id_ has no unique option"
        );
    }
    let catalog = out.join("org_gateway_backup_catalog");
    let orgs_file = bson_file(&catalog.join("organizations.bson"));
    let mut ids: Vec<&str> = orgs_file
        .iter()
        .map(|o| o["_id"].as_str().unwrap())
        .collect();
    ids.sort();
    let mut want: Vec<&str> = orgs.iter().map(|o| o.id.as_str()).collect();
    want.sort();
    assert_eq!(ids, want);
    let admins = bson_file(&catalog.join("admins.bson"));
    assert_eq!(admins.len(), 2 + 3 + 4);
    assert!(admins.iter().all(|a| a["password_hash"]
        .as_str()
        .unwrap()
        .starts_with("$argon2id$")));

    // The data is lost: a fresh deployment, restored from the backup.
    shards.lose_data();
    let target = tempfile::tempdir().unwrap();
    let target_dir = target.path().to_path_buf();
    // On MongoDB the fresh deployment gets a catalog database of its own.
    let target_cfg = if on_mongodb() {
        let uri = crate::mongo_env::uri().unwrap();
        format!(
            "{cfg}\n[catalog]\nkind = \"mongodb\"\nuri = \"{uri}\"\ndatabase = \"{}\"\nrecovery_grace_seconds = 0\n",
            crate::mongo_env::unique_db("bkcat")
        )
    } else {
        cfg.clone()
    };
    let r = restore(&target_cfg, &target_dir, &out, &[]);
    assert!(r.status.success(), "restore: {}", text(&r.stderr));
    assert!(text(&r.stdout).contains("restored 3 organizations (75 documents)"));
    drop(gw);
    let gw = TestGateway::start_with(Options {
        config: target_cfg,
        data_dir: Some(target_dir.clone()),
        ..Default::default()
    });
    // Nor does one the lost deployment issued after the backup.
    let stale = gw
        .req(Method::POST, "/data/count")
        .bearer_auth(&token_after_backup)
        .json(&json!({}))
        .send()
        .unwrap();
    assert_eq!(stale.status(), 401);
    for org in &orgs {
        // A token from before the backup does not come back with the organization.
        let stale = gw
            .req(Method::POST, "/data/count")
            .bearer_auth(&org.old_token)
            .json(&json!({}))
            .send()
            .unwrap();
        assert_eq!(stale.status(), 401, "{}", org.name);
        for email in &org.emails {
            let r = gw.login(email, PASSWORD);
            assert_eq!(r.status(), 200, "{email} logs in with the old password");
            let v: Value = r.json().unwrap();
            assert_eq!(v["organization_id"], org.id.as_str());
        }
        let t = token(&gw, &org.emails[0]);
        assert_eq!(documents(&gw, &t), org.docs, "{}", org.name);
        assert_eq!(indexes(&gw, &t), org.indexes, "{}", org.name);
        // Its audit trail came back, the restore's own event after it.
        let events: Value = gw
            .req(Method::GET, "/org/events?limit=1000")
            .bearer_auth(&t)
            .send()
            .unwrap()
            .json()
            .unwrap();
        let types: Vec<&str> = events["events"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["type"].as_str().unwrap())
            .collect();
        assert_eq!(types.first(), Some(&"organization.created"), "{types:?}");
        let restored = types.iter().position(|t| *t == "organization.restored");
        assert!(
            restored
                .is_some_and(|i| types[..i].contains(&"admin.created") || org.emails.len() == 1),
            "{types:?}"
        );
        // The unique index is in force again.
        let dup = gw
            .req(Method::POST, "/data")
            .bearer_auth(&t)
            .json(&json!({"email": "u1@0.test"}))
            .send()
            .unwrap();
        if org.name == "Alpha Co" {
            assert_eq!(dup.status(), 409);
        }
        let got: Value = gw
            .client
            .get(format!("{}/org/get", gw.base))
            .query(&[("organization_name", org.name)])
            .bearer_auth(&t)
            .send()
            .unwrap()
            .json()
            .unwrap();
        assert_eq!(got["placement"]["shard"], org.placement["shard"]);
        assert_eq!(
            rate_policy(&gw, &t).contains("777"),
            org.name == "Beta Co",
            "{}",
            org.name
        );
        assert_eq!(got["collection_name"], org.placement["collection"]);
    }
    let _keep = work;
}

#[test]
fn backup_of_one_organization_and_of_those_written_since() {
    let shards = Shards::new();
    // `--since T` reaches back one mark interval plus the request timeout.
    let cfg = config(
        &shards,
        "request_timeout_ms = 1000\n[lifecycle]\nwrite_mark_interval_seconds = 0.2\n",
    );
    let mut gw = TestGateway::start_with(Options {
        config: cfg,
        ..Default::default()
    });
    let mut tokens = Vec::new();
    for (i, name) in ["One Co", "Two Co", "Three Co"].into_iter().enumerate() {
        let email = format!("o{i}@since.test");
        create_in(&gw, name, &email, if i == 0 { "ra" } else { "rb" });
        let t = token(&gw, &email);
        insert(&gw, &t, json!([{"_id": format!("first-{i}"), "i": i}]));
        tokens.push(t);
    }
    std::thread::sleep(Duration::from_millis(2_000));
    // A full backup; the incremental one after it passes its `started_at` as `--since`.
    stop_if_embedded(&mut gw);
    let work = tempfile::tempdir().unwrap();
    let full = work.path().join("full");
    let b = backup(&gw, &full, &[]);
    assert!(b.status.success(), "backup: {}", text(&b.stderr));
    assert_eq!(manifest(&full)["organizations"], 3);
    if !on_mongodb() {
        gw.restart();
    }
    insert(&gw, &tokens[1], json!([{"_id": "later", "i": 9}]));
    stop_if_embedded(&mut gw);

    let since_arg = manifest(&full)["started_at"].as_str().unwrap().to_owned();
    let incremental = work.path().join("incremental");
    let out = incremental.clone();
    let b = backup(&gw, &out, &["--since", &since_arg]);
    assert!(b.status.success(), "backup: {}", text(&b.stderr));
    let m = manifest(&out);
    assert_eq!(m["organizations"], 1, "only Two Co was written since: {m}");
    assert_eq!(m["documents"], 2);
    assert_eq!(m["since"], since_arg.as_str());
    let orgs = bson_file(&out.join("org_gateway_backup_catalog/organizations.bson"));
    assert_eq!(orgs.len(), 1);
    assert_eq!(orgs[0]["name"], "Two Co");

    let out = work.path().join("one");
    let b = backup(&gw, &out, &["--organization", "three co"]);
    assert!(b.status.success(), "backup: {}", text(&b.stderr));
    let orgs = bson_file(&out.join("org_gateway_backup_catalog/organizations.bson"));
    assert_eq!(orgs.len(), 1);
    assert_eq!(orgs[0]["name"], "Three Co");
    let db = orgs[0]["placement"]["database"].as_str().unwrap();
    let docs = bson_file(&out.join(db).join("org_three_co.bson"));
    assert_eq!(docs, vec![json!({"_id": "first-2", "i": 2})]);
    assert!(!out.join(db).join("org_two_co.bson").exists());

    let out = work.path().join("unknown");
    let b = backup(&gw, &out, &["--organization", "Nobody Here"]);
    assert!(!b.status.success());
    assert!(
        text(&b.stderr).contains("unknown organization \"Nobody Here\""),
        "{}",
        text(&b.stderr)
    );
    assert!(!out.exists() && !work.path().join("unknown.partial").exists());

    let b = backup(&gw, &work.path().join("bad"), &["--since", "yesterday"]);
    assert!(!b.status.success());
    assert!(text(&b.stderr).contains("RFC 3339"), "{}", text(&b.stderr));

    // The chain: the incremental backup first, then the full one skipping what is restored.
    shards.lose_data();
    let target = tempfile::tempdir().unwrap();
    let target_cfg = fresh_target(&gw.config_toml);
    let r = restore(&target_cfg, target.path(), &incremental, &[]);
    assert!(r.status.success(), "restore: {}", text(&r.stderr));
    assert!(text(&r.stdout).contains("restored 1 organizations (2 documents)"));
    let r = restore(&target_cfg, target.path(), &full, &["--skip-existing"]);
    assert!(r.status.success(), "restore: {}", text(&r.stderr));
    assert!(
        text(&r.stdout).contains("restored 2 organizations"),
        "{}",
        text(&r.stdout)
    );
    assert!(
        text(&r.stdout).contains("skipped 1 organizations"),
        "{}",
        text(&r.stdout)
    );
    let r = restore(&target_cfg, target.path(), &full, &[]);
    assert!(
        !r.status.success(),
        "without --skip-existing they are refused"
    );
    assert!(text(&r.stderr).contains("\"Two Co\" not restored"));
    let restored = TestGateway::start_with(Options {
        config: target_cfg,
        data_dir: Some(target.path().to_path_buf()),
        ..Default::default()
    });
    for (i, want) in [vec!["first-0"], vec!["first-1", "later"], vec!["first-2"]]
        .into_iter()
        .enumerate()
    {
        let t = token(&restored, &format!("o{i}@since.test"));
        assert_eq!(
            documents(&restored, &t).into_keys().collect::<Vec<_>>(),
            want
        );
    }
    drop(restored);
}

#[test]
fn restore_refuses_an_organization_whose_name_is_taken_and_writes_nothing_of_it() {
    let shards = Shards::new();
    let cfg = config(&shards, "");
    let mut gw = TestGateway::start_with(Options {
        config: cfg.clone(),
        ..Default::default()
    });
    for (i, name) in ["Kept Co", "Clash Co", "Mail Co"].into_iter().enumerate() {
        let email = format!("k{i}@clash.test");
        create_in(&gw, name, &email, "ra");
        let t = token(&gw, &email);
        insert(&gw, &t, json!([{"_id": "from-backup", "i": i}]));
    }
    stop_if_embedded(&mut gw);
    let work = tempfile::tempdir().unwrap();
    let out = work.path().join("backup");
    let b = backup(&gw, &out, &[]);
    assert!(b.status.success(), "backup: {}", text(&b.stderr));
    drop(gw);
    shards.lose_data();

    // The target already has an organization of that name (another case and admin).
    let target = tempfile::tempdir().unwrap();
    let target_dir: PathBuf = target.path().to_path_buf();
    let target_cfg = if on_mongodb() {
        let uri = crate::mongo_env::uri().unwrap();
        format!(
            "{cfg}\n[catalog]\nkind = \"mongodb\"\nuri = \"{uri}\"\ndatabase = \"{}\"\nrecovery_grace_seconds = 0\n",
            crate::mongo_env::unique_db("bkcat")
        )
    } else {
        cfg.clone()
    };
    let mut gw = TestGateway::start_with(Options {
        config: target_cfg.clone(),
        data_dir: Some(target_dir.clone()),
        ..Default::default()
    });
    create_in(&gw, "CLASH CO", "other@clash.test", "rb");
    // ... and an admin with the email of Mail Co's.
    create_in(&gw, "Unrelated Co", "k2@clash.test", "rb");
    let t = token(&gw, "other@clash.test");
    insert(&gw, &t, json!([{"_id": "target-own"}]));
    stop_if_embedded(&mut gw);

    let r = restore(&target_cfg, &target_dir, &out, &[]);
    assert!(
        !r.status.success(),
        "a refused organization fails the restore"
    );
    let err = text(&r.stderr);
    assert!(
        err.contains("organization \"Clash Co\" not restored") && err.contains("taken"),
        "{err}"
    );
    assert!(
        err.contains(
            "organization \"Mail Co\" not restored: the admin email k2@clash.test is taken"
        ),
        "{err}"
    );
    assert!(!err.contains("Kept Co"), "{err}");
    assert!(text(&r.stdout).contains("restored 1 organizations"));

    drop(gw);
    let gw = TestGateway::start_with(Options {
        config: target_cfg,
        data_dir: Some(target_dir),
        ..Default::default()
    });
    // Nothing of the refused organization: its admin cannot log in, the target's own
    // organization of that name keeps its data alone.
    assert_eq!(gw.login("k1@clash.test", PASSWORD).status(), 401);
    let t = token(&gw, "other@clash.test");
    assert_eq!(
        documents(&gw, &t).into_keys().collect::<Vec<_>>(),
        vec!["target-own".to_owned()]
    );
    let t = token(&gw, "k0@clash.test");
    assert_eq!(
        documents(&gw, &t).into_keys().collect::<Vec<_>>(),
        vec!["from-backup".to_owned()]
    );
    let r = gw
        .client
        .get(format!("{}/org/get", gw.base))
        .query(&[("organization_name", "Mail Co")])
        .send()
        .unwrap();
    assert_eq!(r.status(), 404, "nothing of Mail Co was written");
}

#[test]
fn backup_refuses_a_data_dir_in_use_by_a_running_gateway() {
    if on_mongodb() {
        // A MongoDB catalog and shards are backed up online (the round trip does).
        return;
    }
    let shards = Shards::new();
    let gw = TestGateway::start_with(Options {
        config: config(&shards, ""),
        ..Default::default()
    });
    create_in(&gw, "Busy Co", "busy@use.test", "ra");
    let work = tempfile::tempdir().unwrap();
    let out = work.path().join("backup");
    let b = backup(&gw, &out, &[]);
    assert!(!b.status.success());
    let err = text(&b.stderr);
    assert!(
        err.contains("is in use by a running gateway: stop it"),
        "{err}"
    );
    assert!(!out.exists() && !work.path().join("backup.partial").exists());
    // The gateway was not disturbed.
    assert_eq!(gw.login("busy@use.test", PASSWORD).status(), 200);
}

#[test]
fn a_restore_killed_midway_is_rolled_back_at_the_next_start() {
    let shards = Shards::new();
    let cfg = config(&shards, "");
    let mut gw = TestGateway::start_with(Options {
        config: cfg,
        ..Default::default()
    });
    create_in(&gw, "Crash Co", "crash@restore.test", "ra");
    let t = token(&gw, "crash@restore.test");
    insert(&gw, &t, json!([{"_id": "a", "n": 1}, {"_id": "b", "n": 2}]));
    call(
        &gw,
        &t,
        Method::POST,
        "/data/indexes",
        Some(json!({"keys": {"n": 1}, "unique": true})),
    );
    let want = documents(&gw, &t);
    stop_if_embedded(&mut gw);
    let work = tempfile::tempdir().unwrap();
    let out = work.path().join("backup");
    let b = backup(&gw, &out, &[]);
    assert!(b.status.success(), "backup: {}", text(&b.stderr));
    let target_cfg = fresh_target(&gw.config_toml);
    drop(gw);
    shards.lose_data();

    let target = tempfile::tempdir().unwrap();
    let r = restore_with_env(
        &target_cfg,
        target.path(),
        &out,
        ("GATEWAY_FAILPOINT", "restore_after_documents"),
    );
    assert!(!r.status.success(), "the failpoint aborts the restore");
    // The next start rolls the organization back: nothing of it is left.
    let mut restarted = TestGateway::start_with(Options {
        config: target_cfg.clone(),
        data_dir: Some(target.path().to_path_buf()),
        ..Default::default()
    });
    assert_eq!(
        restarted.login("crash@restore.test", PASSWORD).status(),
        401
    );
    let r = restarted
        .client
        .get(format!("{}/org/get", restarted.base))
        .query(&[("organization_name", "Crash Co")])
        .send()
        .unwrap();
    assert_eq!(r.status(), 404);
    // ... and the restore can run again, whole.
    stop_if_embedded(&mut restarted);
    let r = restore(&target_cfg, target.path(), &out, &[]);
    assert!(r.status.success(), "restore: {}", text(&r.stderr));
    drop(restarted);
    let gw = TestGateway::start_with(Options {
        config: target_cfg,
        data_dir: Some(target.path().to_path_buf()),
        ..Default::default()
    });
    let t = token(&gw, "crash@restore.test");
    assert_eq!(documents(&gw, &t), want);
    assert_eq!(indexes(&gw, &t).len(), 2);
}

#[test]
fn restore_places_organizations_whose_shard_the_target_lacks_by_the_usual_policy() {
    let shards = Shards::new();
    let mut gw = TestGateway::start_with(Options {
        config: config(&shards, ""),
        ..Default::default()
    });
    create_in(&gw, "Mover Co", "mover@place.test", "rb");
    let t = token(&gw, "mover@place.test");
    insert(&gw, &t, json!([{"_id": "x", "v": [1, 2, {"w": "z"}]}]));
    let want = documents(&gw, &t);
    stop_if_embedded(&mut gw);
    let work = tempfile::tempdir().unwrap();
    let out = work.path().join("backup");
    let b = backup(&gw, &out, &[]);
    assert!(b.status.success(), "backup: {}", text(&b.stderr));
    drop(gw);

    // The target has one shard, `c`, that the backup never heard of.
    let (shard_c, _drop) = if on_mongodb() {
        let uri = crate::mongo_env::uri().unwrap();
        let prefix = crate::mongo_env::unique_prefix("bkc");
        (
            format!(
                "[[shards]]\nid = \"c\"\nkind = \"mongodb\"\nuri = \"{uri}\"\ndatabase_prefix = \"{prefix}\"\n"
            ),
            Some(Shards {
                toml: String::new(),
                mongo: Some((uri, vec![format!("{prefix}_1")])),
            }),
        )
    } else {
        (
            "[[shards]]\nid = \"c\"\nkind = \"embedded\"\npath = \"shards/c.redb\"\n".to_owned(),
            None,
        )
    };
    let target_cfg = fresh_target(&config(
        &Shards {
            toml: shard_c,
            mongo: None,
        },
        "",
    ));
    let target = tempfile::tempdir().unwrap();
    let r = restore(&target_cfg, target.path(), &out, &[]);
    assert!(r.status.success(), "restore: {}", text(&r.stderr));
    let gw = TestGateway::start_with(Options {
        config: target_cfg,
        data_dir: Some(target.path().to_path_buf()),
        ..Default::default()
    });
    let t = token(&gw, "mover@place.test");
    assert_eq!(documents(&gw, &t), want);
    let got: Value = gw
        .client
        .get(format!("{}/org/get", gw.base))
        .query(&[("organization_name", "Mover Co")])
        .bearer_auth(&t)
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(got["placement"]["shard"], "c");
}
