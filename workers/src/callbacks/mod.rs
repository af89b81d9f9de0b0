//! The manager's side of the callback queues: what the engine sends back becomes events (the
//! results, through the command bus) or reaches the browser (the frames, through the hub).
//!
//! - [`results`] — `manager-callback-queue`: replies, failures, tool calls and titles become
//!   `TutorSession` commands issued by the system, idempotent by message id.
//! - [`generation`] — `manager-callback-queue`: generated sentences become exercises, and
//!   every generation outcome a `GenerationRequest` command.
//! - [`frames`] — `manager-callback-session-queue`: frames put back in order per request and
//!   handed to a [`StreamPush`], which the binary implements with the SignalR hub.
//!
//! The binary calls [`run_manager_callbacks`] in every manager replica; the consumers compete
//! for messages, and the command bus's idempotency makes a callback handled twice harmless.

pub mod frames;
pub mod generation;
pub mod results;

use crate::bus::{Bus, QueueName};
use crate::consumer::{Consumer, ConsumerConfig};
use crate::contracts::{callback, session};
use async_trait::async_trait;
use frames::{FramePusher, ReorderSettings};
use sqlx::PgPool;
use std::sync::Arc;
use teachin_commands::CommandBus;
use teachin_domain::ids::UserId;
use tokio::sync::watch;
use tokio::task::JoinSet;

/// The consumers' names in `bus_processed_messages`.
pub const RESULTS_CONSUMER: &str = "manager-callbacks";
pub const FRAMES_CONSUMER: &str = "manager-frames";

/// Where ordered frames go: the SignalR hub's `StreamEvent` to every connection of
/// `student`. `payload` is the method's one argument ([`frames::stream_event`]). A push is
/// best effort — a student with no connection simply misses the frame.
#[async_trait]
pub trait StreamPush: Send + Sync + 'static {
    async fn push_frame(&self, student: UserId, payload: serde_json::Value);
}

#[derive(Debug, Clone, Default)]
pub struct CallbackSettings {
    /// The `manager-callback-queue` consumer.
    pub results: ConsumerConfig,
    /// The `manager-callback-session-queue` consumer.
    pub frames: ConsumerConfig,
    pub reorder: ReorderSettings,
}

/// What the callback consumers need.
#[derive(Clone)]
pub struct CallbackDeps {
    pub pool: PgPool,
    pub bus: Arc<dyn Bus>,
    pub commands: CommandBus,
    pub push: Arc<dyn StreamPush>,
    pub settings: CallbackSettings,
}

/// The `manager-callback-queue` consumer with every result action routed.
pub fn results_consumer(deps: &CallbackDeps) -> Consumer {
    let commands = deps.commands.clone();
    Consumer::new(
        RESULTS_CONSUMER,
        QueueName::ManagerCallback,
        deps.bus.clone(),
        deps.pool.clone(),
    )
    .with_config(deps.settings.results.clone())
    .on(
        callback::TUTOR_TOOL_CALLED,
        results::ToolCalled(commands.clone()),
    )
    .on(
        callback::TUTOR_REPLY_COMPLETED,
        results::ReplyCompleted(commands.clone()),
    )
    .on(
        callback::TUTOR_REPLY_FAILED,
        results::ReplyFailed(commands.clone()),
    )
    .on(
        callback::SESSION_TITLE_GENERATED,
        results::TitleGenerated(commands.clone()),
    )
    .on(
        callback::SENTENCES_GENERATED,
        generation::SentencesDone(commands.clone()),
    )
    .on(
        callback::WORD_EXPLAINED,
        generation::WordDone(commands.clone()),
    )
    .on(
        callback::EMAIL_DRAFTED,
        generation::EmailDone(commands.clone()),
    )
    .on(
        callback::GENERATION_FAILED,
        generation::GenerationDidFail(commands),
    )
}

/// The `manager-callback-session-queue` consumer, pushing through `pusher`.
pub fn frames_consumer(deps: &CallbackDeps, pusher: FramePusher) -> Consumer {
    Consumer::new(
        FRAMES_CONSUMER,
        QueueName::ManagerCallbackSession,
        deps.bus.clone(),
        deps.pool.clone(),
    )
    .with_config(deps.settings.frames.clone())
    .on(session::CHAT_STREAM, pusher)
}

