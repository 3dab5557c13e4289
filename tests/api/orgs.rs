use crate::gateway::{assert_problem, TestGateway};
use reqwest::Method;
use serde_json::{json, Value};

#[test]
fn create_returns_metadata_and_placement() {
    let gw = TestGateway::start();
    let r = gw.create_org("  Acme Corp ", "Admin@Acme.COM", "password123");
    assert_eq!(r.status(), 201);
    assert!(r.headers().contains_key("x-request-id"));
    let b: Value = r.json().unwrap();
    assert_eq!(b["organization_name"], "Acme Corp");
    assert_eq!(b["collection_name"], "org_acme_corp");
    assert_eq!(b["admin_email"], "admin@acme.com");
    assert!(b["organization_id"].as_str().unwrap().len() >= 32);
    assert!(b["created_at"].is_string());
    assert_eq!(b["placement"]["shard"], crate::gateway::default_shard());
    let database = b["placement"]["database"].as_str().unwrap();
    assert!(
        database == "db_1" || crate::gateway::on_mongodb(),
        "{database}"
    );
    assert!(database.ends_with("_1"), "{database}");
    assert_eq!(b["placement"]["collection"], "org_acme_corp");
    assert_eq!(b["placement"]["state"], "active");
}

#[test]
fn get_is_public_but_admin_email_only_for_own_admins() {
    let gw = TestGateway::start();
    let token_a = gw.org_with_token("Org A", "a@example.com");
    let token_b = gw.org_with_token("Org B", "b@example.com");
    let get = |token: Option<&str>| {
        let mut r = gw.req(Method::GET, "/org/get?organization_name=org%20a");
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        r.send().unwrap()
    };
    let public: Value = get(None).json().unwrap();
    assert_eq!(public["organization_name"], "Org A");
    assert_eq!(public["collection_name"], "org_org_a");
    assert!(public.get("admin_email").is_none());
    assert!(public.get("placement").is_none());
    let own: Value = get(Some(&token_a)).json().unwrap();
    assert_eq!(own["admin_email"], "a@example.com");
    assert_eq!(own["placement"]["collection"], "org_org_a");
    let other: Value = get(Some(&token_b)).json().unwrap();
    assert!(other.get("admin_email").is_none());
}

#[test]
fn get_unknown_is_404_and_missing_param_is_400() {
    let gw = TestGateway::start();
    let r = gw
        .req(Method::GET, "/org/get?organization_name=nobody")
        .send()
        .unwrap();
    assert_problem(r, 404, "organization_not_found");
    let r = gw.req(Method::GET, "/org/get").send().unwrap();
    assert_problem(r, 400, "validation_failed");
}

#[test]
fn duplicate_names_emails_and_slugs_conflict() {
    let gw = TestGateway::start();
    assert_eq!(
        gw.create_org("Acme Corp", "one@example.com", "password123")
            .status(),
        201
    );
    let r = gw.create_org("ACME   corp", "two@example.com", "password123");
    assert_problem(r, 409, "organization_exists");
    let r = gw.create_org("Acme-Corp", "three@example.com", "password123");
    assert_problem(r, 409, "organization_exists");
    let r = gw.create_org("Other", "ONE@example.com", "password123");
    assert_problem(r, 409, "email_taken");
    // nothing was half-created: the loser's name and email stay free
    assert_eq!(
        gw.create_org("Other", "other@example.com", "password123")
            .status(),
        201
    );
}

#[test]
fn update_email_and_password() {
    let gw = TestGateway::start();
    let token = gw.org_with_token("Emails", "old@example.com");
    let r = gw
        .req(Method::PUT, "/org/update")
        .bearer_auth(&token)
        .json(&json!({"organization_name": "Emails", "email": "New@Example.com"}))
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    let b: Value = r.json().unwrap();
    assert_eq!(b["admin_email"], "new@example.com");
    assert_eq!(gw.login("old@example.com", "password123").status(), 401);
    assert_eq!(gw.login("new@example.com", "password123").status(), 200);

    // a password change revokes existing tokens
    let r = gw
        .req(Method::PUT, "/org/update")
        .bearer_auth(&token)
        .json(&json!({"organization_name": "Emails", "password": "another-secret"}))
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = gw
        .req(Method::GET, "/org/get?organization_name=Emails")
        .bearer_auth(&token)
        .send()
        .unwrap();
    assert_problem(r, 401, "unauthorized");
    assert_eq!(gw.login("new@example.com", "password123").status(), 401);
    assert_eq!(gw.login("new@example.com", "another-secret").status(), 200);
}

