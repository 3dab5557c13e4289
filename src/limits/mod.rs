//! Tenant protection: per-organization rate limits ([`rate::RateLimits`]), login throttling
//! ([`login::LoginThrottle`]) and storage quotas ([`quota::Quotas`]). All checks are in
//! memory: no I/O on the hot path.

pub mod login;
pub mod quota;
pub mod rate;

use serde::{Deserialize, Serialize};

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
    /// Storage quota per organization, in bytes.
    pub storage_quota_bytes: u64,
    /// Share of the quota at which an organization is listed at `/ops/quotas`.
    pub quota_alert_ratio: f64,
    /// Admin accounts per organization.
    pub max_admins_per_org: u32,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            requests_per_minute: 100,
            requests_per_hour: 1000,
            login_failures_per_minute: 5,
            login_failures_per_minute_per_address: 50,
            storage_quota_bytes: 10 * 1024 * 1024 * 1024,
            quota_alert_ratio: 0.8,
            max_admins_per_org: 100,
        }
    }
}

/// A per-organization override of the request limits, set through the operator API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RateOverride {
    /// Requests per minute.
    pub requests_per_minute: u32,
    /// Requests per hour.
    pub requests_per_hour: u32,
}
