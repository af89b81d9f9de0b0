//! End-to-end tests of the manager's GraphQL API: the real binary (`teachin all`) on random
//! ports, a fresh database and its own Redis namespace per test.
//!
//! Covered: the session life cycle (sign-up, login, refresh rotation, reuse detection,
//! logout, rate limits), bad input answered with the right code and nothing written, the
//! authorization matrix (every query and mutation × six kinds of caller), each feature
//! area, idempotent retries, and subscriptions over graphql-ws.

mod support;

use serde_json::{json, Value};
use std::time::Duration;
use support::portal::{self, code, email, Portal, PASSWORD};
use support::{eventually, RunningApp};
use uuid::Uuid;

const JWT_SECRET: &str = "an-end-to-end-test-secret-of-32-bytes-or-more";

#[tokio::test]
async fn sign_up_login_refresh_rotation_reuse_and_logout() {
    let app = RunningApp::start_with(&[("TEACHIN_REFRESH_RATE_LIMIT", "100/60s")]).await;
    let mut browser = Portal::new(&app);
    let address = email("dana");
    let id = browser.sign_up("Dana", &address).await;

    let session = browser.login(&address).await;
    assert_eq!(session["userId"], id.as_str());
    assert_eq!(session["role"], "STUDENT");
    let me = eventually("my profile", || async {
        let r = browser
            .gql("{ me { userId firstName email role } }", json!({}))
            .await;
        r["data"]["me"].is_object().then_some(r)
    })
    .await;
    assert_eq!(me["data"]["me"]["email"], address.as_str());

    // A refresh without the CSRF header, or with a wrong one, is refused.
    let (_, r) = browser
        .post(
            json!({ "query": "mutation { refreshSession { accessToken } }" }),
            None,
        )
        .await;
    assert_eq!(code(&r).as_deref(), Some("FORBIDDEN"), "{r}");
    let (_, r) = browser
        .post(
            json!({ "query": "mutation { refreshSession { accessToken } }" }),
            Some("not-the-token"),
        )
        .await;
    assert_eq!(code(&r).as_deref(), Some("FORBIDDEN"), "{r}");

    // Rotation: a new token pair each time; the cookies follow.
    let (first_refresh, first_csrf) = (browser.cookie("refreshToken"), browser.csrf.clone());
    assert!(first_refresh.is_some(), "the refresh cookie is set");
    assert_eq!(browser.cookie("csrfToken"), first_csrf);
    let r = browser.refresh().await;
    assert_eq!(r["data"]["refreshSession"]["userId"], id.as_str(), "{r}");
    assert_ne!(browser.csrf, first_csrf);
    assert_ne!(browser.cookie("refreshToken"), first_refresh);
    let r = browser.gql("{ me { userId } }", json!({})).await;
    assert_eq!(r["data"]["me"]["userId"], id.as_str());

    // Replaying a rotated token (an attacker's copy of an earlier cookie) revokes the whole
    // login: the thief is refused, and the legitimate browser is signed out too.
    let (stolen_refresh, stolen_csrf) = (first_refresh.unwrap(), first_csrf.unwrap());
    let replay = reqwest::Client::new()
        .post(&browser.url)
        .header(
            "cookie",
            format!("refreshToken={stolen_refresh}; csrfToken={stolen_csrf}"),
        )
        .header("x-csrf-token", &stolen_csrf)
        .json(&json!({ "query": "mutation { refreshSession { accessToken } }" }))
        .send()
        .await
        .unwrap()
        .json::<Value>()
        .await
        .unwrap();
    assert_eq!(
        code(&replay).as_deref(),
        Some("UNAUTHENTICATED"),
        "{replay}"
    );
    let r = browser.refresh().await;
    assert_eq!(
        code(&r).as_deref(),
        Some("UNAUTHENTICATED"),
        "the legitimate browser is signed out too: {r}"
    );

    // Sign in again, then log out: the refresh cookie no longer works.
    browser.login(&address).await;
    let r = browser.gql("mutation { logout }", json!({})).await;
    assert_eq!(r["data"]["logout"], true);
    // The access token ended with the login (tests/sockets.rs); the portal drops it.
    let r = browser.gql("{ me { userId } }", json!({})).await;
    assert_eq!(code(&r).as_deref(), Some("UNAUTHENTICATED"), "{r}");
    browser.token = None;
    let r = browser.refresh().await;
    assert_eq!(code(&r).as_deref(), Some("UNAUTHENTICATED"), "{r}");

    // Self sign-up never creates staff: the input has no role at all.
    let r = browser
        .gql(
            "mutation { signUp(input: {firstName: \"E\", lastName: \"V\", email: \"eve@example.com\", password: \"correct horse battery\", role: ADMIN}) { userId } }",
            json!({}),
        )
        .await;
    assert_eq!(code(&r).as_deref(), Some("BAD_USER_INPUT"), "{r}");
}

