//! End-to-end probes of the relationships that open a student's data to a teacher (issue 15
//! §2): each needs the student's side or an admin. A teacher may not assign themselves to a
//! student; adding a student to a class only invites them, and makes the teacher their
//! teacher once the student accepts (or joins with the class's code, or an admin adds
//! them); only students can be put in a class; and `recipients` looks only among the
//! caller's own students.
//!
//! Every "still refused" probe is made after the read models show the step before it (the
//! invitation is listed, the stranger is known), so a refusal is the rule's and not the
//! projection's lag.

mod support;

use serde_json::{json, Value};
use support::portal::{self, code, Portal};
use support::{eventually, RunningApp};

async fn start() -> RunningApp {
    RunningApp::start_with(&[("TEACHIN_LOGIN_RATE_LIMIT", "100/60s")]).await
}

const READ_STUDENT: &str = "query($s: UUID!) { user(id: $s) { userId email } }";

/// What `teacher` gets reading `student`'s profile: the profile, or the error's code.
async fn reads(teacher: &Portal, student: &Portal) -> Result<Value, String> {
    let r = teacher
        .gql(READ_STUDENT, json!({ "s": student.id() }))
        .await;
    match code(&r) {
        None => Ok(r["data"]["user"].clone()),
        Some(code) => Err(code),
    }
}

/// Waits until `teacher` may read `student` (the read models caught up with the grant).
async fn comes_to_read(teacher: &Portal, student: &Portal, what: &str) {
    eventually(what, || async {
        reads(teacher, student)
            .await
            .ok()
            .filter(|user| user["userId"] == student.id())
    })
    .await;
}

async fn add_members(who: &Portal, class: &str, users: &[&str]) -> Value {
    who.gql(
        "mutation($c: UUID!, $u: [UUID!]!) { addClassMembers(classId: $c, userIds: $u) { id } }",
        json!({ "c": class, "u": users }),
    )
    .await
}

async fn invitations(student: &Portal) -> Vec<Value> {
    let r = student
        .gql(
            "query($s: UUID!) { classInvitations(studentId: $s) { classId className invitedBy invitedByName } }",
            json!({ "s": student.id() }),
        )
        .await;
    assert!(code(&r).is_none(), "{r}");
    r["data"]["classInvitations"].as_array().unwrap().clone()
}

