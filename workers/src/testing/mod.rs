//! Test support for this crate's tests and the binary's end-to-end tests (feature
//! `testing`): a local endpoint with Service Bus's REST semantics, so the Service Bus backend
//! runs against HTTP as it does in production, and an OpenAI-compatible server that streams
//! scripted SSE, so the AI providers and the engine run against HTTP too; and a bus whose lock
//! renewals fail, as a partitioned consumer's do.

pub mod llm;
pub mod partitioned;
pub mod servicebus;

pub use llm::{LlmReply, LlmServer, SeenRequest, StreamEnd};
pub use partitioned::Partitioned;
pub use servicebus::{LocalServiceBus, LocalServiceBusSettings, RedirectingHttpClient};
