//! Erasure and retention leave nothing behind (issue 15 §4), and the defaults are safe (§5):
//! - erasing a person deletes their avatar file, and its read URL answers 404;
//! - `teachin cron purge-uploads` deletes uploads never confirmed after the grace period,
//!   keeps current avatars and fresh uploads, and deletes what an erased person left;
//! - a dead letter keeps no address, name or text, whichever contract it carried;
//! - the binary refuses production on a published default secret, and an unset
//!   `TEACHIN_ENV` inside a deployment, with one line and exit code 2.

mod support;

use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};
use support::portal::{code, email, png, Portal};
use support::{teachin, RunningApp};
use teachin_commands::testing::TestDatabase;
use teachin_workers::bus::postgres::{PostgresBus, PostgresBusConfig};
use teachin_workers::bus::{reasons, Bus, OutgoingMessage, QueueName};

/// Where `teachin all` keeps this app's avatars (tests/support sets TEACHIN_AVATARS_DIR).
fn avatars_dir(app: &RunningApp) -> PathBuf {
    std::env::temp_dir().join(format!("teachin-avatars-{}", app.namespace))
}

/// Files in `dir`, by name; none when it does not exist.
fn files_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// Asks for an upload URL and uploads a PNG there; returns the path to confirm.
async fn upload(portal: &Portal, user: &str) -> String {
    portal.upload_avatar(user, png()).await
}

async fn confirm(portal: &Portal, user: &str, path: &str) {
    let r = portal
        .gql(
            "mutation($s: UUID!, $p: String!) { confirmAvatarUpload(userId: $s, path: $p) { events } }",
            json!({ "s": user, "p": path }),
        )
        .await;
    assert_eq!(r["data"]["confirmAvatarUpload"]["events"], 1, "{r}");
}

async fn read_url(portal: &Portal, user: &str) -> String {
    let r = portal
        .gql(
            "query($s: UUID!) { avatarUrl(userId: $s) { url } }",
            json!({ "s": user }),
        )
        .await;
    r["data"]["avatarUrl"]["url"]
        .as_str()
        .unwrap_or_else(|| panic!("{r}"))
        .to_string()
}

/// A student signed up and signed in; returns the portal and the id.
async fn student(app: &RunningApp, name: &str) -> (Portal, String) {
    let mut portal = Portal::new(app);
    let address = email(name);
    let id = portal.sign_up(name, &address).await;
    portal.login(&address).await;
    (portal, id)
}

/// Moves a file's modification time `age` into the past (what the store reports as when
/// it was written).
fn age(file: &Path, age: Duration) {
    std::fs::File::options()
        .write(true)
        .open(file)
        .unwrap()
        .set_modified(SystemTime::now() - age)
        .unwrap();
}

#[tokio::test]
async fn erasure_deletes_the_avatar_file_and_its_url_answers_404() {
    let app = RunningApp::start().await;
    let (portal, s) = student(&app, "Dana").await;
    let avatar = upload(&portal, &s).await;
    confirm(&portal, &s, &avatar).await;
    // An upload never confirmed is the person's too.
    let stray = upload(&portal, &s).await;
    let url = read_url(&portal, &s).await;
    let got = reqwest::get(&url).await.unwrap();
    assert_eq!(got.status(), 200);
    let folder = avatars_dir(&app).join(&s);
    assert_eq!(files_in(&folder).len(), 2);

    let r = portal
        .gql(
            "mutation($s: UUID!) { eraseUser(userId: $s) { id } }",
            json!({ "s": s }),
        )
        .await;
    assert!(code(&r).is_none(), "{r}");

    assert!(
        files_in(&folder).is_empty(),
        "the erased person's files are gone, {avatar} and {stray} both: {:?}",
        files_in(&folder)
    );
    let got = reqwest::get(&url).await.unwrap();
    assert_eq!(
        got.status(),
        404,
        "the signed URL outlives the file, not the picture"
    );
}

