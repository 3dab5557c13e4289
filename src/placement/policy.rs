use crate::config::{ShardConfig, ShardState};
use crate::domain::{DatabaseName, OrgId, ShardId};
use serde::Serialize;
use std::collections::HashMap;

/// Where a new organization goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlacementChoice {
    /// The shard.
    pub shard: ShardId,
    /// The database on it.
    pub database: DatabaseName,
}

/// How full a database is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CapacityState {
    /// Below the alert ratio.
    Ok,
    /// At or above the alert ratio (default 80%).
    Alert,
    /// At or above the split ratio (default 90%): new orgs go to the next database.
    Split,
}

/// Classifies a database's fill level.
pub fn capacity_state(count: u64, shard: &ShardConfig) -> CapacityState {
    let ratio = count as f64 / shard.max_collections_per_database as f64;
    if ratio + 1e-9 >= shard.split_ratio {
        CapacityState::Split
    } else if ratio + 1e-9 >= shard.alert_ratio {
        CapacityState::Alert
    } else {
        CapacityState::Ok
    }
}

/// Collections a database takes before new orgs move to the next one.
fn split_limit(shard: &ShardConfig) -> u64 {
    ((shard.split_ratio * shard.max_collections_per_database as f64) + 1e-9)
        .floor()
        .max(1.0) as u64
}

/// FNV-1a: stable across builds and platforms, which rendezvous hashing needs.
fn fnv1a(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf29ce484222325;
    for p in parts {
        for b in *p {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x100000001b3);
        }
        h ^= 0xff;
        h = h.wrapping_mul(0x100000001b3);
    }
    // Final avalanche (splitmix64) so nearby ids spread.
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58476d1ce4e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d049bb133111eb);
    h ^ (h >> 31)
}

/// Weighted rendezvous score: the shard with the highest score wins.
fn score(org: OrgId, shard: &ShardConfig) -> f64 {
    let h = fnv1a(&[org.to_string().as_bytes(), shard.id.as_str().as_bytes()]);
    // Map to (0, 1): never 0 or 1, so ln() is finite and negative.
    let unit = ((h >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
    -shard.weight / unit.ln()
}

/// Picks the shard (active, in `region` when given) by weighted rendezvous hashing on the org
/// id, then the lowest-numbered database on it still under the split ratio. `counts` holds the
/// current tenant collections per (shard, database). `None` when no shard qualifies.
pub fn choose_placement(
    org: OrgId,
    region: Option<&str>,
    shards: &[ShardConfig],
    counts: &HashMap<(ShardId, DatabaseName), u64>,
) -> Option<PlacementChoice> {
    let shard = shards
        .iter()
        .filter(|s| s.state == ShardState::Active)
        .filter(|s| region.is_none() || s.region.as_deref() == region)
        .max_by(|a, b| score(org, a).total_cmp(&score(org, b)))?;
    Some(PlacementChoice {
        shard: shard.id.clone(),
        database: database_on(shard, counts),
    })
}

/// The lowest-numbered database on `shard` still under its split ratio.
pub fn database_on(
    shard: &ShardConfig,
    counts: &HashMap<(ShardId, DatabaseName), u64>,
) -> DatabaseName {
    let limit = split_limit(shard);
    let mut n = 1u32;
    loop {
        let db = DatabaseName::numbered(&shard.database_prefix, n);
        let count = counts
            .get(&(shard.id.clone(), db.clone()))
            .copied()
            .unwrap_or(0);
        if count < limit {
            return db;
        }
        n += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shard(id: &str, max: u32) -> ShardConfig {
        let mut s = ShardConfig::local_embedded();
        s.id = ShardId::parse(id).unwrap();
        s.max_collections_per_database = max;
        s
    }

    #[test]
    fn fills_databases_to_the_split_ratio() {
        let shards = vec![shard("a", 10)];
        let mut counts = HashMap::new();
        for _ in 0..25 {
            let c = choose_placement(OrgId::generate(), None, &shards, &counts).unwrap();
            *counts.entry((c.shard, c.database)).or_insert(0) += 1;
        }
        let get = |n| {
            counts[&(
                ShardId::parse("a").unwrap(),
                DatabaseName::numbered("db", n),
            )]
        };
        assert_eq!((get(1), get(2), get(3)), (9, 9, 7));
        let s = &shards[0];
        assert_eq!(capacity_state(9, s), CapacityState::Split);
        assert_eq!(capacity_state(8, s), CapacityState::Alert);
        assert_eq!(capacity_state(7, s), CapacityState::Ok);
    }

    #[test]
    fn spreads_by_weight_and_skips_draining_and_other_regions() {
        let mut shards = vec![shard("a", 10_000), shard("b", 10_000), shard("c", 10_000)];
        shards[1].weight = 2.0;
        let counts = HashMap::new();
        let mut hits: HashMap<String, u32> = HashMap::new();
        for _ in 0..4000 {
            let c = choose_placement(OrgId::generate(), None, &shards, &counts).unwrap();
            *hits.entry(c.shard.to_string()).or_default() += 1;
        }
        let (a, b, c) = (hits["a"] as f64, hits["b"] as f64, hits["c"] as f64);
        assert!((b / a) > 1.6 && (b / a) < 2.4, "{hits:?}");
        assert!((c / a) > 0.75 && (c / a) < 1.33, "{hits:?}");

        shards[1].state = ShardState::Draining;
        shards[2].region = Some("eu".into());
        for _ in 0..100 {
            let id = OrgId::generate();
            assert_ne!(
                choose_placement(id, None, &shards, &counts)
                    .unwrap()
                    .shard
                    .as_str(),
                "b"
            );
            assert_eq!(
                choose_placement(id, Some("eu"), &shards, &counts)
                    .unwrap()
                    .shard
                    .as_str(),
                "c"
            );
        }
        assert!(choose_placement(OrgId::generate(), Some("us"), &shards, &counts).is_none());
    }

    #[test]
    fn same_org_same_shard() {
        let shards = vec![shard("a", 10), shard("b", 10), shard("c", 10)];
        let id = OrgId::generate();
        let counts = HashMap::new();
        let first = choose_placement(id, None, &shards, &counts).unwrap();
        for _ in 0..10 {
            assert_eq!(
                choose_placement(id, None, &shards, &counts).unwrap().shard,
                first.shard
            );
        }
    }
}
