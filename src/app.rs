//! The shared state every request handler sees, and how it is built at startup.

use crate::auth::jwt::SecretSource;
use crate::auth::{JwtKeys, PasswordHasher};
use crate::catalog::embedded::EmbeddedCatalog;
use crate::catalog::mongo::MongoCatalog;
use crate::catalog::Catalog;
use crate::config::{Config, StoreKind};
use crate::fleet::{Fleet, InstanceFacts, SettingsListener};
use crate::limits::login::LoginThrottle;
use crate::limits::quota::Quotas;
use crate::limits::rate::RateLimits;
use crate::placement::open::{open_new_persisted, open_store, SHARDS_SETTING};
use crate::placement::{Shard, ShardSet};
use crate::router::TenantRouter;
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
    /// Per-client-address limits of the unauthenticated routes.
    pub address_limits: crate::limits::address::AddressLimits,
    /// With `limits.store = "redis"`: rate limits and login throttling shared by the fleet;
    /// `rate_limits` and `login_throttle` then decide only when Redis cannot.
    pub redis_limits: Option<Arc<crate::limits::fleet::RedisLimits>>,
    /// Storage usage per organization.
    pub quotas: Quotas,
    /// Requests per organization for `/ops/tenants/top`.
    pub top_tenants: crate::telemetry::top::TopTenants,
    /// This instance in the fleet: change feed, registry, fences, request gate.
    pub fleet: Arc<Fleet>,
    /// Recent write marks per organization (`backup --since`).
    pub write_marks: Arc<crate::backup::WriteMarks>,
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
        let (catalog, shards) = open_catalog_and_shards(&config).await?;
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
            secret.expose(),
            &a.jwt_kid,
            &a.issuer,
            &a.audience,
            a.token_ttl_seconds,
            a.leeway_seconds,
        )
        .map_err(|e| anyhow::anyhow!(e))?;
        let jwt = a.verification_keys.iter().try_fold(jwt, |keys, k| {
            keys.with_verification_key(&k.kid, k.secret.expose())
                .map_err(|e| anyhow::anyhow!(e))
        })?;
        let hasher = PasswordHasher::new(
            a.argon2_memory_kib,
            a.argon2_iterations,
            a.argon2_parallelism,
            a.hash_concurrency,
            a.hash_queue_limit,
        )?
        .with_wait_budget(Duration::from_millis(a.hash_queue_wait_ms))
        .with_thread_niceness(a.hash_thread_niceness)
        .with_credential_cache(
            a.credential_cache_entries,
            Duration::from_secs(a.credential_cache_seconds),
        );
        let cache_ttl = Duration::from_secs(config.cache.ttl_seconds);
        let router = TenantRouter::new(catalog.clone(), config.cache.max_entries, cache_ttl);
        let shared = config.catalog.kind == StoreKind::Mongodb;
        let fleet = Arc::new(Fleet::new(
            catalog,
            router.clone(),
            shared,
            config.fleet.clone(),
            cache_ttl,
            InstanceFacts {
                listen: config.listen.to_string(),
                ops_listen: config.ops_listen.to_string(),
                request_timeout: Duration::from_millis(config.request_timeout_ms),
                node_id: crate::fleet::node_id(&config.data_dir)
                    .map_err(|e| anyhow::anyhow!("cannot keep the node id in the data dir: {e}"))?,
            },
        ));
        if shared {
            // An embedded shard's file is on this machine only: with a shared catalog it
            // belongs to one instance, or tenants placed on it would be missing elsewhere.
            fleet
                .join()
                .await
                .map_err(|e| anyhow::anyhow!("cannot register in the catalog: {e}"))?;
            for shard in shards.all() {
                if shard.config.kind == StoreKind::Embedded {
                    fleet
                        .hold_lease(&format!("embedded_shard:{}", shard.id()))
                        .await
                        .map_err(|e| {
                            anyhow::anyhow!(
                                "embedded shard {:?} belongs to another instance's data dir ({e}); with a \
                                 shared catalog each embedded shard belongs to one instance: \
                                 give this instance its own shard id, or use a MongoDB shard",
                                shard.id().as_str()
                            )
                        })?;
                }
            }
        }
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
            address_limits: crate::limits::address::AddressLimits::new(
                config.limits.creates_per_minute_per_address,
                config.limits.public_reads_per_minute_per_address,
            ),
            redis_limits: crate::limits::fleet::RedisLimits::from_config(&config.limits)
                .await
                .map_err(anyhow::Error::msg)?,
            quotas: Quotas::new(
                config.limits.storage_quota_bytes,
                config.limits.quota_alert_ratio,
            ),
            top_tenants: Default::default(),
            fleet,
            write_marks: Arc::new(crate::backup::WriteMarks::new(
                config.lifecycle.write_mark_interval(),
            )),
            started: Instant::now(),
        });
        state.load_rate_overrides().await;
        state.load_draining().await;
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

#[async_trait::async_trait]
impl SettingsListener for AppState {
    async fn setting_changed(&self, key: &str) {
        match key {
            RATE_OVERRIDES_SETTING => self.load_rate_overrides().await,
            SHARDS_SETTING => self.open_new_shards().await,
            crate::placement::DRAINING_SETTING => self.load_draining().await,
            _ => {}
        }
    }

    async fn reload_all(&self) {
        self.load_rate_overrides().await;
        self.open_new_shards().await;
        self.load_draining().await;
    }
}

impl AppState {
    /// The narrow view lifecycle operations (`crate::movers`) work with.
    pub fn lifecycle(&self) -> crate::movers::Lifecycle<'_> {
        crate::movers::Lifecycle {
            catalog: self.catalog(),
            shards: &self.shards,
            router: &self.router,
            fleet: &self.fleet,
            capacity: &self.capacity,
        }
    }

    /// Loads the shards an operator is draining (they take no new organizations).
    pub async fn load_draining(&self) {
        match self
            .catalog()
            .get_setting(crate::placement::DRAINING_SETTING)
            .await
        {
            Ok(v) => {
                let ids: Vec<crate::domain::ShardId> = v
                    .and_then(|v| serde_json::from_value(v).ok())
                    .unwrap_or_default();
                self.shards.set_draining(ids);
            }
            Err(e) => tracing::warn!(error = %e, "cannot load draining shards"),
        }
    }

    /// Opens shards another instance added at runtime.
    pub async fn open_new_shards(&self) {
        if let Err(e) =
            open_new_persisted(&self.config, self.catalog().as_ref(), &self.shards).await
        {
            tracing::warn!(error = %e, "cannot open runtime-added shards");
        }
    }
}

/// Opens the catalog and every shard (configured, and added at runtime), as the server does.
pub async fn open_catalog_and_shards(
    config: &Config,
) -> anyhow::Result<(Arc<dyn Catalog>, ShardSet)> {
    let catalog: Arc<dyn Catalog> = match config.catalog.kind {
        StoreKind::Embedded => Arc::new(
            EmbeddedCatalog::open(&config.data_dir.join("catalog.redb"))
                .map_err(|e| anyhow::anyhow!("cannot open catalog: {e}"))?,
        ),
        StoreKind::Mongodb => open_mongo_catalog(config).await?,
    };
    let shards = ShardSet::default();
    for shard in config.effective_shards() {
        let store = open_store(config, &shard).await?;
        shards.insert(Shard::new(shard, store));
    }
    open_new_persisted(config, catalog.as_ref(), &shards).await?;
    Ok((catalog, shards))
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
