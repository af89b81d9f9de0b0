//! The OpenAI-compatible provider (and its Azure OpenAI form) against an HTTP server started
//! by each test, which speaks the chat-completions protocol: real SSE chunks over chunked
//! HTTP (split mid-character, too), a 429 with `Retry-After`, 5xx, a refusal, and a stream
//! that breaks off — before and after part of the answer was delivered.

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Router;
use serde_json::{json, Value};
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use teachin_workers::ai::openai::{Endpoint, OpenAiCompatible, RetryPolicy};
use teachin_workers::ai::{
    AiError, AiProvider, ChatMessage, ChatRequest, Speaker, StreamEvent, ToolCall, ToolSpec, Usage,
};

/// What the server answers to one request.
#[derive(Clone)]
enum Reply {
    Status {
        code: u16,
        retry_after: Option<&'static str>,
    },
    /// These bytes as the body, chunk by chunk; then the connection breaks if `cut`.
    Stream { chunks: Vec<Vec<u8>>, cut: bool },
}

#[derive(Clone, Debug)]
struct Seen {
    path: String,
    query: Option<String>,
    headers: HeaderMap,
    body: Value,
}

#[derive(Clone, Default)]
struct Script {
    replies: Arc<Mutex<VecDeque<Reply>>>,
    seen: Arc<Mutex<Vec<Seen>>>,
}

async fn serve(
    State(script): State<Script>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    script.seen.lock().unwrap().push(Seen {
        path: uri.path().to_string(),
        query: uri.query().map(str::to_string),
        headers,
        body: serde_json::from_slice(&body).unwrap_or(Value::Null),
    });
    let reply = script
        .replies
        .lock()
        .unwrap()
        .pop_front()
        .expect("the test scripted a reply for every request");
    match reply {
        Reply::Status { code, retry_after } => {
            let mut response = (
                StatusCode::from_u16(code).unwrap(),
                json!({"error": {"message": "scripted"}}).to_string(),
            )
                .into_response();
            if let Some(value) = retry_after {
                response
                    .headers_mut()
                    .insert("retry-after", value.parse().unwrap());
            }
            response
        }
        Reply::Stream { chunks, cut } => {
            let mut items: Vec<Result<Bytes, std::io::Error>> =
                chunks.into_iter().map(|c| Ok(Bytes::from(c))).collect();
            if cut {
                items.push(Err(std::io::Error::other("the server went away")));
            }
            // A pause between chunks, so they travel as separate HTTP chunks.
            let stream = futures::stream::unfold(items.into_iter(), |mut items| async move {
                let item = items.next()?;
                tokio::time::sleep(Duration::from_millis(5)).await;
                Some((item, items))
            });
            Response::builder()
                .header("content-type", "text/event-stream")
                .body(Body::from_stream(stream))
                .unwrap()
        }
    }
}

async fn start(replies: Vec<Reply>) -> (String, Script) {
    let script = Script::default();
    script.replies.lock().unwrap().extend(replies);
    let app = Router::new().fallback(serve).with_state(script.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}"), script)
}

fn sse(events: &[Value]) -> Vec<u8> {
    let mut text = String::new();
    for event in events {
        text.push_str(&format!("data: {event}\n\n"));
    }
    text.push_str("data: [DONE]\n\n");
    text.into_bytes()
}

/// Cuts `bytes` into pieces of `size` bytes — through the middle of Hebrew letters.
fn pieces(bytes: Vec<u8>, size: usize) -> Vec<Vec<u8>> {
    bytes.chunks(size).map(<[u8]>::to_vec).collect()
}

