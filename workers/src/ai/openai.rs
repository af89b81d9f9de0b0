//! Chat completions over the OpenAI wire format, streamed as server-sent events: the format
//! Azure OpenAI, OpenAI and the self-hosted servers (vLLM, llama.cpp, Ollama) all speak.
//!
//! One request is `POST .../chat/completions` with `stream: true` and
//! `stream_options.include_usage`, so the last chunk carries the token counts. The answer
//! arrives as `data: {chunk}` events ending with `data: [DONE]`; text deltas are handed on as
//! they come, tool-call fragments are put together by their index.
//!
//! Failures: 429 and 5xx are retried up to `max_attempts`, waiting what `Retry-After` (or
//! Azure's `retry-after-ms`) says, else an exponential back-off, capped at `max_delay`. When
//! the attempts run out, the last `Retry-After` (uncapped) travels out in
//! [`AiError::Unavailable`], for a handler that would rather give the message back to the bus
//! for that long than fail (`HandlerError::RetryAfter`). A
//! stream that breaks off is retried only if nothing of it was handed on yet; after that the
//! student has seen part of the answer, and the error is the caller's to report.

use super::{AiError, AiProvider, ChatMessage, ChatRequest, Completion, Speaker, StreamEvent};
use super::{ToolCall, Usage};
use async_trait::async_trait;
use serde::Deserialize;
use serde_json::{json, Value};
use std::fmt;
use std::time::{Duration, Instant};

/// Where the model is.
#[derive(Clone)]
pub enum Endpoint {
    /// Any OpenAI-compatible server: `{base_url}/chat/completions`, `Authorization: Bearer`.
    OpenAiCompatible {
        /// E.g. `http://localhost:11434/v1`.
        base_url: String,
        api_key: Option<String>,
        model: String,
    },
    /// Azure OpenAI: `{endpoint}/openai/deployments/{deployment}/chat/completions
    /// ?api-version={api_version}`, `api-key` header (`AZURE_OPENAI_*`).
    Azure {
        endpoint: String,
        deployment: String,
        api_version: String,
        api_key: String,
    },
}

impl fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Endpoint::OpenAiCompatible {
                base_url, model, ..
            } => f
                .debug_struct("OpenAiCompatible")
                .field("base_url", base_url)
                .field("model", model)
                .finish_non_exhaustive(),
            Endpoint::Azure {
                endpoint,
                deployment,
                api_version,
                ..
            } => f
                .debug_struct("Azure")
                .field("endpoint", endpoint)
                .field("deployment", deployment)
                .field("api_version", api_version)
                .finish_non_exhaustive(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct RetryPolicy {
    /// Attempts in all, the first included.
    pub max_attempts: u32,
    /// The first back-off when the provider says nothing; doubles each attempt.
    pub base_delay: Duration,
    /// The longest wait, whatever `Retry-After` asks for.
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 4,
            base_delay: Duration::from_millis(500),
            max_delay: Duration::from_secs(30),
        }
    }
}

impl RetryPolicy {
    fn backoff(&self, attempt: u32) -> Duration {
        self.base_delay
            .saturating_mul(1 << attempt.saturating_sub(1).min(16))
            .min(self.max_delay)
    }
}

pub struct OpenAiCompatible {
    endpoint: Endpoint,
    retry: RetryPolicy,
    client: reqwest::Client,
    model: String,
}

impl OpenAiCompatible {
    pub fn new(endpoint: Endpoint, retry: RetryPolicy) -> Self {
        let model = match &endpoint {
            Endpoint::OpenAiCompatible { model, .. } => model.clone(),
            Endpoint::Azure { deployment, .. } => deployment.clone(),
        };
        OpenAiCompatible {
            endpoint,
            retry,
            client: reqwest::Client::builder()
                .connect_timeout(Duration::from_secs(10))
                // Between two chunks, not for the whole answer.
                .read_timeout(Duration::from_secs(60))
                .build()
                .expect("a reqwest client with rustls builds"),
            model,
        }
    }

