//! Router: resolves an organization to its record and placement through a moka cache in front
//! of the catalog. A cached tenant costs no catalog round trip. Entries are invalidated when
//! this instance changes them and, in a fleet, when the catalog's change feed reports a change
//! (`crate::fleet`); they also expire after a TTL, which the feed shortens while it is down.
//!
//! A lookup that misses reads the catalog and then caches what it read. An invalidation that
//! lands while that read is in flight must win, or the stale record would be cached for a whole
//! TTL: every invalidation bumps [`TenantRouter`]'s invalidation counter first, and a reader
//! that sees the counter moved during its read drops what it just cached.

use crate::catalog::{AdminRecord, Catalog, CatalogResult, OrgRecord};
use crate::domain::{AdminId, NormalizedOrgName, OrgId};
use crate::telemetry::metrics;
use moka::future::Cache;
use moka::Expiry;
use std::hash::Hash;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Time to live of new entries, changeable at runtime (shortened while the feed is down).
#[derive(Clone)]
struct DynamicTtl(Arc<AtomicU64>);

impl<K, V> Expiry<K, V> for DynamicTtl {
    fn expire_after_create(&self, _: &K, _: &V, _: Instant) -> Option<Duration> {
        Some(Duration::from_millis(self.0.load(Ordering::Relaxed)))
    }
}

/// Cached tenant and admin lookups.
#[derive(Clone)]
pub struct TenantRouter {
    catalog: Arc<dyn Catalog>,
    orgs: Cache<OrgId, Arc<OrgRecord>>,
    names: Cache<NormalizedOrgName, OrgId>,
    admins: Cache<AdminId, Arc<AdminRecord>>,
    invalidations: Arc<AtomicU64>,
    ttl_ms: Arc<AtomicU64>,
}

fn cache<K, V>(max_entries: u64, ttl: &DynamicTtl) -> Cache<K, V>
where
    K: Hash + Eq + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
{
    Cache::builder()
        .max_capacity(max_entries)
        .expire_after(ttl.clone())
        .build()
}

impl TenantRouter {
    /// A router over `catalog` holding at most `max_entries` tenants for `ttl`.
    pub fn new(catalog: Arc<dyn Catalog>, max_entries: u64, ttl: Duration) -> Self {
        let ttl_ms = Arc::new(AtomicU64::new(ttl.as_millis() as u64));
        let expiry = DynamicTtl(ttl_ms.clone());
        Self {
            catalog,
            orgs: cache(max_entries, &expiry),
            names: cache(max_entries, &expiry),
            admins: cache(max_entries, &expiry),
            invalidations: Arc::new(AtomicU64::new(0)),
            ttl_ms,
        }
    }

    /// The catalog behind the cache.
    pub fn catalog(&self) -> &Arc<dyn Catalog> {
        &self.catalog
    }

    /// Sets the time to live of entries cached from now on.
    pub fn set_ttl(&self, ttl: Duration) {
        self.ttl_ms
            .store(ttl.as_millis().max(1) as u64, Ordering::Relaxed);
    }

    fn epoch(&self) -> u64 {
        self.invalidations.load(Ordering::SeqCst)
    }

    /// Caches `value` read from the catalog at `epoch`, unless an invalidation happened since.
    async fn insert_read<K, V>(&self, cache: &Cache<K, V>, key: K, value: V, epoch: u64)
    where
        K: Hash + Eq + Clone + Send + Sync + 'static,
        V: Clone + Send + Sync + 'static,
    {
        cache.insert(key.clone(), value).await;
        // An invalidation that bumped the counter before this check may have run its
        // `invalidate` before our insert: undo the insert. One that bumps it later also
        // invalidates later, after our insert.
        if self.epoch() != epoch {
            cache.invalidate(&key).await;
        }
    }

    /// The organization with this id (cached).
    #[tracing::instrument(level = "debug", name = "resolve_tenant", skip(self))]
    pub async fn org(&self, id: OrgId) -> CatalogResult<Option<Arc<OrgRecord>>> {
        let started = Instant::now();
        if let Some(hit) = self.orgs.get(&id).await {
            metrics::CACHE_LOOKUPS.with_label_values(&["hit"]).inc();
            metrics::PLACEMENT_RESOLVE_SECONDS.observe(started.elapsed().as_secs_f64());
            return Ok(Some(hit));
        }
        metrics::CACHE_LOOKUPS.with_label_values(&["miss"]).inc();
        let epoch = self.epoch();
        let found = self.catalog.org_by_id(id).await?.map(Arc::new);
        if let Some(org) = &found {
            self.insert_read(&self.orgs, id, org.clone(), epoch).await;
        }
        metrics::PLACEMENT_RESOLVE_SECONDS.observe(started.elapsed().as_secs_f64());
        metrics::CACHE_ENTRIES.set(self.orgs.entry_count() as i64);
        Ok(found)
    }

