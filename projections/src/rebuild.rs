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
//! Several projections rebuild in one pass (`rebuild_all`), and the pass is a pipeline, since
//! most of a rebuild's time is spent by the server and a lone connection leaves it idle while
//! it waits for the client:
//!
//! - one connection reads the log, a batch ahead of the folds, and hands every batch to each
//!   of them (each batch is read once);
//! - the projections are split into a few folders, each on a connection of its own: a folder
//!   creates its shadow tables (while the first batch is being read), applies every batch to
//!   its shadows in one transaction per batch, then builds its secondary indexes;
//! - the swap waits for every folder and switches all the projections in one transaction.
//!
//! Projections own disjoint tables and the log is the same for all of them, so folding them
//! side by side produces exactly what folding them one after the other would.
//!
//! A rebuild also clears a halt: it is how a fixed projection gets past a poisoned event.

use crate::checkpoint;
use crate::log::{read_settled, LogPosition, LoggedEvent, Metadata};
use crate::projection::{metadata_for, ApplyContext, ApplyError, KeyRing, Projection};
use crate::runner::{RunError, Target};
use sqlx::{Connection, PgConnection, PgPool};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

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
    pub elapsed: Duration,
    /// The fold over the log alone (what grows with the log; the rest is a fixed cost): from
    /// the moment the first folder's shadow tables are ready to the last batch's commit.
    pub fold: Duration,
}

/// At most this many folders (connections) work side by side, pool permitting.
const MAX_FOLDERS: usize = 4;

/// Batches the reader may be ahead of the slowest folder.
const READ_AHEAD: usize = 2;

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

/// The live tables' definitions a shadow copies: primary and unique keys (needed by the
/// upserts while loading) and the other indexes (built after the load). `verify` copies the
/// same keys into its scratch tables.
pub(crate) struct LiveDefinitions {
    /// (table, constraint name, definition)
    keys: Vec<(String, String, String)>,
    /// (table, `CREATE INDEX` statement on the live table)
    indexes: Vec<(String, String)>,
}

/// One folder's share of the projections, with their shadow targets.
struct Share<'p> {
    projections: Vec<&'p dyn Projection>,
    targets: Vec<Target>,
}

/// What a folder did, for the report.
struct Folded {
    ready: Instant,
    done: Instant,
    events: usize,
    position: LogPosition,
}

/// Rebuilds several projections in one pass over the log — each batch is read once and
/// applied to every shadow — then swaps them all in together.
pub async fn rebuild_all(
    pool: &PgPool,
    projections: &[&dyn Projection],
    batch_size: i64,
) -> Result<RebuildReport, RebuildError> {
    let started = Instant::now();
    let folders = folder_count(pool, projections.len());
    let mut shares: Vec<Share> = (0..folders)
        .map(|_| Share {
            projections: Vec::new(),
            targets: Vec::new(),
        })
        .collect();
    for (i, projection) in projections.iter().enumerate() {
        shares[i % folders].projections.push(*projection);
        shares[i % folders].targets.push(shadow_target(*projection));
    }

    // The reader starts at once: the first batch is read while the shadows are created.
    let (senders, receivers): (Vec<_>, Vec<_>) =
        (0..folders).map(|_| mpsc::channel(READ_AHEAD)).unzip();
    let metadata = metadata_for(projections.iter().copied());
    let reader = tokio::spawn(read_log(pool.clone(), batch_size, metadata, senders));

    let definitions = live_definitions(&mut *pool.acquire().await?, projections).await?;
    // Every folder runs to its own end, even after another failed: cancelling one mid-`BEGIN`
    // would hand its connection back to the pool inside a transaction (transact-rs/sqlx#4385).
    // A failed folder drops its channel, which stops the reader, whose end stops the others.
    let folded: Vec<Result<Folded, RebuildError>> = futures::future::join_all(
        shares
            .iter()
            .zip(receivers)
            .map(|(share, batches)| fold(pool, share, &definitions, batches)),
    )
    .await;
    // A reader that failed closed every channel, which looks like the end of the log to the
    // folders: its own result says which it was.
    // The reader is never aborted: a join error is its panic, passed on as a call would.
    let read = reader
        .await
        .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()));
    let folded = folded.into_iter().collect::<Result<Vec<_>, _>>()?;
    let (events_read, position) = read?;
    debug_assert!(folded
        .iter()
        .all(|f| f.events == events_read && f.position == position));

    let fold_started = folded.iter().map(|f| f.ready).min().unwrap_or(started);
    let fold_ended = folded.iter().map(|f| f.done).max().unwrap_or(started);
    let all_targets: Vec<Target> = shares.iter().flat_map(|s| s.targets.clone()).collect();
    let all_projections: Vec<&dyn Projection> = shares
        .iter()
        .flat_map(|s| s.projections.iter().copied())
        .collect();
    let swap_started = Instant::now();
    let (events, position) = swap(
        &mut *pool.acquire().await?,
        &all_projections,
        &all_targets,
        metadata,
        position,
        events_read,
    )
    .await?;
    tracing::info!(
        events,
        folders,
        shadow_tables = ?(fold_started - started),
        fold = ?(fold_ended - fold_started),
        indexes = ?(swap_started.saturating_duration_since(fold_ended)),
        swap = ?swap_started.elapsed(),
        "rebuild phases"
    );
    Ok(RebuildReport {
        events,
        position,
        elapsed: started.elapsed(),
        fold: fold_ended - fold_started,
    })
}

