//! The report of a run: per-operation figures, the overall line and the target checks, as an
//! aligned text table and as JSON.

use super::stats::{Op, OpStats};
use super::targets::{self, TargetResult};
use hdrhistogram::Histogram;
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

/// Latency percentiles in milliseconds.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct LatencyMs {
    /// Median.
    pub p50: f64,
    /// 95th percentile.
    pub p95: f64,
    /// 99th percentile.
    pub p99: f64,
    /// 99.9th percentile.
    pub p999: f64,
    /// Slowest request.
    pub max: f64,
    /// Mean.
    pub mean: f64,
}

impl LatencyMs {
    /// Percentiles of a histogram recorded in microseconds.
    pub fn from_micros(h: &Histogram<u64>) -> Self {
        if h.is_empty() {
            return Self::default();
        }
        let ms = |us: u64| us as f64 / 1000.0;
        Self {
            p50: ms(h.value_at_quantile(0.50)),
            p95: ms(h.value_at_quantile(0.95)),
            p99: ms(h.value_at_quantile(0.99)),
            p999: ms(h.value_at_quantile(0.999)),
            max: ms(h.max()),
            mean: h.mean() / 1000.0,
        }
    }
}

/// Figures of one operation (or `overall`).
#[derive(Debug, Clone, Serialize)]
pub struct OpReport {
    /// Operation name.
    pub op: String,
    /// Measured requests (ok + errors + rate limited).
    pub count: u64,
    /// 2xx responses.
    pub ok: u64,
    /// Errors (rate limiting excluded).
    pub errors: u64,
    /// 429 responses.
    pub rate_limited: u64,
    /// errors / count.
    pub error_rate: f64,
    /// Requests completed inside the measured window.
    pub in_window: u64,
    /// Completions inside the window / window seconds.
    pub throughput_rps: f64,
    /// 2xx completions inside the window / window seconds.
    pub goodput_rps: f64,
    /// Latency percentiles.
    pub latency_ms: LatencyMs,
    /// Errors by status code or transport failure.
    pub errors_by_kind: BTreeMap<String, u64>,
}

impl OpReport {
    /// Figures of `stats` over a measured window of `elapsed`.
    pub fn new(op: &str, stats: &OpStats, elapsed: Duration) -> Self {
        let count = stats.count();
        let errors = stats.error_count();
        let secs = elapsed.as_secs_f64();
        let per_sec = |n: u64| if secs > 0.0 { n as f64 / secs } else { 0.0 };
        Self {
            op: op.to_owned(),
            count,
            ok: stats.ok,
            errors,
            rate_limited: stats.rate_limited,
            error_rate: if count == 0 {
                0.0
            } else {
                errors as f64 / count as f64
            },
            in_window: stats.in_window,
            throughput_rps: per_sec(stats.in_window),
            goodput_rps: per_sec(stats.ok_in_window),
            latency_ms: LatencyMs::from_micros(&stats.hist),
            errors_by_kind: stats.errors.clone(),
        }
    }
}

/// How the run was set up.
#[derive(Debug, Clone, Serialize)]
pub struct RunInfo {
    /// Run id (names of created orgs start with `bench-<run id>`).
    pub run_id: String,
    /// Base URL under test.
    pub base_url: String,
    /// Scenario name (`raw` for `--raw-path`).
    pub scenario: String,
    /// The raw path, if any.
    pub raw_path: Option<String>,
    /// `closed` or `open`.
    pub mode: super::pace::Mode,
    /// Concurrent virtual users.
    pub users: usize,
    /// Open-loop arrival rate.
    pub rate: Option<f64>,
    /// `original`: users started per second.
    pub spawn_rate: Option<f64>,
    /// `original`: users started in one batch a second, as Locust does.
    pub spawn_in_batches: bool,
    /// `original`: think time bounds, seconds.
    pub think_time_s: Option<(f64, f64)>,
    /// Warm-up excluded from the figures, seconds.
    pub warmup_s: f64,
    /// Fixture organizations.
    pub orgs: usize,
    /// Start time (RFC 3339, UTC).
    pub started_at: String,
}

/// Result of deleting what the run created.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Cleanup {
    /// Orgs deleted.
    pub deleted: u64,
    /// Orgs that could not be deleted.
    pub failed: u64,
    /// Whether clean-up was skipped (`--keep`).
    pub skipped: bool,
}

