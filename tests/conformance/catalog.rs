//! The catalog conformance suite: every test runs against the embedded and the MongoDB catalog.

use crate::mongo_env;
use chrono::Utc;
use org_gateway::catalog::embedded::EmbeddedCatalog;
use org_gateway::catalog::mongo::MongoCatalog;
use org_gateway::catalog::{
    AdminRecord, Catalog, CatalogError, OrgPages, OrgRecord, OrgState, PendingDrop, Placement,
    Taken, TombstonePhase,
};
use org_gateway::domain::{AdminId, DatabaseName, Email, OrgId, OrgName, ShardId};
use serde_json::json;
use std::collections::BTreeSet;
use std::sync::Arc;

/// A catalog under test plus what it needs to clean up.
pub struct Fixture {
    pub catalog: Arc<dyn Catalog>,
    _dir: Option<tempfile::TempDir>,
    mongo: Option<(String, String)>,
}

impl Fixture {
    pub fn embedded() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let catalog = EmbeddedCatalog::open(&dir.path().join("catalog.redb")).expect("open");
        Self {
            catalog: Arc::new(catalog),
            _dir: Some(dir),
            mongo: None,
        }
    }

    pub async fn mongo() -> Option<Self> {
        let uri = mongo_env::uri()?;
        let db = mongo_env::unique_db("cat");
        let catalog = MongoCatalog::open(&uri, &db)
            .await
            .expect("open MongoDB catalog");
        Some(Self {
            catalog: Arc::new(catalog),
            _dir: None,
            mongo: Some((uri, db)),
        })
    }

    pub async fn cleanup(self) {
        if let Some((uri, db)) = &self.mongo {
            mongo_env::drop_db(uri, db).await;
        }
    }
}

macro_rules! conformance {
    ($($test:ident),* $(,)?) => {
        mod embedded {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    let f = super::Fixture::embedded();
                    super::$test(f.catalog.clone()).await;
                    f.cleanup().await;
                }
            )*
        }
        mod mongo {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    let Some(f) = super::Fixture::mongo().await else { return };
                    super::$test(f.catalog.clone()).await;
                    f.cleanup().await;
                }
            )*
        }
    };
}

conformance!(
    insert_and_look_up,
    put_org_changes_state_only,
    a_state_change_and_its_event_are_written_together,
    every_change_writes_its_events_and_a_refused_one_none,
    unique_keys_conflict,
    email_conflict_leaves_nothing_behind,
    concurrent_creates_of_one_name_have_one_winner,
    concurrent_creates_with_one_email_have_one_winner,
    rename_commit,
    rename_abort,
    rename_conflicts,
    concurrent_renames_to_one_name_have_one_winner,
    rename_with_case_change_only,
    delete_records_pending_drops,
    delete_during_rename_drops_both_collections,
    admin_updates,
    concurrent_admin_updates_lose_nothing,
    revisions_only_grow_and_fence_allocations_are_fresh,
    instance_registry_and_leases,
    a_rename_whose_data_may_have_moved_cannot_be_aborted,
    collection_counts,
    settings_round_trip,
    settings_change_by_compare_and_set,
    write_marks_keep_the_latest,
    orgs_page_in_id_order,
    admins_are_added_and_removed,
    concurrent_adds_never_pass_the_cap,
    concurrent_removals_never_remove_the_last_admin,
    orgs_by_name_pages_by_prefix,
    audit_events_page_filter_and_purge,
    tombstones_keep_an_organization_until_restored,
    purging_a_tombstone_uncounts_and_drops_its_data,
);

/// `orgs_after` pages through every organization once, in id order, whatever the page size;
/// `OrgPages` walks them all with one page in memory.
async fn orgs_page_in_id_order(c: Arc<dyn Catalog>) {
    let mut ids = Vec::new();
    for i in 0..7 {
        ids.push(
            create(
                c.as_ref(),
                &format!("Paged {i}"),
                &format!("p{i}@x.example"),
            )
            .await
            .id,
        );
    }
    ids.sort();
    for limit in [1, 2, 3, 7, 100] {
        let mut seen = Vec::new();
        let mut after = None;
        loop {
            let page = c.orgs_after(after, limit).await.unwrap();
            assert!(page.len() <= limit);
            if page.is_empty() {
                break;
            }
            after = Some(page.last().unwrap().id);
            seen.extend(page.into_iter().map(|o| o.id));
        }
        assert_eq!(seen, ids, "page size {limit}");
    }
    assert!(c.orgs_after(Some(ids[6]), 10).await.unwrap().is_empty());
    assert_eq!(
        c.orgs_after(Some(ids[2]), 2)
            .await
            .unwrap()
            .iter()
            .map(|o| o.id)
            .collect::<Vec<_>>(),
        ids[3..5]
    );
    let mut pages = OrgPages::new(c.as_ref(), Some(ids[0]));
    let mut walked = Vec::new();
    while let Some(page) = pages.next_page().await.unwrap() {
        walked.extend(page.into_iter().map(|o| o.id));
    }
    assert_eq!(walked, ids[1..]);
    assert_eq!(pages.position(), Some(ids[6]));
}

fn shard() -> ShardId {
    ShardId::parse("s1").unwrap()
}

fn db(n: u32) -> DatabaseName {
    DatabaseName::numbered("db", n)
}

fn org(name: &str) -> OrgRecord {
    org_in(name, 1)
}

fn org_in(name: &str, database: u32) -> OrgRecord {
    let name = OrgName::parse(name).unwrap();
    let now = Utc::now();
    OrgRecord {
        id: OrgId::generate(),
        placement: Placement {
            shard: shard(),
            database: db(database),
            collection: name.collection_name(),
            epoch: 1,
            created_at: now,
            updated_at: now,
        },
        name,
        state: OrgState::Creating,
        created_at: now,
        updated_at: now,
        revision: 0,
        moving: None,
    }
}

fn admin(org: &OrgRecord, email: &str) -> AdminRecord {
    let now = Utc::now();
    AdminRecord {
        id: AdminId::generate(),
        org_id: org.id,
        email: Email::parse(email).unwrap(),
        password_hash: "$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA".into(),
        credential_version: 0,
        created_at: now,
        updated_at: now,
        revision: 0,
    }
}

/// The record without the revision the catalog stamps on every write.
fn unrev(mut o: OrgRecord) -> OrgRecord {
    o.revision = 0;
    o
}

/// The admin without its revision.
fn unrev_admin(mut a: AdminRecord) -> AdminRecord {
    a.revision = 0;
    a
}

fn email(raw: &str) -> Email {
    Email::parse(raw).unwrap()
}

fn name(raw: &str) -> OrgName {
    OrgName::parse(raw).unwrap()
}

async fn count_of(c: &dyn Catalog, database: u32) -> u64 {
    c.collection_counts()
        .await
        .unwrap()
        .into_iter()
        .find(|(s, d, _)| *s == shard() && *d == db(database))
        .map(|(_, _, n)| n)
        .unwrap_or(0)
}

fn conflict(r: Result<impl std::fmt::Debug, CatalogError>) -> Taken {
    match r {
        Err(CatalogError::Conflict(t)) => t,
        other => panic!("expected a conflict, got {other:?}"),
    }
}

fn not_found(r: Result<impl std::fmt::Debug, CatalogError>) {
    match r {
        Err(CatalogError::NotFound) => {}
        other => panic!("expected NotFound, got {other:?}"),
    }
}

async fn create(c: &dyn Catalog, org_name: &str, mail: &str) -> OrgRecord {
    let o = org(org_name);
    let mut active = c.insert_org(&o, &admin(&o, mail)).await.unwrap();
    active.state = OrgState::Active;
    // As stored: with the revision the catalog stamped.
    c.put_org(&active).await.unwrap()
}

async fn insert_and_look_up(c: Arc<dyn Catalog>) {
    let o = org("Acme  Corp");
    let a = admin(&o, "Admin@Acme.example");
    c.insert_org(&o, &a).await.unwrap();
    assert_eq!(c.org_by_id(o.id).await.unwrap().map(unrev), Some(o.clone()));
    let by_name = c
        .org_by_name(&name("acme corp").normalized())
        .await
        .unwrap()
        .map(unrev);
    assert_eq!(by_name, Some(o.clone()));
    assert_eq!(
        c.org_by_name(&name("acme").normalized())
            .await
            .unwrap()
            .map(unrev),
        None
    );
    assert_eq!(c.org_by_id(OrgId::generate()).await.unwrap(), None);
    assert_eq!(
        c.list_orgs()
            .await
            .unwrap()
            .into_iter()
            .map(unrev)
            .collect::<Vec<_>>(),
        vec![o.clone()]
    );
    assert_eq!(
        c.admin_by_email(&email("admin@acme.example"))
            .await
            .unwrap()
            .map(unrev_admin),
        Some(a.clone())
    );
    assert_eq!(
        c.admin_by_id(a.id).await.unwrap().map(unrev_admin),
        Some(a.clone())
    );
    assert_eq!(c.admin_by_id(AdminId::generate()).await.unwrap(), None);
    assert_eq!(
        c.admins_of_org(o.id)
            .await
            .unwrap()
            .into_iter()
            .map(unrev_admin)
            .collect::<Vec<_>>(),
        vec![a.clone()]
    );
    assert!(c.admins_of_org(OrgId::generate()).await.unwrap().is_empty());
    assert_eq!(count_of(c.as_ref(), 1).await, 1);
    // Inserting directly as Active works too.
    let mut b = org("Beta");
    b.state = OrgState::Active;
    c.insert_org(&b, &admin(&b, "b@beta.example"))
        .await
        .unwrap();
    assert_eq!(c.org_by_id(b.id).await.unwrap().map(unrev), Some(b.clone()));
    let mut all = c
        .list_orgs()
        .await
        .unwrap()
        .into_iter()
        .map(unrev)
        .collect::<Vec<_>>();
    all.sort_by_key(|o| o.id);
    let mut want = vec![o, b];
    want.sort_by_key(|o| o.id);
    assert_eq!(all, want);
    assert_eq!(count_of(c.as_ref(), 1).await, 2);
}

