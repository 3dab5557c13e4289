//! The catalog in a redb file: one ACID write transaction per method, fsync on commit.
//! Unique keys are explicit index tables checked and written in the same transaction.

use super::events::{id_floor, EventType};
use super::{
    AdminRecord, AuditEvent, Catalog, CatalogError, CatalogResult, ChangeStream, EventPage,
    EventQuery, FeedToken, InstanceInfo, MoveChange, MoveRecord, OrgRecord, OrgState, PendingDrop,
    Taken, Tombstone, TombstonePhase,
};
use crate::domain::{AdminId, DatabaseName, Email, NormalizedOrgName, OrgId, OrgName, ShardId};
use async_trait::async_trait;
use chrono::Utc;
use redb::{
    Database, ReadTransaction, ReadableDatabase, ReadableTable, TableDefinition, WriteTransaction,
};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::path::Path;
use std::sync::Arc;

type Json = TableDefinition<'static, &'static str, &'static [u8]>;
type Index = TableDefinition<'static, &'static str, &'static str>;

const ORGS: Json = TableDefinition::new("orgs");
const ORG_NAMES: Index = TableDefinition::new("org_names");
const COLLECTIONS: Index = TableDefinition::new("collections");
const ADMINS: Json = TableDefinition::new("admins");
const ADMIN_EMAILS: Index = TableDefinition::new("admin_emails");
/// `"<org id>/<admin id>"` -> admin id: admins by organization, scanned by prefix.
const ADMINS_BY_ORG: Index = TableDefinition::new("admins_by_org");
const PENDING_DROPS: Json = TableDefinition::new("pending_drops");
/// Deleted organizations kept for restore, by organization id.
const TOMBSTONES: Json = TableDefinition::new("tombstones");
const COUNTS: TableDefinition<&str, u64> = TableDefinition::new("collection_counts");
const SETTINGS: Json = TableDefinition::new("settings");
/// Named counters; `revision` is the catalog revision.
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
/// Ids of organizations not `Active`, so recovery never scans every organization.
const NOT_ACTIVE: Index = TableDefinition::new("orgs_not_active");
const INSTANCES: Json = TableDefinition::new("instances");
/// Lease name -> `{holder, expires_at}`.
const LEASES: Json = TableDefinition::new("leases");
const REVISION: &str = "revision";
/// Move records by id.
const MOVES: Json = TableDefinition::new("moves");
/// Move change logs: `<move id>/<sequence, 20 digits>` -> document id.
const MOVE_CHANGES: Index = TableDefinition::new("move_changes");
const MOVE_CHANGE_SEQ: &str = "move_change_seq";
/// Audit events by id (time-ordered).
const EVENTS: Json = TableDefinition::new("events");
/// `<org id>/<event id>` -> event id: one organization's events in order.
const EVENTS_BY_ORG: Index = TableDefinition::new("events_by_org");
/// Organization id -> the latest mark of a data write (milliseconds since the epoch).
const WRITE_MARKS: TableDefinition<&str, i64> = TableDefinition::new("write_marks");
/// Rows one events query reads at most: a rare type in a long log answers a short (or empty)
/// page with a cursor to go on, instead of a scan of the whole log.
const EVENT_SCAN_BUDGET: usize = 10_000;
/// Events one purge removes at most (the next maintenance cycle goes on).
const EVENT_PURGE_BATCH: usize = 10_000;

fn backend(e: impl std::fmt::Display) -> CatalogError {
    CatalogError::Backend(e.to_string())
}

fn encode<T: Serialize>(v: &T) -> CatalogResult<Vec<u8>> {
    serde_json::to_vec(v).map_err(backend)
}

fn decode<T: DeserializeOwned>(b: &[u8]) -> CatalogResult<T> {
    serde_json::from_slice(b).map_err(backend)
}

fn count_key(shard: &ShardId, db: &DatabaseName) -> String {
    format!("{shard}/{db}")
}

/// Bytes of catalog pages redb keeps decoded in memory.
const CACHE_BYTES: usize = 16 << 20;

/// The redb-backed [`Catalog`].
#[derive(Clone)]
pub struct EmbeddedCatalog {
    db: Arc<Database>,
}

impl EmbeddedCatalog {
    /// Opens (or creates) the catalog file and its tables.
    pub fn open(path: &Path) -> CatalogResult<Self> {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(backend)?;
        }
        // redb's default page cache is 1 GiB, which a catalog of 100,000 organizations would
        // fill with pages read once at start-up; lookups that miss it read the OS page cache.
        let db = redb::Builder::new()
            .set_cache_size(CACHE_BYTES)
            .create(path)
            .map_err(|e| backend(crate::store::embedded::open_error(e)))?;
        let txn = db.begin_write().map_err(backend)?;
        {
            for t in [
                ORGS,
                ADMINS,
                PENDING_DROPS,
                SETTINGS,
                INSTANCES,
                LEASES,
                MOVES,
                EVENTS,
                TOMBSTONES,
            ] {
                txn.open_table(t).map_err(backend)?;
            }
            for t in [
                ORG_NAMES,
                COLLECTIONS,
                ADMIN_EMAILS,
                ADMINS_BY_ORG,
                NOT_ACTIVE,
                MOVE_CHANGES,
                EVENTS_BY_ORG,
            ] {
                txn.open_table(t).map_err(backend)?;
            }
            txn.open_table(COUNTS).map_err(backend)?;
            txn.open_table(META).map_err(backend)?;
            txn.open_table(WRITE_MARKS).map_err(backend)?;
            // Only this process can hold a lease on this file (the file lock keeps others
            // out): every lease found at open belongs to a process that is gone.
            txn.delete_table(LEASES).map_err(backend)?;
            txn.open_table(LEASES).map_err(backend)?;
        }
        txn.commit().map_err(backend)?;
        Ok(Self { db: Arc::new(db) })
    }

    async fn read<T, F>(&self, f: F) -> CatalogResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&ReadTransaction) -> CatalogResult<T> + Send + 'static,
    {
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || {
            let txn = db.begin_read().map_err(backend)?;
            f(&txn)
        })
        .await
        .map_err(backend)?
    }

    /// Every value of a JSON table, in key order.
    async fn all_of<T: DeserializeOwned + Send + 'static>(
        &self,
        table: Json,
    ) -> CatalogResult<Vec<T>> {
        self.read(move |txn| {
            let t = txn.open_table(table).map_err(backend)?;
            let mut out = Vec::new();
            for row in t.iter().map_err(backend)? {
                let (_, v) = row.map_err(backend)?;
                out.push(decode(v.value())?);
            }
            Ok(out)
        })
        .await
    }

    /// Removes one key of a JSON table (nothing if absent).
    async fn remove_key(&self, table: Json, key: String) -> CatalogResult<()> {
        self.write(move |txn| {
            let mut t = txn.open_table(table).map_err(backend)?;
            t.remove(key.as_str()).map_err(backend)?;
            Ok(())
        })
        .await
    }

    /// Runs `f` in a write transaction, committed only if `f` succeeds.
    async fn write<T, F>(&self, f: F) -> CatalogResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&WriteTransaction) -> CatalogResult<T> + Send + 'static,
    {
        self.write_with(redb::Durability::Immediate, f).await
    }

    /// [`Self::write`] of a change and the `events` that record it, written in its
    /// transaction when `f`'s result says the change happened (and counted once committed).
    async fn write_audited<T, F>(&self, events: &[AuditEvent], f: F) -> CatalogResult<T>
    where
        T: Happened + Send + 'static,
        F: FnOnce(&WriteTransaction) -> CatalogResult<T> + Send + 'static,
    {
        let written = events.to_vec();
        let out = self
            .write(move |txn| {
                let out = f(txn)?;
                if out.happened() {
                    insert_events(txn, &written)?;
                }
                Ok(out)
            })
            .await?;
        if out.happened() {
            count_events(events);
        }
        Ok(out)
    }

    /// [`Self::write`] with the given durability.
    async fn write_with<T, F>(&self, durability: redb::Durability, f: F) -> CatalogResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&WriteTransaction) -> CatalogResult<T> + Send + 'static,
    {
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || {
            let mut txn = db.begin_write().map_err(backend)?;
            txn.set_durability(durability).map_err(backend)?;
            let out = f(&txn)?;
            txn.commit().map_err(backend)?;
            Ok(out)
        })
        .await
        .map_err(backend)?
    }
}

