//! Teachin's messaging: how the roles hand work to each other (DESIGN.md decisions 3 and 4).
//!
//! - [`bus`] — one `Bus` trait over the four queues of the cloud architecture, with two real
//!   backends: PostgreSQL (default) and Azure Service Bus.
//! - [`consumer`] — the loop that takes messages from a queue and hands each to the handler
//!   of its action: lock renewal while it runs, idempotency by message id, dead-lettering of
//!   what no handler can take, graceful shutdown.
//! - [`relay`] — the outbox relay: integration messages derived from the event log with a
//!   checkpoint of its own, so a command never writes to the bus directly (no dual write).
//! - [`ai`] — the AI providers (Azure OpenAI, any OpenAI-compatible endpoint, offline) behind
//!   one streaming trait, the frame batcher and the versioned prompts.
//! - [`contracts`] — the messages' actions and payloads, shared by producers and consumers.
//! - [`engine`] — the engine role's AI workers on `engine-queue` ([`engine::run_engine`]).
//! - [`callbacks`] — the manager's consumers of the callback queues: results become
//!   commands, frames go in order to the hub ([`callbacks::run_manager_callbacks`]).

pub mod ai;
pub mod bus;
pub mod callbacks;
pub mod consumer;
pub mod contracts;
pub mod engine;
pub mod relay;
#[cfg(feature = "testing")]
pub mod testing;

pub use bus::{Bus, BusConfig, BusError, OutgoingMessage, QueueName, ReceivedMessage};
pub mod email;
pub mod media;
pub mod speech;
pub mod stats;
pub use callbacks::{run_manager_callbacks, CallbackDeps, CallbackSettings, StreamPush};
pub use engine::{run_engine, EngineDeps, EngineSettings};
