//! Authorization: the one table that says who may call each query and mutation.
//!
//! Every resolver names its operation and what it is about (a person, a class) and asks
//! `authorize`. The rule for the operation comes from `RULES`; an operation missing from
//! the table is refused (deny by default), and a test checks that every field of the
//! schema has a row. The relations a rule needs ("is this teacher teaching that student?")
//! are read from the read models, then `decide` — a pure function, tested as a matrix —
//! gives the verdict.
//!
//! The rules close the original's holes (original-system.md §10): chats were readable by
//! anyone, users could be updated or deleted by anyone, teachers saw every student, and
//! maintenance endpoints were public.

use crate::auth::tokens::Authenticated;
use crate::error::{ApiError, ApiResult};
use teachin_domain::actor::{Actor, Role};
use teachin_domain::ids::UserId;
use teachin_projections::queries::ReadModels;
use uuid::Uuid;

/// Who is calling, as established by the access token (or its absence).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Caller {
    Anonymous,
    User { id: UserId, role: Role },
}

impl Caller {
    pub fn from_token(auth: Option<Authenticated>) -> Self {
        match auth {
            Some(a) => Caller::User {
                id: a.user_id,
                role: a.role,
            },
            None => Caller::Anonymous,
        }
    }

    pub fn actor(&self) -> Actor {
        match *self {
            Caller::Anonymous => Actor::Anonymous,
            Caller::User { id, role } => Actor::user(id, role),
        }
    }

    pub fn user_id(&self) -> Option<UserId> {
        match *self {
            Caller::User { id, .. } => Some(id),
            Caller::Anonymous => None,
        }
    }

    fn role(&self) -> Option<Role> {
        match *self {
            Caller::User { role, .. } => Some(role),
            Caller::Anonymous => None,
        }
    }
}

/// Who may call an operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rule {
    /// Signing up, signing in: no identity needed.
    Anyone,
    /// Any signed-in person, about themselves.
    SignedIn,
    /// The person the data belongs to, or an admin.
    SelfOrAdmin,
    /// The person, a teacher of theirs (assigned, or teaching a class they are in), or an
    /// admin: reading a student's learning data.
    SelfTeacherOrAdmin,
    /// Teachers (for their own students and classes) and admins.
    TeacherOrAdmin,
    /// A member of the class, or an admin.
    ClassMemberOrAdmin,
    /// A teacher of the class, or an admin.
    ClassTeacherOrAdmin,
    /// Admins only: roles, all users, analytics, assigning a student to a teacher.
    Admin,
    /// Students only, for themselves: joining a class with its code, accepting an invitation.
    /// These make a teacher the student's teacher, so only the student's own word counts.
    Student,
}

/// What an operation is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Subject {
    /// Nothing beyond the caller (sign-up, lists scoped to the caller).
    Caller,
    /// A person's data.
    Person(UserId),
    /// A classroom.
    Class(Uuid),
}

