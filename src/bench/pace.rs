//! When each virtual user may send its next request, and whether that request is measured.
//!
//! Closed loop: a user sends as soon as its previous request completes; latency is the
//! request's own time. Open loop: requests are due at a constant rate (`k / rate` seconds after
//! the start, whichever user is free takes the next slot), and latency is measured from the
//! *intended* send time, so a stalled server is charged for the requests it delayed
//! (no coordinated omission).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Closed or open loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Each user sends its next request when the previous one completes.
    Closed,
    /// Constant arrival rate (`--rate`), latency from the intended send time.
    Open,
}

/// How much to measure after the warm-up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Budget {
    /// Measure for this long.
    Time(Duration),
    /// Measure this many requests in total.
    Requests(u64),
}

/// A request slot handed to a user.
#[derive(Debug, Clone, Copy)]
pub struct Slot {
    /// When the request should have been sent (the latency origin).
    pub intended: Instant,
    /// Whether it falls in the measured window (after the warm-up).
    pub measured: bool,
}

/// The shared pacer of one run.
#[derive(Debug)]
pub struct Pace {
    mode: Mode,
    start: Instant,
    measure_start: Instant,
    budget: Budget,
    /// Nanoseconds between slots in open loop.
    interval_nanos: u64,
    next_slot: AtomicU64,
    /// Measured slots handed out.
    measured_issued: AtomicU64,
    stopped: AtomicBool,
}

impl Pace {
    /// A pacer starting now.
    pub fn new(mode: Mode, rate: Option<f64>, warmup: Duration, budget: Budget) -> Self {
        Self::starting_at(Instant::now(), mode, rate, warmup, budget)
    }

    /// A pacer starting at `start` (tests).
    pub fn starting_at(
        start: Instant,
        mode: Mode,
        rate: Option<f64>,
        warmup: Duration,
        budget: Budget,
    ) -> Self {
        let interval_nanos = match (mode, rate) {
            (Mode::Open, Some(r)) if r > 0.0 => (1e9 / r).round() as u64,
            _ => 0,
        };
        Self {
            mode,
            start,
            measure_start: start + warmup,
            budget,
            interval_nanos,
            next_slot: AtomicU64::new(0),
            measured_issued: AtomicU64::new(0),
            stopped: AtomicBool::new(false),
        }
    }

    /// When the run started (the warm-up begins).
    pub fn start(&self) -> Instant {
        self.start
    }

    /// Start of the measured window.
    pub fn measure_start(&self) -> Instant {
        self.measure_start
    }

    /// End of the measured window, for a time budget.
    pub fn window_end(&self) -> Option<Instant> {
        match self.budget {
            Budget::Time(d) => Some(self.measure_start + d),
            Budget::Requests(_) => None,
        }
    }

    /// Open loop with a time budget: measured slots that fell due but were never sent because
    /// every user was busy until the window closed (the server fell behind the offered rate).
    pub fn unsent(&self) -> u64 {
        let (Mode::Open, Budget::Time(d)) = (self.mode, self.budget) else {
            return 0;
        };
        if self.interval_nanos == 0 {
            return 0;
        }
        let first = (self.measure_start - self.start).as_nanos() as u64;
        let end = first + d.as_nanos() as u64;
        let due = end.div_ceil(self.interval_nanos) - first.div_ceil(self.interval_nanos);
        due.saturating_sub(self.measured_issued.load(Ordering::Relaxed))
    }

    /// The next slot, without waiting: `None` once the budget is spent.
    pub fn claim(&self, now: Instant) -> Option<Slot> {
        if self.stopped.load(Ordering::Relaxed) {
            return None;
        }
        // However far behind an open loop is, nothing is sent after the window closes.
        if self.window_end().is_some_and(|end| now >= end) {
            self.stopped.store(true, Ordering::Relaxed);
            return None;
        }
        let intended = match self.mode {
            Mode::Closed => now,
            Mode::Open => {
                let k = self.next_slot.fetch_add(1, Ordering::Relaxed);
                self.start + Duration::from_nanos(k.saturating_mul(self.interval_nanos))
            }
        };
        let measured = intended >= self.measure_start;
        if measured {
            let past_window = self.window_end().is_some_and(|end| intended >= end);
            if past_window || self.measured_issued.fetch_add(1, Ordering::Relaxed) >= self.cap() {
                self.stopped.store(true, Ordering::Relaxed);
                return None;
            }
        }
        Some(Slot { intended, measured })
    }

