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

pub mod metrics;
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
        }
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
    /// The oldest message still in the queue; `None` when empty or when the backend cannot
    /// tell (the Service Bus REST API does not expose it).
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

    /// Not done: the message is available again at once (or dead-lettered if that was its
    /// last delivery).
    async fn abandon(&self, message: &ReceivedMessage) -> Result<(), BusError>;

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
