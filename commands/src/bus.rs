//! The command bus: the one way anything changes.
//!
//! It runs a command through cqrs-es over postgres-es — load the aggregate (from its snapshot
//! plus the events after it, one query: [`crate::event_repository`]), let the aggregate
//! decide, append the events — and adds what
//! cqrs-es leaves to us:
//!
//! - **Metadata on every event**: who issued the command, the correlation id of the whole
//!   interaction, the causation id (the request or event that caused it), the command's id,
//!   its type and its idempotency key.
//! - **Bounded retries** of optimistic-concurrency conflicts, each reloading the aggregate; past
//!   the bound the caller gets [`CommandError::Conflict`]. Within one process, commands on the
//!   same stream take turns ([`crate::stream_locks`]), so conflicts arise only between replicas.
//! - **Idempotency**: a trigger records a receipt for every command in the same transaction as
//!   its events (migration `event_store`). A command repeated with the same idempotency key (or
//!   retried after an ambiguous failure) finds the receipt and gets the first result back,
//!   appending nothing.

use crate::event_repository::EventRepository;
use crate::stream_locks::StreamLocks;
use cqrs_es::persist::{PersistedEventStore, SerializedEvent};
use cqrs_es::{Aggregate, AggregateError, EventEnvelope, EventStore};
use rand::Rng;
use serde::Serialize;
use sqlx::{PgPool, Row};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use teachin_domain::actor::Actor;
use teachin_domain::error::{DomainError, ErrorKind};
use teachin_domain::services::DomainServices;
use uuid::Uuid;

/// Metadata keys written on every event.
pub mod metadata {
    pub const ISSUED_BY: &str = "issued_by";
    pub const CORRELATION_ID: &str = "correlation_id";
    pub const CAUSATION_ID: &str = "causation_id";
    pub const COMMAND_ID: &str = "command_id";
    pub const COMMAND_TYPE: &str = "command_type";
    pub const IDEMPOTENCY_KEY: &str = "idempotency_key";
}

/// Who asks, and as part of what. Built by the API per request, by a worker per message.
#[derive(Debug, Clone)]
pub struct CommandContext {
    pub issued_by: Actor,
    /// Shared by every command and event of one interaction (a request and what follows).
    pub correlation_id: Uuid,
    /// What directly caused this command: `request:<id>`, `event:<event id>`, `cli`...
    pub causation_id: String,
    /// Set by a client that may retry: the same key from the same issuer is applied once.
    pub idempotency_key: Option<String>,
}

impl CommandContext {
    /// A context that starts a new interaction.
    pub fn new(issued_by: Actor, causation_id: impl Into<String>) -> Self {
        Self {
            issued_by,
            correlation_id: Uuid::new_v4(),
            causation_id: causation_id.into(),
            idempotency_key: None,
        }
    }

    pub fn with_idempotency_key(mut self, key: impl Into<String>) -> Self {
        self.idempotency_key = Some(key.into());
        self
    }

    pub fn with_correlation_id(mut self, id: Uuid) -> Self {
        self.correlation_id = id;
        self
    }

    /// The key under which the trigger files this command's receipt (kept in step with
    /// `record_command_receipt()` in the migration).
    fn dedupe_key(&self, command_id: Uuid) -> String {
        match &self.idempotency_key {
            Some(key) => format!("idem:{}:{}", self.issued_by, key),
            None => format!("cmd:{command_id}"),
        }
    }
}

/// What a command did: the events it appended (or, for a repeat, the events the first
/// execution appended).
#[derive(Debug)]
pub struct CommandReceipt<A: Aggregate> {
    pub aggregate_id: String,
    pub events: Vec<EventEnvelope<A>>,
    /// True when this is the answer of an earlier execution of the same command.
    pub replayed: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum CommandError<E: std::error::Error> {
    /// The aggregate refused the command.
    #[error(transparent)]
    Rejected(E),
    /// Other writers kept changing the aggregate; the command was not applied.
    #[error("the {aggregate} was changed concurrently {attempts} times in a row; try again")]
    Conflict {
        aggregate: &'static str,
        attempts: u32,
    },
    /// The idempotency key was already used for a command on another aggregate.
    #[error("this idempotency key was already used for a different command")]
    IdempotencyKeyReused,
    /// The event store failed; nothing is known to have been applied.
    #[error("event store unavailable: {0}")]
    Store(String),
}

impl<E: DomainError> CommandError<E> {
    pub fn kind(&self) -> ErrorKind {
        match self {
            CommandError::Rejected(e) => e.kind(),
            CommandError::Conflict { .. } | CommandError::IdempotencyKeyReused => {
                ErrorKind::Conflict
            }
            CommandError::Store(_) => ErrorKind::Unavailable,
        }
    }
}

/// Tuning of the bus; the defaults suit both a laptop and the cloud.
#[derive(Debug, Clone, Copy)]
pub struct BusSettings {
    /// Attempts before a conflict is reported (the first try included).
    pub max_attempts: u32,
    /// A snapshot is written every this many events of one stream.
    pub snapshot_every: usize,
}

impl Default for BusSettings {
    fn default() -> Self {
        Self {
            max_attempts: 5,
            snapshot_every: 100,
        }
    }
}

/// Loads aggregates from the store (snapshot plus later events, upcast). Needs no domain
/// services, so the ports themselves can use it.
#[derive(Clone)]
pub struct AggregateReader {
    repository: EventRepository,
    snapshot_every: usize,
}

type Store<A> = PersistedEventStore<EventRepository, A>;

impl AggregateReader {
    pub fn new(pool: PgPool, settings: BusSettings) -> Self {
        Self {
            repository: EventRepository::new(pool, settings.snapshot_every),
            snapshot_every: settings.snapshot_every,
        }
    }

