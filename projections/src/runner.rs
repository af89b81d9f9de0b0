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
use crate::log::{parse_transaction_id, read_settled_until, LogPosition, LoggedEvent};
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
    next_batch_until(
        conn,
        projection,
        target,
        batch_size,
        LogPosition::END,
        observer,
    )
    .await
}

/// [`next_batch_observed`], reading no event past `until`: a projection catching up with its
/// group stops exactly where the group is, and joins it.
async fn next_batch_until(
    conn: &mut PgConnection,
    projection: &dyn Projection,
    target: &Target,
    batch_size: i64,
    until: LogPosition,
    observer: Option<&BatchObserver>,
) -> Result<BatchOutcome, RunError> {
    let mut tx = conn.begin().await.map_err(transient)?;
    let cp = checkpoint::lock(&mut tx, &target.checkpoint)
        .await
        .map_err(transient)?;
    if cp.status == Status::Halted {
        return Ok(BatchOutcome::Halted);
    }
    let events = read_settled_until(
        &mut *tx,
        cp.position,
        until,
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

/// Applies `events` to one projection in `tx`, moves its target's checkpoint past them and
/// commits: [`apply_together`] with one member.
async fn apply_and_commit(
    tx: sqlx::Transaction<'_, sqlx::Postgres>,
    projection: &dyn Projection,
    target: &Target,
    events: &[LoggedEvent],
) -> Result<Result<(), ApplyError>, RunError> {
    apply_together(
        tx,
        &[projection],
        std::slice::from_ref(&target.checkpoint),
        events,
    )
    .await
}

/// How a batch's checkpoint move and commit ended. A transient failure is the runner's to
/// retry (a commit cut off mid-way may or may not have happened; rows and checkpoint went
/// together either way, and the next batch starts from what the row says). Any other failure
/// is the batch's: a statement that failed inside the projection without failing it leaves
/// the transaction aborted (the checkpoint's move, read back just before `COMMIT`, then fails
/// with "current transaction is aborted"), or a deferred constraint refuses the commit itself.
/// Either way nothing was committed, and the batch is isolated and halted with that reason —
/// never retried for ever, and never taken for committed: because the move is read back as
/// the last statement before `COMMIT`, a `COMMIT` that PostgreSQL answers with a rollback
/// (an aborted transaction) cannot be reached.
fn settle(committed: Result<(), sqlx::Error>) -> Result<Result<(), ApplyError>, RunError> {
    match committed {
        Ok(()) => Ok(Ok(())),
        Err(e) if is_transient(&e) => Err(RunError::Transient(e)),
        Err(e) => Ok(Err(ApplyError::Database(e))),
    }
}

/// What one pass over a group of projections did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupOutcome {
    /// This many events were consumed in all (by the group, or by projections catching up
    /// with it), or a failed batch was isolated: there may be more to do at once.
    Applied(usize),
    /// Nothing settled after any running projection's checkpoint (or none is running).
    CaughtUp,
}

/// One pass over `group` (the live projections, on a connection readied with [`prepare`] for
/// every member):
///
/// - **The group** — the running projections at the most advanced checkpoint — applies the
///   next batch in ONE transaction: the checkpoint rows are locked together, the log is read
///   once, every member applies it, and their checkpoints move to its end. All the read models
///   cost one read and one commit per batch instead of one each. When a member fails on the
///   batch, the members apply it one by one instead ([`next_batch`]), which isolates the
///   poisoned event and halts only its projection.
/// - **Each projection behind the group** (newly deployed, resumed after a halt, or left
///   behind by another's rebuild) then applies one batch of its own, reading no further than
///   where the group now is; when it gets there it is a member. A projection's batch never
///   starts anywhere but at its own checkpoint, so no projection ever sees an event twice and
///   no checkpoint moves back (the table's trigger refuses that anyway).
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
    let mut running: Vec<(&dyn Projection, LogPosition)> = Vec::with_capacity(group.len());
    for projection in group {
        let row = rows
            .iter()
            .find(|(name, _, _, status)| name == projection.name() && status == "running");
        if let Some((_, tx, pos, _)) = row {
            let position = LogPosition {
                transaction_id: parse_transaction_id(tx).map_err(transient)?,
                global_position: *pos,
            };
            running.push((&**projection, position));
        }
    }
    let Some(frontier) = running.iter().map(|(_, position)| *position).max() else {
        tx.commit().await.map_err(transient)?;
        return Ok(GroupOutcome::CaughtUp);
    };
    let (members, behind): (Vec<_>, Vec<_>) = running
        .into_iter()
        .partition(|(_, position)| *position == frontier);
    let members: Vec<&dyn Projection> = members.into_iter().map(|(p, _)| p).collect();

    let metadata = metadata_for(members.iter().copied());
    let events = read_settled_until(&mut *tx, frontier, LogPosition::END, batch_size, metadata)
        .await
        .map_err(transient)?;
    let mut consumed = 0;
    let mut group_at = frontier;
    let mut isolated = false;
    if events.is_empty() {
        tx.commit().await.map_err(transient)?;
    } else {
        let names: Vec<String> = members.iter().map(|p| p.name().to_string()).collect();
        match apply_together(tx, &members, &names, &events).await? {
            Ok(()) => {
                if let Some(observer) = observer {
                    for projection in &members {
                        observer(projection.name(), &events);
                    }
                }
                group_at = events.last().expect("not empty").position;
                consumed += events.len();
            }
            Err(failure) => {
                tracing::warn!(error = %failure, "group batch failed; isolating");
                isolated = true;
                for projection in &members {
                    let target = Target::live(*projection);
                    if let BatchOutcome::Applied(n) =
                        next_batch_observed(conn, *projection, &target, batch_size, observer)
                            .await?
                    {
                        consumed += n;
                    }
                }
            }
        }
    }

    for (projection, _) in behind {
        let target = Target::live(projection);
        if let BatchOutcome::Applied(n) =
            next_batch_until(conn, projection, &target, batch_size, group_at, observer).await?
        {
            consumed += n;
        }
    }
    Ok(if consumed > 0 || isolated {
        GroupOutcome::Applied(consumed)
    } else {
        GroupOutcome::CaughtUp
    })
}

/// Every member applies `events` in `tx`, then the `checkpoints` move to its end and are read
/// back (in the same transaction, before the commit), and the transaction commits. The outer
/// error is the runner's problem (transient), the inner one the batch's (rolled back).
async fn apply_together(
    mut tx: sqlx::Transaction<'_, sqlx::Postgres>,
    members: &[&dyn Projection],
    checkpoints: &[String],
    events: &[LoggedEvent],
) -> Result<Result<(), ApplyError>, RunError> {
    let mut keys = KeyRing::default();
    for projection in members {
        let mut cx = ApplyContext {
            conn: &mut tx,
            keys: &mut keys,
        };
        match projection.apply(events, &mut cx).await {
            Ok(()) => {}
            Err(ApplyError::Database(e)) if is_transient(&e) => return Err(RunError::Transient(e)),
            Err(failure) => return Ok(Err(failure)), // dropping `tx` rolls back
        }
    }
    let last = events.last().expect("never called with no events").position;
    let checked = checkpoint::advance_all(&mut tx, checkpoints, last, events.len() as i64).await;
    let committed = match checked {
        Ok(()) => tx.commit().await,
        Err(e) => Err(e),
    };
    settle(committed)
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
