//! The read-model queries, against rows inserted straight into `read_model.*` (the
//! projections that normally write them are tested on their own). One fresh database per test.

use chrono::{DateTime, Duration, TimeZone, Utc};
use serde_json::json;
use sqlx::PgPool;
use std::collections::HashSet;
use teachin_commands::testing::TestDatabase;
use teachin_domain::achievements::catalog;
use teachin_domain::actor::Role;
use teachin_domain::vocabulary::{Difficulty, GameType};
use teachin_projections::queries::{
    DateRange, Page, PageRequest, ReadModels, Recipients, DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE,
};
use uuid::Uuid;

fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 1, 10, 12, 0, 0).unwrap()
}

async fn user(
    pool: &PgPool,
    role: &str,
    first: &str,
    last: &str,
    registered_at: DateTime<Utc>,
) -> Uuid {
    let id = Uuid::new_v4();
    sqlx::query(
        "INSERT INTO read_model.users (user_id, role, first_name, last_name, email, password_hash,
             preferred_language, interests, registered_at, updated_at)
         VALUES ($1, $2, $3, $4, $5, 'secret-hash', 'en', '[\"music\"]', $6, $6)",
    )
    .bind(id)
    .bind(role)
    .bind(first)
    .bind(last)
    .bind(format!(
        "{}.{}@example.org",
        first.to_lowercase(),
        id.simple()
    ))
    .bind(registered_at)
    .execute(pool)
    .await
    .unwrap();
    id
}

async fn erase(pool: &PgPool, id: Uuid) {
    sqlx::query(
        "UPDATE read_model.users SET first_name = NULL, last_name = NULL, email = NULL,
             erased = true WHERE user_id = $1",
    )
    .bind(id)
    .execute(pool)
    .await
    .unwrap();
}

async fn assign(pool: &PgPool, teacher: Uuid, student: Uuid) {
    sqlx::query(
        "INSERT INTO read_model.teacher_students (teacher_id, student_id, assigned_at)
         VALUES ($1, $2, $3)",
    )
    .bind(teacher)
    .bind(student)
    .bind(t0())
    .execute(pool)
    .await
    .unwrap();
}

async fn classroom(pool: &PgPool, name: &str) -> Uuid {
    let id = Uuid::new_v4();
    sqlx::query(
        "INSERT INTO read_model.classrooms (classroom_id, name, join_code, created_at)
         VALUES ($1, $2, $3, $4)",
    )
    .bind(id)
    .bind(name)
    .bind(id.simple().to_string())
    .bind(t0())
    .execute(pool)
    .await
    .unwrap();
    id
}

async fn member(pool: &PgPool, class: Uuid, user: Uuid, role: &str) {
    sqlx::query(
        "INSERT INTO read_model.classroom_members (classroom_id, user_id, role, added_at)
         VALUES ($1, $2, $3, $4)",
    )
    .bind(class)
    .bind(user)
    .bind(role)
    .bind(t0())
    .execute(pool)
    .await
    .unwrap();
}

async fn invite(pool: &PgPool, class: Uuid, student: Uuid, invited_by: Uuid) {
    sqlx::query(
        "INSERT INTO read_model.classroom_invitations (classroom_id, student_id, invited_by, invited_at)
         VALUES ($1, $2, $3, $4)",
    )
    .bind(class)
    .bind(student)
    .bind(invited_by)
    .bind(t0())
    .execute(pool)
    .await
    .unwrap();
}

async fn exercise(
    pool: &PgPool,
    student: Uuid,
    game: &str,
    difficulty: &str,
    at: DateTime<Utc>,
) -> Uuid {
    let id = Uuid::new_v4();
    sqlx::query(
        "INSERT INTO read_model.exercises (exercise_id, student_id, game_type, difficulty, nikud,
             correct_answer, created_at)
         VALUES ($1, $2, $3, $4, false, $5, $6)",
    )
    .bind(id)
    .bind(student)
    .bind(game)
    .bind(difficulty)
    .bind(json!(["שלום", "עולם"]))
    .bind(at)
    .execute(pool)
    .await
    .unwrap();
    id
}

struct Attempt {
    number: i32,
    correct: bool,
    accuracy: f64,
    at: DateTime<Utc>,
}

