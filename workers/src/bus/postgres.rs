//! The PostgreSQL backend of the bus: the default, and all a laptop or CI needs.
//!
//! A queue is the rows of `bus_messages` with its name. A receiver takes the first row in
//! sequence order whose `visible_at` has passed, skipping rows other receivers hold
//! (`FOR UPDATE SKIP LOCKED`), and stamps it with a fresh lock token, a lock deadline (the row
//! becomes visible again then) and one more delivery. Completing deletes the row, renewing
//! moves the deadline; each checks the token and that the lock has not run out, so a receiver
//! that lost its lock cannot settle someone else's delivery.
//!
//! Abandoning makes the row visible again after a delay — the handler's (`Retry-After`), else
//! the [`RetryPolicy`]'s backoff for its delivery count — and keeps the error in `last_error`.
//! An abandoned message moves to `bus_dead_letters` only when its retry budget is spent in
//! count and in time (`max_delivery_count` deliveries, and `min_retry_span` since
//! `retry_since`), with the last error in the description. A message whose *lock ran out* on
//! its last delivery (a worker killed mid-message, again and again) is dead-lettered when it
//! would be delivered once more, as Service Bus does, by count alone.
//!
//! Sends are idempotent by message id through `bus_message_ids`, in the same statement.

use super::{reasons, Bus, BusError, DeadLetter, Lock, OutgoingMessage, QueueName, QueueStats};
use super::{record_processed, Abandon, ReceivedMessage, RetryPolicy};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::types::Json;
use sqlx::{Connection, PgConnection, PgPool};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use uuid::Uuid;

#[derive(Debug, Clone)]
pub struct PostgresBusConfig {
    /// How long a receiver holds a message before it becomes available again.
    pub lock_duration: Duration,
    /// Deliveries allowed before a message is dead-lettered.
    pub max_delivery_count: u32,
    /// First pause between polls while waiting for a message; doubles up to `max_poll`.
    pub min_poll: Duration,
    pub max_poll: Duration,
}

impl Default for PostgresBusConfig {
    fn default() -> Self {
        PostgresBusConfig {
            lock_duration: Duration::from_secs(60),
            max_delivery_count: 10,
            min_poll: Duration::from_millis(20),
            max_poll: Duration::from_millis(500),
        }
    }
}

#[derive(Clone)]
pub struct PostgresBus {
    pool: PgPool,
    config: PostgresBusConfig,
    retry: RetryPolicy,
}

/// A row of `bus_messages` as a receiver gets it.
#[derive(sqlx::FromRow)]
struct MessageRow {
    sequence_number: i64,
    message_id: String,
    correlation_id: Option<String>,
    action: String,
    body: String,
    properties: Json<BTreeMap<String, String>>,
    enqueued_at: DateTime<Utc>,
    delivery_count: i32,
    locked_until: DateTime<Utc>,
}

impl PostgresBus {
    /// A bus with the default [`RetryPolicy`].
    pub fn new(pool: PgPool, config: PostgresBusConfig) -> Self {
        PostgresBus {
            pool,
            config,
            retry: RetryPolicy::default(),
        }
    }

    /// The same bus with another backoff and retry budget.
    pub fn with_retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    pub fn config(&self) -> &PostgresBusConfig {
        &self.config
    }

    pub fn retry_policy(&self) -> &RetryPolicy {
        &self.retry
    }

