//! The projection daemon (`teachin accessor`): keeps every projection following the log.
//!
//! - **One owner for the projections.** A task takes the read models' session-level advisory
//!   lock on a connection of its own and applies batches on that same connection. If the
//!   process dies, its connection closes and the lock goes with it; a daemon in another
//!   replica, retrying every `takeover_every`, picks up where the checkpoints say. (The
//!   checkpoint row locks in every batch make double application impossible even if two owners
//!   ever overlapped; the advisory lock just keeps them from contending.)
//! - **All projections in one pass.** Each batch is read once and applied to every running
//!   projection at the group's checkpoint in one transaction ([`runner::next_group_batch`]).
//!   When a projection fails on a batch, that round runs projection by projection instead,
//!   which isolates the poisoned event and halts only its projection. A projection behind the
//!   group (new, resumed, or left behind by another's rebuild) catches up in batches of its own
//!   and joins the group where it is: the others never wait for it, nor see an event twice.
//! - **Woken by commits, polling as a fallback.** A `LISTEN` on the events channel wakes every
//!   projection; when idle they also poll, backing off from `idle_poll_min` to `idle_poll_max`.
//! - **A poisoned event halts only its projection**, recorded in its checkpoint row (see
//!   `runner`); the others carry on. `teachin projections resume NAME` lets it run again.

use crate::log::EventLog;
use crate::projection::Projection;
use crate::runner::{self, BatchObserver, GroupOutcome, RunError, Target};
use sqlx::PgPool;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{watch, Notify};

#[derive(Debug, Clone, Copy)]
pub struct DaemonSettings {
    pub batch_size: i64,
    pub idle_poll_min: Duration,
    pub idle_poll_max: Duration,
    /// How often a replica that does not own a projection checks whether it can take over.
    pub takeover_every: Duration,
}

impl Default for DaemonSettings {
    fn default() -> Self {
        Self {
            batch_size: 1000,
            idle_poll_min: Duration::from_millis(20),
            idle_poll_max: Duration::from_secs(1),
            takeover_every: Duration::from_secs(2),
        }
    }
}

pub struct ProjectionDaemon {
    pool: PgPool,
    projections: Vec<Arc<dyn Projection>>,
    settings: DaemonSettings,
    observer: Option<Arc<BatchObserver>>,
}

impl ProjectionDaemon {
    pub fn new(
        pool: PgPool,
        projections: Vec<Arc<dyn Projection>>,
        settings: DaemonSettings,
    ) -> Self {
        Self {
            pool,
            projections,
            settings,
            observer: None,
        }
    }

    /// Reports every committed batch to `observer` (for measurement).
    pub fn with_observer(mut self, observer: Arc<BatchObserver>) -> Self {
        self.observer = Some(observer);
        self
    }

    /// Runs until `shutdown` turns true.
    pub async fn run(self, shutdown: watch::Receiver<bool>) {
        let waker = Arc::new(Notify::new());
        let mut listener = AbortOnDrop(Some(tokio::spawn(wake_on_commit(
            EventLog::new(self.pool.clone()),
            waker.clone(),
            shutdown.clone(),
        ))));
        follow(
            self.pool,
            self.projections,
            waker,
            self.settings,
            self.observer,
            shutdown,
        )
        .await;
        if let Some(listener) = listener.0.take() {
            let _ = listener.await;
        }
    }
}

