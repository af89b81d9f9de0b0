//! The read-model projections, fed by real events from the real command bus.
//!
//! Every test drives the domain through the command bus, then builds the read model three
//! ways — the whole log applied as one batch (so every row is folded in memory from several
//! events), one event per batch, and batches of 500 — and requires the same tables from all
//! three before it checks their content. A test with an erasure builds them again from zero
//! after the erasure, which must not bring any personal data back.
//!
//! The log horizon is cluster-wide: a transaction open in another test's database holds the
//! reader back for a moment, so catching up repeats (boundedly) until the whole log is read.

use serde_json::{json, Value};
use sqlx::{Connection, PgPool};
use std::time::{Duration, Instant};
use teachin_commands::testing::TestDatabase;
use teachin_commands::{BusSettings, CommandBus, CommandContext, PortSecrets};
use teachin_domain::achievements::{AchievementCommand, AchievementProgress, Feature};
use teachin_domain::actor::{Actor, Role};
use teachin_domain::classroom::{Classroom, ClassroomCommand, JoinCode};
use teachin_domain::ids::{
    AttemptId, ClassroomId, ExerciseId, RequestId, TutorSessionId, UserId, WordCardId,
};
use teachin_domain::practice::{Exercise, ExerciseCommand};
use teachin_domain::teaching::{TeacherStudents as TeacherList, TeacherStudentsCommand};
use teachin_domain::tutor_session::{SessionKind, TutorSession, TutorSessionCommand};
use teachin_domain::user::{HebrewLevel, Language, User, UserCommand};
use teachin_domain::vocabulary::{Difficulty, GameType};
use teachin_domain::word_cards::{WordCardCommand, WordCardDeck};
use teachin_projections::checkpoint::{self, Status};
use teachin_projections::read_models::{
    self, Achievements, Classrooms, Practice, TeacherStudents, TutorSessions, Users, WordCards,
};
use teachin_projections::runner::{catch_up, BatchOutcome, Target};
use teachin_projections::{ApplyContext, KeyRing, LogPosition, Projection};
use uuid::Uuid;

const HASH: &str = "$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA";
const NEW_HASH: &str = "$argon2id$v=19$m=19456,t=2,p=1$bmV3$bmV3aGFzaA";
const DEADLINE: Duration = Duration::from_secs(60);

struct World {
    db: TestDatabase,
    bus: CommandBus,
}

impl World {
    async fn new() -> Self {
        let db = TestDatabase::new().await;
        let bus = teachin_commands::command_bus(
            db.pool.clone(),
            PortSecrets {
                claims_hash_key: b"k".to_vec(),
            },
            BusSettings::default(),
        );
        World { db, bus }
    }

    fn pool(&self) -> &PgPool {
        &self.db.pool
    }

    async fn user(&self, id: UserId, command: UserCommand, actor: Actor) {
        self.bus
            .execute::<User>(&id.to_string(), command, &context(actor))
            .await
            .expect("user command");
    }

    /// Registers a student (self sign-up) or, with another role, an account made by the system.
    async fn register(&self, id: UserId, role: Role, first: &str, email: &str) {
        let student = role == Role::Student;
        let command = UserCommand::Register {
            user_id: id,
            role,
            first_name: first.into(),
            last_name: "Levi".into(),
            email: email.into(),
            password_hash: HASH.into(),
            preferred_language: Language::He,
            hebrew_level: student.then_some(HebrewLevel::Intermediate),
            interests: if student {
                vec!["Travel".into(), "Music".into()]
            } else {
                vec![]
            },
            registered_by: if student {
                Actor::Anonymous
            } else {
                Actor::System
            },
        };
        let actor = if student {
            Actor::Anonymous
        } else {
            Actor::System
        };
        self.user(id, command, actor).await;
    }

    async fn erase(&self, id: UserId) {
        let actor = Actor::user(id, Role::Student);
        self.user(id, UserCommand::Erase { actor }, actor).await;
    }
}

fn context(actor: Actor) -> CommandContext {
    CommandContext::new(actor, "test")
}

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| s.to_string()).collect()
}

// --- running projections --------------------------------------------------------------------

/// The position of the last committed event.
async fn log_end(pool: &PgPool) -> LogPosition {
    let row: Option<(String, i64)> = sqlx::query_as(
        "SELECT transaction_id::text AS tx, global_position FROM events
          ORDER BY events.transaction_id DESC, events.global_position DESC LIMIT 1",
    )
    .fetch_optional(pool)
    .await
    .unwrap();
    row.map(|(tx, pos)| LogPosition {
        transaction_id: tx.parse().unwrap(),
        global_position: pos,
    })
    .unwrap_or(LogPosition::START)
}

/// Catches `projection` up in batches of `batch_size` until it has consumed every committed
/// event (or halts).
async fn catch_up_all(pool: &PgPool, projection: &dyn Projection, batch_size: i64) -> BatchOutcome {
    let end = log_end(pool).await;
    let target = Target::live(projection);
    let mut conn = pool.acquire().await.unwrap();
    let deadline = Instant::now() + DEADLINE;
    loop {
        let (_, outcome) = catch_up(&mut conn, projection, &target, batch_size)
            .await
            .expect("catch-up");
        if outcome == BatchOutcome::Halted {
            return outcome;
        }
        let cp = checkpoint::get(pool, projection.name())
            .await
            .unwrap()
            .expect("the checkpoint row exists");
        if cp.position >= end {
            return outcome;
        }
        assert!(
            Instant::now() < deadline,
            "{} did not reach the end of the log",
            projection.name()
        );
        tokio::task::yield_now().await;
    }
}

/// Applies the whole log to `projection` as a single batch (the folding case), bypassing the
/// checkpoint.
async fn apply_as_one_batch(pool: &PgPool, projection: &dyn Projection) {
    let (count,): (i64,) = sqlx::query_as("SELECT count(*) FROM events")
        .fetch_one(pool)
        .await
        .unwrap();
    let deadline = Instant::now() + DEADLINE;
    let events = loop {
        let events = teachin_projections::log::read_after(pool, LogPosition::START, count + 1)
            .await
            .unwrap();
        if events.len() as i64 >= count {
            break events;
        }
        assert!(Instant::now() < deadline, "the log did not settle");
        tokio::task::yield_now().await;
    };
    let mut conn = pool.acquire().await.unwrap();
    let mut tx = conn.begin().await.unwrap();
    sqlx::query("SET LOCAL search_path TO read_model, public")
        .execute(&mut *tx)
        .await
        .unwrap();
    let mut keys = KeyRing::default();
    let mut cx = ApplyContext {
        conn: &mut tx,
        keys: &mut keys,
    };
    projection
        .apply(&events, &mut cx)
        .await
        .expect("the whole log applies as one batch");
    tx.commit().await.unwrap();
}