/// Inserts the attempts of one exercise, clearing failed ones that a later success corrects
/// (as the practice projection does).
async fn attempts(pool: &PgPool, exercise: Uuid, list: &[Attempt]) -> Vec<Uuid> {
    let (student, game, difficulty): (Uuid, String, String) = sqlx::query_as(
        "SELECT student_id, game_type, difficulty FROM read_model.exercises WHERE exercise_id = $1",
    )
    .bind(exercise)
    .fetch_one(pool)
    .await
    .unwrap();
    let solved_at = list.iter().find(|a| a.correct).map(|a| a.at);
    let mut ids = Vec::new();
    for a in list {
        let id = Uuid::new_v4();
        let cleared = (!a.correct).then_some(solved_at).flatten();
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
        .bind(a.number)
        .bind(json!(["עולם", format!("try{}", a.number)]))
        .bind(a.accuracy)
        .bind(a.correct)
        .bind(a.at)
        .bind(cleared)
        .execute(pool)
        .await
        .unwrap();
        ids.push(id);
    }
    sqlx::query("UPDATE read_model.exercises SET solved_at = $2 WHERE exercise_id = $1")
        .bind(exercise)
        .bind(solved_at)
        .execute(pool)
        .await
        .unwrap();
    ids
}

fn ok(number: i32, at: DateTime<Utc>) -> Attempt {
    Attempt {
        number,
        correct: true,
        accuracy: 100.0,
        at,
    }
}

fn fail(number: i32, accuracy: f64, at: DateTime<Utc>) -> Attempt {
    Attempt {
        number,
        correct: false,
        accuracy,
        at,
    }
}

