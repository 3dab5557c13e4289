//! Soft delete and restore: `DELETE /org/delete` keeps the organization's data and admins
//! under a tombstone; operators list (`GET /ops/deleted`), restore
//! (`POST /ops/deleted/{organization_id}/restore`) and purge (`DELETE /ops/deleted/{id}`);
//! a sweeper purges after `lifecycle.retention_days`. Both backends.

use crate::gateway::{assert_problem, Options, TestGateway};
use reqwest::blocking::Response;
use reqwest::Method;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

const TOKEN: &str = "operator-token-0123456789abcdef";

fn gateway(extra: &str) -> TestGateway {
    TestGateway::start_with(Options {
        config: format!("[ops]\ntoken = \"{TOKEN}\"\n{extra}"),
        ..Default::default()
    })
}

fn ops(gw: &TestGateway, method: Method, path: &str, body: Option<Value>) -> Response {
    let mut r = gw
        .client
        .request(method, format!("{}{path}", gw.ops))
        .bearer_auth(TOKEN);
    if let Some(b) = body {
        r = r.json(&b);
    }
    r.send().unwrap()
}

fn insert(gw: &TestGateway, token: &str, n: usize, tag: &str) {
    let docs: Vec<Value> = (0..n)
        .map(|i| json!({"_id": format!("{tag}{i}"), "i": i}))
        .collect();
    let r = gw
        .req(Method::POST, "/data")
        .bearer_auth(token)
        .json(&Value::Array(docs))
        .send()
        .unwrap();
    assert_eq!(r.status(), 201);
}

fn count(gw: &TestGateway, token: &str) -> u64 {
    let r = gw
        .req(Method::POST, "/data/count")
        .bearer_auth(token)
        .json(&json!({}))
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    r.json::<Value>().unwrap()["count"].as_u64().unwrap()
}

