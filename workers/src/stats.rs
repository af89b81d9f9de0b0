//! The usage snapshot of `teachin cron stats` (original-system.md §1.14 and §6): how many
//! tutor conversations there are, how many people have them, who was active lately and how
//! many messages flow.
//!
//! Why from the read models: the tutor projection already keeps one row per conversation
//! (`read_model.tutor_sessions`) and per message part (`read_model.tutor_messages`), so the
//! snapshot is a handful of counts, not a scan of the log. The field names are the
//! original's, so the admin portal's view keeps working; unlike the original, the message
//! counters are real rather than always 0. The snapshot is printed as JSON and kept in Redis
//! (`teachin:{ns}:stats`, 24 hours) for the admin portal.

use chrono::{DateTime, Duration, Utc};
use fred::prelude::{Client, Expiration, KeysInterface};
use serde::{Deserialize, Serialize};
use sqlx::PgPool;

/// How long a stored snapshot is kept (the original's 24 h).
pub const STORED_FOR_SECONDS: i64 = 24 * 60 * 60;

/// One snapshot, in the original's field names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StatsSnapshot {
    /// Tutor conversations ever started.
    pub total_threads: i64,
    /// Students with at least one conversation.
    pub total_unique_users_by_thread: i64,
    /// Messages written by students and by the tutor.
    pub total_messages: i64,
    /// Students who wrote at least one message.
    pub total_unique_users_by_message: i64,
    /// Students whose conversation changed in the last 15 minutes.
    pub active_users_last15m: i64,
    pub messages_last5m: i64,
    pub messages_last15m: i64,
    pub generated_at_utc: DateTime<Utc>,
}

/// Computes the snapshot as of `now`.
pub async fn snapshot(pool: &PgPool, now: DateTime<Utc>) -> Result<StatsSnapshot, sqlx::Error> {
    let (total_threads, total_unique_users_by_thread, active_users_last15m): (i64, i64, i64) =
        sqlx::query_as(
            "SELECT count(*),
                    count(DISTINCT student_id),
                    count(DISTINCT student_id) FILTER (WHERE updated_at > $1)
               FROM read_model.tutor_sessions",
        )
        .bind(now - Duration::minutes(15))
        .fetch_one(pool)
        .await?;
    let (total_messages, total_unique_users_by_message, messages_last5m, messages_last15m): (
        i64,
        i64,
        i64,
        i64,
    ) = sqlx::query_as(
        "SELECT count(*),
                count(DISTINCT s.student_id) FILTER (WHERE m.role = 'student'),
                count(*) FILTER (WHERE m.created_at > $1),
                count(*) FILTER (WHERE m.created_at > $2)
           FROM read_model.tutor_messages m
           JOIN read_model.tutor_sessions s ON s.session_id = m.session_id
          WHERE m.role IN ('student', 'assistant')",
    )
    .bind(now - Duration::minutes(5))
    .bind(now - Duration::minutes(15))
    .fetch_one(pool)
    .await?;
    Ok(StatsSnapshot {
        total_threads,
        total_unique_users_by_thread,
        total_messages,
        total_unique_users_by_message,
        active_users_last15m,
        messages_last5m,
        messages_last15m,
        generated_at_utc: now,
    })
}

/// Where the snapshot of `namespace` is kept.
pub fn redis_key(namespace: &str) -> String {
    format!("teachin:{namespace}:stats")
}

/// Stores the snapshot for the admin portal; returns the key.
pub async fn store(
    redis: &Client,
    namespace: &str,
    snapshot: &StatsSnapshot,
) -> Result<String, fred::error::Error> {
    let key = redis_key(namespace);
    let json = serde_json::to_string(snapshot).expect("a snapshot serializes");
    let _: () = redis
        .set(
            &key,
            json,
            Some(Expiration::EX(STORED_FOR_SECONDS)),
            None,
            false,
        )
        .await?;
    Ok(key)
}

/// The stored snapshot, if one is younger than a day.
pub async fn latest(
    redis: &Client,
    namespace: &str,
) -> Result<Option<StatsSnapshot>, fred::error::Error> {
    let raw: Option<String> = redis.get(redis_key(namespace)).await?;
    Ok(raw.and_then(|json| serde_json::from_str(&json).ok()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_snapshot_has_the_originals_field_names() {
        let at = DateTime::from_timestamp(1_700_000_000, 0).unwrap();
        let json = serde_json::to_value(StatsSnapshot {
            total_threads: 1,
            total_unique_users_by_thread: 2,
            total_messages: 3,
            total_unique_users_by_message: 4,
            active_users_last15m: 5,
            messages_last5m: 6,
            messages_last15m: 7,
            generated_at_utc: at,
        })
        .unwrap();
        let mut names: Vec<_> = json.as_object().unwrap().keys().cloned().collect();
        names.sort();
        assert_eq!(
            names,
            [
                "activeUsersLast15m",
                "generatedAtUtc",
                "messagesLast15m",
                "messagesLast5m",
                "totalMessages",
                "totalThreads",
                "totalUniqueUsersByMessage",
                "totalUniqueUsersByThread",
            ]
        );
        assert_eq!(redis_key("dev"), "teachin:dev:stats");
    }
}
