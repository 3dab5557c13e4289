//! Soft delete, restore and purge of organizations.
//!
//! - soft delete: `tombstone_org` (one catalog step: the organization, its admins and its keys
//!   leave, a [`Tombstone`] keeps them, the stash of its collection is recorded as a pending
//!   drop with `stash_to`) -> fence -> store rename of the collection to its tombstone name
//!   (`deleted_<org id>`, a name no organization maps to) -> the stash is cleared. A new
//!   organization of the same name runs the pending stash before it creates its collection, so
//!   it starts empty; an interrupted stash is run by the resume loop.
//! - restore: the stash first (if still pending) -> `restore_org` (one catalog step: the
//!   organization is back as `Renaming` from the tombstone collection to its name's, with its
//!   admins) -> fence -> the rename's own steps (`finish_rename`), which recovery completes if
//!   interrupted.
//! - purge: the stash first (if still pending) -> `purge_tombstone` (one catalog step: the
//!   tombstone goes, its collection is uncounted and its drop recorded) -> fence -> drop.

use super::{
    failpoint, finish_rename, namespace, pausepoint, run_pending_drops, Lifecycle, MoveError,
};
use crate::catalog::{Actor, AuditEvent, CatalogError, EventType, OrgRecord, Tombstone};
use crate::domain::{Email, OrgId, OrgName};
use crate::store::Namespace;
use chrono::{DateTime, Utc};
use std::time::Duration;

/// Why a restore was refused.
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    /// No deleted organization with that id (never, purged, or restored already).
    #[error("no such deleted organization")]
    NotFound,
    /// The name is used by another organization now.
    #[error("organization name taken")]
    NameTaken(OrgName),
    /// One of its admins' emails is registered to another organization now.
    #[error("admin email taken")]
    EmailTaken(Option<Email>),
    /// Anything else.
    #[error(transparent)]
    Move(#[from] MoveError),
}

impl From<CatalogError> for RestoreError {
    fn from(e: CatalogError) -> Self {
        Self::Move(MoveError::Catalog(e))
    }
}

/// Soft-deletes an active organization, keeping its data for `retention`. `size_bytes` is
/// its storage as quotas count it (recorded with the tombstone); `deleted` is its event,
/// written with the tombstone (`restorable_until` added to its details). A failed fence
/// leaves the stash to the resume loop (and is an error: an instance may still write for it).
pub async fn soft_delete(
    lc: &Lifecycle<'_>,
    org: &OrgRecord,
    retention: Duration,
    size_bytes: Option<u64>,
    mut deleted: AuditEvent,
) -> Result<Tombstone, MoveError> {
    let now = Utc::now();
    let until = chrono::Duration::from_std(retention)
        .ok()
        .and_then(|d| now.checked_add_signed(d))
        .unwrap_or(DateTime::<Utc>::MAX_UTC);
    detail(&mut deleted, "restorable_until", serde_json::json!(until));
    let tomb = lc
        .catalog
        .tombstone_org(org.id, now, until, size_bytes, &[deleted])
        .await?
        .ok_or(MoveError::Catalog(CatalogError::NotFound))?;
    failpoint("delete_after_catalog");
    lc.router.invalidate_org(org).await;
    for a in &tomb.admins {
        lc.router.invalidate_admin(a.id).await;
    }
    if let Err(e) = lc.fleet.fence().await {
        tracing::warn!(error = %e, org_id = %org.id, "data stash deferred: the fleet has not applied the delete");
        return Err(e.into());
    }
    pausepoint("delete_after_fence").await;
    if let Err(e) = run_pending_drops(lc, &tomb.org.placement.shard, &namespace(&tomb.org)).await {
        tracing::warn!(error = %e, org_id = %org.id, "data stash deferred");
    }
    Ok(tomb)
}

/// Runs the stash of a tombstone's data if it is still pending (a no-op otherwise).
async fn stash_first(lc: &Lifecycle<'_>, tomb: &Tombstone) -> Result<(), MoveError> {
    run_pending_drops(lc, &tomb.org.placement.shard, &namespace(&tomb.org)).await
}

