//! Generation requests end to end inside the workers, against the real PostgreSQL and the
//! test LLM server: a `GenerationRequest` command → `…Requested` event → outbox relay →
//! `engine-queue` → engine worker (versioned prompt, JSON answer checked) → callback →
//! exercises and the request's completion in the log. Plus: an unusable answer is asked for
//! again, then fails the request; a callback handled twice records nothing twice.

mod support;

use serde_json::Value;
use std::collections::BTreeMap;
use std::time::Duration;
use support::{eventually, World, MODEL};
use teachin_commands::CommandContext;
use teachin_domain::actor::{Actor, Role};
use teachin_domain::generation::{GenerationCommand, GenerationEvent, GenerationRequest};
use teachin_domain::ids::{RequestId, UserId};
use teachin_domain::practice::ExerciseEvent;
use teachin_domain::user::Language;
use teachin_domain::vocabulary::{Difficulty, GameType};
use teachin_workers::bus::QueueName;
use teachin_workers::callbacks::generation::SentencesDone;
use teachin_workers::consumer::{Handler, MessageContext};
use teachin_workers::contracts::{
    callback, generated_exercise, GenerationUsage, SentencesGenerated,
};
use teachin_workers::engine::settings::WebSearchSettings;
use teachin_workers::testing::LlmReply;

async fn request(world: &World, requester: UserId, command: GenerationCommand) -> RequestId {
    let request = RequestId::new();
    world
        .commands
        .execute::<GenerationRequest>(
            &request.to_string(),
            command,
            &CommandContext::new(Actor::user(requester, Role::Student), "test"),
        )
        .await
        .expect("requested");
    request
}

/// Waits for the request's outcome event (anything after the request).
async fn outcome(world: &World, request: RequestId) -> GenerationEvent {
    eventually("the generation request was answered", || async {
        for event_type in [
            "SentencesGenerated",
            "WordExplained",
            "EmailDrafted",
            "GenerationFailed",
        ] {
            let found = world
                .logged::<GenerationEvent>("GenerationRequest", &request.to_string(), event_type)
                .await;
            if let Some((event, _)) = found.into_iter().next() {
                return Some(event);
            }
        }
        None
    })
    .await
}

