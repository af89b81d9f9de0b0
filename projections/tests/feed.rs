//! The realtime feed against the real Postgres and the real Redis: events committed through
//! the command bus come out of the subscriber as notifications, in log order, once each —
//! also when the publisher "crashes" between publishing and checkpointing — with personal
//! data opened, unless its person was erased.
//!
//! Every test has its own database and its own namespace (so its own channel): tests run in
//! parallel without seeing each other's notifications. The log's settled horizon is
//! cluster-wide, so publishing waits (boundedly) for other tests' transactions to end.

use fred::prelude::{Builder, ClientLike, Config, EventInterface, PubsubInterface};
use serde_json::json;
use std::time::Duration;
use teachin_commands::testing::TestDatabase;
use teachin_commands::{command_bus, BusSettings, CommandBus, CommandContext, PortSecrets};
use teachin_domain::achievements::{AchievementCommand, AchievementProgress, Feature};
use teachin_domain::actor::{Actor, Role};
use teachin_domain::ids::{ExerciseId, RequestId, TutorSessionId, UserId};
use teachin_domain::practice::{Exercise, ExerciseCommand};
use teachin_domain::tutor_session::{SessionKind, TutorSession, TutorSessionCommand};
use teachin_domain::user::{Language, User, UserCommand};
use teachin_domain::vocabulary::{Difficulty, GameType};
use teachin_projections::checkpoint;
use teachin_projections::feed::{
    FeedConfig, FeedPublisher, FeedSubscriber, Notification, Target, CHECKPOINT,
};
use teachin_projections::{EventLog, LogPosition};
use uuid::Uuid;

