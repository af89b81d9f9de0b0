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
//!
//! Dead letters are redacted as they are parked (a trigger on `bus_dead_letters`, migration
//! 0040: only ids and the contracts' closed vocabularies keep their text, and addresses leave
//! the error) and purged after a retention ([`PostgresBus::purge_dead_letters`]).
//!
//! **Sessions** (migration 0012). A message may carry a session key. Each bus instance is
//! one receiver with an id of its own (`holder`); taking a message of session S also takes
//! or extends S's lease in `bus_sessions` for the lock's duration (a renewal of the
//! message's lock renews it too), and the receive query skips every message of a session
//! another receiver's live lease holds. So while one replica works on a session, no other
//! gets its messages; the holder takes them in sequence order; the lease lingers a lock
//! duration after its last message (the next frame of a stream goes to the same replica),
//! and a crashed holder's sessions pass on when their leases run out, as Service Bus
//! session locks do. Two receivers that find S free at the same instant both try to write
//! the lease; the second waits for the first's row (its primary key), sees it held, rolls
//! its take back and looks again, now skipping S. The row lock order is fixed (a message
//! row, `SKIP LOCKED`, then at most one lease row), so takes cannot deadlock.

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
    /// This receiver's id in `bus_sessions`; clones share it (one process, one receiver).
    holder: Uuid,
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
    session_id: Option<String>,
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
            holder: Uuid::new_v4(),
        }
    }

    /// The same bus receiving as `holder` (the Service Bus adapter shares its own id).
    pub(crate) fn with_holder(mut self, holder: Uuid) -> Self {
        self.holder = holder;
        self
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
            // A message of a session whose live lease another receiver holds is not ours to
            // take (sequence order within what is left keeps the session's order).
            let candidate: Option<Candidate> = sqlx::query_as(
                "SELECT m.sequence_number, m.delivery_count, m.lock_token IS NOT NULL,
                            m.last_error, m.session_id
                       FROM bus_messages m
                      WHERE m.queue = $1 AND m.visible_at <= clock_timestamp()
                        AND (m.session_id IS NULL OR NOT EXISTS (
                                SELECT 1 FROM bus_sessions s
                                 WHERE s.queue = m.queue AND s.session_id = m.session_id
                                   AND s.holder <> $2
                                   AND s.locked_until > clock_timestamp()))
                      ORDER BY m.sequence_number
                      LIMIT 1
                      FOR UPDATE OF m SKIP LOCKED",
            )
            .bind(queue.as_str())
            .bind(self.holder)
            .fetch_optional(&mut *tx)
            .await?;
            let Some((sequence_number, deliveries, lock_ran_out, last_error, session)) = candidate
            else {
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
            if let Some(session) = &session {
                if !take_session(
                    &mut tx,
                    queue,
                    session,
                    self.holder,
                    self.config.lock_duration,
                )
                .await?
                {
                    // Another receiver took the session meanwhile: leave the message be.
                    tx.rollback().await?;
                    continue;
                }
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
                        session_id, enqueued_at, delivery_count, locked_until",
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
                session_id: row.session_id,
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
    /// returns how many; forgets session leases that ran out before it too. A cron job's work.
    pub async fn purge_message_ids(&self, before: DateTime<Utc>) -> Result<u64, BusError> {
        let done = sqlx::query("DELETE FROM bus_message_ids WHERE sent_at < $1")
            .bind(before)
            .execute(&self.pool)
            .await?;
        sqlx::query("DELETE FROM bus_sessions WHERE locked_until < $1")
            .bind(before)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected())
    }

    /// Deletes the dead letters parked before `before` and returns how many: they are
    /// redacted (migration 0040) but still a record of someone's activity, so they are kept
    /// only as long as an operator needs to look into them. Both backends park here.
    pub async fn purge_dead_letters(&self, before: DateTime<Utc>) -> Result<u64, BusError> {
        let done = sqlx::query("DELETE FROM bus_dead_letters WHERE dead_lettered_at < $1")
            .bind(before)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected())
    }

    /// Takes `message` (received from another backend, and of a session another receiver
    /// holds) into this queue, where the session's holder will take it: same id, what it
    /// carried, its deliveries so far (the hand-over spends none). `false` if the queue
    /// already has it (handed over before).
    pub(crate) async fn hand_over(
        &self,
        message: &ReceivedMessage,
        retry_since: DateTime<Utc>,
        last_error: Option<&str>,
    ) -> Result<bool, BusError> {
        let done = sqlx::query(
            "INSERT INTO bus_messages (queue, message_id, correlation_id, action, body,
                    properties, session_id, enqueued_at, delivery_count, retry_since, last_error)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
             ON CONFLICT (queue, message_id) DO NOTHING",
        )
        .bind(message.queue.as_str())
        .bind(&message.message_id)
        .bind(&message.correlation_id)
        .bind(&message.action)
        .bind(&message.body)
        .bind(Json(&message.properties))
        .bind(&message.session_id)
        .bind(message.enqueued_at)
        .bind(message.delivery_count.saturating_sub(1) as i32)
        .bind(retry_since)
        .bind(last_error)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Takes or extends `session`'s lease for this receiver, outside any take (the Service
    /// Bus adapter, after a peek-lock). `false` if another receiver holds it.
    pub(crate) async fn hold_session(
        &self,
        queue: QueueName,
        session: &str,
        span: Duration,
    ) -> Result<bool, BusError> {
        let mut conn = self.pool.acquire().await?;
        Ok(take_session(&mut conn, queue, session, self.holder, span).await?)
    }

    /// One attempt to take a message (see [`PostgresBus::receive`]), without waiting.
    pub(crate) async fn receive_now(
        &self,
        queue: QueueName,
    ) -> Result<Option<ReceivedMessage>, BusError> {
        self.try_receive(queue).await
    }
}

