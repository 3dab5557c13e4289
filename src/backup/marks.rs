//! Write marks: when each organization's data was last written, cheaply enough for the data
//! path, so `backup --since` can leave out organizations untouched since then.
//!
//! Each instance remembers when it last recorded a mark for an organization. Before a data
//! write, if that was `interval` or more ago (or never), it records the current time in the
//! catalog ([`Catalog::mark_written`], a `$max`) and only then lets the write go on; so a
//! crash after the write still leaves its mark, and the catalog sees at most one mark per
//! organization per interval per instance. Guarantee: a write that began at time `w` belongs
//! to an organization whose mark is at least `w - interval`.

use crate::catalog::{Catalog, CatalogResult};
use crate::domain::OrgId;
use chrono::Utc;
use dashmap::DashMap;
use std::time::{Duration, Instant};

/// The marks this instance recorded recently, per organization.
pub struct WriteMarks {
    interval: Duration,
    recent: DashMap<OrgId, Instant>,
}

impl WriteMarks {
    /// Marks at most once per `interval` per organization.
    pub fn new(interval: Duration) -> Self {
        Self {
            interval,
            recent: DashMap::new(),
        }
    }

    /// Called before each data write of `org`: records a mark in the catalog unless this
    /// instance recorded one less than `interval` ago. An error means no mark was recorded,
    /// and the write must not go on.
    pub async fn before_write(&self, catalog: &dyn Catalog, org: OrgId) -> CatalogResult<()> {
        if let Some(at) = self.recent.get(&org) {
            if at.elapsed() < self.interval {
                return Ok(());
            }
        }
        // Taken before the mark's time, so the next mark is due no later than `interval`
        // after the time recorded.
        let decided = Instant::now();
        catalog.mark_written(org, Utc::now()).await?;
        self.recent.insert(org, decided);
        Ok(())
    }

    /// Forgets marks older than the interval (they would be recorded again anyway), so the
    /// map holds only organizations written recently.
    pub fn evict_idle(&self) {
        self.recent.retain(|_, at| at.elapsed() < self.interval);
    }

    /// Organizations remembered (for tests and gauges).
    pub fn len(&self) -> usize {
        self.recent.len()
    }

    /// Whether none is remembered.
    pub fn is_empty(&self) -> bool {
        self.recent.is_empty()
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
        assert_eq!(marks.len(), 1);
        // After it: a new mark, and eviction forgets idle organizations.
        tokio::time::sleep(Duration::from_millis(320)).await;
        marks.evict_idle();
        assert!(marks.is_empty());
        marks.before_write(&catalog, org).await.unwrap();
        let second = catalog.last_written(org).await.unwrap().unwrap();
        assert!(second > first);
    }
}
