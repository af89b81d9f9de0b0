//! `teachin projections rebuild NAME`: refold a projection from the start of the log without
//! taking its read model away.
//!
//! 1. Create the projection's tables again in a shadow schema `rebuild_<name>` (same columns,
//!    constraints and primary keys; secondary indexes come after the load, which is faster).
//! 2. Catch the shadow up from the start of the log, under its own checkpoint
//!    `<name>@rebuild`, while the live projection keeps serving and following the log.
//! 3. Swap in one transaction: lock the live checkpoint row (the live daemon waits at its
//!    next batch), apply the last few events to the shadow, replace the live tables with the
//!    shadow ones under the same names, and move the live checkpoint to the shadow's. Readers
//!    see the old tables until the commit and the new ones after it.
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
/// applied to every shadow in the same transaction — then swaps each in.
pub async fn rebuild_all(
    pool: &PgPool,
    projections: &[&dyn Projection],
    batch_size: i64,
) -> Result<RebuildReport, RebuildError> {
    let started = std::time::Instant::now();
    let mut conn = pool.acquire().await?;
    let targets: Vec<Target> = projections.iter().map(|p| shadow_target(*p)).collect();
    for (projection, target) in projections.iter().zip(&targets) {
        create_shadow_tables(&mut conn, *projection, &target.schema).await?;
        sqlx::query("DELETE FROM public.projection_checkpoints WHERE name = $1")
            .bind(&target.checkpoint)
            .execute(&mut *conn)
            .await?;
        checkpoint::ensure(&mut *conn, &target.checkpoint).await?;
    }

    let prepared = started.elapsed();
    let mut position = LogPosition::START;
    let mut events_read = 0usize;
    loop {
        let mut tx = conn.begin().await?;
        for target in &targets {
            checkpoint::lock(&mut tx, &target.checkpoint).await?;
        }
        let events = read_after(&mut *tx, position, batch_size).await?;
        let Some(last) = events.last().map(|e| e.position) else {
            tx.commit().await?;
            break;
        };
        let mut keys = KeyRing::default();
        for (projection, target) in projections.iter().zip(&targets) {
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
                        conn: &mut tx,
                        keys: &mut keys,
                    },
                )
                .await
                .map_err(|e| RebuildError::Halted(format!("{}: {e}", projection.name())))?;
            checkpoint::advance(&mut tx, &target.checkpoint, last, events.len() as i64).await?;
        }
        tx.commit().await?;
        position = last;
        events_read += events.len();
    }

    let folded = started.elapsed();
    for (projection, target) in projections.iter().zip(&targets) {
        create_secondary_indexes(&mut conn, *projection, &target.schema).await?;
        let (_, swapped_at) = swap(&mut conn, *projection, target).await?;
        position = position.max(swapped_at);
    }
    tracing::info!(
        events = events_read,
        shadow_tables = ?prepared,
        fold = ?(folded - prepared),
        indexes_and_swap = ?(started.elapsed() - folded),
        "rebuild phases"
    );
    Ok(RebuildReport {
        events: events_read,
        position,
        elapsed: started.elapsed(),
        fold: folded - prepared,
    })
}

async fn create_shadow_tables(
    conn: &mut PgConnection,
    projection: &dyn Projection,
    shadow: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query(&format!("DROP SCHEMA IF EXISTS {shadow} CASCADE"))
        .execute(&mut *conn)
        .await?;
    sqlx::query(&format!("CREATE SCHEMA {shadow}"))
        .execute(&mut *conn)
        .await?;
    for table in projection.tables() {
        sqlx::query(&format!(
            "CREATE TABLE {shadow}.{table} (LIKE read_model.{table} INCLUDING ALL EXCLUDING INDEXES)"
        ))
        .execute(&mut *conn)
        .await?;
        // Primary and unique keys under the live names (the upserts need them while loading).
        let keys: Vec<(String, String)> = sqlx::query_as(
            "SELECT conname::text, pg_get_constraintdef(oid) FROM pg_constraint
              WHERE conrelid = format('read_model.%I', $1::text)::regclass AND contype IN ('p', 'u')",
        )
        .bind(table)
        .fetch_all(&mut *conn)
        .await?;
        for (name, definition) in keys {
            sqlx::query(&format!(
                "ALTER TABLE {shadow}.{table} ADD CONSTRAINT {name} {definition}"
            ))
            .execute(&mut *conn)
            .await?;
        }
    }
    Ok(())
}

