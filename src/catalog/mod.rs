//! The catalog: organizations, admins, placements, pending collection drops and per-database
//! collection counts. [`Catalog`] is the interface; [`embedded::EmbeddedCatalog`] keeps it in a
//! redb file in the data dir, [`mongo::MongoCatalog`] in a MongoDB database.
//!
//! Uniqueness (normalized org name, collection name, admin email) is enforced here, atomically,
//! so concurrent creates of one name yield exactly one winner.

pub mod embedded;
pub mod events;
pub mod mongo;

pub use events::{Actor, AuditEvent, EventPage, EventQuery, EventType};

use crate::domain::{
    AdminId, CollectionName, DatabaseName, Email, NormalizedOrgName, OrgId, OrgName, ShardId,
};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// Lifecycle of an organization record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum OrgState {
    /// Written by a create that has not finished; rolled back at startup if still here.
    Creating,
    /// Normal.
    Active,
    /// A rename is in progress: the new name and collection are reserved. Finished at startup
    /// if interrupted.
    Renaming {
        /// The name being moved to.
        to_name: OrgName,
        /// The collection being moved to.
        to_collection: CollectionName,
        /// Credentials changed by the same request: the admin record as it must be stored
        /// (its `revision` is the one read). Written first, before any data moves, so
        /// recovery completes the rename exactly when these are in place, and aborts it
        /// otherwise: both commit or neither.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        admin: Option<Box<AdminRecord>>,
        /// The target name was found free (a pending drop run, an orphan set aside) before
        /// any document moved: from then on, documents there are this rename's own.
        #[serde(default)]
        target_cleared: bool,
        /// The audit events the rename records (`organization.renamed`, or
        /// `organization.restored` for a restore), written by [`Catalog::commit_rename`] with
        /// the switch to the new name, whoever completes it.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        events: Vec<AuditEvent>,
    },
}

/// Where an organization's data lives.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Placement {
    /// Shard holding the collection.
    pub shard: ShardId,
    /// Database on the shard.
    pub database: DatabaseName,
    /// The tenant collection.
    pub collection: CollectionName,
    /// Incremented on every change, so caches can tell stale entries.
    pub epoch: u64,
    /// When first placed.
    pub created_at: DateTime<Utc>,
    /// Last change.
    pub updated_at: DateTime<Utc>,
}

/// An organization.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OrgRecord {
    /// Stable id.
    pub id: OrgId,
    /// Display name.
    pub name: OrgName,
    /// Placement (shard, database, collection).
    pub placement: Placement,
    /// Lifecycle state.
    pub state: OrgState,
    /// Creation time.
    pub created_at: DateTime<Utc>,
    /// Last update.
    pub updated_at: DateTime<Utc>,
    /// Catalog revision of the last write to this record (see [`Catalog::current_revision`]);
    /// caches keep the newest and compare-and-set writes pin it.
    #[serde(default)]
    pub revision: u64,
    /// Set while a move of the tenant's data to another location is queued or running.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub moving: Option<MoveMark>,
}

impl OrgRecord {
    /// The unique key of the current name.
    pub fn normalized_name(&self) -> NormalizedOrgName {
        self.name.normalized()
    }
}

/// The mark a move leaves on the organization it moves: what every instance's request path
/// must do for it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MoveMark {
    /// The move (see [`MoveRecord`]).
    pub move_id: String,
    /// How far the move got.
    pub phase: MovePhase,
}

/// What a move asks of the request path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MovePhase {
    /// Waiting for a slot: nothing changes for requests yet.
    Queued,
    /// Copying and catching up: every write also records the ids it touched in the move's
    /// change log.
    Capturing,
    /// Cutting over: writes wait (reads go on from the source) until the placement switches
    /// or the cutover is abandoned.
    Cutover,
}

/// One end of a move.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Location {
    /// Shard id.
    #[schema(value_type = String)]
    pub shard: ShardId,
    /// Database on the shard.
    #[schema(value_type = String)]
    pub database: DatabaseName,
    /// The tenant's collection.
    #[schema(value_type = String)]
    pub collection: CollectionName,
}

