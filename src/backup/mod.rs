//! Backup and restore (`org-gateway backup`, `org-gateway restore`).
//!
//! A backup is a directory in mongodump's layout: `<database>/<collection>.bson` (the tenant's
//! documents, converted to BSON as the MongoDB store writes them: string `_id`s) and
//! `<collection>.metadata.json` (its indexes) for every organization's collection on every
//! shard, embedded ones included; the catalog's part (organizations, admins with their
//! password hashes, rate-limit overrides, audit events) in the database [`CATALOG_DATABASE`]; and
//! `manifest.json`, written last. It is built under `<out>.partial` and renamed to `<out>` once
//! complete, so an interrupted backup never looks like one. Documents stream a page at a time.
//!
//! Restore loads organizations back into a gateway's catalog and shards, each on its own: an
//! organization whose id, name, admin id or email is taken, or whose collection exists, is
//! refused before anything is written for it; otherwise it is recorded as `creating` (what a
//! crash leaves is rolled back at the next start, as for an interrupted create), its
//! documents and indexes are loaded, its other admins added, and it is activated.
//!
//! [`WriteMarks`] records when each organization was last written, for `backup --since`.

mod files;
mod marks;

pub use marks::WriteMarks;

use crate::app::{open_catalog_and_shards, RATE_OVERRIDES_SETTING};
use crate::catalog::{
    Actor, AdminRecord, AuditEvent, Catalog, CatalogError, EventType, OrgPages, OrgRecord,
    OrgState, Placement, Taken,
};
use crate::config::{Config, StoreKind};
use crate::domain::{IndexKeys, IndexName, OrgName};
use crate::placement::{CapacityCounts, ShardSet};
use crate::store::embedded::IN_USE;
use crate::store::mongo::{document_to_json, json_to_document};
use crate::store::{Document, IndexSpec, IndexState, Namespace, StoreError};
use anyhow::Context;
use chrono::{DateTime, Utc};
use files::{BsonReader, BsonWriter, IndexDefinition};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The database directory holding the catalog's part of a backup. Not the MongoDB catalog's
/// default database name (`org_gateway_catalog`), so a mongorestore of a whole backup never
/// writes into a live catalog.
pub const CATALOG_DATABASE: &str = "org_gateway_backup_catalog";
/// Name of the manifest file.
pub const MANIFEST: &str = "manifest.json";
/// Format of the directory.
pub const FORMAT: &str = "org-gateway-backup";
/// Version of the format.
pub const FORMAT_VERSION: u64 = 1;

/// Documents read or written per store call.
const BATCH: usize = 1_000;
/// Bytes (as JSON) of one restore batch at most.
const BATCH_BYTES: usize = 8 << 20;
/// How often a restore in progress refreshes its `creating` record, so a running gateway's
/// recovery (which rolls back creates older than its grace period) leaves it alone.
const KEEPALIVE: Duration = Duration::from_secs(5);

/// What `backup` does.
#[derive(Debug, Clone)]
pub struct BackupOptions {
    /// The directory to create.
    pub out: PathBuf,
    /// Only this organization.
    pub organization: Option<String>,
    /// Only organizations written since then.
    pub since: Option<DateTime<Utc>>,
}

/// What a backup wrote.
#[derive(Debug, Clone, Default)]
pub struct BackupSummary {
    /// Organizations written.
    pub organizations: u64,
    /// Their documents.
    pub documents: u64,
    /// Organizations left out because they were not written since `--since`.
    pub unchanged: u64,
    /// Organizations left out because a create or rename was in progress (by name).
    pub skipped: Vec<String>,
}

/// What `restore` does.
#[derive(Debug, Clone)]
pub struct RestoreOptions {
    /// The backup directory.
    pub from: PathBuf,
    /// Only this organization.
    pub organization: Option<String>,
    /// Skip (rather than refuse) organizations whose id the target already has: restoring
    /// the newest backup first and older ones after it then restores each organization from
    /// the newest backup holding it.
    pub skip_existing: bool,
}

/// What a restore did.
#[derive(Debug, Clone, Default)]
pub struct RestoreSummary {
    /// Organizations restored (by name).
    pub restored: Vec<String>,
    /// Their documents.
    pub documents: u64,
    /// Organizations refused or failed, with why (nothing of them is left written).
    pub failed: Vec<(String, String)>,
    /// Organizations skipped because the target has their id (`skip_existing`).
    pub skipped: Vec<String>,
}