/// Every query, mutation and subscription, with its rule. Keep it in the schema's order.
pub const RULES: &[(&str, Rule)] = &[
    // Queries: people.
    ("me", Rule::SignedIn),
    ("user", Rule::SelfTeacherOrAdmin),
    ("users", Rule::Admin),
    ("studentsOf", Rule::SelfOrAdmin),
    ("teachersOf", Rule::SelfTeacherOrAdmin),
    ("recipients", Rule::TeacherOrAdmin),
    ("onlineUsers", Rule::Admin),
    // Queries: classes.
    ("classes", Rule::Admin),
    ("classesOf", Rule::SelfOrAdmin),
    ("class", Rule::ClassMemberOrAdmin),
    ("classInvitations", Rule::SelfOrAdmin),
    // Queries: learning data of a student.
    ("tutorSessions", Rule::SelfTeacherOrAdmin),
    ("tutorSession", Rule::SelfTeacherOrAdmin),
    ("practiceHistory", Rule::SelfTeacherOrAdmin),
    ("practiceSummary", Rule::SelfTeacherOrAdmin),
    ("mistakes", Rule::SelfTeacherOrAdmin),
    ("studentsPractice", Rule::TeacherOrAdmin),
    ("wordCards", Rule::SelfTeacherOrAdmin),
    ("gameConfig", Rule::SelfTeacherOrAdmin),
    ("achievements", Rule::SelfTeacherOrAdmin),
    ("periodSummary", Rule::SelfTeacherOrAdmin),
    ("sessionReplay", Rule::SelfTeacherOrAdmin),
    // Queries: analytics across the platform.
    ("analyticsRegistrations", Rule::Admin),
    ("analyticsAchievements", Rule::Admin),
    ("analyticsDailyActivity", Rule::Admin),
    ("analyticsClassActivity", Rule::Admin),
    ("analyticsAccuracyTrends", Rule::Admin),
    ("analyticsMistakePatterns", Rule::Admin),
    ("analyticsAiUsage", Rule::Admin),
    // Queries: media.
    ("avatarUrl", Rule::SelfTeacherOrAdmin),
    ("speechToken", Rule::SignedIn),
    // Mutations: sessions.
    ("signUp", Rule::Anyone),
    ("login", Rule::Anyone),
    ("refreshSession", Rule::Anyone),
    ("logout", Rule::Anyone),
    // Mutations: people.
    ("createUser", Rule::Admin),
    ("updateProfile", Rule::SelfOrAdmin),
    ("changePreferredLanguage", Rule::SelfOrAdmin),
    ("changeHebrewLevel", Rule::SelfOrAdmin),
    ("replaceInterests", Rule::SelfOrAdmin),
    ("changePassword", Rule::SelfOrAdmin),
    ("changeRole", Rule::Admin),
    ("eraseUser", Rule::SelfOrAdmin),
    // A teacher may not put a student on their own list: that would make them the student's
    // teacher without the student's word. Teachers reach students through classes.
    ("assignStudent", Rule::Admin),
    ("unassignStudent", Rule::SelfOrAdmin),
    // Mutations: classes.
    ("createClass", Rule::TeacherOrAdmin),
    ("addClassMembers", Rule::ClassTeacherOrAdmin),
    ("removeClassMembers", Rule::ClassTeacherOrAdmin),
    ("deleteClass", Rule::ClassTeacherOrAdmin),
    ("joinClass", Rule::Student),
    ("acceptClassInvitation", Rule::Student),
    // Saying no is always possible, whatever the person's role has become since.
    ("declineClassInvitation", Rule::SignedIn),
    // Mutations: the student's own learning.
    ("sendTutorMessage", Rule::SignedIn),
    ("explainMistake", Rule::SignedIn),
    // Mutations: AI generation.
    ("requestSentences", Rule::SignedIn),
    ("requestSplitSentences", Rule::SignedIn),
    ("requestWordExplanation", Rule::SignedIn),
    ("requestEmailDraft", Rule::TeacherOrAdmin),
    ("submitAttempt", Rule::SignedIn),
    ("addWordCard", Rule::SignedIn),
    ("setWordCardLearned", Rule::SignedIn),
    ("saveGameConfig", Rule::SignedIn),
    ("deleteGameConfig", Rule::SignedIn),
    // Mutations: media (a person's own avatar; admins for anyone).
    ("requestAvatarUpload", Rule::SelfOrAdmin),
    ("confirmAvatarUpload", Rule::SelfOrAdmin),
    ("removeAvatar", Rule::SelfOrAdmin),
    // Mutations: email.
    ("sendEmail", Rule::TeacherOrAdmin),
    // Subscriptions.
    ("notifications", Rule::SignedIn),
    ("sessionReplayStream", Rule::SelfTeacherOrAdmin),
];

/// Privileged operations — granting roles, creating and erasing people, making or breaking a
/// teacher–student or class relationship — are decided on the caller's role as stored now
/// (the `User` aggregate), not only the one in the token: a revocation bump closes that gap
/// too, but if one were lost (Redis unreachable just after the change), a demoted admin or
/// teacher still could not grant anything.
pub const CURRENT_ROLE: &[&str] = &[
    "createUser",
    "changeRole",
    "eraseUser",
    "assignStudent",
    "unassignStudent",
    "addClassMembers",
    "removeClassMembers",
    "joinClass",
    "acceptClassInvitation",
];

/// Whether `operation` is decided on the caller's current role (see [`CURRENT_ROLE`]).
pub fn needs_current_role(operation: &str) -> bool {
    CURRENT_ROLE.contains(&operation)
}

/// The rule of `operation`, if it has one.
pub fn rule_of(operation: &str) -> Option<Rule> {
    RULES
        .iter()
        .find(|(name, _)| *name == operation)
        .map(|(_, rule)| *rule)
}