/// The live table's other indexes, recreated on the shadow under the same names.
async fn create_secondary_indexes(
    conn: &mut PgConnection,
    projection: &dyn Projection,
    shadow: &str,
) -> Result<(), sqlx::Error> {
    for table in projection.tables() {
        let definitions: Vec<String> = sqlx::query_scalar(
            "SELECT indexdef FROM pg_indexes
              WHERE schemaname = 'read_model' AND tablename = $1
                AND indexname NOT IN (SELECT conname FROM pg_constraint
                                       WHERE conrelid = format('read_model.%I', $1::text)::regclass)",
        )
        .bind(table)
        .fetch_all(&mut *conn)
        .await?;
        for definition in definitions {
            let on_shadow = definition.replacen(
                &format!(" ON read_model.{table} "),
                &format!(" ON {shadow}.{table} "),
                1,
            );
            sqlx::query(&on_shadow).execute(&mut *conn).await?;
        }
    }
    Ok(())
}

/// The last events, then the switch, in one transaction. Returns the events the shadow
/// applied in all and its final position.
async fn swap(
    conn: &mut PgConnection,
    projection: &dyn Projection,
    target: &Target,
) -> Result<(usize, LogPosition), RebuildError> {
    let live = projection.name();
    checkpoint::ensure(&mut *conn, live).await?;
    let mut tx = conn.begin().await?;
    // The live daemon's batches lock this row first: from here on they wait for us.
    checkpoint::lock(&mut tx, live).await?;
    let shadow_cp = checkpoint::lock(&mut tx, &target.checkpoint).await?;
    sqlx::query(&format!(
        "SET LOCAL search_path TO {}, public",
        target.schema
    ))
    .execute(&mut *tx)
    .await?;
    let mut position = shadow_cp.position;
    let mut applied = shadow_cp.events_applied as usize;
    loop {
        let events = read_after(&mut *tx, position, 5000).await?;
        let Some(last) = events.last() else { break };
        position = last.position;
        applied += events.len();
        let mut keys = KeyRing::default();
        projection
            .apply(
                &events,
                &mut ApplyContext {
                    conn: &mut tx,
                    keys: &mut keys,
                },
            )
            .await?;
    }
    for table in projection.tables() {
        sqlx::query(&format!("DROP TABLE IF EXISTS read_model.{table}"))
            .execute(&mut *tx)
            .await?;
        sqlx::query(&format!(
            "ALTER TABLE {}.{table} SET SCHEMA read_model",
            target.schema
        ))
        .execute(&mut *tx)
        .await?;
    }
    sqlx::query(
        "UPDATE public.projection_checkpoints
            SET transaction_id = $2::text::xid8, global_position = $3, events_applied = $4,
                status = 'running', failed_event_id = NULL, failed_position = NULL,
                failure = NULL, updated_at = now()
          WHERE name = $1",
    )
    .bind(live)
    .bind(position.transaction_id.to_string())
    .bind(position.global_position)
    .bind(applied as i64)
    .execute(&mut *tx)
    .await?;
    sqlx::query("DELETE FROM public.projection_checkpoints WHERE name = $1")
        .bind(&target.checkpoint)
        .execute(&mut *tx)
        .await?;
    sqlx::query(&format!("DROP SCHEMA {} CASCADE", target.schema))
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok((applied, position))
}
