//! The OpenAI-compatible provider (and its Azure OpenAI form) against an HTTP server started
//! by each test ([`teachin_workers::testing::LlmServer`]), which speaks the chat-completions
//! protocol: real SSE chunks over chunked HTTP (split mid-character, too), a 429 with
//! `Retry-After`, 5xx, a refusal, and a stream that breaks off — before and after part of the
//! answer was delivered.

use serde_json::{json, Value};
use std::time::{Duration, Instant};
use teachin_workers::ai::openai::{Endpoint, OpenAiCompatible, RetryPolicy};
use teachin_workers::ai::{
    AiError, AiProvider, ChatMessage, ChatRequest, Speaker, StreamEvent, ToolCall, ToolSpec, Usage,
};
use teachin_workers::testing::{LlmReply, LlmServer, StreamEnd};

/// A server that answers with `replies`, in order.
async fn start(replies: Vec<LlmReply>) -> LlmServer {
    let server = LlmServer::start().await;
    for reply in replies {
        server.push(reply);
    }
    server
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
    let server = start(vec![LlmReply::events(&answer_events()).in_pieces(7)]).await;
    let provider = provider(server.url(), fast_retries(3));
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

    let seen = server.seen();
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
    let server = start(vec![
        LlmReply::status_retry_after(429, "1"),
        LlmReply::events(&answer_events()),
    ])
    .await;
    // The back-off alone would retry after 10 ms; Retry-After says a second.
    let provider = provider(server.url(), fast_retries(3));
    let started = Instant::now();
    let (result, events) = complete(&provider).await;
    assert_eq!(result.unwrap().text, "Shalom, שלום עולם");
    assert_eq!(
        text_of(&events),
        "Shalom, שלום עולם",
        "nothing streamed twice"
    );
    assert_eq!(server.seen().len(), 2);
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "waited as asked"
    );
}

#[tokio::test]
async fn server_errors_are_retried_until_the_attempts_run_out() {
    let server = start(vec![LlmReply::status(503); 3]).await;
    let (result, events) = complete(&provider(server.url(), fast_retries(3))).await;
    match result {
        Err(AiError::Unavailable {
            status: 503,
            attempts: 3,
            ..
        }) => {}
        other => panic!("expected Unavailable after 3 attempts, got {other:?}"),
    }
    assert!(events.is_empty());
    assert_eq!(server.seen().len(), 3);
}

#[tokio::test]
async fn a_refusal_is_not_retried() {
    let server = start(vec![LlmReply::status(400)]).await;
    let (result, _) = complete(&provider(server.url(), fast_retries(3))).await;
    assert!(
        matches!(result, Err(AiError::Refused { status: 400, .. })),
        "{result:?}"
    );
    assert_eq!(server.seen().len(), 1);
}

#[tokio::test]
async fn a_stream_cut_after_text_was_delivered_is_an_interruption_not_a_retry() {
    let events = answer_events();
    let server = start(vec![LlmReply::Stream {
        chunks: vec![format!("data: {}\n\ndata: {}\n\n", events[1], events[2]).into_bytes()],
        end: StreamEnd::Cut,
    }])
    .await;
    let (result, streamed) = complete(&provider(server.url(), fast_retries(3))).await;
    assert!(matches!(result, Err(AiError::Interrupted(_))), "{result:?}");
    assert_eq!(
        text_of(&streamed),
        "Shalom, שלום עולם",
        "what came before the cut was delivered"
    );
    assert_eq!(
        server.seen().len(),
        1,
        "not retried: the text is already out"
    );
}

#[tokio::test]
async fn a_stream_cut_before_any_text_is_retried() {
    let events = answer_events();
    let server = start(vec![
        LlmReply::Stream {
            chunks: vec![format!("data: {}\n\n", events[0]).into_bytes()],
            end: StreamEnd::Cut,
        },
        LlmReply::events(&events),
    ])
    .await;
    let (result, streamed) = complete(&provider(server.url(), fast_retries(3))).await;
    assert_eq!(result.unwrap().text, "Shalom, שלום עולם");
    assert_eq!(text_of(&streamed), "Shalom, שלום עולם");
    assert_eq!(server.seen().len(), 2);
}

#[tokio::test]
async fn a_stream_that_ends_without_finishing_is_an_interruption() {
    let events = answer_events();
    let server = start(vec![LlmReply::Stream {
        chunks: vec![format!("data: {}\n\n", events[1]).into_bytes()],
        end: StreamEnd::Done,
    }])
    .await;
    let (result, _) = complete(&provider(server.url(), fast_retries(1))).await;
    assert!(matches!(result, Err(AiError::Interrupted(_))), "{result:?}");
}

#[tokio::test]
async fn azure_openai_is_addressed_by_deployment_with_its_api_key() {
    let server = start(vec![LlmReply::events(&answer_events())]).await;
    let provider = OpenAiCompatible::new(
        Endpoint::Azure {
            endpoint: format!("{}/", server.url()),
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
    let seen = server.seen();
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
