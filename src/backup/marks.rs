//! Write marks: when each organization's data was last written, cheaply enough for the data
//! path, so `backup --since` can leave out organizations untouched since then.
//!
//! Each instance remembers when it last recorded a mark for an organization. Before a data
//! write, if that was `interval` or more ago (or never), it records the current time in the
//! catalog ([`Catalog::mark_written`], a `$max`) and only then lets the write go on; so a
//! crash after the write still leaves its mark, and the catalog sees at most one mark per
//! organization per interval per instance. Guarantee: a write that began at time `w` belongs
//! to an organization whose mark is at least `w - interval`.

use crate::catalog::{Catalog, CatalogError, CatalogResult};
use crate::domain::OrgId;
use chrono::Utc;
use moka::future::Cache;
use std::time::{Duration, Instant};

/// Organizations remembered at most (those written within one interval; beyond it the least
/// recently used are marked again on their next write, which is only an extra catalog write).
const MAX_REMEMBERED: u64 = 1_000_000;

/// The marks this instance recorded recently, per organization.
pub struct WriteMarks {
    interval: Duration,
    /// When this instance decided to record each organization's last mark.
    recent: Cache<OrgId, Instant>,
}

impl WriteMarks {
    /// Marks at most once per `interval` per organization.
    pub fn new(interval: Duration) -> Self {
        Self {
            interval,
            recent: Cache::builder()
                .max_capacity(MAX_REMEMBERED)
                .time_to_live(interval)
                .build(),
        }
    }

    /// Called before each data write of `org`: records a mark in the catalog unless this
    /// instance recorded one less than `interval` ago. Concurrent writes of one organization
    /// share one catalog write, and wait for it. An error means no mark was recorded, and the
    /// write must not go on.
    pub async fn before_write(&self, catalog: &dyn Catalog, org: OrgId) -> CatalogResult<()> {
        // A remembered mark can outlive the interval by the catalog write's latency (its
        // entry's time to live starts when it is stored): such a mark is recorded again.
        for _ in 0..3 {
            let decided = self
                .recent
                .try_get_with(org, async {
                    // Taken before the mark's time, so the next mark is due no later than
                    // `interval` after the time recorded.
                    let decided = Instant::now();
                    catalog
                        .mark_written(org, Utc::now())
                        .await
                        .map(|()| decided)
                })
                .await
                .map_err(|e: std::sync::Arc<CatalogError>| match e.as_ref() {
                    CatalogError::Unavailable(m) => CatalogError::Unavailable(m.clone()),
                    e => CatalogError::Backend(e.to_string()),
                })?;
            if decided.elapsed() < self.interval {
                return Ok(());
            }
            self.recent.invalidate(&org).await;
        }
        // Never stale three times in a row in practice; if so, mark without the cache.
        catalog.mark_written(org, Utc::now()).await
    }

    /// Drops expired entries now (the cache also does it as it goes).
    pub async fn evict_idle(&self) {
        self.recent.run_pending_tasks().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::embedded::EmbeddedCatalog;

    #[tokio::test]
    async fn marks_once_per_interval_and_again_after_it() {
        let dir = tempfile::tempdir().unwrap();
        let catalog = EmbeddedCatalog::open(&dir.path().join("catalog.redb")).unwrap();
        let marks = WriteMarks::new(Duration::from_millis(300));
        let org: OrgId = uuid::Uuid::now_v7().to_string().parse().unwrap();
        let before = Utc::now();
        marks.before_write(&catalog, org).await.unwrap();
        let first = catalog.last_written(org).await.unwrap().unwrap();
        assert!(first >= before - chrono::Duration::milliseconds(1));
        // Within the interval: no new catalog write.
        tokio::time::sleep(Duration::from_millis(20)).await;
        marks.before_write(&catalog, org).await.unwrap();
        assert_eq!(catalog.last_written(org).await.unwrap(), Some(first));
        // After it: a new mark.
        tokio::time::sleep(Duration::from_millis(320)).await;
        marks.evict_idle().await;
        marks.before_write(&catalog, org).await.unwrap();
        let second = catalog.last_written(org).await.unwrap().unwrap();
        assert!(second > first);
    }
}
