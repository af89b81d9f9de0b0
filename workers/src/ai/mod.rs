//! The AI providers behind one trait (DESIGN.md decision 7): the engine asks for a chat
//! completion and gets its text as a stream of deltas, then the whole answer with its tool
//! calls, token usage and model — whichever provider is configured.
//!
//! - [`openai::OpenAiCompatible`] — any OpenAI-compatible endpoint (vLLM, llama.cpp, Ollama,
//!   OpenAI) and Azure OpenAI (deployment URL, `api-key` header), streaming over SSE, with
//!   retries that honour `Retry-After` on 429 and 5xx.
//! - [`offline::Offline`] — so `teachin all` works with no keys; every answer says it is
//!   offline, never passing for a real one.
//!
//! [`frames::FrameBatcher`] groups deltas into the numbered frames the manager pushes to the
//! browser; [`prompts`] holds the versioned prompt files.

pub mod frames;
pub mod offline;
pub mod openai;
pub mod prompts;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// Who says a message in a conversation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Speaker {
    System,
    /// Instructions from the application (the global tutor's page context).
    Developer,
    User,
    Assistant,
    /// A tool's result, answering one of the assistant's tool calls.
    Tool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ChatMessage {
    pub speaker: Speaker,
    pub content: String,
    /// For a tool result: the call it answers.
    pub tool_call_id: Option<String>,
    /// For an assistant turn that called tools.
    pub tool_calls: Vec<ToolCall>,
}

impl ChatMessage {
    pub fn new(speaker: Speaker, content: impl Into<String>) -> Self {
        ChatMessage {
            speaker,
            content: content.into(),
            tool_call_id: None,
            tool_calls: Vec::new(),
        }
    }
}

/// A tool the model may call.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolSpec {
    pub name: String,
    pub description: String,
    /// JSON Schema of the arguments.
    pub parameters: serde_json::Value,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ToolCall {
    pub id: String,
    pub name: String,
    /// The arguments as the model wrote them (JSON text).
    pub arguments: String,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct ChatRequest {
    pub messages: Vec<ChatMessage>,
    pub tools: Vec<ToolSpec>,
    pub temperature: Option<f32>,
    pub max_tokens: Option<u32>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Usage {
    pub prompt_tokens: u32,
    pub completion_tokens: u32,
}

/// A finished answer.
#[derive(Debug, Clone, PartialEq)]
pub struct Completion {
    pub text: String,
    pub tool_calls: Vec<ToolCall>,
    pub usage: Usage,
    pub model: String,
    /// `stop`, `length`, `tool_calls`...
    pub finish_reason: Option<String>,
    pub latency: Duration,
}

/// What arrives while an answer is written.
#[derive(Debug, Clone, PartialEq)]
pub enum StreamEvent {
    /// More of the answer's text.
    Delta(String),
    /// The model started calling a tool (its arguments come in the [`Completion`]).
    ToolCallStarted { name: String },
}

#[derive(Debug, thiserror::Error)]
pub enum AiError {
    /// The provider kept failing with a retryable status until the attempts ran out.
    #[error("the AI provider answered {status} after {attempts} attempts: {body}")]
    Unavailable {
        status: u16,
        attempts: u32,
        body: String,
        /// What its last answer's `Retry-After` asked for, so a caller that gives the work
        /// back to the bus can have it come back no sooner
        /// ([`crate::consumer::HandlerError::RetryAfter`]).
        retry_after: Option<std::time::Duration>,
    },
    /// A status no retry will fix (400, 401, 404...).
    #[error("the AI provider refused the request ({status}): {body}")]
    Refused { status: u16, body: String },
    /// The stream broke off after part of the answer was delivered (not retried: the part
    /// already went to the student).
    #[error("the answer broke off mid-stream: {0}")]
    Interrupted(String),
    #[error("cannot reach the AI provider: {0}")]
    Transport(String),
    #[error("the AI provider sent something unreadable: {0}")]
    Protocol(String),
}

/// A chat model that streams.
#[async_trait]
pub trait AiProvider: Send + Sync {
    /// The model (or deployment) answers come from.
    fn model(&self) -> &str;

    /// Writes an answer to `request`, handing each [`StreamEvent`] to `on_event` as it
    /// arrives, and returns the whole of it.
    async fn complete(
        &self,
        request: &ChatRequest,
        on_event: &mut (dyn FnMut(StreamEvent) + Send),
    ) -> Result<Completion, AiError>;
}
