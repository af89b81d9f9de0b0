//! The analytics views, the read-only `teachin_analytics` role, and the per-student period
//! summaries, over rows inserted straight into `read_model.*`. One fresh database per test.

use chrono::{DateTime, Duration, NaiveDate, TimeZone, Utc};
use serde_json::json;
use sqlx::{Acquire, PgPool};
use teachin_commands::testing::TestDatabase;
use teachin_domain::vocabulary::{Difficulty, GameType};
use teachin_projections::analytics::{resolve_period, Analytics, Period};
use uuid::Uuid;

fn day(n: i64) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 1, 10, 0, 0, 0).unwrap() + Duration::days(n)
}

fn date(n: i64) -> NaiveDate {
    day(n).date_naive()
}

async fn user(pool: &PgPool, role: &str) -> Uuid {
    let id = Uuid::new_v4();
    sqlx::query(
        "INSERT INTO read_model.users (user_id, role, first_name, last_name, email,
             preferred_language, registered_at, updated_at)
         VALUES ($1, $2, 'First', 'Last', 'someone@example.org', 'en', $3, $3)",
    )
    .bind(id)
    .bind(role)
    .bind(day(0) + Duration::hours(9))
    .execute(pool)
    .await
    .unwrap();
    id
}

async fn exercise(pool: &PgPool, student: Uuid, game: &str, difficulty: &str) -> Uuid {
    let id = Uuid::new_v4();
    sqlx::query(
        "INSERT INTO read_model.exercises (exercise_id, student_id, game_type, difficulty, nikud,
             correct_answer, created_at)
         VALUES ($1, $2, $3, $4, false, '[\"a\", \"b\"]', $5)",
    )
    .bind(id)
    .bind(student)
    .bind(game)
    .bind(difficulty)
    .bind(day(0))
    .execute(pool)
    .await
    .unwrap();
    id
}

/// The attempts of one exercise: (accuracy, correct, when). Failed attempts before a
/// success are cleared by it, as the practice projection does.
async fn attempts(pool: &PgPool, exercise: Uuid, list: &[(f64, bool, DateTime<Utc>)]) -> Vec<Uuid> {
    let (student, game, difficulty): (Uuid, String, String) = sqlx::query_as(
        "SELECT student_id, game_type, difficulty FROM read_model.exercises WHERE exercise_id = $1",
    )
    .bind(exercise)
    .fetch_one(pool)
    .await
    .unwrap();
    let solved = list.iter().find(|a| a.1).map(|a| a.2);
    let mut ids = Vec::new();
    for (n, (accuracy, correct, at)) in list.iter().enumerate() {
        let id = Uuid::new_v4();
        sqlx::query(
            "INSERT INTO read_model.attempts (attempt_id, exercise_id, student_id, game_type,
                 difficulty, attempt_number, given_answer, accuracy, correct, created_at,
                 cleared_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8::float8::numeric(5,2), $9, $10, $11)",
        )
        .bind(id)
        .bind(exercise)
        .bind(student)
        .bind(&game)
        .bind(&difficulty)
        .bind(n as i32 + 1)
        .bind(json!(["b", format!("x{n}")]))
        .bind(accuracy)
        .bind(correct)
        .bind(at)
        .bind(if *correct { None } else { solved })
        .execute(pool)
        .await
        .unwrap();
        ids.push(id);
    }
    ids
}

async fn card(
    pool: &PgPool,
    owner: Uuid,
    created: DateTime<Utc>,
    learned: Option<DateTime<Utc>>,
) -> Uuid {
    let id = Uuid::new_v4();
    sqlx::query(
        "INSERT INTO read_model.word_cards (card_id, owner_id, hebrew, english, is_learned,
             created_at, updated_at, learned_at)
         VALUES ($1, $2, 'כלב', 'dog', $3, $4, $4, $5)",
    )
    .bind(id)
    .bind(owner)
    .bind(learned.is_some())
    .bind(created)
    .bind(learned)
    .execute(pool)
    .await
    .unwrap();
    id
}

