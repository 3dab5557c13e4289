//! The catalog in a MongoDB database, for gateways that share one catalog.
//!
//! Collections:
//! - `organizations`: `{_id: org id, names: [...], collections: [...], name, rev, record}`.
//!   `names` holds the normalized current name plus, during a rename, the reserved new one;
//!   likewise `collections`. Unique multikey indexes on both make every reservation atomic.
//!   `name` is the normalized current name alone, indexed for operator search by prefix.
//! - `admins`: `{_id: admin id, email, org_id, record}`, unique on `email`, indexed on `org_id`.
//! - `admin_rosters`: `{_id: org id, ids: [admin ids], n}`: the seats of an organization's
//!   admins, so that adding one under the cap and removing one that is not the last are each
//!   decided by one conditional update of one document. Created on first use from the
//!   `admins` of the organization.
//! - `pending_drops`: `{_id: drop key, org_id, drop}`.
//! - `tombstones`: `{_id: org id, phase, record}`: deleted organizations kept for restore
//!   (their admins, with password hashes, inside `record`), indexed on `phase`.
//! - `collection_counts`: `{_id: "shard/database", shard, database, count}`.
//! - `settings`: `{_id: key, json}` (the value as JSON text, so any JSON round-trips).
//! - `counters`: `{_id: "revision", value}`, the catalog revision: every write allocates the
//!   next value first and stamps it on the document it writes (`rev`), which is also what
//!   compare-and-set writes pin.
//! - `instances`: the registry, `{_id: instance id, info}`; `leases`: `{_id: name, holder,
//!   expires_at}`.
//! - `events`: the audit log, `{_id: event id (time-ordered), org, type, at, record}`, indexed
//!   on `(org, _id)` and `(type, _id)`.
//! - `moves`: `{_id: move id, json}`; `move_changes`: `{_id: ObjectId, move, doc}`, indexed on
//!   `(move, _id)`: the ids tenant writes touched while their organization was moving.
//!
//! Every instance follows the changes of `organizations`, `admins`, `settings` and `counters`
//! through a change stream filtered on the server ([`Catalog::watch`]).
//!
//! No multi-document transactions: every method orders its single-document writes so that a
//! crash in between leaves only a state the startup recovery (`crate::movers`) handles:
//! - insert: the org is written first, always as `Creating` (rolled back at startup), then its
//!   collection is counted, then the admin; an email conflict deletes the org again.
//! - add admin: a seat is taken in the roster first, then the admin is inserted (an email
//!   conflict gives the seat back). A crash in between leaves a seat without an admin: the
//!   cap is then one lower for that organization (never higher).
//! - remove admin: the seat is given up first (only if another remains), then the admin is
//!   removed. A crash in between leaves an admin without a seat; removing it again finishes.
//! - delete: the pending drops are written first (tagged with the org id: the delete is
//!   decided), then the admins and the org are removed. [`Catalog::pending_drops`] finishes the
//!   removal of any org whose drops are recorded but which is still present.
//!
//! - soft delete: the tombstone is written first (phase `deleting`, with a snapshot of the
//!   organization and its admins), then the stash of its collection (a pending drop with
//!   `stash_to`, tagged with the org id: the delete is decided), then the organization and its
//!   admins are removed and the tombstone becomes `kept`. A stash whose organization is still
//!   there is never returned by [`Catalog::pending_drops`]; [`Catalog::settle_tombstones`]
//!   finishes the delete after its grace period (or rolls it back if the organization changed).
//! - restore: the tombstone becomes `restoring`, then the organization is inserted (as
//!   `Renaming` back to its collection), then its admins, then the tombstone is removed;
//!   an interrupted restore is finished (or rolled back on a conflict) by `settle_tombstones`.
//! - purge: the tombstone becomes `purging`, then its collection's drop is recorded, then the
//!   tombstone is removed and its collection uncounted.
//!
//! A crash between a count update and the write it accompanies can leave a collection count
//! off by one; the startup capacity reconciliation recounts from the shards.

use super::events::{self, id_floor, EventType};
use super::{
    AdminRecord, AuditEvent, Catalog, CatalogChange, CatalogError, CatalogResult, ChangeFeed,
    ChangeStream, EventPage, EventQuery, FeedToken, InstanceInfo, MoveChange, MoveRecord,
    OrgRecord, OrgState, PendingDrop, Taken, Tombstone, TombstonePhase,
};
use crate::domain::{AdminId, DatabaseName, Email, NormalizedOrgName, OrgId, OrgName, ShardId};
use crate::store::mongo::{
    bson_to_json, classify, json_to_bson, parse_write_concern, ClientTuning, Failure, LazyClient,
    Secrets,
};
use async_trait::async_trait;
use bson::{doc, Bson, Document};
use chrono::Utc;
use futures_util::TryStreamExt;
use mongodb::options::{IndexOptions, ReadPreference};
use mongodb::{Collection, IndexModel};
use serde::de::DeserializeOwned;
use serde::Serialize;

const NAMES_INDEX: &str = "names_unique";
const COLLECTIONS_INDEX: &str = "collections_unique";
const EMAIL_INDEX: &str = "email_unique";
/// How often `delete_org` re-reads an organization that keeps changing under it.
const DELETE_ATTEMPTS: usize = 10;

fn backend_msg(m: impl Into<String>) -> CatalogError {
    CatalogError::Backend(m.into())
}

/// A classified driver failure as a catalog error: the server unreachable or without a
/// primary is [`CatalogError::Unavailable`] (the API answers 503), anything else a backend
/// error.
fn failure(f: Failure) -> CatalogError {
    match f {
        Failure::Unavailable(m) => CatalogError::Unavailable(m),
        f => CatalogError::Backend(f.message().to_owned()),
    }
}

/// JSON-encodes a value and converts it to a BSON document.
fn to_doc<T: Serialize>(v: &T) -> CatalogResult<Document> {
    let json = serde_json::to_value(v).map_err(|e| backend_msg(e.to_string()))?;
    match json_to_bson(&json).map_err(backend_msg)? {
        Bson::Document(d) => Ok(d),
        _ => Err(backend_msg("record is not an object")),
    }
}

/// The inverse of [`to_doc`] for a field of a stored document.
fn from_field<T: DeserializeOwned>(d: &Document, field: &str) -> CatalogResult<T> {
    let value = d
        .get(field)
        .cloned()
        .ok_or_else(|| backend_msg(format!("stored document lacks {field:?}")))?;
    serde_json::from_value(bson_to_json(value)).map_err(|e| backend_msg(e.to_string()))
}

/// The unique keys an organization record holds: its names and collections, including those
/// reserved by an in-progress rename.
fn keys(org: &OrgRecord) -> (Vec<String>, Vec<String>) {
    let mut names = vec![org.normalized_name().as_str().to_owned()];
    let mut colls = vec![org.placement.collection.as_str().to_owned()];
    if let OrgState::Renaming {
        to_name,
        to_collection,
        ..
    } = &org.state
    {
        names.push(to_name.normalized().as_str().to_owned());
        colls.push(to_collection.as_str().to_owned());
    }
    names.dedup();
    colls.dedup();
    (names, colls)
}

fn count_key(shard: &ShardId, db: &DatabaseName) -> String {
    format!("{shard}/{db}")
}

fn int(d: &Document, field: &str) -> i64 {
    match d.get(field) {
        Some(Bson::Int64(n)) => *n,
        Some(Bson::Int32(n)) => i64::from(*n),
        Some(Bson::Double(f)) => *f as i64,
        _ => 0,
    }
}

/// An event as the log stores it (`_id` is its id); outboxes hold the same documents.
fn event_doc(event: &AuditEvent) -> CatalogResult<Document> {
    Ok(doc! {
        "_id": &event.id,
        "org": event.organization_id.map(|o| o.to_string()),
        "type": event.kind.as_str(),
        "at": bson::DateTime::from_chrono(event.at),
        "record": to_doc(event)?,
    })
}

/// `events` as an outbox holds them, stamped now (the time their change is written).
fn outbox_docs(events: &[AuditEvent]) -> CatalogResult<Vec<Document>> {
    events.iter().map(|e| event_doc(&e.stamped_now())).collect()
}

/// Adds `$push` of `events` into the `outbox` of the document `update` changes: the events
/// are then written in the same single-document write as their change.
fn push_outbox(update: &mut Document, events: &[AuditEvent]) -> CatalogResult<()> {
    if events.is_empty() {
        return Ok(());
    }
    let push = doc! { "$each": outbox_docs(events)? };
    match update.get_mut("$push") {
        Some(Bson::Document(p)) => {
            p.insert(OUTBOX, push);
        }
        _ => {
            update.insert("$push", doc! { OUTBOX: push });
        }
    }
    Ok(())
}

/// The field of catalog documents holding the events written with their last changes until
/// they are copied into the log.
const OUTBOX: &str = "outbox";

/// The TTL index that removes events past `lifecycle.event_retention_days`.
const EVENT_TTL_INDEX: &str = "retention";

/// How long an event waiting in an outbox holds back reads of the log after it.
const PENDING_EVENT_HORIZON: chrono::Duration = chrono::Duration::minutes(10);

/// The MongoDB-backed [`Catalog`].
pub struct MongoCatalog {
    secrets: Secrets,
    orgs: Collection<Document>,
    admins: Collection<Document>,
    rosters: Collection<Document>,
    pending: Collection<Document>,
    counts: Collection<Document>,
    settings: Collection<Document>,
    counters: Collection<Document>,
    instances: Collection<Document>,
    leases: Collection<Document>,
    moves: Collection<Document>,
    move_changes: Collection<Document>,
    events: Collection<Document>,
    tombs: Collection<Document>,
    /// `{_id: org id, at}`: the latest mark of a data write per organization.
    write_marks: Collection<Document>,
    db: mongodb::Database,
    _client: LazyClient,
}

const REVISION: &str = "revision";

impl MongoCatalog {
    /// Connects to the catalog database and creates its indexes. Unlike a shard, the catalog
    /// must answer at startup.
    pub async fn open(uri: &str, database: &str) -> Result<Self, String> {
        let tuning = ClientTuning {
            // Uniqueness checks and read-your-writes need the primary.
            read_preference: Some(ReadPreference::Primary),
            default_write_concern: Some(parse_write_concern("majority", true)?),
            ..ClientTuning::default()
        };
        let lazy = LazyClient::new(uri, tuning).await?;
        let secrets = lazy.secrets().clone();
        let client = lazy
            .get()
            .await
            .map_err(|f| format!("catalog: {}", f.message()))?;
        let db = client.database(database);
        let catalog = Self {
            orgs: db.collection("organizations"),
            admins: db.collection("admins"),
            rosters: db.collection("admin_rosters"),
            pending: db.collection("pending_drops"),
            counts: db.collection("collection_counts"),
            settings: db.collection("settings"),
            counters: db.collection("counters"),
            instances: db.collection("instances"),
            leases: db.collection("leases"),
            moves: db.collection("moves"),
            move_changes: db.collection("move_changes"),
            events: db.collection("events"),
            tombs: db.collection("tombstones"),
            write_marks: db.collection("write_marks"),
            db,
            secrets,
            _client: lazy,
        };
        catalog
            .create_indexes()
            .await
            .map_err(|e| format!("catalog: cannot create indexes: {e}"))?;
        Ok(catalog)
    }

