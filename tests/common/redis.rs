//! Shared by test targets that talk to Redis. Include it with
//! `#[path = "../common/redis.rs"] mod redis_env;`.
//!
//! `REDIS_URL` names the test server; `scripts/test` starts one. Without it the Redis tests
//! print a notice and pass, unless `REQUIRE_FULL_SUITE=1`, in which case they fail. Tests that
//! stop Redis on purpose start a private `redis-server` ([`RedisServer`]).
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn required() -> bool {
    std::env::var("REQUIRE_FULL_SUITE").is_ok_and(|v| v == "1")
}

/// The shared test server's URL; `None` (after printing a notice) when the test should skip.
/// Panics when none is configured but one is required.
pub fn url() -> Option<String> {
    match std::env::var("REDIS_URL")
        .ok()
        .filter(|v| !v.trim().is_empty())
    {
        Some(url) => Some(url),
        None if required() => {
            panic!("REDIS_URL is not set but REQUIRE_FULL_SUITE=1 requires Redis")
        }
        None => {
            eprintln!("skipping: REDIS_URL not set");
            None
        }
    }
}

/// A key prefix no other test (in this or a concurrent run) uses.
pub fn unique_prefix() -> String {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("test:{}:{n}:{nanos:x}:", std::process::id())
}

/// A private `redis-server` on a loopback port (no persistence, fresh directory); killed on
/// drop.
pub struct RedisServer {
    child: Option<Child>,
    /// Its port, kept across restarts.
    pub port: u16,
    dir: tempfile::TempDir,
}

impl RedisServer {
    /// Starts one on a free port; `None` (after a notice) when `redis-server` is not installed
    /// and the full suite is not required.
    pub fn start() -> Option<Self> {
        let installed = Command::new("redis-server")
            .arg("--version")
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !installed {
            assert!(
                !required(),
                "redis-server is not installed but REQUIRE_FULL_SUITE=1"
            );
            eprintln!("skipping: redis-server not installed");
            return None;
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut server = Self {
            child: None,
            port,
            dir: tempfile::tempdir().unwrap(),
        };
        server.launch();
        Some(server)
    }

    /// `redis://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn launch(&mut self) {
        let child = Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &self.port.to_string()])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn redis-server");
        self.child = Some(child);
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(10) {
            if self.answers() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("redis-server on port {} did not start", self.port);
    }

    fn answers(&self) -> bool {
        let Ok(mut s) = TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
        let mut buf = [0u8; 7];
        s.write_all(b"PING\r\n").is_ok() && s.read_exact(&mut buf).is_ok() && &buf == b"+PONG\r\n"
    }

    /// Kills the server (SIGKILL): connections drop, its data is gone.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same port (empty).
    pub fn restart(&mut self) {
        self.kill();
        self.launch();
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}