async fn recipients(who: &Portal, name: &str) -> Vec<String> {
    let r = who
        .gql(
            "query($n: String!) { recipients(name: $n) { userId email } }",
            json!({ "n": name }),
        )
        .await;
    assert!(code(&r).is_none(), "{r}");
    r["data"]["recipients"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["userId"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test]
async fn a_teachers_class_reaches_a_student_only_with_the_students_word_or_an_admins() {
    let app = start().await;
    let admin = portal::admin(&app).await;
    let teacher = portal::teacher(&app, &admin, "Tamar").await;
    let other_teacher = portal::teacher(&app, &admin, "Omer").await;
    let invitee = portal::student(&app, "Inbar").await;
    let joiner = portal::student(&app, "Yael").await;
    let added = portal::student(&app, "Adi").await;
    let decliner = portal::student(&app, "Dror").await;
    let stranger = portal::student(&app, "Zohar").await;

    let r = teacher
        .gql(
            "mutation { createClass(name: \"Ulpan Aleph\") { id } }",
            json!({}),
        )
        .await;
    let class = r["data"]["createClass"]["id"]
        .as_str()
        .unwrap_or_else(|| panic!("{r}"))
        .to_string();
    // The class's teacher manages it once the read model has them as its teacher.
    let join_code = eventually("the class in the read model", || async {
        let r = teacher
            .gql(
                "query($c: UUID!) { class(id: $c) { joinCode } }",
                json!({ "c": class }),
            )
            .await;
        r["data"]["class"]["joinCode"].as_str().map(str::to_owned)
    })
    .await;

    // Only students can be put in a class: a teacher adding an admin or a teacher is
    // refused, and so is an admin; nobody named in a refused command is added.
    for (who, name) in [(&teacher, "teacher"), (&admin, "admin")] {
        for other in [admin.id(), other_teacher.id()] {
            let r = add_members(who, &class, &[invitee.id(), other]).await;
            assert_eq!(code(&r).as_deref(), Some("BAD_USER_INPUT"), "{name}: {r}");
            assert_eq!(r["errors"][0]["extensions"]["field"], "userIds", "{r}");
        }
    }

    // The teacher adds a student: an invitation, which the student sees...
    let r = add_members(&teacher, &class, &[invitee.id(), decliner.id()]).await;
    assert!(code(&r).is_none(), "{r}");
    let invitation = eventually("the invitation listed", || async {
        invitations(&invitee).await.into_iter().next()
    })
    .await;
    assert_eq!(invitation["classId"], class.as_str(), "{invitation}");
    assert_eq!(invitation["className"], "Ulpan Aleph");
    assert_eq!(invitation["invitedBy"], teacher.id());
    assert_eq!(invitation["invitedByName"], "Tamar Teacher");
    // ...and which grants the teacher nothing.
    assert_eq!(reads(&teacher, &invitee).await, Err("FORBIDDEN".into()));
    let r = teacher
        .gql(
            "query($s: UUID!) { practiceHistory(studentId: $s) { totalCount } }",
            json!({ "s": invitee.id() }),
        )
        .await;
    assert_eq!(code(&r).as_deref(), Some("FORBIDDEN"), "{r}");
    // Nobody else can see or answer a student's invitations.
    let r = teacher
        .gql(
            "query($s: UUID!) { classInvitations(studentId: $s) { classId } }",
            json!({ "s": invitee.id() }),
        )
        .await;
    assert_eq!(code(&r).as_deref(), Some("FORBIDDEN"), "{r}");
    let r = stranger
        .gql(
            "mutation($c: UUID!) { acceptClassInvitation(classId: $c) { id } }",
            json!({ "c": class }),
        )
        .await;
    assert_eq!(code(&r).as_deref(), Some("NOT_FOUND"), "{r}");
    let r = teacher
        .gql(
            "mutation($c: UUID!) { acceptClassInvitation(classId: $c) { id } }",
            json!({ "c": class }),
        )
        .await;
    assert_eq!(code(&r).as_deref(), Some("FORBIDDEN"), "{r}");

    // After acceptance, the teacher is the student's teacher; another teacher still is not.
    let r = invitee
        .gql(
            "mutation($c: UUID!) { acceptClassInvitation(classId: $c) { id } }",
            json!({ "c": class }),
        )
        .await;
    assert!(code(&r).is_none(), "{r}");
    comes_to_read(
        &teacher,
        &invitee,
        "the teacher reads the student who accepted",
    )
    .await;
    assert_eq!(
        reads(&other_teacher, &invitee).await,
        Err("FORBIDDEN".into())
    );
    assert!(invitations(&invitee).await.is_empty());

    // A declined invitation grants nothing either.
    let r = decliner
        .gql(
            "mutation($c: UUID!) { declineClassInvitation(classId: $c) { id } }",
            json!({ "c": class }),
        )
        .await;
    assert!(code(&r).is_none(), "{r}");
    eventually("the declined invitation gone", || async {
        invitations(&decliner).await.is_empty().then_some(())
    })
    .await;
    assert_eq!(reads(&teacher, &decliner).await, Err("FORBIDDEN".into()));

    // Joining with the class's code (as typed: lower case, spaces) makes a member at once.
    let typed = format!("  {}  ", join_code.to_lowercase());
    let r = joiner
        .gql(
            "mutation($code: String!) { joinClass(joinCode: $code) { id } }",
            json!({ "code": typed }),
        )
        .await;
    assert!(code(&r).is_none(), "{r}");
    assert_eq!(r["data"]["joinClass"]["id"], class.as_str(), "{r}");
    comes_to_read(
        &teacher,
        &joiner,
        "the teacher reads the student who joined",
    )
    .await;
    // A teacher cannot join a class with its code; an unknown or malformed code is named.
    for (who, code_given, expected) in [
        (&other_teacher, join_code.as_str(), "FORBIDDEN"),
        (&stranger, "ZZZZ2222", "NOT_FOUND"),
        (&stranger, "not a code", "BAD_USER_INPUT"),
    ] {
        let r = who
            .gql(
                "mutation($code: String!) { joinClass(joinCode: $code) { id } }",
                json!({ "code": code_given }),
            )
            .await;
        assert_eq!(code(&r).as_deref(), Some(expected), "{code_given}: {r}");
    }

    // An admin's word is enough.
    let r = add_members(&admin, &class, &[added.id()]).await;
    assert!(code(&r).is_none(), "{r}");
    comes_to_read(
        &teacher,
        &added,
        "the teacher reads the student an admin added",
    )
    .await;

    // The class holds the teacher and the three students, and no admin or other teacher.
    let r = admin
        .gql(
            "query($c: UUID!) { class(id: $c) { members { memberId role } } }",
            json!({ "c": class }),
        )
        .await;
    let mut members: Vec<(String, String)> = r["data"]["class"]["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["memberId"].as_str().unwrap().to_string(),
                m["role"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    members.sort();
    let mut expected: Vec<(String, String)> = [
        (teacher.id(), "TEACHER"),
        (invitee.id(), "STUDENT"),
        (joiner.id(), "STUDENT"),
        (added.id(), "STUDENT"),
    ]
    .iter()
    .map(|(id, role)| (id.to_string(), role.to_string()))
    .collect();
    expected.sort();
    assert_eq!(members, expected, "{r}");

    // `recipients`: a teacher finds their own students, never a stranger's email; an admin
    // finds anyone.
    assert_eq!(recipients(&teacher, "Inbar").await, vec![invitee.id()]);
    assert_eq!(recipients(&teacher, "yael test").await, vec![joiner.id()]);
    assert!(recipients(&teacher, "Zohar").await.is_empty());
    assert!(recipients(&teacher, "Dror").await.is_empty());
    assert!(recipients(&other_teacher, "Inbar").await.is_empty());
    assert_eq!(recipients(&admin, "Zohar").await, vec![stranger.id()]);
}

#[tokio::test]
async fn only_an_admin_assigns_a_student_to_a_teacher() {
    let app = start().await;
    let admin = portal::admin(&app).await;
    let teacher = portal::teacher(&app, &admin, "Tal").await;
    let student = portal::student(&app, "Shira").await;
    let assign =
        "mutation($t: UUID!, $s: UUID!) { assignStudent(teacherId: $t, studentId: $s) { id } }";
    let pair = json!({ "t": teacher.id(), "s": student.id() });

    // A teacher cannot put a student on their own list, and nothing is written.
    let before = app.event_count().await;
    let r = teacher.gql(assign, pair.clone()).await;
    assert_eq!(code(&r).as_deref(), Some("FORBIDDEN"), "{r}");
    assert_eq!(app.event_count().await, before);
    // (The student is known to the read models, so the refusal below is not lag.)
    eventually("the student in the read model", || async {
        let r = admin.gql(READ_STUDENT, json!({ "s": student.id() })).await;
        r["data"]["user"].is_object().then_some(())
    })
    .await;
    assert_eq!(reads(&teacher, &student).await, Err("FORBIDDEN".into()));

    // An admin can; then the teacher reads the student, and may take them off the list.
    let r = admin.gql(assign, pair.clone()).await;
    assert!(code(&r).is_none(), "{r}");
    comes_to_read(&teacher, &student, "the teacher reads the assigned student").await;
    assert_eq!(recipients(&teacher, "Shira").await, vec![student.id()]);
    let r = teacher
        .gql(
            "mutation($t: UUID!, $s: UUID!) { unassignStudent(teacherId: $t, studentId: $s) { id } }",
            pair,
        )
        .await;
    assert!(code(&r).is_none(), "{r}");
    eventually("the unassigned student out of reach", || async {
        (reads(&teacher, &student).await == Err("FORBIDDEN".into())).then_some(())
    })
    .await;
}