/// Empties the projection's tables and forgets its checkpoint: the start of a rebuild.
async fn reset(pool: &PgPool, projection: &dyn Projection) {
    for table in projection.tables() {
        sqlx::query(&format!("TRUNCATE read_model.{table}"))
            .execute(pool)
            .await
            .unwrap();
    }
    sqlx::query("DELETE FROM projection_checkpoints WHERE name = $1")
        .bind(projection.name())
        .execute(pool)
        .await
        .unwrap();
}

/// Every row of every table of the projection, in a stable order.
async fn snapshot(pool: &PgPool, projection: &dyn Projection) -> Vec<(String, Value)> {
    let mut tables = Vec::new();
    for table in projection.tables() {
        let (rows,): (Value,) = sqlx::query_as(&format!(
            "SELECT coalesce(jsonb_agg(to_jsonb(t) ORDER BY to_jsonb(t)::text), '[]')
               FROM read_model.{table} t"
        ))
        .fetch_one(pool)
        .await
        .unwrap();
        tables.push((table.to_string(), rows));
    }
    tables
}

/// Builds the read model from zero as one batch, one event per batch and 500 per batch,
/// requires the three to agree, and leaves the last one in place (checkpoint at the end).
async fn rebuild_every_way(pool: &PgPool, projection: &dyn Projection) {
    reset(pool, projection).await;
    apply_as_one_batch(pool, projection).await;
    let folded = snapshot(pool, projection).await;

    reset(pool, projection).await;
    assert_eq!(
        catch_up_all(pool, projection, 1).await,
        BatchOutcome::CaughtUp
    );
    let one_by_one = snapshot(pool, projection).await;
    assert_eq!(
        one_by_one,
        folded,
        "{}: one event per batch differs from the whole log folded in one batch",
        projection.name()
    );

    reset(pool, projection).await;
    assert_eq!(
        catch_up_all(pool, projection, 500).await,
        BatchOutcome::CaughtUp
    );
    let batched = snapshot(pool, projection).await;
    assert_eq!(
        batched,
        folded,
        "{}: batches of 500 differ from the whole log folded in one batch",
        projection.name()
    );
    assert!(
        folded.iter().any(|(_, rows)| rows != &json!([])),
        "{}: the test produced no rows at all",
        projection.name()
    );
}

/// One row of a query as JSON (`to_jsonb` of the row).
async fn row(pool: &PgPool, sql: &str, id: Uuid) -> Value {
    let (row,): (Value,) = sqlx::query_as(&format!("SELECT to_jsonb(t) FROM ({sql}) t"))
        .bind(id)
        .fetch_one(pool)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    row
}

async fn rows(pool: &PgPool, sql: &str, id: Uuid) -> Vec<Value> {
    let (rows,): (Value,) = sqlx::query_as(&format!(
        "SELECT coalesce(jsonb_agg(to_jsonb(t)), '[]') FROM ({sql}) t"
    ))
    .bind(id)
    .fetch_one(pool)
    .await
    .unwrap_or_else(|e| panic!("{sql}: {e}"));
    rows.as_array().unwrap().clone()
}

// --- the catalogue --------------------------------------------------------------------------

#[test]
fn every_projection_is_registered_with_its_tables() {
    let catalogue: Vec<(&str, Vec<&str>)> = read_models::all()
        .iter()
        .map(|p| (p.name(), p.tables().to_vec()))
        .collect();
    for expected in [
        ("game_configs", vec!["game_configs"]),
        ("users", vec!["users"]),
        ("teacher_students", vec!["teacher_students"]),
        (
            "classrooms",
            vec!["classrooms", "classroom_members", "classroom_invitations"],
        ),
        (
            "tutor_sessions",
            vec!["tutor_sessions", "tutor_messages", "ai_requests"],
        ),
        (
            "practice",
            vec!["exercises", "attempts", "practice_summary"],
        ),
        ("word_cards", vec!["word_cards"]),
        (
            "achievements",
            vec!["achievement_progress", "user_achievements"],
        ),
        ("ai_generations", vec!["ai_generations"]),
    ] {
        assert!(
            catalogue.contains(&expected),
            "{expected:?} missing from {catalogue:?}"
        );
    }
    assert_eq!(catalogue.len(), 9);
}

// --- users ----------------------------------------------------------------------------------

const USER_ROW: &str = "SELECT role, first_name, last_name, email, password_hash, preferred_language,
        hebrew_level, interests, avatar_path, avatar_content_type, avatar_updated_at IS NOT NULL AS has_avatar_time,
        erased, registered_at <= updated_at AS ordered
   FROM read_model.users WHERE user_id = $1";

#[tokio::test]
async fn users_fold_a_profile_from_registration_through_every_change() {
    let world = World::new().await;
    let dana = UserId::new();
    let self_actor = Actor::user(dana, Role::Student);
    world
        .register(dana, Role::Student, "Dana", "Dana.Levi@Example.com")
        .await;
    world
        .user(
            dana,
            UserCommand::UpdateProfile {
                first_name: Some("Dani".into()),
                last_name: None,
                actor: self_actor,
            },
            self_actor,
        )
        .await;
    world
        .user(
            dana,
            UserCommand::ChangePreferredLanguage {
                language: Language::En,
            },
            self_actor,
        )
        .await;
    world
        .user(
            dana,
            UserCommand::ChangeHebrewLevel {
                level: HebrewLevel::Advanced,
            },
            self_actor,
        )
        .await;
    world
        .user(
            dana,
            UserCommand::ReplaceInterests {
                interests: strings(&["Cooking", "חדשות"]),
            },
            self_actor,
        )
        .await;
    world
        .user(
            dana,
            UserCommand::SetAvatar {
                blob_path: format!("{dana}/avatar.png"),
                content_type: "image/png".into(),
            },
            self_actor,
        )
        .await;
    world
        .user(
            dana,
            UserCommand::ChangePassword {
                password_hash: NEW_HASH.into(),
            },
            self_actor,
        )
        .await;

    // A student who becomes a teacher loses the level and interests only students have.
    let noa = UserId::new();
    world
        .register(noa, Role::Student, "Noa", "noa@example.com")
        .await;
    world
        .user(
            noa,
            UserCommand::ChangeRole {
                role: Role::Teacher,
                actor: Actor::System,
            },
            Actor::System,
        )
        .await;
    let admin = UserId::new();
    world
        .register(admin, Role::Admin, "Avi", "avi@example.com")
        .await;

    rebuild_every_way(world.pool(), &Users).await;

    assert_eq!(
        row(world.pool(), USER_ROW, dana.0).await,
        json!({
            "role": "Student", "first_name": "Dani", "last_name": "Levi",
            "email": "dana.levi@example.com", "password_hash": NEW_HASH,
            "preferred_language": "En", "hebrew_level": "Advanced",
            "interests": ["Cooking", "חדשות"], "avatar_path": format!("{dana}/avatar.png"),
            "avatar_content_type": "image/png", "has_avatar_time": true,
            "erased": false, "ordered": true,
        })
    );
    let noa_row = row(world.pool(), USER_ROW, noa.0).await;
    assert_eq!(noa_row["role"], "Teacher");
    assert_eq!(noa_row["hebrew_level"], Value::Null);
    assert_eq!(noa_row["interests"], json!([]));
    assert_eq!(noa_row["first_name"], "Noa");
    let admin_row = row(world.pool(), USER_ROW, admin.0).await;
    assert_eq!(admin_row["role"], "Admin");
    assert_eq!(admin_row["preferred_language"], "He");
    assert_eq!(admin_row["hebrew_level"], Value::Null);

    // updated_at is the time of the user's last event.
    let (matches,): (bool,) = sqlx::query_as(
        "SELECT u.updated_at = (SELECT max(recorded_at) FROM events
                                 WHERE aggregate_type = 'User' AND aggregate_id = $1::text)
           FROM read_model.users u WHERE u.user_id = $1",
    )
    .bind(dana.0)
    .fetch_one(world.pool())
    .await
    .unwrap();
    assert!(matches);
}