/// The next message a receiver may take: sequence number, deliveries, whether its last lock
/// ran out, its last error, its session.
type Candidate = (i64, i32, bool, Option<String>, Option<String>);

/// A held message's row, as settling needs it.
#[derive(sqlx::FromRow)]
struct Held {
    delivery_count: i32,
    retry_since: DateTime<Utc>,
    last_error: Option<String>,
    /// The database's clock, which every deadline of the queue is on.
    now: DateTime<Utc>,
}

/// Takes `session`'s lease for `holder`, or extends it if it is `holder`'s already or has run
/// out; `false` if another receiver holds it. A lease never shrinks.
async fn take_session(
    conn: &mut PgConnection,
    queue: QueueName,
    session: &str,
    holder: Uuid,
    span: Duration,
) -> Result<bool, sqlx::Error> {
    let taken: Option<(Uuid,)> = sqlx::query_as(
        "INSERT INTO bus_sessions AS s (queue, session_id, holder, locked_until)
         VALUES ($1, $2, $3, clock_timestamp() + $4 * interval '1 millisecond')
         ON CONFLICT (queue, session_id) DO UPDATE
            SET holder = EXCLUDED.holder,
                locked_until = CASE WHEN s.holder = EXCLUDED.holder
                                    THEN greatest(s.locked_until, EXCLUDED.locked_until)
                                    ELSE EXCLUDED.locked_until END
          WHERE s.holder = EXCLUDED.holder OR s.locked_until <= clock_timestamp()
         RETURNING holder",
    )
    .bind(queue.as_str())
    .bind(session)
    .bind(holder)
    .bind(span.as_millis() as f64)
    .fetch_optional(&mut *conn)
    .await?;
    Ok(taken.is_some())
}

/// Extends `holder`'s lease of `session` to `until` (a renewed message lock). A lease that
/// ran out and passed to someone else stays theirs.
pub(crate) async fn renew_session<'c, E: sqlx::PgExecutor<'c>>(
    executor: E,
    queue: QueueName,
    session: &str,
    holder: Uuid,
    until: DateTime<Utc>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE bus_sessions SET locked_until = greatest(locked_until, $4)
          WHERE queue = $1 AND session_id = $2 AND holder = $3",
    )
    .bind(queue.as_str())
    .bind(session)
    .bind(holder)
    .bind(until)
    .execute(executor)
    .await?;
    Ok(())
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
                action, body, properties, enqueued_at, delivery_count, reason, description,
                session_id)
         SELECT queue, message_id, sequence_number, correlation_id, action, body, properties,
                enqueued_at, delivery_count, $2, $3, session_id
           FROM gone
         ON CONFLICT (queue, message_id) DO UPDATE
            SET sequence_number = EXCLUDED.sequence_number, body = EXCLUDED.body,
                session_id = EXCLUDED.session_id,
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
             INSERT INTO bus_messages (queue, message_id, correlation_id, action, body, properties,
                    session_id)
             SELECT queue, message_id, $3, $4, $5, $6, $7 FROM accepted",
        )
        .bind(queue.as_str())
        .bind(&message.message_id)
        .bind(&message.correlation_id)
        .bind(&message.action)
        .bind(body)
        .bind(Json(&message.properties))
        .bind(&message.session_id)
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

    async fn release_sessions(&self, queue: QueueName) -> Result<(), BusError> {
        sqlx::query("DELETE FROM bus_sessions WHERE queue = $1 AND holder = $2")
            .bind(queue.as_str())
            .bind(self.holder)
            .execute(&self.pool)
            .await?;
        Ok(())
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
            Some((until,)) => {
                if let Some(session) = &message.session_id {
                    renew_session(&self.pool, message.queue, session, self.holder, until).await?;
                }
                Ok(until)
            }
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
                    properties, enqueued_at, session_id)
             SELECT queue, message_id, correlation_id, action, body, properties, enqueued_at,
                    session_id
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