/// States of a move. `queued`, `copying`, `catching_up` and `cutover` are live; the others
/// are final.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum MoveState {
    /// Waiting for one of the `moves.max_concurrent` slots.
    Queued,
    /// Bulk copy of the source into the target.
    Copying,
    /// Applying the writes captured during the copy.
    CatchingUp,
    /// Writes held, last changes applied, verified, placement switched.
    Cutover,
    /// The tenant lives at the target.
    Done,
    /// Gave up; the source stays authoritative (see `error`).
    Failed,
    /// Cancelled before cutover; the source stays authoritative.
    Cancelled,
}

impl MoveState {
    /// Every state, in order.
    pub const ALL: [MoveState; 7] = [
        MoveState::Queued,
        MoveState::Copying,
        MoveState::CatchingUp,
        MoveState::Cutover,
        MoveState::Done,
        MoveState::Failed,
        MoveState::Cancelled,
    ];

    /// Whether the move has ended.
    pub fn is_final(self) -> bool {
        matches!(self, Self::Done | Self::Failed | Self::Cancelled)
    }

    /// Name as in the API.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Copying => "copying",
            Self::CatchingUp => "catching_up",
            Self::Cutover => "cutover",
            Self::Done => "done",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
        }
    }

    /// Parses an API name.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|m| m.as_str() == s)
    }
}

/// The result of comparing both sides before a switch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Verification {
    /// Documents on the source (and, when matched, on the target).
    pub count: u64,
    /// Order-independent hash of the target's canonical documents (hex).
    pub hash: String,
    /// Whether both sides hold the same documents.
    pub matched: bool,
}

/// A tenant move as journaled in the catalog: enough to resume it after any crash.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct MoveRecord {
    /// Random id (32 hex digits).
    pub move_id: String,
    /// The organization moved.
    #[schema(value_type = String)]
    pub organization_id: OrgId,
    /// Its name when the move was asked for.
    #[schema(value_type = String)]
    pub organization_name: OrgName,
    /// Where the data was.
    pub from: Location,
    /// Where it goes.
    pub to: Location,
    /// Where the move is.
    pub state: MoveState,
    /// Documents in the source when the copy started.
    pub docs_total: u64,
    /// Documents copied so far (bulk copy plus catch-up).
    pub docs_copied: u64,
    /// Their size as JSON.
    pub bytes_copied: u64,
    /// The bulk copy has written every document up to this `_id` (resume point).
    #[serde(default)]
    pub copied_through: Option<String>,
    /// The target collection was created by this move (so it is this move's to drop).
    #[serde(default)]
    pub target_created: bool,
    /// When asked for.
    pub created_at: DateTime<Utc>,
    /// When the copy started.
    pub started_at: Option<DateTime<Utc>>,
    /// When it ended.
    pub finished_at: Option<DateTime<Utc>>,
    /// How long writes were held at the successful cutover.
    pub write_pause_ms: Option<u64>,
    /// Cutovers abandoned because the last changes did not fit the write pause.
    #[serde(default)]
    pub cutover_attempts: u32,
    /// Comparison of both sides before the switch.
    pub verification: Option<Verification>,
    /// Why it failed or was cancelled.
    pub error: Option<String>,
    /// Who asked: `operator`, `drain` or `rebalance`.
    pub reason: String,
    /// Cleanup after the end is done: the source (after the grace period) or the unused
    /// target handed to the pending drops, the change log removed.
    #[serde(default)]
    pub cleanup_done: bool,
}

/// One entry of a move's change log: a document written while the move was capturing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MoveChange {
    /// The entry's own key (to clear it once applied).
    pub key: String,
    /// The tenant document's `_id`.
    pub doc_id: String,
}

/// An admin account of one organization.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AdminRecord {
    /// Stable id (the JWT `sub`).
    pub id: AdminId,
    /// The organization administered.
    pub org_id: OrgId,
    /// Login email, unique across the gateway.
    pub email: Email,
    /// argon2id PHC string.
    pub password_hash: String,
    /// Bumped when the password changes; tokens carrying an older version are refused.
    pub credential_version: u32,
    /// Creation time.
    pub created_at: DateTime<Utc>,
    /// Last update.
    pub updated_at: DateTime<Utc>,
    /// Catalog revision of the last write to this record; [`Catalog::update_admin`] only
    /// succeeds when the stored record still has the revision the caller read.
    #[serde(default)]
    pub revision: u64,
}

