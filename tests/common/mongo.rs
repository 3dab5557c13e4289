//! Shared by test targets that talk to MongoDB. Include it with
//! `#[path = "../common/mongo.rs"] mod mongo_env;`.
//!
//! `MONGODB_URI` (and optionally `MONGODB_URI_2`, a second deployment) name the test servers;
//! `scripts/test` starts local ones. Without `MONGODB_URI` the MongoDB variants of a test print
//! a notice and pass, unless `REQUIRE_FULL_SUITE=1`, in which case they fail.
#![allow(dead_code)]

use std::sync::atomic::{AtomicU32, Ordering};

fn required() -> bool {
    std::env::var("REQUIRE_FULL_SUITE").is_ok_and(|v| v == "1")
}

fn from_env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

/// How long the tests' MongoDB clients wait for a server's answer before giving up on it.
pub const PATIENT_MS: u64 = 30_000;

/// `uri` with retryable writes off and a long connect timeout. The test servers may stall for
/// seconds on a loaded machine. A MongoDB client that gives up on a server (after its connect
/// timeout) interrupts the operations in flight and retries them, and a server without
/// retryable-write deduplication under concurrency (SecantusDB, which `scripts/test` runs)
/// then applies a write twice: an insert answers 409, a delete 404, a change-log entry a
/// duplicate key. With these options the client waits, and never retries a write.
pub fn patient(uri: &str) -> String {
    let trimmed = uri.trim_end_matches('/');
    if uri.contains('?') {
        format!("{uri}&retryWrites=false&connectTimeoutMS={PATIENT_MS}")
    } else if trimmed.matches('/').count() > 2 {
        format!("{trimmed}?retryWrites=false&connectTimeoutMS={PATIENT_MS}")
    } else {
        format!("{trimmed}/?retryWrites=false&connectTimeoutMS={PATIENT_MS}")
    }
}

/// The test server's URI, made [`patient`]; `None` (after printing a notice) when the test
/// should skip. Panics when no server is configured but one is required.
pub fn uri() -> Option<String> {
    match from_env("MONGODB_URI") {
        Some(uri) => Some(patient(&uri)),
        None if required() => {
            panic!("MONGODB_URI is not set but REQUIRE_FULL_SUITE=1 requires MongoDB")
        }
        None => {
            eprintln!("skipping: MONGODB_URI not set");
            None
        }
    }
}

/// A second test deployment (`MONGODB_URI_2`), or the first one when only that is set.
pub fn uri_2() -> Option<String> {
    let first = uri()?;
    Some(from_env("MONGODB_URI_2").map_or(first, |u| patient(&u)))
}

/// A database name no other test (in this or a concurrent run) uses.
pub fn unique_db(prefix: &str) -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("{prefix}_{}_{n}_{nanos:x}", std::process::id())
}

/// A shard database prefix no other test or concurrent run uses, short enough for the
/// prefix rule (at most 20 characters with a tag of up to 4).
pub fn unique_prefix(tag: &str) -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed) % 256;
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!(
        "{tag}{:x}{n:02x}{:x}",
        std::process::id() % 4096,
        nanos % 0xffffff
    )
}

/// Drops a test database (best effort).
pub async fn drop_db(uri: &str, db: &str) {
    if let Ok(client) = mongodb::Client::with_uri_str(uri).await {
        let _ = client.database(db).drop().await;
    }
}

/// A loopback port nothing listens on.
pub fn closed_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("addr").port()
}
