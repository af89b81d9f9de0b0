//! The global event log, read gap-free (DESIGN.md decision 2).
//!
//! `global_position` is handed out when a row is *inserted*, not when its transaction
//! commits, so a reader that simply follows it can pass over a row whose slow transaction
//! commits later — and never come back. The reader therefore orders by
//! `(transaction_id, global_position)` and only takes rows whose transaction is older than
//! every transaction still running (`transaction_id < pg_snapshot_xmin(pg_current_snapshot())`).
//! Every such transaction has finished, so the set of visible rows below that horizon can no
//! longer change, and a checkpoint can safely move past them.
//!
//! The price: one long-running transaction anywhere in the cluster holds every subscriber
//! back until it ends. Lag, never loss.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::postgres::{PgListener, PgRow};
use sqlx::{PgExecutor, PgPool, Row};
use std::fmt;
use std::str::FromStr;
use uuid::Uuid;

/// The channel the `events_notify` trigger signals on every commit that appended events.
pub const NOTIFY_CHANNEL: &str = "teachin_events";

/// A place in the log, and the checkpoint a subscriber keeps: everything at or before it has
/// been consumed. Ordered exactly as the reader returns events.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct LogPosition {
    pub transaction_id: u64,
    pub global_position: i64,
}

impl LogPosition {
    /// Before the first event.
    pub const START: LogPosition = LogPosition {
        transaction_id: 0,
        global_position: 0,
    };

    /// After every event there can ever be (a read's open upper bound).
    pub const END: LogPosition = LogPosition {
        transaction_id: u64::MAX,
        global_position: i64::MAX,
    };
}

impl fmt::Display for LogPosition {
    /// `transaction_id/global_position`, the form `teachin events --after` accepts.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.transaction_id, self.global_position)
    }
}

impl Serialize for LogPosition {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl FromStr for LogPosition {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (tx, pos) = s.split_once('/').ok_or_else(|| {
            format!("`{s}` is not a log position (expected TRANSACTION/POSITION, e.g. 745/12)")
        })?;
        Ok(LogPosition {
            transaction_id: tx
                .parse()
                .map_err(|_| format!("`{tx}` is not a transaction id"))?,
            global_position: pos
                .parse()
                .map_err(|_| format!("`{pos}` is not a global position"))?,
        })
    }
}

/// One event as the log holds it: the stored (not upcast) payload and its metadata.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LoggedEvent {
    pub position: LogPosition,
    pub event_id: Uuid,
    pub aggregate_type: String,
    pub aggregate_id: String,
    pub sequence: i64,
    pub event_type: String,
    pub event_version: String,
    pub payload: serde_json::Value,
    pub metadata: serde_json::Value,
    pub recorded_at: DateTime<Utc>,
}

/// The columns a reader decodes. The transaction id travels as text (sqlx has no `xid8`), under
/// a name of its own: were the alias `transaction_id`, a bare `ORDER BY transaction_id` would
/// sort by the *text* (PostgreSQL resolves ORDER BY names to output columns first), putting
/// transaction 10016 before 9836 — events out of order inside a batch and, across a digit
/// step, batches that skip or repeat events. Every ORDER BY below names `events.` columns.
const COLUMNS: &str = "transaction_id::text AS transaction_id_text, global_position, event_id,
    aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata, recorded_at";

/// The condition that makes the reader gap-safe; see the module comment.
const SETTLED: &str = "transaction_id < pg_snapshot_xmin(pg_current_snapshot())";

#[derive(Clone)]
pub struct EventLog {
    pool: PgPool,
}

impl EventLog {
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Up to `limit` settled events after `after`, in log order. An empty answer means
    /// "nothing settled yet", not "nothing will ever come".
    pub async fn read_after(
        &self,
        after: LogPosition,
        limit: i64,
    ) -> Result<Vec<LoggedEvent>, sqlx::Error> {
        read_after(&self.pool, after, limit).await
    }

    /// One stream's events after `after_sequence` (0 for all), in stream order. Committed
    /// events only, as any read; a stream is written by one transaction at a time, so it has
    /// no gaps to guard against.
    pub async fn read_stream(
        &self,
        aggregate_type: &str,
        aggregate_id: &str,
        after_sequence: i64,
    ) -> Result<Vec<LoggedEvent>, sqlx::Error> {
        let sql = format!(
            "SELECT {COLUMNS} FROM public.events
              WHERE aggregate_type = $1 AND aggregate_id = $2 AND sequence > $3
              ORDER BY events.sequence"
        );
        sqlx::query(&sql)
            .bind(aggregate_type)
            .bind(aggregate_id)
            .bind(after_sequence)
            .try_map(|row: PgRow| decode(&row))
            .fetch_all(&self.pool)
            .await
    }

