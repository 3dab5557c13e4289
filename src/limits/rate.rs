//! Per-organization rate limiting: two GCRA windows (minute and hour) per org, checked
//! together. Keyed limiters live in dashmaps (lock-free reads); idle keys are evicted by
//! [`RateLimits::evict_idle`], so memory stays bounded with 100,000 organizations.

use super::RateOverride;
use crate::domain::OrgId;
use crate::telemetry::metrics;
use dashmap::DashMap;
use governor::clock::{Clock, DefaultClock};
use governor::middleware::{StateInformationMiddleware, StateSnapshot};
use governor::state::keyed::DashMapStateStore;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

type Keyed = RateLimiter<OrgId, DashMapStateStore<OrgId>, DefaultClock, StateInformationMiddleware>;
type Direct = RateLimiter<NotKeyed, InMemoryState, DefaultClock, StateInformationMiddleware>;

/// The outcome of a check, with the headers to send either way.
#[derive(Debug, Clone)]
pub struct RateDecision {
    /// Whether the request may proceed.
    pub allowed: bool,
    /// Seconds until a retry can succeed (when refused).
    pub retry_after: u64,
    /// `RateLimit-Policy` and `RateLimit` headers.
    pub headers: Vec<(&'static str, String)>,
}

/// One window's state after a check.
#[derive(Debug, Clone, Copy)]
pub struct WindowState {
    /// Whether this window admits the request.
    pub allowed: bool,
    /// Requests left in the window's budget.
    pub remaining: u32,
    /// Time until this window admits a request again (zero when it does now).
    pub wait: Duration,
}

impl RateDecision {
    /// The decision and headers for a check of both windows under `limits`; the same for the
    /// in-memory and the Redis limiter, so clients cannot tell them apart.
    pub fn from_windows(limits: RateOverride, minute: WindowState, hour: WindowState) -> Self {
        let (per_minute, per_hour) = (limits.requests_per_minute, limits.requests_per_hour);
        let policy = format!("\"minute\";q={per_minute};w=60, \"hour\";q={per_hour};w=3600");
        let (rm, rh) = (minute.remaining, hour.remaining);
        let allowed = minute.allowed && hour.allowed;
        let secs = |w: &WindowState| w.wait.as_secs_f64().ceil() as u64;
        let retry_after = secs(&minute).max(secs(&hour)).max(u64::from(!allowed));
        // The binding window is the one with less budget left, relative to its size.
        let (name, left, size, window) =
            if (rm as f64 / per_minute.max(1) as f64) <= (rh as f64 / per_hour.max(1) as f64) {
                ("minute", rm, per_minute, 60u64)
            } else {
                ("hour", rh, per_hour, 3600u64)
            };
        let reset = if retry_after > 0 {
            retry_after
        } else {
            (u64::from(size.saturating_sub(left)) * window).div_ceil(u64::from(size.max(1)))
        };
        if !allowed {
            let which = if minute.allowed { "hour" } else { "minute" };
            metrics::RATE_LIMITED.with_label_values(&[which]).inc();
        }
        RateDecision {
            allowed,
            retry_after,
            headers: vec![
                ("ratelimit-policy", policy),
                ("ratelimit", format!("\"{name}\";r={left};t={reset}")),
            ],
        }
    }
}

impl RateDecision {
    /// The decision and headers for a single window of `limit` requests per `window_secs`,
    /// named `name` in the headers and in `org_gateway_rate_limited_requests_total{limiter}`.
    pub fn single(name: &'static str, limit: u32, window_secs: u64, state: WindowState) -> Self {
        let retry_after = (state.wait.as_secs_f64().ceil() as u64).max(u64::from(!state.allowed));
        let left = state.remaining;
        let reset = if retry_after > 0 {
            retry_after
        } else {
            (u64::from(limit.saturating_sub(left)) * window_secs).div_ceil(u64::from(limit.max(1)))
        };
        if !state.allowed {
            metrics::RATE_LIMITED.with_label_values(&[name]).inc();
        }
        RateDecision {
            allowed: state.allowed,
            retry_after,
            headers: vec![
                (
                    "ratelimit-policy",
                    format!("\"{name}\";q={limit};w={window_secs}"),
                ),
                ("ratelimit", format!("\"{name}\";r={left};t={reset}")),
            ],
        }
    }
}

struct Windows<L> {
    minute: L,
    hour: L,
    per_minute: u32,
    per_hour: u32,
}

fn quota(n: u32, period: Duration) -> Quota {
    let n = NonZeroU32::new(n.max(1)).expect("non-zero");
    Quota::with_period(period / n.get())
        .expect("non-zero period")
        .allow_burst(n)
}

/// Rate limits for every organization.
pub struct RateLimits {
    default: Windows<Keyed>,
    overrides: DashMap<OrgId, Arc<Windows<Direct>>>,
    clock: DefaultClock,
}

const MINUTE: Duration = Duration::from_secs(60);
const HOUR: Duration = Duration::from_secs(3600);

impl RateLimits {
    /// Limits with the default windows.
    pub fn new(per_minute: u32, per_hour: u32) -> Self {
        Self {
            default: Windows {
                minute: RateLimiter::dashmap(quota(per_minute, MINUTE))
                    .with_middleware::<StateInformationMiddleware>(),
                hour: RateLimiter::dashmap(quota(per_hour, HOUR))
                    .with_middleware::<StateInformationMiddleware>(),
                per_minute,
                per_hour,
            },
            overrides: DashMap::new(),
            clock: DefaultClock::default(),
        }
    }

