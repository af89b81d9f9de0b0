//! The command bus against the real event store: metadata, idempotency, optimistic
//! concurrency, snapshots and upcasting. Each test gets a fresh database.

use async_trait::async_trait;
use futures::future::join_all;
use serde_json::Value;
use sqlx::Row;
use std::sync::{Arc, Mutex};
use teachin_commands::bus::{BusSettings, CommandBus, CommandContext, CommandError};
use teachin_commands::ports::{PostgresClaims, PostgresVault};
use teachin_commands::testing::TestDatabase;
use teachin_domain::achievements::{AchievementCommand, AchievementProgress, Feature};
use teachin_domain::actor::{Actor, Role};
use teachin_domain::ids::UserId;
use teachin_domain::services::{
    testing::TestWorld, DomainServices, PortError, UserDirectory, UserFacts,
};
use teachin_domain::teaching::{TeacherStudents, TeacherStudentsCommand};
use tokio::sync::{oneshot, Notify};

fn bus(db: &TestDatabase, settings: BusSettings) -> CommandBus {
    db.bus(settings)
}

fn track(increment_by: u32) -> AchievementCommand {
    AchievementCommand::Track {
        feature: Feature::WordCards,
        increment_by,
    }
}

fn student_context(student: UserId) -> CommandContext {
    CommandContext::new(Actor::user(student, Role::Student), "request:test")
}