fn token(gw: &TestGateway, email: &str, password: &str) -> String {
    let r = gw.login(email, password);
    assert_eq!(r.status(), 200, "login {email}");
    r.json::<Value>().unwrap()["access_token"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// Deletes the organization through the public API; returns the reply body.
fn delete(gw: &TestGateway, name: &str, token: &str) -> Value {
    let r = gw
        .req(
            Method::DELETE,
            &format!("/org/delete?organization_name={}", name.replace(' ', "%20")),
        )
        .bearer_auth(token)
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    r.json().unwrap()
}

fn get_status(gw: &TestGateway, name: &str) -> u16 {
    gw.req(
        Method::GET,
        &format!("/org/get?organization_name={}", name.replace(' ', "%20")),
    )
    .send()
    .unwrap()
    .status()
    .as_u16()
}

fn deleted(gw: &TestGateway) -> Vec<Value> {
    let r = ops(gw, Method::GET, "/ops/deleted", None);
    assert_eq!(r.status(), 200);
    r.json::<Value>().unwrap()["organizations"]
        .as_array()
        .unwrap()
        .clone()
}

fn restore(gw: &TestGateway, id: &str, body: Option<Value>) -> Response {
    ops(
        gw,
        Method::POST,
        &format!("/ops/deleted/{id}/restore"),
        body,
    )
}

fn events(gw: &TestGateway, kind: &str) -> Vec<Value> {
    let r = ops(gw, Method::GET, &format!("/ops/events?type={kind}"), None);
    assert_eq!(r.status(), 200);
    r.json::<Value>().unwrap()["events"]
        .as_array()
        .unwrap()
        .clone()
}

fn tenants(gw: &TestGateway) -> u64 {
    let r = ops(gw, Method::GET, "/ops/shards", None);
    let shards: Value = r.json().unwrap();
    let shards = shards
        .as_array()
        .cloned()
        .or_else(|| shards["shards"].as_array().cloned())
        .unwrap();
    shards.iter().map(|s| s["tenants"].as_u64().unwrap()).sum()
}

#[test]
fn deleted_organization_comes_back_with_its_data_admins_and_passwords() {
    let gw = gateway("");
    let t = gw.org_with_token("Keep Me", "keep@example.com");
    let r = gw
        .req(Method::POST, "/org/admins")
        .bearer_auth(&t)
        .json(&json!({"email": "second@example.com", "password": "second-password"}))
        .send()
        .unwrap();
    assert_eq!(r.status(), 201);
    insert(&gw, &t, 50, "k");
    assert_eq!(tenants(&gw), 1);

    let body = delete(&gw, "Keep Me", &t);
    let id = body["organization_id"].as_str().unwrap().to_owned();
    let until: chrono::DateTime<chrono::Utc> =
        body["restorable_until"].as_str().unwrap().parse().unwrap();
    let days = (until - chrono::Utc::now()).num_hours() as f64 / 24.0;
    assert!((29.0..=30.0).contains(&days), "{body}");
    // the current contract: gone at once
    assert_eq!(get_status(&gw, "Keep Me"), 404);
    assert_eq!(gw.login("keep@example.com", "password123").status(), 401);
    assert_eq!(
        gw.req(Method::POST, "/data/count")
            .bearer_auth(&t)
            .json(&json!({}))
            .send()
            .unwrap()
            .status(),
        401
    );
    // the kept data still counts toward the database's capacity
    assert_eq!(tenants(&gw), 1);

    let listed = deleted(&gw);
    assert_eq!(listed.len(), 1, "{listed:?}");
    let d = &listed[0];
    assert_eq!(d["organization_id"], id.as_str());
    assert_eq!(d["organization_name"], "Keep Me");
    assert_eq!(d["restorable_until"], body["restorable_until"]);
    assert!(d["deleted_at"].is_string());
    assert!(d["size_bytes"].as_u64().unwrap() > 0, "{d}");
    assert_eq!(d["admins"], 2);

    let r = restore(&gw, &id, None);
    assert_eq!(r.status(), 200);
    let org: Value = r.json().unwrap();
    assert_eq!(org["organization_id"], id.as_str());
    assert_eq!(org["organization_name"], "Keep Me");
    assert_eq!(org["placement"]["collection"], "org_keep_me");
    assert_eq!(org["placement"]["state"], "active");
    assert!(deleted(&gw).is_empty());
    assert_eq!(get_status(&gw, "Keep Me"), 200);
    // tokens from before the delete stay refused; the same passwords log in
    assert_eq!(
        gw.req(Method::POST, "/data/count")
            .bearer_auth(&t)
            .json(&json!({}))
            .send()
            .unwrap()
            .status(),
        401
    );
    let t = token(&gw, "keep@example.com", "password123");
    assert_eq!(count(&gw, &t), 50);
    let t2 = token(&gw, "second@example.com", "second-password");
    assert_eq!(count(&gw, &t2), 50);
    insert(&gw, &t2, 1, "after");
    assert_eq!(count(&gw, &t), 51);
    let ev = events(&gw, "organization.restored");
    assert_eq!(ev.len(), 1, "{ev:?}");
    assert_eq!(ev[0]["organization_id"], id.as_str());
    assert_eq!(ev[0]["actor"]["type"], "operator");
    // restored means no longer deleted
    assert_problem(
        restore(&gw, &id, None),
        404,
        "deleted_organization_not_found",
    );
}

#[test]
fn a_new_organization_of_a_deleted_name_starts_empty_and_restores_conflict() {
    let gw = gateway("");
    let t = gw.org_with_token("Alpha", "alpha@example.com");
    insert(&gw, &t, 20, "a");
    let id = delete(&gw, "Alpha", &t)["organization_id"]
        .as_str()
        .unwrap()
        .to_owned();

    // the name and the email are free at once; the new organization sees none of the old data
    let fresh = gw.org_with_token("alpha", "alpha-new@example.com");
    assert_eq!(count(&gw, &fresh), 0);
    insert(&gw, &fresh, 3, "f");

    // restoring under the old name: taken
    let p = assert_problem(restore(&gw, &id, None), 409, "organization_exists");
    assert!(p["detail"].as_str().unwrap().contains("Alpha"), "{p}");
    // under a new name, while the admin's email is taken by someone else
    let other = gw.org_with_token("Other", "alpha@example.com");
    let p = assert_problem(
        restore(&gw, &id, Some(json!({"organization_name": "Alpha Two"}))),
        409,
        "email_taken",
    );
    assert!(
        p["detail"].as_str().unwrap().contains("alpha@example.com"),
        "{p}"
    );
    assert_eq!(deleted(&gw).len(), 1);
    delete(&gw, "Other", &other);

    let r = restore(&gw, &id, Some(json!({"organization_name": "Alpha Two"})));
    assert_eq!(r.status(), 200);
    let org: Value = r.json().unwrap();
    assert_eq!(org["organization_name"], "Alpha Two");
    assert_eq!(org["placement"]["collection"], "org_alpha_two");
    let t = token(&gw, "alpha@example.com", "password123");
    assert_eq!(count(&gw, &t), 20);
    assert_eq!(count(&gw, &fresh), 3);
    assert_eq!(get_status(&gw, "Alpha Two"), 200);
    // the other deleted organization is still listed
    let listed = deleted(&gw);
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0]["organization_name"], "Other");
}

