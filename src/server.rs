//! Process lifecycle: build the state on a background runtime, run startup recovery, start the
//! two pingora listeners, and shut down gracefully on SIGTERM or SIGINT.

use crate::api::routes::Listener;
use crate::app::AppState;
use crate::config::Config;
use crate::listener::malformed::ParseGuard;
use crate::listener::GatewayApp;
use crate::movers;
use crate::telemetry::{self, metrics};
use async_trait::async_trait;
use pingora::server::configuration::ServerConf;
use pingora::server::{RunArgs, Server, ShutdownSignal, ShutdownSignalWatch};
use pingora::services::listening::Service;
use std::sync::Arc;
use std::time::Duration;
use tokio::signal::unix::{signal, SignalKind};

/// Treats SIGINT like SIGTERM: stop accepting, let in-flight requests finish, exit.
struct GracefulOnSignal;

#[async_trait]
impl ShutdownSignalWatch for GracefulOnSignal {
    async fn recv(&self) -> ShutdownSignal {
        let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
        let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM received: finishing in-flight requests"),
            _ = int.recv() => tracing::info!("SIGINT received: finishing in-flight requests"),
        }
        ShutdownSignal::GracefulTerminate
    }
}

/// Organizations whose storage is measured per minute in the background.
const QUOTA_SWEEP_PER_MINUTE: usize = 500;

/// How often limiter state is trimmed, overrides reloaded and capacity gauges refreshed.
const MAINTENANCE_INTERVAL: Duration = Duration::from_secs(15);

/// How often audit events past their retention are removed.
const EVENT_PURGE_INTERVAL: Duration = Duration::from_secs(600);

/// How often the move runner looks for moves to start or resume.
const MOVE_TICK: Duration = Duration::from_millis(250);

/// How often interrupted renames, creates and drops are retried in the background.
const RESUME_INTERVAL: Duration = Duration::from_secs(5);

