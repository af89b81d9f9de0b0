//! Applying a projection's next batch, exactly once.
//!
//! One batch is one transaction: lock the checkpoint row, read the next settled events after
//! it, let the projection apply them, move the checkpoint, commit. A crash anywhere loses the
//! whole transaction and nothing else, so the read model and its checkpoint never disagree.
//!
//! When a batch fails for a reason that is not transient, the runner isolates the event that
//! cannot be applied by bisecting the batch — committing the good halves — and halts the
//! projection on that event, recording its position and the error. It never skips it.

use crate::checkpoint::{self, Status};
use crate::log::{read_settled, LogPosition, LoggedEvent};
use crate::projection::{metadata_for, ApplyContext, ApplyError, KeyRing, Projection};
use sqlx::{Connection, PgConnection};

/// Where a projection writes and which checkpoint tracks it: live, or a rebuild's shadow.
#[derive(Debug, Clone)]
pub struct Target {
    pub checkpoint: String,
    pub schema: String,
}

impl Target {
    pub fn live(projection: &dyn Projection) -> Self {
        Target {
            checkpoint: projection.name().to_string(),
            schema: "read_model".to_string(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BatchOutcome {
    /// This many events were consumed (applied or ignored) and checkpointed.
    Applied(usize),
    /// Nothing settled after the checkpoint.
    CaughtUp,
    /// The projection is halted on an event it cannot apply.
    Halted,
}

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The database is unreachable or the transaction lost a race; try again later.
    #[error("transient database failure: {0}")]
    Transient(sqlx::Error),
    /// The checkpoint moved under us: another runner owns this projection now.
    #[error("the checkpoint of {0} was moved by another runner")]
    LostOwnership(String),
}

/// Is this database error worth retrying rather than blaming on the batch?
pub fn is_transient(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Database(db) => match db.code() {
            // serialization failure, deadlock, lock timeout, admin shutdown, cancel, too many
            // connections, and the whole connection-exception class.
            Some(code) => {
                matches!(
                    code.as_ref(),
                    "40001" | "40P01" | "55P03" | "57P01" | "57014" | "53300"
                ) || code.starts_with("08")
            }
            None => false,
        },
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => true,
        _ => false,
    }
}

fn transient(e: sqlx::Error) -> RunError {
    RunError::Transient(e)
}

/// Readies a connection that will apply batches for `target` (and nothing else): creates the
/// checkpoint row if needed and points the session's `search_path` at the target schema, so
/// each batch costs no more round trips than it must.
pub async fn prepare(conn: &mut PgConnection, target: &Target) -> Result<(), sqlx::Error> {
    checkpoint::ensure(&mut *conn, &target.checkpoint).await?;
    // The schema name is ours (read_model or rebuild_<name>), never user input.
    sqlx::query(&format!("SET search_path TO {}, public", target.schema))
        .execute(&mut *conn)
        .await?;
    Ok(())
}

async fn try_apply(
    conn: &mut PgConnection,
    projection: &dyn Projection,
    events: &[LoggedEvent],
) -> Result<(), ApplyError> {
    let mut keys = KeyRing::default();
    let mut cx = ApplyContext {
        conn,
        keys: &mut keys,
    };
    projection.apply(events, &mut cx).await
}

/// Told about every batch right after it commits (the bench measures lag with it).
pub type BatchObserver = dyn Fn(&str, &[LoggedEvent]) + Send + Sync;

/// Applies the next batch of up to `batch_size` events of `projection` into `target`, on a
/// connection readied with [`prepare`].
pub async fn next_batch(
    conn: &mut PgConnection,
    projection: &dyn Projection,
    target: &Target,
    batch_size: i64,
) -> Result<BatchOutcome, RunError> {
    next_batch_observed(conn, projection, target, batch_size, None).await
}

/// [`next_batch`], reporting the committed batch to `observer`.
pub async fn next_batch_observed(
    conn: &mut PgConnection,
    projection: &dyn Projection,
    target: &Target,
    batch_size: i64,
    observer: Option<&BatchObserver>,
) -> Result<BatchOutcome, RunError> {
    let mut tx = conn.begin().await.map_err(transient)?;
    let cp = checkpoint::lock(&mut tx, &target.checkpoint)
        .await
        .map_err(transient)?;
    if cp.status == Status::Halted {
        return Ok(BatchOutcome::Halted);
    }
    let events = read_settled(
        &mut *tx,
        cp.position,
        batch_size,
        metadata_for([projection]),
    )
    .await
    .map_err(transient)?;
    if events.is_empty() {
        tx.commit().await.map_err(transient)?;
        return Ok(BatchOutcome::CaughtUp);
    }
    match apply_and_commit(tx, projection, target, &events).await? {
        Ok(()) => {
            if let Some(observer) = observer {
                observer(&target.checkpoint, &events);
            }
            Ok(BatchOutcome::Applied(events.len()))
        }
        Err(failure) => isolate(conn, projection, target, cp.position, &events, failure).await,
    }
}

/// Applies `events` in `tx`, moves the checkpoint past them and commits. The outer error is
/// the runner's problem (transient), the inner one the batch's (rolled back).
async fn apply_and_commit(
    mut tx: sqlx::Transaction<'_, sqlx::Postgres>,
    projection: &dyn Projection,
    target: &Target,
    events: &[LoggedEvent],
) -> Result<Result<(), ApplyError>, RunError> {
    match try_apply(&mut tx, projection, events).await {
        Ok(()) => {
            let last = events.last().expect("never called with no events").position;
            checkpoint::advance(&mut tx, &target.checkpoint, last, events.len() as i64)
                .await
                .map_err(transient)?;
            tx.commit().await.map_err(transient)?;
            Ok(Ok(()))
        }
        Err(ApplyError::Database(e)) if is_transient(&e) => Err(RunError::Transient(e)),
        Err(failure) => Ok(Err(failure)), // dropping `tx` rolls back
    }
}

/// What one pass of a group of projections did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupOutcome {
    /// This many events were read and every running projection of the group consumed them.
    Applied(usize),
    /// Nothing settled after any running projection's checkpoint (or none is running).
    CaughtUp,
    /// A projection failed on this batch; nothing was committed. Run the projections one by
    /// one ([`next_batch`]) to isolate and halt the poisoned event, then resume as a group.
    Failed,
}

/// Applies the next batch to every running projection of `group` in ONE transaction: the
/// checkpoint rows are locked together, the log is read once (from the least advanced
/// checkpoint), each projection applies only the events past its own checkpoint, and all
/// checkpoints move to the end of the batch. All the read models then cost one read and one
/// commit per batch instead of one each. The connection must have been readied with
/// [`prepare`] for every member (live targets: same schema).
pub async fn next_group_batch(
    conn: &mut PgConnection,
    group: &[std::sync::Arc<dyn Projection>],
    batch_size: i64,
    observer: Option<&BatchObserver>,
) -> Result<GroupOutcome, RunError> {
    let names: Vec<String> = group.iter().map(|p| p.name().to_string()).collect();
    let mut tx = conn.begin().await.map_err(transient)?;
    let rows: Vec<(String, String, i64, String)> = sqlx::query_as(
        "SELECT name, transaction_id::text, global_position, status
           FROM public.projection_checkpoints WHERE name = ANY($1) ORDER BY name FOR UPDATE",
    )
    .bind(&names)
    .fetch_all(&mut *tx)
    .await
    .map_err(transient)?;
    let running: Vec<(&dyn Projection, LogPosition)> = group
        .iter()
        .filter_map(|p| {
            rows.iter()
                .find(|(name, _, _, status)| name == p.name() && status == "running")
                .map(|(_, tx, pos, _)| {
                    let position = LogPosition {
                        transaction_id: tx.parse().unwrap_or_default(),
                        global_position: *pos,
                    };
                    (&**p, position)
                })
        })
        .collect();
    let Some(from) = running.iter().map(|(_, position)| *position).min() else {
        tx.commit().await.map_err(transient)?;
        return Ok(GroupOutcome::CaughtUp);
    };
    let metadata = metadata_for(running.iter().map(|(projection, _)| *projection));
    let events = read_settled(&mut *tx, from, batch_size, metadata)
        .await
        .map_err(transient)?;
    let Some(last) = events.last().map(|e| e.position) else {
        tx.commit().await.map_err(transient)?;
        return Ok(GroupOutcome::CaughtUp);
    };
    let mut keys = KeyRing::default();
    let mut consumed: Vec<(&str, usize)> = Vec::with_capacity(running.len());
    for (projection, position) in &running {
        // Events are in log order: this projection's share starts after its checkpoint.
        let start = events.partition_point(|e| e.position <= *position);
        let share = &events[start..];
        if !share.is_empty() {
            let mut cx = ApplyContext {
                conn: &mut tx,
                keys: &mut keys,
            };
            match projection.apply(share, &mut cx).await {
                Ok(()) => {}
                Err(ApplyError::Database(e)) if is_transient(&e) => {
                    return Err(RunError::Transient(e))
                }
                Err(failure) => {
                    tracing::warn!(projection = projection.name(), error = %failure, "group batch failed; isolating");
                    return Ok(GroupOutcome::Failed); // dropping `tx` rolls back
                }
            }
        }
        consumed.push((projection.name(), share.len()));
    }
    sqlx::query(
        "UPDATE public.projection_checkpoints AS c
            SET transaction_id = $2::text::xid8, global_position = $3,
                events_applied = c.events_applied + u.consumed, updated_at = now()
           FROM UNNEST($1::text[], $4::bigint[]) AS u(name, consumed)
          WHERE c.name = u.name",
    )
    .bind(
        consumed
            .iter()
            .map(|(n, _)| n.to_string())
            .collect::<Vec<_>>(),
    )
    .bind(last.transaction_id.to_string())
    .bind(last.global_position)
    .bind(consumed.iter().map(|(_, c)| *c as i64).collect::<Vec<_>>())
    .execute(&mut *tx)
    .await
    .map_err(transient)?;
    tx.commit().await.map_err(transient)?;
    if let Some(observer) = observer {
        for (projection, position) in &running {
            let start = events.partition_point(|e| e.position <= *position);
            observer(projection.name(), &events[start..]);
        }
    }
    Ok(GroupOutcome::Applied(events.len()))
}

/// The batch `events` (starting right after `from`) failed with `failure`: commit what can
/// be applied, then halt on the event that cannot.
async fn isolate(
    conn: &mut PgConnection,
    projection: &dyn Projection,
    target: &Target,
    from: LogPosition,
    events: &[LoggedEvent],
    failure: ApplyError,
) -> Result<BatchOutcome, RunError> {
    // A poison report names its event: everything before it is good.
    if let ApplyError::Poison { event_id, reason } = &failure {
        if let Some(index) = events.iter().position(|e| e.event_id == *event_id) {
            if index > 0 {
                if let Err(other) =
                    apply_exactly(conn, projection, target, from, &events[..index]).await?
                {
                    // Something before the named event fails too: isolate that first.
                    return Box::pin(isolate(
                        conn,
                        projection,
                        target,
                        from,
                        &events[..index],
                        other,
                    ))
                    .await;
                }
            }
            halt(conn, target, &events[index], reason).await?;
            return Ok(BatchOutcome::Halted);
        }
    }
    // A database error does not say which event caused it: bisect.
    if events.len() == 1 {
        halt(conn, target, &events[0], &failure.to_string()).await?;
        return Ok(BatchOutcome::Halted);
    }
    let (first, second) = events.split_at(events.len() / 2);
    match apply_exactly(conn, projection, target, from, first).await? {
        Err(error) => Box::pin(isolate(conn, projection, target, from, first, error)).await,
        Ok(()) => {
            let after_first = first.last().expect("a half is never empty").position;
            match apply_exactly(conn, projection, target, after_first, second).await? {
                Ok(()) => Ok(BatchOutcome::Applied(events.len())),
                Err(error) => {
                    Box::pin(isolate(
                        conn,
                        projection,
                        target,
                        after_first,
                        second,
                        error,
                    ))
                    .await
                }
            }
        }
    }
}

/// Applies exactly `events` (which must follow `from`) in one transaction. The outer error is
/// the runner's problem, the inner one the batch's.
async fn apply_exactly(
    conn: &mut PgConnection,
    projection: &dyn Projection,
    target: &Target,
    from: LogPosition,
    events: &[LoggedEvent],
) -> Result<Result<(), ApplyError>, RunError> {
    let mut tx = conn.begin().await.map_err(transient)?;
    let cp = checkpoint::lock(&mut tx, &target.checkpoint)
        .await
        .map_err(transient)?;
    if cp.position != from {
        return Err(RunError::LostOwnership(target.checkpoint.clone()));
    }
    apply_and_commit(tx, projection, target, events).await
}

async fn halt(
    conn: &mut PgConnection,
    target: &Target,
    event: &LoggedEvent,
    reason: &str,
) -> Result<(), RunError> {
    tracing::error!(
        projection = %target.checkpoint,
        position = %event.position,
        event_id = %event.event_id,
        event_type = %event.event_type,
        reason,
        "projection halted on an event it cannot apply"
    );
    checkpoint::halt(
        &mut *conn,
        &target.checkpoint,
        event.event_id,
        event.position,
        reason,
    )
    .await
    .map_err(transient)
}

/// Applies batches until nothing settled is left (or the projection halts). Returns how many
/// events were consumed. For rebuilds, tests and the bench; the daemon runs batches itself.
pub async fn catch_up(
    conn: &mut PgConnection,
    projection: &dyn Projection,
    target: &Target,
    batch_size: i64,
) -> Result<(usize, BatchOutcome), RunError> {
    prepare(conn, target).await.map_err(transient)?;
    let mut total = 0;
    let outcome = loop {
        match next_batch(conn, projection, target, batch_size).await {
            Ok(BatchOutcome::Applied(n)) => total += n,
            done => break done,
        }
    };
    // The connection may go back to a pool: leave its session as it was.
    sqlx::query("RESET search_path")
        .execute(&mut *conn)
        .await
        .map_err(transient)?;
    Ok((total, outcome?))
}