    /// One attempt to take a message; dead-letters the exhausted ones it meets on the way.
    async fn try_receive(&self, queue: QueueName) -> Result<Option<ReceivedMessage>, BusError> {
        let mut conn = self.pool.acquire().await?;
        loop {
            let mut tx = conn.begin().await?;
            // `lock_token` is set while a receiver holds the row and cleared by an abandon:
            // a visible row that still has one is a row whose lock ran out.
            let candidate: Option<(i64, i32, bool, Option<String>)> = sqlx::query_as(
                "SELECT sequence_number, delivery_count, lock_token IS NOT NULL, last_error
                   FROM bus_messages
                  WHERE queue = $1 AND visible_at <= clock_timestamp()
                  ORDER BY sequence_number
                  LIMIT 1
                  FOR UPDATE SKIP LOCKED",
            )
            .bind(queue.as_str())
            .fetch_optional(&mut *tx)
            .await?;
            let Some((sequence_number, deliveries, lock_ran_out, last_error)) = candidate else {
                tx.commit().await?;
                return Ok(None);
            };
            if lock_ran_out && deliveries as u32 >= self.config.max_delivery_count {
                // Its last lock ran out: it has had every delivery it may have.
                let mut description = format!(
                    "the lock expired on delivery {deliveries} of at most {}",
                    self.config.max_delivery_count
                );
                if let Some(error) = last_error {
                    description.push_str("; last error: ");
                    description.push_str(&error);
                }
                move_to_dead_letters(
                    &mut tx,
                    sequence_number,
                    reasons::MAX_DELIVERY_COUNT_EXCEEDED,
                    &description,
                )
                .await?;
                tx.commit().await?;
                continue;
            }
            let token = Uuid::new_v4();
            let row: MessageRow = sqlx::query_as(
                "UPDATE bus_messages
                    SET lock_token = $2,
                        locked_until = clock_timestamp() + $3 * interval '1 millisecond',
                        visible_at = clock_timestamp() + $3 * interval '1 millisecond',
                        delivery_count = delivery_count + 1
                  WHERE sequence_number = $1
              RETURNING sequence_number, message_id, correlation_id, action, body, properties,
                        enqueued_at, delivery_count, locked_until",
            )
            .bind(sequence_number)
            .bind(token)
            .bind(self.config.lock_duration.as_millis() as f64)
            .fetch_one(&mut *tx)
            .await?;
            tx.commit().await?;
            return Ok(Some(ReceivedMessage {
                queue,
                sequence_number: row.sequence_number,
                message_id: row.message_id,
                correlation_id: row.correlation_id,
                action: row.action,
                body: row.body,
                properties: row.properties.0,
                enqueued_at: row.enqueued_at,
                delivery_count: row.delivery_count as u32,
                locked_until: row.locked_until,
                lock: Lock::Postgres { token },
            }));
        }
    }

    fn token(message: &ReceivedMessage) -> Result<Uuid, BusError> {
        match &message.lock {
            Lock::Postgres { token } => Ok(*token),
            Lock::ServiceBus(_) => Err(BusError::Invalid(
                "this message was received from Service Bus, not from PostgreSQL".into(),
            )),
        }
    }

    /// Locks the row of a message this receiver still holds, inside `tx`.
    async fn hold(tx: &mut PgConnection, message: &ReceivedMessage) -> Result<Held, BusError> {
        let token = Self::token(message)?;
        let row: Option<Held> = sqlx::query_as(
            "SELECT delivery_count, retry_since, last_error, clock_timestamp() AS now
               FROM bus_messages
              WHERE sequence_number = $1 AND lock_token = $2 AND locked_until > clock_timestamp()
              FOR UPDATE",
        )
        .bind(message.sequence_number)
        .bind(token)
        .fetch_optional(&mut *tx)
        .await?;
        row.ok_or(BusError::LockLost)
    }

    /// Deletes message ids accepted before `before` (the duplicate-detection window) and
    /// returns how many. A cron job's work.
    pub async fn purge_message_ids(&self, before: DateTime<Utc>) -> Result<u64, BusError> {
        let done = sqlx::query("DELETE FROM bus_message_ids WHERE sent_at < $1")
            .bind(before)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected())
    }
}

/// A held message's row, as settling needs it.
#[derive(sqlx::FromRow)]
struct Held {
    delivery_count: i32,
    retry_since: DateTime<Utc>,
    last_error: Option<String>,
    /// The database's clock, which every deadline of the queue is on.
    now: DateTime<Utc>,
}

/// Moves a (locked, in `tx`) message row to the dead letters.
async fn move_to_dead_letters(
    tx: &mut PgConnection,
    sequence_number: i64,
    reason: &str,
    description: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "WITH gone AS (DELETE FROM bus_messages WHERE sequence_number = $1 RETURNING *)
         INSERT INTO bus_dead_letters (queue, message_id, sequence_number, correlation_id,
                action, body, properties, enqueued_at, delivery_count, reason, description)
         SELECT queue, message_id, sequence_number, correlation_id, action, body, properties,
                enqueued_at, delivery_count, $2, $3
           FROM gone
         ON CONFLICT (queue, message_id) DO UPDATE
            SET sequence_number = EXCLUDED.sequence_number, body = EXCLUDED.body,
                properties = EXCLUDED.properties, delivery_count = EXCLUDED.delivery_count,
                reason = EXCLUDED.reason, description = EXCLUDED.description,
                dead_lettered_at = now()",
    )
    .bind(sequence_number)
    .bind(reason)
    .bind(description)
    .execute(tx)
    .await?;
    Ok(())
}