/// Up to `limit` records of a table keyed by organization id that `keep` accepts, in id
/// order, after `after`.
fn page_by_id<T: DeserializeOwned>(
    txn: &ReadTransaction,
    table: Json,
    after: Option<OrgId>,
    limit: usize,
    keep: impl Fn(&T) -> bool,
) -> CatalogResult<Vec<T>> {
    let t = txn.open_table(table).map_err(backend)?;
    let after = after.map(|id| id.to_string());
    let rows = match &after {
        Some(k) => t
            .range::<&str>((
                std::ops::Bound::Excluded(k.as_str()),
                std::ops::Bound::Unbounded,
            ))
            .map_err(backend)?,
        None => t.iter().map_err(backend)?,
    };
    let mut out = Vec::with_capacity(limit.min(1024));
    for row in rows {
        if out.len() >= limit {
            break;
        }
        let (_, v) = row.map_err(backend)?;
        let record: T = decode(v.value())?;
        if keep(&record) {
            out.push(record);
        }
    }
    Ok(out)
}

fn get_json<T: DeserializeOwned>(
    table: &impl ReadableTable<&'static str, &'static [u8]>,
    key: &str,
) -> CatalogResult<Option<T>> {
    match table.get(key).map_err(backend)? {
        Some(v) => decode(v.value()).map(Some),
        None => Ok(None),
    }
}

fn lookup(
    table: &impl ReadableTable<&'static str, &'static str>,
    key: &str,
) -> CatalogResult<Option<String>> {
    Ok(table
        .get(key)
        .map_err(backend)?
        .map(|v| v.value().to_owned()))
}

/// Keys of an index table that start with `prefix`.
fn count_prefix(
    table: &impl ReadableTable<&'static str, &'static str>,
    prefix: &str,
) -> CatalogResult<usize> {
    let mut n = 0;
    for row in table.range(prefix..).map_err(backend)? {
        let (k, _) = row.map_err(backend)?;
        if !k.value().starts_with(prefix) {
            break;
        }
        n += 1;
    }
    Ok(n)
}

fn add_count(txn: &WriteTransaction, key: &str, delta: i64) -> CatalogResult<()> {
    let mut counts = txn.open_table(COUNTS).map_err(backend)?;
    let current = counts
        .get(key)
        .map_err(backend)?
        .map(|v| v.value())
        .unwrap_or(0);
    let next = (current as i64 + delta).max(0) as u64;
    counts.insert(key, next).map_err(backend)?;
    Ok(())
}

fn load_org(txn: &WriteTransaction, id: OrgId) -> CatalogResult<OrgRecord> {
    let orgs = txn.open_table(ORGS).map_err(backend)?;
    get_json(&orgs, &id.to_string())?.ok_or(CatalogError::NotFound)
}

/// Allocates the next catalog revision inside `txn`.
fn bump_revision(txn: &WriteTransaction) -> CatalogResult<u64> {
    let mut meta = txn.open_table(META).map_err(backend)?;
    let next = meta
        .get(REVISION)
        .map_err(backend)?
        .map(|v| v.value())
        .unwrap_or(0)
        + 1;
    meta.insert(REVISION, next).map_err(backend)?;
    Ok(next)
}

/// Writes the organization with a new revision and keeps the not-active index in step.
/// Replaces an organization record whose name and collection are unchanged, if the stored
/// one still has `org.revision`.
fn replace_org(txn: &WriteTransaction, org: &mut OrgRecord) -> CatalogResult<()> {
    let old = load_org(txn, org.id)?;
    if old.name != org.name || old.placement.collection != org.placement.collection {
        return Err(CatalogError::Backend(
            "put_org cannot change name or collection".into(),
        ));
    }
    if old.revision != org.revision {
        return Err(CatalogError::Stale);
    }
    store_org(txn, org)
}

/// Whether a catalog call's result means its change happened: only then are its events
/// written.
trait Happened {
    fn happened(&self) -> bool;
}

impl<T> Happened for Option<T> {
    fn happened(&self) -> bool {
        self.is_some()
    }
}

impl Happened for bool {
    fn happened(&self) -> bool {
        *self
    }
}

impl Happened for () {
    fn happened(&self) -> bool {
        true
    }
}

impl Happened for OrgRecord {
    fn happened(&self) -> bool {
        true
    }
}

impl Happened for AdminRecord {
    fn happened(&self) -> bool {
        true
    }
}

/// Writes `events` in the transaction of the change they record, stamped now.
fn insert_events(txn: &WriteTransaction, events: &[AuditEvent]) -> CatalogResult<()> {
    events
        .iter()
        .try_for_each(|e| insert_event(txn, &e.stamped_now()))
}

/// Counts events once the transaction that wrote them committed.
fn count_events(events: &[AuditEvent]) {
    if !events.is_empty() {
        crate::failpoints::failpoint("catalog_after_change");
    }
    for e in events {
        super::events::count_written(e.kind, Ok(()));
    }
}

/// Writes an audit event and its by-organization key.
fn insert_event(txn: &WriteTransaction, event: &AuditEvent) -> CatalogResult<()> {
    let mut events = txn.open_table(EVENTS).map_err(backend)?;
    events
        .insert(event.id.as_str(), encode(event)?.as_slice())
        .map_err(backend)?;
    if let Some(org) = event.organization_id {
        let mut by_org = txn.open_table(EVENTS_BY_ORG).map_err(backend)?;
        by_org
            .insert(format!("{org}/{}", event.id).as_str(), event.id.as_str())
            .map_err(backend)?;
    }
    Ok(())
}

