//! Which moves a drain or a rebalance needs. Planning only reads; the moves it returns are
//! queued by the caller and run by the move runner like any other.

use super::moves::location_of;
use crate::catalog::{Location, OrgRecord, OrgState};
use crate::config::{ShardConfig, ShardState};
use crate::domain::{DatabaseName, ShardId};
use crate::placement::{choose_placement, database_on};
use std::collections::{BTreeMap, HashMap};

/// Tenant collections per (shard, database), as the plan counts them.
pub type Counts = HashMap<(ShardId, DatabaseName), u64>;

/// One planned move.
#[derive(Debug, Clone)]
pub struct PlannedMove {
    /// The organization.
    pub org: OrgRecord,
    /// Where it would go.
    pub to: Location,
}

/// What a rebalance evens out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Tenants per shard, by shard weight (active shards only).
    Shards,
    /// Tenants per database within each shard.
    Databases,
}

fn movable(o: &OrgRecord) -> bool {
    o.state == OrgState::Active && o.moving.is_none()
}

/// Moves that take every organization off `shard`: each goes to the shard the placement
/// policy picks among the others accepting tenants, into its open database (counted as the
/// plan is made, so one drain fills databases up to their split ratio, then the next).
pub fn plan_drain(
    orgs: &[OrgRecord],
    shard: &ShardId,
    shards: &[ShardConfig],
    mut counts: Counts,
) -> Vec<PlannedMove> {
    let others: Vec<ShardConfig> = shards
        .iter()
        .filter(|s| &s.id != shard && s.state == ShardState::Active)
        .cloned()
        .collect();
    let mut out = Vec::new();
    for o in orgs
        .iter()
        .filter(|o| &o.placement.shard == shard && movable(o))
    {
        let Some(choice) = choose_placement(o.id, None, &others, &counts) else {
            break;
        };
        *counts
            .entry((choice.shard.clone(), choice.database.clone()))
            .or_insert(0) += 1;
        out.push(PlannedMove {
            org: o.clone(),
            to: Location {
                shard: choice.shard,
                database: choice.database,
                collection: o.placement.collection.clone(),
            },
        });
    }
    out
}

/// Moves that bring every active shard's share of tenants to its weight (or, with
/// [`Scope::Databases`], every database of a shard to the same count) within `tolerance`
/// (a fraction of the ideal count, at least one tenant). Greedy: always from the fullest
/// bucket to the emptiest, so no tenant moves twice.
pub fn plan_rebalance(
    orgs: &[OrgRecord],
    shards: &[ShardConfig],
    mut counts: Counts,
    scope: Scope,
    tolerance: f64,
) -> Vec<PlannedMove> {
    match scope {
        Scope::Shards => {
            let active: Vec<&ShardConfig> = shards
                .iter()
                .filter(|s| s.state == ShardState::Active)
                .collect();
            let buckets: Vec<Bucket> = active
                .iter()
                .map(|s| Bucket {
                    shard: s.id.clone(),
                    database: None,
                    weight: s.weight,
                    orgs: orgs
                        .iter()
                        .filter(|o| o.placement.shard == s.id)
                        .cloned()
                        .collect(),
                })
                .collect();
            greedy(buckets, tolerance, |o, to| {
                // Into the target's open database, as a create would pick.
                let cfg = active
                    .iter()
                    .find(|s| s.id == to.shard)
                    .expect("bucket shard");
                let database = database_on(cfg, &counts);
                *counts
                    .entry((cfg.id.clone(), database.clone()))
                    .or_insert(0) += 1;
                Location {
                    shard: to.shard.clone(),
                    database,
                    collection: o.placement.collection.clone(),
                }
            })
        }
        Scope::Databases => {
            let mut out = Vec::new();
            for s in shards.iter().filter(|s| s.state == ShardState::Active) {
                let mut per_db: BTreeMap<DatabaseName, Vec<OrgRecord>> = BTreeMap::new();
                for o in orgs.iter().filter(|o| o.placement.shard == s.id) {
                    per_db
                        .entry(o.placement.database.clone())
                        .or_default()
                        .push(o.clone());
                }
                if per_db.len() < 2 {
                    continue;
                }
                let buckets = per_db
                    .into_iter()
                    .map(|(db, orgs)| Bucket {
                        shard: s.id.clone(),
                        database: Some(db),
                        weight: 1.0,
                        orgs,
                    })
                    .collect();
                out.extend(greedy(buckets, tolerance, |o, to| Location {
                    shard: to.shard.clone(),
                    database: to.database.clone().expect("database bucket"),
                    collection: o.placement.collection.clone(),
                }));
            }
            out
        }
    }
}

struct Bucket {
    shard: ShardId,
    database: Option<DatabaseName>,
    weight: f64,
    orgs: Vec<OrgRecord>,
}

