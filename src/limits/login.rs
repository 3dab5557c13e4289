//! Login throttling: failed logins are counted per email and per client address in fixed
//! one-minute windows; past either limit, logins are refused with 429 before any hash is spent.
//! The per-address limit is higher, since many users may share one address (a proxy, a NAT).
//!
//! A login *reserves* its attempt before the (slow) password hash: the reservation counts toward
//! the limit at once, and becomes a failure or is released once the verdict is known. So at most
//! `per_email` guesses per email can be in flight or failed in a window, however many arrive
//! at the same instant (checking first and recording after the hash let dozens through).
//!
//! Memory is bounded: only syntactically valid emails get a counter (an invalid one counts
//! against the address only), keyed by their SHA-256 (32 bytes, whatever the input), and the
//! table holds at most `capacity` counters. When it is full, expired counters go first, then the
//! oldest idle ones (counted in `org_gateway_login_throttle_evictions_total`).

use crate::domain::Email;
use crate::telemetry::metrics;
use dashmap::DashMap;
use sha2::{Digest, Sha256};
use std::net::IpAddr;
use std::time::{Duration, Instant};

const WINDOW: Duration = Duration::from_secs(60);

/// Counters kept by default: with fixed-size keys, about 100 bytes each (10 MB at most).
pub const DEFAULT_CAPACITY: usize = 100_000;

/// The fixed-size key of an email: SHA-256 of its normalized form (also the Redis key suffix).
pub type EmailDigest = [u8; 32];