impl std::fmt::Debug for AdminRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminRecord")
            .field("id", &self.id)
            .field("org_id", &self.org_id)
            .field("email", &self.email)
            .field("credential_version", &self.credential_version)
            .field("revision", &self.revision)
            .finish_non_exhaustive()
    }
}

/// A collection the catalog no longer references that still has to be dropped from its shard.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingDrop {
    /// Shard holding it.
    pub shard: ShardId,
    /// Database on the shard.
    pub database: DatabaseName,
    /// Collection to drop.
    pub collection: CollectionName,
    /// Instead of dropping it, rename it to this (a deleted organization's kept data).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stash_to: Option<CollectionName>,
}

/// Where a tombstone is in its life. Only `Kept` ones are listed, restored or purged; the
/// others are steps of a change in progress (the MongoDB catalog writes several documents per
/// change: recovery finishes or rolls back a step older than its grace period).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum TombstonePhase {
    /// The delete is being written (the organization may still be there).
    Deleting,
    /// Deleted; its data is kept for restore.
    #[default]
    Kept,
    /// Being restored.
    Restoring,
    /// Being purged.
    Purging,
}

/// A deleted organization, kept (data, admins and their password hashes) until restored or
/// purged. No live key (name, collection, email) points at it.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
pub struct Tombstone {
    /// The organization as it was when deleted.
    pub org: OrgRecord,
    /// Its admins as they were.
    pub admins: Vec<AdminRecord>,
    /// Where its data is kept ([`CollectionName::tombstone`]), in the placement's database.
    pub collection: CollectionName,
    /// When deleted.
    pub deleted_at: DateTime<Utc>,
    /// When the sweeper may purge it.
    pub restorable_until: DateTime<Utc>,
    /// Stored bytes when deleted, as quotas count them (null if unknown).
    pub size_bytes: Option<u64>,
    /// Step of a change in progress.
    #[serde(default)]
    pub phase: TombstonePhase,
    /// When the phase last changed.
    #[serde(default = "Utc::now")]
    pub phase_at: DateTime<Utc>,
}

impl std::fmt::Debug for Tombstone {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tombstone")
            .field("org", &self.org)
            .field("admins", &self.admins)
            .field("collection", &self.collection)
            .field("deleted_at", &self.deleted_at)
            .field("phase", &self.phase)
            .finish_non_exhaustive()
    }
}

impl Tombstone {
    /// The kept data's pending stash: the organization's collection renamed to
    /// [`Tombstone::collection`].
    pub fn stash(&self) -> PendingDrop {
        PendingDrop {
            shard: self.org.placement.shard.clone(),
            database: self.org.placement.database.clone(),
            collection: self.org.placement.collection.clone(),
            stash_to: Some(self.collection.clone()),
        }
    }

    /// The drop of the kept data (a purge).
    pub fn purge_drop(&self) -> PendingDrop {
        PendingDrop {
            shard: self.org.placement.shard.clone(),
            database: self.org.placement.database.clone(),
            collection: self.collection.clone(),
            stash_to: None,
        }
    }
}

impl PendingDrop {
    /// A stable key for this drop.
    pub fn key(&self) -> String {
        format!("{}/{}/{}", self.shard, self.database, self.collection)
    }
}

/// Which unique key a write collided with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Taken {
    /// The normalized organization name.
    OrgName,
    /// The derived collection name.
    Collection,
    /// The admin email.
    Email,
}

/// Catalog failures.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    /// A unique key is already used.
    #[error("already taken: {0:?}")]
    Conflict(Taken),
    /// The record to change does not exist (or is not in the expected state).
    #[error("not found")]
    NotFound,
    /// The record changed since the caller read it (compare-and-set on its revision failed).
    #[error("changed concurrently")]
    Stale,
    /// The organization already has the most admins allowed.
    #[error("admin limit reached")]
    AdminLimit,
    /// The admin to remove is the organization's last one.
    #[error("last admin")]
    LastAdmin,
    /// The catalog store cannot be reached or cannot take writes for now (no primary during
    /// a failover, a network error, a timeout): the caller may retry.
    #[error("catalog unavailable: {0}")]
    Unavailable(String),
    /// The catalog store failed.
    #[error("catalog store error: {0}")]
    Backend(String),
}

