//! The shared state every request handler sees, and how it is built at startup.

use crate::auth::jwt::SecretSource;
use crate::auth::{JwtKeys, PasswordHasher};
use crate::catalog::embedded::EmbeddedCatalog;
use crate::catalog::mongo::MongoCatalog;
use crate::catalog::Catalog;
use crate::config::{Config, ShardConfig, StoreKind};
use crate::limits::login::LoginThrottle;
use crate::limits::quota::Quotas;
use crate::limits::rate::RateLimits;
use crate::placement::{Shard, ShardSet};
use crate::router::TenantRouter;
use crate::store::embedded::EmbeddedStore;
use crate::store::mongo::MongoStore;
use crate::store::observed::Observed;
use crate::store::TenantStore;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Everything a handler needs; shared by both listeners.
pub struct AppState {
    /// Effective configuration.
    pub config: Config,
    /// Tenant and admin lookups (moka in front of the catalog).
    pub router: TenantRouter,
    /// Shards and their stores.
    pub shards: ShardSet,
    /// argon2id on a bounded pool.
    pub hasher: PasswordHasher,
    /// JWT keys.
    pub jwt: JwtKeys,
    /// Collections per database, for placing new organizations without catalog I/O.
    pub capacity: crate::placement::CapacityCounts,
    /// Per-organization request limits.
    pub rate_limits: RateLimits,
    /// Failed-login counters.
    pub login_throttle: LoginThrottle,
    /// With `limits.store = "redis"`: rate limits and login throttling shared by the fleet;
    /// `rate_limits` and `login_throttle` then decide only when Redis cannot.
    pub redis_limits: Option<Arc<crate::limits::fleet::RedisLimits>>,
    /// Storage usage per organization.
    pub quotas: Quotas,
    /// Requests per organization for `/ops/tenants/top`.
    pub top_tenants: crate::telemetry::top::TopTenants,
    /// Process start, for uptime.
    pub started: Instant,
}

impl AppState {
    /// The catalog.
    pub fn catalog(&self) -> &Arc<dyn Catalog> {
        self.router.catalog()
    }

    /// Opens the catalog, the shards and the keys described by `config`.
    pub async fn build(config: Config) -> anyhow::Result<Arc<Self>> {
        std::fs::create_dir_all(&config.data_dir).map_err(|e| {
            anyhow::anyhow!("cannot create data dir {}: {e}", config.data_dir.display())
        })?;
        let catalog: Arc<dyn Catalog> = match config.catalog.kind {
            StoreKind::Embedded => Arc::new(
                EmbeddedCatalog::open(&config.data_dir.join("catalog.redb"))
                    .map_err(|e| anyhow::anyhow!("cannot open catalog: {e}"))?,
            ),
            StoreKind::Mongodb => open_mongo_catalog(&config).await?,
        };
        let shards = ShardSet::default();
        for shard in config.effective_shards() {
            let store = open_store(&config, &shard).await?;
            shards.insert(Shard::new(shard, store));
        }
        for shard in crate::api::ops::persisted_shards(catalog.as_ref()).await? {
            if shards.get(&shard.id).is_none() {
                let store = open_store(&config, &shard).await?;
                shards.insert(Shard::new(shard, store));
            }
        }
        let (secret, source) =
            JwtKeys::load_secret(config.auth.jwt_secret.expose(), &config.data_dir)
                .map_err(|e| anyhow::anyhow!(e))?;
        match source {
            SecretSource::Generated => tracing::warn!(
                path = %config.data_dir.join("jwt_secret").display(),
                "no auth.jwt_secret configured: generated a 256-bit signing secret and stored it (mode 0600)"
            ),
            SecretSource::DataDir => tracing::info!(
                path = %config.data_dir.join("jwt_secret").display(),
                "using the signing secret stored in the data dir"
            ),
            SecretSource::Configured => tracing::info!("using the configured signing secret"),
        }
        let a = &config.auth;
        let jwt = JwtKeys::new(
            &secret,
            &a.jwt_kid,
            &a.issuer,
            &a.audience,
            a.token_ttl_seconds,
            a.leeway_seconds,
        )
        .map_err(|e| anyhow::anyhow!(e))?;
        let jwt = a.verification_keys.iter().try_fold(jwt, |keys, k| {
            keys.with_verification_key(&k.kid, k.secret.expose().as_bytes())
                .map_err(|e| anyhow::anyhow!(e))
        })?;
        let hasher = PasswordHasher::new(
            a.argon2_memory_kib,
            a.argon2_iterations,
            a.argon2_parallelism,
            a.hash_concurrency,
            a.hash_queue_limit,
        )?;
        let router = TenantRouter::new(
            catalog,
            config.cache.max_entries,
            Duration::from_secs(config.cache.ttl_seconds),
        );
        let state = Arc::new(Self {
            config: config.clone(),
            router,
            shards,
            hasher,
            jwt,
            capacity: Default::default(),
            rate_limits: RateLimits::new(
                config.limits.requests_per_minute,
                config.limits.requests_per_hour,
            ),
            login_throttle: LoginThrottle::new(
                config.limits.login_failures_per_minute,
                config.limits.login_failures_per_minute_per_address,
            ),
            redis_limits: crate::limits::fleet::RedisLimits::from_config(&config.limits)
                .await
                .map_err(anyhow::Error::msg)?,
            quotas: Quotas::new(
                config.limits.storage_quota_bytes,
                config.limits.quota_alert_ratio,
            ),
            top_tenants: Default::default(),
            started: Instant::now(),
        });
        state.load_rate_overrides().await;
        state.refresh_capacity().await;
        Ok(state)
    }

