use crate::gateway::{assert_problem, Options, TestGateway};
use reqwest::Method;
use serde_json::json;

#[test]
fn malformed_json_and_wrong_types_are_400() {
    let gw = TestGateway::start();
    let raw = |body: &str| {
        gw.req(Method::POST, "/org/create")
            .header("content-type", "application/json")
            .body(body.to_owned())
            .send()
            .unwrap()
    };
    assert_problem(raw("{not json"), 400, "invalid_json");
    assert_problem(raw(""), 400, "invalid_json");
    assert_problem(
        raw(r#"{"organization_name": 5, "email": "a@b.co", "password": "password123"}"#),
        400,
        "invalid_body",
    );
    assert_problem(raw(r#"{"organization_name": "x"}"#), 400, "invalid_body");
    assert_problem(raw("[]"), 400, "invalid_body");
}

#[test]
fn invalid_names_emails_and_passwords_are_400() {
    let gw = TestGateway::start();
    for name in ["a$b", "a\u{0}b", "", "   ", "dots.are.out", &"x".repeat(65)] {
        let r = gw.create_org(name, "v@example.com", "password123");
        assert_problem(r, 400, "validation_failed");
    }
    assert_problem(
        gw.create_org("Fine", "not an email", "password123"),
        400,
        "validation_failed",
    );
    assert_problem(
        gw.create_org("Fine", "v@example.com", "short"),
        400,
        "validation_failed",
    );
    assert_problem(
        gw.create_org("Fine", "v@example.com", &"p".repeat(129)),
        400,
        "validation_failed",
    );
    let r = gw
        .req(Method::GET, "/org/get?organization_name=%24where")
        .send()
        .unwrap();
    assert_problem(r, 400, "validation_failed");
    // nothing was created by the rejected requests
    assert_eq!(
        gw.create_org("Fine", "v@example.com", "password123")
            .status(),
        201
    );
}

#[test]
fn oversize_bodies_are_413() {
    let gw = TestGateway::start_with(Options {
        config: "max_body_bytes = 2048\n".into(),
        ..Default::default()
    });
    let big = "x".repeat(4096);
    let r = gw.post(
        "/org/create",
        &json!({"organization_name": "Big", "email": "big@example.com", "password": big}),
    );
    assert_problem(r, 413, "payload_too_large");
    // chunked (no Content-Length) is bounded too
    let chunks = long_login_body(8192);
    let r = gw
        .req(Method::POST, "/admin/login")
        .header("content-type", "application/json")
        .body(reqwest::blocking::Body::new(std::io::Cursor::new(chunks)))
        .send()
        .unwrap();
    assert_problem(r, 413, "payload_too_large");
    // and the gateway still serves normal requests
    assert_eq!(
        gw.create_org("Big", "big@example.com", "password123")
            .status(),
        201
    );
}

fn long_login_body(n: usize) -> Vec<u8> {
    let mut v = b"{\"email\":\"".to_vec();
    v.extend(std::iter::repeat_n(b'a', n));
    v.extend_from_slice(b"\",\"password\":\"x\"}");
    v
}

#[test]
fn unknown_routes_and_methods() {
    let gw = TestGateway::start();
    let r = gw.req(Method::GET, "/nope").send().unwrap();
    assert_problem(r, 404, "route_not_found");
    let r = gw.req(Method::GET, "/org/create").send().unwrap();
    assert_eq!(r.headers()["allow"], "POST");
    assert_problem(r, 405, "method_not_allowed");
    // HEAD is GET without a body, on the same keep-alive connection
    for _ in 0..3 {
        let r = gw.req(Method::HEAD, "/healthz").send().unwrap();
        assert_eq!(r.status(), 200);
        assert!(
            r.headers()["content-length"]
                .to_str()
                .unwrap()
                .parse::<u64>()
                .unwrap()
                > 0
        );
        assert!(r.bytes().unwrap().is_empty());
        let r = gw.req(Method::GET, "/healthz").send().unwrap();
        assert_eq!(r.json::<serde_json::Value>().unwrap()["status"], "ok");
    }
    // operator routes live only on the ops listener
    let r = gw.req(Method::GET, "/ops/shards").send().unwrap();
    assert_problem(r, 404, "route_not_found");
}

#[test]
fn request_ids_are_echoed_or_generated() {
    let gw = TestGateway::start();
    let r = gw
        .req(Method::GET, "/healthz")
        .header("x-request-id", "client-id-123")
        .send()
        .unwrap();
    assert_eq!(r.headers()["x-request-id"], "client-id-123");
    let r = gw
        .req(Method::GET, "/healthz")
        .header("x-request-id", "bad id with spaces")
        .send()
        .unwrap();
    let id = r.headers()["x-request-id"].to_str().unwrap().to_owned();
    assert_ne!(id, "bad id with spaces");
    assert_eq!(id.len(), 36);
    let r = gw
        .req(Method::GET, "/org/get?organization_name=missing")
        .send()
        .unwrap();
    let header = r.headers()["x-request-id"].to_str().unwrap().to_owned();
    let body: serde_json::Value = r.json().unwrap();
    assert_eq!(body["request_id"], header);
}
