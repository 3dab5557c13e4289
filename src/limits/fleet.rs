//! Fleet-wide rate limits and login throttling in Redis (`limits.store = "redis"`).
//!
//! A rate check is one round trip: one Lua script runs GCRA for both windows of the
//! organization atomically, on Redis server time (`TIME`), so the instances' clocks do not
//! matter and the limit is exact across the fleet. Failed logins are counted per email (hashed)
//! and per client address in fixed one-minute windows; a login reserves its attempt in the same
//! script that checks the limits (refunded when it does not fail), so concurrent guesses on
//! several instances cannot pass the limit either. Every key expires by itself.
//!
//! Redis is never allowed to take the gateway down with it: when a call fails or takes longer
//! than `limits.redis_timeout_ms`, that request is checked by the instance's in-memory limiter
//! instead (fail open; counted in `org_gateway_rate_limit_fallbacks_total`), and requests stop
//! calling Redis until a background probe, once a second, finds it answering again.

use super::address::{AddressKey, AddressLimit, AddressLimits};
use super::login::{email_digest, EmailDigest, LoginAttempt, LoginThrottle};
use super::rate::{RateDecision, RateLimits, WindowState};
use super::{LimitStore, LimitsConfig, RateOverride};
use crate::config::redact_uri;
use crate::domain::{Email, OrgId};
use crate::telemetry::metrics;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{RedisResult, Script};
use std::future::Future;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// How long requests leave Redis alone after a failure: the probe interval.
const RETRY_INTERVAL: Duration = Duration::from_secs(1);
/// Bound on establishing a connection (TCP, AUTH, SELECT); only the first probe at start waits
/// this long, requests never do.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// Window of the failed-login counters (as the in-memory throttle).
const LOGIN_WINDOW_MS: u64 = 60_000;

/// GCRA over one or more windows at once. KEYS: one key per window (theoretical arrival times
/// in µs of server time), e.g. an organization's minute and hour. ARGV: limit and emission
/// interval (µs) of each window. A request is admitted only if every window admits it, and
/// only then are they spent. Returns `{admitted, remaining_1, wait_1_us, remaining_2, …}`; a
/// window that refuses has a wait > 0.
const RATE_SCRIPT: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local admitted = 1
local limit, interval, base, tat, rem, wait = {}, {}, {}, {}, {}, {}
for i = 1, #KEYS do
  limit[i] = tonumber(ARGV[2 * i - 1])
  interval[i] = tonumber(ARGV[2 * i])
  base[i] = math.max(tonumber(redis.call('GET', KEYS[i]) or 0) or 0, now)
  tat[i] = base[i] + interval[i]
  local over = tat[i] - now - limit[i] * interval[i]
  if over > 0 then
    admitted = 0
    rem[i], wait[i] = 0, over
  else
    rem[i] = limit[i] - math.ceil((tat[i] - now) / interval[i])
    wait[i] = 0
  end
end
local out = {admitted}
for i = 1, #KEYS do
  if admitted == 1 then
    redis.call('SET', KEYS[i], string.format('%d', tat[i]),
      'PX', string.format('%d', math.ceil((tat[i] - now) / 1000)))
  elseif wait[i] == 0 then
    -- Nothing was spent: report the budget this window still has.
    rem[i] = limit[i] - math.ceil((base[i] - now) / interval[i])
  end
  out[2 * i] = rem[i]
  out[2 * i + 1] = wait[i]
end
return out
";

/// Reserves a login attempt. KEYS: failure counters; ARGV: the limit of each, then the window
/// in ms. If a counter has reached its limit, returns the milliseconds until every such counter
/// has expired and counts nothing; otherwise counts the attempt in every counter (as a failure
/// until refunded: attempts in flight count toward the limit) and returns 0. A counter's window
/// starts at its first attempt.
const LOGIN_RESERVE_SCRIPT: &str = r"
local wait = 0
for i = 1, #KEYS do
  local n = tonumber(redis.call('GET', KEYS[i]) or 0) or 0
  if n >= tonumber(ARGV[i]) then
    wait = math.max(wait, redis.call('PTTL', KEYS[i]), 1)
  end