#[tokio::test]
async fn an_erased_user_loses_every_personal_column_live_and_in_a_rebuild() {
    let world = World::new().await;
    let dana = UserId::new();
    let other = UserId::new();
    world
        .register(dana, Role::Student, "Dana", "dana@example.com")
        .await;
    world
        .register(other, Role::Student, "Other", "other@example.com")
        .await;
    assert_eq!(
        catch_up_all(world.pool(), &Users, 500).await,
        BatchOutcome::CaughtUp
    );
    assert_eq!(
        row(world.pool(), USER_ROW, dana.0).await["email"],
        "dana@example.com"
    );

    world.erase(dana).await;
    let expect_erased = |row: Value| {
        for column in ["first_name", "last_name", "email", "password_hash"] {
            assert_eq!(row[column], Value::Null, "{column} survived the erasure");
        }
        assert_eq!(row["interests"], json!([]));
        assert_eq!(row["erased"], true);
        assert_eq!(row["role"], "Student");
    };
    // Live: the erasure arrives in a later batch.
    assert_eq!(
        catch_up_all(world.pool(), &Users, 500).await,
        BatchOutcome::CaughtUp
    );
    expect_erased(row(world.pool(), USER_ROW, dana.0).await);

    // From zero: the key is gone, so nothing can be opened again.
    rebuild_every_way(world.pool(), &Users).await;
    expect_erased(row(world.pool(), USER_ROW, dana.0).await);
    let (found,): (i64,) = sqlx::query_as(
        "SELECT count(*) FROM read_model.users t WHERE to_jsonb(t)::text ILIKE '%dana%'",
    )
    .fetch_one(world.pool())
    .await
    .unwrap();
    assert_eq!(found, 0, "something of Dana survived the rebuild");
    // Others keep theirs.
    assert_eq!(
        row(world.pool(), USER_ROW, other.0).await["first_name"],
        "Other"
    );
}

#[tokio::test]
async fn an_event_that_does_not_decode_halts_the_projection_after_the_good_ones() {
    let world = World::new().await;
    let dana = UserId::new();
    let noa = UserId::new();
    world
        .register(dana, Role::Student, "Dana", "dana@example.com")
        .await;
    world
        .register(noa, Role::Student, "Noa", "noa@example.com")
        .await;
    let (poison,): (Uuid,) = sqlx::query_as(
        "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata)
         VALUES ('User', $1, 1, 'UserRegistered', '1.0', $2, $3) RETURNING event_id",
    )
    .bind(UserId::new().to_string())
    .bind(json!({"UserRegistered": {"role": "Wizard"}}))
    .bind(json!({"issued_by": "system"}))
    .fetch_one(world.pool())
    .await
    .unwrap();

    assert_eq!(
        catch_up_all(world.pool(), &Users, 500).await,
        BatchOutcome::Halted
    );
    let cp = checkpoint::get(world.pool(), "users")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(cp.status, Status::Halted);
    assert_eq!(cp.failed_event_id, Some(poison));
    assert!(cp.failure.unwrap_or_default().contains("does not decode"));
    let (status,): (String,) =
        sqlx::query_as("SELECT status FROM projection_checkpoints WHERE name = 'users'")
            .fetch_one(world.pool())
            .await
            .unwrap();
    assert_eq!(status, "halted");
    // The valid events before it were applied, and the checkpoint stands just before it.
    let (count,): (i64,) = sqlx::query_as("SELECT count(*) FROM read_model.users")
        .fetch_one(world.pool())
        .await
        .unwrap();
    assert_eq!(count, 2);
    assert_eq!(cp.events_applied, 2);
    // It stays halted.
    assert_eq!(
        catch_up_all(world.pool(), &Users, 500).await,
        BatchOutcome::Halted
    );
}

// --- teacher_students -----------------------------------------------------------------------

#[tokio::test]
async fn teacher_students_follow_assignments_and_unassignments() {
    let world = World::new().await;
    let teacher = UserId::new();
    let (s1, s2) = (UserId::new(), UserId::new());
    world
        .register(teacher, Role::Teacher, "Tali", "tali@example.com")
        .await;
    world
        .register(s1, Role::Student, "Sara", "sara@example.com")
        .await;
    world
        .register(s2, Role::Student, "Eli", "eli@example.com")
        .await;
    // Only an admin (here the platform) assigns.
    let actor = Actor::System;
    let world = &world;
    let list = |command| async move {
        world
            .bus
            .execute::<TeacherList>(&teacher.to_string(), command, &context(actor))
            .await
            .expect("teacher list command");
    };
    for (student, assign) in [(s1, true), (s2, true), (s1, false), (s1, true), (s2, false)] {
        let command = if assign {
            TeacherStudentsCommand::AssignStudent {
                teacher,
                student,
                actor,
            }
        } else {
            TeacherStudentsCommand::UnassignStudent {
                teacher,
                student,
                actor,
            }
        };
        list(command).await;
    }

    rebuild_every_way(world.pool(), &TeacherStudents).await;
    let assigned = rows(
        world.pool(),
        "SELECT student_id FROM read_model.teacher_students WHERE teacher_id = $1",
        teacher.0,
    )
    .await;
    assert_eq!(assigned, vec![json!({"student_id": s1.0})]);
    // assigned_at is the time of the last assignment.
    let (matches,): (bool,) = sqlx::query_as(
        "SELECT t.assigned_at = (SELECT max(recorded_at) FROM events
                                  WHERE aggregate_type = 'TeacherStudents' AND event_type = 'StudentAssigned')
           FROM read_model.teacher_students t WHERE teacher_id = $1",
    )
    .bind(teacher.0)
    .fetch_one(world.pool())
    .await
    .unwrap();
    assert!(matches);
}

