//! Session replay against real events written by the command bus: the history in order with
//! its actors and opened payloads, the state as of a version or an instant, snapshots that
//! speed the fold up without changing its answer, and the paced stream on a paused clock.

use chrono::{DateTime, Utc};
use futures::StreamExt;
use serde_json::{json, Value};
use std::time::Duration;
use teachin_commands::testing::TestDatabase;
use teachin_commands::{command_bus, BusSettings, CommandBus, CommandContext, PortSecrets};
use teachin_domain::actor::{Actor, Role};
use teachin_domain::ids::{AttemptId, ExerciseId, RequestId, TutorSessionId, UserId};
use teachin_domain::practice::{Exercise, ExerciseCommand};
use teachin_domain::tutor_session::{SessionKind, TutorSession, TutorSessionCommand};
use teachin_domain::vocabulary::{Difficulty, GameType};
use teachin_projections::replay::{
    paced, paced_capped, AsOf, MessageRole, ReplayError, ReplayEvent, SessionAggregate,
    SessionReplay, SessionState, SessionType, SessionView,
};
use uuid::Uuid;

fn bus_snapshotting_every(db: &TestDatabase, snapshot_every: usize) -> CommandBus {
    command_bus(
        db.pool.clone(),
        PortSecrets {
            claims_hash_key: b"k".to_vec(),
        },
        BusSettings {
            snapshot_every,
            ..Default::default()
        },
    )
}

/// A bus that writes no snapshot in these short streams.
fn bus(db: &TestDatabase) -> CommandBus {
    bus_snapshotting_every(db, 1000)
}

fn replay(db: &TestDatabase) -> SessionReplay {
    SessionReplay::new(db.pool.clone())
}

fn as_student(id: UserId) -> CommandContext {
    CommandContext::new(Actor::user(id, Role::Student), "test")
}

fn as_engine() -> CommandContext {
    CommandContext::new(Actor::System, "engine")
}

async fn tutor(
    bus: &CommandBus,
    session: TutorSessionId,
    command: TutorSessionCommand,
    cx: &CommandContext,
) {
    bus.execute::<TutorSession>(&session.to_string(), command, cx)
        .await
        .expect("tutor command accepted");
    // Distinct commits get visibly distinct timestamps.
    tokio::time::sleep(Duration::from_millis(5)).await;
}

fn post(student: UserId, text: &str) -> (RequestId, TutorSessionCommand) {
    let request_id = RequestId::new();
    (
        request_id,
        TutorSessionCommand::PostStudentMessage {
            student,
            kind: SessionKind::Default,
            text: text.into(),
            page_context: None,
            request_id,
        },
    )
}

fn complete(request_id: RequestId, text: &str) -> TutorSessionCommand {
    TutorSessionCommand::CompleteAiReply {
        request_id,
        text: text.into(),
        model: "gpt-test".into(),
        prompt_tokens: 1,
        completion_tokens: 2,
        latency_ms: 3,
    }
}

fn tutor_view(state: &SessionState) -> &teachin_projections::replay::TutorView {
    match &state.view {
        SessionView::Tutor(view) => view,
        other => panic!("not a tutor view: {other:?}"),
    }
}

fn practice_view(state: &SessionState) -> &teachin_projections::replay::PracticeView {
    match &state.view {
        SessionView::Practice(view) => view,
        other => panic!("not a practice view: {other:?}"),
    }
}