/// Result alias for catalog operations.
pub type CatalogResult<T> = Result<T, CatalogError>;

/// The catalog interface. Each method is atomic with respect to the unique keys it touches.
#[async_trait]
pub trait Catalog: Send + Sync + 'static {
    /// Inserts a new organization (in `Creating` or `Active` state) with its first admin and
    /// counts its collection in the placement's database. Returns the record as stored.
    async fn insert_org(&self, org: &OrgRecord, admin: &AdminRecord) -> CatalogResult<OrgRecord>;

    /// Replaces an organization record whose name and collection are unchanged (state
    /// changes), if the stored record still has `org.revision` ([`CatalogError::Stale`]
    /// otherwise). Returns the record as stored.
    async fn put_org(&self, org: &OrgRecord) -> CatalogResult<OrgRecord>;

    /// [`Self::put_org`] and the audit event that records it, written with it.
    ///
    /// Every change that records an event takes it this way (`events` of the other
    /// methods). The embedded catalog writes change and events in one transaction. MongoDB
    /// writes the events into the changed document's `outbox` in the same single-document
    /// write, then copies them into the log (by id: at most once) and clears them; whatever a
    /// crash leaves in an outbox is copied by [`Self::flush_events`], which the recovery loop
    /// and every read of the log run first. Either way a change is never seen without its
    /// event, and an event never records a change that did not happen.
    async fn put_org_with_event(
        &self,
        org: &OrgRecord,
        event: &AuditEvent,
    ) -> CatalogResult<OrgRecord>;

    /// Looks an organization up by id.
    async fn org_by_id(&self, id: OrgId) -> CatalogResult<Option<OrgRecord>>;

    /// Looks an organization up by its normalized current name.
    async fn org_by_name(&self, name: &NormalizedOrgName) -> CatalogResult<Option<OrgRecord>>;

    /// Every organization at once (operator plans: drain, rebalance). Background loops page
    /// with [`Catalog::orgs_after`] instead, so their memory does not grow with the catalog.
    async fn list_orgs(&self) -> CatalogResult<Vec<OrgRecord>>;

    /// Up to `limit` organizations with ids after `after` (from the first when `None`), in
    /// id order.
    async fn orgs_after(&self, after: Option<OrgId>, limit: usize)
        -> CatalogResult<Vec<OrgRecord>>;

    /// Up to `limit` organizations whose normalized current name starts with `prefix`, in
    /// name order, strictly after `after` when given: a range scan of the name index, never
    /// a read of every organization.
    async fn orgs_by_name(
        &self,
        prefix: &str,
        after: Option<&NormalizedOrgName>,
        limit: usize,
    ) -> CatalogResult<Vec<OrgRecord>>;

    /// Organizations not `Active` (creating or renaming): what recovery looks at, read
    /// through an index rather than a scan of every organization.
    async fn orgs_not_active(&self) -> CatalogResult<Vec<OrgRecord>>;

    /// Looks an admin up by email.
    async fn admin_by_email(&self, email: &Email) -> CatalogResult<Option<AdminRecord>>;

    /// Looks an admin up by id.
    async fn admin_by_id(&self, id: AdminId) -> CatalogResult<Option<AdminRecord>>;

    /// Admins of one organization.
    async fn admins_of_org(&self, org: OrgId) -> CatalogResult<Vec<AdminRecord>>;

    /// Replaces an admin (email and/or password change) if the stored record still has
    /// `admin.revision` ([`CatalogError::Stale`] otherwise); the new email must be free.
    /// Returns the stored record with its new revision. `events` are written with it.
    async fn update_admin(
        &self,
        admin: &AdminRecord,
        events: &[AuditEvent],
    ) -> CatalogResult<AdminRecord>;

    /// Adds an admin to an existing organization, if it has fewer than `max` admins and the
    /// email is free ([`CatalogError::AdminLimit`], [`CatalogError::Conflict`]); decided
    /// atomically, so concurrent adds never pass `max`. [`CatalogError::NotFound`] if the
    /// organization is gone. Returns the admin as stored. `events` are written with it.
    async fn add_admin(
        &self,
        admin: &AdminRecord,
        max: u32,
        events: &[AuditEvent],
    ) -> CatalogResult<AdminRecord>;

    /// Removes an admin of `org` unless it is the organization's last one
    /// ([`CatalogError::LastAdmin`]); decided atomically, so concurrent removals never leave
    /// an organization without an admin. `Ok(None)` if `org` has no such admin (and
    /// `events` are not written); otherwise `events` are written with the removal.
    async fn remove_admin(
        &self,
        org: OrgId,
        admin: AdminId,
        events: &[AuditEvent],
    ) -> CatalogResult<Option<AdminRecord>>;

    /// Reserves `to_name` and its collection for the org and marks it `Renaming`, journaling
    /// the credentials change that goes with it, if any, and the `events` that
    /// [`Self::commit_rename`] writes.
    async fn begin_rename(
        &self,
        id: OrgId,
        to_name: &OrgName,
        admin: Option<&AdminRecord>,
        events: &[AuditEvent],
    ) -> CatalogResult<OrgRecord>;

    /// Switches a `Renaming` org to its new name and collection, releases the old keys and
    /// bumps the placement epoch, writing the events journaled with the rename.
    async fn commit_rename(&self, id: OrgId) -> CatalogResult<OrgRecord>;

    /// Releases the reserved keys of a `Renaming` org and marks it `Active` again; refused
    /// ([`CatalogError::Stale`]) once the rename has journaled `target_cleared`, since
    /// documents may have moved from then on.
    async fn abort_rename(&self, id: OrgId) -> CatalogResult<OrgRecord>;

    /// Removes the organization, its admins and its keys, uncounts its collection and records
    /// the collection as a [`PendingDrop`]. Returns the removed record. Refused
    /// ([`CatalogError::Stale`]) while the organization carries a move mark.
    async fn delete_org(&self, id: OrgId) -> CatalogResult<Option<OrgRecord>>;

    /// Soft-deletes an `Active` organization: removes it, its admins and its keys (name,
    /// collection, emails are free at once) and keeps them in a [`Tombstone`] with its
    /// collection still counted, recording the stash of its collection as a [`PendingDrop`],
    /// all in one step, with `events`. Returns the tombstone; `Ok(None)` if the organization
    /// is gone. Refused ([`CatalogError::Stale`]) while it is not active or carries a move
    /// mark.
    async fn tombstone_org(
        &self,
        id: OrgId,
        deleted_at: DateTime<Utc>,
        restorable_until: DateTime<Utc>,
        size_bytes: Option<u64>,
        events: &[AuditEvent],
    ) -> CatalogResult<Option<Tombstone>>;

    /// One tombstone, in any phase.
    async fn tombstone(&self, id: OrgId) -> CatalogResult<Option<Tombstone>>;

    /// Up to `limit` kept tombstones with organization ids after `after`, in id order.
    async fn tombstones(&self, after: Option<OrgId>, limit: usize)
        -> CatalogResult<Vec<Tombstone>>;

    /// Restores a kept tombstone under `name`: the organization comes back as `Renaming` to
    /// `name` (its placement's collection is the tombstone's, the rename moves the data back)
    /// with its admins, and the tombstone is gone. [`CatalogError::NotFound`] without a kept
    /// tombstone, [`CatalogError::Conflict`] when the name, its collection or an admin's
    /// email is taken, [`CatalogError::Stale`] while its stash is still pending. `events`
    /// are journaled with the rename back and written when it commits.
    async fn restore_org(
        &self,
        id: OrgId,
        name: &OrgName,
        events: &[AuditEvent],
    ) -> CatalogResult<OrgRecord>;

    /// Removes a kept tombstone, uncounts its collection and records its drop, in one step.
    /// `Ok(None)` without a kept tombstone (and `events` are not written);
    /// [`CatalogError::Stale`] while its stash is still pending.
    async fn purge_tombstone(
        &self,
        id: OrgId,
        events: &[AuditEvent],
    ) -> CatalogResult<Option<Tombstone>>;

    /// Finishes or rolls back tombstone changes interrupted more than `min_age` ago (a
    /// catalog without multi-document steps has none). Returns how many it settled.
    async fn settle_tombstones(&self, min_age: std::time::Duration) -> CatalogResult<usize>;

    /// Collections still to drop.
    async fn pending_drops(&self) -> CatalogResult<Vec<PendingDrop>>;

    /// Forgets a pending drop once done.
    async fn clear_pending_drop(&self, drop: &PendingDrop) -> CatalogResult<()>;

    /// Tenant collections counted per (shard, database).
    async fn collection_counts(&self) -> CatalogResult<Vec<(ShardId, DatabaseName, u64)>>;

    /// Overwrites one count (startup reconciliation).
    async fn set_collection_count(
        &self,
        shard: &ShardId,
        database: &DatabaseName,
        count: u64,
    ) -> CatalogResult<()>;

    /// A small named value (e.g. runtime-added shards), JSON-encoded.
    async fn get_setting(&self, key: &str) -> CatalogResult<Option<serde_json::Value>>;

    /// Stores a small named value, with `events`.
    async fn put_setting(
        &self,
        key: &str,
        value: &serde_json::Value,
        events: &[AuditEvent],
    ) -> CatalogResult<()>;

    /// Stores `value` under `key`, with `events`, only if the stored value is still
    /// `expected` (`None`: no value). `Ok(false)`, writing nothing, when it changed meanwhile.
    /// See [`update_setting`].
    async fn put_setting_if(
        &self,
        key: &str,
        expected: Option<&serde_json::Value>,
        value: &serde_json::Value,
        events: &[AuditEvent],
    ) -> CatalogResult<bool>;

    /// The newest catalog revision allocated. Every write allocates a new one, so a revision
    /// read after a write has committed is greater than that write's.
    async fn current_revision(&self) -> CatalogResult<u64>;

    /// Allocates a new revision without changing anything else. A fence calls it after its
    /// change has committed: an instance that has seen this revision on the change feed has
    /// seen the change.
    async fn next_revision(&self) -> CatalogResult<u64>;

    /// Records (or refreshes) this instance in the registry.
    async fn heartbeat(&self, instance: &InstanceInfo) -> CatalogResult<()>;

    /// Every registered instance, live or not; `last_seen` on the catalog's clock.
    async fn instances(&self) -> CatalogResult<Vec<InstanceInfo>>;

    /// The catalog's clock: registry entries and leases are judged by it, never by the
    /// instances' own clocks.
    async fn now(&self) -> CatalogResult<DateTime<Utc>>;

    /// Removes an instance from the registry (clean shutdown, or long expired).
    async fn remove_instance(&self, id: &str) -> CatalogResult<()>;

    /// Takes or renews the named lease for `holder` until `ttl` from now. `Ok(None)` when
    /// acquired; `Ok(Some(other))` when another holder has it and it has not expired.
    async fn acquire_lease(
        &self,
        name: &str,
        holder: &str,
        ttl: std::time::Duration,
    ) -> CatalogResult<Option<String>>;

    /// Gives the named lease up if `holder` still has it.
    async fn release_lease(&self, name: &str, holder: &str) -> CatalogResult<()>;

    /// Adds a pending drop (a move's source after its grace period, or its target when it
    /// ends without switching).
    async fn add_pending_drop(&self, drop: &PendingDrop) -> CatalogResult<()>;

    /// Adds `delta` to the count of tenant collections in one database (a move's switch).
    async fn adjust_collection_count(
        &self,
        shard: &ShardId,
        database: &DatabaseName,
        delta: i64,
    ) -> CatalogResult<()>;

    /// Creates or replaces a move record. Only the holder of the move's lease writes it.
    async fn put_move(&self, mv: &MoveRecord) -> CatalogResult<()>;

    /// One move.
    async fn get_move(&self, id: &str) -> CatalogResult<Option<MoveRecord>>;

    /// Every move, oldest first.
    async fn list_moves(&self) -> CatalogResult<Vec<MoveRecord>>;

    /// Appends the ids of documents just written to a move's change log.
    async fn log_move_changes(&self, move_id: &str, doc_ids: &[String]) -> CatalogResult<()>;

    /// Up to `limit` entries of a move's change log, oldest first.
    async fn move_changes(&self, move_id: &str, limit: usize) -> CatalogResult<Vec<MoveChange>>;

    /// Removes applied entries (by key); entries logged meanwhile stay.
    async fn clear_move_changes(&self, move_id: &str, keys: &[String]) -> CatalogResult<()>;

    /// Appends an audit event of something that is not a catalog change (a login), or of a
    /// change already committed.
    async fn append_event(&self, event: &AuditEvent) -> CatalogResult<()>;

    /// Copies events written with their change but not yet into the log (a catalog whose
    /// changes and log are not one transaction keeps them on the changed document first).
    /// Returns how many it copied; [`Self::events`] runs it before reading.
    async fn flush_events(&self) -> CatalogResult<usize> {
        Ok(0)
    }

    /// A page of audit events matching `query`, oldest first. A page may hold fewer than
    /// `query.limit` events and still have a next one (the scan behind it is bounded).
    async fn events(&self, query: &EventQuery) -> CatalogResult<EventPage>;

    /// Removes the events from before `before`; returns how many.
    async fn purge_events(&self, before: chrono::DateTime<Utc>) -> CatalogResult<u64>;

    /// Lets the store itself remove events older than `retention` where it can (a TTL index
    /// on MongoDB); [`Self::purge_events`] runs as well, so this is only a head start.
    async fn expire_events_after(&self, _retention: std::time::Duration) -> CatalogResult<()> {
        Ok(())
    }

    /// Records that `org`'s data is being written at `at`, keeping the latest of all marks
    /// (a `$max`): `backup --since` reads it. It lives in its own table or collection, never
    /// in the organization record (whose revision drives cache invalidation), and is written
    /// before the data write it announces, so a crash after that write still leaves the mark.
    async fn mark_written(&self, org: OrgId, at: DateTime<Utc>) -> CatalogResult<()>;

    /// The latest mark [`Catalog::mark_written`] recorded for `org`.
    async fn last_written(&self, org: OrgId) -> CatalogResult<Option<DateTime<Utc>>>;

    /// Follows the catalog's changes from `resume` (or from now). `Ok(None)` when this catalog
    /// has no change feed (the embedded catalog belongs to one process, which makes every
    /// change itself).
    async fn watch(&self, resume: Option<FeedToken>) -> CatalogResult<Option<ChangeStream>>;
}

