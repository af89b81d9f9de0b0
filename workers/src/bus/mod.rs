//! The message bus: one trait, two real backends (DESIGN.md decision 4).
//!
//! The roles talk to each other through four queues (the cloud architecture's Service Bus
//! queues) with **peek-lock** semantics: a receiver takes a message under a lock for a while,
//! then completes it (gone), abandons it (back in the queue, one delivery spent), renews the
//! lock while it is still working, or dead-letters it with a reason. A message whose lock runs
//! out comes back by itself, and one that has used up its deliveries is dead-lettered — so a
//! worker killed mid-message loses nothing, and a poison message cannot loop forever.
//!
//! - [`postgres::PostgresBus`] (default): tables of migration 0007, `FOR UPDATE SKIP LOCKED`.
//! - [`servicebus::ServiceBus`]: Azure Service Bus over its REST API through
//!   `azure_messaging_servicebus` 0.21, with an injectable HTTP client.
//!
//! Both pass the same contract tests (`workers/tests/bus_contract.rs`). Sending is idempotent
//! by message id (Service Bus duplicate detection; a table of accepted ids in PostgreSQL),
//! which is what lets the outbox relay resend after a crash without duplicating anything.
//!
//! **Retries back off.** A message a handler abandons does not come back at once: it waits
//! the delay the handler asked for (a `Retry-After`), else an exponential backoff with jitter
//! on its delivery count ([`RetryPolicy`]: 2 s doubling to 5 minutes). And it is
//! dead-lettered for it only once its retry budget is spent in time as well as in count —
//! `max_delivery_count` deliveries *and* `min_retry_span` since it was first enqueued — so a
//! short outage (an SMTP relay, the model API) delays the messages in flight instead of
//! burning their deliveries in a second. The dead letter keeps the last error.
//!
//! **Sessions.** A message may carry a session key ([`OutgoingMessage::with_session_id`];
//! `manager-callback-session-queue` keys its frames by tutor session). A receiver — one bus
//! instance, i.e. one process — that takes a message of session S holds S for the lock's
//! duration, renewed with the message's lock; meanwhile no other receiver gets a message of
//! S, and the holder gets S's messages in the order they were sent. So two manager replicas
//! never split one reply stream. PostgreSQL: a lease table (`bus_sessions`) the receive
//! query respects; Service Bus: the real `SessionId` on the wire, and the same leases on the
//! receive side, because the REST API has no session receiver (see [`servicebus`]).

pub mod metrics;
pub mod peek;
pub mod postgres;
pub mod servicebus;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

/// The queues of the cloud architecture.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum QueueName {
    /// Manager → engine: AI work (tutor replies, generation).
    Engine,
    /// Manager → accessor: side effects (email, avatar clean-up).
    Accessor,
    /// Engine and accessor → manager: results, turned into commands.
    ManagerCallback,
    /// Engine → manager: the frames of a streamed answer, in sequence.
    ManagerCallbackSession,
}

impl QueueName {
    pub const ALL: [QueueName; 4] = [
        QueueName::Engine,
        QueueName::Accessor,
        QueueName::ManagerCallback,
        QueueName::ManagerCallbackSession,
    ];

    /// Whether the queue's messages carry a session key, and a receiver holding a message of
    /// a session holds the whole session (see [`OutgoingMessage::session_id`]).
    pub fn sessionful(self) -> bool {
        matches!(self, QueueName::ManagerCallbackSession)
    }

    /// The queue's name on the broker and in the tables.
    pub fn as_str(self) -> &'static str {
        match self {
            QueueName::Engine => "engine-queue",
            QueueName::Accessor => "accessor-queue",
            QueueName::ManagerCallback => "manager-callback-queue",
            QueueName::ManagerCallbackSession => "manager-callback-session-queue",
        }
    }
}

impl fmt::Display for QueueName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Serialized by its broker name (`engine-queue`).
impl Serialize for QueueName {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl FromStr for QueueName {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        QueueName::ALL
            .into_iter()
            .find(|q| q.as_str() == s)
            .ok_or_else(|| {
                format!(
                    "`{s}` is not a queue; known: {}",
                    QueueName::ALL.map(QueueName::as_str).join(", ")
                )
            })
    }
}

