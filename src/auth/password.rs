//! argon2id hashing on a fixed pool of worker threads.
//!
//! Each hash needs `argon2_memory_kib` (19 MiB by default) of scratch memory. Hashing on
//! tokio's blocking pool let every short-lived thread keep its own allocator arena of those
//! buffers (resident memory grew to gigabytes under load), so hashing runs on
//! `hash_concurrency` dedicated threads instead, each reusing one preallocated buffer: memory is
//! bounded by `hash_concurrency` × the memory cost. Jobs wait in two bounded lanes: password
//! checks (logins: an existing user is waiting) are always served before new hashes (creates,
//! password changes), and each lane has its own bound, so a burst of creates never refuses a
//! login. A lane holds as many jobs as the threads can hash within `hash_queue_wait_ms`, from
//! the measured time of recent hashes (at most `hash_queue_limit`). When a lane is full,
//! callers are told at once ([`HashError::Overloaded`], answered 503 with `Retry-After`)
//! instead of waiting out their request timeout.
//!
//! Scratch buffers are allocated by each thread on its first job, so an idle gateway holds
//! none.
//!
//! Verified credentials are remembered ([`CredentialCache`]): the login that follows a create,
//! and each later login with the same password, is answered without hashing again.

use crate::domain::Password;
use crate::telemetry::metrics;
use argon2::password_hash::{Output, ParamsString, PasswordHash, PasswordVerifier, SaltString};
use argon2::{Argon2, Params, Version};
use hmac::{Hmac, Mac};
use parking_lot::{Condvar, Mutex};
use sha2::Sha256;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use subtle::ConstantTimeEq;
use tokio::sync::oneshot;

/// Why hashing did not happen.
#[derive(Debug, thiserror::Error)]
pub enum HashError {
    /// The queue is full: the caller should be told to retry later.
    #[error("password hashing is overloaded; retry shortly")]
    Overloaded,
    /// Hashing failed (should not happen with valid parameters).
    #[error("password hashing failed: {0}")]
    Failed(String),
}

enum Job {
    Hash {
        password: String,
        reply: oneshot::Sender<Result<String, HashError>>,
    },
    Verify {
        password: String,
        phc: String,
        reply: oneshot::Sender<bool>,
    },
}

struct Queued {
    job: Job,
    queued_at: Instant,
}

/// Jobs waiting for a hashing thread.
struct JobQueue {
    lanes: Mutex<Lanes>,
    ready: Condvar,
    /// Most jobs waiting in each lane, whatever the hash time.
    limit: usize,
    /// Longest wait to admit, in nanoseconds: a lane holds `wait × threads / hash time` jobs.
    /// Zero: `limit`.
    wait_budget_nanos: AtomicU64,
    threads: usize,
    /// Moving average of one hash's duration, in nanoseconds (0 until the first).
    hash_nanos: AtomicU64,
    /// argon2 computations finished.
    done: AtomicU64,
    /// How much nicer than the request path the threads run (applied before their next job).
    niceness: std::sync::atomic::AtomicU8,
}

#[derive(Default)]
struct Lanes {
    verify: VecDeque<Queued>,
    hash: VecDeque<Queued>,
    /// Every [`PasswordHasher`] is gone: the threads finish what waits and stop.
    closed: bool,
}

impl JobQueue {
    fn push(&self, queued: Queued) -> Result<(), Queued> {
        let mut lanes = self.lanes.lock();
        let lane = match queued.job {
            Job::Verify { .. } => &mut lanes.verify,
            Job::Hash { .. } => &mut lanes.hash,
        };
        if lane.len() >= self.lane_bound() {
            return Err(queued);
        }
        lane.push_back(queued);
        drop(lanes);
        self.ready.notify_one();
        Ok(())
    }

    /// How many jobs a lane admits: those the threads finish within the wait budget at the
    /// measured hash time, at least one per thread, at most `limit`.
    fn lane_bound(&self) -> usize {
        let nanos = self.hash_nanos.load(Ordering::Relaxed);
        let budget = self.wait_budget_nanos.load(Ordering::Relaxed);
        if budget == 0 || nanos == 0 {
            return self.limit;
        }
        let fits = budget as u128 * self.threads as u128 / nanos as u128;
        (fits as usize).clamp(self.threads, self.limit)
    }

