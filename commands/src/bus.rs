//! The command bus: the one way anything changes.
//!
//! A command is queued on its stream ([`crate::stream_queues`]); the stream's worker takes
//! what has queued up as a batch, loads the aggregate once (from the cache, or its snapshot
//! plus the events after it: [`crate::event_repository`]), lets the aggregate decide each
//! command on the state the previous one left, and appends every decided event in one
//! statement. Under no load a batch is one command; a hot stream (a class, a shared deck)
//! takes a batch per commit instead of a command per commit. Around that the bus adds:
//!
//! - **Metadata on every event**: who issued the command, the correlation id of the whole
//!   interaction, the causation id (the request or event that caused it), the command's id,
//!   its type and its idempotency key. Each command of a batch keeps its own.
//! - **Each caller its own answer**: a refused command answers alone with its error and adds
//!   nothing; the others' events stand. Answers are sent only once the batch's append is
//!   known, because a refusal decided after other commands' events is only true if those
//!   events are stored.
//! - **Bounded retries** of optimistic-concurrency conflicts (another replica appended first):
//!   the batch is reloaded and decided again; past the bound each caller gets
//!   [`CommandError::Conflict`].
//! - **Idempotency**: a trigger records a receipt for every command in the same statement as
//!   its events (migration `event_store`). A command repeated with the same idempotency key
//!   finds the receipt and gets the first result back, appending nothing; an append whose
//!   outcome was lost is settled by looking its receipts up, and retried when they are not
//!   there (every later try looks them up first, so a late commit is found, never repeated).
//!   Two commands with one key never share a batch (the trigger would file them as one).

use crate::aggregate_cache::DEFAULT_CAPACITY_MIB;
use crate::event_repository::{AppendError, EventRepository, Loaded};
use crate::stream_queues::StreamQueues;
use cqrs_es::persist::SerializedEvent;
use cqrs_es::{Aggregate, EventEnvelope};
use rand::Rng;
use serde::Serialize;
use sqlx::{PgPool, Row};
use std::collections::{HashMap, HashSet};
use std::marker::PhantomData;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use teachin_domain::actor::Actor;
use teachin_domain::error::{DomainError, ErrorKind};
use teachin_domain::services::DomainServices;
use tokio::sync::oneshot;
use tracing::Instrument;
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
    /// Memory for hot aggregates ([`crate::aggregate_cache`]); 0 turns the cache off.
    pub aggregate_cache_mib: usize,
    /// Most commands one append takes from a stream's queue.
    pub max_batch: usize,
}

impl Default for BusSettings {
    fn default() -> Self {
        Self {
            max_attempts: 5,
            snapshot_every: 100,
            aggregate_cache_mib: DEFAULT_CAPACITY_MIB,
            max_batch: 64,
        }
    }
}

/// What a bus has done since it was built, for `/metrics` and the bench.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BusStats {
    /// Optimistic-concurrency conflicts retried (each reloads and decides again).
    pub conflict_retries: u64,
    /// Appends that stored events, and the commands they stored: their ratio is how much
    /// batching saves on hot streams.
    pub appends: u64,
    pub appended_commands: u64,
}

#[derive(Default)]
struct Counters {
    conflict_retries: AtomicU64,
    appends: AtomicU64,
    appended_commands: AtomicU64,
}

/// Loads aggregates from the store (snapshot plus later events, upcast). Needs no domain
/// services, so the ports themselves can use it.
#[derive(Clone)]
pub struct AggregateReader {
    repository: EventRepository,
}