/// A gateway instance in the registry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct InstanceInfo {
    /// Random id chosen at start.
    pub id: String,
    /// Package version.
    pub version: String,
    /// Public listen address.
    pub listen: String,
    /// Operator listen address.
    pub ops_listen: String,
    /// Process start.
    pub started_at: DateTime<Utc>,
    /// Last heartbeat.
    pub last_seen: DateTime<Utc>,
    /// How long after `last_seen` the instance counts as gone.
    pub lease_ms: u64,
    /// The longest one of its requests may run: a fence waits this long past the lease for
    /// an instance that stopped heartbeating.
    #[serde(default)]
    pub drain_ms: u64,
    /// Newest catalog revision whose changes this instance has applied (caches invalidated,
    /// requests that used older state finished).
    pub applied_revision: u64,
    /// How it follows the catalog: `stream`, `polling` or `local`.
    pub feed: String,
    /// Its data dir's id: a restart on the same data dir replaces its predecessor's entry.
    #[serde(default)]
    pub node_id: String,
}

impl InstanceInfo {
    /// Whether the lease still runs at `now`.
    pub fn is_live(&self, now: DateTime<Utc>) -> bool {
        now <= self.last_seen + chrono::Duration::milliseconds(self.lease_ms as i64)
    }

    /// Whether a fence may stop waiting for it: its lease lapsed and any request it had
    /// started since has timed out.
    pub fn gone_for_fence(&self, now: DateTime<Utc>) -> bool {
        now > self.last_seen
            + chrono::Duration::milliseconds((self.lease_ms + self.drain_ms) as i64)
    }
}

