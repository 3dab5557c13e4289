//! Abuse limits on the unauthenticated routes, per client address: organization creates
//! (`limits.creates_per_minute_per_address`) and public `GET /org/get` reads
//! (`limits.public_reads_per_minute_per_address`). Each is one GCRA window of a minute that
//! may be spent at once (a burst of the whole minute's budget), checked before the request
//! costs anything (a create's password hash above all).
//!
//! Who the client is: the TCP peer, unless the peer is one of `limits.trusted_proxies`; then
//! `X-Forwarded-For` is read from the right, skipping trusted hops, and the first untrusted
//! address is the client ([`client_address`]). An IPv6 client is counted by its /64 (one
//! subscriber usually holds a whole /64), an IPv4-mapped one as IPv4 ([`AddressKey`]).
//!
//! Memory is bounded: each limiter holds at most `capacity` addresses. Idle ones (a full
//! budget again) are dropped by the maintenance loop; when the table is full, idle ones go
//! first, then those closest to a full budget (counted in
//! `org_gateway_address_limiter_evictions_total`): forgetting them costs the least.

use super::rate::{RateDecision, WindowState};
use crate::telemetry::metrics;
use dashmap::DashMap;
use governor::clock::{Clock, DefaultClock};
use governor::middleware::StateInformationMiddleware;
use governor::nanos::Nanos;
use governor::state::keyed::ShrinkableKeyedStateStore;
use governor::state::StateStore;
use governor::{Quota, RateLimiter};
use http::HeaderMap;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::net::{IpAddr, Ipv6Addr};
use std::num::NonZeroU32;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

/// Addresses kept per limiter by default (about 60 bytes each).
pub const DEFAULT_CAPACITY: usize = 100_000;

/// At most this many `X-Forwarded-For` hops are examined from the right: a longer chain of
/// trusted proxies is not a deployment, and the header's length is the client's choice.
const MAX_HOPS: usize = 32;

/// A network in CIDR notation (`10.0.0.0/8`, `2001:db8::/32`; a bare address is a /32 or
/// /128). Host bits must be zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    network: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// Parses `addr/prefix` or a bare address.
    pub fn parse(text: &str) -> Result<Self, String> {
        let bad = || format!("{text:?} is not a CIDR network (like 10.0.0.0/8 or 2001:db8::/32)");
        let (addr, prefix) = match text.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (text, None),
        };
        let network: IpAddr = addr.parse().map_err(|_| bad())?;
        let max = if network.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(p) if !p.is_empty() && p.len() <= 3 && p.bytes().all(|b| b.is_ascii_digit()) => {
                p.parse::<u8>().map_err(|_| bad())?
            }
            Some(_) => return Err(bad()),
            None => max,
        };
        if prefix > max {
            return Err(bad());
        }
        let cidr = Self { network, prefix };
        if mask(network, prefix) != network {
            return Err(format!(
                "{text:?} has host bits set (did you mean {cidr}?)",
                cidr = Self {
                    network: mask(network, prefix),
                    prefix
                }
            ));
        }
        Ok(cidr)
    }

    /// Whether `ip` is in this network (an IPv4-mapped IPv6 address counts as IPv4).
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        ip.is_ipv4() == self.network.is_ipv4() && mask(ip, self.prefix) == self.network
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

impl FromStr for Cidr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Self::parse(s)
    }
}

impl Serialize for Cidr {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Cidr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        Self::parse(&text).map_err(serde::de::Error::custom)
    }
}

/// IPv4-mapped IPv6 addresses (`::ffff:a.b.c.d`, as a dual-stack socket reports IPv4 peers)
/// as the IPv4 address they are.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => ip,
        },
        v4 => v4,
    }
}

fn mask(ip: IpAddr, prefix: u8) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => {
            let bits = u32::from(v4);
            let m = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
            IpAddr::V4((bits & m).into())
        }
        IpAddr::V6(v6) => {
            let bits = u128::from(v6);
            let m = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
            IpAddr::V6((bits & m).into())
        }
    }
}