    /// Creates a non-unique index `name` on `keys` of `coll` (nothing if it exists).
    async fn plain_index(
        &self,
        coll: &Collection<Document>,
        keys: Document,
        name: &str,
    ) -> CatalogResult<()> {
        coll.create_index(
            IndexModel::builder()
                .keys(keys)
                .options(IndexOptions::builder().name(name.to_owned()).build())
                .build(),
        )
        .await
        .map_err(|e| self.err(&e))?;
        Ok(())
    }

    async fn create_indexes(&self) -> CatalogResult<()> {
        let unique = |name: &str| {
            IndexOptions::builder()
                .unique(true)
                .name(name.to_owned())
                .build()
        };
        self.orgs
            .create_indexes([
                IndexModel::builder()
                    .keys(doc! { "names": 1 })
                    .options(unique(NAMES_INDEX))
                    .build(),
                IndexModel::builder()
                    .keys(doc! { "collections": 1 })
                    .options(unique(COLLECTIONS_INDEX))
                    .build(),
            ])
            .await
            .map_err(|e| self.err(&e))?;
        self.admins
            .create_indexes([
                IndexModel::builder()
                    .keys(doc! { "email": 1 })
                    .options(unique(EMAIL_INDEX))
                    .build(),
                IndexModel::builder()
                    .keys(doc! { "org_id": 1 })
                    .options(IndexOptions::builder().name("org_id".to_owned()).build())
                    .build(),
            ])
            .await
            .map_err(|e| self.err(&e))?;
        self.plain_index(&self.pending, doc! { "org_id": 1 }, "org_id")
            .await?;
        self.plain_index(&self.tombs, doc! { "phase": 1, "_id": 1 }, "phase")
            .await?;
        self.plain_index(&self.move_changes, doc! { "move": 1, "_id": 1 }, "move")
            .await?;
        self.plain_index(&self.orgs, doc! { "active": 1 }, "active")
            .await?;
        self.plain_index(&self.orgs, doc! { "name": 1 }, "name")
            .await?;
        self.events
            .create_indexes([
                IndexModel::builder()
                    .keys(doc! { "org": 1, "_id": 1 })
                    .options(IndexOptions::builder().name("org".to_owned()).build())
                    .build(),
                IndexModel::builder()
                    .keys(doc! { "type": 1, "_id": 1 })
                    .options(IndexOptions::builder().name("type".to_owned()).build())
                    .build(),
            ])
            .await
            .map_err(|e| self.err(&e))?;
        // Outboxes are nearly always empty: a sparse index finds the few that are not.
        for coll in self.outbox_holders() {
            coll.create_index(
                IndexModel::builder()
                    .keys(doc! { "outbox._id": 1 })
                    .options(
                        IndexOptions::builder()
                            .name("outbox".to_owned())
                            .sparse(true)
                            .build(),
                    )
                    .build(),
            )
            .await
            .map_err(|e| self.err(&e))?;
        }
        // Documents written before `name` existed: derive it once from the record.
        let unnamed: Vec<Document> = self
            .orgs
            .find(doc! { "name": { "$exists": false } })
            .await
            .map_err(|e| self.err(&e))?
            .try_collect()
            .await
            .map_err(|e| self.err(&e))?;
        for d in unnamed {
            let org: OrgRecord = from_field(&d, "record")?;
            self.orgs
                .update_one(
                    doc! { "_id": org.id.to_string(), "name": { "$exists": false } },
                    doc! { "$set": { "name": org.normalized_name().as_str() } },
                )
                .await
                .map_err(|e| self.err(&e))?;
        }
        // Documents written before `active` existed: derive it once from the record.
        self.orgs
            .update_many(
                doc! { "active": { "$exists": false }, "record.state": "active" },
                doc! { "$set": { "active": true } },
            )
            .await
            .map_err(|e| self.err(&e))?;
        self.orgs
            .update_many(
                doc! { "active": { "$exists": false } },
                doc! { "$set": { "active": false } },
            )
            .await
            .map_err(|e| self.err(&e))?;
        // The counter exists before anyone increments it, so increments never race an upsert.
        match self
            .counters
            .update_one(
                doc! { "_id": REVISION },
                doc! { "$setOnInsert": { "value": 0_i64 } },
            )
            .upsert(true)
            .await
        {
            Ok(_) => {}
            Err(e) => match self.classify(&e) {
                Failure::Duplicate { .. } => {}
                f => return Err(failure(f)),
            },
        }
        Ok(())
    }

    /// The collections whose documents carry outboxes.
    fn outbox_holders(&self) -> [&Collection<Document>; 5] {
        [
            &self.orgs,
            &self.admins,
            &self.rosters,
            &self.tombs,
            &self.settings,
        ]
    }

    /// Copies the outbox events of the documents of `coll` matching `filter` into the log
    /// (an event already there is not written twice: its id is the log's key), then removes
    /// them from the outbox. Returns how many it wrote.
    async fn flush_outbox(
        &self,
        coll: &Collection<Document>,
        mut filter: Document,
    ) -> CatalogResult<usize> {
        filter.insert("outbox._id", doc! { "$exists": true });
        let holders: Vec<Document> = coll
            .find(filter)
            .projection(doc! { OUTBOX: 1, "ids": 1 })
            .limit(1000)
            .await
            .map_err(|e| self.err(&e))?
            .try_collect()
            .await
            .map_err(|e| self.err(&e))?;
        let rosters = std::ptr::eq(coll, &self.rosters);
        let mut written = 0;
        for holder in holders {
            let Ok(outbox) = holder.get_array(OUTBOX) else {
                continue;
            };
            let holder_id = holder.get("_id").cloned().unwrap_or(Bson::Null);
            for entry in outbox {
                let Bson::Document(event) = entry else {
                    continue;
                };
                let kind = event.get_str("type").ok().and_then(EventType::parse);
                if rosters && kind == Some(EventType::AdminDeleted) {
                    // A removal is decided by its seat: finish it (the admin's document
                    // goes) before its event can be read.
                    self.finish_unseated_removal(&holder, event).await?;
                }
                match self.events.insert_one(event.clone()).await {
                    Ok(_) => {
                        written += 1;
                        if let Some(kind) = kind {
                            events::count_written(kind, Ok(()));
                        }
                    }
                    Err(e) => match self.classify(&e) {
                        Failure::Duplicate { .. } => {}
                        f => return Err(failure(f)),
                    },
                }
                coll.update_one(
                    doc! { "_id": &holder_id },
                    doc! { "$pull": { OUTBOX: { "_id": event.get("_id").cloned().unwrap_or(Bson::Null) } } },
                )
                .await
                .map_err(|e| self.err(&e))?;
            }
            // An empty outbox goes, so the sparse index holds only documents with events.
            coll.update_one(
                doc! { "_id": &holder_id, OUTBOX: { "$size": 0 } },
                doc! { "$unset": { OUTBOX: "" } },
            )
            .await
            .map_err(|e| self.err(&e))?;
        }
        Ok(written)
    }

    /// Deletes the document of the admin an `admin.deleted` event in roster `roster`'s outbox
    /// names, if the roster no longer seats it (the removal was decided and may have been
    /// interrupted before the document went).
    async fn finish_unseated_removal(
        &self,
        roster: &Document,
        event: &Document,
    ) -> CatalogResult<()> {
        let Ok(record) = event.get_document("record") else {
            return Ok(());
        };
        let Ok(admin_id) = record
            .get_document("details")
            .and_then(|d| d.get_str("admin_id"))
        else {
            return Ok(());
        };
        let seated = roster
            .get_array("ids")
            .map(|ids| ids.iter().any(|i| i.as_str() == Some(admin_id)))
            .unwrap_or(false);
        if seated {
            return Ok(());
        }
        let org = roster.get_str("_id").unwrap_or_default();
        // Boxed: it copies the admin's own outbox, a flush of another collection.
        Box::pin(self.delete_flushed(&self.admins, doc! { "_id": admin_id, "org_id": org })).await
    }

    /// Deletes the documents of `coll` matching `filter` once their outboxes are copied: a
    /// document whose outbox filled meanwhile is copied and tried again, so no change's event
    /// goes with its document.
    async fn delete_flushed(
        &self,
        coll: &Collection<Document>,
        filter: Document,
    ) -> CatalogResult<()> {
        for _ in 0..DELETE_ATTEMPTS {
            self.flush_outbox(coll, filter.clone()).await?;
            let mut empty = filter.clone();
            empty.insert("outbox._id", doc! { "$exists": false });
            coll.delete_many(empty).await.map_err(|e| self.err(&e))?;
            let left = coll
                .count_documents(filter.clone())
                .await
                .map_err(|e| self.err(&e))?;
            if left == 0 {
                return Ok(());
            }
        }
        Err(backend_msg(
            "documents kept changing while being removed; retry",
        ))
    }

    /// The smallest id of an event waiting in an outbox, if any is younger than
    /// [`PENDING_EVENT_HORIZON`] (an older one is stuck: it stops holding readers back).
    async fn oldest_pending_event(&self) -> CatalogResult<Option<String>> {
        let horizon = id_floor(Utc::now() - PENDING_EVENT_HORIZON);
        let mut oldest: Option<String> = None;
        for coll in self.outbox_holders() {
            let found = coll
                .find_one(doc! { "outbox._id": { "$gte": horizon.as_str() } })
                .sort(doc! { "outbox._id": 1 })
                .projection(doc! { OUTBOX: 1 })
                .await
                .map_err(|e| self.err(&e))?;
            let ids = found
                .as_ref()
                .and_then(|d| d.get_array(OUTBOX).ok())
                .into_iter()
                .flatten()
                .filter_map(|e| e.as_document()?.get_str("_id").ok());
            for id in ids {
                if id >= horizon.as_str() && oldest.as_deref().is_none_or(|o| id < o) {
                    oldest = Some(id.to_owned());
                }
            }
        }
        Ok(oldest)
    }

    /// [`Self::flush_outbox`] of one document, after the change that filled it: a failure
    /// leaves the events to the next flush (the change stands).
    async fn flush_one(&self, coll: &Collection<Document>, id: &str) {
        crate::failpoints::failpoint("catalog_after_change");
        if let Err(e) = self.flush_outbox(coll, doc! { "_id": id }).await {
            tracing::warn!(error = %e, "audit events kept in their outbox; copied later");
        }
    }

    /// Allocates the next catalog revision.
    async fn bump_revision(&self) -> CatalogResult<u64> {
        let d = self
            .counters
            .find_one_and_update(
                doc! { "_id": REVISION },
                doc! { "$inc": { "value": 1_i64 } },
            )
            .upsert(true)
            .return_document(mongodb::options::ReturnDocument::After)
            .await
            .map_err(|e| self.err(&e))?
            .ok_or_else(|| backend_msg("revision counter vanished"))?;
        Ok(int(&d, "value").max(0) as u64)
    }