    /// The organization currently named `name` (cached).
    pub async fn org_by_name(
        &self,
        name: &NormalizedOrgName,
    ) -> CatalogResult<Option<Arc<OrgRecord>>> {
        if let Some(id) = self.names.get(name).await {
            if let Some(org) = self.org(id).await? {
                if &org.normalized_name() == name {
                    return Ok(Some(org));
                }
            }
            self.names.invalidate(name).await;
        }
        metrics::CACHE_LOOKUPS.with_label_values(&["miss"]).inc();
        let epoch = self.epoch();
        let found = self.catalog.org_by_name(name).await?.map(Arc::new);
        if let Some(org) = &found {
            self.insert_read(&self.names, name.clone(), org.id, epoch)
                .await;
            self.insert_read(&self.orgs, org.id, org.clone(), epoch)
                .await;
        }
        Ok(found)
    }

    /// The admin with this id (cached; used on every authenticated request).
    pub async fn admin(&self, id: AdminId) -> CatalogResult<Option<Arc<AdminRecord>>> {
        if let Some(hit) = self.admins.get(&id).await {
            return Ok(Some(hit));
        }
        let epoch = self.epoch();
        let found = self.catalog.admin_by_id(id).await?.map(Arc::new);
        if let Some(a) = &found {
            self.insert_read(&self.admins, id, a.clone(), epoch).await;
        }
        Ok(found)
    }

    /// Puts a known-current record in the cache (warm-up and benchmarks).
    pub async fn prime(&self, org: OrgRecord) {
        let org = Arc::new(org);
        self.names.insert(org.normalized_name(), org.id).await;
        self.orgs.insert(org.id, org).await;
    }

    /// Drops cached state of an organization after this instance changed it.
    pub async fn invalidate_org(&self, org: &OrgRecord) {
        self.invalidations.fetch_add(1, Ordering::SeqCst);
        self.orgs.invalidate(&org.id).await;
        self.names.invalidate(&org.normalized_name()).await;
    }

    /// Drops a cached organization known only by id (a change seen on the feed). Cached
    /// names pointing at it are checked against the record on their next use.
    pub async fn invalidate_org_id(&self, id: OrgId) {
        self.invalidations.fetch_add(1, Ordering::SeqCst);
        self.orgs.invalidate(&id).await;
    }

    /// Drops a cached admin after a change.
    pub async fn invalidate_admin(&self, id: AdminId) {
        self.invalidations.fetch_add(1, Ordering::SeqCst);
        self.admins.invalidate(&id).await;
    }

    /// Drops everything (a resync after the change feed was interrupted).
    pub fn invalidate_all(&self) {
        self.invalidations.fetch_add(1, Ordering::SeqCst);
        self.orgs.invalidate_all();
        self.names.invalidate_all();
        self.admins.invalidate_all();
    }

    /// Tenants currently cached.
    pub fn cached_tenants(&self) -> u64 {
        self.orgs.entry_count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::embedded::EmbeddedCatalog;

    /// A lookup whose catalog read started before an invalidation must not cache what it read.
    #[tokio::test]
    async fn an_invalidation_during_a_read_wins() {
        let dir = tempfile::tempdir().unwrap();
        let catalog = Arc::new(EmbeddedCatalog::open(&dir.path().join("c.redb")).unwrap());
        let router = TenantRouter::new(catalog, 100, Duration::from_secs(300));
        let id = AdminId::generate();
        let admin = Arc::new(crate::catalog::AdminRecord {
            id,
            org_id: OrgId::generate(),
            email: crate::domain::Email::parse("a@b.example").unwrap(),
            password_hash: String::new(),
            credential_version: 0,
            created_at: chrono::Utc::now(),
            updated_at: chrono::Utc::now(),
            revision: 1,
        });
        // The read began at `epoch`; an invalidation lands before its insert.
        let epoch = router.epoch();
        router.invalidate_admin(id).await;
        router
            .insert_read(&router.admins, id, admin.clone(), epoch)
            .await;
        assert!(router.admins.get(&id).await.is_none(), "stale read cached");
        // Without an invalidation in between, the read is cached.
        let epoch = router.epoch();
        router.insert_read(&router.admins, id, admin, epoch).await;
        assert!(router.admins.get(&id).await.is_some());
    }
}
