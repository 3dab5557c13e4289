//! Every metric the gateway exports, registered in one registry. Label values come from
//! closed sets (route templates, status classes, shard ids from config), never from request
//! data, so cardinality stays bounded.

use once_cell::sync::Lazy;
use prometheus::{
    exponential_buckets, Encoder, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter,
    IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

/// The registry behind `GET /metrics`.
pub static REGISTRY: Lazy<Registry> = Lazy::new(Registry::new);

fn reg<T: prometheus::core::Collector + Clone + 'static>(m: T) -> T {
    REGISTRY
        .register(Box::new(m.clone()))
        .expect("metric registers once");
    m
}

/// Latency buckets from 100 µs to ~10 s.
fn latency_buckets() -> Vec<f64> {
    exponential_buckets(0.0001, 2.0, 18).expect("static buckets")
}

/// Requests by route template, method and status class.
pub static HTTP_REQUESTS: Lazy<IntCounterVec> = Lazy::new(|| {
    reg(IntCounterVec::new(
        Opts::new("org_gateway_http_requests_total", "HTTP requests answered"),
        &["route", "method", "status_class"],
    )
    .unwrap())
});

/// Request duration by route template.
pub static HTTP_DURATION: Lazy<HistogramVec> = Lazy::new(|| {
    reg(HistogramVec::new(
        HistogramOpts::new(
            "org_gateway_http_request_duration_seconds",
            "Time from request head to response, by route",
        )
        .buckets(latency_buckets()),
        &["route", "method"],
    )
    .unwrap())
});

/// Requests being handled now.
pub static HTTP_IN_FLIGHT: Lazy<IntGauge> = Lazy::new(|| {
    reg(IntGauge::new(
        "org_gateway_http_requests_in_flight",
        "Requests being handled",
    )
    .unwrap())
});

/// Request body bytes received.
pub static HTTP_REQUEST_BYTES: Lazy<IntCounterVec> = Lazy::new(|| {
    reg(IntCounterVec::new(
        Opts::new(
            "org_gateway_http_request_body_bytes_total",
            "Request body bytes received",
        ),
        &["route"],
    )
    .unwrap())
});

/// Response body bytes sent.
pub static HTTP_RESPONSE_BYTES: Lazy<IntCounterVec> = Lazy::new(|| {
    reg(IntCounterVec::new(
        Opts::new(
            "org_gateway_http_response_body_bytes_total",
            "Response body bytes sent",
        ),
        &["route"],
    )
    .unwrap())
});

/// JWT verification failures by reason.
pub static JWT_FAILURES: Lazy<IntCounterVec> = Lazy::new(|| {
    reg(IntCounterVec::new(
        Opts::new(
            "org_gateway_jwt_verification_failures_total",
            "Rejected bearer tokens",
        ),
        &["reason"],
    )
    .unwrap())
});

/// Logins by outcome (`success`, `failure`, `throttled`).
pub static LOGINS: Lazy<IntCounterVec> = Lazy::new(|| {
    reg(IntCounterVec::new(
        Opts::new("org_gateway_logins_total", "Admin logins by outcome"),
        &["outcome"],
    )
    .unwrap())
});

/// Failed-login counters dropped because the login throttle's table was full.
pub static LOGIN_THROTTLE_EVICTIONS: Lazy<IntCounter> = Lazy::new(|| {
    reg(IntCounter::new(
        "org_gateway_login_throttle_evictions_total",
        "Failed-login counters dropped, oldest first, because the login throttle's table was full",
    )
    .unwrap())
});

/// Per-address limiter states dropped because the limiter's table was full, by limit.
pub static ADDRESS_LIMITER_EVICTIONS: Lazy<IntCounterVec> = Lazy::new(|| {
    reg(IntCounterVec::new(
        Opts::new(
            "org_gateway_address_limiter_evictions_total",
            "Per-address limiter states dropped (closest to a full budget first) because the table was full",
        ),
        &["limit"],
    )
    .unwrap())
});

/// Audit events written, by type; and those that could not be written.
pub static AUDIT_EVENTS: Lazy<IntCounterVec> = Lazy::new(|| {
    reg(IntCounterVec::new(
        Opts::new(
            "org_gateway_audit_events_total",
            "Audit events written to the catalog, by type (outcome=\"failed\" when the write failed)",
        ),
        &["type", "outcome"],
    )
    .unwrap())
});