end
if wait > 0 then
  return wait
end
for i = 1, #KEYS do
  redis.call('INCR', KEYS[i])
  if redis.call('PTTL', KEYS[i]) < 0 then
    redis.call('PEXPIRE', KEYS[i], ARGV[#KEYS + 1])
  end
end
return 0
";

/// Refunds a reserved attempt that did not fail. KEYS: its counters. A counter that expired
/// meanwhile is left alone (never below zero).
const LOGIN_REFUND_SCRIPT: &str = r"
for i = 1, #KEYS do
  local n = tonumber(redis.call('GET', KEYS[i]) or 0) or 0
  if n > 0 then
    redis.call('DECR', KEYS[i])
  end
end
return 0
";

#[derive(Debug, thiserror::Error)]
enum CallError {
    #[error("no answer within the timeout")]
    Timeout,
    #[error(transparent)]
    Redis(#[from] redis::RedisError),
}

/// Rate limits and login-failure counts shared by every instance through one Redis.
pub struct RedisLimits {
    conn: ConnectionManager,
    prefix: String,
    timeout: Duration,
    /// False after a failed call, until the background probe gets an answer.
    up: AtomicBool,
    /// Whether Redis has answered since start (for the log lines only).
    answered_once: AtomicBool,
    rate: Script,
    login_reserve: Script,
    login_refund: Script,
}

impl RedisLimits {
    /// With `store = "redis"`: a client for `redis_url` (one multiplexed connection, reconnected
    /// when lost), a first connection attempt, and the background probe. A Redis that is down at
    /// start only degrades the limits to per instance until it answers. Call on the runtime
    /// that should own the connection.
    pub async fn from_config(config: &LimitsConfig) -> Result<Option<Arc<Self>>, String> {
        if config.store != LimitStore::Redis {
            return Ok(None);
        }
        let limits = Arc::new(Self::new(config)?);
        if !limits.probe(CONNECT_TIMEOUT).await {
            tracing::warn!(
                "Redis does not answer: rate limits and login throttling are per instance \
                 until it does"
            );
        }
        let weak = Arc::downgrade(&limits);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(RETRY_INTERVAL);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(limits) = weak.upgrade() else { return };
                if !limits.is_up() {
                    limits.probe(limits.timeout).await;
                }
            }
        });
        Ok(Some(limits))
    }

    /// A client that connects lazily (on the first call). Must run inside a tokio runtime.
    pub fn new(config: &LimitsConfig) -> Result<Self, String> {
        let url = config
            .redis_url
            .as_deref()
            .ok_or("limits.store = \"redis\" needs limits.redis_url")?;
        let client = redis::Client::open(url)
            .map_err(|e| format!("limits.redis_url {} is not usable: {e}", redact_uri(url)))?;
        let timeout = Duration::from_millis(config.redis_timeout_ms);
        let manager = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(timeout))
            // One attempt per reconnection: the probe below paces the retries.
            .set_number_of_retries(0);
        let conn = ConnectionManager::new_lazy_with_config(client, manager)
            .map_err(|e| format!("cannot set up the Redis client: {e}"))?;
        Ok(Self {
            conn,
            prefix: config.redis_key_prefix.clone(),
            timeout,
            up: AtomicBool::new(false),
            answered_once: AtomicBool::new(false),
            rate: Script::new(RATE_SCRIPT),
            login_reserve: Script::new(LOGIN_RESERVE_SCRIPT),
            login_refund: Script::new(LOGIN_REFUND_SCRIPT),
        })
    }

    /// Whether requests currently use Redis.
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    /// PINGs Redis (within `timeout`) and records the outcome; true if it answered.
    pub async fn probe(&self, timeout: Duration) -> bool {
        let mut conn = self.conn.clone();
        let cmd = redis::cmd("PING");
        let ping = cmd.query_async::<String>(&mut conn);
        match tokio::time::timeout(timeout, ping).await {
            Ok(Ok(_)) => self.set_up(true, None),
            Ok(Err(e)) => self.set_up(false, Some(&CallError::Redis(e))),
            Err(_) => self.set_up(false, Some(&CallError::Timeout)),
        }
        self.is_up()
    }

    fn set_up(&self, up: bool, error: Option<&CallError>) {
        metrics::RATE_LIMIT_STORE_UP.set(i64::from(up));
        let was = self.up.swap(up, Ordering::Relaxed);
        match (was, up, error) {
            (false, true, _) if !self.answered_once.swap(true, Ordering::Relaxed) => {
                tracing::info!("rate limits and login throttling are shared through Redis")
            }
            (false, true, _) => tracing::info!("Redis answers: rate limits are fleet-wide again"),
            (true, false, Some(e)) => tracing::warn!(
                error = %e,
                "Redis failed: rate limits and login throttling fall back to this instance's \
                 in-memory limiter until it answers again"
            ),
            (_, _, Some(e)) => tracing::debug!(error = %e, "Redis still unavailable"),
            _ => {}
        }
    }

    async fn call<T>(&self, fut: impl Future<Output = RedisResult<T>>) -> Result<T, CallError> {
        match tokio::time::timeout(self.timeout, fut).await {
            Ok(r) => Ok(r?),
            Err(_) => Err(CallError::Timeout),
        }
    }

    /// Counts one request of `org` against its limits (overrides included, as known to
    /// `local`) in Redis; `local` decides when Redis cannot.
    pub async fn check_rate(&self, org: OrgId, local: &RateLimits) -> RateDecision {
        if self.is_up() {
            match self.rate_in_redis(org, local.limits_of(org)).await {
                Ok(decision) => return decision,
                Err(e) => self.set_up(false, Some(&e)),
            }
        }
        metrics::RATE_LIMIT_FALLBACKS
            .with_label_values(&["rate"])
            .inc();
        local.check(org)
    }

    async fn rate_in_redis(
        &self,
        org: OrgId,
        limits: RateOverride,
    ) -> Result<RateDecision, CallError> {
        let (per_minute, per_hour) = (limits.requests_per_minute, limits.requests_per_hour);
        let mut conn = self.conn.clone();
        let mut script = self.rate.prepare_invoke();
        script
            .key(self.rate_key(org, "m", per_minute))
            .key(self.rate_key(org, "h", per_hour))
            .arg(per_minute)
            .arg(interval_us(per_minute, 60))
            .arg(per_hour)
            .arg(interval_us(per_hour, 3600));
        let (_admitted, rem_m, wait_m, rem_h, wait_h): (i64, i64, i64, i64, i64) =
            self.call(script.invoke_async(&mut conn)).await?;
        let window = |remaining: i64, wait_us: i64| WindowState {
            allowed: wait_us <= 0,
            remaining: u32::try_from(remaining.max(0)).unwrap_or(u32::MAX),
            wait: Duration::from_micros(wait_us.max(0) as u64),
        };
        Ok(RateDecision::from_windows(
            limits,
            window(rem_m, wait_m),
            window(rem_h, wait_h),
        ))
    }

    /// Counts one request from `ip` against its per-address limit `kind`, fleet-wide;
    /// `local` decides when Redis cannot.
    pub async fn check_address(
        &self,
        kind: AddressLimit,
        ip: IpAddr,
        local: &AddressLimits,
    ) -> RateDecision {
        if self.is_up() {
            match self.address_in_redis(kind, ip, local.limit(kind)).await {
                Ok(decision) => return decision,
                Err(e) => self.set_up(false, Some(&e)),
            }
        }
        metrics::RATE_LIMIT_FALLBACKS
            .with_label_values(&["address"])
            .inc();
        local.check(kind, ip)
    }

    async fn address_in_redis(
        &self,
        kind: AddressLimit,
        ip: IpAddr,
        limit: u32,
    ) -> Result<RateDecision, CallError> {
        let mut conn = self.conn.clone();
        let mut script = self.rate.prepare_invoke();
        script
            .key(self.address_key(kind, AddressKey::of(ip), limit))
            .arg(limit)
            .arg(interval_us(limit, 60));
        let (_admitted, remaining, wait_us): (i64, i64, i64) =
            self.call(script.invoke_async(&mut conn)).await?;
        let state = WindowState {
            allowed: wait_us <= 0,
            remaining: u32::try_from(remaining.max(0)).unwrap_or(u32::MAX),
            wait: Duration::from_micros(wait_us.max(0) as u64),
        };
        Ok(RateDecision::single(kind.name(), limit, 60, state))
    }

    /// A per-address window's key (names the limit, as [`Self::rate_key`] does).
    fn address_key(&self, kind: AddressLimit, key: AddressKey, limit: u32) -> String {
        format!("{}addr:{}:{key}:m{limit}", self.prefix, kind.name())
    }

    /// A window's key. It names the limit, so that a new override starts with a full budget
    /// (as in memory) while the old key expires; the org is the hash tag, so both windows live
    /// in one slot should this ever run on a cluster.
    fn rate_key(&self, org: OrgId, window: &str, limit: u32) -> String {
        format!("{}rate:{{{org}}}:{window}{limit}", self.prefix)
    }

    /// The failure counters of a login attempt, with their limits: the email's (by its SHA-256:
    /// keys have a fixed size and hold no address in clear) and the client address's.
    fn login_keys(
        &self,
        email: Option<EmailDigest>,
        address: Option<IpAddr>,
        local: &LoginThrottle,
    ) -> Vec<(String, u32)> {
        let (per_email, per_address) = local.limits();
        let email = email.map(|d| {
            let key = format!("{}login:email:{}", self.prefix, hex::encode(d));
            (key, per_email)
        });
        let address = address.map(|a| (format!("{}login:addr:{a}", self.prefix), per_address));
        email.into_iter().chain(address).collect()
    }

    /// Reserves a login attempt across the fleet (see [`LoginThrottle::reserve`]):
    /// `Err(seconds to wait)` when the email or the address has reached its limit, failures
    /// and attempts in flight on every instance included. The attempt is tracked in `local`
    /// too, which decides alone when Redis cannot.
    pub async fn reserve_login<'a>(
        &self,
        local: &'a LoginThrottle,
        email: Option<&Email>,
        address: Option<IpAddr>,
    ) -> Result<LoginAttempt<'a>, u64> {
        if self.is_up() {
            let keys = self.login_keys(email.map(email_digest), address, local);
            let mut conn = self.conn.clone();
            let mut script = self.login_reserve.prepare_invoke();
            for (key, limit) in &keys {
                script.key(key).arg(*limit);
            }
            script.arg(LOGIN_WINDOW_MS);
            match self.call(script.invoke_async::<i64>(&mut conn)).await {
                Ok(ms) if ms > 0 => return Err((ms as u64).div_ceil(1000).max(1)),
                Ok(_) => {
                    let mut attempt = local.track(email, address);
                    attempt.in_redis = true;
                    return Ok(attempt);
                }
                Err(e) => self.set_up(false, Some(&e)),
            }
        }
        metrics::RATE_LIMIT_FALLBACKS
            .with_label_values(&["login"])
            .inc();
        local.reserve(email, address)
    }

    /// Settles an attempt from [`Self::reserve_login`]: a failure stays counted (in Redis
    /// already, and in `local` for a fallback); anything else is refunded. An attempt dropped
    /// without being settled (the request was abandoned) stays counted in Redis until its
    /// window ends.
    pub async fn settle_login(&self, attempt: LoginAttempt<'_>, failed: bool) {
        let keys = if attempt.in_redis && !failed {
            self.login_keys(
                attempt.email_digest(),
                attempt.address(),
                attempt.throttle(),
            )
        } else {
            Vec::new()
        };
        if failed {
            attempt.fail();
        } else {
            attempt.release();
        }
        if keys.is_empty() || !self.is_up() {
            return;
        }
        let mut conn = self.conn.clone();
        let mut script = self.login_refund.prepare_invoke();
        for (key, _) in &keys {
            script.key(key);
        }
        if let Err(e) = self.call(script.invoke_async::<i64>(&mut conn)).await {
            // The attempt stays counted (on the safe side) until its window ends.
            self.set_up(false, Some(&e));
        }
    }
}

