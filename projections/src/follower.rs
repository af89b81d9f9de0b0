//! What every side-effecting follower of the log shares (the realtime feed publisher, the
//! outbox relay): one replica at a time does the work, under a session-level advisory lock,
//! and it wakes on the log's NOTIFY, polling with back-off while idle and after failures.
//! Each follower keeps only its own step: read after its checkpoint, act, advance.

use crate::log::EventLog;
use sqlx::pool::PoolConnection;
use sqlx::postgres::PgListener;
use sqlx::Postgres;
use std::fmt::Display;
use std::future::Future;
use std::time::Duration;
use tokio::sync::watch;

/// A session-level advisory lock naming the one replica that runs a follower.
#[derive(Debug, Clone, Copy)]
pub struct LeaderLock(pub i64);

impl LeaderLock {
    /// Takes the lock on `conn`; `false` when another session holds it.
    pub async fn try_acquire(
        self,
        conn: &mut PoolConnection<Postgres>,
    ) -> Result<bool, sqlx::Error> {
        sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
            .bind(self.0)
            .fetch_one(&mut **conn)
            .await
    }

    /// Gives the lock back. A connection that cannot unlock is closed rather than returned
    /// to the pool, so the lock dies with it instead of staying held by an idle session.
    pub async fn release(self, conn: &mut PoolConnection<Postgres>) {
        let unlocked = sqlx::query("SELECT pg_advisory_unlock($1)")
            .bind(self.0)
            .execute(&mut **conn)
            .await;
        if unlocked.is_err() {
            conn.close_on_drop();
        }
    }
}

/// How often an idle follower looks again: `min_poll`, doubling up to `max_poll`, back to
/// `min_poll` after work or a NOTIFY.
#[derive(Debug, Clone, Copy)]
pub struct Pacing {
    pub min_poll: Duration,
    pub max_poll: Duration,
}

/// Runs `step` until `shutdown` turns true (or its sender goes away). `step` answers
/// `Ok(true)` when it did work (it runs again at once), `Ok(false)` when there was nothing
/// to do or another replica is the leader; an error is logged and waited out like idleness.
/// `what` names the follower in the logs.
pub async fn follow<F, Fut, E>(
    log: &EventLog,
    what: &str,
    pacing: Pacing,
    mut shutdown: watch::Receiver<bool>,
    mut step: F,
) where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<bool, E>>,
    E: Display,
{
    let mut listener = match log.listen().await {
        Ok(listener) => Some(listener),
        Err(error) => {
            tracing::warn!(%error, "{what}: cannot LISTEN; polling only");
            None
        }
    };
    let mut delay = pacing.min_poll;
    loop {
        if *shutdown.borrow() {
            return;
        }
        let busy = match step().await {
            Ok(busy) => busy,
            Err(error) => {
                tracing::warn!(%error, "{what}: batch failed; retrying");
                false
            }
        };
        if busy {
            delay = pacing.min_poll;
            continue;
        }
        tokio::select! {
            changed = shutdown.changed() => {
                if changed.is_err() {
                    return;
                }
            }
            _ = tokio::time::sleep(delay) => {
                delay = (delay * 2).min(pacing.max_poll);
            }
            woken = notified(&mut listener) => {
                if let Err(error) = woken {
                    tracing::warn!(%error, "{what}: LISTEN connection lost; polling only");
                    listener = None;
                }
                delay = pacing.min_poll;
            }
        }
    }
}

async fn notified(listener: &mut Option<PgListener>) -> Result<(), sqlx::Error> {
    match listener {
        Some(listener) => listener.recv().await.map(|_| ()),
        None => std::future::pending().await,
    }
}
