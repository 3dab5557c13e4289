use crate::config::{redact_uri, ShardConfig, StoreKind};
use crate::domain::ShardId;
use crate::store::TenantStore;
use parking_lot::RwLock;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// One shard: its configuration and an open store handle.
pub struct Shard {
    /// Configuration (URIs may hold credentials: show them only through [`Shard::display_uri`]).
    pub config: ShardConfig,
    /// The backend.
    pub store: Arc<dyn TenantStore>,
    up: AtomicBool,
}

impl Shard {
    /// Wraps an opened store.
    pub fn new(config: ShardConfig, store: Arc<dyn TenantStore>) -> Self {
        Self {
            config,
            store,
            up: AtomicBool::new(true),
        }
    }

    /// The shard's id.
    pub fn id(&self) -> &ShardId {
        &self.config.id
    }

    /// The URI or path with credentials redacted.
    pub fn display_uri(&self) -> String {
        match self.config.kind {
            StoreKind::Mongodb => redact_uri(self.config.uri.as_deref().unwrap_or("")),
            StoreKind::Embedded => self
                .config
                .path
                .as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_default(),
        }
    }

    /// Whether the last health check (or operation) succeeded.
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    /// Records the shard's health.
    pub fn set_up(&self, up: bool) {
        self.up.store(up, Ordering::Relaxed);
        crate::telemetry::metrics::SHARD_UP
            .with_label_values(&[self.config.id.as_str()])
            .set(i64::from(up));
    }
}

/// The shards known to this instance; shards may be added at runtime.
#[derive(Default)]
pub struct ShardSet {
    shards: RwLock<HashMap<ShardId, Arc<Shard>>>,
    /// Shards an operator is draining (catalog setting [`DRAINING_SETTING`]): they take no
    /// new organizations, whatever their configuration says.
    draining: RwLock<std::collections::BTreeSet<ShardId>>,
}

/// Catalog setting: ids of the shards being drained.
pub const DRAINING_SETTING: &str = "draining_shards";

impl ShardSet {
    /// Adds or replaces a shard.
    pub fn insert(&self, shard: Shard) {
        shard.set_up(true);
        self.shards
            .write()
            .insert(shard.id().clone(), Arc::new(shard));
    }

    /// The shard with this id.
    pub fn get(&self, id: &ShardId) -> Option<Arc<Shard>> {
        self.shards.read().get(id).cloned()
    }

    /// All shards, ordered by id.
    pub fn all(&self) -> Vec<Arc<Shard>> {
        let mut v: Vec<_> = self.shards.read().values().cloned().collect();
        v.sort_by(|a, b| a.id().cmp(b.id()));
        v
    }

    /// Configurations of all shards, ordered by id, with the drains in force applied.
    pub fn configs(&self) -> Vec<ShardConfig> {
        let draining = self.draining.read();
        self.all()
            .iter()
            .map(|s| {
                let mut c = s.config.clone();
                if draining.contains(&c.id) {
                    c.state = crate::config::ShardState::Draining;
                }
                c
            })
            .collect()
    }

    /// Replaces the set of shards being drained.
    pub fn set_draining(&self, ids: impl IntoIterator<Item = ShardId>) {
        *self.draining.write() = ids.into_iter().collect();
    }

    /// Whether the shard takes new organizations (configured active, not being drained).
    pub fn accepts_tenants(&self, id: &ShardId) -> bool {
        self.configs()
            .iter()
            .any(|c| &c.id == id && c.state == crate::config::ShardState::Active)
    }
}
