//! Crash safety: a gateway killed in the middle of a rename or delete finishes it at the next
//! start, and loses no document.

use crate::gateway::{Options, TestGateway};
use reqwest::Method;
use serde_json::{json, Value};
use std::time::Duration;

/// A gateway that aborts when it reaches `failpoint`.
fn armed(failpoint: &str) -> TestGateway {
    TestGateway::start_with(Options {
        env: vec![("GATEWAY_FAILPOINT".into(), failpoint.into())],
        ..Default::default()
    })
}

/// Asserts `sent` was cut off by the abort, waits for the process to exit and starts it again
/// without the failpoint.
fn restart_after_crash(gw: &mut TestGateway, sent: reqwest::Result<reqwest::blocking::Response>) {
    assert!(sent.is_err(), "the process should have died mid-operation");
    assert!(gw.wait_exit(Duration::from_secs(10)));
    gw.env.clear();
    gw.restart();
}

fn crash_during(failpoint: &str, rename: bool) {
    let mut gw = armed(failpoint);
    let t = gw.org_with_token("Crashy", "crashy@example.com");
    let docs: Vec<Value> = (0..500)
        .map(|i| json!({"_id": format!("d{i}"), "i": i}))
        .collect();
    let r = gw
        .req(Method::POST, "/data")
        .bearer_auth(&t)
        .json(&Value::Array(docs))
        .send()
        .unwrap();
    assert_eq!(r.status(), 201);
    let r = if rename {
        gw.req(Method::PUT, "/org/update")
            .bearer_auth(&t)
            .json(&json!({"organization_name": "Crashy", "new_organization_name": "Survivor"}))
            .send()
    } else {
        gw.req(Method::DELETE, "/org/delete?organization_name=Crashy")
            .bearer_auth(&t)
            .send()
    };
    restart_after_crash(&mut gw, r);
    let get = |name: &str| {
        gw.req(Method::GET, &format!("/org/get?organization_name={name}"))
            .send()
            .unwrap()
            .status()
            .as_u16()
    };
    if rename {
        assert_eq!(get("Crashy"), 404);
        assert_eq!(get("Survivor"), 200);
        let n: Value = gw
            .req(Method::POST, "/data/count")
            .bearer_auth(&t)
            .json(&json!({}))
            .send()
            .unwrap()
            .json()
            .unwrap();
        assert_eq!(n["count"], 500);
        assert!(gw.log_contains("completing an interrupted rename"));
    } else {
        assert_eq!(get("Crashy"), 404);
        // the name is free and the old collection is gone: a new org starts empty
        let t2 = gw.org_with_token("Crashy", "again@example.com");
        let n: Value = gw
            .req(Method::POST, "/data/count")
            .bearer_auth(&t2)
            .json(&json!({}))
            .send()
            .unwrap()
            .json()
            .unwrap();
        assert_eq!(n["count"], 0);
    }
}

#[test]
fn rename_interrupted_after_reserving_the_name_is_completed() {
    crash_during("rename_after_begin", true);
}

#[test]
fn rename_interrupted_after_moving_the_data_is_completed() {
    crash_during("rename_after_store", true);
}

#[test]
fn delete_interrupted_after_the_catalog_drops_the_collection_at_restart() {
    crash_during("delete_after_catalog", false);
}