fn store_org(txn: &WriteTransaction, org: &mut OrgRecord) -> CatalogResult<()> {
    org.revision = bump_revision(txn)?;
    let key = org.id.to_string();
    let mut orgs = txn.open_table(ORGS).map_err(backend)?;
    orgs.insert(key.as_str(), encode(&*org)?.as_slice())
        .map_err(backend)?;
    let mut not_active = txn.open_table(NOT_ACTIVE).map_err(backend)?;
    if org.state == OrgState::Active {
        not_active.remove(key.as_str()).map_err(backend)?;
    } else {
        not_active.insert(key.as_str(), "").map_err(backend)?;
    }
    Ok(())
}

/// A lease as stored.
#[derive(serde::Serialize, serde::Deserialize)]
struct LeaseRecord {
    holder: String,
    expires_at: chrono::DateTime<Utc>,
}

/// Ends a rename: `commit` switches to the reserved name and collection, releases the old
/// keys and writes the events journaled with the rename; otherwise the reserved keys are
/// released and the org stays as it was. Returns the record and the events written.
fn end_rename(
    txn: &WriteTransaction,
    id: OrgId,
    commit: bool,
) -> CatalogResult<(OrgRecord, Vec<AuditEvent>)> {
    let mut org = load_org(txn, id)?;
    let OrgState::Renaming {
        to_name,
        to_collection,
        target_cleared,
        events,
        ..
    } = org.state.clone()
    else {
        return Err(CatalogError::NotFound);
    };
    if !commit && target_cleared {
        // Documents may have moved: the rename can only be completed now.
        return Err(CatalogError::Stale);
    }
    let (drop_name, drop_collection) = if commit {
        (org.normalized_name(), org.placement.collection.clone())
    } else {
        (to_name.normalized(), to_collection.clone())
    };
    {
        let mut names = txn.open_table(ORG_NAMES).map_err(backend)?;
        let mut colls = txn.open_table(COLLECTIONS).map_err(backend)?;
        // A rename that only changes case keeps the same keys: nothing to release.
        if org.normalized_name() != to_name.normalized() {
            names.remove(drop_name.as_str()).map_err(backend)?;
        }
        if org.placement.collection != to_collection {
            colls.remove(drop_collection.as_str()).map_err(backend)?;
        }
    }
    let now = Utc::now();
    if commit {
        org.name = to_name;
        org.placement.collection = to_collection;
        org.placement.epoch += 1;
        org.placement.updated_at = now;
    }
    org.updated_at = now;
    org.state = OrgState::Active;
    store_org(txn, &mut org)?;
    if !commit {
        return Ok((org, Vec::new()));
    }
    insert_events(txn, &events)?;
    Ok((org, events))
}

/// Whether the stash of this tombstone's data is still pending.
fn stash_pending(txn: &WriteTransaction, tomb: &Tombstone) -> CatalogResult<bool> {
    let stash = tomb.stash();
    let pending = txn.open_table(PENDING_DROPS).map_err(backend)?;
    let found: Option<PendingDrop> = get_json(&pending, &stash.key())?;
    Ok(found.is_some_and(|d| d.stash_to == stash.stash_to))
}

/// Removes every admin of `org` (records, emails, the per-organization index) and returns
/// them.
fn take_admins(txn: &WriteTransaction, org: OrgId) -> CatalogResult<Vec<AdminRecord>> {
    let mut by_org = txn.open_table(ADMINS_BY_ORG).map_err(backend)?;
    let prefix = format!("{org}/");
    let mut admin_ids = Vec::new();
    for row in by_org.range(prefix.as_str()..).map_err(backend)? {
        let (k, v) = row.map_err(backend)?;
        if !k.value().starts_with(&prefix) {
            break;
        }
        admin_ids.push((k.value().to_owned(), v.value().to_owned()));
    }
    let mut admins = txn.open_table(ADMINS).map_err(backend)?;
    let mut emails = txn.open_table(ADMIN_EMAILS).map_err(backend)?;
    let mut out = Vec::with_capacity(admin_ids.len());
    for (index_key, admin_id) in admin_ids {
        by_org.remove(index_key.as_str()).map_err(backend)?;
        let admin: Option<AdminRecord> = get_json(&admins, &admin_id)?;
        if let Some(a) = admin {
            emails.remove(a.email.as_str()).map_err(backend)?;
            out.push(a);
        }
        admins.remove(admin_id.as_str()).map_err(backend)?;
    }
    Ok(out)
}

#[async_trait]
impl Catalog for EmbeddedCatalog {
    async fn insert_org(&self, org: &OrgRecord, admin: &AdminRecord) -> CatalogResult<OrgRecord> {
        let (mut org, mut admin) = (org.clone(), admin.clone());
        self.write(move |txn| {
            let id = org.id.to_string();
            let name = org.normalized_name();
            let coll = org.placement.collection.as_str();
            {
                let mut names = txn.open_table(ORG_NAMES).map_err(backend)?;
                if names.get(name.as_str()).map_err(backend)?.is_some() {
                    return Err(CatalogError::Conflict(Taken::OrgName));
                }
                let mut colls = txn.open_table(COLLECTIONS).map_err(backend)?;
                if colls.get(coll).map_err(backend)?.is_some() {
                    return Err(CatalogError::Conflict(Taken::Collection));
                }
                let mut emails = txn.open_table(ADMIN_EMAILS).map_err(backend)?;
                if emails.get(admin.email.as_str()).map_err(backend)?.is_some() {
                    return Err(CatalogError::Conflict(Taken::Email));
                }
                names.insert(name.as_str(), id.as_str()).map_err(backend)?;
                colls.insert(coll, id.as_str()).map_err(backend)?;
                let admin_id = admin.id.to_string();
                emails
                    .insert(admin.email.as_str(), admin_id.as_str())
                    .map_err(backend)?;
                admin.revision = bump_revision(txn)?;
                let mut admins = txn.open_table(ADMINS).map_err(backend)?;
                admins
                    .insert(admin_id.as_str(), encode(&admin)?.as_slice())
                    .map_err(backend)?;
                let mut by_org = txn.open_table(ADMINS_BY_ORG).map_err(backend)?;
                by_org
                    .insert(format!("{id}/{admin_id}").as_str(), admin_id.as_str())
                    .map_err(backend)?;
            }
            store_org(txn, &mut org)?;
            add_count(
                txn,
                &count_key(&org.placement.shard, &org.placement.database),
                1,
            )?;
            Ok(org)
        })
        .await
    }

    async fn put_org(&self, org: &OrgRecord) -> CatalogResult<OrgRecord> {
        let mut org = org.clone();
        self.write(move |txn| {
            replace_org(txn, &mut org)?;
            Ok(org)
        })
        .await
    }

    async fn put_org_with_event(
        &self,
        org: &OrgRecord,
        event: &AuditEvent,
    ) -> CatalogResult<OrgRecord> {
        let mut org = org.clone();
        self.write_audited(std::slice::from_ref(event), move |txn| {
            replace_org(txn, &mut org)?;
            Ok(org)
        })
        .await
    }

