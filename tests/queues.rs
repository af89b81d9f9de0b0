//! End-to-end tests of `teachin queues` against a fresh database (the PostgreSQL bus): the
//! status of every queue, and listing and resubmitting dead letters.

#[allow(dead_code)] // These tests need the binary, not a free port.
mod support;

use serde_json::Value;
use std::process::Output;
use std::time::Duration;
use support::teachin;
use teachin_commands::testing::TestDatabase;
use teachin_workers::bus::postgres::{PostgresBus, PostgresBusConfig};
use teachin_workers::bus::{reasons, Bus, OutgoingMessage, QueueName};

fn queues(db: &TestDatabase, args: &[&str]) -> Output {
    let output = teachin(db)
        .arg("queues")
        .args(args)
        .output()
        .expect("the binary runs");
    output
}

fn json_lines(output: &Output) -> Vec<Value> {
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|line| serde_json::from_str(line).expect("each line is JSON"))
        .collect()
}

fn line_for<'a>(lines: &'a [Value], queue: &str) -> &'a Value {
    lines
        .iter()
        .find(|l| l["queue"] == queue)
        .unwrap_or_else(|| panic!("no line for {queue}: {lines:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_lists_and_resubmits_dead_letters() {
    let db = TestDatabase::new().await;
    let bus = PostgresBus::new(db.pool.clone(), PostgresBusConfig::default());
    for id in ["a", "b"] {
        bus.send(
            QueueName::Engine,
            OutgoingMessage::new(id, "GenerateSentences", serde_json::json!({"count": 1})),
        )
        .await
        .unwrap();
    }
    bus.send(
        QueueName::Accessor,
        OutgoingMessage::new("mail", "SendEmail", serde_json::json!({})),
    )
    .await
    .unwrap();
    let poison = bus
        .receive(QueueName::Engine, Duration::from_secs(5))
        .await
        .unwrap()
        .unwrap();
    bus.dead_letter(&poison, reasons::MALFORMED_PAYLOAD, "count is not a number")
        .await
        .unwrap();

    let status = json_lines(&queues(&db, &["status", "--json"]));
    assert_eq!(status.len(), 4, "every queue has a line");
    let engine = line_for(&status, "engine-queue");
    assert_eq!(
        (engine["depth"].as_i64(), engine["dead_letters"].as_i64()),
        (Some(1), Some(1))
    );
    assert!(engine["oldest_age_seconds"].as_f64().unwrap() >= 0.0);
    assert_eq!(engine["backend"], "postgres");
    let accessor = line_for(&status, "accessor-queue");
    assert_eq!(accessor["depth"].as_i64(), Some(1));
    let idle = line_for(&status, "manager-callback-session-queue");
    assert_eq!(idle["depth"].as_i64(), Some(0));
    assert!(idle["oldest_age_seconds"].is_null());

    let table = queues(&db, &["status"]);
    assert!(table.status.success());
    let text = String::from_utf8_lossy(&table.stdout);
    assert!(
        text.contains("bus: postgres") && text.contains("manager-callback-queue"),
        "{text}"
    );

    let letters = json_lines(&queues(&db, &["dead-letter", "list", "--json"]));
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0]["message_id"], poison.message_id.as_str());
    assert_eq!(letters[0]["queue"], "engine-queue");
    assert_eq!(letters[0]["reason"], reasons::MALFORMED_PAYLOAD);
    assert_eq!(letters[0]["description"], "count is not a number");
    let none = json_lines(&queues(
        &db,
        &["dead-letter", "list", "--queue", "accessor-queue", "--json"],
    ));
    assert!(none.is_empty());

    let missing = queues(
        &db,
        &[
            "dead-letter",
            "resubmit",
            "--queue",
            "engine-queue",
            "--id",
            "nope",
        ],
    );
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("no dead letter `nope`"));

    let resubmitted = queues(
        &db,
        &[
            "dead-letter",
            "resubmit",
            "--queue",
            "engine-queue",
            "--id",
            &poison.message_id,
        ],
    );
    assert!(
        resubmitted.status.success(),
        "{}",
        String::from_utf8_lossy(&resubmitted.stderr)
    );
    let status = json_lines(&queues(&db, &["status", "--json"]));
    let engine = line_for(&status, "engine-queue");
    assert_eq!(
        (engine["depth"].as_i64(), engine["dead_letters"].as_i64()),
        (Some(2), Some(0))
    );

    let all = queues(
        &db,
        &[
            "dead-letter",
            "resubmit",
            "--queue",
            "engine-queue",
            "--all",
        ],
    );
    assert!(String::from_utf8_lossy(&all.stdout).contains("resubmitted 0 dead letters"));
}

#[test]
fn an_unknown_queue_or_a_missing_choice_is_a_usage_error() {
    let db_free = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_teachin"))
            .env_clear()
            .arg("queues")
            .args(args)
            .output()
            .unwrap()
    };
    let unknown = db_free(&["dead-letter", "list", "--queue", "email-queue"]);
    assert_eq!(unknown.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("engine-queue"));
    let neither = db_free(&["dead-letter", "resubmit", "--queue", "engine-queue"]);
    assert_eq!(neither.status.code(), Some(2));
}