async fn summary_row(
    pool: &PgPool,
    student: Uuid,
    game: &str,
    difficulty: &str,
    counts: (i32, i32),
    last: DateTime<Utc>,
) {
    sqlx::query(
        "INSERT INTO read_model.practice_summary (student_id, game_type, difficulty, attempts,
             successes, failures, last_attempt_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(student)
    .bind(game)
    .bind(difficulty)
    .bind(counts.0 + counts.1)
    .bind(counts.0)
    .bind(counts.1)
    .bind(last)
    .execute(pool)
    .await
    .unwrap();
}

/// Walks every page of size `size` and returns the items in order, checking the paging
/// fields on the way.
async fn walk<T, F, Fut>(size: i64, mut fetch: F) -> Vec<T>
where
    F: FnMut(PageRequest) -> Fut,
    Fut: std::future::Future<Output = Page<T>>,
{
    let mut items = Vec::new();
    let mut request = PageRequest::first(size);
    loop {
        let page = fetch(request.clone()).await;
        assert!(page.items.len() as i64 <= size);
        let total = page.total_count;
        let more = page.has_next_page;
        let cursor = page.end_cursor.clone();
        items.extend(page.items);
        if !more {
            assert_eq!(items.len() as i64, total, "every row is seen exactly once");
            return items;
        }
        let cursor = cursor.expect("a page with a next page has an end cursor");
        request = PageRequest::new(Some(size), Some(&cursor)).expect("our own cursor decodes");
    }
}

#[tokio::test]
async fn users_are_listed_newest_first_by_cursor_pages() {
    let db = TestDatabase::new().await;
    let models = ReadModels::new(db.pool.clone());
    let mut expected = Vec::new();
    for i in 0..23 {
        // Pairs share a registration time: the id breaks the tie.
        let at = t0() + Duration::minutes(i / 2);
        let role = if i % 5 == 0 { "Teacher" } else { "Student" };
        expected.push((at, user(&db.pool, role, &format!("F{i}"), "L", at).await));
    }
    expected.sort_by(|a, b| b.cmp(a));

    let seen = walk(4, |page| {
        let models = models.clone();
        async move { models.users(None, &page).await.unwrap() }
    })
    .await;
    let ids: Vec<Uuid> = seen.iter().map(|u| u.user_id).collect();
    assert_eq!(ids, expected.iter().map(|(_, id)| *id).collect::<Vec<_>>());

    let teachers = models
        .users(Some(Role::Teacher), &PageRequest::default())
        .await
        .unwrap();
    assert_eq!(teachers.total_count, 5);
    assert!(teachers.items.iter().all(|u| u.role == Role::Teacher));

    let one = models.user(ids[0]).await.unwrap().unwrap();
    assert_eq!(one.interests, vec!["music".to_string()]);
    assert_eq!(one.preferred_language, "en");
    assert!(models.user(Uuid::new_v4()).await.unwrap().is_none());
    let json = serde_json::to_value(&one).unwrap();
    assert!(json.get("passwordHash").is_none() && json.get("password_hash").is_none());
    assert!(json.get("firstName").is_some());

    let some = models.users_by_ids(&ids[..3]).await.unwrap();
    assert_eq!(some.len(), 3);
}

#[tokio::test]
async fn page_sizes_are_capped_and_defaulted_and_cursors_checked() {
    let db = TestDatabase::new().await;
    sqlx::query(
        "INSERT INTO read_model.users (user_id, role, preferred_language, registered_at, updated_at)
         SELECT gen_random_uuid(), 'Student', 'en', $1 + n * interval '1 second', $1
         FROM generate_series(1, 105) AS n",
    )
    .bind(t0())
    .execute(&db.pool)
    .await
    .unwrap();
    let models = ReadModels::new(db.pool.clone());

    let big = PageRequest::new(Some(1000), None).unwrap();
    assert_eq!(big.size(), MAX_PAGE_SIZE);
    let page = models.users(None, &big).await.unwrap();
    assert_eq!(page.items.len(), 100);
    assert_eq!(page.total_count, 105);
    assert!(page.has_next_page);
    let rest = PageRequest::new(Some(1000), page.end_cursor.as_deref()).unwrap();
    let page = models.users(None, &rest).await.unwrap();
    assert_eq!(page.items.len(), 5);
    assert!(!page.has_next_page);

    for first in [None, Some(0), Some(-3)] {
        let request = PageRequest::new(first, None).unwrap();
        assert_eq!(request.size(), DEFAULT_PAGE_SIZE);
        let page = models.users(None, &request).await.unwrap();
        assert_eq!(page.items.len(), 10);
    }

    assert!(PageRequest::new(Some(5), Some("bm90IGEgY3Vyc29y")).is_err());
    assert!(PageRequest::new(Some(5), Some("***")).is_err());

    let empty = ReadModels::new(db.pool.clone())
        .students_of(Uuid::new_v4(), &PageRequest::default())
        .await
        .unwrap();
    assert_eq!(empty.total_count, 0);
    assert!(!empty.has_next_page);
    assert!(empty.end_cursor.is_none());
}

#[tokio::test]
async fn teachers_students_and_relation_checks() {
    let db = TestDatabase::new().await;
    let pool = &db.pool;
    let models = ReadModels::new(pool.clone());
    let teacher = user(pool, "Teacher", "Tina", "Teach", t0()).await;
    let other_teacher = user(pool, "Teacher", "Otto", "Teach", t0()).await;
    let assigned = user(pool, "Student", "Sam", "One", t0()).await;
    let classmate = user(pool, "Student", "Cleo", "Two", t0() + Duration::hours(1)).await;
    let stranger = user(pool, "Student", "Sid", "Three", t0()).await;
    assign(pool, teacher, assigned).await;
    assign(pool, other_teacher, assigned).await;

    // The teacher teaches `classmate` through a class...
    let class = classroom(pool, "Hebrew 1").await;
    member(pool, class, teacher, "Teacher").await;
    member(pool, class, classmate, "Student").await;
    // ...but a class where `other_teacher` is a plain member gives no teaching relation.
    let club = classroom(pool, "Club").await;
    member(pool, club, other_teacher, "Student").await;
    member(pool, club, stranger, "Student").await;

    // A student the teacher invited who has not accepted is not theirs; nor is an admin or
    // another teacher who was put in the class (as the original allowed).
    let invitee = user(pool, "Student", "Ivy", "Four", t0()).await;
    invite(pool, class, invitee, teacher).await;
    let admin = user(pool, "Admin", "Ada", "Min", t0()).await;
    member(pool, class, admin, "Admin").await;
    member(pool, class, other_teacher, "Teacher").await;
    assert!(!models.is_teacher_of(teacher, invitee).await.unwrap());
    assert!(!models.is_teacher_of(teacher, admin).await.unwrap());
    assert!(!models.is_teacher_of(teacher, other_teacher).await.unwrap());
    assert!(models
        .class_invitations_of(invitee)
        .await
        .unwrap()
        .iter()
        .any(|i| i.class_id == class
            && i.invited_by == Some(teacher)
            && i.invited_by_name == "Tina Teach"));
    assert!(models
        .class_invitations_of(classmate)
        .await
        .unwrap()
        .is_empty());

    assert!(models.is_teacher_of(teacher, assigned).await.unwrap());
    assert!(models.is_teacher_of(teacher, classmate).await.unwrap());
    assert!(!models.is_teacher_of(teacher, stranger).await.unwrap());
    assert!(!models.is_teacher_of(other_teacher, stranger).await.unwrap());
    assert!(!models.is_teacher_of(classmate, teacher).await.unwrap());
    assert!(!models.is_teacher_of(teacher, teacher).await.unwrap());

    assert!(models.shares_class(teacher, classmate).await.unwrap());
    assert!(models.shares_class(classmate, teacher).await.unwrap());
    assert!(models.shares_class(other_teacher, stranger).await.unwrap());
    assert!(!models.shares_class(teacher, stranger).await.unwrap());
    assert!(!models.shares_class(teacher, invitee).await.unwrap());
    assert!(!models.shares_class(teacher, assigned).await.unwrap());

    let students = models
        .students_of(teacher, &PageRequest::default())
        .await
        .unwrap();
    assert_eq!(students.total_count, 1);
    assert_eq!(students.items[0].user_id, assigned);
    assert_eq!(
        models.student_ids_of(teacher).await.unwrap(),
        vec![assigned]
    );
    let teachers: HashSet<Uuid> = models
        .teachers_of(assigned)
        .await
        .unwrap()
        .into_iter()
        .map(|u| u.user_id)
        .collect();
    assert_eq!(teachers, HashSet::from([teacher, other_teacher]));
}

#[tokio::test]
async fn recipients_match_exact_names_ignoring_case_and_skip_erased_users() {
    let db = TestDatabase::new().await;
    let pool = &db.pool;
    let models = ReadModels::new(pool.clone());
    let dana = user(pool, "Student", "Dana", "Levi", t0()).await;
    let dan = user(pool, "Student", "Dan", "Cohen", t0()).await;
    let levi = user(pool, "Teacher", "Noa", "Levi", t0()).await;
    let gone = user(pool, "Student", "Dana", "Levi", t0()).await;
    erase(pool, gone).await;

    let ids = |list: Vec<teachin_projections::queries::Recipient>| -> HashSet<Uuid> {
        list.into_iter().map(|r| r.user_id).collect()
    };
    assert_eq!(
        ids(models
            .search_recipients("dana", Recipients::Everyone)
            .await
            .unwrap()),
        HashSet::from([dana])
    );
    assert_eq!(
        ids(models
            .search_recipients("LEVI", Recipients::Everyone)
            .await
            .unwrap()),
        HashSet::from([dana, levi])
    );
    assert_eq!(
        ids(models
            .search_recipients("  dana   levi ", Recipients::Everyone)
            .await
            .unwrap()),
        HashSet::from([dana])
    );
    assert_eq!(
        ids(models
            .search_recipients("Dan", Recipients::Everyone)
            .await
            .unwrap()),
        HashSet::from([dan])
    );
    assert!(models
        .search_recipients("Da", Recipients::Everyone)
        .await
        .unwrap()
        .is_empty());
    assert!(models
        .search_recipients("Dana Cohen", Recipients::Everyone)
        .await
        .unwrap()
        .is_empty());
    assert!(models
        .search_recipients("   ", Recipients::Everyone)
        .await
        .unwrap()
        .is_empty());
    let found = models
        .search_recipients("noa levi", Recipients::Everyone)
        .await
        .unwrap();
    assert_eq!(found[0].role, Role::Teacher);
    assert!(found[0].email.contains('@'));

    // A teacher looks only among their own students: `dana` through a class she joined,
    // `dan` assigned; never a stranger, a student only invited, nor a fellow teacher.
    let teacher = user(pool, "Teacher", "Tina", "Teach", t0()).await;
    let class = classroom(pool, "Hebrew 1").await;
    member(pool, class, teacher, "Teacher").await;
    member(pool, class, dana, "Student").await;
    member(pool, class, levi, "Teacher").await;
    assign(pool, teacher, dan).await;
    let invited = user(pool, "Student", "Dana", "Invited", t0()).await;
    invite(pool, class, invited, teacher).await;
    let _stranger = user(pool, "Student", "Dana", "Stranger", t0()).await;
    let mine = |name: &'static str| {
        let models = models.clone();
        async move {
            ids(models
                .search_recipients(name, Recipients::StudentsOf(teacher))
                .await
                .unwrap())
        }
    };
    assert_eq!(mine("dana").await, HashSet::from([dana]));
    assert_eq!(mine("Dan").await, HashSet::from([dan]));
    assert!(mine("levi").await.contains(&dana));
    assert!(!mine("levi").await.contains(&levi));
    assert!(mine("Stranger").await.is_empty());
    assert_eq!(
        ids(models
            .search_recipients("Stranger", Recipients::Everyone)
            .await
            .unwrap())
        .len(),
        1
    );
}