async fn put_org_changes_state_only(c: Arc<dyn Catalog>) {
    let o = org("Stateful");
    let stored = c.insert_org(&o, &admin(&o, "s@s.example")).await.unwrap();
    let mut active = stored.clone();
    active.state = OrgState::Active;
    active.updated_at = Utc::now();
    let active = c.put_org(&active).await.unwrap();
    assert!(active.revision > stored.revision);
    assert_eq!(c.org_by_id(o.id).await.unwrap(), Some(active.clone()));
    // A write based on an older read is refused (compare-and-set on the revision).
    let mut stale = stored.clone();
    stale.updated_at = Utc::now();
    assert!(matches!(c.put_org(&stale).await, Err(CatalogError::Stale)));
    let mut renamed = active.clone();
    renamed.name = name("Other");
    renamed.placement.collection = renamed.name.collection_name();
    assert!(matches!(
        c.put_org(&renamed).await,
        Err(CatalogError::Backend(_))
    ));
    not_found(c.put_org(&org("Ghost")).await);
    assert_eq!(c.org_by_id(o.id).await.unwrap(), Some(active));
}

/// `put_org_with_event` stores the change and its audit event; a refused change (stale
/// revision) leaves no event behind.
async fn a_state_change_and_its_event_are_written_together(c: Arc<dyn Catalog>) {
    use org_gateway::catalog::{Actor, AuditEvent, EventQuery, EventType};
    let o = org("Recorded");
    let stored = c.insert_org(&o, &admin(&o, "r@r.example")).await.unwrap();
    let event = |i: u32| {
        AuditEvent::new(
            EventType::OrganizationCreated,
            Some(o.id),
            Actor::System,
            Some("req-1"),
            json!({ "i": i }),
        )
    };
    let mut active = stored.clone();
    active.state = OrgState::Active;
    let first = event(1);
    let active = c.put_org_with_event(&active, &first).await.unwrap();
    assert_eq!(c.org_by_id(o.id).await.unwrap(), Some(active));
    let mut stale = stored.clone();
    stale.updated_at = Utc::now();
    assert!(matches!(
        c.put_org_with_event(&stale, &event(2)).await,
        Err(CatalogError::Stale)
    ));
    let page = c
        .events(&EventQuery {
            organization: Some(o.id),
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    // Stamped when written, with the rest as given.
    assert_eq!(page.events.len(), 1);
    assert_eq!(page.events[0].details, first.details);
    assert_eq!(page.events[0].kind, first.kind);
    assert_eq!(page.events[0].request_id, first.request_id);
}

/// Every mutating call that takes events writes them exactly when its change happens: a
/// refused change (cap, last admin, stale revision, nothing to remove, aborted rename) writes
/// none, and a rename's or a restore's journaled events appear when it commits.
async fn every_change_writes_its_events_and_a_refused_one_none(c: Arc<dyn Catalog>) {
    use org_gateway::catalog::{Actor, AuditEvent, EventQuery, EventType};
    let o = create(c.as_ref(), "Audited", "a@audited.example").await;
    // Events are stamped when written: each carries a number to be recognized by.
    let counter = std::sync::atomic::AtomicU64::new(0);
    let ev = |kind: EventType, org: OrgId| {
        let n = counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        AuditEvent::new(
            kind,
            Some(org),
            Actor::System,
            Some("req"),
            json!({ "n": n }),
        )
    };
    let n = |e: &AuditEvent| e.details["n"].as_u64().unwrap();
    let logged = |org: OrgId| {
        let c = Arc::clone(&c);
        async move {
            let page = c
                .events(&EventQuery {
                    organization: Some(org),
                    limit: 100,
                    ..Default::default()
                })
                .await
                .unwrap();
            // In the order written.
            page.events
                .iter()
                .map(|e| e.details["n"].as_u64().unwrap())
                .collect::<Vec<_>>()
        }
    };
    let mut expected = Vec::new();
    // add_admin: written; refused at the cap: not
    let second = admin(&o, "b@audited.example");
    let added = ev(EventType::AdminCreated, o.id);
    c.add_admin(&second, 2, std::slice::from_ref(&added))
        .await
        .unwrap();
    expected.push(n(&added));
    let over = ev(EventType::AdminCreated, o.id);
    assert!(matches!(
        c.add_admin(&admin(&o, "c@audited.example"), 2, &[over])
            .await,
        Err(CatalogError::AdminLimit)
    ));
    // update_admin: a stale revision writes nothing; a current one writes its events
    let stored = c.admin_by_id(second.id).await.unwrap().unwrap();
    let mut stale = stored.clone();
    stale.revision += 1_000;
    let lost = ev(EventType::AdminPasswordChanged, o.id);
    assert!(matches!(
        c.update_admin(&stale, &[lost]).await,
        Err(CatalogError::Stale)
    ));
    let mut changed = stored.clone();
    changed.email = email("b2@audited.example");
    let (updated, password) = (
        ev(EventType::OrganizationUpdated, o.id),
        ev(EventType::AdminPasswordChanged, o.id),
    );
    c.update_admin(&changed, &[updated.clone(), password.clone()])
        .await
        .unwrap();
    expected.extend([n(&updated), n(&password)]);
    // remove_admin: nothing to remove, or the last admin: nothing written
    let none = ev(EventType::AdminDeleted, o.id);
    assert_eq!(
        c.remove_admin(o.id, AdminId::generate(), &[none])
            .await
            .unwrap(),
        None
    );
    let removed = ev(EventType::AdminDeleted, o.id);
    c.remove_admin(o.id, second.id, std::slice::from_ref(&removed))
        .await
        .unwrap()
        .unwrap();
    expected.push(n(&removed));
    let first = c.admins_of_org(o.id).await.unwrap()[0].id;
    let last = ev(EventType::AdminDeleted, o.id);
    assert!(matches!(
        c.remove_admin(o.id, first, &[last]).await,
        Err(CatalogError::LastAdmin)
    ));
    // put_setting
    let limits = ev(EventType::LimitsChanged, o.id);
    c.put_setting("audited", &json!(1), std::slice::from_ref(&limits))
        .await
        .unwrap();
    expected.push(n(&limits));
    // a rename: journaled at its beginning, written at its commit; an aborted one never
    let aborted = ev(EventType::OrganizationRenamed, o.id);
    c.begin_rename(o.id, &name("Audited Two"), None, &[aborted])
        .await
        .unwrap();
    c.abort_rename(o.id).await.unwrap();
    let renamed = ev(EventType::OrganizationRenamed, o.id);
    c.begin_rename(
        o.id,
        &name("Audited Three"),
        None,
        std::slice::from_ref(&renamed),
    )
    .await
    .unwrap();
    assert_eq!(logged(o.id).await, expected, "not before the commit");
    c.commit_rename(o.id).await.unwrap();
    expected.push(n(&renamed));
    assert_eq!(logged(o.id).await, expected);
    // soft delete, restore (written when its rename back commits), delete again, purge
    let deleted = ev(EventType::OrganizationDeleted, o.id);
    let tomb = c
        .tombstone_org(
            o.id,
            Utc::now(),
            days(30),
            None,
            std::slice::from_ref(&deleted),
        )
        .await
        .unwrap()
        .unwrap();
    expected.push(n(&deleted));
    c.clear_pending_drop(&tomb.stash()).await.unwrap();
    let restored = ev(EventType::OrganizationRestored, o.id);
    c.restore_org(o.id, &name("Audited"), std::slice::from_ref(&restored))
        .await
        .unwrap();
    assert_eq!(logged(o.id).await, expected, "not before the rename back");
    c.commit_rename(o.id).await.unwrap();
    expected.push(n(&restored));
    let again = ev(EventType::OrganizationDeleted, o.id);
    let tomb = c
        .tombstone_org(
            o.id,
            Utc::now(),
            days(30),
            None,
            std::slice::from_ref(&again),
        )
        .await
        .unwrap()
        .unwrap();
    expected.push(n(&again));
    c.clear_pending_drop(&tomb.stash()).await.unwrap();
    let purged = ev(EventType::OrganizationPurged, o.id);
    c.purge_tombstone(o.id, std::slice::from_ref(&purged))
        .await
        .unwrap()
        .unwrap();
    expected.push(n(&purged));
    let twice = ev(EventType::OrganizationPurged, o.id);
    assert!(c.purge_tombstone(o.id, &[twice]).await.unwrap().is_none());
    assert_eq!(logged(o.id).await, expected);
    assert_eq!(c.flush_events().await.unwrap(), 0, "nothing left to copy");
}

/// `put_setting_if` writes only over the value expected (and its events only then);
/// `update_setting` from many tasks at once keeps every task's change.
async fn settings_change_by_compare_and_set(c: Arc<dyn Catalog>) {
    use org_gateway::catalog::{update_setting, Actor, AuditEvent, EventQuery, EventType};
    let o = create(c.as_ref(), "Setter", "set@set.example").await;
    let event = || {
        AuditEvent::new(
            EventType::LimitsChanged,
            Some(o.id),
            Actor::Operator,
            None,
            json!({}),
        )
    };
    assert!(c
        .put_setting_if("cas", None, &json!({"a": 1}), &[])
        .await
        .unwrap());
    assert!(!c
        .put_setting_if("cas", None, &json!({"b": 2}), &[event()])
        .await
        .unwrap());
    assert!(!c
        .put_setting_if("cas", Some(&json!({"a": 2})), &json!({"c": 3}), &[event()])
        .await
        .unwrap());
    let kept = event();
    assert!(c
        .put_setting_if(
            "cas",
            Some(&json!({"a": 1})),
            &json!({"a": 1, "d": 4.5}),
            std::slice::from_ref(&kept),
        )
        .await
        .unwrap());
    assert_eq!(
        c.get_setting("cas").await.unwrap(),
        Some(json!({"a": 1, "d": 4.5}))
    );
    let page = c
        .events(&EventQuery {
            organization: Some(o.id),
            kind: Some(EventType::LimitsChanged),
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(page.events.len(), 1);
    assert_eq!(page.events[0].kind, kept.kind);
    // Sixteen writers, each adding its own key to one map.
    let writers: Vec<_> = (0..16)
        .map(|i| {
            let c = Arc::clone(&c);
            tokio::spawn(async move {
                update_setting(c.as_ref(), "shared", &[], |current| {
                    let mut map = current.cloned().unwrap_or_else(|| json!({}));
                    map[format!("k{i}")] = json!(i);
                    Ok(map)
                })
                .await
                .unwrap();
            })
        })
        .collect();
    for w in writers {
        w.await.unwrap();
    }
    let shared = c.get_setting("shared").await.unwrap().unwrap();
    assert_eq!(shared.as_object().unwrap().len(), 16, "{shared}");
}

async fn unique_keys_conflict(c: Arc<dyn Catalog>) {
    create(c.as_ref(), "My-Org", "first@x.example").await;
    // Same name after normalization.
    let o = org("  MY-ORG ");
    assert_eq!(
        conflict(c.insert_org(&o, &admin(&o, "second@x.example")).await),
        Taken::OrgName
    );
    // Another name mapping to the same collection (`-` and `_` both become `_`).
    let o = org("my_org");
    assert_eq!(
        conflict(c.insert_org(&o, &admin(&o, "third@x.example")).await),
        Taken::Collection
    );
    // Name wins over email when both are taken.
    let o = org("my-org");
    assert_eq!(
        conflict(c.insert_org(&o, &admin(&o, "first@x.example")).await),
        Taken::OrgName
    );
    let o = org("Fresh");
    assert_eq!(
        conflict(c.insert_org(&o, &admin(&o, "FIRST@x.example")).await),
        Taken::Email
    );
    assert_eq!(c.list_orgs().await.unwrap().len(), 1);
    assert_eq!(count_of(c.as_ref(), 1).await, 1);
}

async fn email_conflict_leaves_nothing_behind(c: Arc<dyn Catalog>) {
    create(c.as_ref(), "Holder", "taken@x.example").await;
    let o = org("Loser");
    assert_eq!(
        conflict(c.insert_org(&o, &admin(&o, "taken@x.example")).await),
        Taken::Email
    );
    assert_eq!(c.org_by_id(o.id).await.unwrap(), None);
    assert_eq!(c.org_by_name(&o.normalized_name()).await.unwrap(), None);
    assert!(c.admins_of_org(o.id).await.unwrap().is_empty());
    assert_eq!(count_of(c.as_ref(), 1).await, 1);
    // The name is free for the next try.
    let again = org("Loser");
    c.insert_org(&again, &admin(&again, "new@x.example"))
        .await
        .unwrap();
    assert_eq!(count_of(c.as_ref(), 1).await, 2);
}

async fn concurrent_creates_of_one_name_have_one_winner(c: Arc<dyn Catalog>) {
    let tasks: Vec<_> = (0..20)
        .map(|i| {
            let c = c.clone();
            tokio::spawn(async move {
                let spelled = if i % 2 == 0 {
                    "Race Corp"
                } else {
                    "race  CORP"
                };
                let o = org(spelled);
                let r = c
                    .insert_org(&o, &admin(&o, &format!("a{i}@race.example")))
                    .await;
                (o, r)
            })
        })
        .collect();
    let mut winners = Vec::new();
    for t in tasks {
        match t.await.unwrap() {
            (_, Ok(stored)) => winners.push(stored),
            (_, Err(CatalogError::Conflict(Taken::OrgName))) => {}
            (_, Err(e)) => panic!("unexpected error: {e:?}"),
        }
    }
    assert_eq!(winners.len(), 1, "exactly one create wins");
    let orgs = c
        .list_orgs()
        .await
        .unwrap()
        .into_iter()
        .map(unrev)
        .collect::<Vec<_>>();
    assert_eq!(orgs, winners.iter().cloned().map(unrev).collect::<Vec<_>>());
    assert_eq!(count_of(c.as_ref(), 1).await, 1);
    assert_eq!(c.admins_of_org(winners[0].id).await.unwrap().len(), 1);
}

async fn concurrent_creates_with_one_email_have_one_winner(c: Arc<dyn Catalog>) {
    let tasks: Vec<_> = (0..20)
        .map(|i| {
            let c = c.clone();
            tokio::spawn(async move {
                let o = org(&format!("Mail Race {i}"));
                let r = c.insert_org(&o, &admin(&o, "same@race.example")).await;
                (o, r)
            })
        })
        .collect();
    let mut winners = Vec::new();
    for t in tasks {
        match t.await.unwrap() {
            (_, Ok(stored)) => winners.push(stored),
            (_, Err(CatalogError::Conflict(Taken::Email))) => {}
            (_, Err(e)) => panic!("unexpected error: {e:?}"),
        }
    }
    assert_eq!(winners.len(), 1, "exactly one create wins");
    assert_eq!(
        c.list_orgs()
            .await
            .unwrap()
            .into_iter()
            .map(unrev)
            .collect::<Vec<_>>(),
        winners.iter().cloned().map(unrev).collect::<Vec<_>>()
    );
    assert_eq!(count_of(c.as_ref(), 1).await, 1);
    let owner = c
        .admin_by_email(&email("same@race.example"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(owner.org_id, winners[0].id);
}

async fn rename_commit(c: Arc<dyn Catalog>) {
    let o = create(c.as_ref(), "Old Name", "o@o.example").await;
    let renaming = c
        .begin_rename(o.id, &name("New Name"), None, &[])
        .await
        .unwrap();
    let new_coll = name("New Name").collection_name();
    assert_eq!(
        renaming.state,
        OrgState::Renaming {
            to_name: name("New Name"),
            to_collection: new_coll.clone(),
            admin: None,
            target_cleared: false,
            events: Vec::new(),
        }
    );
    assert_eq!(renaming.name, o.name);
    assert_eq!(renaming.placement, o.placement);
    assert_eq!(c.org_by_id(o.id).await.unwrap(), Some(renaming.clone()));
    // The old name still resolves; the reserved one does not, and cannot be taken.
    assert_eq!(
        c.org_by_name(&o.normalized_name()).await.unwrap(),
        Some(renaming.clone())
    );
    assert_eq!(
        c.org_by_name(&name("new name").normalized()).await.unwrap(),
        None
    );
    let other = org("NEW name");
    assert_eq!(
        conflict(c.insert_org(&other, &admin(&other, "x@x.example")).await),
        Taken::OrgName
    );
    // Only one rename at a time.
    not_found(c.begin_rename(o.id, &name("Third"), None, &[]).await);
    not_found(c.abort_rename(OrgId::generate()).await);

    let done = c.commit_rename(o.id).await.unwrap();
    assert_eq!(done.name, name("New Name"));
    assert_eq!(done.placement.collection, new_coll);
    assert_eq!(done.placement.epoch, o.placement.epoch + 1);
    assert_eq!(done.placement.shard, o.placement.shard);
    assert_eq!(done.placement.database, o.placement.database);
    assert_eq!(done.state, OrgState::Active);
    assert_eq!(c.org_by_id(o.id).await.unwrap(), Some(done.clone()));
    assert_eq!(
        c.org_by_name(&name("new name").normalized()).await.unwrap(),
        Some(done.clone())
    );
    assert_eq!(c.org_by_name(&o.normalized_name()).await.unwrap(), None);
    not_found(c.commit_rename(o.id).await);
    not_found(c.abort_rename(o.id).await);
    // The old name and collection are free again.
    create(c.as_ref(), "old name", "p@p.example").await;
    assert_eq!(count_of(c.as_ref(), 1).await, 2);
    // Admins are untouched by a rename.
    assert_eq!(c.admins_of_org(o.id).await.unwrap().len(), 1);
}

async fn rename_abort(c: Arc<dyn Catalog>) {
    let o = create(c.as_ref(), "Stay", "s@s.example").await;
    c.begin_rename(o.id, &name("Leave"), None, &[])
        .await
        .unwrap();
    let back = c.abort_rename(o.id).await.unwrap();
    assert_eq!(back.state, OrgState::Active);
    assert_eq!(back.name, o.name);
    assert_eq!(back.placement, o.placement);
    assert_eq!(c.org_by_id(o.id).await.unwrap(), Some(back.clone()));
    assert_eq!(
        c.org_by_name(&o.normalized_name()).await.unwrap(),
        Some(back)
    );
    not_found(c.abort_rename(o.id).await);
    not_found(c.commit_rename(o.id).await);
    // The reserved name was released.
    create(c.as_ref(), "leave", "l@l.example").await;
    // And the org can start another rename.
    let again = c
        .begin_rename(o.id, &name("Elsewhere"), None, &[])
        .await
        .unwrap();
    assert!(matches!(again.state, OrgState::Renaming { .. }));
}

async fn rename_conflicts(c: Arc<dyn Catalog>) {
    let a = create(c.as_ref(), "Alpha", "a@a.example").await;
    create(c.as_ref(), "Bravo-Team", "b@b.example").await;
    assert_eq!(
        conflict(c.begin_rename(a.id, &name("BRAVO-team"), None, &[]).await),
        Taken::OrgName
    );
    assert_eq!(
        conflict(c.begin_rename(a.id, &name("bravo team"), None, &[]).await),
        Taken::Collection
    );
    // A name reserved by another org's rename counts as taken.
    let d = create(c.as_ref(), "Delta", "d@d.example").await;
    c.begin_rename(d.id, &name("Echo"), None, &[])
        .await
        .unwrap();
    assert_eq!(
        conflict(c.begin_rename(a.id, &name("echo"), None, &[]).await),
        Taken::OrgName
    );
    // Nothing changed for the refused org.
    assert_eq!(c.org_by_id(a.id).await.unwrap(), Some(a.clone()));
    not_found(
        c.begin_rename(OrgId::generate(), &name("Zulu"), None, &[])
            .await,
    );
    // A Creating org cannot be renamed.
    let creating = org("Pending");
    c.insert_org(&creating, &admin(&creating, "p@p.example"))
        .await
        .unwrap();
    not_found(c.begin_rename(creating.id, &name("Zulu"), None, &[]).await);
}

async fn concurrent_renames_to_one_name_have_one_winner(c: Arc<dyn Catalog>) {
    let mut orgs = Vec::new();
    for i in 0..8 {
        orgs.push(
            create(
                c.as_ref(),
                &format!("Source {i}"),
                &format!("s{i}@s.example"),
            )
            .await,
        );
    }
    let tasks: Vec<_> = orgs
        .iter()
        .map(|o| {
            let (c, id) = (c.clone(), o.id);
            tokio::spawn(async move { c.begin_rename(id, &name("Target"), None, &[]).await })
        })
        .collect();
    let mut won = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(_) => won += 1,
            Err(CatalogError::Conflict(Taken::OrgName)) => {}
            Err(e) => panic!("unexpected error: {e:?}"),
        }
    }
    assert_eq!(won, 1);
}

async fn rename_with_case_change_only(c: Arc<dyn Catalog>) {
    let o = create(c.as_ref(), "quiet", "q@q.example").await;
    let r = c
        .begin_rename(o.id, &name("QUIET"), None, &[])
        .await
        .unwrap();
    assert_eq!(
        r.state,
        OrgState::Renaming {
            to_name: name("QUIET"),
            to_collection: o.placement.collection.clone(),
            admin: None,
            target_cleared: false,
            events: Vec::new(),
        }
    );
    let done = c.commit_rename(o.id).await.unwrap();
    assert_eq!(done.name.as_str(), "QUIET");
    assert_eq!(done.placement.collection, o.placement.collection);
    assert_eq!(done.placement.epoch, 2);
    // The (unchanged) keys still belong to it.
    assert_eq!(
        c.org_by_name(&name("Quiet").normalized()).await.unwrap(),
        Some(done)
    );
    let dup = org("Quiet");
    assert_eq!(
        conflict(c.insert_org(&dup, &admin(&dup, "z@z.example")).await),
        Taken::OrgName
    );
    // Same with an abort.
    c.begin_rename(o.id, &name("Quiet"), None, &[])
        .await
        .unwrap();
    c.abort_rename(o.id).await.unwrap();
    assert_eq!(
        conflict(c.insert_org(&dup, &admin(&dup, "z@z.example")).await),
        Taken::OrgName
    );
}

fn drop_of(o: &OrgRecord, collection: &str) -> PendingDrop {
    PendingDrop {
        shard: o.placement.shard.clone(),
        database: o.placement.database.clone(),
        collection: name(collection).collection_name(),
        stash_to: None,
    }
}

async fn delete_records_pending_drops(c: Arc<dyn Catalog>) {
    let o = create(c.as_ref(), "Doomed", "d@d.example").await;
    let keep = create(c.as_ref(), "Keeper", "k@k.example").await;
    let admin_id = c.admins_of_org(o.id).await.unwrap()[0].id;
    assert_eq!(count_of(c.as_ref(), 1).await, 2);
    let removed = c.delete_org(o.id).await.unwrap();
    assert_eq!(removed, Some(o.clone()));
    assert_eq!(c.org_by_id(o.id).await.unwrap(), None);
    assert_eq!(c.org_by_name(&o.normalized_name()).await.unwrap(), None);
    assert_eq!(c.admin_by_email(&email("d@d.example")).await.unwrap(), None);
    assert_eq!(c.admin_by_id(admin_id).await.unwrap(), None);
    assert!(c.admins_of_org(o.id).await.unwrap().is_empty());
    assert_eq!(count_of(c.as_ref(), 1).await, 1);
    assert_eq!(c.list_orgs().await.unwrap(), vec![keep.clone()]);
    let drops = c.pending_drops().await.unwrap();
    assert_eq!(drops, vec![drop_of(&o, "Doomed")]);
    // Deleting again is a no-op.
    assert_eq!(c.delete_org(o.id).await.unwrap(), None);
    c.clear_pending_drop(&drops[0]).await.unwrap();
    c.clear_pending_drop(&drops[0]).await.unwrap();
    assert!(c.pending_drops().await.unwrap().is_empty());
    // Name and email can be used again.
    create(c.as_ref(), "doomed", "d@d.example").await;
    assert_eq!(count_of(c.as_ref(), 1).await, 2);
    // A `Creating` org (interrupted create) can be deleted too.
    let half = org("Half");
    c.insert_org(&half, &admin(&half, "h@h.example"))
        .await
        .unwrap();
    assert!(c.delete_org(half.id).await.unwrap().is_some());
    assert_eq!(count_of(c.as_ref(), 1).await, 2);
    assert_eq!(c.admin_by_email(&email("h@h.example")).await.unwrap(), None);
}

async fn delete_during_rename_drops_both_collections(c: Arc<dyn Catalog>) {
    let o = create(c.as_ref(), "Moving", "m@m.example").await;
    c.begin_rename(o.id, &name("Moved"), None, &[])
        .await
        .unwrap();
    assert!(c.delete_org(o.id).await.unwrap().is_some());
    let drops: BTreeSet<String> = c
        .pending_drops()
        .await
        .unwrap()
        .iter()
        .map(PendingDrop::key)
        .collect();
    let want: BTreeSet<String> = [drop_of(&o, "Moving").key(), drop_of(&o, "Moved").key()]
        .into_iter()
        .collect();
    assert_eq!(drops, want);
    // Both names are free.
    create(c.as_ref(), "moving", "m2@m.example").await;
    create(c.as_ref(), "moved", "m3@m.example").await;
}

async fn admin_updates(c: Arc<dyn Catalog>) {
    let o = create(c.as_ref(), "Admins", "one@a.example").await;
    create(c.as_ref(), "Others", "two@a.example").await;
    let read = c
        .admin_by_email(&email("one@a.example"))
        .await
        .unwrap()
        .unwrap();
    let mut a = read.clone();
    a.email = email("uno@a.example");
    a.password_hash = "$argon2id$changed".into();
    a.credential_version += 1;
    a.updated_at = Utc::now();
    let a = c.update_admin(&a, &[]).await.unwrap();
    assert!(
        a.revision > read.revision,
        "the write gets a newer revision"
    );
    assert_eq!(
        c.admin_by_email(&email("one@a.example")).await.unwrap(),
        None
    );
    assert_eq!(
        c.admin_by_email(&email("uno@a.example")).await.unwrap(),
        Some(a.clone())
    );
    assert_eq!(c.admin_by_id(a.id).await.unwrap(), Some(a.clone()));
    assert_eq!(c.admins_of_org(o.id).await.unwrap(), vec![a.clone()]);
    // A write based on the old read is refused: nothing is lost.
    let mut stale = read.clone();
    stale.credential_version = 9;
    assert!(matches!(
        c.update_admin(&stale, &[]).await,
        Err(CatalogError::Stale)
    ));
    assert_eq!(c.admin_by_id(a.id).await.unwrap(), Some(a.clone()));
    // Keeping the same email is fine.
    let mut same = a.clone();
    same.credential_version += 1;
    let a = c.update_admin(&same, &[]).await.unwrap();
    // Taking another admin's email is not.
    let mut stolen = a.clone();
    stolen.email = email("two@a.example");
    assert_eq!(conflict(c.update_admin(&stolen, &[]).await), Taken::Email);
    assert_eq!(c.admin_by_id(a.id).await.unwrap(), Some(a.clone()));
    // The old email is free again.
    create(c.as_ref(), "Third", "one@a.example").await;
    let mut ghost = a.clone();
    ghost.id = AdminId::generate();
    ghost.email = email("ghost@a.example");
    not_found(c.update_admin(&ghost, &[]).await);
}

async fn concurrent_admin_updates_lose_nothing(c: Arc<dyn Catalog>) {
    create(c.as_ref(), "Contended", "c@c.example").await;
    let read = c
        .admin_by_email(&email("c@c.example"))
        .await
        .unwrap()
        .unwrap();
    // Ten writers start from one read: exactly one wins, the others are told to retry.
    let tasks: Vec<_> = (0..10)
        .map(|i| {
            let (c, mut a) = (c.clone(), read.clone());
            tokio::spawn(async move {
                a.password_hash = format!("$argon2id$writer{i}");
                c.update_admin(&a, &[]).await
            })
        })
        .collect();
    let mut won = Vec::new();
    for t in tasks {
        match t.await.unwrap() {
            Ok(a) => won.push(a),
            Err(CatalogError::Stale) => {}
            Err(e) => panic!("unexpected error: {e:?}"),
        }
    }
    assert_eq!(won.len(), 1, "exactly one compare-and-set wins");
    assert_eq!(c.admin_by_id(read.id).await.unwrap(), Some(won[0].clone()));
}

async fn revisions_only_grow_and_fence_allocations_are_fresh(c: Arc<dyn Catalog>) {
    let before = c.current_revision().await.unwrap();
    let o = create(c.as_ref(), "Revisioned", "r@r.example").await;
    assert!(o.revision > before);
    let fence = c.next_revision().await.unwrap();
    assert!(fence > o.revision);
    assert_eq!(c.current_revision().await.unwrap(), fence);
    let renaming = c
        .begin_rename(o.id, &name("Revisioned Two"), None, &[])
        .await
        .unwrap();
    assert!(renaming.revision > fence);
    // Only the organization not active is read by recovery.
    let pending = c.orgs_not_active().await.unwrap();
    assert_eq!(pending.iter().map(|o| o.id).collect::<Vec<_>>(), vec![o.id]);
    let done = c.commit_rename(o.id).await.unwrap();
    assert!(done.revision > renaming.revision);
    assert!(c.orgs_not_active().await.unwrap().is_empty());
}

async fn instance_registry_and_leases(c: Arc<dyn Catalog>) {
    let now = Utc::now();
    let info = org_gateway::catalog::InstanceInfo {
        id: "i1".into(),
        version: "0".into(),
        listen: "127.0.0.1:1".into(),
        ops_listen: "127.0.0.1:2".into(),
        started_at: now,
        last_seen: now,
        lease_ms: 10_000,
        drain_ms: 1_000,
        applied_revision: 7,
        feed: "stream".into(),
        node_id: "n1".into(),
    };
    c.heartbeat(&info).await.unwrap();
    let mut newer = info.clone();
    newer.applied_revision = 9;
    c.heartbeat(&newer).await.unwrap();
    let listed = c.instances().await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].applied_revision, 9);
    assert!(listed[0].is_live(now));
    assert!(!listed[0].gone_for_fence(now + chrono::Duration::seconds(10)));
    assert!(listed[0].gone_for_fence(now + chrono::Duration::seconds(12)));
    c.remove_instance("i1").await.unwrap();
    assert!(c.instances().await.unwrap().is_empty());
    // A lease belongs to one holder until it expires or is released.
    let ttl = std::time::Duration::from_millis(300);
    assert_eq!(c.acquire_lease("l", "a", ttl).await.unwrap(), None);
    assert_eq!(
        c.acquire_lease("l", "a", ttl).await.unwrap(),
        None,
        "renewal"
    );
    assert_eq!(
        c.acquire_lease("l", "b", ttl).await.unwrap(),
        Some("a".to_owned())
    );
    tokio::time::sleep(std::time::Duration::from_millis(400)).await;
    assert_eq!(
        c.acquire_lease("l", "b", ttl).await.unwrap(),
        None,
        "expired"
    );
    // b renews for long, so what follows does not depend on how fast a loaded machine runs.
    let long = std::time::Duration::from_secs(60);
    assert_eq!(c.acquire_lease("l", "b", long).await.unwrap(), None);
    c.release_lease("l", "a").await.unwrap();
    assert_eq!(
        c.acquire_lease("l", "a", ttl).await.unwrap(),
        Some("b".to_owned()),
        "only the holder releases"
    );
    c.release_lease("l", "b").await.unwrap();
    assert_eq!(c.acquire_lease("l", "a", ttl).await.unwrap(), None);
}

async fn collection_counts(c: Arc<dyn Catalog>) {
    assert!(c.collection_counts().await.unwrap().is_empty());
    for (n, database) in [("c1", 1), ("c2", 1), ("c3", 2)] {
        let o = org_in(n, database);
        c.insert_org(&o, &admin(&o, &format!("{n}@c.example")))
            .await
            .unwrap();
    }
    assert_eq!(
        c.collection_counts().await.unwrap(),
        vec![(shard(), db(1), 2), (shard(), db(2), 1)]
    );
    c.set_collection_count(&shard(), &db(2), 7).await.unwrap();
    let other = ShardId::parse("s2").unwrap();
    c.set_collection_count(&other, &db(1), 0).await.unwrap();
    assert_eq!(
        c.collection_counts().await.unwrap(),
        vec![
            (shard(), db(1), 2),
            (shard(), db(2), 7),
            (other.clone(), db(1), 0)
        ]
    );
    // A count never goes below zero.
    c.set_collection_count(&shard(), &db(1), 0).await.unwrap();
    for o in c.list_orgs().await.unwrap() {
        if o.placement.database == db(1) {
            c.delete_org(o.id).await.unwrap();
        }
    }
    assert_eq!(count_of(c.as_ref(), 1).await, 0);
    let o = org_in("c4", 1);
    c.insert_org(&o, &admin(&o, "c4@c.example")).await.unwrap();
    assert_eq!(count_of(c.as_ref(), 1).await, 1);
}

async fn settings_round_trip(c: Arc<dyn Catalog>) {
    assert_eq!(c.get_setting("shards").await.unwrap(), None);
    let value = json!({
        "list": [{"id": "s2", "uri": "mongodb://h:1", "weight": 1.5}],
        "$odd.key": {"a.b": null, "n": 18_446_744_073_709_551_615_u64},
        "text": "x",
    });
    c.put_setting("shards", &value, &[]).await.unwrap();
    assert_eq!(c.get_setting("shards").await.unwrap(), Some(value));
    c.put_setting("shards", &json!([]), &[]).await.unwrap();
    assert_eq!(c.get_setting("shards").await.unwrap(), Some(json!([])));
    assert_eq!(c.get_setting("other").await.unwrap(), None);
}

/// Write marks (`backup --since`) keep the latest time per organization, whatever order they
/// arrive in, and do not touch the organization record (its revision drives caches).
async fn write_marks_keep_the_latest(c: Arc<dyn Catalog>) {
    let o = create(c.as_ref(), "Marked Co", "marks@x.io").await;
    let other = create(c.as_ref(), "Unmarked Co", "nomarks@x.io").await;
    assert_eq!(c.last_written(o.id).await.unwrap(), None);
    let t0 = chrono::DateTime::from_timestamp_millis(1_800_000_000_000).unwrap();
    let later = t0 + chrono::Duration::seconds(90);
    c.mark_written(o.id, t0).await.unwrap();
    assert_eq!(c.last_written(o.id).await.unwrap(), Some(t0));
    c.mark_written(o.id, later).await.unwrap();
    c.mark_written(o.id, t0).await.unwrap();
    assert_eq!(c.last_written(o.id).await.unwrap(), Some(later));
    assert_eq!(c.last_written(other.id).await.unwrap(), None);
    let stored = c.org_by_id(o.id).await.unwrap().unwrap();
    assert_eq!(stored.revision, o.revision, "the org record is untouched");
}

// ---- MongoDB-only: recovery of an interrupted delete -------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mongo_pending_drops_finish_an_interrupted_delete() {
    let Some(f) = Fixture::mongo().await else {
        return;
    };
    let c = f.catalog.clone();
    let o = create(c.as_ref(), "Interrupted", "i@i.example").await;
    // What a delete that crashed right after deciding leaves: the drop, tagged with the org.
    let (uri, db_name) = f.mongo.clone().unwrap();
    let client = mongodb::Client::with_uri_str(&uri).await.unwrap();
    let d = drop_of(&o, "Interrupted");
    client
        .database(&db_name)
        .collection::<bson::Document>("pending_drops")
        .insert_one(bson::doc! {
            "_id": d.key(),
            "org_id": o.id.to_string(),
            "drop": {
                "shard": d.shard.as_str(),
                "database": d.database.as_str(),
                "collection": d.collection.as_str(),
            },
        })
        .await
        .unwrap();
    assert_eq!(count_of(c.as_ref(), 1).await, 1);
    assert_eq!(c.pending_drops().await.unwrap(), vec![d]);
    // Listing the drops finished the delete before handing the collection out.
    assert_eq!(c.org_by_id(o.id).await.unwrap(), None);
    assert_eq!(c.admin_by_email(&email("i@i.example")).await.unwrap(), None);
    assert_eq!(count_of(c.as_ref(), 1).await, 0);
    f.cleanup().await;
}

async fn a_rename_whose_data_may_have_moved_cannot_be_aborted(c: Arc<dyn Catalog>) {
    let o = create(c.as_ref(), "Halfway", "h@w.example").await;
    let mut r = c
        .begin_rename(o.id, &name("Elsewhere"), None, &[])
        .await
        .unwrap();
    if let OrgState::Renaming { target_cleared, .. } = &mut r.state {
        *target_cleared = true;
    }
    c.put_org(&r).await.unwrap();
    // From here documents may be under the new name: only completing is safe.
    assert!(matches!(
        c.abort_rename(o.id).await,
        Err(CatalogError::Stale)
    ));
    let done = c.commit_rename(o.id).await.unwrap();
    assert_eq!(done.name, name("Elsewhere"));
}

async fn admins_are_added_and_removed(c: Arc<dyn Catalog>) {
    let o = create(&*c, "Admins Co", "first@admins.example").await;
    let other = create(&*c, "Other Co", "other@admins.example").await;
    let second = admin(&o, "second@admins.example");
    let stored = c.add_admin(&second, 3, &[]).await.unwrap();
    assert!(stored.revision > 0);
    assert_eq!(
        c.admin_by_email(&email("second@admins.example"))
            .await
            .unwrap()
            .map(unrev_admin),
        Some(unrev_admin(second.clone()))
    );
    assert_eq!(c.admins_of_org(o.id).await.unwrap().len(), 2);
    // Emails are unique across the gateway.
    assert_eq!(
        conflict(
            c.add_admin(&admin(&o, "other@admins.example"), 3, &[])
                .await
        ),
        Taken::Email
    );
    assert_eq!(
        conflict(
            c.add_admin(&admin(&o, "SECOND@admins.example"), 3, &[])
                .await
        ),
        Taken::Email
    );
    c.add_admin(&admin(&o, "third@admins.example"), 3, &[])
        .await
        .unwrap();
    assert!(matches!(
        c.add_admin(&admin(&o, "fourth@admins.example"), 3, &[])
            .await,
        Err(CatalogError::AdminLimit)
    ));
    // The refused ones left nothing behind: the email is free, the seat count right.
    assert_eq!(
        c.admin_by_email(&email("fourth@admins.example"))
            .await
            .unwrap(),
        None
    );
    // An admin of another organization is not found through this one.
    let others = c.admins_of_org(other.id).await.unwrap();
    assert_eq!(c.remove_admin(o.id, others[0].id, &[]).await.unwrap(), None);
    assert_eq!(
        c.remove_admin(o.id, AdminId::generate(), &[])
            .await
            .unwrap(),
        None
    );
    let removed = c.remove_admin(o.id, second.id, &[]).await.unwrap().unwrap();
    assert_eq!(removed.id, second.id);
    assert_eq!(c.admin_by_id(second.id).await.unwrap(), None);
    assert_eq!(
        c.admin_by_email(&email("second@admins.example"))
            .await
            .unwrap(),
        None
    );
    // A seat is free again.
    c.add_admin(&admin(&o, "fourth@admins.example"), 3, &[])
        .await
        .unwrap();
    let rest = c.admins_of_org(o.id).await.unwrap();
    assert_eq!(rest.len(), 3);
    c.remove_admin(o.id, rest[0].id, &[])
        .await
        .unwrap()
        .unwrap();
    c.remove_admin(o.id, rest[1].id, &[])
        .await
        .unwrap()
        .unwrap();
    assert!(matches!(
        c.remove_admin(o.id, rest[2].id, &[]).await,
        Err(CatalogError::LastAdmin)
    ));
    assert_eq!(c.admins_of_org(o.id).await.unwrap().len(), 1);
    // No admin for an organization that is gone; deleting one removes its admins.
    let gone = org("Gone Co");
    not_found(
        c.add_admin(&admin(&gone, "gone@admins.example"), 3, &[])
            .await,
    );
    c.delete_org(o.id).await.unwrap();
    assert!(c.admins_of_org(o.id).await.unwrap().is_empty());
    assert_eq!(
        c.admin_by_email(&email("fourth@admins.example"))
            .await
            .unwrap(),
        None
    );
}

async fn concurrent_adds_never_pass_the_cap(c: Arc<dyn Catalog>) {
    let o = create(&*c, "Crowded Co", "one@crowded.example").await;
    let tasks: Vec<_> = (0..12)
        .map(|i| {
            let (c, a) = (c.clone(), admin(&o, &format!("a{i}@crowded.example")));
            tokio::spawn(async move { c.add_admin(&a, 5, &[]).await })
        })
        .collect();
    let mut added = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(_) => added += 1,
            Err(CatalogError::AdminLimit) => {}
            Err(e) => panic!("unexpected {e:?}"),
        }
    }
    assert_eq!(added, 4, "one admin was there: four seats left");
    assert_eq!(c.admins_of_org(o.id).await.unwrap().len(), 5);
}