/// argon2 operations waiting for a permit.
pub static ARGON2_QUEUE_DEPTH: Lazy<IntGauge> = Lazy::new(|| {
    reg(IntGauge::new(
        "org_gateway_argon2_queue_depth",
        "Password hash operations waiting for a worker",
    )
    .unwrap())
});

/// Time argon2 operations wait for a permit.
pub static ARGON2_WAIT_SECONDS: Lazy<Histogram> = Lazy::new(|| {
    reg(Histogram::with_opts(
        HistogramOpts::new(
            "org_gateway_argon2_wait_seconds",
            "Time a password hash operation waited for a worker",
        )
        .buckets(latency_buckets()),
    )
    .unwrap())
});

/// Password checks answered from the verified-credential cache, without hashing.
pub static CREDENTIAL_CACHE_HITS: Lazy<IntCounter> = Lazy::new(|| {
    reg(IntCounter::new(
        "org_gateway_credential_cache_hits_total",
        "Password checks answered from recently verified credentials, without an argon2 hash",
    )
    .unwrap())
});

/// Jobs each argon2 queue lane admits now, from the measured hash time.
pub static ARGON2_LANE_BOUND: Lazy<IntGauge> = Lazy::new(|| {
    reg(IntGauge::new(
        "org_gateway_argon2_lane_bound",
        "Password hash jobs each queue lane admits, sized from the measured hash time",
    )
    .unwrap())
});

/// Tenant cache lookups by result (`hit`, `miss`).
pub static CACHE_LOOKUPS: Lazy<IntCounterVec> = Lazy::new(|| {
    reg(IntCounterVec::new(
        Opts::new(
            "org_gateway_tenant_cache_lookups_total",
            "Tenant metadata cache lookups",
        ),
        &["result"],
    )
    .unwrap())
});

/// Entries in the tenant cache.
pub static CACHE_ENTRIES: Lazy<IntGauge> = Lazy::new(|| {
    reg(IntGauge::new(
        "org_gateway_tenant_cache_entries",
        "Tenants in the metadata cache",
    )
    .unwrap())
});

/// Time to resolve a tenant's placement.
pub static PLACEMENT_RESOLVE_SECONDS: Lazy<Histogram> = Lazy::new(|| {
    reg(Histogram::with_opts(
        HistogramOpts::new(
            "org_gateway_placement_resolution_seconds",
            "Time to resolve a tenant to its placement",
        )
        .buckets(exponential_buckets(0.000001, 4.0, 12).unwrap()),
    )
    .unwrap())
});

/// Requests rejected by the per-org rate limiter, by window.
pub static RATE_LIMITED: Lazy<IntCounterVec> = Lazy::new(|| {
    reg(IntCounterVec::new(
        Opts::new(
            "org_gateway_rate_limited_requests_total",
            "Requests rejected with 429",
        ),
        &["limiter"],
    )
    .unwrap())
});

/// Checks decided by the in-memory limiter because the shared (Redis) store failed, was too
/// slow or is being left alone after a failure, by check (`rate`, `login`, `address`).
pub static RATE_LIMIT_FALLBACKS: Lazy<IntCounterVec> = Lazy::new(|| {
    reg(IntCounterVec::new(
        Opts::new(
            "org_gateway_rate_limit_fallbacks_total",
            "Limit checks decided by this instance's in-memory limiter because Redis was unavailable",
        ),
        &["check"],
    )
    .unwrap())
});

/// 1 when the rate-limit store answers (always 1 with `limits.store = "local"`).
pub static RATE_LIMIT_STORE_UP: Lazy<IntGauge> = Lazy::new(|| {
    reg(IntGauge::new(
        "org_gateway_rate_limit_store_up",
        "1 if the rate-limit store (Redis when limits.store = redis) answered its last call",
    )
    .unwrap())
});

/// Organizations over the quota alert ratio.
pub static QUOTA_ALERTS: Lazy<IntGauge> = Lazy::new(|| {
    reg(IntGauge::new(
        "org_gateway_quota_alert_organizations",
        "Organizations using more than the alert share of their storage quota",
    )
    .unwrap())
});

/// Documents sent by exports and written by imports (`/org/export`, `/org/import`).
pub static TRANSFER_DOCUMENTS: Lazy<IntCounterVec> = Lazy::new(|| {
    reg(IntCounterVec::new(
        Opts::new(
            "org_gateway_transfer_documents_total",
            "Documents read by exports and written by imports, by direction",
        ),
        &["direction"],
    )
    .unwrap())
});