/// The client of a request: the TCP `peer`, or, when the peer is a trusted proxy, the
/// right-most address in `X-Forwarded-For` (all such headers, in order) that is not itself a
/// trusted proxy. If every hop is trusted, the left-most one; an entry that is not an address
/// stops the walk at the trusted hop that reported it (it cannot be told apart from a forged
/// one). Nothing of the header is kept but a parsed address.
pub fn client_address(
    peer: Option<IpAddr>,
    headers: &HeaderMap,
    trusted: &[Cidr],
) -> Option<IpAddr> {
    let peer = canonical(peer?);
    let is_trusted = |ip: IpAddr| trusted.iter().any(|c| c.contains(ip));
    if trusted.is_empty() || !is_trusted(peer) {
        return Some(peer);
    }
    let values: Vec<&[u8]> = headers
        .get_all("x-forwarded-for")
        .iter()
        .map(|v| v.as_bytes())
        .collect();
    let mut client = peer;
    let hops = values
        .iter()
        .rev()
        .flat_map(|v| v.rsplit(|b| *b == b','))
        .take(MAX_HOPS);
    for hop in hops {
        let Some(ip) = parse_hop(hop) else { break };
        client = ip;
        if !is_trusted(ip) {
            break;
        }
    }
    Some(client)
}

/// One `X-Forwarded-For` entry: an address, optionally with a port (`1.2.3.4:80`,
/// `[2001:db8::1]:80`).
fn parse_hop(hop: &[u8]) -> Option<IpAddr> {
    let text = std::str::from_utf8(hop).ok()?.trim();
    if text.len() > 64 {
        return None;
    }
    text.parse::<IpAddr>()
        .ok()
        .or_else(|| text.parse::<std::net::SocketAddr>().ok().map(|s| s.ip()))
        .map(canonical)
}

/// What an address is counted under: IPv4 as is, IPv6 by its /64.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct AddressKey(IpAddr);

impl AddressKey {
    /// The key of a client address.
    pub fn of(ip: IpAddr) -> Self {
        match canonical(ip) {
            IpAddr::V6(v6) => {
                let prefix = u128::from(v6) & !((1u128 << 64) - 1);
                Self(IpAddr::V6(Ipv6Addr::from(prefix)))
            }
            v4 => Self(v4),
        }
    }
}

impl fmt::Display for AddressKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            IpAddr::V4(v4) => write!(f, "{v4}"),
            IpAddr::V6(v6) => write!(f, "{v6}/64"),
        }
    }
}

/// Which limit a request counts against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddressLimit {
    /// `POST /org/create`.
    Creates,
    /// `GET /org/get` without a token.
    PublicReads,
}

impl AddressLimit {
    /// The name in `RateLimit-Policy`, metric labels and Redis keys.
    pub fn name(self) -> &'static str {
        match self {
            Self::Creates => "creates",
            Self::PublicReads => "public_reads",
        }
    }
}

/// The GCRA states of one limiter: theoretical arrival times (ns since the limiter's start;
/// 0 when none), shared with [`Limiter`] so that it can make room.
#[derive(Clone, Default)]
struct Table(Arc<DashMap<AddressKey, u64>>);

impl StateStore for Table {
    type Key = AddressKey;

    fn measure_and_replace<T, F, E>(&self, key: &AddressKey, f: F) -> Result<T, E>
    where
        F: Fn(Option<Nanos>) -> Result<(T, Nanos), E>,
    {
        // The shard's lock is held for the decision: no compare-and-swap loop needed.
        let mut tat = self.0.entry(*key).or_insert(0);
        let prev = (*tat != 0).then(|| Nanos::from(*tat));
        let (outcome, next) = f(prev)?;
        *tat = next.as_u64();
        Ok(outcome)
    }
}

impl ShrinkableKeyedStateStore<AddressKey> for Table {
    fn retain_recent(&self, drop_below: Nanos) {
        let below = drop_below.as_u64();
        self.0.retain(|_, tat| *tat > below);
    }

    fn shrink_to_fit(&self) {
        self.0.shrink_to_fit();
    }