async fn concurrent_removals_never_remove_the_last_admin(c: Arc<dyn Catalog>) {
    for round in 0..5 {
        let o = create(
            &*c,
            &format!("Last {round}"),
            &format!("l{round}a@last.example"),
        )
        .await;
        for k in ["b", "c"] {
            c.add_admin(&admin(&o, &format!("l{round}{k}@last.example")), 10, &[])
                .await
                .unwrap();
        }
        let ids: Vec<AdminId> = c
            .admins_of_org(o.id)
            .await
            .unwrap()
            .iter()
            .map(|a| a.id)
            .collect();
        // Every admin removed at once, one of them twice.
        let tasks: Vec<_> = ids
            .iter()
            .chain(ids.first())
            .map(|id| {
                let (c, id, org) = (c.clone(), *id, o.id);
                tokio::spawn(async move { c.remove_admin(org, id, &[]).await })
            })
            .collect();
        let mut outcomes = Vec::new();
        for t in tasks {
            outcomes.push(match t.await.unwrap() {
                Ok(Some(_)) => "removed",
                Ok(None) => "absent",
                Err(CatalogError::LastAdmin) => "last",
                Err(e) => panic!("unexpected {e:?}"),
            });
        }
        let left = c.admins_of_org(o.id).await.unwrap();
        assert_eq!(left.len(), 1, "round {round}: {outcomes:?}");
        assert!(outcomes.contains(&"last"), "round {round}: {outcomes:?}");
        // The survivor still counts as the last one.
        assert!(matches!(
            c.remove_admin(o.id, left[0].id, &[]).await,
            Err(CatalogError::LastAdmin)
        ));
        c.add_admin(&admin(&o, &format!("l{round}d@last.example")), 2, &[])
            .await
            .unwrap();
        assert!(matches!(
            c.add_admin(&admin(&o, &format!("l{round}e@last.example")), 2, &[])
                .await,
            Err(CatalogError::AdminLimit)
        ));
    }
}