#[tokio::test]
async fn classes_come_with_named_members() {
    let db = TestDatabase::new().await;
    let pool = &db.pool;
    let models = ReadModels::new(pool.clone());
    let teacher = user(pool, "Teacher", "Tina", "Teach", t0()).await;
    let ann = user(pool, "Student", "Ann", "Able", t0()).await;
    let bob = user(pool, "Student", "Bob", "Baker", t0()).await;
    let gone = user(pool, "Student", "Gone", "Away", t0()).await;
    erase(pool, gone).await;
    let b_class = classroom(pool, "beta").await;
    let a_class = classroom(pool, "Alpha").await;
    for (who, role) in [
        (bob, "Student"),
        (teacher, "Teacher"),
        (ann, "Student"),
        (gone, "Student"),
    ] {
        member(pool, a_class, who, role).await;
    }
    member(pool, b_class, bob, "Student").await;

    let class = models.class(a_class).await.unwrap().unwrap();
    assert_eq!(class.name, "Alpha");
    let members: Vec<(String, Role)> = class
        .members
        .iter()
        .map(|m| (m.name.clone(), m.role))
        .collect();
    assert_eq!(
        members,
        vec![
            ("Tina Teach".to_string(), Role::Teacher),
            ("Ann Able".to_string(), Role::Student),
            ("Bob Baker".to_string(), Role::Student),
            (String::new(), Role::Student),
        ],
        "teachers first, then by name; an erased member has no name"
    );
    assert!(class
        .members
        .iter()
        .any(|m| m.member_id == gone && m.name.is_empty()));
    assert!(models.class(Uuid::new_v4()).await.unwrap().is_none());

    let all: Vec<String> = models
        .classes()
        .await
        .unwrap()
        .into_iter()
        .map(|c| c.name)
        .collect();
    assert_eq!(all, vec!["Alpha", "beta"]);
    let bobs: Vec<Uuid> = models
        .classes_of_member(bob)
        .await
        .unwrap()
        .into_iter()
        .map(|c| c.class_id)
        .collect();
    assert_eq!(bobs, vec![a_class, b_class]);
    let bob_view = &models.classes_of_member(bob).await.unwrap()[1];
    assert_eq!(
        bob_view.members.len(),
        1,
        "each class carries all and only its members"
    );
    assert!(models
        .classes_of_member(Uuid::new_v4())
        .await
        .unwrap()
        .is_empty());
}

