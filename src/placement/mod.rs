//! Placement: the shards tenants can live on ([`ShardSet`]), the policy that places a new
//! organization (weighted rendezvous hashing, then the open database), and capacity states.

mod capacity;
pub mod open;
mod policy;
mod shards;

pub use capacity::CapacityCounts;

pub use policy::{capacity_state, choose_placement, database_on, CapacityState, PlacementChoice};
pub use shards::{Shard, ShardSet, DRAINING_SETTING};