async fn unlock(pool: &PgPool, user: Uuid, key: &str, feature: &str, at: DateTime<Utc>) {
    sqlx::query(
        "INSERT INTO read_model.user_achievements (user_id, achievement_key, feature, target,
             unlocked_at)
         VALUES ($1, $2, $3, 1, $4)",
    )
    .bind(user)
    .bind(key)
    .bind(feature)
    .bind(at)
    .execute(pool)
    .await
    .unwrap();
}

async fn tutor_message(
    pool: &PgPool,
    session: Uuid,
    seq: i64,
    part: i16,
    role: &str,
    at: DateTime<Utc>,
) {
    sqlx::query(
        "INSERT INTO read_model.tutor_messages (session_id, event_sequence, part, role, text,
             created_at)
         VALUES ($1, $2, $3, $4, 'private words', $5)",
    )
    .bind(session)
    .bind(seq)
    .bind(part)
    .bind(role)
    .bind(at)
    .execute(pool)
    .await
    .unwrap();
}

struct Seeded {
    s1: Uuid,
    s2: Uuid,
    class: Uuid,
}

/// Two students in one class (with a teacher) over two days; see the assertions for the sums.
async fn seed_activity(pool: &PgPool) -> Seeded {
    let s1 = user(pool, "Student").await;
    let s2 = user(pool, "Student").await;
    let teacher = user(pool, "Teacher").await;
    let class = Uuid::new_v4();
    sqlx::query(
        "INSERT INTO read_model.classrooms (classroom_id, name, join_code, created_at)
         VALUES ($1, 'Class', 'CODE', $2)",
    )
    .bind(class)
    .bind(day(0))
    .execute(pool)
    .await
    .unwrap();
    for (who, role) in [(s1, "Student"), (s2, "Student"), (teacher, "Teacher")] {
        sqlx::query(
            "INSERT INTO read_model.classroom_members (classroom_id, user_id, role, added_at)
             VALUES ($1, $2, $3, $4)",
        )
        .bind(class)
        .bind(who)
        .bind(role)
        .bind(day(0))
        .execute(pool)
        .await
        .unwrap();
    }
    // Teacher practice must not count for the class.
    let tex = exercise(pool, teacher, "WordOrder", "Easy").await;
    attempts(pool, tex, &[(100.0, true, day(0) + Duration::hours(1))]).await;

    let h = |d: i64, hour: i64| day(d) + Duration::hours(hour);
    let e1 = exercise(pool, s1, "WordOrder", "Easy").await;
    attempts(
        pool,
        e1,
        &[(40.0, false, h(0, 10)), (100.0, true, h(0, 11))],
    )
    .await;
    let e2 = exercise(pool, s1, "TypingPractice", "Hard").await;
    attempts(pool, e2, &[(20.0, false, h(1, 10))]).await;
    let e3 = exercise(pool, s2, "WordOrder", "Easy").await;
    attempts(pool, e3, &[(50.0, false, h(0, 12))]).await;
    let e4 = exercise(pool, s2, "TypingPractice", "Hard").await;
    attempts(pool, e4, &[(30.0, false, h(0, 13))]).await;

    card(pool, s1, h(0, 8), None).await;
    card(pool, s1, h(0, 9), Some(h(1, 9))).await;
    card(pool, s2, h(1, 8), None).await;

    let session = Uuid::new_v4();
    sqlx::query(
        "INSERT INTO read_model.tutor_sessions (session_id, student_id, kind, created_at,
             updated_at)
         VALUES ($1, $2, 'default', $3, $3)",
    )
    .bind(session)
    .bind(s1)
    .bind(h(0, 14))
    .execute(pool)
    .await
    .unwrap();
    // One student message in two parts, a reply, and another message the next day.
    tutor_message(pool, session, 1, 0, "student", h(0, 14)).await;
    tutor_message(pool, session, 1, 1, "student", h(0, 14)).await;
    tutor_message(pool, session, 2, 0, "assistant", h(0, 14)).await;
    tutor_message(pool, session, 3, 0, "student", h(1, 14)).await;

    unlock(pool, s1, "word_cards_1", "WordCards", h(0, 8)).await;
    unlock(pool, s2, "word_cards_1", "WordCards", h(0, 20)).await;
    unlock(pool, s1, "word_order_1", "WordOrder", h(1, 8)).await;

    // AI: three completed (100, 200, 300 ms), one failed, one pending without a model.
    for (i, latency) in [Some(100_i64), Some(200), Some(300), None]
        .into_iter()
        .enumerate()
    {
        let completed = latency.is_some();
        sqlx::query(
            "INSERT INTO read_model.ai_requests (request_id, session_id, student_id, kind,
                 requested_at, completed_at, failed_at, model, prompt_tokens, completion_tokens,
                 latency_ms, failure)
             VALUES (gen_random_uuid(), $1, $2, 'reply', $3, $4, $5, 'gpt-x', $6, $7, $8, $9)",
        )
        .bind(session)
        .bind(if i == 0 { s2 } else { s1 })
        .bind(h(0, 14))
        .bind(completed.then_some(h(0, 15)))
        .bind((!completed).then_some(h(0, 15)))
        .bind(completed.then_some(10_i32))
        .bind(completed.then_some(5_i32))
        .bind(latency)
        .bind((!completed).then_some("timeout"))
        .execute(pool)
        .await
        .unwrap();
    }
    sqlx::query(
        "INSERT INTO read_model.ai_requests (request_id, session_id, student_id, kind,
             requested_at)
         VALUES (gen_random_uuid(), $1, $2, 'reply', $3)",
    )
    .bind(session)
    .bind(s1)
    .bind(h(0, 16))
    .execute(pool)
    .await
    .unwrap();
    // Content generation: the teacher's sentences (completed) and a student's word explanation
    // (failed), on another model.
    sqlx::query(
        "INSERT INTO read_model.ai_generations (request_id, requester_id, task, requested_at,
             completed_at, failed_at, model, prompt_tokens, completion_tokens, latency_ms, failure)
         VALUES (gen_random_uuid(), $1, 'sentences', $3, $3, NULL, 'gen-y', 40, 60, 1000, NULL),
                (gen_random_uuid(), $2, 'word_explanation', $3, NULL, $3, 'gen-y', NULL, NULL,
                 500, 'model refused')",
    )
    .bind(teacher)
    .bind(s2)
    .bind(h(0, 17))
    .execute(pool)
    .await
    .unwrap();

    Seeded { s1, s2, class }
}

