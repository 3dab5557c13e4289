//! Signing secrets across restarts and instances: one secret format everywhere, the
//! `keys generate` subcommand, and key rotation across a fleet on one MongoDB catalog.

use crate::gateway::{Options, TestGateway};
use crate::mongo_env;
use reqwest::Method;
use serde_json::{json, Value};

/// Runs `org-gateway keys generate`; returns its stdout.
fn keys_generate() -> String {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_org-gateway"))
        .args(["keys", "generate"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(out.stderr.is_empty(), "{out:?}");
    String::from_utf8(out.stdout).unwrap()
}

/// A secret from `keys generate`, without its newline.
fn new_secret() -> String {
    keys_generate().trim_end().to_owned()
}

/// The HTTP status of an authenticated tenant call with `token`.
fn status_with(gw: &TestGateway, token: &str) -> u16 {
    gw.req(Method::POST, "/data/count")
        .bearer_auth(token)
        .json(&json!({}))
        .send()
        .unwrap()
        .status()
        .as_u16()
}

fn login_token(gw: &TestGateway, email: &str) -> String {
    let r = gw.login(email, "password123");
    assert_eq!(r.status(), 200);
    r.json::<Value>().unwrap()["access_token"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// A short name unique to this test run (shard database prefixes must stay short).
fn unique(tag: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!("{tag}{:x}{:x}", std::process::id() % 4096, nanos % 0xffffff)
}

/// Catalog and one tenant shard on MongoDB, shared by every gateway given the same names.
fn mongo_config(uri: &str, catalog_db: &str, prefix: &str, auth: &str) -> String {
    format!(
        "{auth}\n[catalog]\nkind = \"mongodb\"\nuri = \"{uri}\"\ndatabase = \"{catalog_db}\"\n\
         [[shards]]\nid = \"mongo\"\nkind = \"mongodb\"\nuri = \"{uri}\"\ndatabase_prefix = \"{prefix}\"\n"
    )
}

fn drop_dbs(uri: &str, catalog_db: &str, prefix: &str) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(mongo_env::drop_db(uri, catalog_db));
    rt.block_on(mongo_env::drop_db(uri, &format!("{prefix}_1")));
}

#[test]
fn keys_generate_prints_a_new_64_hex_secret_each_time() {
    let (a, b) = (keys_generate(), keys_generate());
    for out in [&a, &b] {
        let line = out.strip_suffix('\n').expect("one line");
        assert_eq!(line.len(), 64, "{out:?}");
        assert!(
            line.bytes()
                .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c)),
            "{out:?}"
        );
    }
    assert_ne!(a, b);
}

#[test]
fn keys_generate_help_explains_configuration_and_rotation() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_org-gateway"))
        .args(["keys", "generate", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    for needle in ["auth.jwt_secret", "auth.jwt_kid", "auth.verification_keys"] {
        assert!(help.contains(needle), "{needle} missing from:\n{help}");
    }
}

/// The text of a generated `<data_dir>/jwt_secret`, configured as `auth.jwt_secret`, is the
/// same key: tokens issued before keep working (same data dir; a second instance on a shared
/// catalog is covered below).
#[test]
fn generated_secret_copied_into_config_keeps_tokens_valid() {
    let mut gw = TestGateway::start();
    let token = gw.org_with_token("Copied Key", "copied@example.com");
    assert_eq!(status_with(&gw, &token), 200);
    let file = gw.data_dir().join("jwt_secret");
    let text = std::fs::read_to_string(&file).unwrap();
    assert_eq!(text.len(), 64, "the file holds the 64 hex characters");
    // Remove the file so that only the configured copy can verify the token.
    std::fs::remove_file(&file).unwrap();
    gw.config_toml = format!("[auth]\njwt_secret = \"{text}\"\n{}", gw.config_toml);
    gw.restart();
    assert!(!file.exists(), "a configured secret generates no file");
    assert_eq!(status_with(&gw, &token), 200);
    let fresh = login_token(&gw, "copied@example.com");
    assert_eq!(status_with(&gw, &fresh), 200);
}

/// Two instances sharing a MongoDB catalog: the second one, on a new data dir, is configured
/// with the first one's generated secret, and each accepts the other's tokens.
#[test]
fn generated_secret_shared_with_a_second_instance_verifies_its_tokens() {
    let Some(uri) = mongo_env::uri() else {
        return;
    };
    let (db, prefix) = (unique("kcat"), unique("kd"));
    let first = TestGateway::start_with(Options {
        config: mongo_config(&uri, &db, &prefix, ""),
        ..Default::default()
    });
    let token = first.org_with_token("Shared Key", "shared@example.com");
    let text = std::fs::read_to_string(first.data_dir().join("jwt_secret")).unwrap();
    let second = TestGateway::start_with(Options {
        config: mongo_config(
            &uri,
            &db,
            &prefix,
            &format!("[auth]\njwt_secret = \"{text}\"\n"),
        ),
        ..Default::default()
    });
    assert_ne!(first.data_dir(), second.data_dir());
    assert!(!second.data_dir().join("jwt_secret").exists());
    assert_eq!(status_with(&second, &token), 200);
    let from_second = login_token(&second, "shared@example.com");
    assert_eq!(status_with(&first, &from_second), 200);
    drop(first);
    drop(second);
    drop_dbs(&uri, &db, &prefix);
}

/// Rotation across a fleet: two instances on one catalog switch to a new secret (new kid)
/// while keeping the old one for verification, then drop it.
#[test]
fn rotation_across_instances() {
    let Some(uri) = mongo_env::uri() else {
        return;
    };
    let (db, prefix) = (unique("rcat"), unique("rd"));
    let old = new_secret();
    let auth_old = format!("[auth]\njwt_secret = \"{old}\"\njwt_kid = \"k1\"\n");
    let start = |auth: &str| {
        TestGateway::start_with(Options {
            config: mongo_config(&uri, &db, &prefix, auth),
            ..Default::default()
        })
    };
    let mut fleet = [start(&auth_old), start(&auth_old)];
    let t1 = fleet[0].org_with_token("Rotating Fleet", "fleet@example.com");
    for gw in &fleet {
        assert_eq!(status_with(gw, &t1), 200);
    }

    let new = new_secret();
    assert_ne!(old, new);
    let rotating = format!(
        "[auth]\njwt_secret = \"{new}\"\njwt_kid = \"k2\"\n\
         verification_keys = [{{ kid = \"k1\", secret = \"{old}\" }}]\n"
    );
    for gw in &mut fleet {
        gw.config_toml = mongo_config(&uri, &db, &prefix, &rotating);
        gw.restart();
    }
    for gw in &fleet {
        assert_eq!(status_with(gw, &t1), 200, "old token verifies by kid k1");
    }
    let t2 = login_token(&fleet[1], "fleet@example.com");
    for gw in &fleet {
        assert_eq!(status_with(gw, &t2), 200, "new token verifies everywhere");
    }

    let rotated = format!("[auth]\njwt_secret = \"{new}\"\njwt_kid = \"k2\"\n");
    for gw in &mut fleet {
        gw.config_toml = mongo_config(&uri, &db, &prefix, &rotated);
        gw.restart();
    }
    for gw in &fleet {
        assert_eq!(status_with(gw, &t1), 401, "old key removed");
        assert_eq!(status_with(gw, &t2), 200);
    }
    drop(fleet);
    drop_dbs(&uri, &db, &prefix);
}