#[test]
fn purge_drops_the_data_at_once() {
    let gw = gateway("");
    let t = gw.org_with_token("Purge Me", "purge@example.com");
    insert(&gw, &t, 10, "p");
    let id = delete(&gw, "Purge Me", &t)["organization_id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(tenants(&gw), 1);
    let r = ops(&gw, Method::DELETE, &format!("/ops/deleted/{id}"), None);
    assert_eq!(r.status(), 200);
    let body: Value = r.json().unwrap();
    assert_eq!(body["purged"], true);
    assert_eq!(body["organization_name"], "Purge Me");
    assert_eq!(tenants(&gw), 0);
    assert!(deleted(&gw).is_empty());
    assert_problem(
        restore(&gw, &id, None),
        404,
        "deleted_organization_not_found",
    );
    assert_eq!(
        event_types(&gw, &id),
        [
            "organization.created",
            "admin.login_succeeded",
            "organization.deleted",
            "organization.purged"
        ]
    );
    assert_problem(
        ops(&gw, Method::DELETE, &format!("/ops/deleted/{id}"), None),
        404,
        "deleted_organization_not_found",
    );
    let ev = events(&gw, "organization.purged");
    assert_eq!(ev.len(), 1, "{ev:?}");
    assert_eq!(ev[0]["actor"]["type"], "operator");
    // a new organization of that name starts empty
    let again = gw.org_with_token("Purge Me", "purge@example.com");
    assert_eq!(count(&gw, &again), 0);
}

#[test]
fn bad_ids_names_and_cursors_are_400() {
    let gw = gateway("");
    for path in [
        "/ops/deleted/not-an-id/restore",
        "/ops/deleted/0190c1d2-0000-7000-8000-00000000000%24/restore",
    ] {
        assert_problem(
            ops(&gw, Method::POST, path, None),
            400,
            "invalid_organization_id",
        );
    }
    assert_problem(
        ops(&gw, Method::DELETE, "/ops/deleted/nope", None),
        400,
        "invalid_organization_id",
    );
    let unknown = "0190c1d2-0000-7000-8000-000000000000";
    assert_problem(
        restore(&gw, unknown, None),
        404,
        "deleted_organization_not_found",
    );
    assert_problem(
        ops(
            &gw,
            Method::DELETE,
            &format!("/ops/deleted/{unknown}"),
            None,
        ),
        404,
        "deleted_organization_not_found",
    );
    let t = gw.org_with_token("Named", "named@example.com");
    let id = delete(&gw, "Named", &t)["organization_id"]
        .as_str()
        .unwrap()
        .to_owned();
    for body in [
        json!({"organization_name": "bad$name"}),
        json!({"organization_name": ""}),
        json!({"organization_name": 5}),
        json!({"unknown": "x"}),
        json!([1]),
    ] {
        let r = restore(&gw, &id, Some(body.clone()));
        assert_eq!(r.status(), 400, "{body}");
    }
    for q in ["limit=0", "limit=1001", "limit=x", "cursor=abc"] {
        let r = ops(&gw, Method::GET, &format!("/ops/deleted?{q}"), None);
        assert_eq!(r.status(), 400, "{q}");
    }
    // nothing of the request reached the log
    assert!(!gw.log_contains("bad$name"));
    assert!(!gw.log_contains("not-an-id"));
    // still restorable after all that
    assert_eq!(restore(&gw, &id, Some(json!(null))).status(), 200);
}

#[test]
fn deleted_organizations_are_listed_a_page_at_a_time() {
    let gw = gateway("");
    let mut ids = Vec::new();
    for i in 0..3 {
        let name = format!("Paged {i}");
        let t = gw.org_with_token(&name, &format!("paged{i}@example.com"));
        ids.push(
            delete(&gw, &name, &t)["organization_id"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    ids.sort();
    let r = ops(&gw, Method::GET, "/ops/deleted?limit=2", None);
    let page: Value = r.json().unwrap();
    let first: Vec<&str> = page["organizations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["organization_id"].as_str().unwrap())
        .collect();
    assert_eq!(first, [ids[0].as_str(), ids[1].as_str()]);
    let cursor = page["next_cursor"].as_str().unwrap();
    let r = ops(
        &gw,
        Method::GET,
        &format!("/ops/deleted?limit=2&cursor={cursor}"),
        None,
    );
    let page: Value = r.json().unwrap();
    assert_eq!(page["organizations"].as_array().unwrap().len(), 1);
    assert_eq!(page["organizations"][0]["organization_id"], ids[2].as_str());
    assert!(page["next_cursor"].is_null());
}

#[test]
fn the_sweeper_purges_after_the_retention() {
    // about 2.6 seconds
    let gw = gateway("[lifecycle]\nretention_days = 0.00003\npurge_interval_seconds = 0.2\n");
    let t = gw.org_with_token("Short Lived", "short@example.com");
    insert(&gw, &t, 5, "s");
    let id = delete(&gw, "Short Lived", &t)["organization_id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(deleted(&gw).len(), 1);
    let started = Instant::now();
    while !deleted(&gw).is_empty() {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "not purged after its retention"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        started.elapsed() > Duration::from_secs(1),
        "purged too early"
    );
    assert_problem(
        restore(&gw, &id, None),
        404,
        "deleted_organization_not_found",
    );
    let started = Instant::now();
    let ev = loop {
        let ev = events(&gw, "organization.purged");
        if !ev.is_empty() || started.elapsed() > Duration::from_secs(10) {
            break ev;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(ev.len(), 1, "{ev:?}");
    assert_eq!(ev[0]["organization_id"], id.as_str());
    assert_eq!(ev[0]["actor"]["type"], "system");
    assert_eq!(tenants(&gw), 0);
}

/// Killed right after the delete's catalog step (before the data is set aside): after the
/// restart the name is free, a new organization of that name starts empty, and the deleted
/// one comes back whole under another name.
#[test]
fn a_delete_interrupted_before_its_data_is_set_aside_loses_nothing() {
    let mut gw = TestGateway::start_with(Options {
        config: format!("[ops]\ntoken = \"{TOKEN}\"\n"),
        env: vec![("GATEWAY_FAILPOINT".into(), "delete_after_catalog".into())],
        ..Default::default()
    });
    let t = gw.org_with_token("Crashy", "crashy@example.com");
    insert(&gw, &t, 300, "c");
    let sent = gw
        .req(Method::DELETE, "/org/delete?organization_name=Crashy")
        .bearer_auth(&t)
        .send();
    assert!(sent.is_err(), "the process should have died mid-delete");
    assert!(gw.wait_exit(Duration::from_secs(10)));
    gw.env.clear();
    gw.restart();
    assert_eq!(get_status(&gw, "Crashy"), 404);
    let fresh = gw.org_with_token("Crashy", "crashy-new@example.com");
    assert_eq!(count(&gw, &fresh), 0);
    let listed = deleted(&gw);
    assert_eq!(listed.len(), 1);
    let id = listed[0]["organization_id"].as_str().unwrap().to_owned();
    let r = restore(&gw, &id, Some(json!({"organization_name": "Crashy Back"})));
    assert_eq!(r.status(), 200);
    let t = token(&gw, "crashy@example.com", "password123");
    assert_eq!(count(&gw, &t), 300);
    assert_eq!(count(&gw, &fresh), 0);
}

/// A gateway armed with `failpoint`, where organization `name` (admin
/// `<first word>@example.com`, `docs` documents) was just soft-deleted; and its id.
fn deleted_with_failpoint(failpoint: &str, name: &str, docs: usize) -> (TestGateway, String) {
    let gw = TestGateway::start_with(Options {
        config: format!("[ops]\ntoken = \"{TOKEN}\"\n"),
        env: vec![("GATEWAY_FAILPOINT".into(), failpoint.into())],
        ..Default::default()
    });
    let email = format!(
        "{}@example.com",
        name.split(' ').next().unwrap().to_lowercase()
    );
    let t = gw.org_with_token(name, &email);
    insert(&gw, &t, docs, "x");
    let id = delete(&gw, name, &t)["organization_id"]
        .as_str()
        .unwrap()
        .to_owned();
    (gw, id)
}

/// Sends an operator request the armed failpoint must kill the process in, then restarts it
/// without the failpoint.
fn crash_on(gw: &mut TestGateway, method: Method, path: &str) {
    let sent = gw
        .client
        .request(method, format!("{}{path}", gw.ops))
        .bearer_auth(TOKEN)
        .send();
    assert!(sent.is_err(), "the process should have died at {path}");
    assert!(gw.wait_exit(Duration::from_secs(10)));
    gw.env.clear();
    gw.restart();
}

/// Killed right after a restore's catalog step: the restart finishes it (the data moves back).
#[test]
fn a_restore_interrupted_after_its_catalog_step_is_finished_at_restart() {
    let (mut gw, id) = deleted_with_failpoint("restore_after_catalog", "Phoenix", 100);
    crash_on(&mut gw, Method::POST, &format!("/ops/deleted/{id}/restore"));
    let started = Instant::now();
    loop {
        let r = ops(&gw, Method::GET, "/ops/orgs?prefix=phoenix", None);
        let page: Value = r.json().unwrap();
        if page["organizations"][0]["placement"]["state"] == "active" {
            assert_eq!(
                page["organizations"][0]["placement"]["collection"],
                "org_phoenix"
            );
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(60), "{page}");
        std::thread::sleep(Duration::from_millis(250));
    }
    let t = token(&gw, "phoenix@example.com", "password123");
    assert_eq!(count(&gw, &t), 100);
    assert!(deleted(&gw).is_empty());
    // Journaled with the restore, written by the recovery that completed it: once.
    assert_eq!(
        event_types(&gw, &id),
        [
            "organization.created",
            "admin.login_succeeded",
            "organization.deleted",
            "organization.restored",
            "admin.login_succeeded"
        ]
    );
}

/// The types of an organization's events, oldest first.
fn event_types(gw: &TestGateway, id: &str) -> Vec<String> {
    let page: Value = ops(
        gw,
        Method::GET,
        &format!("/ops/events?organization={id}"),
        None,
    )
    .json()
    .unwrap();
    page["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["type"].as_str().unwrap().to_owned())
        .collect()
}

/// Killed right after a purge's catalog step (before the drop): the restart drops the kept
/// data, and nothing counts it any more.
#[test]
fn a_purge_interrupted_before_its_drop_is_finished_at_restart() {
    let (mut gw, id) = deleted_with_failpoint("purge_after_catalog", "Half Purged", 20);
    crash_on(&mut gw, Method::DELETE, &format!("/ops/deleted/{id}"));
    assert!(deleted(&gw).is_empty());
    assert_problem(
        restore(&gw, &id, None),
        404,
        "deleted_organization_not_found",
    );
    assert_eq!(
        event_types(&gw, &id),
        [
            "organization.created",
            "admin.login_succeeded",
            "organization.deleted",
            "organization.purged"
        ]
    );
    // the restart's capacity reconciliation counts what the store holds: nothing is left
    assert_eq!(tenants(&gw), 0);
    let again = gw.org_with_token("Half Purged", "half@example.com");
    assert_eq!(count(&gw, &again), 0);
}