    fn request(&self, body: &Value) -> reqwest::RequestBuilder {
        let builder = match &self.endpoint {
            Endpoint::OpenAiCompatible {
                base_url, api_key, ..
            } => {
                let url = format!("{}/chat/completions", base_url.trim_end_matches('/'));
                let builder = self.client.post(url);
                match api_key {
                    Some(key) => builder.bearer_auth(key),
                    None => builder,
                }
            }
            Endpoint::Azure {
                endpoint,
                deployment,
                api_version,
                api_key,
            } => {
                let url = format!(
                    "{}/openai/deployments/{deployment}/chat/completions?api-version={api_version}",
                    endpoint.trim_end_matches('/')
                );
                self.client.post(url).header("api-key", api_key)
            }
        };
        builder
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(reqwest::header::ACCEPT, "text/event-stream")
            .body(body.to_string())
    }

    fn body(&self, request: &ChatRequest) -> Value {
        let mut body = json!({
            "messages": request.messages.iter().map(message_json).collect::<Vec<_>>(),
            "stream": true,
            "stream_options": { "include_usage": true },
        });
        if let Endpoint::OpenAiCompatible { model, .. } = &self.endpoint {
            body["model"] = json!(model);
        }
        if let Some(t) = request.temperature {
            body["temperature"] = json!(t);
        }
        if let Some(m) = request.max_tokens {
            body["max_tokens"] = json!(m);
        }
        if !request.tools.is_empty() {
            body["tools"] = request
                .tools
                .iter()
                .map(|t| {
                    json!({"type": "function", "function": {
                        "name": t.name, "description": t.description, "parameters": t.parameters}})
                })
                .collect();
        }
        body
    }
}

