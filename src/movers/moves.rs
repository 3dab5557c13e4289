//! Online tenant moves: a tenant's collection goes to another shard or database while the
//! tenant keeps reading and writing.
//!
//! ```text
//!  queued ──▶ copying ──▶ catching_up ──▶ cutover ──▶ done
//!    │           │             │  ▲           │
//!    │           │             │  └───────────┘ last changes did not fit the write pause
//!    └───────────┴─────────────┴──▶ cancelled (operator, or the org was deleted/renamed)
//!                              └──▶ failed (verification mismatch, target unusable)
//! ```
//!
//! - **queued**: the organization carries [`MoveMark`] `queued`; nothing changes for requests.
//!   A move starts when it gets one of the fleet's `moves.max_concurrent` slots (catalog
//!   leases), so concurrency is bounded across every instance.
//! - **copying**: the mark turns to `capturing` and a fence passes: from then on every write on
//!   every instance appends the `_id`s it touched to the move's change log in the catalog
//!   (after the store write, before the request's gate is released). The target collection is
//!   created (never adopting one already there), then the source is copied in `_id` order in
//!   batches, rate-limited, the resume point journaled.
//! - **catching_up**: log entries are applied (re-read from the source; upserted, or deleted
//!   when gone) until few remain; then both sides are compared document by document in `_id`
//!   order while the target is still (only this move writes it).
//! - **cutover**: the mark turns to `cutover` and a fence passes: every live instance now holds
//!   the tenant's writes (they wait; reads go on from the source) and has finished the writes
//!   it had started. The rest of the log is applied, every document that differed or changed
//!   since the comparison is compared again, counts and hashes checked, and the placement is
//!   switched with a new epoch in one compare-and-set. Held writes then go to the target. If
//!   that takes longer than `moves.max_write_pause_ms`, the cutover is abandoned (writes
//!   resume on the source) and tried again later; a mismatch fails the move, the source
//!   staying authoritative.
//! - **done**: after `moves.source_grace_seconds` the source collection becomes a pending
//!   drop (dropped after a fence, like a deleted organization's).
//!
//! Every step is journaled in the move record and the organization's mark, written only by
//! the holder of the move's lease; a crash anywhere leaves a state the next holder resumes:
//! a crash in cutover abandons the cutover unless the placement already switched.