    fn store<A: Aggregate>(&self) -> Store<A> {
        PersistedEventStore::new_snapshot_store(self.repository.clone(), self.snapshot_every)
            .with_upcasters(teachin_domain::upcasting::upcasters())
    }

    /// An aggregate's current state (the default state when it has no events). For ports and
    /// read-your-write checks; queries are served from projections, not from this.
    pub async fn load<A: Aggregate>(&self, aggregate_id: &str) -> Result<A, String> {
        self.repository
            .load::<A>(aggregate_id)
            .await
            .map(|context| context.aggregate)
            .map_err(|e| e.to_string())
    }
}

#[derive(Clone)]
pub struct CommandBus {
    pool: PgPool,
    reader: AggregateReader,
    services: DomainServices,
    settings: BusSettings,
    /// Conflicts retried since start (each reloads and decides again): contention, for
    /// `/metrics` and the bench.
    conflict_retries: Arc<AtomicU64>,
    streams: StreamLocks,
}

impl CommandBus {
    pub fn new(pool: PgPool, services: DomainServices, settings: BusSettings) -> Self {
        Self {
            reader: AggregateReader::new(pool.clone(), settings),
            pool,
            services,
            settings,
            conflict_retries: Arc::default(),
            streams: StreamLocks::default(),
        }
    }

