//! argon2id hashing on a fixed pool of worker threads.
//!
//! Each hash needs `argon2_memory_kib` (19 MiB by default) of scratch memory. Hashing on
//! tokio's blocking pool let every short-lived thread keep its own allocator arena of those
//! buffers (resident memory grew to gigabytes under load), so hashing runs on
//! `hash_concurrency` dedicated threads instead, each reusing one preallocated buffer: memory is
//! bounded by `hash_concurrency` × the memory cost. Jobs wait in two bounded lanes: password
//! checks (logins: an existing user is waiting) are always served before new hashes (creates,
//! password changes), and each lane has its own bound, so a burst of creates never refuses a
//! login. When a lane is full, callers are told at once ([`HashError::Overloaded`], answered
//! 503 with `Retry-After`) instead of waiting out their request timeout.

use crate::domain::Password;
use crate::telemetry::metrics;
use argon2::password_hash::{Output, ParamsString, PasswordHash, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Block, Params, Version};
use parking_lot::{Condvar, Mutex};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;
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
    /// Most jobs waiting in each lane.
    limit: usize,
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
        if lane.len() >= self.limit {
            return Err(queued);
        }
        lane.push_back(queued);
        drop(lanes);
        self.ready.notify_one();
        Ok(())
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
    /// A hash of a random password: verified against when the email is unknown, so a failed
    /// login costs the same whether or not the account exists.
    dummy_hash: Arc<String>,
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
        });
        let waiting = Arc::new(AtomicUsize::new(0));
        for i in 0..concurrency.max(1) {
            let (rx, params, waiting) = (queue.clone(), params.clone(), waiting.clone());
            std::thread::Builder::new()
                .name(format!("argon2-{i}"))
                .spawn(move || worker(rx, params, waiting))
                .map_err(|e| HashError::Failed(e.to_string()))?;
        }
        let mut worker = Worker::new(params);
        let mut bytes = [0u8; 24];
        rand::Rng::fill(&mut rand::thread_rng(), &mut bytes);
        let dummy = worker.hash(&hex::encode(bytes))?;
        Ok(Self {
            jobs: Arc::new(Submitter(queue)),
            waiting,
            dummy_hash: Arc::new(dummy),
        })
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
        rx.await
            .map_err(|_| HashError::Failed("hash worker stopped".into()))?
    }

    /// Checks a password against a PHC string; `None` verifies against the dummy hash and
    /// returns false, taking the same time as a real check.
    pub async fn verify(&self, password: &str, phc: Option<&str>) -> Result<bool, HashError> {
        let known = phc.is_some();
        let (reply, rx) = oneshot::channel();
        self.submit(Job::Verify {
            password: password.to_owned(),
            phc: phc.unwrap_or(self.dummy_hash.as_str()).to_owned(),
            reply,
        })?;
        let ok = rx.await.unwrap_or(false);
        Ok(ok && known)
    }
}

/// One hashing thread's state: the argon2 context and its reusable scratch memory.
struct Worker {
    params: Params,
    argon2: Argon2<'static>,
    blocks: Vec<Block>,
}

impl Worker {
    fn new(params: Params) -> Self {
        let argon2 = Argon2::new(Algorithm::Argon2id, Version::V0x13, params.clone());
        let blocks = vec![Block::default(); params.block_count()];
        Self {
            params,
            argon2,
            blocks,
        }
    }

    fn hash(&mut self, password: &str) -> Result<String, HashError> {
        let fail = |e: &dyn std::fmt::Display| HashError::Failed(e.to_string());
        let salt = SaltString::generate(&mut argon2::password_hash::rand_core::OsRng);
        let mut salt_bytes = [0u8; 64];
        let salt_raw = salt.decode_b64(&mut salt_bytes).map_err(|e| fail(&e))?;
        let mut out = [0u8; Params::DEFAULT_OUTPUT_LEN];
        self.argon2
            .hash_password_into_with_memory(
                password.as_bytes(),
                salt_raw,
                &mut out,
                &mut self.blocks,
            )
            .map_err(|e| fail(&e))?;
        let phc = PasswordHash {
            algorithm: argon2::ARGON2ID_IDENT,
            version: Some(Version::V0x13.into()),
            params: ParamsString::try_from(&self.params).map_err(|e| fail(&e))?,
            salt: Some(salt.as_salt()),
            hash: Some(Output::new(&out).map_err(|e| fail(&e))?),
        };
        Ok(phc.to_string())
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
        if self
            .argon2
            .hash_password_into_with_memory(
                password.as_bytes(),
                salt_raw,
                &mut out,
                &mut self.blocks,
            )
            .is_err()
        {
            return false;
        }
        bool::from(out.as_slice().ct_eq(expected.as_bytes()))
    }
}

fn worker(queue: Arc<JobQueue>, params: Params, waiting: Arc<AtomicUsize>) {
    let mut state = Worker::new(params);
    while let Some(Queued { job, queued_at }) = queue.pop() {
        waiting.fetch_sub(1, Ordering::Relaxed);
        metrics::ARGON2_QUEUE_DEPTH.dec();
        metrics::ARGON2_WAIT_SECONDS.observe(queued_at.elapsed().as_secs_f64());
        match job {
            Job::Hash { password, reply } => {
                let _ = reply.send(state.hash(&password));
            }
            Job::Verify {
                password,
                phc,
                reply,
            } => {
                let _ = reply.send(state.verify(&password, &phc));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