    async fn org_by_id(&self, id: OrgId) -> CatalogResult<Option<OrgRecord>> {
        self.read(move |txn| {
            let orgs = txn.open_table(ORGS).map_err(backend)?;
            get_json(&orgs, &id.to_string())
        })
        .await
    }

    async fn org_by_name(&self, name: &NormalizedOrgName) -> CatalogResult<Option<OrgRecord>> {
        let name = name.clone();
        self.read(move |txn| {
            let names = txn.open_table(ORG_NAMES).map_err(backend)?;
            let Some(id) = lookup(&names, name.as_str())? else {
                return Ok(None);
            };
            let orgs = txn.open_table(ORGS).map_err(backend)?;
            let org: Option<OrgRecord> = get_json(&orgs, &id)?;
            // The name index also holds names reserved by an in-progress rename.
            Ok(org.filter(|o| o.normalized_name() == name))
        })
        .await
    }

    async fn list_orgs(&self) -> CatalogResult<Vec<OrgRecord>> {
        self.all_of(ORGS).await
    }

    async fn orgs_after(
        &self,
        after: Option<OrgId>,
        limit: usize,
    ) -> CatalogResult<Vec<OrgRecord>> {
        self.read(move |txn| page_by_id(txn, ORGS, after, limit, |_: &OrgRecord| true))
            .await
    }

    async fn orgs_by_name(
        &self,
        prefix: &str,
        after: Option<&NormalizedOrgName>,
        limit: usize,
    ) -> CatalogResult<Vec<OrgRecord>> {
        let prefix = prefix.to_owned();
        let after = after.cloned();
        self.read(move |txn| {
            let names = txn.open_table(ORG_NAMES).map_err(backend)?;
            let orgs = txn.open_table(ORGS).map_err(backend)?;
            let start = match &after {
                Some(a) if a.as_str() >= prefix.as_str() => a.as_str().to_owned(),
                _ => prefix.clone(),
            };
            let mut out = Vec::new();
            for row in names.range(start.as_str()..).map_err(backend)? {
                let (k, id) = row.map_err(backend)?;
                let key = k.value();
                if !key.starts_with(prefix.as_str()) || out.len() >= limit {
                    break;
                }
                if after.as_ref().is_some_and(|a| key <= a.as_str()) {
                    continue;
                }
                // The index also holds names reserved by renames in progress.
                if let Some(org) = get_json::<OrgRecord>(&orgs, id.value())? {
                    if org.normalized_name().as_str() == key {
                        out.push(org);
                    }
                }
            }
            Ok(out)
        })
        .await
    }

    async fn orgs_not_active(&self) -> CatalogResult<Vec<OrgRecord>> {
        self.read(|txn| {
            let ids = txn.open_table(NOT_ACTIVE).map_err(backend)?;
            let orgs = txn.open_table(ORGS).map_err(backend)?;
            let mut out = Vec::new();
            for row in ids.iter().map_err(backend)? {
                let (k, _) = row.map_err(backend)?;
                if let Some(org) = get_json::<OrgRecord>(&orgs, k.value())? {
                    out.push(org);
                }
            }
            Ok(out)
        })
        .await
    }

    async fn admin_by_email(&self, email: &Email) -> CatalogResult<Option<AdminRecord>> {
        let email = email.clone();
        self.read(move |txn| {
            let emails = txn.open_table(ADMIN_EMAILS).map_err(backend)?;
            let Some(id) = lookup(&emails, email.as_str())? else {
                return Ok(None);
            };
            let admins = txn.open_table(ADMINS).map_err(backend)?;
            get_json(&admins, &id)
        })
        .await
    }

    async fn admin_by_id(&self, id: AdminId) -> CatalogResult<Option<AdminRecord>> {
        self.read(move |txn| {
            let admins = txn.open_table(ADMINS).map_err(backend)?;
            get_json(&admins, &id.to_string())
        })
        .await
    }

    async fn admins_of_org(&self, org: OrgId) -> CatalogResult<Vec<AdminRecord>> {
        self.read(move |txn| {
            let by_org = txn.open_table(ADMINS_BY_ORG).map_err(backend)?;
            let admins = txn.open_table(ADMINS).map_err(backend)?;
            let prefix = format!("{org}/");
            let mut out = Vec::new();
            for row in by_org.range(prefix.as_str()..).map_err(backend)? {
                let (k, v) = row.map_err(backend)?;
                if !k.value().starts_with(&prefix) {
                    break;
                }
                if let Some(a) = get_json(&admins, v.value())? {
                    out.push(a);
                }
            }
            Ok(out)
        })
        .await
    }

    async fn update_admin(
        &self,
        admin: &AdminRecord,
        events: &[AuditEvent],
    ) -> CatalogResult<AdminRecord> {
        let mut admin = admin.clone();
        self.write_audited(events, move |txn| {
            let id = admin.id.to_string();
            let revision = bump_revision(txn)?;
            let mut admins = txn.open_table(ADMINS).map_err(backend)?;
            let old: AdminRecord = get_json(&admins, &id)?.ok_or(CatalogError::NotFound)?;
            if old.revision != admin.revision {
                return Err(CatalogError::Stale);
            }
            admin.revision = revision;
            if old.email != admin.email {
                let mut emails = txn.open_table(ADMIN_EMAILS).map_err(backend)?;
                if emails.get(admin.email.as_str()).map_err(backend)?.is_some() {
                    return Err(CatalogError::Conflict(Taken::Email));
                }
                emails.remove(old.email.as_str()).map_err(backend)?;
                emails
                    .insert(admin.email.as_str(), id.as_str())
                    .map_err(backend)?;
            }
            admins
                .insert(id.as_str(), encode(&admin)?.as_slice())
                .map_err(backend)?;
            Ok(admin)
        })
        .await
    }

    async fn add_admin(
        &self,
        admin: &AdminRecord,
        max: u32,
        events: &[AuditEvent],
    ) -> CatalogResult<AdminRecord> {
        let mut admin = admin.clone();
        // One write transaction (redb has one writer at a time): the count, the email and
        // the insert are decided together.
        self.write_audited(events, move |txn| {
            load_org(txn, admin.org_id)?;
            let org_key = admin.org_id.to_string();
            let admin_id = admin.id.to_string();
            let mut by_org = txn.open_table(ADMINS_BY_ORG).map_err(backend)?;
            if count_prefix(&by_org, &format!("{org_key}/"))? >= max as usize {
                return Err(CatalogError::AdminLimit);
            }
            let mut emails = txn.open_table(ADMIN_EMAILS).map_err(backend)?;
            if emails.get(admin.email.as_str()).map_err(backend)?.is_some() {
                return Err(CatalogError::Conflict(Taken::Email));
            }
            emails
                .insert(admin.email.as_str(), admin_id.as_str())
                .map_err(backend)?;
            by_org
                .insert(format!("{org_key}/{admin_id}").as_str(), admin_id.as_str())
                .map_err(backend)?;
            admin.revision = bump_revision(txn)?;
            let mut admins = txn.open_table(ADMINS).map_err(backend)?;
            admins
                .insert(admin_id.as_str(), encode(&admin)?.as_slice())
                .map_err(backend)?;
            Ok(admin)
        })
        .await
    }

