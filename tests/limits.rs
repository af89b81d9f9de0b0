//! Limits that stop abuse, not classrooms (issue 15 §3, §5), through the real binary:
//! a class signing in from one school address is never limited; a password spray from one
//! address is stopped by that address's failures, however it forges `X-Forwarded-For`;
//! wrong passwords hold one account from every address, and the refusal looks the same
//! whether the account exists or not; sign-ups have a budget per address, aliased ones in
//! one request included; logout needs JSON and the CSRF header, and the session cookies
//! are `SameSite=Strict`.

mod support;

use serde_json::{json, Value};
use support::portal::{code, email, Portal, PASSWORD};
use support::RunningApp;
use teachin_commands::bus::BusSettings;
use teachin_commands::{command_bus, CommandContext, PortSecrets};
use teachin_domain::actor::{Actor, Role};
use teachin_domain::ids::UserId;
use teachin_domain::user::{Language, User, UserCommand};

/// The app's lookup hash key, so students registered here are found at sign-in.
const LOOKUP_HASH_KEY: &str = "limits-test-lookup-hash-key";

const LOGIN: &str = "mutation($email: String!, $password: String!) {
    login(email: $email, password: $password) { accessToken csrfToken userId }
}";

async fn start(env: &[(&str, &str)]) -> RunningApp {
    let mut env = env.to_vec();
    env.push(("TEACHIN_LOOKUP_HASH_KEY", LOOKUP_HASH_KEY));
    RunningApp::start_with(&env).await
}

/// Registers students straight through the command bus (the same command `signUp` issues),
/// sharing one password hash: these tests are about signing in, not about hashing.
async fn enroll(app: &RunningApp, emails: &[String]) {
    let bus = command_bus(
        app.db.pool.clone(),
        PortSecrets {
            claims_hash_key: LOOKUP_HASH_KEY.as_bytes().to_vec(),
        },
        BusSettings::default(),
    );
    let password_hash = teachin_api::auth::password::hash(PASSWORD);
    for (i, address) in emails.iter().enumerate() {
        let user_id = UserId::new();
        let command = UserCommand::Register {
            user_id,
            role: Role::Student,
            first_name: format!("Student{i}"),
            last_name: "Limits".into(),
            email: address.clone(),
            password_hash: password_hash.clone(),
            preferred_language: Language::En,
            hebrew_level: None,
            interests: Vec::new(),
            registered_by: Actor::System,
        };
        bus.execute::<User>(
            &user_id.to_string(),
            command,
            &CommandContext::new(Actor::System, "tests:limits"),
        )
        .await
        .unwrap();
    }
}

