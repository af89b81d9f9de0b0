//! The event store's two hot paths, one round trip each: loading an aggregate, and appending
//! what a batch of commands decided.
//!
//! - **Load** is two queries in cqrs-es (the snapshot, then the events after it), the second
//!   with the snapshot's sequence *formatted into the SQL text*, so each distinct sequence is a
//!   new statement: sqlx parses and describes it (another round trip), and the per-connection
//!   statement cache churns. Here [`EventRepository::load`] reads the snapshot and the events
//!   after it in one prepared statement and folds them as cqrs-es would.
//! - **Append** in postgres-es opens a transaction, inserts the events one statement at a time
//!   and commits: 2 + n round trips. Here [`EventRepository::append`] sends the events of a
//!   whole batch of commands as one `INSERT … SELECT FROM unnest(…)`, a single statement and
//!   therefore its own transaction — atomic, one round trip, one WAL flush, the same rows, the
//!   same triggers (a receipt per command, NOTIFY) and the same unique key doing optimistic
//!   concurrency.
//! - **Snapshots** (when a batch's events pass a multiple of `snapshot_every`) are the
//!   aggregate as the batch left it, filed at the batch's last event and written by the same
//!   statement as the events, as an upsert. The events' unique key already decides who wins a
//!   race, so the snapshot needs no optimistic check of its own; it only never moves
//!   backwards. An upsert also replaces a snapshot that no longer deserializes (the
//!   aggregate's shape changed), which a plain INSERT would refuse on every later attempt.
//! - **Hot aggregates** skip the load: [`EventRepository::load_for_command`] starts from the
//!   aggregate as this repository's last successful append left it
//!   ([`crate::aggregate_cache`]), and the append's optimistic check keeps that correct; a
//!   refused (or unknown) append evicts it, so the bus's retry reads the database.
//!
//! Replaying a whole stream (when a snapshot no longer reads) is postgres-es's own code. The
//! table layout is postgres-es's too (`migrations/…_event_store.sql`).
//!
//! The spans `command.load` and `command.append` are the command path's stages as the
//! bench's profile (`teachin bench system --stages`) reports them.

use crate::aggregate_cache::{serialized_size, AggregateCache, Cached};
use cqrs_es::persist::{
    EventStoreAggregateContext, PersistedEventRepository, PersistenceError, SerializedEvent,
};
use cqrs_es::{Aggregate, AggregateError, EventEnvelope};
use postgres_es::PostgresEventRepository;
use sqlx::{PgPool, Row};
use std::sync::Arc;
use tracing::Instrument;

/// The snapshot (kind 0) and then the events after it (kind 1), in sequence order.
const SNAPSHOT_AND_EVENTS_AFTER: &str = "
WITH snapshot AS (
    SELECT last_sequence, current_snapshot, payload FROM snapshots
     WHERE aggregate_type = $1 AND aggregate_id = $2)
SELECT 0 AS kind, last_sequence AS sequence, current_snapshot, payload,
       NULL::text AS aggregate_type, NULL::text AS aggregate_id,
       NULL::text AS event_type, NULL::text AS event_version, NULL::jsonb AS metadata
  FROM snapshot
UNION ALL
SELECT 1, sequence, NULL, payload, aggregate_type, aggregate_id, event_type, event_version, metadata
  FROM events
 WHERE aggregate_type = $1 AND aggregate_id = $2
   AND sequence > coalesce((SELECT last_sequence FROM snapshot), 0)
ORDER BY kind, sequence";

/// The column list and order are postgres-es's insert; `WITH ORDINALITY … ORDER BY` keeps the
/// command's events in sequence order, so the receipt trigger sees them first to last.
const APPEND: &str = "
INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata)
SELECT $1, $2, e.sequence, e.event_type, e.event_version, e.payload, e.metadata
  FROM unnest($3::bigint[], $4::text[], $5::text[], $6::jsonb[], $7::jsonb[])
       WITH ORDINALITY AS e(sequence, event_type, event_version, payload, metadata, n)
 ORDER BY e.n";

/// [`APPEND`] and, in the same statement, the snapshot.
const APPEND_WITH_SNAPSHOT: &str = "
WITH appended AS (
INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata)
SELECT $1, $2, e.sequence, e.event_type, e.event_version, e.payload, e.metadata
  FROM unnest($3::bigint[], $4::text[], $5::text[], $6::jsonb[], $7::jsonb[])
       WITH ORDINALITY AS e(sequence, event_type, event_version, payload, metadata, n)
 ORDER BY e.n
RETURNING 1)
INSERT INTO snapshots (aggregate_type, aggregate_id, last_sequence, current_snapshot, payload)
VALUES ($1, $2, $8, $9, $10)
ON CONFLICT (aggregate_type, aggregate_id) DO UPDATE
   SET last_sequence = EXCLUDED.last_sequence, current_snapshot = EXCLUDED.current_snapshot,
       payload = EXCLUDED.payload
 WHERE snapshots.last_sequence < EXCLUDED.last_sequence";