/// Opens the catalog and the shards as the server does, turning a locked embedded file into
/// the message an operator needs.
async fn open(config: &Config) -> anyhow::Result<(Arc<dyn Catalog>, ShardSet)> {
    match open_catalog_and_shards(config).await {
        Ok(opened) => Ok(opened),
        Err(e) if format!("{e:#}").contains(IN_USE) => {
            let online = match config.catalog.kind {
                StoreKind::Embedded => {
                    "stop it, or keep the catalog and shards on MongoDB to back up and restore online"
                }
                StoreKind::Mongodb => {
                    "an embedded shard belongs to a running gateway: stop it, or move its \
                     tenants to a MongoDB shard to back up and restore online"
                }
            };
            anyhow::bail!(
                "the data directory {} is in use by a running gateway: {online}",
                config.data_dir.display()
            )
        }
        Err(e) => Err(e),
    }
}

fn tenant_namespace(org: &OrgRecord) -> Namespace {
    Namespace {
        database: org.placement.database.clone(),
        collection: org.placement.collection.clone(),
    }
}

/// A JSON-serializable record as a BSON document with this `_id`.
fn record_document(id: String, record: &impl serde::Serialize) -> anyhow::Result<bson::Document> {
    let Value::Object(mut map) = serde_json::to_value(record)? else {
        anyhow::bail!("a catalog record is not an object");
    };
    map.insert("_id".into(), Value::String(id));
    json_to_document(&map).map_err(anyhow::Error::msg)
}

/// The record a [`record_document`] holds.
fn record_from<T: serde::de::DeserializeOwned>(doc: bson::Document) -> anyhow::Result<T> {
    let mut map = document_to_json(doc);
    map.remove("_id");
    Ok(serde_json::from_value(Value::Object(map))?)
}

/// Writes a backup of the deployment described by `config`.
pub async fn backup(config: &Config, opts: &BackupOptions) -> anyhow::Result<BackupSummary> {
    if opts.out.exists() {
        anyhow::bail!(
            "{} already exists: a backup goes into a new directory",
            opts.out.display()
        );
    }
    let partial = partial_path(&opts.out);
    if partial.exists() {
        anyhow::bail!(
            "{} exists (an interrupted backup?): remove it first",
            partial.display()
        );
    }
    let started = Utc::now();
    let (catalog, shards) = open(config).await?;
    // Resolve the one organization before creating anything.
    if let Some(name) = &opts.organization {
        find_org(catalog.as_ref(), name).await?;
    }
    create_private_dir(&partial)?;
    let written = write_backup(config, opts, &partial, started, catalog.as_ref(), &shards).await;
    if written.is_err() {
        // This run created it: a failed backup leaves nothing that could pass for one.
        let _ = std::fs::remove_dir_all(&partial);
    }
    written
}

/// Writes the backup into `partial` and renames it to `opts.out` once complete.
async fn write_backup(
    config: &Config,
    opts: &BackupOptions,
    partial: &Path,
    started: DateTime<Utc>,
    catalog: &dyn Catalog,
    shards: &ShardSet,
) -> anyhow::Result<BackupSummary> {
    let only = match &opts.organization {
        Some(name) => {
            let org = find_org(catalog, name).await?;
            if org.state != OrgState::Active {
                anyhow::bail!(
                    "organization {name:?} is being created or renamed: try again in a moment"
                );
            }
            Some(org)
        }
        None => None,
    };
    std::fs::create_dir_all(partial.join(CATALOG_DATABASE))
        .with_context(|| format!("cannot create {}", partial.display()))?;
    // A write that began at `w` left a mark at or after `w - interval`; one still running at
    // `since` began at most a request timeout before it.
    let slack = chrono::Duration::from_std(
        config.lifecycle.write_mark_interval() + Duration::from_millis(config.request_timeout_ms),
    )
    .unwrap_or_default();
    let mut out = CatalogFiles::create(&partial.join(CATALOG_DATABASE))?;
    let mut summary = BackupSummary::default();
    let overrides = rate_overrides(catalog).await?;
    let mut one = only.map(|o| vec![o]);
    let mut pages = OrgPages::new(catalog, None);
    loop {
        let page = match one.take() {
            Some(page) => page,
            None if opts.organization.is_some() => break,
            None => match pages.next_page().await? {
                Some(page) => page,
                None => break,
            },
        };
        for org in page {
            if org.state != OrgState::Active {
                summary.skipped.push(org.name.to_string());
                continue;
            }
            if let Some(since) = opts.since {
                match catalog.last_written(org.id).await? {
                    Some(mark) if mark >= since - slack => {}
                    _ => {
                        summary.unchanged += 1;
                        continue;
                    }
                }
            }
            let documents = backup_tenant(shards, partial, &org).await?;
            let admins = catalog.admins_of_org(org.id).await?;
            out.organizations.write(&{
                let mut d = record_document(org.id.to_string(), &org)?;
                d.insert("document_count", documents as i64);
                d
            })?;
            for admin in &admins {
                out.admins
                    .write(&record_document(admin.id.to_string(), admin)?)?;
            }
            out.write_events(catalog, &org).await?;
            if let Some(o) = overrides.get(&org.id.to_string()) {
                out.overrides.write(
                    &json_to_document(
                        &json!({"_id": org.id.to_string(), "override": o})
                            .as_object()
                            .cloned()
                            .unwrap_or_default(),
                    )
                    .map_err(anyhow::Error::msg)?,
                )?;
            }
            summary.organizations += 1;
            summary.documents += documents;
        }
    }
    out.finish()?;
    let manifest = json!({
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "gateway_version": env!("CARGO_PKG_VERSION"),
        "started_at": started.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        "finished_at": Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        "organization": opts.organization,
        "since": opts.since.map(|s| s.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)),
        "organizations": summary.organizations,
        "documents": summary.documents,
        "skipped": summary.skipped,
        "catalog_database": CATALOG_DATABASE,
    });
    files::write_json(&partial.join(MANIFEST), &manifest)?;
    files::sync_dir(partial)?;
    std::fs::rename(partial, &opts.out).with_context(|| {
        format!(
            "cannot rename {} to {}",
            partial.display(),
            opts.out.display()
        )
    })?;
    if let Some(parent) = opts.out.parent().filter(|p| !p.as_os_str().is_empty()) {
        files::sync_dir(parent)?;
    }
    Ok(summary)
}