/// A rename with a password change, crashed at `failpoint`: after the restart either both the
/// new name and the new password are in place (`completed`) or neither.
fn crash_during_rename_with_password(failpoint: &str, completed: bool) {
    let mut gw = armed(failpoint);
    let t = gw.org_with_token("Both Or None", "both@example.com");
    let r = gw
        .req(Method::PUT, "/org/update")
        .bearer_auth(&t)
        .json(&json!({
            "organization_name": "Both Or None",
            "new_organization_name": "Both Done",
            "password": "a-brand-new-password",
        }))
        .send();
    restart_after_crash(&mut gw, r);
    let get = |name: &str| {
        gw.req(Method::GET, &format!("/org/get?organization_name={name}"))
            .send()
            .unwrap()
            .status()
            .as_u16()
    };
    let login = |password: &str| gw.login("both@example.com", password).status().as_u16();
    if completed {
        assert_eq!((get("Both%20Done"), get("Both%20Or%20None")), (200, 404));
        assert_eq!(login("a-brand-new-password"), 200);
        assert_eq!(login("password123"), 401);
    } else {
        assert_eq!((get("Both%20Done"), get("Both%20Or%20None")), (404, 200));
        assert_eq!(login("password123"), 200);
        assert_eq!(login("a-brand-new-password"), 401);
        assert!(gw.log_contains("rolling back an interrupted rename"));
    }
}

#[test]
fn rename_with_credentials_crashed_before_they_are_stored_changes_neither() {
    crash_during_rename_with_password("rename_after_begin", false);
}

#[test]
fn rename_with_credentials_crashed_after_they_are_stored_completes_both() {
    crash_during_rename_with_password("rename_after_credentials", true);
}

#[test]
fn create_interrupted_before_its_collection_is_rolled_back_at_restart() {
    let mut gw = armed("create_before_collection");
    let r = gw
        .req(Method::POST, "/org/create")
        .json(&json!({"organization_name": "Half Made", "email": "half@example.com", "password": "password123"}))
        .send();
    restart_after_crash(&mut gw, r);
    assert!(gw.log_contains("rolling back an interrupted create"));
    let r = gw
        .req(Method::GET, "/org/get?organization_name=Half%20Made")
        .send()
        .unwrap();
    assert_eq!(r.status(), 404);
    // Name and email are free again.
    let t = gw.org_with_token("Half Made", "half@example.com");
    let n: Value = gw
        .req(Method::POST, "/data/count")
        .bearer_auth(&t)
        .json(&json!({}))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(n["count"], 0);
}

/// A rename crashed before anything moved, with an orphan sitting under the target name by
/// the time recovery runs: recovery sets the orphan aside instead of merging it in.
#[test]
fn an_interrupted_rename_never_adopts_an_orphan_at_its_target() {
    if crate::gateway::on_mongodb() {
        return; // the orphan is planted in the embedded shard file
    }
    let mut gw = armed("rename_after_begin");
    let t = gw.org_with_token("Mine", "mine@example.com");
    let r = gw
        .req(Method::POST, "/data")
        .bearer_auth(&t)
        .json(&json!([{"_id": "a"}, {"_id": "b"}]))
        .send()
        .unwrap();
    assert_eq!(r.status(), 201);
    let r = gw
        .req(Method::PUT, "/org/update")
        .bearer_auth(&t)
        .json(&json!({"organization_name": "Mine", "new_organization_name": "Theirs"}))
        .send();
    assert!(r.is_err(), "the process should have died mid-rename");
    assert!(gw.wait_exit(Duration::from_secs(10)));
    {
        use org_gateway::store::TenantStore;
        let store = org_gateway::store::embedded::EmbeddedStore::open(
            &gw.data_dir().join("shards/local.redb"),
        )
        .unwrap();
        let ns = org_gateway::store::Namespace {
            database: org_gateway::domain::DatabaseName::numbered("db", 1),
            collection: org_gateway::domain::OrgName::parse("Theirs")
                .unwrap()
                .collection_name(),
        };
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async {
            store.create_collection(&ns).await.unwrap();
            let orphan = json!({"_id": "z"}).as_object().unwrap().clone();
            store.insert_many(&ns, vec![orphan]).await.unwrap();
        });
    }
    gw.env.clear();
    gw.restart();
    assert!(gw.log_contains("found an orphaned collection; set it aside"));
    let n: Value = gw
        .req(Method::POST, "/data/count")
        .bearer_auth(&t)
        .json(&json!({}))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(n["count"], 2, "the orphan's document was adopted");
}