#[tokio::test]
async fn daily_activity_views_add_up() {
    let db = TestDatabase::new().await;
    let seeded = seed_activity(&db.pool).await;
    let analytics = Analytics::new(db.pool.clone());

    let s1 = analytics
        .student_daily_activity(Some(seeded.s1), date(0), date(5))
        .await
        .unwrap();
    let rows: Vec<_> = s1
        .iter()
        .map(|r| {
            (
                r.day,
                r.attempts,
                r.successes,
                r.accuracy_avg,
                r.word_cards_added,
                r.tutor_messages,
            )
        })
        .collect();
    assert_eq!(
        rows,
        vec![
            (date(0), 2, 1, Some(70.0), 2, 1),
            (date(1), 1, 0, Some(20.0), 0, 1),
        ]
    );
    let s2 = analytics
        .student_daily_activity(Some(seeded.s2), date(0), date(5))
        .await
        .unwrap();
    let rows: Vec<_> = s2
        .iter()
        .map(|r| {
            (
                r.day,
                r.attempts,
                r.successes,
                r.accuracy_avg,
                r.word_cards_added,
                r.tutor_messages,
            )
        })
        .collect();
    assert_eq!(
        rows,
        vec![
            (date(0), 2, 0, Some(40.0), 0, 0),
            (date(1), 0, 0, None, 1, 0)
        ]
    );
    assert!(analytics
        .student_daily_activity(None, date(2), date(9))
        .await
        .unwrap()
        .is_empty());
    // Everyone on day 0: both students and the teacher.
    assert_eq!(
        analytics
            .student_daily_activity(None, date(0), date(0))
            .await
            .unwrap()
            .len(),
        3
    );

    let class = analytics
        .class_daily_activity(seeded.class, date(0), date(5))
        .await
        .unwrap();
    let rows: Vec<_> = class
        .iter()
        .map(|r| {
            (
                r.day,
                r.active_students,
                r.attempts,
                r.successes,
                r.accuracy_avg,
                r.word_cards_added,
                r.tutor_messages,
            )
        })
        .collect();
    assert_eq!(
        rows,
        vec![
            (date(0), 2, 4, 1, Some(55.0), 2, 1),
            (date(1), 2, 1, 0, Some(20.0), 1, 1),
        ],
        "the teacher's own practice is not the class's"
    );
}