/// GCRA emission interval of `limit` requests per `period_secs`, in µs, rounded up so that
/// `limit` intervals never add up to less than the period.
fn interval_us(limit: u32, period_secs: u64) -> u64 {
    (period_secs * 1_000_000).div_ceil(u64::from(limit.max(1)))
}

#[cfg(test)]
mod tests {
    //! Against a real Redis (`REDIS_URL`; `scripts/test` starts one). Without it these print a
    //! notice and pass, unless `REQUIRE_FULL_SUITE=1`.
    use super::*;

    fn redis_url() -> Option<String> {
        match std::env::var("REDIS_URL")
            .ok()
            .filter(|v| !v.trim().is_empty())
        {
            Some(url) => Some(url),
            None if std::env::var("REQUIRE_FULL_SUITE").is_ok_and(|v| v == "1") => {
                panic!("REDIS_URL is not set but REQUIRE_FULL_SUITE=1 requires Redis")
            }
            None => {
                eprintln!("skipping: REDIS_URL not set");
                None
            }
        }
    }

    /// A limiter on its own key prefix, so tests (and runs) never share keys.
    async fn limiter(url: &str, per_minute: u32, per_hour: u32) -> (RedisLimits, RateLimits) {
        let config = LimitsConfig {
            store: LimitStore::Redis,
            redis_url: Some(url.into()),
            redis_key_prefix: format!("test:{}:", uuid::Uuid::new_v4()),
            redis_timeout_ms: 1000,
            ..LimitsConfig::default()
        };
        let limits = RedisLimits::new(&config).unwrap();
        assert!(
            limits.probe(CONNECT_TIMEOUT).await,
            "Redis at REDIS_URL answers"
        );
        (limits, RateLimits::new(per_minute, per_hour))
    }