/// The whole report.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Run parameters.
    #[serde(flatten)]
    pub info: RunInfo,
    /// Length of the measured window, seconds (the throughput denominator).
    pub measured_s: f64,
    /// Time after the window closed until the last in-flight request completed, seconds
    /// (their latencies count; they are not in the throughput).
    pub tail_s: f64,
    /// Open loop: requests that fell due in the window but were never sent because every
    /// user was busy (the server fell behind the offered rate).
    pub open_loop_unsent: u64,
    /// Per operation, in a fixed order.
    pub operations: Vec<OpReport>,
    /// All operations together.
    pub overall: OpReport,
    /// 429s outside the measured window (set-up and warm-up).
    pub unmeasured_rate_limited: u64,
    /// Target checks.
    pub targets: Vec<TargetResult>,
    /// What the clients offered, requests/s (open loop: the rate; `original`: users over
    /// their mean think time); throughput targets are checked against it.
    pub offered_rps: Option<f64>,
    /// `original`: the ramp-up (until the last user started) and the steady state apart.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub phases: Vec<PhaseReport>,
    /// Clean-up.
    pub cleanup: Cleanup,
}

/// Figures of one phase of a run.
#[derive(Debug, Clone, Serialize)]
pub struct PhaseReport {
    /// `ramp_up` or `steady`.
    pub phase: &'static str,
    /// Length of the phase, seconds.
    pub seconds: f64,
    /// Per operation.
    pub operations: Vec<OpReport>,
    /// All operations together.
    pub overall: OpReport,
}

/// Per-operation reports of `measured` over `elapsed`, and their total.
fn op_reports(
    expected_ops: &[Op],
    measured: &[(Op, OpStats)],
    elapsed: Duration,
) -> (Vec<OpReport>, OpReport) {
    let mut ops: Vec<Op> = expected_ops.to_vec();
    ops.extend(measured.iter().map(|(op, _)| *op));
    ops.sort();
    ops.dedup();
    let empty = OpStats::default();
    let mut total = OpStats::default();
    let operations = ops
        .iter()
        .map(|op| {
            let s = measured
                .iter()
                .find(|(o, _)| o == op)
                .map(|(_, s)| s)
                .unwrap_or(&empty);
            total.merge(s);
            OpReport::new(op.name(), s, elapsed)
        })
        .collect::<Vec<_>>();
    let overall = OpReport::new("overall", &total, elapsed);
    (operations, overall)
}

impl Report {
    /// Builds the report; `ops` lists the operations to show even with no requests.
    pub fn build(
        info: RunInfo,
        expected_ops: &[Op],
        measured: Vec<(Op, OpStats)>,
        elapsed: Duration,
        offered_rps: Option<f64>,
    ) -> Self {
        let (operations, overall) = op_reports(expected_ops, &measured, elapsed);
        let targets = targets::check(
            targets::for_scenario(&info.scenario),
            &operations,
            &overall,
            offered_rps,
        );
        Self {
            offered_rps,
            phases: Vec::new(),
            info,
            measured_s: elapsed.as_secs_f64(),
            tail_s: 0.0,
            open_loop_unsent: 0,
            operations,
            overall,
            unmeasured_rate_limited: 0,
            targets,
            cleanup: Cleanup::default(),
        }
    }

    /// Adds the ramp-up and steady-state figures. Throughput targets are then checked on the
    /// steady state (the ramp-up has fewer users by design); latency and error targets stay on
    /// the whole run, ramp-up included.
    pub fn add_phases(
        &mut self,
        expected_ops: &[Op],
        ramp: Vec<(Op, OpStats)>,
        ramp_len: Duration,
        steady: Vec<(Op, OpStats)>,
        steady_len: Duration,
        offered_rps: Option<f64>,
    ) {
        for (phase, measured, len) in [("ramp_up", ramp, ramp_len), ("steady", steady, steady_len)]
        {
            let (operations, overall) = op_reports(expected_ops, &measured, len);
            self.phases.push(PhaseReport {
                phase,
                seconds: len.as_secs_f64(),
                operations,
                overall,
            });
        }
        let steady = &self.phases[1];
        let throughput: Vec<_> = targets::for_scenario(&self.info.scenario)
            .iter()
            .copied()
            .filter(|t| t.metric == targets::Metric::Throughput)
            .collect();
        let checked = targets::check(
            &throughput,
            &steady.operations,
            &steady.overall,
            offered_rps,
        );
        for result in checked {
            if let Some(t) = self
                .targets
                .iter_mut()
                .find(|t| t.metric == result.metric && t.op == result.op && t.set == result.set)
            {
                *t = TargetResult { op: t.op, ..result };
            }
        }
    }