/// The facts about the caller and the subject that rules depend on.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Relation {
    /// The subject is the caller.
    pub is_self: bool,
    /// The caller teaches the subject person.
    pub teaches: bool,
    /// The caller is a member of the subject class.
    pub class_member: bool,
    /// The caller is a member of the subject class with the Teacher role.
    pub class_teacher: bool,
}

/// The verdict, from the rule, the caller and the facts. No I/O: tested as a matrix.
pub fn decide(rule: Rule, caller: Caller, relation: Relation) -> Result<(), ApiError> {
    let Some(role) = caller.role() else {
        return match rule {
            Rule::Anyone => Ok(()),
            _ => Err(ApiError::unauthenticated()),
        };
    };
    let admin = role == Role::Admin;
    let allowed = match rule {
        Rule::Anyone | Rule::SignedIn => true,
        Rule::SelfOrAdmin => relation.is_self || admin,
        Rule::SelfTeacherOrAdmin => {
            relation.is_self || admin || (role == Role::Teacher && relation.teaches)
        }
        Rule::TeacherOrAdmin => role == Role::Teacher || admin,
        Rule::ClassMemberOrAdmin => relation.class_member || admin,
        Rule::ClassTeacherOrAdmin => admin || (role == Role::Teacher && relation.class_teacher),
        Rule::Admin => admin,
        Rule::Student => role == Role::Student,
    };
    if allowed {
        Ok(())
    } else {
        Err(ApiError::forbidden())
    }
}

/// Checks that `caller` may run `operation` on `subject`, reading the relations it needs.
pub async fn authorize(
    read: &ReadModels,
    caller: Caller,
    operation: &str,
    subject: Subject,
) -> ApiResult<Caller> {
    let Some(rule) = rule_of(operation) else {
        tracing::error!(operation, "operation has no authorization rule; refused");
        return Err(ApiError::forbidden());
    };
    // Decide first without I/O: most calls (anonymous, admin, self) need no lookup.
    let cheap = relation_without_lookup(caller, subject);
    if decide(rule, caller, cheap).is_ok() {
        return Ok(caller);
    }
    let Some(me) = caller.user_id() else {
        return decide(rule, caller, cheap).map(|_| caller);
    };
    let mut relation = cheap;
    match (rule, subject) {
        (Rule::SelfTeacherOrAdmin, Subject::Person(person)) => {
            relation.teaches = read.is_teacher_of(me.0, person.0).await?;
        }
        (Rule::ClassMemberOrAdmin | Rule::ClassTeacherOrAdmin, Subject::Class(class)) => {
            if let Some(view) = read.class(class).await? {
                if let Some(member) = view.members.iter().find(|m| m.member_id == me.0) {
                    relation.class_member = true;
                    relation.class_teacher = member.role == Role::Teacher;
                }
            }
        }
        _ => {}
    }
    decide(rule, caller, relation).map(|_| caller)
}