/// Creates the backup's directory readable by its owner only: it holds password hashes.
fn create_private_dir(path: &Path) -> anyhow::Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(false);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("cannot create {}", parent.display()))?;
    }
    builder
        .create(path)
        .with_context(|| format!("cannot create {}", path.display()))
}

/// Where a backup is built before it is complete.
fn partial_path(out: &Path) -> PathBuf {
    let mut name = out.file_name().unwrap_or_default().to_os_string();
    name.push(".partial");
    out.with_file_name(name)
}

/// The organization named `name` (as a user types it).
async fn find_org(catalog: &dyn Catalog, name: &str) -> anyhow::Result<OrgRecord> {
    let parsed =
        OrgName::parse(name).map_err(|e| anyhow::anyhow!("--organization {name:?}: {e}"))?;
    catalog
        .org_by_name(&parsed.normalized())
        .await?
        .ok_or_else(|| anyhow::anyhow!("unknown organization {name:?}"))
}

/// Per-organization rate-limit overrides, by organization id.
async fn rate_overrides(catalog: &dyn Catalog) -> anyhow::Result<serde_json::Map<String, Value>> {
    Ok(match catalog.get_setting(RATE_OVERRIDES_SETTING).await? {
        Some(Value::Object(m)) => m,
        _ => Default::default(),
    })
}

/// The catalog's collections in a backup.
struct CatalogFiles {
    dir: PathBuf,
    organizations: BsonWriter,
    admins: BsonWriter,
    overrides: BsonWriter,
    events: BsonWriter,
}

impl CatalogFiles {
    const ORGANIZATIONS: &'static str = "organizations";
    const ADMINS: &'static str = "admins";
    const OVERRIDES: &'static str = "rate_limit_overrides";
    const EVENTS: &'static str = "audit_events";

    fn create(dir: &Path) -> anyhow::Result<Self> {
        let file = |name: &str| BsonWriter::create(&dir.join(format!("{name}.bson")));
        Ok(Self {
            dir: dir.to_owned(),
            organizations: file(Self::ORGANIZATIONS)?,
            admins: file(Self::ADMINS)?,
            overrides: file(Self::OVERRIDES)?,
            events: file(Self::EVENTS)?,
        })
    }

    /// Writes `org`'s audit events, oldest first, a page at a time.
    async fn write_events(&mut self, catalog: &dyn Catalog, org: &OrgRecord) -> anyhow::Result<()> {
        let mut after = None;
        loop {
            let page = catalog
                .events(&crate::catalog::EventQuery {
                    organization: Some(org.id),
                    after: after.take(),
                    limit: 1000,
                    ..Default::default()
                })
                .await?;
            for e in &page.events {
                self.events.write(&record_document(e.id.clone(), e)?)?;
            }
            match page.next_after {
                Some(next) => after = Some(next),
                None => return Ok(()),
            }
        }
    }