/// Runs the gateway until a shutdown signal. Blocks the calling thread.
pub fn serve(config: Config) -> anyhow::Result<()> {
    telemetry::init_tracing(&config.log);
    metrics::init();
    // Store clients and background work live on their own runtime, which outlives the
    // listeners' runtimes so in-flight store calls can finish during shutdown.
    let background = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("org-gateway-bg")
        .enable_all()
        .build()?;
    let (state, sweep_cursor) = background.block_on(async {
        let state = AppState::build(config.clone()).await?;
        // Follow the fleet before recovery: its fences wait for this instance too.
        let listener: Arc<dyn crate::fleet::SettingsListener> = state.clone();
        tokio::spawn(state.fleet.clone().run_follower(listener));
        tokio::spawn(state.fleet.clone().run_heartbeats());
        // The embedded catalog is single-process (file lock), so nothing else can be mid-way
        // through an operation: resume everything. A shared catalog leaves recent work alone.
        let grace = match config.catalog.kind {
            crate::config::StoreKind::Embedded => Duration::ZERO,
            crate::config::StoreKind::Mongodb => {
                let grace = Duration::from_secs(config.catalog.recovery_grace_seconds);
                let longest = state.fleet.fence_timeout() + Duration::from_secs(10);
                if grace < longest {
                    tracing::warn!(
                        recovery_grace_seconds = config.catalog.recovery_grace_seconds,
                        recommended = longest.as_secs(),
                        "catalog.recovery_grace_seconds is shorter than the longest fence: recovery at start may touch an operation another instance is still running"
                    );
                }
                grace
            }
        };
        match movers::resume_interrupted(&state.lifecycle(), grace).await {
            Ok(0) => {}
            Ok(n) => tracing::warn!(operations = n, "finished interrupted operations from a previous run"),
            Err(e) => tracing::error!(error = %e, "startup recovery incomplete; will retry in the background"),
        }
        if let Err(e) = movers::reconcile_capacity(&state.lifecycle()).await {
            tracing::error!(error = %e, "capacity reconciliation failed");
        }
        state.refresh_capacity().await;
        let mut sweep_cursor = None;
        if let Err(e) = movers::sweep_quotas(&state.lifecycle(), &state.quotas, QUOTA_SWEEP_PER_MINUTE, &mut sweep_cursor).await {
            tracing::warn!(error = %e, "quota sweep failed");
        }
        anyhow::Ok((state, sweep_cursor))
    })?;
    {
        let state = state.clone();
        let top_state = state.clone();
        background.spawn(async move {
            let mut sweep_cursor = sweep_cursor;
            let mut tick = tokio::time::interval(Duration::from_secs(60));
            tick.tick().await;
            loop {
                tick.tick().await;
                top_state.top_tenants.rotate();
                // A bounded number of organizations per minute, in catalog order from where
                // the last sweep stopped, skipping those measured recently.
                match movers::sweep_quotas(
                    &top_state.lifecycle(),
                    &top_state.quotas,
                    QUOTA_SWEEP_PER_MINUTE,
                    &mut sweep_cursor,
                )
                .await
                {
                    Ok(n) if n > 0 => tracing::debug!(measured = n, "quota sweep"),
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e, "quota sweep failed"),
                }
                metrics::QUOTA_ALERTS.set(top_state.quotas.over_alert().len() as i64);
            }
        });
        let purge_state = Arc::clone(&state);
        background.spawn(async move {
            let state = purge_state;
            let mut tick = tokio::time::interval(EVENT_PURGE_INTERVAL);
            let keep =
                chrono::Duration::days(i64::from(state.config.lifecycle.event_retention_days));
            if state.config.lifecycle.event_ttl_index {
                if let Err(e) = state
                    .catalog()
                    .expire_events_after(keep.to_std().unwrap_or_default())
                    .await
                {
                    tracing::warn!(error = %e, "no TTL index for audit events; the purge removes them");
                }
            }
            loop {
                tick.tick().await;
                match state
                    .catalog()
                    .purge_events(chrono::Utc::now() - keep)
                    .await
                {
                    Ok(0) => {}
                    Ok(n) => {
                        tracing::info!(removed = n, "audit events past their retention removed")
                    }
                    Err(e) => tracing::warn!(error = %e, "audit event purge failed"),
                }
            }
        });
        let sweep_state = Arc::clone(&state);
        background.spawn(async move {
            // Deleted organizations past their retention: purged by whichever instance gets
            // there first (a purge is one catalog step; the others find nothing to do).
            let mut tick = tokio::time::interval(sweep_state.config.lifecycle.purge_interval());
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                crate::api::deleted::sweep(&sweep_state).await;
            }
        });
        background.spawn(async move {
            let mut tick = tokio::time::interval(MAINTENANCE_INTERVAL);
            loop {
                tick.tick().await;
                state.rate_limits.evict_idle();
                state.login_throttle.evict_expired();
                state.address_limits.evict_idle();
                state.write_marks.evict_idle().await;
                state.load_rate_overrides().await;
                state.refresh_capacity().await;
                metrics::QUOTA_ALERTS.set(state.quotas.over_alert().len() as i64);
                metrics::CACHE_ENTRIES.set(state.router.cached_tenants() as i64);
                if let Err(e) = crate::api::ops::capacity_report(&state, true).await {
                    tracing::warn!(error = %e, "capacity metrics refresh failed");
                }
            }
        });
    }
    {
        let state = state.clone();
        background.spawn(async move {
            let holder = state.fleet.node_id().to_owned();
            let cfg = state.config.moves.clone();
            movers::moves::run(state.lifecycle(), cfg, holder, MOVE_TICK).await;
        });
    }
    {
        let state = state.clone();
        background.spawn(async move {
            let mut tick = tokio::time::interval(RESUME_INTERVAL);
            tick.tick().await;
            loop {
                tick.tick().await;
                // Never touch operations this process may still be running (bounded by the
                // request timeout).
                // Never touch operations this process may still be running (bounded by the
                // request timeout and the longest fence they may wait for).
                let grace = Duration::from_secs(state.config.catalog.recovery_grace_seconds)
                    .max(Duration::from_millis(state.config.request_timeout_ms * 3))
                    .max(state.fleet.fence_timeout() + Duration::from_secs(10))
                    .max(Duration::from_secs(30));
                if let Err(e) = movers::resume_interrupted(&state.lifecycle(), grace).await {
                    tracing::warn!(error = %e, "background resume failed; retrying later");
                }
            }
        });
    }

    let conf = ServerConf {
        threads: config.threads,
        grace_period_seconds: Some(config.shutdown_grace_seconds),
        graceful_shutdown_timeout_seconds: Some(1),
        pid_file: config
            .data_dir
            .join("org-gateway.pid")
            .display()
            .to_string(),
        upgrade_sock: config
            .data_dir
            .join("org-gateway-upgrade.sock")
            .display()
            .to_string(),
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();

    // The guard answers malformed requests itself and keeps their bytes out of the log.
    let mut public = Service::new(
        "public API".to_string(),
        ParseGuard(GatewayApp::new(Arc::clone(&state), Listener::Public)),
    );
    public.add_tcp(&config.listen.to_string());
    let mut ops = Service::new(
        "operator API".to_string(),
        ParseGuard(GatewayApp::new(Arc::clone(&state), Listener::Ops)),
    );
    ops.add_tcp(&config.ops_listen.to_string());
    server.add_service(public);
    server.add_service(ops);

    tracing::info!(
        listen = %config.listen,
        ops_listen = %config.ops_listen,
        data_dir = %config.data_dir.display(),
        shards = state.shards.all().len(),
        "org-gateway listening"
    );
    server.run(RunArgs {
        shutdown_signal: Box::new(GracefulOnSignal),
    });
    tracing::info!("listeners stopped; closing stores");
    background.block_on(state.fleet.leave());
    drop(state);
    background.shutdown_timeout(Duration::from_secs(2));
    tracing::info!("org-gateway stopped");
    telemetry::log_writer::flush();
    Ok(())
}
