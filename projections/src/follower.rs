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
///
/// The lock belongs to a PostgreSQL session, and the session outlives the task that took it
/// when its connection goes back to the pool. So the lock is only ever held through a
/// [`Leadership`], which gives it back explicitly ([`Leadership::release`]) or, when it is
/// dropped any other way — the step panicked, its future was cancelled, the unlock failed —
/// closes the connection instead of returning it to the pool: the session ends and the lock
/// with it, and another replica takes over at its next poll.
#[derive(Debug, Clone, Copy)]
pub struct LeaderLock(pub i64);

impl LeaderLock {
    /// Takes the lock on `conn`: `Some` while this session leads, `None` when another
    /// session holds the lock (`conn` then goes back to the pool). A failure, or this future
    /// being dropped before the answer came, closes `conn`: the server may have granted the
    /// lock already.
    pub async fn try_acquire(
        self,
        conn: PoolConnection<Postgres>,
    ) -> Result<Option<Leadership>, sqlx::Error> {
        let mut leadership = Leadership {
            lock: self,
            conn,
            clean: false,
        };
        let acquired: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
            .bind(self.0)
            .fetch_one(&mut *leadership.conn)
            .await?;
        if acquired {
            Ok(Some(leadership))
        } else {
            leadership.clean = true;
            Ok(None)
        }
    }
}

/// A pooled connection whose session holds a [`LeaderLock`]. Dereferences to the connection,
/// so the leader's work runs on the session that holds the lock.
///
/// Dropped without [`release`](Self::release) (a panic, a cancelled step), it closes its
/// connection rather than hand a locked session back to the pool.
pub struct Leadership {
    lock: LeaderLock,
    conn: PoolConnection<Postgres>,
    /// The session holds no lock of ours: the connection may go back to the pool.
    clean: bool,
}

impl Leadership {
    /// Gives the lock back and returns the connection to the pool. When the unlock fails (or
    /// this future is dropped first) the connection is closed instead, and the lock ends with
    /// its session.
    pub async fn release(mut self) {
        let unlocked: Result<bool, _> = sqlx::query_scalar("SELECT pg_advisory_unlock($1)")
            .bind(self.lock.0)
            .fetch_one(&mut *self.conn)
            .await;
        self.clean = matches!(unlocked, Ok(true));
    }
}

impl std::ops::Deref for Leadership {
    type Target = PoolConnection<Postgres>;

    fn deref(&self) -> &Self::Target {
        &self.conn
    }
}

impl std::ops::DerefMut for Leadership {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.conn
    }
}

impl Drop for Leadership {
    fn drop(&mut self) {
        if !self.clean {
            if std::thread::panicking() {
                tracing::error!(
                    lock = self.lock.0,
                    "a leader panicked; closing its connection to give the lock up"
                );
            }
            // The pool closes the connection when it is dropped (right after this): the
            // server ends the session, and every session-level lock it held.
            self.conn.close_on_drop();
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