#[tokio::test]
async fn history_is_in_order_with_actors_correlation_and_opened_payloads() {
    let db = TestDatabase::new().await;
    let bus = bus(&db);
    let (student, session) = (UserId::new(), TutorSessionId::new());
    let correlation = Uuid::new_v4();
    let (request, message) = post(student, "Ma nishma?");
    tutor(
        &bus,
        session,
        message,
        &as_student(student).with_correlation_id(correlation),
    )
    .await;
    tutor(&bus, session, complete(request, "Tov, toda!"), &as_engine()).await;
    tutor(
        &bus,
        session,
        TutorSessionCommand::SetTitle {
            title: "Small talk".into(),
        },
        &as_engine(),
    )
    .await;

    let history = replay(&db)
        .history("TutorSession", &session.to_string())
        .await
        .unwrap();
    let types: Vec<&str> = history.iter().map(|e| e.event_type.as_str()).collect();
    assert_eq!(
        types,
        [
            "TutorSessionStarted",
            "StudentMessagePosted",
            "AiReplyRequested",
            "AiReplyCompleted",
            "TitleSet"
        ]
    );
    assert_eq!(
        history.iter().map(|e| e.sequence).collect::<Vec<_>>(),
        [1, 2, 3, 4, 5]
    );
    let student_actor = format!("user:{student}:Student");
    let actors: Vec<&str> = history.iter().map(|e| e.actor.as_str()).collect();
    assert_eq!(
        actors,
        [
            student_actor.as_str(),
            &student_actor,
            &student_actor,
            "system",
            "system"
        ]
    );
    assert!(history[..3]
        .iter()
        .all(|e| e.correlation_id == Some(correlation)));
    assert_ne!(history[3].correlation_id, Some(correlation));
    for pair in history.windows(2) {
        assert!(pair[0].recorded_at <= pair[1].recorded_at);
    }
    assert_eq!(
        history[1].payload_view,
        json!({"request_id": request, "text": "Ma nishma?", "page_context": null})
    );
    assert_eq!(history[3].payload_view["text"], "Tov, toda!");
    assert_eq!(history[4].payload_view, json!({"title": "Small talk"}));

    // Erasure: the same history no longer shows the student's words.
    bus.services().vault.shred(student).await.unwrap();
    let history = replay(&db)
        .history("TutorSession", &session.to_string())
        .await
        .unwrap();
    assert_eq!(history[1].payload_view["text"], "[erased]");
    assert_eq!(history[3].payload_view["text"], "[erased]");
    assert!(!serde_json::to_string(&history).unwrap().contains("nishma"));

    assert!(matches!(
        replay(&db)
            .state_as_of(
                SessionType::Tutor,
                &Uuid::new_v4().to_string(),
                AsOf::Version(1)
            )
            .await,
        Err(ReplayError::NotFound)
    ));
}

#[tokio::test]
async fn state_as_of_a_version_or_an_instant() {
    let db = TestDatabase::new().await;
    let bus = bus(&db);
    let (student, session) = (UserId::new(), TutorSessionId::new());
    let (first, message) = post(student, "Shalom");
    tutor(&bus, session, message, &as_student(student)).await; // 1-3
    tutor(&bus, session, complete(first, "Shalom lach"), &as_engine()).await; // 4
    let (_second, message) = post(student, "Ma ha-sha'a?");
    tutor(&bus, session, message, &as_student(student)).await; // 5-6
    let id = session.to_string();
    let replay = replay(&db);

    let at3 = replay
        .state_as_of(SessionType::Tutor, &id, AsOf::Version(3))
        .await
        .unwrap();
    assert_eq!(at3.version, 3);
    let view = tutor_view(&at3);
    assert_eq!(view.student, Some(student));
    assert_eq!(view.kind.as_deref(), Some("Default"));
    assert!(view.awaiting_reply);
    assert_eq!(view.messages.len(), 1);
    assert_eq!(view.messages[0].role, MessageRole::Student);
    assert_eq!(view.messages[0].text.as_deref(), Some("Shalom"));

    let at4 = replay
        .state_as_of(SessionType::Tutor, &id, AsOf::Version(4))
        .await
        .unwrap();
    let view = tutor_view(&at4);
    assert!(!view.awaiting_reply);
    assert_eq!(view.messages.len(), 2);
    assert_eq!(view.messages[1].role, MessageRole::Tutor);
    assert_eq!(view.messages[1].text.as_deref(), Some("Shalom lach"));
    assert_eq!(view.messages[1].model.as_deref(), Some("gpt-test"));

    // An instant between the reply (4) and the next message (5).
    let history = replay.history("TutorSession", &id).await.unwrap();
    let (t4, t5) = (history[3].recorded_at, history[4].recorded_at);
    assert!(t4 < t5);
    let between = t4 + (t5 - t4) / 2;
    let then = replay
        .state_as_of(SessionType::Tutor, &id, AsOf::Instant(between))
        .await
        .unwrap();
    assert_eq!(then.version, 4);
    assert_eq!(then.recorded_at, Some(t4));
    assert_eq!(then.view, at4.view);
    assert_eq!(then.aggregate, at4.aggregate);

    let before = history[0].recorded_at - chrono::Duration::seconds(1);
    let empty = replay
        .state_as_of(SessionType::Tutor, &id, AsOf::Instant(before))
        .await
        .unwrap();
    assert_eq!(empty.version, 0);
    assert!(tutor_view(&empty).messages.is_empty());
    assert_eq!(tutor_view(&empty).student, None);

    let latest = replay
        .state_as_of(SessionType::Tutor, &id, AsOf::Version(99))
        .await
        .unwrap();
    assert_eq!(latest.version, 6);
    assert_eq!(tutor_view(&latest).messages.len(), 3);
    assert!(tutor_view(&latest).awaiting_reply);
}