    fn classify(&self, e: &mongodb::error::Error) -> Failure {
        classify(e, &self.secrets)
    }

    fn err(&self, e: &mongodb::error::Error) -> CatalogError {
        failure(self.classify(e))
    }

    /// The organization document and its revision.
    async fn load(&self, id: OrgId) -> CatalogResult<Option<(OrgRecord, i64)>> {
        let found = self
            .orgs
            .find_one(doc! { "_id": id.to_string() })
            .await
            .map_err(|e| self.err(&e))?;
        found
            .map(|d| Ok((from_field(&d, "record")?, int(&d, "rev"))))
            .transpose()
    }

    /// Every document of a small catalog collection, in `_id` order.
    async fn all(&self, coll: &Collection<Document>) -> CatalogResult<Vec<Document>> {
        coll.find(doc! {})
            .sort(doc! { "_id": 1 })
            .await
            .map_err(|e| self.err(&e))?
            .try_collect()
            .await
            .map_err(|e| self.err(&e))
    }

    async fn find_orgs(&self, filter: Document) -> CatalogResult<Vec<OrgRecord>> {
        self.find_orgs_up_to(filter, None).await
    }

    /// The organizations matching `filter`, in id order, at most `limit` of them.
    async fn find_orgs_up_to(
        &self,
        filter: Document,
        limit: Option<usize>,
    ) -> CatalogResult<Vec<OrgRecord>> {
        self.records(&self.orgs, filter, doc! { "_id": 1 }, limit)
            .await
    }

    /// The `record`s of the documents of `coll` matching `filter`, in `sort` order, at most
    /// `limit` of them.
    async fn records<T: DeserializeOwned>(
        &self,
        coll: &Collection<Document>,
        filter: Document,
        sort: Document,
        limit: Option<usize>,
    ) -> CatalogResult<Vec<T>> {
        let mut find = coll.find(filter).sort(sort);
        if let Some(n) = limit {
            find = find.limit(i64::try_from(n).unwrap_or(i64::MAX));
        }
        let docs: Vec<Document> = find
            .await
            .map_err(|e| self.err(&e))?
            .try_collect()
            .await
            .map_err(|e| self.err(&e))?;
        docs.iter().map(|d| from_field(d, "record")).collect()
    }

    /// Which key a duplicate-key error on `organizations` was about: the name wins, as in the
    /// embedded catalog, when both are taken.
    async fn org_conflict(
        &self,
        except: Option<OrgId>,
        name: &NormalizedOrgName,
        collection: &str,
        message: &str,
    ) -> CatalogResult<CatalogError> {
        let mut by_name = doc! { "names": name.as_str() };
        let mut by_coll = doc! { "collections": collection };
        if let Some(id) = except {
            by_name.insert("_id", doc! { "$ne": id.to_string() });
            by_coll.insert("_id", doc! { "$ne": id.to_string() });
        }
        let exists = |filter: Document| async move {
            self.orgs
                .find_one(filter)
                .projection(doc! { "_id": 1 })
                .await
                .map(|d| d.is_some())
                .map_err(|e| self.err(&e))
        };
        let taken = if exists(by_name).await? {
            Taken::OrgName
        } else if message.contains(COLLECTIONS_INDEX) || exists(by_coll).await? {
            Taken::Collection
        } else if message.contains(NAMES_INDEX) {
            Taken::OrgName
        } else {
            return Ok(backend_msg(message.to_owned()));
        };
        Ok(CatalogError::Conflict(taken))
    }

    async fn add_count(&self, shard: &ShardId, db: &DatabaseName, delta: i64) -> CatalogResult<()> {
        let key = count_key(shard, db);
        let on_insert = doc! { "shard": shard.as_str(), "database": db.as_str() };
        if delta < 0 {
            // Never below zero, as in the embedded catalog.
            let r = self
                .counts
                .update_one(
                    doc! { "_id": &key, "count": { "$gt": 0 } },
                    doc! { "$inc": { "count": delta } },
                )
                .await
                .map_err(|e| self.err(&e))?;
            if r.matched_count > 0 {
                return Ok(());
            }
            let mut zero = on_insert;
            zero.insert("count", 0_i64);
            return self.upsert_count(&key, doc! { "$setOnInsert": zero }).await;
        }
        self.upsert_count(
            &key,
            doc! { "$inc": { "count": delta }, "$setOnInsert": on_insert },
        )
        .await
    }

    async fn upsert_count(&self, key: &str, update: Document) -> CatalogResult<()> {
        // Two concurrent upserts of a new key may collide on `_id`; the second try updates.
        for attempt in 0..2 {
            match self
                .counts
                .update_one(doc! { "_id": key }, update.clone())
                .upsert(true)
                .await
            {
                Ok(_) => return Ok(()),
                Err(e) => match self.classify(&e) {
                    Failure::Duplicate { .. } if attempt == 0 => continue,
                    f => return Err(failure(f)),
                },
            }
        }
        Ok(())
    }

    /// Removes the admins and the document of an org whose delete is decided; uncounts its
    /// collection if this call removed the document. `Ok(false)` if the document changed
    /// (revision mismatch) and is still there.
    async fn remove_org(&self, org: &OrgRecord, rev: Option<i64>) -> CatalogResult<bool> {
        let id = org.id.to_string();
        self.delete_flushed(&self.admins, doc! { "org_id": &id })
            .await?;
        self.delete_flushed(&self.rosters, doc! { "_id": &id })
            .await?;
        self.flush_outbox(&self.orgs, doc! { "_id": &id }).await?;
        let mut filter = doc! { "_id": &id };
        if let Some(rev) = rev {
            filter.insert("rev", rev);
        }
        let removed = self
            .orgs
            .delete_one(filter)
            .await
            .map_err(|e| self.err(&e))?;
        if removed.deleted_count == 1 {
            self.add_count(&org.placement.shard, &org.placement.database, -1)
                .await?;
            return Ok(true);
        }
        Ok(false)
    }

    async fn record_drops(&self, org: &OrgRecord) -> CatalogResult<()> {
        let mut drops = vec![PendingDrop {
            shard: org.placement.shard.clone(),
            database: org.placement.database.clone(),
            collection: org.placement.collection.clone(),
            stash_to: None,
        }];
        if let OrgState::Renaming { to_collection, .. } = &org.state {
            drops.push(PendingDrop {
                collection: to_collection.clone(),
                ..drops[0].clone()
            });
        }
        for d in drops {
            let key = d.key();
            self.pending
                .replace_one(
                    doc! { "_id": &key },
                    doc! { "_id": &key, "org_id": org.id.to_string(), "drop": to_doc(&d)? },
                )
                .upsert(true)
                .await
                .map_err(|e| self.err(&e))?;
        }
        Ok(())
    }

    /// Makes sure the organization has its admin roster: organizations created before rosters
    /// existed get one listing their admins. No admin is added without a roster, so the
    /// admins read here are all of them; of two racing initializers, one inserts.
    async fn ensure_roster(&self, org: OrgId) -> CatalogResult<()> {
        let id = org.to_string();
        if self
            .rosters
            .find_one(doc! { "_id": &id })
            .await
            .map_err(|e| self.err(&e))?
            .is_some()
        {
            return Ok(());
        }
        let ids: Vec<String> = self
            .admins_of_org(org)
            .await?
            .into_iter()
            .map(|a| a.id.to_string())
            .collect();
        let n = ids.len() as i64;
        match self
            .rosters
            .update_one(
                doc! { "_id": &id },
                doc! { "$setOnInsert": { "ids": ids, "n": n } },
            )
            .upsert(true)
            .await
        {
            Ok(_) => Ok(()),
            Err(e) => match self.classify(&e) {
                Failure::Duplicate { .. } => Ok(()),
                f => Err(failure(f)),
            },
        }
    }

    /// Gives an admin's seat back (a failed add); nothing if it holds none.
    async fn release_seat(&self, org: OrgId, admin: AdminId) -> CatalogResult<()> {
        self.rosters
            .update_one(
                doc! { "_id": org.to_string(), "ids": admin.to_string() },
                doc! { "$pull": { "ids": admin.to_string() }, "$inc": { "n": -1_i64 } },
            )
            .await
            .map_err(|e| self.err(&e))?;
        Ok(())
    }

    /// Applies `update` plus the new `record` to the organization matching `filter` (which
    /// pins the expected revision); `Ok(false)` if none matched. Duplicate keys come back as
    /// [`Failure::Duplicate`].
    async fn update_org(
        &self,
        filter: Document,
        mut update: Document,
        record: &mut OrgRecord,
    ) -> Result<bool, Failure> {
        let other = |e: CatalogError| match e {
            CatalogError::Unavailable(m) => Failure::Unavailable(m),
            e => Failure::Other {
                code: None,
                message: e.to_string(),
            },
        };
        record.revision = self.bump_revision().await.map_err(other)?;
        let active = record.state == OrgState::Active;
        let name = record.normalized_name().as_str().to_owned();
        let rev = record.revision as i64;
        let record = to_doc(&*record).map_err(other)?;
        match update.get_mut("$set") {
            Some(Bson::Document(set)) => {
                set.insert("record", record);
                set.insert("rev", rev);
                set.insert("active", active);
                set.insert("name", name);
            }
            _ => {
                update.insert(
                    "$set",
                    doc! { "record": record, "rev": rev, "active": active, "name": name },
                );
            }
        }
        let r = self
            .orgs
            .update_one(filter, update)
            .await
            .map_err(|e| self.classify(&e))?;
        Ok(r.matched_count == 1)
    }

    /// [`Catalog::put_org`] with `events` in the organization's outbox.
    async fn replace_org(
        &self,
        org: &OrgRecord,
        events: &[AuditEvent],
    ) -> CatalogResult<OrgRecord> {
        let (old, rev) = self.load(org.id).await?.ok_or(CatalogError::NotFound)?;
        if old.name != org.name || old.placement.collection != org.placement.collection {
            return Err(backend_msg("put_org cannot change name or collection"));
        }
        if rev != org.revision as i64 {
            return Err(CatalogError::Stale);
        }
        let filter = doc! { "_id": org.id.to_string(), "rev": rev };
        let mut stored = org.clone();
        let mut update = Document::new();
        push_outbox(&mut update, events)?;
        if self.update_org_plain(filter, update, &mut stored).await? {
            Ok(stored)
        } else {
            Err(CatalogError::Stale)
        }
    }

    /// [`Self::update_org`] where a duplicate key cannot happen.
    async fn update_org_plain(
        &self,
        filter: Document,
        update: Document,
        record: &mut OrgRecord,
    ) -> CatalogResult<bool> {
        self.update_org(filter, update, record)
            .await
            .map_err(failure)
    }
    /// Inserts a new tombstone with `events` in its outbox; [`CatalogError::Stale`] if the
    /// organization already has one (a concurrent delete, or a restore not yet settled).
    async fn insert_tomb(&self, tomb: &Tombstone, events: &[AuditEvent]) -> CatalogResult<()> {
        let mut d = doc! {
            "_id": tomb.org.id.to_string(),
            "phase": phase_name(tomb.phase),
            "record": to_doc(tomb)?,
        };
        if !events.is_empty() {
            d.insert(OUTBOX, outbox_docs(events)?);
        }
        match self.tombs.insert_one(d).await {
            Ok(_) => Ok(()),
            Err(e) => Err(match self.classify(&e) {
                Failure::Duplicate { .. } => CatalogError::Stale,
                f => failure(f),
            }),
        }
    }

