//! Storage quotas: bytes per organization, measured from the backend on first use (and every
//! few minutes) and tracked as writes go in between.

use crate::domain::OrgId;
use dashmap::DashMap;
use std::time::{Duration, Instant};

/// How long a measured usage is trusted before it is measured again.
pub const REFRESH_AFTER: Duration = Duration::from_secs(300);

#[derive(Debug, Clone, Copy)]
struct Usage {
    bytes: u64,
    measured: Instant,
}

/// Usage per organization.
pub struct Quotas {
    /// Bytes allowed per organization.
    pub limit_bytes: u64,
    /// Share of the limit at which an organization is reported.
    pub alert_ratio: f64,
    usage: DashMap<OrgId, Usage>,
}

impl Quotas {
    /// Quotas of `limit_bytes` per organization.
    pub fn new(limit_bytes: u64, alert_ratio: f64) -> Self {
        Self {
            limit_bytes,
            alert_ratio,
            usage: DashMap::new(),
        }
    }

    /// Current usage if known and fresh.
    pub fn cached(&self, org: OrgId) -> Option<u64> {
        self.usage
            .get(&org)
            .filter(|u| u.measured.elapsed() < REFRESH_AFTER)
            .map(|u| u.bytes)
    }

    /// Whether the organization's usage is unknown or older than [`REFRESH_AFTER`].
    pub fn needs_measuring(&self, org: OrgId) -> bool {
        self.cached(org).is_none()
    }

    /// Records a measurement from the backend.
    pub fn set_measured(&self, org: OrgId, bytes: u64) {
        self.usage.insert(
            org,
            Usage {
                bytes,
                measured: Instant::now(),
            },
        );
    }

    /// Adjusts usage after a write (positive) or delete (negative).
    pub fn add(&self, org: OrgId, delta: i64) {
        if let Some(mut u) = self.usage.get_mut(&org) {
            u.bytes = (u.bytes as i64 + delta).max(0) as u64;
        }
    }

    /// Whether `extra` more bytes fit for an organization using `used`.
    pub fn fits(&self, used: u64, extra: u64) -> bool {
        used.saturating_add(extra) <= self.limit_bytes
    }

    /// Organizations at or above the alert ratio, with their usage.
    pub fn over_alert(&self) -> Vec<(OrgId, u64)> {
        let threshold = (self.limit_bytes as f64 * self.alert_ratio) as u64;
        let mut v: Vec<_> = self
            .usage
            .iter()
            .filter(|e| e.bytes >= threshold)
            .map(|e| (*e.key(), e.bytes))
            .collect();
        v.sort_by_key(|e| std::cmp::Reverse(e.1));
        v
    }

    /// Forgets an organization (deleted).
    pub fn forget(&self, org: OrgId) {
        self.usage.remove(&org);
    }
}