    async fn remove_admin(
        &self,
        org: OrgId,
        admin: AdminId,
        events: &[AuditEvent],
    ) -> CatalogResult<Option<AdminRecord>> {
        self.write_audited(events, move |txn| {
            let (org_key, admin_id) = (org.to_string(), admin.to_string());
            let index_key = format!("{org_key}/{admin_id}");
            let mut by_org = txn.open_table(ADMINS_BY_ORG).map_err(backend)?;
            if by_org.get(index_key.as_str()).map_err(backend)?.is_none() {
                return Ok(None);
            }
            if count_prefix(&by_org, &format!("{org_key}/"))? <= 1 {
                return Err(CatalogError::LastAdmin);
            }
            by_org.remove(index_key.as_str()).map_err(backend)?;
            let mut admins = txn.open_table(ADMINS).map_err(backend)?;
            let removed: Option<AdminRecord> = get_json(&admins, &admin_id)?;
            admins.remove(admin_id.as_str()).map_err(backend)?;
            if let Some(a) = &removed {
                let mut emails = txn.open_table(ADMIN_EMAILS).map_err(backend)?;
                emails.remove(a.email.as_str()).map_err(backend)?;
            }
            bump_revision(txn)?;
            Ok(removed)
        })
        .await
    }

    async fn begin_rename(
        &self,
        id: OrgId,
        to_name: &OrgName,
        admin: Option<&AdminRecord>,
        events: &[AuditEvent],
    ) -> CatalogResult<OrgRecord> {
        let to_name = to_name.clone();
        let admin = admin.map(|a| Box::new(a.clone()));
        let events = events.to_vec();
        self.write(move |txn| {
            let mut org = load_org(txn, id)?;
            if org.state != OrgState::Active {
                return Err(CatalogError::NotFound);
            }
            if org.moving.is_some() {
                // A move holds the organization: it is cancelled (or finishes) first.
                return Err(CatalogError::Stale);
            }
            let key = id.to_string();
            let to_norm = to_name.normalized();
            let to_coll = to_name.collection_name();
            {
                let mut names = txn.open_table(ORG_NAMES).map_err(backend)?;
                match lookup(&names, to_norm.as_str())? {
                    Some(owner) if owner != key => {
                        return Err(CatalogError::Conflict(Taken::OrgName))
                    }
                    _ => {}
                }
                let mut colls = txn.open_table(COLLECTIONS).map_err(backend)?;
                match lookup(&colls, to_coll.as_str())? {
                    Some(owner) if owner != key => {
                        return Err(CatalogError::Conflict(Taken::Collection))
                    }
                    _ => {}
                }
                names
                    .insert(to_norm.as_str(), key.as_str())
                    .map_err(backend)?;
                colls
                    .insert(to_coll.as_str(), key.as_str())
                    .map_err(backend)?;
            }
            org.state = OrgState::Renaming {
                to_name,
                to_collection: to_coll,
                admin,
                target_cleared: false,
                events,
            };
            org.updated_at = Utc::now();
            store_org(txn, &mut org)?;
            Ok(org)
        })
        .await
    }

    async fn commit_rename(&self, id: OrgId) -> CatalogResult<OrgRecord> {
        let (org, events) = self.write(move |txn| end_rename(txn, id, true)).await?;
        count_events(&events);
        Ok(org)
    }

    async fn abort_rename(&self, id: OrgId) -> CatalogResult<OrgRecord> {
        Ok(self.write(move |txn| end_rename(txn, id, false)).await?.0)
    }

    async fn delete_org(&self, id: OrgId) -> CatalogResult<Option<OrgRecord>> {
        self.write(move |txn| {
            let org = match load_org(txn, id) {
                Ok(o) => o,
                Err(CatalogError::NotFound) => return Ok(None),
                Err(e) => return Err(e),
            };
            if org.moving.is_some() {
                // A move holds the organization: it is cancelled (or finishes) first.
                return Err(CatalogError::Stale);
            }
            let key = id.to_string();
            let mut drops = vec![PendingDrop {
                shard: org.placement.shard.clone(),
                database: org.placement.database.clone(),
                collection: org.placement.collection.clone(),
                stash_to: None,
            }];
            {
                let mut names = txn.open_table(ORG_NAMES).map_err(backend)?;
                let mut colls = txn.open_table(COLLECTIONS).map_err(backend)?;
                names
                    .remove(org.normalized_name().as_str())
                    .map_err(backend)?;
                colls
                    .remove(org.placement.collection.as_str())
                    .map_err(backend)?;
                if let OrgState::Renaming {
                    to_name,
                    to_collection,
                    ..
                } = &org.state
                {
                    names
                        .remove(to_name.normalized().as_str())
                        .map_err(backend)?;
                    colls.remove(to_collection.as_str()).map_err(backend)?;
                    drops.push(PendingDrop {
                        collection: to_collection.clone(),
                        ..drops[0].clone()
                    });
                }
                take_admins(txn, id)?;
                let mut orgs = txn.open_table(ORGS).map_err(backend)?;
                orgs.remove(key.as_str()).map_err(backend)?;
                let mut not_active = txn.open_table(NOT_ACTIVE).map_err(backend)?;
                not_active.remove(key.as_str()).map_err(backend)?;
                let mut pending = txn.open_table(PENDING_DROPS).map_err(backend)?;
                for d in &drops {
                    pending
                        .insert(d.key().as_str(), encode(d)?.as_slice())
                        .map_err(backend)?;
                }
            }
            add_count(
                txn,
                &count_key(&org.placement.shard, &org.placement.database),
                -1,
            )?;
            bump_revision(txn)?;
            Ok(Some(org))
        })
        .await
    }

