//! The fleet: what makes several instances on one catalog behave as one.
//!
//! - **Change feed** ([`Fleet::run_follower`]): every change to organizations, admins and
//!   settings reaches every instance through the catalog's change stream and invalidates its
//!   caches. If the stream cannot resume, the instance resyncs (drops every cache); while it
//!   is down, the instance polls the catalog's revision, caches for a short TTL only, and
//!   `/readyz` says so.
//! - **Registry** ([`Fleet::run_heartbeats`]): each instance heartbeats its id, version,
//!   addresses and the newest catalog revision it has applied, under a lease.
//! - **Fence** ([`Fleet::fence`]): after a placement change commits, wait until every live
//!   instance has applied it and finished the requests that used the old state (or its lease,
//!   plus the longest a request may run, has lapsed). Renames and deletes touch the shard only
//!   after their fence, so no instance can still be writing where the data is leaving.
//! - An instance that cannot renew its lease stops serving tenant data ([`Fleet::serving`])
//!   before the others stop waiting for it.
//!
//! With the embedded catalog there is one process: the fence only drains local requests.

pub mod gate;

use crate::catalog::{Catalog, CatalogChange, CatalogError, FeedToken, InstanceInfo};
use crate::router::TenantRouter;
use crate::telemetry::metrics;
use async_trait::async_trait;
use chrono::Utc;
use gate::{GateGuard, RequestGate};
use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Fleet settings (`[fleet]`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FleetConfig {
    /// How long an instance counts as live after its last heartbeat (heartbeats run four
    /// times per lease).
    pub lease_seconds: u64,
    /// While the change feed is down: how often the catalog revision is polled (and caches
    /// dropped), and the cache TTL used meanwhile.
    pub degraded_cache_ttl_ms: u64,
}

impl Default for FleetConfig {
    fn default() -> Self {
        Self {
            lease_seconds: 10,
            degraded_cache_ttl_ms: 1000,
        }
    }
}

/// How this instance follows the catalog.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum FeedMode {
    /// One process owns the catalog (embedded): nothing to follow.
    Local = 0,
    /// Following the change stream.
    Stream = 1,
    /// The stream is down: polling the revision, short cache TTL.
    Polling = 2,
}

impl FeedMode {
    fn from_u8(v: u8) -> Self {
        match v {
            1 => Self::Stream,
            2 => Self::Polling,
            _ => Self::Local,
        }
    }

    /// Name shown in `/readyz` and the registry.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Local => "local",
            Self::Stream => "stream",
            Self::Polling => "polling",
        }
    }
}

/// Why a fence gave up.
#[derive(Debug, thiserror::Error)]
pub enum FenceError {
    /// The catalog failed.
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    /// Live instances did not apply the change in time.
    #[error("instances {0:?} did not apply the change in time")]
    Timeout(Vec<String>),
}

/// Called by the follower for changes that are not cache entries.
#[async_trait]
pub trait SettingsListener: Send + Sync {
    /// A catalog setting changed (rate-limit overrides, runtime shards).
    async fn setting_changed(&self, key: &str);
    /// Everything may have changed (resync).
    async fn reload_all(&self);
}

/// This instance's view of the fleet.
pub struct Fleet {
    catalog: Arc<dyn Catalog>,
    router: TenantRouter,
    gate: Arc<RequestGate>,
    shared: bool,
    config: FleetConfig,
    cache_ttl: Duration,
    info: Mutex<InstanceInfo>,
    applied: AtomicU64,
    mode: AtomicU8,
    started: Instant,
    /// Milliseconds after `started` at which the last successful heartbeat was sent.
    renewed_at_ms: AtomicU64,
    beat_now: tokio::sync::Notify,
    /// Named leases this instance holds (embedded shards), renewed with each heartbeat.
    leases: Mutex<Vec<String>>,
    node_id: String,
    /// Newest revision seen on the feed (not yet necessarily drained).
    seen: AtomicU64,
    seen_changed: tokio::sync::Notify,
    /// Set when another node took one of this instance's leases: stop serving tenant data.
    lease_lost: std::sync::atomic::AtomicBool,
}

