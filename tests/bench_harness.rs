//! `org-gateway bench` against the real gateway binary: short `churn` and `original` runs must
//! exercise every operation, see no errors and clean up after themselves. No latency is
//! asserted.

use serde_json::Value;
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_org-gateway");

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A gateway process with raised rate limits; killed on drop.
struct Gateway {
    child: Child,
    base: String,
    dir: tempfile::TempDir,
}

impl Gateway {
    fn start() -> Self {
        Self::start_with(&[
            (
                "ORG_GATEWAY_LIMITS__CREATES_PER_MINUTE_PER_ADDRESS",
                "1000000",
            ),
            (
                "ORG_GATEWAY_LIMITS__PUBLIC_READS_PER_MINUTE_PER_ADDRESS",
                "1000000",
            ),
        ])
    }

    /// A gateway with raised per-organization limits and these settings.
    fn start_with(env: &[(&str, &str)]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        // The kernel may hand the same free port out twice in a row.
        let ops_port = std::iter::repeat_with(free_port)
            .find(|p| *p != port)
            .unwrap();
        let log = std::fs::File::create(dir.path().join("gateway.log")).unwrap();
        let child = Command::new(BIN)
            .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
            .args(["--ops-listen", &format!("127.0.0.1:{ops_port}")])
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .env("ORG_GATEWAY_LIMITS__REQUESTS_PER_MINUTE", "1000000")
            .env("ORG_GATEWAY_LIMITS__REQUESTS_PER_HOUR", "100000000")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("spawn gateway");
        let gw = Gateway {
            child,
            base: format!("http://127.0.0.1:{port}"),
            dir,
        };
        gw.wait_healthy();
        gw
    }