/// How many folders: one per projection up to [`MAX_FOLDERS`], taking at most half of the pool
/// (the reader holds one more). Never more connections than the pool has, so the folders can
/// never wait on each other for one; the swap's comes back from a folder.
fn folder_count(pool: &PgPool, projections: usize) -> usize {
    let spare = (pool.options().get_max_connections() as usize).saturating_sub(1) / 2;
    projections.min(MAX_FOLDERS).min(spare).max(1)
}

/// Reads the settled log from the start, in batches of `batch_size`, and hands each batch to
/// every folder. Returns how many events it read and the last one's position. Stops at the
/// first empty read (what is left is applied by the swap, under the live locks) or when a
/// folder is gone (it failed; its error is the one to report).
async fn read_log(
    pool: PgPool,
    batch_size: i64,
    metadata: Metadata,
    folders: Vec<mpsc::Sender<Arc<Vec<LoggedEvent>>>>,
) -> Result<(usize, LogPosition), sqlx::Error> {
    let mut conn = pool.acquire().await?;
    let mut position = LogPosition::START;
    let mut events = 0usize;
    loop {
        let batch = read_settled(&mut *conn, position, batch_size, metadata).await?;
        let Some(last) = batch.last().map(|e| e.position) else {
            return Ok((events, position));
        };
        position = last;
        events += batch.len();
        let batch = Arc::new(batch);
        for folder in &folders {
            if folder.send(batch.clone()).await.is_err() {
                return Ok((events, position));
            }
        }
    }
}

/// One folder: its shadow tables, every batch the reader hands it (one transaction each, the
/// shadow checkpoints moving with the rows), then its secondary indexes.
async fn fold(
    pool: &PgPool,
    share: &Share<'_>,
    definitions: &LiveDefinitions,
    mut batches: mpsc::Receiver<Arc<Vec<LoggedEvent>>>,
) -> Result<Folded, RebuildError> {
    let mut conn = pool.acquire().await?;
    create_shadow_tables(&mut conn, share, definitions).await?;
    let ready = Instant::now();
    let mut position = LogPosition::START;
    let mut events = 0usize;
    while let Some(batch) = batches.recv().await {
        let last = batch.last().expect("the reader never sends an empty batch");
        let mut tx = conn.begin().await?;
        not_durable_yet(&mut tx).await?;
        for target in &share.targets {
            checkpoint::lock(&mut tx, &target.checkpoint).await?;
        }
        apply(&mut tx, &share.projections, &share.targets, &batch).await?;
        for target in &share.targets {
            checkpoint::advance(
                &mut tx,
                &target.checkpoint,
                last.position,
                batch.len() as i64,
            )
            .await?;
        }
        tx.commit().await?;
        position = last.position;
        events += batch.len();
    }
    let done = Instant::now();
    create_secondary_indexes(&mut conn, share, definitions).await?;
    Ok(Folded {
        ready,
        done,
        events,
        position,
    })
}

/// The shadows' transactions do not wait for their commit to reach the disk: a rebuild that
/// crashes starts over from scratch anyway (it drops its shadow schemas first), and the swap
/// commits synchronously, which flushes the write-ahead log up to it — every shadow row and
/// index included — before the live tables are replaced. Nothing is UNLOGGED: a crash loses
/// at most the last shadow transactions, whole, never part of one.
pub(crate) const ASYNC_COMMIT: &str = "SET LOCAL synchronous_commit TO off;";