use super::copy::{canonical_json, indexes_ready, sync_indexes, Fingerprint};
use super::{create_collection, CollectionLock, Lifecycle, MoveError};
use crate::catalog::{
    CatalogError, Location, MoveMark, MovePhase, MoveRecord, MoveState, OrgPages, OrgRecord,
    OrgState, PendingDrop, Verification,
};
use crate::failpoints::failpoint;
use crate::store::{Document, Namespace, TenantStore};
use crate::telemetry::metrics;
use chrono::Utc;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Move settings (`[moves]`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MovesConfig {
    /// Moves running at once across the fleet; more wait in `queued`.
    pub max_concurrent: u32,
    /// Longest a tenant's writes are held at cutover; past it the cutover is abandoned and
    /// retried.
    pub max_write_pause_ms: u64,
    /// Bulk-copy rate limit per move, documents per second (0: unlimited).
    pub copy_docs_per_second: u64,
    /// Documents per copy batch.
    pub batch_size: usize,
    /// How long the source collection is kept after the switch before it is dropped.
    pub source_grace_seconds: u64,
    /// Cutover is tried once the change log holds at most this many entries.
    pub cutover_lag: usize,
    /// Abandoned cutovers before the move fails.
    pub max_cutover_attempts: u32,
}

impl Default for MovesConfig {
    fn default() -> Self {
        Self {
            max_concurrent: 2,
            max_write_pause_ms: 500,
            copy_docs_per_second: 50_000,
            batch_size: 1_000,
            source_grace_seconds: 300,
            cutover_lag: 100,
            max_cutover_attempts: 20,
        }
    }
}

impl MovesConfig {
    /// Checks the bounds.
    pub fn validate(&self) -> Result<(), String> {
        if self.max_concurrent == 0 || self.batch_size == 0 || self.max_write_pause_ms == 0 {
            return Err(
                "moves.max_concurrent, moves.batch_size and moves.max_write_pause_ms must be > 0"
                    .into(),
            );
        }
        if self.batch_size > 10_000 {
            return Err("moves.batch_size must be at most 10000".into());
        }
        Ok(())
    }
}

/// How long a move's lease and its slot lease last without renewal.
const LEASE: Duration = Duration::from_secs(15);
/// Change-log entries applied per round.
const LOG_BATCH: usize = 1_000;
/// Ids fetched per query when comparing or catching up.
const FETCH_BATCH: usize = 500;

/// Catalog setting that asks for a move to be cancelled.
pub fn cancel_setting(move_id: &str) -> String {
    format!("move_cancel:{move_id}")
}

async fn cancel_flag(lc: &Lifecycle<'_>, move_id: &str) -> Result<bool, MoveError> {
    Ok(lc.catalog.get_setting(&cancel_setting(move_id)).await? == Some(json!(true)))
}

fn lease_name(move_id: &str) -> String {
    format!("move:{move_id}")
}

fn ns(l: &Location) -> Namespace {
    Namespace {
        database: l.database.clone(),
        collection: l.collection.clone(),
    }
}

/// Where an organization is now.
pub fn location_of(org: &OrgRecord) -> Location {
    Location {
        shard: org.placement.shard.clone(),
        database: org.placement.database.clone(),
        collection: org.placement.collection.clone(),
    }
}

type StoreHandle = Arc<dyn TenantStore>;

/// Why a move cannot be queued.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    /// The organization is already moving, renaming or being created.
    #[error("the organization is already moving or busy")]
    Busy,
    /// The target is where the organization already is.
    #[error("the organization already lives there")]
    AlreadyThere,
    /// The catalog failed.
    #[error(transparent)]
    Catalog(#[from] CatalogError),
}

/// Records a move of `org` to `to` and marks the organization (compare-and-set: a second
/// move, a rename or a delete racing this one makes exactly one of them win).
pub async fn queue(
    lc: &Lifecycle<'_>,
    org: &OrgRecord,
    to: Location,
    reason: &str,
) -> Result<MoveRecord, QueueError> {
    if org.state != OrgState::Active || org.moving.is_some() {
        return Err(QueueError::Busy);
    }
    let from = location_of(org);
    if from.shard == to.shard && from.database == to.database {
        return Err(QueueError::AlreadyThere);
    }
    let mv = MoveRecord {
        move_id: uuid::Uuid::new_v4().simple().to_string(),
        organization_id: org.id,
        organization_name: org.name.clone(),
        from,
        to,
        state: MoveState::Queued,
        docs_total: 0,
        docs_copied: 0,
        bytes_copied: 0,
        copied_through: None,
        target_created: false,
        created_at: Utc::now(),
        started_at: None,
        finished_at: None,
        write_pause_ms: None,
        cutover_attempts: 0,
        verification: None,
        error: None,
        reason: reason.to_owned(),
        cleanup_done: false,
    };
    // The record first: a mark never names a move that does not exist.
    lc.catalog.put_move(&mv).await?;
    let mut marked = org.clone();
    marked.moving = Some(MoveMark {
        move_id: mv.move_id.clone(),
        phase: MovePhase::Queued,
    });
    match lc.catalog.put_org(&marked).await {
        Ok(stored) => lc.router.invalidate_org(&stored).await,
        Err(e) => {
            let mut lost = mv.clone();
            lost.state = MoveState::Cancelled;
            lost.error = Some("the organization changed while the move was queued".into());
            lost.finished_at = Some(Utc::now());
            lc.catalog.put_move(&lost).await?;
            return Err(match e {
                CatalogError::Stale | CatalogError::NotFound => QueueError::Busy,
                other => QueueError::Catalog(other),
            });
        }
    }
    metrics::MOVES_STARTED.inc();
    Ok(mv)
}

/// Asks for a move to be cancelled: it stops before cutover (a move already cutting over
/// completes). Returns false when the move has ended or is cutting over.
pub async fn request_cancel(lc: &Lifecycle<'_>, mv: &MoveRecord) -> Result<bool, CatalogError> {
    if mv.state.is_final() || mv.state == MoveState::Cutover {
        return Ok(false);
    }
    lc.catalog
        .put_setting(&cancel_setting(&mv.move_id), &json!(true), &[])
        .await?;
    Ok(true)
}

/// Before a rename or delete: cancels a move of `org` and waits (up to `limit`) until the
/// organization carries no move mark; a move in cutover is waited for. Returns the
/// organization as it is then, or `None` if it is gone.
pub async fn settle(
    lc: &Lifecycle<'_>,
    org: &OrgRecord,
    limit: Duration,
) -> Result<Option<OrgRecord>, MoveError> {
    let deadline = Instant::now() + limit;
    let mut current = Some(org.clone());
    loop {
        let Some(o) = current.as_ref() else {
            return Ok(None);
        };
        let Some(mark) = &o.moving else {
            return Ok(current);
        };
        match lc.catalog.get_move(&mark.move_id).await? {
            Some(mv) if !mv.state.is_final() => {
                request_cancel(lc, &mv).await?;
            }
            // A mark left by a move that ended (or never got recorded): clear it.
            _ => clear_stale_mark(lc, o).await?,
        }
        if Instant::now() >= deadline {
            return Err(MoveError::Busy);
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
        current = lc.catalog.org_by_id(org.id).await?;
    }
}

/// A move being driven by this instance: holds its lease and a fleet slot.
struct Driver<'a, 'b> {
    lc: &'a Lifecycle<'b>,
    cfg: &'a MovesConfig,
    /// Holds one of the fleet's move slots (copying and catching up need one).
    has_slot: bool,
    mv: MoveRecord,
    /// Target fingerprint, exact while known (this move is the target's only writer).
    target_fp: Option<Fingerprint>,
    /// Ids to compare again at cutover: those that differed in the comparison, and every id
    /// the catch-up applied since it.
    recheck: BTreeSet<String>,
    last_journal: Instant,
}

/// Drives one move until it ends or this instance loses its lease; returns when it can do
/// nothing more now. `holder` identifies this instance's leases.
pub async fn drive(
    lc: &Lifecycle<'_>,
    cfg: &MovesConfig,
    holder: &str,
    move_id: &str,
) -> Result<(), MoveError> {
    let lease = lease_name(move_id);
    if lc
        .catalog
        .acquire_lease(&lease, holder, LEASE)
        .await?
        .is_some()
    {
        return Ok(());
    }
    let Some(mv) = lc.catalog.get_move(move_id).await? else {
        lc.catalog.release_lease(&lease, holder).await?;
        return Ok(());
    };
    let cancel = cancel_flag(lc, move_id).await?;
    // Copying needs a slot; a cancel, a cutover to settle, or a finished move's cleanup
    // does not (a cutover found interrupted holds the tenant's writes: never wait for one).
    let needs_slot = !mv.state.is_final() && mv.state != MoveState::Cutover && !cancel;
    let slot = if needs_slot {
        match take_slot(lc, cfg, holder, move_id).await? {
            Some(s) => Some(s),
            None => {
                lc.catalog.release_lease(&lease, holder).await?;
                return Ok(());
            }
        }
    } else {
        None
    };
    let mut held = vec![lease.clone()];
    held.extend(slot.clone());
    let mut driver = Driver {
        lc,
        cfg,
        has_slot: slot.is_some(),
        mv,
        target_fp: None,
        recheck: BTreeSet::new(),
        last_journal: Instant::now(),
    };
    let result = tokio::select! {
        r = driver.run() => r,
        lost = renew(lc, holder, &held) => {
            tracing::error!(move_id, lease = %lost, "lost a move lease; stopping (another instance resumes)");
            Ok(())
        }
    };
    for name in held {
        // The slot lease is held as `holder/move_id` (see `take_slot`): released as plain
        // `holder` it would stay taken until it expired, idling the slot for a lease period.
        let who = if name.starts_with("move_slot:") {
            slot_holder(holder, move_id)
        } else {
            holder.to_owned()
        };
        let _ = lc.catalog.release_lease(&name, &who).await;
    }
    result
}

async fn take_slot(
    lc: &Lifecycle<'_>,
    cfg: &MovesConfig,
    holder: &str,
    move_id: &str,
) -> Result<Option<String>, MoveError> {
    // The slot lease is held for this move: its holder is `holder/move_id`, so one instance
    // running two moves takes two slots.
    for k in 0..cfg.max_concurrent {
        let name = format!("move_slot:{k}");
        if lc
            .catalog
            .acquire_lease(&name, &slot_holder(holder, move_id), LEASE)
            .await?
            .is_none()
        {
            return Ok(Some(name));
        }
    }
    Ok(None)
}

fn slot_holder(holder: &str, move_id: &str) -> String {
    format!("{holder}/{move_id}")
}

/// Renews the leases every few seconds; returns the name of one that was lost.
/// Also gives up (returning the lease's name) when renewals have failed for half a lease:
/// another instance may take the move over once it lapses, and two drivers must never write
/// the same target.
async fn renew(lc: &Lifecycle<'_>, holder: &str, held: &[String]) -> String {
    let move_id = held[0].trim_start_matches("move:").to_owned();
    let mut renewed = Instant::now();
    loop {
        tokio::time::sleep(LEASE / 5).await;
        let mut all = true;
        for name in held {
            let who = if name.starts_with("move_slot:") {
                slot_holder(holder, &move_id)
            } else {
                holder.to_owned()
            };
            match lc.catalog.acquire_lease(name, &who, LEASE).await {
                Ok(None) => {}
                Ok(Some(_)) => return name.clone(),
                Err(e) => {
                    all = false;
                    tracing::warn!(error = %e, "cannot renew a move lease; retrying");
                }
            }
        }
        if all {
            renewed = Instant::now();
        } else if renewed.elapsed() > LEASE / 2 {
            return held[0].clone();
        }
    }
}

/// What became of the organization a move works on.
enum OrgCheck {
    /// Still at the source, marked for this move.
    Ours(Box<OrgRecord>),
    /// Switched to the target by this move; carries the record while it still has the
    /// move's `cutover` mark (writes held until every instance routes to the target).
    Switched(Option<Box<OrgRecord>>),
    /// Deleted, renamed or otherwise no longer this move's.
    Lost,
}

impl Driver<'_, '_> {
    async fn run(&mut self) -> Result<(), MoveError> {
        loop {
            if self.mv.state.is_final() {
                return self.finish_final().await;
            }
            if self.cancel_requested().await? && self.mv.state != MoveState::Cutover {
                return self
                    .end(MoveState::Cancelled, "cancelled by an operator")
                    .await;
            }
            if !self.has_slot && self.mv.state != MoveState::Cutover {
                // Settled an interrupted cutover; the copy goes on once a slot is free.
                return Ok(());
            }
            match self.mv.state {
                MoveState::Queued => {
                    if !self.start().await? {
                        return Ok(());
                    }
                }
                MoveState::Copying => self.copy().await?,
                MoveState::CatchingUp => self.catch_up_and_cut_over().await?,
                MoveState::Cutover => self.resume_cutover().await?,
                MoveState::Done | MoveState::Failed | MoveState::Cancelled => {}
            }
        }
    }

    async fn cancel_requested(&self) -> Result<bool, MoveError> {
        cancel_flag(self.lc, &self.mv.move_id).await
    }

    async fn journal(&mut self) -> Result<(), MoveError> {
        self.lc.catalog.put_move(&self.mv).await?;
        self.last_journal = Instant::now();
        Ok(())
    }

    async fn check_org(&self) -> Result<OrgCheck, MoveError> {
        let org = self.lc.catalog.org_by_id(self.mv.organization_id).await?;
        Ok(match org {
            Some(o)
                if o.state == OrgState::Active
                    && o.moving.as_ref().map(|m| m.move_id.as_str())
                        == Some(self.mv.move_id.as_str())
                    && location_of(&o) == self.mv.from =>
            {
                OrgCheck::Ours(Box::new(o))
            }
            Some(o)
                if o.state == OrgState::Active
                    && location_of(&o) == self.mv.to
                    && o.moving
                        .as_ref()
                        .is_none_or(|m| m.move_id == self.mv.move_id) =>
            {
                let held = o.moving.is_some();
                OrgCheck::Switched(held.then(|| Box::new(o)))
            }
            _ => OrgCheck::Lost,
        })
    }

    /// The organization, still ours; ends the move as cancelled otherwise.
    async fn ours(&mut self) -> Result<Option<OrgRecord>, MoveError> {
        match self.check_org().await? {
            OrgCheck::Ours(o) => Ok(Some(*o)),
            OrgCheck::Switched(held) => {
                // Only a cutover switches (its state is journaled first), so this is not
                // expected; settle it as a resumed cutover would.
                if let Some(org) = held {
                    self.release_switched(*org).await?;
                }
                self.finish_switch().await?;
                Ok(None)
            }
            OrgCheck::Lost => {
                self.end(
                    MoveState::Cancelled,
                    "the organization was deleted or renamed",
                )
                .await?;
                Ok(None)
            }
        }
    }

    /// Sets the organization's mark to `phase` (compare-and-set on the record read).
    async fn set_phase(&self, org: &OrgRecord, phase: MovePhase) -> Result<OrgRecord, MoveError> {
        let mut next = org.clone();
        next.moving = Some(MoveMark {
            move_id: self.mv.move_id.clone(),
            phase,
        });
        let stored = self.lc.catalog.put_org(&next).await?;
        self.lc.router.invalidate_org(&stored).await;
        Ok(stored)
    }

    /// The source and target stores.
    fn stores(&self) -> Result<(StoreHandle, StoreHandle), MoveError> {
        let get = |l: &Location| {
            self.lc
                .shards
                .get(&l.shard)
                .map(|s| s.store.clone())
                .ok_or_else(|| MoveError::UnknownShard(l.shard.clone()))
        };
        Ok((get(&self.mv.from)?, get(&self.mv.to)?))
    }

    /// queued -> copying: capture on, fenced; target created. False when it cannot start yet.
    async fn start(&mut self) -> Result<bool, MoveError> {
        // `queue` writes the record before it marks the organization: a young queued move
        // whose mark is not there yet is not lost, just early.
        let young = Utc::now() - self.mv.created_at < chrono::Duration::seconds(60);
        if young {
            if let Some(o) = self.lc.catalog.org_by_id(self.mv.organization_id).await? {
                if o.moving.is_none() && o.state == OrgState::Active {
                    return Ok(false);
                }
            }
        }
        let Some(org) = self.ours().await? else {
            return Ok(true);
        };
        if org.moving.as_ref().map(|m| m.phase) == Some(MovePhase::Queued) {
            self.set_phase(&org, MovePhase::Capturing).await?;
        }
        failpoint("move_after_capture");
        // From here every write to the tenant, on every instance, is logged.
        self.lc.fleet.fence().await?;
        let (source, _) = self.stores()?;
        if !self.mv.target_created {
            create_collection(self.lc, &self.mv.to.shard, &ns(&self.mv.to)).await?;
            self.mv.target_created = true;
        }
        self.mv.docs_total = source.count_all(&ns(&self.mv.from)).await?;
        self.mv.started_at.get_or_insert_with(Utc::now);
        self.mv.state = MoveState::Copying;
        self.journal().await?;
        tracing::info!(move_id = %self.mv.move_id, org_id = %self.mv.organization_id, documents = self.mv.docs_total, "move: copying");
        Ok(true)
    }

    /// copying -> catching_up: the bulk copy, resumable from `copied_through`.
    async fn copy(&mut self) -> Result<(), MoveError> {
        if self.ours().await?.is_none() {
            return Ok(());
        }
        // Resuming after a crash: capture may have been switched on by a fence that never
        // completed; fence again before relying on the log.
        self.lc.fleet.fence().await?;
        let (source, target) = self.stores()?;
        let (from, to) = (ns(&self.mv.from), ns(&self.mv.to));
        let batch = self.cfg.batch_size;
        let started = Instant::now();
        let mut copied_here = 0u64;
        let mut pending = source
            .scan_after(&from, self.mv.copied_through.as_deref(), batch)
            .await?;
        while !pending.is_empty() {
            let last = last_id(&pending)?;
            let count = pending.len() as u64;
            let bytes: u64 = pending
                .iter()
                .map(|d| serde_json::to_vec(d).map_or(0, |b| b.len() as u64))
                .sum();
            let next = async {
                if count < batch as u64 {
                    Ok(Vec::new())
                } else {
                    source.scan_after(&from, Some(&last), batch).await
                }
            };
            let (written, next) = tokio::join!(target.upsert_many(&to, pending), next);
            written?;
            self.mv.docs_copied += count;
            self.mv.bytes_copied += bytes;
            self.mv.copied_through = Some(last);
            copied_here += count;
            metrics::MOVE_DOCUMENTS_COPIED.inc_by(count);
            metrics::MOVE_BYTES_COPIED.inc_by(bytes);
            if self.last_journal.elapsed() >= Duration::from_secs(1) {
                self.journal().await?;
                failpoint("move_during_copy");
                if self.cancel_requested().await? {
                    return Ok(());
                }
                // Never write on for an organization that is gone (a new one of the same
                // name could be placed where this target is).
                if !matches!(self.check_org().await?, OrgCheck::Ours(_)) {
                    return Ok(());
                }
            }
            pending = next?;
            // Rate limit: never ahead of copy_docs_per_second on average.
            if self.cfg.copy_docs_per_second > 0 {
                let due = Duration::from_secs_f64(
                    copied_here as f64 / self.cfg.copy_docs_per_second as f64,
                );
                if let Some(wait) = due.checked_sub(started.elapsed()) {
                    // In slices: at a slow rate one batch is many seconds of waiting, and a
                    // cancel (which a rename or delete of the tenant waits for) must not
                    // wait that long.
                    let until = Instant::now() + wait;
                    while let Some(left) = until.checked_duration_since(Instant::now()) {
                        if left.is_zero() {
                            break;
                        }
                        tokio::time::sleep(left.min(Duration::from_millis(250))).await;
                        if self.cancel_requested().await? {
                            return Ok(());
                        }
                    }
                }
            }
        }
        // The tenant's indexes, built on the target while it catches up (unique ones at
        // cutover, when the target holds exactly the source's documents).
        sync_indexes(source.as_ref(), &from, target.as_ref(), &to, false, false).await?;
        self.mv.state = MoveState::CatchingUp;
        self.journal().await?;
        failpoint("move_after_copy");
        tracing::info!(move_id = %self.mv.move_id, documents = self.mv.docs_copied, "move: catching up");
        Ok(())
    }

    /// Applies up to one batch of the change log; returns how many entries it consumed.
    async fn apply_changes(&mut self) -> Result<usize, MoveError> {
        let entries = self
            .lc
            .catalog
            .move_changes(&self.mv.move_id, LOG_BATCH)
            .await?;
        if entries.is_empty() {
            return Ok(0);
        }
        let ids: BTreeSet<String> = entries.iter().map(|e| e.doc_id.clone()).collect();
        self.apply_ids(ids.into_iter().collect()).await?;
        let keys: Vec<String> = entries.into_iter().map(|e| e.key).collect();
        self.lc
            .catalog
            .clear_move_changes(&self.mv.move_id, &keys)
            .await?;
        Ok(keys.len())
    }

    /// Makes the target's documents with these ids what the source holds now (upserted, or
    /// deleted when gone), keeps the target fingerprint current, and marks the ids for the
    /// cutover's comparison.
    async fn apply_ids(&mut self, ids: Vec<String>) -> Result<(), MoveError> {
        let (source, target) = self.stores()?;
        let (from, to) = (ns(&self.mv.from), ns(&self.mv.to));
        for chunk in ids.chunks(FETCH_BATCH) {
            let now = fetch(source.as_ref(), &from, chunk).await?;
            if let Some(fp) = self.target_fp.as_mut() {
                for old in fetch(target.as_ref(), &to, chunk).await?.values() {
                    fp.remove(old);
                }
                for new in now.values() {
                    fp.add(new);
                }
            }
            let gone: Vec<String> = chunk
                .iter()
                .filter(|id| !now.contains_key(*id))
                .cloned()
                .collect();
            let bytes: u64 = now
                .values()
                .map(|d| serde_json::to_vec(d).map_or(0, |b| b.len() as u64))
                .sum();
            let present = now.len() as u64;
            if !now.is_empty() {
                target.upsert_many(&to, now.into_values().collect()).await?;
            }
            if !gone.is_empty() {
                target.delete_many_ids(&to, &gone).await?;
            }
            self.mv.docs_copied += present;
            self.mv.bytes_copied += bytes;
            metrics::MOVE_DOCUMENTS_COPIED.inc_by(present);
            metrics::MOVE_BYTES_COPIED.inc_by(bytes);
        }
        self.recheck.extend(ids);
        Ok(())
    }

    /// Applies the log until a round finds at most `lag` entries (or `rounds` rounds ran).
    async fn catch_up(&mut self, lag: usize, rounds: usize) -> Result<(), MoveError> {
        for _ in 0..rounds {
            if !matches!(self.check_org().await?, OrgCheck::Ours(_)) {
                return Ok(());
            }
            if self.apply_changes().await? <= lag {
                return Ok(());
            }
        }
        Ok(())
    }

    /// Compares both sides in `_id` order while the target is still (only this move writes
    /// it), copies again every document that differs (a change log that lost entries in a
    /// crash, say), and starts the target fingerprint and the cutover's recheck set.
    async fn compare(&mut self) -> Result<(), MoveError> {
        let (source, target) = self.stores()?;
        let (from, to) = (ns(&self.mv.from), ns(&self.mv.to));
        let batch = FETCH_BATCH * 2;
        let mut fp = Fingerprint::default();
        let mut differ = BTreeSet::new();
        let (mut s_after, mut t_after): (Option<String>, Option<String>) = (None, None);
        let (mut s_buf, mut t_buf) = (
            std::collections::VecDeque::new(),
            std::collections::VecDeque::new(),
        );
        let (mut s_done, mut t_done) = (false, false);
        loop {
            if s_buf.is_empty() && !s_done {
                let docs = source.scan_after(&from, s_after.as_deref(), batch).await?;
                s_done = docs.len() < batch;
                if let Some(l) = docs.last() {
                    s_after = Some(doc_id(l)?);
                }
                s_buf.extend(docs);
            }
            if t_buf.is_empty() && !t_done {
                let docs = target.scan_after(&to, t_after.as_deref(), batch).await?;
                t_done = docs.len() < batch;
                if let Some(l) = docs.last() {
                    t_after = Some(doc_id(l)?);
                }
                t_buf.extend(docs);
            }
            let (s, t) = (s_buf.front(), t_buf.front());
            match (s, t) {
                (None, None) => break,
                (Some(s), None) => {
                    differ.insert(doc_id(s)?);
                    s_buf.pop_front();
                }
                (None, Some(t)) => {
                    differ.insert(doc_id(t)?);
                    fp.add(t);
                    t_buf.pop_front();
                }
                (Some(s), Some(t)) => {
                    let (si, ti) = (doc_id(s)?, doc_id(t)?);
                    match si.as_bytes().cmp(ti.as_bytes()) {
                        std::cmp::Ordering::Less => {
                            differ.insert(si);
                            s_buf.pop_front();
                        }
                        std::cmp::Ordering::Greater => {
                            differ.insert(ti);
                            fp.add(t);
                            t_buf.pop_front();
                        }
                        std::cmp::Ordering::Equal => {
                            if canonical_json(s) != canonical_json(t) {
                                differ.insert(si);
                            }
                            fp.add(t);
                            s_buf.pop_front();
                            t_buf.pop_front();
                        }
                    }
                }
            }
        }
        self.target_fp = Some(fp);
        self.recheck = BTreeSet::new();
        if !differ.is_empty() {
            tracing::info!(move_id = %self.mv.move_id, documents = differ.len(), "move: documents differ after the copy; copying them again");
            self.apply_ids(differ.into_iter().collect()).await?;
        }
        Ok(())
    }

    /// catching_up -> cutover -> done (or back to catching_up, or failed).
    async fn catch_up_and_cut_over(&mut self) -> Result<(), MoveError> {
        let Some(_) = self.ours().await? else {
            return Ok(());
        };
        self.catch_up(self.cfg.cutover_lag, 50).await?;
        self.journal().await?;
        if self.cancel_requested().await? {
            return Ok(());
        }
        if self.target_fp.is_none() {
            // Every write that logged its ids before this fence has landed (and capture is
            // on everywhere, should this be a resumed move): from here, a document that
            // changes on the source is logged after the comparison reads it, so the
            // comparison and the entries applied after it cover every document. An abandoned
            // cutover keeps both (the recheck set only grows), so a retry skips this.
            self.lc.fleet.fence().await?;
            self.compare().await?;
        }
        self.catch_up(self.cfg.cutover_lag, 50).await?;
        if self.cancel_requested().await? {
            return Ok(());
        }
        let Some(org) = self.ours().await? else {
            return Ok(());
        };
        self.cut_over(org).await
    }

    async fn cut_over(&mut self, org: OrgRecord) -> Result<(), MoveError> {
        let budget = Duration::from_millis(self.cfg.max_write_pause_ms);
        // Journaled before the mark: a move found in `cutover` settles its mark either way.
        self.mv.state = MoveState::Cutover;
        self.journal().await?;
        let held = self.set_phase(&org, MovePhase::Cutover).await?;
        let paused_at = Instant::now();
        failpoint("move_in_cutover");
        let outcome = async {
            // Every instance now holds the tenant's writes and has finished those it started.
            let fence = tokio::time::timeout(budget, self.lc.fleet.fence()).await;
            if !matches!(fence, Ok(Ok(_))) {
                return Ok(None);
            }
            while self.apply_changes().await? > 0 {
                if paused_at.elapsed() > budget {
                    return Ok(None);
                }
            }
            // The target now holds the source's documents: its indexes become exactly the
            // source's (those created or dropped during the move included, and the unique
            // ones), ready before any tenant query reaches it. A build that outlasts the
            // pause goes on, and the next attempt finds it done.
            let (source, target) = self.stores()?;
            let (from, to) = (ns(&self.mv.from), ns(&self.mv.to));
            sync_indexes(source.as_ref(), &from, target.as_ref(), &to, true, true).await?;
            while !indexes_ready(target.as_ref(), &to).await? {
                if paused_at.elapsed() > budget {
                    return Ok(None);
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            let verification = self.verify().await?;
            if paused_at.elapsed() > budget {
                return Ok(None);
            }
            Ok::<_, MoveError>(Some(verification))
        }
        .await;
        let verification = match outcome {
            Ok(Some(v)) => v,
            Ok(None) => return self.abandon_cutover(&held, "write pause exceeded").await,
            Err(e) => {
                self.abandon_cutover(&held, "cutover step failed").await?;
                return Err(e);
            }
        };
        self.mv.verification = Some(verification.clone());
        if !verification.matched {
            // The source stays authoritative: `end` releases the writes there.
            return self
                .end(
                    MoveState::Failed,
                    "verification failed: the target does not hold the same documents",
                )
                .await;
        }
        // The switch: placement to the target with a new epoch, in one compare-and-set,
        // writes still held; once every instance routes to the target (a fence), they are
        // released. No instance reads the source after a write reached the target.
        let mut switched = held.clone();
        switched.placement.shard = self.mv.to.shard.clone();
        switched.placement.database = self.mv.to.database.clone();
        switched.placement.epoch += 1;
        switched.placement.updated_at = Utc::now();
        // The move's event is written with the switch: whoever sees the tenant at its new
        // place (or the move `done`, journaled later) finds it, and a resumed move that finds
        // the switch made does not write it again.
        let moved = crate::catalog::AuditEvent::new(
            crate::catalog::EventType::TenantMoved,
            Some(self.mv.organization_id),
            crate::catalog::Actor::System,
            None,
            serde_json::json!({
                "move_id": self.mv.move_id,
                "reason": self.mv.reason,
                "from": self.mv.from,
                "to": self.mv.to,
                "docs_copied": self.mv.docs_copied,
            }),
        );
        let stored = self
            .lc
            .catalog
            .put_org_with_event(&switched, &moved)
            .await?;
        self.lc.router.invalidate_org(&stored).await;
        failpoint("move_after_switch");
        self.release_switched(stored).await?;
        let pause = paused_at.elapsed();
        metrics::MOVE_WRITE_PAUSE.observe(pause.as_secs_f64());
        self.mv.write_pause_ms = Some(pause.as_millis() as u64);
        self.finish_switch().await?;
        tracing::info!(move_id = %self.mv.move_id, org_id = %self.mv.organization_id, pause_ms = pause.as_millis() as u64, "move: switched to the target");
        Ok(())
    }

    /// After the switch committed: waits until every instance routes to the target (bounded:
    /// an instance that does not answer loses its lease and stops serving), then clears the
    /// mark, releasing the held writes there.
    async fn release_switched(&mut self, switched: OrgRecord) -> Result<(), MoveError> {
        if let Err(e) = self.lc.fleet.fence().await {
            tracing::warn!(error = %e, "move switched; some instances apply it late");
        }
        let mut released = switched;
        released.moving = None;
        let stored = self.lc.catalog.put_org(&released).await?;
        self.lc.router.invalidate_org(&stored).await;
        Ok(())
    }

    /// Journals `done`, then moves the collection counts (a crash in between leaves a count
    /// off by one, which the startup reconciliation fixes).
    async fn finish_switch(&mut self) -> Result<(), MoveError> {
        self.mv.state = MoveState::Done;
        self.mv.finished_at = Some(Utc::now());
        self.journal().await?;
        self.lc
            .catalog
            .adjust_collection_count(&self.mv.to.shard, &self.mv.to.database, 1)
            .await?;
        self.lc
            .catalog
            .adjust_collection_count(&self.mv.from.shard, &self.mv.from.database, -1)
            .await?;
        self.lc
            .capacity
            .release(&self.mv.from.shard, &self.mv.from.database);
        let _ = clear_log(self.lc, &self.mv.move_id).await;
        // Best effort: the reply then means every live instance routes to the target.
        if let Err(e) = self.lc.fleet.fence().await {
            tracing::warn!(error = %e, "move switched; some instances apply it late");
        }
        Ok(())
    }

    /// Compares, with writes held, everything that may differ; counts both sides.
    async fn verify(&mut self) -> Result<Verification, MoveError> {
        let (source, target) = self.stores()?;
        let (from, to) = (ns(&self.mv.from), ns(&self.mv.to));
        let ids: Vec<String> = self.recheck.iter().cloned().collect();
        let mut matched = true;
        for chunk in ids.chunks(FETCH_BATCH) {
            let (s, t) = tokio::join!(
                fetch(source.as_ref(), &from, chunk),
                fetch(target.as_ref(), &to, chunk)
            );
            let (s, t) = (s?, t?);
            for id in chunk {
                let same = match (s.get(id), t.get(id)) {
                    (None, None) => true,
                    (Some(a), Some(b)) => canonical_json(a) == canonical_json(b),
                    _ => false,
                };
                if !same {
                    tracing::error!(move_id = %self.mv.move_id, "move verification: a document differs");
                    matched = false;
                }
            }
        }
        let (sc, tc) = tokio::join!(source.count_all(&from), target.count_all(&to));
        let (sc, tc) = (sc?, tc?);
        let fp = self.target_fp.unwrap_or_default();
        if sc != tc || fp.count != tc {
            tracing::error!(move_id = %self.mv.move_id, source = sc, target = tc, hashed = fp.count, "move verification: counts differ");
            matched = false;
        }
        Ok(Verification {
            count: sc,
            hash: fp.hash_hex(),
            matched,
        })
    }

    async fn abandon_cutover(&mut self, held: &OrgRecord, why: &str) -> Result<(), MoveError> {
        // Writes resume on the source; everything they write is logged again.
        let mut back = held.clone();
        back.moving = Some(MoveMark {
            move_id: self.mv.move_id.clone(),
            phase: MovePhase::Capturing,
        });
        let stored = self.lc.catalog.put_org(&back).await?;
        self.lc.router.invalidate_org(&stored).await;
        self.mv.cutover_attempts += 1;
        metrics::MOVE_CUTOVERS_ABANDONED.inc();
        tracing::warn!(move_id = %self.mv.move_id, attempt = self.mv.cutover_attempts, why, "move: cutover abandoned; writes resume on the source");
        if self.mv.cutover_attempts >= self.cfg.max_cutover_attempts {
            // `end` clears the mark (the source stays authoritative).
            return self
                .end(
                    MoveState::Failed,
                    "the last changes never fitted the write pause (moves.max_write_pause_ms)",
                )
                .await;
        }
        self.mv.state = MoveState::CatchingUp;
        self.journal().await?;
        // Back off, so the tenant's writes run for a while before the next attempt.
        tokio::time::sleep(Duration::from_millis(
            200 * u64::from(self.mv.cutover_attempts.min(10)),
        ))
        .await;
        Ok(())
    }

    /// A crash or lost lease in cutover: done if the placement switched, else abandoned.
    async fn resume_cutover(&mut self) -> Result<(), MoveError> {
        match self.check_org().await? {
            OrgCheck::Switched(held) => {
                // The switch committed: release writes still held, then the bookkeeping.
                if let Some(org) = held {
                    self.release_switched(*org).await?;
                }
                self.finish_switch().await
            }
            OrgCheck::Ours(org) => {
                self.target_fp = None;
                if org.moving.as_ref().map(|m| m.phase) == Some(MovePhase::Cutover) {
                    self.abandon_cutover(&org, "resumed after an interruption")
                        .await
                } else {
                    self.mv.state = MoveState::CatchingUp;
                    self.journal().await
                }
            }
            OrgCheck::Lost => {
                self.end(
                    MoveState::Cancelled,
                    "the organization was deleted or renamed",
                )
                .await
            }
        }
    }

    /// Ends the move without a switch: the mark removed, the target dropped.
    async fn end(&mut self, state: MoveState, why: &str) -> Result<(), MoveError> {
        if let OrgCheck::Ours(org) = self.check_org().await? {
            let mut released = org.clone();
            released.moving = None;
            match self.lc.catalog.put_org(&released).await {
                Ok(stored) => self.lc.router.invalidate_org(&stored).await,
                // It changed meanwhile: look again next time round.
                Err(CatalogError::Stale) => return Ok(()),
                Err(e) => return Err(e.into()),
            }
        }
        self.mv.state = state;
        self.mv.error = Some(why.to_owned());
        self.mv.finished_at = Some(Utc::now());
        self.journal().await?;
        tracing::warn!(move_id = %self.mv.move_id, state = state.as_str(), why, "move ended without a switch");
        self.finish_final().await
    }

    /// Cleanup after the end: a done move's source after the grace period, an abandoned
    /// move's target at once (both through the pending drops), the change log.
    async fn finish_final(&mut self) -> Result<(), MoveError> {
        if self.mv.cleanup_done {
            return Ok(());
        }
        if let Some(org) = self.lc.catalog.org_by_id(self.mv.organization_id).await? {
            if org.moving.as_ref().map(|m| m.move_id.as_str()) == Some(self.mv.move_id.as_str()) {
                clear_stale_mark(self.lc, &org).await?;
            }
        }
        let release = match self.mv.state {
            MoveState::Done => {
                let since = self.mv.finished_at.unwrap_or_else(Utc::now);
                let grace = chrono::Duration::seconds(self.cfg.source_grace_seconds as i64);
                if Utc::now() < since + grace {
                    return Ok(());
                }
                Some(self.mv.from.clone())
            }
            _ if self.mv.target_created => {
                // Never the collection the organization lives in.
                match self.check_org().await? {
                    OrgCheck::Switched(_) => None,
                    _ => Some(self.mv.to.clone()),
                }
            }
            _ => None,
        };
        if let Some(loc) = release {
            // Under the collection's lease, so no move can create it between the check and
            // the drop; a later move or organization using the location keeps it.
            let lock = CollectionLock::acquire(self.lc.catalog, &loc.shard, &ns(&loc)).await?;
            let done = async {
                if location_in_use(self.lc, &loc).await? {
                    tracing::info!(move_id = %self.mv.move_id, "a move's leftover location is in use again; not dropped");
                    return Ok(());
                }
                let drop = PendingDrop {
                    shard: loc.shard.clone(),
                    database: loc.database.clone(),
                    collection: loc.collection.clone(),
                    stash_to: None,
                };
                self.lc.catalog.add_pending_drop(&drop).await?;
                failpoint("move_after_release");
                super::run_pending_drops_locked(self.lc, &loc.shard, &ns(&loc)).await
            }
            .await;
            lock.release().await;
            if let Err(e) = done {
                // The pending drop stays for the resume loop.
                tracing::warn!(error = %e, "collection drop after a move deferred");
            }
        }
        clear_log(self.lc, &self.mv.move_id).await?;
        let _ = self
            .lc
            .catalog
            .put_setting(&cancel_setting(&self.mv.move_id), &Value::Null, &[])
            .await;
        self.mv.cleanup_done = true;
        self.journal().await
    }
}

/// Clears the organization's move mark if the move it names has ended or does not exist
/// (a mark whose write committed although it reported an error, say).
pub async fn clear_stale_mark(lc: &Lifecycle<'_>, org: &OrgRecord) -> Result<(), MoveError> {
    let Some(mark) = &org.moving else {
        return Ok(());
    };
    let ended = match lc.catalog.get_move(&mark.move_id).await? {
        Some(mv) => mv.state.is_final(),
        None => {
            // `queue` writes the record before the mark; give a young mark time.
            Utc::now() - org.updated_at > chrono::Duration::seconds(60)
        }
    };
    if !ended {
        return Ok(());
    }
    let mut cleared = org.clone();
    cleared.moving = None;
    match lc.catalog.put_org(&cleared).await {
        Ok(stored) => {
            tracing::warn!(org_id = %org.id, move_id = %mark.move_id, "cleared the mark of a move that had ended");
            lc.router.invalidate_org(&stored).await;
            Ok(())
        }
        Err(CatalogError::Stale) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Removes what is left of a move's change log.
async fn clear_log(lc: &Lifecycle<'_>, move_id: &str) -> Result<(), MoveError> {
    loop {
        let entries = lc.catalog.move_changes(move_id, LOG_BATCH).await?;
        if entries.is_empty() {
            return Ok(());
        }
        let keys: Vec<String> = entries.into_iter().map(|e| e.key).collect();
        lc.catalog.clear_move_changes(move_id, &keys).await?;
    }
}

/// Whether a collection location is where an organization lives or where a move that has not
/// ended is going: then it is never dropped as a move's leftover.
async fn location_in_use(lc: &Lifecycle<'_>, loc: &Location) -> Result<bool, MoveError> {
    for m in lc.catalog.list_moves().await? {
        if !m.state.is_final() && &m.to == loc {
            return Ok(true);
        }
    }
    // Any organization: a new one under the same name may have been placed there since.
    let mut pages = OrgPages::new(lc.catalog.as_ref(), None);
    while let Some(page) = pages.next_page().await? {
        if page.iter().any(|o| {
            let renaming_to = match &o.state {
                OrgState::Renaming { to_collection, .. } => Some(to_collection),
                _ => None,
            };
            o.placement.shard == loc.shard
                && o.placement.database == loc.database
                && (o.placement.collection == loc.collection
                    || renaming_to == Some(&loc.collection))
        }) {
            return Ok(true);
        }
    }
    Ok(false)
}

fn doc_id(d: &Document) -> Result<String, MoveError> {
    d.get("_id")
        .and_then(Value::as_str)
        .map(str::to_owned)
        .ok_or_else(|| {
            MoveError::Store(crate::store::StoreError::Backend(
                "document without _id".into(),
            ))
        })
}

fn last_id(docs: &[Document]) -> Result<String, MoveError> {
    doc_id(docs.last().expect("not empty"))
}

/// The documents with these ids, by id (read from the primary on MongoDB).
async fn fetch(
    store: &dyn TenantStore,
    ns: &Namespace,
    ids: &[String],
) -> Result<HashMap<String, Document>, MoveError> {
    let mut out = HashMap::with_capacity(ids.len());
    for chunk in ids.chunks(FETCH_BATCH) {
        for d in store.get_many(ns, chunk).await? {
            out.insert(doc_id(&d)?, d);
        }
    }
    Ok(out)
}

/// The move runner: every `tick`, refreshes the move metrics and drives each move that has
/// work to do and is not already running here (at most `moves.max_concurrent` copy at once
/// across the fleet: the rest wait for a slot). Runs until the process ends.
pub async fn run(lc: Lifecycle<'_>, cfg: MovesConfig, holder: String, tick: Duration) {
    use futures_util::stream::{FuturesUnordered, StreamExt};
    let mut running: FuturesUnordered<_> = FuturesUnordered::new();
    let mut active: BTreeSet<String> = BTreeSet::new();
    // Moves whose last step failed wait before the next try (doubling, up to 30 s).
    let mut backoff: HashMap<String, (u32, Instant)> = HashMap::new();
    let mut next = tokio::time::Instant::now();
    let mut ticks: u64 = 0;
    let finished = |done: (String, Result<(), MoveError>),
                    active: &mut BTreeSet<String>,
                    backoff: &mut HashMap<String, (u32, Instant)>| {
        let (id, result) = done;
        match result {
            Err(e) => {
                metrics::RECOVERY_FAILURES.inc();
                let failures = backoff.get(&id).map_or(0, |b| b.0) + 1;
                let wait = Duration::from_millis(250 << failures.min(7));
                tracing::warn!(move_id = %id, error = %e, retry_in_ms = wait.as_millis() as u64, "move step failed; retrying");
                backoff.insert(id.clone(), (failures, Instant::now() + wait));
            }
            Ok(()) => {
                backoff.remove(&id);
            }
        }
        active.remove(&id);
    };
    loop {
        tokio::select! {
            Some(done) = running.next(), if !running.is_empty() => {
                finished(done, &mut active, &mut backoff);
                continue;
            }
            _ = tokio::time::sleep_until(next) => {}
        }
        next = tokio::time::Instant::now() + tick;
        // The running moves are polled while the list is read: left unpolled, they would
        // stall mid-step (a cutover holding writes longer), and with a MongoDB catalog they
        // can hold every pooled connection, so that the list never gets one: every catalog
        // call of the instance then hangs.
        let listing = lc.catalog.list_moves();
        tokio::pin!(listing);
        let listed = loop {
            tokio::select! {
                r = &mut listing => break r,
                Some(done) = running.next(), if !running.is_empty() => {
                    finished(done, &mut active, &mut backoff);
                }
            }
        };
        let all = match listed {
            Ok(all) => all,
            Err(e) => {
                tracing::debug!(error = %e, "cannot list moves");
                continue;
            }
        };
        let by_state = count_by_state(&all);
        for state in MoveState::ALL {
            metrics::MOVES
                .with_label_values(&[state.as_str()])
                .set(by_state.get(&state).copied().unwrap_or(0) as i64);
        }
        let now = Utc::now();
        // Queued moves wait for a slot: while every slot is busy, look at them only every few
        // seconds (for cancels), not on every tick.
        let running_fleetwide = all
            .iter()
            .filter(|m| {
                matches!(
                    m.state,
                    MoveState::Copying | MoveState::CatchingUp | MoveState::Cutover
                )
            })
            .count();
        ticks += 1;
        let look_at_queued = running_fleetwide < cfg.max_concurrent as usize || ticks % 20 == 0;
        for mv in all
            .into_iter()
            .filter(|m| due(m, &cfg, now))
            .filter(|m| m.state != MoveState::Queued || look_at_queued)
        {
            if backoff
                .get(&mv.move_id)
                .is_some_and(|(_, until)| Instant::now() < *until)
            {
                continue;
            }
            if active.insert(mv.move_id.clone()) {
                let (lc, cfg, holder) = (&lc, &cfg, holder.as_str());
                running.push(async move {
                    let id = mv.move_id;
                    let result = drive(lc, cfg, holder, &id).await;
                    (id, result)
                });
            }
        }
    }
}

/// Whether a move has work to do now.
fn due(m: &MoveRecord, cfg: &MovesConfig, now: chrono::DateTime<Utc>) -> bool {
    match m.state {
        _ if m.cleanup_done => false,
        MoveState::Done => {
            let since = m.finished_at.unwrap_or(now);
            now >= since + chrono::Duration::seconds(cfg.source_grace_seconds as i64)
        }
        _ => true,
    }
}

/// Counts of moves by state, for the metrics.
pub fn count_by_state(moves: &[MoveRecord]) -> HashMap<MoveState, u64> {
    let mut out = HashMap::new();
    for m in moves {
        *out.entry(m.state).or_insert(0) += 1;
    }
    out
}
