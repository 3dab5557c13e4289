//! What the virtual users do: the set-up of fixture organizations, the request loop of each
//! scenario, and the clean-up.
//!
//! `original` mirrors the original service's Locust test (`benches/locust/locustfile.py`):
//! users start at `--spawn-rate` a second; each creates its own organization and logs in, then
//! waits `--think-time` (1-3 s) before each task, picked by weight: get its organization 5,
//! query its data 4, insert a document 3, change its admin email 1, log in again 1.
//!
//! `churn` runs an organization's whole lifecycle per cycle, with no think time: create an
//! org, log its admin in, then reads and writes of the org and its data, an email change and
//! finally the delete (12 requests; 2 of them hash a password):
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
use std::time::{Duration, Instant};

/// The request mix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Scenario {
    /// The original service's Locust test: each user the admin of its own organization,
    /// with think time between weighted tasks, users spawned at `--spawn-rate`.
    Original,
    /// Organization lifecycles back to back (create, login, reads, writes, update, delete).
    Churn,
    /// Only `GET /org/get?organization_name=` (served from the metadata cache).
    GetOrg,
    /// Only `GET /data/{id}` with a valid token.
    DataRead,
    /// A flood of creates, each from its own client address (sent as `X-Forwarded-For`: run
    /// the gateway with `limits.trusted_proxies = ["127.0.0.1/32"]`), with one login of a
    /// fixture organization's admin for every ten creates: what logins wait for while creates
    /// fill the hashing threads. Open loop only.
    CreateFlood,
}

impl Scenario {
    /// The name used on the command line and in reports.
    pub fn name(self) -> &'static str {
        match self {
            Scenario::Original => "original",
            Scenario::Churn => "churn",
            Scenario::GetOrg => "get-org",
            Scenario::DataRead => "data-read",
            Scenario::CreateFlood => "create-flood",
        }
    }

    /// The operations this scenario sends.
    pub fn ops(self) -> &'static [Op] {
        match self {
            Scenario::Original => &USER_OPS,
            Scenario::Churn => &CHURN_OPS,
            Scenario::GetOrg => &[Op::Get],
            Scenario::DataRead => &[Op::DataRead],
            Scenario::CreateFlood => &[Op::Create, Op::Login],
        }
    }
}

const USER_OPS: [Op; 6] = [
    Op::Create,
    Op::Login,
    Op::Get,
    Op::Update,
    Op::DataWrite,
    Op::DataQuery,
];

const CHURN_OPS: [Op; 7] = [
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
    /// How `original` users pace themselves.
    pub users: UserModel,
    /// Figures of requests sent while users were still being spawned, and after.
    pub phases: Option<Phases>,
}

/// Think time and ramp-up of the `original` users.
#[derive(Debug, Clone, Copy)]
pub struct UserModel {
    /// Shortest wait before a task.
    pub think_min: Duration,
    /// Longest wait before a task.
    pub think_max: Duration,
    /// Users started per second (`None`: all at once).
    pub spawn_rate: Option<f64>,
    /// Start users in batches as Locust's dispatcher does: `floor(rate)` users together, one
    /// batch every `floor(rate) / rate` seconds (rather than one every `1 / rate`).
    pub in_batches: bool,
}

impl UserModel {
    /// When user `user` starts, after the run's start.
    pub fn start_offset(&self, user: usize) -> Duration {
        match self.spawn_rate {
            Some(r) if r > 0.0 && self.in_batches => {
                let batch = r.floor().max(1.0);
                Duration::from_secs_f64((user as f64 / batch).floor() * batch / r)
            }
            Some(r) if r > 0.0 => Duration::from_secs_f64(user as f64 / r),
            _ => Duration::ZERO,
        }
    }

    /// A think time drawn uniformly between the bounds.
    fn think(&self) -> Duration {
        if self.think_max <= self.think_min {
            return self.think_min;
        }
        rand::Rng::gen_range(&mut rand::thread_rng(), self.think_min..=self.think_max)
    }
}