/// Runs both callback consumers, and the sweep that releases frames held back by stale gaps,
/// until `shutdown` turns true (or its sender is dropped).
///
/// Fails fast, as the role supervisor (`supervise` in `src/roles.rs`) does one level up:
/// the three tasks run until shutdown, so one that ends before it — above all one that
/// panicked — ends this function at once instead of leaving the manager running without
/// it. A panic is re-raised here with its payload, so the role's supervisor reports
/// "a task of the role panicked: …" and stops the process; a task that merely returned
/// early ends this function, which the supervisor reports as a task that stopped before
/// shutdown. The other two are left to the stop signal the supervisor then sends (they
/// share `shutdown`), and drain within its drain period.
pub async fn run_manager_callbacks(deps: CallbackDeps, shutdown: watch::Receiver<bool>) {
    let pusher = FramePusher::new(deps.settings.reorder, deps.push.clone());
    let mut tasks = JoinSet::new();
    tasks.spawn(named(
        "results",
        results_consumer(&deps).run(shutdown.clone()),
    ));
    tasks.spawn(named(
        "frames",
        frames_consumer(&deps, pusher.clone()).run(shutdown.clone()),
    ));
    let sweep_every = deps.settings.reorder.sweep_every;
    let mut stop = shutdown.clone();
    tasks.spawn(named("sweeper", async move {
        let mut ticks = tokio::time::interval(sweep_every);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = ticks.tick() => pusher.sweep().await,
                changed = stop.changed() => {
                    if changed.is_err() || *stop.borrow() {
                        return;
                    }
                }
            }
        }
    }));
    supervise_tasks(tasks, shutdown).await;
}

/// Tags a task's end with its name.
async fn named(name: &'static str, task: impl std::future::Future<Output = ()>) -> &'static str {
    task.await;
    name
}

/// Waits for `tasks`, which all run until `shutdown`: once shutdown has begun, for all of
/// them; before it, only for the first to end, which is a failure — a panic is resumed with
/// its payload, an early return logged and returned from — and the others are detached
/// (they stop on `shutdown`, which the caller's supervisor sets next).
async fn supervise_tasks(mut tasks: JoinSet<&'static str>, shutdown: watch::Receiver<bool>) {
    while let Some(ended) = tasks.join_next().await {
        let stopping = *shutdown.borrow() || shutdown.has_changed().is_err();
        match ended {
            Ok(_) if stopping => continue,
            Ok(name) => {
                tracing::error!("manager callbacks: the {name} task stopped before shutdown");
            }
            Err(error) if error.is_panic() => {
                tracing::error!("manager callbacks: a task panicked; failing the manager");
                tasks.detach_all();
                std::panic::resume_unwind(error.into_panic());
            }
            Err(error) => {
                tracing::error!(%error, "manager callbacks: a task was cancelled");
                if stopping {
                    continue;
                }
            }
        }
        tasks.detach_all();
        return;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    async fn until_stopped(mut stop: watch::Receiver<bool>) {
        let _ = stop.wait_for(|stopped| *stopped).await;
    }

    #[tokio::test]
    async fn a_panicked_task_fails_at_once_with_its_message() {
        let (stop_tx, stop_rx) = watch::channel(false);
        let mut tasks = JoinSet::new();
        tasks.spawn(named("results", until_stopped(stop_rx.clone())));
        tasks.spawn(named("frames", until_stopped(stop_rx.clone())));
        tasks.spawn(named("sweeper", async {
            tokio::time::sleep(Duration::from_millis(10)).await;
            panic!("a bug in the sweeper");
        }));
        let outer = tokio::spawn(supervise_tasks(tasks, stop_rx.clone()));
        let ended = tokio::time::timeout(Duration::from_secs(10), outer)
            .await
            .expect("a panic is not left unnoticed until shutdown");
        let error = ended.expect_err("the panic reaches the role's supervisor");
        assert!(error.is_panic());
        let payload = error.into_panic();
        assert_eq!(
            payload.downcast_ref::<&str>(),
            Some(&"a bug in the sweeper")
        );
        drop(stop_tx);
    }

    #[tokio::test]
    async fn a_task_ending_early_ends_the_whole_before_shutdown() {
        let (_stop_tx, stop_rx) = watch::channel(false);
        let mut tasks = JoinSet::new();
        tasks.spawn(named("results", until_stopped(stop_rx.clone())));
        tasks.spawn(named("frames", async {}));
        tokio::time::timeout(Duration::from_secs(10), supervise_tasks(tasks, stop_rx))
            .await
            .expect("an early end is not left unnoticed until shutdown");
    }

    #[tokio::test]
    async fn a_shutdown_waits_for_every_task() {
        let (stop_tx, stop_rx) = watch::channel(false);
        let finished = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let mut tasks = JoinSet::new();
        for name in ["results", "frames", "sweeper"] {
            let (stop, finished) = (stop_rx.clone(), finished.clone());
            tasks.spawn(named(name, async move {
                until_stopped(stop).await;
                tokio::time::sleep(Duration::from_millis(20)).await;
                finished.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }));
        }
        let supervised = tokio::spawn(supervise_tasks(tasks, stop_rx));
        stop_tx.send(true).unwrap();
        supervised.await.expect("no failure");
        assert_eq!(finished.load(std::sync::atomic::Ordering::SeqCst), 3);
    }
}