    async fn tombstone_org(
        &self,
        id: OrgId,
        deleted_at: chrono::DateTime<Utc>,
        restorable_until: chrono::DateTime<Utc>,
        size_bytes: Option<u64>,
        events: &[AuditEvent],
    ) -> CatalogResult<Option<Tombstone>> {
        self.write_audited(events, move |txn| {
            let org = match load_org(txn, id) {
                Ok(o) => o,
                Err(CatalogError::NotFound) => return Ok(None),
                Err(e) => return Err(e),
            };
            if org.moving.is_some() || org.state != OrgState::Active {
                return Err(CatalogError::Stale);
            }
            let key = id.to_string();
            {
                let mut names = txn.open_table(ORG_NAMES).map_err(backend)?;
                let mut colls = txn.open_table(COLLECTIONS).map_err(backend)?;
                names
                    .remove(org.normalized_name().as_str())
                    .map_err(backend)?;
                colls
                    .remove(org.placement.collection.as_str())
                    .map_err(backend)?;
            }
            let admins = take_admins(txn, id)?;
            {
                let mut orgs = txn.open_table(ORGS).map_err(backend)?;
                orgs.remove(key.as_str()).map_err(backend)?;
                let mut not_active = txn.open_table(NOT_ACTIVE).map_err(backend)?;
                not_active.remove(key.as_str()).map_err(backend)?;
            }
            let tomb = Tombstone {
                collection: crate::domain::CollectionName::tombstone(id),
                org,
                admins,
                deleted_at,
                restorable_until,
                size_bytes,
                phase: TombstonePhase::Kept,
                phase_at: deleted_at,
            };
            let stash = tomb.stash();
            let mut pending = txn.open_table(PENDING_DROPS).map_err(backend)?;
            pending
                .insert(stash.key().as_str(), encode(&stash)?.as_slice())
                .map_err(backend)?;
            let mut tombs = txn.open_table(TOMBSTONES).map_err(backend)?;
            tombs
                .insert(key.as_str(), encode(&tomb)?.as_slice())
                .map_err(backend)?;
            // The collection stays counted: the kept data occupies the database until purged.
            bump_revision(txn)?;
            Ok(Some(tomb))
        })
        .await
    }

    async fn tombstone(&self, id: OrgId) -> CatalogResult<Option<Tombstone>> {
        self.read(move |txn| {
            let t = txn.open_table(TOMBSTONES).map_err(backend)?;
            get_json(&t, &id.to_string())
        })
        .await
    }

    async fn tombstones(
        &self,
        after: Option<OrgId>,
        limit: usize,
    ) -> CatalogResult<Vec<Tombstone>> {
        self.read(move |txn| {
            page_by_id(txn, TOMBSTONES, after, limit, |t: &Tombstone| {
                t.phase == TombstonePhase::Kept
            })
        })
        .await
    }

    async fn restore_org(
        &self,
        id: OrgId,
        name: &OrgName,
        events: &[AuditEvent],
    ) -> CatalogResult<OrgRecord> {
        let name = name.clone();
        let events = events.to_vec();
        self.write(move |txn| {
            let key = id.to_string();
            let tomb: Tombstone = {
                let t = txn.open_table(TOMBSTONES).map_err(backend)?;
                get_json(&t, &key)?.ok_or(CatalogError::NotFound)?
            };
            if tomb.phase != TombstonePhase::Kept || stash_pending(txn, &tomb)? {
                return Err(CatalogError::Stale);
            }
            let norm = name.normalized();
            let to_coll = name.collection_name();
            {
                let mut names = txn.open_table(ORG_NAMES).map_err(backend)?;
                if names.get(norm.as_str()).map_err(backend)?.is_some() {
                    return Err(CatalogError::Conflict(Taken::OrgName));
                }
                let mut colls = txn.open_table(COLLECTIONS).map_err(backend)?;
                for c in [&to_coll, &tomb.collection] {
                    if colls.get(c.as_str()).map_err(backend)?.is_some() {
                        return Err(CatalogError::Conflict(Taken::Collection));
                    }
                }
                let mut emails = txn.open_table(ADMIN_EMAILS).map_err(backend)?;
                for a in &tomb.admins {
                    if emails.get(a.email.as_str()).map_err(backend)?.is_some() {
                        return Err(CatalogError::Conflict(Taken::Email));
                    }
                }
                names.insert(norm.as_str(), key.as_str()).map_err(backend)?;
                colls
                    .insert(to_coll.as_str(), key.as_str())
                    .map_err(backend)?;
                colls
                    .insert(tomb.collection.as_str(), key.as_str())
                    .map_err(backend)?;
                let mut admins = txn.open_table(ADMINS).map_err(backend)?;
                let mut by_org = txn.open_table(ADMINS_BY_ORG).map_err(backend)?;
                for a in &tomb.admins {
                    let mut a = a.clone();
                    // Tokens issued before the delete stay refused.
                    a.credential_version += 1;
                    a.revision = bump_revision(txn)?;
                    let admin_id = a.id.to_string();
                    emails
                        .insert(a.email.as_str(), admin_id.as_str())
                        .map_err(backend)?;
                    admins
                        .insert(admin_id.as_str(), encode(&a)?.as_slice())
                        .map_err(backend)?;
                    by_org
                        .insert(format!("{key}/{admin_id}").as_str(), admin_id.as_str())
                        .map_err(backend)?;
                }
            }
            let now = Utc::now();
            let mut org = tomb.org.clone();
            org.name = name.clone();
            org.placement.collection = tomb.collection.clone();
            org.state = OrgState::Renaming {
                to_name: name,
                to_collection: to_coll,
                admin: None,
                target_cleared: false,
                events,
            };
            org.moving = None;
            org.updated_at = now;
            store_org(txn, &mut org)?;
            let mut tombs = txn.open_table(TOMBSTONES).map_err(backend)?;
            tombs.remove(key.as_str()).map_err(backend)?;
            Ok(org)
        })
        .await
    }

    async fn purge_tombstone(
        &self,
        id: OrgId,
        events: &[AuditEvent],
    ) -> CatalogResult<Option<Tombstone>> {
        self.write_audited(events, move |txn| {
            let key = id.to_string();
            let tomb: Option<Tombstone> = {
                let t = txn.open_table(TOMBSTONES).map_err(backend)?;
                get_json(&t, &key)?
            };
            let Some(tomb) = tomb.filter(|t| t.phase == TombstonePhase::Kept) else {
                return Ok(None);
            };
            if stash_pending(txn, &tomb)? {
                return Err(CatalogError::Stale);
            }
            let drop = tomb.purge_drop();
            {
                let mut pending = txn.open_table(PENDING_DROPS).map_err(backend)?;
                pending
                    .insert(drop.key().as_str(), encode(&drop)?.as_slice())
                    .map_err(backend)?;
                let mut tombs = txn.open_table(TOMBSTONES).map_err(backend)?;
                tombs.remove(key.as_str()).map_err(backend)?;
            }
            add_count(
                txn,
                &count_key(&tomb.org.placement.shard, &tomb.org.placement.database),
                -1,
            )?;
            bump_revision(txn)?;
            Ok(Some(tomb))
        })
        .await
    }

    async fn settle_tombstones(&self, _min_age: std::time::Duration) -> CatalogResult<usize> {
        // Every tombstone change is one transaction here: nothing is ever left half-done.
        Ok(0)
    }

    async fn pending_drops(&self) -> CatalogResult<Vec<PendingDrop>> {
        self.all_of(PENDING_DROPS).await
    }

    async fn clear_pending_drop(&self, drop: &PendingDrop) -> CatalogResult<()> {
        self.remove_key(PENDING_DROPS, drop.key()).await
    }