fn message_json(message: &ChatMessage) -> Value {
    // `developer` is not known to every OpenAI-compatible server; `system` is, and means the
    // same to the model: instructions from the application.
    let role = match message.speaker {
        Speaker::System | Speaker::Developer => "system",
        Speaker::User => "user",
        Speaker::Assistant => "assistant",
        Speaker::Tool => "tool",
    };
    let mut value = json!({ "role": role, "content": message.content });
    if let Some(id) = &message.tool_call_id {
        value["tool_call_id"] = json!(id);
    }
    if !message.tool_calls.is_empty() {
        value["tool_calls"] = message
            .tool_calls
            .iter()
            .map(|c| json!({"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}))
            .collect();
    }
    value
}

/// How long the provider asks to wait: `retry-after-ms`, or `Retry-After` in seconds or as
/// an HTTP date.
pub fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    let text = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
    };
    if let Some(ms) = text("retry-after-ms").and_then(|v| v.parse::<f64>().ok()) {
        return Some(Duration::from_secs_f64(ms.max(0.0) / 1000.0));
    }
    let value = text("retry-after")?;
    if let Ok(seconds) = value.parse::<f64>() {
        return Some(Duration::from_secs_f64(seconds.max(0.0)));
    }
    let at = chrono::DateTime::parse_from_rfc2822(value).ok()?;
    Some(
        (at.with_timezone(&chrono::Utc) - chrono::Utc::now())
            .to_std()
            .unwrap_or_default(),
    )
}

/// Why reading a stream stopped short, and whether anything had been handed on.
struct Broken {
    error: AiError,
    delivered: bool,
}

#[async_trait]
impl AiProvider for OpenAiCompatible {
    fn model(&self) -> &str {
        &self.model
    }

    async fn complete(
        &self,
        request: &ChatRequest,
        on_event: &mut (dyn FnMut(StreamEvent) + Send),
    ) -> Result<Completion, AiError> {
        let started = Instant::now();
        let body = self.body(request);
        let mut attempt = 0;
        loop {
            attempt += 1;
            let last = attempt >= self.retry.max_attempts;
            let response = match self.request(&body).send().await {
                Ok(response) => response,
                Err(error) if !last => {
                    tracing::warn!(%error, attempt, "AI provider unreachable; retrying");
                    tokio::time::sleep(self.retry.backoff(attempt)).await;
                    continue;
                }
                Err(error) => return Err(AiError::Transport(error.to_string())),
            };
            let status = response.status();
            if status.is_success() {
                match read_stream(response, on_event, &self.model, started).await {
                    Ok(completion) => return Ok(completion),
                    Err(Broken {
                        error,
                        delivered: false,
                    }) if !last => {
                        tracing::warn!(%error, attempt, "AI stream failed before any text; retrying");
                        tokio::time::sleep(self.retry.backoff(attempt)).await;
                        continue;
                    }
                    Err(broken) => return Err(broken.error),
                }
            }
            let retryable = status.as_u16() == 429 || status.is_server_error();
            let asked = retry_after(response.headers());
            let wait = asked
                .unwrap_or_else(|| self.retry.backoff(attempt))
                .min(self.retry.max_delay);
            let text = response.text().await.unwrap_or_default();
            if !retryable {
                return Err(AiError::Refused {
                    status: status.as_u16(),
                    body: text,
                });
            }
            if last {
                return Err(AiError::Unavailable {
                    status: status.as_u16(),
                    attempts: attempt,
                    body: text,
                    retry_after: asked,
                });
            }
            tracing::warn!(
                status = status.as_u16(),
                attempt,
                ?wait,
                "AI provider busy; retrying"
            );
            tokio::time::sleep(wait).await;
        }
    }
}

#[derive(Deserialize)]
struct Chunk {
    model: Option<String>,
    #[serde(default)]
    choices: Vec<Choice>,
    usage: Option<ChunkUsage>,
    error: Option<Value>,
}

#[derive(Deserialize)]
struct Choice {
    delta: Option<Delta>,
    finish_reason: Option<String>,
}

#[derive(Deserialize)]
struct Delta {
    content: Option<String>,
    tool_calls: Option<Vec<ToolCallDelta>>,
}

#[derive(Deserialize)]
struct ToolCallDelta {
    #[serde(default)]
    index: usize,
    id: Option<String>,
    function: Option<FunctionDelta>,
}

#[derive(Deserialize)]
struct FunctionDelta {
    name: Option<String>,
    arguments: Option<String>,
}

#[derive(Deserialize)]
struct ChunkUsage {
    prompt_tokens: u32,
    completion_tokens: u32,
}

/// The answer being put together from its chunks.
#[derive(Default)]
struct Assembly {
    text: String,
    tool_calls: Vec<ToolCall>,
    usage: Usage,
    model: Option<String>,
    finish_reason: Option<String>,
    done: bool,
    delivered: bool,
}

impl Assembly {
    /// Takes one event's data; `Err` for a chunk that is not JSON or reports an error.
    fn take(
        &mut self,
        data: &str,
        on_event: &mut (dyn FnMut(StreamEvent) + Send),
    ) -> Result<(), AiError> {
        if data == "[DONE]" {
            self.done = true;
            return Ok(());
        }
        let chunk: Chunk = serde_json::from_str(data)
            // The chunk's size, not its text: it is part of an answer (logged with the error).
            .map_err(|e| {
                AiError::Protocol(format!("a chunk of {} bytes is not JSON ({e})", data.len()))
            })?;
        if let Some(error) = chunk.error {
            return Err(AiError::Interrupted(format!(
                "the provider reported: {error}"
            )));
        }
        if let Some(model) = chunk.model.filter(|m| !m.is_empty()) {
            self.model = Some(model);
        }
        if let Some(usage) = chunk.usage {
            self.usage = Usage {
                prompt_tokens: usage.prompt_tokens,
                completion_tokens: usage.completion_tokens,
            };
        }
        for choice in chunk.choices {
            if let Some(reason) = choice.finish_reason {
                self.finish_reason = Some(reason);
            }
            let Some(delta) = choice.delta else { continue };
            if let Some(text) = delta.content.filter(|t| !t.is_empty()) {
                self.text.push_str(&text);
                self.delivered = true;
                on_event(StreamEvent::Delta(text));
            }
            for call in delta.tool_calls.unwrap_or_default() {
                while self.tool_calls.len() <= call.index {
                    self.tool_calls.push(ToolCall {
                        id: String::new(),
                        name: String::new(),
                        arguments: String::new(),
                    });
                }
                let slot = &mut self.tool_calls[call.index];
                if let Some(id) = call.id {
                    slot.id = id;
                }
                if let Some(function) = call.function {
                    if let Some(name) = function.name.filter(|n| !n.is_empty()) {
                        if slot.name.is_empty() {
                            self.delivered = true;
                            on_event(StreamEvent::ToolCallStarted { name: name.clone() });
                        }
                        slot.name.push_str(&name);
                    }
                    if let Some(arguments) = function.arguments {
                        slot.arguments.push_str(&arguments);
                    }
                }
            }
        }
        Ok(())
    }
}

/// Splits SSE text into events' `data` (joined lines), keeping an unfinished event in `buffer`.
fn drain_events(buffer: &mut String) -> Vec<String> {
    let mut events = Vec::new();
    loop {
        let normalized_end = buffer.find("\n\n").map(|i| (i, 2));
        let crlf_end = buffer.find("\r\n\r\n").map(|i| (i, 4));
        let end = match (normalized_end, crlf_end) {
            (Some(a), Some(b)) => Some(if a.0 <= b.0 { a } else { b }),
            (a, b) => a.or(b),
        };
        let Some((at, len)) = end else {
            return events;
        };
        let block: String = buffer.drain(..at + len).collect();
        let data: Vec<&str> = block
            .lines()
            .filter_map(|line| line.strip_prefix("data:"))
            .map(|d| d.strip_prefix(' ').unwrap_or(d))
            .collect();
        if !data.is_empty() {
            events.push(data.join("\n"));
        }
    }
}

async fn read_stream(
    mut response: reqwest::Response,
    on_event: &mut (dyn FnMut(StreamEvent) + Send),
    configured_model: &str,
    started: Instant,
) -> Result<Completion, Broken> {
    let mut assembly = Assembly::default();
    let mut buffer = String::new();
    let mut pending_bytes: Vec<u8> = Vec::new();
    loop {
        let chunk = match response.chunk().await {
            Ok(Some(chunk)) => chunk,
            Ok(None) => break,
            Err(error) => {
                return Err(Broken {
                    error: AiError::Interrupted(error.to_string()),
                    delivered: assembly.delivered,
                })
            }
        };
        pending_bytes.extend_from_slice(&chunk);
        // A multi-byte character may be split between chunks: decode what is complete.
        let valid = match std::str::from_utf8(&pending_bytes) {
            Ok(text) => text.len(),
            Err(e) => e.valid_up_to(),
        };
        buffer.push_str(std::str::from_utf8(&pending_bytes[..valid]).expect("checked"));
        pending_bytes.drain(..valid);
        for data in drain_events(&mut buffer) {
            if let Err(error) = assembly.take(&data, on_event) {
                return Err(Broken {
                    error,
                    delivered: assembly.delivered,
                });
            }
            if assembly.done {
                break;
            }
        }
        if assembly.done {
            break;
        }
    }
    if !assembly.done && assembly.finish_reason.is_none() {
        return Err(Broken {
            error: AiError::Interrupted("the stream ended before the answer did".into()),
            delivered: assembly.delivered,
        });
    }
    Ok(Completion {
        text: assembly.text,
        tool_calls: assembly.tool_calls,
        usage: assembly.usage,
        model: assembly
            .model
            .unwrap_or_else(|| configured_model.to_string()),
        finish_reason: assembly.finish_reason,
        latency: started.elapsed(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_server_sent_events_and_keeps_the_unfinished_one() {
        let mut buffer = "data: {\"a\":1}\n\n: comment\n\ndata: x\r\n\r\ndata: [DO".to_string();
        assert_eq!(drain_events(&mut buffer), vec!["{\"a\":1}", "x"]);
        assert_eq!(buffer, "data: [DO");
        buffer.push_str("NE]\n\n");
        assert_eq!(drain_events(&mut buffer), vec!["[DONE]"]);
    }

    #[test]
    fn reads_retry_after_in_its_three_forms() {
        let mut headers = reqwest::header::HeaderMap::new();
        assert_eq!(retry_after(&headers), None);
        headers.insert("retry-after", "2".parse().unwrap());
        assert_eq!(retry_after(&headers), Some(Duration::from_secs(2)));
        headers.insert("retry-after-ms", "150".parse().unwrap());
        assert_eq!(retry_after(&headers), Some(Duration::from_millis(150)));
        let mut dated = reqwest::header::HeaderMap::new();
        let at = chrono::Utc::now() + chrono::Duration::seconds(30);
        dated.insert("retry-after", at.to_rfc2822().parse().unwrap());
        let wait = retry_after(&dated).unwrap();
        assert!(
            wait > Duration::from_secs(25) && wait <= Duration::from_secs(30),
            "{wait:?}"
        );
    }

    #[test]
    fn backs_off_exponentially_up_to_the_cap() {
        let policy = RetryPolicy {
            max_attempts: 10,
            base_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(1),
        };
        assert_eq!(policy.backoff(1), Duration::from_millis(100));
        assert_eq!(policy.backoff(3), Duration::from_millis(400));
        assert_eq!(policy.backoff(9), Duration::from_secs(1));
    }
}
