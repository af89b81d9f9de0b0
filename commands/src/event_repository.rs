//! postgres-es's repository with its two hot paths made one round trip each.
//!
//! Every command loads its aggregate and appends what it decided. Profiling the command path
//! showed postgres-es spending round trips where one does:
//!
//! - **Load** is two queries in cqrs-es (the snapshot, then the events after it), the second
//!   with the snapshot's sequence *formatted into the SQL text*, so each distinct sequence is a
//!   new statement: sqlx parses and describes it (another round trip), and the per-connection
//!   statement cache churns. Here [`EventRepository::load`] reads the snapshot and the events
//!   after it in one prepared statement and folds them as cqrs-es would.
//! - **Append** opens a transaction, inserts the events one statement at a time and commits:
//!   2 + n round trips. Here the events go in as one `INSERT … SELECT FROM unnest(…)`, a single
//!   statement and therefore its own transaction — atomic, one round trip, the same rows, the
//!   same triggers (receipts, NOTIFY) and the same unique key doing optimistic concurrency.
//!
//! - **Snapshots** (every `snapshot_every` events) are written by the same statement as the
//!   events, as an upsert. The events' unique key already decides who wins a race, so the
//!   snapshot needs no optimistic check of its own; it only never moves backwards. An upsert
//!   also replaces a snapshot that no longer deserializes (the aggregate's shape changed):
//!   cqrs-es then replays the stream and writes snapshot number 1 again, which postgres-es's
//!   plain INSERT would refuse as a conflict on every later attempt. And the snapshot is
//!   filed at the last event it *folds*: cqrs-es folds only up to the last multiple of
//!   `snapshot_every` inside a commit, while postgres-es files it at the commit's last event,
//!   so a later load skipped the events in between (a multi-event command crossing a
//!   snapshot boundary lost its tail from the aggregate's state).
//!
//! - **Hot aggregates** skip the load: [`EventRepository::load_for_command`] starts from the
//!   aggregate as this repository's last successful append left it
//!   ([`crate::aggregate_cache`]), and the append's optimistic check keeps that correct; a
//!   refused (or unknown) append evicts it, so the bus's retry reads the database.
//!
//! Reading snapshots and replay streams is postgres-es's own code, delegated unchanged. The
//! table layout is postgres-es's too (`migrations/…_event_store.sql`).
//!
//! The spans `command.load` and `command.append` are the command path's stages as the
//! bench's profile (`teachin bench stages`) reports them.

use crate::aggregate_cache::{AggregateCache, Cached};
use cqrs_es::persist::EventStoreAggregateContext;
use cqrs_es::persist::{
    PersistedEventRepository, PersistenceError, ReplayStream, SerializedEvent, SerializedSnapshot,
};
use cqrs_es::{Aggregate, AggregateError, EventEnvelope};
use postgres_es::PostgresEventRepository;
use serde_json::Value;
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
    /// The store's snapshot interval, to know how far a snapshot folds (see the module).
    snapshot_every: usize,
    /// Shared: building one formats its SQL, which a per-command clone need not repeat.
    postgres_es: Arc<PostgresEventRepository>,
    /// Aggregates as this repository's appends left them (the command path's only).
    cache: AggregateCache,
}

impl EventRepository {
    pub fn new(pool: PgPool, snapshot_every: usize) -> Self {
        Self {
            postgres_es: Arc::new(PostgresEventRepository::new(pool.clone())),
            pool,
            snapshot_every: snapshot_every.max(1),
            cache: AggregateCache::default(),
        }
    }

