//! Building the gateway state on MongoDB: a shard that is down must not stop the start.

use crate::mongo_env;
use crate::store::mongo_shard;
use org_gateway::app::AppState;
use org_gateway::config::{CatalogConfig, Config, StoreKind};
use org_gateway::domain::ShardId;
use org_gateway::store::StoreError;
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mongo_gateway_starts_with_a_shard_down() {
    let Some(uri) = mongo_env::uri() else { return };
    let uri_2 = mongo_env::uri_2().expect("second uri");
    let dir = tempfile::tempdir().unwrap();
    let catalog_db = mongo_env::unique_db("startcat");
    let mut down = mongo_shard(
        "down",
        &format!("mongodb://127.0.0.1:{}", mongo_env::closed_port()),
    );
    down.server_selection_timeout_ms = 300;
    let config = Config {
        data_dir: dir.path().to_path_buf(),
        catalog: CatalogConfig {
            kind: StoreKind::Mongodb,
            uri: Some(uri.as_str().into()),
            database: catalog_db.clone(),
            ..CatalogConfig::default()
        },
        shards: vec![mongo_shard("live", &uri_2), down],
        ..Config::default()
    };
    config.validate().unwrap();

    let started = Instant::now();
    let state = AppState::build(config).await.expect("gateway state builds");
    assert!(started.elapsed() < Duration::from_secs(10));

    let live = state.shards.get(&ShardId::parse("live").unwrap()).unwrap();
    live.store.ping().await.expect("live shard answers");
    let down = state.shards.get(&ShardId::parse("down").unwrap()).unwrap();
    assert!(matches!(
        down.store.ping().await,
        Err(StoreError::Unavailable(_))
    ));
    assert!(state.catalog().list_orgs().await.unwrap().is_empty());
    drop(state);
    mongo_env::drop_db(&uri, &catalog_db).await;
}