async fn not_durable_yet(tx: &mut PgConnection) -> Result<(), sqlx::Error> {
    sqlx::raw_sql(ASYNC_COMMIT).execute(tx).await?;
    Ok(())
}

/// Applies `events` to every shadow of `projections`, inside `tx` (also `verify`'s scratch
/// fold: a target's checkpoint is not touched here).
pub(crate) async fn apply(
    tx: &mut PgConnection,
    projections: &[&dyn Projection],
    targets: &[Target],
    events: &[LoggedEvent],
) -> Result<(), RebuildError> {
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
                events,
                &mut ApplyContext {
                    conn: &mut *tx,
                    keys: &mut keys,
                },
            )
            .await
            .map_err(|e| RebuildError::Halted(format!("{}: {e}", projection.name())))?;
    }
    Ok(())
}

/// Reads the batch after `from` and applies it to every shadow, inside `tx`. Returns the
/// batch's last position and size, or `None` when nothing settled is left.
async fn fold_next(
    tx: &mut PgConnection,
    projections: &[&dyn Projection],
    targets: &[Target],
    metadata: Metadata,
    from: LogPosition,
    batch_size: i64,
) -> Result<Option<(LogPosition, usize)>, RebuildError> {
    let events = read_settled(&mut *tx, from, batch_size, metadata).await?;
    let Some(last) = events.last().map(|e| e.position) else {
        return Ok(None);
    };
    apply(tx, projections, targets, &events).await?;
    Ok(Some((last, events.len())))
}

/// The live tables' keys and secondary indexes, for every table of `projections`.
pub(crate) async fn live_definitions(
    conn: &mut PgConnection,
    projections: &[&dyn Projection],
) -> Result<LiveDefinitions, sqlx::Error> {
    let tables: Vec<String> = projections
        .iter()
        .flat_map(|p| p.tables().iter().map(|t| t.to_string()))
        .collect();
    let keys = sqlx::query_as(
        "SELECT t.relname::text, c.conname::text, pg_get_constraintdef(c.oid)
           FROM pg_constraint c
           JOIN pg_class t ON t.oid = c.conrelid
           JOIN pg_namespace n ON n.oid = t.relnamespace
          WHERE n.nspname = 'read_model' AND t.relname = ANY($1) AND c.contype IN ('p', 'u')",
    )
    .bind(&tables)
    .fetch_all(&mut *conn)
    .await?;
    let indexes = sqlx::query_as(
        "SELECT tablename::text, indexdef FROM pg_indexes i
          WHERE schemaname = 'read_model' AND tablename = ANY($1)
            AND NOT EXISTS (SELECT 1 FROM pg_constraint c
                             WHERE c.conname = i.indexname
                               AND c.connamespace = 'read_model'::regnamespace)",
    )
    .bind(&tables)
    .fetch_all(&mut *conn)
    .await?;
    Ok(LiveDefinitions { keys, indexes })
}

/// A share's tables again in their shadow schemas, with the live primary and unique keys under
/// the live names (the upserts need them while loading), and fresh shadow checkpoints — one
/// script, one round trip.
async fn create_shadow_tables(
    conn: &mut PgConnection,
    share: &Share<'_>,
    definitions: &LiveDefinitions,
) -> Result<(), sqlx::Error> {
    let mut script = format!("{ASYNC_COMMIT}\n");
    for (projection, target) in share.projections.iter().zip(&share.targets) {
        script += &schema_script(*projection, &target.schema, definitions);
        // Checkpoint names are ours (`<projection>@rebuild`), never user input.
        script += &format!(
            "DELETE FROM public.projection_checkpoints WHERE name = '{0}';
             INSERT INTO public.projection_checkpoints (name) VALUES ('{0}');\n",
            target.checkpoint
        );
    }
    let mut tx = conn.begin().await?;
    sqlx::raw_sql(&script).execute(&mut *tx).await?;
    tx.commit().await
}

/// `schema` made afresh with `projection`'s tables in it: the live columns, defaults and checks,
/// and the live primary and unique keys under the live names (the upserts need them).
pub(crate) fn schema_script(
    projection: &dyn Projection,
    schema: &str,
    definitions: &LiveDefinitions,
) -> String {
    let mut script = format!("DROP SCHEMA IF EXISTS {schema} CASCADE; CREATE SCHEMA {schema};\n");
    for table in projection.tables() {
        // The keys go into the CREATE itself: adding them afterwards costs a statement
        // (and an index build) each.
        let mut elements = format!("LIKE read_model.{table} INCLUDING ALL EXCLUDING INDEXES");
        for (_, name, definition) in definitions.keys.iter().filter(|(t, _, _)| t == table) {
            elements += &format!(", CONSTRAINT {name} {definition}");
        }
        script += &format!("CREATE TABLE {schema}.{table} ({elements});\n");
    }
    script
}