/// Writes rejected for exceeding quota.
pub static QUOTA_REJECTIONS: Lazy<IntCounter> = Lazy::new(|| {
    reg(IntCounter::new(
        "org_gateway_quota_rejections_total",
        "Writes rejected with 507 quota_exceeded",
    )
    .unwrap())
});

/// Store operation duration by shard and operation.
pub static SHARD_OP_SECONDS: Lazy<HistogramVec> = Lazy::new(|| {
    reg(HistogramVec::new(
        HistogramOpts::new(
            "org_gateway_shard_operation_duration_seconds",
            "Store operation time",
        )
        .buckets(latency_buckets()),
        &["shard", "operation"],
    )
    .unwrap())
});

/// Store operation errors by shard and operation.
pub static SHARD_OP_ERRORS: Lazy<IntCounterVec> = Lazy::new(|| {
    reg(IntCounterVec::new(
        Opts::new(
            "org_gateway_shard_operation_errors_total",
            "Failed store operations",
        ),
        &["shard", "operation"],
    )
    .unwrap())
});

/// 1 when the shard answered its last health check.
pub static SHARD_UP: Lazy<IntGaugeVec> = Lazy::new(|| {
    reg(IntGaugeVec::new(
        Opts::new(
            "org_gateway_shard_up",
            "1 if the shard answered its last health check",
        ),
        &["shard"],
    )
    .unwrap())
});

/// Driver connection-pool connections per shard: `open` (established) and `in_use` (checked out).
pub static SHARD_POOL_CONNECTIONS: Lazy<IntGaugeVec> = Lazy::new(|| {
    reg(IntGaugeVec::new(
        Opts::new(
            "org_gateway_shard_pool_connections",
            "MongoDB driver pool connections per shard, open and in use",
        ),
        &["shard", "state"],
    )
    .unwrap())
});

/// Organizations in the catalog.
pub static ORGANIZATIONS: Lazy<IntGauge> = Lazy::new(|| {
    reg(IntGauge::new("org_gateway_organizations", "Organizations in the catalog").unwrap())
});

/// Tenant collections per database.
pub static DB_COLLECTIONS: Lazy<IntGaugeVec> = Lazy::new(|| {
    reg(IntGaugeVec::new(
        Opts::new(
            "org_gateway_database_collections",
            "Tenant collections in a database",
        ),
        &["shard", "database"],
    )
    .unwrap())
});

/// Maximum tenant collections per database.
pub static DB_COLLECTIONS_MAX: Lazy<IntGaugeVec> = Lazy::new(|| {
    reg(IntGaugeVec::new(
        Opts::new(
            "org_gateway_database_collections_max",
            "Configured maximum tenant collections in a database",
        ),
        &["shard", "database"],
    )
    .unwrap())
});

/// Collections over maximum, per database.
pub static DB_COLLECTIONS_RATIO: Lazy<GaugeVec> = Lazy::new(|| {
    reg(GaugeVec::new(
        Opts::new(
            "org_gateway_database_collections_ratio",
            "Tenant collections in a database over its maximum",
        ),
        &["shard", "database"],
    )
    .unwrap())
});

/// Databases per shard.
pub static SHARD_DATABASES: Lazy<IntGaugeVec> = Lazy::new(|| {
    reg(IntGaugeVec::new(
        Opts::new("org_gateway_shard_databases", "Tenant databases on a shard"),
        &["shard"],
    )
    .unwrap())
});

/// Time a fence waited for the fleet to apply a change.
pub static FENCE_SECONDS: Lazy<Histogram> = Lazy::new(|| {
    reg(Histogram::with_opts(
        HistogramOpts::new(
            "org_gateway_fence_duration_seconds",
            "Time until every live instance applied a placement change",
        )
        .buckets(latency_buckets()),
    )
    .unwrap())
});

/// Moves by state (refreshed by the move runner from the catalog).
pub static MOVES: Lazy<IntGaugeVec> = Lazy::new(|| {
    reg(IntGaugeVec::new(
        Opts::new(
            "org_gateway_moves",
            "Tenant moves recorded in the catalog, by state",
        ),
        &["state"],
    )
    .unwrap())
});

/// Moves queued by this instance.
pub static MOVES_STARTED: Lazy<IntCounter> = Lazy::new(|| {
    reg(IntCounter::new("org_gateway_moves_queued_total", "Tenant moves queued").unwrap())
});

