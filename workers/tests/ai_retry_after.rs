//! A model's 429 with `Retry-After` becomes a delayed bus retry (issue 14 follow-up): the
//! provider's own retries run out (`AiError::Unavailable { retry_after, .. }`), and the
//! engine gives the message back to the bus to come again after the delay the model asked
//! for — always for content generation, and for a tutor reply only while that delivery
//! still lands before the request's time-to-live (`requestedAt + ttlSeconds`, 60 s here).

mod support;

use std::time::Duration;
use support::{eventually, quick_consumer, World, MODEL};
use teachin_commands::CommandContext;
use teachin_domain::actor::{Actor, Role};
use teachin_domain::generation::{GenerationCommand, GenerationEvent, GenerationRequest};
use teachin_domain::ids::{RequestId, TutorSessionId, UserId};
use teachin_domain::tutor_session::SessionKind;
use teachin_workers::ai::openai::RetryPolicy;
use teachin_workers::engine::settings::{AiBackend, AiSettings, WebSearchSettings};
use teachin_workers::engine::{EngineDeps, EngineSettings};
use teachin_workers::run_engine;
use teachin_workers::testing::LlmReply;
use tokio::task::JoinHandle;

const ANSWER: [&str; 2] = ["שלום! ", "מה נשמע?"];

/// An engine whose provider gives up after three tries, waiting at most 50 ms between
/// them: the `Retry-After` is then the bus's to honour, not the provider's.
fn start_engine(world: &World) -> JoinHandle<()> {
    let ai = AiSettings {
        backend: AiBackend::OpenAiCompatible {
            base_url: format!("{}/v1", world.llm.url()),
            api_key: Some("sk-test".into()),
            model: MODEL.into(),
        },
        retry: RetryPolicy {
            max_attempts: 3,
            base_delay: Duration::from_millis(10),
            max_delay: Duration::from_millis(50),
        },
    };
    // Stopped by aborting the task; the sender lives as long as the engine does.
    let (keep, stop) = tokio::sync::watch::channel(false);
    let deps = EngineDeps {
        pool: world.db.pool.clone(),
        bus: world.bus.clone(),
        commands: world.commands.clone(),
        provider: ai.provider(),
        settings: EngineSettings {
            consumer: quick_consumer(),
            web_search: WebSearchSettings::default(),
            ..EngineSettings::default()
        },
    };
    tokio::spawn(async move {
        let _keep = keep;
        run_engine(deps, stop).await
    })
}

fn busy(world: &World, retry_after: &str) {
    for _ in 0..3 {
        world
            .llm
            .push(LlmReply::status_retry_after(429, retry_after));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_tutor_reply_comes_back_after_retry_after_when_that_is_within_its_ttl() {
    let world = World::new(Duration::from_secs(60)).await;
    busy(&world, "2");
    world.llm.push(LlmReply::answer(MODEL, &ANSWER, (12, 7)));
    let engine = start_engine(&world);
    let student = UserId::new();
    let session = TutorSessionId::new();
    let request = world
        .post(session, student, SessionKind::Default, "Busy?", None)
        .await;
    world.wait_for(session, "AiReplyCompleted").await;
    assert!(
        world.events(session, "AiReplyFailed").await.is_empty(),
        "the busy model did not fail the reply"
    );
    let chats = world.chat_requests();
    assert_eq!(
        chats.len(),
        4,
        "three refused tries, then the retried delivery"
    );
    assert!(
        chats[3].at.duration_since(chats[2].at) >= Duration::from_secs(2),
        "the bus waited as Retry-After asked"
    );
    let frames = world.pushed_until_closed(student, request).await;
    assert_eq!(frames.last().unwrap()["stage"], "Last");
    assert!(
        frames.iter().all(|f| f["stage"] != "Error"),
        "no failure frame: {frames:?}"
    );
    engine.abort();
    world.shut_down().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_tutor_reply_fails_at_once_when_retry_after_would_land_past_its_ttl() {
    let world = World::new(Duration::from_secs(60)).await;
    // Two minutes: past the 60 s time-to-live whatever the request's age.
    busy(&world, "120");
    world.llm.push(LlmReply::answer(MODEL, &ANSWER, (12, 7)));
    let engine = start_engine(&world);
    let student = UserId::new();
    let session = TutorSessionId::new();
    let request = world
        .post(session, student, SessionKind::Default, "Busy?", None)
        .await;
    world.wait_for(session, "AiReplyFailed").await;
    let frames = world.pushed_until_closed(student, request).await;
    let last = frames.last().unwrap();
    assert_eq!(last["stage"], "Error");
    assert_eq!(
        last["payload"]["stage"], "Failed",
        "failed now, not expired later"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(world.chat_requests().len(), 3, "no retried delivery");
    assert!(world.events(session, "AiReplyCompleted").await.is_empty());
    engine.abort();
    world.shut_down().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_generation_comes_back_after_retry_after_instead_of_failing() {
    let world = World::new(Duration::from_secs(60)).await;
    busy(&world, "2");
    let answer = serde_json::json!({
        "definition": "hello; peace",
        "explanation": "From the root ש-ל-ם, wholeness. Here it greets.",
    });
    world
        .llm
        .push(LlmReply::answer(MODEL, &[&answer.to_string()], (20, 30)));
    let engine = start_engine(&world);
    let student = world.register("Dana").await;
    let request = RequestId::new();
    world
        .commands
        .execute::<GenerationRequest>(
            &request.to_string(),
            GenerationCommand::RequestWordExplanation {
                requester: student,
                word: "שלום".into(),
                context: "שלום, מה שלומך?".into(),
            },
            &CommandContext::new(Actor::user(student, Role::Student), "test"),
        )
        .await
        .expect("requested");
    let outcome = eventually("the word was explained or failed", || async {
        for event_type in ["WordExplained", "GenerationFailed"] {
            let found = world
                .logged::<GenerationEvent>("GenerationRequest", &request.to_string(), event_type)
                .await;
            if let Some((event, _)) = found.into_iter().next() {
                return Some(event);
            }
        }
        None
    })
    .await;
    assert!(
        matches!(outcome, GenerationEvent::WordExplained { .. }),
        "{outcome:?}"
    );
    let chats = world.llm.seen();
    assert_eq!(
        chats.len(),
        4,
        "three refused tries, then the retried delivery"
    );
    assert!(
        chats[3].at.duration_since(chats[2].at) >= Duration::from_secs(2),
        "the bus waited as Retry-After asked"
    );
    engine.abort();
    world.shut_down().await;
}