    fn finish(self) -> anyhow::Result<()> {
        self.organizations.finish()?;
        self.admins.finish()?;
        self.overrides.finish()?;
        self.events.finish()?;
        let id_index = [IndexDefinition {
            name: "_id_".into(),
            key: json!({"_id": 1}),
            unique: false,
        }];
        for name in [
            Self::ORGANIZATIONS,
            Self::ADMINS,
            Self::OVERRIDES,
            Self::EVENTS,
        ] {
            files::write_metadata(
                &self.dir.join(format!("{name}.metadata.json")),
                name,
                &id_index,
            )?;
        }
        files::sync_dir(&self.dir)
    }
}

/// Writes one tenant's collection and its indexes; returns the documents written.
async fn backup_tenant(shards: &ShardSet, dir: &Path, org: &OrgRecord) -> anyhow::Result<u64> {
    let shard = shards.get(&org.placement.shard).with_context(|| {
        format!(
            "organization {:?} is on shard {:?}, which is not configured",
            org.name.as_str(),
            org.placement.shard.as_str()
        )
    })?;
    let ns = tenant_namespace(org);
    let db_dir = dir.join(ns.database.as_str());
    if ns.database.as_str() == CATALOG_DATABASE {
        anyhow::bail!("a tenant database is named {CATALOG_DATABASE}, which a backup reserves");
    }
    std::fs::create_dir_all(&db_dir)
        .with_context(|| format!("cannot create {}", db_dir.display()))?;
    let what = |e: StoreError| {
        anyhow::anyhow!(
            "organization {:?}: shard {:?}: {e}",
            org.name.as_str(),
            org.placement.shard.as_str()
        )
    };
    // Indexes first: a document written after them is still in the backup, and restore
    // builds them after loading the documents.
    let indexes: Vec<IndexDefinition> = shard
        .store
        .list_indexes(&ns)
        .await
        .map_err(what)?
        .into_iter()
        .map(|i| IndexDefinition {
            // MongoDB refuses `unique` on the `_id` index's definition (it is always unique).
            unique: i.unique && i.name != "_id_",
            name: i.name,
            key: i.keys,
        })
        .collect();
    let collection = ns.collection.as_str();
    let mut writer = BsonWriter::create(&db_dir.join(format!("{collection}.bson")))?;
    let mut after: Option<String> = None;
    loop {
        let page = shard
            .store
            .scan_after(&ns, after.as_deref(), BATCH)
            .await
            .map_err(what)?;
        let full = page.len() == BATCH;
        for doc in &page {
            writer.write(&json_to_document(doc).map_err(anyhow::Error::msg)?)?;
        }
        after = page
            .last()
            .and_then(|d| d.get("_id"))
            .and_then(Value::as_str)
            .map(str::to_owned);
        if !full || after.is_none() {
            break;
        }
    }
    let count = writer.finish()?;
    files::write_metadata(
        &db_dir.join(format!("{collection}.metadata.json")),
        collection,
        &indexes,
    )?;
    files::sync_dir(&db_dir)?;
    Ok(count)
}

/// The manifest of a complete backup.
fn read_manifest(from: &Path) -> anyhow::Result<Value> {
    let path = from.join(MANIFEST);
    let text = std::fs::read(&path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => anyhow::anyhow!(
            "{} is not a complete backup (no {MANIFEST})",
            from.display()
        ),
        _ => anyhow::anyhow!("cannot read {}: {e}", path.display()),
    })?;
    let manifest: Value = serde_json::from_slice(&text)
        .with_context(|| format!("{} is not valid JSON", path.display()))?;
    if manifest["format"] != FORMAT {
        anyhow::bail!("{} is not an org-gateway backup", from.display());
    }
    match manifest["format_version"].as_u64() {
        Some(FORMAT_VERSION) => Ok(manifest),
        v => anyhow::bail!(
            "{}: backup format version {v:?} is not supported (this gateway reads {FORMAT_VERSION})",
            from.display()
        ),
    }
}

