//! Movers: operations that change where a tenant's data lives, written so that a crash at any
//! point leaves a journal the next start (or the background resume loop) finishes.
//!
//! - rename: `begin_rename` (reserves the new name and collection, state `Renaming`) ->
//!   store `rename_collection` (atomic and idempotent) -> `commit_rename`. Interrupted renames
//!   are completed, never half-applied.
//! - delete: `delete_org` records a pending drop in the same catalog transaction -> store drop
//!   -> clear the pending drop.
//! - create: the org is inserted as `Creating`, its collection created, then marked `Active`;
//!   an interrupted create is rolled back.

use crate::app::AppState;
use crate::catalog::{CatalogError, OrgRecord, OrgState, PendingDrop};
use crate::domain::{DatabaseName, OrgName, ShardId};
use crate::store::{Namespace, StoreError};
use chrono::Utc;
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

/// Why a move failed.
#[derive(Debug, thiserror::Error)]
pub enum MoveError {
    /// The catalog refused or failed.
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    /// The shard failed; the journal stays and the move is resumed later.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The placement names a shard this instance does not know.
    #[error("unknown shard {0}")]
    UnknownShard(ShardId),
}

fn namespace(org: &OrgRecord) -> Namespace {
    Namespace {
        database: org.placement.database.clone(),
        collection: org.placement.collection.clone(),
    }
}

/// Crash-test hook: when the environment variable `GATEWAY_FAILPOINT` names this point, the
/// process aborts here, as if killed. Used by the tests that prove interrupted moves are
/// finished at the next start; costs one env lookup on the rare paths that call it.
fn failpoint(name: &str) {
    if std::env::var("GATEWAY_FAILPOINT").is_ok_and(|v| v == name) {
        tracing::error!(failpoint = name, "failpoint reached: aborting");
        std::process::abort();
    }
}

/// Renames an organization, moving its documents to the new collection.
pub async fn rename(
    state: &AppState,
    org: &OrgRecord,
    to: &OrgName,
) -> Result<OrgRecord, MoveError> {
    let catalog = state.catalog();
    let renaming = catalog.begin_rename(org.id, to).await?;
    failpoint("rename_after_begin");
    state.router.invalidate_org(org).await;
    let done = finish_rename(state, &renaming).await;
    state.router.invalidate_org(org).await;
    done
}

/// Completes the store and catalog steps of a `Renaming` organization (idempotent).
async fn finish_rename(state: &AppState, org: &OrgRecord) -> Result<OrgRecord, MoveError> {
    let OrgState::Renaming { to_collection, .. } = &org.state else {
        return Ok(org.clone());
    };
    let shard = state
        .shards
        .get(&org.placement.shard)
        .ok_or_else(|| MoveError::UnknownShard(org.placement.shard.clone()))?;
    let from = namespace(org);
    let to = Namespace {
        database: org.placement.database.clone(),
        collection: to_collection.clone(),
    };
    if from != to {
        let moved = shard.store.rename_collection(&from, &to).await?;
        tracing::info!(org_id = %org.id, from = %from, to = %to, documents = moved, "renamed tenant collection");
        failpoint("rename_after_store");
    }
    let renamed = state.catalog().commit_rename(org.id).await?;
    state.router.invalidate_org(&renamed).await;
    Ok(renamed)
}

/// Deletes an organization: catalog first (with a pending drop), then its collection.
pub async fn delete(state: &AppState, org: &OrgRecord) -> Result<(), MoveError> {
    let removed = state.catalog().delete_org(org.id).await?;
    failpoint("delete_after_catalog");
    state.router.invalidate_org(org).await;
    if let Some(removed) = removed {
        state
            .capacity
            .release(&removed.placement.shard, &removed.placement.database);
        let drop = PendingDrop {
            shard: removed.placement.shard.clone(),
            database: removed.placement.database.clone(),
            collection: removed.placement.collection.clone(),
        };
        // A failure here leaves the pending drop for the resume loop; the org is gone.
        if let Err(e) = run_drop(state, &drop).await {
            tracing::warn!(error = %e, collection = %drop.collection, "collection drop deferred");
        }
    }
    Ok(())
}

/// Runs a drop still pending for exactly this collection, if any: a deleted organization's
/// collection whose drop was deferred must be gone before a new organization with the same
/// collection name starts using it.
pub async fn settle_pending_drop(
    state: &AppState,
    shard: &ShardId,
    ns: &Namespace,
) -> Result<(), MoveError> {
    for drop in state.catalog().pending_drops().await? {
        if &drop.shard == shard && drop.database == ns.database && drop.collection == ns.collection
        {
            run_drop(state, &drop).await?;
        }
    }
    Ok(())
}

