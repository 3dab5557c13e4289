//! What the harness measures: operations, the outcome of one request, and per-operation
//! latency histograms (HdrHistogram, microseconds) with outcome counters.

use hdrhistogram::Histogram;
use parking_lot::Mutex;
use std::collections::BTreeMap;
use std::time::Duration;

/// One kind of request the harness sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Op {
    /// `POST /org/create`.
    Create,
    /// `POST /admin/login`.
    Login,
    /// `GET /org/get?organization_name=`.
    Get,
    /// `PUT /org/update` (email change).
    Update,
    /// `DELETE /org/delete?organization_name=`.
    Delete,
    /// `POST /data`.
    DataWrite,
    /// `GET /data/{id}`.
    DataRead,
    /// `POST /data/query` (first page of 10).
    DataQuery,
    /// A plain `GET` of `--raw-path`.
    Raw,
}

impl Op {
    /// Every operation, in report order.
    pub const ALL: [Op; 9] = [
        Op::Create,
        Op::Login,
        Op::Get,
        Op::Update,
        Op::Delete,
        Op::DataWrite,
        Op::DataRead,
        Op::DataQuery,
        Op::Raw,
    ];

    /// Stable name used in the table and the JSON report.
    pub fn name(self) -> &'static str {
        match self {
            Op::Create => "create",
            Op::Login => "login",
            Op::Get => "get",
            Op::Update => "update",
            Op::Delete => "delete",
            Op::DataWrite => "data_write",
            Op::DataRead => "data_read",
            Op::DataQuery => "data_query",
            Op::Raw => "raw",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// How a request ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// A 2xx response.
    Ok,
    /// 429: the gateway's per-organization rate limit, counted apart from errors.
    RateLimited,
    /// Anything else: the status code (`"500"`) or a transport failure (`"timeout"`, ...).
    Error(String),
}

/// Counters and latencies of one operation.
#[derive(Debug, Clone)]
pub struct OpStats {
    /// Latency of every completed request (any status), in microseconds.
    pub hist: Histogram<u64>,
    /// 2xx responses.
    pub ok: u64,
    /// 429 responses.
    pub rate_limited: u64,
    /// Errors by kind (status code or transport failure).
    pub errors: BTreeMap<String, u64>,
    /// Requests that completed inside the measured window (the throughput numerator).
    pub in_window: u64,
    /// 2xx responses that completed inside the measured window.
    pub ok_in_window: u64,
}

/// Highest recordable latency: one hour, in microseconds (larger values saturate).
const MAX_MICROS: u64 = 3_600_000_000;

impl Default for OpStats {
    fn default() -> Self {
        Self {
            hist: Histogram::new_with_bounds(1, MAX_MICROS, 3).expect("valid histogram bounds"),
            ok: 0,
            rate_limited: 0,
            errors: BTreeMap::new(),
            in_window: 0,
            ok_in_window: 0,
        }
    }
}

impl OpStats {
    /// Records one request; `in_window` if it completed before the measured window closed.
    pub fn record(&mut self, latency: Duration, outcome: &Outcome, in_window: bool) {
        let micros = u64::try_from(latency.as_micros())
            .unwrap_or(u64::MAX)
            .max(1);
        self.hist.saturating_record(micros);
        if in_window {
            self.in_window += 1;
            if *outcome == Outcome::Ok {
                self.ok_in_window += 1;
            }
        }
        match outcome {
            Outcome::Ok => self.ok += 1,
            Outcome::RateLimited => self.rate_limited += 1,
            Outcome::Error(kind) => *self.errors.entry(kind.clone()).or_default() += 1,
        }
    }

    /// Requests that got an error (rate limiting excluded).
    pub fn error_count(&self) -> u64 {
        self.errors.values().sum()
    }

    /// Every measured request.
    pub fn count(&self) -> u64 {
        self.ok + self.rate_limited + self.error_count()
    }

    /// Adds another operation's figures into this one.
    pub fn merge(&mut self, other: &OpStats) {
        self.hist
            .add(&other.hist)
            .expect("histograms share their bounds");
        self.ok += other.ok;
        self.in_window += other.in_window;
        self.ok_in_window += other.ok_in_window;
        self.rate_limited += other.rate_limited;
        for (k, v) in &other.errors {
            *self.errors.entry(k.clone()).or_default() += v;
        }
    }
}

/// Shared statistics of a run: one lock per operation (recording is a few nanoseconds, far
/// below the cost of the request it measures).
#[derive(Debug)]
pub struct Stats {
    ops: Vec<Mutex<OpStats>>,
}

impl Default for Stats {
    fn default() -> Self {
        Self {
            ops: Op::ALL.iter().map(|_| Mutex::default()).collect(),
        }
    }
}

impl Stats {
    /// Records one measured request.
    pub fn record(&self, op: Op, latency: Duration, outcome: &Outcome, in_window: bool) {
        self.ops[op.index()]
            .lock()
            .record(latency, outcome, in_window);
    }

    /// A copy of every operation that saw at least one request, in report order.
    pub fn snapshot(&self) -> Vec<(Op, OpStats)> {
        Op::ALL
            .iter()
            .map(|&op| (op, self.ops[op.index()].lock().clone()))
            .filter(|(_, s)| s.count() > 0)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_outcomes_apart() {
        let mut s = OpStats::default();
        s.record(Duration::from_millis(1), &Outcome::Ok, true);
        s.record(Duration::from_millis(1), &Outcome::Ok, false);
        s.record(Duration::from_millis(2), &Outcome::RateLimited, true);
        s.record(
            Duration::from_millis(3),
            &Outcome::Error("500".into()),
            true,
        );
        s.record(
            Duration::from_millis(4),
            &Outcome::Error("500".into()),
            false,
        );
        assert_eq!(
            (s.ok, s.rate_limited, s.error_count(), s.count()),
            (2, 1, 2, 5)
        );
        assert_eq!((s.in_window, s.ok_in_window), (3, 1));
        assert_eq!(s.errors["500"], 2);
        assert_eq!(s.hist.len(), 5);
    }

    #[test]
    fn merge_adds_everything() {
        let mut a = OpStats::default();
        a.record(Duration::from_micros(10), &Outcome::Ok, true);
        let mut b = OpStats::default();
        b.record(
            Duration::from_secs(7200),
            &Outcome::Error("timeout".into()),
            true,
        );
        a.merge(&b);
        assert_eq!((a.count(), a.in_window, a.ok_in_window), (2, 2, 1));
        assert!(
            a.hist.max() >= MAX_MICROS / 1000 * 999,
            "saturates at the top"
        );
    }

    #[test]
    fn snapshot_skips_unused_operations() {
        let stats = Stats::default();
        stats.record(Op::Get, Duration::from_millis(1), &Outcome::Ok, true);
        let snap = stats.snapshot();
        assert_eq!(snap.len(), 1);
        assert_eq!(snap[0].0, Op::Get);
    }
}
