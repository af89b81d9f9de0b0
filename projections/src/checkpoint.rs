//! A projection's checkpoint row: where it is in the log, whether it runs or halted, and on
//! what. Every batch locks the row first, which makes it the projection's mutex as well.
//!
//! A checkpoint never moves back: a trigger on the table refuses it (SQLSTATE `TC001`,
//! migration `…_checkpoints_never_move_back.sql`), whoever writes it. And every move is
//! checked where it is made: [`advance`] reads back what it stored, in the same transaction.

use crate::log::{parse_transaction_id, LogPosition};
use serde::Serialize;
use sqlx::{PgConnection, PgExecutor};
use uuid::Uuid;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Checkpoint {
    pub name: String,
    pub position: LogPosition,
    pub events_applied: i64,
    pub status: Status,
    pub failed_event_id: Option<Uuid>,
    pub failed_position: Option<String>,
    pub failure: Option<String>,
    pub updated_at: chrono::DateTime<chrono::Utc>,
}

impl Checkpoint {
    /// How a projection that never ran is reported.
    pub fn not_started(name: &str) -> Self {
        Checkpoint {
            name: name.to_string(),
            position: LogPosition::START,
            events_applied: 0,
            status: Status::Running,
            failed_event_id: None,
            failed_position: None,
            failure: None,
            updated_at: chrono::DateTime::<chrono::Utc>::UNIX_EPOCH,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Running,
    Halted,
}

const SELECT: &str = "SELECT name, transaction_id::text AS tx, global_position, events_applied,
    status, failed_event_id, failed_position, failure, updated_at FROM public.projection_checkpoints";

type Row = (
    String,
    String,
    i64,
    i64,
    String,
    Option<Uuid>,
    Option<String>,
    Option<String>,
    chrono::DateTime<chrono::Utc>,
);

fn from_row(row: Row) -> Result<Checkpoint, sqlx::Error> {
    Ok(Checkpoint {
        name: row.0,
        position: LogPosition {
            transaction_id: parse_transaction_id(&row.1)?,
            global_position: row.2,
        },
        events_applied: row.3,
        status: if row.4 == "halted" {
            Status::Halted
        } else {
            Status::Running
        },
        failed_event_id: row.5,
        failed_position: row.6,
        failure: row.7,
        updated_at: row.8,
    })
}

/// Creates the row at the start of the log if it does not exist yet.
pub async fn ensure<'e>(executor: impl PgExecutor<'e>, name: &str) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO public.projection_checkpoints (name) VALUES ($1) ON CONFLICT DO NOTHING",
    )
    .bind(name)
    .execute(executor)
    .await?;
    Ok(())
}

/// Locks and reads the row inside the caller's transaction.
pub async fn lock(conn: &mut PgConnection, name: &str) -> Result<Checkpoint, sqlx::Error> {
    let row: Row = sqlx::query_as(&format!("{SELECT} WHERE name = $1 FOR UPDATE"))
        .bind(name)
        .fetch_one(conn)
        .await?;
    from_row(row)
}

/// The SQLSTATE the table's trigger raises when a write would move a checkpoint back.
pub const MOVED_BACK: &str = "TC001";

/// Moves `name` to `to`, counting `events` more, and checks — in the caller's transaction —
/// that the row now reads exactly `to`. A missing row, or a trigger's refusal to move it back,
/// is an error, never a silent no-op.
pub async fn advance(
    conn: &mut PgConnection,
    name: &str,
    to: LogPosition,
    events: i64,
) -> Result<(), sqlx::Error> {
    advance_all(conn, &[name.to_string()], to, events).await
}

/// [`advance`] for several checkpoints at once (a group batch), in one statement.
pub async fn advance_all(
    conn: &mut PgConnection,
    names: &[String],
    to: LogPosition,
    events: i64,
) -> Result<(), sqlx::Error> {
    let stored: Vec<(String, String, i64)> = sqlx::query_as(
        "UPDATE public.projection_checkpoints
            SET transaction_id = $2::text::xid8, global_position = $3,
                events_applied = events_applied + $4, updated_at = now()
          WHERE name = ANY($1)
         RETURNING name, transaction_id::text, global_position",
    )
    .bind(names)
    .bind(to.transaction_id.to_string())
    .bind(to.global_position)
    .bind(events)
    .fetch_all(conn)
    .await?;
    if stored.len() != names.len() {
        return Err(sqlx::Error::RowNotFound);
    }
    for (name, tx, pos) in stored {
        let at = LogPosition {
            transaction_id: parse_transaction_id(&tx)?,
            global_position: pos,
        };
        if at != to {
            return Err(sqlx::Error::Decode(
                format!("checkpoint {name} reads {at} right after it was moved to {to}").into(),
            ));
        }
    }
    Ok(())
}

/// Records that `name` stopped on an event it cannot apply.
pub async fn halt<'e>(
    executor: impl PgExecutor<'e>,
    name: &str,
    event_id: Uuid,
    position: LogPosition,
    failure: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE public.projection_checkpoints
            SET status = 'halted', failed_event_id = $2, failed_position = $3, failure = $4,
                updated_at = now()
          WHERE name = $1",
    )
    .bind(name)
    .bind(event_id)
    .bind(position.to_string())
    .bind(failure)
    .execute(executor)
    .await?;
    Ok(())
}

/// Lets a halted projection run again (after a fix is deployed).
pub async fn resume<'e>(executor: impl PgExecutor<'e>, name: &str) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(
        "UPDATE public.projection_checkpoints
            SET status = 'running', failed_event_id = NULL, failed_position = NULL, failure = NULL,
                updated_at = now()
          WHERE name = $1",
    )
    .bind(name)
    .execute(executor)
    .await?;
    Ok(done.rows_affected() == 1)
}

pub async fn all<'e>(executor: impl PgExecutor<'e>) -> Result<Vec<Checkpoint>, sqlx::Error> {
    let rows: Vec<Row> = sqlx::query_as(&format!("{SELECT} ORDER BY name"))
        .fetch_all(executor)
        .await?;
    rows.into_iter().map(from_row).collect()
}

pub async fn get<'e>(
    executor: impl PgExecutor<'e>,
    name: &str,
) -> Result<Option<Checkpoint>, sqlx::Error> {
    let row: Option<Row> = sqlx::query_as(&format!("{SELECT} WHERE name = $1"))
        .bind(name)
        .fetch_optional(executor)
        .await?;
    row.map(from_row).transpose()
}

/// Where status and metrics stop counting a projection's backlog.
pub const LAG_COUNT_LIMIT: i64 = 100_000;

/// Events committed after `position`, counted up to `cap` (a status figure, not an audit).
pub async fn lag_events<'e>(
    executor: impl PgExecutor<'e>,
    position: LogPosition,
    cap: i64,
) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT count(*) FROM (SELECT 1 FROM public.events
            WHERE (transaction_id, global_position) > ($1::text::xid8, $2) LIMIT $3) AS pending",
    )
    .bind(position.transaction_id.to_string())
    .bind(position.global_position)
    .bind(cap)
    .fetch_one(executor)
    .await
}
