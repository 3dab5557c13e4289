//! Latency the fleet-wide (Redis) rate limiter adds to a request, next to the in-memory one:
//! P50/P99/P99.9 of single checks, one at a time and with 64 concurrent callers on one
//! multiplexed connection. Needs `REDIS_URL` (skips with a notice without it):
//!
//! ```sh
//! REDIS_URL=redis://127.0.0.1:6379 cargo bench --bench redis_limiter
//! ```

use hdrhistogram::Histogram;
use org_gateway::domain::OrgId;
use org_gateway::limits::fleet::RedisLimits;
use org_gateway::limits::rate::RateLimits;
use org_gateway::limits::{LimitStore, LimitsConfig};
use std::sync::Arc;
use std::time::{Duration, Instant};

const ORGS: usize = 10_000;
const SEQUENTIAL: usize = 20_000;
const CONCURRENT_TASKS: usize = 64;
const PER_TASK: usize = 1_000;

fn report(name: &str, h: &Histogram<u64>, elapsed: Option<Duration>) {
    let us = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    let rate = elapsed
        .map(|e| format!(", {:.0} checks/s", h.len() as f64 / e.as_secs_f64()))
        .unwrap_or_default();
    println!(
        "{name:<40} n={:>6}  P50 {:>7.1} µs  P99 {:>7.1} µs  P99.9 {:>7.1} µs{rate}",
        h.len(),
        us(0.5),
        us(0.99),
        us(0.999)
    );
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 10_000_000_000, 3).expect("histogram bounds")
}

fn main() {
    // `cargo bench` passes `--bench`; a filter argument that does not match skips the run.
    if std::env::args()
        .skip(1)
        .any(|a| !a.starts_with('-') && !"redis_limiter".contains(a.as_str()))
    {
        return;
    }
    // `cargo test --all-targets` runs benches without `--bench`: then only a short smoke run.
    let scale = if std::env::args().any(|a| a == "--bench") {
        1
    } else {
        100
    };
    let Some(url) = std::env::var("REDIS_URL").ok().filter(|u| !u.is_empty()) else {
        eprintln!("skipping redis_limiter: REDIS_URL not set");
        return;
    };
    if scale > 1 {
        println!("redis_limiter: smoke run; `cargo bench --bench redis_limiter` for figures");
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async move {
        let config = LimitsConfig {
            store: LimitStore::Redis,
            redis_url: Some(url.as_str().into()),
            redis_key_prefix: format!("bench:{}:", std::process::id()),
            redis_timeout_ms: 1_000,
            ..LimitsConfig::default()
        };
        let redis = RedisLimits::from_config(&config)
            .await
            .expect("config")
            .expect("store = redis");
        assert!(redis.is_up(), "Redis at REDIS_URL does not answer");
        // Limits high enough that every check is admitted and writes its keys.
        let local = Arc::new(RateLimits::new(u32::MAX / 2, u32::MAX / 2));
        let orgs: Arc<Vec<OrgId>> = Arc::new((0..ORGS).map(|_| OrgId::generate()).collect());

        let mut h = histogram();
        for i in 0..SEQUENTIAL / scale {
            let t = Instant::now();
            std::hint::black_box(local.check(orgs[i % ORGS]));
            h.record(t.elapsed().as_nanos() as u64).unwrap();
        }
        report("in-memory check", &h, None);

        // Warm-up: the script is loaded (EVALSHA falls back to EVAL once).
        for org in orgs.iter().take(1000 / scale) {
            redis.check_rate(*org, &local).await;
        }
        let mut h = histogram();
        let started = Instant::now();
        for i in 0..SEQUENTIAL / scale {
            let t = Instant::now();
            let d = redis.check_rate(orgs[i % ORGS], &local).await;
            h.record(t.elapsed().as_nanos() as u64).unwrap();
            assert!(d.allowed);
        }
        report("Redis check, 1 caller", &h, Some(started.elapsed()));

        let started = Instant::now();
        let tasks: Vec<_> = (0..CONCURRENT_TASKS)
            .map(|t| {
                let (redis, local, orgs) = (redis.clone(), local.clone(), orgs.clone());
                tokio::spawn(async move {
                    let mut h = histogram();
                    for i in 0..PER_TASK / scale {
                        let start = Instant::now();
                        redis
                            .check_rate(orgs[(t * PER_TASK + i) % ORGS], &local)
                            .await;
                        h.record(start.elapsed().as_nanos() as u64).unwrap();
                    }
                    h
                })
            })
            .collect();
        let mut h = histogram();
        for t in tasks {
            h.add(t.await.expect("task")).unwrap();
        }
        report(
            &format!("Redis check, {CONCURRENT_TASKS} callers"),
            &h,
            Some(started.elapsed()),
        );
        assert!(redis.is_up(), "no check fell back during the run");
    });
}
