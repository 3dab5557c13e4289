//! Spawns the real `org-gateway` binary on ephemeral loopback ports, as a client would meet it.

#![allow(dead_code)]

use reqwest::blocking::{Client, RequestBuilder, Response};
use serde_json::{json, Value};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Whether this run puts the catalog and tenant data on MongoDB (`TEST_ON_MONGODB=1`).
pub fn on_mongodb() -> bool {
    std::env::var("TEST_ON_MONGODB").is_ok_and(|v| v == "1")
}

/// The shard tenants land on when a test configures none.
pub fn default_shard() -> &'static str {
    if on_mongodb() {
        "mongo"
    } else {
        "local"
    }
}

/// A free loopback port (bound then released).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A running gateway process; killed on drop.
pub struct TestGateway {
    child: Option<Child>,
    /// Public API base URL.
    pub base: String,
    /// Operator base URL.
    pub ops: String,
    /// Data directory (kept by `_tmp` or owned by the caller).
    pub data_dir: PathBuf,
    /// The config file written at each launch.
    pub config_toml: String,
    /// Environment given to the next launch.
    pub env: Vec<(String, String)>,
    _tmp: Option<tempfile::TempDir>,
    pub client: Client,
}

/// Builder for a gateway under test.
#[derive(Default, Clone)]
pub struct Options {
    /// Extra TOML appended to the generated config file.
    pub config: String,
    /// Reuse this data directory (restart tests).
    pub data_dir: Option<PathBuf>,
    /// Extra environment variables for the process.
    pub env: Vec<(String, String)>,
}

impl TestGateway {
    /// Starts a gateway with default settings in a fresh data dir.
    pub fn start() -> Self {
        Self::start_with(Options::default())
    }