    /// The aggregate a command decides on: the cached one when this repository's last append
    /// to the stream left it there, else [`Self::load`] (and it is cached). Only for the
    /// command path, whose append checks the sequence (see [`crate::aggregate_cache`]).
    pub async fn load_for_command<A>(
        &self,
        aggregate_id: &str,
    ) -> Result<EventStoreAggregateContext<A>, AggregateError<A::Error>>
    where
        A: Aggregate + Clone + 'static,
    {
        let span = tracing::debug_span!("command.load", cache = tracing::field::Empty);
        if let Some(cached) = span.in_scope(|| self.cache.get::<A>(aggregate_id)) {
            span.record("cache", "hit");
            return Ok(EventStoreAggregateContext {
                aggregate_id: aggregate_id.to_string(),
                aggregate: cached.aggregate,
                current_sequence: cached.sequence,
                current_snapshot: cached.snapshot,
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
        Ok(context)
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

    /// One statement: the events, and the snapshot when one is due.
    async fn append<A: Aggregate>(
        &self,
        events: &[SerializedEvent],
        snapshot: Option<(Value, usize)>,
    ) -> Result<(), sqlx::Error> {
        let Some(first) = events.first() else {
            return Ok(());
        };
        let mut sequences = Vec::with_capacity(events.len());
        let mut types = Vec::with_capacity(events.len());
        let mut versions = Vec::with_capacity(events.len());
        let mut payloads = Vec::with_capacity(events.len());
        let mut metadata = Vec::with_capacity(events.len());
        for event in events {
            sequences.push(event.sequence as i64);
            types.push(event.event_type.as_str());
            versions.push(event.event_version.as_str());
            payloads.push(&event.payload);
            metadata.push(&event.metadata);
        }
        let query = sqlx::query(match snapshot {
            None => APPEND,
            Some(_) => APPEND_WITH_SNAPSHOT,
        })
        .bind(A::TYPE)
        .bind(first.aggregate_id.as_str())
        .bind(sequences)
        .bind(types)
        .bind(versions)
        .bind(payloads)
        .bind(metadata);
        let query = match snapshot {
            None => query,
            Some((state, number)) => {
                let previous = first.sequence - 1;
                let folded = folded(self.snapshot_every, previous, events.len());
                query
                    .bind((previous + folded) as i64)
                    .bind(number as i64)
                    .bind(state)
            }
        };
        // Checked out here rather than by `execute`, so the profile sees the checkout apart.
        let mut connection = self
            .pool
            .acquire()
            .instrument(tracing::debug_span!("pool.checkout"))
            .await?;
        query.execute(&mut *connection).await?;
        Ok(())
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

/// How many of a commit's `count` events, appended after `previous`, cqrs-es folds into the
/// snapshot it hands over: up to the last multiple of the interval they reach
/// (`SourceOfTruth::commit_snapshot_with_addl_events`).
fn folded(snapshot_every: usize, previous: usize, count: usize) -> usize {
    let reached = previous + count;
    (reached - reached % snapshot_every)
        .saturating_sub(previous)
        .min(count)
}

/// postgres-es's reading of database errors: a unique violation (the event key, or the
/// receipt trigger's "already applied") is the optimistic-concurrency conflict.
fn persistence_error(error: sqlx::Error) -> PersistenceError {
    match &error {
        sqlx::Error::Database(db) if db.code().as_deref() == Some("23505") => {
            PersistenceError::OptimisticLockError
        }
        sqlx::Error::Io(_) | sqlx::Error::Tls(_) | sqlx::Error::PoolTimedOut => {
            PersistenceError::ConnectionError(Box::new(error))
        }
        _ => PersistenceError::UnknownError(Box::new(error)),
    }
}

impl PersistedEventRepository for EventRepository {
    async fn get_events<A: Aggregate>(
        &self,
        aggregate_id: &str,
    ) -> Result<Vec<SerializedEvent>, PersistenceError> {
        self.postgres_es.get_events::<A>(aggregate_id).await
    }

    async fn get_last_events<A: Aggregate>(
        &self,
        aggregate_id: &str,
        last_sequence: usize,
    ) -> Result<Vec<SerializedEvent>, PersistenceError> {
        // Not on our path (`load` reads the snapshot and these events in one query); kept for
        // the trait, as postgres-es has it.
        self.postgres_es
            .get_last_events::<A>(aggregate_id, last_sequence)
            .await
    }

    async fn get_snapshot<A: Aggregate>(
        &self,
        aggregate_id: &str,
    ) -> Result<Option<SerializedSnapshot>, PersistenceError> {
        self.postgres_es.get_snapshot::<A>(aggregate_id).await
    }

    async fn persist<A: Aggregate>(
        &self,
        events: &[SerializedEvent],
        snapshot_update: Option<(String, Value, usize)>,
    ) -> Result<(), PersistenceError> {
        let snapshot = snapshot_update.map(|(_, state, number)| (state, number));
        let number = snapshot.as_ref().map(|(_, number)| *number);
        let appended = self
            .append::<A>(events, snapshot)
            .instrument(tracing::debug_span!("command.append"))
            .await;
        match appended {
            Ok(()) => {
                self.cache.appended(A::TYPE, events, number);
                Ok(())
            }
            Err(error) => {
                // Refused (someone appended first) or unknown (it may have committed): either
                // way the cached state may be behind the stream.
                if let Some(first) = events.first() {
                    self.cache.evict(A::TYPE, &first.aggregate_id);
                }
                Err(persistence_error(error))
            }
        }
    }

    async fn stream_events<A: Aggregate>(
        &self,
        aggregate_id: &str,
    ) -> Result<ReplayStream, PersistenceError> {
        self.postgres_es.stream_events::<A>(aggregate_id).await
    }

    async fn stream_all_events<A: Aggregate>(&self) -> Result<ReplayStream, PersistenceError> {
        self.postgres_es.stream_all_events::<A>().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// cqrs-es's own `test_source_of_truth` cases (interval, previous, count → folded), and
    /// the ones that stop short of the commit's last event.
    #[test]
    fn a_snapshot_folds_up_to_the_last_interval_its_commit_reaches() {
        assert_eq!(folded(5, 5, 3), 0);
        assert_eq!(folded(4, 5, 3), 3);
        assert_eq!(folded(4, 5, 4), 3);
        assert_eq!(folded(4, 5, 8), 7);
        assert_eq!(folded(3, 5, 3), 1); // stops at 6: 7 and 8 come after it
        assert_eq!(folded(2, 5, 2), 1); // stops at 6: 7 is not folded
        assert_eq!(folded(100, 99, 2), 1);
        assert_eq!(folded(100, 0, 250), 200);
    }
}