    /// The position of the last settled event (`START` for an empty log).
    pub async fn head(&self) -> Result<LogPosition, sqlx::Error> {
        let sql = format!(
            "SELECT transaction_id::text AS transaction_id_text, global_position
               FROM public.events WHERE {SETTLED}
              ORDER BY events.transaction_id DESC, events.global_position DESC LIMIT 1"
        );
        let row: Option<(String, i64)> = sqlx::query_as(&sql).fetch_optional(&self.pool).await?;
        Ok(match row {
            Some((tx, pos)) => LogPosition {
                transaction_id: parse_transaction_id(&tx)?,
                global_position: pos,
            },
            None => LogPosition::START,
        })
    }

    /// A listener woken whenever a transaction appends events. Subscribers also poll: a
    /// notification is a hint to read now, never the only reason to.
    pub async fn listen(&self) -> Result<PgListener, sqlx::Error> {
        let mut listener = PgListener::connect_with(&self.pool).await?;
        listener.listen(NOTIFY_CHANNEL).await?;
        Ok(listener)
    }
}

/// [`EventLog::read_after`] on any executor — a projection reads its batch inside the
/// transaction that applies it.
pub async fn read_after<'e, E: PgExecutor<'e>>(
    executor: E,
    after: LogPosition,
    limit: i64,
) -> Result<Vec<LoggedEvent>, sqlx::Error> {
    read_settled(executor, after, limit, Metadata::Read).await
}

/// Whether a reader needs the events' metadata (who issued the command, correlation ids).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Metadata {
    Read,
    /// Left out: `LoggedEvent::metadata` is `null`. The metadata is often larger than the
    /// payload, and the read models never look at it, so their reads — the live daemon's and
    /// a rebuild's — skip it (see `Projection::reads_metadata`).
    Skipped,
}

/// The settled events after `after`, with or without their metadata.
pub async fn read_settled<'e, E: PgExecutor<'e>>(
    executor: E,
    after: LogPosition,
    limit: i64,
    metadata: Metadata,
) -> Result<Vec<LoggedEvent>, sqlx::Error> {
    read_settled_until(executor, after, LogPosition::END, limit, metadata).await
}

/// The settled events after `after` and at or before `until`, with or without their metadata.
pub async fn read_settled_until<'e, E: PgExecutor<'e>>(
    executor: E,
    after: LogPosition,
    until: LogPosition,
    limit: i64,
    metadata: Metadata,
) -> Result<Vec<LoggedEvent>, sqlx::Error> {
    static WITH_METADATA: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    static WITHOUT_METADATA: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let sql_for = |columns: &str| {
        format!(
            "SELECT {columns} FROM public.events
              WHERE (transaction_id, global_position) > ($1::text::xid8, $2)
                AND (transaction_id, global_position) <= ($4::text::xid8, $5)
                AND {SETTLED}
              ORDER BY events.transaction_id, events.global_position
              LIMIT $3"
        )
    };
    let sql = match metadata {
        Metadata::Read => WITH_METADATA.get_or_init(|| sql_for(COLUMNS)),
        Metadata::Skipped => WITHOUT_METADATA
            .get_or_init(|| sql_for(&COLUMNS.replace("metadata", "'null'::jsonb AS metadata"))),
    };
    sqlx::query(sql)
        .bind(after.transaction_id.to_string())
        .bind(after.global_position)
        .bind(limit)
        .bind(until.transaction_id.to_string())
        .bind(until.global_position)
        .try_map(|row: PgRow| decode(&row))
        .fetch_all(executor)
        .await
}

/// An `xid8` read as text (sqlx has no type for it). Never defaulted: a position that cannot
/// be read must stop the reader, not send it back to the start of the log.
pub fn parse_transaction_id(text: &str) -> Result<u64, sqlx::Error> {
    text.parse().map_err(|e| sqlx::Error::ColumnDecode {
        index: "transaction_id".into(),
        source: Box::new(e),
    })
}

fn decode(row: &PgRow) -> Result<LoggedEvent, sqlx::Error> {
    let transaction_id: String = row.try_get("transaction_id_text")?;
    Ok(LoggedEvent {
        position: LogPosition {
            transaction_id: parse_transaction_id(&transaction_id)?,
            global_position: row.try_get("global_position")?,
        },
        event_id: row.try_get("event_id")?,
        aggregate_type: row.try_get("aggregate_type")?,
        aggregate_id: row.try_get("aggregate_id")?,
        sequence: row.try_get("sequence")?,
        event_type: row.try_get("event_type")?,
        event_version: row.try_get("event_version")?,
        payload: row.try_get("payload")?,
        metadata: row.try_get("metadata")?,
        recorded_at: row.try_get("recorded_at")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_order_by_transaction_then_position_and_round_trip_as_text() {
        let a = LogPosition {
            transaction_id: 5,
            global_position: 9,
        };
        let b = LogPosition {
            transaction_id: 6,
            global_position: 1,
        };
        assert!(
            a < b,
            "a later transaction sorts after, whatever its position"
        );
        assert_eq!("5/9".parse::<LogPosition>().unwrap(), a);
        assert_eq!(a.to_string(), "5/9");
        assert!("5".parse::<LogPosition>().is_err());
        assert!("x/1".parse::<LogPosition>().is_err());
    }
}