    #[tokio::test]
    async fn gcra_admits_the_limit_then_refuses_with_headers() {
        let Some(url) = redis_url() else { return };
        let (redis, local) = limiter(&url, 5, 1000).await;
        let (a, b) = (OrgId::generate(), OrgId::generate());
        for i in 0..5u32 {
            let d = redis.check_rate(a, &local).await;
            assert!(d.allowed, "request {i}: {d:?}");
            let rl = &d.headers[1].1;
            assert!(rl.contains(&format!("r={}", 4 - i)), "{rl}");
        }
        let d = redis.check_rate(a, &local).await;
        assert!(!d.allowed);
        // The next cell is 12 s away (60 s / 5).
        assert!((11..=12).contains(&d.retry_after), "{d:?}");
        assert_eq!(
            d.headers[0].1,
            "\"minute\";q=5;w=60, \"hour\";q=1000;w=3600"
        );
        assert!(redis.check_rate(b, &local).await.allowed);
        assert!(redis.is_up());
    }

    #[tokio::test]
    async fn hour_window_binds_and_a_refusal_spends_nothing() {
        let Some(url) = redis_url() else { return };
        let (redis, local) = limiter(&url, 3, 2).await;
        let a = OrgId::generate();
        assert!(redis.check_rate(a, &local).await.allowed);
        assert!(redis.check_rate(a, &local).await.allowed);
        let d = redis.check_rate(a, &local).await;
        assert!(!d.allowed);
        assert!(d.retry_after > 60, "the hour window binds: {d:?}");
        // The refused request did not spend the minute window's last cell.
        assert!(d.headers[1].1.starts_with("\"hour\";r=0"), "{d:?}");
        // An override is passed to the script, with a budget of its own.
        local.set_override(
            a,
            Some(RateOverride {
                requests_per_minute: 10,
                requests_per_hour: 10,
            }),
        );
        let d = redis.check_rate(a, &local).await;
        assert!(d.allowed, "{d:?}");
        assert!(d.headers[0].1.contains("q=10;w=60"), "{d:?}");
    }