#[tokio::test]
async fn tutor_sessions_messages_and_pending_requests() {
    let db = TestDatabase::new().await;
    let pool = &db.pool;
    let models = ReadModels::new(pool.clone());
    let student = user(pool, "Student", "Sam", "One", t0()).await;
    let (old, new) = (Uuid::new_v4(), Uuid::new_v4());
    for (session, kind, at) in [
        (old, "default", t0()),
        (new, "global", t0() + Duration::hours(2)),
    ] {
        sqlx::query(
            "INSERT INTO read_model.tutor_sessions (session_id, student_id, kind, title,
                 awaiting_reply, message_count, created_at, updated_at)
             VALUES ($1, $2, $3, 'chat', false, 3, $4, $4)",
        )
        .bind(session)
        .bind(student)
        .bind(kind)
        .bind(at)
        .execute(pool)
        .await
        .unwrap();
    }
    // Stored out of order on purpose.
    for (seq, part, role, text) in [
        (3_i64, 1_i16, "assistant", "world"),
        (1, 0, "student", "hi"),
        (3, 0, "assistant", "hello"),
        (2, 0, "context", "page"),
    ] {
        sqlx::query(
            "INSERT INTO read_model.tutor_messages (session_id, event_sequence, part, role, text,
                 created_at)
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(old)
        .bind(seq)
        .bind(part)
        .bind(role)
        .bind(text)
        .bind(t0() + Duration::seconds(seq))
        .execute(pool)
        .await
        .unwrap();
    }
    let pending = Uuid::new_v4();
    for (request, done) in [(pending, false), (Uuid::new_v4(), true)] {
        sqlx::query(
            "INSERT INTO read_model.ai_requests (request_id, session_id, student_id, kind,
                 requested_at, completed_at, model)
             VALUES ($1, $2, $3, 'reply', $4, $5, 'gpt')",
        )
        .bind(request)
        .bind(old)
        .bind(student)
        .bind(t0())
        .bind(done.then_some(t0() + Duration::seconds(3)))
        .execute(pool)
        .await
        .unwrap();
    }

    let sessions = models.tutor_sessions_of(student).await.unwrap();
    assert_eq!(
        sessions.iter().map(|s| s.session_id).collect::<Vec<_>>(),
        vec![new, old]
    );
    assert_eq!(sessions[0].kind, "global");

    let session = models.tutor_session(old).await.unwrap().unwrap();
    let order: Vec<(i64, i16)> = session
        .messages
        .iter()
        .map(|m| (m.event_sequence, m.part))
        .collect();
    assert_eq!(order, vec![(1, 0), (2, 0), (3, 0), (3, 1)]);
    assert_eq!(session.messages[2].text.as_deref(), Some("hello"));
    assert_eq!(session.pending_requests.len(), 1);
    assert_eq!(session.pending_requests[0].request_id, pending);
    assert!(models
        .tutor_session(Uuid::new_v4())
        .await
        .unwrap()
        .is_none());

    let all_pending = models.pending_ai_requests(None).await.unwrap();
    assert_eq!(
        all_pending.iter().map(|r| r.request_id).collect::<Vec<_>>(),
        vec![pending]
    );
    assert!(models
        .pending_ai_requests(Some(Uuid::new_v4()))
        .await
        .unwrap()
        .is_empty());
    assert_eq!(
        models
            .pending_ai_requests(Some(student))
            .await
            .unwrap()
            .len(),
        1
    );
    assert!(models.ai_request(pending).await.unwrap().is_some());
}