/// A message to send: the envelope every queue carries.
#[derive(Debug, Clone, PartialEq)]
pub struct OutgoingMessage {
    /// Unique per queue: a second send with the same id enqueues nothing.
    pub message_id: String,
    /// Ties the message to the request it serves (the command's correlation id).
    pub correlation_id: Option<String>,
    /// What the receiver should do; consumers route on it.
    pub action: String,
    /// The action's input, as JSON.
    pub payload: serde_json::Value,
    /// Application properties. Names are lower case: on Service Bus they travel as HTTP
    /// headers, whose names are not case-sensitive.
    pub properties: BTreeMap<String, String>,
    /// The session the message belongs to (Service Bus's `SessionId`): while a receiver
    /// holds a message of a session, no other receiver gets a message of that session, and a
    /// session's messages are taken in the order they were sent. `manager-callback-session-queue`
    /// keys its frames by tutor session, so one manager replica gets a whole reply stream.
    pub session_id: Option<String>,
}

impl OutgoingMessage {
    pub fn new(
        message_id: impl Into<String>,
        action: impl Into<String>,
        payload: serde_json::Value,
    ) -> Self {
        OutgoingMessage {
            message_id: message_id.into(),
            correlation_id: None,
            action: action.into(),
            payload,
            properties: BTreeMap::new(),
            session_id: None,
        }
    }

    /// In session `id` (see [`OutgoingMessage::session_id`]).
    pub fn with_session_id(mut self, id: impl Into<String>) -> Self {
        self.session_id = Some(id.into());
        self
    }

    pub fn with_correlation_id(mut self, id: impl Into<String>) -> Self {
        self.correlation_id = Some(id.into());
        self
    }

    pub fn with_property(mut self, name: &str, value: impl Into<String>) -> Self {
        self.properties
            .insert(name.to_ascii_lowercase(), value.into());
        self
    }

    /// The payload as the text a backend stores, once the message is known to be sendable.
    pub(crate) fn checked_body(&self) -> Result<String, BusError> {
        if self.message_id.is_empty() {
            return Err(BusError::Invalid("the message id is empty".into()));
        }
        serde_json::to_string(&self.payload).map_err(|e| BusError::Invalid(e.to_string()))
    }
}

/// How an abandoned message comes back.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Abandon {
    /// Not before this long from now. `None`: the bus's backoff for the delivery count.
    pub delay: Option<Duration>,
    /// Why the delivery failed; kept with the message and, if it is dead-lettered, in the
    /// dead letter's description.
    pub error: Option<String>,
}

impl Abandon {
    /// Back after the bus's backoff for this delivery.
    pub fn backoff() -> Self {
        Abandon::default()
    }

    /// Back as soon as possible (handlers should rather let the bus back off).
    pub fn now() -> Self {
        Abandon::after(Duration::ZERO)
    }

    /// Back after `delay` (what a `Retry-After` asked for).
    pub fn after(delay: Duration) -> Self {
        Abandon {
            delay: Some(delay),
            error: None,
        }
    }

    pub fn with_error(mut self, error: impl Into<String>) -> Self {
        self.error = Some(error.into());
        self
    }
}

/// When an abandoned message comes back, and when it has had all its chances.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// The delay after the first delivery; it doubles with each delivery after that.
    pub backoff_base: Duration,
    /// The longest backoff.
    pub backoff_cap: Duration,
    /// A message abandoned with its deliveries used up is still retried (at the cap) until
    /// this long after it was first enqueued: the budget is spent in time as well as in count.
    pub min_retry_span: Duration,
}

impl Default for RetryPolicy {
    /// 2 s doubling to 5 minutes; ten deliveries take about 13 minutes, so the time budget
    /// (20 minutes) keeps a message through an outage of that order whatever its count.
    fn default() -> Self {
        RetryPolicy {
            backoff_base: Duration::from_secs(2),
            backoff_cap: Duration::from_secs(300),
            min_retry_span: Duration::from_secs(20 * 60),
        }
    }
}

