//! `teachin projections verify [NAME|all]`: the proof that a read model is exactly the fold of
//! the log. Each projection is folded again from the start of the log into a scratch schema
//! `verify_<name>` and compared, table by table, with its live tables in `read_model`: row
//! counts, a content hash, and the first rows that differ when they do.
//!
//! The live tables keep moving while the scratch copy is folded, so the two are compared at
//! one position — the live checkpoint's — and in one snapshot:
//!
//! 1. **Catch up, without locks.** Read the live checkpoints and fold the scratch copies up to
//!    them (one transaction per batch, committed asynchronously: the scratch is thrown away).
//!    Checkpoints never move back, so the live ones can only be further on by the time we
//!    compare. A couple of rounds bring the scratch close to the live position.
//! 2. **Compare in one snapshot of the live side.** On a second connection, one
//!    `REPEATABLE READ, READ ONLY` transaction: first `LOCK TABLE … IN ACCESS SHARE MODE
//!    NOWAIT` on the live tables (taken *before* the snapshot, so a rebuild's swap cannot
//!    replace a table under the comparison; it conflicts with nothing the daemon does; `NOWAIT`
//!    and retried, so a verify never waits for a table while holding another and cannot
//!    deadlock with a swap), then the live checkpoint rows are read — that read fixes the
//!    snapshot. The scratch copies are then folded the last few events up to exactly those
//!    positions (on the scratch connection, in short transactions), and each live table, as
//!    that snapshot sees it, is compared with its scratch copy: counts and hashes on each side,
//!    then, when they differ, both sides streamed in key order and merged to find the first
//!    differing rows.
//!
//! Why this is fair against a moving system: the daemon writes a batch's rows and its
//! checkpoint in one transaction, so in any snapshot the live tables are exactly the fold of
//! the log up to the live checkpoint that snapshot shows. Why it does not hold the daemon
//! back: it locks no checkpoint row (`FOR SHARE` would stall the daemon's next batch for the
//! whole comparison, and under `REPEATABLE READ` fail whenever the daemon moved the row
//! first), and the long transaction is read-only — it has no transaction id, so it does not
//! hold back the settled horizon of the gap-safe reader (`log.rs`), which a long transaction
//! that writes would do for every follower of the log. The scratch folds only ever hold one
//! short transaction each.
//!
//! The scratch schemas are dropped at the end, also when the verify fails; one left behind by
//! a killed verify is dropped by the next. Two verifies of the same projection take turns (a
//! session advisory lock per projection); a verify never touches a rebuild's `rebuild_<name>`
//! schemas or any checkpoint row.
//!
//! A halted projection is reported as halted and not compared.
//!
//! One known source of a false difference: sealed personal data opens with the key as it is
//! *now*. A person erased after the live projection applied their data but before it applied
//! the erasure (a lagging projection) has plaintext live and nothing in the scratch copy; the
//! difference disappears when the projection applies the erasure.

use crate::log::{read_settled, LogPosition, LoggedEvent, Metadata};
use crate::projection::{metadata_for, Projection};
use crate::rebuild::{self, RebuildError};
use crate::runner::Target;
use futures::TryStreamExt;
use serde::Serialize;
use serde_json::Value;
use sqlx::postgres::PgConnectOptions;
use sqlx::{Connection, PgConnection, PgPool};
use std::fmt;
use std::time::Duration;

/// How a verify runs.
#[derive(Debug, Clone)]
pub struct VerifyOptions {
    /// Events per read of the log while folding the scratch copies.
    pub batch_size: i64,
    /// How many differing rows to report per table.
    pub differing_rows: usize,
}

