//! A private SecantusDB a test can stop and start again on the same port and storage.
//! Include it with `#[path = "../common/secantus.rs"] mod secantus;`.
#![allow(dead_code)]

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A private SecantusDB the test can stop and start again on the same port and storage.
pub struct OwnServer {
    bin: String,
    port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl OwnServer {
    pub fn start() -> Option<Self> {
        let bin = match std::env::var("SECANTUSD_BIN") {
            Ok(b) => b,
            Err(_) if std::env::var("REQUIRE_FULL_SUITE").is_ok_and(|v| v == "1") => {
                panic!("SECANTUSD_BIN is not set but REQUIRE_FULL_SUITE=1 requires it")
            }
            Err(_) => {
                eprintln!("skipping: SECANTUSD_BIN not set (scripts/test sets it)");
                return None;
            }
        };
        let mut s = Self {
            bin,
            port: free_port(),
            dir: tempfile::tempdir().unwrap(),
            child: None,
        };
        s.up();
        Some(s)
    }

    pub fn uri(&self) -> String {
        format!("mongodb://127.0.0.1:{}", self.port)
    }

    pub fn up(&mut self) {
        let child = Command::new(&self.bin)
            .args(["--host", "127.0.0.1", "--port", &self.port.to_string()])
            .arg("--storage-path")
            .arg(self.dir.path().join("data"))
            .args(["--oplog-max-entries", "5000", "--log-level", "WARNING"])
            // `configureFailPoint`, for tests that make the server refuse commands.
            .arg("--enable-test-commands")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start SecantusDB");
        self.child = Some(child);
        let started = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "SecantusDB did not start"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn down(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for OwnServer {
    fn drop(&mut self) {
        self.down();
    }
}