#[derive(Clone)]
pub struct EventRepository {
    pool: PgPool,
    /// The appends' own connections: single statements only, so checked out without the
    /// not-in-a-transaction check (`crate::pool::for_single_statements`).
    appends: PgPool,
    /// A snapshot is written when an append passes a multiple of this.
    snapshot_every: usize,
    /// Shared: building one formats its SQL, which a per-command clone need not repeat.
    postgres_es: Arc<PostgresEventRepository>,
    /// Aggregates as this repository's appends left them (the command path's only).
    cache: AggregateCache,
}

/// Where a command's aggregate came from, and the stream position its append builds on.
#[derive(Debug)]
pub struct Loaded<A> {
    pub aggregate: A,
    /// The stream's last event folded into `aggregate` (0: a new stream).
    pub sequence: usize,
    /// The number of the stream's latest snapshot.
    pub snapshot: Option<usize>,
    /// From this repository's cache rather than the database.
    pub cached: bool,
}

/// Why an append did not go through.
#[derive(Debug)]
pub enum AppendError {
    /// Someone appended to the stream first (the events' key), or one of the commands was
    /// already applied (the receipt trigger): nothing of this append was stored.
    Conflict,
    /// The store failed; the append may or may not have committed.
    Unknown(String),
}

impl EventRepository {
    /// `cache_bytes`: room for hot aggregates; 0 turns the cache off.
    pub fn new(pool: PgPool, snapshot_every: usize, cache_bytes: usize) -> Self {
        Self {
            postgres_es: Arc::new(PostgresEventRepository::new(pool.clone())),
            appends: crate::pool::for_single_statements(&pool),
            pool,
            snapshot_every: snapshot_every.max(1),
            cache: AggregateCache::with_capacity_bytes(cache_bytes),
        }
    }

    /// The aggregate a command decides on: the cached one when this repository's last append
    /// to the stream left it there, else [`Self::load`] (and it is cached). Only for the
    /// command path, whose append checks the sequence (see [`crate::aggregate_cache`]).
    pub async fn load_for_command<A>(
        &self,
        aggregate_id: &str,
    ) -> Result<Loaded<A>, AggregateError<A::Error>>
    where
        A: Aggregate + Clone + 'static,
    {
        let span = tracing::debug_span!("command.load", cache = tracing::field::Empty);
        if let Some(cached) = span.in_scope(|| self.cache.get::<A>(aggregate_id)) {
            span.record("cache", "hit");
            return Ok(Loaded {
                aggregate: cached.aggregate,
                sequence: cached.sequence,
                snapshot: cached.snapshot,
                cached: true,
            });
        }
        span.record("cache", "miss");
        let context = self.load::<A>(aggregate_id).instrument(span).await?;
        if self.cache.enabled() {
            self.cache.put(
                aggregate_id,
                Cached {
                    aggregate: context.aggregate.clone(),
                    sequence: context.current_sequence,
                    snapshot: context.current_snapshot,
                },
            );
        }
        Ok(Loaded {
            aggregate: context.aggregate,
            sequence: context.current_sequence,
            snapshot: context.current_snapshot,
            cached: false,
        })
    }

    /// Forgets the cached aggregate of a stream (a decision on it is to be checked against
    /// the database).
    pub fn forget<A: Aggregate>(&self, aggregate_id: &str) {
        self.cache.evict(A::TYPE, aggregate_id);
    }

    /// An aggregate as cqrs-es's snapshot store loads it — the snapshot, then the events after
    /// it, upcast and applied — in one round trip. A snapshot that no longer deserializes is
    /// ignored and the whole stream replayed (cqrs-es's rule), at the cost of a second query.
    pub async fn load<A: Aggregate>(
        &self,
        aggregate_id: &str,
    ) -> Result<EventStoreAggregateContext<A>, AggregateError<A::Error>> {
        let rows = sqlx::query(SNAPSHOT_AND_EVENTS_AFTER)
            .bind(A::TYPE)
            .bind(aggregate_id)
            .fetch_all(&self.pool)
            .await
            .map_err(persistence_error)?;
        let mut context = EventStoreAggregateContext {
            aggregate_id: aggregate_id.to_string(),
            aggregate: A::default(),
            current_sequence: 0,
            current_snapshot: None,
        };
        let mut events = rows.as_slice();
        if let Some((first, rest)) = rows.split_first() {
            if first.get::<i32, _>("kind") == 0 {
                events = rest;
                match serde_json::from_value::<A>(first.get("payload")) {
                    Ok(aggregate) => {
                        context.aggregate = aggregate;
                        context.current_sequence = first.get::<i64, _>("sequence") as usize;
                        context.current_snapshot =
                            Some(first.get::<i64, _>("current_snapshot") as usize);
                    }
                    Err(error) => {
                        tracing::info!(
                            aggregate = A::TYPE,
                            aggregate_id,
                            %error,
                            "snapshot no longer readable; replaying the stream"
                        );
                        let all = self.postgres_es.get_events::<A>(aggregate_id).await?;
                        apply_all(&mut context, all)?;
                        return Ok(context);
                    }
                }
            }
        }
        apply_all(
            &mut context,
            events.iter().map(crate::bus::serialized_event),
        )?;
        Ok(context)
    }

