//! The operator assets under `grafana/` against the gateway they watch:
//!
//! - the alert rules pass `promtool check rules`, their unit tests pass `promtool test rules`,
//!   every alert has a unit test, and `prometheus.yml` passes `promtool check config`;
//! - every PromQL expression in the dashboards and the rules parses, and names only metrics
//!   that `src/telemetry/metrics.rs` declares;
//! - a live gateway's `GET /metrics` passes `promtool check metrics` without a complaint.
//!
//! Without `promtool` the promtool steps print a notice and are skipped, unless
//! `REQUIRE_FULL_SUITE=1` (the full-suite flag) is set: then they fail.

use serde_json::Value;
use std::collections::BTreeSet;
use std::fs;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const RULES: &str = "grafana/rules/org-gateway-alerts.yml";
const RULE_TESTS: &str = "grafana/rules/org-gateway-alerts.test.yml";
const PROMETHEUS_CONFIG: &str = "grafana/prometheus.yml";
const DASHBOARDS: &str = "grafana/dashboards";
const METRICS_SOURCE: &str = "src/telemetry/metrics.rs";

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn read(rel: &str) -> String {
    let path = repo().join(rel);
    fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

// ------------------------------------------------------------------------------------------
// promtool

/// Whether promtool can run; without it, fails under the full-suite flag, else prints a notice.
fn promtool_available(step: &str) -> bool {
    let ok = Command::new("promtool")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if ok {
        return true;
    }
    if std::env::var("REQUIRE_FULL_SUITE").as_deref() == Ok("1") {
        panic!("promtool is not installed but REQUIRE_FULL_SUITE=1 requires it ({step})");
    }
    eprintln!("notice: promtool not found on PATH; skipping {step}");
    false
}

fn promtool(args: &[&str], stdin: Option<&[u8]>) -> Output {
    let mut child = Command::new("promtool")
        .args(args)
        .current_dir(repo())
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn promtool");
    if let Some(input) = stdin {
        let mut pipe = child.stdin.take().expect("promtool stdin");
        pipe.write_all(input).expect("write to promtool");
        // dropping the pipe closes it
    }
    child.wait_with_output().expect("wait for promtool")
}

fn assert_promtool_ok(args: &[&str], out: &Output) {
    assert!(
        out.status.success(),
        "promtool {} failed ({}):\n{}{}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
}

fn run_promtool_ok(args: &[&str]) {
    let out = promtool(args, None);
    assert_promtool_ok(args, &out);
}

// ------------------------------------------------------------------------------------------
// declared metrics

/// Metric families the gateway declares: every `"org_gateway_..."` literal in metrics.rs,
/// and whether it is a histogram (its literal is the name given to `HistogramOpts::new`).
fn declared_metrics() -> (BTreeSet<String>, BTreeSet<String>) {
    let src = read(METRICS_SOURCE);
    let mut names = BTreeSet::new();
    let mut histograms = BTreeSet::new();
    let mut rest = 0;
    while let Some(found) = src[rest..].find("\"org_gateway_") {
        let start = rest + found + 1;
        let len = src[start..].find('"').expect("unterminated string literal");
        let name = &src[start..start + len];
        rest = start + len + 1;
        if !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b':')
        {
            continue;
        }
        names.insert(name.to_owned());
        if src[..start - 1].trim_end().ends_with("HistogramOpts::new(") {
            histograms.insert(name.to_owned());
        }
    }
    assert!(
        names.len() >= 10,
        "expected the gateway's metric names in {METRICS_SOURCE}, found {names:?}"
    );
    assert!(
        histograms.contains("org_gateway_http_request_duration_seconds"),
        "histogram detection in {METRICS_SOURCE} found only {histograms:?}"
    );
    (names, histograms)
}

/// Whether `name` is a series the gateway exports: a declared family, or a histogram's
/// `_bucket`, `_sum` or `_count` series.
fn is_declared(name: &str, names: &BTreeSet<String>, histograms: &BTreeSet<String>) -> bool {
    names.contains(name)
        || ["_bucket", "_sum", "_count"].iter().any(|suffix| {
            name.strip_suffix(suffix)
                .is_some_and(|base| histograms.contains(base))
        })
}

// ------------------------------------------------------------------------------------------
// PromQL

const AGGREGATIONS: &[&str] = &[
    "sum",
    "avg",
    "min",
    "max",
    "count",
    "group",
    "stddev",
    "stdvar",
    "topk",
    "bottomk",
    "quantile",
    "count_values",
    "limitk",
    "limit_ratio",
];
const LIST_KEYWORDS: &[&str] = &[
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
];
const KEYWORDS: &[&str] = &[
    "and", "or", "unless", "bool", "offset", "atan2", "inf", "nan",
];

/// The metric names a PromQL expression selects: identifiers outside strings, label
/// matchers, ranges and grouping lists that are neither functions, aggregations nor keywords.
fn metric_names(expr: &str) -> Vec<String> {
    let b = expr.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    let mut braces = 0usize;
    let next_non_space = |mut j: usize| {
        while j < b.len() && b[j].is_ascii_whitespace() {
            j += 1;
        }
        j
    };
    let skip_balanced = |j: usize, open: u8, close: u8| {
        let mut depth = 0;
        let mut k = j;
        while k < b.len() {
            if b[k] == open {
                depth += 1;
            } else if b[k] == close {
                depth -= 1;
                if depth == 0 {
                    return k + 1;
                }
            }
            k += 1;
        }
        b.len()
    };
    while i < b.len() {
        let c = b[i];
        match c {
            b'"' | b'\'' | b'`' => {
                i += 1;
                while i < b.len() && b[i] != c {
                    if b[i] == b'\\' && c != b'`' {
                        i += 1;
                    }
                    i += 1;
                }
                i += 1;
            }
            b'#' => {
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
            }
            b'{' => {
                braces += 1;
                i += 1;
            }
            b'}' => {
                braces = braces.saturating_sub(1);
                i += 1;
            }
            b'[' => i = skip_balanced(i, b'[', b']'),
            b'0'..=b'9' | b'.' => {
                while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'.' || b[i] == b'_')
                {
                    i += 1;
                }
            }
            c if c.is_ascii_alphabetic() || c == b'_' || c == b':' => {
                let start = i;
                while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_' || b[i] == b':')
                {
                    i += 1;
                }
                let ident = &expr[start..i];
                let lower = ident.to_ascii_lowercase();
                let next = next_non_space(i);
                if braces > 0 {
                    // a label name inside a matcher
                } else if LIST_KEYWORDS.contains(&lower.as_str()) {
                    if next < b.len() && b[next] == b'(' {
                        i = skip_balanced(next, b'(', b')');
                    }
                } else if AGGREGATIONS.contains(&lower.as_str())
                    || KEYWORDS.contains(&lower.as_str())
                    || (next < b.len() && b[next] == b'(')
                {
                    // an aggregation, a keyword or a function call
                } else {
                    out.push(ident.to_owned());
                }
            }
            _ => i += 1,
        }
    }
    out
}

