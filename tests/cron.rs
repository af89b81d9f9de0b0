//! End-to-end tests of the scheduled jobs the Helm chart runs: `teachin cron stats` (the
//! usage snapshot, printed and kept in Redis) and `teachin cron purge-bus` (bus bookkeeping
//! and dead letters older than their retentions), each against a fresh database.
//! `teachin cron purge-uploads` needs a running app; it is tested in `tests/retention.rs`.

#[allow(dead_code)] // These tests need the binary, not a free port.
mod support;

use fred::prelude::{Builder, ClientLike, Config, KeysInterface};
use serde_json::Value;
use support::teachin;
use teachin_commands::testing::TestDatabase;
use uuid::Uuid;

fn redis_url() -> String {
    std::env::var("TEACHIN_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379/0".into())
}

#[tokio::test]
async fn cron_stats_prints_the_snapshot_and_keeps_it_in_redis() {
    let db = TestDatabase::new().await;
    let student = Uuid::new_v4();
    let session = Uuid::new_v4();
    sqlx::query(
        "INSERT INTO read_model.tutor_sessions (session_id, student_id, kind, created_at, updated_at)
         VALUES ($1, $2, 'default', now(), now())",
    )
    .bind(session)
    .bind(student)
    .execute(&db.pool)
    .await
    .unwrap();
    for (sequence, role) in [(1_i64, "student"), (2, "assistant")] {
        sqlx::query(
            "INSERT INTO read_model.tutor_messages (session_id, event_sequence, part, role, text, created_at)
             VALUES ($1, $2, 0, $3, 'שלום', now())",
        )
        .bind(session)
        .bind(sequence)
        .bind(role)
        .execute(&db.pool)
        .await
        .unwrap();
    }

    let namespace = format!("test-{}", Uuid::new_v4().simple());
    let output = teachin(&db)
        .args(["cron", "stats"])
        .env("REDIS_URL", redis_url())
        .env("TEACHIN_NAMESPACE", &namespace)
        .output()
        .expect("the binary runs");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let printed: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(printed["totalThreads"], 1, "{printed}");
    assert_eq!(printed["totalUniqueUsersByThread"], 1);
    assert_eq!(printed["totalMessages"], 2);
    assert_eq!(printed["totalUniqueUsersByMessage"], 1);
    assert_eq!(printed["activeUsersLast15m"], 1);
    assert_eq!(printed["messagesLast5m"], 2);
    assert!(printed["generatedAtUtc"].is_string());

    let redis = Builder::from_config(Config::from_url(&redis_url()).unwrap())
        .build()
        .unwrap();
    redis.init().await.unwrap();
    let key = format!("teachin:{namespace}:stats");
    let stored: Option<String> = redis.get(&key).await.unwrap();
    let stored: Value = serde_json::from_str(&stored.expect("the snapshot is in Redis")).unwrap();
    assert_eq!(stored, printed);
    let _: i64 = redis.del(&key).await.unwrap();
}

#[tokio::test]
async fn cron_purge_bus_forgets_only_what_is_older_than_the_retention() {
    let db = TestDatabase::new().await;
    for (id, age_days) in [("old", 10), ("recent", 1)] {
        sqlx::query(
            "INSERT INTO bus_message_ids (queue, message_id, sent_at)
             VALUES ('accessor-queue', $1, now() - make_interval(days => $2))",
        )
        .bind(id)
        .bind(age_days)
        .execute(&db.pool)
        .await
        .unwrap();
        sqlx::query(
            "INSERT INTO bus_processed_messages (consumer, message_key, processed_at)
             VALUES ('accessor', $1, now() - make_interval(days => $2))",
        )
        .bind(id)
        .bind(age_days)
        .execute(&db.pool)
        .await
        .unwrap();
    }
    // Dead letters have a retention of their own (14 days unless told).
    for (id, age_days) in [("old", 20), ("recent", 10)] {
        sqlx::query(
            "INSERT INTO bus_dead_letters (queue, message_id, sequence_number, action, body,
                    enqueued_at, delivery_count, reason, dead_lettered_at)
             VALUES ('accessor-queue', $1, 1, 'SendEmail', '{}', now(), 1, 'r',
                     now() - make_interval(days => $2))",
        )
        .bind(id)
        .bind(age_days)
        .execute(&db.pool)
        .await
        .unwrap();
    }
    let output = teachin(&db)
        .args(["cron", "purge-bus", "--retention-days", "7"])
        .output()
        .expect("the binary runs");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("message ids purged: 1"), "{stdout}");
    assert!(stdout.contains("processed records purged: 1"), "{stdout}");
    assert!(stdout.contains("dead letters purged: 1"), "{stdout}");
    let left: Vec<String> = sqlx::query_scalar("SELECT message_id FROM bus_message_ids")
        .fetch_all(&db.pool)
        .await
        .unwrap();
    assert_eq!(left, ["recent"]);
    let left: Vec<String> = sqlx::query_scalar("SELECT message_key FROM bus_processed_messages")
        .fetch_all(&db.pool)
        .await
        .unwrap();
    assert_eq!(left, ["recent"]);
    let left: Vec<String> = sqlx::query_scalar("SELECT message_id FROM bus_dead_letters")
        .fetch_all(&db.pool)
        .await
        .unwrap();
    assert_eq!(left, ["recent"]);
    let output = teachin(&db)
        .args(["cron", "purge-bus", "--dead-letter-retention-days", "7"])
        .output()
        .expect("the binary runs");
    assert!(
        String::from_utf8_lossy(&output.stdout).contains("dead letters purged: 1"),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );

    // A retention of zero days would forget what a redelivery still needs.
    let output = teachin(&db)
        .args(["cron", "purge-bus", "--retention-days", "0"])
        .output()
        .expect("the binary runs");
    assert!(!output.status.success());
}