// --- classrooms -----------------------------------------------------------------------------

#[tokio::test]
async fn classrooms_keep_their_members_and_invitations_and_a_deleted_class_goes_with_them() {
    let world = World::new().await;
    let teacher = UserId::new();
    let (s1, s2, s3, s4) = (UserId::new(), UserId::new(), UserId::new(), UserId::new());
    world
        .register(teacher, Role::Teacher, "Tali", "tali@example.com")
        .await;
    for (id, name) in [(s1, "Sara"), (s2, "Eli"), (s3, "Noa"), (s4, "Dan")] {
        world
            .register(
                id,
                Role::Student,
                name,
                &format!("{}@example.com", name.to_lowercase()),
            )
            .await;
    }
    let actor = Actor::user(teacher, Role::Teacher);
    let student = |id| Actor::user(id, Role::Student);
    let world = &world;
    let class = |id: ClassroomId, command, actor| async move {
        world
            .bus
            .execute::<Classroom>(&id.to_string(), command, &context(actor))
            .await
            .expect("classroom command");
    };
    let (kept, dropped) = (ClassroomId::new(), ClassroomId::new());
    for (id, name, code) in [
        (kept, "Ulpan Aleph", "ABCDEFGH"),
        (dropped, "Ulpan Bet", "HGFEDCBA"),
    ] {
        class(
            id,
            ClassroomCommand::Create {
                classroom_id: id,
                name: name.into(),
                description: Some("Mornings".into()),
                join_code: JoinCode::parse(code).unwrap(),
                created_by: actor,
            },
            actor,
        )
        .await;
    }
    // `kept`: the teacher invites four; one accepts, one joins with the code instead, one
    // invitation is withdrawn and one is left waiting.
    let add = |user_ids| ClassroomCommand::AddMembers { user_ids, actor };
    class(kept, add(vec![s1, s2, s3, s4]), actor).await;
    class(
        kept,
        ClassroomCommand::AcceptInvitation { actor: student(s1) },
        student(s1),
    )
    .await;
    let join = ClassroomCommand::Join {
        join_code: JoinCode::parse("ABCDEFGH").unwrap(),
        actor: student(s3),
    };
    class(kept, join, student(s3)).await;
    let withdraw = ClassroomCommand::RemoveMembers {
        user_ids: vec![s4],
        actor,
    };
    class(kept, withdraw, actor).await;
    // `dropped`: the platform adds one, the teacher invites another, then it is deleted.
    let added = ClassroomCommand::AddMembers {
        user_ids: vec![s1],
        actor: Actor::System,
    };
    class(dropped, added, Actor::System).await;
    class(dropped, add(vec![s2]), actor).await;
    class(dropped, ClassroomCommand::Delete { actor }, actor).await;

    rebuild_every_way(world.pool(), &Classrooms).await;
    let classes = rows(
        world.pool(),
        "SELECT classroom_id, name, description, join_code, created_by
           FROM read_model.classrooms WHERE $1::uuid IS NOT NULL",
        kept.0,
    )
    .await;
    assert_eq!(
        classes,
        vec![json!({
            "classroom_id": kept.0, "name": "Ulpan Aleph", "description": "Mornings",
            "join_code": "ABCDEFGH", "created_by": teacher.0,
        })]
    );
    let mut members = rows(
        world.pool(),
        "SELECT classroom_id, user_id, role, added_by FROM read_model.classroom_members
          WHERE $1::uuid IS NOT NULL",
        kept.0,
    )
    .await;
    members.sort_by_key(|m| (m["role"].to_string(), m["added_by"].to_string()));
    assert_eq!(
        members,
        vec![
            // Accepted the teacher's invitation.
            json!({"classroom_id": kept.0, "user_id": s1.0, "role": "Student", "added_by": teacher.0}),
            // Joined with the code: added by nobody.
            json!({"classroom_id": kept.0, "user_id": s3.0, "role": "Student", "added_by": null}),
            json!({"classroom_id": kept.0, "user_id": teacher.0, "role": "Teacher", "added_by": teacher.0}),
        ]
    );
    let invitations = rows(
        world.pool(),
        "SELECT classroom_id, student_id, invited_by FROM read_model.classroom_invitations
          WHERE $1::uuid IS NOT NULL",
        kept.0,
    )
    .await;
    assert_eq!(
        invitations,
        vec![json!({"classroom_id": kept.0, "student_id": s2.0, "invited_by": teacher.0})]
    );
}

// --- tutor_sessions -------------------------------------------------------------------------

struct Practised {
    student: UserId,
    exercise: ExerciseId,
    wrong: AttemptId,
}

/// A student with a word-order exercise answered wrong, then right, and a typing exercise
/// answered wrong.
async fn practise(world: &World) -> (Practised, ExerciseId, AttemptId, AttemptId) {
    let student = UserId::new();
    world
        .register(student, Role::Student, "Dana", "dana@example.com")
        .await;
    let actor = Actor::user(student, Role::Student);
    let exercise_command = |id: ExerciseId, command| async move {
        world
            .bus
            .execute::<Exercise>(&id.to_string(), command, &context(actor))
            .await
            .expect("exercise command");
    };
    let (word_order, typing) = (ExerciseId::new(), ExerciseId::new());
    exercise_command(
        word_order,
        ExerciseCommand::Generate {
            student,
            game_type: GameType::WordOrder,
            difficulty: Difficulty::Medium,
            nikud: false,
            sentence: "אני אוהב קפה".into(),
            request_id: RequestId::new(),
        },
    )
    .await;
    exercise_command(
        typing,
        ExerciseCommand::Generate {
            student,
            game_type: GameType::TypingPractice,
            difficulty: Difficulty::Easy,
            nikud: true,
            sentence: "שלום עולם".into(),
            request_id: RequestId::new(),
        },
    )
    .await;
    let (wrong, right, typed) = (AttemptId::new(), AttemptId::new(), AttemptId::new());
    for (exercise, attempt, answer) in [
        (word_order, wrong, strings(&["קפה", "אני", "אוהב"])),
        (word_order, right, strings(&["אני", "אוהב", "קפה"])),
        (typing, typed, strings(&["שלום"])),
    ] {
        exercise_command(
            exercise,
            ExerciseCommand::SubmitAttempt {
                attempt_id: attempt,
                student,
                given_answer: answer,
            },
        )
        .await;
    }
    (
        Practised {
            student,
            exercise: word_order,
            wrong,
        },
        typing,
        right,
        typed,
    )
}

