use crate::gateway::{assert_problem, Options, TestGateway};
use reqwest::Method;
use serde_json::Value;
use std::time::Duration;

#[test]
fn login_returns_a_bearer_token() {
    let gw = TestGateway::start();
    let created: Value = gw
        .create_org("Login Co", "login@example.com", "password123")
        .json()
        .unwrap();
    let r = gw.login("  LOGIN@example.com ", "password123");
    assert_eq!(r.status(), 200);
    let b: Value = r.json().unwrap();
    assert_eq!(b["token_type"], "bearer");
    assert_eq!(b["expires_in"], 3600);
    assert_eq!(b["organization_id"], created["organization_id"]);
    assert!(b["admin_id"].is_string());
    assert_eq!(b["access_token"].as_str().unwrap().split('.').count(), 3);
}

#[test]
fn every_login_failure_looks_the_same() {
    let gw = TestGateway::start();
    gw.create_org("Same Co", "same@example.com", "password123");
    let strip = |mut v: Value| {
        v.as_object_mut().unwrap().remove("request_id");
        v
    };
    let wrong_password = strip(assert_problem(
        gw.login("same@example.com", "wrong-password"),
        401,
        "invalid_credentials",
    ));
    let unknown_email = strip(assert_problem(
        gw.login("nobody@example.com", "password123"),
        401,
        "invalid_credentials",
    ));
    let bad_email = strip(assert_problem(
        gw.login("not-an-email", "password123"),
        401,
        "invalid_credentials",
    ));
    assert_eq!(wrong_password, unknown_email);
    assert_eq!(wrong_password, bad_email);
}

#[test]
fn expired_tokens_are_refused() {
    let gw = TestGateway::start_with(Options {
        config: "[auth]\ntoken_ttl_seconds = 1\nleeway_seconds = 0\n".into(),
        ..Default::default()
    });
    let token = gw.org_with_token("Short Lived", "short@example.com");
    let get = || {
        gw.req(Method::GET, "/org/get?organization_name=Short%20Lived")
            .bearer_auth(&token)
            .send()
            .unwrap()
    };
    assert_eq!(get().status(), 200);
    std::thread::sleep(Duration::from_millis(2200));
    assert_problem(get(), 401, "unauthorized");
}

#[test]
fn tokens_signed_with_another_key_are_refused() {
    let a = TestGateway::start();
    let b = TestGateway::start();
    let token_from_a = a.org_with_token("Key Test", "key@example.com");
    b.org_with_token("Key Test", "key@example.com");
    let r = b
        .req(Method::GET, "/org/get?organization_name=Key%20Test")
        .bearer_auth(&token_from_a)
        .send()
        .unwrap();
    assert_problem(r, 401, "unauthorized");
}

#[test]
fn configured_secret_must_be_long_enough() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_org-gateway"))
        .args(["serve", "--data-dir"])
        .arg(tempfile::tempdir().unwrap().path())
        .env("ORG_GATEWAY_AUTH__JWT_SECRET", "too-short")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("at least 32 characters"), "{stderr}");
    assert!(
        !stderr.contains("too-short"),
        "the secret must not be echoed"
    );
}

#[test]
fn generated_secret_is_stored_privately() {
    let gw = TestGateway::start();
    let meta = std::fs::metadata(gw.data_dir().join("jwt_secret")).unwrap();
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    assert!(gw.log_contains("generated a 256-bit signing secret"));
    let log = gw.log();
    let secret = std::fs::read_to_string(gw.data_dir().join("jwt_secret")).unwrap();
    assert!(!log.contains(secret.trim()), "secret leaked into the log");
}

