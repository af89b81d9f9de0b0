//! An OpenAI-compatible chat-completions server for tests, started by the test on a free
//! port: it streams real SSE over chunked HTTP (split wherever the test likes, through the
//! middle of a Hebrew letter too), answers with a status and `Retry-After`, breaks a stream
//! off, or leaves it hanging — whatever the test scripted, and remembers every request.
//!
//! A request is answered by the first rule whose text occurs in its messages
//! ([`LlmServer::when`], for e.g. the title prompt, any number of times), else by the next
//! scripted reply ([`LlmServer::push`]), else by the fallback ([`LlmServer::otherwise`]),
//! else with a 500 that says the test scripted nothing.

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Router;
use serde_json::{json, Value};
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How a scripted stream ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamEnd {
    /// The body ends normally after the chunks.
    Done,
    /// The connection breaks after the chunks.
    Cut,
    /// Nothing more is ever sent, and the body never ends.
    Hang,
}

/// What the server answers to one request.
#[derive(Debug, Clone)]
pub enum LlmReply {
    Status {
        code: u16,
        retry_after: Option<String>,
    },
    /// These bytes as the body, chunk by chunk (5 ms apart), then `end`.
    Stream {
        chunks: Vec<Vec<u8>>,
        end: StreamEnd,
    },
}

impl LlmReply {
    pub fn status(code: u16) -> Self {
        LlmReply::Status {
            code,
            retry_after: None,
        }
    }

    /// A status with a `Retry-After` header.
    pub fn status_retry_after(code: u16, retry_after: &str) -> Self {
        LlmReply::Status {
            code,
            retry_after: Some(retry_after.to_string()),
        }
    }

    /// The chunks as SSE events, one HTTP chunk each, then `data: [DONE]`.
    pub fn events(events: &[Value]) -> Self {
        let mut chunks: Vec<Vec<u8>> = events
            .iter()
            .map(|e| format!("data: {e}\n\n").into_bytes())
            .collect();
        chunks.push(b"data: [DONE]\n\n".to_vec());
        LlmReply::Stream {
            chunks,
            end: StreamEnd::Done,
        }
    }

    /// An answer streamed as these text pieces, finished with `stop` and the token usage.
    pub fn answer(model: &str, pieces: &[&str], usage: (u32, u32)) -> Self {
        LlmReply::events(&answer_events(model, pieces, usage))
    }