#[tokio::test]
async fn trend_mistake_achievement_ai_and_registration_views_add_up() {
    let db = TestDatabase::new().await;
    seed_activity(&db.pool).await;
    let analytics = Analytics::new(db.pool.clone());

    let trends = analytics.accuracy_trends(date(0), date(1)).await.unwrap();
    let rows: Vec<_> = trends
        .iter()
        .map(|t| {
            (
                t.day,
                t.game_type,
                t.difficulty,
                t.attempts,
                t.successes,
                t.success_rate,
                t.accuracy_avg,
                t.students,
            )
        })
        .collect();
    assert_eq!(
        rows,
        vec![
            (
                date(0),
                GameType::TypingPractice,
                Difficulty::Hard,
                1,
                0,
                0.0,
                30.0,
                1
            ),
            // s1 40 + 100, s2 50, the teacher 100.
            (
                date(0),
                GameType::WordOrder,
                Difficulty::Easy,
                4,
                2,
                0.5,
                72.5,
                3
            ),
            (
                date(1),
                GameType::TypingPractice,
                Difficulty::Hard,
                1,
                0,
                0.0,
                20.0,
                1
            ),
        ]
    );

    let patterns = analytics.mistake_patterns().await.unwrap();
    let rows: Vec<_> = patterns
        .iter()
        .map(|p| {
            (
                p.game_type,
                p.difficulty,
                p.uncleared_failed_attempts,
                p.exercises_affected,
                p.students_affected,
            )
        })
        .collect();
    assert_eq!(
        rows,
        vec![
            (GameType::TypingPractice, Difficulty::Hard, 2, 2, 2),
            // s1's failed WordOrder attempt was corrected; only s2's is left.
            (GameType::WordOrder, Difficulty::Easy, 1, 1, 1),
        ]
    );
    assert_eq!(patterns[0].accuracy_avg, 25.0);

    let achievements = analytics
        .achievements_daily(date(0), date(9))
        .await
        .unwrap();
    let rows: Vec<_> = achievements
        .iter()
        .map(|a| {
            (
                a.day,
                a.achievement_key.as_str(),
                a.feature.as_str(),
                a.unlocked,
            )
        })
        .collect();
    assert_eq!(
        rows,
        vec![
            (date(0), "word_cards_1", "WordCards", 2),
            (date(1), "word_order_1", "WordOrder", 1),
        ]
    );

    let ai = analytics.ai_usage_daily(date(0), date(0)).await.unwrap();
    assert_eq!(
        ai.len(),
        3,
        "gpt-x (tutor), unknown (pending), gen-y (generation)"
    );
    let generation = ai.iter().find(|r| r.model == "gen-y").unwrap();
    assert_eq!(
        (generation.requests, generation.completed, generation.failed),
        (2, 1, 1)
    );
    assert_eq!(
        (generation.prompt_tokens, generation.completion_tokens),
        (40, 60)
    );
    assert_eq!(generation.avg_latency_ms, Some(750.0));
    assert_eq!(
        generation.students, 2,
        "the teacher and the student who asked"
    );
    let by_feature: Vec<(String, String, i64, i64)> = sqlx::query_as(
        "SELECT feature, model, requests, completed FROM analytics.ai_usage_by_feature_daily
          ORDER BY feature, model",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert_eq!(
        by_feature,
        vec![
            ("sentences".into(), "gen-y".into(), 1, 1),
            ("tutor_reply".into(), "gpt-x".into(), 4, 3),
            ("tutor_reply".into(), "unknown".into(), 1, 0),
            ("word_explanation".into(), "gen-y".into(), 1, 0),
        ]
    );
    let gpt = ai.iter().find(|r| r.model == "gpt-x").unwrap();
    assert_eq!(
        (gpt.requests, gpt.completed, gpt.failed, gpt.pending),
        (4, 3, 1, 0)
    );
    assert_eq!((gpt.prompt_tokens, gpt.completion_tokens), (30, 15));
    assert_eq!(gpt.avg_latency_ms, Some(200.0));
    assert_eq!(gpt.p95_latency_ms, Some(290.0));
    assert_eq!(gpt.students, 2);
    let unknown = ai.iter().find(|r| r.model == "unknown").unwrap();
    assert_eq!((unknown.requests, unknown.pending), (1, 1));
    assert_eq!(unknown.avg_latency_ms, None);

    let registrations = analytics
        .registrations_daily(date(0), date(0))
        .await
        .unwrap();
    let rows: Vec<_> = registrations
        .iter()
        .map(|r| (r.role.as_str(), r.registrations))
        .collect();
    assert_eq!(rows, vec![("Student", 2), ("Teacher", 1)]);
}