/// Replaces Grafana's template variables so that promtool can parse the query: interval
/// variables become `5m`, every other variable (used in label matchers) the regex `.*`.
fn substitute_grafana_variables(expr: &str) -> String {
    let mut out = String::with_capacity(expr.len());
    let mut rest = expr;
    while let Some(pos) = rest.find('$') {
        out.push_str(&rest[..pos]);
        let after = &rest[pos + 1..];
        let (name, consumed) = if let Some(inner) = after.strip_prefix('{') {
            let end = inner.find('}').expect("unterminated ${...} variable");
            let name = inner[..end].split(':').next().unwrap_or("");
            (name, end + 2)
        } else {
            let end = after
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(after.len());
            (&after[..end], end)
        };
        assert!(!name.is_empty(), "stray `$` in query: {expr}");
        let value = match name {
            "__rate_interval" | "__interval" | "__range" => "5m",
            "__interval_ms" | "__range_ms" => "300000",
            "__range_s" => "300",
            _ => ".*",
        };
        out.push_str(value);
        rest = &after[consumed..];
    }
    out.push_str(rest);
    out
}

// ------------------------------------------------------------------------------------------
// where the expressions live

/// One PromQL expression and where it came from, for error messages.
struct Query {
    origin: String,
    expr: String,
}