#[tokio::test]
async fn detailed_history_pages_newest_first_and_filters_by_date() {
    let db = TestDatabase::new().await;
    let pool = &db.pool;
    let models = ReadModels::new(pool.clone());
    let student = user(pool, "Student", "Sam", "One", t0()).await;
    let other = user(pool, "Student", "Oz", "Two", t0()).await;
    let mut expected = Vec::new();
    for day in 0..5 {
        let at = t0() + Duration::days(day);
        let ex = exercise(pool, student, "WordOrder", "Easy", at).await;
        // Two attempts at the very same instant: the id orders them.
        let ids = attempts(pool, ex, &[fail(1, 40.0, at), ok(2, at)]).await;
        for id in ids {
            expected.push((at, id));
        }
    }
    let theirs = exercise(pool, other, "TypingPractice", "Hard", t0()).await;
    attempts(pool, theirs, &[ok(1, t0())]).await;
    expected.sort_by(|a, b| b.cmp(a));

    let seen = walk(3, |page| {
        let models = models.clone();
        async move {
            models
                .practice_history(student, DateRange::all(), &page)
                .await
                .unwrap()
        }
    })
    .await;
    assert_eq!(
        seen.iter().map(|a| a.attempt_id).collect::<Vec<_>>(),
        expected.iter().map(|(_, id)| *id).collect::<Vec<_>>()
    );
    let first = &seen[0];
    assert_eq!(first.game_type, GameType::WordOrder);
    assert_eq!(first.difficulty, Difficulty::Easy);
    assert_eq!(first.correct_answer, vec!["שלום", "עולם"]);
    assert_eq!(first.given_answer.len(), 2);
    let failed = seen.iter().find(|a| !a.correct).unwrap();
    assert_eq!(failed.accuracy, 40.0);

    // Days 1..=3, inclusive bounds.
    let range = DateRange::between(t0() + Duration::days(1), t0() + Duration::days(3));
    let page = models
        .practice_history(student, range, &PageRequest::first(100))
        .await
        .unwrap();
    assert_eq!(page.total_count, 6);
    assert_eq!(page.items.len(), 6);
    assert!(page
        .items
        .iter()
        .all(|a| a.created_at >= range.from.unwrap() && a.created_at <= range.to.unwrap()));
    let from_only = DateRange::new(Some(t0() + Duration::days(4)), None);
    assert_eq!(
        models
            .practice_history(student, from_only, &PageRequest::default())
            .await
            .unwrap()
            .total_count,
        2
    );
}

#[tokio::test]
async fn summary_uses_the_maintained_table_or_counts_within_a_range() {
    let db = TestDatabase::new().await;
    let pool = &db.pool;
    let models = ReadModels::new(pool.clone());
    let student = user(pool, "Student", "Sam", "One", t0()).await;
    summary_row(pool, student, "WordOrder", "Easy", (7, 3), t0()).await;
    summary_row(pool, student, "TypingPractice", "Hard", (1, 0), t0()).await;
    let summary = models
        .practice_summary(student, DateRange::all())
        .await
        .unwrap();
    assert_eq!(summary.len(), 2);
    let word = summary
        .iter()
        .find(|r| r.game_type == GameType::WordOrder)
        .unwrap();
    assert_eq!((word.attempts, word.successes, word.failures), (10, 7, 3));

    let ex1 = exercise(pool, student, "SpeakingPractice", "Medium", t0()).await;
    attempts(
        pool,
        ex1,
        &[
            fail(1, 10.0, t0()),
            fail(2, 20.0, t0() + Duration::days(1)),
            ok(3, t0() + Duration::days(2)),
        ],
    )
    .await;
    let range = DateRange::between(t0() + Duration::hours(1), t0() + Duration::days(3));
    let ranged = models.practice_summary(student, range).await.unwrap();
    assert_eq!(ranged.len(), 1);
    let row = &ranged[0];
    assert_eq!(
        (row.game_type, row.difficulty),
        (GameType::SpeakingPractice, Difficulty::Medium)
    );
    assert_eq!((row.attempts, row.successes, row.failures), (2, 1, 1));
    assert_eq!(row.last_attempt_at, t0() + Duration::days(2));
}

