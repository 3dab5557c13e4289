//! Movers: operations that change where a tenant's data lives, written so that a crash at any
//! point leaves a journal the next start (or the background resume loop) finishes, and so that
//! no instance of the fleet is still using a collection when it moves or is dropped.
//!
//! - rename: `begin_rename` (reserves the new name and collection, state `Renaming`: every
//!   instance answers the tenant's data requests with 503 once it applied it) -> fence (every
//!   live instance applied it and finished older requests) -> credentials change, if any
//!   (compare-and-set; a conflict aborts the rename) -> clear the target (pending drop run,
//!   orphan set aside) -> store `rename_collection` (atomic and idempotent) -> `commit_rename`.
//!   Interrupted renames are completed, never half-applied.
//! - delete (hard: a create rolled back): `delete_org` records a pending drop in the same
//!   catalog step -> fence -> store drop -> clear the pending drop. `DELETE /org/delete` is a
//!   soft delete ([`deleted`]): the same steps, with the collection renamed to its tombstone
//!   name instead of dropped.
//! - create: the org is inserted as `Creating`, its collection created (never adopted: an
//!   orphan found there is set aside), then marked `Active`; an interrupted create is rolled
//!   back.
//!
//! Drops and creates of one collection name hold a catalog lease on it, so recovery on one
//! instance can never drop a collection another instance has just created under that name.

pub mod balance;
pub mod copy;
pub mod deleted;
pub mod moves;

use crate::catalog::{
    AdminRecord, AuditEvent, Catalog, CatalogError, OrgPages, OrgRecord, OrgState, PendingDrop,
};
use crate::domain::{DatabaseName, OrgId, OrgName, ShardId};
use crate::fleet::{FenceError, Fleet};
use crate::limits::quota::Quotas;
use crate::placement::{CapacityCounts, ShardSet};
use crate::router::TenantRouter;
use crate::store::{Namespace, StoreError};
use chrono::Utc;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

/// What lifecycle operations need: the catalog, the shards, the caches to invalidate, the
/// fleet to fence, the capacity counts. Nothing else.
pub struct Lifecycle<'a> {
    /// The catalog.
    pub catalog: &'a Arc<dyn Catalog>,
    /// Shards and their stores.
    pub shards: &'a ShardSet,
    /// Caches of this instance.
    pub router: &'a TenantRouter,
    /// Fences across the fleet.
    pub fleet: &'a Fleet,
    /// In-memory collection counts.
    pub capacity: &'a CapacityCounts,
}

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
    /// The fleet did not apply the change in time; nothing moved.
    #[error(transparent)]
    Fence(#[from] FenceError),
    /// Another operation holds the collection.
    #[error("collection busy")]
    Busy,
}

fn namespace(org: &OrgRecord) -> Namespace {
    Namespace {
        database: org.placement.database.clone(),
        collection: org.placement.collection.clone(),
    }
}

use crate::failpoints::{failpoint, pausepoint};

/// A catalog lease on one collection name on one shard, held while it is dropped or created.
struct CollectionLock<'a> {
    catalog: &'a Arc<dyn Catalog>,
    name: String,
    holder: String,
}

impl<'a> CollectionLock<'a> {
    const TTL: Duration = Duration::from_secs(60);

