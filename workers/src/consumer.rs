//! The consumer loop: takes messages from one queue and hands each to the handler of its
//! action, settling it by the outcome.
//!
//! Why a loop of our own rather than a handler per role: every consumer needs the same care,
//! and getting it wrong loses or repeats work.
//! - **Routing by action.** A message whose action has no handler, or whose payload does not
//!   decode into what the handler takes, can never succeed: it is dead-lettered at once with
//!   the reason (`UnknownAction`, `MalformedPayload`), not retried until the broker gives up.
//! - **Idempotency by message id.** At-least-once delivery means a message can come again
//!   after it was handled (a lost completion, a relay resend). `bus_processed_messages`
//!   remembers what this consumer finished, and is checked before a handler runs; a repeat is
//!   completed without running the handler. On the PostgreSQL bus the record is written in
//!   the completion's transaction ([`Bus::complete_recorded`]). (A crash between the
//!   handler's effects and that record still repeats the handler once, so handlers that
//!   change state pass the message id on as their command's idempotency key, and email
//!   carries it as its `Message-ID`.)
//! - **Locks outlive slow handlers.** While a handler runs, its message's lock is renewed at a
//!   third of the lock's span, so an LLM call longer than the lock is not handed to a second
//!   worker meanwhile.
//! - **A handler without its lock stops.** If a renewal says the lock is gone, or no renewal
//!   has succeeded by shortly before the lock would run out (a partition from the broker),
//!   the handler's future is dropped — cancelled at its next await — so it cannot finish a
//!   side effect that the message's next holder is also about to perform.
//! - **Failures.** `Retry` abandons, and the bus brings the message back after a backoff (or
//!   after the handler's `RetryAfter`), dead-lettering it once its retry budget is spent in
//!   count and time; `Reject` dead-letters with the handler's reason; a handler that panics
//!   leaves the message locked, and the lock's expiry brings it back.
//! - **Graceful shutdown.** On the signal the loop stops taking messages and waits for the
//!   handlers in flight (up to a grace period, after which their locks expire instead); once
//!   they are done, a consumer of a queue with sessions gives up the sessions it held.

use crate::bus::{reasons, Abandon, Bus, BusError, QueueName, ReceivedMessage};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::de::DeserializeOwned;
use sqlx::PgPool;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;
use tokio::time::Instant;

/// What a handler knows about the message besides its payload.
#[derive(Debug, Clone)]
pub struct MessageContext {
    pub queue: QueueName,
    pub message_id: String,
    /// The id duplicates are recognised by (the original id of a resubmitted copy).
    pub dedupe_key: String,
    pub correlation_id: Option<String>,
    pub action: String,
    pub delivery_count: u32,
    pub enqueued_at: DateTime<Utc>,
    pub properties: BTreeMap<String, String>,
}

/// Why a handler did not finish.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HandlerError {
    /// Worth another try later (a timeout, a 5xx): the message is abandoned, and the bus
    /// brings it back after its backoff.
    #[error("retry: {0}")]
    Retry(String),
    /// Worth another try, not before `after` (a 429's `Retry-After`): abandoned with that
    /// delay.
    #[error("retry in {after:?}: {why}")]
    RetryAfter { why: String, after: Duration },
    /// Can never succeed (validation, a request past its time): dead-lettered with this.
    #[error("rejected: {0}")]
    Reject(String),
}

/// Handles one action.
#[async_trait]
pub trait Handler: Send + Sync + 'static {
    /// What the action's payload decodes into.
    type Payload: DeserializeOwned + Send + 'static;

    async fn handle(
        &self,
        payload: Self::Payload,
        context: &MessageContext,
    ) -> Result<(), HandlerError>;
}

/// A handler with its payload type erased, so handlers of any payload share one table.
#[async_trait]
trait Route: Send + Sync {
    async fn run(&self, message: &ReceivedMessage, context: &MessageContext) -> Outcome;
}

struct Typed<H>(H);

