//! Lifecycle changes racing requests on another instance: nothing acknowledged is lost, and
//! nothing written for one organization reaches another.

use crate::cluster::{authed, Cluster};
use crate::gateway::TestGateway;
use reqwest::Method;
use serde_json::{json, Value};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// What a writer saw: the ids acknowledged (201) and every status.
#[derive(Default)]
struct Seen {
    acked: Vec<String>,
    statuses: Vec<u16>,
}

/// Inserts documents through `gw` until told to stop.
fn writer(
    gw: Arc<TestGateway>,
    token: String,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<Seen> {
    std::thread::spawn(move || {
        let mut seen = Seen::default();
        let mut i = 0;
        while !stop.load(Ordering::SeqCst) {
            i += 1;
            let id = format!("w{i:06}");
            let r = authed(&gw, Method::POST, "/data", &token)
                .json(&json!({"_id": id, "i": i}))
                .send()
                .unwrap();
            let status = r.status().as_u16();
            seen.statuses.push(status);
            if status == 201 {
                seen.acked.push(id);
            }
        }
        seen
    })
}

fn count(gw: &TestGateway, token: &str) -> u64 {
    let r = authed(gw, Method::POST, "/data/count", token)
        .json(&json!({}))
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    r.json::<Value>().unwrap()["count"].as_u64().unwrap()
}

#[test]
fn a_writer_on_b_while_a_deletes_leaves_nothing_for_a_new_org_of_the_same_name() {
    let Some(cluster) =
        Cluster::new("[limits]\nrequests_per_minute = 1000000\nrequests_per_hour = 100000000\n")
    else {
        return;
    };
    let a = cluster.start();
    let b = Arc::new(cluster.start());
    for round in 0..3 {
        let token = a.org_with_token("Doomed", &format!("old{round}@fleet.example"));
        let stop = Arc::new(AtomicBool::new(false));
        let w = writer(b.clone(), token.clone(), stop.clone());
        std::thread::sleep(Duration::from_millis(300));
        let r = authed(
            &a,
            Method::DELETE,
            "/org/delete?organization_name=Doomed",
            &token,
        )
        .send()
        .unwrap();
        assert_eq!(r.status(), 200);
        std::thread::sleep(Duration::from_millis(300));
        stop.store(true, Ordering::SeqCst);
        let seen = w.join().unwrap();
        assert!(!seen.acked.is_empty(), "the writer wrote before the delete");
        assert_ne!(
            seen.statuses.last(),
            Some(&201),
            "writes still accepted after the delete: {:?}",
            &seen.statuses[seen.statuses.len().saturating_sub(5)..]
        );
        // A new organization with the same name (hence the same collection) starts empty.
        let fresh = a.org_with_token("Doomed", &format!("new{round}@fleet.example"));
        assert_eq!(count(&a, &fresh), 0, "round {round}: documents leaked");
        assert_eq!(count(&b, &fresh), 0);
        let r = authed(
            &a,
            Method::DELETE,
            "/org/delete?organization_name=Doomed",
            &fresh,
        )
        .send()
        .unwrap();
        assert_eq!(r.status(), 200);
    }
}

#[test]
fn no_acknowledged_write_is_lost_by_a_rename_on_another_instance() {
    let Some(cluster) =
        Cluster::new("[limits]\nrequests_per_minute = 1000000\nrequests_per_hour = 100000000\n")
    else {
        return;
    };
    let a = cluster.start();
    let b = Arc::new(cluster.start());
    let token = a.org_with_token("Mover 0", "mover@fleet.example");
    let stop = Arc::new(AtomicBool::new(false));
    let w = writer(b.clone(), token.clone(), stop.clone());
    for n in 0..4 {
        std::thread::sleep(Duration::from_millis(200));
        let r = authed(&a, Method::PUT, "/org/update", &token)
            .json(&json!({
                "organization_name": format!("Mover {n}"),
                "new_organization_name": format!("Mover {}", n + 1),
            }))
            .send()
            .unwrap();
        assert_eq!(r.status(), 200, "{}", r.text().unwrap());
    }
    std::thread::sleep(Duration::from_millis(200));
    stop.store(true, Ordering::SeqCst);
    let seen = w.join().unwrap();
    assert!(
        seen.acked.len() > 10,
        "too few writes: {}",
        seen.acked.len()
    );
    // Refusals during a rename are 503 (retry), never a silent loss.
    let other: Vec<_> = seen
        .statuses
        .iter()
        .filter(|s| **s != 201 && **s != 503)
        .collect();
    assert!(other.is_empty(), "unexpected statuses: {other:?}");
    assert_eq!(count(&a, &token), seen.acked.len() as u64);
    for id in &seen.acked {
        let r = authed(&a, Method::GET, &format!("/data/{id}"), &token)
            .send()
            .unwrap();
        assert_eq!(r.status(), 200, "acknowledged write {id} lost");
    }
}

/// With the rename paused right after its fence, the other instance already refuses the
/// tenant's writes (503) rather than write where the data is leaving.
#[test]
fn after_a_rename_fence_other_instances_hold_the_tenant() {
    let Some(cluster) = Cluster::new("") else {
        return;
    };
    let a = Arc::new(cluster.start_with_env(vec![
        ("GATEWAY_PAUSEPOINT".into(), "rename_after_fence".into()),
        ("GATEWAY_PAUSE_MS".into(), "1500".into()),
    ]));
    let b = cluster.start();
    let token = a.org_with_token("Paused", "paused@fleet.example");
    let insert = |gw: &TestGateway, id: &str| {
        authed(gw, Method::POST, "/data", &token)
            .json(&json!({"_id": id}))
            .send()
            .unwrap()
            .status()
            .as_u16()
    };
    assert_eq!(insert(&b, "before"), 201);
    let renamer = {
        let (a, token) = (a.clone(), token.clone());
        std::thread::spawn(move || {
            authed(&a, Method::PUT, "/org/update", &token)
                .json(&json!({"organization_name": "Paused", "new_organization_name": "Resumed"}))
                .send()
                .unwrap()
                .status()
                .as_u16()
        })
    };
    std::thread::sleep(Duration::from_millis(700));
    assert_eq!(
        insert(&b, "during"),
        503,
        "B wrote into a collection being renamed"
    );
    assert_eq!(renamer.join().unwrap(), 200);
    assert_eq!(insert(&b, "after"), 201);
    assert_eq!(count(&b, &token), 2);
}

/// With the delete paused right after its fence (collection not dropped yet), the other
/// instance already refuses the deleted organization's token.
#[test]
fn after_a_delete_fence_other_instances_refuse_the_tenant() {
    let Some(cluster) = Cluster::new("") else {
        return;
    };
    let a = Arc::new(cluster.start_with_env(vec![
        ("GATEWAY_PAUSEPOINT".into(), "delete_after_fence".into()),
        ("GATEWAY_PAUSE_MS".into(), "1500".into()),
    ]));
    let b = cluster.start();
    let token = a.org_with_token("Gone Soon", "gone@fleet.example");
    let deleter = {
        let (a, token) = (a.clone(), token.clone());
        std::thread::spawn(move || {
            authed(
                &a,
                Method::DELETE,
                "/org/delete?organization_name=Gone%20Soon",
                &token,
            )
            .send()
            .unwrap()
            .status()
            .as_u16()
        })
    };
    std::thread::sleep(Duration::from_millis(700));
    let r = authed(&b, Method::POST, "/data", &token)
        .json(&json!({"_id": "late"}))
        .send()
        .unwrap();
    assert_eq!(
        r.status(),
        401,
        "B accepted a write for a deleted organization"
    );
    assert_eq!(deleter.join().unwrap(), 200);
}

/// An organization deleted while its drop could not run (the instance died right after the
/// fence) leaves a pending drop; renaming another organization to that name must run the drop
/// first, never merge the leftover documents into the renamed organization.
#[test]
fn a_rename_onto_a_pending_drop_never_adopts_the_leftover() {
    // A short lease and request timeout: the rename's fence waits for the killed instance.
    let Some(mut cluster) = Cluster::new("request_timeout_ms = 2000\n[fleet]\nlease_seconds = 1\n")
    else {
        return;
    };
    // No background recovery during the test: only the rename may settle the drop.
    cluster.config = cluster
        .config
        .replace("recovery_grace_seconds = 0", "recovery_grace_seconds = 300");
    let mut a = cluster.start_with_env(vec![
        ("GATEWAY_PAUSEPOINT".into(), "delete_after_fence".into()),
        ("GATEWAY_PAUSE_MS".into(), "60000".into()),
    ]);
    let old = a.org_with_token("Leftover", "leftover@fleet.example");
    for i in 0..3 {
        let r = authed(&a, Method::POST, "/data", &old)
            .json(&json!({"_id": format!("old{i}")}))
            .send()
            .unwrap();
        assert_eq!(r.status(), 201);
    }
    {
        let (url, old) = (
            format!("{}/org/delete?organization_name=Leftover", a.base),
            old.clone(),
        );
        std::thread::spawn(move || {
            let _ = reqwest::blocking::Client::new()
                .delete(url)
                .bearer_auth(old)
                .timeout(Duration::from_secs(2))
                .send();
        });
    }
    std::thread::sleep(Duration::from_millis(1000));
    // Killed between the fence and the drop: the catalog has the delete and a pending drop.
    a.kill();
    let b = cluster.start();
    let token = b.org_with_token("Other", "other@fleet.example");
    for i in 0..2 {
        let r = authed(&b, Method::POST, "/data", &token)
            .json(&json!({"_id": format!("new{i}")}))
            .send()
            .unwrap();
        assert_eq!(r.status(), 201);
    }
    let r = authed(&b, Method::PUT, "/org/update", &token)
        .json(&json!({"organization_name": "Other", "new_organization_name": "Leftover"}))
        .send()
        .unwrap();
    // 503 when the fence outlasted the request; the rename then finishes in the background.
    assert!(
        [200, 503].contains(&r.status().as_u16()),
        "{}",
        r.text().unwrap()
    );
    crate::cluster::until(
        Duration::from_secs(10),
        || {
            b.req(Method::GET, "/org/get?organization_name=Leftover")
                .send()
                .unwrap()
        },
        |r| r.status() == 200,
    );
    assert_eq!(count(&b, &token), 2, "the leftover documents were adopted");
    let r = authed(&b, Method::GET, "/data/old0", &token)
        .send()
        .unwrap();
    assert_eq!(r.status(), 404);
}

/// A collection the catalog records for no organization (written behind the gateway's back,
/// or by a writer that outlived its organization) is never adopted by a create: it is set
/// aside under a `quarantine_` name and the new organization starts empty.
#[test]
fn a_create_never_adopts_an_orphaned_collection() {
    let Some(cluster) = Cluster::new("") else {
        return;
    };
    let a = cluster.start();
    let database = format!("{}_1", cluster.prefix);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let client = rt
        .block_on(mongodb::Client::with_uri_str(&cluster.uri))
        .unwrap();
    let orphan = client
        .database(&database)
        .collection::<mongodb::bson::Document>("org_squatter");
    rt.block_on(async {
        orphan
            .insert_many([
                mongodb::bson::doc! {"_id": "x1"},
                mongodb::bson::doc! {"_id": "x2"},
            ])
            .await
    })
    .unwrap();
    let token = a.org_with_token("Squatter", "squatter@fleet.example");
    assert_eq!(count(&a, &token), 0, "the orphan's documents were adopted");
    let names = rt
        .block_on(async { client.database(&database).list_collection_names().await })
        .unwrap();
    let aside: Vec<_> = names
        .iter()
        .filter(|n| n.starts_with("quarantine_squatter_"))
        .collect();
    assert_eq!(aside.len(), 1, "{names:?}");
    let kept = rt
        .block_on(async {
            client
                .database(&database)
                .collection::<mongodb::bson::Document>(aside[0])
                .count_documents(mongodb::bson::doc! {})
                .await
        })
        .unwrap();
    assert_eq!(kept, 2, "the orphan's documents are kept for an operator");
}

/// A writer on B while A deletes the organization, then B's operator restores it: every write
/// B acknowledged before the delete is back, nothing after it was accepted, and A serves the
/// restored organization (its caches followed both changes).
#[test]
fn a_delete_on_a_and_a_restore_on_b_lose_no_acknowledged_write() {
    let Some(cluster) =
        Cluster::new("[limits]\nrequests_per_minute = 1000000\nrequests_per_hour = 100000000\n")
    else {
        return;
    };
    let a = cluster.start();
    let b = Arc::new(cluster.start());
    let token = a.org_with_token("Lazarus", "lazarus@fleet.example");
    let stop = Arc::new(AtomicBool::new(false));
    let w = writer(b.clone(), token.clone(), stop.clone());
    std::thread::sleep(Duration::from_millis(300));
    let r = authed(
        &a,
        Method::DELETE,
        "/org/delete?organization_name=Lazarus",
        &token,
    )
    .send()
    .unwrap();
    assert_eq!(r.status(), 200);
    let id = r.json::<Value>().unwrap()["organization_id"]
        .as_str()
        .unwrap()
        .to_owned();
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::SeqCst);
    let seen = w.join().unwrap();
    assert!(!seen.acked.is_empty(), "the writer wrote before the delete");
    assert_ne!(
        seen.statuses.last(),
        Some(&201),
        "writes accepted after the delete"
    );
    crate::cluster::until(
        Duration::from_secs(5),
        || {
            b.req(Method::GET, "/org/get?organization_name=Lazarus")
                .send()
                .unwrap()
        },
        |r| r.status() == 404,
    );
    let r = b
        .client
        .post(format!("{}/ops/deleted/{id}/restore", b.ops))
        .bearer_auth(crate::cluster::OPS_TOKEN)
        .send()
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().unwrap());
    let r = a.login("lazarus@fleet.example", "password123");
    assert_eq!(r.status(), 200);
    let fresh = r.json::<Value>().unwrap()["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    crate::cluster::until(
        Duration::from_secs(5),
        || {
            authed(&a, Method::POST, "/data/count", &fresh)
                .json(&json!({}))
                .send()
                .unwrap()
        },
        |r| r.status() == 200,
    );
    assert_eq!(count(&a, &fresh), seen.acked.len() as u64);
    assert_eq!(count(&b, &fresh), seen.acked.len() as u64);
    for id in [&seen.acked[0], seen.acked.last().unwrap()] {
        let r = authed(&a, Method::GET, &format!("/data/{id}"), &fresh)
            .send()
            .unwrap();
        assert_eq!(r.status(), 200, "acknowledged {id} lost");
    }
}