impl Default for VerifyOptions {
    fn default() -> Self {
        VerifyOptions {
            batch_size: 5000,
            differing_rows: 5,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error(transparent)]
    Database(#[from] sqlx::Error),
    /// The scratch fold could not apply an event the live projection went past.
    #[error("folding the scratch copy failed: {0}")]
    Fold(String),
    #[error("`{0}` cannot be verified: a projection name must be lowercase letters, digits and _")]
    BadName(String),
    #[error("`{0}` is listed twice")]
    Duplicate(String),
}

impl From<RebuildError> for VerifyError {
    fn from(e: RebuildError) -> Self {
        match e {
            RebuildError::Database(e) => VerifyError::Database(e),
            other => VerifyError::Fold(other.to_string()),
        }
    }
}

/// One projection's result.
#[derive(Debug, Clone, Serialize)]
pub struct ProjectionVerdict {
    pub projection: String,
    /// The live checkpoint the scratch copy was folded to and compared at.
    pub position: LogPosition,
    /// Events of the log the scratch fold went through (up to `position`).
    pub events: usize,
    pub outcome: Outcome,
    /// Every table of the projection (empty when it was not compared).
    pub tables: Vec<TableComparison>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Outcome {
    /// Every table has the rows a fresh fold of the log up to `position` produces.
    Equal,
    /// At least one table differs; see `tables`.
    Differs,
    /// The projection is halted on an event; not compared.
    Halted {
        failed_position: Option<String>,
        failure: Option<String>,
    },
    /// The live checkpoint was behind the scratch copy at compare time: it moved back.
    CheckpointMovedBack { scratch: LogPosition },
}

/// One table: the live table against the scratch copy ("expected").
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TableComparison {
    pub table: String,
    pub live_rows: i64,
    pub expected_rows: i64,
    pub live_hash: String,
    pub expected_hash: String,
    /// The first rows that differ, in key order (at most `VerifyOptions::differing_rows`).
    pub differing: Vec<RowDifference>,
}

impl TableComparison {
    pub fn is_equal(&self) -> bool {
        self.live_rows == self.expected_rows && self.live_hash == self.expected_hash
    }
}

/// A row that differs: as the live table has it and as the fold of the log has it (`None`:
/// no such row there). Rows are JSON objects of their columns (a table without a primary key:
/// the row as text).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RowDifference {
    /// `column=value, …` of the primary key, when the table has one.
    pub key: Option<String>,
    pub live: Option<Value>,
    pub expected: Option<Value>,
}

impl ProjectionVerdict {
    pub fn is_equal(&self) -> bool {
        self.outcome == Outcome::Equal
    }

    /// The tables that differ.
    pub fn differing_tables(&self) -> impl Iterator<Item = &TableComparison> {
        self.tables.iter().filter(|t| !t.is_equal())
    }

    /// The differing rows, one line each (for the operator; indented under the verdict's line).
    pub fn detail_lines(&self) -> Vec<String> {
        let mut lines = Vec::new();
        for table in self.differing_tables() {
            for row in &table.differing {
                lines.push(format!("{}{}", table.table, row));
            }
        }
        lines
    }
}

/// `<name>: equal …` / `<name>: DIFFERS …` / `<name>: HALTED …` — one line per projection.
impl fmt::Display for ProjectionVerdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let rows: i64 = self.tables.iter().map(|t| t.live_rows).sum();
        match &self.outcome {
            Outcome::Equal => write!(
                f,
                "{}: equal at {} ({} tables, {rows} rows, {} events)",
                self.projection,
                self.position,
                self.tables.len(),
                self.events
            ),
            Outcome::Differs => {
                write!(f, "{}: DIFFERS at {}:", self.projection, self.position)?;
                for (i, t) in self.differing_tables().enumerate() {
                    let sep = if i == 0 { " " } else { "; " };
                    write!(
                        f,
                        "{sep}{} has {} rows (expected {}), hash {} (expected {})",
                        t.table,
                        t.live_rows,
                        t.expected_rows,
                        short(&t.live_hash),
                        short(&t.expected_hash)
                    )?;
                }
                Ok(())
            }
            Outcome::Halted {
                failed_position,
                failure,
            } => write!(
                f,
                "{}: HALTED at {} (on {}: {}), not compared",
                self.projection,
                self.position,
                failed_position.as_deref().unwrap_or("?"),
                failure.as_deref().unwrap_or("no reason recorded")
            ),
            Outcome::CheckpointMovedBack { scratch } => write!(
                f,
                "{}: DIFFERS: the live checkpoint {} is behind the log already folded ({scratch}): it moved back",
                self.projection, self.position
            ),
        }
    }
}