#[async_trait]
impl<H: Handler> Route for Typed<H> {
    async fn run(&self, message: &ReceivedMessage, context: &MessageContext) -> Outcome {
        let payload = match message.payload::<H::Payload>() {
            Ok(payload) => payload,
            Err(error) => {
                return Outcome::DeadLetter {
                    reason: reasons::MALFORMED_PAYLOAD,
                    description: format!(
                        "the payload of {} does not decode: {error}",
                        context.action
                    ),
                }
            }
        };
        match self.0.handle(payload, context).await {
            Ok(()) => Outcome::Done,
            Err(HandlerError::Retry(why)) => Outcome::Retry { why, after: None },
            Err(HandlerError::RetryAfter { why, after }) => Outcome::Retry {
                why,
                after: Some(after),
            },
            Err(HandlerError::Reject(why)) => Outcome::DeadLetter {
                reason: reasons::REJECTED,
                description: why,
            },
        }
    }
}

enum Outcome {
    Done,
    Retry {
        why: String,
        after: Option<Duration>,
    },
    DeadLetter {
        reason: &'static str,
        description: String,
    },
    /// The lock was lost while the handler ran, which was cancelled.
    LockLost,
}

/// How one message was settled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Settled {
    /// Handled and completed.
    Completed,
    /// Already handled before: completed without running the handler.
    Duplicate,
    /// Abandoned for another try.
    Abandoned {
        why: String,
    },
    DeadLettered {
        reason: String,
        description: String,
    },
    /// The lock was gone while handling (the handler was cancelled) or when settling; the
    /// message will come again.
    LockLost,
}

#[derive(Debug, Clone)]
pub struct ConsumerConfig {
    /// Messages handled at once by this process.
    pub concurrency: usize,
    /// How long one receive waits for a message (also the longest a shutdown waits for it).
    pub receive_wait: Duration,
    /// Renew locks at least this often while a handler runs (and at a third of the lock's
    /// span, if that is sooner).
    pub renew_every: Duration,
    /// How long shutdown waits for the handlers in flight.
    pub shutdown_grace: Duration,
    /// Pause after a receive failed (the bus is unreachable), doubling up to 30 s.
    pub error_pause: Duration,
}

impl Default for ConsumerConfig {
    fn default() -> Self {
        ConsumerConfig {
            concurrency: 5,
            receive_wait: Duration::from_secs(5),
            renew_every: Duration::from_secs(20),
            shutdown_grace: Duration::from_secs(30),
            error_pause: Duration::from_millis(500),
        }
    }
}

/// A consumer of one queue. Cheap to clone; clones share handlers.
#[derive(Clone)]
pub struct Consumer {
    name: String,
    queue: QueueName,
    bus: Arc<dyn Bus>,
    pool: PgPool,
    routes: Arc<HashMap<String, Arc<dyn Route>>>,
    config: ConsumerConfig,
}

impl Consumer {
    /// `name` identifies this consumer in `bus_processed_messages` (one per queue and role).
    pub fn new(name: impl Into<String>, queue: QueueName, bus: Arc<dyn Bus>, pool: PgPool) -> Self {
        Consumer {
            name: name.into(),
            queue,
            bus,
            pool,
            routes: Arc::new(HashMap::new()),
            config: ConsumerConfig::default(),
        }
    }

    pub fn with_config(mut self, config: ConsumerConfig) -> Self {
        self.config = config;
        self
    }

    /// Routes `action` to `handler`.
    pub fn on<H: Handler>(mut self, action: impl Into<String>, handler: H) -> Self {
        Arc::make_mut(&mut self.routes).insert(action.into(), Arc::new(Typed(handler)));
        self
    }

    pub fn queue(&self) -> QueueName {
        self.queue
    }

    /// Takes at most one message (waiting up to `wait`) and handles it to the end.
    pub async fn process_one(&self, wait: Duration) -> Result<Option<Settled>, BusError> {
        match self.bus.receive(self.queue, wait).await? {
            Some(message) => Ok(Some(self.process(message).await?)),
            None => Ok(None),
        }
    }

