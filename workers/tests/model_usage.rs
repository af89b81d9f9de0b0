//! What the engine does with a model call besides answering: the tokens it used count
//! against the person's daily quota in the shared Redis ledger (`engine::usage`), and the
//! logs carry ids, sizes and durations — never the prompt, the student's words or the
//! model's answer. Real PostgreSQL, Redis and the test LLM server.

mod support;

use chrono::Utc;
use fred::prelude::{Builder, ClientLike, Config, HashesInterface, KeysInterface};
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use support::{eventually, World, MODEL};
use teachin_commands::CommandContext;
use teachin_domain::actor::{Actor, Role};
use teachin_domain::generation::{GenerationCommand, GenerationRequest};
use teachin_domain::ids::{RequestId, TutorSessionId};
use teachin_domain::tutor_session::SessionKind;
use teachin_workers::engine::settings::WebSearchSettings;
use teachin_workers::engine::usage::UsageLedger;
use teachin_workers::run_engine;
use teachin_workers::testing::LlmReply;

const SECRET_QUESTION: &str = "my-private-question-7f3a";
const SECRET_ANSWER: &str = "the-models-private-answer-91c2";
const SECRET_WORD: &str = "secret-word-5d0e";

/// Every log line the process writes, at every level.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn install() -> Captured {
        let captured = Captured::default();
        let writer = captured.clone();
        // Global: the engine logs from the runtime's worker threads (nextest runs each test
        // in a process of its own).
        tracing_subscriber::fmt()
            .with_env_filter("trace,sqlx=warn,hyper=warn,reqwest=warn,h2=warn")
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .init();
        captured
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

async fn redis() -> fred::prelude::Client {
    let url =
        std::env::var("TEACHIN_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let client = Builder::from_config(Config::from_url(&url).unwrap())
        .build()
        .unwrap();
    client.init().await.unwrap();
    client
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tokens_are_counted_for_their_person_and_no_prompt_or_answer_is_logged() {
    let logs = Captured::install();
    let world = World::new(Duration::from_secs(60)).await;
    let redis = redis().await;
    let namespace = format!("test-{}", uuid::Uuid::new_v4().simple());
    let ledger = UsageLedger::new(redis.clone(), &namespace);
    let mut deps = world.engine_deps(WebSearchSettings::default());
    deps.settings.usage = Some(ledger.clone());
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let engine = tokio::spawn(run_engine(deps, stopped));

    // A tutor reply: the answer (42 + 17 tokens) and the title (3 + 4, `World`'s rule).
    world.llm.push(LlmReply::answer(
        MODEL,
        &["Here is ", SECRET_ANSWER, "."],
        (42, 17),
    ));
    let student = world.register("Dana").await;
    let session = TutorSessionId::new();
    world
        .post(
            session,
            student,
            SessionKind::Default,
            &format!("Tell me about {SECRET_QUESTION}"),
            None,
        )
        .await;
    world.wait_for(session, "AiReplyCompleted").await;
    world.wait_for(session, "TitleSet").await;

    // A generation whose answers are unusable twice (10 + 5 tokens each), quoting the word.
    for _ in 0..2 {
        world.llm.push(LlmReply::answer(
            MODEL,
            &[&format!("I cannot explain {SECRET_WORD} as JSON")],
            (10, 5),
        ));
    }
    let request = RequestId::new();
    world
        .commands
        .execute::<GenerationRequest>(
            &request.to_string(),
            GenerationCommand::RequestWordExplanation {
                requester: student,
                word: SECRET_WORD.into(),
                context: format!("a sentence with {SECRET_WORD}"),
            },
            &CommandContext::new(Actor::user(student, Role::Student), "test"),
        )
        .await
        .expect("requested");
    eventually("the generation failed", || async {
        let failed = world
            .logged::<teachin_domain::generation::GenerationEvent>(
                "GenerationRequest",
                &request.to_string(),
                "GenerationFailed",
            )
            .await;
        (!failed.is_empty()).then_some(())
    })
    .await;

    let key = ledger.key(student, Utc::now());
    let tokens: Option<u64> = eventually("the tokens were counted", || async {
        let tokens: Option<u64> = redis.hget(&key, "tokens").await.unwrap();
        (tokens == Some(42 + 17 + 3 + 4 + 2 * (10 + 5))).then_some(tokens)
    })
    .await;
    assert_eq!(tokens, Some(96));
    let ttl: i64 = redis.ttl(&key).await.unwrap();
    assert!(
        ttl > 0 && ttl <= 24 * 3600,
        "the day's usage expires at its end: {ttl}"
    );

    stop.send(true).unwrap();
    let _ = tokio::time::timeout(Duration::from_secs(30), engine).await;
    world.shut_down().await;
    let logs = logs.text();
    assert!(
        logs.contains("tutor reply written"),
        "the capture works: {logs}"
    );
    for secret in [SECRET_QUESTION, SECRET_ANSWER, SECRET_WORD] {
        assert!(!logs.contains(secret), "`{secret}` was logged:\n{logs}");
    }
}