/// Separate figures for the ramp-up (until the last user started) and the steady state.
#[derive(Debug, Default)]
pub struct Phases {
    /// When the last user starts.
    pub ramp_end: Option<Instant>,
    /// Requests sent before `ramp_end`.
    pub ramp: Stats,
    /// Requests sent after.
    pub steady: Stats,
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
            if let Some(p) = &self.phases {
                let phase = match p.ramp_end {
                    Some(end) if slot.intended < end => &p.ramp,
                    _ => &p.steady,
                };
                phase.record(op, done - slot.intended, &reply.outcome, in_window);
            }
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
            Work::Scenario(Scenario::CreateFlood) => {
                let mut i = user;
                while let Some(slot) = self.pace.next().await {
                    // Drawn before any await: the thread's generator cannot be held across one.
                    let (login, address) = {
                        let mut rng = rand::thread_rng();
                        (
                            rand::Rng::gen_ratio(&mut rng, 1, 11),
                            format!(
                                "10.{}.{}.{}",
                                rand::Rng::gen::<u8>(&mut rng),
                                rand::Rng::gen::<u8>(&mut rng),
                                rand::Rng::gen_range(&mut rng, 1..255u8)
                            ),
                        )
                    };
                    if login {
                        let org = &self.fixtures[i % self.fixtures.len()];
                        i += 1;
                        self.timed(Op::Login, slot, self.api.login(&org.email, &self.password))
                            .await;
                        continue;
                    }
                    let name = format!("{}-f{}", self.prefix, uuid::Uuid::new_v4().simple());
                    let org = BenchOrg {
                        email: format!("{name}@example.com"),
                        name,
                        token: None,
                        doc_id: None,
                    };
                    let created = self
                        .timed(
                            Op::Create,
                            slot,
                            self.api.create_org_from(
                                &org.name,
                                &org.email,
                                &self.password,
                                &address,
                            ),
                        )
                        .await;
                    if !matches!(&created.outcome, Outcome::Error(k) if k == "409" || k == "400") {
                        self.leave(org);
                    }
                }
            }
            Work::Scenario(Scenario::Original) => self.original_user(user).await,
            Work::Scenario(Scenario::Churn) => {
                let mut cycle = 0u64;
                while self.churn_cycle(user, cycle).await {
                    cycle += 1;
                }
            }
        }
    }

    /// A user of the original service's load test, from its spawn to the end of the run.
    async fn original_user(&self, user: usize) {
        tokio::time::sleep_until((self.pace.start() + self.users.start_offset(user)).into()).await;
        let name = format!("{}-u{user}", self.prefix);
        let mut org = BenchOrg {
            email: format!("{name}@example.com"),
            name,
            token: None,
            doc_id: None,
        };
        let pw = self.password.as_str();
        // Create until it lands, as a client told to retry would; a 409 after an attempt that
        // timed out means that attempt landed.
        let mut tried = false;
        loop {
            let Some(slot) = self.pace.next().await else {
                if tried {
                    self.leave(org);
                }
                return;
            };
            let created = self
                .timed(
                    Op::Create,
                    slot,
                    self.api.create_org(&org.name, &org.email, pw),
                )
                .await;
            match &created.outcome {
                Outcome::Ok => break,
                Outcome::Error(k) if k == "409" && tried => break,
                _ => {}
            }
            tried = true;
            let wait = created.retry_after.unwrap_or_else(|| self.users.think());
            tokio::time::sleep(wait.min(MAX_BACKOFF)).await;
        }
        let mut docs = 0u64;
        let mut first = true;
        loop {
            if !first {
                tokio::time::sleep(self.users.think()).await;
            }
            first = false;
            let Some(slot) = self.pace.next().await else {
                break;
            };
            let Some(token) = org.token.clone() else {
                let login = self
                    .timed(Op::Login, slot, self.api.login(&org.email, pw))
                    .await;
                org.token = login.str_field("access_token");
                continue;
            };
            // Locust's task weights: get 5, query 4, write 3, update 1, log in again 1.
            let pick = rand::Rng::gen_range(&mut rand::thread_rng(), 0..14u32);
            match pick {
                0..=4 => {
                    self.timed(Op::Get, slot, self.api.get_org_as(&token, &org.name))
                        .await;
                }
                5..=8 => {
                    let body = json!({"filter": {}, "limit": 10});
                    self.timed(Op::DataQuery, slot, self.api.query(&token, &body))
                        .await;
                }
                9..=11 => {
                    docs += 1;
                    let doc = json!({"sku": format!("S-{docs}"), "qty": docs});
                    self.timed(Op::DataWrite, slot, self.api.insert(&token, &doc))
                        .await;
                }
                12 => {
                    let email =
                        format!("{}-{}@example.com", org.name, uuid::Uuid::new_v4().simple());
                    let updated = self
                        .timed(
                            Op::Update,
                            slot,
                            self.api.update_email(&token, &org.name, &email),
                        )
                        .await;
                    if updated.outcome == Outcome::Ok {
                        org.email = email;
                    }
                }
                _ => {
                    let login = self
                        .timed(Op::Login, slot, self.api.login(&org.email, pw))
                        .await;
                    if let Some(t) = login.str_field("access_token") {
                        org.token = Some(t);
                    }
                }
            }
        }
        self.leave(org);
    }

    /// One organization lifecycle of `churn`; `false` once the budget is spent.
    async fn churn_cycle(&self, user: usize, cycle: u64) -> bool {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn model(rate: f64, in_batches: bool) -> UserModel {
        UserModel {
            think_min: Duration::ZERO,
            think_max: Duration::ZERO,
            spawn_rate: Some(rate),
            in_batches,
        }
    }

    #[test]
    fn users_start_one_by_one_or_in_locusts_batches() {
        let even = model(50.0, false);
        assert_eq!(even.start_offset(1), Duration::from_millis(20));
        assert_eq!(even.start_offset(50), Duration::from_secs(1));
        let batched = model(50.0, true);
        assert_eq!(batched.start_offset(0), Duration::ZERO);
        assert_eq!(batched.start_offset(49), Duration::ZERO);
        assert_eq!(batched.start_offset(50), Duration::from_secs(1));
        assert_eq!(batched.start_offset(149), Duration::from_secs(2));
        // 2.5 users a second: batches of 2, every 0.8 s
        let fractional = model(2.5, true);
        assert_eq!(fractional.start_offset(1), Duration::ZERO);
        assert_eq!(fractional.start_offset(2), Duration::from_millis(800));
    }
}