/// A sign-in as it reaches the manager through the ingress, which appended `forwarded`'s
/// last entry (earlier entries are whatever the client sent).
async fn login_via(app: &RunningApp, forwarded: &str, address: &str, password: &str) -> Value {
    reqwest::Client::new()
        .post(format!("{}/graphql", app.manager))
        .header("x-forwarded-for", forwarded)
        .json(&json!({ "query": LOGIN, "variables": { "email": address, "password": password } }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

fn signed_in(r: &Value) -> bool {
    r["data"]["login"]["accessToken"].is_string()
}

fn retry_after(r: &Value) -> u64 {
    r["errors"][0]["extensions"]["retryAfter"]
        .as_u64()
        .unwrap_or_else(|| panic!("no retryAfter: {r}"))
}

#[tokio::test]
async fn a_class_signs_in_at_once_from_one_school_address() {
    let app = start(&[]).await;
    let class: Vec<String> = (0..30).map(|i| email(&format!("pupil{i}"))).collect();
    enroll(&app, &class).await;
    // Thirty students behind one school address start the lesson together.
    let answers = futures::future::join_all(class.iter().map(|address| {
        let url = format!("{}/graphql", app.manager);
        async move {
            reqwest::Client::new()
                .post(url)
                .json(&json!({ "query": LOGIN, "variables": { "email": address, "password": PASSWORD } }))
                .send()
                .await
                .unwrap()
                .json::<Value>()
                .await
                .unwrap()
        }
    }))
    .await;
    let refused: Vec<&Value> = answers.iter().filter(|r| !signed_in(r)).collect();
    assert!(
        refused.is_empty(),
        "{} refused: {:?}",
        refused.len(),
        refused.first()
    );
}

#[tokio::test]
async fn a_password_spray_is_stopped_by_its_address_failures_only() {
    let app = start(&[
        ("TEACHIN_TRUST_FORWARDED_FOR", "1"),
        ("TEACHIN_LOGIN_RATE_LIMIT", "10/10m"),
    ])
    .await;
    let teacher_desk = email("desk");
    enroll(&app, std::slice::from_ref(&teacher_desk)).await;
    let school = "203.0.113.10";
    // A morning of successful sign-ins from the school address costs it nothing.
    for _ in 0..12 {
        let r = login_via(&app, school, &teacher_desk, PASSWORD).await;
        assert!(signed_in(&r), "{r}");
    }
    // A spray from that address: one guess per account, each request forging a new
    // left-most X-Forwarded-For entry, as if from another client.
    for victim in 0..10 {
        let forged = format!("198.51.100.{victim}, {school}");
        let r = login_via(&app, &forged, &email("victim"), "Winter2026!").await;
        assert_eq!(code(&r).as_deref(), Some("UNAUTHENTICATED"), "{r}");
    }
    // Its failures are spent: the address is refused, forged entry or not, right password
    // or not (a refusal checks no password).
    let forged = format!("198.51.100.77, {school}");
    let r = login_via(&app, &forged, &email("victim"), "Winter2026!").await;
    assert_eq!(code(&r).as_deref(), Some("RATE_LIMITED"), "{r}");
    assert!((1..=600).contains(&retry_after(&r)), "{r}");
    let r = login_via(&app, school, &teacher_desk, PASSWORD).await;
    assert_eq!(code(&r).as_deref(), Some("RATE_LIMITED"), "{r}");
    // Another address signs in to the same account.
    let r = login_via(&app, "192.0.2.44", &teacher_desk, PASSWORD).await;
    assert!(signed_in(&r), "{r}");
}

#[tokio::test]
async fn wrong_passwords_hold_one_account_from_every_address_and_reveal_nothing() {
    let app = start(&[
        ("TEACHIN_TRUST_FORWARDED_FOR", "1"),
        ("TEACHIN_LOGIN_BACKOFF", "3/10m..1h"),
    ])
    .await;
    let (dana, eli) = (email("dana"), email("eli"));
    enroll(&app, &[dana.clone(), eli.clone()]).await;
    let (guesser, home, elsewhere) = ("203.0.113.66", "192.0.2.10", "198.51.100.3");
    for _ in 0..3 {
        let r = login_via(&app, guesser, &dana, "not her password").await;
        assert_eq!(code(&r).as_deref(), Some("UNAUTHENTICATED"), "{r}");
    }
    // Dana's account is held now, wherever she signs in from, right password or not.
    let held = login_via(&app, home, &dana, PASSWORD).await;
    assert_eq!(code(&held).as_deref(), Some("RATE_LIMITED"), "{held}");
    assert!((1..=600).contains(&retry_after(&held)), "{held}");
    // Only hers: Eli signs in from the guesser's own address.
    let r = login_via(&app, guesser, &eli, PASSWORD).await;
    assert!(signed_in(&r), "{r}");
    // An address without an account is held the same way, with the same answer.
    let nobody = email("nobody");
    for _ in 0..3 {
        let r = login_via(&app, elsewhere, &nobody, "not a password").await;
        assert_eq!(code(&r).as_deref(), Some("UNAUTHENTICATED"), "{r}");
    }
    let unknown = login_via(&app, home, &nobody, PASSWORD).await;
    assert_eq!(code(&unknown).as_deref(), Some("RATE_LIMITED"), "{unknown}");
    let shape = |r: &Value| {
        let error = &r["errors"][0];
        let mut keys: Vec<String> = error["extensions"]
            .as_object()
            .unwrap()
            .keys()
            .cloned()
            .collect();
        keys.sort();
        (
            error["message"]
                .as_str()
                .map(|m| m.split(" in ").next().map(str::to_owned)),
            keys,
            r["data"].clone(),
        )
    };
    assert_eq!(shape(&held), shape(&unknown));
}

#[tokio::test]
async fn sign_ups_have_a_budget_per_address_even_in_one_request() {
    let app = start(&[("TEACHIN_SIGNUP_RATE_LIMIT", "20/1h")]).await;
    // 160 sign-ups in one request, as aliases of one mutation.
    let fields: String = (0..160)
        .map(|i| {
            format!(
                "s{i}: signUp(input: {{firstName: \"Flood\", lastName: \"Bot\", email: \"{}\", password: \"{PASSWORD}\"}}) {{ userId }}\n",
                email(&format!("flood{i}"))
            )
        })
        .collect();
    let portal = Portal::new(&app);
    let r = portal
        .gql(&format!("mutation {{ {fields} }}"), json!({}))
        .await;
    let created = r["data"].as_object().map_or(0, |data| {
        data.values().filter(|v| v["userId"].is_string()).count()
    });
    let errors = r["errors"].as_array().cloned().unwrap_or_default();
    assert_eq!(created, 20, "{r}");
    assert_eq!(errors.len(), 140, "{r}");
    assert!(
        errors
            .iter()
            .all(|e| e["extensions"]["code"] == "RATE_LIMITED"
                && e["extensions"]["retryAfter"].as_u64().is_some()),
        "{r}"
    );
    let registered: i64 = sqlx::query_scalar(
        "SELECT count(DISTINCT aggregate_id) FROM events WHERE aggregate_type = 'User'",
    )
    .fetch_one(&app.db.pool)
    .await
    .unwrap();
    assert_eq!(registered, 20);
    // The next request from the address is refused too.
    let r = portal
        .gql(
            "mutation($email: String!) { signUp(input: {firstName: \"One\", lastName: \"More\", email: $email, password: \"correct horse battery\"}) { userId } }",
            json!({ "email": email("one-more") }),
        )
        .await;
    assert_eq!(code(&r).as_deref(), Some("RATE_LIMITED"), "{r}");
}

/// The `Set-Cookie` header of `name` among a response's.
fn set_cookie(headers: &reqwest::header::HeaderMap, name: &str) -> String {
    headers
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap().to_string())
        .find(|c| c.starts_with(&format!("{name}=")))
        .unwrap_or_else(|| panic!("no {name} cookie set"))
}

#[tokio::test]
async fn logout_needs_json_and_the_csrf_header_and_cookies_are_same_site_strict() {
    let app = start(&[("TEACHIN_REFRESH_RATE_LIMIT", "100/60s")]).await;
    let address = email("lea");
    let mut browser = Portal::new(&app);
    browser.sign_up("Lea", &address).await;

    // The cookies a sign-in sets: HttpOnly refresh token, readable CSRF token, both Strict.
    let response = browser
        .http
        .post(&browser.url)
        .json(&json!({ "query": LOGIN, "variables": { "email": address, "password": PASSWORD } }))
        .send()
        .await
        .unwrap();
    let refresh = set_cookie(response.headers(), "refreshToken");
    let csrf = set_cookie(response.headers(), "csrfToken");
    for attribute in [
        "HttpOnly",
        "Secure",
        "SameSite=Strict",
        "Path=/",
        "Max-Age=",
    ] {
        assert!(refresh.contains(attribute), "{refresh}");
    }
    assert!(!csrf.contains("HttpOnly"), "{csrf}");
    assert!(
        csrf.contains("SameSite=Strict") && csrf.contains("Secure"),
        "{csrf}"
    );
    let session: Value = response.json().await.unwrap();
    browser.token = session["data"]["login"]["accessToken"]
        .as_str()
        .map(str::to_owned);
    browser.csrf = session["data"]["login"]["csrfToken"]
        .as_str()
        .map(str::to_owned);
    let logout = json!({ "query": "mutation { logout }" });

    // Without the CSRF header: refused, and the session lives on.
    let (_, r) = browser.post(logout.clone(), None).await;
    assert_eq!(code(&r).as_deref(), Some("FORBIDDEN"), "{r}");
    let r = browser.refresh().await;
    assert!(r["data"]["refreshSession"].is_object(), "{r}");

    // What a form on another site can send with the cookies: refused before it runs.
    for content_type in [
        "text/plain",
        "application/x-www-form-urlencoded",
        "text/plain; charset=application/json",
    ] {
        let response = browser
            .http
            .post(&browser.url)
            .header("content-type", content_type)
            .header("x-csrf-token", browser.csrf.clone().unwrap())
            .bearer_auth(browser.token())
            .body(logout.to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 415, "{content_type}");
        let r: Value = response.json().await.unwrap();
        assert_eq!(code(&r).as_deref(), Some("BAD_USER_INPUT"), "{r}");
        assert_eq!(r["errors"][0]["extensions"]["field"], "content-type", "{r}");
    }
    let r = browser.refresh().await;
    assert!(
        r["data"]["refreshSession"].is_object(),
        "the session survived: {r}"
    );

    // A CSRF header that is not the cookie's: refused.
    let (_, r) = browser.post(logout.clone(), Some("not-the-token")).await;
    assert_eq!(code(&r).as_deref(), Some("FORBIDDEN"), "{r}");

    // JSON with the header: signed out, the cookies removed with the same attributes.
    let (refresh_token, csrf_token) = (
        browser.cookie("refreshToken").unwrap(),
        browser.csrf.clone().unwrap(),
    );
    let response = browser
        .http
        .post(&browser.url)
        .json(&logout)
        .bearer_auth(browser.token())
        .header("x-csrf-token", &csrf_token)
        .send()
        .await
        .unwrap();
    let removed = set_cookie(response.headers(), "refreshToken");
    assert!(
        removed.contains("Max-Age=0") && removed.contains("SameSite=Strict"),
        "{removed}"
    );
    let r: Value = response.json().await.unwrap();
    assert_eq!(r["data"]["logout"], true, "{r}");
    // The refresh token it held is dead on the server, not only gone from the browser.
    let r: Value = reqwest::Client::new()
        .post(&browser.url)
        .header(
            "cookie",
            format!("refreshToken={refresh_token}; csrfToken={csrf_token}"),
        )
        .header("x-csrf-token", &csrf_token)
        .json(&json!({ "query": "mutation { refreshSession { accessToken } }" }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(code(&r).as_deref(), Some("UNAUTHENTICATED"), "{r}");
}
