//! Tenant protection: per-organization rate limits ([`rate::RateLimits`]), login throttling
//! ([`login::LoginThrottle`]) and storage quotas ([`quota::Quotas`]). Checks are in memory,
//! unless `limits.store = "redis"`: then rate limits and login throttling are shared by the
//! fleet through Redis ([`fleet::RedisLimits`]), with the in-memory limiters as the fallback.

pub mod address;
pub mod fleet;
pub mod login;
pub mod quota;
pub mod rate;

use crate::config::ConnectionUri;
use serde::{Deserialize, Serialize};

/// Where rate limits and login-failure counts are kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LimitStore {
    /// In this process: each instance enforces the limits on its own.
    Local,
    /// In Redis, shared by every instance using the same `redis_url` and key prefix.
    Redis,
}

/// Limits configuration (`[limits]`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    /// Requests per organization per minute.
    pub requests_per_minute: u32,
    /// Requests per organization per hour.
    pub requests_per_hour: u32,
    /// Failed logins allowed per email per minute.
    pub login_failures_per_minute: u32,
    /// Failed logins allowed per client address per minute (higher: addresses are shared).
    pub login_failures_per_minute_per_address: u32,
    /// Organization creates allowed per client address per minute (all at once if need be).
    pub creates_per_minute_per_address: u32,
    /// Public (token-less) `GET /org/get` requests allowed per client address per minute.
    pub public_reads_per_minute_per_address: u32,
    /// Proxies whose `X-Forwarded-For` is believed (CIDR networks); empty: none, the TCP peer
    /// is the client.
    pub trusted_proxies: Vec<address::Cidr>,
    /// Storage quota per organization, in bytes.
    pub storage_quota_bytes: u64,
    /// Share of the quota at which an organization is listed at `/ops/quotas`.
    pub quota_alert_ratio: f64,
    /// Admin accounts per organization.
    pub max_admins_per_org: u32,
    /// `local` (in memory, per instance) or `redis` (shared by the fleet).
    pub store: LimitStore,
    /// Redis URL when `store = "redis"` (`redis://[user:password@]host:port[/db]`); shown
    /// only with its password redacted.
    pub redis_url: Option<ConnectionUri>,
    /// Time allowed per Redis call before the request falls back to the local limiter.
    pub redis_timeout_ms: u64,
    /// Prefix of every Redis key, so several fleets can share one Redis.
    pub redis_key_prefix: String,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            requests_per_minute: 100,
            requests_per_hour: 1000,
            login_failures_per_minute: 5,
            login_failures_per_minute_per_address: 50,
            creates_per_minute_per_address: 60,
            public_reads_per_minute_per_address: 600,
            trusted_proxies: Vec::new(),
            storage_quota_bytes: 10 * 1024 * 1024 * 1024,
            quota_alert_ratio: 0.8,
            max_admins_per_org: 100,
            store: LimitStore::Local,
            redis_url: None,
            redis_timeout_ms: 50,
            redis_key_prefix: "org-gateway:".into(),
        }
    }
}

impl LimitsConfig {
    /// Checks the Redis settings (the request limits are checked with the rest of the config).
    pub fn validate(&self) -> Result<(), String> {
        if self.store == LimitStore::Redis && self.redis_url.is_none() {
            return Err("limits.store = \"redis\" needs limits.redis_url".into());
        }
        if self.creates_per_minute_per_address == 0
            || self.public_reads_per_minute_per_address == 0
            || self.login_failures_per_minute_per_address == 0
        {
            return Err(
                "limits.creates_per_minute_per_address, public_reads_per_minute_per_address \
                        and login_failures_per_minute_per_address must be > 0"
                    .into(),
            );
        }
        if !(1..=10_000).contains(&self.redis_timeout_ms) {
            return Err("limits.redis_timeout_ms must be 1 to 10000".into());
        }
        let prefix_ok = self.redis_key_prefix.len() <= 64
            && self.redis_key_prefix.chars().all(|c| c.is_ascii_graphic());
        if !prefix_ok {
            return Err(
                "limits.redis_key_prefix must be at most 64 printable ASCII characters".into(),
            );
        }
        Ok(())
    }
}

/// A per-organization override of the request limits, set through the operator API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RateOverride {
    /// Requests per minute (at least 1).
    #[serde(deserialize_with = "crate::domain::whole::u32")]
    #[schema(minimum = 1, maximum = 4294967295_u32)]
    pub requests_per_minute: u32,
    /// Requests per hour (at least 1).
    #[serde(deserialize_with = "crate::domain::whole::u32")]
    #[schema(minimum = 1, maximum = 4294967295_u32)]
    pub requests_per_hour: u32,
}