    /// Any 429 during the run.
    pub fn saw_rate_limits(&self) -> bool {
        self.overall.rate_limited > 0 || self.unmeasured_rate_limited > 0
    }

    /// The operations table and the targets table, aligned for a terminal.
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        let i = &self.info;
        let _ = writeln!(
            out,
            "org-gateway bench: {} against {} ({} loop, {} users{}), {:.1} s measured after {:.1} s warm-up",
            i.scenario,
            i.base_url,
            match i.mode {
                super::pace::Mode::Closed => "closed",
                super::pace::Mode::Open => "open",
            },
            i.users,
            i.rate.map(|r| format!(", {r} req/s")).unwrap_or_default()
                + &i.think_time_s
                    .map(|(a, b)| format!(
                        ", spawned at {}/s{}, think time {a:.1}-{b:.1} s",
                        i.spawn_rate.unwrap_or(0.0),
                        if i.spawn_in_batches { " in batches" } else { "" }
                    ))
                    .unwrap_or_default(),
            self.measured_s,
            i.warmup_s,
        );
        if self.tail_s >= 0.01 {
            let _ = writeln!(
                out,
                "requests in flight at the end of the window completed {:.2} s later (in the \
                 latencies, not in req/s)",
                self.tail_s
            );
        }
        if self.open_loop_unsent > 0 {
            let _ = writeln!(
                out,
                "open loop fell behind: {} requests due in the window were never sent",
                self.open_loop_unsent
            );
        }
        out.push('\n');
        let mut rows = vec![row(&[
            "operation",
            "count",
            "req/s",
            "2xx/s",
            "p50 ms",
            "p95 ms",
            "p99 ms",
            "p99.9 ms",
            "max ms",
            "errors",
            "err %",
            "429",
        ])];
        for r in self.operations.iter().chain(std::iter::once(&self.overall)) {
            let l = &r.latency_ms;
            rows.push(vec![
                r.op.clone(),
                r.count.to_string(),
                format!("{:.1}", r.throughput_rps),
                format!("{:.1}", r.goodput_rps),
                ms(l.p50),
                ms(l.p95),
                ms(l.p99),
                ms(l.p999),
                ms(l.max),
                r.errors.to_string(),
                format!("{:.2}", r.error_rate * 100.0),
                r.rate_limited.to_string(),
            ]);
        }
        out.push_str(&table(&rows, 1));
        if !self.phases.is_empty() {
            out.push('\n');
            let mut rows = vec![row(&[
                "phase",
                "operation",
                "count",
                "2xx/s",
                "p50 ms",
                "p95 ms",
                "p99 ms",
                "err %",
            ])];
            for p in &self.phases {
                for r in p.operations.iter().chain(std::iter::once(&p.overall)) {
                    let l = &r.latency_ms;
                    rows.push(vec![
                        format!("{} ({:.1} s)", p.phase, p.seconds),
                        r.op.clone(),
                        r.count.to_string(),
                        format!("{:.1}", r.goodput_rps),
                        ms(l.p50),
                        ms(l.p95),
                        ms(l.p99),
                        format!("{:.2}", r.error_rate * 100.0),
                    ]);
                }
            }
            out.push_str(&table(&rows, 2));
        }
        if let Some(offered) = self.offered_rps {
            let _ = writeln!(out, "\noffered load: {offered:.1} req/s");
        }
        if !self.targets.is_empty() {
            out.push('\n');
            let mut rows = vec![row(&["targets", "check", "target", "actual", "result"])];
            for t in &self.targets {
                rows.push(vec![
                    t.set.to_owned(),
                    t.what(),
                    t.target.clone(),
                    t.actual_text(),
                    if t.pass { "PASS" } else { "FAIL" }.to_owned(),
                ]);
            }
            out.push_str(&table(&rows, 2));
        }
        let errors: Vec<String> = self
            .overall
            .errors_by_kind
            .iter()
            .map(|(k, v)| format!("{k}: {v}"))
            .collect();
        if !errors.is_empty() {
            let _ = writeln!(out, "\nerrors by kind: {}", errors.join(", "));
        }
        out
    }
}

fn row(cells: &[&str]) -> Vec<String> {
    cells.iter().map(|c| (*c).to_owned()).collect()
}

fn ms(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.3}")
    }
}