fn json_answer(value: Value) -> LlmReply {
    LlmReply::answer(MODEL, &[&value.to_string()], (20, 30))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn split_sentences_become_word_order_exercises_and_complete_the_request() {
    let world = World::new(Duration::from_secs(60)).await;
    world.llm.push(json_answer(serde_json::json!({"sentences": [
        {"text": "הַיֶּלֶד הוֹלֵךְ לְבֵית הַסֵּפֶר בַּבֹּקֶר עִם הַחֲבֵרִים שֶׁלּוֹ"},
        {"text": "אֲנִי אוֹהֵב לִשְׁמֹעַ מוּזִיקָה כְּשֶׁאֲנִי נוֹסֵעַ בָּאוֹטוֹבּוּס לָעֲבוֹדָה"},
        {"text": "בְּסוֹף הַשָּׁבוּעַ הַמִּשְׁפָּחָה שֶׁלָּנוּ נוֹסַעַת לַיָּם כְּדֵי לָנוּחַ"},
    ]})));
    let engine = world.start_engine(WebSearchSettings::default());
    let student = world.register("Dana").await;
    let request = request(
        &world,
        student,
        GenerationCommand::RequestSentences {
            requester: student,
            game_type: GameType::WordOrder,
            difficulty: Difficulty::Hard,
            nikud: true,
            count: 3,
        },
    )
    .await;

    let GenerationEvent::SentencesGenerated { exercises, usage } = outcome(&world, request).await
    else {
        panic!("the request did not complete")
    };
    let expected: Vec<_> = (0..3).map(|i| generated_exercise(request, i)).collect();
    assert_eq!(
        exercises, expected,
        "one exercise per sentence, named by the request"
    );
    assert_eq!(
        (
            usage.model.as_str(),
            usage.prompt_tokens,
            usage.completion_tokens
        ),
        (MODEL, 20, 30)
    );
    for exercise in &exercises {
        let generated = world
            .logged::<ExerciseEvent>("Exercise", &exercise.to_string(), "ExerciseGenerated")
            .await;
        assert_eq!(generated.len(), 1);
        let (
            ExerciseEvent::ExerciseGenerated {
                student: owner,
                game_type,
                difficulty,
                nikud,
                correct_answer,
                request_id,
            },
            metadata,
        ) = &generated[0]
        else {
            unreachable!()
        };
        assert_eq!(*owner, student);
        assert_eq!(
            (*game_type, *difficulty, *nikud),
            (GameType::WordOrder, Difficulty::Hard, true)
        );
        assert_eq!(*request_id, request);
        assert!(
            correct_answer.len() >= 5,
            "split into its words: {correct_answer:?}"
        );
        assert_eq!(metadata["issued_by"], "system");
    }

    // The model was asked with the sentence prompt, filled in for this request.
    let asked = world.llm.seen();
    assert_eq!(asked.len(), 1);
    let prompt = asked[0].text();
    assert!(prompt.contains("Write 3 Hebrew sentences"), "{prompt}");
    assert!(prompt.contains("between 10 and 18 words"));
    assert!(prompt.contains("Nikud: true"));
    engine.abort();
    world.shut_down().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_unusable_answer_is_asked_for_again_then_the_request_fails() {
    let world = World::new(Duration::from_secs(60)).await;
    // Too few sentences, then no JSON at all: both unusable.
    world.llm.push(json_answer(
        serde_json::json!({"sentences": [{"text": "שלום"}]}),
    ));
    world.llm.push(LlmReply::answer(
        MODEL,
        &["Here are your sentences!"],
        (1, 1),
    ));
    // The second request is answered well on its second try.
    world
        .llm
        .push(LlmReply::answer(MODEL, &["not json"], (1, 1)));
    world.llm.push(json_answer(
        serde_json::json!({"sentences": [{"text": "הכלב רץ"}]}),
    ));
    let engine = world.start_engine(WebSearchSettings::default());
    let student = world.register("Noa").await;
    let ask = |count| GenerationCommand::RequestSentences {
        requester: student,
        game_type: GameType::TypingPractice,
        difficulty: Difficulty::Easy,
        nikud: false,
        count,
    };
    let failing = request(&world, student, ask(2)).await;
    let GenerationEvent::GenerationFailed { reason, model, .. } = outcome(&world, failing).await
    else {
        panic!("the request did not fail")
    };
    assert!(reason.contains("unusable 2 times"), "{reason}");
    assert_eq!(model.as_deref(), Some(MODEL));

    let retried = request(&world, student, ask(1)).await;
    let GenerationEvent::SentencesGenerated { exercises, .. } = outcome(&world, retried).await
    else {
        panic!("the request did not complete")
    };
    assert_eq!(exercises.len(), 1);
    assert_eq!(world.llm.seen().len(), 4);
    engine.abort();
    world.shut_down().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_word_is_explained_in_its_sentence_and_the_explanation_is_sealed() {
    let world = World::new(Duration::from_secs(60)).await;
    world.llm.push(json_answer(serde_json::json!({
        "definition": "hello; peace",
        "explanation": "From the root ש-ל-ם, wholeness. Here it greets.",
    })));
    let engine = world.start_engine(WebSearchSettings::default());
    let student = world.register("Dana").await;
    let request = request(
        &world,
        student,
        GenerationCommand::RequestWordExplanation {
            requester: student,
            word: "שלום".into(),
            context: "שלום, מה שלומך?".into(),
        },
    )
    .await;
    let GenerationEvent::WordExplained {
        definition,
        explanation,
        usage,
    } = outcome(&world, request).await
    else {
        panic!("the word was not explained")
    };
    assert_eq!(definition.subject, student);
    assert_eq!(world.open(&definition).await, "hello; peace");
    assert!(world.open(&explanation).await.starts_with("From the root"));
    assert_eq!(usage.model, MODEL);
    let prompt = world.llm.seen()[0].text();
    assert!(
        prompt.contains(r#"Explain the Hebrew word "שלום""#),
        "{prompt}"
    );
    assert!(prompt.contains("שלום, מה שלומך?"));
    assert!(prompt.contains("Write in Hebrew"), "the learner's language");
    engine.abort();
    world.shut_down().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_teacher_gets_an_email_draft() {
    let world = World::new(Duration::from_secs(60)).await;
    world.llm.push(json_answer(serde_json::json!({
        "subject": "Parents' evening on Tuesday",
        "body": "Dear parents, ...",
    })));
    let engine = world.start_engine(WebSearchSettings::default());
    let teacher = world.register_as("Rina", Role::Teacher).await;
    let request = request(
        &world,
        teacher,
        GenerationCommand::RequestEmailDraft {
            requester: teacher,
            subject: "Parents' evening".into(),
            purpose: "Invite parents to talk about progress".into(),
            language: Language::En,
        },
    )
    .await;
    let GenerationEvent::EmailDrafted { subject, body, .. } = outcome(&world, request).await else {
        panic!("no draft")
    };
    assert_eq!(world.open(&subject).await, "Parents' evening on Tuesday");
    assert_eq!(world.open(&body).await, "Dear parents, ...");
    let prompt = world.llm.seen()[0].text();
    assert!(prompt.contains("Purpose: Invite parents to talk about progress"));
    assert!(prompt.contains("in English"));
    let seen = &world.llm.seen()[0].body;
    assert!((seen["temperature"].as_f64().unwrap() - 0.7).abs() < 1e-6);
    engine.abort();
    world.shut_down().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_sentences_callback_handled_twice_records_each_exercise_once() {
    let world = World::new(Duration::from_secs(60)).await;
    let student = UserId::new();
    let request = request(
        &world,
        student,
        GenerationCommand::RequestSentences {
            requester: student,
            game_type: GameType::SpeakingPractice,
            difficulty: Difficulty::Medium,
            nikud: false,
            count: 2,
        },
    )
    .await;
    // Take the relayed engine message off the queue: no engine runs in this test.
    let relayed = eventually("the relay sent the request", || async {
        world
            .bus
            .receive(QueueName::Engine, Duration::ZERO)
            .await
            .unwrap()
    })
    .await;
    assert_eq!(relayed.action, "GenerateSentences");
    world.bus.complete(&relayed).await.unwrap();

    let payload = SentencesGenerated {
        request_id: request,
        requester: student,
        game_type: GameType::SpeakingPractice,
        difficulty: Difficulty::Medium,
        nikud: false,
        sentences: vec!["אני גר בתל אביב".into(), "היום יום יפה מאוד".into()],
        usage: GenerationUsage {
            model: MODEL.into(),
            prompt_tokens: 1,
            completion_tokens: 2,
            latency_ms: 3,
            prompt: "sentences@v1".into(),
        },
    };
    let context = MessageContext {
        queue: QueueName::ManagerCallback,
        message_id: format!("generation-result:{request}"),
        dedupe_key: format!("generation-result:{request}"),
        correlation_id: None,
        action: callback::SENTENCES_GENERATED.into(),
        delivery_count: 1,
        enqueued_at: chrono::Utc::now(),
        properties: BTreeMap::new(),
    };
    let handler = SentencesDone(world.commands.clone());
    handler.handle(payload.clone(), &context).await.unwrap();
    handler.handle(payload, &context).await.unwrap();

    let completed = world
        .logged::<GenerationEvent>(
            "GenerationRequest",
            &request.to_string(),
            "SentencesGenerated",
        )
        .await;
    assert_eq!(completed.len(), 1);
    for index in 0..2 {
        let exercise = generated_exercise(request, index);
        let generated = world
            .logged::<ExerciseEvent>("Exercise", &exercise.to_string(), "ExerciseGenerated")
            .await;
        assert_eq!(generated.len(), 1, "exercise {index} recorded once");
        assert_eq!(
            generated[0].1["idempotency_key"],
            format!("generation-result:{request}:exercise:{index}")
        );
    }
    world.shut_down().await;
}