impl RetryPolicy {
    /// The delay after delivery `delivery` (1 for the first) failed: `base · 2^(delivery-1)`
    /// capped, then jittered into its upper half ("equal jitter"), so messages that failed
    /// together do not all come back together, and none comes back sooner than half its step.
    pub fn backoff(&self, delivery: u32) -> Duration {
        let doublings = delivery.saturating_sub(1).min(30);
        let step = self
            .backoff_base
            .saturating_mul(1u32 << doublings)
            .min(self.backoff_cap);
        let half = step / 2;
        // Jitter from a v4 UUID's random bits: no generator of our own to seed or share.
        let unit = (uuid::Uuid::new_v4().as_u128() as u64 >> 11) as f64 / (1u64 << 53) as f64;
        half + half.mul_f64(unit)
    }

    /// Whether a message abandoned on delivery `deliveries`, retried since `since`, has had
    /// all its chances: its deliveries used up *and* the retry span passed.
    pub fn spent(
        &self,
        deliveries: u32,
        max_delivery_count: u32,
        since: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> bool {
        let span = (now - since).to_std().unwrap_or_default();
        deliveries >= max_delivery_count && span >= self.min_retry_span
    }

    /// The dead letter's description for a message whose budget is spent.
    pub(crate) fn spent_description(
        &self,
        deliveries: u32,
        max_delivery_count: u32,
        since: DateTime<Utc>,
        now: DateTime<Utc>,
        last_error: Option<&str>,
    ) -> String {
        let span = (now - since).num_seconds();
        let mut text = format!(
            "abandoned on delivery {deliveries} of at most {max_delivery_count}, {span} s after \
             its first try (at least {} s)",
            self.min_retry_span.as_secs()
        );
        if let Some(error) = last_error {
            text.push_str("; last error: ");
            text.push_str(error);
        }
        text
    }
}

/// The property a resubmitted copy carries when the backend had to give it a new message id
/// (Service Bus's duplicate detection would drop the old one).
pub const ORIGINAL_MESSAGE_ID: &str = "original-message-id";

/// A message taken under a lock. Settle it with the bus that gave it out.
pub struct ReceivedMessage {
    pub queue: QueueName,
    pub message_id: String,
    pub correlation_id: Option<String>,
    pub action: String,
    /// The payload as sent (normally JSON; see [`ReceivedMessage::payload`]).
    pub body: String,
    pub properties: BTreeMap<String, String>,
    /// The session it was sent in; its receiver holds that session while it holds the message.
    pub session_id: Option<String>,
    pub enqueued_at: DateTime<Utc>,
    /// 1 on the first delivery; abandoning or letting the lock expire adds one.
    pub delivery_count: u32,
    pub sequence_number: i64,
    /// When the lock ends unless renewed.
    pub locked_until: DateTime<Utc>,
    pub(crate) lock: Lock,
}

/// What the backend needs to settle a message.
pub(crate) enum Lock {
    Postgres { token: uuid::Uuid },
    ServiceBus(Box<servicebus::ServiceBusLock>),
}

impl fmt::Debug for ReceivedMessage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReceivedMessage")
            .field("queue", &self.queue)
            .field("message_id", &self.message_id)
            .field("action", &self.action)
            .field("session_id", &self.session_id)
            .field("delivery_count", &self.delivery_count)
            .field("sequence_number", &self.sequence_number)
            .field("locked_until", &self.locked_until)
            .finish_non_exhaustive()
    }
}

impl ReceivedMessage {
    /// The payload as `T`; an error names what does not fit.
    pub fn payload<T: serde::de::DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        serde_json::from_str(&self.body)
    }

    /// What the message is known by for idempotency: its original id if it is a resubmitted
    /// copy, else its own.
    pub fn dedupe_key(&self) -> &str {
        self.properties
            .get(ORIGINAL_MESSAGE_ID)
            .map(String::as_str)
            .unwrap_or(&self.message_id)
    }
}

/// A queue at a glance, for `teachin queues status` and the autoscaler's view.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct QueueStats {
    pub queue: QueueName,
    /// Messages waiting or locked (not dead-lettered).
    pub depth: i64,
    /// When the oldest message still in the queue (waiting, locked or waiting out a retry's
    /// backoff) was first enqueued; `None` when the queue is empty. On Service Bus, read by an
    /// AMQP peek of at most [`peek::PEEK_LIMIT`] messages: past that, never older than the
    /// truth (see [`peek`]).
    pub oldest_enqueued_at: Option<DateTime<Utc>>,
    pub dead_letters: i64,
}

