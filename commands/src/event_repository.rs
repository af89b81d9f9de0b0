//! postgres-es's repository with its two hot paths made one round trip each.
//!
//! Every command loads its aggregate and appends what it decided. Profiling the command path
//! showed postgres-es spending round trips where one does:
//!
//! - **Load** reads the events after the snapshot with the snapshot's sequence *formatted into
//!   the SQL text*, so each distinct sequence is a new statement: sqlx parses and describes it
//!   (an extra round trip), and the per-connection statement cache churns. Here the sequence is
//!   a bound parameter of one prepared statement.
//! - **Append** opens a transaction, inserts the events one statement at a time and commits:
//!   2 + n round trips. Here the events go in as one `INSERT … SELECT FROM unnest(…)`, a single
//!   statement and therefore its own transaction — atomic, one round trip, the same rows, the
//!   same triggers (receipts, NOTIFY) and the same unique key doing optimistic concurrency.
//!
//! Everything else — snapshots, their optimistic update (which needs a row count checked
//! before commit), replay streams — is postgres-es's own code, delegated unchanged. The table
//! layout is postgres-es's too (`migrations/…_event_store.sql`).

use cqrs_es::persist::{
    PersistedEventRepository, PersistenceError, ReplayStream, SerializedEvent, SerializedSnapshot,
};
use cqrs_es::Aggregate;
use postgres_es::PostgresEventRepository;
use serde_json::Value;
use sqlx::PgPool;
use std::sync::Arc;

const EVENTS_AFTER: &str = "
SELECT aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata
  FROM events
 WHERE aggregate_type = $1 AND aggregate_id = $2 AND sequence > $3
 ORDER BY sequence";

/// The column list and order are postgres-es's insert; `WITH ORDINALITY … ORDER BY` keeps the
/// command's events in sequence order, so the receipt trigger sees them first to last.
const APPEND: &str = "
INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata)
SELECT $1, $2, e.sequence, e.event_type, e.event_version, e.payload, e.metadata
  FROM unnest($3::bigint[], $4::text[], $5::text[], $6::jsonb[], $7::jsonb[])
       WITH ORDINALITY AS e(sequence, event_type, event_version, payload, metadata, n)
 ORDER BY e.n";

#[derive(Clone)]
pub struct EventRepository {
    pool: PgPool,
    /// Shared: building one formats its SQL, which a per-command clone need not repeat.
    postgres_es: Arc<PostgresEventRepository>,
}

impl EventRepository {
    pub fn new(pool: PgPool) -> Self {
        Self {
            postgres_es: Arc::new(PostgresEventRepository::new(pool.clone())),
            pool,
        }
    }

    async fn append<A: Aggregate>(&self, events: &[SerializedEvent]) -> Result<(), sqlx::Error> {
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
        sqlx::query(APPEND)
            .bind(A::TYPE)
            .bind(first.aggregate_id.as_str())
            .bind(sequences)
            .bind(types)
            .bind(versions)
            .bind(payloads)
            .bind(metadata)
            .execute(&self.pool)
            .await?;
        Ok(())
    }
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
        let rows = sqlx::query(EVENTS_AFTER)
            .bind(A::TYPE)
            .bind(aggregate_id)
            .bind(last_sequence as i64)
            .fetch_all(&self.pool)
            .await
            .map_err(persistence_error)?;
        Ok(rows.iter().map(crate::bus::serialized_event).collect())
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
        match snapshot_update {
            None => self.append::<A>(events).await.map_err(persistence_error),
            // Once every `snapshot_every` events: postgres-es's transaction, which checks the
            // snapshot's optimistic update before it commits.
            snapshot => self.postgres_es.persist::<A>(events, snapshot).await,
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