/// Documents written to move targets (bulk copy and catch-up).
pub static MOVE_DOCUMENTS_COPIED: Lazy<IntCounter> = Lazy::new(|| {
    reg(IntCounter::new(
        "org_gateway_move_documents_copied_total",
        "Documents written to move targets (bulk copy and catch-up); rate() is the copy rate",
    )
    .unwrap())
});

/// Bytes written to move targets.
pub static MOVE_BYTES_COPIED: Lazy<IntCounter> = Lazy::new(|| {
    reg(IntCounter::new(
        "org_gateway_move_bytes_copied_total",
        "Bytes (as JSON) written to move targets",
    )
    .unwrap())
});

/// How long writes were held at successful cutovers.
pub static MOVE_WRITE_PAUSE: Lazy<Histogram> = Lazy::new(|| {
    reg(Histogram::with_opts(
        HistogramOpts::new(
            "org_gateway_move_write_pause_seconds",
            "Time a tenant's writes were held at a successful move cutover",
        )
        .buckets(vec![0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5]),
    )
    .unwrap())
});

/// Cutovers abandoned (write pause exceeded, or interrupted).
pub static MOVE_CUTOVERS_ABANDONED: Lazy<IntCounter> = Lazy::new(|| {
    reg(IntCounter::new(
        "org_gateway_move_cutovers_abandoned_total",
        "Move cutovers abandoned because the last changes did not fit the write pause",
    )
    .unwrap())
});

/// Time to build a tenant index over existing documents (embedded store).
pub static INDEX_BUILD_SECONDS: Lazy<Histogram> = Lazy::new(|| {
    reg(Histogram::with_opts(
        HistogramOpts::new(
            "org_gateway_index_build_seconds",
            "Time to build a tenant index over the collection's existing documents",
        )
        .buckets(vec![
            0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
        ]),
    )
    .unwrap())
});

/// Tenant index changes by kind: `created`, `dropped`, `failed` (a build refused).
pub static INDEX_CHANGES: Lazy<IntCounterVec> = Lazy::new(|| {
    reg(IntCounterVec::new(
        Opts::new(
            "org_gateway_index_changes_total",
            "Tenant indexes created, dropped, or whose build failed",
        ),
        &["change"],
    )
    .unwrap())
});

/// Tenant indexes being built right now (embedded store).
pub static INDEX_BUILDS_RUNNING: Lazy<IntGauge> = Lazy::new(|| {
    reg(IntGauge::new(
        "org_gateway_index_builds_running",
        "Tenant index builds in progress on this instance",
    )
    .unwrap())
});

/// Index logs merged into their indexes (embedded store).
pub static INDEX_LOG_MERGES: Lazy<IntCounter> = Lazy::new(|| {
    reg(IntCounter::new(
        "org_gateway_index_log_merges_total",
        "Tenant index logs merged into their indexes on this instance",
    )
    .unwrap())
});

/// Writes that waited for a cutover, and how long.
pub static MOVE_HELD_WRITES: Lazy<Histogram> = Lazy::new(|| {
    reg(Histogram::with_opts(
        HistogramOpts::new(
            "org_gateway_move_held_write_seconds",
            "Time a tenant write waited for a move cutover to end",
        )
        .buckets(vec![0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5]),
    )
    .unwrap())
});

/// Fences that gave up waiting.
pub static FENCE_TIMEOUTS: Lazy<IntCounter> = Lazy::new(|| {
    reg(IntCounter::new(
        "org_gateway_fence_timeouts_total",
        "Fences that timed out waiting for live instances to apply a change",
    )
    .unwrap())
});

/// Whether the catalog change feed is followed (1) or polled (0).
pub static FEED_UP: Lazy<IntGauge> = Lazy::new(|| {
    reg(IntGauge::new(
        "org_gateway_catalog_feed_up",
        "1 while the catalog change feed is followed (or, with a private catalog, not needed), 0 while it is down and the instance polls",
    )
    .unwrap())
});

/// Recovery items that failed (and were left for the next pass).
pub static RECOVERY_FAILURES: Lazy<IntCounter> = Lazy::new(|| {
    reg(IntCounter::new(
        "org_gateway_recovery_failures_total",
        "Interrupted operations whose recovery failed and will be retried",
    )
    .unwrap())
});

