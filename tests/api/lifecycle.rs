use crate::gateway::{assert_problem, TestGateway};
use reqwest::Method;
use serde_json::Value;
use std::sync::Arc;
use std::time::Duration;

#[test]
fn fifty_parallel_creates_of_one_name_yield_one_winner() {
    let gw = Arc::new(TestGateway::start());
    let handles: Vec<_> = (0..50)
        .map(|i| {
            let gw = gw.clone();
            std::thread::spawn(move || {
                let name = if i % 2 == 0 {
                    "Race Corp"
                } else {
                    "race   CORP"
                };
                gw.create_org(name, &format!("racer{i}@example.com"), "password123")
                    .status()
                    .as_u16()
            })
        })
        .collect();
    let statuses: Vec<u16> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    assert_eq!(
        statuses.iter().filter(|s| **s == 201).count(),
        1,
        "{statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|s| **s == 409).count(),
        49,
        "{statuses:?}"
    );
}

#[test]
fn restart_on_the_same_data_dir_keeps_everything() {
    let mut gw = TestGateway::start();
    let token = gw.org_with_token("Durable", "durable@example.com");
    let created: Value = gw
        .req(Method::GET, "/org/get?organization_name=Durable")
        .send()
        .unwrap()
        .json()
        .unwrap();
    gw.restart();
    let after: Value = gw
        .req(Method::GET, "/org/get?organization_name=Durable")
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(created, after);
    // the signing key persisted, so old tokens still verify
    let r = gw
        .req(Method::GET, "/org/get?organization_name=Durable")
        .bearer_auth(&token)
        .send()
        .unwrap();
    assert_eq!(
        r.json::<Value>().unwrap()["admin_email"],
        "durable@example.com"
    );
    assert_eq!(gw.login("durable@example.com", "password123").status(), 200);
    let r = gw.create_org("durable", "other@example.com", "password123");
    assert_problem(r, 409, "organization_exists");
}