#[async_trait]
impl Bus for PostgresBus {
    async fn send(&self, queue: QueueName, message: OutgoingMessage) -> Result<(), BusError> {
        let body = message.checked_body()?;
        sqlx::query(
            "WITH accepted AS (
                INSERT INTO bus_message_ids (queue, message_id) VALUES ($1, $2)
                ON CONFLICT DO NOTHING
                RETURNING queue, message_id)
             INSERT INTO bus_messages (queue, message_id, correlation_id, action, body, properties)
             SELECT queue, message_id, $3, $4, $5, $6 FROM accepted",
        )
        .bind(queue.as_str())
        .bind(&message.message_id)
        .bind(&message.correlation_id)
        .bind(&message.action)
        .bind(body)
        .bind(Json(&message.properties))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn receive(
        &self,
        queue: QueueName,
        wait: Duration,
    ) -> Result<Option<ReceivedMessage>, BusError> {
        let deadline = Instant::now() + wait;
        let mut pause = self.config.min_poll;
        loop {
            if let Some(message) = self.try_receive(queue).await? {
                return Ok(Some(message));
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(None);
            }
            tokio::time::sleep(pause.min(deadline - now)).await;
            pause = (pause * 2).min(self.config.max_poll);
        }
    }

    async fn complete(&self, message: &ReceivedMessage) -> Result<(), BusError> {
        let token = Self::token(message)?;
        let done = sqlx::query(
            "DELETE FROM bus_messages
              WHERE sequence_number = $1 AND lock_token = $2 AND locked_until > clock_timestamp()",
        )
        .bind(message.sequence_number)
        .bind(token)
        .execute(&self.pool)
        .await?;
        if done.rows_affected() == 1 {
            Ok(())
        } else {
            Err(BusError::LockLost)
        }
    }