impl QueueStats {
    /// How long the oldest message has been waiting.
    pub fn oldest_age(&self) -> Option<Duration> {
        let now = Utc::now();
        self.oldest_enqueued_at
            .map(|t| (now - t).to_std().unwrap_or_default())
    }
}

/// A message taken out of circulation, and why.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DeadLetter {
    pub queue: QueueName,
    pub message_id: String,
    pub correlation_id: Option<String>,
    pub action: String,
    pub body: String,
    pub properties: BTreeMap<String, String>,
    pub enqueued_at: Option<DateTime<Utc>>,
    pub delivery_count: u32,
    pub reason: String,
    pub description: String,
}

/// Dead-letter reasons the bus and the consumer loop give.
pub mod reasons {
    /// Delivered as many times as allowed without being completed (Service Bus's own word).
    pub const MAX_DELIVERY_COUNT_EXCEEDED: &str = "MaxDeliveryCountExceeded";
    /// No handler is registered for the message's action.
    pub const UNKNOWN_ACTION: &str = "UnknownAction";
    /// The payload does not decode into what the action's handler takes.
    pub const MALFORMED_PAYLOAD: &str = "MalformedPayload";
    /// The handler refused the message for good (validation, a request past its time).
    pub const REJECTED: &str = "Rejected";
}

#[derive(Debug, thiserror::Error)]
pub enum BusError {
    /// The lock is gone (expired, or the message was settled): another receiver may have it.
    #[error("the message's lock was lost")]
    LockLost,
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("service bus: {0}")]
    ServiceBus(String),
    #[error("the message cannot be sent: {0}")]
    Invalid(String),
}

/// The bus. Every operation is safe to call from many tasks and processes at once.
#[async_trait]
pub trait Bus: Send + Sync {
    /// Enqueues `message`, unless a message with its id was already accepted by `queue`.
    async fn send(&self, queue: QueueName, message: OutgoingMessage) -> Result<(), BusError>;

    /// Takes the next available message under a lock, waiting up to `wait` for one.
    async fn receive(
        &self,
        queue: QueueName,
        wait: Duration,
    ) -> Result<Option<ReceivedMessage>, BusError>;

    /// Done: the message leaves the queue. [`BusError::LockLost`] if the lock ran out first.
    async fn complete(&self, message: &ReceivedMessage) -> Result<(), BusError>;

    /// Not done: the message is available again after `how`'s delay (else the backoff of
    /// the bus's [`RetryPolicy`]), or dead-lettered with the last error if its retry budget
    /// is spent in count and in time.
    async fn abandon(&self, message: &ReceivedMessage, how: Abandon) -> Result<(), BusError>;

    /// Done, and remembered as done by `consumer` (`bus_processed_messages`, keyed by `key`,
    /// in `pool`), so that a redelivery is not handled again. The PostgreSQL backend writes
    /// the record and deletes the message in one transaction of its own database; the record
    /// is kept even when the lock was lost (the work *was* done), and the answer is then
    /// [`BusError::LockLost`]. Other backends record, then complete.
    async fn complete_recorded(
        &self,
        message: &ReceivedMessage,
        pool: &sqlx::PgPool,
        consumer: &str,
        key: &str,
    ) -> Result<(), BusError> {
        record_processed(pool, consumer, key).await?;
        self.complete(message).await
    }

    /// Gives up the sessions this receiver holds on `queue` (a graceful shutdown, with
    /// nothing of theirs in hand any more), so another receiver takes their next messages at
    /// once instead of after the leases run out.
    async fn release_sessions(&self, queue: QueueName) -> Result<(), BusError> {
        let _ = queue;
        Ok(())
    }

    /// Keeps the lock for another lock duration; returns the new deadline.
    async fn renew_lock(&self, message: &ReceivedMessage) -> Result<DateTime<Utc>, BusError>;

    /// Takes the message out of circulation with `reason` (one of [`reasons`]) and a
    /// human description.
    async fn dead_letter(
        &self,
        message: &ReceivedMessage,
        reason: &str,
        description: &str,
    ) -> Result<(), BusError>;

    async fn stats(&self, queue: QueueName) -> Result<QueueStats, BusError>;

