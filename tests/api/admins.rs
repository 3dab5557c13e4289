//! Admin management: `POST /org/admins`, `GET /org/admins`, `DELETE /org/admins/{admin_id}`.

use crate::gateway::{assert_problem, Options, TestGateway};
use reqwest::blocking::Response;
use reqwest::Method;
use serde_json::{json, Value};

fn add(gw: &TestGateway, token: &str, email: &str, password: &str) -> Response {
    gw.req(Method::POST, "/org/admins")
        .bearer_auth(token)
        .json(&json!({"email": email, "password": password}))
        .send()
        .unwrap()
}

fn list(gw: &TestGateway, token: &str) -> Response {
    gw.req(Method::GET, "/org/admins")
        .bearer_auth(token)
        .send()
        .unwrap()
}

fn remove(gw: &TestGateway, token: &str, admin_id: &str) -> Response {
    gw.req(Method::DELETE, &format!("/org/admins/{admin_id}"))
        .bearer_auth(token)
        .send()
        .unwrap()
}

fn token_of(gw: &TestGateway, email: &str, password: &str) -> String {
    let r = gw.login(email, password);
    assert_eq!(r.status(), 200, "login {email}");
    r.json::<Value>().unwrap()["access_token"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// Adds an admin and returns its id.
fn added(gw: &TestGateway, token: &str, email: &str) -> String {
    let r = add(gw, token, email, "password123");
    assert_eq!(r.status(), 201, "add {email}");
    r.json::<Value>().unwrap()["admin_id"]
        .as_str()
        .unwrap()
        .to_owned()
}

#[test]
fn admins_are_added_listed_and_log_in_with_their_own_email() {
    let gw = TestGateway::start();
    let first = gw.org_with_token("Team Co", "first@team.example");
    let r = add(&gw, &first, "Second@Team.example", "second-pass-1");
    assert_eq!(r.status(), 201);
    let body: Value = r.json().unwrap();
    assert_eq!(body["email"], "second@team.example");
    assert!(body["admin_id"].as_str().unwrap().len() == 36, "{body}");
    assert!(body["created_at"].is_string() && body.get("password_hash").is_none());
    let second = token_of(&gw, "second@team.example", "second-pass-1");
    let r = list(&gw, &second);
    assert_eq!(r.status(), 200);
    let text = r.text().unwrap();
    assert!(
        !text.contains("argon2") && !text.contains("password"),
        "{text}"
    );
    let listed: Value = serde_json::from_str(&text).unwrap();
    let emails: Vec<&str> = listed["admins"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["email"].as_str().unwrap())
        .collect();
    assert_eq!(emails, ["first@team.example", "second@team.example"]);
    // `PUT /org/update` changes the calling admin only.
    let r = gw
        .req(Method::PUT, "/org/update")
        .bearer_auth(&second)
        .json(&json!({"organization_name": "Team Co", "email": "two@team.example", "password": "another-pass-2"}))
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.json::<Value>().unwrap()["admin_email"],
        "two@team.example"
    );
    token_of(&gw, "two@team.example", "another-pass-2");
    token_of(&gw, "first@team.example", "password123");
    assert_problem(
        gw.login("second@team.example", "second-pass-1"),
        401,
        "invalid_credentials",
    );
    // The first admin's token is untouched by the second's password change.
    assert_eq!(list(&gw, &first).status(), 200);
}

#[test]
fn bad_admin_requests_get_the_right_problem() {
    let gw = TestGateway::start();
    let a = gw.org_with_token("Alpha Team", "a@alpha.example");
    let b = gw.org_with_token("Beta Team", "b@beta.example");
    assert_problem(
        add(&gw, &a, "b@beta.example", "password123"),
        409,
        "email_taken",
    );
    assert_problem(
        add(&gw, &a, "A@alpha.example", "password123"),
        409,
        "email_taken",
    );
    assert_problem(
        add(&gw, &a, "not-an-email", "password123"),
        400,
        "validation_failed",
    );
    assert_problem(
        add(&gw, &a, "new@alpha.example", "short"),
        400,
        "validation_failed",
    );
    assert_problem(
        add(&gw, "not-a-token", "new@alpha.example", "password123"),
        401,
        "unauthorized",
    );
    let r = gw
        .req(Method::POST, "/org/admins")
        .bearer_auth(&a)
        .json(&json!({"email": "new@alpha.example"}))
        .send()
        .unwrap();
    assert_problem(r, 400, "invalid_body");
    // Another organization's admin, an unknown id, something that is no id: not found here.
    let b_id = list(&gw, &b).json::<Value>().unwrap()["admins"][0]["admin_id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_problem(remove(&gw, &a, &b_id), 404, "admin_not_found");
    assert_problem(
        remove(&gw, &a, "0190c1d2-0000-7000-8000-000000000000"),
        404,
        "admin_not_found",
    );
    assert_problem(remove(&gw, &a, "nope"), 404, "admin_not_found");
    assert_eq!(
        list(&gw, &b).json::<Value>().unwrap()["admins"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    // The last admin stays.
    let a_id = list(&gw, &a).json::<Value>().unwrap()["admins"][0]["admin_id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_problem(remove(&gw, &a, &a_id), 409, "last_admin");
    let r = gw
        .req(Method::PUT, "/org/admins")
        .bearer_auth(&a)
        .send()
        .unwrap();
    assert_eq!(r.status(), 405);
    assert_problem(list(&gw, "bad"), 401, "unauthorized");
}

#[test]
fn deleting_an_admin_revokes_its_tokens_at_once() {
    let gw = TestGateway::start();
    let first = gw.org_with_token("Revoke Co", "first@revoke.example");
    let id = added(&gw, &first, "leaver@revoke.example");
    let leaver = token_of(&gw, "leaver@revoke.example", "password123");
    assert_eq!(list(&gw, &leaver).status(), 200);
    let r = remove(&gw, &first, &id);
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.json::<Value>().unwrap(),
        json!({"deleted": true, "admin_id": id})
    );
    assert_problem(list(&gw, &leaver), 401, "unauthorized");
    assert_problem(
        gw.login("leaver@revoke.example", "password123"),
        401,
        "invalid_credentials",
    );
    assert_problem(remove(&gw, &first, &id), 404, "admin_not_found");
    // The email is free again; an admin may also remove itself (not the last).
    let again = added(&gw, &first, "leaver@revoke.example");
    let back = token_of(&gw, "leaver@revoke.example", "password123");
    assert_eq!(remove(&gw, &back, &again).status(), 200);
    assert_problem(list(&gw, &back), 401, "unauthorized");
    assert_eq!(list(&gw, &first).status(), 200);
}

#[test]
fn concurrent_adds_at_the_cap_admit_exactly_the_free_seats() {
    let gw = TestGateway::start_with(Options {
        config: "[limits]\nmax_admins_per_org = 3\n".into(),
        ..Default::default()
    });
    let token = gw.org_with_token("Cap Co", "one@cap.example");
    let statuses: Vec<u16> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..8)
            .map(|i| {
                let (gw, token) = (&gw, &token);
                s.spawn(move || {
                    let r = add(gw, token, &format!("c{i}@cap.example"), "password123");
                    let status = r.status().as_u16();
                    if status == 409 {
                        assert_problem(r, 409, "admin_limit_reached");
                    }
                    status
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(
        statuses.iter().filter(|s| **s == 201).count(),
        2,
        "{statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|s| **s == 409).count(),
        6,
        "{statuses:?}"
    );
    let admins = list(&gw, &token).json::<Value>().unwrap();
    assert_eq!(admins["admins"].as_array().unwrap().len(), 3);
    assert_problem(
        add(&gw, &token, "late@cap.example", "password123"),
        409,
        "admin_limit_reached",
    );
}

#[test]
fn two_admins_deleting_each_other_at_once_leave_one() {
    let gw = TestGateway::start();
    for round in 0..4 {
        let a_email = format!("a{round}@mutual.example");
        let a = gw.org_with_token(&format!("Mutual {round}"), &a_email);
        let b_email = format!("b{round}@mutual.example");
        let b_id = added(&gw, &a, &b_email);
        let b = token_of(&gw, &b_email, "password123");
        let a_id = list(&gw, &a).json::<Value>().unwrap()["admins"][0]["admin_id"]
            .as_str()
            .unwrap()
            .to_owned();
        let (ra, rb) = std::thread::scope(|s| {
            let x = s.spawn(|| remove(&gw, &a, &b_id).status().as_u16());
            let y = s.spawn(|| remove(&gw, &b, &a_id).status().as_u16());
            (x.join().unwrap(), y.join().unwrap())
        });
        // One wins; the other finds it is the last admin, or that its own token is gone.
        let mut outcome = [ra, rb];
        outcome.sort();
        assert!(
            outcome == [200, 401] || outcome == [200, 409],
            "round {round}: {ra} {rb}"
        );
        let survivor = if ra == 200 { &a } else { &b };
        let left = list(&gw, survivor).json::<Value>().unwrap();
        assert_eq!(left["admins"].as_array().unwrap().len(), 1, "round {round}");
    }
}
