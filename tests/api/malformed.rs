//! Requests that are not valid HTTP/1, sent over a raw socket: each is answered with a
//! problem+json refusal (or the connection is closed), none of its bytes reach the log, and
//! the gateway keeps serving.

use crate::gateway::{assert_problem, Options, TestGateway};
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// Recognisable secrets carried by every malformed request.
const TOKEN: &str = "SECRETTOKENb7d1f0e2a9c4";
const PASSWORD: &str = "SECRETPASSWORDq8w7e6r5t4";

/// Sends `bytes` on a fresh connection and returns everything the gateway answers until it
/// closes the connection (or stops talking for a second).
fn exchange(addr: &str, bytes: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    // The gateway may answer and close before it has read everything: a failed write is fine.
    let _ = s.write_all(bytes);
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A login request (secret body, secret bearer token) with `extra` spliced into its head.
fn login_with(extra: &str) -> Vec<u8> {
    let body = json!({"email": "victim@example.com", "password": PASSWORD}).to_string();
    format!(
        "POST /admin/login HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {TOKEN}\r\n{extra}\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

fn assert_refused(answer: &str, status: u16, code: &str, case: &str) {
    assert!(
        answer.starts_with(&format!("HTTP/1.1 {status} ")),
        "{case}: {answer:?}"
    );
    let lower = answer.to_ascii_lowercase();
    assert!(
        lower.contains("content-type: application/problem+json"),
        "{case}: {answer:?}"
    );
    assert!(lower.contains("connection: close"), "{case}: {answer:?}");
    assert!(lower.contains("x-request-id: "), "{case}: {answer:?}");
    let body = &answer[answer.find("\r\n\r\n").expect("a head") + 4..];
    let problem: Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("{case}: {e}"));
    assert_eq!(problem["status"], status, "{case}: {problem}");
    assert_eq!(problem["code"], code, "{case}: {problem}");
    assert!(
        !answer.contains(TOKEN) && !answer.contains(PASSWORD),
        "{case}: the answer echoes the request: {answer:?}"
    );
}

#[test]
fn malformed_requests_are_refused_without_their_bytes_reaching_the_log() {
    // The most verbose level: no library line may carry request bytes even then.
    let gw = TestGateway::start_with(Options {
        env: vec![("RUST_LOG".into(), "trace".into())],
        ..Default::default()
    });
    gw.create_org("Victim", "victim@example.com", "password123");
    let addr = gw.base.trim_start_matches("http://").to_owned();

    let mut refused = 0;
    let cases: Vec<(&str, Vec<u8>, u16, &str)> = vec![
        (
            "NUL in a header value",
            login_with("X-Note: a\0b\r\n"),
            400,
            "malformed_request",
        ),
        (
            "space in a header name",
            login_with("X Note: 1\r\n"),
            400,
            "malformed_request",
        ),
        (
            "control byte in a header name",
            login_with("X-\x01Note: 1\r\n"),
            400,
            "malformed_request",
        ),
        (
            "more than 256 headers",
            login_with(&"X-Many: 1\r\n".repeat(300)),
            431,
            "request_header_too_large",
        ),
        (
            "conflicting Content-Length",
            login_with("Content-Length: 7\r\n"),
            400,
            "malformed_request",
        ),
        (
            "garbage request line",
            format!("\x01\x02 {TOKEN} {PASSWORD}\r\nHost: gw\r\n\r\n").into_bytes(),
            400,
            "malformed_request",
        ),
        (
            "bad HTTP version",
            format!("GET /{TOKEN} HTTP/9.{PASSWORD}\r\nHost: gw\r\n\r\n").into_bytes(),
            400,
            "malformed_request",
        ),
    ];
    for (case, bytes, status, code) in &cases {
        assert_refused(&exchange(&addr, bytes), *status, code, case);
        refused += 1;
    }

    // A header section over pingora's 1 MiB limit: refused while the client may still be
    // writing, so the answer can be lost to a reset; the log is what must hold.
    let huge = login_with(&format!("X-Pad: {}\r\n", "p".repeat(1_200_000)));
    let answer = exchange(&addr, &huge);
    if !answer.is_empty() {
        assert_refused(&answer, 431, "request_header_too_large", "over-long header");
    }

    // A chunked body that is not chunked: read by the app, refused without quoting it.
    let chunked = format!(
        "POST /admin/login HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {TOKEN}\r\n\
         Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n\
         5\r\n{PASSWORD}\r\n0\r\n\r\n"
    );
    let answer = exchange(&addr, chunked.as_bytes());
    assert!(answer.starts_with("HTTP/1.1 400 "), "{answer:?}");
    assert!(answer.contains("\"code\":\"invalid_body\""), "{answer:?}");
    assert!(!answer.contains(PASSWORD), "{answer:?}");

    // Still serving, on new connections and with the same credentials sent properly.
    let r = gw
        .client
        .get(format!("{}/healthz", gw.base))
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(gw.login("victim@example.com", "password123").status(), 200);
    let r = gw
        .client
        .get(format!("{}/org/get?organization_name=Victim", gw.base))
        .bearer_auth(TOKEN)
        .send()
        .unwrap();
    assert_problem(r, 401, "unauthorized");

    std::thread::sleep(Duration::from_millis(200));
    let log = gw.log();
    assert!(
        log.matches("malformed request refused").count() >= refused,
        "each refusal is logged (without its bytes):\n{log}"
    );
    for secret in [TOKEN, PASSWORD] {
        let leaks: Vec<&str> = log.lines().filter(|l| l.contains(secret)).collect();
        assert!(leaks.is_empty(), "request bytes in the log: {leaks:#?}");
    }
    // Nothing of the raw buffer either (pingora's own message quotes it after "buf: ").
    assert!(!log.contains("buf: "), "{log}");
    assert!(!log.contains("victim@example.com\\\""), "{log}");
}