    /// Replaces the record of a tombstone still `deleting` (its outbox stays); `Ok(false)`
    /// if it is not.
    async fn refresh_deleting_tomb(&self, tomb: &Tombstone) -> CatalogResult<bool> {
        let r = self
            .tombs
            .update_one(
                doc! { "_id": tomb.org.id.to_string(), "phase": phase_name(TombstonePhase::Deleting) },
                doc! { "$set": { "record": to_doc(tomb)? } },
            )
            .await
            .map_err(|e| self.err(&e))?;
        Ok(r.matched_count == 1)
    }

    async fn load_tomb(&self, id: OrgId) -> CatalogResult<Option<Tombstone>> {
        let found = self
            .tombs
            .find_one(doc! { "_id": id.to_string() })
            .await
            .map_err(|e| self.err(&e))?;
        found.map(|d| from_field(&d, "record")).transpose()
    }

    /// Moves a tombstone from phase `from` to `to`, with `events` in its outbox; `Ok(None)`
    /// if it is not in `from`.
    async fn set_phase(
        &self,
        id: OrgId,
        from: TombstonePhase,
        to: TombstonePhase,
        events: &[AuditEvent],
    ) -> CatalogResult<Option<Tombstone>> {
        let Some(mut tomb) = self.load_tomb(id).await? else {
            return Ok(None);
        };
        if tomb.phase != from {
            return Ok(None);
        }
        tomb.phase = to;
        tomb.phase_at = Utc::now();
        let mut update = doc! { "$set": { "phase": phase_name(to), "record": to_doc(&tomb)? } };
        push_outbox(&mut update, events)?;
        let r = self
            .tombs
            .update_one(
                doc! { "_id": id.to_string(), "phase": phase_name(from) },
                update,
            )
            .await
            .map_err(|e| self.err(&e))?;
        Ok((r.matched_count == 1).then_some(tomb))
    }

    /// Whether the stash of a tombstone's data is still pending.
    async fn stash_pending(&self, tomb: &Tombstone) -> CatalogResult<bool> {
        Ok(self
            .pending
            .find_one(doc! { "_id": tomb.stash().key(), "drop.stash_to": tomb.collection.as_str() })
            .await
            .map_err(|e| self.err(&e))?
            .is_some())
    }

    /// Rolls back a soft delete that did not remove its organization: the stash first (so it
    /// never runs under a live organization), then the tombstone.
    async fn undo_tombstone(&self, tomb: &Tombstone) -> CatalogResult<()> {
        self.pending
            .delete_one(
                doc! { "_id": tomb.stash().key(), "drop.stash_to": tomb.collection.as_str() },
            )
            .await
            .map_err(|e| self.err(&e))?;
        self.tombs
            .delete_one(doc! { "_id": tomb.org.id.to_string(), "phase": phase_name(TombstonePhase::Deleting) })
            .await
            .map_err(|e| self.err(&e))?;
        Ok(())
    }

    /// Finishes a decided soft delete (tombstone `deleting`, stash recorded): removes the
    /// organization if it is still the one snapshotted (`rev`, or, when `None`, still active
    /// at the same place: the snapshot is refreshed), then its admins, and keeps the
    /// tombstone. `Ok(false)` when the organization changed: the delete is rolled back.
    async fn finish_tombstone(&self, mut tomb: Tombstone, rev: Option<i64>) -> CatalogResult<bool> {
        let id = tomb.org.id;
        for _ in 0..DELETE_ATTEMPTS {
            let Some((org, cur)) = self.load(id).await? else {
                break;
            };
            let same_place = org.placement.shard == tomb.org.placement.shard
                && org.placement.database == tomb.org.placement.database
                && org.placement.collection == tomb.org.placement.collection;
            let eligible = org.state == OrgState::Active && org.moving.is_none() && same_place;
            if !eligible || rev.is_some_and(|r| r != cur) {
                self.undo_tombstone(&tomb).await?;
                return Ok(false);
            }
            if rev.is_none() {
                tomb.org = org;
                tomb.admins = self.admins_of_org(id).await?;
                if !self.refresh_deleting_tomb(&tomb).await? {
                    // Finished or rolled back by someone else meanwhile.
                    break;
                }
            }
            // Events of changes already made go to the log before their documents go.
            self.flush_outbox(&self.orgs, doc! { "_id": id.to_string() })
                .await?;
            let removed = self
                .orgs
                .delete_one(doc! { "_id": id.to_string(), "rev": cur })
                .await
                .map_err(|e| self.err(&e))?;
            if removed.deleted_count == 1 {
                break;
            }
        }
        if self.load(id).await?.is_some() {
            return Err(backend_msg(
                "organization kept changing while being deleted; retry",
            ));
        }
        let key = id.to_string();
        self.delete_flushed(&self.admins, doc! { "org_id": &key })
            .await?;
        self.delete_flushed(&self.rosters, doc! { "_id": &key })
            .await?;
        self.bump_revision().await?;
        if self
            .set_phase(id, TombstonePhase::Deleting, TombstonePhase::Kept, &[])
            .await?
            .is_none()
        {
            // Someone else finished it (kept), or it was rolled back (gone).
            let kept = self.load_tomb(id).await?;
            return Ok(kept.is_some_and(|t| t.phase != TombstonePhase::Deleting));
        }
        Ok(true)
    }

    /// Inserts an admin's document under organization `org`; an email another admin holds
    /// is a conflict.
    async fn insert_admin_doc(
        &self,
        admin: &AdminRecord,
        org: &str,
        events: &[AuditEvent],
    ) -> CatalogResult<()> {
        let mut admin_doc = doc! {
            "_id": admin.id.to_string(),
            "email": admin.email.as_str(),
            "org_id": org,
            "rev": admin.revision as i64,
            "record": to_doc(admin)?,
        };
        if !events.is_empty() {
            admin_doc.insert(OUTBOX, outbox_docs(events)?);
        }
        self.admins
            .insert_one(admin_doc)
            .await
            .map_err(|e| match self.classify(&e) {
                Failure::Duplicate { message, .. } if !message.contains("_id_") => {
                    CatalogError::Conflict(Taken::Email)
                }
                f => failure(f),
            })?;
        Ok(())
    }

    /// Inserts the tombstone's admins not already there (a restore). An email taken by
    /// someone else is a conflict.
    async fn insert_restored_admins(&self, tomb: &Tombstone) -> CatalogResult<()> {
        let key = tomb.org.id.to_string();
        for a in &tomb.admins {
            if self.admin_by_id(a.id).await?.is_some() {
                continue;
            }
            let mut a = a.clone();
            // Tokens issued before the delete stay refused.
            a.credential_version += 1;
            a.revision = self.bump_revision().await?;
            self.insert_admin_doc(&a, &key, &[]).await?;
        }
        Ok(())
    }

    /// Rolls back a restore that could not complete: its admins, then the organization (only
    /// while it is still the restore's), then the tombstone is kept again.
    async fn undo_restore(&self, tomb: &Tombstone) -> CatalogResult<()> {
        let key = tomb.org.id.to_string();
        self.delete_flushed(&self.admins, doc! { "org_id": &key })
            .await?;
        self.delete_flushed(&self.rosters, doc! { "_id": &key })
            .await?;
        self.orgs
            .delete_one(
                doc! { "_id": &key, "collections": tomb.collection.as_str(), "active": false },
            )
            .await
            .map_err(|e| self.err(&e))?;
        self.bump_revision().await?;
        self.set_phase(
            tomb.org.id,
            TombstonePhase::Restoring,
            TombstonePhase::Kept,
            &[],
        )
        .await?;
        Ok(())
    }

    /// The rest of a restore once its organization is inserted: admins, then the tombstone
    /// goes. A conflict rolls it back.
    async fn complete_restore(&self, tomb: &Tombstone) -> CatalogResult<()> {
        match self.insert_restored_admins(tomb).await {
            Ok(()) => {}
            Err(e @ CatalogError::Conflict(_)) => {
                self.undo_restore(tomb).await?;
                return Err(e);
            }
            Err(e) => return Err(e),
        }
        self.flush_outbox(&self.tombs, doc! { "_id": tomb.org.id.to_string() })
            .await?;
        self.tombs
            .delete_one(doc! { "_id": tomb.org.id.to_string(), "phase": phase_name(TombstonePhase::Restoring) })
            .await
            .map_err(|e| self.err(&e))?;
        Ok(())
    }

    /// The rest of a purge: the drop is recorded, then the tombstone removed and its
    /// collection uncounted (once).
    async fn complete_purge(&self, tomb: &Tombstone) -> CatalogResult<()> {
        self.add_pending_drop(&tomb.purge_drop()).await?;
        self.flush_outbox(&self.tombs, doc! { "_id": tomb.org.id.to_string() })
            .await?;
        let r = self
            .tombs
            .delete_one(doc! { "_id": tomb.org.id.to_string(), "phase": phase_name(TombstonePhase::Purging) })
            .await
            .map_err(|e| self.err(&e))?;
        if r.deleted_count == 1 {
            self.add_count(&tomb.org.placement.shard, &tomb.org.placement.database, -1)
                .await?;
        }
        self.bump_revision().await?;
        Ok(())
    }
}

fn phase_name(p: TombstonePhase) -> &'static str {
    match p {
        TombstonePhase::Deleting => "deleting",
        TombstonePhase::Kept => "kept",
        TombstonePhase::Restoring => "restoring",
        TombstonePhase::Purging => "purging",
    }
}

/// The least string above every string starting with `prefix` (its last character bumped),
/// or `None` for the empty prefix. Normalized names are ASCII, so a bumped byte stays ASCII.
fn prefix_upper_bound(prefix: &str) -> Option<String> {
    let mut bytes = prefix.as_bytes().to_vec();
    while let Some(last) = bytes.pop() {
        if last < 0x7f {
            bytes.push(last + 1);
            return String::from_utf8(bytes).ok();
        }
    }
    None
}

/// Whether an unordered insert failed only on duplicate `_id`s.
fn only_duplicates(e: &mongodb::error::Error) -> bool {
    match e.kind.as_ref() {
        mongodb::error::ErrorKind::InsertMany(im) => {
            im.write_concern_error.is_none()
                && im.write_errors.as_ref().is_some_and(|w| {
                    !w.is_empty()
                        && w.iter()
                            .all(|w| w.code == crate::store::mongo::DUPLICATE_KEY)
                })
        }
        _ => false,
    }
}

