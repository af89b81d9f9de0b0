//! The projection daemon (`teachin accessor`): keeps every projection following the log.
//!
//! - **One owner per projection.** A task takes the projection's session-level advisory lock
//!   on a connection of its own and applies batches on that same connection. If the process
//!   dies, its connection closes and the lock goes with it; a daemon in another replica,
//!   retrying every `takeover_every`, picks the projection up where the checkpoint says.
//!   (The checkpoint row lock in every batch makes double application impossible even if two
//!   owners ever overlapped; the advisory lock just keeps them from contending.)
//! - **Woken by commits, polling as a fallback.** A `LISTEN` on the events channel wakes every
//!   projection; when idle they also poll, backing off from `idle_poll_min` to `idle_poll_max`.
//! - **A poisoned event halts only its projection**, recorded in its checkpoint row (see
//!   `runner`); the others carry on. `teachin projections resume NAME` lets it run again.

use crate::log::EventLog;
use crate::projection::Projection;
use crate::runner::{self, BatchObserver, BatchOutcome, RunError, Target};
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
        let wakers: Vec<Arc<Notify>> = self
            .projections
            .iter()
            .map(|_| Arc::new(Notify::new()))
            .collect();
        let mut tasks = tokio::task::JoinSet::new();
        tasks.spawn(wake_on_commit(
            EventLog::new(self.pool.clone()),
            wakers.clone(),
            shutdown.clone(),
        ));
        for (projection, waker) in self.projections.into_iter().zip(wakers) {
            tasks.spawn(follow(
                self.pool.clone(),
                projection,
                waker,
                self.settings,
                self.observer.clone(),
                shutdown.clone(),
            ));
        }
        while tasks.join_next().await.is_some() {}
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Woke {
    TimedOut,
    Notified,
    ShuttingDown,
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

async fn wake_on_commit(
    log: EventLog,
    wakers: Vec<Arc<Notify>>,
    mut shutdown: watch::Receiver<bool>,
) {
    while !*shutdown.borrow() {
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
                    Ok(_) => wakers.iter().for_each(|w| w.notify_one()),
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

/// The advisory-lock key of a projection's ownership.
fn ownership_key(name: &str) -> String {
    format!("teachin.projection.{name}")
}

async fn follow(
    pool: PgPool,
    projection: Arc<dyn Projection>,
    waker: Arc<Notify>,
    settings: DaemonSettings,
    observer: Option<Arc<BatchObserver>>,
    mut shutdown: watch::Receiver<bool>,
) {
    let name = projection.name();
    let target = Target::live(&*projection);
    while !*shutdown.borrow() {
        let mut conn = match pool.acquire().await {
            Ok(conn) => conn.detach(),
            Err(e) => {
                tracing::warn!(projection = name, error = %e, "no database connection");
                pause(settings.takeover_every, None, &mut shutdown).await;
                continue;
            }
        };
        let owned: Result<bool, _> =
            sqlx::query_scalar("SELECT pg_try_advisory_lock(hashtext($1))")
                .bind(ownership_key(name))
                .fetch_one(&mut conn)
                .await;
        if !matches!(owned, Ok(true)) {
            // Another replica owns it (or the database hiccuped): look again later.
            drop(conn);
            pause(settings.takeover_every, None, &mut shutdown).await;
            continue;
        }
        if let Err(e) = runner::prepare(&mut conn, &target).await {
            tracing::warn!(projection = name, error = %e, "cannot prepare the connection");
            drop(conn);
            pause(settings.takeover_every, None, &mut shutdown).await;
            continue;
        }
        tracing::info!(projection = name, "following the log");
        let mut idle = settings.idle_poll_min;
        loop {
            if *shutdown.borrow() {
                return;
            }
            let outcome = runner::next_batch_observed(
                &mut conn,
                &*projection,
                &target,
                settings.batch_size,
                observer.as_deref(),
            )
            .await;
            match outcome {
                Ok(BatchOutcome::Applied(_)) => idle = settings.idle_poll_min,
                Ok(BatchOutcome::CaughtUp) => {
                    // A commit resets the back-off; only a quiet log lengthens it.
                    if pause(idle, Some(&waker), &mut shutdown).await == Woke::Notified {
                        idle = settings.idle_poll_min;
                    } else {
                        idle = (idle * 2).min(settings.idle_poll_max);
                    }
                }
                Ok(BatchOutcome::Halted) => {
                    // Stays halted until resumed or rebuilt; the check is the next batch.
                    pause(settings.takeover_every, None, &mut shutdown).await;
                }
                Err(RunError::Transient(e)) => {
                    tracing::warn!(projection = name, error = %e, "transient failure; reconnecting");
                    break;
                }
                Err(e @ RunError::LostOwnership(_)) => {
                    tracing::warn!(projection = name, error = %e, "giving up ownership");
                    break;
                }
            }
        }
        // Dropping the connection releases the advisory lock for whoever is next.
        drop(conn);
        pause(settings.idle_poll_max, None, &mut shutdown).await;
    }
}