    fn len(&self) -> usize {
        self.0.len()
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

struct Limiter {
    limiter: RateLimiter<AddressKey, Table, DefaultClock, StateInformationMiddleware>,
    table: Table,
    per_minute: u32,
    capacity: usize,
    kind: AddressLimit,
}

impl Limiter {
    fn new(kind: AddressLimit, per_minute: u32, capacity: usize) -> Self {
        let n = NonZeroU32::new(per_minute.max(1)).expect("non-zero");
        let quota = Quota::with_period(Duration::from_secs(60) / n.get())
            .expect("non-zero period")
            .allow_burst(n);
        let table = Table::default();
        Self {
            limiter: RateLimiter::<_, _, _, governor::middleware::NoOpMiddleware<_>>::new(
                quota,
                table.clone(),
                DefaultClock::default(),
            )
            .with_middleware::<StateInformationMiddleware>(),
            table,
            per_minute,
            capacity: capacity.max(10),
            kind,
        }
    }

    fn check(&self, key: AddressKey) -> RateDecision {
        if self.table.0.len() >= self.capacity && !self.table.0.contains_key(&key) {
            self.make_room();
        }
        let now = DefaultClock::default().now();
        let state = match self.limiter.check_key(&key) {
            Ok(snap) => WindowState {
                allowed: true,
                remaining: snap.remaining_burst_capacity(),
                wait: Duration::ZERO,
            },
            Err(n) => WindowState {
                allowed: false,
                remaining: 0,
                wait: n.wait_time_from(now),
            },
        };
        RateDecision::single(self.kind.name(), self.per_minute, 60, state)
    }

    /// Down to 90% of the capacity: idle addresses first, then those with the earliest
    /// theoretical arrival time (closest to a full budget).
    fn make_room(&self) {
        let before = self.table.0.len();
        self.limiter.retain_recent();
        let target = self.capacity - self.capacity / 10;
        let len = self.table.0.len();
        if len > target {
            let mut all: Vec<(u64, AddressKey)> = self
                .table
                .0
                .iter()
                .map(|e| (*e.value(), *e.key()))
                .collect();
            let excess = (len - target).min(all.len());
            if excess > 0 {
                all.select_nth_unstable_by_key(excess - 1, |(tat, _)| *tat);
                for (_, key) in &all[..excess] {
                    self.table.0.remove(key);
                }
            }
        }
        let shed = before.saturating_sub(self.table.0.len());
        if shed > 0 {
            metrics::ADDRESS_LIMITER_EVICTIONS
                .with_label_values(&[self.kind.name()])
                .inc_by(shed as u64);
        }
    }
}

/// The per-address limits of one instance (the fallback too when they live in Redis).
pub struct AddressLimits {
    creates: Limiter,
    reads: Limiter,
}

impl AddressLimits {
    /// `creates` and `reads` per address per minute, each bursting to the whole minute.
    pub fn new(creates: u32, reads: u32) -> Self {
        Self::with_capacity(creates, reads, DEFAULT_CAPACITY)
    }

    /// Like [`Self::new`], keeping at most `capacity` addresses per limit.
    pub fn with_capacity(creates: u32, reads: u32, capacity: usize) -> Self {
        Self {
            creates: Limiter::new(AddressLimit::Creates, creates, capacity),
            reads: Limiter::new(AddressLimit::PublicReads, reads, capacity),
        }
    }

    fn limiter(&self, kind: AddressLimit) -> &Limiter {
        match kind {
            AddressLimit::Creates => &self.creates,
            AddressLimit::PublicReads => &self.reads,
        }
    }

    /// The per-minute limit of `kind`.
    pub fn limit(&self, kind: AddressLimit) -> u32 {
        self.limiter(kind).per_minute
    }

    /// Counts one request from `ip` against `kind`.
    pub fn check(&self, kind: AddressLimit, ip: IpAddr) -> RateDecision {
        self.limiter(kind).check(AddressKey::of(ip))
    }

    /// Forgets addresses whose budget is full again.
    pub fn evict_idle(&self) {
        for l in [&self.creates, &self.reads] {
            l.limiter.retain_recent();
            l.limiter.shrink_to_fit();
        }
    }

    /// Addresses currently held by `kind`'s limiter.
    pub fn tracked(&self, kind: AddressLimit) -> usize {
        self.limiter(kind).table.0.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn cidrs_parse_and_match() {
        let net = Cidr::parse("10.1.0.0/16").unwrap();
        assert!(net.contains(ip("10.1.200.3")));
        assert!(net.contains(ip("::ffff:10.1.0.1")));
        assert!(!net.contains(ip("10.2.0.1")));
        assert!(!net.contains(ip("::1")));
        assert!(Cidr::parse("127.0.0.1").unwrap().contains(ip("127.0.0.1")));
        assert!(Cidr::parse("0.0.0.0/0").unwrap().contains(ip("8.8.8.8")));
        let v6 = Cidr::parse("2001:db8::/32").unwrap();
        assert!(v6.contains(ip("2001:db8:ffff::1")) && !v6.contains(ip("2001:db9::1")));
        for bad in [
            "10.1.0.1/16",
            "10.0.0.0/33",
            "x/8",
            "10.0.0.0/",
            "10.0.0.0/+8",
            "::/129",
        ] {
            assert!(Cidr::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(
            Cidr::parse("2001:db8::/32").unwrap().to_string(),
            "2001:db8::/32"
        );
    }

    #[test]
    fn forwarded_for_is_believed_only_from_trusted_proxies() {
        let trusted = [
            Cidr::parse("127.0.0.1/32").unwrap(),
            Cidr::parse("10.0.0.0/8").unwrap(),
        ];
        let mut h = HeaderMap::new();
        h.append(
            "x-forwarded-for",
            "203.0.113.9, 198.51.100.7".parse().unwrap(),
        );
        h.append("x-forwarded-for", "10.0.0.5".parse().unwrap());
        // Untrusted peer: the header is ignored.
        assert_eq!(
            client_address(Some(ip("192.0.2.1")), &h, &trusted),
            Some(ip("192.0.2.1"))
        );
        // Trusted peer: right-most untrusted, past the trusted 10.0.0.5.
        assert_eq!(
            client_address(Some(ip("127.0.0.1")), &h, &trusted),
            Some(ip("198.51.100.7"))
        );
        // Nothing trusted: the peer.
        assert_eq!(
            client_address(Some(ip("127.0.0.1")), &h, &[]),
            Some(ip("127.0.0.1"))
        );
        // Garbage stops the walk at the hop that reported it.
        let mut g = HeaderMap::new();
        g.append(
            "x-forwarded-for",
            "1.2.3.4, not-an-ip, 10.0.0.9".parse().unwrap(),
        );
        assert_eq!(
            client_address(Some(ip("127.0.0.1")), &g, &trusted),
            Some(ip("10.0.0.9"))
        );
        // Ports and brackets; all hops trusted: the left-most.
        let mut p = HeaderMap::new();
        p.append(
            "x-forwarded-for",
            "10.0.0.1:99, [2001:db8::7]:443".parse().unwrap(),
        );
        assert_eq!(
            client_address(Some(ip("127.0.0.1")), &p, &trusted),
            Some(ip("2001:db8::7"))
        );
        let mut all = HeaderMap::new();
        all.append("x-forwarded-for", "10.0.0.2, 10.0.0.3".parse().unwrap());
        assert_eq!(
            client_address(Some(ip("127.0.0.1")), &all, &trusted),
            Some(ip("10.0.0.2"))
        );
    }

    #[test]
    fn ipv6_counts_by_its_64() {
        assert_eq!(
            AddressKey::of(ip("2001:db8:1:2:3:4:5:6")),
            AddressKey::of(ip("2001:db8:1:2::9"))
        );
        assert_ne!(
            AddressKey::of(ip("2001:db8:1:2::1")),
            AddressKey::of(ip("2001:db8:1:3::1"))
        );
        assert_eq!(
            AddressKey::of(ip("::ffff:192.0.2.1")),
            AddressKey::of(ip("192.0.2.1"))
        );
        assert_eq!(
            AddressKey::of(ip("2001:db8:1:2::1")).to_string(),
            "2001:db8:1:2::/64"
        );
    }

    #[test]
    fn the_whole_minute_bursts_then_refuses_per_address() {
        let l = AddressLimits::new(3, 100);
        for i in 0..3 {
            assert!(
                l.check(AddressLimit::Creates, ip("192.0.2.1")).allowed,
                "{i}"
            );
        }
        let d = l.check(AddressLimit::Creates, ip("192.0.2.1"));
        assert!(!d.allowed && (1..=20).contains(&d.retry_after), "{d:?}");
        assert_eq!(d.headers[0].1, "\"creates\";q=3;w=60");
        assert!(l.check(AddressLimit::Creates, ip("192.0.2.2")).allowed);
        assert!(l.check(AddressLimit::PublicReads, ip("192.0.2.1")).allowed);
    }

    #[test]
    fn the_table_is_bounded() {
        let l = AddressLimits::with_capacity(5, 5, 100);
        let before = metrics::ADDRESS_LIMITER_EVICTIONS
            .with_label_values(&["creates"])
            .get();
        let busy = ip("198.51.100.1");
        for _ in 0..5 {
            l.check(AddressLimit::Creates, busy);
        }
        for i in 0..1000u32 {
            let a = IpAddr::V4((0x0a00_0000 + i).into());
            l.check(AddressLimit::Creates, a);
            assert!(l.tracked(AddressLimit::Creates) <= 101, "{i}");
        }
        assert!(
            metrics::ADDRESS_LIMITER_EVICTIONS
                .with_label_values(&["creates"])
                .get()
                >= before + 900
        );
        // The address that spent its budget first is the furthest from a full one: kept.
        assert!(!l.check(AddressLimit::Creates, busy).allowed);
    }
}