#[async_trait]
impl Catalog for MongoCatalog {
    async fn insert_org(&self, org: &OrgRecord, admin: &AdminRecord) -> CatalogResult<OrgRecord> {
        let id = org.id.to_string();
        let mut creating = org.clone();
        creating.state = OrgState::Creating;
        creating.revision = self.bump_revision().await?;
        let (names, colls) = keys(org);
        let org_doc = doc! {
            "_id": &id,
            "names": names,
            "collections": colls,
            "rev": creating.revision as i64,
            "active": false,
            "name": org.normalized_name().as_str(),
            "record": to_doc(&creating)?,
        };
        if let Err(e) = self.orgs.insert_one(org_doc).await {
            return Err(match self.classify(&e) {
                Failure::Duplicate { message, .. } => {
                    self.org_conflict(
                        None,
                        &org.normalized_name(),
                        org.placement.collection.as_str(),
                        &message,
                    )
                    .await?
                }
                f => failure(f),
            });
        }
        let placement = &org.placement;
        let mut admin = admin.clone();
        admin.revision = self.bump_revision().await?;
        let admin_doc = doc! {
            "_id": admin.id.to_string(),
            "email": admin.email.as_str(),
            "org_id": &id,
            "rev": admin.revision as i64,
            "record": to_doc(&admin)?,
        };
        let added = match self
            .add_count(&placement.shard, &placement.database, 1)
            .await
        {
            Ok(()) => self.admins.insert_one(admin_doc).await.map_err(|e| {
                match self.classify(&e) {
                    // Only the email is unique besides `_id` (a fresh admin id).
                    Failure::Duplicate { message, .. } if !message.contains("_id_") => {
                        CatalogError::Conflict(Taken::Email)
                    }
                    f => failure(f),
                }
            }),
            Err(e) => Err(e),
        };
        if let Err(e) = added {
            // Undo; if this fails too, the org stays `Creating` and startup recovery removes it.
            let undo = async {
                let r = self
                    .orgs
                    .delete_one(doc! { "_id": &id })
                    .await
                    .map_err(|e| self.err(&e))?;
                if r.deleted_count == 1 {
                    self.add_count(&placement.shard, &placement.database, -1)
                        .await?;
                }
                CatalogResult::Ok(())
            };
            if let Err(undo) = undo.await {
                tracing::warn!(org_id = %id, error = %undo, "could not undo a failed org insert; startup recovery will");
            }
            return Err(e);
        }
        if org.state == OrgState::Creating {
            return Ok(creating);
        }
        let mut stored = org.clone();
        if !self
            .update_org_plain(doc! { "_id": &id }, Document::new(), &mut stored)
            .await?
        {
            return Err(CatalogError::NotFound);
        }
        Ok(stored)
    }

    async fn put_org(&self, org: &OrgRecord) -> CatalogResult<OrgRecord> {
        self.replace_org(org, &[]).await
    }

    async fn put_org_with_event(
        &self,
        org: &OrgRecord,
        event: &AuditEvent,
    ) -> CatalogResult<OrgRecord> {
        let stored = self.replace_org(org, std::slice::from_ref(event)).await?;
        self.flush_one(&self.orgs, &org.id.to_string()).await;
        Ok(stored)
    }

    async fn org_by_id(&self, id: OrgId) -> CatalogResult<Option<OrgRecord>> {
        Ok(self.load(id).await?.map(|(org, _)| org))
    }

    async fn org_by_name(&self, name: &NormalizedOrgName) -> CatalogResult<Option<OrgRecord>> {
        let found = self.find_orgs(doc! { "names": name.as_str() }).await?;
        // `names` also holds names reserved by an in-progress rename.
        Ok(found.into_iter().find(|o| &o.normalized_name() == name))
    }

    async fn list_orgs(&self) -> CatalogResult<Vec<OrgRecord>> {
        self.find_orgs(doc! {}).await
    }

    async fn orgs_after(
        &self,
        after: Option<OrgId>,
        limit: usize,
    ) -> CatalogResult<Vec<OrgRecord>> {
        let filter = match after {
            Some(id) => doc! { "_id": { "$gt": id.to_string() } },
            None => doc! {},
        };
        self.find_orgs_up_to(filter, Some(limit)).await
    }

    async fn orgs_by_name(
        &self,
        prefix: &str,
        after: Option<&NormalizedOrgName>,
        limit: usize,
    ) -> CatalogResult<Vec<OrgRecord>> {
        let mut range = doc! { "$gte": prefix };
        if let Some(upper) = prefix_upper_bound(prefix) {
            range.insert("$lt", upper);
        }
        let mut filter = doc! { "name": range };
        if let Some(after) = after {
            filter = doc! { "$and": [ filter, { "name": { "$gt": after.as_str() } } ] };
        }
        self.records(&self.orgs, filter, doc! { "name": 1 }, Some(limit))
            .await
    }

    async fn orgs_not_active(&self) -> CatalogResult<Vec<OrgRecord>> {
        self.find_orgs(doc! { "active": false }).await
    }

    async fn admin_by_email(&self, email: &Email) -> CatalogResult<Option<AdminRecord>> {
        let found = self
            .admins
            .find_one(doc! { "email": email.as_str() })
            .await
            .map_err(|e| self.err(&e))?;
        found.map(|d| from_field(&d, "record")).transpose()
    }

    async fn admin_by_id(&self, id: AdminId) -> CatalogResult<Option<AdminRecord>> {
        let found = self
            .admins
            .find_one(doc! { "_id": id.to_string() })
            .await
            .map_err(|e| self.err(&e))?;
        found.map(|d| from_field(&d, "record")).transpose()
    }

    async fn admins_of_org(&self, org: OrgId) -> CatalogResult<Vec<AdminRecord>> {
        let filter = doc! { "org_id": org.to_string() };
        self.records(&self.admins, filter, doc! { "_id": 1 }, None)
            .await
    }

    async fn update_admin(
        &self,
        admin: &AdminRecord,
        events: &[AuditEvent],
    ) -> CatalogResult<AdminRecord> {
        let expected = admin.revision as i64;
        let mut admin = admin.clone();
        admin.revision = self.bump_revision().await?;
        let mut update = doc! { "$set": {
            "email": admin.email.as_str(),
            "rev": admin.revision as i64,
            "record": to_doc(&admin)?,
        } };
        push_outbox(&mut update, events)?;
        // Records written before revisions existed have no `rev`: they are revision 0.
        let filter = if expected == 0 {
            doc! { "_id": admin.id.to_string(), "$or": [ { "rev": 0_i64 }, { "rev": { "$exists": false } } ] }
        } else {
            doc! { "_id": admin.id.to_string(), "rev": expected }
        };
        match self.admins.update_one(filter, update).await {
            Ok(r) if r.matched_count == 1 => {
                self.flush_one(&self.admins, &admin.id.to_string()).await;
                Ok(admin)
            }
            Ok(_) => {
                let exists = self
                    .admins
                    .find_one(doc! { "_id": admin.id.to_string() })
                    .await
                    .map_err(|e| self.err(&e))?
                    .is_some();
                Err(if exists {
                    CatalogError::Stale
                } else {
                    CatalogError::NotFound
                })
            }
            Err(e) => Err(match self.classify(&e) {
                Failure::Duplicate { .. } => CatalogError::Conflict(Taken::Email),
                f => failure(f),
            }),
        }
    }

    async fn add_admin(
        &self,
        admin: &AdminRecord,
        max: u32,
        events: &[AuditEvent],
    ) -> CatalogResult<AdminRecord> {
        let org = admin.org_id;
        if self.load(org).await?.is_none() {
            return Err(CatalogError::NotFound);
        }
        // A taken email is refused before a seat is taken (the insert below re-checks).
        if self.admin_by_email(&admin.email).await?.is_some() {
            return Err(CatalogError::Conflict(Taken::Email));
        }
        self.ensure_roster(org).await?;
        let admin_id = admin.id.to_string();
        // The seat: one conditional update decides the cap for every racing add.
        let seated = self
            .rosters
            .update_one(
                doc! { "_id": org.to_string(), "n": { "$lt": i64::from(max) }, "ids": { "$ne": &admin_id } },
                doc! { "$push": { "ids": &admin_id }, "$inc": { "n": 1_i64 } },
            )
            .await
            .map_err(|e| self.err(&e))?;
        if seated.matched_count == 0 {
            return Err(match self.load(org).await? {
                Some(_) => CatalogError::AdminLimit,
                None => CatalogError::NotFound,
            });
        }
        let mut admin = admin.clone();
        let inserted = async {
            admin.revision = self.bump_revision().await?;
            self.insert_admin_doc(&admin, &org.to_string(), events)
                .await?;
            CatalogResult::Ok(())
        };
        if let Err(e) = inserted.await {
            self.release_seat(org, admin.id).await?;
            return Err(e);
        }
        // An organization deleted meanwhile took its admins with it, maybe before this one
        // was inserted: remove it, or its email would stay taken.
        if self.load(org).await?.is_none() {
            self.admins
                .delete_one(doc! { "_id": &admin_id })
                .await
                .map_err(|e| self.err(&e))?;
            return Err(CatalogError::NotFound);
        }
        self.flush_one(&self.admins, &admin_id).await;
        Ok(admin)
    }

    async fn remove_admin(
        &self,
        org: OrgId,
        admin: AdminId,
        events: &[AuditEvent],
    ) -> CatalogResult<Option<AdminRecord>> {
        let (org_key, admin_id) = (org.to_string(), admin.to_string());
        let Some(found) = self
            .admins
            .find_one(doc! { "_id": &admin_id, "org_id": &org_key })
            .await
            .map_err(|e| self.err(&e))?
        else {
            return Ok(None);
        };
        let record: AdminRecord = from_field(&found, "record")?;
        self.ensure_roster(org).await?;
        // Giving the seat up only while another remains: of the last two admins removed at
        // once, exactly one goes. The removal is decided here: its events go with it.
        let mut update = doc! { "$pull": { "ids": &admin_id }, "$inc": { "n": -1_i64 } };
        push_outbox(&mut update, events)?;
        let unseated = self
            .rosters
            .update_one(
                doc! { "_id": &org_key, "ids": &admin_id, "n": { "$gt": 1_i64 } },
                update,
            )
            .await
            .map_err(|e| self.err(&e))?;
        if unseated.matched_count == 0 {
            let seated = self
                .rosters
                .find_one(doc! { "_id": &org_key, "ids": &admin_id })
                .await
                .map_err(|e| self.err(&e))?
                .is_some();
            if seated {
                return Err(CatalogError::LastAdmin);
            }
            // No seat: a removal of this admin ran (or was interrupted) past that step.
        }
        self.bump_revision().await?;
        // Decided: a crash here leaves the event in the roster's outbox, and whoever copies it
        // removes the admin's document first.
        crate::failpoints::failpoint("admin_removal_after_seat");
        self.delete_flushed(&self.admins, doc! { "_id": &admin_id, "org_id": &org_key })
            .await?;
        self.flush_one(&self.rosters, &org_key).await;
        Ok(Some(record))
    }