    /// Makes the overrides exactly `all`, keeping the state of unchanged ones.
    pub fn sync_overrides(&self, all: &std::collections::HashMap<OrgId, RateOverride>) {
        self.overrides.retain(|org, _| all.contains_key(org));
        for (org, limits) in all {
            self.set_override(*org, Some(*limits));
        }
    }

    /// Replaces (or with `None` removes) an organization's override. Setting the same limits
    /// again keeps the current budget.
    pub fn set_override(&self, org: OrgId, limits: Option<RateOverride>) {
        match limits {
            Some(l) => {
                if let Some(w) = self.overrides.get(&org) {
                    if w.per_minute == l.requests_per_minute && w.per_hour == l.requests_per_hour {
                        return;
                    }
                }
                let w = Windows {
                    minute: RateLimiter::direct(quota(l.requests_per_minute, MINUTE))
                        .with_middleware::<StateInformationMiddleware>(),
                    hour: RateLimiter::direct(quota(l.requests_per_hour, HOUR))
                        .with_middleware::<StateInformationMiddleware>(),
                    per_minute: l.requests_per_minute,
                    per_hour: l.requests_per_hour,
                };
                self.overrides.insert(org, Arc::new(w));
            }
            None => {
                self.overrides.remove(&org);
            }
        }
    }

    /// The limits in force for an organization.
    pub fn limits_of(&self, org: OrgId) -> RateOverride {
        match self.overrides.get(&org) {
            Some(w) => RateOverride {
                requests_per_minute: w.per_minute,
                requests_per_hour: w.per_hour,
            },
            None => RateOverride {
                requests_per_minute: self.default.per_minute,
                requests_per_hour: self.default.per_hour,
            },
        }
    }

    /// Counts one request of `org` against both windows.
    pub fn check(&self, org: OrgId) -> RateDecision {
        let (minute, hour, per_minute, per_hour) = match self.overrides.get(&org).map(|w| w.clone())
        {
            Some(w) => (w.minute.check(), w.hour.check(), w.per_minute, w.per_hour),
            None => (
                self.default.minute.check_key(&org),
                self.default.hour.check_key(&org),
                self.default.per_minute,
                self.default.per_hour,
            ),
        };
        let now = self.clock.now();
        let window = |s: &Result<StateSnapshot, governor::NotUntil<_>>| match s {
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
        let limits = RateOverride {
            requests_per_minute: per_minute,
            requests_per_hour: per_hour,
        };
        RateDecision::from_windows(limits, window(&minute), window(&hour))
    }

    /// Forgets idle keys (full buckets) so memory tracks active organizations only.
    pub fn evict_idle(&self) {
        self.default.minute.retain_recent();
        self.default.hour.retain_recent();
        self.default.minute.shrink_to_fit();
        self.default.hour.shrink_to_fit();
    }

    /// Keys currently held (the larger of the two windows).
    pub fn tracked_keys(&self) -> usize {
        self.default.minute.len().max(self.default.hour.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sixth_request_in_a_minute_is_refused_per_org() {
        let l = RateLimits::new(5, 1000);
        let (a, b) = (OrgId::generate(), OrgId::generate());
        for i in 0..5 {
            let d = l.check(a);
            assert!(d.allowed, "request {i}");
        }
        let d = l.check(a);
        assert!(!d.allowed);
        assert!(d.retry_after >= 1 && d.retry_after <= 60, "{d:?}");
        assert!(l.check(b).allowed);
    }

    #[test]
    fn hour_window_also_binds_and_overrides_apply() {
        let l = RateLimits::new(100, 3);
        let a = OrgId::generate();
        for _ in 0..3 {
            assert!(l.check(a).allowed);
        }
        assert!(!l.check(a).allowed);
        l.set_override(
            a,
            Some(RateOverride {
                requests_per_minute: 10,
                requests_per_hour: 10,
            }),
        );
        assert!(l.check(a).allowed);
        assert_eq!(l.limits_of(a).requests_per_hour, 10);
    }

    #[test]
    fn idle_keys_are_evicted_so_memory_follows_active_orgs() {
        // One cell every 10 ms in both windows: a bucket is full again 10 ms after its request.
        let l = RateLimits::new(6_000, 360_000);
        for _ in 0..100_000 {
            l.check(OrgId::generate());
        }
        assert_eq!(l.tracked_keys(), 100_000);
        let busy = OrgId::generate();
        std::thread::sleep(std::time::Duration::from_millis(50));
        for _ in 0..50 {
            l.check(busy);
        }
        l.evict_idle();
        // Only the org still working through its budget is kept.
        assert_eq!(l.tracked_keys(), 1);
    }
}
