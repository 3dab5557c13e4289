//! Router: resolves an organization to its record and placement through a moka cache in front
//! of the catalog. A cached tenant costs no catalog round trip. Entries are invalidated when
//! this instance changes them and, in a fleet, when the catalog's change feed reports a change
//! (`crate::fleet`); they also expire after a TTL, which the feed shortens while it is down.
//!
//! One cache entry per organization, keyed by id; a name is a secondary key in a plain map
//! from name to id, dropped when its organization's entry leaves the cache (moka's eviction
//! listener). A name found there is only trusted once the cached record still carries it.
//! This keeps a cached tenant near 0.7 KB (`benches/tenant_memory`).
//!
//! A lookup that misses reads the catalog and then caches what it read. An invalidation that
//! lands while that read is in flight must win, or the stale record would be cached for a whole
//! TTL: every invalidation bumps [`TenantRouter`]'s invalidation counter first, and a reader
//! that sees the counter moved during its read drops what it just cached.

use crate::catalog::{AdminRecord, Catalog, CatalogResult, OrgRecord};
use crate::domain::{AdminId, NormalizedOrgName, OrgId};
use crate::telemetry::metrics;
use dashmap::DashMap;
use moka::future::Cache;
use moka::notification::RemovalCause;
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
    /// Secondary key of `orgs`: entries live as long as their organization's entry.
    names: Arc<DashMap<NormalizedOrgName, OrgId>>,
    max_entries: u64,
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
        let names: Arc<DashMap<NormalizedOrgName, OrgId>> = Arc::new(DashMap::new());
        let names_of_evicted = names.clone();
        let orgs = Cache::builder()
            .max_capacity(max_entries)
            .expire_after(expiry.clone())
            .eviction_listener(
                move |id: Arc<OrgId>, org: Arc<OrgRecord>, cause: RemovalCause| {
                    // Expired, evicted or invalidated: the name this record carried no longer
                    // has a cached record. Replaced: the same organization is still cached
                    // (a name it no longer carries fails the check on use).
                    if cause != RemovalCause::Replaced {
                        names_of_evicted
                            .remove_if(&org.normalized_name(), |_, mapped| mapped == &*id);
                    }
                },
            )
            .build();
        Self {
            catalog,
            orgs,
            names,
            max_entries,
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
        let mapped = self.names.get(name).map(|id| *id);
        if let Some(id) = mapped {
            if let Some(org) = self.org(id).await? {
                if &org.normalized_name() == name {
                    return Ok(Some(org));
                }
            }
            self.names.remove_if(name, |_, mapped| mapped == &id);
        }
        metrics::CACHE_LOOKUPS.with_label_values(&["miss"]).inc();
        let epoch = self.epoch();
        let found = self.catalog.org_by_name(name).await?.map(Arc::new);
        if let Some(org) = &found {
            self.map_name(name.clone(), org.id).await;
            self.insert_read(&self.orgs, org.id, org.clone(), epoch)
                .await;
        }
        Ok(found)
    }

    /// Maps a name to an id just before its record is cached: if the cache then refuses,
    /// evicts or invalidates the record, its eviction unmaps the name. Names left behind by a
    /// rename (the record was replaced, not removed) are checked against the record on use,
    /// and swept out if they pile up.
    async fn map_name(&self, name: NormalizedOrgName, id: OrgId) {
        if self.names.len() as u64 > self.max_entries.saturating_mul(2) {
            self.sweep_names().await;
        }
        self.names.insert(name, id);
    }

    /// Drops names whose organization has no cached record.
    async fn sweep_names(&self) {
        // Evictions moka has decided but not yet run unmap their names first.
        self.orgs.run_pending_tasks().await;
        let orphans: Vec<(NormalizedOrgName, OrgId)> = self
            .names
            .iter()
            .filter(|e| !self.orgs.contains_key(e.value()))
            .map(|e| (e.key().clone(), *e.value()))
            .collect();
        for (name, id) in orphans {
            self.names.remove_if(&name, |_, mapped| mapped == &id);
        }
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
        self.map_name(org.normalized_name(), org.id).await;
        self.orgs.insert(org.id, org).await;
    }

    /// Drops cached state of an organization after this instance changed it.
    pub async fn invalidate_org(&self, org: &OrgRecord) {
        self.invalidations.fetch_add(1, Ordering::SeqCst);
        self.orgs.invalidate(&org.id).await;
        self.names.remove(&org.normalized_name());
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
        self.names.clear();
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

    fn org_named(name: &str) -> OrgRecord {
        let name = crate::domain::OrgName::parse(name).unwrap();
        let now = chrono::Utc::now();
        OrgRecord {
            id: OrgId::generate(),
            placement: crate::catalog::Placement {
                shard: crate::domain::ShardId::parse("local").unwrap(),
                database: crate::domain::DatabaseName::numbered("db", 1),
                collection: name.collection_name(),
                epoch: 1,
                created_at: now,
                updated_at: now,
            },
            name,
            state: crate::catalog::OrgState::Active,
            created_at: now,
            updated_at: now,
            revision: 0,
            moving: None,
        }
    }

    /// A name is kept only while its organization's record is cached: evicting, expiring or
    /// invalidating the record (by id alone, as the change feed does) drops the name too.
    #[tokio::test]
    async fn names_live_and_die_with_their_record() {
        let dir = tempfile::tempdir().unwrap();
        let catalog = Arc::new(EmbeddedCatalog::open(&dir.path().join("c.redb")).unwrap());
        let router = TenantRouter::new(catalog, 50, Duration::from_secs(300));
        let orgs: Vec<OrgRecord> = (0..200).map(|i| org_named(&format!("Org {i}"))).collect();
        for org in &orgs {
            router.prime(org.clone()).await;
        }
        router.orgs.run_pending_tasks().await;
        assert!(router.orgs.entry_count() <= 50);
        assert_eq!(router.names.len() as u64, router.orgs.entry_count());
        // Invalidated by id: the name goes with it.
        let cached = orgs
            .iter()
            .find(|o| router.names.contains_key(&o.normalized_name()))
            .unwrap();
        router.invalidate_org_id(cached.id).await;
        router.orgs.run_pending_tasks().await;
        assert!(!router.names.contains_key(&cached.normalized_name()));
        // Expired: the name goes too.
        router.set_ttl(Duration::from_millis(1));
        let short = org_named("Short Lived");
        router.prime(short.clone()).await;
        // moka's timer wheel runs expirations about once a second.
        for _ in 0..50 {
            if !router.names.contains_key(&short.normalized_name()) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            router.orgs.run_pending_tasks().await;
        }
        assert!(!router.names.contains_key(&short.normalized_name()));
        router.invalidate_all();
        assert!(router.names.is_empty());
    }
}
