//! `teachin projections rebuild NAME`: refold a projection from the start of the log without
//! taking its read model away.
//!
//! 1. Create the projection's tables again in a shadow schema `rebuild_<name>` (same columns,
//!    constraints and primary keys; secondary indexes come after the load, which is faster).
//! 2. Catch the shadow up from the start of the log, under its own checkpoint
//!    `<name>@rebuild`, while the live projection keeps serving and following the log.
//! 3. Swap in one transaction: lock the live checkpoint rows (the live daemon waits at its
//!    next batch), apply the last few events to the shadows, replace the live tables with the
//!    shadow ones under the same names, and move the live checkpoints to the shadows'. Readers
//!    see the old tables until the commit and the new ones after it.
//!
//! Several projections rebuild in one pass (`rebuild_all`): each batch of the log is read once
//! and applied to every shadow; the DDL of each phase goes to the server as one script.
//!
//! A rebuild also clears a halt: it is how a fixed projection gets past a poisoned event.

use crate::checkpoint;
use crate::log::{read_after, LogPosition};
use crate::projection::{ApplyContext, ApplyError, KeyRing, Projection};
use crate::runner::{RunError, Target};
use sqlx::{Connection, PgConnection, PgPool};

#[derive(Debug, thiserror::Error)]
pub enum RebuildError {
    #[error(transparent)]
    Database(#[from] sqlx::Error),
    #[error(transparent)]
    Run(#[from] RunError),
    #[error("the rebuild stopped on an event the projection cannot apply: {0}")]
    Halted(String),
    #[error(transparent)]
    Apply(#[from] ApplyError),
}

#[derive(Debug, Clone, Copy)]
pub struct RebuildReport {
    pub events: usize,
    pub position: LogPosition,
    /// Start to finish: shadow tables, the fold over the log, indexes and swaps.
    pub elapsed: std::time::Duration,
    /// The fold over the log alone (what grows with the log; the rest is a fixed cost).
    pub fold: std::time::Duration,
}

fn shadow_schema(projection: &dyn Projection) -> String {
    format!("rebuild_{}", projection.name())
}

fn shadow_target(projection: &dyn Projection) -> Target {
    Target {
        checkpoint: format!("{}@rebuild", projection.name()),
        schema: shadow_schema(projection),
    }
}

/// Rebuilds `projection` and swaps it in. `batch_size` events per transaction.
pub async fn rebuild(
    pool: &PgPool,
    projection: &dyn Projection,
    batch_size: i64,
) -> Result<RebuildReport, RebuildError> {
    rebuild_all(pool, &[projection], batch_size).await
}

/// Rebuilds several projections in one pass over the log — each batch is read once and
/// applied to every shadow in the same transaction — then swaps them all in together.
pub async fn rebuild_all(
    pool: &PgPool,
    projections: &[&dyn Projection],
    batch_size: i64,
) -> Result<RebuildReport, RebuildError> {
    let started = std::time::Instant::now();
    let mut conn = pool.acquire().await?;
    let targets: Vec<Target> = projections.iter().map(|p| shadow_target(*p)).collect();
    create_shadow_tables(&mut conn, projections, &targets).await?;

    let prepared = started.elapsed();
    let mut position = LogPosition::START;
    let mut events_read = 0usize;
    loop {
        let mut tx = conn.begin().await?;
        for target in &targets {
            checkpoint::lock(&mut tx, &target.checkpoint).await?;
        }
        let Some(last) = fold_next(&mut tx, projections, &targets, position, batch_size).await?
        else {
            tx.commit().await?;
            break;
        };
        for target in &targets {
            checkpoint::advance(&mut tx, &target.checkpoint, last.0, last.1 as i64).await?;
        }
        tx.commit().await?;
        position = last.0;
        events_read += last.1;
    }

    let folded = started.elapsed();
    create_secondary_indexes(&mut conn, projections, &targets).await?;
    let (events, position) = swap(&mut conn, projections, &targets, position, events_read).await?;
    tracing::info!(
        events,
        shadow_tables = ?prepared,
        fold = ?(folded - prepared),
        indexes_and_swap = ?(started.elapsed() - folded),
        "rebuild phases"
    );
    Ok(RebuildReport {
        events,
        position,
        elapsed: started.elapsed(),
        fold: folded - prepared,
    })
}

/// Reads the batch after `from` once and applies it to every shadow, inside `tx`. Returns the
/// batch's last position and size, or `None` when nothing settled is left.
async fn fold_next(
    tx: &mut PgConnection,
    projections: &[&dyn Projection],
    targets: &[Target],
    from: LogPosition,
    batch_size: i64,
) -> Result<Option<(LogPosition, usize)>, RebuildError> {
    let events = read_after(&mut *tx, from, batch_size).await?;
    let Some(last) = events.last().map(|e| e.position) else {
        return Ok(None);
    };
    let mut keys = KeyRing::default();
    for (projection, target) in projections.iter().zip(targets) {
        sqlx::query(&format!(
            "SET LOCAL search_path TO {}, public",
            target.schema
        ))
        .execute(&mut *tx)
        .await?;
        projection
            .apply(
                &events,
                &mut ApplyContext {
                    conn: &mut *tx,
                    keys: &mut keys,
                },
            )
            .await
            .map_err(|e| RebuildError::Halted(format!("{}: {e}", projection.name())))?;
    }
    Ok(Some((last, events.len())))
}

/// Every projection's tables again in its shadow schema, with the live primary and unique keys
/// under the live names (the upserts need them while loading), and fresh shadow checkpoints —
/// one script, one round trip.
async fn create_shadow_tables(
    conn: &mut PgConnection,
    projections: &[&dyn Projection],
    targets: &[Target],
) -> Result<(), sqlx::Error> {
    let tables: Vec<String> = projections
        .iter()
        .flat_map(|p| p.tables().iter().map(|t| t.to_string()))
        .collect();
    let keys: Vec<(String, String, String)> = sqlx::query_as(
        "SELECT t.relname::text, c.conname::text, pg_get_constraintdef(c.oid)
           FROM pg_constraint c
           JOIN pg_class t ON t.oid = c.conrelid
           JOIN pg_namespace n ON n.oid = t.relnamespace
          WHERE n.nspname = 'read_model' AND t.relname = ANY($1) AND c.contype IN ('p', 'u')",
    )
    .bind(&tables)
    .fetch_all(&mut *conn)
    .await?;
    let mut script = String::new();
    for (projection, target) in projections.iter().zip(targets) {
        let shadow = &target.schema;
        script += &format!("DROP SCHEMA IF EXISTS {shadow} CASCADE; CREATE SCHEMA {shadow};\n");
        for table in projection.tables() {
            script += &format!(
                "CREATE TABLE {shadow}.{table} (LIKE read_model.{table} INCLUDING ALL EXCLUDING INDEXES);\n"
            );
            for (_, name, definition) in keys.iter().filter(|(t, _, _)| t == table) {
                script +=
                    &format!("ALTER TABLE {shadow}.{table} ADD CONSTRAINT {name} {definition};\n");
            }
        }
        // Checkpoint names are ours (`<projection>@rebuild`), never user input.
        script += &format!(
            "DELETE FROM public.projection_checkpoints WHERE name = '{0}';
             INSERT INTO public.projection_checkpoints (name) VALUES ('{0}');\n",
            target.checkpoint
        );
    }
    sqlx::raw_sql(&script).execute(&mut *conn).await?;
    Ok(())
}

/// The live tables' other indexes, recreated on the shadows under the same names.
async fn create_secondary_indexes(
    conn: &mut PgConnection,
    projections: &[&dyn Projection],
    targets: &[Target],
) -> Result<(), sqlx::Error> {
    let mut script = String::new();
    for (projection, target) in projections.iter().zip(targets) {
        let definitions: Vec<(String, String)> = sqlx::query_as(
            "SELECT tablename::text, indexdef FROM pg_indexes i
              WHERE schemaname = 'read_model' AND tablename = ANY($1)
                AND NOT EXISTS (SELECT 1 FROM pg_constraint c
                                 WHERE c.conname = i.indexname
                                   AND c.connamespace = 'read_model'::regnamespace)",
        )
        .bind(projection.tables())
        .fetch_all(&mut *conn)
        .await?;
        for (table, definition) in definitions {
            script += &definition.replacen(
                &format!(" ON read_model.{table} "),
                &format!(" ON {}.{table} ", target.schema),
                1,
            );
            script += ";\n";
        }
    }
    if !script.is_empty() {
        sqlx::raw_sql(&script).execute(&mut *conn).await?;
    }
    Ok(())
}

/// The last events, then the switch of every projection, in one transaction. Returns the
/// events the shadows applied in all and their final position.
async fn swap(
    conn: &mut PgConnection,
    projections: &[&dyn Projection],
    targets: &[Target],
    mut position: LogPosition,
    mut applied: usize,
) -> Result<(usize, LogPosition), RebuildError> {
    for projection in projections {
        checkpoint::ensure(&mut *conn, projection.name()).await?;
    }
    let mut tx = conn.begin().await?;
    // The live daemon's batches lock these rows first: from here on they wait for us. Locked
    // in name order, as the daemon does, so the two can never deadlock.
    let live: Vec<&str> = projections.iter().map(|p| p.name()).collect();
    sqlx::query("SELECT name FROM public.projection_checkpoints WHERE name = ANY($1) ORDER BY name FOR UPDATE")
        .bind(&live)
        .fetch_all(&mut *tx)
        .await?;
    while let Some((last, count)) = fold_next(&mut tx, projections, targets, position, 5000).await?
    {
        position = last;
        applied += count;
    }
    let mut script = String::from("SET LOCAL search_path TO public;\n");
    for (projection, target) in projections.iter().zip(targets) {
        for table in projection.tables() {
            script += &format!(
                "DROP TABLE IF EXISTS read_model.{table}; ALTER TABLE {}.{table} SET SCHEMA read_model;\n",
                target.schema
            );
        }
        script += &format!(
            "UPDATE public.projection_checkpoints
                SET transaction_id = '{tx}'::xid8, global_position = {pos}, events_applied = {applied},
                    status = 'running', failed_event_id = NULL, failed_position = NULL,
                    failure = NULL, updated_at = now()
              WHERE name = '{live}';
             DELETE FROM public.projection_checkpoints WHERE name = '{shadow_cp}';
             DROP SCHEMA {schema} CASCADE;\n",
            tx = position.transaction_id,
            pos = position.global_position,
            live = projection.name(),
            shadow_cp = target.checkpoint,
            schema = target.schema,
        );
    }
    sqlx::raw_sql(&script).execute(&mut *tx).await?;
    tx.commit().await?;
    Ok((applied, position))
}
