//! `org-gateway bench`: a load generator for the Organization Management API at any base URL.
//!
//! Phases: set-up (fixture orgs, tokens, documents), warm-up (requests sent, not measured),
//! the measured window (by time or request count; closed or open loop), clean-up (delete what
//! the run created unless `--keep`). The report gives per-operation throughput, latency
//! percentiles and error rates, checked against the targets in [`targets`].

pub mod client;
pub mod duration;
pub mod pace;
pub mod report;
pub mod scenario;
pub mod stats;
pub mod targets;

use anyhow::{bail, Context};
use client::Api;
use pace::{Budget, Mode, Pace};
use report::{Cleanup, Report, RunInfo};
use scenario::{Run, Scenario, UserModel, Work};
use stats::{Op, Stats};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

/// The environment that lifts the gateway's per-organization rate limits, and the per-address
/// limits of creates and public reads (the harness sends everything from one address), for a
/// benchmark.
pub const RAISED_LIMITS_HINT: &str =
    "ORG_GATEWAY_LIMITS__REQUESTS_PER_MINUTE=1000000 ORG_GATEWAY_LIMITS__REQUESTS_PER_HOUR=100000000 \
     ORG_GATEWAY_LIMITS__CREATES_PER_MINUTE_PER_ADDRESS=1000000 \
     ORG_GATEWAY_LIMITS__PUBLIC_READS_PER_MINUTE_PER_ADDRESS=1000000";

/// Flags of `bench`.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// Base URL of the API under test.
    #[arg(long, default_value = "http://127.0.0.1:8080", value_name = "URL")]
    pub base_url: String,
    /// Concurrent virtual users (in open loop: the most requests in flight).
    #[arg(long, default_value_t = 1000)]
    pub users: usize,
    /// Length of the measured window, e.g. `30s` [default: 90s for `original`, else 30s,
    /// unless --requests].
    #[arg(long, value_parser = duration::parse_duration, conflicts_with = "requests")]
    pub duration: Option<Duration>,
    /// Measured requests in total (instead of --duration).
    #[arg(long, value_name = "N")]
    pub requests: Option<u64>,
    /// Warm-up before measuring (requests sent, not counted) [default: 0s for `original`, whose
    /// ramp-up is reported on its own, else 5s].
    #[arg(long, value_parser = duration::parse_duration)]
    pub warmup: Option<Duration>,
    /// `original`: users started per second [default: 50].
    #[arg(long, value_name = "USERS_PER_S")]
    pub spawn_rate: Option<f64>,
    /// `original`: start each second's users together, as Locust's dispatcher does (one batch
    /// of `floor(rate)` users every `floor(rate) / rate` s), instead of one every `1 / rate` s.
    #[arg(long)]
    pub spawn_in_batches: bool,
    /// `original`: wait before each task, drawn uniformly from MIN..MAX [default: 1s..3s].
    #[arg(long, value_name = "MIN..MAX", value_parser = duration::parse_range)]
    pub think_time: Option<(Duration, Duration)>,
    /// closed: next request when the previous completes; open: constant --rate.
    #[arg(long, value_enum, default_value_t = Mode::Closed)]
    pub mode: Mode,
    /// Arrival rate for --mode open, requests/s.
    #[arg(long, value_name = "R")]
    pub rate: Option<f64>,
    /// Request mix.
    #[arg(long, value_enum, default_value_t = Scenario::Original)]
    pub scenario: Scenario,
    /// Benchmark a plain GET of this path instead of a scenario (no set-up; works against any
    /// HTTP server).
    #[arg(long, value_name = "PATH")]
    pub raw_path: Option<String>,
    /// Fixture organizations created for the read scenarios.
    #[arg(long, default_value_t = 100)]
    pub orgs: usize,
    /// Admin password of the organizations the run creates (at least 8 characters).
    #[arg(long, default_value = "bench-password-1")]
    pub password: String,
    /// Per-request timeout.
    #[arg(long, default_value = "10s", value_parser = duration::parse_duration)]
    pub timeout: Duration,
    /// Write the report as JSON to this file.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// Keep the organizations the run created.
    #[arg(long)]
    pub keep: bool,
}