/// Restores a deleted organization under `name` (its old one when `None`): catalog first,
/// then its data moves back. `restored` is its event (`organization_name` added to its
/// details), written when the organization is back under its name. Returns the
/// organization as stored afterwards.
pub async fn restore(
    lc: &Lifecycle<'_>,
    id: OrgId,
    name: Option<OrgName>,
    mut restored: AuditEvent,
) -> Result<OrgRecord, RestoreError> {
    let tomb = lc
        .catalog
        .tombstone(id)
        .await?
        .filter(|t| t.phase == crate::catalog::TombstonePhase::Kept)
        .ok_or(RestoreError::NotFound)?;
    let name = name.unwrap_or_else(|| tomb.org.name.clone());
    // Which key is taken, for the reply (the catalog decides again, atomically).
    if lc.catalog.org_by_name(&name.normalized()).await?.is_some() {
        return Err(RestoreError::NameTaken(name));
    }
    for a in &tomb.admins {
        if lc.catalog.admin_by_email(&a.email).await?.is_some() {
            return Err(RestoreError::EmailTaken(Some(a.email.clone())));
        }
    }
    stash_first(lc, &tomb).await?;
    detail(&mut restored, "organization_name", name.as_str().into());
    let restoring = match lc.catalog.restore_org(id, &name, &[restored]).await {
        Ok(o) => o,
        Err(CatalogError::NotFound) => return Err(RestoreError::NotFound),
        Err(CatalogError::Conflict(crate::catalog::Taken::Email)) => {
            return Err(RestoreError::EmailTaken(None))
        }
        Err(CatalogError::Conflict(_)) => return Err(RestoreError::NameTaken(name)),
        Err(e) => return Err(e.into()),
    };
    failpoint("restore_after_catalog");
    lc.router.invalidate_org(&restoring).await;
    for a in &tomb.admins {
        lc.router.invalidate_admin(a.id).await;
    }
    lc.fleet.fence().await.map_err(MoveError::from)?;
    let restored = finish_rename(lc, &restoring).await;
    lc.router.invalidate_org(&restoring).await;
    let restored = restored?;
    if let Err(e) = lc.fleet.fence().await {
        tracing::warn!(error = %e, "restore committed; some instances apply it late");
    }
    Ok(restored)
}

/// Purges a deleted organization at once, writing `purged` (`organization_name` added to its
/// details) with it. `Ok(None)` if there is no such tombstone.
pub async fn purge(
    lc: &Lifecycle<'_>,
    id: OrgId,
    mut purged: AuditEvent,
) -> Result<Option<Tombstone>, MoveError> {
    let Some(tomb) = lc
        .catalog
        .tombstone(id)
        .await?
        .filter(|t| t.phase == crate::catalog::TombstonePhase::Kept)
    else {
        return Ok(None);
    };
    stash_first(lc, &tomb).await?;
    detail(
        &mut purged,
        "organization_name",
        tomb.org.name.as_str().into(),
    );
    let Some(tomb) = lc.catalog.purge_tombstone(id, &[purged]).await? else {
        return Ok(None);
    };
    lc.capacity
        .release(&tomb.org.placement.shard, &tomb.org.placement.database);
    failpoint("purge_after_catalog");
    let ns = Namespace {
        database: tomb.org.placement.database.clone(),
        collection: tomb.collection.clone(),
    };
    if let Err(e) = run_pending_drops(lc, &tomb.org.placement.shard, &ns).await {
        tracing::warn!(error = %e, org_id = %id, "purge's drop deferred");
    }
    Ok(Some(tomb))
}

/// Purges every tombstone whose retention ended by `now`, at most `budget` of them, each with
/// its `organization.purged` event (actor `system`). Returns the purged ones.
pub async fn purge_expired(
    lc: &Lifecycle<'_>,
    now: DateTime<Utc>,
    budget: usize,
) -> Result<Vec<Tombstone>, MoveError> {
    const PAGE: usize = 500;
    let mut purged = Vec::new();
    let mut after = None;
    loop {
        let page = lc.catalog.tombstones(after, PAGE).await?;
        let full = page.len() == PAGE;
        after = page.last().map(|t| t.org.id);
        for tomb in page {
            if purged.len() >= budget {
                return Ok(purged);
            }
            if tomb.restorable_until > now {
                continue;
            }
            let event = AuditEvent::new(
                EventType::OrganizationPurged,
                Some(tomb.org.id),
                Actor::System,
                None,
                serde_json::json!({ "reason": "retention" }),
            );
            match purge(lc, tomb.org.id, event).await {
                Ok(Some(t)) => purged.push(t),
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(error = %e, org_id = %tomb.org.id, "purge after retention failed; retrying later")
                }
            }
        }
        if !full {
            return Ok(purged);
        }
    }
}

/// Adds `key` to an event's details (an object).
fn detail(event: &mut AuditEvent, key: &str, value: serde_json::Value) {
    if let serde_json::Value::Object(details) = &mut event.details {
        details.insert(key.to_owned(), value);
    }
}