fn relation_without_lookup(caller: Caller, subject: Subject) -> Relation {
    let is_self = match (caller.user_id(), subject) {
        (Some(me), Subject::Person(person)) => me == person,
        (Some(_), Subject::Caller) => true,
        _ => false,
    };
    Relation {
        is_self,
        ..Relation::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Code;

    /// The six kinds of caller of the matrix, as facts about one student `S` and
    /// one class that `S` is in and whose teacher is "their teacher".
    fn personas() -> Vec<(&'static str, Caller, Relation, Relation)> {
        let user = |role| Caller::User {
            id: UserId::new(),
            role,
        };
        let none = Relation::default();
        vec![
            // (name, caller, relation to the student, relation to the class)
            (
                "student-self",
                user(Role::Student),
                Relation {
                    is_self: true,
                    ..none
                },
                Relation {
                    class_member: true,
                    ..none
                },
            ),
            ("other-student", user(Role::Student), none, none),
            (
                "their-teacher",
                user(Role::Teacher),
                Relation {
                    teaches: true,
                    ..none
                },
                Relation {
                    class_member: true,
                    class_teacher: true,
                    ..none
                },
            ),
            ("other-teacher", user(Role::Teacher), none, none),
            ("admin", user(Role::Admin), none, none),
            ("anonymous", Caller::Anonymous, none, none),
        ]
    }

    /// Who is allowed, per rule, in persona order.
    fn expected(rule: Rule) -> [bool; 6] {
        match rule {
            Rule::Anyone => [true; 6],
            Rule::SignedIn => [true, true, true, true, true, false],
            Rule::SelfOrAdmin => [true, false, false, false, true, false],
            Rule::SelfTeacherOrAdmin => [true, false, true, false, true, false],
            Rule::TeacherOrAdmin => [false, false, true, true, true, false],
            Rule::ClassMemberOrAdmin => [true, false, true, false, true, false],
            Rule::ClassTeacherOrAdmin => [false, false, true, false, true, false],
            Rule::Admin => [false, false, false, false, true, false],
            Rule::Student => [true, true, false, false, false, false],
        }
    }

    #[test]
    fn every_operation_against_every_kind_of_caller() {
        for (operation, rule) in RULES {
            let class_rule = matches!(rule, Rule::ClassMemberOrAdmin | Rule::ClassTeacherOrAdmin);
            for ((name, caller, to_student, to_class), allowed) in
                personas().into_iter().zip(expected(*rule))
            {
                let relation = if class_rule { to_class } else { to_student };
                let verdict = decide(*rule, caller, relation);
                assert_eq!(
                    verdict.is_ok(),
                    allowed,
                    "{operation} ({rule:?}) for {name}: {verdict:?}"
                );
                if let Err(e) = verdict {
                    let code = if caller == Caller::Anonymous {
                        Code::Unauthenticated
                    } else {
                        Code::Forbidden
                    };
                    assert_eq!(e.code, code, "{operation} for {name}");
                }
            }
        }
    }

    /// The relationship cases of issue 15: what makes a teacher "their teacher" is decided
    /// by the read models (`ReadModels::is_teacher_of`, probed end to end in
    /// `tests/relationships.rs`); here, that only that relation opens a student's data to a
    /// teacher, and that no teacher can create one alone.
    #[test]
    fn relationships_need_the_other_side() {
        let teacher = Caller::User {
            id: UserId::new(),
            role: Role::Teacher,
        };
        let reading: Vec<_> = RULES
            .iter()
            .filter(|(_, rule)| *rule == Rule::SelfTeacherOrAdmin)
            .map(|(op, _)| *op)
            .collect();
        assert!(reading.contains(&"practiceHistory") && reading.contains(&"user"));
        // (case, whether the read models then say the teacher teaches the student)
        let cases = [
            ("invited, not yet accepted", false),
            ("invitation declined", false),
            ("invitation accepted", true),
            ("student joined with the class code", true),
            ("admin added the student to the class", true),
            ("admin assigned the student", true),
        ];
        for op in &reading {
            for (case, teaches) in cases {
                let relation = Relation {
                    teaches,
                    ..Relation::default()
                };
                let verdict = decide(rule_of(op).unwrap(), teacher, relation);
                assert_eq!(verdict.is_ok(), teaches, "{op} after {case}");
            }
        }
        // A teacher cannot put a student on their own list, not even as "themself".
        let own_list = Relation {
            is_self: true,
            ..Relation::default()
        };
        let refused = decide(rule_of("assignStudent").unwrap(), teacher, own_list).unwrap_err();
        assert_eq!(refused.code, Code::Forbidden);
        // ...but may still take one off it.
        assert!(decide(rule_of("unassignStudent").unwrap(), teacher, own_list).is_ok());
        // Only a student answers for a student: a teacher or admin cannot join or accept.
        for op in ["joinClass", "acceptClassInvitation"] {
            for role in [Role::Teacher, Role::Admin] {
                let caller = Caller::User {
                    id: UserId::new(),
                    role,
                };
                assert!(decide(rule_of(op).unwrap(), caller, own_list).is_err());
            }
            assert!(
                needs_current_role(op),
                "{op} reads the caller's current role"
            );
        }
        assert!(needs_current_role("assignStudent"));
    }

    #[test]
    fn an_operation_without_a_rule_has_none() {
        assert_eq!(rule_of("dropDatabase"), None);
        assert_eq!(rule_of("me"), Some(Rule::SignedIn));
    }

    #[test]
    fn current_role_operations_have_rules() {
        for operation in CURRENT_ROLE {
            assert!(rule_of(operation).is_some(), "{operation} has no rule");
        }
    }

    #[test]
    fn the_table_names_each_operation_once() {
        let mut names: Vec<_> = RULES.iter().map(|(n, _)| *n).collect();
        names.sort();
        let before = names.len();
        names.dedup();
        assert_eq!(before, names.len(), "an operation appears twice in RULES");
    }
}
