//! Starts gateways that share one MongoDB catalog, one MongoDB shard and one signing secret.

use crate::gateway::{Options, TestGateway};
use crate::mongo_env;
use reqwest::blocking::Response;
use serde_json::Value;
use std::time::{Duration, Instant};

pub const OPS_TOKEN: &str = "ops-token-for-fleet-tests-0123456789";
const SECRET: &str = "fleet-test-signing-secret-0123456789abcdef";

/// The shared part of every instance's configuration.
pub struct Cluster {
    pub config: String,
    /// The MongoDB server.
    pub uri: String,
    /// The shard's database prefix: tenants land in `<prefix>_1`.
    pub prefix: String,
    catalog: String,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let rt = tokio::runtime::Runtime::new().unwrap();
        for db in [self.catalog.clone(), format!("{}_1", self.prefix)] {
            rt.block_on(mongo_env::drop_db(&self.uri, &db));
        }
    }
}

/// `n` instances of one cluster, stopped before its databases are dropped.
pub struct Fleet {
    /// The instances, all started.
    pub gateways: Vec<TestGateway>,
    _cluster: Cluster,
}

impl Fleet {
    /// `n` gateways on a fresh cluster; `limits` is TOML for the `[limits]` table (e.g. the
    /// Redis settings), identical on every instance. The caller checked MongoDB is there.
    pub fn start(n: usize, limits: &str) -> Self {
        let cluster = Cluster::new(&format!("[limits]\n{limits}\n")).expect("MongoDB");
        Self {
            gateways: (0..n).map(|_| cluster.start()).collect(),
            _cluster: cluster,
        }
    }
}

impl Cluster {
    /// A fresh catalog and shard database on the test MongoDB; `None` when the test skips.
    /// `extra` goes first in the file, so it may hold top-level keys.
    pub fn new(extra: &str) -> Option<Self> {
        let uri = mongo_env::uri()?;
        let catalog = mongo_env::unique_db("fleetcat");
        // Shard database prefixes are short (at most 20 characters).
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let prefix = format!(
            "f{:x}{n}x{:x}",
            std::process::id() % 0xffff,
            nanos % 0xfffff
        );
        Some(Self {
            config: format!(
                "{extra}\n[auth]\njwt_secret = \"{SECRET}\"\n\
                 [ops]\ntoken = \"{OPS_TOKEN}\"\n\
                 [catalog]\nkind = \"mongodb\"\nuri = \"{uri}\"\ndatabase = \"{catalog}\"\nrecovery_grace_seconds = 0\n\
                 [[shards]]\nid = \"mongo\"\nkind = \"mongodb\"\nuri = \"{uri}\"\ndatabase_prefix = \"{prefix}\"\n"
            ),
            uri,
            prefix,
            catalog,
        })
    }

    /// One more instance.
    pub fn start(&self) -> TestGateway {
        self.start_with_env(Vec::new())
    }

    /// One more instance with extra environment (failpoints, pausepoints).
    pub fn start_with_env(&self, env: Vec<(String, String)>) -> TestGateway {
        TestGateway::start_with(Options {
            config: self.config.clone(),
            env,
            ..Default::default()
        })
    }
}

/// GET on the ops listener with the operator token.
pub fn ops_get(gw: &TestGateway, path: &str) -> Value {
    let r = gw
        .client
        .get(format!("{}{path}", gw.ops))
        .bearer_auth(OPS_TOKEN)
        .send()
        .unwrap();
    assert_eq!(r.status(), 200, "{path}");
    r.json().unwrap()
}

/// Sends `req` until `done` holds for its response; returns how long that took.
pub fn until(
    limit: Duration,
    mut req: impl FnMut() -> Response,
    done: impl Fn(&Response) -> bool,
) -> Duration {
    let started = Instant::now();
    loop {
        let r = req();
        if done(&r) {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < limit,
            "not converged after {limit:?}: last status {}",
            r.status()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A bearer-authenticated request to `gw`.
pub fn authed(
    gw: &TestGateway,
    method: reqwest::Method,
    path: &str,
    token: &str,
) -> reqwest::blocking::RequestBuilder {
    gw.req(method, path).bearer_auth(token)
}