fn redis_url() -> String {
    std::env::var("TEACHIN_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

fn namespace() -> String {
    format!("test-{}", Uuid::new_v4().simple())
}

fn bus(db: &TestDatabase) -> CommandBus {
    command_bus(
        db.pool.clone(),
        PortSecrets {
            claims_hash_key: b"k".to_vec(),
        },
        BusSettings::default(),
    )
}

fn as_user(id: UserId) -> CommandContext {
    CommandContext::new(Actor::user(id, Role::Student), "test")
}

fn as_engine() -> CommandContext {
    CommandContext::new(Actor::System, "engine")
}

async fn publisher(db: &TestDatabase, namespace: &str) -> FeedPublisher {
    FeedPublisher::connect(db.pool.clone(), &redis_url(), FeedConfig::new(namespace))
        .await
        .expect("the test Redis is reachable")
}

async fn events_in_log(db: &TestDatabase) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM events")
        .fetch_one(&db.pool)
        .await
        .unwrap()
}

/// Publishes until the feed's checkpoint has consumed every event in the log.
async fn publish_all(db: &TestDatabase, publisher: &FeedPublisher) -> usize {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let mut published = 0;
    loop {
        published += publisher.publish_pending().await.expect("publishes");
        let consumed = checkpoint::get(&db.pool, CHECKPOINT)
            .await
            .unwrap()
            .map_or(0, |c| c.events_applied);
        if consumed == events_in_log(db).await {
            return published;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the feed never caught up"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until every event is settled (readable by the gap-safe reader).
async fn wait_settled(db: &TestDatabase) {
    let log = EventLog::new(db.pool.clone());
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while (log
        .read_after(LogPosition::START, 10_000)
        .await
        .unwrap()
        .len() as i64)
        < events_in_log(db).await
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the log never settled"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn next(subscriber: &mut FeedSubscriber) -> Notification {
    tokio::time::timeout(Duration::from_secs(10), subscriber.next())
        .await
        .expect("a notification arrives")
        .expect("the subscription is open")
}

/// Nothing more arrives for a moment.
async fn assert_quiet(subscriber: &mut FeedSubscriber) {
    if let Ok(Some(extra)) =
        tokio::time::timeout(Duration::from_millis(300), subscriber.next()).await
    {
        panic!("unexpected notification: {extra:?}");
    }
}

async fn post(bus: &CommandBus, session: TutorSessionId, student: UserId, text: &str) -> RequestId {
    let request_id = RequestId::new();
    bus.execute::<TutorSession>(
        &session.to_string(),
        TutorSessionCommand::PostStudentMessage {
            student,
            kind: SessionKind::Default,
            text: text.into(),
            page_context: None,
            request_id,
        },
        &as_user(student),
    )
    .await
    .expect("message posted");
    request_id
}

async fn reply(bus: &CommandBus, session: TutorSessionId, request_id: RequestId, text: &str) {
    bus.execute::<TutorSession>(
        &session.to_string(),
        TutorSessionCommand::CompleteAiReply {
            request_id,
            text: text.into(),
            model: "gpt-test".into(),
            prompt_tokens: 10,
            completion_tokens: 20,
            latency_ms: 30,
        },
        &as_engine(),
    )
    .await
    .expect("reply completed");
}

async fn generate(
    bus: &CommandBus,
    student: UserId,
    game_type: GameType,
    sentence: &str,
) -> ExerciseId {
    let exercise = ExerciseId::new();
    bus.execute::<Exercise>(
        &exercise.to_string(),
        ExerciseCommand::Generate {
            student,
            game_type,
            difficulty: Difficulty::Medium,
            nikud: false,
            sentence: sentence.into(),
            request_id: RequestId::new(),
        },
        &as_engine(),
    )
    .await
    .expect("exercise generated");
    exercise
}

async fn track(bus: &CommandBus, student: UserId, feature: Feature) {
    bus.execute::<AchievementProgress>(
        &student.to_string(),
        AchievementCommand::Track {
            feature,
            increment_by: 1,
        },
        &as_user(student),
    )
    .await
    .expect("tracked");
}

#[tokio::test]
async fn committed_events_reach_the_subscriber_as_mapped_notifications_in_log_order() {
    let db = TestDatabase::new().await;
    let bus = bus(&db);
    let ns = namespace();
    let mut subscriber = FeedSubscriber::connect(&redis_url(), &ns).await.unwrap();

    let student = UserId::new();
    let session = TutorSessionId::new();
    let request = post(&bus, session, student, "Ma nishma?").await;
    // The first publisher sees the session start (no push), then goes away.
    assert_eq!(publish_all(&db, &publisher(&db, &ns).await).await, 0);

    let newcomer = UserId::new();
    bus.execute::<User>(
        &newcomer.to_string(),
        UserCommand::Register {
            user_id: newcomer,
            role: Role::Student,
            first_name: "Dana".into(),
            last_name: "Levi".into(),
            email: format!("{}@example.com", newcomer.0.simple()),
            password_hash: "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNo".into(),
            preferred_language: Language::He,
            hebrew_level: None,
            interests: vec![],
            registered_by: Actor::Anonymous,
        },
        &CommandContext::new(Actor::Anonymous, "sign-up"),
    )
    .await
    .expect("registered");
    reply(&bus, session, request, "Hakol beseder!").await;
    let exercise = generate(&bus, student, GameType::WordOrder, "אני אוהב ללמוד").await;
    track(&bus, student, Feature::TypingPractice).await;

    // A restarted publisher still knows whose session it is (its own table).
    assert_eq!(publish_all(&db, &publisher(&db, &ns).await).await, 4);

    let received = [
        next(&mut subscriber).await,
        next(&mut subscriber).await,
        next(&mut subscriber).await,
        next(&mut subscriber).await,
    ];
    assert_quiet(&mut subscriber).await;
    for pair in received.windows(2) {
        assert!(pair[0].position < pair[1].position, "in log order");
    }

    let [registered, answer, sentences, badge] = received;
    assert_eq!(registered.target, Target::Group("Admins".into()));
    assert_eq!(registered.method, "NotificationMessage");
    assert_eq!(registered.payload["type"], "Info");
    assert_eq!(
        registered.payload["message"],
        "New student registered: Dana Levi."
    );

    assert_eq!(answer.target, Target::User(student));
    assert_eq!(answer.method, "ReceiveEvent");
    assert_eq!(
        answer.payload,
        json!({"eventType": "ChatAiAnswer", "payload": {
            "requestId": request, "threadId": session.to_string(), "text": "Hakol beseder!",
            "model": "gpt-test", "stage": "Last",
        }})
    );

    assert_eq!(sentences.target, Target::User(student));
    assert_eq!(sentences.payload["eventType"], "SplitSentenceGeneration");
    let item = &sentences.payload["payload"]["exercises"][0];
    assert_eq!(item["exerciseId"], exercise.to_string());
    assert_eq!(item["words"], json!(["אני", "אוהב", "ללמוד"]));
    assert_eq!(item["difficulty"], "Medium");

    assert_eq!(badge.target, Target::User(student));
    assert_eq!(
        badge.payload,
        json!({"eventType": "AchievementUnlocked", "payload": {
            "key": "typing_practice_1", "name": "First Keystrokes",
            "description": "Complete your first typing practice.",
            "feature": "TypingPractice", "target": 1,
        }})
    );
    // The id is the event's: the dedupe key the hub can rely on.
    let event_ids: Vec<Uuid> =
        sqlx::query_scalar("SELECT event_id FROM events WHERE event_type = 'AchievementUnlocked'")
            .fetch_all(&db.pool)
            .await
            .unwrap();
    assert_eq!(event_ids, vec![badge.id]);
}

#[tokio::test]
async fn a_crash_between_publish_and_checkpoint_republishes_and_the_subscriber_yields_each_once() {
    let db = TestDatabase::new().await;
    let bus = bus(&db);
    let ns = namespace();
    let mut subscriber = FeedSubscriber::connect(&redis_url(), &ns).await.unwrap();
    // A raw subscriber sees what really goes over the wire.
    let raw = Builder::from_config(Config::from_url(&redis_url()).unwrap())
        .build_subscriber_client()
        .unwrap();
    raw.init().await.unwrap();
    let mut wire = raw.message_rx();
    raw.subscribe(teachin_projections::feed::channel(&ns))
        .await
        .unwrap();

    let student = UserId::new();
    generate(&bus, student, GameType::TypingPractice, "שלום לכולם").await;
    generate(&bus, student, GameType::SpeakingPractice, "בוקר טוב").await;
    track(&bus, student, Feature::WordCards).await;
    wait_settled(&db).await;

    let doomed = publisher(&db, &ns).await;
    assert_eq!(doomed.publish_batch_then_crash().await.unwrap(), 3);
    drop(doomed);
    let cp = checkpoint::get(&db.pool, CHECKPOINT)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        cp.position,
        LogPosition::START,
        "the crash came before the checkpoint"
    );

    let restarted = publisher(&db, &ns).await;
    assert_eq!(
        publish_all(&db, &restarted).await,
        3,
        "the batch goes out again"
    );
    generate(&bus, student, GameType::WordOrder, "תודה רבה").await;
    assert_eq!(publish_all(&db, &restarted).await, 1);

    let mut wire_count = 0;
    while wire_count < 7 {
        tokio::time::timeout(Duration::from_secs(10), wire.recv())
            .await
            .expect("raw messages arrive")
            .unwrap();
        wire_count += 1;
    }

    let received: Vec<Notification> = vec![
        next(&mut subscriber).await,
        next(&mut subscriber).await,
        next(&mut subscriber).await,
        next(&mut subscriber).await,
    ];
    assert_quiet(&mut subscriber).await;
    let kinds: Vec<&str> = received
        .iter()
        .map(|n| n.payload["eventType"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds,
        [
            "SentenceGeneration",
            "SentenceGeneration",
            "AchievementUnlocked",
            "SplitSentenceGeneration"
        ]
    );
    let mut ids: Vec<Uuid> = received.iter().map(|n| n.id).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 4, "each notification once");
    raw.quit().await.ok();
}

#[tokio::test]
async fn chat_text_is_opened_but_an_erased_students_is_not() {
    let db = TestDatabase::new().await;
    let bus = bus(&db);
    let ns = namespace();
    let mut subscriber = FeedSubscriber::connect(&redis_url(), &ns).await.unwrap();

    let (kept, erased) = (UserId::new(), UserId::new());
    let (kept_session, erased_session) = (TutorSessionId::new(), TutorSessionId::new());
    let kept_request = post(&bus, kept_session, kept, "Shalom").await;
    let erased_request = post(&bus, erased_session, erased, "Shalom").await;
    reply(&bus, kept_session, kept_request, "Answer for Noa").await;
    reply(&bus, erased_session, erased_request, "Answer for Avi").await;
    bus.services().vault.shred(erased).await.unwrap();

    assert_eq!(publish_all(&db, &publisher(&db, &ns).await).await, 2);
    let first = next(&mut subscriber).await;
    let second = next(&mut subscriber).await;
    assert_eq!(first.target, Target::User(kept));
    assert_eq!(first.payload["payload"]["text"], "Answer for Noa");
    assert_eq!(second.target, Target::User(erased));
    assert_eq!(second.payload["payload"]["text"], "[erased]");
    assert!(!second.payload.to_string().contains("Avi"));
}

#[tokio::test]
async fn the_running_publisher_is_woken_by_new_events_and_stops_on_shutdown() {
    let db = TestDatabase::new().await;
    let bus = bus(&db);
    let ns = namespace();
    let mut subscriber = FeedSubscriber::connect(&redis_url(), &ns).await.unwrap();
    let (stop, shutdown) = tokio::sync::watch::channel(false);
    let running = tokio::spawn(publisher(&db, &ns).await.run(shutdown));

    let student = UserId::new();
    generate(&bus, student, GameType::TypingPractice, "ערב טוב").await;
    let pushed = next(&mut subscriber).await;
    assert_eq!(pushed.payload["eventType"], "SentenceGeneration");
    assert_eq!(pushed.target, Target::User(student));

    stop.send(true).unwrap();
    tokio::time::timeout(Duration::from_secs(10), running)
        .await
        .expect("the publisher stops")
        .unwrap()
        .unwrap();
}