async fn orgs_by_name_pages_by_prefix(c: Arc<dyn Catalog>) {
    for (n, mail) in [
        ("Beta", "b"),
        ("alpha", "a"),
        ("Gamma", "g"),
        ("Alp", "p"),
        ("Alq", "q"),
    ] {
        create(&*c, n, &format!("{mail}@prefix.example")).await;
    }
    let names = |orgs: Vec<OrgRecord>| -> Vec<String> {
        orgs.into_iter().map(|o| o.name.to_string()).collect()
    };
    assert_eq!(
        names(c.orgs_by_name("", None, 10).await.unwrap()),
        ["Alp", "alpha", "Alq", "Beta", "Gamma"]
    );
    assert_eq!(
        names(c.orgs_by_name("alp", None, 10).await.unwrap()),
        ["Alp", "alpha"]
    );
    assert_eq!(
        names(c.orgs_by_name("", None, 2).await.unwrap()),
        ["Alp", "alpha"]
    );
    let after = name("ALPHA").normalized();
    assert_eq!(
        names(c.orgs_by_name("", Some(&after), 2).await.unwrap()),
        ["Alq", "Beta"]
    );
    assert_eq!(
        names(c.orgs_by_name("al", Some(&after), 5).await.unwrap()),
        ["Alq"]
    );
    assert!(c.orgs_by_name("z", None, 5).await.unwrap().is_empty());
    // A name reserved by a rename in progress is not a result; the current one is.
    let beta = c
        .org_by_name(&name("beta").normalized())
        .await
        .unwrap()
        .unwrap();
    c.begin_rename(beta.id, &name("Alpine"), None, &[])
        .await
        .unwrap();
    assert_eq!(
        names(c.orgs_by_name("alpi", None, 5).await.unwrap()),
        Vec::<String>::new()
    );
    assert_eq!(
        names(c.orgs_by_name("be", None, 5).await.unwrap()),
        ["Beta"]
    );
    c.commit_rename(beta.id).await.unwrap();
    assert_eq!(
        names(c.orgs_by_name("alpi", None, 5).await.unwrap()),
        ["Alpine"]
    );
    assert!(c.orgs_by_name("be", None, 5).await.unwrap().is_empty());
}