/// Where a change stream can resume; opaque to everything but the catalog.
#[derive(Debug, Clone)]
pub struct FeedToken(pub(crate) bson::Bson);

/// One change seen on the catalog's change feed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CatalogChange {
    /// An organization document changed (inserted, updated, deleted).
    Org(OrgId),
    /// An admin changed.
    Admin(AdminId),
    /// A setting changed (rate-limit overrides, runtime shards).
    Setting(String),
    /// The revision counter reached this value.
    Revision(u64),
    /// Something the gateway does not cache.
    Other,
    /// No change: a poll that found none (the feed's resume token may have moved on).
    Idle,
}

/// A live change feed.
#[async_trait]
pub trait ChangeFeed: Send {
    /// The next change; `Ok(None)` if the stream ended.
    async fn next_change(&mut self) -> CatalogResult<Option<CatalogChange>>;
    /// Where to resume after the last change returned.
    fn resume_token(&self) -> Option<FeedToken>;
}

/// A boxed [`ChangeFeed`].
pub type ChangeStream = Box<dyn ChangeFeed>;

/// Pages through every organization in id order, [`OrgPages::PAGE`] at a time, so a loop over
/// the whole catalog holds one page in memory, not 100,000 records.
pub struct OrgPages<'a> {
    catalog: &'a dyn Catalog,
    after: Option<OrgId>,
    done: bool,
}