#[tokio::test]
async fn bad_input_gets_the_right_code_and_writes_nothing() {
    let app = RunningApp::start_with(&[("JWT_SECRET", JWT_SECRET)]).await;
    let mut browser = Portal::new(&app);
    let address = email("bo");
    browser.sign_up("Bo", &address).await;
    browser.login(&address).await;
    let events = app.event_count().await;
    let post_raw = |body: String| {
        let (url, token) = (browser.url.clone(), browser.token.clone().unwrap());
        async move {
            let r = reqwest::Client::new()
                .post(url)
                .bearer_auth(token)
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await
                .unwrap();
            (r.status().as_u16(), r.json::<Value>().await.unwrap())
        }
    };

    // Malformed GraphQL, malformed JSON, wrong argument types, unknown fields.
    let r = browser
        .gql("mutation { addWordCard(hebrew: ", json!({}))
        .await;
    assert_eq!(code(&r).as_deref(), Some("BAD_USER_INPUT"), "{r}");
    let (status, r) = post_raw("{not json".into()).await;
    assert_eq!(
        (status, code(&r).as_deref()),
        (400, Some("BAD_USER_INPUT")),
        "{r}"
    );
    let r = browser
        .gql("mutation { saveGameConfig(game: WORD_ORDER, difficulty: EASY, nikud: \"yes\", numberOfSentences: 3) { id } }", json!({}))
        .await;
    assert_eq!(code(&r).as_deref(), Some("BAD_USER_INPUT"), "{r}");
    let r = browser
        .gql("mutation($n: Int!) { saveGameConfig(game: WORD_ORDER, difficulty: EASY, nikud: true, numberOfSentences: $n) { id } }", json!({ "n": "three" }))
        .await;
    assert_eq!(code(&r).as_deref(), Some("BAD_USER_INPUT"), "{r}");
    let r = browser.gql("{ me { password } }", json!({})).await;
    assert_eq!(code(&r).as_deref(), Some("BAD_USER_INPUT"), "{r}");
    // Domain validation names the field.
    let r = browser
        .gql("mutation { saveGameConfig(game: WORD_ORDER, difficulty: EASY, nikud: true, numberOfSentences: 99) { id } }", json!({}))
        .await;
    assert_eq!(code(&r).as_deref(), Some("BAD_USER_INPUT"), "{r}");
    assert!(r["errors"][0]["extensions"]["field"].is_string(), "{r}");
    let r = browser
        .gql(
            "mutation { addWordCard(hebrew: \"\", english: \"\") { id } }",
            json!({}),
        )
        .await;
    assert_eq!(code(&r).as_deref(), Some("BAD_USER_INPUT"), "{r}");

    // An oversized body.
    let huge = format!(
        "{{\"query\": \"{{ me {{ userId }} }}\", \"variables\": {{\"x\": \"{}\"}}}}",
        "a".repeat(300 * 1024)
    );
    let (status, r) = post_raw(huge).await;
    assert_eq!(
        (status, code(&r).as_deref()),
        (413, Some("BAD_USER_INPUT")),
        "{r}"
    );

    // A query deeper than the limit.
    let mut nested = String::from("__typename");
    for _ in 0..14 {
        nested = format!("ofType {{ {nested} }}");
    }
    let r = browser
        .gql(
            &format!("{{ __schema {{ types {{ {nested} }} }} }}"),
            json!({}),
        )
        .await;
    assert_eq!(code(&r).as_deref(), Some("BAD_USER_INPUT"), "{r}");

    // Tokens: expired, tampered, signed by someone else, `alg: none`.
    let mut stranger = Portal::new(&app);
    let mut tokens = forged_tokens(browser.token.as_deref().unwrap());
    let signer = teachin_api::auth::tokens::AccessTokens::new(
        JWT_SECRET.as_bytes(),
        "teachin",
        "teachin-portals",
    )
    .unwrap();
    let an_hour_ago = chrono::Utc::now() - chrono::Duration::hours(1);
    let user = teachin_domain::ids::UserId(browser.id().parse().unwrap());
    tokens.push((
        "expired (properly signed)",
        signer
            .issue_at(user, teachin_domain::actor::Role::Student, an_hour_ago)
            .token,
    ));
    for (what, token) in tokens {
        stranger.token = Some(token);
        let (status, r) = stranger
            .post(json!({ "query": "mutation { addWordCard(hebrew: \"שלום\", english: \"hello\") { id } }" }), None)
            .await;
        assert_eq!(
            (status, code(&r).as_deref()),
            (401, Some("UNAUTHENTICATED")),
            "{what}: {r}"
        );
    }
    // Nothing of the above reached the log.
    assert_eq!(app.event_count().await, events);
}

/// Tokens that must be refused, built from a valid one.
fn forged_tokens(valid: &str) -> Vec<(&'static str, String)> {
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine;
    let parts: Vec<&str> = valid.split('.').collect();
    let claims: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap();
    let encode = |v: &Value| URL_SAFE_NO_PAD.encode(serde_json::to_vec(v).unwrap());
    let mut admin = claims.clone();
    admin["role"] = json!("Admin");
    let mut expired = claims.clone();
    expired["exp"] = json!(chrono::Utc::now().timestamp() + 30 * 24 * 3600);
    let none = encode(&json!({ "alg": "none", "typ": "JWT" }));
    vec![
        (
            "tampered role",
            format!("{}.{}.{}", parts[0], encode(&admin), parts[2]),
        ),
        ("alg none", format!("{none}.{}.", encode(&admin))),
        (
            "expiry pushed back without re-signing",
            format!("{}.{}.{}", parts[0], encode(&expired), parts[2]),
        ),
        ("garbage", "not.a.jwt".into()),
    ]
}

/// The people of the authorization matrix, all signed in but `anon`.
struct Cast {
    admin: Portal,
    teacher: Portal,
    other_teacher: Portal,
    student: Portal,
    other_student: Portal,
    anon: Portal,
    class_id: String,
    session_id: String,
    student_email: String,
}

impl Cast {
    /// Six callers around one student: the student, another student, the student's teacher
    /// (assigned, and teacher of a class the student is in), another teacher, an admin and
    /// someone not signed in.
    async fn assemble(app: &RunningApp) -> Cast {
        let admin = portal::admin(app).await;
        let teacher = portal::teacher(app, &admin, "Tal").await;
        let other_teacher = portal::teacher(app, &admin, "Omer").await;
        // The student's address is part of the cast (tests read it back), so made here.
        let mut student = Portal::new(app);
        let student_email = email("shira");
        student.sign_up("Shira", &student_email).await;
        student.login(&student_email).await;
        let other_student = portal::student(app, "Yoni").await;

        let (t, s) = (teacher.id().to_string(), student.id().to_string());
        // Only an admin assigns a student to a teacher.
        let r = admin
            .gql(
                "mutation($t: UUID!, $s: UUID!) { assignStudent(teacherId: $t, studentId: $s) { id } }",
                json!({ "t": t, "s": s }),
            )
            .await;
        assert!(code(&r).is_none(), "{r}");
        let r = teacher
            .gql(
                "mutation($name: String!) { createClass(name: $name) { id } }",
                json!({ "name": format!("Ulpan {}", Uuid::new_v4().simple()) }),
            )
            .await;
        let class_id = r["data"]["createClass"]["id"].as_str().unwrap().to_string();
        // The teacher manages the class once the read model knows they are in it; adding a
        // student invites them, and the student accepts.
        eventually("the class's teacher may add members", || async {
            let r = teacher
                .gql(
                    "mutation($c: UUID!, $s: UUID!) { addClassMembers(classId: $c, userIds: [$s]) { id } }",
                    json!({ "c": class_id, "s": s }),
                )
                .await;
            code(&r).is_none().then_some(())
        })
        .await;
        let r = student
            .gql(
                "mutation($c: UUID!) { acceptClassInvitation(classId: $c) { id } }",
                json!({ "c": class_id }),
            )
            .await;
        assert!(code(&r).is_none(), "{r}");
        let r = student
            .gql(
                "mutation { sendTutorMessage(kind: DEFAULT, text: \"מה שלומך?\") { sessionId requestId } }",
                json!({}),
            )
            .await;
        let session_id = r["data"]["sendTutorMessage"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("{r}"))
            .to_string();
        // Wait until every relation is visible in the read models.
        eventually("the relations in the read models", || async {
            let r = admin
                .gql(
                    "query($c: UUID!, $s: UUID!, $session: UUID!) {
                       class(id: $c) { members { memberId } }
                       teachersOf(studentId: $s) { userId }
                       tutorSession(id: $session) { session { sessionId } }
                     }",
                    json!({ "c": class_id, "s": s, "session": session_id }),
                )
                .await;
            let members = r["data"]["class"]["members"].as_array().map_or(0, Vec::len);
            let teachers = r["data"]["teachersOf"].as_array().map_or(0, Vec::len);
            (members == 2 && teachers == 1 && r["data"]["tutorSession"].is_object()).then_some(())
        })
        .await;
        Cast {
            admin,
            teacher,
            other_teacher,
            student,
            other_student,
            anon: Portal::new(app),
            class_id,
            session_id,
            student_email,
        }
    }

    fn callers(&self) -> [(&'static str, &Portal); 6] {
        [
            ("self", &self.student),
            ("other", &self.other_student),
            ("teacher", &self.teacher),
            ("other_teacher", &self.other_teacher),
            ("admin", &self.admin),
            ("anon", &self.anon),
        ]
    }
}