    /// Optimistic-concurrency conflicts this bus retried since it was built.
    pub fn conflict_retries(&self) -> u64 {
        self.conflict_retries.load(Ordering::Relaxed)
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    pub fn services(&self) -> &DomainServices {
        &self.services
    }

    pub fn reader(&self) -> &AggregateReader {
        &self.reader
    }

    /// Runs `command` against aggregate `aggregate_id` of type `A`.
    pub async fn execute<A>(
        &self,
        aggregate_id: &str,
        command: A::Command,
        context: &CommandContext,
    ) -> Result<CommandReceipt<A>, CommandError<A::Error>>
    where
        A: Aggregate<Services = DomainServices> + Clone + 'static,
        A::Command: Clone + Serialize,
    {
        let command_id = Uuid::new_v4();
        let dedupe_key = context.dedupe_key(command_id);
        let metadata = event_metadata::<A>(&command, context, command_id);
        let store = self.reader.store::<A>();
        // Commands of this process on the same stream take turns rather than conflict.
        let _turn = self.streams.turn(A::TYPE, aggregate_id).await;

        for attempt in 1..=self.settings.max_attempts {
            // A repeat of a command that already committed (same idempotency key, or our own
            // earlier attempt whose outcome we could not see) answers with the first receipt.
            if attempt > 1 || context.idempotency_key.is_some() {
                if let Some(receipt) = self
                    .find_receipt::<A>(&dedupe_key, aggregate_id, command_id)
                    .await?
                {
                    return Ok(receipt);
                }
            }

            let outcome = async {
                use cqrs_es::AggregateContext;
                let mut loaded = self
                    .reader
                    .repository
                    .load_for_command::<A>(aggregate_id)
                    .await?;
                // The sink applies each event to the aggregate it is handed, and a snapshot
                // commit applies the new events to the loaded aggregate again: deciding on a
                // copy keeps the loaded state as it was, so snapshots never double-apply.
                let mut deciding = loaded.aggregate().clone();
                let sink = cqrs_es::event_sink::EventSink::<A>::default();
                deciding
                    .handle(command.clone(), &self.services, &sink)
                    .await
                    .map_err(AggregateError::UserError)?;
                let events = sink.collect().await;
                store.commit(events, loaded, metadata.clone()).await
            }
            .await;

            match outcome {
                Ok(events) => {
                    return Ok(CommandReceipt {
                        aggregate_id: aggregate_id.to_string(),
                        events,
                        replayed: false,
                    })
                }
                Err(AggregateError::UserError(e)) => return Err(CommandError::Rejected(e)),
                Err(AggregateError::AggregateConflict) => {
                    if attempt < self.settings.max_attempts {
                        self.conflict_retries.fetch_add(1, Ordering::Relaxed);
                    }
                    tracing::debug!(
                        aggregate = A::TYPE,
                        aggregate_id,
                        attempt,
                        "conflict, retrying"
                    );
                    backoff(attempt).await;
                }
                Err(other) => {
                    // The commit may or may not have happened (a lost acknowledgement looks
                    // the same as a refused write); the receipt table knows.
                    let message = other.to_string();
                    if let Ok(Some(receipt)) = self
                        .find_receipt::<A>(&dedupe_key, aggregate_id, command_id)
                        .await
                    {
                        return Ok(receipt);
                    }
                    return Err(CommandError::Store(message));
                }
            }
        }
        Err(CommandError::Conflict {
            aggregate: A::TYPE,
            attempts: self.settings.max_attempts,
        })
    }

    async fn find_receipt<A>(
        &self,
        dedupe_key: &str,
        aggregate_id: &str,
        command_id: Uuid,
    ) -> Result<Option<CommandReceipt<A>>, CommandError<A::Error>>
    where
        A: Aggregate,
    {
        let store_err = |e: sqlx::Error| CommandError::Store(e.to_string());
        let Some(row) = sqlx::query(
            "SELECT aggregate_type, aggregate_id, first_sequence, last_sequence
               FROM command_receipts WHERE dedupe_key = $1",
        )
        .bind(dedupe_key)
        .fetch_optional(&self.pool)
        .await
        .map_err(store_err)?
        else {
            return Ok(None);
        };
        let receipt_type: String = row.get("aggregate_type");
        let receipt_id: String = row.get("aggregate_id");
        if receipt_type != A::TYPE || receipt_id != aggregate_id {
            return Err(CommandError::IdempotencyKeyReused);
        }
        let rows = sqlx::query(
            "SELECT aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata
               FROM events
              WHERE aggregate_type = $1 AND aggregate_id = $2 AND sequence BETWEEN $3 AND $4
              ORDER BY sequence",
        )
        .bind(A::TYPE)
        .bind(aggregate_id)
        .bind(row.get::<i64, _>("first_sequence"))
        .bind(row.get::<i64, _>("last_sequence"))
        .fetch_all(&self.pool)
        .await
        .map_err(store_err)?;
        let upcasters = teachin_domain::upcasting::upcasters();
        let mut events = Vec::with_capacity(rows.len());
        let mut ours = false;
        for row in rows {
            let event = teachin_domain::upcasting::upcast(serialized_event(&row), &upcasters);
            ours |= event
                .metadata
                .get(metadata::COMMAND_ID)
                .and_then(|v| v.as_str())
                == Some(command_id.to_string().as_str());
            let envelope = EventEnvelope::<A>::try_from(event)
                .map_err(|e| CommandError::Store(format!("stored event unreadable: {e}")))?;
            events.push(envelope);
        }
        Ok(Some(CommandReceipt {
            aggregate_id: aggregate_id.to_string(),
            events,
            replayed: !ours,
        }))
    }
}

fn event_metadata<A: Aggregate>(
    command: &A::Command,
    context: &CommandContext,
    command_id: Uuid,
) -> HashMap<String, String>
where
    A::Command: Serialize,
{
    let mut metadata = HashMap::from([
        (metadata::ISSUED_BY.into(), context.issued_by.to_string()),
        (
            metadata::CORRELATION_ID.into(),
            context.correlation_id.to_string(),
        ),
        (metadata::CAUSATION_ID.into(), context.causation_id.clone()),
        (metadata::COMMAND_ID.into(), command_id.to_string()),
        (
            metadata::COMMAND_TYPE.into(),
            format!("{}.{}", A::TYPE, command_name(command)),
        ),
    ]);
    if let Some(key) = &context.idempotency_key {
        metadata.insert(metadata::IDEMPOTENCY_KEY.into(), key.clone());
    }
    metadata
}

/// The variant name of an externally tagged command enum (`"Register"` for
/// `UserCommand::Register { .. }`), for the operator's view of the log.
fn command_name<C: Serialize>(command: &C) -> String {
    match serde_json::to_value(command) {
        Ok(serde_json::Value::Object(map)) => map.keys().next().cloned().unwrap_or_default(),
        Ok(serde_json::Value::String(unit)) => unit,
        _ => String::new(),
    }
}

/// Jittered exponential back-off between conflict retries: spreads competing writers apart.
async fn backoff(attempt: u32) {
    let ceiling_us = 200u64 << attempt.min(6);
    let pause = rand::thread_rng().gen_range(0..=ceiling_us);
    tokio::time::sleep(Duration::from_micros(pause)).await;
}

/// A row of `events` as cqrs-es's serialized form.
pub fn serialized_event(row: &sqlx::postgres::PgRow) -> SerializedEvent {
    SerializedEvent::new(
        row.get("aggregate_id"),
        row.get::<i64, _>("sequence") as usize,
        row.get("aggregate_type"),
        row.get("event_type"),
        row.get("event_version"),
        row.get("payload"),
        row.get("metadata"),
    )
}
