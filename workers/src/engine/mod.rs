//! The engine role's AI workers: consumers of `engine-queue` that write what the platform
//! asked the AI for and send the results back on the callback queues — never touching the
//! event store themselves (the manager turns the callbacks into commands), so the write side
//! keeps one way in.
//!
//! - [`tutor`] — tutor replies (plain chat, the global tutor, mistake explanations): frames
//!   streamed to the student, the reply, tool calls and the session's title as callbacks.
//! - [`generation`] — generation requests: sentences (split for the word-order game), word
//!   explanations, email drafts, each a checked JSON answer sent back as one callback.
//! - [`context`] — what a reply is written from, read from the log and opened.
//! - [`prompting`] — the versioned prompts put together.
//! - [`stream`] — the frames of a streamed answer.
//! - [`tools`] — the tools the model may call (the clock, Tavily web search).
//! - [`settings`] — the provider and tool settings and their environment variables.
//! - [`usage`] — the day's model usage per person in Redis, which the manager's quotas read
//!   and the engine adds each answer's tokens to.
//!
//! What the engine logs about a request is its ids, sizes, token counts and durations — never
//! a prompt, a student's message or the model's answer (personal data, kept sealed in the log).
//!
//! The binary calls [`run_engine`]; [`engine_consumer`] is the same consumer, for callers
//! that drive it themselves (tests take one message at a time).

pub mod context;
pub mod generation;
pub mod prompting;
pub mod settings;
pub mod stream;
pub mod tools;
pub mod tutor;
pub mod usage;

use crate::ai::AiProvider;
use crate::bus::{Bus, QueueName};
use crate::consumer::{Consumer, ConsumerConfig};
use crate::contracts::engine;
use context::ContextReader;
use generation::{GenerationSettings, Generations};
use settings::WebSearchSettings;
use sqlx::PgPool;
use std::sync::Arc;
use teachin_commands::CommandBus;
use teachin_projections::EventLog;
use tokio::sync::watch;
use tools::Tools;
use tutor::{TutorReplies, TutorSettings};

pub use settings::{provider_from_env, AiSettings, SettingsError};

/// The consumer's name in `bus_processed_messages`.
pub const CONSUMER_NAME: &str = "engine";

/// How the engine works.
#[derive(Debug, Clone, Default)]
pub struct EngineSettings {
    pub consumer: ConsumerConfig,
    pub tutor: TutorSettings,
    pub generation: GenerationSettings,
    pub web_search: WebSearchSettings,
    /// Where each model call's tokens are counted against its person's daily quota; `None`
    /// counts nothing (tests that run without Redis; the binary always sets it).
    pub usage: Option<usage::UsageLedger>,
}

/// What the engine needs.
#[derive(Clone)]
pub struct EngineDeps {
    pub pool: PgPool,
    pub bus: Arc<dyn Bus>,
    /// For its aggregate reader and the personal-data vault: the engine reads and opens,
    /// it issues no commands.
    pub commands: CommandBus,
    pub provider: Arc<dyn AiProvider>,
    pub settings: EngineSettings,
}

/// The `engine-queue` consumer with every engine action routed.
pub fn engine_consumer(deps: &EngineDeps) -> Consumer {
    let context = ContextReader::new(
        EventLog::new(deps.pool.clone()),
        deps.commands.reader().clone(),
        deps.commands.services().vault.clone(),
    );
    let tutor = TutorReplies::new(
        deps.bus.clone(),
        deps.commands.reader().clone(),
        context.clone(),
        deps.provider.clone(),
        Tools::new(&deps.settings.web_search),
        deps.settings.tutor.clone(),
        deps.settings.usage.clone(),
    );
    let generations = Generations::new(
        deps.bus.clone(),
        deps.commands.reader().clone(),
        context,
        deps.provider.clone(),
        deps.settings.generation.clone(),
        deps.settings.usage.clone(),
    );
    Consumer::new(
        CONSUMER_NAME,
        QueueName::Engine,
        deps.bus.clone(),
        deps.pool.clone(),
    )
    .with_config(deps.settings.consumer.clone())
    .on(engine::PROCESSING_CHAT_MESSAGE, tutor.clone())
    .on(engine::PROCESSING_GLOBAL_CHAT_MESSAGE, tutor.clone())
    .on(engine::PROCESSING_EXPLAIN_MISTAKE, tutor)
    .on(engine::GENERATE_SENTENCES, generations.clone())
    .on(engine::GENERATE_SPLIT_SENTENCES, generations.clone())
    .on(engine::GENERATE_WORD_EXPLAIN, generations.clone())
    .on(engine::GENERATE_EMAIL_DRAFT, generations)
}

/// Runs the engine's workers until `shutdown` turns true (or its sender is dropped), then
/// lets the replies in flight finish within the consumer's grace period.
pub async fn run_engine(deps: EngineDeps, shutdown: watch::Receiver<bool>) {
    tracing::info!(model = deps.provider.model(), "engine workers starting");
    engine_consumer(&deps).run(shutdown).await;
}