const SESSION_ROW: &str = "SELECT student_id, kind, exercise_id, attempt_id, title, awaiting_reply,
        message_count, created_at <= updated_at AS ordered
   FROM read_model.tutor_sessions WHERE session_id = $1";
const MESSAGES: &str = "SELECT event_sequence, part, role, text, tool, request_id
   FROM read_model.tutor_messages WHERE session_id = $1 ORDER BY event_sequence, part";
const REQUESTS: &str = "SELECT request_id, kind, completed_at IS NOT NULL AS completed,
        failed_at IS NOT NULL AS failed, model, prompt_tokens, completion_tokens, latency_ms, failure
   FROM read_model.ai_requests WHERE session_id = $1 ORDER BY requested_at, kind";

async fn tutor(world: &World, session: TutorSessionId, command: TutorSessionCommand, actor: Actor) {
    world
        .bus
        .execute::<TutorSession>(&session.to_string(), command, &context(actor))
        .await
        .expect("tutor command");
}

/// A global-tutor conversation: a message with a tool call and a reply, a title, and a
/// second message whose reply fails. Returns the session and its two requests.
async fn converse(world: &World, student: UserId) -> (TutorSessionId, RequestId, RequestId) {
    let actor = Actor::user(student, Role::Student);
    let session = TutorSessionId::new();
    let (first, second) = (RequestId::new(), RequestId::new());
    tutor(
        world,
        session,
        TutorSessionCommand::PostStudentMessage {
            student,
            kind: SessionKind::Global,
            text: "What does שלום mean?".into(),
            page_context: Some(r#"{ "page": "home" }"#.into()),
            request_id: first,
        },
        actor,
    )
    .await;
    tutor(
        world,
        session,
        TutorSessionCommand::RecordToolCall {
            request_id: first,
            tool: "dictionary".into(),
            arguments: r#"{"word":"שלום"}"#.into(),
            result: Some("peace".into()),
        },
        Actor::System,
    )
    .await;
    tutor(
        world,
        session,
        TutorSessionCommand::CompleteAiReply {
            request_id: first,
            text: "It means peace, Dana.".into(),
            model: "tutor-1".into(),
            prompt_tokens: 120,
            completion_tokens: 30,
            latency_ms: 900,
        },
        Actor::System,
    )
    .await;
    tutor(
        world,
        session,
        TutorSessionCommand::SetTitle {
            title: "Dana asks about shalom".into(),
        },
        Actor::System,
    )
    .await;
    tutor(
        world,
        session,
        TutorSessionCommand::PostStudentMessage {
            student,
            kind: SessionKind::Global,
            text: "And todah?".into(),
            page_context: Some(r#"{"page":"cards"}"#.into()),
            request_id: second,
        },
        actor,
    )
    .await;
    tutor(
        world,
        session,
        TutorSessionCommand::FailAiReply {
            request_id: second,
            reason: "model timed out".into(),
            model: None,
            latency_ms: 30000,
        },
        Actor::System,
    )
    .await;
    (session, first, second)
}

#[tokio::test]
async fn tutor_sessions_record_every_message_part_and_request() {
    let world = World::new().await;
    let (practised, ..) = practise(&world).await;
    let student = practised.student;
    let (session, first, second) = converse(&world, student).await;
    // A mistake explanation, still waiting for its reply.
    let explain = TutorSessionId::new();
    let explanation = RequestId::new();
    tutor(
        &world,
        explain,
        TutorSessionCommand::RequestMistakeExplanation {
            student,
            exercise: practised.exercise,
            attempt: practised.wrong,
            request_id: explanation,
        },
        Actor::user(student, Role::Student),
    )
    .await;

    rebuild_every_way(world.pool(), &TutorSessions).await;

    assert_eq!(
        row(world.pool(), SESSION_ROW, session.0).await,
        json!({
            "student_id": student.0, "kind": "global", "exercise_id": null, "attempt_id": null,
            "title": "Dana asks about shalom", "awaiting_reply": false, "message_count": 7,
            "ordered": true,
        })
    );
    // Sequences: 1 started, 2 posted, 3 requested, 4 tool, 5 completed, 6 title, 7 posted,
    // 8 requested, 9 failed.
    let (f, s) = (first.0, second.0);
    assert_eq!(
        rows(world.pool(), MESSAGES, session.0).await,
        vec![
            json!({"event_sequence": 2, "part": 0, "role": "context", "text": r#"{"page":"home"}"#, "tool": null, "request_id": f}),
            json!({"event_sequence": 2, "part": 1, "role": "student", "text": "What does שלום mean?", "tool": null, "request_id": f}),
            json!({"event_sequence": 4, "part": 0, "role": "tool", "text": r#"{"word":"שלום"}"#, "tool": "dictionary", "request_id": f}),
            json!({"event_sequence": 5, "part": 0, "role": "assistant", "text": "It means peace, Dana.", "tool": null, "request_id": f}),
            json!({"event_sequence": 7, "part": 0, "role": "context", "text": r#"{"page":"cards"}"#, "tool": null, "request_id": s}),
            json!({"event_sequence": 7, "part": 1, "role": "student", "text": "And todah?", "tool": null, "request_id": s}),
            json!({"event_sequence": 9, "part": 0, "role": "error", "text": "model timed out", "tool": null, "request_id": s}),
        ]
    );
    assert_eq!(
        rows(world.pool(), REQUESTS, session.0).await,
        vec![
            json!({"request_id": f, "kind": "reply", "completed": true, "failed": false, "model": "tutor-1",
                   "prompt_tokens": 120, "completion_tokens": 30, "latency_ms": 900, "failure": null}),
            json!({"request_id": s, "kind": "reply", "completed": false, "failed": true, "model": null,
                   "prompt_tokens": null, "completion_tokens": null, "latency_ms": 30000, "failure": "model timed out"}),
        ]
    );

    assert_eq!(
        row(world.pool(), SESSION_ROW, explain.0).await,
        json!({
            "student_id": student.0, "kind": "explain_mistake", "exercise_id": practised.exercise.0,
            "attempt_id": practised.wrong.0, "title": null, "awaiting_reply": true,
            "message_count": 0, "ordered": true,
        })
    );
    assert_eq!(
        rows(world.pool(), REQUESTS, explain.0).await,
        vec![
            json!({"request_id": explanation.0, "kind": "mistake_explanation", "completed": false, "failed": false,
                   "model": null, "prompt_tokens": null, "completion_tokens": null, "latency_ms": null, "failure": null}),
        ]
    );
    let (student_of_request,): (Uuid,) =
        sqlx::query_as("SELECT student_id FROM read_model.ai_requests WHERE request_id = $1")
            .bind(explanation.0)
            .fetch_one(world.pool())
            .await
            .unwrap();
    assert_eq!(student_of_request, student.0);
}

#[tokio::test]
async fn a_session_started_in_transaction_9_and_answered_in_10_rebuilds() {
    let world = World::new().await;
    let dana = UserId::new();
    world
        .register(dana, Role::Student, "Dana", "dana@example.com")
        .await;
    let (session, ..) = converse(&world, dana).await;
    // Everything up to the session's start (its first command: sequences 1-3) moves into
    // transaction 9, the rest (tool call, reply, title, ...) into 10: as text, "10" < "9", so
    // a reader sorting the text would meet the reply before the session exists.
    let (started_at,): (i64,) = sqlx::query_as(
        "SELECT global_position FROM events
          WHERE aggregate_type = 'TutorSession' AND aggregate_id = $1 AND sequence = 3",
    )
    .bind(session.to_string())
    .fetch_one(world.pool())
    .await
    .unwrap();
    sqlx::query(
        "UPDATE events SET transaction_id = CASE WHEN global_position <= $1 THEN '9' ELSE '10' END::xid8",
    )
    .bind(started_at)
    .execute(world.pool())
    .await
    .unwrap();

    let all = read_models::all();
    let projections: Vec<&dyn Projection> = all.iter().map(|p| &**p).collect();
    teachin_projections::rebuild::rebuild_all(world.pool(), &projections, 4)
        .await
        .expect("the rebuild reads the session's start before its reply");
    assert_eq!(
        row(world.pool(), SESSION_ROW, session.0).await["title"],
        json!("Dana asks about shalom")
    );
    let cp = checkpoint::get(world.pool(), "tutor_sessions")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (cp.status, cp.position.transaction_id),
        (Status::Running, 10)
    );
}

#[tokio::test]
async fn an_erased_students_tutor_texts_are_cleared_live_and_in_a_rebuild() {
    let world = World::new().await;
    let dana = UserId::new();
    let other = UserId::new();
    world
        .register(dana, Role::Student, "Dana", "dana@example.com")
        .await;
    world
        .register(other, Role::Student, "Other", "other@example.com")
        .await;
    let (session, ..) = converse(&world, dana).await;
    let (kept, ..) = converse(&world, other).await;
    assert_eq!(
        catch_up_all(world.pool(), &TutorSessions, 500).await,
        BatchOutcome::CaughtUp
    );
    let texts = |id: TutorSessionId| {
        let pool = world.pool().clone();
        async move {
            let (texts,): (i64,) = sqlx::query_as(
                "SELECT count(text) FROM read_model.tutor_messages WHERE session_id = $1",
            )
            .bind(id.0)
            .fetch_one(&pool)
            .await
            .unwrap();
            let (title,): (Option<String>,) =
                sqlx::query_as("SELECT title FROM read_model.tutor_sessions WHERE session_id = $1")
                    .bind(id.0)
                    .fetch_one(&pool)
                    .await
                    .unwrap();
            (texts, title)
        }
    };
    assert_eq!(
        texts(session).await,
        (7, Some("Dana asks about shalom".into()))
    );

    world.erase(dana).await;
    assert_eq!(
        catch_up_all(world.pool(), &TutorSessions, 500).await,
        BatchOutcome::CaughtUp
    );
    assert_eq!(texts(session).await, (0, None));
    assert_eq!(
        texts(kept).await,
        (7, Some("Dana asks about shalom".into()))
    );

    rebuild_every_way(world.pool(), &TutorSessions).await;
    assert_eq!(texts(session).await, (0, None));
    assert_eq!(
        texts(kept).await,
        (7, Some("Dana asks about shalom".into()))
    );
    // The conversation itself stays: its shape is not personal.
    assert_eq!(
        row(world.pool(), SESSION_ROW, session.0).await["message_count"],
        7
    );
}

// --- practice -------------------------------------------------------------------------------

const ATTEMPT_ROW: &str = "SELECT exercise_id, student_id, game_type, difficulty, attempt_number,
        given_answer, accuracy::float8 AS accuracy, correct, cleared_at IS NOT NULL AS cleared
   FROM read_model.attempts WHERE attempt_id = $1";

#[tokio::test]
async fn practice_records_exercises_attempts_and_the_summary() {
    let world = World::new().await;
    let (practised, typing, right, typed) = practise(&world).await;
    let student = practised.student.0;

    rebuild_every_way(world.pool(), &Practice).await;

    let mut wrong_row = row(world.pool(), ATTEMPT_ROW, practised.wrong.0).await;
    let accuracy = wrong_row["accuracy"].as_f64().unwrap();
    assert!((0.0..100.0).contains(&accuracy), "accuracy {accuracy}");
    wrong_row.as_object_mut().unwrap().remove("accuracy");
    assert_eq!(
        wrong_row,
        json!({
            "exercise_id": practised.exercise.0, "student_id": student, "game_type": "WordOrder",
            "difficulty": "Medium", "attempt_number": 1, "given_answer": ["קפה", "אני", "אוהב"],
            "correct": false, "cleared": true,
        })
    );
    let right_row = row(world.pool(), ATTEMPT_ROW, right.0).await;
    assert_eq!(right_row["attempt_number"], 2);
    assert_eq!(right_row["correct"], true);
    assert_eq!(right_row["accuracy"], 100.0);
    assert_eq!(right_row["cleared"], false);
    let typed_row = row(world.pool(), ATTEMPT_ROW, typed.0).await;
    assert_eq!(typed_row["game_type"], "TypingPractice");
    assert_eq!(typed_row["difficulty"], "Easy");
    assert_eq!(typed_row["correct"], false);
    assert_eq!(
        typed_row["cleared"], false,
        "an unsolved exercise keeps its mistakes"
    );
    assert_eq!(typed_row["given_answer"], json!(["שלום"]));

    let exercises = rows(
        world.pool(),
        "SELECT exercise_id, game_type, difficulty, nikud, correct_answer, solved_at IS NOT NULL AS solved
           FROM read_model.exercises WHERE student_id = $1 ORDER BY game_type DESC",
        student,
    )
    .await;
    assert_eq!(
        exercises,
        vec![
            json!({"exercise_id": practised.exercise.0, "game_type": "WordOrder", "difficulty": "Medium",
                   "nikud": false, "correct_answer": ["אני", "אוהב", "קפה"], "solved": true}),
            json!({"exercise_id": typing.0, "game_type": "TypingPractice", "difficulty": "Easy",
                   "nikud": true, "correct_answer": ["שלום עולם"], "solved": false}),
        ]
    );
    let (solved_when_right,): (bool,) = sqlx::query_as(
        "SELECT e.solved_at = a.created_at FROM read_model.exercises e
           JOIN read_model.attempts a ON a.exercise_id = e.exercise_id
          WHERE a.attempt_id = $1",
    )
    .bind(right.0)
    .fetch_one(world.pool())
    .await
    .unwrap();
    assert!(solved_when_right);

    let summary = rows(
        world.pool(),
        "SELECT game_type, difficulty, attempts, successes, failures FROM read_model.practice_summary
          WHERE student_id = $1 ORDER BY game_type DESC",
        student,
    )
    .await;
    assert_eq!(
        summary,
        vec![
            json!({"game_type": "WordOrder", "difficulty": "Medium", "attempts": 2, "successes": 1, "failures": 1}),
            json!({"game_type": "TypingPractice", "difficulty": "Easy", "attempts": 1, "successes": 0, "failures": 1}),
        ]
    );
    let (last_attempt_ok,): (bool,) = sqlx::query_as(
        "SELECT s.last_attempt_at = (SELECT max(created_at) FROM read_model.attempts a
                                      WHERE a.student_id = s.student_id AND a.game_type = s.game_type)
           FROM read_model.practice_summary s WHERE student_id = $1 AND game_type = 'WordOrder'",
    )
    .bind(student)
    .fetch_one(world.pool())
    .await
    .unwrap();
    assert!(last_attempt_ok);
}

#[tokio::test]
async fn an_erased_students_answers_are_cleared_live_and_in_a_rebuild() {
    let world = World::new().await;
    let (practised, ..) = practise(&world).await;
    let student = practised.student;
    let answers = || async {
        let (answers, attempts): (i64, i64) = sqlx::query_as(
            "SELECT count(given_answer), count(*) FROM read_model.attempts WHERE student_id = $1",
        )
        .bind(student.0)
        .fetch_one(world.pool())
        .await
        .unwrap();
        (answers, attempts)
    };
    assert_eq!(
        catch_up_all(world.pool(), &Practice, 500).await,
        BatchOutcome::CaughtUp
    );
    assert_eq!(answers().await, (3, 3));

    world.erase(student).await;
    assert_eq!(
        catch_up_all(world.pool(), &Practice, 500).await,
        BatchOutcome::CaughtUp
    );
    assert_eq!(answers().await, (0, 3));

    rebuild_every_way(world.pool(), &Practice).await;
    assert_eq!(answers().await, (0, 3));
    let (attempts,): (i32,) = sqlx::query_as(
        "SELECT sum(attempts)::int4 FROM read_model.practice_summary WHERE student_id = $1",
    )
    .bind(student.0)
    .fetch_one(world.pool())
    .await
    .unwrap();
    assert_eq!(attempts, 3, "the statistics are not personal and stay");
}

// --- word_cards -----------------------------------------------------------------------------

async fn deck(world: &World, owner: UserId) -> (WordCardId, WordCardId) {
    let actor = Actor::user(owner, Role::Student);
    let card = |command| async move {
        world
            .bus
            .execute::<WordCardDeck>(&owner.to_string(), command, &context(actor))
            .await
            .expect("word card command");
    };
    let (peace, thanks) = (WordCardId::new(), WordCardId::new());
    card(WordCardCommand::AddCard {
        owner,
        card_id: peace,
        hebrew: "שלום".into(),
        english: "peace".into(),
        explanation: Some("Also hello and goodbye.".into()),
    })
    .await;
    card(WordCardCommand::AddCard {
        owner,
        card_id: thanks,
        hebrew: "תודה".into(),
        english: "thanks".into(),
        explanation: None,
    })
    .await;
    for (id, learned) in [(peace, true), (thanks, true), (thanks, false)] {
        card(WordCardCommand::MarkLearned {
            card_id: id,
            is_learned: learned,
        })
        .await;
    }
    (peace, thanks)
}

const CARDS: &str = "SELECT card_id, hebrew, english, explanation, is_learned,
        learned_at IS NOT NULL AS has_learned_at, learned_at = updated_at AS learned_last,
        created_at <= updated_at AS ordered
   FROM read_model.word_cards WHERE owner_id = $1 ORDER BY created_at, hebrew";

#[tokio::test]
async fn word_cards_are_opened_and_follow_their_learned_flag() {
    let world = World::new().await;
    let owner = UserId::new();
    world
        .register(owner, Role::Student, "Dana", "dana@example.com")
        .await;
    let (peace, thanks) = deck(&world, owner).await;

    rebuild_every_way(world.pool(), &WordCards).await;
    let mut cards = rows(world.pool(), CARDS, owner.0).await;
    cards.sort_by_key(|c| c["english"].to_string());
    assert_eq!(
        cards,
        vec![
            json!({"card_id": peace.0, "hebrew": "שלום", "english": "peace", "explanation": "Also hello and goodbye.",
                   "is_learned": true, "has_learned_at": true, "learned_last": true, "ordered": true}),
            json!({"card_id": thanks.0, "hebrew": "תודה", "english": "thanks", "explanation": null,
                   "is_learned": false, "has_learned_at": false, "learned_last": null, "ordered": true}),
        ]
    );
}

#[tokio::test]
async fn an_erased_owners_cards_lose_their_texts_live_and_in_a_rebuild() {
    let world = World::new().await;
    let (dana, other) = (UserId::new(), UserId::new());
    world
        .register(dana, Role::Student, "Dana", "dana@example.com")
        .await;
    world
        .register(other, Role::Student, "Other", "other@example.com")
        .await;
    deck(&world, dana).await;
    deck(&world, other).await;
    let world = &world;
    let texts = |owner: UserId| async move {
        let (texts, cards): (i64, i64) = sqlx::query_as(
            "SELECT count(hebrew) + count(english) + count(explanation), count(*)
               FROM read_model.word_cards WHERE owner_id = $1",
        )
        .bind(owner.0)
        .fetch_one(world.pool())
        .await
        .unwrap();
        (texts, cards)
    };
    assert_eq!(
        catch_up_all(world.pool(), &WordCards, 500).await,
        BatchOutcome::CaughtUp
    );
    assert_eq!(texts(dana).await, (5, 2));

    world.erase(dana).await;
    assert_eq!(
        catch_up_all(world.pool(), &WordCards, 500).await,
        BatchOutcome::CaughtUp
    );
    assert_eq!(texts(dana).await, (0, 2));
    assert_eq!(texts(other).await, (5, 2));

    rebuild_every_way(world.pool(), &WordCards).await;
    assert_eq!(texts(dana).await, (0, 2));
    assert_eq!(texts(other).await, (5, 2));
}

// --- achievements ---------------------------------------------------------------------------

#[tokio::test]
async fn achievements_take_the_latest_count_and_every_unlock() {
    let world = World::new().await;
    let student = UserId::new();
    let actor = Actor::user(student, Role::Student);
    for (feature, increment_by) in [
        (Feature::WordOrder, 1),
        (Feature::WordOrder, 1),
        (Feature::WordOrder, 1),
        (Feature::WordOrder, 1),
        (Feature::WordOrder, 1),
        (Feature::WordCards, 2),
    ] {
        world
            .bus
            .execute::<AchievementProgress>(
                &student.to_string(),
                AchievementCommand::Track {
                    feature,
                    increment_by,
                },
                &context(actor),
            )
            .await
            .expect("track");
    }

    rebuild_every_way(world.pool(), &Achievements).await;
    assert_eq!(
        rows(
            world.pool(),
            "SELECT feature, count FROM read_model.achievement_progress WHERE user_id = $1 ORDER BY feature",
            student.0,
        )
        .await,
        vec![
            json!({"feature": "WordCards", "count": 2}),
            json!({"feature": "WordOrder", "count": 5}),
        ]
    );
    assert_eq!(
        rows(
            world.pool(),
            "SELECT achievement_key, feature, target FROM read_model.user_achievements
              WHERE user_id = $1 ORDER BY feature, target",
            student.0,
        )
        .await,
        vec![
            json!({"achievement_key": "word_cards_1", "feature": "WordCards", "target": 1}),
            json!({"achievement_key": "word_order_1", "feature": "WordOrder", "target": 1}),
            json!({"achievement_key": "word_order_3", "feature": "WordOrder", "target": 3}),
            json!({"achievement_key": "word_order_5", "feature": "WordOrder", "target": 5}),
        ]
    );
    // Each badge unlocked when its own event was recorded.
    let (distinct_times,): (i64,) = sqlx::query_as(
        "SELECT count(DISTINCT unlocked_at) FROM read_model.user_achievements
          WHERE user_id = $1 AND feature = 'WordOrder'",
    )
    .bind(student.0)
    .fetch_one(world.pool())
    .await
    .unwrap();
    assert_eq!(distinct_times, 3);
}

#[tokio::test]
async fn ai_generations_record_every_request_and_how_it_ended() {
    use teachin_domain::generation::{AiUsage, GenerationCommand, GenerationRequest};
    let world = World::new().await;
    let student = UserId::new();
    world
        .register(student, Role::Student, "Dana", "dana@example.org")
        .await;
    let generation = |id: Uuid, command: GenerationCommand, actor: Actor| {
        let bus = world.bus.clone();
        async move {
            bus.execute::<GenerationRequest>(&id.to_string(), command, &context(actor))
                .await
                .expect("generation command");
        }
    };
    let asker = Actor::user(student, Role::Student);
    let (explained, failed, pending) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
    for id in [explained, failed] {
        generation(
            id,
            GenerationCommand::RequestWordExplanation {
                requester: student,
                word: "ספר".into(),
                context: "קראתי ספר".into(),
            },
            asker,
        )
        .await;
    }
    generation(
        pending,
        GenerationCommand::RequestSentences {
            requester: student,
            game_type: GameType::WordOrder,
            difficulty: Difficulty::Easy,
            nikud: false,
            count: 3,
        },
        asker,
    )
    .await;
    generation(
        explained,
        GenerationCommand::CompleteWordExplanation {
            definition: "book".into(),
            explanation: "a thing you read".into(),
            usage: AiUsage {
                model: "gpt-x".into(),
                prompt_tokens: 40,
                completion_tokens: 60,
                latency_ms: 900,
            },
        },
        Actor::System,
    )
    .await;
    generation(
        failed,
        GenerationCommand::FailGeneration {
            reason: "the model refused".into(),
            model: Some("gpt-x".into()),
            latency_ms: 300,
        },
        Actor::System,
    )
    .await;

    rebuild_every_way(world.pool(), &read_models::AiGenerations).await;
    let sql = "SELECT task, requester_id::text AS requester, model, prompt_tokens,
                      completion_tokens, latency_ms, completed_at IS NOT NULL AS completed,
                      failed_at IS NOT NULL AS failed, failure
                 FROM read_model.ai_generations WHERE request_id = $1";
    let requester = student.to_string();
    assert_eq!(
        row(world.pool(), sql, explained).await,
        json!({"task": "word_explanation", "requester": requester, "model": "gpt-x",
               "prompt_tokens": 40, "completion_tokens": 60, "latency_ms": 900,
               "completed": true, "failed": false, "failure": null})
    );
    assert_eq!(
        row(world.pool(), sql, failed).await,
        json!({"task": "word_explanation", "requester": requester, "model": "gpt-x",
               "prompt_tokens": null, "completion_tokens": null, "latency_ms": 300,
               "completed": false, "failed": true, "failure": "the model refused"})
    );
    assert_eq!(
        row(world.pool(), sql, pending).await,
        json!({"task": "sentences", "requester": requester, "model": null,
               "prompt_tokens": null, "completion_tokens": null, "latency_ms": null,
               "completed": false, "failed": false, "failure": null})
    );
}

#[tokio::test]
async fn read_models_read_the_log_without_metadata_unless_one_asks_for_it() {
    use teachin_projections::log::{read_settled, Metadata};
    use teachin_projections::projection::metadata_for;
    use teachin_projections::LoggedEvent;
    let world = World::new().await;
    let student = UserId::new();
    world
        .register(student, Role::Student, "Noa", "noa@example.org")
        .await;
    let end = log_end(world.pool()).await;
    async fn read(pool: &PgPool, end: LogPosition, metadata: Metadata) -> Vec<LoggedEvent> {
        // The horizon is cluster-wide (see the module comment): read until the event shows.
        let deadline = Instant::now() + DEADLINE;
        loop {
            let events = read_settled(pool, LogPosition::START, 10, metadata)
                .await
                .unwrap();
            if events.last().is_some_and(|e| e.position >= end) || Instant::now() > deadline {
                return events;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let with = read(world.pool(), end, Metadata::Read).await;
    let without = read(world.pool(), end, Metadata::Skipped).await;
    assert_eq!(with.len(), without.len());
    assert!(with[0].issued_by() != "unknown", "{:?}", with[0].metadata);
    assert_eq!(without[0].metadata, Value::Null);
    assert_eq!(without[0].payload, with[0].payload);

    // Every read model does without; one that reads metadata brings it to its whole group.
    let catalogue = read_models::all();
    assert_eq!(
        metadata_for(catalogue.iter().map(|p| &**p)),
        Metadata::Skipped
    );
    struct Auditing;
    #[async_trait::async_trait]
    impl Projection for Auditing {
        fn name(&self) -> &'static str {
            "auditing"
        }
        fn tables(&self) -> &'static [&'static str] {
            &[]
        }
        fn reads_metadata(&self) -> bool {
            true
        }
        async fn apply(
            &self,
            _: &[LoggedEvent],
            _: &mut ApplyContext<'_>,
        ) -> Result<(), teachin_projections::ApplyError> {
            Ok(())
        }
    }
    let group: Vec<&dyn Projection> = vec![&*catalogue[0], &Auditing];
    assert_eq!(metadata_for(group), Metadata::Read);
}