    /// Folds one measured hash into the moving average (weight 1/8).
    fn record_hash(&self, took: Duration) {
        let took = took.as_nanos().min(u64::MAX as u128) as u64;
        let old = self.hash_nanos.load(Ordering::Relaxed);
        let new = if old == 0 {
            took
        } else {
            old - old / 8 + took / 8
        };
        self.hash_nanos.store(new, Ordering::Relaxed);
        self.done.fetch_add(1, Ordering::Relaxed);
        metrics::ARGON2_LANE_BOUND.set(self.lane_bound() as i64);
    }

    /// The next job, password checks first; `None` once closed and empty.
    fn pop(&self) -> Option<Queued> {
        let mut lanes = self.lanes.lock();
        loop {
            if let Some(job) = lanes.verify.pop_front().or_else(|| lanes.hash.pop_front()) {
                return Some(job);
            }
            if lanes.closed {
                return None;
            }
            self.ready.wait(&mut lanes);
        }
    }
}

/// Closes the queue when the last [`PasswordHasher`] clone is dropped.
struct Submitter(Arc<JobQueue>);

impl Drop for Submitter {
    fn drop(&mut self) {
        self.0.lanes.lock().closed = true;
        self.0.ready.notify_all();
    }
}

/// Hashes and verifies passwords without blocking the event loop.
#[derive(Clone)]
pub struct PasswordHasher {
    jobs: Arc<Submitter>,
    waiting: Arc<AtomicUsize>,
    /// A PHC string with this cost and a random salt and output: verified against when the
    /// email is unknown, so a failed login costs the same whether or not the account exists.
    /// No password hashes to it (finding one is a preimage attack on argon2).
    dummy_hash: Arc<String>,
    credentials: Option<Arc<CredentialCache>>,
}

/// Credentials verified recently, so a login with the same password as a moment ago (the
/// login right after a create, a token refresh) costs no second argon2 hash.
///
/// Entries are HMAC-SHA256 tags of (stored PHC string, password) under a key drawn at start-up
/// and never stored: no password or hash is kept, a wrong password never matches, and a
/// password change makes every older entry unreachable (the PHC string changes with its salt).
/// The trade-off is the one of Elasticsearch's realm cache: whoever can read this process's
/// memory can test guesses against a cached entry at SHA-256 speed rather than argon2's, until
/// it expires. Set `auth.credential_cache_entries = 0` to keep none.
pub struct CredentialCache {
    key: [u8; 32],
    verified: moka::sync::Cache<[u8; 32], ()>,
}

impl CredentialCache {
    /// Holds at most `entries` credentials, each for `ttl` after it was last verified.
    pub fn new(entries: u64, ttl: Duration) -> Self {
        let mut key = [0u8; 32];
        rand::Rng::fill(&mut rand::thread_rng(), &mut key);
        Self {
            key,
            verified: moka::sync::Cache::builder()
                .max_capacity(entries)
                .time_to_live(ttl)
                .build(),
        }
    }

    fn tag(&self, phc: &str, password: &str) -> [u8; 32] {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.key).expect("any key length");
        // Length-prefixed, so no (phc, password) pair collides with another.
        mac.update(&(phc.len() as u64).to_be_bytes());
        mac.update(phc.as_bytes());
        mac.update(password.as_bytes());
        mac.finalize().into_bytes().into()
    }

    fn remember(&self, phc: &str, password: &str) {
        self.verified.insert(self.tag(phc, password), ());
    }

    fn knows(&self, phc: &str, password: &str) -> bool {
        self.verified.contains_key(&self.tag(phc, password))
    }
}