    #[tokio::test]
    async fn address_limits_are_shared_and_fixed_size() {
        let Some(url) = redis_url() else { return };
        let (one, _) = limiter(&url, 1, 1).await;
        let two = second_instance(&url, &one).await;
        let (local_one, local_two) = (AddressLimits::new(3, 100), AddressLimits::new(3, 100));
        let ip: IpAddr = "2001:db8:7:7::1".parse().unwrap();
        let same_64: IpAddr = "2001:db8:7:7::2".parse().unwrap();
        assert!(
            one.check_address(AddressLimit::Creates, ip, &local_one)
                .await
                .allowed
        );
        assert!(
            two.check_address(AddressLimit::Creates, same_64, &local_two)
                .await
                .allowed
        );
        let d = one
            .check_address(AddressLimit::Creates, ip, &local_one)
            .await;
        assert!(
            d.allowed && d.headers[1].1.starts_with("\"creates\";r=0;"),
            "{d:?}"
        );
        let d = two
            .check_address(AddressLimit::Creates, ip, &local_two)
            .await;
        assert!(!d.allowed && (1..=20).contains(&d.retry_after), "{d:?}");
        assert_eq!(d.headers[0].1, "\"creates\";q=3;w=60");
        // Reads have a budget of their own; each instance alone saw fewer than 3 creates.
        assert!(
            two.check_address(AddressLimit::PublicReads, ip, &local_two)
                .await
                .allowed
        );
        assert!(local_two.check(AddressLimit::Creates, ip).allowed);
        let key = one.address_key(AddressLimit::Creates, AddressKey::of(ip), 3);
        assert_eq!(
            key,
            format!("{}addr:creates:2001:db8:7:7::/64:m3", one.prefix)
        );
        let mut conn = one.conn.clone();
        let ttl: i64 = redis::cmd("PTTL")
            .arg(&key)
            .query_async(&mut conn)
            .await
            .unwrap();
        assert!((1..=60_000).contains(&ttl), "{ttl}");
    }

