//! Crash-test hooks, off unless a test sets their environment variable: `GATEWAY_FAILPOINT`
//! names a point where the process aborts, as if killed; `GATEWAY_PAUSEPOINT` one where it
//! waits `GATEWAY_PAUSE_MS`. Tests use them to prove that what a crash or a concurrent
//! instance interrupts is finished or undone (`tests/api/recovery.rs`, `tests/fleet/`). Each
//! costs one environment lookup, on paths that change tenant state, never on data requests.

use std::time::Duration;

/// Aborts the process here when `GATEWAY_FAILPOINT` is `name`.
pub fn failpoint(name: &str) {
    if std::env::var("GATEWAY_FAILPOINT").is_ok_and(|v| v == name) {
        tracing::error!(failpoint = name, "failpoint reached: aborting");
        crate::telemetry::log_writer::flush();
        std::process::abort();
    }
}

/// Waits `GATEWAY_PAUSE_MS` (default 1000) here when `GATEWAY_PAUSEPOINT` is `name`, so a
/// test can act on another instance in between.
pub async fn pausepoint(name: &str) {
    if std::env::var("GATEWAY_PAUSEPOINT").is_ok_and(|v| v == name) {
        let ms = std::env::var("GATEWAY_PAUSE_MS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(1000);
        tracing::warn!(pausepoint = name, ms, "pausepoint reached: waiting");
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
}