    /// Consumes until `shutdown` turns true (or its sender is dropped), then lets the
    /// handlers in flight finish within the grace period.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let permits = Arc::new(Semaphore::new(self.config.concurrency.max(1)));
        let mut in_flight = JoinSet::new();
        let mut pause = self.config.error_pause;
        loop {
            while let Some(done) = in_flight.try_join_next() {
                report(&self, done);
            }
            if *shutdown.borrow() {
                break;
            }
            let permit = tokio::select! {
                permit = permits.clone().acquire_owned() => permit.expect("never closed"),
                changed = shutdown.changed() => {
                    // A dropped sender means nobody can stop us later: stop now.
                    if changed.is_err() {
                        break;
                    }
                    continue;
                }
            };
            match self.bus.receive(self.queue, self.config.receive_wait).await {
                Ok(Some(message)) => {
                    pause = self.config.error_pause;
                    let consumer = self.clone();
                    in_flight.spawn(async move {
                        let settled = consumer.process(message).await;
                        drop(permit);
                        settled
                    });
                }
                Ok(None) => {}
                Err(error) => {
                    tracing::warn!(consumer = %self.name, queue = %self.queue, %error, "receive failed; retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(pause) => {}
                        _ = shutdown.changed() => {}
                    }
                    pause = (pause * 2).min(Duration::from_secs(30));
                }
            }
        }
        let drained = tokio::time::timeout(self.config.shutdown_grace, async {
            while let Some(done) = in_flight.join_next().await {
                report(&self, done);
            }
        })
        .await;
        if drained.is_err() {
            tracing::warn!(
                consumer = %self.name,
                left = in_flight.len(),
                "shutdown grace ran out; those messages come back when their locks expire"
            );
            in_flight.shutdown().await;
        } else if self.queue.sessionful() {
            // Nothing of ours is in hand: the sessions we held go to another replica now,
            // not when their leases run out (a handler still running keeps them, so that
            // its session's later messages do not overtake what it holds).
            if let Err(error) = self.bus.release_sessions(self.queue).await {
                tracing::warn!(consumer = %self.name, %error,
                    "releasing the sessions failed; they pass on when their leases run out");
            }
        }
    }

    /// Handles a message already received from this consumer's queue, to the end.
    pub async fn process(&self, message: ReceivedMessage) -> Result<Settled, BusError> {
        let context = MessageContext {
            queue: message.queue,
            message_id: message.message_id.clone(),
            dedupe_key: message.dedupe_key().to_string(),
            correlation_id: message.correlation_id.clone(),
            action: message.action.clone(),
            delivery_count: message.delivery_count,
            enqueued_at: message.enqueued_at,
            properties: message.properties.clone(),
        };
        if self.already_processed(&context.dedupe_key).await? {
            return self.settle_done(&message, Settled::Duplicate).await;
        }
        let Some(route) = self.routes.get(&message.action).cloned() else {
            let description = format!(
                "no handler for action `{}` on {} ({})",
                message.action, self.queue, self.name
            );
            return self
                .dead_letter(&message, reasons::UNKNOWN_ACTION, description)
                .await;
        };

        let outcome = self.run_while_locked(&route, &message, &context).await;
        match outcome {
            Outcome::Done => {
                match self
                    .bus
                    .complete_recorded(&message, &self.pool, &self.name, &context.dedupe_key)
                    .await
                {
                    Ok(()) => Ok(Settled::Completed),
                    // Done and recorded, but the lock ran out: the redelivery will be
                    // completed as a duplicate.
                    Err(BusError::LockLost) => Ok(Settled::LockLost),
                    Err(e) => Err(e),
                }
            }
            Outcome::Retry { why, after } => {
                tracing::info!(consumer = %self.name, message_id = %context.message_id,
                    delivery = context.delivery_count, %why, ?after, "handler asked for a retry");
                let how = Abandon {
                    delay: after,
                    error: Some(why.clone()),
                };
                match self.bus.abandon(&message, how).await {
                    Ok(()) => Ok(Settled::Abandoned { why }),
                    Err(BusError::LockLost) => Ok(Settled::LockLost),
                    Err(e) => Err(e),
                }
            }
            Outcome::LockLost => Ok(Settled::LockLost),
            Outcome::DeadLetter {
                reason,
                description,
            } => self.dead_letter(&message, reason, description).await,
        }
    }

    /// Runs the handler while renewing the message's lock, and cancels it (drops its future)
    /// as soon as the lock is known lost, or is about to run out without a renewal having
    /// succeeded. The deadline is kept on this process's monotonic clock, from when each
    /// successful renewal was *asked* (the broker extended the lock no earlier), less a
    /// margin, so the handler stops before anyone else can take the message.
    async fn run_while_locked(
        &self,
        route: &Arc<dyn Route>,
        message: &ReceivedMessage,
        context: &MessageContext,
    ) -> Outcome {
        let handler = route.run(message, context);
        tokio::pin!(handler);
        let span = (message.locked_until - Utc::now())
            .to_std()
            .unwrap_or(Duration::from_secs(1));
        let every = self
            .config
            .renew_every
            .min(span / 3)
            .max(Duration::from_millis(100));
        let margin = (span / 10).min(Duration::from_secs(2));
        let started = Instant::now();
        let mut held_until = started + span.saturating_sub(margin);
        let mut next_renewal = started + every;
        loop {
            tokio::select! {
                // A handler that has finished wins over a deadline reached at the same time:
                // its side effect happened, and its record must be written.
                biased;
                outcome = &mut handler => return outcome,
                _ = tokio::time::sleep_until(held_until) => {
                    tracing::warn!(consumer = %self.name, message_id = %context.message_id,
                        "the lock is running out without a renewal; cancelling the handler");
                    return Outcome::LockLost;
                }
                _ = tokio::time::sleep_until(next_renewal) => {
                    let asked = Instant::now();
                    match tokio::time::timeout_at(held_until, self.bus.renew_lock(message)).await {
                        Ok(Ok(_)) => {
                            held_until = asked + span.saturating_sub(margin);
                            next_renewal = asked + every;
                        }
                        Ok(Err(BusError::LockLost)) => {
                            tracing::warn!(consumer = %self.name, message_id = %context.message_id,
                                "the lock was lost; cancelling the handler (the message comes again)");
                            return Outcome::LockLost;
                        }
                        Ok(Err(error)) => {
                            // Maybe passing: try again soon, until the deadline says otherwise.
                            tracing::warn!(consumer = %self.name, message_id = %context.message_id, %error,
                                "lock renewal failed; retrying");
                            next_renewal = Instant::now() + (every / 4).max(Duration::from_millis(50));
                        }
                        Err(_) => {
                            tracing::warn!(consumer = %self.name, message_id = %context.message_id,
                                "lock renewal did not answer before the lock ran out; cancelling the handler");
                            return Outcome::LockLost;
                        }
                    }
                }
            }
        }
    }

    async fn already_processed(&self, key: &str) -> Result<bool, BusError> {
        Ok(sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM bus_processed_messages
                             WHERE consumer = $1 AND message_key = $2)",
        )
        .bind(&self.name)
        .bind(key)
        .fetch_one(&self.pool)
        .await?)
    }

    async fn settle_done(
        &self,
        message: &ReceivedMessage,
        settled: Settled,
    ) -> Result<Settled, BusError> {
        match self.bus.complete(message).await {
            Ok(()) => Ok(settled),
            // Done, but the lock ran out: the redelivery will be completed as a duplicate.
            Err(BusError::LockLost) => Ok(Settled::LockLost),
            Err(e) => Err(e),
        }
    }

    async fn dead_letter(
        &self,
        message: &ReceivedMessage,
        reason: &str,
        description: String,
    ) -> Result<Settled, BusError> {
        tracing::warn!(consumer = %self.name, queue = %self.queue, message_id = %message.message_id,
            action = %message.action, %reason, %description, "dead-lettering");
        match self.bus.dead_letter(message, reason, &description).await {
            Ok(()) => Ok(Settled::DeadLettered {
                reason: reason.to_string(),
                description,
            }),
            Err(BusError::LockLost) => Ok(Settled::LockLost),
            Err(e) => Err(e),
        }
    }
}

fn report(consumer: &Consumer, done: Result<Result<Settled, BusError>, tokio::task::JoinError>) {
    match done {
        Ok(Ok(settled)) => {
            tracing::debug!(consumer = %consumer.name, ?settled, "message settled")
        }
        Ok(Err(error)) => {
            tracing::warn!(consumer = %consumer.name, %error, "settling failed; the lock's expiry brings the message back")
        }
        Err(error) => {
            tracing::error!(consumer = %consumer.name, %error, "a handler panicked; the lock's expiry brings the message back")
        }
    }
}

/// Forgets processed-message records older than `before` (a cron job's work); returns how
/// many. Keep them longer than a message can take to come back.
pub async fn purge_processed(pool: &PgPool, before: DateTime<Utc>) -> Result<u64, sqlx::Error> {
    Ok(
        sqlx::query("DELETE FROM bus_processed_messages WHERE processed_at < $1")
            .bind(before)
            .execute(pool)
            .await?
            .rows_affected(),
    )
}
