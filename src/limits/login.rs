//! Login throttling: failed logins are counted per email and per client address in fixed
//! one-minute windows; past the limit, logins are refused with 429 before any hash is spent.

use dashmap::DashMap;
use std::time::{Duration, Instant};

const WINDOW: Duration = Duration::from_secs(60);

/// Failure counters.
pub struct LoginThrottle {
    max_failures: u32,
    failures: DashMap<String, (u32, Instant)>,
}

impl LoginThrottle {
    /// Allows `max_failures` failures per key per minute.
    pub fn new(max_failures: u32) -> Self {
        Self {
            max_failures,
            failures: DashMap::new(),
        }
    }

    /// Seconds to wait if any key is over the limit, else `None`.
    pub fn blocked(&self, keys: &[String]) -> Option<u64> {
        let now = Instant::now();
        keys.iter()
            .filter_map(|k| {
                let entry = self.failures.get(k)?;
                let (count, start) = *entry;
                let age = now.duration_since(start);
                (age < WINDOW && count >= self.max_failures)
                    .then(|| (WINDOW - age).as_secs().max(1))
            })
            .max()
    }

    /// Records one failure for each key.
    pub fn record_failure(&self, keys: &[String]) {
        let now = Instant::now();
        for k in keys {
            let mut e = self.failures.entry(k.clone()).or_insert((0, now));
            if now.duration_since(e.1) >= WINDOW {
                *e = (0, now);
            }
            e.0 += 1;
        }
    }

    /// Drops expired windows (bounded memory).
    pub fn evict_expired(&self) {
        let now = Instant::now();
        self.failures
            .retain(|_, (_, start)| now.duration_since(*start) < WINDOW);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_after_the_limit() {
        let t = LoginThrottle::new(2);
        let keys = vec!["email:a@b.co".to_string(), "ip:127.0.0.1".to_string()];
        assert!(t.blocked(&keys).is_none());
        t.record_failure(&keys);
        t.record_failure(&keys);
        assert!(t.blocked(&keys).is_some());
        assert!(t.blocked(&["email:other@b.co".to_string()]).is_none());
    }
}