impl PasswordHasher {
    /// Starts `concurrency` hashing threads with the given argon2id cost; at most
    /// `queue_limit` password checks and `queue_limit` new hashes wait for them.
    pub fn new(
        memory_kib: u32,
        iterations: u32,
        parallelism: u32,
        concurrency: usize,
        queue_limit: usize,
    ) -> Result<Self, HashError> {
        let params = Params::new(memory_kib, iterations, parallelism, None)
            .map_err(|e| HashError::Failed(e.to_string()))?;
        let queue = Arc::new(JobQueue {
            lanes: Mutex::new(Lanes::default()),
            ready: Condvar::new(),
            limit: queue_limit.max(1),
            wait_budget_nanos: AtomicU64::new(0),
            threads: concurrency.max(1),
            hash_nanos: AtomicU64::new(0),
            done: AtomicU64::new(0),
            niceness: std::sync::atomic::AtomicU8::new(0),
        });
        let waiting = Arc::new(AtomicUsize::new(0));
        for i in 0..concurrency.max(1) {
            let (rx, params, waiting) = (queue.clone(), params.clone(), waiting.clone());
            std::thread::Builder::new()
                .name(format!("argon2-{i}"))
                .spawn(move || worker(rx, params, waiting))
                .map_err(|e| HashError::Failed(e.to_string()))?;
        }
        let mut output = [0u8; Params::DEFAULT_OUTPUT_LEN];
        rand::Rng::fill(&mut rand::thread_rng(), &mut output);
        let dummy = phc_string(&params, &random_salt(), &output)?;
        Ok(Self {
            jobs: Arc::new(Submitter(queue)),
            waiting,
            dummy_hash: Arc::new(dummy),
            credentials: None,
        })
    }

    /// Bounds each lane by the jobs the threads can hash within `wait` at the measured hash
    /// time (still at most the `queue_limit` given to [`Self::new`]); zero keeps that limit.
    pub fn with_wait_budget(self, wait: Duration) -> Self {
        let nanos = wait.as_nanos().min(u64::MAX as u128) as u64;
        self.jobs
            .0
            .wait_budget_nanos
            .store(nanos, Ordering::Relaxed);
        self
    }

    /// Runs the hashing threads `niceness` (0-19) lower than the threads that serve requests,
    /// from their next job on.
    pub fn with_thread_niceness(self, niceness: u8) -> Self {
        self.jobs
            .0
            .niceness
            .store(niceness.min(19), Ordering::Relaxed);
        self
    }

    /// Remembers verified credentials (see [`CredentialCache`]); `entries == 0` keeps none.
    pub fn with_credential_cache(mut self, entries: u64, ttl: Duration) -> Self {
        self.credentials =
            (entries > 0 && !ttl.is_zero()).then(|| Arc::new(CredentialCache::new(entries, ttl)));
        self
    }

    /// Jobs a lane admits now (from the measured hash time).
    pub fn lane_bound(&self) -> usize {
        self.jobs.0.lane_bound()
    }

    /// argon2 computations finished so far.
    pub fn hashes_done(&self) -> u64 {
        self.jobs.0.done.load(Ordering::Relaxed)
    }

    fn submit(&self, job: Job) -> Result<(), HashError> {
        self.waiting.fetch_add(1, Ordering::Relaxed);
        metrics::ARGON2_QUEUE_DEPTH.inc();
        match self.jobs.0.push(Queued {
            job,
            queued_at: Instant::now(),
        }) {
            Ok(()) => Ok(()),
            Err(_) => {
                self.waiting.fetch_sub(1, Ordering::Relaxed);
                metrics::ARGON2_QUEUE_DEPTH.dec();
                Err(HashError::Overloaded)
            }
        }
    }

    /// Returns the PHC string of a new salted hash.
    pub async fn hash(&self, password: &Password) -> Result<String, HashError> {
        let (reply, rx) = oneshot::channel();
        self.submit(Job::Hash {
            password: password.expose().to_owned(),
            reply,
        })?;
        let phc = rx
            .await
            .map_err(|_| HashError::Failed("hash worker stopped".into()))??;
        if let Some(cache) = &self.credentials {
            cache.remember(&phc, password.expose());
        }
        Ok(phc)
    }

    /// Checks a password against a PHC string; `None` verifies against the dummy hash and
    /// returns false, taking the same time as a real check.
    pub async fn verify(&self, password: &str, phc: Option<&str>) -> Result<bool, HashError> {
        let known = phc.is_some();
        if let (Some(cache), Some(phc)) = (&self.credentials, phc) {
            if cache.knows(phc, password) {
                metrics::CREDENTIAL_CACHE_HITS.inc();
                return Ok(true);
            }
        }
        let (reply, rx) = oneshot::channel();
        self.submit(Job::Verify {
            password: password.to_owned(),
            phc: phc.unwrap_or(self.dummy_hash.as_str()).to_owned(),
            reply,
        })?;
        let ok = rx.await.unwrap_or(false) && known;
        if let (true, Some(cache), Some(phc)) = (ok, &self.credentials, phc) {
            cache.remember(phc, password);
        }
        Ok(ok)
    }
}