#[tokio::test]
async fn mistakes_hide_corrected_exercises_and_page_and_filter() {
    let db = TestDatabase::new().await;
    let pool = &db.pool;
    let models = ReadModels::new(pool.clone());
    let student = user(pool, "Student", "Sam", "One", t0()).await;
    // Corrected on the second try: never a mistake.
    let corrected = exercise(pool, student, "WordOrder", "Easy", t0()).await;
    attempts(
        pool,
        corrected,
        &[fail(1, 30.0, t0()), ok(2, t0() + Duration::minutes(1))],
    )
    .await;
    // Only ever right: no mistakes.
    let right = exercise(pool, student, "WordOrder", "Easy", t0()).await;
    attempts(pool, right, &[ok(1, t0())]).await;
    // Never attempted: not a mistake either.
    exercise(pool, student, "WordOrder", "Easy", t0()).await;
    // Open mistakes, one per day.
    let mut open = Vec::new();
    for day in 0..4 {
        let at = t0() + Duration::days(day);
        let ex = exercise(pool, student, "TypingPractice", "Medium", at).await;
        let ids = attempts(
            pool,
            ex,
            &[fail(1, 50.0, at), fail(2, 60.0, at + Duration::hours(1))],
        )
        .await;
        open.push((ex, ids));
    }
    // Another student's open mistake.
    let other = user(pool, "Student", "Oz", "Two", t0()).await;
    let theirs = exercise(pool, other, "WordOrder", "Hard", t0()).await;
    attempts(pool, theirs, &[fail(1, 0.0, t0())]).await;

    let seen = walk(3, |page| {
        let models = models.clone();
        async move {
            models
                .mistakes(student, DateRange::all(), &page)
                .await
                .unwrap()
        }
    })
    .await;
    assert_eq!(
        seen.iter().map(|m| m.exercise_id).collect::<Vec<_>>(),
        open.iter().rev().map(|(ex, _)| *ex).collect::<Vec<_>>(),
        "only uncorrected exercises, newest first"
    );
    let newest = &seen[0];
    let newest_attempts = &open[3].1;
    assert_eq!(
        newest
            .mistakes
            .iter()
            .map(|m| m.attempt_id)
            .collect::<Vec<_>>(),
        *newest_attempts
    );
    assert_eq!(newest.last_attempt_id, newest_attempts[1]);
    assert_eq!(newest.mistakes[1].accuracy, 60.0);
    assert_eq!(newest.correct_answer, vec!["שלום", "עולם"]);
    assert_eq!(newest.game_type, GameType::TypingPractice);

    // A range that cuts day 1's exercise in half keeps only its attempts inside.
    let range = DateRange::between(
        t0() + Duration::days(1) + Duration::minutes(30),
        t0() + Duration::days(2),
    );
    let page = models
        .mistakes(student, range, &PageRequest::default())
        .await
        .unwrap();
    assert_eq!(page.total_count, 2);
    let ids: Vec<Uuid> = page.items.iter().map(|m| m.exercise_id).collect();
    assert_eq!(ids, vec![open[2].0, open[1].0]);
    assert_eq!(page.items[1].mistakes.len(), 1);
    assert_eq!(page.items[1].mistakes[0].attempt_id, open[1].1[1]);

    // Correcting an open one removes it.
    attempts(pool, open[0].0, &[]).await;
    sqlx::query(
        "INSERT INTO read_model.attempts (attempt_id, exercise_id, student_id, game_type,
             difficulty, attempt_number, accuracy, correct, created_at)
         VALUES (gen_random_uuid(), $1, $2, 'TypingPractice', 'Medium', 3, 100, true, $3)",
    )
    .bind(open[0].0)
    .bind(student)
    .bind(t0() + Duration::days(10))
    .execute(pool)
    .await
    .unwrap();
    let page = models
        .mistakes(student, DateRange::all(), &PageRequest::default())
        .await
        .unwrap();
    assert_eq!(page.total_count, 3);
    assert!(page.items.iter().all(|m| m.exercise_id != open[0].0));
}

#[tokio::test]
async fn all_history_has_names_and_can_be_restricted_to_some_students() {
    let db = TestDatabase::new().await;
    let pool = &db.pool;
    let models = ReadModels::new(pool.clone());
    let a = user(pool, "Student", "Ann", "Able", t0()).await;
    let b = user(pool, "Student", "Bob", "Baker", t0()).await;
    let c = user(pool, "Student", "Cy", "Cole", t0()).await;
    let mut rows = 0;
    for (student, n) in [(a, 0), (b, 1), (c, 2)] {
        for game in ["WordOrder", "TypingPractice", "SpeakingPractice"] {
            for difficulty in ["Easy", "Hard"] {
                // Many rows share a timestamp: the key's tie-breakers order them.
                summary_row(
                    pool,
                    student,
                    game,
                    difficulty,
                    (2, 1),
                    t0() + Duration::days(n),
                )
                .await;
                rows += 1;
            }
        }
    }
    let seen = walk(4, |page| {
        let models = models.clone();
        async move { models.all_practice_history(None, &page).await.unwrap() }
    })
    .await;
    assert_eq!(seen.len(), rows);
    let keys: HashSet<(Uuid, GameType, Difficulty)> = seen
        .iter()
        .map(|r| (r.student_id, r.game_type, r.difficulty))
        .collect();
    assert_eq!(keys.len(), rows, "no row twice");
    assert!(seen
        .windows(2)
        .all(|w| w[0].last_attempt_at >= w[1].last_attempt_at));
    assert_eq!(seen[0].student_id, c);
    assert_eq!(seen[0].student_first_name.as_deref(), Some("Cy"));
    assert_eq!(seen[0].student_last_name.as_deref(), Some("Cole"));
    assert_eq!(
        (seen[0].attempts, seen[0].successes, seen[0].failures),
        (3, 2, 1)
    );

    let mine = models
        .all_practice_history(Some(&[a, b]), &PageRequest::first(100))
        .await
        .unwrap();
    assert_eq!(mine.total_count, 12);
    assert!(mine
        .items
        .iter()
        .all(|r| r.student_id == a || r.student_id == b));
    let none = models
        .all_practice_history(Some(&[]), &PageRequest::default())
        .await
        .unwrap();
    assert_eq!(none.total_count, 0);
    assert!(none.items.is_empty());
}