    async fn begin_rename(
        &self,
        id: OrgId,
        to_name: &OrgName,
        admin: Option<&AdminRecord>,
        events: &[AuditEvent],
    ) -> CatalogResult<OrgRecord> {
        let (mut org, rev) = self.load(id).await?.ok_or(CatalogError::NotFound)?;
        if org.state != OrgState::Active {
            return Err(CatalogError::NotFound);
        }
        if org.moving.is_some() {
            // A move holds the organization: it is cancelled (or finishes) first.
            return Err(CatalogError::Stale);
        }
        let to_norm = to_name.normalized();
        let to_coll = to_name.collection_name();
        org.state = OrgState::Renaming {
            to_name: to_name.clone(),
            to_collection: to_coll.clone(),
            admin: admin.map(|a| Box::new(a.clone())),
            target_cleared: false,
            events: events.to_vec(),
        };
        org.updated_at = Utc::now();
        // One atomic write reserves both keys (the unique indexes arbitrate races) and changes
        // the state, provided nothing changed since the read.
        let filter = doc! { "_id": id.to_string(), "rev": rev };
        let update = doc! {
            "$addToSet": { "names": to_norm.as_str(), "collections": to_coll.as_str() },
        };
        match self.update_org(filter, update, &mut org).await {
            Ok(true) => Ok(org),
            Ok(false) => Err(CatalogError::NotFound),
            Err(Failure::Duplicate { message, .. }) => Err(self
                .org_conflict(Some(id), &to_norm, to_coll.as_str(), &message)
                .await?),
            Err(f) => Err(failure(f)),
        }
    }

    async fn commit_rename(&self, id: OrgId) -> CatalogResult<OrgRecord> {
        let (mut org, rev) = self.load(id).await?.ok_or(CatalogError::NotFound)?;
        let OrgState::Renaming {
            to_name,
            to_collection,
            events,
            ..
        } = org.state.clone()
        else {
            return Err(CatalogError::NotFound);
        };
        let now = Utc::now();
        org.name = to_name;
        org.placement.collection = to_collection;
        org.placement.epoch += 1;
        org.placement.updated_at = now;
        org.updated_at = now;
        org.state = OrgState::Active;
        let (names, colls) = keys(&org);
        let filter = doc! { "_id": id.to_string(), "rev": rev };
        let mut update = doc! { "$set": { "names": names, "collections": colls } };
        push_outbox(&mut update, &events)?;
        if self.update_org_plain(filter, update, &mut org).await? {
            self.flush_one(&self.orgs, &id.to_string()).await;
            Ok(org)
        } else {
            Err(CatalogError::NotFound)
        }
    }

    async fn abort_rename(&self, id: OrgId) -> CatalogResult<OrgRecord> {
        let (mut org, rev) = self.load(id).await?.ok_or(CatalogError::NotFound)?;
        match &org.state {
            OrgState::Renaming {
                target_cleared: false,
                ..
            } => {}
            // Documents may have moved: the rename can only be completed now.
            OrgState::Renaming { .. } => return Err(CatalogError::Stale),
            _ => return Err(CatalogError::NotFound),
        }
        org.state = OrgState::Active;
        org.updated_at = Utc::now();
        let (names, colls) = keys(&org);
        let filter = doc! { "_id": id.to_string(), "rev": rev };
        let update = doc! { "$set": { "names": names, "collections": colls } };
        if self.update_org_plain(filter, update, &mut org).await? {
            Ok(org)
        } else {
            Err(CatalogError::NotFound)
        }
    }

    async fn delete_org(&self, id: OrgId) -> CatalogResult<Option<OrgRecord>> {
        let Some((mut org, mut rev)) = self.load(id).await? else {
            return Ok(None);
        };
        if org.moving.is_some() {
            // A move holds the organization: it is cancelled (or finishes) first. (Once the
            // drops below are recorded the delete is decided; a move marked after that finds
            // its organization gone and ends.)
            return Err(CatalogError::Stale);
        }
        for _ in 0..DELETE_ATTEMPTS {
            // Decided from here on: the drops name the org, so recovery finishes the removal.
            self.record_drops(&org).await?;
            if self.remove_org(&org, Some(rev)).await? {
                return Ok(Some(org));
            }
            match self.load(id).await? {
                // Someone else (recovery) finished it.
                None => return Ok(Some(org)),
                // Changed under us (e.g. a rename began): record its drops too and retry.
                Some((o, r)) => (org, rev) = (o, r),
            }
        }
        Err(backend_msg(
            "organization kept changing while being deleted; retry",
        ))
    }

    async fn tombstone_org(
        &self,
        id: OrgId,
        deleted_at: chrono::DateTime<Utc>,
        restorable_until: chrono::DateTime<Utc>,
        size_bytes: Option<u64>,
        events: &[AuditEvent],
    ) -> CatalogResult<Option<Tombstone>> {
        let Some((org, rev)) = self.load(id).await? else {
            return Ok(None);
        };
        if org.moving.is_some() || org.state != OrgState::Active {
            return Err(CatalogError::Stale);
        }
        let tomb = Tombstone {
            collection: crate::domain::CollectionName::tombstone(id),
            admins: self.admins_of_org(id).await?,
            org,
            deleted_at,
            restorable_until,
            size_bytes,
            phase: TombstonePhase::Deleting,
            phase_at: Utc::now(),
        };
        // Its events wait in the tombstone's outbox, copied once it is kept (a delete rolled
        // back takes them with it).
        self.insert_tomb(&tomb, events).await?;
        // Decided from here on: the stash names the org.
        let stash = tomb.stash();
        let key = stash.key();
        self.pending
            .replace_one(
                doc! { "_id": &key },
                doc! { "_id": &key, "org_id": id.to_string(), "drop": to_doc(&stash)? },
            )
            .upsert(true)
            .await
            .map_err(|e| self.err(&e))?;
        if !self.finish_tombstone(tomb.clone(), Some(rev)).await? {
            return Err(CatalogError::Stale);
        }
        self.flush_one(&self.tombs, &id.to_string()).await;
        Ok(self.load_tomb(id).await?.or(Some(tomb)))
    }

    async fn tombstone(&self, id: OrgId) -> CatalogResult<Option<Tombstone>> {
        self.load_tomb(id).await
    }

    async fn tombstones(
        &self,
        after: Option<OrgId>,
        limit: usize,
    ) -> CatalogResult<Vec<Tombstone>> {
        let mut filter = doc! { "phase": phase_name(TombstonePhase::Kept) };
        if let Some(after) = after {
            filter.insert("_id", doc! { "$gt": after.to_string() });
        }
        self.records(&self.tombs, filter, doc! { "_id": 1 }, Some(limit))
            .await
    }

    async fn restore_org(
        &self,
        id: OrgId,
        name: &OrgName,
        events: &[AuditEvent],
    ) -> CatalogResult<OrgRecord> {
        let tomb = self.load_tomb(id).await?.ok_or(CatalogError::NotFound)?;
        if tomb.phase != TombstonePhase::Kept || self.stash_pending(&tomb).await? {
            return Err(CatalogError::Stale);
        }
        // Taken keys are refused before anything is written (the inserts re-check), the name
        // first, as in the embedded catalog.
        let taken = |filter: Document| async move {
            self.orgs
                .find_one(filter)
                .projection(doc! { "_id": 1 })
                .await
                .map(|d| d.is_some())
                .map_err(|e| self.err(&e))
        };
        if taken(doc! { "names": name.normalized().as_str() }).await? {
            return Err(CatalogError::Conflict(Taken::OrgName));
        }
        if taken(doc! { "collections": name.collection_name().as_str() }).await? {
            return Err(CatalogError::Conflict(Taken::Collection));
        }
        for a in &tomb.admins {
            if self.admin_by_email(&a.email).await?.is_some() {
                return Err(CatalogError::Conflict(Taken::Email));
            }
        }
        let tomb = self
            .set_phase(id, TombstonePhase::Kept, TombstonePhase::Restoring, &[])
            .await?
            .ok_or(CatalogError::Stale)?;
        let norm = name.normalized();
        let to_coll = name.collection_name();
        let mut org = tomb.org.clone();
        org.name = name.clone();
        org.placement.collection = tomb.collection.clone();
        org.state = OrgState::Renaming {
            to_name: name.clone(),
            to_collection: to_coll.clone(),
            admin: None,
            target_cleared: false,
            events: events.to_vec(),
        };
        org.moving = None;
        org.updated_at = Utc::now();
        org.revision = self.bump_revision().await?;
        let (names, colls) = keys(&org);
        let org_doc = doc! {
            "_id": id.to_string(),
            "names": names,
            "collections": colls,
            "rev": org.revision as i64,
            "active": false,
            "name": norm.as_str(),
            "record": to_doc(&org)?,
        };
        if let Err(e) = self.orgs.insert_one(org_doc).await {
            let err = match self.classify(&e) {
                Failure::Duplicate { message, .. } => {
                    self.org_conflict(Some(id), &norm, to_coll.as_str(), &message)
                        .await?
                }
                f => failure(f),
            };
            self.set_phase(id, TombstonePhase::Restoring, TombstonePhase::Kept, &[])
                .await?;
            return Err(err);
        }
        self.complete_restore(&tomb).await?;
        Ok(org)
    }

    async fn purge_tombstone(
        &self,
        id: OrgId,
        events: &[AuditEvent],
    ) -> CatalogResult<Option<Tombstone>> {
        let Some(tomb) = self.load_tomb(id).await? else {
            return Ok(None);
        };
        if tomb.phase != TombstonePhase::Kept {
            return Ok(None);
        }
        if self.stash_pending(&tomb).await? {
            return Err(CatalogError::Stale);
        }
        let Some(tomb) = self
            .set_phase(id, TombstonePhase::Kept, TombstonePhase::Purging, events)
            .await?
        else {
            return Ok(None);
        };
        self.complete_purge(&tomb).await?;
        Ok(Some(tomb))
    }

    async fn settle_tombstones(&self, min_age: std::time::Duration) -> CatalogResult<usize> {
        let cutoff = Utc::now() - chrono::Duration::from_std(min_age).unwrap_or_default();
        let docs: Vec<Document> = self
            .tombs
            .find(doc! { "phase": { "$ne": phase_name(TombstonePhase::Kept) } })
            .limit(1000)
            .await
            .map_err(|e| self.err(&e))?
            .try_collect()
            .await
            .map_err(|e| self.err(&e))?;
        let mut settled = 0;
        for d in docs {
            let tomb: Tombstone = match from_field(&d, "record") {
                Ok(t) => t,
                Err(e) => {
                    tracing::warn!(error = %e, "skipping a malformed tombstone");
                    continue;
                }
            };
            if tomb.phase_at > cutoff {
                continue;
            }
            let id = tomb.org.id;
            let done = match tomb.phase {
                TombstonePhase::Kept => Ok(()),
                TombstonePhase::Deleting => {
                    let stash = self.stash_pending(&tomb).await?;
                    let org = self.load(id).await?;
                    match (stash, org) {
                        // The stash was never recorded: the delete was not decided.
                        (false, Some(_)) => self.undo_tombstone(&tomb).await,
                        _ => {
                            tracing::warn!(org_id = %id, "finishing an interrupted soft delete");
                            self.finish_tombstone(tomb, None).await.map(|_| ())
                        }
                    }
                }
                TombstonePhase::Restoring => match self.load(id).await? {
                    Some(_) => {
                        tracing::warn!(org_id = %id, "finishing an interrupted restore");
                        match self.complete_restore(&tomb).await {
                            Err(CatalogError::Conflict(_)) => Ok(()),
                            other => other,
                        }
                    }
                    None => self
                        .set_phase(id, TombstonePhase::Restoring, TombstonePhase::Kept, &[])
                        .await
                        .map(|_| ()),
                },
                TombstonePhase::Purging => {
                    tracing::warn!(org_id = %id, "finishing an interrupted purge");
                    self.complete_purge(&tomb).await
                }
            };
            match done {
                Ok(()) => settled += 1,
                Err(e) => tracing::warn!(org_id = %id, error = %e, "cannot settle a tombstone yet"),
            }
        }
        Ok(settled)
    }

