use crate::gateway::{assert_problem, Options, TestGateway};
use reqwest::Method;
use serde_json::{json, Value};

#[test]
fn sixth_request_in_a_minute_is_429_and_other_orgs_are_unaffected() {
    let gw = TestGateway::start_with(Options {
        config: "[limits]\nrequests_per_minute = 5\n".into(),
        ..Default::default()
    });
    let a = gw.org_with_token("Limited A", "la@example.com");
    let b = gw.org_with_token("Limited B", "lb@example.com");
    for i in 0..5 {
        let r = gw
            .req(Method::POST, "/data/count")
            .bearer_auth(&a)
            .json(&json!({}))
            .send()
            .unwrap();
        assert_eq!(r.status(), 200, "request {i}");
        let policy = r.headers()["ratelimit-policy"].to_str().unwrap();
        assert!(
            policy.contains("q=5;w=60") && policy.contains("q=1000;w=3600"),
            "{policy}"
        );
        let rl = r.headers()["ratelimit"].to_str().unwrap().to_owned();
        assert!(rl.contains(&format!("r={}", 4 - i)), "{rl}");
    }
    let r = gw
        .req(Method::POST, "/data/count")
        .bearer_auth(&a)
        .json(&json!({}))
        .send()
        .unwrap();
    let retry: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&retry), "{retry}");
    assert!(r.headers().contains_key("ratelimit"));
    assert!(r.headers().contains_key("ratelimit-policy"));
    assert_problem(r, 429, "rate_limited");
    let r = gw
        .req(Method::POST, "/data/count")
        .bearer_auth(&b)
        .json(&json!({}))
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
}

#[test]
fn operators_can_override_an_orgs_limits() {
    let gw = TestGateway::start_with(Options {
        config: "[limits]\nrequests_per_minute = 2\n[ops]\ntoken = \"operator-secret-token\"\n"
            .into(),
        ..Default::default()
    });
    let a = gw.org_with_token("Override Co", "ov@example.com");
    let put = |body: Value, token: &str| {
        gw.client
            .put(format!("{}/ops/orgs/Override%20Co/limits", gw.ops))
            .bearer_auth(token)
            .json(&body)
            .send()
            .unwrap()
    };
    // an org admin's JWT is not an operator credential
    assert_problem(
        put(
            json!({"requests_per_minute": 10, "requests_per_hour": 100}),
            &a,
        ),
        401,
        "unauthorized",
    );
    let r = put(
        json!({"requests_per_minute": 10, "requests_per_hour": 100}),
        "operator-secret-token",
    );
    assert_eq!(r.status(), 200);
    for _ in 0..8 {
        let r = gw
            .req(Method::POST, "/data/count")
            .bearer_auth(&a)
            .json(&json!({}))
            .send()
            .unwrap();
        assert_eq!(r.status(), 200);
    }
}

#[test]
fn repeated_login_failures_are_throttled_with_a_generic_body() {
    let gw = TestGateway::start();
    gw.create_org("Brute", "brute@example.com", "password123");
    for _ in 0..5 {
        assert_eq!(
            gw.login("brute@example.com", "wrong-password").status(),
            401
        );
    }
    let r = gw.login("brute@example.com", "password123");
    assert!(r.headers().contains_key("retry-after"));
    let body = assert_problem(r, 429, "too_many_login_attempts");
    assert!(!body["detail"]
        .as_str()
        .unwrap()
        .contains("brute@example.com"));
    // unknown emails are throttled the same way
    for _ in 0..5 {
        gw.login("ghost@example.com", "whatever-pass");
    }
    assert_problem(
        gw.login("ghost@example.com", "whatever-pass"),
        429,
        "too_many_login_attempts",
    );
}

#[test]
fn writes_past_the_storage_quota_get_507() {
    let gw = TestGateway::start_with(Options {
        config: "[limits]\nstorage_quota_bytes = 4096\nquota_alert_ratio = 0.5\n[ops]\ntoken = \"operator-secret-token\"\n".into(),
        ..Default::default()
    });
    let t = gw.org_with_token("Tiny Quota", "tiny@example.com");
    let doc = json!({"blob": "x".repeat(1500)});
    for _ in 0..2 {
        let r = gw
            .req(Method::POST, "/data")
            .bearer_auth(&t)
            .json(&doc)
            .send()
            .unwrap();
        assert_eq!(r.status(), 201);
    }
    let r = gw
        .req(Method::POST, "/data")
        .bearer_auth(&t)
        .json(&doc)
        .send()
        .unwrap();
    assert_problem(r, 507, "quota_exceeded");
    let listed: Value = gw
        .client
        .get(format!("{}/ops/quotas", gw.ops))
        .bearer_auth("operator-secret-token")
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(
        listed["organizations"][0]["organization_name"],
        "Tiny Quota"
    );
    // reads still work
    let r = gw
        .req(Method::POST, "/data/count")
        .bearer_auth(&t)
        .json(&json!({}))
        .send()
        .unwrap();
    assert_eq!(r.json::<Value>().unwrap()["count"], 2);
    // after a restart the org is listed again without writing: usage is measured at start
    let mut gw = gw;
    gw.restart();
    let listed: Value = gw
        .client
        .get(format!("{}/ops/quotas", gw.ops))
        .bearer_auth("operator-secret-token")
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(
        listed["organizations"][0]["organization_name"],
        "Tiny Quota"
    );
    assert!(listed["organizations"][0]["used_bytes"].as_u64().unwrap() > 2048);
}

#[test]
fn concurrent_wrong_passwords_pass_the_limit_no_more_than_sequential_ones() {
    let gw = TestGateway::start();
    gw.create_org("Raced", "raced@example.com", "password123");
    // 60 guesses at once for one email (limit 5): each reserves its attempt before the hash,
    // so only 5 are ever verified.
    let barrier = std::sync::Barrier::new(60);
    let statuses: Vec<u16> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..60)
            .map(|i| {
                let (gw, barrier) = (&gw, &barrier);
                s.spawn(move || {
                    barrier.wait();
                    gw.login("raced@example.com", &format!("wrong-guess-{i}"))
                        .status()
                        .as_u16()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let unauthorized = statuses.iter().filter(|&&s| s == 401).count();
    let throttled = statuses.iter().filter(|&&s| s == 429).count();
    assert_eq!(unauthorized, 5, "{statuses:?}");
    assert_eq!(throttled, 55, "{statuses:?}");
    // The right password is refused too until the window ends.
    assert_problem(
        gw.login("raced@example.com", "password123"),
        429,
        "too_many_login_attempts",
    );
}

#[test]
fn invalid_emails_count_against_the_address_only() {
    let gw = TestGateway::start_with(Options {
        config: "[limits]\nlogin_failures_per_minute_per_address = 4\n".into(),
        ..Default::default()
    });
    gw.create_org("Addr", "addr@example.com", "password123");
    // A ~900 KiB "email" is no counter key; it is one failure of the client's address.
    let huge = format!("{}@example.com", "a".repeat(900 * 1024));
    assert_problem(gw.login(&huge, "whatever-pass"), 401, "invalid_credentials");
    for bad in ["not an email", "a@b", "\u{0}@example.com"] {
        assert_problem(gw.login(bad, "whatever-pass"), 401, "invalid_credentials");
    }
    // The address has had its 4: even a valid login from it waits.
    assert_problem(
        gw.login("addr@example.com", "password123"),
        429,
        "too_many_login_attempts",
    );
}