/// The digest an email is counted under.
pub fn email_digest(email: &Email) -> EmailDigest {
    Sha256::digest(email.as_str().as_bytes()).into()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Key {
    Email(EmailDigest),
    Address(IpAddr),
}

#[derive(Debug, Clone, Copy)]
struct Slot {
    /// Failures in the window that started at `start`.
    failures: u32,
    /// Attempts reserved and not yet settled (they outlive window changes).
    in_flight: u32,
    start: Instant,
}

impl Slot {
    fn new(now: Instant) -> Self {
        Self {
            failures: 0,
            in_flight: 0,
            start: now,
        }
    }

    /// Starts a new window if the current one is over.
    fn roll(&mut self, now: Instant) {
        if now.duration_since(self.start) >= WINDOW {
            self.failures = 0;
            self.start = now;
        }
    }

    /// Nothing in flight and no failure that still counts: the slot can go.
    fn idle(&self, now: Instant) -> bool {
        self.in_flight == 0 && (self.failures == 0 || now.duration_since(self.start) >= WINDOW)
    }
}

/// Failure counters.
pub struct LoginThrottle {
    per_email: u32,
    per_address: u32,
    capacity: usize,
    slots: DashMap<Key, Slot>,
}

impl LoginThrottle {
    /// Allows `per_email` failures per email and `per_address` per client address, a minute,
    /// with at most [`DEFAULT_CAPACITY`] counters.
    pub fn new(per_email: u32, per_address: u32) -> Self {
        Self::with_capacity(per_email, per_address, DEFAULT_CAPACITY)
    }

    /// Like [`Self::new`], keeping at most `capacity` counters.
    pub fn with_capacity(per_email: u32, per_address: u32, capacity: usize) -> Self {
        Self {
            per_email,
            per_address,
            capacity: capacity.max(1),
            slots: DashMap::new(),
        }
    }

    /// Failures allowed per minute: per email, and per client address.
    pub fn limits(&self) -> (u32, u32) {
        (self.per_email, self.per_address)
    }

    /// Counters currently held.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// Whether no counter is held.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    fn keys(email: Option<&Email>, address: Option<IpAddr>) -> [Option<(Key, bool)>; 2] {
        [
            email.map(|e| (Key::Email(email_digest(e)), true)),
            address.map(|a| (Key::Address(a), false)),
        ]
    }

    fn limit(&self, is_email: bool) -> u32 {
        if is_email {
            self.per_email
        } else {
            self.per_address
        }
    }

    /// Reserves a login attempt for the email (`None` when the one given is not a valid email:
    /// only the address counts then) and the address. `Err(seconds to wait)` when the failures
    /// and attempts in flight of either already reach its limit.
    pub fn reserve(
        &self,
        email: Option<&Email>,
        address: Option<IpAddr>,
    ) -> Result<LoginAttempt<'_>, u64> {
        self.acquire(email, address, true)
    }

    /// Reserves an attempt without enforcing the limits: for when another store (Redis) has
    /// decided, so this instance's counts stay ready for a fallback.
    pub fn track(&self, email: Option<&Email>, address: Option<IpAddr>) -> LoginAttempt<'_> {
        self.acquire(email, address, false)
            .expect("an unenforced reservation is never refused")
    }

    fn acquire(
        &self,
        email: Option<&Email>,
        address: Option<IpAddr>,
        enforce: bool,
    ) -> Result<LoginAttempt<'_>, u64> {
        let now = Instant::now();
        let mut attempt = LoginAttempt {
            throttle: self,
            keys: [None; 2],
            in_redis: false,
        };
        for (i, (key, is_email)) in Self::keys(email, address).into_iter().flatten().enumerate() {
            if !self.slots.contains_key(&key) {
                self.make_room(now);
            }
            let max = self.limit(is_email);
            let mut slot = self.slots.entry(key).or_insert_with(|| Slot::new(now));
            slot.roll(now);
            if enforce && slot.failures.saturating_add(slot.in_flight) >= max {
                let wait = if slot.failures >= max {
                    (WINDOW - now.duration_since(slot.start)).as_secs().max(1)
                } else {
                    // Full of attempts whose verdict is not known yet.
                    1
                };
                let idle = slot.idle(now);
                drop(slot);
                if idle {
                    self.slots.remove_if(&key, |_, s| s.idle(now));
                }
                // Dropping `attempt` releases what was reserved for the other key.
                return Err(wait);
            }
            slot.in_flight += 1;
            attempt.keys[i] = Some(key);
        }
        Ok(attempt)
    }

    /// Makes room for one more counter when the table is full: expired counters first, then
    /// the oldest idle ones down to 90% of the capacity. Counters with attempts in flight are
    /// kept (there are at most as many as requests in flight).
    fn make_room(&self, now: Instant) {
        if self.slots.len() < self.capacity {
            return;
        }
        let before = self.slots.len();
        self.slots.retain(|_, s| !s.idle(now));
        let target = self.capacity - self.capacity / 10 - 1;
        if self.slots.len() > target {
            let mut idle: Vec<(Instant, Key)> = self
                .slots
                .iter()
                .filter(|s| s.in_flight == 0)
                .map(|s| (s.start, *s.key()))
                .collect();
            let excess = (self.slots.len() - target).min(idle.len());
            if excess > 0 {
                idle.select_nth_unstable_by_key(excess - 1, |(start, _)| *start);
                for (_, key) in &idle[..excess] {
                    self.slots.remove_if(key, |_, s| s.in_flight == 0);
                }
            }
        }
        let shed = before.saturating_sub(self.slots.len());
        if shed > 0 {
            metrics::LOGIN_THROTTLE_EVICTIONS.inc_by(shed as u64);
            tracing::warn!(
                evicted = shed,
                capacity = self.capacity,
                "login throttle table full: dropped the oldest failure counters"
            );
        }
    }

    /// Seconds to wait if the email or the address has reached its limit (failures and
    /// attempts in flight), else `None`. Reserves nothing.
    pub fn blocked(&self, email: Option<&Email>, address: Option<IpAddr>) -> Option<u64> {
        let now = Instant::now();
        Self::keys(email, address)
            .into_iter()
            .flatten()
            .filter_map(|(key, is_email)| {
                let mut slot = *self.slots.get(&key)?;
                slot.roll(now);
                let max = self.limit(is_email);
                let age = now.duration_since(slot.start);
                (slot.failures.saturating_add(slot.in_flight) >= max)
                    .then(|| (WINDOW - age).as_secs().max(1))
            })
            .max()
    }

    /// Drops expired windows with nothing in flight (bounded memory).
    pub fn evict_expired(&self) {
        let now = Instant::now();
        self.slots.retain(|_, s| !s.idle(now));
    }

    fn settle(&self, keys: &[Option<Key>; 2], failed: bool) {
        let now = Instant::now();
        for key in keys.iter().flatten() {
            let idle = match self.slots.get_mut(key) {
                Some(mut slot) => {
                    slot.in_flight = slot.in_flight.saturating_sub(1);
                    if failed {
                        slot.roll(now);
                        slot.failures += 1;
                    }
                    slot.idle(now)
                }
                None => false,
            };
            if idle {
                self.slots.remove_if(key, |_, s| s.idle(now));
            }
        }
    }
}

