//! Tutor chat end to end inside the workers, against the real PostgreSQL and an
//! OpenAI-compatible server streaming real SSE ([`LlmServer`]):
//!
//! student command → `AiReplyRequested` → outbox relay → `engine-queue` → engine worker →
//! frames on `manager-callback-session-queue` and the result on `manager-callback-queue` →
//! the manager's callback consumers → frames pushed in order, `AiReplyCompleted` in the log
//! and in the read model.
//!
//! Plus what must hold when things go wrong: a worker killed mid-stream (its message comes
//! back when the lock expires, and the reply is completed once), a request past its
//! time-to-live (an error frame and a failure, not a silent dead letter), competing workers
//! (each request answered once), a 429 whose `Retry-After` is honoured, a refusal, and tool
//! calls (the clock, web search through a local Tavily).
//!
//! Every wait is a bounded poll for an outcome; nothing depends on how fast anything runs.

mod support;

use axum::http::HeaderMap;
use serde_json::{json, Value};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use support::{eventually, World, MODEL};
use teachin_commands::CommandContext;
use teachin_domain::actor::{Actor, Role};
use teachin_domain::ids::{AttemptId, ExerciseId, RequestId, TutorSessionId, UserId};
use teachin_domain::practice::{Exercise, ExerciseCommand};
use teachin_domain::tutor_session::{
    SessionKind, TutorSession, TutorSessionCommand, TutorSessionEvent,
};
use teachin_domain::vocabulary::{Difficulty, GameType};
use teachin_projections::queries::ReadModels;
use teachin_workers::bus::{OutgoingMessage, QueueName};
use teachin_workers::contracts::{engine, TutorReplyRequest, TutorTask};
use teachin_workers::engine::settings::WebSearchSettings;
use teachin_workers::testing::{LlmReply, StreamEnd};

fn text_of(frames: &[Value]) -> String {
    frames
        .iter()
        .filter(|f| f["payload"]["stage"] == "Model")
        .map(|f| f["payload"]["delta"].as_str().unwrap())
        .collect()
}