impl BenchArgs {
    fn validate(&self) -> anyhow::Result<()> {
        if self.users == 0 {
            bail!("--users must be at least 1");
        }
        if self.mode == Mode::Open && !self.rate.is_some_and(|r| r > 0.0 && r.is_finite()) {
            bail!("--mode open needs --rate R (requests/s, > 0)");
        }
        let users_model = self.raw_path.is_none() && self.scenario == Scenario::Original;
        if users_model && self.mode == Mode::Open {
            bail!("--scenario original paces itself with think time; it runs in closed loop only");
        }
        if !users_model
            && (self.spawn_rate.is_some() || self.think_time.is_some() || self.spawn_in_batches)
        {
            bail!("--spawn-rate, --spawn-in-batches and --think-time apply to --scenario original only");
        }
        if self.spawn_rate.is_some_and(|r| !(r > 0.0 && r.is_finite())) {
            bail!("--spawn-rate must be a number of users per second above 0");
        }
        if self.raw_path.is_none()
            && self.scenario == Scenario::CreateFlood
            && self.mode != Mode::Open
        {
            bail!("--scenario create-flood offers creates at a rate: use --mode open --rate R");
        }
        if self.requests == Some(0) {
            bail!("--requests must be at least 1");
        }
        if self.duration == Some(Duration::ZERO) {
            bail!("--duration must be > 0");
        }
        if self.raw_path.is_none() {
            if self.password.chars().count() < 8 {
                bail!("--password must be at least 8 characters");
            }
            if self.scenario != Scenario::Original && self.orgs == 0 {
                bail!("--orgs must be at least 1");
            }
        }
        if let Some(p) = &self.raw_path {
            if !p.starts_with('/') {
                bail!("--raw-path must start with '/'");
            }
        }
        url::Url::parse(&self.base_url).context("--base-url")?;
        Ok(())
    }

    /// Whether the run is `original`'s users with think time.
    fn user_model(&self) -> Option<UserModel> {
        if self.raw_path.is_some() || self.scenario != Scenario::Original {
            return None;
        }
        let (think_min, think_max) = self
            .think_time
            .unwrap_or((Duration::from_secs(1), Duration::from_secs(3)));
        Some(UserModel {
            think_min,
            think_max,
            spawn_rate: Some(self.spawn_rate.unwrap_or(50.0)),
            in_batches: self.spawn_in_batches,
        })
    }

    fn warmup(&self) -> Duration {
        let default = if self.user_model().is_some() { 0 } else { 5 };
        self.warmup.unwrap_or(Duration::from_secs(default))
    }

    fn budget(&self) -> Budget {
        let default = if self.user_model().is_some() { 90 } else { 30 };
        match self.requests {
            Some(n) => Budget::Requests(n),
            None => Budget::Time(self.duration.unwrap_or(Duration::from_secs(default))),
        }
    }
}

/// Runs `bench` on its own runtime; prints the report and returns whether the run completed.
pub fn run(args: BenchArgs) -> anyhow::Result<Report> {
    args.validate()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("tokio runtime")?;
    runtime.block_on(run_async(args))
}

