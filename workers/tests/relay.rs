//! The outbox relay against the real PostgreSQL: commands append events through the command
//! bus, the relay turns each `AiReplyRequested` into one `engine-queue` message whose id is
//! the event's id — and a crash between sending and checkpointing leaves no duplicate on the
//! queue, on either bus backend. A queued email becomes one `accessor-queue` job carrying
//! the opened email — unless its sender was erased first.

use std::sync::Arc;
use std::time::Duration;
use teachin_commands::testing::TestDatabase;
use teachin_commands::{command_bus, BusSettings, CommandBus, CommandContext, PortSecrets};
use teachin_domain::actor::{Actor, Role};
use teachin_domain::ids::{AttemptId, ExerciseId, RequestId, TutorSessionId, UserId};
use teachin_domain::outgoing_email::{OutgoingEmail, OutgoingEmailCommand};
use teachin_domain::practice::{Exercise, ExerciseCommand};
use teachin_domain::tutor_session::{SessionKind, TutorSession, TutorSessionCommand};
use teachin_domain::vocabulary::{Difficulty, GameType};
use teachin_projections::{checkpoint, EventLog, LogPosition};
use teachin_workers::bus::postgres::{PostgresBus, PostgresBusConfig};
use teachin_workers::bus::servicebus::ServiceBus;
use teachin_workers::bus::{Bus, QueueName};
use teachin_workers::contracts::{engine, TutorReplyRequest, TutorTask};
use teachin_workers::email::{self, SendEmail};
use teachin_workers::relay::{OutboxRelay, RelayConfig, CHECKPOINT};
use teachin_workers::testing::{LocalServiceBus, LocalServiceBusSettings};
use uuid::Uuid;

fn commands(db: &TestDatabase) -> CommandBus {
    command_bus(
        db.pool.clone(),
        PortSecrets {
            claims_hash_key: b"k".to_vec(),
        },
        BusSettings::default(),
    )
}

fn as_student(id: UserId) -> CommandContext {
    CommandContext::new(Actor::user(id, Role::Student), "test")
}

async fn post(
    commands: &CommandBus,
    session: TutorSessionId,
    student: UserId,
    kind: SessionKind,
    page_context: Option<&str>,
) -> RequestId {
    let request_id = RequestId::new();
    commands
        .execute::<TutorSession>(
            &session.to_string(),
            TutorSessionCommand::PostStudentMessage {
                student,
                kind,
                text: "מה שלומך?".into(),
                page_context: page_context.map(str::to_string),
                request_id,
            },
            &as_student(student),
        )
        .await
        .expect("message posted");
    request_id
}

/// A wrong attempt at a fresh exercise, and the request to explain it.
async fn explain_mistake(
    commands: &CommandBus,
    student: UserId,
) -> (TutorSessionId, RequestId, ExerciseId, AttemptId) {
    let exercise = ExerciseId::new();
    commands
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
        .expect("exercise generated");
    let attempt = AttemptId::new();
    commands
        .execute::<Exercise>(
            &exercise.to_string(),
            ExerciseCommand::SubmitAttempt {
                attempt_id: attempt,
                student,
                given_answer: vec!["שלום".into()],
            },
            &as_student(student),
        )
        .await
        .expect("attempt graded");
    let session = TutorSessionId::new();
    let request_id = RequestId::new();
    commands
        .execute::<TutorSession>(
            &session.to_string(),
            TutorSessionCommand::RequestMistakeExplanation {
                student,
                exercise,
                attempt,
                request_id,
            },
            &as_student(student),
        )
        .await
        .expect("explanation requested");
    (session, request_id, exercise, attempt)
}