    #[tokio::test]
    async fn keys_expire_by_themselves() {
        let Some(url) = redis_url() else { return };
        // One cell a second in both windows: after one request, keys live one second.
        let (redis, local) = limiter(&url, 60, 3600).await;
        let a = OrgId::generate();
        assert!(redis.check_rate(a, &local).await.allowed);
        let mut conn = redis.conn.clone();
        for (w, limit) in [("m", 60), ("h", 3600)] {
            let ttl: i64 = redis::cmd("PTTL")
                .arg(redis.rate_key(a, w, limit))
                .query_async(&mut conn)
                .await
                .unwrap();
            assert!((500..=1000).contains(&ttl), "{w}: {ttl}");
        }
        let ip: IpAddr = "192.0.2.7".parse().unwrap();
        let throttle = LoginThrottle::new(5, 50);
        let email = Email::parse("x@y.zz").unwrap();
        let attempt = redis
            .reserve_login(&throttle, Some(&email), Some(ip))
            .await
            .unwrap();
        redis.settle_login(attempt, true).await;
        let keys = redis.login_keys(Some(email_digest(&email)), Some(ip), &throttle);
        for (key, _) in &keys {
            let ttl: i64 = redis::cmd("PTTL")
                .arg(key)
                .query_async(&mut conn)
                .await
                .unwrap();
            assert!((1..=60_000).contains(&ttl), "{key}: {ttl}");
        }
        // Fixed size, no email in clear.
        assert!(!keys[0].0.contains("x@y.zz") && keys[0].0.len() == redis.prefix.len() + 12 + 64);
    }