async fn run_async(args: BenchArgs) -> anyhow::Result<Report> {
    let api = Api::new(&args.base_url, args.timeout)?;
    let run_id = uuid::Uuid::new_v4().simple().to_string()[..8].to_owned();
    let prefix = format!("bench-{run_id}");
    let started_at = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let (work, scenario_name, expected_ops): (Work, &str, &[Op]) = match &args.raw_path {
        Some(p) => (Work::Raw(p.clone()), "raw", &[Op::Raw]),
        None => (
            Work::Scenario(args.scenario),
            args.scenario.name(),
            args.scenario.ops(),
        ),
    };

    let needs_fixtures = matches!(work, Work::Scenario(s) if matches!(s, Scenario::GetOrg | Scenario::DataRead | Scenario::CreateFlood));
    let mut fixtures = Vec::new();
    if needs_fixtures {
        eprintln!(
            "set-up: creating {} organizations ({prefix}-*) against {}",
            args.orgs, args.base_url
        );
        let (orgs, err) = scenario::setup(
            &api,
            &prefix,
            &args.password,
            args.orgs,
            args.scenario == Scenario::DataRead,
        )
        .await;
        if let Some(e) = err {
            if e.contains("429") {
                eprintln!("{}", rate_limit_hint());
            }
            if !args.keep {
                scenario::cleanup(&api, &args.password, orgs).await;
            }
            bail!("set-up failed: {e}");
        }
        fixtures = orgs;
    }

    let pace = Pace::new(args.mode, args.rate, args.warmup(), args.budget());
    let model = args.user_model();
    let phases = model.map(|m| scenario::Phases {
        ramp_end: Some(pace.start() + m.start_offset(args.users.saturating_sub(1))),
        ..Default::default()
    });
    let run = Arc::new(Run {
        users: model.unwrap_or(UserModel {
            think_min: Duration::ZERO,
            think_max: Duration::ZERO,
            spawn_rate: None,
            in_batches: false,
        }),
        phases,
        api: api.clone(),
        pace,
        stats: Stats::default(),
        prefix,
        password: args.password.clone(),
        fixtures,
        leftovers: Default::default(),
        unmeasured_rate_limited: Default::default(),
    });
    eprintln!(
        "running {scenario_name}: {} users{}, {} loop, warm-up {:.1} s, {}",
        args.users,
        model
            .map(|m| format!(
                " spawned at {}/s{}, think time {:.1}-{:.1} s",
                m.spawn_rate.unwrap_or(0.0),
                if m.in_batches { " in batches" } else { "" },
                m.think_min.as_secs_f64(),
                m.think_max.as_secs_f64()
            ))
            .unwrap_or_default(),
        match args.mode {
            Mode::Closed => "closed",
            Mode::Open => "open",
        },
        args.warmup().as_secs_f64(),
        match args.budget() {
            Budget::Time(d) => format!("measuring {:.1} s", d.as_secs_f64()),
            Budget::Requests(n) => format!("measuring {n} requests"),
        }
    );
    let end = scenario::drive(run.clone(), work, args.users).await;
    // Throughput is counted over the window (a time budget) or until the last request.
    let window_end = run.pace.window_end().map_or(end, |w| w.min(end));
    let elapsed = window_end.saturating_duration_since(run.pace.measure_start());

    let info = RunInfo {
        run_id,
        base_url: args.base_url.clone(),
        scenario: scenario_name.to_owned(),
        raw_path: args.raw_path.clone(),
        mode: args.mode,
        users: args.users,
        rate: args.rate,
        spawn_rate: model.and_then(|m| m.spawn_rate),
        spawn_in_batches: model.is_some_and(|m| m.in_batches),
        think_time_s: model.map(|m| (m.think_min.as_secs_f64(), m.think_max.as_secs_f64())),
        warmup_s: args.warmup().as_secs_f64(),
        orgs: if needs_fixtures { args.orgs } else { 0 },
        started_at,
    };
    // What the clients offered: the open loop's rate, or users over their mean think time.
    let offered = match (args.mode, model) {
        (Mode::Open, _) => args.rate,
        (_, Some(m)) => {
            let mean_think = (m.think_min + m.think_max).as_secs_f64() / 2.0;
            (mean_think > 0.0).then(|| args.users as f64 / mean_think)
        }
        _ => None,
    };
    let mut report = Report::build(info, expected_ops, run.stats.snapshot(), elapsed, offered);
    if let Some(p) = &run.phases {
        let ramp_end = p.ramp_end.unwrap_or(window_end).min(window_end);
        let ramp_s = ramp_end.saturating_duration_since(run.pace.measure_start());
        let steady_s = window_end.saturating_duration_since(ramp_end);
        report.add_phases(
            expected_ops,
            p.ramp.snapshot(),
            ramp_s,
            p.steady.snapshot(),
            steady_s,
            offered,
        );
    }
    report.unmeasured_rate_limited = run.unmeasured_rate_limited.load(Ordering::Relaxed);
    report.tail_s = end.saturating_duration_since(window_end).as_secs_f64();
    report.open_loop_unsent = run.pace.unsent();

    let mut to_delete = run.fixtures.clone();
    to_delete.append(&mut run.leftovers.lock());
    report.cleanup = if args.keep {
        Cleanup {
            skipped: true,
            ..Cleanup::default()
        }
    } else if to_delete.is_empty() {
        Cleanup::default()
    } else {
        eprintln!("clean-up: deleting {} organizations", to_delete.len());
        let (deleted, reasons) = scenario::cleanup(&api, &args.password, to_delete).await;
        if let Some(first) = reasons.first() {
            eprintln!(
                "clean-up: {} organizations could not be deleted (e.g. {first})",
                reasons.len()
            );
        }
        Cleanup {
            deleted,
            failed: reasons.len() as u64,
            skipped: false,
        }
    };

    println!("{}", report.to_text());
    if report.saw_rate_limits() {
        eprintln!("{}", rate_limit_hint());
    }
    if let Some(path) = &args.json {
        let json = serde_json::to_string_pretty(&report)?;
        std::fs::write(path, json + "\n").with_context(|| format!("writing {}", path.display()))?;
        eprintln!("report written to {}", path.display());
    }
    Ok(report)
}

fn rate_limit_hint() -> String {
    format!(
        "hint: the gateway rate-limited requests (429). Its default limits are 100 requests/minute \
         per organization and, per client address, 60 creates and 600 token-less reads a minute; \
         run the gateway under test with raised limits:\n  {RAISED_LIMITS_HINT} \
         org-gateway serve ..."
    )
}
