//! Telemetry: the Prometheus registry and metrics ([`metrics`]) and tracing set-up.

pub mod log_writer;
pub mod metrics;
pub mod top;

use crate::config::{LogConfig, LogFormat};
use tracing_subscriber::EnvFilter;

/// Installs the global tracing subscriber. `RUST_LOG` overrides the configured level.
pub fn init_tracing(log: &LogConfig) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(log.level.as_str()));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        // Lines go through a bounded queue to stderr: a slow terminal or log shipper never
        // blocks a worker.
        .with_writer(log_writer::QueuedStderr::start())
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    let result = match log.format {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Text => builder.try_init(),
    };
    // A second init (tests) is harmless.
    let _ = result;
}
