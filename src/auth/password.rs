//! argon2id hashing. Hashing is deliberately slow, so it runs on tokio's blocking pool behind
//! a semaphore: at most `concurrency` hashes at once, the rest wait (queue depth is a metric).

use crate::domain::Password;
use crate::telemetry::metrics;
use argon2::password_hash::{PasswordHash, PasswordHasher as _, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::Semaphore;

/// Hashes and verifies passwords without blocking the event loop.
#[derive(Clone)]
pub struct PasswordHasher {
    params: Params,
    permits: Arc<Semaphore>,
    /// A hash of a random password: verified against when the email is unknown, so a failed
    /// login costs the same whether or not the account exists.
    dummy_hash: Arc<String>,
}

/// Hashing failed (should not happen with valid parameters).
#[derive(Debug, thiserror::Error)]
#[error("password hashing failed: {0}")]
pub struct HashError(String);

impl PasswordHasher {
    /// Builds a hasher with the given argon2id cost and concurrency.
    pub fn new(
        memory_kib: u32,
        iterations: u32,
        parallelism: u32,
        concurrency: usize,
    ) -> Result<Self, HashError> {
        let params = Params::new(memory_kib, iterations, parallelism, None)
            .map_err(|e| HashError(e.to_string()))?;
        let mut bytes = [0u8; 24];
        rand::Rng::fill(&mut rand::thread_rng(), &mut bytes);
        let dummy = hash_blocking(&params, &hex::encode(bytes))?;
        Ok(Self {
            params,
            permits: Arc::new(Semaphore::new(concurrency)),
            dummy_hash: Arc::new(dummy),
        })
    }

    /// Returns the PHC string of a new salted hash.
    pub async fn hash(&self, password: &Password) -> Result<String, HashError> {
        let (params, pw) = (self.params.clone(), password.expose().to_owned());
        self.run(move || hash_blocking(&params, &pw)).await?
    }

    /// Checks a password against a PHC string; `None` verifies against the dummy hash and
    /// returns false, taking the same time as a real check.
    pub async fn verify(&self, password: &str, phc: Option<&str>) -> bool {
        let known = phc.is_some();
        let phc = phc.unwrap_or(self.dummy_hash.as_str()).to_owned();
        let pw = password.to_owned();
        let ok = self
            .run(move || {
                PasswordHash::new(&phc)
                    .map(|parsed| {
                        Argon2::default()
                            .verify_password(pw.as_bytes(), &parsed)
                            .is_ok()
                    })
                    .unwrap_or(false)
            })
            .await
            .unwrap_or(false);
        ok && known
    }

    async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, HashError> {
        let queued = Instant::now();
        metrics::ARGON2_QUEUE_DEPTH.inc();
        let permit = self.permits.clone().acquire_owned().await;
        metrics::ARGON2_QUEUE_DEPTH.dec();
        metrics::ARGON2_WAIT_SECONDS.observe(queued.elapsed().as_secs_f64());
        let permit = permit.map_err(|e| HashError(e.to_string()))?;
        let out = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            f()
        })
        .await
        .map_err(|e| HashError(e.to_string()))?;
        Ok(out)
    }
}

fn hash_blocking(params: &Params, password: &str) -> Result<String, HashError> {
    let salt = SaltString::generate(&mut argon2::password_hash::rand_core::OsRng);
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params.clone())
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| HashError(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn hash_then_verify() {
        let h = PasswordHasher::new(19_456, 2, 1, 2).unwrap();
        let pw = Password::parse("correct horse").unwrap();
        let phc = h.hash(&pw).await.unwrap();
        assert!(phc.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"));
        assert!(h.verify("correct horse", Some(&phc)).await);
        assert!(!h.verify("wrong horse!", Some(&phc)).await);
        assert!(!h.verify("correct horse", None).await);
    }
}