const ANSWER_PIECES: [&str; 8] = [
    "שלום means hello, and also peace. ",
    "You can say it when you meet someone ",
    "and when you part. ",
    "For example: שלום, מה שלומך? ",
    "means Hello, how are you? ",
    "The answer is often: ",
    "טוב, תודה — fine, thanks. ",
    "Try it in your next conversation!",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_tutor_message_is_answered_in_ordered_frames_then_an_event_and_the_read_model() {
    let world = World::new(Duration::from_secs(60)).await;
    world
        .llm
        .push(LlmReply::answer(MODEL, &ANSWER_PIECES, (42, 17)).in_pieces(9));
    let engine = world.start_engine(WebSearchSettings::default());

    let student = UserId::new();
    let session = TutorSessionId::new();
    let request = world
        .post(
            session,
            student,
            SessionKind::Default,
            "What does שלום mean?",
            None,
        )
        .await;

    let frames = world.pushed_until_closed(student, request).await;
    let answer: String = ANSWER_PIECES.concat();
    let sequences: Vec<u64> = frames
        .iter()
        .map(|f| f["sequenceNumber"].as_u64().unwrap())
        .collect();
    assert_eq!(
        sequences,
        (0..frames.len() as u64).collect::<Vec<_>>(),
        "pushed in order, none missing, none twice"
    );
    assert!(
        frames.len() >= 4,
        "the answer came in several frames: {frames:?}"
    );
    assert_eq!(frames[0]["stage"], "First");
    assert!(frames[1..frames.len() - 1]
        .iter()
        .all(|f| f["stage"] == "Chunk"));
    let last = frames.last().unwrap();
    assert_eq!(last["stage"], "Last");
    assert_eq!(last["payload"]["isFinal"], true);
    assert_eq!(
        last["payload"]["delta"],
        answer.as_str(),
        "the final frame holds the whole answer"
    );
    assert_eq!(text_of(&frames), answer, "the chunks add up to the answer");
    for frame in &frames {
        assert_eq!(frame["eventType"], "ChatAiAnswer");
        assert_eq!(frame["payload"]["threadId"], session.to_string());
        assert_eq!(frame["payload"]["attempt"], 1);
    }

    let (completed, metadata) = world.wait_for(session, "AiReplyCompleted").await;
    let TutorSessionEvent::AiReplyCompleted {
        request_id,
        text,
        model,
        prompt_tokens,
        completion_tokens,
        ..
    } = completed
    else {
        unreachable!()
    };
    assert_eq!(request_id, request);
    assert_eq!(world.open(&text).await, answer);
    assert_eq!(
        (model.as_str(), prompt_tokens, completion_tokens),
        (MODEL, 42, 17)
    );
    assert_eq!(metadata["issued_by"], "system");
    assert_eq!(
        metadata["causation_id"],
        format!("message:tutor-reply:{request}")
    );
    assert_eq!(
        metadata["idempotency_key"],
        format!("tutor-reply:{request}")
    );

    // The model was asked with the tutor's prompt and the student's message.
    let asked = world.chat_requests();
    assert_eq!(asked.len(), 1);
    let messages = asked[0].body["messages"].as_array().unwrap().clone();
    assert_eq!(messages[0]["role"], "system");
    assert!(messages[0]["content"]
        .as_str()
        .unwrap()
        .contains("Teachin's Hebrew tutor"));
    assert_eq!(messages.last().unwrap()["content"], "What does שלום mean?");
    assert_eq!(
        asked[0].body["tools"][0]["function"]["name"], "Time-current_time",
        "the clock is offered; the search is not, without a key"
    );
    assert_eq!(asked[0].body["tools"].as_array().unwrap().len(), 1);

    // The new conversation got the title the model wrote.
    let (TutorSessionEvent::TitleSet { title }, _) = world.wait_for(session, "TitleSet").await
    else {
        unreachable!()
    };
    assert_eq!(world.open(&title).await, "ברכות בעברית");

    // And the read models show the reply.
    let read_models = ReadModels::new(world.db.pool.clone());
    let view = eventually("the read model shows the reply", || async {
        read_models
            .ai_request(request.0)
            .await
            .unwrap()
            .filter(|r| r.completed_at.is_some())
    })
    .await;
    assert_eq!(view.model.as_deref(), Some(MODEL));
    let conversation = read_models.tutor_session(session.0).await.unwrap().unwrap();
    assert!(conversation
        .messages
        .iter()
        .any(|m| m.role == "assistant" && m.text.as_deref() == Some(answer.as_str())));

    engine.abort();
    world.shut_down().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_worker_killed_mid_stream_leaves_the_request_to_another_which_completes_it_once() {
    let lock = Duration::from_secs(2);
    let world = World::new(lock).await;
    // The first answer stops after its first pieces and never ends; the second is whole.
    world.llm.push(
        LlmReply::answer(MODEL, &["First try, ", "never finished"], (1, 1))
            .truncated(3, StreamEnd::Hang),
    );
    world
        .llm
        .push(LlmReply::answer(MODEL, &ANSWER_PIECES, (42, 17)));
    let student = UserId::new();
    let session = TutorSessionId::new();
    let first_worker = world.start_engine(WebSearchSettings::default());
    let request = world
        .post(
            session,
            student,
            SessionKind::Default,
            "Teach me a greeting",
            None,
        )
        .await;

    // The first worker is mid-answer: part of it reached the student.
    eventually("a frame of the first attempt was pushed", || async {
        (!world.push.frames(student, request).is_empty()).then_some(())
    })
    .await;
    first_worker.abort();
    let _ = first_worker.await;
    assert_eq!(world.chat_requests().len(), 1);

    let second_worker = world.start_engine(WebSearchSettings::default());
    let (completed, _) = world.wait_for(session, "AiReplyCompleted").await;
    let TutorSessionEvent::AiReplyCompleted { text, .. } = completed else {
        unreachable!()
    };
    assert_eq!(world.open(&text).await, ANSWER_PIECES.concat());
    assert_eq!(
        world.chat_requests().len(),
        2,
        "asked again after the lock expired"
    );

    // The redelivered request streamed again as attempt 2, ending with the whole answer.
    let frames = world.pushed_until_closed(student, request).await;
    let last = frames.last().unwrap();
    assert_eq!(last["stage"], "Last");
    assert_eq!(last["payload"]["attempt"], 2);
    assert_eq!(frames[0]["payload"]["attempt"], 1);
    assert_eq!(frames.iter().filter(|f| f["stage"] == "Last").count(), 1);

    // Once the engine queue is empty, still exactly one completion and no failure.
    eventually("the engine queue is empty", || async {
        let stats = world.bus.stats(QueueName::Engine).await.unwrap();
        (stats.depth == 0 && stats.dead_letters == 0).then_some(())
    })
    .await;
    eventually("the callbacks are all handled", || async {
        let stats = world.bus.stats(QueueName::ManagerCallback).await.unwrap();
        (stats.depth == 0).then_some(())
    })
    .await;
    assert_eq!(world.events(session, "AiReplyCompleted").await.len(), 1);
    assert!(world.events(session, "AiReplyFailed").await.is_empty());

    second_worker.abort();
    world.shut_down().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_request_past_its_time_to_live_gets_an_error_frame_and_a_failure() {
    let world = World::new(Duration::from_secs(60)).await;
    let student = UserId::new();
    let session = TutorSessionId::new();
    let request = world
        .post(
            session,
            student,
            SessionKind::Default,
            "Are you there?",
            None,
        )
        .await;
    // The relay's own message for this request is taken off the queue as if it had waited:
    // it is replaced, under the same id, by one recorded five minutes ago.
    let message_id: uuid::Uuid = sqlx::query_scalar(
        "SELECT event_id FROM events WHERE event_type = 'AiReplyRequested' AND aggregate_id = $1",
    )
    .bind(session.to_string())
    .fetch_one(&world.db.pool)
    .await
    .unwrap();
    let stale = TutorReplyRequest {
        session_id: session,
        request_id: request,
        task: TutorTask::Chat,
        requested_at: chrono::Utc::now() - chrono::Duration::minutes(5),
        ttl_seconds: 60,
    };
    let relayed = eventually("the relay sent the request", || async {
        world
            .bus
            .receive(QueueName::Engine, Duration::ZERO)
            .await
            .unwrap()
    })
    .await;
    assert_eq!(relayed.message_id, message_id.to_string());
    world.bus.complete(&relayed).await.unwrap();
    world
        .bus
        .send(
            QueueName::Engine,
            OutgoingMessage::new(
                format!("{message_id}-stale"),
                engine::PROCESSING_CHAT_MESSAGE,
                serde_json::to_value(&stale).unwrap(),
            ),
        )
        .await
        .unwrap();
    let engine = world.start_engine(WebSearchSettings::default());

    let frames = world.pushed_until_closed(student, request).await;
    assert_eq!(frames.len(), 1);
    assert_eq!(frames[0]["stage"], "Error");
    assert_eq!(frames[0]["payload"]["stage"], "Expired");
    assert!(frames[0]["payload"]["delta"]
        .as_str()
        .unwrap()
        .contains("send it again"));

    let (failed, _) = world.wait_for(session, "AiReplyFailed").await;
    let TutorSessionEvent::AiReplyFailed { reason, .. } = failed else {
        unreachable!()
    };
    assert!(reason.starts_with("expired"), "{reason}");
    assert!(world.llm.seen().is_empty(), "the model was never asked");
    let stats = world.bus.stats(QueueName::Engine).await.unwrap();
    assert_eq!(stats.dead_letters, 0, "answered, not dead-lettered");

    engine.abort();
    world.shut_down().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn competing_workers_answer_each_request_once() {
    let world = World::new(Duration::from_secs(60)).await;
    world
        .llm
        .otherwise(LlmReply::answer(MODEL, &["Answered."], (5, 2)));
    let workers: Vec<_> = (0..3)
        .map(|_| world.start_engine(WebSearchSettings::default()))
        .collect();
    let mut asked = Vec::new();
    for i in 0..8 {
        let student = UserId::new();
        let session = TutorSessionId::new();
        let marker = format!("question number {i}");
        world
            .post(session, student, SessionKind::Default, &marker, None)
            .await;
        asked.push((session, marker));
    }
    for (session, _) in &asked {
        world.wait_for(*session, "AiReplyCompleted").await;
    }
    eventually("every engine message is settled", || async {
        let stats = world.bus.stats(QueueName::Engine).await.unwrap();
        (stats.depth == 0).then_some(())
    })
    .await;
    let chats = world.chat_requests();
    assert_eq!(
        chats.len(),
        asked.len(),
        "the model was asked once per request"
    );
    for (session, marker) in &asked {
        assert_eq!(
            chats
                .iter()
                .filter(|r| r.text().contains(marker.as_str()))
                .count(),
            1,
            "{marker}"
        );
        assert_eq!(world.events(*session, "AiReplyCompleted").await.len(), 1);
    }
    for worker in workers {
        worker.abort();
    }
    world.shut_down().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_429_is_retried_after_the_time_it_asks_for_and_the_reply_still_completes() {
    let world = World::new(Duration::from_secs(60)).await;
    world.llm.push(LlmReply::status_retry_after(429, "1"));
    world
        .llm
        .push(LlmReply::answer(MODEL, &ANSWER_PIECES, (42, 17)));
    let engine = world.start_engine(WebSearchSettings::default());
    let student = UserId::new();
    let session = TutorSessionId::new();
    world
        .post(session, student, SessionKind::Default, "Busy?", None)
        .await;
    let (completed, _) = world.wait_for(session, "AiReplyCompleted").await;
    let TutorSessionEvent::AiReplyCompleted { latency_ms, .. } = completed else {
        unreachable!()
    };
    let chats = world.chat_requests();
    assert_eq!(chats.len(), 2);
    // The retry policy's own back-off is 10 ms; the provider asked for a second.
    assert!(
        chats[1].at.duration_since(chats[0].at) >= Duration::from_secs(1),
        "waited as Retry-After asked"
    );
    assert!(
        latency_ms >= 1000,
        "the latency includes the wait: {latency_ms}"
    );
    engine.abort();
    world.shut_down().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_refused_request_fails_with_an_error_frame_and_a_failure_event() {
    let world = World::new(Duration::from_secs(60)).await;
    world.llm.push(LlmReply::status(400));
    let engine = world.start_engine(WebSearchSettings::default());
    let student = UserId::new();
    let session = TutorSessionId::new();
    let request = world
        .post(session, student, SessionKind::Default, "Hello?", None)
        .await;
    let frames = world.pushed_until_closed(student, request).await;
    assert_eq!(frames.last().unwrap()["payload"]["stage"], "Failed");
    let (failed, _) = world.wait_for(session, "AiReplyFailed").await;
    let TutorSessionEvent::AiReplyFailed { reason, model, .. } = failed else {
        unreachable!()
    };
    assert!(reason.contains("400"), "{reason}");
    assert_eq!(model.as_deref(), Some(MODEL));
    assert!(world.events(session, "AiReplyCompleted").await.is_empty());
    engine.abort();
    world.shut_down().await;
}

/// A local Tavily: checks the key, answers one result, remembers the queries.
async fn start_tavily() -> (String, Arc<Mutex<Vec<Value>>>) {
    let queries = Arc::new(Mutex::new(Vec::new()));
    let seen = queries.clone();
    let app = axum::Router::new().route(
        "/search",
        axum::routing::post(move |headers: HeaderMap, body: String| {
            let seen = seen.clone();
            async move {
                if headers.get("authorization").and_then(|v| v.to_str().ok())
                    != Some("Bearer tvly-test")
                {
                    return (axum::http::StatusCode::UNAUTHORIZED, String::new());
                }
                seen.lock().unwrap().push(serde_json::from_str(&body).unwrap());
                (
                    axum::http::StatusCode::OK,
                    json!({"query": "x", "results": [{
                        "title": "Shalom — Wiktionary", "url": "https://en.wiktionary.org/wiki/shalom",
                        "content": "Hebrew: peace; hello; goodbye.", "score": 0.9}]})
                    .to_string(),
                )
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, queries)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_web_search_the_model_asks_for_is_run_recorded_once_and_fed_back() {
    let world = World::new(Duration::from_secs(60)).await;
    let (tavily, queries) = start_tavily().await;
    world.llm.push(LlmReply::tool_call(
        MODEL,
        "call_1",
        "WebSearch-web_search",
        r#"{"query":"shalom meaning"}"#,
    ));
    world
        .llm
        .push(LlmReply::answer(MODEL, &["It means peace."], (30, 4)));
    let engine = world.start_engine(WebSearchSettings {
        api_key: Some("tvly-test".into()),
        base_url: tavily,
    });
    let student = UserId::new();
    let session = TutorSessionId::new();
    let request = world
        .post(
            session,
            student,
            SessionKind::Default,
            "Look up shalom",
            None,
        )
        .await;

    let (completed, _) = world.wait_for(session, "AiReplyCompleted").await;
    let TutorSessionEvent::AiReplyCompleted {
        text,
        prompt_tokens,
        completion_tokens,
        ..
    } = completed
    else {
        unreachable!()
    };
    assert_eq!(world.open(&text).await, "It means peace.");
    assert_eq!(
        (prompt_tokens, completion_tokens),
        (35, 7),
        "summed over both rounds"
    );

    let queries = queries.lock().unwrap().clone();
    assert_eq!(queries.len(), 1);
    assert_eq!(queries[0]["query"], "shalom meaning");
    assert_eq!(queries[0]["max_results"], 5);

    // Reported twice (its own callback and the completion's copy), recorded once.
    let calls = world.events(session, "ToolCallRecorded").await;
    assert_eq!(calls.len(), 1);
    let (
        TutorSessionEvent::ToolCallRecorded {
            tool,
            arguments,
            result,
            ..
        },
        _,
    ) = &calls[0]
    else {
        unreachable!()
    };
    assert_eq!(tool, "WebSearch-web_search");
    assert_eq!(world.open(arguments).await, r#"{"query":"shalom meaning"}"#);
    let result = world.open(result.as_ref().unwrap()).await;
    assert!(result.starts_with("1. Shalom — Wiktionary — https://en.wiktionary.org/wiki/shalom"));

    // The model got the result back, answering its call.
    let chats = world.chat_requests();
    assert_eq!(chats.len(), 2);
    let second = chats[1].body["messages"].as_array().unwrap();
    let tool_message = second.iter().find(|m| m["role"] == "tool").unwrap();
    assert_eq!(tool_message["tool_call_id"], "call_1");
    assert!(tool_message["content"]
        .as_str()
        .unwrap()
        .contains("peace; hello"));
    let assistant = second.iter().find(|m| m["role"] == "assistant").unwrap();
    assert_eq!(
        assistant["tool_calls"][0]["function"]["name"],
        "WebSearch-web_search"
    );

    // The student saw the tool being called.
    let frames = world.pushed_until_closed(student, request).await;
    assert!(frames
        .iter()
        .any(|f| f["payload"]["stage"] == "Tool"
            && f["payload"]["toolCall"] == "WebSearch-web_search"));
    engine.abort();
    world.shut_down().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_global_tutor_is_told_who_the_learner_is_and_what_page_they_are_on() {
    let world = World::new(Duration::from_secs(60)).await;
    world
        .llm
        .push(LlmReply::answer(MODEL, &["The number is 777."], (9, 5)));
    let engine = world.start_engine(WebSearchSettings::default());
    let student = world.register("Dana").await;
    let session = TutorSessionId::new();
    world
        .post(
            session,
            student,
            SessionKind::Global,
            "Which number is on this page?",
            Some(r#"{"page": "word-cards", "number": 777}"#),
        )
        .await;
    world.wait_for(session, "AiReplyCompleted").await;
    let chats = world.chat_requests();
    let messages = chats[0].body["messages"].as_array().unwrap();
    let system = messages[0]["content"].as_str().unwrap();
    for part in ["Dana", "Hebrew", "intermediate", "music"] {
        assert!(system.contains(part), "{part} missing from {system}");
    }
    // The page context is an application message just before the student's.
    let n = messages.len();
    assert_eq!(messages[n - 2]["role"], "system");
    assert!(messages[n - 2]["content"]
        .as_str()
        .unwrap()
        .contains(r#"{"number":777,"page":"word-cards"}"#));
    assert_eq!(messages[n - 1]["content"], "Which number is on this page?");

    let (TutorSessionEvent::TitleSet { title }, _) = world.wait_for(session, "TitleSet").await
    else {
        unreachable!()
    };
    assert_eq!(world.open(&title).await, "Global Chat");
    engine.abort();
    world.shut_down().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_mistake_is_explained_from_the_attempt_it_names() {
    let world = World::new(Duration::from_secs(60)).await;
    world.llm.push(LlmReply::answer(
        MODEL,
        &["The word order is wrong."],
        (9, 5),
    ));
    let engine = world.start_engine(WebSearchSettings::default());
    let student = world.register("Noa").await;
    let exercise = ExerciseId::new();
    world
        .commands
        .execute::<Exercise>(
            &exercise.to_string(),
            ExerciseCommand::Generate {
                student,
                game_type: GameType::TypingPractice,
                difficulty: Difficulty::Easy,
                nikud: false,
                sentence: "שלום עולם".into(),
                request_id: RequestId::new(),
            },
            &CommandContext::new(Actor::System, "engine"),
        )
        .await
        .unwrap();
    let attempt = AttemptId::new();
    world
        .commands
        .execute::<Exercise>(
            &exercise.to_string(),
            ExerciseCommand::SubmitAttempt {
                attempt_id: attempt,
                student,
                given_answer: vec!["עולם שלום".into()],
            },
            &CommandContext::new(Actor::user(student, Role::Student), "test"),
        )
        .await
        .unwrap();
    let session = TutorSessionId::new();
    world
        .commands
        .execute::<TutorSession>(
            &session.to_string(),
            TutorSessionCommand::RequestMistakeExplanation {
                student,
                exercise,
                attempt,
                request_id: RequestId::new(),
            },
            &CommandContext::new(Actor::user(student, Role::Student), "test"),
        )
        .await
        .unwrap();
    world.wait_for(session, "AiReplyCompleted").await;
    let chats = world.chat_requests();
    let text = chats[0].text();
    assert!(text.contains("My answer: עולם שלום"), "{text}");
    assert!(text.contains("The correct answer: שלום עולם"));
    assert!(text.contains("TypingPractice"));
    assert!(
        text.contains("Write the whole explanation in Hebrew"),
        "the learner's language"
    );
    let (TutorSessionEvent::TitleSet { title }, _) = world.wait_for(session, "TitleSet").await
    else {
        unreachable!()
    };
    assert_eq!(
        world.open(&title).await,
        "Mistake Explanation - TypingPractice"
    );
    engine.abort();
    world.shut_down().await;
}