/// Restores a backup into the deployment described by `config`.
pub async fn restore(config: &Config, opts: &RestoreOptions) -> anyhow::Result<RestoreSummary> {
    read_manifest(&opts.from)?;
    let catalog_dir = opts.from.join(CATALOG_DATABASE);
    let wanted = match &opts.organization {
        Some(name) => Some(
            OrgName::parse(name)
                .map_err(|e| anyhow::anyhow!("--organization {name:?}: {e}"))?
                .normalized(),
        ),
        None => None,
    };
    let mut orgs =
        BsonReader::open(&catalog_dir.join(format!("{}.bson", CatalogFiles::ORGANIZATIONS)))?;
    let mut admins = ByOrg::<AdminRecord>::open(
        &catalog_dir.join(format!("{}.bson", CatalogFiles::ADMINS)),
        |a| Some(a.org_id),
        "admin record",
    )?;
    let mut events = ByOrg::<AuditEvent>::open(
        &catalog_dir.join(format!("{}.bson", CatalogFiles::EVENTS)),
        |e| e.organization_id,
        "audit event",
    )?;
    let mut overrides = HashMap::new();
    let mut reader =
        BsonReader::open(&catalog_dir.join(format!("{}.bson", CatalogFiles::OVERRIDES)))?;
    while let Some(d) = reader.next_document()? {
        let m = document_to_json(d);
        if let (Some(id), Some(o)) = (m.get("_id").and_then(Value::as_str), m.get("override")) {
            overrides.insert(id.to_owned(), o.clone());
        }
    }
    let (catalog, shards) = open(config).await?;
    // Shards an operator is draining take no restored organizations either.
    let draining: Vec<crate::domain::ShardId> = catalog
        .get_setting(crate::placement::DRAINING_SETTING)
        .await?
        .and_then(|v| serde_json::from_value(v).ok())
        .unwrap_or_default();
    shards.set_draining(draining);
    let capacity = CapacityCounts::default();
    capacity.replace(catalog.collection_counts().await?);
    let ctx = Restorer {
        config,
        catalog: catalog.as_ref(),
        shards: &shards,
        capacity: &capacity,
        from: &opts.from,
    };
    let mut summary = RestoreSummary::default();
    let mut found = false;
    while let Some(doc) = orgs.next_document()? {
        let org: OrgRecord = record_from(doc).context("a malformed organization record")?;
        let its_admins = admins.of(&org)?;
        let its_events = events.of(&org)?;
        if wanted.as_ref().is_some_and(|w| *w != org.normalized_name()) {
            continue;
        }
        found = true;
        let name = org.name.to_string();
        if opts.skip_existing && catalog.org_by_id(org.id).await?.is_some() {
            summary.skipped.push(name);
            continue;
        }
        match ctx.restore_org(org, its_admins).await {
            Ok((restored, documents)) => {
                if let Some(o) = overrides.get(&restored.id.to_string()) {
                    ctx.restore_override(&restored, o).await.with_context(|| {
                        format!("organization {name:?} restored, but not its rate-limit override")
                    })?;
                }
                // Its audit trail, as it was (the restore's own event comes after it).
                for e in &its_events {
                    catalog.append_event(e).await.with_context(|| {
                        format!("organization {name:?} restored, but not all its audit events")
                    })?;
                }
                summary.restored.push(name);
                summary.documents += documents;
            }
            Err(e) => summary.failed.push((name, format!("{e:#}"))),
        }
    }
    if let (Some(name), false) = (&opts.organization, found) {
        anyhow::bail!(
            "organization {name:?} is not in the backup {}",
            opts.from.display()
        );
    }
    Ok(summary)
}

/// Reads admins grouped by organization, in the order the backup wrote them.
struct ByOrg<T> {
    /// `None` for a file the backup does not have (written by an older version).
    reader: Option<BsonReader>,
    next: Option<T>,
    org_of: fn(&T) -> Option<crate::domain::OrgId>,
    what: &'static str,
}

impl<T: serde::de::DeserializeOwned> ByOrg<T> {
    fn open(
        path: &Path,
        org_of: fn(&T) -> Option<crate::domain::OrgId>,
        what: &'static str,
    ) -> anyhow::Result<Self> {
        let reader = match path.exists() {
            true => Some(BsonReader::open(path)?),
            false => None,
        };
        Ok(Self {
            reader,
            next: None,
            org_of,
            what,
        })
    }

    /// The records of `org` (written right after the previous organization's).
    fn of(&mut self, org: &OrgRecord) -> anyhow::Result<Vec<T>> {
        let mut out = Vec::new();
        let Some(reader) = self.reader.as_mut() else {
            return Ok(out);
        };
        loop {
            if self.next.is_none() {
                match reader.next_document()? {
                    Some(d) => {
                        let record =
                            record_from(d).with_context(|| format!("a malformed {}", self.what))?;
                        self.next = Some(record);
                    }
                    None => return Ok(out),
                }
            }
            match self.next.take() {
                Some(r) if (self.org_of)(&r) == Some(org.id) => out.push(r),
                other => {
                    self.next = other;
                    return Ok(out);
                }
            }
        }
    }
}

