//! Starts N gateways sharing one MongoDB catalog and shard, one signing secret, one operator
//! token and, for limits, one Redis.

use crate::gateway::{Options, TestGateway};
use crate::mongo_env;

/// Operator token of every instance.
pub const OPS_TOKEN: &str = "fleet-operator-token";

/// Gateways on one catalog; their MongoDB databases are dropped on drop.
pub struct Fleet {
    /// The instances, all started.
    pub gateways: Vec<TestGateway>,
    mongo_uri: String,
    databases: Vec<String>,
}

impl Fleet {
    /// `n` gateways on a fresh catalog database and shard on `mongo_uri`. `limits` is TOML
    /// for the `[limits]` table (e.g. the Redis settings), identical on every instance.
    pub fn start(n: usize, mongo_uri: &str, limits: &str) -> Self {
        let catalog = mongo_env::unique_db("fleetcat");
        // Shard database prefixes are at most 20 characters.
        let prefix: String = mongo_env::unique_db("f")
            .replace('_', "")
            .chars()
            .take(20)
            .collect();
        let config = format!(
            "[auth]\njwt_secret = \"fleet-test-signing-secret-0123456789abcdef\"\n\
             \n[ops]\ntoken = \"{OPS_TOKEN}\"\n\
             \n[limits]\n{limits}\n\
             \n[catalog]\nkind = \"mongodb\"\nuri = \"{mongo_uri}\"\ndatabase = \"{catalog}\"\n\
             \n[[shards]]\nid = \"mongo\"\nkind = \"mongodb\"\nuri = \"{mongo_uri}\"\n\
             database_prefix = \"{prefix}\"\n"
        );
        let gateways = (0..n)
            .map(|_| {
                TestGateway::start_with(Options {
                    config: config.clone(),
                    ..Default::default()
                })
            })
            .collect();
        Self {
            gateways,
            mongo_uri: mongo_uri.to_owned(),
            databases: vec![catalog, format!("{prefix}_1")],
        }
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        for gw in &mut self.gateways {
            gw.kill();
        }
        let rt = tokio::runtime::Runtime::new().unwrap();
        for db in &self.databases {
            rt.block_on(mongo_env::drop_db(&self.mongo_uri, db));
        }
    }
}
