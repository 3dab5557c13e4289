//! Rate limits and login throttling shared by two gateways through Redis
//! (`limits.store = "redis"`), and what happens when Redis goes away and comes back.

use crate::cluster::{Fleet, OPS_TOKEN};
use crate::gateway::{assert_problem, TestGateway};
use crate::mongo_env;
use crate::redis_env::{self, RedisServer};
use reqwest::blocking::Response;
use reqwest::Method;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

/// `[limits]` for a fleet sharing limits through `redis_url`, on keys of its own.
fn redis_limits(redis_url: &str, extra: &str) -> String {
    format!(
        "store = \"redis\"\nredis_url = \"{redis_url}\"\nredis_key_prefix = \"{}\"\n{extra}",
        redis_env::unique_prefix()
    )
}

fn count(gw: &TestGateway, token: &str) -> Response {
    gw.req(Method::POST, "/data/count")
        .bearer_auth(token)
        .json(&json!({}))
        .send()
        .unwrap()
}

/// Sends `n` requests alternating between the instances; returns which were admitted.
fn alternate(fleet: &Fleet, token: &str, n: usize) -> Vec<bool> {
    (0..n)
        .map(|i| {
            let gw = &fleet.gateways[i % fleet.gateways.len()];
            let r = count(gw, token);
            assert!(r.headers().contains_key("ratelimit-policy"));
            assert!(r.headers().contains_key("ratelimit"));
            match r.status().as_u16() {
                200 => true,
                429 => {
                    let retry: u64 = r.headers()["retry-after"]
                        .to_str()
                        .unwrap()
                        .parse()
                        .unwrap();
                    assert!((1..=3600).contains(&retry), "Retry-After {retry}");
                    assert_problem(r, 429, "rate_limited");
                    false
                }
                s => panic!("request {i}: unexpected status {s}: {}", r.text().unwrap()),
            }
        })
        .collect()
}

fn admitted(results: &[bool]) -> usize {
    results.iter().filter(|ok| **ok).count()
}

fn readyz(gw: &TestGateway) -> Value {
    let r = gw.client.get(format!("{}/readyz", gw.ops)).send().unwrap();
    assert_eq!(
        r.status(),
        200,
        "degraded limits do not make an instance unready"
    );
    r.json().unwrap()
}

/// The value of `family{labels}` in the instance's `/metrics` (0 when absent).
fn metric(gw: &TestGateway, series: &str) -> f64 {
    let text = gw
        .client
        .get(format!("{}/metrics", gw.ops))
        .send()
        .unwrap()
        .text()
        .unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0.0)
}

#[test]
fn twenty_requests_over_two_instances_admit_exactly_the_limit() {
    let (Some(_), Some(redis)) = (mongo_env::uri(), redis_env::url()) else {
        return;
    };
    let fleet = Fleet::start(2, &redis_limits(&redis, "requests_per_minute = 10"));
    let token = fleet.gateways[0].org_with_token("Fleet Limited", "fleet-limited@example.com");
    let results = alternate(&fleet, &token, 20);
    // In memory, each instance would have admitted 10 of its own 10.
    assert_eq!(
        results,
        [vec![true; 10], vec![false; 10]].concat(),
        "the first ten pass, on both instances; the rest are refused"
    );
    let r = count(&fleet.gateways[1], &token);
    let policy = r.headers()["ratelimit-policy"].to_str().unwrap();
    assert!(policy.contains("q=10;w=60"), "{policy}");
    let ready = readyz(&fleet.gateways[1]);
    assert_eq!(
        ready["rate_limits"],
        json!({"store": "redis", "up": true}),
        "{ready}"
    );
}

#[test]
fn an_override_set_on_one_instance_is_honoured_by_the_other() {
    let (Some(_), Some(redis)) = (mongo_env::uri(), redis_env::url()) else {
        return;
    };
    let fleet = Fleet::start(2, &redis_limits(&redis, "requests_per_minute = 10"));
    let token = fleet.gateways[0].org_with_token("Fleet Override", "fleet-override@example.com");
    let r = fleet.gateways[0]
        .client
        .put(format!(
            "{}/ops/orgs/Fleet%20Override/limits",
            fleet.gateways[0].ops
        ))
        .bearer_auth(OPS_TOKEN)
        .json(&json!({"requests_per_minute": 3, "requests_per_hour": 100}))
        .send()
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().unwrap());
    // The override reaches the other instance through the catalog's change feed.
    std::thread::sleep(std::time::Duration::from_millis(500));
    let results = alternate(&fleet, &token, 8);
    assert_eq!(results, [vec![true; 3], vec![false; 5]].concat());
    let r = count(&fleet.gateways[1], &token);
    let policy = r.headers()["ratelimit-policy"].to_str().unwrap();
    assert!(
        policy.contains("q=3;w=60") && policy.contains("q=100;w=3600"),
        "{policy}"
    );
}