#[test]
fn rename_moves_the_name_and_collection() {
    let gw = TestGateway::start();
    let token = gw.org_with_token("Before", "rename@example.com");
    let r = gw
        .req(Method::PUT, "/org/update")
        .bearer_auth(&token)
        .json(&json!({"organization_name": "before", "new_organization_name": "After Name"}))
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    let b: Value = r.json().unwrap();
    assert_eq!(b["organization_name"], "After Name");
    assert_eq!(b["collection_name"], "org_after_name");
    assert_eq!(b["placement"]["collection"], "org_after_name");
    assert_eq!(b["placement"]["epoch"], 2);
    let r = gw
        .req(Method::GET, "/org/get?organization_name=Before")
        .send()
        .unwrap();
    assert_problem(r, 404, "organization_not_found");
    let r = gw
        .req(Method::GET, "/org/get?organization_name=after%20name")
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    // the token still works after a rename (same org id)
    let r = gw
        .req(Method::GET, "/org/get?organization_name=After%20Name")
        .bearer_auth(&token)
        .send()
        .unwrap();
    assert_eq!(
        r.json::<Value>().unwrap()["admin_email"],
        "rename@example.com"
    );
    // the old name is free again
    assert_eq!(
        gw.create_org("Before", "new-owner@example.com", "password123")
            .status(),
        201
    );
}

#[test]
fn rename_to_a_taken_name_conflicts() {
    let gw = TestGateway::start();
    let token = gw.org_with_token("First", "first@example.com");
    gw.org_with_token("Second", "second@example.com");
    let r = gw
        .req(Method::PUT, "/org/update")
        .bearer_auth(&token)
        .json(&json!({"organization_name": "First", "new_organization_name": "SECOND"}))
        .send()
        .unwrap();
    assert_problem(r, 409, "organization_exists");
    let r = gw
        .req(Method::PUT, "/org/update")
        .bearer_auth(&token)
        .json(&json!({"organization_name": "First", "email": "second@example.com"}))
        .send()
        .unwrap();
    assert_problem(r, 409, "email_taken");
    // still intact
    assert_eq!(
        gw.req(Method::GET, "/org/get?organization_name=First")
            .send()
            .unwrap()
            .status(),
        200
    );
}

#[test]
fn delete_removes_everything_and_frees_the_name() {
    let gw = TestGateway::start();
    let token = gw.org_with_token("Doomed", "doomed@example.com");
    let r = gw
        .req(Method::DELETE, "/org/delete?organization_name=Doomed")
        .bearer_auth(&token)
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().unwrap()["deleted"], true);
    let r = gw
        .req(Method::GET, "/org/get?organization_name=Doomed")
        .send()
        .unwrap();
    assert_problem(r, 404, "organization_not_found");
    // the token died with the org
    let r = gw
        .req(Method::DELETE, "/org/delete?organization_name=Doomed")
        .bearer_auth(&token)
        .send()
        .unwrap();
    assert_problem(r, 401, "unauthorized");
    assert_eq!(gw.login("doomed@example.com", "password123").status(), 401);
    // name and email are free again
    assert_eq!(
        gw.create_org("Doomed", "doomed@example.com", "password123")
            .status(),
        201
    );
}

#[test]
fn tokens_of_another_org_are_forbidden() {
    let gw = TestGateway::start();
    let token_a = gw.org_with_token("Tenant A", "ta@example.com");
    gw.org_with_token("Tenant B", "tb@example.com");
    let r = gw
        .req(Method::PUT, "/org/update")
        .bearer_auth(&token_a)
        .json(&json!({"organization_name": "Tenant B", "new_organization_name": "Hijacked"}))
        .send()
        .unwrap();
    assert_problem(r, 403, "forbidden");
    let r = gw
        .req(Method::DELETE, "/org/delete?organization_name=Tenant%20B")
        .bearer_auth(&token_a)
        .send()
        .unwrap();
    assert_problem(r, 403, "forbidden");
    let r = gw
        .req(Method::PUT, "/org/update")
        .bearer_auth(&token_a)
        .json(&json!({"organization_name": "Nobody", "email": "x@example.com"}))
        .send()
        .unwrap();
    assert_problem(r, 404, "organization_not_found");
    // B is untouched
    let b: Value = gw
        .req(Method::GET, "/org/get?organization_name=Tenant%20B")
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(b["organization_name"], "Tenant B");
}

#[test]
fn update_and_delete_need_a_token() {
    let gw = TestGateway::start();
    gw.org_with_token("Locked", "locked@example.com");
    let r = gw
        .req(Method::PUT, "/org/update")
        .json(&json!({"organization_name": "Locked", "email": "x@example.com"}))
        .send()
        .unwrap();
    assert_problem(r, 401, "unauthorized");
    let r = gw
        .req(Method::DELETE, "/org/delete?organization_name=Locked")
        .bearer_auth("not.a.token")
        .send()
        .unwrap();
    assert_problem(r, 401, "unauthorized");
}