impl AggregateReader {
    pub fn new(pool: PgPool, settings: BusSettings) -> Self {
        Self {
            repository: EventRepository::new(
                pool,
                settings.snapshot_every,
                settings.aggregate_cache_mib.saturating_mul(1 << 20),
            ),
        }
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
    counters: Arc<Counters>,
    queues: StreamQueues,
}

/// What the bus asks of an aggregate: the domain's services, and commands and errors that can
/// cross to the stream's worker task (and be retried: commands are cloned for each try).
pub trait BusAggregate:
    Aggregate<
        Services = DomainServices,
        Command: Clone + Serialize + Send + Sync + 'static,
        Error: Send + 'static,
    > + Clone
    + 'static
{
}

impl<A> BusAggregate for A where
    A: Aggregate<
            Services = DomainServices,
            Command: Clone + Serialize + Send + Sync + 'static,
            Error: Send + 'static,
        > + Clone
        + 'static
{
}

/// The answer one caller waits for.
type Answer<A> = Result<CommandReceipt<A>, CommandError<<A as Aggregate>::Error>>;

/// A command waiting in its stream's queue, with everything its events will carry.
struct Pending<A: Aggregate> {
    command: A::Command,
    command_id: Uuid,
    /// The receipt's key (see [`CommandContext::dedupe_key`]).
    dedupe_key: String,
    /// Set by the caller (an idempotency key), so a receipt may exist before the first try.
    keyed: bool,
    metadata: HashMap<String, String>,
    reply: oneshot::Sender<Answer<A>>,
}

impl<A: Aggregate> Pending<A> {
    /// Sends the answer; a caller that went away meanwhile is not an error.
    fn answer(self, answer: Answer<A>) {
        let _ = self.reply.send(answer);
    }
}

/// What one command of a batch decided.
type Decision<A> = Result<Vec<<A as Aggregate>::Event>, <A as Aggregate>::Error>;

/// A decision once its events are in the batch's envelopes: how many are its own.
type Verdict<A> = Result<usize, <A as Aggregate>::Error>;

impl CommandBus {
    pub fn new(pool: PgPool, services: DomainServices, settings: BusSettings) -> Self {
        Self {
            reader: AggregateReader::new(pool.clone(), settings),
            pool,
            services,
            settings,
            counters: Arc::default(),
            queues: StreamQueues::default(),
        }
    }

    /// Optimistic-concurrency conflicts this bus retried since it was built.
    pub fn conflict_retries(&self) -> u64 {
        self.counters.conflict_retries.load(Ordering::Relaxed)
    }