#[test]
fn sigterm_finishes_in_flight_requests_and_exits_promptly() {
    let mut gw = TestGateway::start();
    gw.create_org("Graceful", "graceful@example.com", "password123");
    // A login spends an argon2 verify: start several, then SIGTERM while they run.
    let base = gw.base.clone();
    let inflight: Vec<_> = (0..4)
        .map(|_| {
            let url = format!("{base}/admin/login");
            std::thread::spawn(move || {
                reqwest::blocking::Client::new()
                    .post(url)
                    .json(&serde_json::json!({"email": "graceful@example.com", "password": "password123"}))
                    .send()
                    .map(|r| r.status().as_u16())
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(30));
    let (took, code) = gw.terminate();
    assert_eq!(code, Some(0), "exit code");
    assert!(took < Duration::from_secs(8), "took {took:?}");
    for h in inflight {
        // Each request either completed (200) or was never accepted; none is cut mid-way.
        match h.join().unwrap() {
            Ok(status) => assert_eq!(status, 200),
            Err(e) => assert!(e.is_connect() || e.is_request(), "{e}"),
        }
    }
}

#[test]
fn health_and_readiness() {
    let gw = TestGateway::start();
    let r = gw
        .client
        .get(format!("{}/healthz", gw.base))
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = gw.client.get(format!("{}/readyz", gw.ops)).send().unwrap();
    assert_eq!(r.status(), 200);
    let b: Value = r.json().unwrap();
    assert_eq!(b["ready"], true);
    assert_eq!(b["shards"][0]["id"], crate::gateway::default_shard());
    assert_eq!(b["shards"][0]["up"], true);
}

#[test]
fn secrets_never_reach_the_log() {
    let gw = TestGateway::start();
    let token = gw.org_with_token("Quiet", "quiet@example.com");
    assert!(gw.log_contains("/org/create"));
    let log = gw.log();
    assert!(!log.contains("password123"));
    assert!(!log.contains(&token));
    assert!(!log.contains("$argon2id$"));
    assert!(
        log.contains("route=\"/org/create\"") || log.contains("route=/org/create"),
        "{log}"
    );
}

#[test]
fn password_hashing_overload_is_refused_at_once_with_503() {
    let gw = Arc::new(TestGateway::start_with(crate::gateway::Options {
        config: "[auth]\nhash_concurrency = 1\nhash_queue_limit = 1\n".into(),
        ..Default::default()
    }));
    let handles: Vec<_> = (0..12)
        .map(|i| {
            let gw = gw.clone();
            std::thread::spawn(move || {
                let r = gw.create_org(
                    &format!("Crowd {i}"),
                    &format!("crowd{i}@example.com"),
                    "password123",
                );
                // Spread over 1 to 3 s, so refused clients do not come back together.
                let retry = r
                    .headers()
                    .get("retry-after")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse::<u64>().ok())
                    .is_some_and(|s| (1..=3).contains(&s));
                let body: Value = r.json().unwrap();
                (
                    body["code"].as_str().map(str::to_owned),
                    retry,
                    body["organization_name"].is_string(),
                )
            })
        })
        .collect();
    let results: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    let refused = results
        .iter()
        .filter(|(code, retry, _)| code.as_deref() == Some("overloaded") && *retry)
        .count();
    let created = results.iter().filter(|(_, _, ok)| *ok).count();
    assert!(refused >= 1, "{results:?}");
    assert!(created >= 1, "{results:?}");
    assert_eq!(refused + created, 12, "{results:?}");
    // refused creates left nothing behind: their names are free
    for (i, (_, _, ok)) in results.iter().enumerate() {
        let status = gw
            .req(
                Method::GET,
                &format!("/org/get?organization_name=Crowd%20{i}"),
            )
            .send()
            .unwrap()
            .status();
        assert_eq!(status == 200, *ok);
    }
}

#[test]
fn json_logs_carry_the_request_id_on_every_line_of_a_request() {
    let gw = TestGateway::start_with(crate::gateway::Options {
        config: "[log]\nformat = \"json\"\n".into(),
        ..Default::default()
    });
    let r = gw
        .req(Method::POST, "/org/create")
        .header("x-request-id", "trace-me-123")
        .json(&serde_json::json!({"organization_name": "Traced", "email": "traced@example.com", "password": "password123"}))
        .send()
        .unwrap();
    assert_eq!(r.status(), 201);
    assert!(gw.log_contains("\"message\":\"request\",\"request_id\":\"trace-me-123\""));
    let lines: Vec<Value> = gw
        .log()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .filter(|v: &Value| v.to_string().contains("trace-me-123"))
        .collect();
    let messages: Vec<&str> = lines.iter().filter_map(|v| v["message"].as_str()).collect();
    assert!(messages.contains(&"organization created"), "{messages:?}");
    assert!(messages.contains(&"request"), "{messages:?}");
}

/// A writer hammering an organization while it is deleted (on one instance, both backends):
/// no write lands after the delete, and a new organization with the same name starts empty.
#[test]
fn writes_racing_a_delete_never_reach_the_next_org_of_that_name() {
    let gw = Arc::new(TestGateway::start_with(crate::gateway::Options {
        config: "[limits]\nrequests_per_minute = 1000000\nrequests_per_hour = 100000000\n".into(),
        ..Default::default()
    }));
    for round in 0..3 {
        let token = gw.org_with_token("Racing", &format!("r{round}@example.com"));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let writers: Vec<_> = (0..2)
            .map(|w| {
                let (gw, token, stop) = (gw.clone(), token.clone(), stop.clone());
                std::thread::spawn(move || {
                    let mut last = 0;
                    let mut i = 0;
                    while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                        i += 1;
                        last = gw
                            .req(Method::POST, "/data")
                            .bearer_auth(&token)
                            .json(&serde_json::json!({"_id": format!("w{w}-{i}")}))
                            .send()
                            .unwrap()
                            .status()
                            .as_u16();
                    }
                    last
                })
            })
            .collect();
        std::thread::sleep(Duration::from_millis(200));
        let r = gw
            .req(Method::DELETE, "/org/delete?organization_name=Racing")
            .bearer_auth(&token)
            .send()
            .unwrap();
        assert_eq!(r.status(), 200);
        std::thread::sleep(Duration::from_millis(200));
        stop.store(true, std::sync::atomic::Ordering::SeqCst);
        for w in writers {
            assert_eq!(w.join().unwrap(), 401, "writes continued after the delete");
        }
        let fresh = gw.org_with_token("Racing", &format!("fresh{round}@example.com"));
        let r = gw
            .req(Method::POST, "/data/count")
            .bearer_auth(&fresh)
            .json(&serde_json::json!({}))
            .send()
            .unwrap();
        assert_eq!(r.json::<Value>().unwrap()["count"], 0, "round {round}");
        let r = gw
            .req(Method::DELETE, "/org/delete?organization_name=Racing")
            .bearer_auth(&fresh)
            .send()
            .unwrap();
        assert_eq!(r.status(), 200);
    }
}

/// With a rename held right after its fence, the tenant's writes on the same instance get 503
/// (never land in the collection being renamed); with a delete held there, they get 401.
#[test]
fn during_a_fenced_rename_or_delete_writes_wait_or_fail() {
    for (point, status) in [("rename_after_fence", 503), ("delete_after_fence", 401)] {
        let gw = Arc::new(TestGateway::start_with(crate::gateway::Options {
            env: vec![
                ("GATEWAY_PAUSEPOINT".into(), point.into()),
                ("GATEWAY_PAUSE_MS".into(), "1500".into()),
            ],
            ..Default::default()
        }));
        let token = gw.org_with_token("Held", "held@example.com");
        let change = {
            let (gw, token) = (gw.clone(), token.clone());
            std::thread::spawn(move || {
                let r = if point.starts_with("rename") {
                    gw.req(Method::PUT, "/org/update")
                        .bearer_auth(&token)
                        .json(&serde_json::json!({"organization_name": "Held", "new_organization_name": "Moved"}))
                        .send()
                } else {
                    gw.req(Method::DELETE, "/org/delete?organization_name=Held")
                        .bearer_auth(&token)
                        .send()
                };
                r.unwrap().status().as_u16()
            })
        };
        std::thread::sleep(Duration::from_millis(600));
        let r = gw
            .req(Method::POST, "/data")
            .bearer_auth(&token)
            .json(&serde_json::json!({"_id": "during"}))
            .send()
            .unwrap();
        assert_eq!(r.status().as_u16(), status, "{point}");
        assert_eq!(change.join().unwrap(), 200, "{point}");
    }
}