/// The live tables' other indexes, recreated on a share's shadows under the same names.
async fn create_secondary_indexes(
    conn: &mut PgConnection,
    share: &Share<'_>,
    definitions: &LiveDefinitions,
) -> Result<(), sqlx::Error> {
    let mut script = String::new();
    for (projection, target) in share.projections.iter().zip(&share.targets) {
        for (table, definition) in definitions
            .indexes
            .iter()
            .filter(|(t, _)| projection.tables().contains(&t.as_str()))
        {
            script += &definition.replacen(
                &format!(" ON read_model.{table} "),
                &format!(" ON {}.{table} ", target.schema),
                1,
            );
            script += ";\n";
        }
    }
    if !script.is_empty() {
        let mut tx = conn.begin().await?;
        sqlx::raw_sql(&format!("{ASYNC_COMMIT}\n{script}"))
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
    }
    Ok(())
}

/// The last events, then the switch of every projection, in one transaction. Returns the
/// events the shadows applied in all and their final position.
async fn swap(
    conn: &mut PgConnection,
    projections: &[&dyn Projection],
    targets: &[Target],
    metadata: Metadata,
    mut position: LogPosition,
    mut applied: usize,
) -> Result<(usize, LogPosition), RebuildError> {
    let live: Vec<&str> = projections.iter().map(|p| p.name()).collect();
    // The live checkpoint rows, created if a projection never ran (`checkpoint::ensure` for
    // all of them in one statement).
    sqlx::query(
        "INSERT INTO public.projection_checkpoints (name) SELECT unnest($1::text[])
         ON CONFLICT DO NOTHING",
    )
    .bind(&live)
    .execute(&mut *conn)
    .await?;
    let mut tx = conn.begin().await?;
    // The live daemon's batches lock these rows first: from here on they wait for us. Locked
    // in name order, as the daemon does, so the two can never deadlock.
    sqlx::query("SELECT name FROM public.projection_checkpoints WHERE name = ANY($1) ORDER BY name FOR UPDATE")
        .bind(&live)
        .fetch_all(&mut *tx)
        .await?;
    while let Some((last, count)) =
        fold_next(&mut tx, projections, targets, metadata, position, 5000).await?
    {
        position = last;
        applied += count;
    }
    // As few statements as possible: the live daemon waits for this commit.
    let quoted = |names: &mut dyn Iterator<Item = String>| {
        names
            .map(|n| format!("'{n}'"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let live_tables: Vec<String> = projections
        .iter()
        .flat_map(|p| p.tables().iter().map(|t| format!("read_model.{t}")))
        .collect();
    let mut script = format!(
        "SET LOCAL search_path TO public;\nDROP TABLE IF EXISTS {};\n",
        live_tables.join(", ")
    );
    for (projection, target) in projections.iter().zip(targets) {
        for table in projection.tables() {
            script += &format!(
                "ALTER TABLE {}.{table} SET SCHEMA read_model;\n",
                target.schema
            );
        }
    }
    // Checkpoint and schema names are ours, never user input.
    script += &format!(
        "UPDATE public.projection_checkpoints
            SET transaction_id = '{tx}'::xid8, global_position = {pos}, events_applied = {applied},
                status = 'running', failed_event_id = NULL, failed_position = NULL,
                failure = NULL, updated_at = now()
          WHERE name IN ({live});
         DELETE FROM public.projection_checkpoints WHERE name IN ({shadow_cps});
         DROP SCHEMA {schemas} CASCADE;\n",
        tx = position.transaction_id,
        pos = position.global_position,
        live = quoted(&mut live.iter().map(|n| n.to_string())),
        shadow_cps = quoted(&mut targets.iter().map(|t| t.checkpoint.clone())),
        schemas = targets
            .iter()
            .map(|t| t.schema.as_str())
            .collect::<Vec<_>>()
            .join(", "),
    );
    sqlx::raw_sql(&script).execute(&mut *tx).await?;
    tx.commit().await?;
    Ok((applied, position))
}
