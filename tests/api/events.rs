//! Audit events: `GET /org/events` for an organization's admins, `GET /ops/events` for
//! operators.

use crate::gateway::{assert_problem, Options, TestGateway};
use reqwest::blocking::Response;
use reqwest::Method;
use serde_json::{json, Value};

const OPS_TOKEN: &str = "operator-token-for-events-0123456789";

fn gateway() -> TestGateway {
    TestGateway::start_with(Options {
        config: format!("[ops]\ntoken = \"{OPS_TOKEN}\"\n"),
        ..Default::default()
    })
}

fn org_events(gw: &TestGateway, token: &str, query: &str) -> Response {
    gw.req(Method::GET, &format!("/org/events{query}"))
        .bearer_auth(token)
        .send()
        .unwrap()
}

fn ops_events(gw: &TestGateway, query: &str) -> Response {
    gw.client
        .get(format!("{}/ops/events{query}", gw.ops))
        .bearer_auth(OPS_TOKEN)
        .send()
        .unwrap()
}

fn types(page: &Value) -> Vec<String> {
    page["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["type"].as_str().unwrap().to_owned())
        .collect()
}

fn token(r: Response) -> String {
    assert_eq!(r.status(), 200);
    r.json::<Value>().unwrap()["access_token"]
        .as_str()
        .unwrap()
        .to_owned()
}

#[test]
fn an_organizations_changes_are_its_events_oldest_first() {
    let gw = gateway();
    let r = gw.create_org("Audit Co", "first@audit.example", "password123");
    assert_eq!(r.status(), 201);
    let create_request = r.headers()["x-request-id"].to_str().unwrap().to_owned();
    let org_id = r.json::<Value>().unwrap()["organization_id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_problem(
        gw.login("first@audit.example", "wrong-password"),
        401,
        "invalid_credentials",
    );
    let t = token(gw.login("first@audit.example", "password123"));
    let r = gw
        .req(Method::POST, "/org/admins")
        .bearer_auth(&t)
        .json(&json!({"email": "second@audit.example", "password": "password123"}))
        .send()
        .unwrap();
    assert_eq!(r.status(), 201);
    let second = r.json::<Value>().unwrap()["admin_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let r = gw
        .req(Method::DELETE, &format!("/org/admins/{second}"))
        .bearer_auth(&t)
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = gw
        .req(Method::PUT, "/org/update")
        .bearer_auth(&t)
        .json(&json!({"organization_name": "Audit Co", "new_organization_name": "Audit Two", "email": "boss@audit.example", "password": "a-new-password"}))
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    let t = token(gw.login("boss@audit.example", "a-new-password"));
    let r = gw
        .client
        .put(format!("{}/ops/orgs/Audit%20Two/limits", gw.ops))
        .bearer_auth(OPS_TOKEN)
        .json(&json!({"requests_per_minute": 50, "requests_per_hour": 500}))
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    // Another organization's events are not these.
    let other = gw.org_with_token("Elsewhere", "else@audit.example");

    let r = org_events(&gw, &t, "");
    assert_eq!(r.status(), 200);
    assert!(r.headers().contains_key("ratelimit"));
    let text = r.text().unwrap();
    for secret in [
        "password123",
        "a-new-password",
        "argon2",
        "access_token",
        &t,
    ] {
        assert!(!text.contains(secret), "{secret} in {text}");
    }
    let page: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(
        types(&page),
        [
            "organization.created",
            "admin.login_failed",
            "admin.login_succeeded",
            "admin.created",
            "admin.deleted",
            // A rename's credentials are stored before its data moves, the name last.
            "organization.updated",
            "admin.password_changed",
            "organization.renamed",
            "admin.login_succeeded",
            "limits.changed",
        ]
    );
    assert_eq!(page["next_cursor"], Value::Null);
    let events = page["events"].as_array().unwrap();
    let created = &events[0];
    assert_eq!(created["organization_id"], org_id.as_str());
    assert_eq!(created["request_id"], create_request.as_str());
    assert_eq!(created["actor"]["type"], "admin");
    assert_eq!(created["details"]["organization_name"], "Audit Co");
    assert_eq!(events[1]["actor"], json!({"type": "system"}));
    assert_eq!(
        events[7]["details"],
        json!({"from": "Audit Co", "to": "Audit Two"})
    );
    assert_eq!(events[9]["actor"], json!({"type": "operator"}));
    assert_eq!(
        events[9]["details"]["override"],
        json!({"requests_per_minute": 50, "requests_per_hour": 500})
    );
    let mut ids: Vec<&str> = events.iter().map(|e| e["id"].as_str().unwrap()).collect();
    let in_order = ids.clone();
    ids.sort();
    assert_eq!(ids, in_order, "ids are time-ordered");

    // A type, and pages of three.
    let failed: Value = org_events(&gw, &t, "?type=admin.login_failed")
        .json()
        .unwrap();
    assert_eq!(types(&failed), ["admin.login_failed"]);
    let mut seen = Vec::new();
    let mut cursor = String::new();
    loop {
        let page: Value = org_events(&gw, &t, &format!("?limit=3{cursor}"))
            .json()
            .unwrap();
        seen.extend(types(&page));
        match page["next_cursor"].as_str() {
            Some(c) => cursor = format!("&cursor={c}"),
            None => break,
        }
    }
    assert_eq!(seen.len(), 10);
    let theirs: Value = org_events(&gw, &other, "").json().unwrap();
    assert_eq!(
        types(&theirs),
        ["organization.created", "admin.login_succeeded"]
    );

    for (query, code) in [
        ("?type=nope", "invalid_query"),
        ("?limit=0", "invalid_query"),
        ("?limit=1001", "invalid_query"),
        ("?cursor=not-a-cursor", "invalid_cursor"),
        (
            "?cursor=0190C1D2-0000-7000-8000-000000000000",
            "invalid_cursor",
        ),
    ] {
        assert_problem(org_events(&gw, &t, query), 400, code);
    }
    assert_problem(org_events(&gw, "bad", ""), 401, "unauthorized");
    let metrics = gw
        .client
        .get(format!("{}/metrics", gw.ops))
        .send()
        .unwrap()
        .text()
        .unwrap();
    assert!(
        metrics.contains(
            "org_gateway_audit_events_total{outcome=\"written\",type=\"organization.created\"} 2"
        ),
        "{metrics}"
    );
}

#[test]
fn operators_read_every_organizations_events_also_after_a_delete() {
    let gw = gateway();
    let t = gw.org_with_token("Gone Soon", "gone@audit.example");
    gw.org_with_token("Staying", "stay@audit.example");
    let id = org_events(&gw, &t, "").json::<Value>().unwrap()["events"][0]["organization_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let by_name: Value = ops_events(&gw, "?organization=gone%20soon").json().unwrap();
    assert_eq!(
        types(&by_name),
        ["organization.created", "admin.login_succeeded"]
    );
    let r = gw
        .req(Method::DELETE, "/org/delete?organization_name=Gone%20Soon")
        .bearer_auth(&t)
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    let by_id: Value = ops_events(&gw, &format!("?organization={id}"))
        .json()
        .unwrap();
    assert_eq!(
        types(&by_id),
        [
            "organization.created",
            "admin.login_succeeded",
            "organization.deleted"
        ]
    );
    let all: Value = ops_events(&gw, "").json().unwrap();
    assert_eq!(all["events"].as_array().unwrap().len(), 5);
    let created: Value = ops_events(&gw, "?type=organization.created&limit=1")
        .json()
        .unwrap();
    assert_eq!(types(&created), ["organization.created"]);
    let cursor = created["next_cursor"].as_str().unwrap().to_owned();
    let next: Value = ops_events(&gw, &format!("?type=organization.created&cursor={cursor}"))
        .json()
        .unwrap();
    assert_eq!(next["events"][0]["details"]["organization_name"], "Staying");
    // A time window: nothing before the first event, everything up to now.
    let first_at = all["events"][0]["at"].as_str().unwrap().to_owned();
    let until: Value = ops_events(&gw, "?until=2000-01-01T00:00:00Z")
        .json()
        .unwrap();
    assert!(until["events"].as_array().unwrap().is_empty());
    let since: Value = ops_events(&gw, &format!("?since={}", first_at.replace('+', "%2B")))
        .json()
        .unwrap();
    assert_eq!(since["events"].as_array().unwrap().len(), 5);
    for (query, status, code) in [
        ("?organization=Nobody", 404, "organization_not_found"),
        ("?organization=%24", 400, "validation_failed"),
        ("?since=yesterday", 400, "invalid_query"),
        ("?type=organization.exploded", 400, "invalid_query"),
        ("?cursor=x", 400, "invalid_cursor"),
    ] {
        assert_problem(ops_events(&gw, query), status, code);
    }
    let r = gw
        .client
        .get(format!("{}/ops/events", gw.ops))
        .bearer_auth(&t)
        .send()
        .unwrap();
    assert_problem(r, 401, "unauthorized");
}

/// A process killed right after a change committed, before anything else ran (on MongoDB:
/// with its event still in the changed document's outbox), leaves the event in the log after
/// the restart, once: an admin added, an admin removed, a limit changed, an organization
/// deleted.
#[test]
fn a_change_interrupted_right_after_its_commit_has_its_event_once() {
    let mut gw = gateway();
    let t = gw.org_with_token("Interrupted", "first@interrupted.example");
    let org_id = org_events(&gw, &t, "").json::<Value>().unwrap()["events"][0]["organization_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let crash_at = |gw: &mut TestGateway, point: &str, send: &dyn Fn(&TestGateway) -> bool| {
        gw.env = vec![("GATEWAY_FAILPOINT".into(), point.into())];
        gw.restart();
        assert!(!send(gw), "the process should have died after the change");
        assert!(gw.wait_exit(std::time::Duration::from_secs(10)));
        gw.env.clear();
        gw.restart();
    };
    let once = |gw: &TestGateway, kind: &str| {
        let page: Value = ops_events(gw, &format!("?organization={org_id}&type={kind}"))
            .json()
            .unwrap();
        assert_eq!(types(&page), [kind], "{page}");
        page["events"][0].clone()
    };

    crash_at(&mut gw, "catalog_after_change", &|gw| {
        gw.req(Method::POST, "/org/admins")
            .bearer_auth(&t)
            .json(&json!({"email": "second@interrupted.example", "password": "password123"}))
            .send()
            .is_ok()
    });
    let added = once(&gw, "admin.created");
    assert_eq!(added["details"]["email"], "second@interrupted.example");
    let admins: Value = gw
        .req(Method::GET, "/org/admins")
        .bearer_auth(&t)
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(admins["admins"].as_array().unwrap().len(), 2, "{admins}");

    // A removal killed after its seat was given up, before the admin's document went (a
    // MongoDB catalog's two steps; one transaction on the embedded one).
    let second = added["details"]["admin_id"].as_str().unwrap().to_owned();
    let point = if crate::gateway::on_mongodb() {
        "admin_removal_after_seat"
    } else {
        "catalog_after_change"
    };
    crash_at(&mut gw, point, &|gw| {
        gw.req(Method::DELETE, &format!("/org/admins/{second}"))
            .bearer_auth(&t)
            .send()
            .is_ok()
    });
    let removed = once(&gw, "admin.deleted");
    assert_eq!(removed["details"]["admin_id"], second.as_str());
    let admins: Value = gw
        .req(Method::GET, "/org/admins")
        .bearer_auth(&t)
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(admins["admins"].as_array().unwrap().len(), 1, "{admins}");
    assert_eq!(
        gw.login("second@interrupted.example", "password123")
            .status(),
        401
    );

    crash_at(&mut gw, "catalog_after_change", &|gw| {
        gw.client
            .put(format!("{}/ops/orgs/Interrupted/limits", gw.ops))
            .bearer_auth(OPS_TOKEN)
            .json(&json!({"requests_per_minute": 70, "requests_per_hour": 700}))
            .send()
            .is_ok()
    });
    once(&gw, "limits.changed");

    crash_at(&mut gw, "catalog_after_change", &|gw| {
        gw.req(Method::DELETE, "/org/delete?organization_name=Interrupted")
            .bearer_auth(&t)
            .send()
            .is_ok()
    });
    let deleted = once(&gw, "organization.deleted");
    assert!(
        deleted["details"]["restorable_until"].is_string(),
        "{deleted}"
    );
    // A second read copies nothing again.
    once(&gw, "admin.created");
}

/// The TTL indexes on a MongoDB catalog's `events` collection: (name, expireAfterSeconds).
fn ttl_indexes(uri: &str, db: &str) -> Vec<(String, Option<u64>)> {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        use futures_util::TryStreamExt;
        let client = mongodb::Client::with_uri_str(uri).await.unwrap();
        let indexes: Vec<mongodb::IndexModel> = client
            .database(db)
            .collection::<bson::Document>("events")
            .list_indexes()
            .await
            .unwrap()
            .try_collect()
            .await
            .unwrap();
        client.shutdown().await;
        indexes
            .into_iter()
            .filter_map(|i| {
                let o = i.options?;
                o.expire_after
                    .map(|d| (o.name.unwrap_or_default(), Some(d.as_secs())))
            })
            .collect()
    })
}

/// On a MongoDB catalog the server expires audit events too: a gateway keeps a TTL index on
/// their time at `lifecycle.event_retention_days`, and none with `event_ttl_index = false`
/// (which the other tests run with).
#[test]
fn a_mongodb_catalog_keeps_a_ttl_index_at_the_event_retention_unless_turned_off() {
    let Some(uri) = crate::mongo_env::uri() else {
        return;
    };
    for on in [true, false] {
        let db = crate::mongo_env::unique_db("evttl");
        let gw = TestGateway::start_with(Options {
            config: format!(
                "[lifecycle]\nevent_retention_days = 7\n\
                 [catalog]\nkind = \"mongodb\"\nuri = \"{uri}\"\ndatabase = \"{db}\"\n\
                 recovery_grace_seconds = 0\n"
            ),
            env: vec![(
                "ORG_GATEWAY_LIFECYCLE__EVENT_TTL_INDEX".into(),
                on.to_string(),
            )],
            ..Default::default()
        });
        gw.org_with_token("Ttl Co", "ttl@example.com");
        let started = std::time::Instant::now();
        let want = vec![("retention".to_owned(), Some(7 * 86_400))];
        if on {
            while ttl_indexes(&uri, &db) != want {
                assert!(
                    started.elapsed() < std::time::Duration::from_secs(20),
                    "{:?}\n{}",
                    ttl_indexes(&uri, &db),
                    gw.log()
                );
                std::thread::sleep(std::time::Duration::from_millis(200));
            }
        } else {
            // The start-up work that would have set it is done once the first event is.
            std::thread::sleep(std::time::Duration::from_millis(500));
            assert_eq!(ttl_indexes(&uri, &db), vec![]);
        }
        drop(gw);
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(crate::mongo_env::drop_db(&uri, &db));
    }
}
