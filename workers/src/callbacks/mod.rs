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
pub async fn run_manager_callbacks(deps: CallbackDeps, shutdown: watch::Receiver<bool>) {
    let pusher = FramePusher::new(deps.settings.reorder, deps.push.clone());
    let results = tokio::spawn(results_consumer(&deps).run(shutdown.clone()));
    let frames = tokio::spawn(frames_consumer(&deps, pusher.clone()).run(shutdown.clone()));
    let sweep_every = deps.settings.reorder.sweep_every;
    let mut stop = shutdown;
    let sweeper = tokio::spawn(async move {
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
    });
    for (name, task) in [
        ("results", results),
        ("frames", frames),
        ("sweeper", sweeper),
    ] {
        if let Err(error) = task.await {
            tracing::error!(%error, "manager callbacks: the {name} task failed");
        }
    }
}
