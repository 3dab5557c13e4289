//! Telemetry: the Prometheus registry and metrics ([`metrics`]) and tracing set-up.

pub mod log_writer;
pub mod metrics;
pub mod top;

use crate::config::{LogConfig, LogFormat};
use tracing_subscriber::filter::{filter_fn, EnvFilter};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::Layer;

/// Library log targets whose lines can carry request bytes, dropped at every level whatever
/// `RUST_LOG` says:
///
/// - `pingora_core::protocols`, `pingora_core::apps`: the HTTP/1 parser and pingora's default
///   HTTP loop log raw request buffers, header values (Content-Length, Accept-Encoding) and
///   request summaries (method, path, Host). The gateway runs its own loop
///   ([`crate::listener::malformed::ParseGuard`]), which logs the kind of error instead.
/// - `h2`: frame-level traces with header blocks (HTTP/2 is not enabled, this is a backstop).
/// - `mongodb::command`: command logging with whole documents (only compiled in with the
///   driver's `tracing-unstable` feature, which the gateway does not enable).
///
/// `pingora_core::server`, `pingora_core::services` and `pingora_core::listeners` (start,
/// shutdown, bind failures) still log. The Redis client logs nothing.
pub const REDACTED_TARGETS: &[&str] = &[
    "pingora_core::protocols",
    "pingora_core::apps",
    "h2",
    "mongodb::command",
];

/// Whether events of `target` may be written (see [`REDACTED_TARGETS`]).
pub fn target_may_log(target: &str) -> bool {
    !REDACTED_TARGETS.iter().any(|prefix| {
        target
            .strip_prefix(prefix)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with("::"))
    })
}

/// Installs the global tracing subscriber. `RUST_LOG` overrides the configured level, except
/// for the targets in [`REDACTED_TARGETS`]. Records of the `log` crate (pingora logs through it)
/// are bridged into tracing and filtered the same way.
pub fn init_tracing(log: &LogConfig) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(log.level.as_str()));
    let fmt = tracing_subscriber::fmt::layer()
        // Lines go through a bounded queue to stderr: a slow terminal or log shipper never
        // blocks a worker.
        .with_writer(log_writer::QueuedStderr::start())
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    let fmt = match log.format {
        LogFormat::Json => fmt.json().flatten_event(true).boxed(),
        LogFormat::Text => fmt.boxed(),
    };
    let result = tracing_subscriber::registry()
        .with(filter)
        // Decided once per call site (FilterFn caches the interest), not per event.
        .with(filter_fn(|meta| target_may_log(meta.target())))
        .with(fmt)
        .try_init();
    // A second init (tests) is harmless.
    let _ = result;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_carrying_targets_are_dropped_and_lifecycle_ones_kept() {
        for dropped in [
            "pingora_core::protocols::http::v1::server",
            "pingora_core::protocols::http::v1::common",
            "pingora_core::apps::http_app",
            "pingora_core::apps",
            "h2::codec::framed_read",
            "mongodb::command",
        ] {
            assert!(!target_may_log(dropped), "{dropped}");
        }
        for kept in [
            "pingora_core::server",
            "pingora_core::services::listening",
            "pingora_core::listeners::l4",
            "org_gateway::listener::malformed",
            "access",
            "h2o",
            "mongodb::connection",
        ] {
            assert!(target_may_log(kept), "{kept}");
        }
    }
}
