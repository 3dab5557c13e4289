//! Opening shard stores: configured shards and those added at runtime (persisted in the
//! catalog), so stores are built where shards live.

use crate::catalog::Catalog;
use crate::config::{Config, ShardConfig, StoreKind};
use crate::store::embedded::EmbeddedStore;
use crate::store::mongo::MongoStore;
use crate::store::observed::Observed;
use crate::store::TenantStore;
use std::sync::Arc;

/// Catalog setting holding shards added at runtime (`POST /ops/shards`).
pub const SHARDS_SETTING: &str = "runtime_shards";

/// Opens the store of one shard. A MongoDB shard is not waited for: one that is down only
/// makes its own tenants' requests fail with 503 until it is back.
pub async fn open_store(
    config: &Config,
    shard: &ShardConfig,
) -> anyhow::Result<Arc<dyn TenantStore>> {
    let store: Arc<dyn TenantStore> = match shard.kind {
        StoreKind::Embedded => {
            let path = shard.path.clone().unwrap_or_default();
            let path = if path.is_absolute() {
                path
            } else {
                config.data_dir.join(path)
            };
            Arc::new(EmbeddedStore::open(&path).map_err(|e| {
                anyhow::anyhow!("shard {}: cannot open {}: {e}", shard.id, path.display())
            })?)
        }
        StoreKind::Mongodb => Arc::new(
            MongoStore::open(shard)
                .await
                .map_err(|e| anyhow::anyhow!(e))?,
        ),
    };
    Ok(Arc::new(Observed::new(shard.id.as_str(), store)))
}

/// Shards added at runtime, as persisted in the catalog.
pub async fn persisted_shards(catalog: &dyn Catalog) -> anyhow::Result<Vec<ShardConfig>> {
    match catalog.get_setting(SHARDS_SETTING).await {
        Ok(Some(v)) => Ok(serde_json::from_value(v)?),
        Ok(None) => Ok(Vec::new()),
        Err(e) => Err(anyhow::anyhow!("cannot read persisted shards: {e}")),
    }
}

/// Opens every persisted shard `shards` does not have yet (another instance added it).
pub async fn open_new_persisted(
    config: &Config,
    catalog: &dyn Catalog,
    shards: &super::ShardSet,
) -> anyhow::Result<usize> {
    let mut added = 0;
    for shard in persisted_shards(catalog).await? {
        if shards.get(&shard.id).is_none() {
            let store = open_store(config, &shard).await?;
            tracing::info!(shard = %shard.id, "opened a shard added at runtime");
            shards.insert(super::Shard::new(shard, store));
            added += 1;
        }
    }
    Ok(added)
}