impl<'a> OrgPages<'a> {
    /// Organizations read per catalog call.
    pub const PAGE: usize = 1_000;

    /// Pages starting after `after` (from the first organization when `None`).
    pub fn new(catalog: &'a dyn Catalog, after: Option<OrgId>) -> Self {
        Self {
            catalog,
            after,
            done: false,
        }
    }

    /// The next page, or `None` after the last organization.
    pub async fn next_page(&mut self) -> CatalogResult<Option<Vec<OrgRecord>>> {
        if self.done {
            return Ok(None);
        }
        let page = self.catalog.orgs_after(self.after, Self::PAGE).await?;
        self.done = page.len() < Self::PAGE;
        match page.last() {
            Some(last) => {
                self.after = Some(last.id);
                Ok(Some(page))
            }
            None => Ok(None),
        }
    }

    /// The id of the last organization returned (where a later walk can resume).
    pub fn position(&self) -> Option<OrgId> {
        self.after
    }
}

/// Reads setting `key`, applies `change` to it and stores the result with `events` unless
/// someone changed the setting meanwhile, in which case it starts again from the new value:
/// two instances changing different parts of one setting at once both keep their change.
/// Returns the value stored; an error of `change` (a value it cannot read) writes nothing.
pub async fn update_setting<F>(
    catalog: &dyn Catalog,
    key: &str,
    events: &[AuditEvent],
    mut change: F,
) -> CatalogResult<serde_json::Value>
where
    F: FnMut(Option<&serde_json::Value>) -> CatalogResult<serde_json::Value> + Send,
{
    const ATTEMPTS: usize = 20;
    for _ in 0..ATTEMPTS {
        let current = catalog.get_setting(key).await?;
        let next = change(current.as_ref())?;
        if catalog
            .put_setting_if(key, current.as_ref(), &next, events)
            .await?
        {
            return Ok(next);
        }
    }
    Err(CatalogError::Backend(format!(
        "setting {key} kept changing; retry"
    )))
}

/// Decodes a setting's value (`None`: the default), or fails naming the setting: an
/// unreadable setting is never overwritten.
pub fn decode_setting<T: serde::de::DeserializeOwned + Default>(
    key: &str,
    value: Option<&serde_json::Value>,
) -> CatalogResult<T> {
    match value {
        None => Ok(T::default()),
        Some(v) => serde_json::from_value(v.clone())
            .map_err(|e| CatalogError::Backend(format!("setting {key} is unreadable: {e}"))),
    }
}