/// The commit listener ends with the daemon, also when the daemon's future is dropped (a
/// panic in a projection unwinds through `run`): no orphaned task keeps a LISTEN connection.
struct AbortOnDrop(Option<tokio::task::JoinHandle<()>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        if let Some(task) = &self.0 {
            task.abort();
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Woke {
    TimedOut,
    Notified,
    ShuttingDown,
}

/// Shutdown was asked for, or whoever could ask has gone (a dropped sender must stop the
/// loops, not make every `pause` return at once and spin them).
fn stopping(shutdown: &watch::Receiver<bool>) -> bool {
    *shutdown.borrow() || shutdown.has_changed().is_err()
}

/// Waits for `duration`, a wake-up, or shutdown — whichever comes first.
async fn pause(
    duration: Duration,
    waker: Option<&Notify>,
    shutdown: &mut watch::Receiver<bool>,
) -> Woke {
    let woken = async {
        match waker {
            Some(waker) => waker.notified().await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = tokio::time::sleep(duration) => Woke::TimedOut,
        _ = woken => Woke::Notified,
        _ = shutdown.wait_for(|stop| *stop) => Woke::ShuttingDown,
    }
}

async fn wake_on_commit(log: EventLog, waker: Arc<Notify>, mut shutdown: watch::Receiver<bool>) {
    while !stopping(&shutdown) {
        let mut listener = match log.listen().await {
            Ok(listener) => listener,
            Err(e) => {
                tracing::warn!(error = %e, "cannot LISTEN for commits; polling only for now");
                pause(Duration::from_secs(2), None, &mut shutdown).await;
                continue;
            }
        };
        loop {
            tokio::select! {
                received = listener.recv() => match received {
                    // notify_one keeps a permit when nobody waits: no wake-up is lost.
                    Ok(_) => waker.notify_one(),
                    Err(e) => {
                        tracing::warn!(error = %e, "commit listener lost; reconnecting");
                        break;
                    }
                },
                _ = shutdown.wait_for(|stop| *stop) => return,
            }
        }
    }
}

/// The advisory-lock key of the read models' ownership.
const OWNERSHIP_KEY: &str = "teachin.read_models";

async fn follow(
    pool: PgPool,
    projections: Vec<Arc<dyn Projection>>,
    waker: Arc<Notify>,
    settings: DaemonSettings,
    observer: Option<Arc<BatchObserver>>,
    mut shutdown: watch::Receiver<bool>,
) {
    while !stopping(&shutdown) {
        let mut conn = match pool.acquire().await {
            Ok(conn) => conn.detach(),
            Err(e) => {
                tracing::warn!(error = %e, "no database connection");
                pause(settings.takeover_every, None, &mut shutdown).await;
                continue;
            }
        };
        let owned: Result<bool, _> =
            sqlx::query_scalar("SELECT pg_try_advisory_lock(hashtext($1))")
                .bind(OWNERSHIP_KEY)
                .fetch_one(&mut conn)
                .await;
        if !matches!(owned, Ok(true)) {
            // Another replica owns them (or the database hiccuped): look again later.
            drop(conn);
            pause(settings.takeover_every, None, &mut shutdown).await;
            continue;
        }
        // Read-model commits need not wait for the disk: rows and checkpoint commit together,
        // so a server crash can only undo both for the last moments, and they are applied
        // again from the log, which commands commit durably. Waiting for the flush was the
        // largest part of the commit-to-visible lag (ARCHITECTURE.md, invariant 8).
        let mut prepared = sqlx::query("SET synchronous_commit TO off")
            .execute(&mut conn)
            .await
            .map(|_| ());
        for projection in &projections {
            prepared = prepared.and(runner::prepare(&mut conn, &Target::live(&**projection)).await);
        }
        if let Err(e) = prepared {
            tracing::warn!(error = %e, "cannot prepare the connection");
            drop(conn);
            pause(settings.takeover_every, None, &mut shutdown).await;
            continue;
        }
        tracing::info!(projections = projections.len(), "following the log");
        let mut idle = settings.idle_poll_min;
        while !stopping(&shutdown) {
            let outcome = runner::next_group_batch(
                &mut conn,
                &projections,
                settings.batch_size,
                observer.as_deref(),
            )
            .await;
            match outcome {
                Ok(GroupOutcome::Applied(_)) => idle = settings.idle_poll_min,
                Ok(GroupOutcome::CaughtUp) => {
                    // A commit resets the back-off; only a quiet log lengthens it.
                    if pause(idle, Some(&waker), &mut shutdown).await == Woke::Notified {
                        idle = settings.idle_poll_min;
                    } else {
                        idle = (idle * 2).min(settings.idle_poll_max);
                    }
                }
                Err(RunError::Transient(e)) => {
                    tracing::warn!(error = %e, "transient failure; reconnecting");
                    break;
                }
                Err(e @ RunError::LostOwnership(_)) => {
                    tracing::warn!(error = %e, "giving up ownership");
                    break;
                }
            }
        }
        // Dropping the connection releases the advisory lock for whoever is next.
        drop(conn);
        pause(settings.idle_poll_max, None, &mut shutdown).await;
    }
}