#[test]
fn rotated_keys_keep_verifying_until_removed() {
    let old = "old-signing-secret-0123456789abcdef";
    let new = "new-signing-secret-0123456789abcdef";
    let mut gw = TestGateway::start_with(Options {
        config: format!("[auth]\njwt_secret = \"{old}\"\njwt_kid = \"k1\"\n"),
        ..Default::default()
    });
    let token = gw.org_with_token("Rotation", "rotation@example.com");
    let get = |gw: &TestGateway, token: &str| {
        gw.req(Method::GET, "/org/get?organization_name=Rotation")
            .bearer_auth(token)
            .send()
            .unwrap()
            .status()
            .as_u16()
    };
    // Swap only the [auth] block: the rest of the generated config (e.g. a MongoDB catalog)
    // must stay.
    let first = format!("[auth]\njwt_secret = \"{old}\"\njwt_kid = \"k1\"\n");
    let rotating = format!(
        "[auth]\njwt_secret = \"{new}\"\njwt_kid = \"k2\"\nverification_keys = [{{ kid = \"k1\", secret = \"{old}\" }}]\n"
    );
    gw.config_toml = gw.config_toml.replace(&first, &rotating);
    gw.restart();
    assert_eq!(get(&gw, &token), 200, "old token verifies by kid");
    let fresh: Value = gw
        .login("rotation@example.com", "password123")
        .json()
        .unwrap();
    let fresh = fresh["access_token"].as_str().unwrap().to_owned();
    assert_eq!(get(&gw, &fresh), 200);
    let rotated = format!("[auth]\njwt_secret = \"{new}\"\njwt_kid = \"k2\"\n");
    gw.config_toml = gw.config_toml.replace(&rotating, &rotated);
    gw.restart();
    assert_eq!(get(&gw, &token), 401, "old key removed");
    assert_eq!(get(&gw, &fresh), 200);
}

fn credential_cache_hits(gw: &TestGateway) -> u64 {
    let metrics = gw
        .client
        .get(format!("{}/metrics", gw.ops))
        .send()
        .unwrap()
        .text()
        .unwrap();
    metrics
        .lines()
        .find_map(|l| l.strip_prefix("org_gateway_credential_cache_hits_total "))
        .expect("credential cache metric")
        .parse()
        .unwrap()
}

/// The login after a create and repeated logins are answered from remembered credentials;
/// a wrong password, and the old password after a change, never are.
#[test]
fn remembered_credentials_spare_the_hash_but_not_the_check() {
    let gw = TestGateway::start();
    let created = gw.create_org("Remembered", "remembered@example.com", "password123");
    assert_eq!(created.status(), 201);
    assert_eq!(credential_cache_hits(&gw), 0);
    let r = gw.login("remembered@example.com", "password123");
    assert_eq!(r.status(), 200);
    assert_eq!(credential_cache_hits(&gw), 1);
    let token = r.json::<Value>().unwrap()["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        gw.login("remembered@example.com", "password123").status(),
        200
    );
    assert_eq!(credential_cache_hits(&gw), 2);
    assert_problem(
        gw.login("remembered@example.com", "password124"),
        401,
        "invalid_credentials",
    );
    assert_eq!(credential_cache_hits(&gw), 2);
    let changed = gw
        .req(Method::PUT, "/org/update")
        .bearer_auth(&token)
        .json(&serde_json::json!({"organization_name": "Remembered", "password": "a new password"}))
        .send()
        .unwrap();
    assert_eq!(changed.status(), 200);
    assert_problem(
        gw.login("remembered@example.com", "password123"),
        401,
        "invalid_credentials",
    );
    assert_eq!(
        gw.login("remembered@example.com", "a new password")
            .status(),
        200
    );
    assert_eq!(credential_cache_hits(&gw), 3);

    let off = TestGateway::start_with(Options {
        config: "[auth]\ncredential_cache_entries = 0\n".into(),
        ..Default::default()
    });
    off.create_org("Not Remembered", "forgotten@example.com", "password123");
    for _ in 0..2 {
        assert_eq!(
            off.login("forgotten@example.com", "password123").status(),
            200
        );
    }
    assert_eq!(credential_cache_hits(&off), 0);
}
