//! The usage snapshot of `teachin cron stats`, computed from tutor read-model rows written
//! here with chosen times (a fixed `now`, so the windows are exact), and kept in Redis.

use chrono::{DateTime, Duration, Utc};
use fred::prelude::{Builder, ClientLike, Config, KeysInterface};
use teachin_commands::testing::TestDatabase;
use teachin_workers::stats::{self, StatsSnapshot};
use uuid::Uuid;

async fn session(db: &TestDatabase, student: Uuid, updated_at: DateTime<Utc>) -> Uuid {
    let id = Uuid::new_v4();
    sqlx::query(
        "INSERT INTO read_model.tutor_sessions (session_id, student_id, kind, created_at, updated_at)
         VALUES ($1, $2, 'default', $3, $3)",
    )
    .bind(id)
    .bind(student)
    .bind(updated_at)
    .execute(&db.pool)
    .await
    .unwrap();
    id
}

async fn message(db: &TestDatabase, session: Uuid, sequence: i64, role: &str, at: DateTime<Utc>) {
    sqlx::query(
        "INSERT INTO read_model.tutor_messages (session_id, event_sequence, part, role, text, created_at)
         VALUES ($1, $2, 0, $3, 'text', $4)",
    )
    .bind(session)
    .bind(sequence)
    .bind(role)
    .bind(at)
    .execute(&db.pool)
    .await
    .unwrap();
}

#[tokio::test]
async fn the_snapshot_counts_conversations_people_and_recent_messages() {
    let db = TestDatabase::new().await;
    let now = DateTime::parse_from_rfc3339("2026-03-01T12:00:00Z")
        .unwrap()
        .with_timezone(&Utc);
    let ago = |minutes: i64| now - Duration::minutes(minutes);
    let (a, b, c) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());

    // A: two conversations, one active; messages 2, 1 and 10 minutes ago, plus a tool call
    // and page context that are not messages.
    let a1 = session(&db, a, ago(5)).await;
    message(&db, a1, 1, "context", ago(2)).await;
    message(&db, a1, 2, "student", ago(2)).await;
    message(&db, a1, 3, "tool", ago(1)).await;
    message(&db, a1, 4, "assistant", ago(1)).await;
    let a2 = session(&db, a, ago(60)).await;
    message(&db, a2, 1, "student", ago(10)).await;
    // B: a conversation without a word of theirs, changed 20 minutes ago.
    let b1 = session(&db, b, ago(20)).await;
    message(&db, b1, 1, "assistant", ago(30)).await;
    // C: active 14 minutes ago; wrote yesterday.
    let c1 = session(&db, c, ago(14)).await;
    message(&db, c1, 1, "student", now - Duration::days(1)).await;

    let snapshot = stats::snapshot(&db.pool, now).await.unwrap();
    assert_eq!(
        snapshot,
        StatsSnapshot {
            total_threads: 4,
            total_unique_users_by_thread: 3,
            total_messages: 5,
            total_unique_users_by_message: 2,
            active_users_last15m: 2,
            messages_last5m: 2,
            messages_last15m: 3,
            generated_at_utc: now,
        }
    );
}

#[tokio::test]
async fn an_empty_platform_has_zeroes() {
    let db = TestDatabase::new().await;
    let now = Utc::now();
    let snapshot = stats::snapshot(&db.pool, now).await.unwrap();
    assert_eq!(snapshot.total_threads, 0);
    assert_eq!(snapshot.total_messages, 0);
    assert_eq!(snapshot.active_users_last15m, 0);
}

#[tokio::test]
async fn the_snapshot_is_kept_in_redis_for_a_day() {
    let url =
        std::env::var("TEACHIN_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let redis = Builder::from_config(Config::from_url(&url).unwrap())
        .build()
        .unwrap();
    redis.init().await.unwrap();
    let namespace = format!("test-{}", Uuid::new_v4().simple());
    assert_eq!(stats::latest(&redis, &namespace).await.unwrap(), None);

    let snapshot = StatsSnapshot {
        total_threads: 7,
        total_unique_users_by_thread: 3,
        total_messages: 40,
        total_unique_users_by_message: 3,
        active_users_last15m: 1,
        messages_last5m: 2,
        messages_last15m: 4,
        generated_at_utc: DateTime::from_timestamp(1_770_000_000, 0).unwrap(),
    };
    let key = stats::store(&redis, &namespace, &snapshot).await.unwrap();
    assert_eq!(key, format!("teachin:{namespace}:stats"));
    assert_eq!(
        stats::latest(&redis, &namespace).await.unwrap(),
        Some(snapshot)
    );
    let ttl: i64 = redis.ttl(&key).await.unwrap();
    assert!(ttl > 0 && ttl <= stats::STORED_FOR_SECONDS, "{ttl}");
    let _: i64 = redis.del(&key).await.unwrap();
}