const EVERYONE_SIGNED_IN: &[&str] = &["self", "other", "teacher", "other_teacher", "admin"];
const SELF_TEACHER_ADMIN: &[&str] = &["self", "teacher", "admin"];
const SELF_ADMIN: &[&str] = &["self", "admin"];
const TEACHERS_ADMIN: &[&str] = &["teacher", "other_teacher", "admin"];
const CLASS_TEACHER_ADMIN: &[&str] = &["teacher", "admin"];
const ADMIN: &[&str] = &["admin"];
const STUDENTS: &[&str] = &["self", "other"];
const ANYONE: &[&str] = &["self", "other", "teacher", "other_teacher", "admin", "anon"];

#[tokio::test]
async fn authorization_matrix_every_operation_against_every_kind_of_caller() {
    let app = RunningApp::start_with(&[("TEACHIN_LOGIN_RATE_LIMIT", "100/60s")]).await;
    let mut cast = Cast::assemble(&app).await;
    let (s, t, s2) = (
        cast.student.id().to_string(),
        cast.teacher.id().to_string(),
        cast.other_student.id().to_string(),
    );
    let (c, session) = (cast.class_id.clone(), cast.session_id.clone());
    let today = chrono::Utc::now().date_naive().to_string();
    let vars = json!({
        "s": s, "t": t, "s2": s2, "c": c, "session": session,
        "from": today, "to": today, "random": Uuid::new_v4(),
        "avatar": format!("{s}/{}.png", Uuid::new_v4().simple()),
    });
    // (operation, document, who may call it). Destructive operations come last; an admin's
    // password reset or role change signs the student out, who signs in again.
    let matrix: &[(&str, &str, &[&str])] = &[
        ("me", "query { me { userId } }", EVERYONE_SIGNED_IN),
        ("user", "query($s: UUID!) { user(id: $s) { userId } }", SELF_TEACHER_ADMIN),
        ("users", "query { users { totalCount } }", ADMIN),
        ("studentsOf", "query($t: UUID!) { studentsOf(teacherId: $t) { totalCount } }", &["teacher", "admin"]),
        ("teachersOf", "query($s: UUID!) { teachersOf(studentId: $s) { userId } }", SELF_TEACHER_ADMIN),
        ("recipients", "query { recipients(name: \"Sh\") { userId } }", TEACHERS_ADMIN),
        ("onlineUsers", "query { onlineUsers { userId connections } }", ADMIN),
        ("classes", "query { classes { classId } }", ADMIN),
        ("classesOf", "query($s: UUID!) { classesOf(userId: $s) { classId } }", SELF_ADMIN),
        ("class", "query($c: UUID!) { class(id: $c) { classId } }", SELF_TEACHER_ADMIN),
        ("classInvitations", "query($s: UUID!) { classInvitations(studentId: $s) { classId } }", SELF_ADMIN),
        ("tutorSessions", "query($s: UUID!) { tutorSessions(studentId: $s) { sessionId } }", SELF_TEACHER_ADMIN),
        ("tutorSession", "query($session: UUID!) { tutorSession(id: $session) { session { sessionId } } }", SELF_TEACHER_ADMIN),
        ("practiceHistory", "query($s: UUID!) { practiceHistory(studentId: $s) { totalCount } }", SELF_TEACHER_ADMIN),
        ("practiceSummary", "query($s: UUID!) { practiceSummary(studentId: $s) { attempts } }", SELF_TEACHER_ADMIN),
        ("mistakes", "query($s: UUID!) { mistakes(studentId: $s) { totalCount } }", SELF_TEACHER_ADMIN),
        ("studentsPractice", "query { studentsPractice { totalCount } }", TEACHERS_ADMIN),
        ("wordCards", "query($s: UUID!) { wordCards(userId: $s) { cardId } }", SELF_TEACHER_ADMIN),
        ("gameConfig", "query($s: UUID!) { gameConfig(userId: $s, game: WORD_ORDER) { nikud } }", SELF_TEACHER_ADMIN),
        ("achievements", "query($s: UUID!) { achievements(userId: $s) { key } }", SELF_TEACHER_ADMIN),
        ("periodSummary", "query($s: UUID!) { periodSummary(userId: $s) { overview { summary { totalAttempts } } } }", SELF_TEACHER_ADMIN),
        ("sessionReplay", "query($session: UUID!) { sessionReplay(sessionType: TUTOR, id: $session) { state { version } } }", SELF_TEACHER_ADMIN),
        ("analyticsDailyActivity", "query($from: NaiveDate!, $to: NaiveDate!) { analyticsDailyActivity(from: $from, to: $to) { attempts } }", ADMIN),
        ("analyticsClassActivity", "query($c: UUID!, $from: NaiveDate!, $to: NaiveDate!) { analyticsClassActivity(classId: $c, from: $from, to: $to) { attempts } }", ADMIN),
        ("analyticsAccuracyTrends", "query($from: NaiveDate!, $to: NaiveDate!) { analyticsAccuracyTrends(from: $from, to: $to) { attempts } }", ADMIN),
        ("analyticsMistakePatterns", "query { analyticsMistakePatterns { exercisesAffected } }", ADMIN),
        ("analyticsAiUsage", "query($from: NaiveDate!, $to: NaiveDate!) { analyticsAiUsage(from: $from, to: $to) { requests } }", ADMIN),
        ("analyticsRegistrations", "query($from: NaiveDate!, $to: NaiveDate!) { analyticsRegistrations(from: $from, to: $to) { registrations } }", ADMIN),
        ("analyticsAchievements", "query($from: NaiveDate!, $to: NaiveDate!) { analyticsAchievements(from: $from, to: $to) { unlocked } }", ADMIN),
        ("avatarUrl", "query($s: UUID!) { avatarUrl(userId: $s) { url } }", SELF_TEACHER_ADMIN),
        ("speechToken", "query { speechToken { token } }", EVERYONE_SIGNED_IN),
        ("signUp", "mutation { signUp(input: {firstName: \"New\", lastName: \"Student\", email: \"new@example.com\", password: \"correct horse battery\"}, idempotencyKey: \"matrix\") { userId } }", ANYONE),
        ("login", "mutation { login(email: \"nobody@example.com\", password: \"wrong password\") { accessToken } }", ANYONE),
        ("refreshSession", "mutation { refreshSession { accessToken } }", ANYONE),
        ("createUser", "mutation { createUser(input: {role: TEACHER, firstName: \"T\", lastName: \"T\", email: \"matrix-teacher@example.com\", password: \"correct horse battery\"}, idempotencyKey: \"matrix\") { id } }", ADMIN),
        ("updateProfile", "mutation($s: UUID!) { updateProfile(userId: $s, firstName: \"Shira\") { id } }", SELF_ADMIN),
        ("changePreferredLanguage", "mutation($s: UUID!) { changePreferredLanguage(userId: $s, language: HE) { id } }", SELF_ADMIN),
        ("changeHebrewLevel", "mutation($s: UUID!) { changeHebrewLevel(userId: $s, level: INTERMEDIATE) { id } }", SELF_ADMIN),
        ("replaceInterests", "mutation($s: UUID!) { replaceInterests(userId: $s, interests: [\"music\"]) { id } }", SELF_ADMIN),
        ("changePassword", "mutation($s: UUID!) { changePassword(userId: $s, currentPassword: \"not my password\", newPassword: \"correct horse battery\") { id } }", SELF_ADMIN),
        ("changeRole", "mutation($s: UUID!) { changeRole(userId: $s, role: STUDENT) { id } }", ADMIN),
        ("assignStudent", "mutation($t: UUID!, $s: UUID!) { assignStudent(teacherId: $t, studentId: $s) { id } }", ADMIN),
        ("unassignStudent", "mutation($t: UUID!, $s2: UUID!) { unassignStudent(teacherId: $t, studentId: $s2) { id } }", &["teacher", "admin"]),
        ("createClass", "mutation { createClass(name: \"Matrix class\", idempotencyKey: \"matrix\") { id } }", TEACHERS_ADMIN),
        ("addClassMembers", "mutation($c: UUID!, $s: UUID!) { addClassMembers(classId: $c, userIds: [$s]) { id } }", CLASS_TEACHER_ADMIN),
        ("removeClassMembers", "mutation($c: UUID!, $s2: UUID!) { removeClassMembers(classId: $c, userIds: [$s2]) { id } }", CLASS_TEACHER_ADMIN),
        ("joinClass", "mutation { joinClass(joinCode: \"ZZZZ2222\") { id } }", STUDENTS),
        ("acceptClassInvitation", "mutation($c: UUID!) { acceptClassInvitation(classId: $c) { id } }", STUDENTS),
        ("declineClassInvitation", "mutation($c: UUID!) { declineClassInvitation(classId: $c) { id } }", EVERYONE_SIGNED_IN),
        ("sendTutorMessage", "mutation { sendTutorMessage(kind: DEFAULT, text: \"shalom\") { sessionId } }", EVERYONE_SIGNED_IN),
        ("explainMistake", "mutation($random: UUID!) { explainMistake(exerciseId: $random, attemptId: $random) { sessionId } }", EVERYONE_SIGNED_IN),
        ("requestSentences", "mutation { requestSentences(gameType: TYPING_PRACTICE, difficulty: EASY, count: 2) { requestId } }", EVERYONE_SIGNED_IN),
        ("requestSplitSentences", "mutation { requestSplitSentences(nikud: true, count: 3) { requestId } }", EVERYONE_SIGNED_IN),
        ("requestWordExplanation", "mutation { requestWordExplanation(word: \"שלום\", context: \"שלום, מה שלומך?\") { requestId } }", EVERYONE_SIGNED_IN),
        ("requestEmailDraft", "mutation { requestEmailDraft(subject: \"Parents' evening\", purpose: \"Invite the parents\", language: HE) { requestId } }", TEACHERS_ADMIN),
        ("submitAttempt", "mutation($random: UUID!) { submitAttempt(exerciseId: $random, attemptId: $random, givenAnswer: [\"x\"]) { id } }", EVERYONE_SIGNED_IN),
        ("addWordCard", "mutation { addWordCard(hebrew: \"ספר\", english: \"book\") { id } }", EVERYONE_SIGNED_IN),
        ("setWordCardLearned", "mutation($random: UUID!) { setWordCardLearned(cardId: $random, isLearned: true) { id } }", EVERYONE_SIGNED_IN),
        ("saveGameConfig", "mutation { saveGameConfig(game: WORD_ORDER, difficulty: HARD, nikud: true, numberOfSentences: 5) { id } }", EVERYONE_SIGNED_IN),
        ("deleteGameConfig", "mutation { deleteGameConfig(game: TYPING_PRACTICE) { id } }", EVERYONE_SIGNED_IN),
        ("requestAvatarUpload", "mutation($s: UUID!) { requestAvatarUpload(userId: $s, contentType: \"image/png\", size: 100) { path } }", SELF_ADMIN),
        ("confirmAvatarUpload", "mutation($s: UUID!, $avatar: String!) { confirmAvatarUpload(userId: $s, path: $avatar) { id } }", SELF_ADMIN),
        ("removeAvatar", "mutation($s: UUID!) { removeAvatar(userId: $s) { id } }", SELF_ADMIN),
        ("sendEmail", "mutation { sendEmail(recipientEmail: \"parent@example.com\", subject: \"Parents' evening\", body: \"<p>שלום</p>\") { id } }", TEACHERS_ADMIN),
        ("deleteClass", "mutation($c: UUID!) { deleteClass(classId: $c) { id } }", CLASS_TEACHER_ADMIN),
        ("eraseUser", "mutation($s: UUID!) { eraseUser(userId: $s) { id } }", SELF_ADMIN),
        // Logging out revokes the caller's access token (tests/sockets.rs), so it comes last.
        ("logout", "mutation { logout }", ANYONE),
    ];
    // The table covers every operation of the schema but the subscriptions (tested over
    // WebSocket below).
    let covered: Vec<&str> = matrix.iter().map(|(op, _, _)| *op).collect();
    for (op, _) in teachin_api::access::RULES {
        assert!(
            covered.contains(op) || ["notifications", "sessionReplayStream"].contains(op),
            "the matrix lacks `{op}`"
        );
    }
    let mut failures = Vec::new();
    for (op, document, allowed) in matrix {
        let anyone = allowed.len() == ANYONE.len();
        for (who, portal) in cast.callers() {
            // Browsers echo their CSRF cookie (`refreshSession` rotates it); only
            // `refreshSession` and `logout` look at it.
            let body = json!({ "query": document, "variables": vars });
            let (_, r) = portal
                .post(body, portal.cookie("csrfToken").as_deref())
                .await;
            let got = code(&r);
            let ok = if allowed.contains(&who) {
                let refused = got.as_deref() == Some("FORBIDDEN")
                    || (!anyone && got.as_deref() == Some("UNAUTHENTICATED"));
                !refused && got.as_deref() != Some("BAD_USER_INPUT") || *op == "changePassword"
            } else if who == "anon" {
                got.as_deref() == Some("UNAUTHENTICATED")
            } else {
                got.as_deref() == Some("FORBIDDEN")
            };
            if !ok {
                failures.push(format!("{op} as {who}: {r}"));
            }
        }
        if ["changePassword", "changeRole"].contains(op) {
            let address = cast.student_email.clone();
            // The portal drops its revoked token and signs in again.
            cast.student.token = None;
            cast.student.login(&address).await;
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Records an exercise the way the engine's callback does (the generation request itself
/// belongs to the engine).
async fn seed_exercise(app: &RunningApp, student: &str, sentence: &str) -> String {
    use teachin_commands::{command_bus, BusSettings, CommandContext, PortSecrets};
    use teachin_domain::actor::Actor;
    use teachin_domain::ids::{RequestId, UserId};
    use teachin_domain::practice::{Exercise, ExerciseCommand};
    use teachin_domain::vocabulary::{Difficulty, GameType};
    let bus = command_bus(
        app.db.pool.clone(),
        PortSecrets {
            claims_hash_key: b"local-only-lookup-hash-key-change-me".to_vec(),
        },
        BusSettings::default(),
    );
    let exercise = Uuid::new_v4().to_string();
    bus.execute::<Exercise>(
        &exercise,
        ExerciseCommand::Generate {
            student: UserId(student.parse().unwrap()),
            game_type: GameType::TypingPractice,
            difficulty: Difficulty::Easy,
            nikud: false,
            sentence: sentence.into(),
            request_id: RequestId::new(),
        },
        &CommandContext::new(Actor::System, "test:engine-callback"),
    )
    .await
    .unwrap();
    exercise
}

#[tokio::test]
async fn each_feature_area_through_graphql() {
    let app = RunningApp::start().await;
    let cast = Cast::assemble(&app).await;
    let (student, teacher, admin) = (&cast.student, &cast.teacher, &cast.admin);
    let s = student.id().to_string();

    // Profile.
    let r = student
        .gql(
            "mutation($s: UUID!) { updateProfile(userId: $s, firstName: \"Shir\") { id events } changePreferredLanguage(userId: $s, language: HE) { id } }",
            json!({ "s": s }),
        )
        .await;
    assert!(code(&r).is_none(), "{r}");
    eventually("the profile change", || async {
        let r = student
            .gql("{ me { firstName preferredLanguage } }", json!({}))
            .await;
        (r["data"]["me"]["firstName"] == "Shir" && r["data"]["me"]["preferredLanguage"] == "He")
            .then_some(())
    })
    .await;

    // Teaching: the teacher sees the student, the student the teacher.
    let r = teacher
        .gql("query($t: UUID!) { studentsOf(teacherId: $t) { totalCount edges { cursor node { userId } } } }", json!({ "t": teacher.id() }))
        .await;
    assert_eq!(
        r["data"]["studentsOf"]["edges"][0]["node"]["userId"],
        s.as_str(),
        "{r}"
    );
    let r = student
        .gql("query($s: UUID!) { teachersOf(studentId: $s) { userId } classesOf(userId: $s) { classId members { name role } } }", json!({ "s": s }))
        .await;
    assert_eq!(r["data"]["teachersOf"][0]["userId"], teacher.id(), "{r}");
    assert_eq!(
        r["data"]["classesOf"][0]["classId"],
        cast.class_id.as_str(),
        "{r}"
    );

    // Word cards and game settings.
    let r = student
        .gql(
            "mutation { addWordCard(hebrew: \"ספר\", english: \"book\") { id } }",
            json!({}),
        )
        .await;
    let card = r["data"]["addWordCard"]["id"].as_str().unwrap().to_string();
    let r = student
        .gql("mutation($c: UUID!) { setWordCardLearned(cardId: $c, isLearned: true) { id } saveGameConfig(game: WORD_ORDER, difficulty: HARD, nikud: true, numberOfSentences: 4) { id } }", json!({ "c": card }))
        .await;
    assert!(code(&r).is_none(), "{r}");
    eventually("the card and the settings", || async {
        let r = student
            .gql("query($s: UUID!) { wordCards(userId: $s) { cardId hebrew isLearned } gameConfig(userId: $s, game: WORD_ORDER) { difficulty nikud numberOfSentences } }", json!({ "s": s }))
            .await;
        (r["data"]["wordCards"][0]["isLearned"] == true
            && r["data"]["gameConfig"]["numberOfSentences"] == 4)
            .then_some(())
    })
    .await;

    // Practice: a wrong attempt is a mistake until a correct one follows.
    let exercise = seed_exercise(&app, &s, "אני אוהב ספרים").await;
    let wrong = Uuid::new_v4().to_string();
    let r = student
        .gql("mutation($e: UUID!, $a: UUID!) { submitAttempt(exerciseId: $e, attemptId: $a, givenAnswer: [\"אני אוהב\"]) { id events } }", json!({ "e": exercise, "a": wrong }))
        .await;
    assert!(code(&r).is_none(), "{r}");
    eventually("the mistake", || async {
        let r = teacher
            .gql("query($s: UUID!) { mistakes(studentId: $s) { totalCount edges { node { exerciseId mistakes { wrongAnswer } } } } practiceHistory(studentId: $s) { totalCount } }", json!({ "s": s }))
            .await;
        (r["data"]["mistakes"]["totalCount"] == 1 && r["data"]["practiceHistory"]["totalCount"] == 1)
            .then_some(())
    })
    .await;
    // Someone else's exercise cannot be answered.
    let r = cast
        .other_student
        .gql("mutation($e: UUID!, $a: UUID!) { submitAttempt(exerciseId: $e, attemptId: $a, givenAnswer: [\"x\"]) { id } }", json!({ "e": exercise, "a": Uuid::new_v4() }))
        .await;
    assert!(
        matches!(code(&r).as_deref(), Some("FORBIDDEN") | Some("NOT_FOUND")),
        "{r}"
    );
    // The tutor explains the mistake in a new conversation.
    let r = student
        .gql("mutation($e: UUID!, $a: UUID!) { explainMistake(exerciseId: $e, attemptId: $a) { sessionId requestId } }", json!({ "e": exercise, "a": wrong }))
        .await;
    assert!(r["data"]["explainMistake"]["requestId"].is_string(), "{r}");
    let r = student
        .gql("mutation($e: UUID!, $a: UUID!) { submitAttempt(exerciseId: $e, attemptId: $a, givenAnswer: [\"אני אוהב ספרים\"]) { id } }", json!({ "e": exercise, "a": Uuid::new_v4() }))
        .await;
    assert!(code(&r).is_none(), "{r}");
    eventually("the mistake cleared", || async {
        let r = student
            .gql("query($s: UUID!) { mistakes(studentId: $s) { totalCount } practiceSummary(studentId: $s) { attempts successes } }", json!({ "s": s }))
            .await;
        (r["data"]["mistakes"]["totalCount"] == 0 && r["data"]["practiceSummary"][0]["successes"] == 1)
            .then_some(())
    })
    .await;
    let r = teacher
        .gql(
            "{ studentsPractice { totalCount edges { node { studentId attempts } } } }",
            json!({}),
        )
        .await;
    assert_eq!(
        r["data"]["studentsPractice"]["edges"][0]["node"]["attempts"], 2,
        "{r}"
    );
    let r = student
        .gql("query($s: UUID!) { periodSummary(userId: $s) { overview { summary { totalAttempts } } gamePractice { summary { totalAttempts successRate } } } achievements(userId: $s) { key progress } }", json!({ "s": s }))
        .await;
    assert_eq!(
        r["data"]["periodSummary"]["overview"]["summary"]["totalAttempts"], 2,
        "{r}"
    );
    assert!(
        !r["data"]["achievements"].as_array().unwrap().is_empty(),
        "{r}"
    );

    // The tutor conversation, and its replay for the teacher: history and time travel.
    let r = teacher
        .gql("query($id: UUID!) { tutorSession(id: $id) { session { studentId } messages { role text } } }", json!({ "id": cast.session_id }))
        .await;
    assert_eq!(
        r["data"]["tutorSession"]["messages"][0]["text"], "מה שלומך?",
        "{r}"
    );
    let r = teacher
        .gql("query($id: UUID!) { now: sessionReplay(sessionType: TUTOR, id: $id) { history { sequence eventType actor } state { version view } } before: sessionReplay(sessionType: TUTOR, id: $id, version: 0) { state { version view } } }", json!({ "id": cast.session_id }))
        .await;
    let history = r["data"]["now"]["history"]
        .as_array()
        .unwrap_or_else(|| panic!("{r}"));
    assert!(history.len() >= 2, "{r}");
    assert!(
        history[0]["actor"].as_str().unwrap().starts_with("user:"),
        "{r}"
    );
    assert_eq!(r["data"]["now"]["state"]["version"], history.len() as i64);
    assert_eq!(r["data"]["before"]["state"]["version"], 0);
    let r = teacher
        .gql("query($e: UUID!) { sessionReplay(sessionType: PRACTICE, id: $e, version: 2) { state { version view } } }", json!({ "e": exercise }))
        .await;
    assert_eq!(r["data"]["sessionReplay"]["state"]["version"], 2, "{r}");
    assert_eq!(
        r["data"]["sessionReplay"]["state"]["view"]["attempts"]
            .as_array()
            .map(Vec::len),
        Some(1),
        "{r}"
    );

    // The accessor's outbox relay turned both AI requests (the message, the explanation)
    // into engine-queue messages named by their events.
    eventually("the AI requests on the engine queue", || async {
        let sent: i64 =
            sqlx::query_scalar("SELECT count(*) FROM bus_message_ids WHERE queue = 'engine-queue'")
                .fetch_one(&app.db.pool)
                .await
                .unwrap();
        (sent == 2).then_some(())
    })
    .await;

    // An avatar: a signed upload to the manager's media routes, confirmed, then readable
    // through a signed URL by the student's teacher.
    let png = portal::png();
    let path = student.upload_avatar(&s, png.clone()).await;
    let r = student
        .gql("mutation($s: UUID!, $p: String!) { confirmAvatarUpload(userId: $s, path: $p) { events } }", json!({ "s": s, "p": path }))
        .await;
    assert_eq!(r["data"]["confirmAvatarUpload"]["events"], 1, "{r}");
    let url = eventually("the avatar's read URL", || async {
        let r = teacher
            .gql(
                "query($s: UUID!) { avatarUrl(userId: $s) { url } }",
                json!({ "s": s }),
            )
            .await;
        r["data"]["avatarUrl"]["url"].as_str().map(str::to_owned)
    })
    .await;
    let got = reqwest::get(&url).await.unwrap().bytes().await.unwrap();
    assert_eq!(got.as_ref(), png.as_slice());

    // Analytics for admins, and the user list with cursor paging.
    let today = chrono::Utc::now().date_naive().to_string();
    let r = admin
        .gql("query($d: NaiveDate!) { analyticsRegistrations(from: $d, to: $d) { role registrations } analyticsDailyActivity(from: $d, to: $d) { attempts } }", json!({ "d": today }))
        .await;
    assert!(code(&r).is_none(), "{r}");
    let r = admin.gql("{ users(first: 2) { totalCount pageInfo { hasNextPage endCursor } edges { node { userId } } } }", json!({})).await;
    assert_eq!(r["data"]["users"]["totalCount"], 5, "{r}");
    assert_eq!(r["data"]["users"]["pageInfo"]["hasNextPage"], true);
    let cursor = r["data"]["users"]["pageInfo"]["endCursor"].clone();
    let r = admin
        .gql(
            "query($c: String) { users(first: 100, after: $c) { edges { node { userId } } } }",
            json!({ "c": cursor }),
        )
        .await;
    assert_eq!(
        r["data"]["users"]["edges"].as_array().map(Vec::len),
        Some(3),
        "{r}"
    );
    let r = admin
        .gql("{ users(after: \"garbage\") { totalCount } }", json!({}))
        .await;
    assert_eq!(code(&r).as_deref(), Some("BAD_USER_INPUT"), "{r}");

    // Metrics count the operations.
    let metrics = reqwest::get(format!("{}/metrics", app.manager))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("teachin_http_requests_total{operation=\"users\",outcome=\"ok\"}"),
        "{metrics}"
    );
    assert!(
        metrics.contains("teachin_projection_lag_events"),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_retried_mutation_returns_the_first_result_and_appends_nothing() {
    let app = RunningApp::start().await;
    let admin_email = email("admin");
    app.create_admin(&admin_email, PASSWORD);
    let mut admin = Portal::new(&app);
    admin.login(&admin_email).await;
    let create = "mutation { createClass(name: \"Retry class\", idempotencyKey: \"k-1\") { id events replayed } }";
    let first = admin.gql(create, json!({})).await;
    assert_eq!(first["data"]["createClass"]["replayed"], false, "{first}");
    let events = app.event_count().await;
    let second = admin.gql(create, json!({})).await;
    assert_eq!(second["data"]["createClass"]["replayed"], true, "{second}");
    assert_eq!(
        second["data"]["createClass"]["id"],
        first["data"]["createClass"]["id"]
    );
    assert_eq!(
        second["data"]["createClass"]["events"],
        first["data"]["createClass"]["events"]
    );
    assert_eq!(app.event_count().await, events, "the retry appended events");

    // A sign-up retried with its key is answered, not refused as a duplicate email.
    let anon = Portal::new(&app);
    let sign_up = "mutation { signUp(input: {firstName: \"R\", lastName: \"R\", email: \"retry@example.com\", password: \"correct horse battery\"}, idempotencyKey: \"s-1\") { userId replayed } }";
    let a = anon.gql(sign_up, json!({})).await;
    let b = anon.gql(sign_up, json!({})).await;
    assert_eq!(
        a["data"]["signUp"]["userId"], b["data"]["signUp"]["userId"],
        "{a} {b}"
    );
    assert_eq!(b["data"]["signUp"]["replayed"], true, "{b}");
}

/// A graphql-transport-ws client: connection_init with the token, then one subscription.
struct Subscriber {
    socket: tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
}

impl Subscriber {
    async fn connect(app: &RunningApp, token: Option<&str>) -> Subscriber {
        use futures::SinkExt;
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        let url = format!("{}/graphql/ws", app.manager.replace("http://", "ws://"));
        let mut request = url.into_client_request().unwrap();
        request.headers_mut().insert(
            "sec-websocket-protocol",
            "graphql-transport-ws".parse().unwrap(),
        );
        let (mut socket, _) = tokio_tungstenite::connect_async(request).await.unwrap();
        let payload = match token {
            Some(t) => json!({ "authorization": format!("Bearer {t}") }),
            None => json!({}),
        };
        socket
            .send(text(
                json!({ "type": "connection_init", "payload": payload }),
            ))
            .await
            .unwrap();
        let mut s = Subscriber { socket };
        let ack = s.next().await;
        assert_eq!(ack["type"], "connection_ack", "{ack}");
        s
    }

    async fn subscribe(&mut self, id: &str, query: &str, variables: Value) {
        use futures::SinkExt;
        self.socket
            .send(text(json!({ "id": id, "type": "subscribe", "payload": { "query": query, "variables": variables } })))
            .await
            .unwrap();
    }

    /// The next protocol message (pings are answered by the library and skipped).
    async fn next(&mut self) -> Value {
        use futures::StreamExt;
        loop {
            let message = tokio::time::timeout(Duration::from_secs(60), self.socket.next())
                .await
                .expect("a message within a minute")
                .expect("the socket is open")
                .unwrap();
            if let tokio_tungstenite::tungstenite::Message::Text(t) = message {
                let v: Value = serde_json::from_str(t.as_str()).unwrap();
                if v["type"] != "ping" && v["type"] != "pong" {
                    return v;
                }
            }
        }
    }
}

/// The code of a refused subscription: in an `error` message, or in a `next` with errors.
fn ws_error_code(m: &Value) -> Option<String> {
    let errors = if m["type"] == "error" {
        &m["payload"]
    } else {
        &m["payload"]["errors"]
    };
    errors[0]["extensions"]["code"].as_str().map(str::to_owned)
}

fn text(v: Value) -> tokio_tungstenite::tungstenite::Message {
    tokio_tungstenite::tungstenite::Message::text(v.to_string())
}

#[tokio::test]
async fn subscriptions_carry_the_feed_and_paced_replays_over_graphql_ws() {
    let app = RunningApp::start().await;
    let cast = Cast::assemble(&app).await;

    // Anonymous callers get no socket at all (tests/sockets.rs).

    // Another student cannot watch this student's session.
    let mut other = Subscriber::connect(&app, cast.other_student.token.as_deref()).await;
    other
        .subscribe("1", "subscription($id: UUID!) { sessionReplayStream(sessionType: TUTOR, id: $id) { sequence } }", json!({ "id": cast.session_id }))
        .await;
    let r = other.next().await;
    assert_eq!(ws_error_code(&r).as_deref(), Some("FORBIDDEN"), "{r}");

    // The teacher watches the session replayed (fast), event by event in order.
    let mut teacher = Subscriber::connect(&app, cast.teacher.token.as_deref()).await;
    teacher
        .subscribe("r", "subscription($id: UUID!) { sessionReplayStream(sessionType: TUTOR, id: $id, speed: 1000) { sequence eventType } }", json!({ "id": cast.session_id }))
        .await;
    let mut sequences = Vec::new();
    loop {
        let m = teacher.next().await;
        match m["type"].as_str() {
            Some("next") => sequences.push(
                m["payload"]["data"]["sessionReplayStream"]["sequence"]
                    .as_i64()
                    .unwrap(),
            ),
            Some("complete") => break,
            other => panic!("unexpected {other:?}: {m}"),
        }
    }
    assert!(
        sequences.len() >= 2 && sequences.windows(2).all(|w| w[0] < w[1]),
        "{sequences:?}"
    );

    // The student hears about a change a teacher makes: assignment → NotificationMessage.
    let mut student = Subscriber::connect(&app, cast.student.token.as_deref()).await;
    student
        .subscribe(
            "n",
            "subscription { notifications { id method payload } }",
            json!({}),
        )
        .await;
    // The subscription is live once the server has registered it, which the protocol does
    // not acknowledge: alternate assigning and unassigning (each an event with a push) until
    // a push arrives.
    let t = cast.other_teacher.id().to_string();
    let s = cast.student.id().to_string();
    let pusher = async {
        for round in 0.. {
            let op = if round % 2 == 0 {
                "assignStudent"
            } else {
                "unassignStudent"
            };
            // Only an admin assigns.
            let r = cast
                .admin
                .gql(
                    &format!("mutation($t: UUID!, $s: UUID!) {{ {op}(teacherId: $t, studentId: $s) {{ id }} }}"),
                    json!({ "t": t, "s": s }),
                )
                .await;
            assert!(code(&r).is_none(), "{r}");
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    };
    // The engine's answer to the student's tutor message (a `ReceiveEvent`) may arrive first.
    let push = tokio::select! {
        push = async {
            loop {
                let m = student.next().await;
                if m["payload"]["data"]["notifications"]["method"] != "ReceiveEvent" {
                    break m;
                }
            }
        } => push,
        _ = pusher => unreachable!(),
    };
    assert_eq!(push["type"], "next", "{push}");
    assert_eq!(
        push["payload"]["data"]["notifications"]["method"], "NotificationMessage",
        "{push}"
    );
}

/// The stock `@microsoft/signalr` client (tests/signalr/client.mjs), connected as `token`:
/// yields one JSON event per line (`connected`, `message`, `closed`...).
async fn signalr_client(
    app: &RunningApp,
    token: &str,
) -> (
    tokio::process::Child,
    tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>,
) {
    use tokio::io::AsyncBufReadExt;
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/signalr");
    assert!(
        dir.join("node_modules/@microsoft/signalr").is_dir(),
        "run `npm ci --prefix tests/signalr` first (./dev test does)"
    );
    let mut child = tokio::process::Command::new("node")
        .arg("client.mjs")
        .current_dir(&dir)
        .env("HUB_URL", format!("{}/hubs/notifications", app.manager))
        .env("HUB_TOKEN", token)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("node runs");
    let lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    (child, lines)
}

async fn next_event(
    lines: &mut tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>,
) -> Value {
    let line = tokio::time::timeout(Duration::from_secs(60), lines.next_line())
        .await
        .expect("an event within a minute")
        .unwrap()
        .expect("the client is running");
    serde_json::from_str(&line).unwrap()
}

#[tokio::test]
async fn the_stock_signalr_client_receives_a_push_caused_by_a_mutation() {
    let app = RunningApp::start().await;
    let cast = Cast::assemble(&app).await;
    let (_child, mut events) = signalr_client(&app, cast.student.token.as_deref().unwrap()).await;
    let connected = next_event(&mut events).await;
    assert_eq!(connected["event"], "connected", "{connected}");

    // Admins see the student online (presence from the hub, across replicas via Redis).
    let online = eventually("the student online", || async {
        let r = cast
            .admin
            .gql("{ onlineUsers { userId role connections } }", json!({}))
            .await;
        r["data"]["onlineUsers"].as_array().and_then(|users| {
            users
                .iter()
                .find(|u| u["userId"] == cast.student.id())
                .cloned()
        })
    })
    .await;
    assert_eq!(online["connections"], 1, "{online}");

    // An admin assigns the student to another teacher: the event reaches the log, the
    // accessor's feed, Redis, this replica's hub, and the browser — as `NotificationMessage`.
    let r = cast
        .admin
        .gql(
            "mutation($t: UUID!, $s: UUID!) { assignStudent(teacherId: $t, studentId: $s) { id } }",
            json!({ "t": cast.other_teacher.id(), "s": cast.student.id() }),
        )
        .await;
    assert!(code(&r).is_none(), "{r}");
    let push = loop {
        let e = next_event(&mut events).await;
        if e["event"] == "message" && e["method"] == "NotificationMessage" {
            break e;
        }
    };
    assert!(push["args"][0].is_object(), "{push}");
}

#[tokio::test]
async fn a_tutor_message_is_answered_by_the_engine_streamed_to_signalr_and_recorded() {
    use teachin_workers::testing::llm::{LlmReply, LlmServer};
    let llm = LlmServer::start().await;
    let pieces = [
        "שלום! ",
        "Hello, I am your tutor. ",
        "Let us practise the present tense together: ",
        "אני לומד, את לומדת, הוא לומד. ",
        "Try a sentence of your own and I will check it.",
    ];
    let answer: String = pieces.concat();
    llm.otherwise(LlmReply::answer("test-model", &pieces, (21, 34)));
    let base = format!("{}/v1", llm.url());
    let app = RunningApp::start_with(&[
        ("OPENAI_BASE_URL", base.as_str()),
        ("OPENAI_API_KEY", "sk-test"),
        ("OPENAI_MODEL", "test-model"),
    ])
    .await;
    let mut student = Portal::new(&app);
    let address = email("lior");
    student.sign_up("Lior", &address).await;
    student.login(&address).await;
    let (_child, mut events) = signalr_client(&app, student.token.as_deref().unwrap()).await;
    assert_eq!(next_event(&mut events).await["event"], "connected");

    // GraphQL → TutorSession event → outbox relay → engine-queue → engine (the test LLM)
    // → frames on the session queue → the manager's callbacks → the student's hub socket.
    let r = student
        .gql(
            "mutation { sendTutorMessage(kind: DEFAULT, text: \"How do I use the present tense?\") { sessionId requestId } }",
            json!({}),
        )
        .await;
    let session = r["data"]["sendTutorMessage"]["sessionId"]
        .as_str()
        .unwrap_or_else(|| panic!("{r}"))
        .to_string();
    let mut streamed = String::new();
    let mut sequences = Vec::new();
    loop {
        let e = next_event(&mut events).await;
        if e["event"] != "message" || e["method"] != "StreamEvent" {
            continue;
        }
        let frame = &e["args"][0];
        let payload = &frame["payload"];
        sequences.push(payload["sequence"].as_i64().unwrap());
        if payload["isFinal"] == true {
            break;
        }
        streamed.push_str(payload["delta"].as_str().unwrap_or(""));
    }
    assert!(
        sequences.len() >= 2,
        "the answer came in several frames: {sequences:?}"
    );
    assert!(
        sequences.windows(2).all(|w| w[0] < w[1]),
        "in order: {sequences:?}"
    );
    assert_eq!(streamed, answer);

    // The final answer is an event: in the read model and in the replay.
    eventually("the reply in the read model", || async {
        let r = student
            .gql(
                "query($id: UUID!) { tutorSession(id: $id) { messages { role text } } }",
                json!({ "id": session }),
            )
            .await;
        let messages = r["data"]["tutorSession"]["messages"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        messages
            .iter()
            .any(|m| m["text"] == answer.as_str())
            .then_some(())
    })
    .await;
    let r = student
        .gql("query($id: UUID!) { sessionReplay(sessionType: TUTOR, id: $id) { history { eventType actor } state { view } } }", json!({ "id": session }))
        .await;
    let history = r["data"]["sessionReplay"]["history"]
        .as_array()
        .unwrap_or_else(|| panic!("{r}"));
    let completed = history
        .iter()
        .find(|e| e["eventType"] == "AiReplyCompleted")
        .unwrap_or_else(|| panic!("no AiReplyCompleted in {r}"));
    assert_eq!(completed["actor"], "system");
    assert!(llm
        .seen()
        .iter()
        .any(|req| req.text().contains("present tense")));
}