    pub fn stats(&self) -> BusStats {
        BusStats {
            conflict_retries: self.conflict_retries(),
            appends: self.counters.appends.load(Ordering::Relaxed),
            appended_commands: self.counters.appended_commands.load(Ordering::Relaxed),
        }
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
    ///
    /// The command is decided and stored by its stream's worker (a task of its own), so a
    /// caller that goes away — a client hanging up, a timeout — takes no other caller's answer
    /// with it; a command whose caller left before its batch was taken is not run.
    pub async fn execute<A>(
        &self,
        aggregate_id: &str,
        command: A::Command,
        context: &CommandContext,
    ) -> Answer<A>
    where
        A: BusAggregate,
    {
        let command_id = Uuid::new_v4();
        let (reply, answer) = oneshot::channel();
        let pending = Pending::<A> {
            metadata: event_metadata::<A>(&command, context, command_id),
            dedupe_key: context.dedupe_key(command_id),
            keyed: context.idempotency_key.is_some(),
            command,
            command_id,
            reply,
        };
        if self.queues.push(aggregate_id, pending) {
            let worker = StreamWorker::<A> {
                bus: self.clone(),
                stream: aggregate_id.to_string(),
                finished: false,
                aggregate: PhantomData,
            };
            tokio::spawn(worker.run().in_current_span());
        }
        answer.await.unwrap_or_else(|_| {
            Err(CommandError::Store(
                "the stream's worker stopped before answering".into(),
            ))
        })
    }

    /// Decides a batch of one stream's commands and appends what they decided, retrying
    /// conflicts; answers every caller.
    async fn run_batch<A: BusAggregate>(&self, aggregate_id: &str, batch: Vec<Pending<A>>) {
        // Callers that went away before their command was taken: it is not run.
        let mut batch: Vec<Pending<A>> =
            batch.into_iter().filter(|p| !p.reply.is_closed()).collect();
        let mut checked_refusals = false;
        // Set once an append's outcome was lost and it did not seem to have committed: a
        // statement the server was still running might commit later, so from then on every
        // command of the batch looks for its receipt before it is decided again.
        let mut uncertain: Option<String> = None;
        let mut attempt = 0;
        while attempt < self.settings.max_attempts {
            attempt += 1;
            // A command that already committed answers with its receipt: a repeat of a keyed
            // command (here or on another replica), or after a lost outcome, this batch's own.
            if uncertain.is_some() || batch.iter().any(|p| p.keyed) {
                batch = self
                    .answer_committed(aggregate_id, batch, uncertain.is_some())
                    .await;
            }
            if batch.is_empty() {
                return;
            }
            let loaded = match self
                .reader
                .repository
                .load_for_command::<A>(aggregate_id)
                .await
            {
                Ok(loaded) => loaded,
                Err(error) => {
                    let message = error.to_string();
                    for pending in batch {
                        pending.answer(Err(CommandError::Store(message.clone())));
                    }
                    return;
                }
            };
            let (decisions, state) = self.decide(&loaded, &batch).await;
            let (verdicts, events) = envelopes(aggregate_id, loaded.sequence, &batch, decisions);
            if events.is_empty() && loaded.cached && !checked_refusals {
                // Nothing to append, so no sequence check proves the cached state current: a
                // refusal (or a no-op) is only given on state read from the database.
                checked_refusals = true;
                attempt -= 1;
                self.reader.repository.forget::<A>(aggregate_id);
                continue;
            }
            let stored = self.reader.repository.append(&loaded, &events, state).await;
            match stored {
                Ok(()) => {
                    self.count_append::<A>(&verdicts);
                    answer_all(aggregate_id, batch, verdicts, events);
                    return;
                }
                Err(AppendError::Conflict) => {
                    if attempt < self.settings.max_attempts {
                        self.counters
                            .conflict_retries
                            .fetch_add(1, Ordering::Relaxed);
                    }
                    tracing::debug!(
                        aggregate = A::TYPE,
                        aggregate_id,
                        attempt,
                        "conflict, retrying"
                    );
                    backoff(attempt).await;
                }
                Err(AppendError::Unknown(message)) => {
                    // The append may or may not have committed (a lost acknowledgement looks
                    // the same as a refused write). It was one statement, so any one of its
                    // commands' receipts tells for all of them.
                    let first = batch
                        .iter()
                        .zip(&verdicts)
                        .find(|(_, verdict)| matches!(verdict, Ok(count) if *count > 0))
                        .map(|(pending, _)| pending);
                    let committed = match first {
                        Some(p) => matches!(
                            self.find_receipt::<A>(&p.dedupe_key, aggregate_id, p.command_id)
                                .await,
                            Ok(Some(_))
                        ),
                        None => false,
                    };
                    if committed {
                        self.count_append::<A>(&verdicts);
                        answer_all(aggregate_id, batch, verdicts, events);
                        return;
                    }
                    // Not stored, as far as can be seen (a pooled connection that died while
                    // idle fails this way): decided and appended again.
                    tracing::debug!(aggregate = A::TYPE, aggregate_id, attempt, %message, "append outcome unknown, retrying");
                    uncertain = Some(message);
                    backoff(attempt).await;
                }
            }
        }
        if let Some(message) = uncertain {
            // The last append's outcome is still open: the receipts settle what they can.
            for pending in self.answer_committed(aggregate_id, batch, true).await {
                pending.answer(Err(CommandError::Store(message.clone())));
            }
            return;
        }
        for pending in batch {
            pending.answer(Err(CommandError::Conflict {
                aggregate: A::TYPE,
                attempts: self.settings.max_attempts,
            }));
        }
    }

    /// Answers the commands whose receipt exists (or whose key was used elsewhere) — the
    /// keyed ones, or `all` — and gives back the rest, in order.
    async fn answer_committed<A: Aggregate>(
        &self,
        aggregate_id: &str,
        batch: Vec<Pending<A>>,
        all: bool,
    ) -> Vec<Pending<A>> {
        let mut waiting = Vec::with_capacity(batch.len());
        for pending in batch {
            if all || pending.keyed {
                match self
                    .find_receipt::<A>(&pending.dedupe_key, aggregate_id, pending.command_id)
                    .await
                {
                    Ok(None) => {}
                    Ok(Some(receipt)) => {
                        pending.answer(Ok(receipt));
                        continue;
                    }
                    Err(error) => {
                        pending.answer(Err(error));
                        continue;
                    }
                }
            }
            waiting.push(pending);
        }
        waiting
    }

    /// Lets the aggregate decide each command on the state the previous ones left; a refused
    /// command leaves the state as it was. Gives each command's decision and the final state.
    ///
    /// Decided in place: a handler changes its aggregate only by writing events to the sink
    /// (cqrs-es's contract, and what makes state a fold of events), so a command refused
    /// before it wrote any left the state untouched. One refused after writing some (rare)
    /// had them applied, and the state is folded again from the loaded aggregate.
    async fn decide<A: BusAggregate>(
        &self,
        loaded: &Loaded<A>,
        batch: &[Pending<A>],
    ) -> (Vec<Decision<A>>, A) {
        let mut state = loaded.aggregate.clone();
        let mut decisions: Vec<Decision<A>> = Vec::with_capacity(batch.len());
        for pending in batch {
            let sink = cqrs_es::event_sink::EventSink::<A>::default();
            let decided = state
                .handle(pending.command.clone(), &self.services, &sink)
                .instrument(tracing::debug_span!("command.decide"))
                .await;
            let written = sink.collect().await;
            match decided {
                Ok(()) => decisions.push(Ok(written)),
                Err(error) => {
                    if !written.is_empty() {
                        state = loaded.aggregate.clone();
                        for event in decisions.iter().flatten().flatten() {
                            state.apply(event.clone());
                        }
                    }
                    decisions.push(Err(error));
                }
            }
        }
        (decisions, state)
    }

    fn count_append<A: Aggregate>(&self, verdicts: &[Verdict<A>]) {
        let commands = verdicts
            .iter()
            .filter(|verdict| matches!(verdict, Ok(count) if *count > 0))
            .count();
        if commands > 0 {
            self.counters.appends.fetch_add(1, Ordering::Relaxed);
            self.counters
                .appended_commands
                .fetch_add(commands as u64, Ordering::Relaxed);
        }
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

/// The one task serving a stream's queue: it takes batches until the queue is empty.
struct StreamWorker<A: Aggregate + 'static> {
    bus: CommandBus,
    stream: String,
    /// Set once the queue was found empty (and the stream forgotten in the same step).
    finished: bool,
    aggregate: PhantomData<fn() -> A>,
}

impl<A: BusAggregate> StreamWorker<A> {
    async fn run(mut self) {
        loop {
            // Two commands with one idempotency key never share a batch: the receipt trigger
            // would file the second as part of the first.
            let mut keys = HashSet::new();
            let batch = self.bus.queues.next_batch::<Pending<A>>(
                &self.stream,
                self.bus.settings.max_batch,
                |p| !p.keyed || keys.insert(p.dedupe_key.clone()),
            );
            if batch.is_empty() {
                self.finished = true;
                return;
            }
            self.bus.run_batch(&self.stream, batch).await;
        }
    }
}

impl<A: Aggregate + 'static> Drop for StreamWorker<A> {
    fn drop(&mut self) {
        // Stopped with commands still queued (a panic in a decision, the runtime shutting
        // down): their callers are told, and the next command starts a new worker.
        if !self.finished {
            self.bus.queues.abandon::<Pending<A>>(&self.stream);
        }
    }
}

/// Each decided event as the store will hold it: its sequence after `after`, and its own
/// command's metadata. Gives each command's verdict: how many of the events are its own, or
/// its refusal.
fn envelopes<A: Aggregate>(
    aggregate_id: &str,
    after: usize,
    batch: &[Pending<A>],
    decisions: Vec<Decision<A>>,
) -> (Vec<Verdict<A>>, Vec<EventEnvelope<A>>) {
    let mut sequence = after;
    let mut all = Vec::new();
    let mut verdicts = Vec::with_capacity(decisions.len());
    for (pending, decision) in batch.iter().zip(decisions) {
        verdicts.push(decision.map(|events| {
            let count = events.len();
            for payload in events {
                sequence += 1;
                all.push(EventEnvelope {
                    aggregate_id: aggregate_id.to_string(),
                    sequence,
                    payload,
                    metadata: pending.metadata.clone(),
                });
            }
            count
        }));
    }
    (verdicts, all)
}

/// Sends each caller its own part of a stored batch: its events, or its refusal.
fn answer_all<A: Aggregate>(
    aggregate_id: &str,
    batch: Vec<Pending<A>>,
    verdicts: Vec<Verdict<A>>,
    events: Vec<EventEnvelope<A>>,
) {
    let mut events = events.into_iter();
    for (pending, verdict) in batch.into_iter().zip(verdicts) {
        let answer = match verdict {
            Ok(count) => Ok(CommandReceipt {
                aggregate_id: aggregate_id.to_string(),
                events: events.by_ref().take(count).collect(),
                replayed: false,
            }),
            Err(error) => Err(CommandError::Rejected(error)),
        };
        pending.answer(answer);
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