fn greedy(
    mut buckets: Vec<Bucket>,
    tolerance: f64,
    mut target: impl FnMut(&OrgRecord, &Bucket) -> Location,
) -> Vec<PlannedMove> {
    let total: usize = buckets.iter().map(|b| b.orgs.len()).sum();
    let weights: f64 = buckets.iter().map(|b| b.weight).sum();
    if buckets.len() < 2 || total == 0 || weights <= 0.0 {
        return Vec::new();
    }
    let ideal: Vec<f64> = buckets
        .iter()
        .map(|b| total as f64 * b.weight / weights)
        .collect();
    let slack = |i: usize| (ideal[i] * tolerance).max(1.0);
    let mut counts: Vec<f64> = buckets.iter().map(|b| b.orgs.len() as f64).collect();
    // Newest first out of a full bucket: deterministic, and the oldest tenants stay put.
    for b in &mut buckets {
        b.orgs.sort_by_key(|o| std::cmp::Reverse(o.created_at));
    }
    let mut out = Vec::new();
    for _ in 0..total {
        let over = (0..buckets.len())
            .max_by(|&a, &b| (counts[a] - ideal[a]).total_cmp(&(counts[b] - ideal[b])))
            .expect("buckets");
        let under = (0..buckets.len())
            .min_by(|&a, &b| (counts[a] - ideal[a]).total_cmp(&(counts[b] - ideal[b])))
            .expect("buckets");
        let excess = counts[over] - ideal[over];
        let deficit = ideal[under] - counts[under];
        // Stop once both ends are within tolerance, or a move would overshoot.
        if over == under || (excess <= slack(over) && deficit <= slack(under)) || excess < 1.0 {
            break;
        }
        let Some(pos) = buckets[over].orgs.iter().position(movable) else {
            break;
        };
        let org = buckets[over].orgs.remove(pos);
        let to = target(&org, &buckets[under]);
        if location_of(&org) == to {
            break;
        }
        counts[over] -= 1.0;
        counts[under] += 1.0;
        out.push(PlannedMove { org, to });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::Placement;
    use crate::domain::{OrgId, OrgName};
    use chrono::Utc;

    fn shard(id: &str, weight: f64) -> ShardConfig {
        let mut s = ShardConfig::local_embedded();
        s.id = ShardId::parse(id).unwrap();
        s.weight = weight;
        s
    }

    fn org(i: usize, shard: &str, db: u32) -> OrgRecord {
        let name = OrgName::parse(&format!("Org {i}")).unwrap();
        let now = Utc::now();
        OrgRecord {
            id: OrgId::generate(),
            placement: Placement {
                shard: ShardId::parse(shard).unwrap(),
                database: DatabaseName::numbered("db", db),
                collection: name.collection_name(),
                epoch: 1,
                created_at: now,
                updated_at: now,
            },
            name,
            state: OrgState::Active,
            created_at: now,
            updated_at: now,
            revision: 1,
            moving: None,
        }
    }

    fn count_after(orgs: &[OrgRecord], plan: &[PlannedMove], shard: &str) -> usize {
        let moved_out = plan
            .iter()
            .filter(|m| m.org.placement.shard.as_str() == shard)
            .count();
        let moved_in = plan.iter().filter(|m| m.to.shard.as_str() == shard).count();
        orgs.iter()
            .filter(|o| o.placement.shard.as_str() == shard)
            .count()
            - moved_out
            + moved_in
    }

    #[test]
    fn rebalance_follows_weights_within_tolerance() {
        let shards = vec![shard("a", 1.0), shard("b", 1.0), shard("c", 2.0)];
        let orgs: Vec<OrgRecord> = (0..40).map(|i| org(i, "a", 1)).collect();
        let plan = plan_rebalance(&orgs, &shards, Counts::new(), Scope::Shards, 0.1);
        let (a, b, c) = (
            count_after(&orgs, &plan, "a"),
            count_after(&orgs, &plan, "b"),
            count_after(&orgs, &plan, "c"),
        );
        assert_eq!(a + b + c, 40);
        assert!((9..=11).contains(&a), "{a} {b} {c}");
        assert!((9..=11).contains(&b), "{a} {b} {c}");
        assert!((19..=21).contains(&c), "{a} {b} {c}");
        // Balanced already: nothing to do.
        let done: Vec<OrgRecord> = (0..40)
            .map(|i| org(i, ["a", "b", "c", "c"][i % 4], 1))
            .collect();
        assert!(plan_rebalance(&done, &shards, Counts::new(), Scope::Shards, 0.1).is_empty());
    }

    #[test]
    fn rebalance_evens_databases_on_a_shard() {
        let shards = vec![shard("a", 1.0)];
        let mut orgs: Vec<OrgRecord> = (0..9).map(|i| org(i, "a", 1)).collect();
        orgs.push(org(9, "a", 2));
        let plan = plan_rebalance(&orgs, &shards, Counts::new(), Scope::Databases, 0.1);
        // 9 and 1 against an ideal of 5 and 5, one tenant of tolerance: 6 and 4.
        assert_eq!(plan.len(), 3, "{plan:?}");
        assert!(plan
            .iter()
            .all(|m| m.to.database == DatabaseName::numbered("db", 2)));
    }

    #[test]
    fn drain_moves_everything_off_and_skips_busy_orgs() {
        let shards = vec![shard("a", 1.0), shard("b", 1.0), shard("c", 1.0)];
        let mut orgs: Vec<OrgRecord> = (0..20).map(|i| org(i, "a", 1)).collect();
        orgs[0].state = OrgState::Creating;
        let plan = plan_drain(&orgs, &ShardId::parse("a").unwrap(), &shards, Counts::new());
        assert_eq!(plan.len(), 19);
        assert!(plan.iter().all(|m| m.to.shard.as_str() != "a"));
        assert!(plan.iter().any(|m| m.to.shard.as_str() == "b"));
        assert!(plan.iter().any(|m| m.to.shard.as_str() == "c"));
    }
}