/// The `expr` of every rule in a rules file. A line-based reader: enough for the block and
/// plain scalars the rules file uses, and checked against the number of rules.
fn rule_exprs(rel: &str) -> Vec<Query> {
    let text = read(rel);
    let lines: Vec<&str> = text.lines().collect();
    let mut out = Vec::new();
    let mut rule_name = String::from("?");
    let mut rules = 0;
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i];
        let trimmed = line.trim_start();
        let indent = line.len() - trimmed.len();
        for key in ["- alert:", "- record:"] {
            if let Some(name) = trimmed.strip_prefix(key) {
                rules += 1;
                rule_name = name.trim().to_owned();
            }
        }
        let after_key = trimmed
            .strip_prefix("expr:")
            .or_else(|| trimmed.strip_prefix("- expr:"));
        if let Some(value) = after_key {
            let value = value.trim();
            let expr = if value.starts_with('|') || value.starts_with('>') {
                let mut body = Vec::new();
                while i + 1 < lines.len() {
                    let next = lines[i + 1];
                    let next_indent = next.len() - next.trim_start().len();
                    if !next.trim().is_empty() && next_indent <= indent {
                        break;
                    }
                    body.push(next.trim());
                    i += 1;
                }
                body.join("\n")
            } else if (value.starts_with('\'') && value.ends_with('\''))
                || (value.starts_with('"') && value.ends_with('"'))
            {
                assert!(
                    !value.contains('\\') && !value[1..value.len() - 1].contains(['\'', '"']),
                    "{rel}: quote {rule_name}'s expr with a block scalar (`expr: |`)"
                );
                value[1..value.len() - 1].to_owned()
            } else {
                value.to_owned()
            };
            out.push(Query {
                origin: format!("{rel}: rule {rule_name}"),
                expr,
            });
        }
        i += 1;
    }
    assert_eq!(
        out.len(),
        rules,
        "{rel}: found {rules} rules but {} expressions",
        out.len()
    );
    out
}

fn dashboard_files() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = fs::read_dir(repo().join(DASHBOARDS))
        .expect("read grafana/dashboards")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    let names: Vec<String> = files
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    for wanted in [
        "overview.json",
        "capacity.json",
        "shards.json",
        "limits.json",
    ] {
        assert!(
            names.iter().any(|n| n == wanted),
            "missing dashboard {wanted}"
        );
    }
    files
}

fn load_dashboard(path: &Path) -> Value {
    let text = fs::read_to_string(path).expect("read dashboard");
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: invalid JSON: {e}", path.display()))
}

/// Every `targets[].expr` of every panel, through rows and nested panels.
fn collect_panel_exprs(panels: &Value, file: &str, out: &mut Vec<Query>) {
    for panel in panels.as_array().into_iter().flatten() {
        let title = panel["title"].as_str().unwrap_or("?");
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"].as_str().unwrap_or_else(|| {
                panic!("{file}: panel {title:?} has a target without a PromQL expr")
            });
            assert!(
                !expr.trim().is_empty(),
                "{file}: panel {title:?} has an empty expr"
            );
            out.push(Query {
                origin: format!("{file}: panel {title:?} target {}", target["refId"]),
                expr: expr.to_owned(),
            });
        }
        collect_panel_exprs(&panel["panels"], file, out);
    }
}

