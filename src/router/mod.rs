//! Router: resolves an organization to its record and placement through a moka cache in front
//! of the catalog. A cached tenant costs no catalog round trip; every change this instance
//! makes invalidates the entry, and entries expire after the TTL so changes made by other
//! instances are picked up.

use crate::catalog::{AdminRecord, Catalog, CatalogResult, OrgRecord};
use crate::domain::{AdminId, NormalizedOrgName, OrgId};
use crate::telemetry::metrics;
use moka::future::Cache;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Cached tenant and admin lookups.
#[derive(Clone)]
pub struct TenantRouter {
    catalog: Arc<dyn Catalog>,
    orgs: Cache<OrgId, Arc<OrgRecord>>,
    names: Cache<NormalizedOrgName, OrgId>,
    admins: Cache<AdminId, Arc<AdminRecord>>,
}

impl TenantRouter {
    /// A router over `catalog` holding at most `max_entries` tenants for `ttl`.
    pub fn new(catalog: Arc<dyn Catalog>, max_entries: u64, ttl: Duration) -> Self {
        Self {
            catalog,
            orgs: Cache::builder()
                .max_capacity(max_entries)
                .time_to_live(ttl)
                .build(),
            names: Cache::builder()
                .max_capacity(max_entries)
                .time_to_live(ttl)
                .build(),
            admins: Cache::builder()
                .max_capacity(max_entries)
                .time_to_live(ttl)
                .build(),
        }
    }

    /// The catalog behind the cache.
    pub fn catalog(&self) -> &Arc<dyn Catalog> {
        &self.catalog
    }

    /// The organization with this id (cached).
    #[tracing::instrument(name = "resolve_tenant", skip(self))]
    pub async fn org(&self, id: OrgId) -> CatalogResult<Option<Arc<OrgRecord>>> {
        let started = Instant::now();
        if let Some(hit) = self.orgs.get(&id).await {
            metrics::CACHE_LOOKUPS.with_label_values(&["hit"]).inc();
            metrics::PLACEMENT_RESOLVE_SECONDS.observe(started.elapsed().as_secs_f64());
            return Ok(Some(hit));
        }
        metrics::CACHE_LOOKUPS.with_label_values(&["miss"]).inc();
        let found = self.catalog.org_by_id(id).await?.map(Arc::new);
        if let Some(org) = &found {
            self.orgs.insert(id, org.clone()).await;
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
        let found = self.catalog.org_by_name(name).await?.map(Arc::new);
        if let Some(org) = &found {
            self.names.insert(name.clone(), org.id).await;
            self.orgs.insert(org.id, org.clone()).await;
        }
        Ok(found)
    }

    /// The admin with this id (cached; used on every authenticated request).
    pub async fn admin(&self, id: AdminId) -> CatalogResult<Option<Arc<AdminRecord>>> {
        if let Some(hit) = self.admins.get(&id).await {
            return Ok(Some(hit));
        }
        let found = self.catalog.admin_by_id(id).await?.map(Arc::new);
        if let Some(a) = &found {
            self.admins.insert(id, a.clone()).await;
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
        self.orgs.invalidate(&org.id).await;
        self.names.invalidate(&org.normalized_name()).await;
    }

    /// Drops a cached admin after a change.
    pub async fn invalidate_admin(&self, id: AdminId) {
        self.admins.invalidate(&id).await;
    }

    /// Tenants currently cached.
    pub fn cached_tenants(&self) -> u64 {
        self.orgs.entry_count()
    }
}