async fn audit_events_page_filter_and_purge(c: Arc<dyn Catalog>) {
    use org_gateway::catalog::{Actor, AuditEvent, EventQuery, EventType};
    let (a, b) = (OrgId::generate(), OrgId::generate());
    let mut written = Vec::new();
    for (i, (org, kind)) in [
        (Some(a), EventType::OrganizationCreated),
        (Some(b), EventType::OrganizationCreated),
        (Some(a), EventType::AdminLoginFailed),
        (None, EventType::LimitsChanged),
        (Some(a), EventType::AdminLoginSucceeded),
        (Some(a), EventType::AdminLoginFailed),
    ]
    .into_iter()
    .enumerate()
    {
        let e = AuditEvent::new(
            kind,
            org,
            Actor::System,
            Some(&format!("req-{i}")),
            json!({"i": i}),
        );
        c.append_event(&e).await.unwrap();
        written.push(e);
        // Distinct milliseconds, so `since` can split them.
        tokio::time::sleep(std::time::Duration::from_millis(3)).await;
    }
    let ids =
        |events: &[AuditEvent]| -> Vec<String> { events.iter().map(|e| e.id.clone()).collect() };
    let all = c
        .events(&EventQuery {
            limit: 100,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(all.events, written, "round trip, oldest first");
    assert_eq!(all.next_after, None);
    // One organization's, a page of two at a time.
    let mut q = EventQuery {
        organization: Some(a),
        limit: 2,
        ..Default::default()
    };
    let first = c.events(&q).await.unwrap();
    assert_eq!(
        ids(&first.events),
        [written[0].id.clone(), written[2].id.clone()]
    );
    q.after = first.next_after.clone();
    let second = c.events(&q).await.unwrap();
    assert_eq!(
        ids(&second.events),
        [written[4].id.clone(), written[5].id.clone()]
    );
    assert_eq!(second.next_after, None, "the last page");
    // By type, across organizations and within one.
    let failed = c
        .events(&EventQuery {
            kind: Some(EventType::AdminLoginFailed),
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(
        ids(&failed.events),
        [written[2].id.clone(), written[5].id.clone()]
    );
    let b_created = c
        .events(&EventQuery {
            organization: Some(b),
            kind: Some(EventType::OrganizationCreated),
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(ids(&b_created.events), [written[1].id.clone()]);
    // A time window.
    let window = c
        .events(&EventQuery {
            since: Some(written[2].at),
            until: Some(written[4].at),
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(ids(&window.events), ids(&written[2..5]));
    // Retention: everything before the fourth event goes.
    let removed = c.purge_events(written[3].at).await.unwrap();
    assert_eq!(removed, 3);
    let left = c
        .events(&EventQuery {
            limit: 100,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(left.events, written[3..]);
    let a_left = c
        .events(&EventQuery {
            organization: Some(a),
            limit: 100,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(
        ids(&a_left.events),
        [written[4].id.clone(), written[5].id.clone()]
    );
}

/// Organizations written before the indexed `name` field existed are found by prefix once a
/// catalog of this version opens the database (it backfills the field).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mongo_orgs_from_before_the_name_field_are_searchable() {
    let Some(uri) = mongo_env::uri() else { return };
    let db = mongo_env::unique_db("catname");
    let catalog = MongoCatalog::open(&uri, &db).await.expect("open");
    create(&catalog, "Legacy Co", "legacy@old.example").await;
    let client = mongodb::Client::with_uri_str(&uri).await.unwrap();
    let orgs = client
        .database(&db)
        .collection::<bson::Document>("organizations");
    let r = orgs
        .update_many(bson::doc! {}, bson::doc! { "$unset": { "name": "" } })
        .await
        .unwrap();
    assert_eq!(r.modified_count, 1);
    assert!(catalog
        .orgs_by_name("legacy", None, 5)
        .await
        .unwrap()
        .is_empty());
    drop(catalog);
    let reopened = MongoCatalog::open(&uri, &db).await.expect("reopen");
    let found = reopened.orgs_by_name("legacy", None, 5).await.unwrap();
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].name.as_str(), "Legacy Co");
    mongo_env::drop_db(&uri, &db).await;
}

/// The change feed carries what the caches follow and nothing else: audit events, write marks
/// and a move's change log written before a setting do not reach the feed, the setting does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mongo_change_feed_carries_only_followed_collections() {
    use org_gateway::catalog::{Actor, AuditEvent, CatalogChange, EventType};
    let Some(uri) = mongo_env::uri() else { return };
    let db = mongo_env::unique_db("catfeed");
    let catalog = MongoCatalog::open(&uri, &db).await.expect("open");
    let mut feed = catalog.watch(None).await.unwrap().expect("a change stream");
    let org_id = OrgId::generate();
    for i in 0..5 {
        let event = AuditEvent::new(
            EventType::AdminLoginFailed,
            Some(org_id),
            Actor::System,
            None,
            json!({ "i": i }),
        );
        catalog.append_event(&event).await.unwrap();
        catalog.mark_written(org_id, Utc::now()).await.unwrap();
        catalog
            .log_move_changes("0123456789abcdef0123456789abcdef", &[format!("doc-{i}")])
            .await
            .unwrap();
    }
    catalog
        .put_setting("feed_probe", &json!({"on": true}), &[])
        .await
        .unwrap();
    let first = loop {
        match poll(&mut feed).await.expect("the stream is open") {
            CatalogChange::Idle => continue,
            change => break change,
        }
    };
    assert!(
        matches!(&first, CatalogChange::Setting(k) if k == "feed_probe"),
        "{first:?}"
    );
    mongo_env::drop_db(&uri, &db).await;
}

/// The events' TTL index follows the retention setting: created, then changed in place.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mongo_event_retention_is_a_ttl_index_that_follows_the_setting() {
    let Some(uri) = mongo_env::uri() else { return };
    let db = mongo_env::unique_db("catttl");
    let catalog = MongoCatalog::open(&uri, &db).await.expect("open");
    let client = mongodb::Client::with_uri_str(&uri).await.unwrap();
    let events = client.database(&db).collection::<bson::Document>("events");
    let ttl = || async {
        use futures_util::TryStreamExt;
        let indexes: Vec<mongodb::IndexModel> = events
            .list_indexes()
            .await
            .unwrap()
            .try_collect()
            .await
            .unwrap();
        indexes
            .into_iter()
            .find(|i| i.keys == bson::doc! { "at": 1 })
            .and_then(|i| i.options?.expire_after)
    };
    let day = std::time::Duration::from_secs(86_400);
    catalog.expire_events_after(day * 90).await.unwrap();
    assert_eq!(ttl().await, Some(day * 90));
    catalog.expire_events_after(day * 30).await.unwrap();
    assert_eq!(ttl().await, Some(day * 30));
    mongo_env::drop_db(&uri, &db).await;
}

// ---- Tombstones (soft delete) ------------------------------------------------------------------

fn days(n: i64) -> chrono::DateTime<Utc> {
    Utc::now() + chrono::Duration::days(n)
}

async fn tombstones_keep_an_organization_until_restored(c: Arc<dyn Catalog>) {
    let o = create(c.as_ref(), "Sleeper", "s@s.example").await;
    let admin_before = c.admins_of_org(o.id).await.unwrap()[0].clone();
    assert_eq!(count_of(c.as_ref(), 1).await, 1);
    let t = c
        .tombstone_org(o.id, Utc::now(), days(30), Some(42), &[])
        .await
        .unwrap()
        .unwrap();
    assert_eq!(t.phase, TombstonePhase::Kept);
    assert_eq!(t.admins.len(), 1);
    assert_eq!(t.admins[0].password_hash, admin_before.password_hash);
    assert_eq!(t.size_bytes, Some(42));
    // gone from every live key; still counted
    assert_eq!(c.org_by_id(o.id).await.unwrap(), None);
    assert_eq!(c.org_by_name(&o.normalized_name()).await.unwrap(), None);
    assert_eq!(c.admin_by_email(&email("s@s.example")).await.unwrap(), None);
    assert_eq!(c.admin_by_id(admin_before.id).await.unwrap(), None);
    assert_eq!(count_of(c.as_ref(), 1).await, 1);
    assert_eq!(c.pending_drops().await.unwrap(), vec![t.stash()]);
    let listed = c.tombstones(None, 10).await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].org.id, o.id);
    assert!(c.tombstones(Some(o.id), 10).await.unwrap().is_empty());
    // a second delete finds nothing
    assert!(c
        .tombstone_org(o.id, Utc::now(), days(30), None, &[])
        .await
        .unwrap()
        .is_none());
    // not restorable while its data has not been set aside
    assert!(matches!(
        c.restore_org(o.id, &name("Sleeper"), &[]).await,
        Err(CatalogError::Stale)
    ));
    c.clear_pending_drop(&t.stash()).await.unwrap();
    // the name and the email are free for others
    let other = create(c.as_ref(), "sleeper", "s@s.example").await;
    assert_eq!(
        conflict(c.restore_org(o.id, &name("Sleeper"), &[]).await),
        Taken::OrgName
    );
    assert_eq!(
        conflict(c.restore_org(o.id, &name("Woken"), &[]).await),
        Taken::Email
    );
    // a failed restore left it kept and nothing behind
    assert_eq!(c.tombstones(None, 10).await.unwrap().len(), 1);
    assert_eq!(
        c.org_by_name(&name("Woken").normalized()).await.unwrap(),
        None
    );
    assert!(c
        .tombstone_org(other.id, Utc::now(), days(1), None, &[])
        .await
        .unwrap()
        .is_some());
    let restoring = c.restore_org(o.id, &name("Woken"), &[]).await.unwrap();
    assert_eq!(restoring.name, name("Woken"));
    assert_eq!(restoring.placement.collection, t.collection);
    assert!(matches!(
        &restoring.state,
        OrgState::Renaming { to_name, to_collection, .. }
            if *to_name == name("Woken") && to_collection.as_str() == "org_woken"
    ));
    let back = c
        .admin_by_email(&email("s@s.example"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(back.id, admin_before.id);
    assert_eq!(back.password_hash, admin_before.password_hash);
    assert!(back.credential_version > admin_before.credential_version);
    let left: Vec<OrgId> = c
        .tombstones(None, 10)
        .await
        .unwrap()
        .iter()
        .map(|t| t.org.id)
        .collect();
    assert_eq!(left, vec![other.id]);
    assert!(c.tombstone(o.id).await.unwrap().is_none());
    not_found(c.restore_org(o.id, &name("Again"), &[]).await);
    let done = c.commit_rename(o.id).await.unwrap();
    assert_eq!(done.state, OrgState::Active);
    assert_eq!(done.placement.collection.as_str(), "org_woken");
    assert_eq!(
        c.org_by_name(&name("woken").normalized())
            .await
            .unwrap()
            .unwrap()
            .id,
        o.id
    );
    assert_eq!(count_of(c.as_ref(), 1).await, 2);
}

async fn purging_a_tombstone_uncounts_and_drops_its_data(c: Arc<dyn Catalog>) {
    let o = create(c.as_ref(), "Gone", "g@g.example").await;
    let t = c
        .tombstone_org(o.id, Utc::now(), days(30), None, &[])
        .await
        .unwrap()
        .unwrap();
    assert!(matches!(
        c.purge_tombstone(o.id, &[]).await,
        Err(CatalogError::Stale)
    ));
    c.clear_pending_drop(&t.stash()).await.unwrap();
    let purged = c.purge_tombstone(o.id, &[]).await.unwrap().unwrap();
    assert_eq!(purged.org.id, o.id);
    assert_eq!(count_of(c.as_ref(), 1).await, 0);
    assert_eq!(c.pending_drops().await.unwrap(), vec![t.purge_drop()]);
    assert!(c.purge_tombstone(o.id, &[]).await.unwrap().is_none());
    not_found(c.restore_org(o.id, &name("Gone"), &[]).await);
    assert!(c.tombstones(None, 10).await.unwrap().is_empty());
}

/// What a soft delete interrupted on MongoDB leaves, at each step, is finished or rolled back
/// by `settle_tombstones`, and its stash is never handed out while the organization is live.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mongo_interrupted_tombstone_changes_are_settled() {
    let Some(f) = Fixture::mongo().await else {
        return;
    };
    let c = f.catalog.clone();
    let (uri, db_name) = f.mongo.clone().unwrap();
    let client = mongodb::Client::with_uri_str(&uri).await.unwrap();
    let database = client.database(&db_name);
    let tombs = database.collection::<bson::Document>("tombstones");
    let pending = database.collection::<bson::Document>("pending_drops");
    let zero = std::time::Duration::ZERO;

    // 1. Crashed after writing the tombstone and the stash, before removing the org.
    let o = create(c.as_ref(), "Half Deleted", "h@d.example").await;
    let t = c
        .tombstone_org(o.id, Utc::now(), days(30), None, &[])
        .await
        .unwrap()
        .unwrap();
    let mut t = t;
    // Put the org, its admin and the `deleting` phase back as they were before the removal.
    c.clear_pending_drop(&t.stash()).await.unwrap();
    tombs
        .delete_one(bson::doc! {"_id": o.id.to_string()})
        .await
        .unwrap();
    let o = create(c.as_ref(), "Half Deleted", "h@d.example").await;
    t.org = o.clone();
    t.admins = c.admins_of_org(o.id).await.unwrap();
    t.phase = TombstonePhase::Deleting;
    t.collection = org_gateway::domain::CollectionName::tombstone(o.id);
    let record = bson::to_document(&serde_json::to_value(&t).unwrap()).unwrap();
    tombs
        .insert_one(
            bson::doc! {"_id": o.id.to_string(), "phase": "deleting", "record": record.clone()},
        )
        .await
        .unwrap();
    let stash = t.stash();
    pending
        .insert_one(bson::doc! {
            "_id": stash.key(),
            "org_id": o.id.to_string(),
            "drop": bson::to_document(&serde_json::to_value(&stash).unwrap()).unwrap(),
        })
        .await
        .unwrap();
    // The org is live: its stash is not handed out.
    assert!(c.pending_drops().await.unwrap().is_empty());
    assert!(c.tombstones(None, 10).await.unwrap().is_empty());
    assert_eq!(c.settle_tombstones(zero).await.unwrap(), 1);
    assert_eq!(c.org_by_id(o.id).await.unwrap(), None);
    assert_eq!(c.admin_by_email(&email("h@d.example")).await.unwrap(), None);
    assert_eq!(c.pending_drops().await.unwrap(), vec![stash.clone()]);
    let kept = c.tombstones(None, 10).await.unwrap();
    assert_eq!(kept.len(), 1);
    assert_eq!(kept[0].admins.len(), 1);
    c.clear_pending_drop(&stash).await.unwrap();

    // 2. Crashed after writing the tombstone only: the delete was not decided, rolled back.
    let p = create(c.as_ref(), "Undecided", "u@d.example").await;
    let mut tp = kept[0].clone();
    tp.org = p.clone();
    tp.admins = c.admins_of_org(p.id).await.unwrap();
    tp.phase = TombstonePhase::Deleting;
    tp.collection = org_gateway::domain::CollectionName::tombstone(p.id);
    let record = bson::to_document(&serde_json::to_value(&tp).unwrap()).unwrap();
    tombs
        .insert_one(bson::doc! {"_id": p.id.to_string(), "phase": "deleting", "record": record})
        .await
        .unwrap();
    assert_eq!(c.settle_tombstones(zero).await.unwrap(), 1);
    assert!(c.tombstone(p.id).await.unwrap().is_none());
    assert_eq!(c.org_by_id(p.id).await.unwrap().unwrap().id, p.id);
    assert!(c
        .admin_by_email(&email("u@d.example"))
        .await
        .unwrap()
        .is_some());

    // 3. A restore that crashed after marking the tombstone, before inserting the org: kept
    // again.
    tombs
        .update_one(
            bson::doc! {"_id": o.id.to_string()},
            bson::doc! {"$set": {"phase": "restoring", "record.phase": "restoring"}},
        )
        .await
        .unwrap();
    assert!(c.tombstones(None, 10).await.unwrap().is_empty());
    assert_eq!(c.settle_tombstones(zero).await.unwrap(), 1);
    assert_eq!(c.tombstones(None, 10).await.unwrap().len(), 1);
    // and then it restores
    let r = c
        .restore_org(o.id, &name("Half Deleted"), &[])
        .await
        .unwrap();
    assert!(matches!(r.state, OrgState::Renaming { .. }));
    assert!(c
        .admin_by_email(&email("h@d.example"))
        .await
        .unwrap()
        .is_some());
    f.cleanup().await;
}

async fn poll(
    feed: &mut org_gateway::catalog::ChangeStream,
) -> Option<org_gateway::catalog::CatalogChange> {
    tokio::time::timeout(std::time::Duration::from_secs(20), feed.next_change())
        .await
        .expect("an idle feed answers")
        .unwrap()
}

/// While nothing the caches follow changes, the feed still answers (a poll that found nothing)
/// and its resume token moves past the changes it filtered out, so a stream reopened later
/// resumes from a point the server's history still holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mongo_an_idle_feed_keeps_its_resume_point_current() {
    use org_gateway::catalog::{Actor, AuditEvent, CatalogChange, EventType};
    let Some(uri) = mongo_env::uri() else { return };
    let db = mongo_env::unique_db("catidle");
    let catalog = MongoCatalog::open(&uri, &db).await.expect("open");
    let mut feed = catalog.watch(None).await.unwrap().expect("a change stream");
    assert_eq!(poll(&mut feed).await, Some(CatalogChange::Idle));
    let before = format!("{:?}", feed.resume_token().expect("a resume token"));
    for i in 0..5 {
        let event = AuditEvent::new(
            EventType::AdminLoginFailed,
            Some(OrgId::generate()),
            Actor::System,
            None,
            json!({ "i": i }),
        );
        catalog.append_event(&event).await.unwrap();
    }
    let mut moved = false;
    for _ in 0..5 {
        assert_eq!(poll(&mut feed).await, Some(CatalogChange::Idle));
        moved |= format!("{:?}", feed.resume_token().unwrap()) != before;
    }
    assert!(moved, "the resume token stayed at {before}");
    mongo_env::drop_db(&uri, &db).await;
}