/// ` (key): column: live …, expected …; …` — the columns that differ, or the whole row when it
/// exists on one side only.
impl fmt::Display for RowDifference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(key) = &self.key {
            write!(f, " ({key})")?;
        }
        match (&self.live, &self.expected) {
            (Some(Value::Object(live)), Some(Value::Object(expected))) => {
                write!(f, ":")?;
                let mut first = true;
                for (column, value) in expected {
                    let live_value = live.get(column).unwrap_or(&Value::Null);
                    if live_value != value {
                        let sep = if first { " " } else { "; " };
                        first = false;
                        write!(
                            f,
                            "{sep}{column}: live {}, expected {}",
                            clip(live_value),
                            clip(value)
                        )?;
                    }
                }
                Ok(())
            }
            (Some(live), None) => write!(f, ": only live: {}", clip(live)),
            (None, Some(expected)) => write!(f, ": missing live: {}", clip(expected)),
            (live, expected) => write!(
                f,
                ": live {}, expected {}",
                live.as_ref().map(clip).unwrap_or_default(),
                expected.as_ref().map(clip).unwrap_or_default()
            ),
        }
    }
}

fn short(hash: &str) -> &str {
    &hash[..hash.len().min(12)]
}

fn clip(value: &Value) -> String {
    const MAX: usize = 200;
    let text = value.to_string();
    if text.chars().count() <= MAX {
        text
    } else {
        format!("{}…", text.chars().take(MAX).collect::<String>())
    }
}

/// The scratch schema a verify of `projection` folds into.
pub fn scratch_schema(projection: &dyn Projection) -> String {
    format!("verify_{}", projection.name())
}

/// One projection's scratch copy while folding.
struct Scratch<'p> {
    projection: &'p dyn Projection,
    target: Target,
    /// Folded up to here.
    done: LogPosition,
    /// To be folded up to here (the live checkpoint).
    goal: LogPosition,
    events: usize,
    halted: Option<Outcome>,
}

/// Verifies `projections` (see the module comment): one verdict each, in the order given.
/// `Ok` whatever the verdicts; an `Err` means the verify itself could not run.
pub async fn verify(
    pool: &PgPool,
    projections: &[&dyn Projection],
    options: &VerifyOptions,
) -> Result<Vec<ProjectionVerdict>, VerifyError> {
    for projection in projections {
        let name = projection.name();
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        {
            return Err(VerifyError::BadName(name.to_string()));
        }
        if projections.iter().filter(|p| p.name() == name).count() > 1 {
            return Err(VerifyError::Duplicate(name.to_string()));
        }
    }
    // A connection of its own, outside the pool: its session advisory locks and its scratch
    // schemas go away with it whatever happens to this future.
    let connect = pool.connect_options();
    let mut conn = PgConnection::connect_with(&connect).await?;
    let verdicts = run(&mut conn, &connect, projections, options).await;
    let dropped = drop_scratch(&mut conn, projections).await;
    conn.close().await.ok();
    let verdicts = verdicts?;
    dropped?;
    Ok(verdicts)
}

/// [`verify`] with the default options, every verdict equal or not.
pub async fn verify_all_equal(
    pool: &PgPool,
    projections: &[&dyn Projection],
) -> Result<bool, VerifyError> {
    Ok(verify(pool, projections, &VerifyOptions::default())
        .await?
        .iter()
        .all(ProjectionVerdict::is_equal))
}

