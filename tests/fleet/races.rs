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