/// A reserved login attempt: counts toward the limits until settled with [`Self::fail`]
/// (it becomes a failure) or [`Self::release`] (it is forgotten); dropping it releases it.
#[must_use = "a reservation is settled with fail() or release()"]
pub struct LoginAttempt<'a> {
    throttle: &'a LoginThrottle,
    keys: [Option<Key>; 2],
    /// Also counted in Redis (refunded there on release).
    pub(crate) in_redis: bool,
}

impl<'a> LoginAttempt<'a> {
    /// The throttle the attempt is reserved in.
    pub(crate) fn throttle(&self) -> &'a LoginThrottle {
        self.throttle
    }

    /// The email's digest, if the attempt is counted against an email.
    pub fn email_digest(&self) -> Option<EmailDigest> {
        self.keys.iter().flatten().find_map(|k| match k {
            Key::Email(d) => Some(*d),
            Key::Address(_) => None,
        })
    }

    /// The client address, if the attempt is counted against one.
    pub fn address(&self) -> Option<IpAddr> {
        self.keys.iter().flatten().find_map(|k| match k {
            Key::Address(a) => Some(*a),
            Key::Email(_) => None,
        })
    }

    /// The attempt failed (bad credentials): it stays counted, as a failure.
    pub fn fail(mut self) {
        let keys = std::mem::take(&mut self.keys);
        self.throttle.settle(&keys, true);
    }

    /// The attempt succeeded, or ended without a verdict: it no longer counts.
    pub fn release(self) {}
}