async fn run_drop(state: &AppState, drop: &PendingDrop) -> Result<(), MoveError> {
    let shard = state
        .shards
        .get(&drop.shard)
        .ok_or_else(|| MoveError::UnknownShard(drop.shard.clone()))?;
    shard
        .store
        .drop_collection(&Namespace {
            database: drop.database.clone(),
            collection: drop.collection.clone(),
        })
        .await?;
    state.catalog().clear_pending_drop(drop).await?;
    Ok(())
}

/// Finishes or rolls back every interrupted operation older than `min_age`: renames are
/// completed, creates rolled back, pending drops executed. Returns how many were handled.
pub async fn resume_interrupted(state: &AppState, min_age: Duration) -> Result<usize, MoveError> {
    let mut handled = 0;
    let cutoff = Utc::now() - chrono::Duration::from_std(min_age).unwrap_or_default();
    for org in state.catalog().list_orgs().await? {
        if org.updated_at > cutoff {
            continue;
        }
        match &org.state {
            OrgState::Active => continue,
            OrgState::Renaming { to_name, .. } => {
                tracing::warn!(org_id = %org.id, to = %to_name, "completing an interrupted rename");
                finish_rename(state, &org).await?;
            }
            OrgState::Creating => {
                tracing::warn!(org_id = %org.id, name = %org.name, "rolling back an interrupted create");
                delete(state, &org).await?;
            }
        }
        handled += 1;
    }
    for drop in state.catalog().pending_drops().await? {
        run_drop(state, &drop).await?;
        handled += 1;
    }
    Ok(handled)
}

/// Measures the storage of up to `budget` organizations whose usage is unknown or stale, so
/// `/ops/quotas` covers organizations that have not written since this instance started.
/// Returns how many were measured.
pub async fn sweep_quotas(state: &AppState, budget: usize) -> Result<usize, MoveError> {
    let mut measured = 0;
    for org in state.catalog().list_orgs().await? {
        if measured >= budget {
            break;
        }
        if org.state != OrgState::Active || !state.quotas.needs_measuring(org.id) {
            continue;
        }
        let Some(shard) = state.shards.get(&org.placement.shard) else {
            continue;
        };
        if !shard.is_up() {
            continue;
        }
        match shard.store.collection_bytes(&namespace(&org)).await {
            Ok(bytes) => state.quotas.set_measured(org.id, bytes),
            Err(e) => {
                tracing::debug!(org_id = %org.id, error = %e, "quota measurement failed");
                continue;
            }
        }
        measured += 1;
    }
    Ok(measured)
}

/// Recounts tenant collections per database from the shards themselves and fixes the
/// catalog's counts where they drifted. Unreachable shards are skipped (and logged).
pub async fn reconcile_capacity(state: &AppState) -> Result<(), MoveError> {
    let catalog = state.catalog();
    let mut databases: BTreeMap<ShardId, BTreeSet<DatabaseName>> = BTreeMap::new();
    for (shard, db, _) in catalog.collection_counts().await? {
        databases.entry(shard).or_default().insert(db);
    }
    for org in catalog.list_orgs().await? {
        databases
            .entry(org.placement.shard.clone())
            .or_default()
            .insert(org.placement.database.clone());
    }
    let recorded: BTreeMap<(ShardId, DatabaseName), u64> = catalog
        .collection_counts()
        .await?
        .into_iter()
        .map(|(s, d, n)| ((s, d), n))
        .collect();
    for (shard_id, dbs) in databases {
        let Some(shard) = state.shards.get(&shard_id) else {
            tracing::warn!(shard = %shard_id, "placements name a shard missing from config");
            continue;
        };
        for db in dbs {
            let real = match shard.store.list_collections(&db).await {
                Ok(names) => names
                    .iter()
                    .filter(|n| crate::domain::CollectionName::from_stored(n).is_some())
                    .count() as u64,
                Err(e) => {
                    tracing::warn!(shard = %shard_id, database = %db, error = %e, "cannot reconcile capacity");
                    continue;
                }
            };
            let had = recorded
                .get(&(shard_id.clone(), db.clone()))
                .copied()
                .unwrap_or(0);
            if had != real {
                tracing::warn!(shard = %shard_id, database = %db, recorded = had, actual = real, "collection count drifted; fixed");
                catalog.set_collection_count(&shard_id, &db, real).await?;
            }
        }
    }
    Ok(())
}