    async fn collection_counts(&self) -> CatalogResult<Vec<(ShardId, DatabaseName, u64)>> {
        self.read(|txn| {
            let t = txn.open_table(COUNTS).map_err(backend)?;
            let mut out = Vec::new();
            for row in t.iter().map_err(backend)? {
                let (k, v) = row.map_err(backend)?;
                let Some((shard, db)) = k.value().split_once('/') else {
                    continue;
                };
                let Ok(shard) = ShardId::parse(shard) else {
                    continue;
                };
                let db: DatabaseName = serde_json::from_value(serde_json::Value::String(db.into()))
                    .map_err(backend)?;
                out.push((shard, db, v.value()));
            }
            Ok(out)
        })
        .await
    }

    async fn set_collection_count(
        &self,
        shard: &ShardId,
        database: &DatabaseName,
        count: u64,
    ) -> CatalogResult<()> {
        let key = count_key(shard, database);
        self.write(move |txn| {
            let mut t = txn.open_table(COUNTS).map_err(backend)?;
            t.insert(key.as_str(), count).map_err(backend)?;
            Ok(())
        })
        .await
    }

    async fn get_setting(&self, key: &str) -> CatalogResult<Option<serde_json::Value>> {
        let key = key.to_owned();
        self.read(move |txn| {
            let t = txn.open_table(SETTINGS).map_err(backend)?;
            get_json(&t, &key)
        })
        .await
    }

    async fn put_setting(
        &self,
        key: &str,
        value: &serde_json::Value,
        events: &[AuditEvent],
    ) -> CatalogResult<()> {
        let (key, value) = (key.to_owned(), encode(value)?);
        self.write_audited(events, move |txn| {
            let mut t = txn.open_table(SETTINGS).map_err(backend)?;
            t.insert(key.as_str(), value.as_slice()).map_err(backend)?;
            Ok(())
        })
        .await
    }

    async fn put_setting_if(
        &self,
        key: &str,
        expected: Option<&serde_json::Value>,
        value: &serde_json::Value,
        events: &[AuditEvent],
    ) -> CatalogResult<bool> {
        let (key, value) = (key.to_owned(), encode(value)?);
        let expected = expected.cloned();
        self.write_audited(events, move |txn| {
            let mut t = txn.open_table(SETTINGS).map_err(backend)?;
            let current: Option<serde_json::Value> = get_json(&t, &key)?;
            if current != expected {
                return Ok(false);
            }
            t.insert(key.as_str(), value.as_slice()).map_err(backend)?;
            Ok(true)
        })
        .await
    }

    async fn add_pending_drop(&self, drop: &PendingDrop) -> CatalogResult<()> {
        let (key, value) = (drop.key(), encode(drop)?);
        self.write(move |txn| {
            let mut t = txn.open_table(PENDING_DROPS).map_err(backend)?;
            t.insert(key.as_str(), value.as_slice()).map_err(backend)?;
            bump_revision(txn)?;
            Ok(())
        })
        .await
    }

    async fn adjust_collection_count(
        &self,
        shard: &ShardId,
        database: &DatabaseName,
        delta: i64,
    ) -> CatalogResult<()> {
        let key = count_key(shard, database);
        self.write(move |txn| add_count(txn, &key, delta)).await
    }

    async fn put_move(&self, mv: &MoveRecord) -> CatalogResult<()> {
        let (key, value) = (mv.move_id.clone(), encode(mv)?);
        self.write(move |txn| {
            let mut t = txn.open_table(MOVES).map_err(backend)?;
            t.insert(key.as_str(), value.as_slice()).map_err(backend)?;
            Ok(())
        })
        .await
    }

    async fn get_move(&self, id: &str) -> CatalogResult<Option<MoveRecord>> {
        let id = id.to_owned();
        self.read(move |txn| {
            let t = txn.open_table(MOVES).map_err(backend)?;
            get_json(&t, &id)
        })
        .await
    }

    async fn list_moves(&self) -> CatalogResult<Vec<MoveRecord>> {
        let mut all: Vec<MoveRecord> = self.all_of(MOVES).await?;
        all.sort_by(|a, b| (a.created_at, &a.move_id).cmp(&(b.created_at, &b.move_id)));
        Ok(all)
    }

    async fn log_move_changes(&self, move_id: &str, doc_ids: &[String]) -> CatalogResult<()> {
        let (move_id, doc_ids) = (move_id.to_owned(), doc_ids.to_vec());
        // Not fsynced: the log is on every tenant write while a move captures, and a crash
        // that loses its tail is caught by the comparison every resumed move runs first
        // (see `movers::moves`). The next durable commit persists it.
        self.write_with(redb::Durability::None, move |txn| {
            let mut meta = txn.open_table(META).map_err(backend)?;
            let mut seq = meta
                .get(MOVE_CHANGE_SEQ)
                .map_err(backend)?
                .map(|v| v.value())
                .unwrap_or(0);
            let mut t = txn.open_table(MOVE_CHANGES).map_err(backend)?;
            for id in &doc_ids {
                seq += 1;
                let key = format!("{move_id}/{seq:020}");
                t.insert(key.as_str(), id.as_str()).map_err(backend)?;
            }
            meta.insert(MOVE_CHANGE_SEQ, seq).map_err(backend)?;
            Ok(())
        })
        .await
    }

    async fn move_changes(&self, move_id: &str, limit: usize) -> CatalogResult<Vec<MoveChange>> {
        let prefix = format!("{move_id}/");
        self.read(move |txn| {
            let t = txn.open_table(MOVE_CHANGES).map_err(backend)?;
            let mut out = Vec::new();
            for row in t.range(prefix.as_str()..).map_err(backend)? {
                let (k, v) = row.map_err(backend)?;
                if !k.value().starts_with(&prefix) || out.len() >= limit {
                    break;
                }
                out.push(MoveChange {
                    key: k.value().to_owned(),
                    doc_id: v.value().to_owned(),
                });
            }
            Ok(out)
        })
        .await
    }

    async fn clear_move_changes(&self, move_id: &str, keys: &[String]) -> CatalogResult<()> {
        let prefix = format!("{move_id}/");
        let keys = keys.to_vec();
        self.write(move |txn| {
            let mut t = txn.open_table(MOVE_CHANGES).map_err(backend)?;
            for k in keys.iter().filter(|k| k.starts_with(&prefix)) {
                t.remove(k.as_str()).map_err(backend)?;
            }
            Ok(())
        })
        .await
    }

    async fn current_revision(&self) -> CatalogResult<u64> {
        self.read(|txn| {
            let meta = txn.open_table(META).map_err(backend)?;
            Ok(meta
                .get(REVISION)
                .map_err(backend)?
                .map(|v| v.value())
                .unwrap_or(0))
        })
        .await
    }

    async fn next_revision(&self) -> CatalogResult<u64> {
        self.write(bump_revision).await
    }

    async fn heartbeat(&self, instance: &InstanceInfo) -> CatalogResult<()> {
        let (id, value) = (instance.id.clone(), encode(instance)?);
        self.write(move |txn| {
            let mut t = txn.open_table(INSTANCES).map_err(backend)?;
            t.insert(id.as_str(), value.as_slice()).map_err(backend)?;
            Ok(())
        })
        .await
    }