struct Restorer<'a> {
    config: &'a Config,
    catalog: &'a dyn Catalog,
    shards: &'a ShardSet,
    capacity: &'a CapacityCounts,
    from: &'a Path,
}

/// The credential version a restored admin gets: beyond every version the deployment the
/// backup came from can have issued since (one per password change after the backup), and
/// moving on with every second, so two restores of one backup differ. Versions grow by one
/// per change, so the seconds since 2020 at the restore are far ahead of any a deployment
/// reached by changes alone.
fn restored_credential_version(backed_up: u32, now: DateTime<Utc>) -> u32 {
    let epoch = chrono::DateTime::parse_from_rfc3339("2020-01-01T00:00:00Z")
        .expect("a valid time")
        .with_timezone(&Utc);
    let seconds = u32::try_from((now - epoch).num_seconds().max(0)).unwrap_or(u32::MAX);
    backed_up.saturating_add(1).max(seconds)
}

impl Restorer<'_> {
    /// Restores one organization, or refuses it before writing anything, or rolls back what
    /// it wrote. Returns the organization as stored and its documents.
    async fn restore_org(
        &self,
        backed_up: OrgRecord,
        admins: Vec<AdminRecord>,
    ) -> anyhow::Result<(OrgRecord, u64)> {
        // Tokens issued before the restore (before the backup, or after it until the loss)
        // must not come back to life with the organization: a new credential version voids
        // them, as restoring a deleted organization does. Passwords are kept.
        let now = Utc::now();
        let admins: Vec<AdminRecord> = admins
            .into_iter()
            .map(|mut a| {
                a.credential_version = restored_credential_version(a.credential_version, now);
                a
            })
            .collect();
        let Some(first) = admins.first().cloned() else {
            anyhow::bail!("the backup has no admin for it");
        };
        self.check_free(&backed_up, &admins).await?;
        let source = tenant_namespace(&backed_up);
        let data = self
            .from
            .join(source.database.as_str())
            .join(format!("{}.bson", source.collection));
        let metadata = self
            .from
            .join(source.database.as_str())
            .join(format!("{}.metadata.json", source.collection));
        let indexes = files::read_metadata(&metadata)?;
        let mut reader = BsonReader::open(&data)?;
        let now = Utc::now();
        // The same shard and database when that shard is configured and takes tenants (a
        // database of another prefix becomes the shard's open one), else where a new
        // organization would go.
        let same = self
            .shards
            .get(&backed_up.placement.shard)
            .filter(|s| self.shards.accepts_tenants(s.id()));
        let (shard, database) = match same {
            Some(same) => {
                let database = &backed_up.placement.database;
                let keep = database.number(&same.config.database_prefix).is_some();
                let database = self
                    .capacity
                    .reserve_on(&same.config, keep.then(|| database.clone()));
                (same.id().clone(), database)
            }
            None => {
                let choice = self
                    .capacity
                    .reserve(backed_up.id, None, &self.shards.configs())
                    .context("no active shard accepts new organizations")?;
                (choice.shard, choice.database)
            }
        };
        let store = self
            .shards
            .get(&shard)
            .context("the chosen shard vanished")?
            .store
            .clone();
        let ns = Namespace {
            database,
            collection: backed_up.placement.collection.clone(),
        };
        let present = store
            .list_collections(&ns.database)
            .await
            .map_err(|e| anyhow::anyhow!("shard {:?}: {e}", shard.as_str()))?;
        if present.iter().any(|c| c == ns.collection.as_str()) {
            anyhow::bail!(
                "the collection {ns} already exists on shard {:?}",
                shard.as_str()
            );
        }
        let org = OrgRecord {
            placement: Placement {
                shard: shard.clone(),
                database: ns.database.clone(),
                collection: ns.collection.clone(),
                epoch: backed_up.placement.epoch + 1,
                created_at: backed_up.placement.created_at,
                updated_at: now,
            },
            state: OrgState::Creating,
            updated_at: now,
            revision: 0,
            moving: None,
            ..backed_up.clone()
        };
        let org = self.catalog.insert_org(&org, &first).await.map_err(|e| {
            self.capacity.release(&shard, &ns.database);
            taken(e, &backed_up)
        })?;
        let loaded = async {
            store
                .create_collection(&ns)
                .await
                .map_err(|e| anyhow::anyhow!("cannot create the collection {ns}: {e}"))?;
            let mut pending = Pending {
                org: org.clone(),
                refreshed: Instant::now(),
            };
            let documents = self
                .load(&mut pending, store.as_ref(), &ns, &mut reader)
                .await?;
            crate::failpoints::failpoint("restore_after_documents");
            self.build_indexes(&mut pending, store.as_ref(), &ns, &indexes)
                .await?;
            let org = pending.org;
            for admin in &admins[1..] {
                self.catalog
                    .add_admin(admin, u32::MAX, &[])
                    .await
                    .map_err(|e| taken(e, &backed_up))?;
            }
            let mut active = org.clone();
            active.state = OrgState::Active;
            let event = AuditEvent::new(
                EventType::OrganizationRestored,
                Some(org.id),
                Actor::Operator,
                None,
                json!({
                    "organization_name": org.name.as_str(),
                    "from": "backup",
                    "documents": documents,
                    "shard": shard.as_str(),
                    "database": ns.database.to_string(),
                }),
            );
            let active = self
                .catalog
                .put_org_with_event(&active, &event)
                .await
                .map_err(|e| match e {
                    CatalogError::Stale => anyhow::anyhow!(
                        "a running gateway rolled the restore back (it looked like an abandoned create)"
                    ),
                    e => e.into(),
                })?;
            anyhow::Ok((active, documents))
        }
        .await;
        match loaded {
            Ok(done) => Ok(done),
            Err(e) => {
                // Everything of this organization goes: the catalog records the drop first,
                // so a crash here leaves it to the next start.
                if let Err(undo) = self.roll_back(&org, &ns, store.as_ref()).await {
                    return Err(e.context(format!(
                        "and its rollback failed ({undo:#}): the next gateway start finishes it"
                    )));
                }
                Err(e)
            }
        }
    }

    /// Refuses an organization whose id, name, admin ids or emails are taken.
    async fn check_free(&self, org: &OrgRecord, admins: &[AdminRecord]) -> anyhow::Result<()> {
        if self.catalog.org_by_id(org.id).await?.is_some() {
            anyhow::bail!("an organization with id {} already exists", org.id);
        }
        if self
            .catalog
            .org_by_name(&org.normalized_name())
            .await?
            .is_some()
        {
            anyhow::bail!("the name {:?} is taken", org.name.as_str());
        }
        for a in admins {
            if self.catalog.admin_by_email(&a.email).await?.is_some() {
                anyhow::bail!("the admin email {} is taken", a.email);
            }
            if self.catalog.admin_by_id(a.id).await?.is_some() {
                anyhow::bail!("an admin with id {} already exists", a.id);
            }
        }
        Ok(())
    }

    /// Loads the documents in batches, refreshing the `creating` record now and then.
    async fn load(
        &self,
        pending: &mut Pending,
        store: &dyn crate::store::TenantStore,
        ns: &Namespace,
        reader: &mut BsonReader,
    ) -> anyhow::Result<u64> {
        let mut total = 0u64;
        loop {
            let mut batch: Vec<Document> = Vec::with_capacity(BATCH);
            let mut bytes = 0;
            while batch.len() < BATCH && bytes < BATCH_BYTES {
                let Some(d) = reader.next_document()? else {
                    break;
                };
                let doc = document_to_json(d);
                if !doc.get("_id").is_some_and(Value::is_string) {
                    anyhow::bail!("a document without a string _id");
                }
                bytes += serde_json::to_vec(&doc).map(|v| v.len()).unwrap_or(0);
                batch.push(doc);
            }
            if batch.is_empty() {
                return Ok(total);
            }
            total += batch.len() as u64;
            store
                .insert_many(ns, batch)
                .await
                .map_err(|e| anyhow::anyhow!("cannot load documents into {ns}: {e}"))?;
            pending.keep_alive(self.catalog).await?;
        }
    }

    /// Re-creates the indexes (besides `_id`) and waits until they are ready.
    async fn build_indexes(
        &self,
        pending: &mut Pending,
        store: &dyn crate::store::TenantStore,
        ns: &Namespace,
        indexes: &[IndexDefinition],
    ) -> anyhow::Result<()> {
        let wanted: Vec<&IndexDefinition> = indexes.iter().filter(|i| i.name != "_id_").collect();
        let max = self
            .config
            .data
            .max_indexes_per_collection
            .max(wanted.len());
        for i in &wanted {
            let spec = IndexSpec {
                name: IndexName::parse(&i.name)
                    .map_err(|e| anyhow::anyhow!("index {:?}: {e}", i.name))?,
                keys: IndexKeys::parse(&i.key)
                    .map_err(|e| anyhow::anyhow!("index {:?}: {e}", i.name))?,
                unique: i.unique,
            };
            store
                .create_index(ns, &spec, max)
                .await
                .map_err(|e| anyhow::anyhow!("cannot create the index {:?}: {e}", i.name))?;
        }
        // Builds may go on after `create_index` answers: the organization is activated only
        // with its indexes ready (a unique build that fails leaves the list).
        loop {
            let listed = store
                .list_indexes(ns)
                .await
                .map_err(|e| anyhow::anyhow!("cannot list the indexes of {ns}: {e}"))?;
            let mut ready = true;
            for i in &wanted {
                match listed.iter().find(|l| l.name == i.name) {
                    Some(l) if l.state == IndexState::Ready => {}
                    Some(_) => ready = false,
                    None => anyhow::bail!("the index {:?} failed to build", i.name),
                }
            }
            if ready {
                return Ok(());
            }
            pending.keep_alive(self.catalog).await?;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Undoes a restore that failed midway: the catalog forgets the organization and records
    /// its collection's drop (so a crash here leaves the drop to the next start), then the
    /// collection is dropped and the drop cleared.
    async fn roll_back(
        &self,
        org: &OrgRecord,
        ns: &Namespace,
        store: &dyn crate::store::TenantStore,
    ) -> anyhow::Result<()> {
        self.catalog.delete_org(org.id).await?;
        self.capacity
            .release(&org.placement.shard, &org.placement.database);
        store.drop_collection(ns).await?;
        let drop = crate::catalog::PendingDrop {
            shard: org.placement.shard.clone(),
            database: ns.database.clone(),
            collection: ns.collection.clone(),
            stash_to: None,
        };
        self.catalog.clear_pending_drop(&drop).await?;
        Ok(())
    }

    /// Puts the organization's rate-limit override back.
    async fn restore_override(&self, org: &OrgRecord, o: &Value) -> anyhow::Result<()> {
        // Compare-and-set: an operator changing another organization meanwhile keeps it.
        crate::catalog::update_setting(self.catalog, RATE_OVERRIDES_SETTING, &[], |current| {
            let mut all: serde_json::Map<String, Value> =
                crate::catalog::decode_setting(RATE_OVERRIDES_SETTING, current)?;
            all.insert(org.id.to_string(), o.clone());
            Ok(Value::Object(all))
        })
        .await?;
        Ok(())
    }
}

/// An organization being restored, still `creating`.
struct Pending {
    org: OrgRecord,
    refreshed: Instant,
}

impl Pending {
    /// Refreshes the record's `updated_at` every [`KEEPALIVE`], so a running gateway's
    /// recovery (which rolls back creates untouched for its grace period) leaves it alone;
    /// fails if one has claimed it meanwhile.
    async fn keep_alive(&mut self, catalog: &dyn Catalog) -> anyhow::Result<()> {
        if self.refreshed.elapsed() < KEEPALIVE {
            return Ok(());
        }
        let mut org = self.org.clone();
        org.updated_at = Utc::now();
        self.org = catalog.put_org(&org).await.map_err(|e| match e {
            CatalogError::Stale => anyhow::anyhow!(
                "a running gateway rolled the restore back (it looked like an abandoned create)"
            ),
            e => e.into(),
        })?;
        self.refreshed = Instant::now();
        Ok(())
    }
}

/// A conflict named for the operator.
fn taken(e: CatalogError, org: &OrgRecord) -> anyhow::Error {
    match e {
        CatalogError::Conflict(Taken::OrgName) => {
            anyhow::anyhow!("the name {:?} is taken", org.name.as_str())
        }
        CatalogError::Conflict(Taken::Collection) => anyhow::anyhow!(
            "the collection {} is taken",
            org.placement.collection.as_str()
        ),
        CatalogError::Conflict(Taken::Email) => anyhow::anyhow!("an admin email is taken"),
        e => e.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::restored_credential_version;
    use chrono::{Duration, TimeZone, Utc};

    #[test]
    fn a_restored_credential_version_is_past_the_backup_and_moves_with_time() {
        let at = Utc.with_ymd_and_hms(2026, 11, 28, 12, 0, 0).unwrap();
        let first = restored_credential_version(3, at);
        // Ahead of the backup's version and of any a deployment reaches by changes alone.
        assert!(first > 3 + 1_000_000, "{first}");
        // A later restore of the same backup gets a later version.
        assert!(restored_credential_version(3, at + Duration::seconds(1)) > first);
        // A version already past the clock still moves on.
        assert_eq!(restored_credential_version(u32::MAX - 1, at), u32::MAX);
        assert_eq!(
            restored_credential_version(first + 5, at),
            first + 6,
            "a restore of a backup of a restored deployment"
        );
    }
}