/// Every datasource reference in a dashboard must go through the `DS_PROMETHEUS` variable.
fn check_datasources(value: &Value, file: &str) {
    match value {
        Value::Object(map) => {
            if let Some(ds) = map.get("datasource") {
                let uid = ds["uid"].as_str().unwrap_or("");
                let builtin = ds["type"] == "grafana" || ds["type"] == "datasource";
                assert!(
                    builtin || uid == "${DS_PROMETHEUS}",
                    "{file}: datasource {ds} does not use ${{DS_PROMETHEUS}}"
                );
            }
            map.values().for_each(|v| check_datasources(v, file));
        }
        Value::Array(items) => items.iter().for_each(|v| check_datasources(v, file)),
        _ => {}
    }
}

// ------------------------------------------------------------------------------------------
// a: rules

#[test]
fn alert_rules_pass_promtool_and_every_alert_has_a_unit_test() {
    // Every alert name appears in the unit tests (which must prove it fires and stays quiet).
    let rules = read(RULES);
    let tests = read(RULE_TESTS);
    let alerts: BTreeSet<&str> = rules
        .lines()
        .filter_map(|l| l.trim_start().strip_prefix("- alert:"))
        .map(str::trim)
        .collect();
    assert!(alerts.len() >= 6, "too few alerts in {RULES}: {alerts:?}");
    for alert in &alerts {
        let tested = tests
            .lines()
            .filter(|l| l.trim_start().strip_prefix("alertname:").map(str::trim) == Some(alert))
            .count();
        assert!(
            tested >= 2,
            "{alert} needs a firing and a quiet case in {RULE_TESTS}, found {tested} checks"
        );
    }
    for severity in ["severity: warning", "severity: critical"] {
        assert!(
            rules.contains(severity),
            "{RULES} has no `{severity}` alert"
        );
    }

    if !promtool_available("promtool check/test rules") {
        return;
    }
    run_promtool_ok(&["check", "rules", RULES]);
    run_promtool_ok(&["test", "rules", RULE_TESTS]);
    run_promtool_ok(&["check", "config", PROMETHEUS_CONFIG]);
}

// ------------------------------------------------------------------------------------------
// b: every query parses and names declared metrics

