//! Tenant collections per (shard, database), kept in memory so that placing a new
//! organization needs no catalog round trip and no lock held across I/O. The catalog's counts
//! stay authoritative: they are loaded at start and re-read periodically (other instances place
//! organizations too).

use super::policy::{choose_placement, PlacementChoice};
use crate::config::ShardConfig;
use crate::domain::{DatabaseName, OrgId, ShardId};
use parking_lot::Mutex;
use std::collections::HashMap;

type Key = (ShardId, DatabaseName);

/// In-memory collection counts with atomic reserve-and-count placement.
#[derive(Default)]
pub struct CapacityCounts {
    counts: Mutex<Counts>,
}

#[derive(Default)]
struct Counts {
    by_database: HashMap<Key, u64>,
    /// Creates between [`CapacityCounts::reserve`] and [`CapacityCounts::settle`], per
    /// database: their collection may not be in a catalog read yet.
    in_flight: HashMap<Key, u64>,
}

impl CapacityCounts {
    /// Replaces every count with the catalog's, except that a database with creates in
    /// flight keeps the higher of the two: a catalog read that started before such a create
    /// recorded its organization would otherwise drop its reservation, and the next create
    /// would overfill the database.
    pub fn replace(&self, from_catalog: Vec<(ShardId, DatabaseName, u64)>) {
        let mut counts = self.counts.lock();
        let fresh: HashMap<Key, u64> = from_catalog
            .into_iter()
            .map(|(s, d, n)| ((s, d), n))
            .collect();
        let mut merged = fresh;
        for key in counts.in_flight.keys() {
            if let Some(&mine) = counts.by_database.get(key) {
                let entry = merged.entry(key.clone()).or_insert(0);
                *entry = (*entry).max(mine);
            }
        }
        counts.by_database = merged;
    }

    /// Ends a create begun by [`Self::reserve`] (recorded in the catalog, or released).
    pub fn settle(&self, shard: &ShardId, database: &DatabaseName) {
        let mut counts = self.counts.lock();
        let key = (shard.clone(), database.clone());
        if let Some(n) = counts.in_flight.get_mut(&key) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                counts.in_flight.remove(&key);
            }
        }
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
        let choice = choose_placement(org, region, shards, &counts.by_database)?;
        let key = (choice.shard.clone(), choice.database.clone());
        *counts.by_database.entry(key.clone()).or_insert(0) += 1;
        *counts.in_flight.entry(key).or_insert(0) += 1;
        Some(choice)
    }

    /// A copy of the counts (for planning moves).
    pub fn snapshot(&self) -> HashMap<(ShardId, DatabaseName), u64> {
        self.counts.lock().by_database.clone()
    }

    /// Counts one collection in the database a move goes to: `database` when given, else the
    /// lowest-numbered database on `shard` still under its split ratio.
    pub fn reserve_on(&self, shard: &ShardConfig, database: Option<DatabaseName>) -> DatabaseName {
        let mut counts = self.counts.lock();
        let db = database
            .unwrap_or_else(|| crate::placement::policy::database_on(shard, &counts.by_database));
        *counts
            .by_database
            .entry((shard.id.clone(), db.clone()))
            .or_insert(0) += 1;
        db
    }

    /// Uncounts a collection (org deleted, or a reservation not used).
    pub fn release(&self, shard: &ShardId, database: &DatabaseName) {
        if let Some(n) = self
            .counts
            .lock()
            .by_database
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

    /// A catalog read that started before an in-flight create recorded its organization must
    /// not drop that create's reservation; once the create is settled, the catalog decides.
    #[test]
    fn a_refresh_keeps_reservations_in_flight() {
        let c = CapacityCounts::default();
        let shards = vec![ShardConfig::local_embedded()];
        let choice = c.reserve(OrgId::generate(), None, &shards).unwrap();
        let key = (choice.shard.clone(), choice.database.clone());
        // Read before the create was recorded: 0 collections.
        c.replace(vec![(key.0.clone(), key.1.clone(), 0)]);
        assert_eq!(c.snapshot().get(&key), Some(&1));
        c.settle(&key.0, &key.1);
        c.replace(vec![(key.0.clone(), key.1.clone(), 0)]);
        assert_eq!(c.snapshot().get(&key), Some(&0));
    }
}