fn random_salt() -> SaltString {
    SaltString::generate(&mut argon2::password_hash::rand_core::OsRng)
}

fn failed(e: &dyn std::fmt::Display) -> HashError {
    HashError::Failed(e.to_string())
}

/// The PHC string of an argon2id output with these parameters and salt.
fn phc_string(params: &Params, salt: &SaltString, output: &[u8]) -> Result<String, HashError> {
    let phc = PasswordHash {
        algorithm: argon2::ARGON2ID_IDENT,
        version: Some(Version::V0x13.into()),
        params: ParamsString::try_from(params).map_err(|e| failed(&e))?,
        salt: Some(salt.as_salt()),
        hash: Some(Output::new(output).map_err(|e| failed(&e))?),
    };
    Ok(phc.to_string())
}

/// The same cost for the SIMD fill; `None` only for parameters it rejects, which `Params`
/// already validated.
fn fill_params(params: &Params) -> Option<argon2_rust::Params> {
    argon2_rust::Params::builder()
        .memory(argon2_rust::params::Memory::kib(u64::from(params.m_cost())))
        .passes(params.t_cost())
        .lanes(params.p_cost())
        .tag_len(argon2_rust::params::TagLen::bytes(
            Params::DEFAULT_OUTPUT_LEN as u64,
        ))
        .build()
        .ok()
}

/// One hashing thread's state: the argon2id hasher and its reusable scratch memory (the
/// arena is mapped on the first job and kept, so an idle gateway holds none).
///
/// The fill runs on `argon2-rust` (SIMD selected at run time, bit-identical to the `argon2`
/// crate, which still encodes and parses the PHC strings): about 1.7x faster here, which is
/// that much more capacity for creates and logins at the same cost.
struct Worker {
    params: Params,
    hasher: Option<argon2_rust::Hasher>,
}

impl Worker {
    fn new(params: Params) -> Self {
        Self {
            params,
            hasher: None,
        }
    }

    /// Hashes into `out` with the thread's scratch memory.
    fn hash_into(&mut self, password: &str, salt: &[u8], out: &mut [u8]) -> bool {
        if self.hasher.is_none() {
            self.hasher = fill_params(&self.params).map(|p| {
                argon2_rust::Argon2::new(
                    argon2_rust::Algorithm::Argon2id,
                    argon2_rust::Version::V0x13,
                    p,
                )
                .hasher()
            });
        }
        match self.hasher.as_mut() {
            Some(hasher) => hasher.hash_into(password.as_bytes(), salt, out).is_ok(),
            None => false,
        }
    }

    fn hash(&mut self, password: &str) -> Result<String, HashError> {
        let salt = random_salt();
        let mut salt_bytes = [0u8; 64];
        let salt_raw = salt.decode_b64(&mut salt_bytes).map_err(|e| failed(&e))?;
        let mut out = [0u8; Params::DEFAULT_OUTPUT_LEN];
        if !self.hash_into(password, salt_raw, &mut out) {
            return Err(HashError::Failed("argon2 rejected its input".into()));
        }
        phc_string(&self.params, &salt, &out)
    }

    fn verify(&mut self, password: &str, phc: &str) -> bool {
        let Ok(parsed) = PasswordHash::new(phc) else {
            return false;
        };
        let same_cost = parsed.algorithm == argon2::ARGON2ID_IDENT
            && Params::try_from(&parsed).is_ok_and(|p| {
                p.m_cost() == self.params.m_cost()
                    && p.t_cost() == self.params.t_cost()
                    && p.p_cost() == self.params.p_cost()
            });
        let (Some(salt), Some(expected)) = (parsed.salt, parsed.hash) else {
            return false;
        };
        if !same_cost || expected.len() != Params::DEFAULT_OUTPUT_LEN {
            // Hashes made with other settings (e.g. before a cost change) take the slow path,
            // which allocates its own memory.
            return Argon2::default()
                .verify_password(password.as_bytes(), &parsed)
                .is_ok();
        }
        let mut salt_bytes = [0u8; 64];
        let Ok(salt_raw) = salt.decode_b64(&mut salt_bytes) else {
            return false;
        };
        let mut out = [0u8; Params::DEFAULT_OUTPUT_LEN];
        if !self.hash_into(password, salt_raw, &mut out) {
            return false;
        }
        bool::from(out.as_slice().ct_eq(expected.as_bytes()))
    }
}