async fn drop_scratch(
    conn: &mut PgConnection,
    projections: &[&dyn Projection],
) -> Result<(), sqlx::Error> {
    if projections.is_empty() {
        return Ok(());
    }
    let schemas: Vec<String> = projections.iter().map(|p| scratch_schema(*p)).collect();
    // A failed step's transaction was dropped, and sqlx rolls it back before this runs.
    sqlx::raw_sql(&format!(
        "DROP SCHEMA IF EXISTS {} CASCADE;",
        schemas.join(", ")
    ))
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// The advisory-lock class of verifies (the two-key form, apart from the daemon's and the
/// followers' one-key locks).
const LOCK_CLASS: &str = "teachin:verify";

async fn run(
    conn: &mut PgConnection,
    connect: &PgConnectOptions,
    projections: &[&dyn Projection],
    options: &VerifyOptions,
) -> Result<Vec<ProjectionVerdict>, VerifyError> {
    let mut names: Vec<&str> = projections.iter().map(|p| p.name()).collect();
    names.sort_unstable();
    names.dedup();
    // In name order: two verifies of overlapping sets never deadlock.
    for name in &names {
        sqlx::query("SELECT pg_advisory_lock(hashtext($1), hashtext($2))")
            .bind(LOCK_CLASS)
            .bind(name)
            .execute(&mut *conn)
            .await?;
    }

    let mut scratches: Vec<Scratch> = projections
        .iter()
        .map(|p| Scratch {
            projection: *p,
            target: Target {
                // Never written: a verify keeps no checkpoint.
                checkpoint: String::new(),
                schema: scratch_schema(*p),
            },
            done: LogPosition::START,
            goal: LogPosition::START,
            events: 0,
            halted: None,
        })
        .collect();
    let metadata = metadata_for(projections.iter().copied());

    // The scratch tables copy the live ones, which a rebuild's swap may be replacing right
    // now: read their definitions and copy them under the same locks as the comparison.
    let mut pause = Duration::from_millis(10);
    loop {
        let mut tx = conn.begin().await?;
        if !lock_live_tables(&mut tx, projections, false).await? {
            tx.rollback().await?;
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(200));
            continue;
        }
        let definitions = rebuild::live_definitions(&mut tx, projections).await?;
        let mut script = format!("{}\n", rebuild::ASYNC_COMMIT);
        for scratch in &scratches {
            script +=
                &rebuild::schema_script(scratch.projection, &scratch.target.schema, &definitions);
        }
        sqlx::raw_sql(&script).execute(&mut *tx).await?;
        tx.commit().await?;
        break;
    }

    // 1. Catch up to the live checkpoints, without locks. A few rounds: the daemon moves on
    //    while we fold; the last stretch is folded in the comparison's snapshot.
    for _round in 0..3 {
        let live = live_checkpoints(&mut *conn, &names).await?;
        let mut advanced = false;
        for scratch in scratches.iter_mut() {
            if let Some(cp) = live.iter().find(|c| c.name == scratch.projection.name()) {
                if !cp.halted && cp.position > scratch.goal {
                    scratch.goal = cp.position;
                    advanced = true;
                }
            }
        }
        if !advanced {
            break;
        }
        let folded = fold_to_goals(conn, &mut scratches, metadata, options.batch_size).await?;
        if folded < options.batch_size as usize {
            break;
        }
    }

    // 2. One snapshot of the live side, on a connection of its own: a read-only transaction
    //    (no transaction id, so it holds back no reader of the log), the live tables locked
    //    against a swap before its snapshot is taken, the live checkpoints read in it.
    let mut live_conn = PgConnection::connect_with(connect).await?;
    let mut pause = Duration::from_millis(10);
    let mut live_tx = loop {
        let mut tx = live_conn.begin().await?;
        if lock_live_tables(&mut tx, projections, true).await? {
            break tx;
        }
        tx.rollback().await?;
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(200));
    };
    let live = live_checkpoints(&mut live_tx, &names).await?;
    for scratch in scratches.iter_mut() {
        let cp = live.iter().find(|c| c.name == scratch.projection.name());
        let position = cp.map(|c| c.position).unwrap_or(LogPosition::START);
        match cp {
            Some(cp) if cp.halted => {
                scratch.halted = Some(Outcome::Halted {
                    failed_position: cp.failed_position.clone(),
                    failure: cp.failure.clone(),
                });
                scratch.goal = position;
            }
            _ if position < scratch.done => {
                scratch.halted = Some(Outcome::CheckpointMovedBack {
                    scratch: scratch.done,
                });
                scratch.goal = position;
            }
            _ => scratch.goal = position,
        }
    }
    // The last stretch, up to exactly those checkpoints, in short transactions of the scratch
    // connection (the scratch copies are private: any snapshot after their commit sees them
    // as they are).
    fold_to_goals(conn, &mut scratches, metadata, options.batch_size).await?;

    let mut verdicts = Vec::new();
    for scratch in &scratches {
        let mut verdict = ProjectionVerdict {
            projection: scratch.projection.name().to_string(),
            position: scratch.goal,
            events: scratch.events,
            outcome: Outcome::Equal,
            tables: Vec::new(),
        };
        if let Some(outcome) = &scratch.halted {
            verdict.outcome = outcome.clone();
            verdicts.push(verdict);
            continue;
        }
        for table in scratch.projection.tables() {
            let comparison = compare_table(
                &mut live_tx,
                &mut *conn,
                table,
                &scratch.target.schema,
                options.differing_rows,
            )
            .await?;
            if !comparison.is_equal() {
                verdict.outcome = Outcome::Differs;
            }
            verdict.tables.push(comparison);
        }
        verdicts.push(verdict);
    }
    live_tx.rollback().await?;
    live_conn.close().await.ok();
    Ok(verdicts)
}

