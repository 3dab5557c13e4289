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

/// A create for `name` sent as if through a proxy for `client` (`X-Forwarded-For`).
fn create_from(gw: &TestGateway, client: &str, name: &str) -> reqwest::blocking::Response {
    gw.req(Method::POST, "/org/create")
        .header("x-forwarded-for", client)
        .json(&json!({
            "organization_name": name,
            "email": format!("{}@example.com", name.to_lowercase().replace(' ', "-")),
            "password": "password123",
        }))
        .send()
        .unwrap()
}

fn retry_after(r: &reqwest::blocking::Response) -> u64 {
    r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap()
}

#[test]
fn creates_from_one_address_are_limited_before_anything_is_hashed() {
    let gw = TestGateway::start_with(Options {
        config: "[limits]\ncreates_per_minute_per_address = 3\n".into(),
        ..Default::default()
    });
    // Even a create refused for its body counts: the limit is checked before it is parsed.
    assert_problem(gw.post("/org/create", &json!({})), 400, "invalid_body");
    for i in 0..2 {
        let r = gw.create_org(
            &format!("Burst {i}"),
            &format!("b{i}@example.com"),
            "password123",
        );
        assert_eq!(r.status(), 201, "create {i}");
        assert_eq!(
            r.headers()["ratelimit-policy"].to_str().unwrap(),
            "\"creates\";q=3;w=60"
        );
        let rl = r.headers()["ratelimit"].to_str().unwrap().to_owned();
        assert!(rl.starts_with(&format!("\"creates\";r={};", 1 - i)), "{rl}");
    }
    let r = gw.create_org("Burst 2", "b2@example.com", "password123");
    assert_eq!(r.status(), 429);
    // The whole minute's budget was spent at once: the next cell is 20 s away.
    assert!((1..=20).contains(&retry_after(&r)), "{:?}", r.headers());
    assert!(r.headers()["ratelimit"]
        .to_str()
        .unwrap()
        .starts_with("\"creates\";r=0;"));
    assert_problem(r, 429, "rate_limited");
    // Nothing of the refused create happened, and logins from the same address still work.
    let r = gw
        .req(Method::GET, "/org/get?organization_name=Burst%202")
        .send()
        .unwrap();
    assert_problem(r, 404, "organization_not_found");
    assert_eq!(gw.login("b0@example.com", "password123").status(), 200);
    let metrics = gw
        .client
        .get(format!("{}/metrics", gw.ops))
        .send()
        .unwrap()
        .text()
        .unwrap();
    assert!(
        metrics.contains("org_gateway_rate_limited_requests_total{limiter=\"creates\"} 1"),
        "{metrics}"
    );
}

#[test]
fn forwarded_for_is_believed_only_from_trusted_proxies() {
    let trusting = TestGateway::start_with(Options {
        config: "[limits]\ncreates_per_minute_per_address = 2\n\
                 trusted_proxies = [\"127.0.0.1/32\", \"10.0.0.0/8\"]\n"
            .into(),
        ..Default::default()
    });
    // Two clients behind the proxy: a budget each.
    for i in 0..2 {
        assert_eq!(
            create_from(&trusting, "198.51.100.1", &format!("Pa {i}")).status(),
            201
        );
    }
    assert_problem(
        create_from(&trusting, "198.51.100.1", "Pa 2"),
        429,
        "rate_limited",
    );
    assert_eq!(create_from(&trusting, "198.51.100.2", "Pb 0").status(), 201);
    // The right-most untrusted hop is the client: what it claims to its left is ignored, and
    // trusted hops (10.0.0.7) are skipped.
    assert_problem(
        create_from(&trusting, "203.0.113.50, 198.51.100.1, 10.0.0.7", "Pa 3"),
        429,
        "rate_limited",
    );
    assert_eq!(
        create_from(&trusting, "198.51.100.1, 203.0.113.51", "Pc 0").status(),
        201
    );
    // An IPv6 client is counted by its /64.
    assert_eq!(
        create_from(&trusting, "2001:db8:1:2::1", "Pd 0").status(),
        201
    );
    assert_eq!(
        create_from(&trusting, "[2001:db8:1:2::99]:4431", "Pd 1").status(),
        201
    );
    assert_problem(
        create_from(&trusting, "2001:db8:1:2:ffff::1", "Pd 2"),
        429,
        "rate_limited",
    );
    // Not trusted: the header is ignored and every request is the loopback peer's.
    let plain = TestGateway::start_with(Options {
        config: "[limits]\ncreates_per_minute_per_address = 2\n".into(),
        ..Default::default()
    });
    for (i, client) in ["198.51.100.1", "198.51.100.2"].into_iter().enumerate() {
        assert_eq!(create_from(&plain, client, &format!("Q {i}")).status(), 201);
    }
    assert_problem(
        create_from(&plain, "198.51.100.3", "Q 2"),
        429,
        "rate_limited",
    );
}