    fn cap(&self) -> u64 {
        match self.budget {
            Budget::Requests(n) => n,
            Budget::Time(_) => u64::MAX,
        }
    }

    /// The next slot, waiting for its intended time in open loop.
    pub async fn next(&self) -> Option<Slot> {
        let slot = self.claim(Instant::now())?;
        if slot.intended > Instant::now() {
            tokio::time::sleep_until(slot.intended.into()).await;
        }
        Some(slot)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn closed_loop_counts_only_measured_requests() {
        let t0 = Instant::now();
        let p = Pace::starting_at(
            t0,
            Mode::Closed,
            None,
            Duration::from_secs(1),
            Budget::Requests(2),
        );
        // During the warm-up: unlimited, unmeasured.
        for _ in 0..5 {
            assert!(!p.claim(t0).unwrap().measured);
        }
        let later = t0 + Duration::from_secs(2);
        assert!(p.claim(later).unwrap().measured);
        assert!(p.claim(later).unwrap().measured);
        assert!(p.claim(later).is_none());
        // Once stopped, stays stopped.
        assert!(p.claim(t0).is_none());
    }

    #[test]
    fn closed_loop_time_budget() {
        let t0 = Instant::now();
        let p = Pace::starting_at(
            t0,
            Mode::Closed,
            None,
            Duration::ZERO,
            Budget::Time(Duration::from_secs(10)),
        );
        assert!(p.claim(t0 + Duration::from_secs(9)).is_some());
        assert!(p.claim(t0 + Duration::from_secs(10)).is_none());
    }

    #[test]
    fn open_loop_slots_follow_the_rate() {
        let t0 = Instant::now();
        let p = Pace::starting_at(
            t0,
            Mode::Open,
            Some(100.0),
            Duration::from_millis(20),
            Budget::Time(Duration::from_millis(30)),
        );
        // Slots at 0, 10, 20, 30, 40 ms: the first two are warm-up, 20..50 ms is measured.
        let slots: Vec<Slot> = std::iter::from_fn(|| p.claim(t0)).collect();
        assert_eq!(slots.len(), 5);
        let offsets: Vec<u128> = slots
            .iter()
            .map(|s| (s.intended - t0).as_millis())
            .collect();
        assert_eq!(offsets, vec![0, 10, 20, 30, 40]);
        let measured: Vec<bool> = slots.iter().map(|s| s.measured).collect();
        assert_eq!(measured, vec![false, false, true, true, true]);
    }

    #[test]
    fn open_loop_stops_at_the_window_end_and_counts_the_backlog() {
        let t0 = Instant::now();
        let p = Pace::starting_at(
            t0,
            Mode::Open,
            Some(100.0),
            Duration::from_millis(20),
            Budget::Time(Duration::from_millis(100)),
        );
        // 10 measured slots fall due (20..120 ms); the users only got to 2 warm-up + 3 of them.
        for _ in 0..5 {
            assert!(p.claim(t0).is_some());
        }
        assert!(p.claim(t0 + Duration::from_millis(120)).is_none());
        assert_eq!(p.unsent(), 7);
        // A closed loop never has a backlog.
        let c = Pace::starting_at(
            t0,
            Mode::Closed,
            None,
            Duration::ZERO,
            Budget::Time(Duration::from_secs(1)),
        );
        assert_eq!(c.unsent(), 0);
    }

    #[test]
    fn open_loop_request_budget() {
        let t0 = Instant::now();
        let p = Pace::starting_at(
            t0,
            Mode::Open,
            Some(1000.0),
            Duration::ZERO,
            Budget::Requests(3),
        );
        assert_eq!(std::iter::from_fn(|| p.claim(t0)).count(), 3);
    }
}