#[tokio::test]
async fn word_cards_game_config_and_achievements() {
    let db = TestDatabase::new().await;
    let pool = &db.pool;
    let models = ReadModels::new(pool.clone());
    let student = user(pool, "Student", "Sam", "One", t0()).await;
    let mut cards = Vec::new();
    for day in 0..4 {
        let id = Uuid::new_v4();
        let at = t0() + Duration::days(day);
        sqlx::query(
            "INSERT INTO read_model.word_cards (card_id, owner_id, hebrew, english, is_learned,
                 created_at, updated_at, learned_at)
             VALUES ($1, $2, 'מילה', 'word', $3, $4, $4, $5)",
        )
        .bind(id)
        .bind(student)
        .bind(day == 1)
        .bind(at)
        .bind((day == 1).then_some(at + Duration::hours(1)))
        .execute(pool)
        .await
        .unwrap();
        cards.push(id);
    }
    let all = models.word_cards(student, DateRange::all()).await.unwrap();
    assert_eq!(
        all.iter().map(|c| c.card_id).collect::<Vec<_>>(),
        cards.iter().rev().copied().collect::<Vec<_>>()
    );
    assert!(all[2].is_learned && !all[0].is_learned);
    let some = models
        .word_cards(
            student,
            DateRange::new(
                Some(t0() + Duration::days(1)),
                Some(t0() + Duration::days(2)),
            ),
        )
        .await
        .unwrap();
    assert_eq!(
        some.iter().map(|c| c.card_id).collect::<Vec<_>>(),
        vec![cards[2], cards[1]]
    );
    assert!(models
        .word_cards(Uuid::new_v4(), DateRange::all())
        .await
        .unwrap()
        .is_empty());

    sqlx::query(
        "INSERT INTO read_model.game_configs (user_id, game, difficulty, nikud,
             number_of_sentences, updated_at)
         VALUES ($1, 'TypingPractice', 'Hard', true, 5, $2)",
    )
    .bind(student)
    .bind(t0())
    .execute(pool)
    .await
    .unwrap();
    let config = models
        .game_config(student, GameType::TypingPractice)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(config.difficulty, Difficulty::Hard);
    assert!(config.nikud);
    assert_eq!(config.number_of_sentences, 5);
    assert!(models
        .game_config(student, GameType::WordOrder)
        .await
        .unwrap()
        .is_none());

    sqlx::query(
        "INSERT INTO read_model.achievement_progress (user_id, feature, count, updated_at)
         VALUES ($1, 'WordCards', 4, $2), ($1, 'WordOrder', 1, $2)",
    )
    .bind(student)
    .bind(t0())
    .execute(pool)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO read_model.user_achievements (user_id, achievement_key, feature, target,
             unlocked_at)
         VALUES ($1, 'word_cards_1', 'WordCards', 1, $2), ($1, 'word_cards_3', 'WordCards', 3, $3),
                ($1, 'word_order_1', 'WordOrder', 1, $2)",
    )
    .bind(student)
    .bind(t0())
    .bind(t0() + Duration::days(1))
    .execute(pool)
    .await
    .unwrap();
    let achievements = models.achievements(student).await.unwrap();
    assert_eq!(achievements.len(), catalog().len());
    let by_key = |key: &str| achievements.iter().find(|a| a.key == key).unwrap();
    assert!(by_key("word_cards_1").is_unlocked);
    assert_eq!(
        by_key("word_cards_3").unlocked_at,
        Some(t0() + Duration::days(1))
    );
    assert!(!by_key("word_cards_5").is_unlocked);
    assert_eq!(by_key("word_cards_5").progress, 4);
    assert_eq!(by_key("word_cards_5").target_count, 5);
    assert_eq!(by_key("typing_practice_1").progress, 0);
    assert_eq!(achievements.iter().filter(|a| a.is_unlocked).count(), 3);
    let json = serde_json::to_value(by_key("word_order_1")).unwrap();
    assert_eq!(json["isUnlocked"], true);
    assert_eq!(json["type"], "Milestone");
    assert_eq!(json["feature"], "WordOrder");
}