/// The ids of the AiReplyRequested events, in log order.
async fn requested_event_ids(db: &TestDatabase) -> Vec<Uuid> {
    sqlx::query_scalar(
        "SELECT event_id FROM events WHERE event_type = 'AiReplyRequested'
          ORDER BY transaction_id, global_position",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap()
}

/// Waits (boundedly) until the gap-safe reader sees every event: the settled horizon is
/// cluster-wide, so another test's open transaction can hold it back for a moment.
async fn wait_settled(db: &TestDatabase) {
    let log = EventLog::new(db.pool.clone());
    let total: i64 = sqlx::query_scalar("SELECT count(*) FROM events")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while (log
        .read_after(LogPosition::START, 10_000)
        .await
        .unwrap()
        .len() as i64)
        < total
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the log never settled"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn postgres_bus(db: &TestDatabase) -> Arc<dyn Bus> {
    Arc::new(PostgresBus::new(
        db.pool.clone(),
        PostgresBusConfig::default(),
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn each_reply_request_becomes_one_engine_message_named_by_its_event() {
    let db = TestDatabase::new().await;
    let commands = commands(&db);
    let bus = postgres_bus(&db);
    let student = UserId::new();
    let chat = TutorSessionId::new();
    let global = TutorSessionId::new();
    let chat_request = post(&commands, chat, student, SessionKind::Default, None).await;
    let global_request = post(
        &commands,
        global,
        student,
        SessionKind::Global,
        Some(r#"{ "page": "word-cards" }"#),
    )
    .await;
    let (explained, explain_request, exercise, attempt) = explain_mistake(&commands, student).await;
    wait_settled(&db).await;

    let relay = OutboxRelay::new(db.pool.clone(), bus.clone(), RelayConfig::default());
    assert_eq!(relay.relay_pending().await.unwrap(), 3);
    assert_eq!(relay.relay_pending().await.unwrap(), 0, "nothing twice");

    let event_ids = requested_event_ids(&db).await;
    let mut received = Vec::new();
    while let Some(message) = bus
        .receive(QueueName::Engine, Duration::ZERO)
        .await
        .unwrap()
    {
        bus.complete(&message).await.unwrap();
        received.push(message);
    }
    assert_eq!(
        received
            .iter()
            .map(|m| m.message_id.clone())
            .collect::<Vec<_>>(),
        event_ids.iter().map(Uuid::to_string).collect::<Vec<_>>(),
        "one message per event, named by its id, in log order"
    );
    let requests: Vec<(String, TutorReplyRequest)> = received
        .iter()
        .map(|m| (m.action.clone(), m.payload().unwrap()))
        .collect();
    assert_eq!(requests[0].0, engine::PROCESSING_CHAT_MESSAGE);
    assert_eq!(
        (
            requests[0].1.session_id,
            requests[0].1.request_id,
            requests[0].1.task
        ),
        (chat, chat_request, TutorTask::Chat)
    );
    assert_eq!(requests[1].0, engine::PROCESSING_GLOBAL_CHAT_MESSAGE);
    assert_eq!(
        (
            requests[1].1.session_id,
            requests[1].1.request_id,
            requests[1].1.task
        ),
        (global, global_request, TutorTask::GlobalChat)
    );
    assert_eq!(requests[2].0, engine::PROCESSING_EXPLAIN_MISTAKE);
    assert_eq!(
        (
            requests[2].1.session_id,
            requests[2].1.request_id,
            requests[2].1.task
        ),
        (
            explained,
            explain_request,
            TutorTask::ExplainMistake {
                exercise_id: exercise,
                attempt_id: attempt
            }
        )
    );
    assert!(received.iter().all(|m| m.correlation_id.is_some()));
    assert!(requests.iter().all(|(_, r)| r.ttl_seconds == 60));

    let cp = checkpoint::get(&db.pool, CHECKPOINT)
        .await
        .unwrap()
        .unwrap();
    let total: i64 = sqlx::query_scalar("SELECT count(*) FROM events")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(cp.events_applied, total, "the relay consumed the whole log");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_request_split_from_its_origin_by_a_batch_boundary_keeps_its_task() {
    let db = TestDatabase::new().await;
    let commands = commands(&db);
    let bus = postgres_bus(&db);
    let session = TutorSessionId::new();
    let request = post(
        &commands,
        session,
        UserId::new(),
        SessionKind::Global,
        Some("{}"),
    )
    .await;
    wait_settled(&db).await;
    // One event per batch: AiReplyRequested is read without the StudentMessagePosted before it.
    let relay = OutboxRelay::new(
        db.pool.clone(),
        bus.clone(),
        RelayConfig {
            batch_size: 1,
            ..RelayConfig::default()
        },
    );
    assert_eq!(relay.relay_pending().await.unwrap(), 1);
    let message = bus
        .receive(QueueName::Engine, Duration::ZERO)
        .await
        .unwrap()
        .unwrap();
    let payload: TutorReplyRequest = message.payload().unwrap();
    assert_eq!(
        (payload.request_id, payload.task),
        (request, TutorTask::GlobalChat)
    );
}

async fn crash_between_send_and_checkpoint(db: &TestDatabase, bus: Arc<dyn Bus>) {
    let commands = commands(db);
    let student = UserId::new();
    for _ in 0..2 {
        post(
            &commands,
            TutorSessionId::new(),
            student,
            SessionKind::Default,
            None,
        )
        .await;
    }
    wait_settled(db).await;
    let relay = OutboxRelay::new(db.pool.clone(), bus.clone(), RelayConfig::default());
    assert_eq!(
        relay.relay_batch_then_crash().await.unwrap(),
        2,
        "sent, not checkpointed"
    );
    assert_eq!(
        checkpoint::get(&db.pool, CHECKPOINT)
            .await
            .unwrap()
            .unwrap()
            .position,
        LogPosition::START
    );
    // "Restart": a new relay finds the checkpoint where it was and sends the batch again.
    let restarted = OutboxRelay::new(db.pool.clone(), bus.clone(), RelayConfig::default());
    assert_eq!(restarted.relay_pending().await.unwrap(), 2);
    assert_eq!(
        bus.stats(QueueName::Engine).await.unwrap().depth,
        2,
        "no duplicate"
    );
    let mut ids = Vec::new();
    while let Some(message) = bus
        .receive(QueueName::Engine, Duration::ZERO)
        .await
        .unwrap()
    {
        bus.complete(&message).await.unwrap();
        ids.push(message.message_id);
    }
    let expected: Vec<String> = requested_event_ids(db)
        .await
        .iter()
        .map(Uuid::to_string)
        .collect();
    assert_eq!(ids, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_crash_between_send_and_checkpoint_duplicates_nothing_on_postgres() {
    let db = TestDatabase::new().await;
    let bus = postgres_bus(&db);
    crash_between_send_and_checkpoint(&db, bus).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_crash_between_send_and_checkpoint_duplicates_nothing_on_service_bus() {
    let db = TestDatabase::new().await;
    let endpoint = LocalServiceBus::start(LocalServiceBusSettings::default()).await;
    let bus: Arc<dyn Bus> = Arc::new(
        ServiceBus::new(endpoint.config(), endpoint.http_client(), db.pool.clone()).unwrap(),
    );
    crash_between_send_and_checkpoint(&db, bus).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_running_relay_follows_new_events_and_stops_on_shutdown() {
    let db = TestDatabase::new().await;
    let bus = postgres_bus(&db);
    let relay = OutboxRelay::new(db.pool.clone(), bus.clone(), RelayConfig::default());
    let (stop, shutdown) = tokio::sync::watch::channel(false);
    let running = tokio::spawn(relay.run(shutdown));
    let commands = commands(&db);
    post(
        &commands,
        TutorSessionId::new(),
        UserId::new(),
        SessionKind::Default,
        None,
    )
    .await;
    let message = bus
        .receive(QueueName::Engine, Duration::from_secs(30))
        .await
        .unwrap()
        .expect("the relay picked the new request up");
    assert_eq!(message.action, engine::PROCESSING_CHAT_MESSAGE);
    stop.send(true).unwrap();
    tokio::time::timeout(Duration::from_secs(10), running)
        .await
        .expect("the relay stops")
        .unwrap();
}

/// Queues an email sealed under `recipient_key` (the recipient's personal-data key).
async fn send_email(
    commands: &CommandBus,
    sender: UserId,
    recipient_key: UserId,
    recipient: &str,
    body: &str,
) -> Uuid {
    let email = Uuid::new_v4();
    let teacher = Actor::user(sender, Role::Teacher);
    commands
        .execute::<OutgoingEmail>(
            &email.to_string(),
            OutgoingEmailCommand::Send {
                sender: teacher,
                recipient: recipient_key,
                recipient_email: recipient.into(),
                subject: "ערב הורים".into(),
                body: body.into(),
            },
            &CommandContext::new(teacher, "test"),
        )
        .await
        .expect("email queued");
    email
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_queued_email_becomes_one_opened_send_email_job_unless_its_recipient_was_erased() {
    let db = TestDatabase::new().await;
    let commands = commands(&db);
    let bus = postgres_bus(&db);
    let teacher = UserId::new();
    let erased = UserId::new();
    let sent = send_email(
        &commands,
        teacher,
        UserId::new(),
        "Parent@Example.com",
        "<p>שלום רב</p>",
    )
    .await;
    send_email(
        &commands,
        teacher,
        erased,
        "other@example.com",
        "<p>forgotten</p>",
    )
    .await;
    // The second recipient is erased after queueing but before the relay saw the email; the
    // sender's erasure changes nothing (the email is sealed under the recipient's key).
    commands.services().vault.shred(erased).await.unwrap();
    commands.services().vault.shred(teacher).await.unwrap();
    wait_settled(&db).await;

    let relay = OutboxRelay::new(db.pool.clone(), bus.clone(), RelayConfig::default());
    assert_eq!(relay.relay_pending().await.unwrap(), 1);
    assert_eq!(relay.relay_pending().await.unwrap(), 0, "nothing twice");

    let event_id: Uuid = sqlx::query_scalar(
        "SELECT event_id FROM events WHERE aggregate_type = 'OutgoingEmail' AND aggregate_id = $1",
    )
    .bind(sent.to_string())
    .fetch_one(&db.pool)
    .await
    .unwrap();
    let message = bus
        .receive(QueueName::Accessor, Duration::ZERO)
        .await
        .unwrap()
        .expect("the email's job");
    bus.complete(&message).await.unwrap();
    assert_eq!(message.message_id, event_id.to_string());
    assert_eq!(message.action, email::SEND_EMAIL);
    let job: SendEmail = message.payload().unwrap();
    assert_eq!(
        job,
        SendEmail {
            recipient_email: "parent@example.com".into(),
            subject: "ערב הורים".into(),
            body: "<p>שלום רב</p>".into(),
        }
    );
    assert!(
        bus.receive(QueueName::Accessor, Duration::ZERO)
            .await
            .unwrap()
            .is_none(),
        "the erased recipient's email is not sent"
    );
    assert!(bus
        .receive(QueueName::Engine, Duration::ZERO)
        .await
        .unwrap()
        .is_none());
}
