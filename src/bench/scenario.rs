//! What the virtual users do: the set-up of fixture organizations, the request loop of each
//! scenario, and the clean-up.
//!
//! `original` replays the original FastAPI service's traffic as a lifecycle per user:
//! create an org, log its admin in, then reads and writes of the org and its data, an email
//! change and finally the delete (12 requests; 2 of them hash a password):
//!
//! `create, login, get, data_write, data_read, get, update, data_read, data_write, get,
//! data_read, delete`.
//!
//! Every cycle uses a fresh organization, so the per-organization rate limit is spread over
//! as many orgs as there are cycles. `get-org` and `data-read` spread their requests over the
//! `--orgs` fixture organizations, each user starting at a different one.

use super::client::{inserted_id, Api, Reply};
use super::pace::{Pace, Slot};
use super::stats::{Op, Outcome, Stats};
use futures_util::{stream, StreamExt};
use parking_lot::Mutex;
use serde_json::json;
use std::sync::Arc;
use std::time::Instant;

/// The request mix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Scenario {
    /// The original service's mix: org lifecycle plus tenant data reads and writes.
    Original,
    /// Only `GET /org/get?organization_name=` (served from the metadata cache).
    GetOrg,
    /// Only `GET /data/{id}` with a valid token.
    DataRead,
}

impl Scenario {
    /// The name used on the command line and in reports.
    pub fn name(self) -> &'static str {
        match self {
            Scenario::Original => "original",
            Scenario::GetOrg => "get-org",
            Scenario::DataRead => "data-read",
        }
    }

    /// The operations this scenario sends.
    pub fn ops(self) -> &'static [Op] {
        match self {
            Scenario::Original => &ORIGINAL_OPS,
            Scenario::GetOrg => &[Op::Get],
            Scenario::DataRead => &[Op::DataRead],
        }
    }
}

const ORIGINAL_OPS: [Op; 7] = [
    Op::Create,
    Op::Login,
    Op::Get,
    Op::Update,
    Op::Delete,
    Op::DataWrite,
    Op::DataRead,
];

/// An organization the harness created and must delete.
#[derive(Debug, Clone)]
pub struct BenchOrg {
    /// Organization name.
    pub name: String,
    /// Current admin email.
    pub email: String,
    /// Bearer token of its admin, once logged in.
    pub token: Option<String>,
    /// A document id in its collection (data-read).
    pub doc_id: Option<String>,
}

/// Everything the users share.
#[derive(Debug)]
pub struct Run {
    /// The API under test.
    pub api: Api,
    /// The pacer.
    pub pace: Pace,
    /// Measured figures.
    pub stats: Stats,
    /// Prefix of every name this run creates: `bench-<run id>`.
    pub prefix: String,
    /// Admin password of every org this run creates.
    pub password: String,
    /// Fixture organizations (read scenarios).
    pub fixtures: Vec<BenchOrg>,
    /// Organizations left behind by interrupted cycles, for the clean-up.
    pub leftovers: Mutex<Vec<BenchOrg>>,
    /// 429s seen outside the measured window (warm-up, set-up).
    pub unmeasured_rate_limited: std::sync::atomic::AtomicU64,
}

/// What one user does.
#[derive(Debug, Clone)]
pub enum Work {
    /// A scenario.
    Scenario(Scenario),
    /// A plain GET of this path.
    Raw(String),
}