async fn event_count(db: &TestDatabase) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM events")
        .fetch_one(&db.pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn every_event_carries_its_metadata_and_log_columns() {
    let db = TestDatabase::new().await;
    let bus = bus(&db, BusSettings::default());
    let student = UserId::new();
    let context = student_context(student).with_idempotency_key("key-1");

    let receipt = bus
        .execute::<AchievementProgress>(&student.to_string(), track(1), &context)
        .await
        .unwrap();
    assert!(!receipt.replayed);
    assert_eq!(receipt.events.len(), 2, "progress plus the first unlock");

    let rows = sqlx::query(
        "SELECT metadata, payload, global_position, transaction_id::text AS tx, recorded_at, event_id
           FROM events ORDER BY global_position",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert_eq!(rows.len(), 2);
    let first_tx: String = rows[0].get("tx");
    for row in &rows {
        let metadata: Value = row.get("metadata");
        assert_eq!(metadata["issued_by"], format!("user:{student}:Student"));
        assert_eq!(
            metadata["correlation_id"],
            context.correlation_id.to_string()
        );
        assert_eq!(metadata["causation_id"], "request:test");
        assert_eq!(metadata["idempotency_key"], "key-1");
        assert_eq!(metadata["command_type"], "AchievementProgress.Track");
        assert!(metadata["command_id"].as_str().is_some());
        assert_eq!(
            row.get::<String, _>("tx"),
            first_tx,
            "one command, one transaction"
        );
    }
    let payload: Value = rows[0].get("payload");
    assert!(
        payload.get("ProgressRecorded").is_some(),
        "payload is the event as jsonb: {payload}"
    );
    let sequences: Vec<i64> =
        sqlx::query_scalar("SELECT sequence FROM events ORDER BY global_position")
            .fetch_all(&db.pool)
            .await
            .unwrap();
    assert_eq!(sequences, [1, 2], "appended in the command's order");
    let receipt: (i64, i64) = sqlx::query_as(
        "SELECT first_sequence, last_sequence FROM command_receipts WHERE dedupe_key = $1",
    )
    .bind(format!("idem:{}:key-1", context.issued_by))
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(receipt, (1, 2), "one receipt spans the command's events");
}

#[tokio::test]
async fn a_repeated_idempotency_key_appends_nothing_and_returns_the_first_result() {
    let db = TestDatabase::new().await;
    let bus = bus(&db, BusSettings::default());
    let student = UserId::new();
    let context = student_context(student).with_idempotency_key("retry-me");

    let first = bus
        .execute::<AchievementProgress>(&student.to_string(), track(2), &context)
        .await
        .unwrap();
    let again = bus
        .execute::<AchievementProgress>(&student.to_string(), track(2), &context)
        .await
        .unwrap();
    assert!(again.replayed);
    assert_eq!(
        first
            .events
            .iter()
            .map(|e| (e.sequence, e.payload.clone()))
            .collect::<Vec<_>>(),
        again
            .events
            .iter()
            .map(|e| (e.sequence, e.payload.clone()))
            .collect::<Vec<_>>()
    );
    assert_eq!(event_count(&db).await, first.events.len() as i64);

    // The key belongs to its issuer: another user's identical key is another command.
    let other = UserId::new();
    let theirs = bus
        .execute::<AchievementProgress>(
            &other.to_string(),
            track(2),
            &student_context(other).with_idempotency_key("retry-me"),
        )
        .await
        .unwrap();
    assert!(!theirs.replayed);

    // Reusing a key for a different aggregate is refused, not silently answered.
    let misuse = bus
        .execute::<AchievementProgress>(&UserId::new().to_string(), track(2), &context)
        .await;
    assert!(matches!(misuse, Err(CommandError::IdempotencyKeyReused)));
}

#[tokio::test]
async fn concurrent_repeats_of_one_key_are_applied_exactly_once() {
    let db = TestDatabase::new().await;
    let bus = bus(&db, BusSettings::default());
    let student = UserId::new();
    let context = student_context(student).with_idempotency_key("double-click");

    let results = join_all((0..8).map(|_| {
        let bus = bus.clone();
        let context = context.clone();
        async move {
            bus.execute::<AchievementProgress>(&student.to_string(), track(1), &context)
                .await
        }
    }))
    .await;
    let receipts: Vec<_> = results.into_iter().map(Result::unwrap).collect();
    assert_eq!(receipts.iter().filter(|r| !r.replayed).count(), 1);
    assert_eq!(event_count(&db).await, 2);
    let state: AchievementProgress = bus.reader().load(&student.to_string()).await.unwrap();
    assert_eq!(state.count(Feature::WordCards), 1);
}

#[tokio::test]
async fn concurrent_commands_on_one_stream_in_one_process_take_turns() {
    let db = TestDatabase::new().await;
    // One attempt each: a conflict would be an error, so every command must get its turn.
    let bus = bus(
        &db,
        BusSettings {
            max_attempts: 1,
            ..BusSettings::default()
        },
    );
    let student = UserId::new();
    let results = join_all((0..12).map(|_| {
        let bus = bus.clone();
        async move {
            bus.execute::<AchievementProgress>(
                &student.to_string(),
                track(1),
                &student_context(student),
            )
            .await
        }
    }))
    .await;
    for result in results {
        result.unwrap();
    }
    assert_eq!(bus.conflict_retries(), 0, "no command lost a race");
    let state: AchievementProgress = bus.reader().load(&student.to_string()).await.unwrap();
    assert_eq!(state.count(Feature::WordCards), 12, "no increment was lost");
}

#[tokio::test]
async fn concurrent_writers_on_one_stream_from_two_replicas_are_retried_until_all_apply() {
    let db = TestDatabase::new().await;
    let settings = BusSettings {
        max_attempts: 50,
        ..BusSettings::default()
    };
    let replicas = [bus(&db, settings), bus(&db, settings)];
    let student = UserId::new();
    let results = join_all((0..12).map(|i| {
        let bus = replicas[i % 2].clone();
        async move {
            bus.execute::<AchievementProgress>(
                &student.to_string(),
                track(1),
                &student_context(student),
            )
            .await
        }
    }))
    .await;
    for result in results {
        result.unwrap();
    }
    let state: AchievementProgress = replicas[0]
        .reader()
        .load(&student.to_string())
        .await
        .unwrap();
    assert_eq!(state.count(Feature::WordCards), 12, "no increment was lost");
}

/// A user directory that, on its first call, tells the test it is inside `handle` and waits
/// for permission to continue — so the test can commit a competing event at that moment.
struct GatedUsers {
    inner: Arc<dyn UserDirectory>,
    gate: Mutex<Option<(oneshot::Sender<()>, Arc<Notify>)>>,
}

#[async_trait]
impl UserDirectory for GatedUsers {
    async fn user(&self, id: UserId) -> Result<Option<UserFacts>, PortError> {
        let gate = self.gate.lock().unwrap().take();
        if let Some((inside, proceed)) = gate {
            inside.send(()).unwrap();
            proceed.notified().await;
        }
        self.inner.user(id).await
    }
}

/// The slow command's outcome (events appended) and the conflicts its bus retried.
async fn conflicted_assignment(max_attempts: u32) -> (Result<usize, String>, u64) {
    let db = TestDatabase::new().await;
    let teacher = UserId::new();
    let (first_student, second_student) = (UserId::new(), UserId::new());
    let world = TestWorld::default()
        .with_user(teacher, Role::Teacher)
        .with_user(first_student, Role::Student)
        .with_user(second_student, Role::Student);
    let (inside_tx, inside_rx) = oneshot::channel();
    let proceed = Arc::new(Notify::new());
    let gated = DomainServices {
        users: Arc::new(GatedUsers {
            inner: world.users.clone(),
            gate: Mutex::new(Some((inside_tx, proceed.clone()))),
        }),
        vault: Arc::new(PostgresVault::new(db.pool.clone())),
        claims: Arc::new(PostgresClaims::new(db.pool.clone(), b"k".to_vec())),
        practice: world.practice.clone(),
    };
    let settings = BusSettings {
        max_attempts,
        ..BusSettings::default()
    };
    let slow_bus = CommandBus::new(db.pool.clone(), gated, settings);
    let fast_bus = CommandBus::new(db.pool.clone(), world.services(), settings);
    let admin = CommandContext::new(Actor::System, "test");

    let slow = tokio::spawn({
        let admin = admin.clone();
        let slow_bus = slow_bus.clone();
        async move {
            slow_bus
                .execute::<TeacherStudents>(
                    &teacher.to_string(),
                    TeacherStudentsCommand::AssignStudent {
                        teacher,
                        student: first_student,
                        actor: Actor::System,
                    },
                    &admin,
                )
                .await
                .map(|r| r.events.len())
                .map_err(|e| e.to_string())
        }
    });
    // The slow command has loaded the teacher's list and is deciding: commit a competitor.
    inside_rx.await.unwrap();
    fast_bus
        .execute::<TeacherStudents>(
            &teacher.to_string(),
            TeacherStudentsCommand::AssignStudent {
                teacher,
                student: second_student,
                actor: Actor::System,
            },
            &admin,
        )
        .await
        .unwrap();
    proceed.notify_one();
    let outcome = slow.await.unwrap();
    if outcome.is_ok() {
        let list: TeacherStudents = fast_bus.reader().load(&teacher.to_string()).await.unwrap();
        assert!(list.is_assigned(first_student) && list.is_assigned(second_student));
    }
    (outcome, slow_bus.conflict_retries())
}

#[tokio::test]
async fn a_conflict_is_retried_by_reloading_the_aggregate() {
    assert_eq!(
        conflicted_assignment(2).await,
        (Ok(1), 1),
        "applied after one retry"
    );
}

#[tokio::test]
async fn a_conflict_past_the_bound_is_a_clear_error() {
    let (outcome, retries) = conflicted_assignment(1).await;
    assert_eq!(
        retries, 0,
        "the last attempt's conflict is reported, not retried"
    );
    let error = outcome.unwrap_err();
    assert!(
        error.contains("changed concurrently 1 times"),
        "unexpected error: {error}"
    );
}

#[tokio::test]
async fn long_streams_are_loaded_from_snapshots() {
    let db = TestDatabase::new().await;
    let bus = bus(
        &db,
        BusSettings {
            snapshot_every: 4,
            ..BusSettings::default()
        },
    );
    let student = UserId::new();
    for _ in 0..9 {
        bus.execute::<AchievementProgress>(
            &student.to_string(),
            track(1),
            &student_context(student),
        )
        .await
        .unwrap();
    }
    let (last_sequence,): (i64,) = sqlx::query_as(
        "SELECT last_sequence FROM snapshots WHERE aggregate_type = 'AchievementProgress' AND aggregate_id = $1",
    )
    .bind(student.to_string())
    .fetch_one(&db.pool)
    .await
    .expect("a snapshot was written");
    assert!(last_sequence >= 4);

    // The snapshot is authoritative for the events it covers: loading reads it plus the rest.
    let state: AchievementProgress = bus.reader().load(&student.to_string()).await.unwrap();
    assert_eq!(state.count(Feature::WordCards), 9);
}

#[tokio::test]
async fn an_old_version_event_in_the_store_is_upcast_on_load() {
    let db = TestDatabase::new().await;
    let bus = bus(&db, BusSettings::default());
    let student = UserId::new();
    // Written by an earlier release: version 1.0 of ProgressRecorded.
    sqlx::query(
        "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata)
         VALUES ('AchievementProgress', $1, 1, 'ProgressRecorded', '1.0',
                 '{\"ProgressRecorded\": {\"feature\": \"WordCards\", \"increment\": 2, \"total\": 2}}', '{}')",
    )
    .bind(student.to_string())
    .execute(&db.pool)
    .await
    .unwrap();

    let receipt = bus
        .execute::<AchievementProgress>(&student.to_string(), track(1), &student_context(student))
        .await
        .unwrap();
    let state: AchievementProgress = bus.reader().load(&student.to_string()).await.unwrap();
    assert_eq!(state.count(Feature::WordCards), 3, "the old total counts");
    assert_eq!(receipt.events[0].sequence, 2);
}

#[tokio::test]
async fn snapshots_hold_each_event_once() {
    use teachin_domain::ids::{AttemptId, ExerciseId, RequestId};
    use teachin_domain::practice::{Exercise, ExerciseCommand, ExerciseEvent};
    use teachin_domain::vocabulary::{Difficulty, GameType};

    let db = TestDatabase::new().await;
    let bus = bus(
        &db,
        BusSettings {
            snapshot_every: 2,
            ..BusSettings::default()
        },
    );
    let student = UserId::new();
    let exercise = ExerciseId::new();
    let context = student_context(student);
    bus.execute::<Exercise>(
        &exercise.to_string(),
        ExerciseCommand::Generate {
            student,
            game_type: GameType::WordOrder,
            difficulty: Difficulty::Easy,
            nikud: false,
            sentence: "אני לומד עברית".into(),
            request_id: RequestId::new(),
        },
        &context,
    )
    .await
    .unwrap();
    let mut numbers = Vec::new();
    for _ in 0..5 {
        let receipt = bus
            .execute::<Exercise>(
                &exercise.to_string(),
                ExerciseCommand::SubmitAttempt {
                    attempt_id: AttemptId::new(),
                    student,
                    given_answer: vec!["עברית".into(), "אני".into(), "לומד".into()],
                },
                &context,
            )
            .await
            .unwrap();
        for event in receipt.events {
            if let ExerciseEvent::AttemptGraded { attempt_number, .. } = event.payload {
                numbers.push(attempt_number);
            }
        }
    }
    // A snapshot that double-applied events would count attempts twice.
    assert_eq!(numbers, vec![1, 2, 3, 4, 5]);
    let state: Exercise = bus.reader().load(&exercise.to_string()).await.unwrap();
    assert_eq!(state.attempts().len(), 5);
}

/// A command whose events cross a snapshot boundary: the snapshot is the aggregate after all
/// of them, filed at the last (postgres-es filed cqrs-es's snapshot, which folds only up to the
/// boundary, at the command's last event, so a load skipped the events after the boundary).
#[tokio::test]
async fn a_snapshot_inside_a_command_keeps_the_events_after_it() {
    let db = TestDatabase::new().await;
    let bus = bus(
        &db,
        BusSettings {
            snapshot_every: 2,
            ..BusSettings::default()
        },
    );
    let student = UserId::new();
    let context = student_context(student);
    // 1: progress + first unlock (1, 2); 2: progress (3); 3: progress + unlock at 3 (4, 5),
    // which pass the boundary at 4.
    for _ in 0..3 {
        bus.execute::<AchievementProgress>(&student.to_string(), track(1), &context)
            .await
            .unwrap();
    }
    let (last_sequence,): (i64,) = sqlx::query_as(
        "SELECT last_sequence FROM snapshots WHERE aggregate_type = 'AchievementProgress' AND aggregate_id = $1",
    )
    .bind(student.to_string())
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(last_sequence, 5, "filed at the last event it folds");
    let state: AchievementProgress = bus.reader().load(&student.to_string()).await.unwrap();
    assert_eq!(state.count(Feature::WordCards), 3);
    assert!(
        state.is_unlocked("word_cards_3"),
        "the unlock after the snapshot is part of the state"
    );
}

/// A snapshot the aggregate can no longer read (its shape changed) is replaced, not a
/// conflict on every later command.
#[tokio::test]
async fn an_unreadable_snapshot_is_replaced_on_the_next_snapshot() {
    let db = TestDatabase::new().await;
    let bus = bus(
        &db,
        BusSettings {
            snapshot_every: 2,
            max_attempts: 1,
            ..BusSettings::default()
        },
    );
    let student = UserId::new();
    let context = student_context(student);
    bus.execute::<AchievementProgress>(&student.to_string(), track(1), &context)
        .await
        .unwrap();
    sqlx::query("UPDATE snapshots SET payload = '{\"an\": \"older shape\"}'")
        .execute(&db.pool)
        .await
        .unwrap();
    for _ in 0..4 {
        bus.execute::<AchievementProgress>(&student.to_string(), track(1), &context)
            .await
            .unwrap();
    }
    let state: AchievementProgress = bus.reader().load(&student.to_string()).await.unwrap();
    assert_eq!(state.count(Feature::WordCards), 5);
    let payload: Value = sqlx::query_scalar("SELECT payload FROM snapshots")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert!(payload.get("an").is_none(), "replaced: {payload}");
}