async fn attempt(bus: &CommandBus, exercise: ExerciseId, student: UserId, answer: &[&str]) {
    bus.execute::<Exercise>(
        &exercise.to_string(),
        ExerciseCommand::SubmitAttempt {
            attempt_id: AttemptId::new(),
            student,
            given_answer: answer.iter().map(|s| s.to_string()).collect(),
        },
        &as_student(student),
    )
    .await
    .expect("attempt graded");
}

/// Generate (1), wrong (2), wrong (3), right (4, and 5: mistakes cleared), wrong (6), wrong (7).
async fn practice_session(bus: &CommandBus, student: UserId) -> ExerciseId {
    let exercise = ExerciseId::new();
    bus.execute::<Exercise>(
        &exercise.to_string(),
        ExerciseCommand::Generate {
            student,
            game_type: GameType::WordOrder,
            difficulty: Difficulty::Easy,
            nikud: false,
            sentence: "אני אוהב קפה".into(),
            request_id: RequestId::new(),
        },
        &as_engine(),
    )
    .await
    .unwrap();
    attempt(bus, exercise, student, &["קפה", "אוהב", "אני"]).await;
    attempt(bus, exercise, student, &["אוהב", "אני", "קפה"]).await;
    attempt(bus, exercise, student, &["אני", "אוהב", "קפה"]).await;
    attempt(bus, exercise, student, &["קפה", "אני", "אוהב"]).await;
    attempt(bus, exercise, student, &["אני", "קפה", "אוהב"]).await;
    exercise
}

async fn put_snapshot(
    db: &TestDatabase,
    aggregate_type: &str,
    id: &str,
    last_sequence: i64,
    payload: Value,
) {
    sqlx::query(
        "INSERT INTO snapshots (aggregate_type, aggregate_id, last_sequence, current_snapshot, payload)
         VALUES ($1, $2, $3, 1, $4)
         ON CONFLICT (aggregate_type, aggregate_id)
         DO UPDATE SET last_sequence = $3, payload = $4",
    )
    .bind(aggregate_type)
    .bind(id)
    .bind(last_sequence)
    .bind(payload)
    .execute(&db.pool)
    .await
    .unwrap();
}

/// Every version of the session (and one past the end) gives the same answer with and without
/// snapshots; returns the snapshot version used at each.
async fn agree_with_full_fold(
    db: &TestDatabase,
    session_type: SessionType,
    id: &str,
    last: i64,
) -> Vec<Option<i64>> {
    let with = replay(db);
    let without = replay(db).without_snapshots();
    let mut used = Vec::new();
    for version in 0..=last + 1 {
        let fast = with
            .state_as_of(session_type, id, AsOf::Version(version))
            .await
            .unwrap();
        let full = without
            .state_as_of(session_type, id, AsOf::Version(version))
            .await
            .unwrap();
        assert_eq!(fast.aggregate, full.aggregate, "version {version}");
        assert_eq!(fast.view, full.view, "version {version}");
        assert_eq!(fast.version, full.version);
        assert_eq!(full.snapshot_version, None);
        used.push(fast.snapshot_version);
    }
    used
}

