//! Tenant collections per (shard, database), kept in memory so that placing a new
//! organization needs no catalog round trip and no lock held across I/O. The catalog's counts
//! stay authoritative: they are loaded at start and re-read periodically (other instances place
//! organizations too).

use super::policy::{choose_placement, PlacementChoice};
use crate::config::ShardConfig;
use crate::domain::{DatabaseName, OrgId, ShardId};
use parking_lot::Mutex;
use std::collections::HashMap;

/// In-memory collection counts with atomic reserve-and-count placement.
#[derive(Default)]
pub struct CapacityCounts {
    counts: Mutex<HashMap<(ShardId, DatabaseName), u64>>,
}

impl CapacityCounts {
    /// Replaces every count with the catalog's.
    pub fn replace(&self, from_catalog: Vec<(ShardId, DatabaseName, u64)>) {
        let fresh = from_catalog
            .into_iter()
            .map(|(s, d, n)| ((s, d), n))
            .collect();
        *self.counts.lock() = fresh;
    }

    /// Chooses a placement for `org` and counts its collection at once, so concurrent creates
    /// never overfill a database.
    pub fn reserve(
        &self,
        org: OrgId,
        region: Option<&str>,
        shards: &[ShardConfig],
    ) -> Option<PlacementChoice> {
        let mut counts = self.counts.lock();
        let choice = choose_placement(org, region, shards, &counts)?;
        *counts
            .entry((choice.shard.clone(), choice.database.clone()))
            .or_insert(0) += 1;
        Some(choice)
    }

    /// A copy of the counts (for planning moves).
    pub fn snapshot(&self) -> HashMap<(ShardId, DatabaseName), u64> {
        self.counts.lock().clone()
    }

    /// Counts one collection in the database a move goes to: `database` when given, else the
    /// lowest-numbered database on `shard` still under its split ratio.
    pub fn reserve_on(&self, shard: &ShardConfig, database: Option<DatabaseName>) -> DatabaseName {
        let mut counts = self.counts.lock();
        let db = database.unwrap_or_else(|| crate::placement::policy::database_on(shard, &counts));
        *counts.entry((shard.id.clone(), db.clone())).or_insert(0) += 1;
        db
    }

    /// Uncounts a collection (org deleted, or a reservation not used).
    pub fn release(&self, shard: &ShardId, database: &DatabaseName) {
        if let Some(n) = self
            .counts
            .lock()
            .get_mut(&(shard.clone(), database.clone()))
        {
            *n = n.saturating_sub(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reservations_count_immediately() {
        let c = CapacityCounts::default();
        let mut shard = ShardConfig::local_embedded();
        shard.max_collections_per_database = 10;
        let shards = vec![shard];
        let picks: Vec<_> = (0..10)
            .map(|_| {
                c.reserve(OrgId::generate(), None, &shards)
                    .unwrap()
                    .database
            })
            .collect();
        assert_eq!(picks.iter().filter(|d| d.as_str() == "db_1").count(), 9);
        c.release(&shards[0].id, &DatabaseName::numbered("db", 1));
        let next = c.reserve(OrgId::generate(), None, &shards).unwrap();
        assert_eq!(next.database.as_str(), "db_1");
    }
}