impl Run {
    async fn timed<F: std::future::Future<Output = Reply>>(
        &self,
        op: Op,
        slot: Slot,
        call: F,
    ) -> Reply {
        let reply = call.await;
        if slot.measured {
            let done = Instant::now();
            let in_window = self.pace.window_end().is_none_or(|end| done <= end);
            self.stats
                .record(op, done - slot.intended, &reply.outcome, in_window);
        } else if reply.outcome == Outcome::RateLimited {
            self.unmeasured_rate_limited
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        reply
    }

    /// The request loop of virtual user `user` (of `users`).
    pub async fn user(self: Arc<Self>, work: Work, user: usize) {
        match work {
            Work::Raw(path) => {
                while let Some(slot) = self.pace.next().await {
                    self.timed(Op::Raw, slot, self.api.raw_get(&path)).await;
                }
            }
            Work::Scenario(Scenario::GetOrg) => {
                let mut i = user;
                while let Some(slot) = self.pace.next().await {
                    let org = &self.fixtures[i % self.fixtures.len()];
                    self.timed(Op::Get, slot, self.api.get_org(&org.name)).await;
                    i += 1;
                }
            }
            Work::Scenario(Scenario::DataRead) => {
                let mut i = user;
                while let Some(slot) = self.pace.next().await {
                    let org = &self.fixtures[i % self.fixtures.len()];
                    let (token, id) = (
                        org.token.as_deref().unwrap_or_default(),
                        org.doc_id.as_deref().unwrap_or_default(),
                    );
                    self.timed(Op::DataRead, slot, self.api.read(token, id))
                        .await;
                    i += 1;
                }
            }
            Work::Scenario(Scenario::Original) => {
                let mut cycle = 0u64;
                while self.original_cycle(user, cycle).await {
                    cycle += 1;
                }
            }
        }
    }

    /// One lifecycle of the original mix; `false` once the budget is spent.
    async fn original_cycle(&self, user: usize, cycle: u64) -> bool {
        let name = format!("{}-u{user}-c{cycle}", self.prefix);
        let mut org = BenchOrg {
            email: format!("{name}@example.com"),
            name,
            token: None,
            doc_id: None,
        };
        let pw = self.password.as_str();
        macro_rules! step {
            ($op:expr, $call:expr) => {
                match self.pace.next().await {
                    Some(slot) => self.timed($op, slot, $call).await,
                    None => {
                        self.leave(org);
                        return false;
                    }
                }
            };
        }
        // Nothing to clean up until the create is acknowledged.
        let Some(slot) = self.pace.next().await else {
            return false;
        };
        let created = self
            .timed(
                Op::Create,
                slot,
                self.api.create_org(&org.name, &org.email, pw),
            )
            .await;
        if created.outcome != Outcome::Ok {
            // A create that timed out (here or in the gateway) may still have landed.
            if matches!(&created.outcome, Outcome::Error(k) if k == "timeout" || k == "503") {
                self.leave(org);
            }
            // A well-behaved client waits as told before trying again.
            if let Some(wait) = created.retry_after {
                tokio::time::sleep(wait.min(MAX_BACKOFF)).await;
            }
            return true;
        }
        let login = step!(Op::Login, self.api.login(&org.email, pw));
        let Some(token) = login.str_field("access_token") else {
            self.leave(org);
            return true;
        };
        org.token = Some(token.clone());
        let t = token.as_str();
        step!(Op::Get, self.api.get_org(&org.name));
        let written = step!(Op::DataWrite, self.api.insert(t, &json!({"v": 1})));
        let id = inserted_id(&written).unwrap_or_else(|| "000000000000000000000000".into());
        step!(Op::DataRead, self.api.read(t, &id));
        step!(Op::Get, self.api.get_org(&org.name));
        let new_email = format!("{}-new@example.com", org.name);
        let updated = step!(Op::Update, self.api.update_email(t, &org.name, &new_email));
        if updated.outcome == Outcome::Ok {
            org.email = new_email;
        }
        step!(Op::DataRead, self.api.read(t, &id));
        step!(Op::DataWrite, self.api.insert(t, &json!({"v": 2})));
        step!(Op::Get, self.api.get_org(&org.name));
        step!(Op::DataRead, self.api.read(t, &id));
        let deleted = step!(Op::Delete, self.api.delete_org(t, &org.name));
        if deleted.outcome != Outcome::Ok {
            self.leave(org);
        }
        true
    }

    fn leave(&self, org: BenchOrg) {
        self.leftovers.lock().push(org);
    }
}

/// Longest a virtual user honours a `Retry-After` before trying again.
const MAX_BACKOFF: std::time::Duration = std::time::Duration::from_secs(2);

/// Parallel requests during set-up and clean-up.
const SETUP_CONCURRENCY: usize = 16;

/// Creates `n` fixture orgs, logs their admins in and, if `with_doc`, inserts one document
/// each. Returns the orgs created so far and the first failure, if any.
pub async fn setup(
    api: &Api,
    prefix: &str,
    password: &str,
    n: usize,
    with_doc: bool,
) -> (Vec<BenchOrg>, Option<String>) {
    let results: Vec<Result<BenchOrg, (Option<BenchOrg>, String)>> = stream::iter(0..n)
        .map(|i| async move {
            let name = format!("{prefix}-{i}");
            let mut org = BenchOrg {
                email: format!("{name}@example.com"),
                name,
                token: None,
                doc_id: None,
            };
            let r = api.create_org(&org.name, &org.email, password).await;
            check("create", &org.name, &r).map_err(|e| (None, e))?;
            let r = api.login(&org.email, password).await;
            if let Err(e) = check("login", &org.name, &r) {
                return Err((Some(org), e));
            }
            org.token = r.str_field("access_token");
            if with_doc {
                let token = org.token.clone().unwrap_or_default();
                let r = api.insert(&token, &json!({"v": 1})).await;
                if let Err(e) = check("insert", &org.name, &r) {
                    return Err((Some(org), e));
                }
                org.doc_id = inserted_id(&r);
            }
            Ok(org)
        })
        .buffer_unordered(SETUP_CONCURRENCY)
        .collect()
        .await;
    let mut orgs = Vec::with_capacity(n);
    let mut first_error = None;
    for r in results {
        match r {
            Ok(org) => orgs.push(org),
            Err((org, e)) => {
                orgs.extend(org);
                first_error.get_or_insert(e);
            }
        }
    }
    (orgs, first_error)
}

fn check(what: &str, name: &str, r: &Reply) -> Result<(), String> {
    match &r.outcome {
        Outcome::Ok => Ok(()),
        Outcome::RateLimited => Err(format!("{what} {name}: 429 rate limited")),
        Outcome::Error(kind) => Err(format!("{what} {name}: {kind}")),
    }
}

/// Deletes the given orgs (logging in first where no token is known), retrying failures
/// twice. Returns how many are gone and why the others are not.
pub async fn cleanup(api: &Api, password: &str, orgs: Vec<BenchOrg>) -> (u64, Vec<String>) {
    let mut pending = orgs;
    let mut deleted = 0u64;
    let mut reasons = Vec::new();
    for attempt in 0..3 {
        if attempt > 0 {
            tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        }
        let results: Vec<Result<(), (BenchOrg, String)>> = stream::iter(pending)
            .map(|org| delete_one(api, password, org))
            .buffer_unordered(SETUP_CONCURRENCY)
            .collect()
            .await;
        pending = Vec::new();
        reasons.clear();
        for r in results {
            match r {
                Ok(()) => deleted += 1,
                Err((org, why)) => {
                    pending.push(org);
                    reasons.push(why);
                }
            }
        }
        if pending.is_empty() {
            break;
        }
    }
    (deleted, reasons)
}

async fn delete_one(
    api: &Api,
    password: &str,
    mut org: BenchOrg,
) -> Result<(), (BenchOrg, String)> {
    let token = match org.token.clone() {
        Some(t) => t,
        None => {
            // Check first: a failed login counts against the gateway's login throttle for
            // this client address.
            let found = api.get_org(&org.name).await;
            match found.outcome {
                Outcome::Ok => {}
                Outcome::Error(k) if k == "404" => return Ok(()), // the create never landed
                other => return Err((org, format!("get: {other:?}"))),
            }
            let login = api.login(&org.email, password).await;
            match login.str_field("access_token") {
                Some(t) => {
                    org.token = Some(t.clone());
                    t
                }
                None => return Err((org, format!("login: {:?}", login.outcome))),
            }
        }
    };
    match api.delete_org(&token, &org.name).await.outcome {
        Outcome::Ok => Ok(()),
        Outcome::Error(k) if k == "404" => Ok(()), // an earlier delete landed after all
        other => Err((org, format!("delete: {other:?}"))),
    }
}

/// Waits for every user to finish; returns when the last one did.
pub async fn drive(run: Arc<Run>, work: Work, users: usize) -> Instant {
    let handles: Vec<_> = (0..users)
        .map(|u| tokio::spawn(run.clone().user(work.clone(), u)))
        .collect();
    for h in handles {
        let _ = h.await;
    }
    Instant::now()
}