    /// Appends `events` — every event a batch of commands decided, their sequences following
    /// `from.sequence` — in one statement, with a snapshot of `state` (the aggregate after
    /// them) when they pass a multiple of the snapshot interval. On success the cache moves on
    /// to `state`; on any failure it forgets the stream.
    pub async fn append<A>(
        &self,
        from: &Loaded<A>,
        events: &[EventEnvelope<A>],
        state: A,
    ) -> Result<(), AppendError>
    where
        A: Aggregate + 'static,
    {
        let (Some(first), Some(last)) = (events.first(), events.last()) else {
            return Ok(());
        };
        let aggregate_id = first.aggregate_id.as_str();
        let snapshot = (last.sequence / self.snapshot_every > from.sequence / self.snapshot_every)
            .then(|| from.snapshot.map_or(1, |number| number + 1));
        let appended = self
            .insert(
                aggregate_id,
                events,
                snapshot.map(|number| (&state, number)),
            )
            .instrument(tracing::debug_span!("command.append"))
            .await;
        match appended {
            Ok(added_bytes) => {
                self.cache.advance(
                    aggregate_id,
                    from.sequence,
                    Cached {
                        aggregate: state,
                        sequence: last.sequence,
                        snapshot,
                    },
                    added_bytes,
                );
                Ok(())
            }
            Err(error) => {
                // Refused (someone appended first) or unknown (it may have committed): either
                // way the cached state may be behind the stream.
                self.cache.evict(A::TYPE, aggregate_id);
                Err(error)
            }
        }
    }

    /// The one statement; answers the events' serialized size.
    async fn insert<A: Aggregate>(
        &self,
        aggregate_id: &str,
        events: &[EventEnvelope<A>],
        snapshot: Option<(&A, usize)>,
    ) -> Result<usize, AppendError> {
        let unwritable = |e: PersistenceError| AppendError::Unknown(e.to_string());
        let mut sequences = Vec::with_capacity(events.len());
        let mut types = Vec::with_capacity(events.len());
        let mut versions = Vec::with_capacity(events.len());
        let mut payloads = Vec::with_capacity(events.len());
        let mut metadata = Vec::with_capacity(events.len());
        let mut bytes = 0;
        for event in events {
            let event = SerializedEvent::try_from(event).map_err(unwritable)?;
            bytes += serialized_size(&event.payload);
            sequences.push(event.sequence as i64);
            types.push(event.event_type);
            versions.push(event.event_version);
            payloads.push(event.payload);
            metadata.push(event.metadata);
        }
        let last_sequence = sequences.last().copied().unwrap_or_default();
        let query = sqlx::query(match snapshot {
            None => APPEND,
            Some(_) => APPEND_WITH_SNAPSHOT,
        })
        .bind(A::TYPE)
        .bind(aggregate_id)
        .bind(sequences)
        .bind(types)
        .bind(versions)
        .bind(payloads)
        .bind(metadata);
        let query = match snapshot {
            None => query,
            Some((state, number)) => {
                let state = serde_json::to_value(state)
                    .map_err(|e| unwritable(PersistenceError::from(e)))?;
                query.bind(last_sequence).bind(number as i64).bind(state)
            }
        };
        // Checked out here rather than by `execute`, so the profile sees the checkout apart.
        let mut connection = self
            .appends
            .acquire()
            .instrument(tracing::debug_span!("pool.checkout"))
            .await
            .map_err(|e| AppendError::Unknown(e.to_string()))?;
        match query.execute(&mut *connection).await {
            Ok(_) => Ok(bytes),
            Err(sqlx::Error::Database(db)) if db.code().as_deref() == Some("23505") => {
                Err(AppendError::Conflict)
            }
            Err(error) => Err(AppendError::Unknown(error.to_string())),
        }
    }
}

/// Upcasts and applies stored events in order, as cqrs-es's store does after a snapshot.
fn apply_all<A: Aggregate>(
    context: &mut EventStoreAggregateContext<A>,
    events: impl IntoIterator<Item = SerializedEvent>,
) -> Result<(), AggregateError<A::Error>> {
    let upcasters = teachin_domain::upcasting::upcasters();
    for event in events {
        let event = teachin_domain::upcasting::upcast(event, &upcasters);
        let envelope = EventEnvelope::<A>::try_from(event)
            .map_err(|e| AggregateError::DeserializationError(Box::new(e)))?;
        context.current_sequence = envelope.sequence;
        context.aggregate.apply(envelope.payload);
    }
    Ok(())
}

/// A failed load as cqrs-es reports it: the connection's failures apart from the rest. (A
/// load only reads, so it never meets the unique violation an append reads as a conflict.)
fn persistence_error(error: sqlx::Error) -> PersistenceError {
    match &error {
        sqlx::Error::Io(_) | sqlx::Error::Tls(_) | sqlx::Error::PoolTimedOut => {
            PersistenceError::ConnectionError(Box::new(error))
        }
        _ => PersistenceError::UnknownError(Box::new(error)),
    }
}
