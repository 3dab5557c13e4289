//! Fleet-wide rate limits and login throttling in Redis (`limits.store = "redis"`).
//!
//! A rate check is one round trip: one Lua script runs GCRA for both windows of the
//! organization atomically, on Redis server time (`TIME`), so the instances' clocks do not
//! matter and the limit is exact across the fleet. Failed logins are counted per email (hashed)
//! and per client address in fixed one-minute windows. Every key expires by itself.
//!
//! Redis is never allowed to take the gateway down with it: when a call fails or takes longer
//! than `limits.redis_timeout_ms`, that request is checked by the instance's in-memory limiter
//! instead (fail open; counted in `org_gateway_rate_limit_fallbacks_total`), and requests stop
//! calling Redis until a background probe, once a second, finds it answering again.

use super::login::LoginThrottle;
use super::rate::{RateDecision, RateLimits, WindowState};
use super::{LimitStore, LimitsConfig, RateOverride};
use crate::config::redact_uri;
use crate::domain::OrgId;
use crate::telemetry::metrics;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{RedisResult, Script};
use sha2::{Digest, Sha256};
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

/// GCRA over two windows at once. KEYS: the minute and hour keys (theoretical arrival times in
/// µs of server time). ARGV: limit and emission interval (µs) of each window. A request is
/// admitted only if both windows admit it, and only then are both spent. Returns
/// `{admitted, remaining_minute, wait_minute_us, remaining_hour, wait_hour_us}`; a window that
/// refuses has a wait > 0.
const RATE_SCRIPT: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local admitted = 1
local limit, interval, base, tat, rem, wait = {}, {}, {}, {}, {}, {}
for i = 1, 2 do
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
for i = 1, 2 do
  if admitted == 1 then
    redis.call('SET', KEYS[i], string.format('%d', tat[i]),
      'PX', string.format('%d', math.ceil((tat[i] - now) / 1000)))
  elseif wait[i] == 0 then
    -- Nothing was spent: report the budget this window still has.
    rem[i] = limit[i] - math.ceil((base[i] - now) / interval[i])
  end
end
return {admitted, rem[1], wait[1], rem[2], wait[2]}
";

/// KEYS: failure counters; ARGV: the limit of each. Returns the milliseconds until every
/// counter over its limit has expired (0: not blocked).
const LOGIN_CHECK_SCRIPT: &str = r"
local wait = 0
for i = 1, #KEYS do
  local n = tonumber(redis.call('GET', KEYS[i]) or 0) or 0
  if n >= tonumber(ARGV[i]) then
    wait = math.max(wait, redis.call('PTTL', KEYS[i]))
  end
end
return wait
";