    /// Starts a gateway with extra config.
    pub fn start_with(opts: Options) -> Self {
        let (tmp, data_dir) = match opts.data_dir.clone() {
            Some(d) => (None, d),
            None => {
                let t = tempfile::tempdir().unwrap();
                let d = t.path().to_path_buf();
                (Some(t), d)
            }
        };
        let mut config = opts.config.clone();
        // `scripts/test` runs the HTTP suite a second time with the catalog and the tenant
        // shard on MongoDB (tests that configure their own do not get these).
        if on_mongodb() {
            let uri = crate::mongo_env::uri().expect("TEST_ON_MONGODB needs MONGODB_URI");
            static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
            let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.subsec_nanos())
                .unwrap_or(0);
            let unique = format!("{:x}{n}x{:x}", std::process::id(), nanos % 0xfffff);
            if !config.contains("[catalog]") {
                config.push_str(&format!(
                    "\n[catalog]\nkind = \"mongodb\"\nuri = \"{uri}\"\ndatabase = \"cat{unique}\"\nrecovery_grace_seconds = 0\n"
                ));
            }
            if !config.contains("[[shards]]") {
                config.push_str(&format!(
                    "\n[[shards]]\nid = \"mongo\"\nkind = \"mongodb\"\nuri = \"{uri}\"\ndatabase_prefix = \"t{unique}\"\n"
                ));
            }
        }
        let mut gw = TestGateway {
            child: None,
            base: String::new(),
            ops: String::new(),
            data_dir,
            config_toml: config,
            env: opts.env.clone(),
            _tmp: tmp,
            client: Client::builder()
                .timeout(Duration::from_secs(60))
                .build()
                .unwrap(),
        };
        gw.launch();
        gw
    }

    fn launch(&mut self) {
        for attempt in 0..3 {
            let port = free_port();
            // The kernel may hand the same free port out twice in a row.
            let ops_port = std::iter::repeat_with(free_port)
                .find(|p| *p != port)
                .unwrap();
            let config_path = self.data_dir.join("test-gateway.toml");
            std::fs::create_dir_all(&self.data_dir).unwrap();
            std::fs::write(&config_path, &self.config_toml).unwrap();
            let log = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(self.data_dir.join("gateway.log"))
                .unwrap();
            let child = Command::new(env!("CARGO_BIN_EXE_org-gateway"))
                .args(["serve", "--config"])
                .arg(&config_path)
                .args(["--listen", &format!("127.0.0.1:{port}")])
                .args(["--ops-listen", &format!("127.0.0.1:{ops_port}")])
                .arg("--data-dir")
                .arg(&self.data_dir)
                .env("RUST_LOG", "info")
                // Every test comes from 127.0.0.1: the per-address limits of unauthenticated
                // routes are raised unless a test's config sets them (the file wins over the
                // environment).
                .env(
                    "ORG_GATEWAY_LIMITS__CREATES_PER_MINUTE_PER_ADDRESS",
                    "1000000",
                )
                .env(
                    "ORG_GATEWAY_LIMITS__PUBLIC_READS_PER_MINUTE_PER_ADDRESS",
                    "1000000",
                )
                // No TTL index on a MongoDB catalog's audit events: SecantusDB's TTL monitor
                // scans each collection with one in full under its global lock every minute,
                // and the suite's many catalogs stalled the test server for seconds
                // (`events::*ttl*` turns it on).
                .env("ORG_GATEWAY_LIFECYCLE__EVENT_TTL_INDEX", "false")
                .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
                .stdin(Stdio::null())
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .spawn()
                .expect("spawn org-gateway");
            self.child = Some(child);
            self.base = format!("http://127.0.0.1:{port}");
            self.ops = format!("http://127.0.0.1:{ops_port}");
            if self.wait_healthy(Duration::from_secs(30)) {
                return;
            }
            self.kill();
            eprintln!(
                "gateway did not become healthy (attempt {attempt}); log:\n{}",
                self.log()
            );
        }
        panic!("gateway failed to start");
    }

    fn wait_healthy(&mut self, limit: Duration) -> bool {
        let started = Instant::now();
        while started.elapsed() < limit {
            if let Some(Ok(Some(_))) = self.child.as_mut().map(|c| c.try_wait()) {
                return false;
            }
            let ok = |url: String| {
                self.client
                    .get(url)
                    .timeout(Duration::from_millis(500))
                    .send()
                    .map(|r| r.status() == 200)
                    .unwrap_or(false)
            };
            if ok(format!("{}/healthz", self.base)) && ok(format!("{}/healthz", self.ops)) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }

    /// The gateway's log so far.
    ///
    /// Lines reach the file through the gateway's log queue, drained every few milliseconds,
    /// so this first waits until the file has stopped growing for 100 ms (at most 3 s): a line
    /// logged before the call is in the answer, and an assertion that a line is absent sees
    /// everything written so far.
    pub fn log(&self) -> String {
        let path = self.data_dir.join("gateway.log");
        let size = || std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        let started = Instant::now();
        let mut last = size();
        let mut stable_since = Instant::now();
        while started.elapsed() < Duration::from_secs(3) {
            std::thread::sleep(Duration::from_millis(10));
            let now = size();
            if now != last {
                last = now;
                stable_since = Instant::now();
            } else if stable_since.elapsed() >= Duration::from_millis(100) {
                break;
            }
        }
        std::fs::read_to_string(&path).unwrap_or_default()
    }

    /// Whether the log contains `needle`, waiting up to 10 s for it to appear.
    pub fn log_contains(&self, needle: &str) -> bool {
        let started = Instant::now();
        loop {
            if self.log().contains(needle) {
                return true;
            }
            if started.elapsed() > Duration::from_secs(10) {
                return false;
            }
        }
    }

    /// Kills the process (SIGKILL) and waits for it.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Sends SIGTERM and returns how long the process took to exit, and its exit code.
    pub fn terminate(&mut self) -> (Duration, Option<i32>) {
        let mut c = self.child.take().expect("running");
        let started = Instant::now();
        unsafe_kill(c.id(), "TERM");
        loop {
            if let Some(status) = c.try_wait().unwrap() {
                return (started.elapsed(), status.code());
            }
            if started.elapsed() > Duration::from_secs(30) {
                let _ = c.kill();
                panic!("gateway did not exit within 30 s of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits for the process to exit on its own (e.g. after a failpoint abort).
    pub fn wait_exit(&mut self, limit: Duration) -> bool {
        let started = Instant::now();
        while started.elapsed() < limit {
            match self.child.as_mut().map(|c| c.try_wait()) {
                Some(Ok(Some(_))) | None => {
                    self.child = None;
                    return true;
                }
                _ => std::thread::sleep(Duration::from_millis(20)),
            }
        }
        false
    }

    /// Kills and starts again on the same data dir (new ports).
    pub fn restart(&mut self) {
        self.kill();
        self.launch();
    }

    /// A request builder for the public API.
    pub fn req(&self, method: reqwest::Method, path: &str) -> RequestBuilder {
        self.client
            .request(method, format!("{}{}", self.base, path))
    }

    /// POST JSON to the public API.
    pub fn post(&self, path: &str, body: &Value) -> Response {
        self.req(reqwest::Method::POST, path)
            .json(body)
            .send()
            .unwrap()
    }

    /// Creates an org; returns the response.
    pub fn create_org(&self, name: &str, email: &str, password: &str) -> Response {
        self.post(
            "/org/create",
            &json!({"organization_name": name, "email": email, "password": password}),
        )
    }

    /// Logs in; returns the response.
    pub fn login(&self, email: &str, password: &str) -> Response {
        self.post(
            "/admin/login",
            &json!({"email": email, "password": password}),
        )
    }

    /// Creates an org and logs its admin in; returns the bearer token.
    pub fn org_with_token(&self, name: &str, email: &str) -> String {
        let r = self.create_org(name, email, "password123");
        assert_eq!(r.status(), 201, "create {name}: {}", r.text().unwrap());
        let r = self.login(email, "password123");
        assert_eq!(r.status(), 200);
        r.json::<Value>().unwrap()["access_token"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    /// Data dir path.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }
}

fn unsafe_kill(pid: u32, sig: &str) {
    let _ = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status();
}

impl Drop for TestGateway {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- gateway log ---\n{}", self.log());
        }
        self.kill();
    }
}

/// Asserts a problem+json error with this status and code; returns the body.
pub fn assert_problem(resp: Response, status: u16, code: &str) -> Value {
    assert_eq!(resp.status().as_u16(), status, "unexpected status");
    assert!(resp.headers().contains_key("x-request-id"));
    let ct = resp
        .headers()
        .get("content-type")
        .unwrap()
        .to_str()
        .unwrap()
        .to_owned();
    assert_eq!(ct, "application/problem+json");
    let body: Value = resp.json().unwrap();
    assert_eq!(body["status"], status, "{body}");
    assert_eq!(body["code"], code, "{body}");
    for key in ["type", "title", "detail"] {
        assert!(body[key].is_string(), "missing {key}: {body}");
    }
    body
}