    /// A second limiter on the same keys as `one`, with its own in-memory state.
    async fn second_instance(url: &str, one: &RedisLimits) -> RedisLimits {
        let two = RedisLimits {
            prefix: one.prefix.clone(),
            ..RedisLimits::new(&LimitsConfig {
                store: LimitStore::Redis,
                redis_url: Some(url.into()),
                ..LimitsConfig::default()
            })
            .unwrap()
        };
        assert!(two.probe(CONNECT_TIMEOUT).await);
        two
    }

    #[tokio::test]
    async fn login_failures_are_counted_across_limiters() {
        let Some(url) = redis_url() else { return };
        let (one, _) = limiter(&url, 1, 1).await;
        let two = second_instance(&url, &one).await;
        let (local_one, local_two) = (LoginThrottle::new(3, 100), LoginThrottle::new(3, 100));
        let ip: IpAddr = "198.51.100.1".parse().unwrap();
        let (typed, spaced) = (
            Email::parse("A@B.co").unwrap(),
            Email::parse(" a@b.co").unwrap(),
        );
        for (i, (limiter, local)) in [(&one, &local_one), (&two, &local_two), (&one, &local_one)]
            .into_iter()
            .enumerate()
        {
            let attempt = limiter.reserve_login(local, Some(&typed), Some(ip)).await;
            let attempt = attempt.unwrap_or_else(|w| panic!("{i}: refused, wait {w}"));
            limiter.settle_login(attempt, true).await;
        }
        let wait = two
            .reserve_login(&local_two, Some(&spaced), None)
            .await
            .err();
        assert!(matches!(wait, Some(1..=60)), "{wait:?}");
        // Each instance alone saw fewer than 3.
        assert_eq!(local_two.blocked(Some(&spaced), None), None);
        let other = Email::parse("c@b.co").unwrap();
        let attempt = two.reserve_login(&local_two, Some(&other), Some(ip)).await;
        two.settle_login(attempt.unwrap(), false).await;
    }

    #[tokio::test]
    async fn concurrent_logins_on_two_instances_never_pass_the_limit() {
        let Some(url) = redis_url() else { return };
        let (one, _) = limiter(&url, 1, 1).await;
        let two = second_instance(&url, &one).await;
        let (local_one, local_two) = (LoginThrottle::new(5, 1000), LoginThrottle::new(5, 1000));
        let email = Email::parse("victim@example.com").unwrap();
        // 40 guesses at once, half on each instance, each holding its reservation while
        // "hashing": only 5 may be reserved at any time.
        let guess = |limiter: &'static RedisLimits, local: &'static LoginThrottle| {
            let email = email.clone();
            async move {
                match limiter.reserve_login(local, Some(&email), None).await {
                    Ok(attempt) => {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        limiter.settle_login(attempt, true).await;
                        true
                    }
                    Err(_) => false,
                }
            }
        };
        let (one, two): (&'static RedisLimits, &'static RedisLimits) =
            (Box::leak(Box::new(one)), Box::leak(Box::new(two)));
        let (local_one, local_two): (&'static LoginThrottle, &'static LoginThrottle) = (
            Box::leak(Box::new(local_one)),
            Box::leak(Box::new(local_two)),
        );
        let tasks: Vec<_> = (0..40)
            .map(|i| {
                let (l, t) = if i % 2 == 0 {
                    (one, local_one)
                } else {
                    (two, local_two)
                };
                tokio::spawn(guess(l, t))
            })
            .collect();
        let mut passed = 0;
        for t in tasks {
            passed += usize::from(t.await.unwrap());
        }
        assert_eq!(passed, 5, "exactly the limit got through across the fleet");
        // A success is refunded: the counter is back where the failures left it.
        let other = Email::parse("refund@example.com").unwrap();
        for _ in 0..10 {
            let attempt = one
                .reserve_login(local_one, Some(&other), None)
                .await
                .unwrap();
            one.settle_login(attempt, false).await;
        }
    }