    fn wait_healthy(&self) {
        let client = reqwest::blocking::Client::new();
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(30) {
            let up = client
                .get(format!("{}/healthz", self.base))
                .timeout(Duration::from_millis(500))
                .send()
                .is_ok_and(|r| r.status() == 200);
            if up {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("gateway not healthy:\n{}", self.log());
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("gateway.log")).unwrap_or_default()
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Gateway {
    /// Runs `org-gateway bench` against this gateway with `args`; returns its JSON report and
    /// its standard output, failing the test (with every log) if the run failed.
    fn bench(&self, args: &[&str]) -> (Value, String) {
        let report_path = self.dir.path().join("report.json");
        let out = Command::new(BIN)
            .args(["bench", "--base-url", &self.base])
            .args(args)
            .arg("--json")
            .arg(&report_path)
            .output()
            .expect("run bench");
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success(),
            "bench failed\nstdout:\n{stdout}\nstderr:\n{stderr}\ngateway log:\n{}",
            self.log()
        );
        let report = serde_json::from_str(&std::fs::read_to_string(&report_path).unwrap()).unwrap();
        (report, stdout)
    }

    /// The status of a public `GET /org/get` of `name`.
    fn get_status(&self, name: &str) -> u16 {
        reqwest::blocking::Client::new()
            .get(format!("{}/org/get", self.base))
            .query(&[("organization_name", name)])
            .send()
            .unwrap()
            .status()
            .as_u16()
    }
}

/// The operations of a report, in report order.
fn op_names(report: &Value) -> Vec<&str> {
    report["operations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["op"].as_str().unwrap())
        .collect()
}

/// Every operation ran at least once and every request succeeded.
fn assert_every_op_succeeded(report: &Value) {
    for op in report["operations"].as_array().unwrap() {
        assert!(op["count"].as_u64().unwrap() > 0, "{op:#}");
        assert_eq!(op["errors"], 0, "{op:#}");
        assert_eq!(op["ok"], op["count"], "{op:#}");
    }
}

#[test]
fn churn_scenario_exercises_every_operation_without_errors() {
    let gw = Gateway::start();
    let (report, stdout) = gw.bench(&[
        "--users",
        "8",
        "--requests",
        "400",
        "--warmup",
        "0s",
        "--orgs",
        "4",
        "--scenario",
        "churn",
        "--timeout",
        "30s",
    ]);
    assert!(stdout.contains("overall"), "{stdout}");
    assert_eq!(report["scenario"], "churn");
    assert_eq!(report["overall"]["count"], 400, "{report:#}");
    let ops = op_names(&report);
    assert_eq!(
        ops,
        [
            "create",
            "login",
            "get",
            "update",
            "delete",
            "data_write",
            "data_read"
        ]
    );
    assert_every_op_succeeded(&report);
    for op in report["operations"].as_array().unwrap() {
        // Limits are raised: nothing may be throttled.
        assert_eq!(op["rate_limited"], 0, "{op:#}");
        for key in ["p50", "p95", "p99", "p999", "max"] {
            assert!(op["latency_ms"][key].is_number(), "{op:#}");
        }
    }
    assert!(!report["targets"].as_array().unwrap().is_empty());

    // Every org the run created is gone.
    assert_eq!(report["cleanup"]["failed"], 0, "{report:#}");
    let first = format!("bench-{}-u0-c0", report["run_id"].as_str().unwrap());
    assert_eq!(gw.get_status(&first), 404);
}

/// `original`'s users: spawned over a ramp-up, each creating and logging into its own
/// organization, then weighted tasks with think time; the report splits ramp-up and steady
/// state and every organization is deleted afterwards.
#[test]
fn original_scenario_runs_users_with_think_time_and_reports_the_ramp_up_apart() {
    let gw = Gateway::start();
    let (report, stdout) = gw.bench(&[
        "--scenario",
        "original",
        "--users",
        "10",
        "--spawn-rate",
        "10",
        "--think-time",
        "10ms..40ms",
        "--duration",
        "4s",
        "--timeout",
        "30s",
    ]);
    assert!(stdout.contains("ramp_up"), "{stdout}");
    assert_eq!(report["scenario"], "original");
    assert_eq!(report["spawn_rate"], 10.0);
    assert_eq!(report["warmup_s"], 0.0);
    // 10 users over a 25 ms mean think time.
    assert_eq!(report["offered_rps"], 400.0);
    let ops = op_names(&report);
    assert_eq!(
        ops,
        [
            "create",
            "login",
            "get",
            "update",
            "data_write",
            "data_query"
        ]
    );
    assert_every_op_succeeded(&report);
    // Every user creates exactly one organization.
    assert_eq!(report["operations"][0]["count"], 10, "{report:#}");
    let phases = report["phases"].as_array().unwrap();
    assert_eq!(phases.len(), 2);
    assert_eq!(phases[0]["phase"], "ramp_up");
    assert_eq!(phases[1]["phase"], "steady");
    // The last of 10 users starts 0.9 s in.
    let ramp = phases[0]["seconds"].as_f64().unwrap();
    assert!((0.85..0.95).contains(&ramp), "{ramp}");
    let (a, b) = (
        phases[0]["overall"]["count"].as_u64().unwrap(),
        phases[1]["overall"]["count"].as_u64().unwrap(),
    );
    assert!(a > 0 && b > 0);
    assert_eq!(a + b, report["overall"]["count"].as_u64().unwrap());
    assert_eq!(report["cleanup"]["deleted"], 10, "{report:#}");
    assert_eq!(report["cleanup"]["failed"], 0, "{report:#}");
    let first = format!("bench-{}-u0", report["run_id"].as_str().unwrap());
    assert_eq!(gw.get_status(&first), 404);
}

/// `create-flood`: creates arrive each from its own address (forwarded by a trusted proxy, so
/// the per-address create limit, kept low here, never applies to them), with logins of the
/// fixture admins among them; only the flood's login target is checked.
#[test]
fn create_flood_sends_creates_from_many_addresses_and_logins_among_them() {
    let gw = Gateway::start_with(&[
        ("ORG_GATEWAY_LIMITS__CREATES_PER_MINUTE_PER_ADDRESS", "5"),
        ("ORG_GATEWAY_LIMITS__TRUSTED_PROXIES", "[\"127.0.0.1/32\"]"),
    ]);
    let (report, _) = gw.bench(&[
        "--scenario",
        "create-flood",
        "--mode",
        "open",
        "--rate",
        "20",
        "--users",
        "10",
        "--orgs",
        "3",
        "--warmup",
        "0s",
        "--duration",
        "5s",
        "--timeout",
        "30s",
    ]);
    assert_eq!(report["scenario"], "create-flood");
    assert_eq!(op_names(&report), ["create", "login"]);
    assert_every_op_succeeded(&report);
    // Far more creates than 127.0.0.1 itself may send in a minute (5, 3 of them the fixtures').
    let creates = report["operations"][0]["count"].as_u64().unwrap();
    assert!(creates > 20, "{report:#}");
    assert_eq!(report["overall"]["rate_limited"], 0, "{report:#}");
    let targets = report["targets"].as_array().unwrap();
    assert_eq!(targets.len(), 1, "{targets:#?}");
    assert_eq!(targets[0]["set"], "flood");
    assert_eq!(targets[0]["op"], "login");
    assert_eq!(report["cleanup"]["failed"], 0, "{report:#}");
}