    async fn abandon(&self, message: &ReceivedMessage, how: Abandon) -> Result<(), BusError> {
        let mut tx = self.pool.begin().await?;
        let held = Self::hold(&mut tx, message).await?;
        let deliveries = held.delivery_count.max(0) as u32;
        let max = self.config.max_delivery_count;
        let last_error = how.error.as_deref().or(held.last_error.as_deref());
        if self
            .retry
            .spent(deliveries, max, held.retry_since, held.now)
        {
            let description = self.retry.spent_description(
                deliveries,
                max,
                held.retry_since,
                held.now,
                last_error,
            );
            move_to_dead_letters(
                &mut tx,
                message.sequence_number,
                reasons::MAX_DELIVERY_COUNT_EXCEEDED,
                &description,
            )
            .await?;
        } else {
            let delay = how.delay.unwrap_or_else(|| self.retry.backoff(deliveries));
            sqlx::query(
                "UPDATE bus_messages
                    SET lock_token = NULL, locked_until = NULL,
                        visible_at = clock_timestamp() + $2 * interval '1 millisecond',
                        last_error = $3
                  WHERE sequence_number = $1",
            )
            .bind(message.sequence_number)
            .bind(delay.as_millis() as f64)
            .bind(last_error)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn complete_recorded(
        &self,
        message: &ReceivedMessage,
        _pool: &PgPool,
        consumer: &str,
        key: &str,
    ) -> Result<(), BusError> {
        // One transaction: the record and the completion commit together. The record commits
        // even when the lock is gone — the work was done, and the redelivery that someone else
        // holds will find it and complete as a duplicate.
        let token = Self::token(message)?;
        let mut tx = self.pool.begin().await?;
        record_processed(&mut *tx, consumer, key).await?;
        let done = sqlx::query(
            "DELETE FROM bus_messages
              WHERE sequence_number = $1 AND lock_token = $2 AND locked_until > clock_timestamp()",
        )
        .bind(message.sequence_number)
        .bind(token)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        if done.rows_affected() == 1 {
            Ok(())
        } else {
            Err(BusError::LockLost)
        }
    }

    async fn renew_lock(&self, message: &ReceivedMessage) -> Result<DateTime<Utc>, BusError> {
        let token = Self::token(message)?;
        let renewed: Option<(DateTime<Utc>,)> = sqlx::query_as(
            "UPDATE bus_messages
                SET locked_until = clock_timestamp() + $3 * interval '1 millisecond',
                    visible_at = clock_timestamp() + $3 * interval '1 millisecond'
              WHERE sequence_number = $1 AND lock_token = $2 AND locked_until > clock_timestamp()
          RETURNING locked_until",
        )
        .bind(message.sequence_number)
        .bind(token)
        .bind(self.config.lock_duration.as_millis() as f64)
        .fetch_optional(&self.pool)
        .await?;
        match renewed {
            Some((until,)) => Ok(until),
            None => Err(BusError::LockLost),
        }
    }

    async fn dead_letter(
        &self,
        message: &ReceivedMessage,
        reason: &str,
        description: &str,
    ) -> Result<(), BusError> {
        let mut tx = self.pool.begin().await?;
        Self::hold(&mut tx, message).await?;
        move_to_dead_letters(&mut tx, message.sequence_number, reason, description).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn stats(&self, queue: QueueName) -> Result<QueueStats, BusError> {
        let (depth, oldest, dead): (i64, Option<DateTime<Utc>>, i64) = sqlx::query_as(
            "SELECT (SELECT count(*) FROM bus_messages WHERE queue = $1),
                    (SELECT min(enqueued_at) FROM bus_messages WHERE queue = $1),
                    (SELECT count(*) FROM bus_dead_letters WHERE queue = $1)",
        )
        .bind(queue.as_str())
        .fetch_one(&self.pool)
        .await?;
        Ok(QueueStats {
            queue,
            depth,
            oldest_enqueued_at: oldest,
            dead_letters: dead,
        })
    }

    async fn dead_letters(
        &self,
        queue: QueueName,
        limit: usize,
    ) -> Result<Vec<DeadLetter>, BusError> {
        list_parked(&self.pool, queue, limit).await
    }

    async fn resubmit(&self, queue: QueueName, message_id: &str) -> Result<bool, BusError> {
        let moved = sqlx::query(
            "WITH back AS (
                DELETE FROM bus_dead_letters WHERE queue = $1 AND message_id = $2 RETURNING *)
             INSERT INTO bus_messages (queue, message_id, correlation_id, action, body,
                    properties, enqueued_at)
             SELECT queue, message_id, correlation_id, action, body, properties, enqueued_at
               FROM back",
        )
        .bind(queue.as_str())
        .bind(message_id)
        .execute(&self.pool)
        .await?;
        Ok(moved.rows_affected() == 1)
    }
}

#[derive(sqlx::FromRow)]
struct DeadLetterRow {
    message_id: String,
    correlation_id: Option<String>,
    action: String,
    body: String,
    properties: Json<BTreeMap<String, String>>,
    enqueued_at: DateTime<Utc>,
    delivery_count: i32,
    reason: String,
    description: String,
}

/// The dead letters kept in `bus_dead_letters` (both backends park there).
pub(crate) async fn list_parked(
    pool: &PgPool,
    queue: QueueName,
    limit: usize,
) -> Result<Vec<DeadLetter>, BusError> {
    let rows: Vec<DeadLetterRow> = sqlx::query_as(
        "SELECT message_id, correlation_id, action, body, properties, enqueued_at,
                delivery_count, reason, description
           FROM bus_dead_letters WHERE queue = $1
          ORDER BY dead_lettered_at, sequence_number
          LIMIT $2",
    )
    .bind(queue.as_str())
    .bind(limit as i64)
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| DeadLetter {
            queue,
            message_id: r.message_id,
            correlation_id: r.correlation_id,
            action: r.action,
            body: r.body,
            properties: r.properties.0,
            enqueued_at: Some(r.enqueued_at),
            delivery_count: r.delivery_count as u32,
            reason: r.reason,
            description: r.description,
        })
        .collect())
}
