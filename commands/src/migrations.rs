//! Embedded schema migrations (sqlx). `teachin migrate` runs them, and every role runs them at
//! start-up; sqlx holds a Postgres advisory lock for the duration, so parallel replicas apply
//! each migration exactly once and the losers simply find nothing left to do.

use sqlx::migrate::{MigrateError, Migrator};
use sqlx::PgPool;

pub static MIGRATOR: Migrator = sqlx::migrate!("./migrations");

/// Applies every pending migration; returns how many were applied by this call.
pub async fn run(pool: &PgPool) -> Result<usize, MigrateError> {
    let before: i64 = applied_count(pool).await;
    MIGRATOR.run(pool).await?;
    let after = applied_count(pool).await;
    Ok((after - before).max(0) as usize)
}

/// Whether every migration this binary knows has been applied (readiness).
pub async fn is_current(pool: &PgPool) -> bool {
    applied_count(pool).await >= MIGRATOR.iter().count() as i64
}

async fn applied_count(pool: &PgPool) -> i64 {
    // The table does not exist before the first run; that is zero applied migrations.
    sqlx::query_scalar("SELECT count(*) FROM _sqlx_migrations WHERE success")
        .fetch_one(pool)
        .await
        .unwrap_or(0)
}