/// Aligns `rows` in columns: the first `left` columns to the left, the rest to the right.
pub fn table(rows: &[Vec<String>], left: usize) -> String {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..cols)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|s| s.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for r in rows {
        let mut line = String::new();
        for (c, cell) in r.iter().enumerate() {
            if c > 0 {
                line.push_str("  ");
            }
            let w = widths[c];
            if c < left {
                let _ = write!(line, "{cell:<w$}");
            } else {
                let _ = write!(line, "{cell:>w$}");
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::pace::Mode;
    use crate::bench::stats::Outcome;

    fn info() -> RunInfo {
        RunInfo {
            run_id: "abc".into(),
            base_url: "http://127.0.0.1:1".into(),
            scenario: "get-org".into(),
            raw_path: None,
            mode: Mode::Closed,
            users: 2,
            rate: None,
            spawn_rate: None,
            spawn_in_batches: false,
            think_time_s: None,
            warmup_s: 0.0,
            orgs: 1,
            started_at: "2026-01-01T00:00:00Z".into(),
        }
    }

    #[test]
    fn percentiles_in_ms() {
        let mut s = OpStats::default();
        for us in 1..=1000u64 {
            s.record(Duration::from_micros(us * 10), &Outcome::Ok, true);
        }
        let l = LatencyMs::from_micros(&s.hist);
        // 1000 samples, 10 us to 10 ms: percentiles within HdrHistogram's 3 significant digits.
        let close = |a: f64, b: f64| (a - b).abs() <= b * 0.002;
        assert!(close(l.p50, 5.0), "{l:?}");
        assert!(close(l.p95, 9.5), "{l:?}");
        assert!(close(l.p99, 9.9), "{l:?}");
        assert!(close(l.p999, 9.99), "{l:?}");
        assert!(close(l.max, 10.0), "{l:?}");
        assert_eq!(
            LatencyMs::from_micros(&OpStats::default().hist),
            LatencyMs::default()
        );
    }

    #[test]
    fn throughput_and_error_rate() {
        let mut s = OpStats::default();
        for _ in 0..90 {
            s.record(Duration::from_millis(1), &Outcome::Ok, true);
        }
        for _ in 0..5 {
            s.record(Duration::from_millis(1), &Outcome::RateLimited, true);
        }
        for _ in 0..5 {
            s.record(
                Duration::from_millis(1),
                &Outcome::Error("503".into()),
                true,
            );
        }
        let r = OpReport::new("get", &s, Duration::from_secs(2));
        assert_eq!((r.count, r.ok, r.errors, r.rate_limited), (100, 90, 5, 5));
        assert!((r.throughput_rps - 50.0).abs() < 1e-9);
        assert!((r.goodput_rps - 45.0).abs() < 1e-9);
        assert!((r.error_rate - 0.05).abs() < 1e-9);
        assert_eq!(r.errors_by_kind["503"], 5);
    }

    #[test]
    fn report_lists_expected_ops_and_overall() {
        let mut get = OpStats::default();
        get.record(Duration::from_millis(2), &Outcome::Ok, true);
        get.record(Duration::from_millis(4), &Outcome::RateLimited, true);
        let r = Report::build(
            info(),
            &[Op::Get, Op::DataRead],
            vec![(Op::Get, get)],
            Duration::from_secs(1),
            None,
        );
        let names: Vec<&str> = r.operations.iter().map(|o| o.op.as_str()).collect();
        assert_eq!(names, vec!["get", "data_read"]);
        assert_eq!(r.overall.count, 2);
        assert!(r.saw_rate_limits());
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["scenario"], "get-org");
        assert_eq!(json["operations"][0]["rate_limited"], 1);
        assert_eq!(json["overall"]["count"], 2);
        assert!(json["targets"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["op"] == "get"));
    }

    #[test]
    fn text_table_is_aligned() {
        let mut get = OpStats::default();
        get.record(Duration::from_millis(2), &Outcome::Ok, true);
        let r = Report::build(
            info(),
            &[Op::Get],
            vec![(Op::Get, get)],
            Duration::from_secs(1),
            None,
        );
        let text = r.to_text();
        let lines: Vec<&str> = text.lines().skip(2).take(3).collect();
        assert!(lines[0].starts_with("operation"));
        assert!(lines[1].starts_with("get "));
        assert!(lines[2].starts_with("overall"));
        // Right-aligned numeric columns end at the same place.
        assert_eq!(lines[0].len(), lines[1].len());
        assert!(text.contains("PASS"));
    }

    #[test]
    fn table_alignment() {
        let rows = vec![
            vec!["a".to_owned(), "1".to_owned()],
            vec!["long".to_owned(), "1000".to_owned()],
        ];
        assert_eq!(table(&rows, 1), "a        1\nlong  1000\n");
    }
}
