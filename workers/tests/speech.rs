//! Speech tokens against a local stand-in for Azure's token service (`POST
//! /sts/v1.0/issueToken` with `Ocp-Apim-Subscription-Key`): the key is sent, a token is
//! reused until a minute before its ten minutes are up, concurrent callers share one call,
//! and a refused key is reported as such. The clock is passed in (`token_at`), so nothing
//! here waits on real time.

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::Router;
use chrono::{Duration, Utc};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use teachin_workers::speech::{SpeechError, SpeechSettings, SpeechTokens};

const KEY: &str = "speech-key-for-tests";

#[derive(Clone, Default)]
struct TokenService {
    calls: Arc<AtomicUsize>,
}

async fn issue(State(service): State<TokenService>, headers: HeaderMap) -> (StatusCode, String) {
    let n = service.calls.fetch_add(1, Ordering::SeqCst) + 1;
    match headers
        .get("ocp-apim-subscription-key")
        .and_then(|v| v.to_str().ok())
    {
        Some(KEY) => (StatusCode::OK, format!("token-{n}")),
        _ => (
            StatusCode::UNAUTHORIZED,
            "Access denied due to invalid subscription key".into(),
        ),
    }
}

/// Starts the stand-in; returns its base URL and its call counter.
async fn token_service() -> (String, Arc<AtomicUsize>) {
    let service = TokenService::default();
    let calls = service.calls.clone();
    let app = Router::new()
        .route("/sts/v1.0/issueToken", post(issue))
        .with_state(service);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, calls)
}

fn tokens(endpoint: &str, key: &str) -> SpeechTokens {
    SpeechTokens::new(SpeechSettings {
        key: key.into(),
        region: "westeurope".into(),
        endpoint: Some(endpoint.into()),
    })
}

#[tokio::test]
async fn a_token_is_reused_until_a_minute_before_it_expires() {
    let (url, calls) = token_service().await;
    let speech = tokens(&url, KEY);
    let start = Utc::now();

    let first = speech.token_at(start).await.unwrap();
    assert_eq!(first.token, "token-1");
    assert_eq!(first.region, "westeurope");
    assert_eq!(first.expires_at, start + Duration::minutes(10));
    assert_eq!(calls.load(Ordering::SeqCst), 1);

    // Eight minutes on, the cached token still has two minutes: no call.
    let cached = speech.token_at(start + Duration::minutes(8)).await.unwrap();
    assert_eq!(cached, first);
    assert_eq!(calls.load(Ordering::SeqCst), 1);

    // Past nine minutes, less than the margin is left: a new token.
    let renewed = speech
        .token_at(start + Duration::minutes(9) + Duration::seconds(1))
        .await
        .unwrap();
    assert_eq!(renewed.token, "token-2");
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn concurrent_callers_share_one_call() {
    let (url, calls) = token_service().await;
    let speech = tokens(&url, KEY);
    let now = Utc::now();
    let handles: Vec<_> = (0..8)
        .map(|_| {
            let speech = speech.clone();
            tokio::spawn(async move { speech.token_at(now).await.unwrap().token })
        })
        .collect();
    for handle in handles {
        assert_eq!(handle.await.unwrap(), "token-1");
    }
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_refused_key_is_reported_and_not_cached() {
    let (url, calls) = token_service().await;
    let speech = tokens(&url, "a-wrong-key");
    assert_eq!(speech.token().await, Err(SpeechError::Refused(401)));
    assert_eq!(speech.token().await, Err(SpeechError::Refused(401)));
    assert_eq!(calls.load(Ordering::SeqCst), 2, "a failure is not cached");
}

#[tokio::test]
async fn an_unreachable_service_is_unavailable() {
    // A port nothing listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let speech = tokens(&format!("http://127.0.0.1:{port}"), KEY);
    assert!(matches!(
        speech.token().await,
        Err(SpeechError::Unavailable(_))
    ));
}
