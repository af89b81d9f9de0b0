//! Limits that stop abuse, through the real binary: daily model quotas (requests at the edge,
//! tokens from the engine's ledger), the cap on model calls per document and the coalescing
//! of identical ones, query cost with page sizes, introspection outside local mode, and
//! teachers' emails (a daily cap, sealed under the recipient's key).

mod support;

use chrono::Utc;
use fred::prelude::{Builder, ClientLike, Config};
use serde_json::{json, Value};
use support::portal::{admin, code, email, student, teacher, Portal};
use support::RunningApp;
use teachin_domain::ids::UserId;
use teachin_domain::personal_data::Sealed;
use teachin_domain::services::PersonalDataVault;
use teachin_workers::engine::usage::{Counted, UsageLedger};

const REQUEST_SENTENCES: &str =
    "mutation($count: Int!) { requestSentences(gameType: TYPING_PRACTICE, count: $count) { requestId replayed } }";

async fn count_events(app: &RunningApp, aggregate_type: &str) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM events WHERE aggregate_type = $1")
        .bind(aggregate_type)
        .fetch_one(&app.db.pool)
        .await
        .unwrap()
}

async fn metrics(app: &RunningApp) -> String {
    reqwest::get(format!("{}/metrics", app.manager))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

async fn redis() -> fred::prelude::Client {
    let url =
        std::env::var("TEACHIN_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let client = Builder::from_config(Config::from_url(&url).unwrap())
        .build()
        .unwrap();
    client.init().await.unwrap();
    client
}

/// `QUOTA_EXCEEDED`, with a retry-after up to the day's end.
fn assert_quota_exceeded(r: &Value) {
    assert_eq!(code(r).as_deref(), Some("QUOTA_EXCEEDED"), "{r}");
    let retry_after = r["errors"][0]["extensions"]["retryAfter"].as_u64().unwrap();
    assert!((1..=24 * 3600).contains(&retry_after), "{r}");
    assert!(
        r["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("resets at"),
        "{r}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn model_requests_past_the_daily_quota_are_refused_before_anything_is_queued() {
    let app = RunningApp::start_with(&[("TEACHIN_MODEL_QUOTA_STUDENT", "2/1000000")]).await;
    let dana = student(&app, "dana").await;
    // A refused request (bad input) gives its use back.
    let r = dana.gql(REQUEST_SENTENCES, json!({ "count": 99 })).await;
    assert_eq!(code(&r).as_deref(), Some("BAD_USER_INPUT"), "{r}");
    for _ in 0..2 {
        let r = dana.gql(REQUEST_SENTENCES, json!({ "count": 1 })).await;
        assert!(
            r["data"]["requestSentences"]["requestId"].is_string(),
            "{r}"
        );
    }
    let r = dana.gql(REQUEST_SENTENCES, json!({ "count": 1 })).await;
    assert_quota_exceeded(&r);
    let r = dana
        .gql(
            "mutation { sendTutorMessage(kind: DEFAULT, text: \"שלום\") { requestId } }",
            json!({}),
        )
        .await;
    assert_quota_exceeded(&r);
    assert_eq!(count_events(&app, "GenerationRequest").await, 2);
    assert_eq!(count_events(&app, "TutorSession").await, 0);
    // Another student's quota is their own.
    let yoni = student(&app, "yoni").await;
    let r = yoni.gql(REQUEST_SENTENCES, json!({ "count": 1 })).await;
    assert!(code(&r).is_none(), "{r}");
    let figures = metrics(&app).await;
    assert!(
        figures.contains(r#"teachin_quota_refusals_total{role="student",kind="requests"} 2"#),
        "{figures}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn once_the_days_tokens_are_spent_no_new_model_request_is_accepted() {
    let app = RunningApp::start_with(&[("TEACHIN_MODEL_QUOTA_STUDENT", "100/500")]).await;
    let dana = student(&app, "dana").await;
    let r = dana.gql(REQUEST_SENTENCES, json!({ "count": 1 })).await;
    assert!(code(&r).is_none(), "{r}");
    // What the engine adds once the model has answered (`workers/tests/model_usage.rs`).
    let ledger = UsageLedger::new(redis().await, &app.namespace);
    let id: UserId = dana.id().parse().unwrap();
    ledger
        .add(id, Counted::Tokens, 500, Utc::now())
        .await
        .unwrap();
    let r = dana
        .gql(
            "mutation { sendTutorMessage(kind: DEFAULT, text: \"שלום\") { requestId } }",
            json!({}),
        )
        .await;
    assert_quota_exceeded(&r);
    assert!(r["errors"][0]["message"]
        .as_str()
        .unwrap()
        .contains("AI usage"));
    assert_eq!(count_events(&app, "TutorSession").await, 0);
    let figures = metrics(&app).await;
    assert!(
        figures.contains(r#"teachin_quota_refusals_total{role="student",kind="tokens"} 1"#),
        "{figures}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn six_hundred_aliased_model_calls_are_refused_whole_and_identical_ones_coalesce() {
    let app = RunningApp::start().await;
    let dana = student(&app, "dana").await;
    let aliases: String = (0..600)
        .map(|i| format!("a{i}: requestSentences(gameType: TYPING_PRACTICE) {{ requestId }}\n"))
        .collect();
    let r = dana
        .gql(&format!("mutation {{ {aliases} }}"), json!({}))
        .await;
    assert_eq!(code(&r).as_deref(), Some("TOO_MANY_MODEL_CALLS"), "{r}");
    assert!(r["data"].is_null(), "nothing ran: {r}");
    assert_eq!(count_events(&app, "GenerationRequest").await, 0);
    let queued: i64 = sqlx::query_scalar("SELECT count(*) FROM bus_messages")
        .fetch_one(&app.db.pool)
        .await
        .unwrap();
    assert_eq!(queued, 0, "no job queued");

    // The same field twice in one document is one request, answered twice.
    let r = dana
        .gql(
            "mutation {
               a: requestSentences(gameType: TYPING_PRACTICE, count: 2) { requestId }
               b: requestSentences(count: 2, gameType: TYPING_PRACTICE) { requestId }
             }",
            json!({}),
        )
        .await;
    assert!(code(&r).is_none(), "{r}");
    assert_eq!(
        r["data"]["a"]["requestId"], r["data"]["b"]["requestId"],
        "{r}"
    );
    assert_eq!(count_events(&app, "GenerationRequest").await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_huge_page_is_refused_by_its_cost_and_a_portal_page_passes() {
    let app = RunningApp::start().await;
    let admin = admin(&app).await;
    let page = "query($n: Int!) {
                  users(first: $n) {
                    totalCount
                    edges { cursor node { userId firstName lastName email role } }
                  }
                }";
    let r = admin.gql(page, json!({ "n": 5000 })).await;
    assert_eq!(code(&r).as_deref(), Some("QUERY_TOO_COMPLEX"), "{r}");
    assert!(r["data"].is_null(), "{r}");
    let r = admin.gql(page, json!({ "n": 50 })).await;
    assert!(code(&r).is_none(), "{r}");
    assert!(
        r["data"]["users"]["totalCount"].as_i64().unwrap() >= 1,
        "{r}"
    );
}

const INTROSPECTION: &str = "{ __schema { queryType { name } } }";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn introspection_is_answered_in_local_mode_only() {
    let local = RunningApp::start().await;
    let r = Portal::new(&local).gql(INTROSPECTION, json!({})).await;
    assert_eq!(r["data"]["__schema"]["queryType"]["name"], "Query", "{r}");

    let cloud = RunningApp::start_with(&[
        ("TEACHIN_ENV", "staging"),
        (
            "TEACHIN_LOOKUP_HASH_KEY",
            "staging-lookup-hash-key-0123456789",
        ),
        (
            "JWT_SECRET",
            "staging-jwt-secret-0123456789abcdef0123456789",
        ),
        (
            "JWT_REFRESH_TOKEN_HASH_KEY",
            "staging-refresh-hash-key-0123456789",
        ),
        // No ingress in front of this test's manager.
        ("TEACHIN_TRUST_FORWARDED_FOR", "false"),
    ])
    .await;
    let portal = Portal::new(&cloud);
    let r = portal.gql(INTROSPECTION, json!({})).await;
    assert_eq!(code(&r).as_deref(), Some("FORBIDDEN"), "{r}");
    assert!(r["data"].is_null(), "{r}");
    let r = portal
        .gql("{ __type(name: \"Query\") { name } }", json!({}))
        .await;
    assert_eq!(code(&r).as_deref(), Some("FORBIDDEN"), "{r}");
    // `__typename` is not introspection of the schema; clients rely on it.
    let r = portal.gql("{ __typename }", json!({})).await;
    assert_eq!(r["data"]["__typename"], "Query", "{r}");
}

const SEND_EMAIL: &str = "mutation($to: String!, $body: String!) {
    sendEmail(recipientEmail: $to, subject: \"Parents' evening\", body: $body) { id }
}";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_teacher_may_send_a_daily_number_of_emails() {
    let app = RunningApp::start_with(&[("TEACHIN_EMAIL_DAILY_CAP", "2")]).await;
    let admin = admin(&app).await;
    let tal = teacher(&app, &admin, "tal").await;
    // Refused input does not count.
    let r = tal
        .gql(
            SEND_EMAIL,
            json!({ "to": "not-an-address", "body": "<p>Hi</p>" }),
        )
        .await;
    assert_eq!(code(&r).as_deref(), Some("BAD_USER_INPUT"), "{r}");
    for i in 0..2 {
        let r = tal
            .gql(
                SEND_EMAIL,
                json!({ "to": format!("parent{i}@example.com"), "body": "<p>Hi</p>" }),
            )
            .await;
        assert!(code(&r).is_none(), "{r}");
    }
    let r = tal
        .gql(
            SEND_EMAIL,
            json!({ "to": "parent9@example.com", "body": "<p>Hi</p>" }),
        )
        .await;
    assert_quota_exceeded(&r);
    assert_eq!(count_events(&app, "OutgoingEmail").await, 2);
    // Another teacher's day is their own.
    let omer = teacher(&app, &admin, "omer").await;
    let r = omer
        .gql(
            SEND_EMAIL,
            json!({ "to": "parent@example.com", "body": "<p>Hi</p>" }),
        )
        .await;
    assert!(code(&r).is_none(), "{r}");
    let figures = metrics(&app).await;
    assert!(
        figures.contains(r#"teachin_quota_refusals_total{role="teacher",kind="emails"} 1"#),
        "{figures}"
    );
}

/// The sealed recipient address of the queued email `id`.
async fn sealed_recipient(app: &RunningApp, id: &str) -> Sealed {
    let payload: Value = sqlx::query_scalar(
        "SELECT payload FROM events WHERE aggregate_type = 'OutgoingEmail' AND aggregate_id = $1",
    )
    .bind(id)
    .fetch_one(&app.db.pool)
    .await
    .unwrap();
    serde_json::from_value(payload["EmailQueued"]["recipient_email"].clone()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_email_is_sealed_under_its_recipients_key_so_only_their_erasure_shreds_it() {
    let app = RunningApp::start().await;
    let admin = admin(&app).await;
    let tal = teacher(&app, &admin, "tal").await;
    let shira_address = email("shira");
    let shira = Portal::new(&app);
    let shira_id = shira.sign_up("Shira", &shira_address).await;

    let r = tal
        .gql(
            SEND_EMAIL,
            json!({ "to": shira_address.to_uppercase(), "body": "<p>Well done</p>" }),
        )
        .await;
    let to_shira = r["data"]["sendEmail"]["id"].as_str().unwrap().to_string();
    let r = tal
        .gql(
            SEND_EMAIL,
            json!({ "to": "parent@example.com", "body": "<p>Well done</p>" }),
        )
        .await;
    let to_parent = r["data"]["sendEmail"]["id"].as_str().unwrap().to_string();

    let sealed_for_shira = sealed_recipient(&app, &to_shira).await;
    let sealed_for_parent = sealed_recipient(&app, &to_parent).await;
    assert_eq!(
        sealed_for_shira.subject.to_string(),
        shira_id,
        "the student's key"
    );
    assert_eq!(
        sealed_for_parent.subject.to_string(),
        to_parent,
        "an address without an account: a key of the email's own"
    );

    let vault = teachin_commands::ports::PostgresVault::new(app.db.pool.clone());
    let erase = "mutation($u: UUID!) { eraseUser(userId: $u) { id } }";
    // The sender's erasure leaves the email readable, so deliverable.
    let r = admin.gql(erase, json!({ "u": tal.id() })).await;
    assert!(code(&r).is_none(), "{r}");
    assert_eq!(
        vault.open(&sealed_for_shira).await.unwrap(),
        Some(shira_address.to_lowercase())
    );
    assert_eq!(
        vault.open(&sealed_for_parent).await.unwrap().as_deref(),
        Some("parent@example.com")
    );
    // The recipient's erasure shreds it.
    let r = admin.gql(erase, json!({ "u": shira_id })).await;
    assert!(code(&r).is_none(), "{r}");
    assert_eq!(vault.open(&sealed_for_shira).await.unwrap(), None);
}