#[tokio::test]
async fn a_snapshot_is_used_when_it_helps_and_agrees_with_a_full_fold() {
    let db = TestDatabase::new().await;
    let bus = bus(&db);
    let student = UserId::new();
    let exercise = practice_session(&bus, student).await;
    let id = exercise.to_string();

    // A sound snapshot after event 4, as the aggregate serializes.
    let at4 = replay(&db)
        .without_snapshots()
        .state_as_of(SessionType::Practice, &id, AsOf::Version(4))
        .await
        .unwrap();
    let SessionAggregate::Practice(aggregate) = &at4.aggregate else {
        unreachable!()
    };
    put_snapshot(
        &db,
        "Exercise",
        &id,
        4,
        serde_json::to_value(aggregate).unwrap(),
    )
    .await;

    let used = agree_with_full_fold(&db, SessionType::Practice, &id, 7).await;
    assert_eq!(
        used,
        [
            None,
            None,
            None,
            None,
            Some(4),
            Some(4),
            Some(4),
            Some(4),
            Some(4)
        ]
    );
    let latest = replay(&db)
        .state_as_of(SessionType::Practice, &id, AsOf::Version(7))
        .await
        .unwrap();
    assert_eq!(
        latest.events_applied, 3,
        "only the events after the snapshot were folded"
    );
    let view = practice_view(&latest);
    assert!(view.solved);
    assert_eq!(
        view.attempts.iter().map(|a| a.correct).collect::<Vec<_>>(),
        [false, false, true, false, false]
    );
    assert_eq!(
        view.attempts[2].given_answer,
        Some(vec!["אני".into(), "אוהב".into(), "קפה".into()])
    );
    assert_eq!(view.correct_answer, ["אני", "אוהב", "קפה"]);

    // A damaged snapshot (an attempt applied twice, as cqrs-es 0.5 can write) is not used.
    let mut damaged = serde_json::to_value(aggregate).unwrap();
    let attempts = damaged["attempts"].as_array_mut().unwrap();
    let again = attempts[0].clone();
    attempts.push(again);
    put_snapshot(&db, "Exercise", &id, 4, damaged).await;
    let used = agree_with_full_fold(&db, SessionType::Practice, &id, 7).await;
    assert!(used.iter().all(Option::is_none));

    // A snapshot that no longer deserializes is not used either.
    put_snapshot(&db, "Exercise", &id, 4, json!({"shape": "of old"})).await;
    let used = agree_with_full_fold(&db, SessionType::Practice, &id, 7).await;
    assert!(used.iter().all(Option::is_none));
}

#[tokio::test]
async fn snapshots_written_by_the_command_bus_never_change_the_answer() {
    let db = TestDatabase::new().await;
    let bus = bus_snapshotting_every(&db, 3);
    let student = UserId::new();
    let exercise = practice_session(&bus, student).await;
    let snapshots: i64 =
        sqlx::query_scalar("SELECT count(*) FROM snapshots WHERE aggregate_id = $1")
            .bind(exercise.to_string())
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(snapshots, 1, "the bus snapshotted the stream");
    agree_with_full_fold(&db, SessionType::Practice, &exercise.to_string(), 7).await;

    // A tutor session whose first commit (3 events) is snapshotted.
    let session = TutorSessionId::new();
    let (_request, message) = post(student, "Shalom");
    tutor(&bus, session, message, &as_student(student)).await;
    let used = agree_with_full_fold(&db, SessionType::Tutor, &session.to_string(), 3).await;
    let state = replay(&db)
        .state_as_of(SessionType::Tutor, &session.to_string(), AsOf::Version(3))
        .await
        .unwrap();
    assert!(tutor_view(&state).awaiting_reply);
    assert_eq!(tutor_view(&state).messages.len(), 1);
    assert_eq!(used.len(), 5);
}

