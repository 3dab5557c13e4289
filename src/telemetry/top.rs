//! Requests per organization, for `GET /ops/tenants/top`: per-organization numbers stay out of
//! Prometheus labels (unbounded cardinality) and are served here instead. Counts live for one
//! window (a minute); the last complete window is kept as a sorted top list.

use crate::domain::OrgId;
use dashmap::DashMap;
use parking_lot::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

/// How many organizations of the last window are kept.
const KEPT: usize = 1000;

/// Per-organization request counters.
pub struct TopTenants {
    current: DashMap<OrgId, AtomicU64>,
    last: Mutex<(Vec<(OrgId, u64)>, f64)>,
    window_started: Mutex<Instant>,
}

impl Default for TopTenants {
    fn default() -> Self {
        Self {
            current: DashMap::new(),
            last: Mutex::new((Vec::new(), 0.0)),
            window_started: Mutex::new(Instant::now()),
        }
    }
}

impl TopTenants {
    /// Counts one request of `org`.
    pub fn record(&self, org: OrgId) {
        if let Some(c) = self.current.get(&org) {
            c.fetch_add(1, Ordering::Relaxed);
            return;
        }
        self.current
            .entry(org)
            .or_insert_with(|| AtomicU64::new(0))
            .fetch_add(1, Ordering::Relaxed);
    }

    /// Closes the current window: its counts become the "last window" top list.
    pub fn rotate(&self) {
        let mut started = self.window_started.lock();
        let seconds = started.elapsed().as_secs_f64().max(1.0);
        *started = Instant::now();
        let mut counts: Vec<(OrgId, u64)> = self
            .current
            .iter()
            .map(|e| (*e.key(), e.value().load(Ordering::Relaxed)))
            .collect();
        self.current.clear();
        self.current.shrink_to_fit();
        counts.sort_by_key(|(_, n)| std::cmp::Reverse(*n));
        counts.truncate(KEPT);
        *self.last.lock() = (counts, seconds);
    }

    /// The `n` busiest organizations: of the last complete window when there is one, else of
    /// the window so far; with the window's length in seconds.
    pub fn top(&self, n: usize) -> (Vec<(OrgId, u64)>, f64) {
        let last = self.last.lock();
        if !last.0.is_empty() {
            return (last.0.iter().take(n).copied().collect(), last.1);
        }
        drop(last);
        let seconds = self.window_started.lock().elapsed().as_secs_f64().max(1.0);
        let mut counts: Vec<(OrgId, u64)> = self
            .current
            .iter()
            .map(|e| (*e.key(), e.value().load(Ordering::Relaxed)))
            .collect();
        counts.sort_by_key(|(_, n)| std::cmp::Reverse(*n));
        counts.truncate(n);
        (counts, seconds)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranks_by_requests_and_rotates() {
        let t = TopTenants::default();
        let (a, b) = (OrgId::generate(), OrgId::generate());
        for _ in 0..5 {
            t.record(a);
        }
        t.record(b);
        assert_eq!(t.top(10).0, vec![(a, 5), (b, 1)]);
        t.rotate();
        t.record(b);
        assert_eq!(t.top(1).0, vec![(a, 5)]);
    }
}
