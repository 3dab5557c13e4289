//! Login throttling: failed logins are counted per email and per client address in fixed
//! one-minute windows; past either limit, logins are refused with 429 before any hash is spent.
//! The per-address limit is higher, since many users may share one address (a proxy, a NAT).

use dashmap::DashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

const WINDOW: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Key {
    Email(String),
    Address(IpAddr),
}

/// Failure counters.
pub struct LoginThrottle {
    per_email: u32,
    per_address: u32,
    failures: DashMap<Key, (u32, Instant)>,
}

impl LoginThrottle {
    /// Allows `per_email` failures per email and `per_address` per client address, a minute.
    pub fn new(per_email: u32, per_address: u32) -> Self {
        Self {
            per_email,
            per_address,
            failures: DashMap::new(),
        }
    }

    /// Failures allowed per minute: per email, and per client address.
    pub fn limits(&self) -> (u32, u32) {
        (self.per_email, self.per_address)
    }

    fn keys(email: &str, address: Option<IpAddr>) -> Vec<Key> {
        let mut keys = vec![Key::Email(email.trim().to_lowercase())];
        keys.extend(address.map(Key::Address));
        keys
    }

    /// Seconds to wait if the email or the address is over its limit, else `None`.
    pub fn blocked(&self, email: &str, address: Option<IpAddr>) -> Option<u64> {
        let now = Instant::now();
        Self::keys(email, address)
            .into_iter()
            .filter_map(|k| {
                let max = match k {
                    Key::Email(_) => self.per_email,
                    Key::Address(_) => self.per_address,
                };
                let (count, start) = *self.failures.get(&k)?;
                let age = now.duration_since(start);
                (age < WINDOW && count >= max).then(|| (WINDOW - age).as_secs().max(1))
            })
            .max()
    }

    /// Records one failure for the email and the address.
    pub fn record_failure(&self, email: &str, address: Option<IpAddr>) {
        let now = Instant::now();
        for k in Self::keys(email, address) {
            let mut e = self.failures.entry(k).or_insert((0, now));
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
    fn email_and_address_limits_are_separate() {
        let t = LoginThrottle::new(2, 3);
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        assert!(t.blocked("a@b.co", Some(ip)).is_none());
        t.record_failure("a@b.co", Some(ip));
        t.record_failure("A@b.co ", Some(ip));
        assert!(t.blocked("a@b.co", None).is_some());
        // the address has 2 of its 3
        assert!(t.blocked("other@b.co", Some(ip)).is_none());
        t.record_failure("third@b.co", Some(ip));
        assert!(t.blocked("fourth@b.co", Some(ip)).is_some());
        assert!(t.blocked("fourth@b.co", None).is_none());
    }
}