/// Lowers the calling thread's scheduling priority by `niceness` (Linux applies
/// `setpriority` to one thread given its id). Raising niceness needs no privilege; a failure
/// only leaves it unchanged.
fn lower_thread_priority(niceness: u8) {
    #[cfg(target_os = "linux")]
    if niceness > 0 {
        // SAFETY: gettid, getpriority and setpriority take plain integers and affect only the
        // calling thread.
        unsafe {
            let tid = libc::gettid() as libc::id_t;
            let own = libc::getpriority(libc::PRIO_PROCESS, tid);
            libc::setpriority(libc::PRIO_PROCESS, tid, own + i32::from(niceness));
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = niceness;
}

fn worker(queue: Arc<JobQueue>, params: Params, waiting: Arc<AtomicUsize>) {
    let mut state = Worker::new(params);
    let mut niceness = 0;
    while let Some(Queued { job, queued_at }) = queue.pop() {
        // Only ever raised: lowering it again would need a privilege.
        let wanted = queue.niceness.load(Ordering::Relaxed);
        if wanted > niceness {
            lower_thread_priority(wanted - niceness);
            niceness = wanted;
        }
        waiting.fetch_sub(1, Ordering::Relaxed);
        metrics::ARGON2_QUEUE_DEPTH.dec();
        metrics::ARGON2_WAIT_SECONDS.observe(queued_at.elapsed().as_secs_f64());
        let started = Instant::now();
        // Counted before the reply, so whoever waits on it sees the count.
        match job {
            Job::Hash { password, reply } => {
                let result = state.hash(&password);
                queue.record_hash(started.elapsed());
                let _ = reply.send(result);
            }
            Job::Verify {
                password,
                phc,
                reply,
            } => {
                let ok = state.verify(&password, &phc);
                queue.record_hash(started.elapsed());
                let _ = reply.send(ok);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use argon2::Algorithm;

    /// The niceness of each of this process's threads named `argon2-*`, from /proc.
    #[cfg(target_os = "linux")]
    fn hashing_thread_niceness() -> Vec<i64> {
        let mut found = Vec::new();
        for task in std::fs::read_dir("/proc/self/task").unwrap().flatten() {
            let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
            if !comm.starts_with("argon2-") {
                continue;
            }
            let stat = std::fs::read_to_string(task.path().join("stat")).unwrap_or_default();
            // Fields after the parenthesised name: state is field 3, nice is field 19.
            let rest = &stat[stat.rfind(')').unwrap() + 2..];
            found.push(rest.split(' ').nth(16).unwrap().parse().unwrap());
        }
        found
    }

    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn hashing_threads_run_below_the_request_path() {
        let own: i64 = {
            let stat = std::fs::read_to_string("/proc/thread-self/stat").unwrap();
            stat[stat.rfind(')').unwrap() + 2..]
                .split(' ')
                .nth(16)
                .unwrap()
                .parse()
                .unwrap()
        };
        let h = PasswordHasher::new(64, 1, 1, 1, 4)
            .unwrap()
            .with_thread_niceness(7);
        // The thread applies it before its next job.
        h.verify("correct horse", None).await.unwrap();
        let found = hashing_thread_niceness();
        let want = (own + 7).min(19);
        assert!(found.contains(&want), "{found:?}, want {want}");
    }

    /// The SIMD fill must produce the tags the reference crate does, or stored hashes would
    /// stop verifying: random passwords (any UTF-8) and salts, at small costs and at OWASP's.
    #[test]
    fn the_simd_fill_matches_the_reference_crate() {
        use rand::Rng;
        let mut rng = rand::thread_rng();
        for (m, t, case) in [(64, 1, 0), (256, 3, 1), (1024, 2, 2), (19_456, 2, 3)] {
            let params = Params::new(m, t, 1, None).unwrap();
            let mut worker = Worker::new(params.clone());
            let reference = Argon2::new(Algorithm::Argon2id, Version::V0x13, params);
            for _ in 0..if case == 3 { 2 } else { 20 } {
                let len = rng.gen_range(0..64);
                let password: String = (0..len).map(|_| rng.gen::<char>()).collect();
                let salt: Vec<u8> = (0..rng.gen_range(8..40)).map(|_| rng.gen()).collect();
                let (mut fast, mut slow) = ([0u8; 32], [0u8; 32]);
                assert!(worker.hash_into(&password, &salt, &mut fast));
                reference
                    .hash_password_into(password.as_bytes(), &salt, &mut slow)
                    .unwrap();
                assert_eq!(fast, slow, "m={m} t={t}");
            }
        }
    }

    #[tokio::test]
    async fn hash_then_verify() {
        let h = PasswordHasher::new(19_456, 2, 1, 2, 16).unwrap();
        let pw = Password::parse("correct horse").unwrap();
        let phc = h.hash(&pw).await.unwrap();
        assert!(phc.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{phc}");
        assert!(h.verify("correct horse", Some(&phc)).await.unwrap());
        assert!(!h.verify("wrong horse!", Some(&phc)).await.unwrap());
        assert!(!h.verify("correct horse", None).await.unwrap());
        // interoperates with the reference implementation both ways
        let parsed = PasswordHash::new(&phc).unwrap();
        assert!(Argon2::default()
            .verify_password(b"correct horse", &parsed)
            .is_ok());
        use argon2::password_hash::PasswordHasher as _;
        let salt = SaltString::generate(&mut argon2::password_hash::rand_core::OsRng);
        let other = Argon2::new(
            Algorithm::Argon2id,
            Version::V0x13,
            Params::new(19_456, 3, 1, None).unwrap(),
        )
        .hash_password(b"another one", &salt)
        .unwrap()
        .to_string();
        assert!(h.verify("another one", Some(&other)).await.unwrap());
        assert!(!h.verify("another two", Some(&other)).await.unwrap());
    }

    #[tokio::test]
    async fn password_checks_are_served_before_new_hashes() {
        // One thread: while it hashes, three hashes and then one check wait.
        let h = PasswordHasher::new(19_456, 2, 1, 1, 8).unwrap();
        let pw = Password::parse("correct horse").unwrap();
        let phc = h.hash(&pw).await.unwrap();
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for i in 0..4 {
            let (h, pw, order) = (h.clone(), pw.clone(), order.clone());
            tasks.push(tokio::spawn(async move {
                h.hash(&pw).await.unwrap();
                order.lock().push(format!("hash {i}"));
            }));
            tokio::task::yield_now().await;
        }
        // Queued behind the hash in progress and the three waiting ones.
        while h.waiting.load(Ordering::Relaxed) < 3 {
            tokio::task::yield_now().await;
        }
        let (h2, order2) = (h.clone(), order.clone());
        tasks.push(tokio::spawn(async move {
            assert!(h2.verify("correct horse", Some(&phc)).await.unwrap());
            order2.lock().push("verify".to_string());
        }));
        for t in tasks {
            t.await.unwrap();
        }
        let order = order.lock().clone();
        let verify_at = order.iter().position(|s| s == "verify").unwrap();
        // At most the hash already running finished before the check.
        assert!(verify_at <= 1, "{order:?}");
    }

    #[tokio::test]
    async fn a_burst_of_new_hashes_does_not_refuse_password_checks() {
        let h = PasswordHasher::new(19_456, 2, 1, 1, 2).unwrap();
        let pw = Password::parse("correct horse").unwrap();
        let phc = h.hash(&pw).await.unwrap();
        let burst: Vec<_> = (0..8).map(|_| h.hash(&pw)).collect();
        let check = h.verify("correct horse", Some(&phc));
        let (burst, check) = tokio::join!(futures_util::future::join_all(burst), check);
        assert!(burst
            .iter()
            .any(|r| matches!(r, Err(HashError::Overloaded))));
        assert!(check.unwrap());
    }

    #[tokio::test]
    async fn a_full_queue_refuses_at_once() {
        let h = PasswordHasher::new(19_456, 2, 1, 1, 1).unwrap();
        let pw = Password::parse("correct horse").unwrap();
        let jobs: Vec<_> = (0..8).map(|_| h.hash(&pw)).collect();
        let results = futures_util::future::join_all(jobs).await;
        assert!(results
            .iter()
            .any(|r| matches!(r, Err(HashError::Overloaded))));
        assert!(results.iter().any(|r| r.is_ok()));
    }

    #[tokio::test]
    async fn remembered_credentials_skip_the_hash_and_nothing_else() {
        let h = PasswordHasher::new(19_456, 2, 1, 1, 8)
            .unwrap()
            .with_credential_cache(100, Duration::from_secs(60));
        let pw = Password::parse("correct horse").unwrap();
        let phc = h.hash(&pw).await.unwrap();
        let done = h.hashes_done();
        assert_eq!(done, 1);
        // The login after the create: no hash.
        assert!(h.verify("correct horse", Some(&phc)).await.unwrap());
        assert_eq!(h.hashes_done(), done);
        // A wrong password is hashed and refused, every time.
        for _ in 0..2 {
            assert!(!h.verify("correct horse!", Some(&phc)).await.unwrap());
        }
        assert_eq!(h.hashes_done(), done + 2);
        // Unknown account: the dummy is hashed, never matched.
        assert!(!h.verify("correct horse", None).await.unwrap());
        assert_eq!(h.hashes_done(), done + 3);
        // After a password change the old password meets a new PHC string: hashed, refused.
        let new_phc = h
            .hash(&Password::parse("battery staple").unwrap())
            .await
            .unwrap();
        let done = h.hashes_done();
        assert!(!h.verify("correct horse", Some(&new_phc)).await.unwrap());
        assert!(h.verify("battery staple", Some(&new_phc)).await.unwrap());
        assert_eq!(h.hashes_done(), done + 1);
        // A checked password is remembered too (a hasher without the cache never skips).
        let plain = PasswordHasher::new(19_456, 2, 1, 1, 8).unwrap();
        for _ in 0..2 {
            assert!(plain.verify("correct horse", Some(&phc)).await.unwrap());
        }
        assert_eq!(plain.hashes_done(), 2);
        let other = PasswordHasher::new(19_456, 2, 1, 1, 8)
            .unwrap()
            .with_credential_cache(100, Duration::from_secs(60));
        for _ in 0..3 {
            assert!(other.verify("correct horse", Some(&phc)).await.unwrap());
        }
        assert_eq!(other.hashes_done(), 1);
    }

    #[tokio::test]
    async fn remembered_credentials_expire() {
        let h = PasswordHasher::new(19_456, 2, 1, 1, 8)
            .unwrap()
            .with_credential_cache(100, Duration::from_millis(200));
        let phc = h
            .hash(&Password::parse("correct horse").unwrap())
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert!(h.verify("correct horse", Some(&phc)).await.unwrap());
        assert_eq!(h.hashes_done(), 2);
    }

    #[test]
    fn the_dummy_hash_has_the_configured_cost_and_no_hashing_at_start() {
        let h = PasswordHasher::new(19_456, 2, 1, 1, 8).unwrap();
        assert!(h.dummy_hash.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"));
        assert!(PasswordHash::new(&h.dummy_hash).is_ok());
        assert_eq!(h.hashes_done(), 0);
    }

    #[test]
    fn lanes_admit_what_the_threads_hash_within_the_wait_budget() {
        let h = PasswordHasher::new(19_456, 2, 1, 2, 256)
            .unwrap()
            .with_wait_budget(Duration::from_millis(100));
        // Unmeasured: the configured limit.
        assert_eq!(h.lane_bound(), 256);
        let q = &h.jobs.0;
        q.record_hash(Duration::from_millis(10));
        // 100 ms x 2 threads / 10 ms.
        assert_eq!(h.lane_bound(), 20);
        // Slower hashes: fewer admitted, never fewer than one per thread.
        for _ in 0..100 {
            q.record_hash(Duration::from_secs(1));
        }
        assert_eq!(h.lane_bound(), 2);
        // Faster: capped by the limit.
        for _ in 0..200 {
            q.record_hash(Duration::from_micros(10));
        }
        assert_eq!(h.lane_bound(), 256);
        let unbudgeted = PasswordHasher::new(19_456, 2, 1, 2, 7).unwrap();
        unbudgeted.jobs.0.record_hash(Duration::from_secs(1));
        assert_eq!(unbudgeted.lane_bound(), 7);
    }
}