#[tokio::test]
async fn purge_uploads_deletes_what_was_never_confirmed_after_a_day() {
    let app = RunningApp::start().await;
    let dir = avatars_dir(&app);
    let (portal, s) = student(&app, "Yael").await;
    let day = Duration::from_secs(24 * 60 * 60);

    // The avatar, uploaded long ago and confirmed; an old upload never confirmed; a fresh one.
    let avatar = upload(&portal, &s).await;
    confirm(&portal, &s, &avatar).await;
    let abandoned = upload(&portal, &s).await;
    let fresh = upload(&portal, &s).await;
    age(&dir.join(&avatar), day * 3);
    age(&dir.join(&abandoned), day + Duration::from_secs(60 * 60));
    age(&dir.join(&fresh), Duration::from_secs(60 * 60));

    // What an erasure left when it crashed before deleting: files of an erased person, new.
    let (gone_portal, gone) = student(&app, "Omer").await;
    let left = upload(&gone_portal, &gone).await;
    let r = gone_portal
        .gql(
            "mutation($s: UUID!) { eraseUser(userId: $s) { id } }",
            json!({ "s": gone }),
        )
        .await;
    assert!(code(&r).is_none(), "{r}");
    std::fs::create_dir_all(dir.join(&gone)).unwrap();
    std::fs::write(dir.join(&left), png()).unwrap();

    let output = teachin(&app.db)
        .args(["cron", "purge-uploads"])
        .env("TEACHIN_AVATARS_DIR", &dir)
        .output()
        .expect("the binary runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("unconfirmed uploads purged: 1"), "{stdout}");
    assert!(
        stdout.contains("files of erased users purged: 1"),
        "{stdout}"
    );
    assert!(stdout.contains("files kept: 2"), "{stdout}");

    let name = |path: &str| path.rsplit('/').next().unwrap().to_string();
    let mut kept = vec![name(&avatar), name(&fresh)];
    kept.sort();
    assert_eq!(files_in(&dir.join(&s)), kept);
    assert!(files_in(&dir.join(&gone)).is_empty());
    // The avatar still shows.
    let got = reqwest::get(read_url(&portal, &s).await).await.unwrap();
    assert_eq!(got.status(), 200);

    // An upload is confirmed within the hour or never, and the sweep's grace is at least
    // twice that, so a sweep never deletes a file a confirm is about to make the avatar.
    let late = upload(&portal, &s).await;
    age(&dir.join(&late), Duration::from_secs(2 * 60 * 60));
    let r = portal
        .gql(
            "mutation($s: UUID!, $p: String!) { confirmAvatarUpload(userId: $s, path: $p) { events } }",
            json!({ "s": s, "p": late }),
        )
        .await;
    assert_eq!(code(&r).as_deref(), Some("BAD_USER_INPUT"), "{r}");
    assert!(
        r["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("too old"),
        "{r}"
    );
    let output = teachin(&app.db)
        .args(["cron", "purge-uploads", "--grace-hours", "1"])
        .output()
        .expect("the binary runs");
    assert!(
        !output.status.success(),
        "a grace of 1 h could race a confirm"
    );
}

/// Every kind of message with personal text the contracts carry, as its producer writes it.
fn personal_messages(address: &str) -> Vec<(QueueName, OutgoingMessage)> {
    let request = uuid::Uuid::new_v4();
    let session = uuid::Uuid::new_v4();
    let student = uuid::Uuid::new_v4();
    let usage = json!({ "model": "gpt-4o-mini", "promptTokens": 10, "completionTokens": 5,
                        "latencyMs": 80, "prompt": "sentences@v1" });
    let message =
        |id: &str, action: &str, payload: Value| OutgoingMessage::new(id, action, payload);
    vec![
        (
            QueueName::Accessor,
            message(
                "mail",
                teachin_workers::email::SEND_EMAIL,
                serde_json::to_value(teachin_workers::email::SendEmail {
                    recipient_email: address.to_string(),
                    subject: "Dana Levi's progress".into(),
                    body: format!("<p>Dear Dana Levi ({address}), ...</p>"),
                })
                .unwrap(),
            ),
        ),
        (
            QueueName::ManagerCallback,
            message(
                "reply",
                "TutorReplyCompleted",
                json!({ "sessionId": session, "requestId": request, "studentId": student,
                        "text": "Dana, your sentence was right", "model": "gpt-4o-mini",
                        "promptTokens": 1, "completionTokens": 1, "latencyMs": 5,
                        "prompts": ["I am Dana Levi"],
                        "toolCalls": [{ "messageId": "m1", "tool": "Time-current_time",
                                        "arguments": "{\"who\":\"Dana Levi\"}", "result": "Dana" }] }),
            ),
        ),
        (
            QueueName::ManagerCallbackSession,
            message(
                "frame",
                "ChatStream",
                json!({ "studentId": student, "sessionId": session, "requestId": request,
                        "attempt": 1, "sequence": 0, "stage": "delta",
                        "delta": "Dana, well done", "final": false, "elapsedMs": 3 }),
            )
            .with_session_id(session.to_string()),
        ),
        (
            QueueName::ManagerCallback,
            message(
                "draft",
                "EmailDrafted",
                json!({ "requestId": request, "subject": "About Dana Levi",
                        "body": format!("Write to {address}"), "usage": usage }),
            ),
        ),
        (
            QueueName::ManagerCallback,
            message(
                "title",
                "SessionTitleGenerated",
                json!({ "sessionId": session, "requestId": request,
                        "title": "Dana's homework", "generated": true }),
            ),
        ),
    ]
}

#[tokio::test]
async fn a_dead_letter_keeps_ids_and_reasons_but_no_personal_data() {
    let db = TestDatabase::new().await;
    let bus = PostgresBus::new(db.pool.clone(), PostgresBusConfig::default());
    let address = "dana.levi@example.com";
    let messages = personal_messages(address);
    for (queue, message) in &messages {
        bus.send(*queue, message.clone()).await.unwrap();
        let got = bus
            .receive(*queue, Duration::from_secs(5))
            .await
            .unwrap()
            .expect("sent");
        // An SMTP refusal names the mailbox it refused.
        bus.dead_letter(
            &got,
            reasons::MALFORMED_PAYLOAD,
            &format!("550 5.1.1 <{address}>: mailbox unavailable"),
        )
        .await
        .unwrap();
    }
    // A malformed body (the reason it was dead-lettered) is not JSON at all.
    bus.send(
        QueueName::Accessor,
        OutgoingMessage::new("raw", "SendEmail", json!({})),
    )
    .await
    .unwrap();
    sqlx::query("UPDATE bus_messages SET body = $1 WHERE message_id = 'raw'")
        .bind(format!("to={address}"))
        .execute(&db.pool)
        .await
        .unwrap();
    let raw = bus
        .receive(QueueName::Accessor, Duration::from_secs(5))
        .await
        .unwrap()
        .unwrap();
    bus.dead_letter(&raw, reasons::MALFORMED_PAYLOAD, "not JSON")
        .await
        .unwrap();

    let rows: Vec<(String, String, String, String)> = sqlx::query_as(
        "SELECT message_id, body, description, properties::text FROM bus_dead_letters",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert_eq!(rows.len(), messages.len() + 1);
    for (id, body, description, properties) in &rows {
        for row in [body, description, properties] {
            for personal in [address, "Dana", "Levi"] {
                assert!(!row.contains(personal), "{id} keeps `{personal}`: {row}");
            }
        }
    }
    // What an operator needs is still there: the ids, the shape, the reason.
    let (_, body, description, _) = rows.iter().find(|r| r.0 == "reply").unwrap();
    let body: Value = serde_json::from_str(body).unwrap();
    let sent = &messages[1].1;
    assert_eq!(body["requestId"], sent.payload["requestId"]);
    assert_eq!(body["sessionId"], sent.payload["sessionId"]);
    assert_eq!(body["model"], "gpt-4o-mini");
    assert_eq!(body["promptTokens"], 1);
    assert_eq!(body["toolCalls"][0]["tool"], "Time-current_time");
    assert_eq!(body["text"], "[redacted]");
    assert_eq!(description, "550 5.1.1 <[address]>: mailbox unavailable");
    let letters = bus.dead_letters(QueueName::Accessor, 10).await.unwrap();
    assert!(letters
        .iter()
        .all(|l| l.reason == reasons::MALFORMED_PAYLOAD));
}

/// The binary with a production environment that is complete but for `name`.
fn production(db: &TestDatabase, name: &str, value: &str) -> std::process::Output {
    let mut command = teachin(db);
    command
        .arg("migrate")
        .env("TEACHIN_ENV", "production")
        .env("TEACHIN_LOOKUP_HASH_KEY", "an-operator-chosen-lookup-key")
        .env(
            "JWT_SECRET",
            "an-operator-chosen-secret-of-32-bytes-or-more",
        )
        .env(
            "JWT_REFRESH_TOKEN_HASH_KEY",
            "an-operator-chosen-refresh-key",
        )
        .env(name, value);
    command.output().expect("the binary runs")
}

fn one_line_naming(output: &std::process::Output, name: &str) {
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert_eq!(stderr.trim_end().lines().count(), 1, "one line: {stderr}");
    assert!(
        stderr.starts_with(&format!("configuration error: {name}: ")),
        "{stderr}"
    );
}

#[tokio::test]
async fn production_refuses_the_published_default_secret_in_one_line() {
    let db = TestDatabase::new().await;
    // The baseline starts (and migrates): only the secret below makes the difference.
    let fine = production(&db, "TEACHIN_LOG", "warn");
    assert!(
        fine.status.success(),
        "{}",
        String::from_utf8_lossy(&fine.stderr)
    );
    // The default `./dev run` and the tests use locally, given to production explicitly.
    let output = production(
        &db,
        "JWT_SECRET",
        "local-only-jwt-secret-change-me-0123456789",
    );
    one_line_naming(&output, "JWT_SECRET");
    assert!(String::from_utf8_lossy(&output.stderr).contains("published local default"));
    let output = production(&db, "JWT_SECRET", "short");
    one_line_naming(&output, "JWT_SECRET");
}

#[tokio::test]
async fn an_unset_environment_inside_a_deployment_does_not_mean_local() {
    let db = TestDatabase::new().await;
    // No TEACHIN_ENV, in a Kubernetes pod (every pod has this variable).
    let output = teachin(&db)
        .arg("migrate")
        .env("KUBERNETES_SERVICE_HOST", "10.0.0.1")
        .output()
        .expect("the binary runs");
    one_line_naming(&output, "TEACHIN_ENV");
    // On a developer's machine, unset still means local.
    let output = teachin(&db).arg("migrate").output().unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}