#[tokio::test]
async fn the_analytics_role_reads_the_views_and_nothing_else() {
    let db = TestDatabase::new().await;
    seed_activity(&db.pool).await;
    let views: Vec<String> = sqlx::query_scalar(
        "SELECT table_name::text FROM information_schema.views WHERE table_schema = 'analytics'
         ORDER BY 1",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert!(views.len() >= 11, "{views:?}");
    for documented in sqlx::query_scalar::<_, Option<String>>(
        "SELECT obj_description(c.oid, 'pg_class') FROM pg_class c
         JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE n.nspname = 'analytics' AND c.relkind = 'v'",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap()
    {
        assert!(
            documented.is_some_and(|d| !d.is_empty()),
            "every view has a comment"
        );
    }
    let undocumented_columns: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_attribute a
         JOIN pg_class c ON c.oid = a.attrelid
         JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE n.nspname = 'analytics' AND c.relkind = 'v' AND a.attnum > 0
           AND col_description(c.oid, a.attnum) IS NULL",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(undocumented_columns, 0, "every view column has a comment");

    let mut conn = db.pool.acquire().await.unwrap();
    {
        let mut tx = conn.begin().await.unwrap();
        sqlx::query("SET ROLE teachin_analytics")
            .execute(&mut *tx)
            .await
            .unwrap();
        for view in &views {
            let rows: i64 = sqlx::query_scalar(&format!("SELECT count(*) FROM analytics.{view}"))
                .fetch_one(&mut *tx)
                .await
                .unwrap_or_else(|e| panic!("the role can read analytics.{view}: {e}"));
            assert!(
                rows > 0,
                "analytics.{view} has rows for the seeded activity"
            );
        }
        let seen: i64 =
            sqlx::query_scalar("SELECT sum(attempts)::int8 FROM analytics.student_daily_activity")
                .fetch_one(&mut *tx)
                .await
                .unwrap();
        assert_eq!(seen, 6);
        sqlx::query("RESET ROLE").execute(&mut *tx).await.unwrap();
        tx.commit().await.unwrap();
    }
    for forbidden in [
        "SELECT count(*) FROM read_model.users",
        "SELECT count(*) FROM read_model.attempts",
        "SELECT count(*) FROM public.events",
        "SELECT count(*) FROM public.personal_data_keys",
    ] {
        let mut tx = conn.begin().await.unwrap();
        sqlx::query("SET ROLE teachin_analytics")
            .execute(&mut *tx)
            .await
            .unwrap();
        let error = sqlx::query_scalar::<_, i64>(forbidden)
            .fetch_one(&mut *tx)
            .await
            .expect_err(forbidden);
        let code = error
            .as_database_error()
            .and_then(|e| e.code())
            .map(|c| c.to_string());
        assert_eq!(code.as_deref(), Some("42501"), "{forbidden}: {error}");
        tx.rollback().await.unwrap();
        sqlx::query("RESET ROLE").execute(&mut *conn).await.unwrap();
    }
    let back: String = sqlx::query_scalar("SELECT current_user::text")
        .fetch_one(&mut *conn)
        .await
        .unwrap();
    assert_ne!(back, "teachin_analytics");

    // A rebuild replaces read-model tables; the views must not pin them.
    let mut tx = conn.begin().await.unwrap();
    sqlx::query("CREATE TABLE public.attempts_rebuilt (LIKE read_model.attempts INCLUDING ALL)")
        .execute(&mut *tx)
        .await
        .unwrap();
    sqlx::query("DROP TABLE read_model.attempts")
        .execute(&mut *tx)
        .await
        .unwrap();
    sqlx::query("ALTER TABLE public.attempts_rebuilt SET SCHEMA read_model")
        .execute(&mut *tx)
        .await
        .unwrap();
    sqlx::query("ALTER TABLE read_model.attempts_rebuilt RENAME TO attempts")
        .execute(&mut *tx)
        .await
        .unwrap();
    let attempts: i64 = sqlx::query_scalar("SELECT count(*) FROM analytics.practice_attempts")
        .fetch_one(&mut *tx)
        .await
        .unwrap();
    assert_eq!(attempts, 0, "the views read the replacement table");
    tx.rollback().await.unwrap();
}

#[tokio::test]
async fn period_summaries_of_one_student() {
    let db = TestDatabase::new().await;
    let pool = &db.pool;
    let student = user(pool, "Student").await;
    let other = user(pool, "Student").await;
    let h = |d: i64, hour: i64| day(d) + Duration::hours(hour);
    let e1 = exercise(pool, student, "WordOrder", "Easy").await;
    attempts(
        pool,
        e1,
        &[(40.0, false, h(0, 10)), (100.0, true, h(0, 11))],
    )
    .await;
    let e2 = exercise(pool, student, "TypingPractice", "Hard").await;
    let e2_attempts = attempts(pool, e2, &[(20.0, false, h(1, 9))]).await;
    let e3 = exercise(pool, student, "WordOrder", "Medium").await;
    let e3_attempts = attempts(
        pool,
        e3,
        &[(10.0, false, h(1, 10)), (30.0, false, h(1, 11))],
    )
    .await;
    // Outside the period, and someone else's.
    let e4 = exercise(pool, student, "SpeakingPractice", "Easy").await;
    attempts(pool, e4, &[(0.0, false, h(9, 10))]).await;
    let e5 = exercise(pool, other, "WordOrder", "Easy").await;
    attempts(pool, e5, &[(0.0, false, h(0, 10))]).await;

    let c0 = card(pool, student, h(-3, 0), Some(h(0, 12))).await;
    let c1 = card(pool, student, h(0, 13), None).await;
    let c2 = card(pool, student, h(1, 13), Some(h(1, 14))).await;
    card(pool, student, h(9, 0), Some(h(9, 1))).await;
    card(pool, other, h(0, 13), Some(h(0, 14))).await;

    unlock(pool, student, "word_cards_1", "WordCards", h(0, 13)).await;
    unlock(pool, student, "word_order_1", "WordOrder", h(1, 11)).await;
    unlock(pool, student, "word_cards_3", "WordCards", h(9, 0)).await;
    unlock(pool, other, "word_cards_1", "WordCards", h(0, 13)).await;

    let analytics = Analytics::new(pool.clone());
    let period = Period {
        start_date: day(0),
        end_date: day(2) - Duration::seconds(1),
    };

    let overview = analytics.overview(student, period).await.unwrap();
    assert_eq!(overview.period, period);
    let o = &overview.summary;
    assert_eq!(
        (
            o.total_attempts,
            o.words_learned,
            o.achievements_unlocked,
            o.practice_days
        ),
        (5, 2, 2, 2)
    );

    let practice = analytics.game_practice(student, period).await.unwrap();
    assert_eq!(practice.summary.total_attempts, 5);
    assert_eq!(practice.summary.success_rate, 0.2);
    assert_eq!(practice.summary.average_accuracy, 40.0);
    let by_game: Vec<_> = practice
        .by_game_type
        .iter()
        .map(|g| {
            (
                g.game_type,
                g.attempts,
                g.success_rate,
                g.average_accuracy,
                g.mistakes_count,
            )
        })
        .collect();
    assert_eq!(
        by_game,
        vec![
            (GameType::TypingPractice, 1, 0.0, 20.0, 1),
            (GameType::WordOrder, 4, 0.25, 45.0, 3),
        ]
    );
    let daily: Vec<_> = practice
        .daily
        .iter()
        .map(|d| (d.date, d.attempts, d.success_rate))
        .collect();
    assert_eq!(daily, vec![(date(0), 2, 0.5), (date(1), 3, 0.0)]);
    let m = &practice.mistakes.summary;
    assert_eq!(
        (
            m.total_uncorrected_mistakes,
            m.uncorrected_exercises,
            m.retried_but_not_corrected
        ),
        (3, 2, 1)
    );
    let patterns: Vec<_> = practice
        .mistakes
        .patterns
        .iter()
        .map(|p| (p.game_type, p.difficulty, p.count))
        .collect();
    assert_eq!(
        patterns,
        vec![
            (GameType::WordOrder, Difficulty::Medium, 2),
            (GameType::TypingPractice, Difficulty::Hard, 1),
        ]
    );
    let examples: Vec<Uuid> = practice
        .mistakes
        .uncorrected_examples
        .iter()
        .map(|e| e.attempt_id)
        .collect();
    assert_eq!(
        examples,
        vec![e3_attempts[1], e3_attempts[0], e2_attempts[0]]
    );
    let newest = &practice.mistakes.uncorrected_examples[0];
    assert_eq!(newest.correct_answer, vec!["a", "b"]);
    assert_eq!(newest.given_answer, vec!["b", "x1"]);
    assert_eq!((newest.attempt_number, newest.accuracy), (2, 30.0));

    let cards = analytics.word_cards(student, period).await.unwrap();
    let s = &cards.summary;
    assert_eq!(
        (
            s.total_cards,
            s.new_in_period,
            s.learned_in_period,
            s.total_learned
        ),
        (3, 2, 2, 2),
        "totals are real counts at the end of the period"
    );
    assert_eq!(
        cards
            .recent_learned
            .iter()
            .map(|c| c.card_id)
            .collect::<Vec<_>>(),
        vec![c2, c0]
    );
    assert_eq!(cards.recent_learned[1].timestamp, h(0, 12));
    assert_eq!(
        cards
            .new_cards
            .iter()
            .map(|c| c.card_id)
            .collect::<Vec<_>>(),
        vec![c2, c1]
    );

    let achievements = analytics.achievements(student, period).await.unwrap();
    let unlocked: Vec<_> = achievements
        .unlocked_in_period
        .iter()
        .map(|a| (a.key.as_str(), a.name.as_str(), a.feature.as_str()))
        .collect();
    assert_eq!(
        unlocked,
        vec![
            ("word_cards_1", "First Word Card", "WordCards"),
            ("word_order_1", "First Sentence Built", "WordOrder"),
        ]
    );

    // An empty period is all zeros, not an error.
    let empty = Period {
        start_date: day(100),
        end_date: day(101),
    };
    let practice = analytics.game_practice(student, empty).await.unwrap();
    assert_eq!(practice.summary.total_attempts, 0);
    assert_eq!(practice.summary.success_rate, 0.0);
    assert!(practice.by_game_type.is_empty() && practice.daily.is_empty());
    let json = serde_json::to_value(&practice).unwrap();
    assert!(json["mistakes"]["uncorrectedExamples"]
        .as_array()
        .unwrap()
        .is_empty());
    assert!(json["byGameType"].is_array());
}

#[test]
fn period_rules_as_the_api_applies_them() {
    let now = day(30);
    assert_eq!(
        resolve_period(None, None, now),
        Period {
            start_date: day(23),
            end_date: now
        }
    );
    assert_eq!(
        resolve_period(Some(day(1)), Some(day(40)), now).end_date,
        now
    );
    assert_eq!(
        resolve_period(Some(day(20)), Some(day(10)), now),
        Period {
            start_date: day(3),
            end_date: day(10)
        }
    );
}