    /// The model calls one tool (`arguments` is JSON text).
    pub fn tool_call(model: &str, id: &str, name: &str, arguments: &str) -> Self {
        LlmReply::events(&[
            json!({"model": model, "choices": [{"index": 0, "delta": {"tool_calls": [
                {"index": 0, "id": id, "type": "function", "function": {"name": name, "arguments": arguments}}]}}]}),
            json!({"model": model, "choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]}),
            json!({"model": model, "choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8}}),
        ])
    }

    /// The same body, re-cut into pieces of `size` bytes.
    pub fn in_pieces(self, size: usize) -> Self {
        match self {
            LlmReply::Stream { chunks, end } => LlmReply::Stream {
                chunks: chunks
                    .concat()
                    .chunks(size.max(1))
                    .map(<[u8]>::to_vec)
                    .collect(),
                end,
            },
            status => status,
        }
    }

    /// Only the first `n` chunks, then `end`.
    pub fn truncated(self, n: usize, end: StreamEnd) -> Self {
        match self {
            LlmReply::Stream { mut chunks, .. } => {
                chunks.truncate(n);
                LlmReply::Stream { chunks, end }
            }
            status => status,
        }
    }
}

/// The chunks of a plain answer (see [`LlmReply::answer`]).
pub fn answer_events(model: &str, pieces: &[&str], (prompt, completion): (u32, u32)) -> Vec<Value> {
    let mut events = vec![
        json!({"model": model, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]}),
    ];
    for piece in pieces {
        events
            .push(json!({"model": model, "choices": [{"index": 0, "delta": {"content": piece}}]}));
    }
    events.push(
        json!({"model": model, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}),
    );
    events.push(json!({"model": model, "choices": [], "usage": {
        "prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}}));
    events
}

/// One request the server received.
#[derive(Clone, Debug)]
pub struct SeenRequest {
    pub path: String,
    pub query: Option<String>,
    pub headers: HeaderMap,
    pub body: Value,
    pub at: Instant,
}

impl SeenRequest {
    /// Every message's content, one per line.
    pub fn text(&self) -> String {
        message_text(&self.body)
    }
}

fn message_text(body: &Value) -> String {
    body["messages"]
        .as_array()
        .map(|messages| {
            messages
                .iter()
                .filter_map(|m| m["content"].as_str())
                .collect::<Vec<_>>()
                .join("\n")
        })
        .unwrap_or_default()
}

#[derive(Default)]
struct Script {
    rules: Mutex<Vec<(String, LlmReply)>>,
    queue: Mutex<VecDeque<LlmReply>>,
    fallback: Mutex<Option<LlmReply>>,
    seen: Mutex<Vec<SeenRequest>>,
}

impl Script {
    fn reply_to(&self, body: &Value) -> Option<LlmReply> {
        let text = message_text(body);
        if let Some((_, reply)) = self
            .rules
            .lock()
            .unwrap()
            .iter()
            .find(|(needle, _)| text.contains(needle.as_str()))
        {
            return Some(reply.clone());
        }
        if let Some(reply) = self.queue.lock().unwrap().pop_front() {
            return Some(reply);
        }
        self.fallback.lock().unwrap().clone()
    }
}

/// The server; it runs until the test's runtime ends.
#[derive(Clone)]
pub struct LlmServer {
    url: String,
    script: Arc<Script>,
}

impl LlmServer {
    pub async fn start() -> Self {
        let script = Arc::new(Script::default());
        let app = Router::new().fallback(serve).with_state(script.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a free port");
        let addr = listener.local_addr().expect("bound");
        tokio::spawn(async move {
            axum::serve(listener, app)
                .await
                .expect("the test LLM server runs");
        });
        LlmServer {
            url: format!("http://{addr}"),
            script,
        }
    }

    /// `http://127.0.0.1:PORT`, no trailing slash.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The next request no rule matches gets `reply`.
    pub fn push(&self, reply: LlmReply) {
        self.script.queue.lock().unwrap().push_back(reply);
    }

    /// Every request whose messages contain `needle` gets `reply`.
    pub fn when(&self, needle: &str, reply: LlmReply) {
        self.script
            .rules
            .lock()
            .unwrap()
            .push((needle.to_string(), reply));
    }

    /// What a request gets when nothing else is scripted.
    pub fn otherwise(&self, reply: LlmReply) {
        *self.script.fallback.lock().unwrap() = Some(reply);
    }

    /// Every request so far, in arrival order.
    pub fn seen(&self) -> Vec<SeenRequest> {
        self.script.seen.lock().unwrap().clone()
    }
}

async fn serve(
    State(script): State<Arc<Script>>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let reply = script.reply_to(&body);
    script.seen.lock().unwrap().push(SeenRequest {
        path: uri.path().to_string(),
        query: uri.query().map(str::to_string),
        headers,
        body,
        at: Instant::now(),
    });
    match reply {
        None => (
            StatusCode::INTERNAL_SERVER_ERROR,
            json!({"error": {"message": "the test scripted no reply for this request"}})
                .to_string(),
        )
            .into_response(),
        Some(LlmReply::Status { code, retry_after }) => {
            let mut response = (
                StatusCode::from_u16(code).expect("a valid status"),
                json!({"error": {"message": "scripted"}}).to_string(),
            )
                .into_response();
            if let Some(value) = retry_after {
                response
                    .headers_mut()
                    .insert("retry-after", value.parse().expect("a header value"));
            }
            response
        }
        Some(LlmReply::Stream { chunks, end }) => {
            let items: Vec<Result<Bytes, std::io::Error>> =
                chunks.into_iter().map(|c| Ok(Bytes::from(c))).collect();
            // A pause before each chunk (and before a cut, so what came before it is
            // flushed to the client first): they travel as separate HTTP chunks.
            let body =
                futures::stream::unfold((items.into_iter(), end), |(mut items, end)| async move {
                    let item = match items.next() {
                        Some(item) => item,
                        None => match end {
                            StreamEnd::Done => return None,
                            StreamEnd::Cut => Err(std::io::Error::other("the server went away")),
                            StreamEnd::Hang => std::future::pending().await,
                        },
                    };
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    let end = if item.is_err() { StreamEnd::Done } else { end };
                    Some((item, (items, end)))
                });
            Response::builder()
                .header("content-type", "text/event-stream")
                .body(Body::from_stream(body))
                .expect("a response")
        }
    }
}