impl Drop for LoginAttempt<'_> {
    fn drop(&mut self) {
        let keys = std::mem::take(&mut self.keys);
        self.throttle.settle(&keys, false);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn email(s: &str) -> Email {
        Email::parse(s).unwrap()
    }

    #[test]
    fn email_and_address_limits_are_separate() {
        let t = LoginThrottle::new(2, 3);
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        let a = email("a@b.co");
        assert!(t.blocked(Some(&a), Some(ip)).is_none());
        t.reserve(Some(&a), Some(ip)).unwrap().fail();
        t.reserve(Some(&email("A@b.co ")), Some(ip)).unwrap().fail();
        assert!(t.blocked(Some(&a), None).is_some());
        assert!(t.reserve(Some(&a), None).is_err());
        // the address has 2 of its 3
        assert!(t.blocked(Some(&email("other@b.co")), Some(ip)).is_none());
        t.reserve(Some(&email("third@b.co")), Some(ip))
            .unwrap()
            .fail();
        let fourth = email("fourth@b.co");
        assert!(t.reserve(Some(&fourth), Some(ip)).is_err());
        assert!(t.reserve(Some(&fourth), None).is_ok());
    }

    #[test]
    fn attempts_in_flight_count_toward_the_limit() {
        let t = LoginThrottle::new(5, 1000);
        let a = email("victim@example.com");
        let held: Vec<_> = (0..5).map(|_| t.reserve(Some(&a), None).unwrap()).collect();
        // Five guesses are being hashed: a sixth waits for a verdict.
        assert_eq!(t.reserve(Some(&a), None).err(), Some(1));
        // Released ones (a success, a 503) free their place; failed ones keep it.
        let mut held = held.into_iter();
        held.next().unwrap().release();
        held.next().unwrap().fail();
        let again = t.reserve(Some(&a), None).unwrap();
        assert!(t.reserve(Some(&a), None).is_err());
        drop(again);
        for attempt in held {
            attempt.fail();
        }
        // Four failures, nothing in flight: one more guess.
        t.reserve(Some(&a), None).unwrap().fail();
        let wait = t.reserve(Some(&a), None).err().unwrap();
        assert!((50..=60).contains(&wait), "{wait}");
    }

    #[test]
    fn concurrent_reservations_never_pass_the_limit() {
        let t = std::sync::Arc::new(LoginThrottle::new(5, 1000));
        let a = email("victim@example.com");
        let barrier = std::sync::Arc::new(std::sync::Barrier::new(16));
        let threads: Vec<_> = (0..16)
            .map(|_| {
                let (t, a, barrier) = (t.clone(), a.clone(), barrier.clone());
                std::thread::spawn(move || {
                    barrier.wait();
                    let mut passed = 0;
                    for _ in 0..20 {
                        if let Ok(attempt) = t.reserve(Some(&a), None) {
                            passed += 1;
                            std::thread::yield_now();
                            attempt.fail();
                        }
                    }
                    passed
                })
            })
            .collect();
        let passed: u32 = threads.into_iter().map(|h| h.join().unwrap()).sum();
        assert_eq!(passed, 5, "exactly the limit got through");
    }

    #[test]
    fn keys_have_a_fixed_size_and_invalid_emails_are_not_keys() {
        let t = LoginThrottle::new(5, 50);
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let huge = format!("{}@example.com", "a".repeat(1 << 20));
        // The handler parses first: a 1 MiB "email" is not an Email, so only the address counts.
        assert!(Email::parse(&huge).is_err());
        t.reserve(None, Some(ip)).unwrap().fail();
        assert_eq!(t.len(), 1);
        let attempt = t.reserve(None, Some(ip)).unwrap();
        assert_eq!(attempt.email_digest(), None);
        attempt.release();
        let a = email("Some.One@Example.com");
        assert_eq!(
            email_digest(&a),
            email_digest(&email("some.one@example.com "))
        );
        assert!(std::mem::size_of::<Key>() <= 40);
    }

    #[test]
    fn released_attempts_leave_nothing_behind() {
        let t = LoginThrottle::new(5, 50);
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        for i in 0..100 {
            let e = email(&format!("user{i}@example.com"));
            t.reserve(Some(&e), Some(ip)).unwrap().release();
            drop(t.reserve(Some(&e), Some(ip)).unwrap());
        }
        assert!(t.is_empty(), "{} counters", t.len());
    }

    #[test]
    fn the_table_is_bounded_and_sheds_the_oldest_idle_counters() {
        let t = LoginThrottle::with_capacity(5, 1000, 100);
        let first = email("first@example.com");
        t.reserve(Some(&first), None).unwrap().fail();
        // An attempt in flight is never shed.
        let pinned_email = email("pinned@example.com");
        let pinned = t.reserve(Some(&pinned_email), None).unwrap();
        let before = metrics::LOGIN_THROTTLE_EVICTIONS.get();
        for i in 0..1000 {
            let e = email(&format!("flood{i}@example.com"));
            t.reserve(Some(&e), None).unwrap().fail();
            assert!(t.len() <= 100, "{} counters after {i}", t.len());
        }
        assert!(metrics::LOGIN_THROTTLE_EVICTIONS.get() >= before + 900);
        // The oldest went first; the one in flight is still counted.
        assert!(t.blocked(Some(&first), None).is_none());
        for _ in 0..4 {
            t.reserve(Some(&pinned_email), None).unwrap().fail();
        }
        assert!(t.reserve(Some(&pinned_email), None).is_err());
        pinned.fail();
    }

    #[test]
    fn a_refused_reservation_releases_the_other_key() {
        let t = LoginThrottle::new(1000, 1);
        let ip: IpAddr = "192.0.2.9".parse().unwrap();
        t.reserve(None, Some(ip)).unwrap().fail();
        // The email is reserved first, then the address refuses: the email is released (and its
        // counter, now empty, dropped).
        assert!(t.reserve(Some(&email("a@example.com")), Some(ip)).is_err());
        assert_eq!(t.len(), 1);
    }
}