    async fn acquire(
        catalog: &'a Arc<dyn Catalog>,
        shard: &ShardId,
        ns: &Namespace,
    ) -> Result<CollectionLock<'a>, MoveError> {
        let name = format!("collection:{shard}/{ns}");
        let holder = uuid::Uuid::new_v4().simple().to_string();
        for _ in 0..250 {
            if catalog
                .acquire_lease(&name, &holder, Self::TTL)
                .await?
                .is_none()
            {
                return Ok(Self {
                    catalog,
                    name,
                    holder,
                });
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Err(MoveError::Busy)
    }

    async fn release(self) {
        if let Err(e) = self.catalog.release_lease(&self.name, &self.holder).await {
            tracing::warn!(error = %e, "could not release a collection lease; it expires");
        }
    }
}

/// Renames an organization, moving its documents to the new collection. `admin`, when given,
/// is the caller's admin record with changed credentials and the events that record them:
/// they commit with the rename (after the name is reserved, before any data moves) or not at
/// all. `renamed` is written with the switch to the new name.
pub async fn rename(
    lc: &Lifecycle<'_>,
    org: &OrgRecord,
    to: &OrgName,
    admin: Option<(&AdminRecord, &[AuditEvent])>,
    renamed: &AuditEvent,
) -> Result<(OrgRecord, Option<AdminRecord>), MoveError> {
    let renaming = lc
        .catalog
        .begin_rename(
            org.id,
            to,
            admin.map(|(a, _)| a),
            std::slice::from_ref(renamed),
        )
        .await?;
    failpoint("rename_after_begin");
    lc.router.invalidate_org(org).await;
    let prepared = async {
        lc.fleet.fence().await?;
        match admin {
            Some((a, events)) => Ok::<_, MoveError>(Some(apply_credentials(lc, a, events).await?)),
            None => Ok(None),
        }
    }
    .await;
    let admin = match prepared {
        Ok(a) => a,
        Err(e) => {
            // Nothing moved and no credential changed: release the reserved name. (Refused if
            // another instance's recovery already began moving the data: it completes it.)
            if let Err(undo) = lc.catalog.abort_rename(org.id).await {
                tracing::error!(error = %undo, "cannot abort a rename; recovery will finish it");
            }
            lc.router.invalidate_org(org).await;
            return Err(e);
        }
    };
    failpoint("rename_after_credentials");
    pausepoint("rename_after_fence").await;
    let done = finish_rename(lc, &renaming).await;
    lc.router.invalidate_org(org).await;
    let renamed = done?;
    // Best effort: the reply then means every live instance answers to the new name.
    if let Err(e) = lc.fleet.fence().await {
        tracing::warn!(error = %e, "rename committed; some instances apply it late");
    }
    Ok((renamed, admin))
}

/// Stores the credentials journaled with a rename (compare-and-set on the revision read), with
/// their events; succeeds as well when they are already in place (a resumed rename).
async fn apply_credentials(
    lc: &Lifecycle<'_>,
    admin: &AdminRecord,
    events: &[AuditEvent],
) -> Result<AdminRecord, MoveError> {
    let stored = match lc.catalog.update_admin(admin, events).await {
        Ok(stored) => stored,
        // A conflict, or a write whose outcome is unknown (the reply was lost): only what is
        // stored decides.
        Err(
            e @ (CatalogError::Stale | CatalogError::Unavailable(_) | CatalogError::Backend(_)),
        ) => match credentials_in_place(lc, admin).await? {
            Some(stored) => stored,
            None => return Err(e.into()),
        },
        Err(e) => return Err(e.into()),
    };
    lc.router.invalidate_admin(admin.id).await;
    Ok(stored)
}

/// The stored admin, if it already carries the journaled credentials.
async fn credentials_in_place(
    lc: &Lifecycle<'_>,
    admin: &AdminRecord,
) -> Result<Option<AdminRecord>, MoveError> {
    Ok(lc.catalog.admin_by_id(admin.id).await?.filter(|s| {
        s.email == admin.email
            && s.password_hash == admin.password_hash
            && s.credential_version == admin.credential_version
    }))
}

/// Completes the store and catalog steps of a `Renaming` organization (idempotent).
async fn finish_rename(lc: &Lifecycle<'_>, org: &OrgRecord) -> Result<OrgRecord, MoveError> {
    let OrgState::Renaming { to_collection, .. } = &org.state else {
        return Ok(org.clone());
    };
    let shard = lc
        .shards
        .get(&org.placement.shard)
        .ok_or_else(|| MoveError::UnknownShard(org.placement.shard.clone()))?;
    let from = namespace(org);
    let to = Namespace {
        database: org.placement.database.clone(),
        collection: to_collection.clone(),
    };
    if from != to {
        // The target name may hold a deleted organization's collection whose drop is still
        // pending, or an orphan: never adopt either.
        let lock = CollectionLock::acquire(lc.catalog, &org.placement.shard, &to).await?;
        let cleared = async {
            // Another instance's recovery may have finished this rename meanwhile: only the
            // record read under the lease says what is left to do.
            let current = lc.catalog.org_by_id(org.id).await?;
            let Some(mut current) = current.filter(|c| {
                matches!(c.state, OrgState::Renaming { .. })
                    && c.placement.collection == org.placement.collection
            }) else {
                return Ok::<_, MoveError>(false);
            };
            if let OrgState::Renaming {
                target_cleared: false,
                ..
            } = &current.state
            {
                // Nothing has moved yet: whatever is under the target name belongs to no
                // organization. Journal that the target is clear before moving a document.
                run_pending_drops_locked(lc, &org.placement.shard, &to).await?;
                set_aside_orphan(lc, &org.placement.shard, &to).await?;
                if let OrgState::Renaming { target_cleared, .. } = &mut current.state {
                    *target_cleared = true;
                }
                lc.catalog.put_org(&current).await?;
            }
            let moved = shard.store.rename_collection(&from, &to).await?;
            tracing::info!(org_id = %org.id, from = %from, to = %to, documents = moved, "renamed tenant collection");
            Ok(true)
        }
        .await;
        lock.release().await;
        if !cleared? {
            // Someone else ended it: a success only if it ended by completing.
            let OrgState::Renaming { to_name, .. } = &org.state else {
                unreachable!("checked above")
            };
            return match lc.catalog.org_by_id(org.id).await? {
                Some(c) if c.state == OrgState::Active && &c.name == to_name => Ok(c),
                _ => Err(MoveError::Catalog(CatalogError::NotFound)),
            };
        }
        failpoint("rename_after_store");
    }
    let renamed = lc.catalog.commit_rename(org.id).await?;
    lc.router.invalidate_org(&renamed).await;
    Ok(renamed)
}

/// Moves aside a collection found where a tenant's collection is about to be created: the
/// catalog records it for no organization (a write that recreated it after a drop, say).
async fn set_aside_orphan(
    lc: &Lifecycle<'_>,
    shard_id: &ShardId,
    ns: &Namespace,
) -> Result<(), MoveError> {
    let shard = lc
        .shards
        .get(shard_id)
        .ok_or_else(|| MoveError::UnknownShard(shard_id.clone()))?;
    let present = shard.store.list_collections(&ns.database).await?;
    if !present.iter().any(|c| c == ns.collection.as_str()) {
        return Ok(());
    }
    let documents = shard.store.count_all(ns).await?;
    if documents == 0 {
        shard.store.drop_collection(ns).await?;
        return Ok(());
    }
    let aside = ns.collection.quarantine(Utc::now().timestamp_millis());
    tracing::warn!(shard = %shard_id, collection = %ns, set_aside_as = %aside, documents, "found an orphaned collection; set it aside");
    shard.store.set_aside(ns, &aside).await?;
    Ok(())
}

/// Creates the collection of a new organization: runs a drop still pending under that name,
/// sets aside any orphan, then creates it, all under the collection's lease.
pub async fn create_collection(
    lc: &Lifecycle<'_>,
    shard_id: &ShardId,
    ns: &Namespace,
) -> Result<(), MoveError> {
    failpoint("create_before_collection");
    let shard = lc
        .shards
        .get(shard_id)
        .ok_or_else(|| MoveError::UnknownShard(shard_id.clone()))?;
    let lock = CollectionLock::acquire(lc.catalog, shard_id, ns).await?;
    let created = async {
        run_pending_drops_locked(lc, shard_id, ns).await?;
        match shard.store.create_collection(ns).await {
            Err(StoreError::CollectionExists) => {
                set_aside_orphan(lc, shard_id, ns).await?;
                shard.store.create_collection(ns).await?;
            }
            other => other?,
        }
        Ok(())
    }
    .await;
    lock.release().await;
    created
}

/// Deletes an organization: catalog first (with a pending drop), then a fence, then its
/// collection. A failed fence or drop leaves the pending drop to the resume loop.
pub async fn delete(lc: &Lifecycle<'_>, org: &OrgRecord) -> Result<(), MoveError> {
    let removed = lc.catalog.delete_org(org.id).await?;
    failpoint("delete_after_catalog");
    lc.router.invalidate_org(org).await;
    let Some(removed) = removed else {
        return Ok(());
    };
    lc.capacity
        .release(&removed.placement.shard, &removed.placement.database);
    if let Err(e) = lc.fleet.fence().await {
        // The delete is committed and its drop pending; the caller must not be told it is
        // done while an instance may still accept writes for the organization.
        tracing::warn!(error = %e, org_id = %org.id, "collection drop deferred: the fleet has not applied the delete");
        return Err(e.into());
    }
    pausepoint("delete_after_fence").await;
    let mut drops = vec![namespace(&removed)];
    if let OrgState::Renaming { to_collection, .. } = &removed.state {
        drops.push(Namespace {
            database: removed.placement.database.clone(),
            collection: to_collection.clone(),
        });
    }
    for ns in drops {
        if let Err(e) = run_pending_drops(lc, &removed.placement.shard, &ns).await {
            tracing::warn!(error = %e, collection = %ns, "collection drop deferred");
        }
    }
    Ok(())
}

/// Runs the pending drops recorded for exactly this collection, under its lease.
async fn run_pending_drops(
    lc: &Lifecycle<'_>,
    shard: &ShardId,
    ns: &Namespace,
) -> Result<(), MoveError> {
    let lock = CollectionLock::acquire(lc.catalog, shard, ns).await?;
    let done = run_pending_drops_locked(lc, shard, ns).await;
    lock.release().await;
    done
}

/// Drops the collection if the catalog still records a pending drop for it (read under the
/// lease, so a drop someone else already ran, or that a new organization settled before
/// creating the collection again, is never run twice).
async fn run_pending_drops_locked(
    lc: &Lifecycle<'_>,
    shard: &ShardId,
    ns: &Namespace,
) -> Result<(), MoveError> {
    let mine: Vec<PendingDrop> = lc
        .catalog
        .pending_drops()
        .await?
        .into_iter()
        .filter(|d| &d.shard == shard && d.database == ns.database && d.collection == ns.collection)
        .collect();
    if mine.is_empty() {
        return Ok(());
    }
    // The delete behind the drop committed before this fence: once it passes, no instance
    // still writes for the deleted organization, so nothing lands after the drop (in the
    // collection a new organization is about to get under that name).
    lc.fleet.fence().await?;
    for drop in mine {
        run_drop(lc, &drop).await?;
    }
    Ok(())
}

async fn run_drop(lc: &Lifecycle<'_>, drop: &PendingDrop) -> Result<(), MoveError> {
    let shard = lc
        .shards
        .get(&drop.shard)
        .ok_or_else(|| MoveError::UnknownShard(drop.shard.clone()))?;
    let ns = Namespace {
        database: drop.database.clone(),
        collection: drop.collection.clone(),
    };
    match &drop.stash_to {
        // A deleted organization's data is kept under its tombstone name (idempotent: when
        // the source is gone, it has happened).
        Some(to) => {
            let to = Namespace {
                database: drop.database.clone(),
                collection: to.clone(),
            };
            let kept = shard.store.rename_collection(&ns, &to).await?;
            tracing::info!(collection = %ns, kept_as = %to, documents = kept, "deleted organization's data kept");
        }
        None => shard.store.drop_collection(&ns).await?,
    }
    lc.catalog.clear_pending_drop(drop).await?;
    Ok(())
}

/// Finishes or rolls back every interrupted operation older than `min_age`: renames are
/// completed, creates rolled back, pending drops executed (after one fence). Reads only the
/// organizations that are not active; one failing item never blocks the others. Returns how
/// many were handled.
pub async fn resume_interrupted(lc: &Lifecycle<'_>, min_age: Duration) -> Result<usize, MoveError> {
    let mut handled = 0;
    let cutoff = Utc::now() - chrono::Duration::from_std(min_age).unwrap_or_default();
    let failed = |what: &str, e: &MoveError| {
        crate::telemetry::metrics::RECOVERY_FAILURES.inc();
        tracing::warn!(error = %e, "{what} failed; retrying later");
    };
    match lc.catalog.settle_tombstones(min_age).await {
        Ok(n) => handled += n,
        Err(e) => failed("settling tombstones", &MoveError::Catalog(e)),
    }
    // Events written with their changes whose copy into the log a crash interrupted.
    match lc.catalog.flush_events().await {
        Ok(n) => handled += n,
        Err(e) => failed("copying audit events", &MoveError::Catalog(e)),
    }
    for org in lc.catalog.orgs_not_active().await? {
        if org.updated_at > cutoff {
            continue;
        }
        if matches!(org.state, OrgState::Renaming { .. })
            && lc.catalog.tombstone(org.id).await?.is_some()
        {
            // A restore whose catalog steps are not finished: settled (above) first.
            continue;
        }
        let outcome = match &org.state {
            OrgState::Active => continue,
            OrgState::Renaming { to_name, admin, .. } => {
                // Credentials are stored before any data moves: without them in place the
                // rename never got that far, and both are rolled back.
                let credentials = match admin {
                    Some(a) => credentials_in_place(lc, a).await.map(|s| s.is_some()),
                    None => Ok(true),
                };
                match credentials {
                    Ok(true) => {
                        tracing::warn!(org_id = %org.id, to = %to_name, "completing an interrupted rename");
                        match lc.fleet.fence().await {
                            Ok(_) => finish_rename(lc, &org).await.map(|_| ()),
                            Err(e) => Err(e.into()),
                        }
                    }
                    Ok(false) => {
                        tracing::warn!(org_id = %org.id, to = %to_name, "rolling back an interrupted rename (its credentials were never stored)");
                        let aborted = lc.catalog.abort_rename(org.id).await;
                        lc.router.invalidate_org(&org).await;
                        match aborted {
                            Ok(_) => Ok(()),
                            // Its data began moving meanwhile (the rename is alive): leave it.
                            Err(CatalogError::Stale) => Ok(()),
                            Err(e) => Err(e.into()),
                        }
                    }
                    Err(e) => Err(e),
                }
            }
            OrgState::Creating => {
                // Claim it first (compare-and-set on the revision read): a create still
                // running then fails to activate it, and one that finished meanwhile makes the
                // claim fail, so an active organization is never rolled back.
                match lc.catalog.put_org(&org).await {
                    Ok(claimed) => {
                        tracing::warn!(org_id = %org.id, name = %org.name, "rolling back an interrupted create");
                        delete(lc, &claimed).await
                    }
                    Err(CatalogError::Stale) => continue,
                    Err(e) => Err(e.into()),
                }
            }
        };
        match outcome {
            Ok(()) => handled += 1,
            Err(e) => failed("recovery of an interrupted operation", &e),
        }
    }
    let drops = lc.catalog.pending_drops().await?;
    if drops.is_empty() {
        return Ok(handled);
    }
    // Every delete behind these drops committed before this fence.
    lc.fleet.fence().await?;
    for drop in drops {
        let ns = Namespace {
            database: drop.database.clone(),
            collection: drop.collection.clone(),
        };
        match run_pending_drops(lc, &drop.shard, &ns).await {
            Ok(()) => handled += 1,
            Err(e) => failed("pending collection drop", &e),
        }
    }
    Ok(handled)
}

/// Measures the storage of up to `budget` organizations whose usage is unknown or stale, so
/// `/ops/quotas` covers organizations that have not written since this instance started.
/// Walks the catalog a page at a time from `cursor` (wrapping around at the end) and leaves
/// `cursor` where the next sweep should continue. Returns how many were measured.
pub async fn sweep_quotas(
    lc: &Lifecycle<'_>,
    quotas: &Quotas,
    budget: usize,
    cursor: &mut Option<OrgId>,
) -> Result<usize, MoveError> {
    let mut measured = 0;
    let mut wrapped = cursor.is_none();
    let mut pages = OrgPages::new(lc.catalog.as_ref(), *cursor);
    loop {
        let Some(page) = pages.next_page().await? else {
            // The end of the catalog: start over once, from the first organization.
            *cursor = None;
            if wrapped {
                return Ok(measured);
            }
            wrapped = true;
            pages = OrgPages::new(lc.catalog.as_ref(), None);
            continue;
        };
        for org in page {
            if measured >= budget {
                return Ok(measured);
            }
            *cursor = Some(org.id);
            if org.state != OrgState::Active || !quotas.needs_measuring(org.id) {
                continue;
            }
            let Some(shard) = lc.shards.get(&org.placement.shard) else {
                continue;
            };
            if !shard.is_up() {
                continue;
            }
            match shard.store.collection_bytes(&namespace(&org)).await {
                Ok(bytes) => quotas.set_measured(org.id, bytes),
                Err(e) => {
                    tracing::debug!(org_id = %org.id, error = %e, "quota measurement failed");
                    continue;
                }
            }
            measured += 1;
        }
    }
}

/// Recounts tenant collections per database from the shards themselves and fixes the
/// catalog's counts where they drifted. Unreachable shards are skipped (and logged).
pub async fn reconcile_capacity(lc: &Lifecycle<'_>) -> Result<(), MoveError> {
    let catalog = lc.catalog;
    let mut databases: BTreeMap<ShardId, BTreeSet<DatabaseName>> = BTreeMap::new();
    for (shard, db, _) in catalog.collection_counts().await? {
        databases.entry(shard).or_default().insert(db);
    }
    let mut pages = OrgPages::new(catalog.as_ref(), None);
    while let Some(page) = pages.next_page().await? {
        for org in page {
            databases
                .entry(org.placement.shard)
                .or_default()
                .insert(org.placement.database);
        }
    }
    let recorded: BTreeMap<(ShardId, DatabaseName), u64> = catalog
        .collection_counts()
        .await?
        .into_iter()
        .map(|(s, d, n)| ((s, d), n))
        .collect();
    // A move's target before its switch, and its source until dropped, are collections of
    // no organization's count.
    let mut not_counted: BTreeSet<(ShardId, DatabaseName, String)> = BTreeSet::new();
    for m in catalog.list_moves().await? {
        if m.cleanup_done {
            continue;
        }
        let spare = match m.state {
            crate::catalog::MoveState::Done => &m.from,
            _ => &m.to,
        };
        not_counted.insert((
            spare.shard.clone(),
            spare.database.clone(),
            spare.collection.as_str().to_owned(),
        ));
    }
    for (shard_id, dbs) in databases {
        let Some(shard) = lc.shards.get(&shard_id) else {
            tracing::warn!(shard = %shard_id, "placements name a shard missing from config");
            continue;
        };
        for db in dbs {
            let real = match shard.store.list_collections(&db).await {
                Ok(names) => names
                    .iter()
                    .filter(|n| {
                        crate::domain::CollectionName::from_stored(n).is_some()
                            || crate::domain::CollectionName::is_tombstone(n)
                    })
                    .filter(|n| {
                        !not_counted.contains(&(shard_id.clone(), db.clone(), n.to_string()))
                    })
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