/// KEYS: failure counters; ARGV[1]: window in ms. Counts one failure in each; a counter's
/// window starts at its first failure.
const LOGIN_RECORD_SCRIPT: &str = r"
for i = 1, #KEYS do
  redis.call('INCR', KEYS[i])
  if redis.call('PTTL', KEYS[i]) < 0 then
    redis.call('PEXPIRE', KEYS[i], ARGV[1])
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
    login_check: Script,
    login_record: Script,
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
            login_check: Script::new(LOGIN_CHECK_SCRIPT),
            login_record: Script::new(LOGIN_RECORD_SCRIPT),
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

    /// A window's key. It names the limit, so that a new override starts with a full budget
    /// (as in memory) while the old key expires; the org is the hash tag, so both windows live
    /// in one slot should this ever run on a cluster.
    fn rate_key(&self, org: OrgId, window: &str, limit: u32) -> String {
        format!("{}rate:{{{org}}}:{window}{limit}", self.prefix)
    }

    /// The failure counters of a login attempt. The email as typed (maybe not even an email)
    /// is hashed: keys have a fixed size and hold no address in clear.
    fn login_keys(&self, email: &str, address: Option<IpAddr>) -> Vec<String> {
        let digest = Sha256::digest(email.trim().to_lowercase().as_bytes());
        let mut keys = vec![format!(
            "{}login:email:{}",
            self.prefix,
            hex::encode(digest)
        )];
        keys.extend(address.map(|a| format!("{}login:addr:{a}", self.prefix)));
        keys
    }

    /// Seconds to wait if the email or the address is over its failed-login limit across the
    /// fleet, else `None`; `local` decides when Redis cannot.
    pub async fn login_blocked(
        &self,
        local: &LoginThrottle,
        email: &str,
        address: Option<IpAddr>,
    ) -> Option<u64> {
        if self.is_up() {
            let (per_email, per_address) = local.limits();
            let mut conn = self.conn.clone();
            let mut script = self.login_check.prepare_invoke();
            for (key, limit) in self
                .login_keys(email, address)
                .into_iter()
                .zip([per_email, per_address])
            {
                script.key(key).arg(limit);
            }
            match self.call(script.invoke_async::<i64>(&mut conn)).await {
                Ok(ms) if ms > 0 => return Some((ms as u64).div_ceil(1000).max(1)),
                Ok(_) => return None,
                Err(e) => self.set_up(false, Some(&e)),
            }
        }
        metrics::RATE_LIMIT_FALLBACKS
            .with_label_values(&["login"])
            .inc();
        local.blocked(email, address)
    }

    /// Counts a failed login for the email and the address, in Redis and in `local`: a Redis
    /// outage then falls back to counts that already include this instance's recent failures.
    pub async fn record_login_failure(
        &self,
        local: &LoginThrottle,
        email: &str,
        address: Option<IpAddr>,
    ) {
        local.record_failure(email, address);
        if self.is_up() {
            let mut conn = self.conn.clone();
            let mut script = self.login_record.prepare_invoke();
            for key in self.login_keys(email, address) {
                script.key(key);
            }
            script.arg(LOGIN_WINDOW_MS);
            match self.call(script.invoke_async::<i64>(&mut conn)).await {
                Ok(_) => return,
                Err(e) => self.set_up(false, Some(&e)),
            }
        }
        metrics::RATE_LIMIT_FALLBACKS
            .with_label_values(&["login"])
            .inc();
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
        redis
            .record_login_failure(&LoginThrottle::new(5, 50), "x@y.z", Some(ip))
            .await;
        let keys = redis.login_keys("x@y.z", Some(ip));
        for key in &keys {
            let ttl: i64 = redis::cmd("PTTL")
                .arg(key)
                .query_async(&mut conn)
                .await
                .unwrap();
            assert!((1..=60_000).contains(&ttl), "{key}: {ttl}");
        }
        // Fixed size, no email in clear.
        assert!(!keys[0].contains("x@y.z") && keys[0].len() == redis.prefix.len() + 12 + 64);
    }

    #[tokio::test]
    async fn login_failures_are_counted_across_limiters() {
        let Some(url) = redis_url() else { return };
        let (one, _) = limiter(&url, 1, 1).await;
        // A second instance on the same keys, with its own in-memory state.
        let two = RedisLimits {
            prefix: one.prefix.clone(),
            ..RedisLimits::new(&LimitsConfig {
                store: LimitStore::Redis,
                redis_url: Some(url.as_str().into()),
                ..LimitsConfig::default()
            })
            .unwrap()
        };
        assert!(two.probe(CONNECT_TIMEOUT).await);
        let (local_one, local_two) = (LoginThrottle::new(3, 100), LoginThrottle::new(3, 100));
        let ip: IpAddr = "198.51.100.1".parse().unwrap();
        for (i, (limiter, local)) in [(&one, &local_one), (&two, &local_two), (&one, &local_one)]
            .into_iter()
            .enumerate()
        {
            assert_eq!(
                limiter.login_blocked(local, "A@B.co", Some(ip)).await,
                None,
                "{i}"
            );
            limiter
                .record_login_failure(local, " a@b.co", Some(ip))
                .await;
        }
        let wait = two.login_blocked(&local_two, "a@b.co", None).await;
        assert!(matches!(wait, Some(1..=60)), "{wait:?}");
        // Each instance alone saw fewer than 3.
        assert_eq!(local_two.blocked("a@b.co", None), None);
        assert_eq!(
            two.login_blocked(&local_two, "c@b.co", Some(ip)).await,
            None
        );
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
            assert_eq!(redis.login_blocked(&throttle, "a@b.co", None).await, None);
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