    /// Up to `limit` dead letters of `queue`, oldest first.
    async fn dead_letters(
        &self,
        queue: QueueName,
        limit: usize,
    ) -> Result<Vec<DeadLetter>, BusError>;

    /// Puts a dead letter back in its queue with a fresh delivery count. `false` if there is
    /// no dead letter with that id.
    async fn resubmit(&self, queue: QueueName, message_id: &str) -> Result<bool, BusError>;
}

/// Remembers that `consumer` finished the message known by `key`.
pub(crate) async fn record_processed<'c, E>(
    executor: E,
    consumer: &str,
    key: &str,
) -> Result<(), sqlx::Error>
where
    E: sqlx::PgExecutor<'c>,
{
    sqlx::query(
        "INSERT INTO bus_processed_messages (consumer, message_key) VALUES ($1, $2)
         ON CONFLICT DO NOTHING",
    )
    .bind(consumer)
    .bind(key)
    .execute(executor)
    .await?;
    Ok(())
}

/// How many dead letters `resubmit_all` handles per round.
const RESUBMIT_PAGE: usize = 100;

/// Resubmits every dead letter of `queue`; returns how many.
pub async fn resubmit_all(bus: &dyn Bus, queue: QueueName) -> Result<usize, BusError> {
    let mut done = 0;
    let mut seen = std::collections::HashSet::new();
    loop {
        let page = bus.dead_letters(queue, RESUBMIT_PAGE).await?;
        let fresh: Vec<_> = page
            .into_iter()
            .filter(|d| seen.insert(d.message_id.clone()))
            .collect();
        if fresh.is_empty() {
            return Ok(done);
        }
        for letter in fresh {
            if bus.resubmit(queue, &letter.message_id).await? {
                done += 1;
            }
        }
    }
}

/// Which backend, and its settings (from `TEACHIN_BUS` and friends).
#[derive(Debug, Clone)]
pub enum BusConfig {
    Postgres(postgres::PostgresBusConfig),
    ServiceBus(servicebus::ServiceBusConfig),
}

impl BusConfig {
    pub fn backend_name(&self) -> &'static str {
        match self {
            BusConfig::Postgres(_) => "postgres",
            BusConfig::ServiceBus(_) => "servicebus",
        }
    }
}

/// The configured bus. The Service Bus backend also uses `pool`, to park what consumers
/// dead-letter explicitly.
pub fn connect(config: &BusConfig, pool: sqlx::PgPool) -> Result<Arc<dyn Bus>, BusError> {
    Ok(match config {
        BusConfig::Postgres(settings) => {
            Arc::new(postgres::PostgresBus::new(pool, settings.clone()))
        }
        BusConfig::ServiceBus(settings) => Arc::new(servicebus::ServiceBus::new(
            settings.clone(),
            servicebus::ServiceBus::default_http_client(),
            pool,
        )?),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_from_the_base_to_the_cap_with_jitter_in_the_upper_half() {
        let policy = RetryPolicy::default();
        for (delivery, step) in [(1, 2), (2, 4), (3, 8), (8, 256), (9, 300), (40, 300)] {
            let step = Duration::from_secs(step);
            for _ in 0..50 {
                let delay = policy.backoff(delivery);
                assert!(delay >= step / 2 && delay <= step, "{delivery}: {delay:?}");
            }
        }
        // Jittered: messages that failed together do not all come back together.
        let delays: std::collections::HashSet<_> = (0..20).map(|_| policy.backoff(5)).collect();
        assert!(delays.len() > 1);
    }

    #[test]
    fn the_budget_is_spent_in_count_and_in_time() {
        let policy = RetryPolicy {
            min_retry_span: Duration::from_secs(60),
            ..RetryPolicy::default()
        };
        let since = Utc::now();
        let later = since + chrono::Duration::seconds(61);
        assert!(!policy.spent(9, 10, since, later), "deliveries left");
        assert!(!policy.spent(10, 10, since, since), "time left");
        assert!(policy.spent(10, 10, since, later));
        let text = policy.spent_description(10, 10, since, later, Some("451 busy"));
        assert!(text.contains("delivery 10 of at most 10"), "{text}");
        assert!(text.ends_with("last error: 451 busy"), "{text}");
    }
}