/// Build information (always 1).
pub static BUILD_INFO: Lazy<IntGaugeVec> = Lazy::new(|| {
    reg(IntGaugeVec::new(
        Opts::new(
            "org_gateway_build_info",
            "Build information; value is always 1",
        ),
        &["version", "revision"],
    )
    .unwrap())
});

/// Log lines dropped because the log queue was full (the writer could not keep up).
pub static LOG_LINES_DROPPED: Lazy<IntCounter> = Lazy::new(|| {
    reg(IntCounter::new(
        "org_gateway_log_lines_dropped_total",
        "Log lines dropped because the log queue was full",
    )
    .unwrap())
});

/// Touches every metric so all series families appear from the first scrape.
pub fn init() {
    Lazy::force(&HTTP_REQUESTS);
    Lazy::force(&HTTP_DURATION);
    Lazy::force(&HTTP_IN_FLIGHT);
    Lazy::force(&HTTP_REQUEST_BYTES);
    Lazy::force(&HTTP_RESPONSE_BYTES);
    Lazy::force(&JWT_FAILURES);
    Lazy::force(&LOGINS);
    Lazy::force(&LOGIN_THROTTLE_EVICTIONS);
    Lazy::force(&ADDRESS_LIMITER_EVICTIONS);
    Lazy::force(&AUDIT_EVENTS);
    Lazy::force(&ARGON2_QUEUE_DEPTH);
    Lazy::force(&ARGON2_WAIT_SECONDS);
    Lazy::force(&CREDENTIAL_CACHE_HITS);
    Lazy::force(&ARGON2_LANE_BOUND);
    Lazy::force(&CACHE_LOOKUPS);
    Lazy::force(&CACHE_ENTRIES);
    Lazy::force(&PLACEMENT_RESOLVE_SECONDS);
    Lazy::force(&RATE_LIMITED);
    RATE_LIMIT_STORE_UP.set(1);
    Lazy::force(&QUOTA_ALERTS);
    Lazy::force(&QUOTA_REJECTIONS);
    for direction in ["export", "import"] {
        TRANSFER_DOCUMENTS.with_label_values(&[direction]);
    }
    Lazy::force(&SHARD_OP_SECONDS);
    Lazy::force(&SHARD_OP_ERRORS);
    Lazy::force(&SHARD_UP);
    Lazy::force(&SHARD_POOL_CONNECTIONS);
    Lazy::force(&ORGANIZATIONS);
    Lazy::force(&DB_COLLECTIONS);
    Lazy::force(&DB_COLLECTIONS_MAX);
    Lazy::force(&DB_COLLECTIONS_RATIO);
    Lazy::force(&SHARD_DATABASES);
    Lazy::force(&FENCE_SECONDS);
    Lazy::force(&FENCE_TIMEOUTS);
    Lazy::force(&FEED_UP);
    Lazy::force(&RECOVERY_FAILURES);
    Lazy::force(&MOVES_STARTED);
    Lazy::force(&MOVE_DOCUMENTS_COPIED);
    Lazy::force(&MOVE_BYTES_COPIED);
    Lazy::force(&MOVE_WRITE_PAUSE);
    Lazy::force(&MOVE_CUTOVERS_ABANDONED);
    Lazy::force(&MOVE_HELD_WRITES);
    Lazy::force(&INDEX_BUILD_SECONDS);
    Lazy::force(&INDEX_BUILDS_RUNNING);
    Lazy::force(&INDEX_LOG_MERGES);
    for change in ["created", "dropped", "failed"] {
        INDEX_CHANGES.with_label_values(&[change]);
    }
    Lazy::force(&LOG_LINES_DROPPED);
    for state in crate::catalog::MoveState::ALL {
        MOVES.with_label_values(&[state.as_str()]);
    }
    BUILD_INFO
        .with_label_values(&[env!("CARGO_PKG_VERSION"), env!("BUILD_GIT_REV")])
        .set(1);
    for outcome in ["success", "failure", "throttled"] {
        LOGINS.with_label_values(&[outcome]);
    }
    for check in ["rate", "login"] {
        RATE_LIMIT_FALLBACKS.with_label_values(&[check]);
    }
    for result in ["hit", "miss"] {
        CACHE_LOOKUPS.with_label_values(&[result]);
    }
}

/// Renders the registry in the Prometheus text format.
pub fn render() -> Vec<u8> {
    let mut buf = Vec::new();
    TextEncoder::new()
        .encode(&REGISTRY.gather(), &mut buf)
        .expect("text encoding cannot fail");
    buf
}