    async fn instances(&self) -> CatalogResult<Vec<InstanceInfo>> {
        self.all_of(INSTANCES).await
    }

    async fn now(&self) -> CatalogResult<chrono::DateTime<Utc>> {
        Ok(Utc::now())
    }

    async fn remove_instance(&self, id: &str) -> CatalogResult<()> {
        self.remove_key(INSTANCES, id.to_owned()).await
    }

    async fn acquire_lease(
        &self,
        name: &str,
        holder: &str,
        ttl: std::time::Duration,
    ) -> CatalogResult<Option<String>> {
        let (name, holder) = (name.to_owned(), holder.to_owned());
        // Leases are not fsynced: this catalog is one process's (a file lock keeps others
        // out), so a lease only ever excludes tasks of this process, all of which a crash
        // ends. A lease lost with the crash had a dead holder. Two fsyncs fewer per create.
        self.write_with(redb::Durability::None, move |txn| {
            let mut t = txn.open_table(LEASES).map_err(backend)?;
            let now = Utc::now();
            if let Some(current) = get_json::<LeaseRecord>(&t, &name)? {
                if current.holder != holder && current.expires_at > now {
                    return Ok(Some(current.holder));
                }
            }
            let lease = LeaseRecord {
                holder,
                expires_at: now + chrono::Duration::from_std(ttl).unwrap_or_default(),
            };
            t.insert(name.as_str(), encode(&lease)?.as_slice())
                .map_err(backend)?;
            Ok(None)
        })
        .await
    }

    async fn release_lease(&self, name: &str, holder: &str) -> CatalogResult<()> {
        let (name, holder) = (name.to_owned(), holder.to_owned());
        // Not fsynced, as in `acquire_lease`.
        self.write_with(redb::Durability::None, move |txn| {
            let mut t = txn.open_table(LEASES).map_err(backend)?;
            let held = get_json::<LeaseRecord>(&t, &name)?.is_some_and(|l| l.holder == holder);
            if held {
                t.remove(name.as_str()).map_err(backend)?;
            }
            Ok(())
        })
        .await
    }

    async fn append_event(&self, event: &AuditEvent) -> CatalogResult<()> {
        let event = event.clone();
        // Logins are the most frequent events by far (every one writes one): an fsync each
        // would make the catalog's single writer the bottleneck of a login burst. Their
        // commits are not fsynced; the next durable commit (any other change) persists them,
        // and a crash loses at most the login events since then, never a change.
        let durability = match event.kind {
            EventType::AdminLoginSucceeded | EventType::AdminLoginFailed => redb::Durability::None,
            _ => redb::Durability::Immediate,
        };
        self.write_with(durability, move |txn| insert_event(txn, &event))
            .await
    }

    async fn events(&self, query: &EventQuery) -> CatalogResult<EventPage> {
        let q = query.clone();
        self.read(move |txn| {
            let events = txn.open_table(EVENTS).map_err(backend)?;
            let mut start = q.since.map(id_floor).unwrap_or_default();
            if let Some(after) = &q.after {
                if *after > start {
                    start = after.clone();
                }
            }
            let prefix = q.organization.map(|o| format!("{o}/")).unwrap_or_default();
            let mut page = EventPage::default();
            let mut scanned = 0;
            let mut last_scanned = None;
            let mut visit = |id: &str, event: Option<AuditEvent>| -> bool {
                scanned += 1;
                last_scanned = Some(id.to_owned());
                if q.after.as_deref().is_some_and(|a| id <= a) {
                    return true;
                }
                let Some(event) = event else { return true };
                if q.until.is_some_and(|u| event.at > u) {
                    return false;
                }
                if q.kind.is_none_or(|k| k == event.kind) {
                    page.events.push(event);
                }
                page.events.len() <= q.limit && scanned < EVENT_SCAN_BUDGET
            };
            if prefix.is_empty() {
                for row in events.range(start.as_str()..).map_err(backend)? {
                    let (k, v) = row.map_err(backend)?;
                    if !visit(k.value(), Some(decode(v.value())?)) {
                        break;
                    }
                }
            } else {
                let by_org = txn.open_table(EVENTS_BY_ORG).map_err(backend)?;
                let from = format!("{prefix}{start}");
                for row in by_org.range(from.as_str()..).map_err(backend)? {
                    let (k, v) = row.map_err(backend)?;
                    if !k.value().starts_with(&prefix) {
                        break;
                    }
                    let event = get_json(&events, v.value())?;
                    if !visit(v.value(), event) {
                        break;
                    }
                }
            }
            if page.events.len() > q.limit {
                page.events.truncate(q.limit);
                page.next_after = page.events.last().map(|e| e.id.clone());
            } else if scanned >= EVENT_SCAN_BUDGET {
                page.next_after = last_scanned;
            }
            Ok(page)
        })
        .await
    }

    async fn purge_events(&self, before: chrono::DateTime<Utc>) -> CatalogResult<u64> {
        let end = id_floor(before);
        self.write(move |txn| {
            let mut events = txn.open_table(EVENTS).map_err(backend)?;
            let mut doomed = Vec::new();
            for row in events.range(..end.as_str()).map_err(backend)? {
                let (k, v) = row.map_err(backend)?;
                let event: AuditEvent = decode(v.value())?;
                doomed.push((k.value().to_owned(), event.organization_id));
                if doomed.len() >= EVENT_PURGE_BATCH {
                    break;
                }
            }
            let mut by_org = txn.open_table(EVENTS_BY_ORG).map_err(backend)?;
            for (id, org) in &doomed {
                events.remove(id.as_str()).map_err(backend)?;
                if let Some(org) = org {
                    by_org
                        .remove(format!("{org}/{id}").as_str())
                        .map_err(backend)?;
                }
            }
            Ok(doomed.len() as u64)
        })
        .await
    }

    async fn mark_written(&self, org: OrgId, at: chrono::DateTime<Utc>) -> CatalogResult<()> {
        let (key, at) = (org.to_string(), at.timestamp_millis());
        self.write(move |txn| {
            let mut t = txn.open_table(WRITE_MARKS).map_err(backend)?;
            let old = t.get(key.as_str()).map_err(backend)?.map(|v| v.value());
            if old.is_none_or(|old| old < at) {
                t.insert(key.as_str(), at).map_err(backend)?;
            }
            Ok(())
        })
        .await
    }

    async fn last_written(&self, org: OrgId) -> CatalogResult<Option<chrono::DateTime<Utc>>> {
        let key = org.to_string();
        self.read(move |txn| {
            let t = txn.open_table(WRITE_MARKS).map_err(backend)?;
            let ms = t.get(key.as_str()).map_err(backend)?.map(|v| v.value());
            Ok(ms.and_then(chrono::DateTime::from_timestamp_millis))
        })
        .await
    }

    async fn watch(&self, _resume: Option<FeedToken>) -> CatalogResult<Option<ChangeStream>> {
        Ok(None)
    }
}