#[test]
fn failed_logins_count_against_the_forwarded_client() {
    let gw = TestGateway::start_with(Options {
        config: "[limits]\nlogin_failures_per_minute_per_address = 2\n\
                 trusted_proxies = [\"127.0.0.1\"]\n"
            .into(),
        ..Default::default()
    });
    let login = |client: &str, n: u32| {
        gw.req(Method::POST, "/admin/login")
            .header("x-forwarded-for", client)
            .json(&json!({"email": format!("nobody{n}@example.com"), "password": "password123"}))
            .send()
            .unwrap()
    };
    assert_problem(login("192.0.2.10", 0), 401, "invalid_credentials");
    assert_problem(login("192.0.2.10", 1), 401, "invalid_credentials");
    assert_problem(login("192.0.2.10", 2), 429, "too_many_login_attempts");
    // Another client behind the same proxy is not held back by the first one's failures.
    assert_problem(login("192.0.2.11", 3), 401, "invalid_credentials");
}

#[test]
fn token_less_reads_are_limited_per_address_and_admins_are_not() {
    let gw = TestGateway::start_with(Options {
        config: "[limits]\npublic_reads_per_minute_per_address = 3\n".into(),
        ..Default::default()
    });
    let token = gw.org_with_token("Read Me", "read@example.com");
    let get = |token: Option<&str>| {
        let r = gw.req(Method::GET, "/org/get?organization_name=Read%20Me");
        match token {
            Some(t) => r.bearer_auth(t),
            None => r,
        }
        .send()
        .unwrap()
    };
    for i in 0..3 {
        let r = get(None);
        assert_eq!(r.status(), 200, "read {i}");
        assert_eq!(
            r.headers()["ratelimit-policy"].to_str().unwrap(),
            "\"public_reads\";q=3;w=60"
        );
    }
    let r = get(None);
    assert!((1..=20).contains(&retry_after(&r)));
    assert_problem(r, 429, "rate_limited");
    // A misses counts the same as a hit (scraping for names).
    let r = gw
        .req(Method::GET, "/org/get?organization_name=Nobody")
        .send()
        .unwrap();
    assert_problem(r, 429, "rate_limited");
    let r = get(Some(&token));
    assert_eq!(r.status(), 200);
    // With a token it is the organization's own rate limit that counts.
    let policy = r.headers()["ratelimit-policy"].to_str().unwrap().to_owned();
    assert!(policy.contains("\"minute\";q=100;w=60"), "{policy}");
    let body: Value = r.json().unwrap();
    assert_eq!(body["admin_email"], "read@example.com");
}

#[test]
fn a_create_flood_from_one_address_is_refused_before_the_hasher_and_others_go_on() {
    let gw = std::sync::Arc::new(TestGateway::start_with(Options {
        config: "[auth]\nhash_concurrency = 1\nhash_queue_limit = 1\n\
                 [limits]\ncreates_per_minute_per_address = 1\n\
                 trusted_proxies = [\"127.0.0.1/32\"]\n"
            .into(),
        ..Default::default()
    }));
    assert_eq!(create_from(&gw, "192.0.2.50", "Flood Target").status(), 201);
    let flood: Vec<_> = (0..12)
        .map(|i| {
            let gw = gw.clone();
            std::thread::spawn(move || {
                let r = create_from(&gw, "192.0.2.50", &format!("Flood {i}"));
                r.json::<Value>().unwrap()["code"]
                    .as_str()
                    .unwrap_or("")
                    .to_owned()
            })
        })
        .collect();
    // Logins and other clients' creates meanwhile: the flood never reaches the hasher.
    let login = gw.login("flood-target@example.com", "password123");
    assert_eq!(login.status(), 200);
    assert_eq!(create_from(&gw, "192.0.2.51", "Other Client").status(), 201);
    let codes: Vec<String> = flood.into_iter().map(|h| h.join().unwrap()).collect();
    assert!(codes.iter().all(|c| c == "rate_limited"), "{codes:?}");
}