fn answer_events() -> Vec<Value> {
    vec![
        json!({"model": "llama-test", "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]}),
        json!({"model": "llama-test", "choices": [{"index": 0, "delta": {"content": "Shalom, "}}]}),
        json!({"model": "llama-test", "choices": [{"index": 0, "delta": {"content": "שלום עולם"}}]}),
        json!({"model": "llama-test", "choices": [{"index": 0, "delta": {"tool_calls": [
            {"index": 0, "id": "call_1", "type": "function", "function": {"name": "current_time", "arguments": "{\"zone\":"}}]}}]}),
        json!({"model": "llama-test", "choices": [{"index": 0, "delta": {"tool_calls": [
            {"index": 0, "function": {"arguments": "\"UTC\"}"}}]}}]}),
        json!({"model": "llama-test", "choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]}),
        json!({"model": "llama-test", "choices": [], "usage": {"prompt_tokens": 12, "completion_tokens": 7, "total_tokens": 19}}),
    ]
}

fn fast_retries(max_attempts: u32) -> RetryPolicy {
    RetryPolicy {
        max_attempts,
        base_delay: Duration::from_millis(10),
        max_delay: Duration::from_secs(5),
    }
}

fn provider(base: &str, retry: RetryPolicy) -> OpenAiCompatible {
    OpenAiCompatible::new(
        Endpoint::OpenAiCompatible {
            base_url: format!("{base}/v1"),
            api_key: Some("sk-test".into()),
            model: "llama-test".into(),
        },
        retry,
    )
}

fn request() -> ChatRequest {
    ChatRequest {
        messages: vec![
            ChatMessage::new(Speaker::System, "You are a tutor."),
            ChatMessage::new(Speaker::Developer, "The page: word cards."),
            ChatMessage::new(Speaker::User, "How do I say hello?"),
        ],
        tools: vec![ToolSpec {
            name: "current_time".into(),
            description: "The current time".into(),
            parameters: json!({"type": "object", "properties": {"zone": {"type": "string"}}}),
        }],
        temperature: Some(0.3),
        max_tokens: None,
    }
}

/// Runs a completion, collecting what was streamed.
async fn complete(
    provider: &dyn AiProvider,
) -> (
    Result<teachin_workers::ai::Completion, AiError>,
    Vec<StreamEvent>,
) {
    let mut events = Vec::new();
    let result = provider.complete(&request(), &mut |e| events.push(e)).await;
    (result, events)
}

fn text_of(events: &[StreamEvent]) -> String {
    events
        .iter()
        .filter_map(|e| match e {
            StreamEvent::Delta(d) => Some(d.as_str()),
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn streams_text_then_returns_the_answer_with_tool_calls_usage_and_model() {
    let (base, script) = start(vec![Reply::Stream {
        chunks: pieces(sse(&answer_events()), 7),
        cut: false,
    }])
    .await;
    let provider = provider(&base, fast_retries(3));
    let (result, events) = complete(&provider).await;
    let completion = result.unwrap();
    assert_eq!(text_of(&events), "Shalom, שלום עולם");
    assert!(events.contains(&StreamEvent::ToolCallStarted {
        name: "current_time".into()
    }));
    assert_eq!(completion.text, "Shalom, שלום עולם");
    assert_eq!(
        completion.tool_calls,
        vec![ToolCall {
            id: "call_1".into(),
            name: "current_time".into(),
            arguments: r#"{"zone":"UTC"}"#.into()
        }]
    );
    assert_eq!(
        completion.usage,
        Usage {
            prompt_tokens: 12,
            completion_tokens: 7
        }
    );
    assert_eq!(completion.model, "llama-test");
    assert_eq!(completion.finish_reason.as_deref(), Some("tool_calls"));

    let seen = script.seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].path, "/v1/chat/completions");
    assert_eq!(seen[0].headers["authorization"], "Bearer sk-test");
    let body = &seen[0].body;
    assert_eq!(body["stream"], true);
    assert_eq!(body["stream_options"]["include_usage"], true);
    assert_eq!(body["model"], "llama-test");
    let roles: Vec<&str> = body["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["role"].as_str().unwrap())
        .collect();
    assert_eq!(roles, ["system", "system", "user"]);
    assert_eq!(body["tools"][0]["function"]["name"], "current_time");
    assert!((body["temperature"].as_f64().unwrap() - 0.3).abs() < 1e-6);
}

#[tokio::test]
async fn a_429_is_retried_after_the_time_it_asks_for() {
    let (base, script) = start(vec![
        Reply::Status {
            code: 429,
            retry_after: Some("1"),
        },
        Reply::Stream {
            chunks: vec![sse(&answer_events())],
            cut: false,
        },
    ])
    .await;
    // The back-off alone would retry after 10 ms; Retry-After says a second.
    let provider = provider(&base, fast_retries(3));
    let started = Instant::now();
    let (result, events) = complete(&provider).await;
    assert_eq!(result.unwrap().text, "Shalom, שלום עולם");
    assert_eq!(
        text_of(&events),
        "Shalom, שלום עולם",
        "nothing streamed twice"
    );
    assert_eq!(script.seen.lock().unwrap().len(), 2);
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "waited as asked"
    );
}

#[tokio::test]
async fn server_errors_are_retried_until_the_attempts_run_out() {
    let (base, script) = start(vec![
        Reply::Status {
            code: 503,
            retry_after: None,
        };
        3
    ])
    .await;
    let (result, events) = complete(&provider(&base, fast_retries(3))).await;
    match result {
        Err(AiError::Unavailable {
            status: 503,
            attempts: 3,
            ..
        }) => {}
        other => panic!("expected Unavailable after 3 attempts, got {other:?}"),
    }
    assert!(events.is_empty());
    assert_eq!(script.seen.lock().unwrap().len(), 3);
}

#[tokio::test]
async fn a_refusal_is_not_retried() {
    let (base, script) = start(vec![Reply::Status {
        code: 400,
        retry_after: None,
    }])
    .await;
    let (result, _) = complete(&provider(&base, fast_retries(3))).await;
    assert!(
        matches!(result, Err(AiError::Refused { status: 400, .. })),
        "{result:?}"
    );
    assert_eq!(script.seen.lock().unwrap().len(), 1);
}

#[tokio::test]
async fn a_stream_cut_after_text_was_delivered_is_an_interruption_not_a_retry() {
    let events = answer_events();
    let (base, script) = start(vec![Reply::Stream {
        chunks: vec![format!("data: {}\n\ndata: {}\n\n", events[1], events[2]).into_bytes()],
        cut: true,
    }])
    .await;
    let (result, streamed) = complete(&provider(&base, fast_retries(3))).await;
    assert!(matches!(result, Err(AiError::Interrupted(_))), "{result:?}");
    assert_eq!(
        text_of(&streamed),
        "Shalom, שלום עולם",
        "what came before the cut was delivered"
    );
    assert_eq!(
        script.seen.lock().unwrap().len(),
        1,
        "not retried: the text is already out"
    );
}

#[tokio::test]
async fn a_stream_cut_before_any_text_is_retried() {
    let events = answer_events();
    let (base, script) = start(vec![
        Reply::Stream {
            chunks: vec![format!("data: {}\n\n", events[0]).into_bytes()],
            cut: true,
        },
        Reply::Stream {
            chunks: vec![sse(&events)],
            cut: false,
        },
    ])
    .await;
    let (result, streamed) = complete(&provider(&base, fast_retries(3))).await;
    assert_eq!(result.unwrap().text, "Shalom, שלום עולם");
    assert_eq!(text_of(&streamed), "Shalom, שלום עולם");
    assert_eq!(script.seen.lock().unwrap().len(), 2);
}

#[tokio::test]
async fn a_stream_that_ends_without_finishing_is_an_interruption() {
    let events = answer_events();
    let (base, _) = start(vec![Reply::Stream {
        chunks: vec![format!("data: {}\n\n", events[1]).into_bytes()],
        cut: false,
    }])
    .await;
    let (result, _) = complete(&provider(&base, fast_retries(1))).await;
    assert!(matches!(result, Err(AiError::Interrupted(_))), "{result:?}");
}

#[tokio::test]
async fn azure_openai_is_addressed_by_deployment_with_its_api_key() {
    let (base, script) = start(vec![Reply::Stream {
        chunks: vec![sse(&answer_events())],
        cut: false,
    }])
    .await;
    let provider = OpenAiCompatible::new(
        Endpoint::Azure {
            endpoint: format!("{base}/"),
            deployment: "tutor-gpt".into(),
            api_version: "2024-10-21".into(),
            api_key: "azure-key".into(),
        },
        fast_retries(1),
    );
    assert_eq!(provider.model(), "tutor-gpt");
    let (result, _) = complete(&provider).await;
    assert_eq!(
        result.unwrap().model,
        "llama-test",
        "the model the service names wins"
    );
    let seen = script.seen.lock().unwrap().clone();
    assert_eq!(
        seen[0].path,
        "/openai/deployments/tutor-gpt/chat/completions"
    );
    assert_eq!(seen[0].query.as_deref(), Some("api-version=2024-10-21"));
    assert_eq!(seen[0].headers["api-key"], "azure-key");
    assert!(seen[0].headers.get("authorization").is_none());
    assert!(
        seen[0].body.get("model").is_none(),
        "Azure takes the model from the deployment"
    );
}