#[test]
fn failed_logins_on_both_instances_are_counted_together() {
    let (Some(_), Some(redis)) = (mongo_env::uri(), redis_env::url()) else {
        return;
    };
    let limits = "login_failures_per_minute = 4\nlogin_failures_per_minute_per_address = 1000";
    let fleet = Fleet::start(2, &redis_limits(&redis, limits));
    let (a, b) = (&fleet.gateways[0], &fleet.gateways[1]);
    let email = "fleet-login@example.com";
    assert_eq!(
        a.create_org("Fleet Login", email, "password123").status(),
        201
    );
    // Two failures on each instance: fewer than 4 on either, 4 in all.
    for gw in [a, b, a, b] {
        assert_problem(
            gw.login(email, "wrong-password"),
            401,
            "invalid_credentials",
        );
    }
    for gw in [a, b] {
        // Even the right password waits now.
        let r = gw.login(email, "password123");
        let retry: u64 = r.headers()["retry-after"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!((1..=60).contains(&retry), "{retry}");
        assert_problem(r, 429, "too_many_login_attempts");
    }
    // Other emails are not affected (the per-address limit is high here).
    let other = "fleet-login-2@example.com";
    assert_eq!(
        b.create_org("Fleet Login 2", other, "password123").status(),
        201
    );
    assert_eq!(a.login(other, "password123").status(), 200);
    // A failed login's email is never logged.
    assert!(!a.log().contains(email) && !b.log().contains(email));
}

#[test]
fn without_redis_limits_fail_open_per_instance_and_come_back_with_it() {
    let (Some(_), Some(_)) = (mongo_env::uri(), redis_env::url()) else {
        return;
    };
    let Some(mut redis) = RedisServer::start() else {
        return;
    };
    let fleet = Fleet::start(2, &redis_limits(&redis.url(), "requests_per_minute = 4"));
    let (a, b) = (&fleet.gateways[0], &fleet.gateways[1]);
    let token = a.org_with_token("Fleet Outage", "fleet-outage@example.com");
    assert_eq!(admitted(&alternate(&fleet, &token, 8)), 4, "shared budget");
    let fallbacks = "org_gateway_rate_limit_fallbacks_total{check=\"rate\"}";
    assert_eq!(metric(a, fallbacks), 0.0);

    redis.kill();
    // The shared budget is spent, but each instance now decides alone, with its own budget.
    for gw in [a, b, a, b] {
        assert_eq!(count(gw, &token).status(), 200, "fail open");
    }
    assert!(metric(a, fallbacks) >= 2.0);
    assert_eq!(metric(a, "org_gateway_rate_limit_store_up"), 0.0);
    let ready = readyz(a);
    assert_eq!(ready["ready"], true, "{ready}");
    assert_eq!(
        ready["rate_limits"],
        json!({"store": "redis", "up": false}),
        "{ready}"
    );
    // Logins still work (only the throttle degrades), and never fail because of Redis.
    assert_eq!(
        b.login("fleet-outage@example.com", "password123").status(),
        200
    );

    // Back on the same port (empty): both instances find it again by themselves.
    redis.restart();
    let started = Instant::now();
    for gw in [a, b] {
        loop {
            let ready = readyz(gw);
            if ready["rate_limits"]["up"] == true {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "Redis not seen again: {ready}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    assert_eq!(metric(a, "org_gateway_rate_limit_store_up"), 1.0);
    let token = a.org_with_token("Fleet Recovered", "fleet-recovered@example.com");
    assert_eq!(
        alternate(&fleet, &token, 8),
        [vec![true; 4], vec![false; 4]].concat(),
        "shared again"
    );
}

#[test]
fn creates_per_address_are_counted_across_the_fleet() {
    let (Some(_), Some(redis)) = (mongo_env::uri(), redis_env::url()) else {
        return;
    };
    let fleet = Fleet::start(
        2,
        &redis_limits(
            &redis,
            "creates_per_minute_per_address = 3\ntrusted_proxies = [\"127.0.0.1/32\"]",
        ),
    );
    let create = |i: usize, client: &str| {
        fleet.gateways[i % 2]
            .req(Method::POST, "/org/create")
            .header("x-forwarded-for", client)
            .json(&json!({
                "organization_name": format!("Flood {i} {}", client.replace('.', "-")),
                "email": format!("flood{i}-{client}@example.com"),
                "password": "password123",
            }))
            .send()
            .unwrap()
    };
    // Alternating instances: one budget of 3 for the address, not 3 on each.
    let statuses: Vec<u16> = (0..5)
        .map(|i| create(i, "198.51.100.20").status().as_u16())
        .collect();
    assert_eq!(statuses, [201, 201, 201, 429, 429]);
    assert_eq!(create(5, "198.51.100.21").status(), 201);
}