    async fn pending_drops(&self) -> CatalogResult<Vec<PendingDrop>> {
        let docs = self.all(&self.pending).await?;
        let mut out = Vec::with_capacity(docs.len());
        let mut finished = std::collections::HashSet::new();
        let mut unfinished = std::collections::HashSet::new();
        for d in &docs {
            // A drop whose org is still there is an interrupted delete: finish it first, so
            // the collection is never dropped under a live organization. One that cannot be
            // finished now is left out (and retried later); it never blocks the others.
            let stash = d
                .get_document("drop")
                .is_ok_and(|dr| dr.get_str("stash_to").is_ok());
            if let (true, Ok(org_id)) = (stash, d.get_str("org_id")) {
                // A soft delete's stash runs only once its organization is gone (the delete
                // is finished, or rolled back, by `settle_tombstones`).
                let live = match org_id.parse::<OrgId>() {
                    Ok(id) => self.load(id).await.map(|o| o.is_some()).unwrap_or(true),
                    Err(_) => false,
                };
                if live {
                    continue;
                }
            } else if let Ok(org_id) = d.get_str("org_id") {
                if finished.insert(org_id.to_owned()) {
                    if let Ok(id) = org_id.parse::<OrgId>() {
                        let done = async {
                            if let Some((org, _)) = self.load(id).await? {
                                tracing::warn!(org_id = %id, "finishing an interrupted organization delete");
                                self.record_drops(&org).await?;
                                self.remove_org(&org, None).await?;
                            }
                            CatalogResult::Ok(())
                        };
                        if let Err(e) = done.await {
                            tracing::warn!(org_id = %id, error = %e, "cannot finish an interrupted delete yet");
                            unfinished.insert(org_id.to_owned());
                        }
                    }
                }
                if unfinished.contains(org_id) {
                    continue;
                }
            }
            match from_field(d, "drop") {
                Ok(drop) => out.push(drop),
                Err(e) => tracing::warn!(error = %e, "skipping a malformed pending drop"),
            }
        }
        Ok(out)
    }

    async fn clear_pending_drop(&self, drop: &PendingDrop) -> CatalogResult<()> {
        self.pending
            .delete_one(doc! { "_id": drop.key() })
            .await
            .map_err(|e| self.err(&e))?;
        Ok(())
    }

    async fn collection_counts(&self) -> CatalogResult<Vec<(ShardId, DatabaseName, u64)>> {
        let docs = self.all(&self.counts).await?;
        let mut out = Vec::with_capacity(docs.len());
        for d in &docs {
            let (Ok(shard), Ok(db)) = (d.get_str("shard"), d.get_str("database")) else {
                continue;
            };
            let Ok(shard) = ShardId::parse(shard) else {
                continue;
            };
            let db: DatabaseName = serde_json::from_value(serde_json::Value::String(db.into()))
                .map_err(|e| backend_msg(e.to_string()))?;
            out.push((shard, db, int(d, "count").max(0) as u64));
        }
        Ok(out)
    }

    async fn set_collection_count(
        &self,
        shard: &ShardId,
        database: &DatabaseName,
        count: u64,
    ) -> CatalogResult<()> {
        let count = i64::try_from(count).map_err(|_| backend_msg("count out of range"))?;
        let update = doc! { "$set": {
            "shard": shard.as_str(),
            "database": database.as_str(),
            "count": count,
        } };
        self.upsert_count(&count_key(shard, database), update).await
    }

    async fn get_setting(&self, key: &str) -> CatalogResult<Option<serde_json::Value>> {
        let found = self
            .settings
            .find_one(doc! { "_id": key })
            .await
            .map_err(|e| self.err(&e))?;
        let Some(d) = found else { return Ok(None) };
        let text = d
            .get_str("json")
            .map_err(|_| backend_msg(format!("setting {key:?} is malformed")))?;
        serde_json::from_str(text)
            .map(Some)
            .map_err(|e| backend_msg(e.to_string()))
    }

    async fn put_setting(
        &self,
        key: &str,
        value: &serde_json::Value,
        events: &[AuditEvent],
    ) -> CatalogResult<()> {
        let text = serde_json::to_string(value).map_err(|e| backend_msg(e.to_string()))?;
        let mut update = doc! { "$set": { "json": text } };
        push_outbox(&mut update, events)?;
        self.settings
            .update_one(doc! { "_id": key }, update)
            .upsert(true)
            .await
            .map_err(|e| self.err(&e))?;
        if !events.is_empty() {
            self.flush_one(&self.settings, key).await;
        }
        Ok(())
    }

    async fn put_setting_if(
        &self,
        key: &str,
        expected: Option<&serde_json::Value>,
        value: &serde_json::Value,
        events: &[AuditEvent],
    ) -> CatalogResult<bool> {
        let text = |v: &serde_json::Value| {
            serde_json::to_string(v).map_err(|e| backend_msg(e.to_string()))
        };
        // The stored text is this serialization of the value read (order-preserving maps,
        // exact floats), so comparing texts compares values.
        let filter = match expected {
            Some(v) => doc! { "_id": key, "json": text(v)? },
            None => doc! { "_id": key, "json": { "$exists": false } },
        };
        let mut update = doc! { "$set": { "json": text(value)? } };
        push_outbox(&mut update, events)?;
        match self
            .settings
            .update_one(filter, update)
            .upsert(expected.is_none())
            .await
        {
            Ok(r) if r.matched_count == 1 || r.upserted_id.is_some() => {
                if !events.is_empty() {
                    self.flush_one(&self.settings, key).await;
                }
                Ok(true)
            }
            Ok(_) => Ok(false),
            // An upsert that met a value stored meanwhile.
            Err(e) => match self.classify(&e) {
                Failure::Duplicate { .. } => Ok(false),
                f => Err(failure(f)),
            },
        }
    }

    async fn add_pending_drop(&self, drop: &PendingDrop) -> CatalogResult<()> {
        let key = drop.key();
        self.pending
            .replace_one(
                doc! { "_id": &key },
                doc! { "_id": &key, "drop": to_doc(drop)? },
            )
            .upsert(true)
            .await
            .map_err(|e| self.err(&e))?;
        Ok(())
    }

    async fn adjust_collection_count(
        &self,
        shard: &ShardId,
        database: &DatabaseName,
        delta: i64,
    ) -> CatalogResult<()> {
        self.add_count(shard, database, delta).await
    }

    async fn put_move(&self, mv: &MoveRecord) -> CatalogResult<()> {
        let text = serde_json::to_string(mv).map_err(|e| backend_msg(e.to_string()))?;
        self.moves
            .replace_one(
                doc! { "_id": &mv.move_id },
                doc! { "_id": &mv.move_id, "created_at": mv.created_at.to_rfc3339(), "json": text },
            )
            .upsert(true)
            .await
            .map_err(|e| self.err(&e))?;
        Ok(())
    }

    async fn get_move(&self, id: &str) -> CatalogResult<Option<MoveRecord>> {
        let found = self
            .moves
            .find_one(doc! { "_id": id })
            .await
            .map_err(|e| self.err(&e))?;
        found.map(|d| move_of(&d)).transpose()
    }

    async fn list_moves(&self) -> CatalogResult<Vec<MoveRecord>> {
        let mut all = self
            .all(&self.moves)
            .await?
            .iter()
            .map(move_of)
            .collect::<CatalogResult<Vec<_>>>()?;
        all.sort_by(|a, b| (a.created_at, &a.move_id).cmp(&(b.created_at, &b.move_id)));
        Ok(all)
    }

    async fn log_move_changes(&self, move_id: &str, doc_ids: &[String]) -> CatalogResult<()> {
        if doc_ids.is_empty() {
            return Ok(());
        }
        let docs = doc_ids
            .iter()
            .map(|id| doc! { "_id": bson::oid::ObjectId::new(), "move": move_id, "doc": id });
        match self.move_changes.insert_many(docs).ordered(false).await {
            Ok(_) => Ok(()),
            // The `_id`s are fresh ObjectIds made above, so a duplicate can only be an entry
            // of this very call: a write the driver retried after losing the first reply
            // (seen on a slow server). Unordered, every other entry went in as well.
            Err(e) if only_duplicates(&e) => Ok(()),
            Err(e) => Err(self.err(&e)),
        }
    }

    async fn move_changes(&self, move_id: &str, limit: usize) -> CatalogResult<Vec<MoveChange>> {
        let docs: Vec<Document> = self
            .move_changes
            .find(doc! { "move": move_id })
            .sort(doc! { "_id": 1 })
            .limit(limit as i64)
            .await
            .map_err(|e| self.err(&e))?
            .try_collect()
            .await
            .map_err(|e| self.err(&e))?;
        Ok(docs
            .iter()
            .filter_map(|d| {
                Some(MoveChange {
                    key: d.get_object_id("_id").ok()?.to_hex(),
                    doc_id: d.get_str("doc").ok()?.to_owned(),
                })
            })
            .collect())
    }

    async fn clear_move_changes(&self, move_id: &str, keys: &[String]) -> CatalogResult<()> {
        let ids: Vec<Bson> = keys
            .iter()
            .filter_map(|k| bson::oid::ObjectId::parse_str(k).ok())
            .map(Bson::ObjectId)
            .collect();
        for chunk in ids.chunks(1000) {
            self.move_changes
                .delete_many(doc! { "move": move_id, "_id": { "$in": chunk.to_vec() } })
                .await
                .map_err(|e| self.err(&e))?;
        }
        Ok(())
    }

    async fn current_revision(&self) -> CatalogResult<u64> {
        let d = self
            .counters
            .find_one(doc! { "_id": REVISION })
            .await
            .map_err(|e| self.err(&e))?;
        Ok(d.map(|d| int(&d, "value").max(0) as u64).unwrap_or(0))
    }

    async fn next_revision(&self) -> CatalogResult<u64> {
        self.bump_revision().await
    }

    async fn heartbeat(&self, instance: &InstanceInfo) -> CatalogResult<()> {
        // `seen_at` is the server's clock, so leases never depend on instances' clocks.
        self.instances
            .update_one(
                doc! { "_id": &instance.id },
                doc! { "$set": { "info": to_doc(instance)? }, "$currentDate": { "seen_at": true } },
            )
            .upsert(true)
            .await
            .map_err(|e| self.err(&e))?;
        Ok(())
    }