fn synthetic(at: DateTime<Utc>, sequence: i64) -> ReplayEvent {
    ReplayEvent {
        sequence,
        event_type: "Happened".into(),
        recorded_at: at,
        actor: "system".into(),
        correlation_id: None,
        payload_view: json!({}),
    }
}

/// The pauses between consecutive items are as expected, to the timer's resolution (tokio
/// rounds a sleep's deadline up to a millisecond tick of its wheel, so a pause may come out
/// up to two ticks long when it starts between ticks).
fn assert_pauses(played: &[(i64, Duration)], expected: &[Duration]) {
    assert_eq!(played.len(), expected.len() + 1);
    for (i, (window, expected)) in played.windows(2).zip(expected).enumerate() {
        let waited = window[1].1 - window[0].1;
        assert!(
            waited >= *expected && waited <= *expected + Duration::from_millis(2),
            "pause {i}: waited {waited:?}, expected {expected:?}"
        );
    }
}

/// Collects a paced stream, with how long after the start (paused clock) each item came.
async fn timed(stream: impl futures::Stream<Item = ReplayEvent>) -> Vec<(i64, Duration)> {
    let start = tokio::time::Instant::now();
    let mut out = Vec::new();
    let mut stream = std::pin::pin!(stream);
    while let Some(event) = stream.next().await {
        out.push((event.sequence, start.elapsed()));
    }
    out
}

#[tokio::test]
async fn paced_replays_keep_order_and_relative_spacing() {
    // A real history first, on the real clock.
    let db = TestDatabase::new().await;
    let bus = bus(&db);
    let (student, session) = (UserId::new(), TutorSessionId::new());
    let (request, message) = post(student, "Shalom");
    tutor(&bus, session, message, &as_student(student)).await;
    tokio::time::sleep(Duration::from_millis(40)).await;
    tutor(&bus, session, complete(request, "Shalom!"), &as_engine()).await;
    let history = replay(&db)
        .history("TutorSession", &session.to_string())
        .await
        .unwrap();
    drop(bus);

    // From here the clock is paused: sleeps complete at once, and time moves exactly by them.
    tokio::time::pause();

    let t0 = Utc::now();
    let made_up = vec![
        synthetic(t0, 1),
        synthetic(t0, 2),
        synthetic(t0 + chrono::Duration::seconds(10), 3),
        synthetic(t0 + chrono::Duration::milliseconds(12_500), 4),
    ];
    let at_double_speed = timed(paced(made_up.clone(), 2.0)).await;
    assert_eq!(
        at_double_speed.iter().map(|(s, _)| *s).collect::<Vec<_>>(),
        [1, 2, 3, 4]
    );
    assert_pauses(
        &at_double_speed,
        &[
            Duration::ZERO,
            Duration::from_secs(5),
            Duration::from_millis(1_250),
        ],
    );
    let capped = timed(paced_capped(made_up, 1.0, Some(Duration::from_secs(3)))).await;
    assert_pauses(
        &capped,
        &[
            Duration::ZERO,
            Duration::from_secs(3),
            Duration::from_millis(2_500),
        ],
    );

    // The real history: in order, each pause the original gap divided by 4 (to the timer's
    // millisecond).
    let played = timed(paced(history.clone(), 4.0)).await;
    assert_eq!(
        played.iter().map(|(s, _)| *s).collect::<Vec<_>>(),
        history.iter().map(|e| e.sequence).collect::<Vec<_>>()
    );
    let expected: Vec<Duration> = history
        .windows(2)
        .map(|pair| {
            (pair[1].recorded_at - pair[0].recorded_at)
                .to_std()
                .unwrap()
                .div_f64(4.0)
        })
        .collect();
    assert_pauses(&played, &expected);
    assert!(
        played[3].1 >= Duration::from_millis(10),
        "the 40 ms gap shows, sped up"
    );
}