#[test]
fn dashboard_and_rule_queries_parse_and_use_declared_metrics() {
    let (names, histograms) = declared_metrics();

    let mut queries = rule_exprs(RULES);
    for path in dashboard_files() {
        let file = format!(
            "{DASHBOARDS}/{}",
            path.file_name().unwrap().to_string_lossy()
        );
        let dashboard = load_dashboard(&path);
        check_datasources(&dashboard, &file);
        let ds_var = dashboard["templating"]["list"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|v| v["name"] == "DS_PROMETHEUS")
            .unwrap_or_else(|| panic!("{file}: no DS_PROMETHEUS variable"));
        assert_eq!(ds_var["type"], "datasource", "{file}: DS_PROMETHEUS type");
        assert_eq!(ds_var["query"], "prometheus", "{file}: DS_PROMETHEUS query");
        assert_eq!(
            ds_var["current"]["value"], "prometheus",
            "{file}: DS_PROMETHEUS should default to uid `prometheus`"
        );
        let before = queries.len();
        collect_panel_exprs(&dashboard["panels"], &file, &mut queries);
        assert!(queries.len() > before, "{file}: no queries");
    }

    // Every selected metric is one the gateway exports.
    let mut undeclared = Vec::new();
    let mut used = BTreeSet::new();
    for q in &queries {
        let selected = metric_names(&substitute_grafana_variables(&q.expr));
        if selected.is_empty() {
            undeclared.push(format!("{}: selects no metric: {}", q.origin, q.expr));
        }
        for name in selected {
            if is_declared(&name, &names, &histograms) {
                used.insert(name);
            } else {
                undeclared.push(format!("{}: unknown metric {name}", q.origin));
            }
        }
    }
    assert!(
        undeclared.is_empty(),
        "queries name metrics that {METRICS_SOURCE} does not declare:\n{}",
        undeclared.join("\n")
    );
    // Sanity check of the extractor itself.
    assert!(used.contains("org_gateway_http_request_duration_seconds_bucket"));
    assert!(used.contains("org_gateway_database_collections_ratio"));

    // Every expression parses: promtool checks them as recording rules.
    if !promtool_available("parsing the dashboard and rule queries") {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("queries.yml");
    let mut yaml = String::from("groups:\n  - name: grafana-queries\n    rules:\n");
    let mut index = String::new();
    for (n, q) in queries.iter().enumerate() {
        let expr = substitute_grafana_variables(&q.expr);
        // A JSON string is a valid YAML double-quoted scalar.
        yaml.push_str(&format!(
            "      - record: query_{n}\n        expr: {}\n",
            serde_json::to_string(&expr).unwrap()
        ));
        index.push_str(&format!("query_{n} (rule {}): {}\n", n + 1, q.origin));
    }
    fs::write(&path, yaml).expect("write queries.yml");
    let path_arg = path.to_str().expect("utf-8 temp path");
    let args = ["check", "rules", path_arg];
    let out = promtool(&args, None);
    assert!(
        out.status.success(),
        "a dashboard or rule query does not parse:\n{}{}\nqueries:\n{index}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
}

#[test]
fn metric_name_extraction() {
    let names = metric_names(
        r#"histogram_quantile(0.99, sum by (route, le) (rate(a_bucket{route!~"/x|y", le="+Inf"}[5m])))
           / on (job) group_left sum without (instance) (b) > bool 0.5 or vector(1) unless c offset 1h"#,
    );
    assert_eq!(names, ["a_bucket", "b", "c"]);
    assert_eq!(
        substitute_grafana_variables(
            r#"rate(x{job=~"$job",i=~"${instance:regex}"}[$__rate_interval])"#
        ),
        r#"rate(x{job=~".*",i=~".*"}[5m])"#
    );
}

// ------------------------------------------------------------------------------------------
// c: a live scrape passes promtool's lint

/// The gateway under test; killed when dropped, also when the test panics.
struct Gateway {
    child: Child,
    dir: tempfile::TempDir,
    public: SocketAddr,
    ops: SocketAddr,
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

const OPS_TOKEN: &str = "observability-test-operator-token";

fn free_port() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .expect("bind 127.0.0.1:0")
        .local_addr()
        .expect("local addr")
}

impl Gateway {
    fn start() -> Gateway {
        let dir = tempfile::tempdir().expect("tempdir");
        let public = free_port();
        // The kernel may hand the same free port out twice in a row.
        let ops = std::iter::repeat_with(free_port)
            .find(|p| *p != public)
            .unwrap();
        let data = dir.path().join("data");
        let log = fs::File::create(dir.path().join("gateway.log")).expect("log file");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_org-gateway"));
        cmd.arg("serve")
            .arg("--listen")
            .arg(public.to_string())
            .arg("--ops-listen")
            .arg(ops.to_string())
            .arg("--data-dir")
            .arg(&data)
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone log"))
            .stderr(log);
        // A clean configuration: the test's own ORG_GATEWAY_* variables (such as the
        // full-suite flag) are not gateway settings.
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("ORG_GATEWAY_") {
                cmd.env_remove(key);
            }
        }
        cmd.env("ORG_GATEWAY_OPS__TOKEN", OPS_TOKEN);
        let child = cmd.spawn().expect("start the gateway");
        let mut gw = Gateway {
            child,
            dir,
            public,
            ops,
        };
        gw.wait_healthy();
        gw
    }

    fn log(&self) -> String {
        let mut text = String::new();
        if let Ok(mut f) = fs::File::open(self.dir.path().join("gateway.log")) {
            let _ = f.read_to_string(&mut text);
        }
        text
    }

    fn wait_healthy(&mut self) {
        let client = client();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("gateway exited early ({status}):\n{}", self.log());
            }
            let up = |addr: SocketAddr| {
                client
                    .get(format!("http://{addr}/healthz"))
                    .send()
                    .map(|r| r.status().is_success())
                    .unwrap_or(false)
            };
            if up(self.public) && up(self.ops) {
                return;
            }
            if Instant::now() > deadline {
                panic!("gateway not healthy after 30 s:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

fn client() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .expect("http client")
}

#[test]
fn live_metrics_pass_promtool_check_metrics() {
    let gw = Gateway::start();
    let http = client();
    let public = format!("http://{}", gw.public);
    let ops = format!("http://{}", gw.ops);

    let created = http
        .post(format!("{public}/org/create"))
        .json(&serde_json::json!({
            "organization_name": "Obs Test",
            "email": "obs@example.com",
            "password": "password123",
        }))
        .send()
        .expect("POST /org/create");
    assert_eq!(created.status().as_u16(), 201, "{:?}", created.text());

    let got = http
        .get(format!("{public}/org/get?organization_name=Obs%20Test"))
        .send()
        .expect("GET /org/get");
    assert_eq!(got.status().as_u16(), 200);

    let login = http
        .post(format!("{public}/admin/login"))
        .json(&serde_json::json!({"email": "obs@example.com", "password": "wrong-password"}))
        .send()
        .expect("POST /admin/login");
    assert_eq!(login.status().as_u16(), 401);

    let missing = http
        .get(format!("{public}/no/such/route"))
        .send()
        .expect("GET unknown route");
    assert_eq!(missing.status().as_u16(), 404);

    // The capacity report refreshes the per-database and per-shard gauges.
    let shards = http
        .get(format!("{ops}/ops/shards"))
        .bearer_auth(OPS_TOKEN)
        .send()
        .expect("GET /ops/shards");
    assert_eq!(shards.status().as_u16(), 200, "{:?}", shards.text());

    let scrape = http
        .get(format!("{ops}/metrics"))
        .send()
        .expect("GET /metrics");
    assert_eq!(scrape.status().as_u16(), 200);
    let content_type = scrape
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    assert!(
        content_type.starts_with("text/plain"),
        "unexpected content type {content_type:?}"
    );
    let body = scrape.text().expect("metrics body");

    // The requests above show up, labelled by route template.
    for needle in [
        r#"org_gateway_http_requests_total{method="POST",route="/org/create",status_class="2xx"} 1"#,
        r#"org_gateway_http_requests_total{method="POST",route="/admin/login",status_class="4xx"} 1"#,
        r#"org_gateway_logins_total{outcome="failure"} 1"#,
        r#"org_gateway_http_request_duration_seconds_bucket{method="GET",route="/org/get",le="+Inf"} 1"#,
        "org_gateway_shard_up{",
        "org_gateway_database_collections_ratio{",
        "org_gateway_build_info{",
    ] {
        assert!(body.contains(needle), "scrape lacks {needle}:\n{body}");
    }

    // Every exported family is declared where the tests above look for metric names.
    let (names, histograms) = declared_metrics();
    for line in body.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let family = rest.split_whitespace().next().unwrap_or("");
            assert!(
                is_declared(family, &names, &histograms),
                "/metrics exports {family}, which {METRICS_SOURCE} does not declare as a literal"
            );
        }
    }

    if !promtool_available("promtool check metrics") {
        return;
    }
    let args = ["check", "metrics"];
    let out = promtool(&args, Some(body.as_bytes()));
    assert_promtool_ok(&args, &out);
    let complaints = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        complaints.trim().is_empty(),
        "promtool check metrics complains about the gateway's metrics:\n{complaints}"
    );
}