    async fn instances(&self) -> CatalogResult<Vec<InstanceInfo>> {
        let docs = self.all(&self.instances).await?;
        docs.iter()
            .map(|d| {
                let mut info: InstanceInfo = from_field(d, "info")?;
                if let Ok(seen) = d.get_datetime("seen_at") {
                    info.last_seen = seen.to_chrono();
                }
                Ok(info)
            })
            .collect()
    }

    async fn now(&self) -> CatalogResult<chrono::DateTime<Utc>> {
        let hello = self
            .db
            .run_command(doc! { "hello": 1 })
            .await
            .map_err(|e| self.err(&e))?;
        Ok(hello
            .get_datetime("localTime")
            .map(|t| t.to_chrono())
            .unwrap_or_else(|_| Utc::now()))
    }

    async fn remove_instance(&self, id: &str) -> CatalogResult<()> {
        self.instances
            .delete_one(doc! { "_id": id })
            .await
            .map_err(|e| self.err(&e))?;
        Ok(())
    }

    async fn acquire_lease(
        &self,
        name: &str,
        holder: &str,
        ttl: std::time::Duration,
    ) -> CatalogResult<Option<String>> {
        let now = bson::DateTime::from_chrono(self.now().await?);
        let expires = bson::DateTime::from_millis(now.timestamp_millis() + ttl.as_millis() as i64);
        // Matches only a lease this holder has or one that expired; otherwise the upsert
        // collides with the live lease on `_id`.
        let filter =
            doc! { "_id": name, "$or": [ { "holder": holder }, { "expires_at": { "$lt": now } } ] };
        let update = doc! { "$set": { "holder": holder, "expires_at": expires } };
        match self.leases.update_one(filter, update).upsert(true).await {
            Ok(_) => Ok(None),
            Err(e) => match self.classify(&e) {
                Failure::Duplicate { .. } => {
                    let current = self
                        .leases
                        .find_one(doc! { "_id": name })
                        .await
                        .map_err(|e| self.err(&e))?;
                    Ok(Some(
                        current
                            .and_then(|d| d.get_str("holder").ok().map(str::to_owned))
                            .unwrap_or_default(),
                    ))
                }
                f => Err(failure(f)),
            },
        }
    }

    async fn release_lease(&self, name: &str, holder: &str) -> CatalogResult<()> {
        self.leases
            .delete_one(doc! { "_id": name, "holder": holder })
            .await
            .map_err(|e| self.err(&e))?;
        Ok(())
    }

    async fn append_event(&self, event: &AuditEvent) -> CatalogResult<()> {
        self.events
            .insert_one(event_doc(event)?)
            .await
            .map_err(|e| self.err(&e))?;
        Ok(())
    }

    async fn expire_events_after(&self, retention: std::time::Duration) -> CatalogResult<()> {
        let seconds = retention.as_secs();
        let ttl = IndexModel::builder()
            .keys(doc! { "at": 1 })
            .options(
                IndexOptions::builder()
                    .name(EVENT_TTL_INDEX.to_owned())
                    .expire_after(retention)
                    .build(),
            )
            .build();
        match self.events.create_index(ttl).await {
            Ok(_) => Ok(()),
            // It exists with another retention (85 IndexOptionsConflict, 86
            // IndexKeySpecsConflict): change it in place. Anything else is an error.
            Err(e) if !matches!(self.classify(&e).code(), Some(85 | 86)) => Err(self.err(&e)),
            Err(_) => {
                self.db
                    .run_command(doc! {
                        "collMod": self.events.name(),
                        "index": { "name": EVENT_TTL_INDEX, "expireAfterSeconds": seconds as i64 },
                    })
                    .await
                    .map_err(|e| self.err(&e))?;
                Ok(())
            }
        }
    }

    async fn flush_events(&self) -> CatalogResult<usize> {
        let mut written = 0;
        for coll in self.outbox_holders() {
            // A tombstone still `deleting` may yet be rolled back: its events wait.
            let filter = if std::ptr::eq(coll, &self.tombs) {
                doc! { "phase": { "$ne": phase_name(TombstonePhase::Deleting) } }
            } else {
                doc! {}
            };
            written += self.flush_outbox(coll, filter).await?;
        }
        Ok(written)
    }

    async fn events(&self, query: &EventQuery) -> CatalogResult<EventPage> {
        // Events of changes made but not yet copied (an instance died in between) first.
        if let Err(e) = self.flush_events().await {
            tracing::warn!(error = %e, "audit events: outboxes not copied before a read");
        }
        let mut id = doc! {};
        if let Some(since) = query.since {
            id.insert("$gte", id_floor(since));
        }
        if let Some(after) = &query.after {
            id.insert("$gt", after.as_str());
        }
        // Nothing at or after an event still waiting in an outbox (a delete not yet decided,
        // a copy in flight): a reader's cursor never passes an event still to come.
        if let Some(pending) = self.oldest_pending_event().await? {
            id.insert("$lt", pending);
        }
        let mut filter = doc! {};
        if !id.is_empty() {
            filter.insert("_id", id);
        }
        if let Some(org) = query.organization {
            filter.insert("org", org.to_string());
        }
        if let Some(kind) = query.kind {
            filter.insert("type", kind.as_str());
        }
        if let Some(until) = query.until {
            filter.insert("at", doc! { "$lte": bson::DateTime::from_chrono(until) });
        }
        let docs: Vec<Document> = self
            .events
            .find(filter)
            .sort(doc! { "_id": 1 })
            .limit(i64::try_from(query.limit.saturating_add(1)).unwrap_or(i64::MAX))
            .await
            .map_err(|e| self.err(&e))?
            .try_collect()
            .await
            .map_err(|e| self.err(&e))?;
        let mut events: Vec<AuditEvent> = docs
            .iter()
            .map(|d| from_field(d, "record"))
            .collect::<CatalogResult<_>>()?;
        let mut page = EventPage::default();
        if events.len() > query.limit {
            events.truncate(query.limit);
            page.next_after = events.last().map(|e| e.id.clone());
        }
        page.events = events;
        Ok(page)
    }

    async fn purge_events(&self, before: chrono::DateTime<Utc>) -> CatalogResult<u64> {
        let r = self
            .events
            .delete_many(doc! { "_id": { "$lt": id_floor(before) } })
            .await
            .map_err(|e| self.err(&e))?;
        Ok(r.deleted_count)
    }

    async fn mark_written(&self, org: OrgId, at: chrono::DateTime<Utc>) -> CatalogResult<()> {
        self.write_marks
            .update_one(
                doc! { "_id": org.to_string() },
                doc! { "$max": { "at": bson::DateTime::from_chrono(at) } },
            )
            .upsert(true)
            .await
            .map_err(|e| self.err(&e))?;
        Ok(())
    }

    async fn last_written(&self, org: OrgId) -> CatalogResult<Option<chrono::DateTime<Utc>>> {
        let found = self
            .write_marks
            .find_one(doc! { "_id": org.to_string() })
            .await
            .map_err(|e| self.err(&e))?;
        Ok(found
            .and_then(|d| d.get_datetime("at").ok().copied())
            .map(|at| at.to_chrono()))
    }

    async fn watch(&self, resume: Option<FeedToken>) -> CatalogResult<Option<ChangeStream>> {
        // Only what [`change_of`] maps to a cache change crosses the wire: every instance
        // follows this stream, and the rest (audit events, write marks, a move's change log:
        // two entries per tenant write while it moves) is most of the catalog's writes. Other
        // kinds of events (drops, invalidations) still pass.
        let uncached = doc! {
            "operationType": { "$in": ["insert", "update", "replace", "delete"] },
            "ns.coll": { "$nin": FOLLOWED_COLLECTIONS.to_vec() },
        };
        let mut watch = self
            .db
            .watch()
            .pipeline([doc! { "$match": { "$nor": [uncached] } }]);
        if let Some(FeedToken(token)) = resume {
            let token: mongodb::change_stream::event::ResumeToken =
                bson::from_bson(token).map_err(|e| backend_msg(e.to_string()))?;
            watch = watch.resume_after(token);
        }
        let stream = watch.await.map_err(|e| self.err(&e))?;
        Ok(Some(Box::new(MongoFeed {
            stream,
            secrets: self.secrets.clone(),
        })))
    }
}

fn move_of(d: &Document) -> CatalogResult<MoveRecord> {
    let text = d
        .get_str("json")
        .map_err(|_| backend_msg("a move record is malformed"))?;
    serde_json::from_str(text).map_err(|e| backend_msg(e.to_string()))
}

/// The least time an empty poll of the change stream takes.
const FEED_POLL_FLOOR: std::time::Duration = std::time::Duration::from_millis(100);

/// A change stream on the catalog database.
struct MongoFeed {
    stream: mongodb::change_stream::ChangeStream<
        mongodb::change_stream::event::ChangeStreamEvent<Document>,
    >,
    secrets: Secrets,
}

#[async_trait]
impl ChangeFeed for MongoFeed {
    async fn next_change(&mut self) -> CatalogResult<Option<CatalogChange>> {
        // One poll at a time (the server holds each for up to a second), so the resume token
        // follows the server's position even while nothing followed changes: a stale one
        // could point past the oplog's history by the time the stream is reopened.
        let started = std::time::Instant::now();
        match self.stream.next_if_any().await {
            Ok(Some(event)) => Ok(Some(change_of(&event))),
            Ok(None) if !self.stream.is_alive() => Ok(None),
            Ok(None) => {
                // A server that answers an empty poll at once is not left to spin.
                if let Some(rest) = FEED_POLL_FLOOR.checked_sub(started.elapsed()) {
                    tokio::time::sleep(rest).await;
                }
                Ok(Some(CatalogChange::Idle))
            }
            Err(e) => Err(failure(classify(&e, &self.secrets))),
        }
    }

    fn resume_token(&self) -> Option<FeedToken> {
        self.stream
            .resume_token()
            .and_then(|t| bson::to_bson(&t).ok())
            .map(FeedToken)
    }
}

/// The collections whose changes [`change_of`] maps to a cache change.
const FOLLOWED_COLLECTIONS: [&str; 4] = ["organizations", "admins", "settings", "counters"];

/// What a change-stream event means for the gateway's caches.
fn change_of(event: &mongodb::change_stream::event::ChangeStreamEvent<Document>) -> CatalogChange {
    let coll = event
        .ns
        .as_ref()
        .and_then(|ns| ns.coll.as_deref())
        .unwrap_or("");
    let id = event
        .document_key
        .as_ref()
        .and_then(|k| k.get_str("_id").ok());
    match (coll, id) {
        ("organizations", Some(id)) => id
            .parse()
            .map(CatalogChange::Org)
            .unwrap_or(CatalogChange::Other),
        ("admins", Some(id)) => id
            .parse()
            .map(CatalogChange::Admin)
            .unwrap_or(CatalogChange::Other),
        ("settings", Some(key)) => CatalogChange::Setting(key.to_owned()),
        ("counters", Some(REVISION)) => {
            let value = event
                .update_description
                .as_ref()
                .map(|u| int(&u.updated_fields, "value"))
                .or_else(|| event.full_document.as_ref().map(|d| int(d, "value")))
                .unwrap_or(0);
            CatalogChange::Revision(value.max(0) as u64)
        }
        _ => CatalogChange::Other,
    }
}