/// Folds every scratch copy up to its goal, one transaction per batch, committed
/// asynchronously (a scratch copy is thrown away). Returns the events read.
async fn fold_to_goals(
    conn: &mut PgConnection,
    scratches: &mut [Scratch<'_>],
    metadata: Metadata,
    batch_size: i64,
) -> Result<usize, VerifyError> {
    let mut folded = 0;
    loop {
        let mut tx = conn.begin().await?;
        sqlx::raw_sql(rebuild::ASYNC_COMMIT)
            .execute(&mut *tx)
            .await?;
        let step = fold_step(&mut tx, scratches, metadata, batch_size).await?;
        tx.commit().await?;
        match step {
            Some(n) => folded += n,
            None => return Ok(folded),
        }
    }
}

/// Locks the live tables in `ACCESS SHARE` mode inside a fresh `REPEATABLE READ` transaction,
/// before its snapshot is taken (a swap cannot replace them until the comparison ends; the
/// daemon's writes do not conflict). `NOWAIT`: the verify never waits for a table lock while
/// holding one, so it can never deadlock with a rebuild's swap, which locks the same tables
/// in an order of its own. `false` when a table is busy (the caller rolls back and retries,
/// and a waiting swap goes first).
async fn lock_live_tables(
    tx: &mut PgConnection,
    projections: &[&dyn Projection],
    read_only: bool,
) -> Result<bool, sqlx::Error> {
    let live_tables: Vec<String> = projections
        .iter()
        .flat_map(|p| p.tables().iter().map(|t| format!("read_model.{t}")))
        .collect();
    let mut prelude = format!(
        "SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, {};\n",
        if read_only { "READ ONLY" } else { "READ WRITE" }
    );
    if !live_tables.is_empty() {
        prelude += &format!(
            "LOCK TABLE {} IN ACCESS SHARE MODE NOWAIT;\n",
            live_tables.join(", ")
        );
    }
    match sqlx::raw_sql(&prelude).execute(&mut *tx).await {
        Ok(_) => Ok(true),
        Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("55P03") => Ok(false),
        Err(e) => Err(e),
    }
}

struct LiveCheckpoint {
    name: String,
    position: LogPosition,
    halted: bool,
    failed_position: Option<String>,
    failure: Option<String>,
}

/// name, transaction id (text), global position, status, failed position, failure.
type CheckpointRow = (String, String, i64, String, Option<String>, Option<String>);

/// The live checkpoints of `names` (a projection that never ran has none: at the start).
async fn live_checkpoints(
    conn: &mut PgConnection,
    names: &[&str],
) -> Result<Vec<LiveCheckpoint>, sqlx::Error> {
    let rows: Vec<CheckpointRow> = sqlx::query_as(
        "SELECT name, transaction_id::text AS tx, global_position, status, failed_position,
                    failure
               FROM public.projection_checkpoints WHERE name = ANY($1)",
    )
    .bind(names)
    .fetch_all(conn)
    .await?;
    rows.into_iter()
        .map(
            |(name, tx, global_position, status, failed_position, failure)| {
                Ok(LiveCheckpoint {
                    name,
                    position: LogPosition {
                        transaction_id: crate::log::parse_transaction_id(&tx)?,
                        global_position,
                    },
                    halted: status == "halted",
                    failed_position,
                    failure,
                })
            },
        )
        .collect()
}

/// Reads one batch after the least advanced scratch copy that is short of its goal and
/// applies to each copy the part of the batch between its position and its goal. `None` when
/// every copy has reached its goal (or the log has nothing more).
async fn fold_step(
    conn: &mut PgConnection,
    scratches: &mut [Scratch<'_>],
    metadata: Metadata,
    batch_size: i64,
) -> Result<Option<usize>, VerifyError> {
    let Some(from) = scratches
        .iter()
        .filter(|s| s.halted.is_none() && s.done < s.goal)
        .map(|s| s.done)
        .min()
    else {
        return Ok(None);
    };
    let events = read_settled(&mut *conn, from, batch_size, metadata).await?;
    let Some(last) = events.last().map(|e| e.position) else {
        return Ok(None);
    };
    for scratch in scratches
        .iter_mut()
        .filter(|s| s.halted.is_none() && s.done < s.goal)
    {
        let part = between(&events, scratch.done, scratch.goal);
        if !part.is_empty() {
            rebuild::apply(
                &mut *conn,
                &[scratch.projection],
                std::slice::from_ref(&scratch.target),
                part,
            )
            .await?;
            scratch.events += part.len();
        }
        if last > scratch.done {
            scratch.done = last.min(scratch.goal);
        }
    }
    Ok(Some(events.len()))
}

/// The events of `batch` (in log order) after `after`, up to and including `until`.
fn between(batch: &[LoggedEvent], after: LogPosition, until: LogPosition) -> &[LoggedEvent] {
    let start = batch.partition_point(|e| e.position <= after);
    let end = batch.partition_point(|e| e.position <= until);
    &batch[start..end.max(start)]
}

/// Counts, hashes and (when they differ) the first differing rows of `read_model.<table>` as
/// the live snapshot sees it against `<scratch>.<table>`. Rows are compared as their text form,
/// column by column in table order (the scratch table copies the live one's columns).
async fn compare_table(
    live: &mut PgConnection,
    scratch_conn: &mut PgConnection,
    table: &str,
    scratch: &str,
    limit: usize,
) -> Result<TableComparison, sqlx::Error> {
    // An order-independent 128-bit content hash: the sums of the two halves of each row's
    // md5 (tables have primary keys, so no row repeats), md5'ed again to print.
    let summary = |schema: &str| {
        format!(
            "SELECT count(*)::bigint, md5(
                    coalesce(sum(('x' || substr(h, 1, 16))::bit(64)::bigint::numeric), 0)::text
                    || '/' ||
                    coalesce(sum(('x' || substr(h, 17, 16))::bit(64)::bigint::numeric), 0)::text)
               FROM (SELECT md5(t::text) AS h FROM {schema}.{table} t) AS rows"
        )
    };
    let (live_rows, live_hash): (i64, String) = sqlx::query_as(&summary("read_model"))
        .fetch_one(&mut *live)
        .await?;
    let (expected_rows, expected_hash): (i64, String) = sqlx::query_as(&summary(scratch))
        .fetch_one(&mut *scratch_conn)
        .await?;
    let mut comparison = TableComparison {
        table: table.to_string(),
        live_rows,
        expected_rows,
        live_hash,
        expected_hash,
        differing: Vec::new(),
    };
    if comparison.is_equal() || limit == 0 {
        return Ok(comparison);
    }
    comparison.differing = differing_rows(live, scratch_conn, table, scratch, limit).await?;
    Ok(comparison)
}

/// The first `limit` rows that differ, in the order of their keys' hashes: both sides stream
/// (key hash, row hash) sorted by key hash, merged here; then the differing rows are read
/// whole. The key is the primary key (the whole row for a table without one).
async fn differing_rows(
    live: &mut PgConnection,
    scratch_conn: &mut PgConnection,
    table: &str,
    scratch: &str,
    limit: usize,
) -> Result<Vec<RowDifference>, sqlx::Error> {
    let key: Vec<String> = sqlx::query_scalar(
        "SELECT a.attname::text
           FROM pg_index i
           JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey)
          WHERE i.indrelid = format('read_model.%I', $1::text)::regclass AND i.indisprimary
          ORDER BY array_position(i.indkey::int2[], a.attnum)",
    )
    .bind(table)
    .fetch_all(&mut *live)
    .await?;
    let key_expr = if key.is_empty() {
        "t::text".to_string()
    } else {
        let columns: Vec<String> = key
            .iter()
            .map(|c| format!("t.\"{}\"", c.replace('"', "\"\"")))
            .collect();
        format!("ROW({})::text", columns.join(", "))
    };
    let hashes = |schema: &str| {
        format!(
            "SELECT k, r FROM (SELECT md5({key_expr}) AS k, md5(t::text) AS r
                                 FROM {schema}.{table} t) AS h
              ORDER BY k COLLATE \"C\", r COLLATE \"C\""
        )
    };
    let live_sql = hashes("read_model");
    let scratch_sql = hashes(scratch);
    let mut live_rows = sqlx::query_as::<_, (String, String)>(&live_sql).fetch(&mut *live);
    let mut scratch_rows =
        sqlx::query_as::<_, (String, String)>(&scratch_sql).fetch(&mut *scratch_conn);
    let mut differing: Vec<String> = Vec::new();
    let mut l = live_rows.try_next().await?;
    let mut s = scratch_rows.try_next().await?;
    while differing.len() < limit {
        match (&l, &s) {
            (None, None) => break,
            (Some((lk, _)), None) => {
                differing.push(lk.clone());
                l = live_rows.try_next().await?;
            }
            (None, Some((sk, _))) => {
                differing.push(sk.clone());
                s = scratch_rows.try_next().await?;
            }
            (Some((lk, lr)), Some((sk, sr))) => {
                if lk < sk {
                    differing.push(lk.clone());
                    l = live_rows.try_next().await?;
                } else if sk < lk {
                    differing.push(sk.clone());
                    s = scratch_rows.try_next().await?;
                } else {
                    if lr != sr {
                        differing.push(lk.clone());
                    }
                    l = live_rows.try_next().await?;
                    s = scratch_rows.try_next().await?;
                }
            }
        }
    }
    drop(live_rows);
    drop(scratch_rows);
    differing.dedup();

    let rows = |schema: &str| {
        format!(
            "SELECT md5({key_expr}), to_jsonb(t) FROM {schema}.{table} t
              WHERE md5({key_expr}) = ANY($1)"
        )
    };
    let live_found: Vec<(String, Value)> = sqlx::query_as(&rows("read_model"))
        .bind(&differing)
        .fetch_all(&mut *live)
        .await?;
    let scratch_found: Vec<(String, Value)> = sqlx::query_as(&rows(scratch))
        .bind(&differing)
        .fetch_all(&mut *scratch_conn)
        .await?;
    let find = |found: &[(String, Value)], k: &str| {
        found
            .iter()
            .find(|(h, _)| h == k)
            .map(|(_, row)| row.clone())
    };
    Ok(differing
        .iter()
        .map(|k| {
            let live = find(&live_found, k);
            let expected = find(&scratch_found, k);
            let key_text = (!key.is_empty()).then(|| {
                let either = live.as_ref().or(expected.as_ref());
                key.iter()
                    .map(|c| match either.and_then(|row| row.get(c)) {
                        Some(Value::String(s)) => format!("{c}={s}"),
                        Some(other) => format!("{c}={other}"),
                        None => format!("{c}=null"),
                    })
                    .collect::<Vec<_>>()
                    .join(", ")
            });
            RowDifference {
                key: key_text,
                live,
                expected,
            }
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(tx: u64, pos: i64) -> LoggedEvent {
        LoggedEvent {
            position: LogPosition {
                transaction_id: tx,
                global_position: pos,
            },
            event_id: uuid::Uuid::nil(),
            aggregate_type: String::new(),
            aggregate_id: String::new(),
            sequence: 0,
            event_type: String::new(),
            event_version: String::new(),
            payload: Value::Null,
            metadata: Value::Null,
            recorded_at: chrono::DateTime::<chrono::Utc>::UNIX_EPOCH,
        }
    }

    fn at(tx: u64, pos: i64) -> LogPosition {
        LogPosition {
            transaction_id: tx,
            global_position: pos,
        }
    }

    #[test]
    fn a_scratch_copy_takes_exactly_the_events_between_its_position_and_its_goal() {
        let batch = [event(9, 4), event(10, 2), event(10, 3), event(11, 1)];
        let part = between(&batch, at(9, 4), at(10, 3));
        assert_eq!(
            part.iter().map(|e| e.position).collect::<Vec<_>>(),
            [at(10, 2), at(10, 3)]
        );
        assert!(between(&batch, at(11, 1), at(12, 0)).is_empty());
        assert!(between(&batch, at(10, 3), at(10, 3)).is_empty());
        assert_eq!(between(&batch, LogPosition::START, at(99, 0)).len(), 4);
    }

    #[test]
    fn a_differing_row_names_only_the_columns_that_differ() {
        let row = RowDifference {
            key: Some("user_id=7".into()),
            live: Some(
                serde_json::json!({"user_id": "7", "first_name": "Mallory", "role": "Student"}),
            ),
            expected: Some(
                serde_json::json!({"user_id": "7", "first_name": "Avi", "role": "Student"}),
            ),
        };
        assert_eq!(
            row.to_string(),
            " (user_id=7): first_name: live \"Mallory\", expected \"Avi\""
        );
        let missing = RowDifference {
            key: Some("user_id=8".into()),
            live: None,
            expected: Some(serde_json::json!({"user_id": "8"})),
        };
        assert!(missing.to_string().contains("missing live"));
    }
}