/// Instance facts that do not change.
pub struct InstanceFacts {
    /// Public listen address.
    pub listen: String,
    /// Operator listen address.
    pub ops_listen: String,
    /// The longest a request may run (its requests are drained within this).
    pub request_timeout: Duration,
    /// Stable across restarts on one data dir: holds the leases on embedded shards, which
    /// live in that data dir.
    pub node_id: String,
}

impl Fleet {
    /// This instance, on `catalog`; `shared` when other instances may use the catalog.
    pub fn new(
        catalog: Arc<dyn Catalog>,
        router: TenantRouter,
        shared: bool,
        config: FleetConfig,
        cache_ttl: Duration,
        facts: InstanceFacts,
    ) -> Self {
        let now = Utc::now();
        let info = InstanceInfo {
            id: uuid::Uuid::new_v4().simple().to_string(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            listen: facts.listen,
            ops_listen: facts.ops_listen,
            started_at: now,
            last_seen: now,
            lease_ms: config.lease_seconds.max(1) * 1000,
            drain_ms: facts.request_timeout.as_millis() as u64,
            applied_revision: 0,
            feed: if shared { "polling" } else { "local" }.to_owned(),
            node_id: facts.node_id.clone(),
        };
        // Nothing to follow with a private catalog: the feed counts as up.
        metrics::FEED_UP.set(i64::from(!shared));
        Self {
            catalog,
            router,
            gate: Arc::new(RequestGate::default()),
            shared,
            config,
            cache_ttl,
            info: Mutex::new(info),
            applied: AtomicU64::new(0),
            mode: AtomicU8::new(if shared {
                FeedMode::Polling
            } else {
                FeedMode::Local
            } as u8),
            started: Instant::now(),
            renewed_at_ms: AtomicU64::new(0),
            beat_now: tokio::sync::Notify::new(),
            leases: Mutex::new(Vec::new()),
            node_id: facts.node_id,
            seen: AtomicU64::new(0),
            seen_changed: tokio::sync::Notify::new(),
            lease_lost: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// This instance's data-dir id (holder of its leases).
    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    /// This instance's registry id.
    pub fn instance_id(&self) -> String {
        self.info.lock().expect("info lock").id.clone()
    }

    fn lease(&self) -> Duration {
        Duration::from_secs(self.config.lease_seconds.max(1))
    }

    /// Counts a tenant request in (see [`RequestGate`]).
    pub fn enter(&self) -> GateGuard {
        self.gate.enter()
    }

    /// Whether this instance may serve tenant data: always with a private catalog; with a
    /// shared one, only while its registry lease is fresh, since fences stop waiting for an
    /// instance whose lease lapsed.
    pub fn serving(&self) -> bool {
        if !self.shared {
            return true;
        }
        if self.lease_lost.load(Ordering::Relaxed) {
            return false;
        }
        let renewed = self.renewed_at_ms.load(Ordering::Relaxed);
        let now = self.started.elapsed().as_millis() as u64;
        renewed > 0 && now.saturating_sub(renewed) < self.lease().as_millis() as u64
    }

    /// How the catalog is followed, and the newest revision applied.
    pub fn status(&self) -> (FeedMode, u64) {
        (
            FeedMode::from_u8(self.mode.load(Ordering::Relaxed)),
            self.applied.load(Ordering::SeqCst),
        )
    }

    /// Takes the named lease for this node (data dir) and keeps renewing it; fails with the
    /// holder when another live node has it.
    pub async fn hold_lease(&self, name: &str) -> Result<(), String> {
        let holder = self.node_id.clone();
        let lease = self.lease() * 3;
        match self.catalog.acquire_lease(name, &holder, lease).await {
            Ok(None) => {
                self.leases.lock().expect("leases").push(name.to_owned());
                Ok(())
            }
            Ok(Some(other)) => Err(format!("held by instance {other}")),
            Err(e) => Err(e.to_string()),
        }
    }

    /// Waits until every live instance has applied every change committed before this call
    /// and drained the requests that used older state. Returns the fencing revision.
    pub async fn fence(&self) -> Result<u64, FenceError> {
        let revision = self.catalog.next_revision().await?;
        if !self.shared {
            if !self.gate.quiesce_within(self.fence_timeout()).await {
                metrics::FENCE_TIMEOUTS.inc();
                return Err(FenceError::Timeout(vec![self.instance_id()]));
            }
            self.applied.fetch_max(revision, Ordering::SeqCst);
            return Ok(revision);
        }
        self.wait_applied(revision, self.fence_timeout()).await?;
        Ok(revision)
    }

    /// The longest a fence waits: an instance that stopped heartbeating counts as gone after
    /// its lease plus its drain time.
    pub fn fence_timeout(&self) -> Duration {
        self.lease() + Duration::from_millis(self.info_drain_ms()) * 2
    }

    fn info_drain_ms(&self) -> u64 {
        self.info.lock().expect("info lock").drain_ms
    }

    /// Waits until every instance in the registry has applied `revision`, or counts as gone
    /// (lease and drain time lapsed), for at most `timeout`.
    pub async fn wait_applied(&self, revision: u64, timeout: Duration) -> Result<(), FenceError> {
        let started = Instant::now();
        let deadline = started + timeout;
        loop {
            let now = self.catalog.now().await?;
            let lagging: Vec<String> = self
                .catalog
                .instances()
                .await?
                .into_iter()
                .filter(|i| !i.gone_for_fence(now) && i.applied_revision < revision)
                .map(|i| i.id)
                .collect();
            if lagging.is_empty() {
                metrics::FENCE_SECONDS.observe(started.elapsed().as_secs_f64());
                return Ok(());
            }
            if Instant::now() >= deadline {
                metrics::FENCE_TIMEOUTS.inc();
                return Err(FenceError::Timeout(lagging));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Marks `revision` applied (caches invalidated first) once the requests that may have
    /// used older state are done, and tells the registry at once.
    async fn applied_up_to(&self, revision: u64) -> bool {
        // Bounded, so one hung store call cannot wedge every later acknowledgement: the
        // revision is published once the requests before it are really done.
        let drain = Duration::from_millis(self.info_drain_ms().max(1));
        if !self.gate.quiesce_within(drain).await {
            tracing::warn!(
                revision,
                "requests older than a catalog change still running; acknowledging it later"
            );
            return false;
        }
        if self.applied.fetch_max(revision, Ordering::SeqCst) < revision {
            self.beat_now.notify_one();
        }
        true
    }

    /// Publishes the newest revision seen on the feed as applied, one drain at a time, so the
    /// follower never waits for slow requests before applying the next invalidation.
    async fn run_acks(self: Arc<Self>) {
        loop {
            self.seen_changed.notified().await;
            loop {
                let seen = self.seen.load(Ordering::SeqCst);
                if seen <= self.applied.load(Ordering::SeqCst) || self.applied_up_to(seen).await {
                    break;
                }
            }
        }
    }

    fn set_mode(&self, mode: FeedMode) {
        let old = self.mode.swap(mode as u8, Ordering::SeqCst);
        if old != mode as u8 {
            metrics::FEED_UP.set(i64::from(mode == FeedMode::Stream));
            match mode {
                FeedMode::Stream => {
                    self.router.set_ttl(self.cache_ttl);
                    tracing::info!("following the catalog change feed");
                }
                FeedMode::Polling => {
                    self.router.set_ttl(Duration::from_millis(
                        self.config.degraded_cache_ttl_ms.max(1),
                    ));
                    self.router.invalidate_all();
                    tracing::warn!("catalog change feed down: polling, short cache TTL");
                }
                FeedMode::Local => {}
            }
        }
    }

    /// Everything may have changed: drop every cache, reload settings, then the revision read
    /// before the drop is applied.
    async fn resync(&self, listener: &dyn SettingsListener) -> Result<(), CatalogError> {
        let revision = self.catalog.current_revision().await?;
        self.router.invalidate_all();
        listener.reload_all().await;
        self.applied_up_to(revision).await;
        Ok(())
    }

    async fn apply(&self, change: CatalogChange, listener: &dyn SettingsListener) {
        match change {
            CatalogChange::Org(id) => self.router.invalidate_org_id(id).await,
            CatalogChange::Admin(id) => self.router.invalidate_admin(id).await,
            CatalogChange::Setting(key) => listener.setting_changed(&key).await,
            CatalogChange::Revision(r) => {
                // Invalidations before it are done; the ack task drains and publishes.
                self.seen.fetch_max(r, Ordering::SeqCst);
                self.seen_changed.notify_one();
            }
            CatalogChange::Other | CatalogChange::Idle => {}
        }
    }

    /// Follows the catalog's change feed until the process ends (returns at once for a
    /// catalog without one).
    pub async fn run_follower(self: Arc<Self>, listener: Arc<dyn SettingsListener>) {
        if !self.shared {
            return;
        }
        tokio::spawn(self.clone().run_acks());
        let poll = Duration::from_millis(self.config.degraded_cache_ttl_ms.max(50));
        // Test hook: behave as if the catalog offered no change stream.
        let feed_unavailable =
            std::env::var("GATEWAY_FAILPOINT").is_ok_and(|v| v == "feed_unavailable");
        let mut token: Option<FeedToken> = None;
        // Polls that failed to open the stream in a row: logged on the first, then sparsely
        // (a standalone MongoDB has no change streams at all).
        let mut failed_opens: u64 = 0;
        loop {
            let resuming = token.is_some();
            let opened = if feed_unavailable {
                Err(CatalogError::Backend(
                    "change streams unavailable (test hook)".into(),
                ))
            } else {
                self.catalog.watch(token.clone()).await
            };
            let mut stream = match opened {
                Ok(Some(s)) => s,
                Ok(None) => return,
                Err(e) => {
                    self.set_mode(FeedMode::Polling);
                    if resuming {
                        // The stream cannot resume (history gone): start afresh and resync.
                        tracing::warn!(error = %e, "change feed cannot resume; resyncing");
                        token = None;
                    } else {
                        if failed_opens % 600 == 0 {
                            tracing::warn!(error = %e, attempts = failed_opens + 1, "cannot open the catalog change feed; polling the catalog (change streams need a replica set or sharded cluster)");
                        }
                        failed_opens += 1;
                        if let Err(e) = self.resync(listener.as_ref()).await {
                            tracing::debug!(error = %e, "catalog poll failed");
                        }
                        tokio::time::sleep(poll).await;
                    }
                    continue;
                }
            };
            failed_opens = 0;
            // Opened before the resync, so nothing committed in between is missed.
            if !resuming {
                if let Err(e) = self.resync(listener.as_ref()).await {
                    tracing::warn!(error = %e, "resync failed");
                    tokio::time::sleep(poll).await;
                    continue;
                }
            }
            self.set_mode(FeedMode::Stream);
            let mut delivered = false;
            loop {
                match stream.next_change().await {
                    Ok(Some(change)) => {
                        delivered = true;
                        self.apply(change, listener.as_ref()).await;
                        if let Some(t) = stream.resume_token() {
                            token = Some(t);
                        }
                    }
                    Ok(None) => break,
                    Err(e) => {
                        tracing::warn!(error = %e, "catalog change feed interrupted");
                        break;
                    }
                }
            }
            self.set_mode(FeedMode::Polling);
            if !delivered {
                if resuming {
                    // Resumed, then failed before its first poll answered: the resume point
                    // may be gone from the server's history. Start afresh (and resync).
                    token = None;
                }
                // A stream that fails at once would otherwise spin: back off.
                tokio::time::sleep(poll).await;
            }
        }
    }

    /// Joins the registry: removes entries a previous process on this data dir left behind
    /// (it is gone: fences need not wait out its lease), then sends the first heartbeat.
    pub async fn join(&self) -> Result<(), CatalogError> {
        let me = self.instance_id();
        let before: Vec<InstanceInfo> = self
            .catalog
            .instances()
            .await?
            .into_iter()
            .filter(|i| i.node_id == self.node_id && i.id != me)
            .collect();
        if !before.is_empty() {
            // Gone only if it does not heartbeat within one heartbeat period: a process still
            // running on this data dir must not be hidden from fences.
            tokio::time::sleep(self.lease() / 4 + Duration::from_millis(250)).await;
            let after = self.catalog.instances().await?;
            for old in before {
                let beating = after
                    .iter()
                    .any(|a| a.id == old.id && a.last_seen != old.last_seen);
                if beating {
                    return Err(CatalogError::Backend(format!(
                        "instance {} is still running on this data dir",
                        old.id
                    )));
                }
                tracing::info!(instance = %old.id, "removing this data dir's previous instance from the registry");
                self.catalog.remove_instance(&old.id).await?;
            }
        }
        self.heartbeat().await
    }

    /// Sends one heartbeat; renews held leases.
    pub async fn heartbeat(&self) -> Result<(), CatalogError> {
        let sent_at = self.started.elapsed().as_millis().max(1) as u64;
        let info = {
            let mut info = self.info.lock().expect("info lock");
            info.last_seen = Utc::now();
            info.applied_revision = self.applied.load(Ordering::SeqCst);
            info.feed = self.status().0.as_str().to_owned();
            info.clone()
        };
        self.catalog.heartbeat(&info).await?;
        let leases = self.leases.lock().expect("leases").clone();
        for name in leases {
            if let Some(other) = self
                .catalog
                .acquire_lease(&name, &self.node_id, self.lease() * 3)
                .await?
            {
                tracing::error!(lease = %name, holder = %other, "lost a lease to another node: no longer serving tenant data");
                self.lease_lost.store(true, Ordering::Relaxed);
            }
        }
        if self.shared && !self.serving() && !self.lease_lost.load(Ordering::Relaxed) {
            // Back from a lapsed lease: fences may have gone ahead without this instance, so
            // nothing cached before may be trusted.
            self.router.invalidate_all();
            tracing::warn!("registry lease renewed after it lapsed: caches dropped");
        }
        self.renewed_at_ms.store(sent_at, Ordering::Relaxed);
        Ok(())
    }

    /// Heartbeats four times per lease, and at once when a new revision is applied (so fences
    /// do not wait for the next beat). Removes registry entries long expired.
    pub async fn run_heartbeats(self: Arc<Self>) {
        let period = self.lease() / 4;
        let mut beats: u64 = 0;
        loop {
            tokio::select! {
                _ = tokio::time::sleep(period) => {}
                _ = self.beat_now.notified() => {}
            }
            if let Err(e) = self.heartbeat().await {
                tracing::warn!(error = %e, "heartbeat failed");
            }
            beats += 1;
            if beats % 40 == 0 {
                self.forget_long_gone().await;
            }
            // Coalesces bursts of revisions into one registry write.
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    async fn forget_long_gone(&self) {
        let (Ok(all), Ok(now)) = (self.catalog.instances().await, self.catalog.now().await) else {
            return;
        };
        for i in all {
            if now > i.last_seen + chrono::Duration::milliseconds(i.lease_ms as i64 * 30) {
                let _ = self.catalog.remove_instance(&i.id).await;
            }
        }
    }

    /// Leaves the registry and gives up leases (clean shutdown).
    pub async fn leave(&self) {
        let id = self.instance_id();
        let leases = self.leases.lock().expect("leases").clone();
        for name in leases {
            let _ = self.catalog.release_lease(&name, &self.node_id).await;
        }
        if let Err(e) = self.catalog.remove_instance(&id).await {
            tracing::warn!(error = %e, "could not leave the instance registry");
        }
    }
}

/// The node id kept in `<data_dir>/node_id`, created on first start.
pub fn node_id(data_dir: &std::path::Path) -> std::io::Result<String> {
    let path = data_dir.join("node_id");
    let valid = |id: &str| id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit());
    match std::fs::read_to_string(&path) {
        // Only what this function writes is accepted: the id reaches logs and the catalog.
        Ok(id) if valid(id.trim()) => Ok(id.trim().to_owned()),
        _ => {
            let id = uuid::Uuid::new_v4().simple().to_string();
            std::fs::write(&path, &id)?;
            Ok(id)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::embedded::EmbeddedCatalog;

    fn fleet(catalog: Arc<dyn Catalog>) -> Fleet {
        let router = TenantRouter::new(catalog.clone(), 10, Duration::from_secs(60));
        Fleet::new(
            catalog,
            router,
            true,
            FleetConfig::default(),
            Duration::from_secs(60),
            InstanceFacts {
                listen: "127.0.0.1:1".into(),
                ops_listen: "127.0.0.1:2".into(),
                request_timeout: Duration::from_millis(500),
                node_id: "0".repeat(32),
            },
        )
    }

    fn peer(id: &str, applied: u64, last_seen: chrono::DateTime<Utc>) -> InstanceInfo {
        InstanceInfo {
            id: id.into(),
            version: "test".into(),
            listen: String::new(),
            ops_listen: String::new(),
            started_at: last_seen,
            last_seen,
            lease_ms: 1_000,
            drain_ms: 500,
            applied_revision: applied,
            feed: "stream".into(),
            node_id: String::new(),
        }
    }

    /// The fence primitive: every live instance must have applied the revision; one whose
    /// lease and drain time lapsed no longer counts.
    #[tokio::test]
    async fn wait_applied_waits_for_live_instances_only() {
        let dir = tempfile::tempdir().unwrap();
        let catalog: Arc<dyn Catalog> =
            Arc::new(EmbeddedCatalog::open(&dir.path().join("c.redb")).unwrap());
        let f = fleet(catalog.clone());
        let now = Utc::now();
        catalog.heartbeat(&peer("ahead", 10, now)).await.unwrap();
        f.wait_applied(10, Duration::from_millis(100))
            .await
            .unwrap();
        // A live instance behind the revision holds the fence until it catches up.
        catalog.heartbeat(&peer("behind", 9, now)).await.unwrap();
        match f.wait_applied(10, Duration::from_millis(100)).await {
            Err(FenceError::Timeout(ids)) => assert_eq!(ids, vec!["behind".to_owned()]),
            other => panic!("expected a timeout, got {other:?}"),
        }
        let catch_up = {
            let catalog = catalog.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(50)).await;
                catalog.heartbeat(&peer("behind", 10, Utc::now())).await
            })
        };
        f.wait_applied(10, Duration::from_secs(2)).await.unwrap();
        catch_up.await.unwrap().unwrap();
        // One that stopped heartbeating (lease 1 s + drain 0.5 s ago) is not waited for.
        let long_ago = Utc::now() - chrono::Duration::milliseconds(1_600);
        catalog.heartbeat(&peer("dead", 0, long_ago)).await.unwrap();
        f.wait_applied(10, Duration::from_millis(100))
            .await
            .unwrap();
        // Within its lease plus drain time it still counts.
        let recent = Utc::now() - chrono::Duration::milliseconds(1_200);
        catalog.heartbeat(&peer("dead", 0, recent)).await.unwrap();
        assert!(f.wait_applied(10, Duration::from_millis(50)).await.is_err());
    }

    #[test]
    fn node_ids_are_kept_and_only_valid_ones_accepted() {
        let dir = tempfile::tempdir().unwrap();
        let first = node_id(dir.path()).unwrap();
        assert_eq!(node_id(dir.path()).unwrap(), first);
        std::fs::write(dir.path().join("node_id"), "bad\nid").unwrap();
        let replaced = node_id(dir.path()).unwrap();
        assert_eq!(replaced.len(), 32);
        assert_ne!(replaced, "bad\nid");
    }
}