    /// Re-reads the per-database collection counts from the catalog.
    pub async fn refresh_capacity(&self) {
        match self.catalog().collection_counts().await {
            Ok(counts) => self.capacity.replace(counts),
            Err(e) => tracing::warn!(error = %e, "cannot read collection counts"),
        }
    }

    /// Loads per-organization rate-limit overrides from the catalog.
    pub async fn load_rate_overrides(&self) {
        match self.catalog().get_setting(RATE_OVERRIDES_SETTING).await {
            Ok(Some(v)) => {
                let map: std::collections::HashMap<
                    crate::domain::OrgId,
                    crate::limits::RateOverride,
                > = serde_json::from_value(v).unwrap_or_default();
                self.rate_limits.sync_overrides(&map);
            }
            Ok(None) => self.rate_limits.sync_overrides(&Default::default()),
            Err(e) => tracing::warn!(error = %e, "cannot load rate-limit overrides"),
        }
    }
}

/// Catalog setting holding per-organization rate-limit overrides.
pub const RATE_OVERRIDES_SETTING: &str = "rate_limit_overrides";

/// Opens the store of one shard.
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
        StoreKind::Mongodb => open_mongo_store(shard).await?,
    };
    Ok(Arc::new(Observed::new(shard.id.as_str(), store)))
}

/// Opens a MongoDB shard without waiting for it: a shard that is down at startup only makes
/// its own tenants' requests fail with 503 until it is back.
async fn open_mongo_store(shard: &ShardConfig) -> anyhow::Result<Arc<dyn TenantStore>> {
    let store = MongoStore::open(shard)
        .await
        .map_err(|e| anyhow::anyhow!(e))?;
    Ok(Arc::new(store))
}

/// Connects to the MongoDB catalog; unlike a shard it must answer at startup.
async fn open_mongo_catalog(config: &Config) -> anyhow::Result<Arc<dyn Catalog>> {
    let uri = config
        .catalog
        .uri
        .as_deref()
        .ok_or_else(|| anyhow::anyhow!("catalog.kind = \"mongodb\" needs catalog.uri"))?;
    let catalog = MongoCatalog::open(uri, &config.catalog.database)
        .await
        .map_err(|e| anyhow::anyhow!("cannot open catalog: {e}"))?;
    Ok(Arc::new(catalog))
}