    #[tokio::test]
    async fn unreachable_redis_falls_back_to_the_local_limiter() {
        // A closed port: nothing to connect to. No server needed.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let config = LimitsConfig {
            store: LimitStore::Redis,
            redis_url: Some(format!("redis://127.0.0.1:{port}").into()),
            ..LimitsConfig::default()
        };
        let redis = RedisLimits::new(&config).unwrap();
        assert!(!redis.probe(CONNECT_TIMEOUT).await);
        let local = RateLimits::new(2, 100);
        let org = OrgId::generate();
        let before = metrics::RATE_LIMIT_FALLBACKS
            .with_label_values(&["rate"])
            .get();
        assert!(redis.check_rate(org, &local).await.allowed);
        assert!(redis.check_rate(org, &local).await.allowed);
        assert!(
            !redis.check_rate(org, &local).await.allowed,
            "local limits still apply"
        );
        assert!(
            metrics::RATE_LIMIT_FALLBACKS
                .with_label_values(&["rate"])
                .get()
                >= before + 3
        );
    }

    #[tokio::test]
    async fn a_silent_redis_times_out_once_then_is_left_alone() {
        use std::io::Read;
        use std::sync::atomic::AtomicUsize;
        // Accepts connections and reads everything, never answers.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let received = Arc::new(AtomicUsize::new(0));
        let counter = received.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let counter = counter.clone();
                std::thread::spawn(move || {
                    let (mut conn, mut buf) = (conn.unwrap(), [0u8; 4096]);
                    while let Ok(n @ 1..) = conn.read(&mut buf) {
                        counter.fetch_add(n, Ordering::Relaxed);
                    }
                });
            }
        });
        let config = LimitsConfig {
            store: LimitStore::Redis,
            redis_url: Some(format!("redis://127.0.0.1:{port}").into()),
            redis_timeout_ms: 50,
            ..LimitsConfig::default()
        };
        let redis = RedisLimits::new(&config).unwrap();
        // As if it had answered before: the first request tries it.
        redis.set_up(true, None);
        let local = RateLimits::new(100, 1000);
        let org = OrgId::generate();
        assert!(redis.check_rate(org, &local).await.allowed, "fails open");
        assert!(
            !redis.is_up(),
            "a timeout takes Redis out of the request path"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
        let sent = received.load(Ordering::Relaxed);
        let throttle = LoginThrottle::new(5, 50);
        for _ in 0..10 {
            assert!(redis.check_rate(org, &local).await.allowed);
            let email = Email::parse("a@b.co").unwrap();
            let attempt = redis.reserve_login(&throttle, Some(&email), None).await;
            redis.settle_login(attempt.unwrap(), false).await;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(
            received.load(Ordering::Relaxed),
            sent,
            "no calls while down"
        );
        assert_eq!(local.limits_of(org).requests_per_minute, 100);
    }

    #[test]
    fn intervals_never_admit_more_than_the_limit() {
        assert_eq!(interval_us(100, 60), 600_000);
        assert_eq!(interval_us(7, 60), 8_571_429);
        assert!(7 * interval_us(7, 60) >= 60_000_000);
        assert_eq!(interval_us(0, 60), 60_000_000);
    }

    #[tokio::test]
    async fn redis_url_password_is_not_in_errors() {
        let config = LimitsConfig {
            store: LimitStore::Redis,
            redis_url: Some("rediss://:hunter2-secret@h:1/0".into()),
            ..LimitsConfig::default()
        };
        if let Err(e) = RedisLimits::new(&config) {
            assert!(!e.contains("hunter2"), "{e}");
        }
        let shown = format!("{config:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
    }
}
