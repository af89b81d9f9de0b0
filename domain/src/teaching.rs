//! Which students a teacher looks after.
//!
//! A teacher sees, reviews and replays the practice of the students on their list, so the
//! list is an authorization fact as much as a roster. One aggregate per teacher (its id is
//! the teacher's user id) keeps the list; the users themselves belong to other aggregates,
//! so their roles are read through the [`crate::services::UserDirectory`] port.
//!
//! Unlike the original, only an admin (or the platform) puts a student on a teacher's list:
//! a teacher who could assign themselves could read any student's work without the student
//! ever agreeing. A teacher's consented way to a student is a class (the student joins with
//! its code or accepts an invitation, `classroom.rs`). A teacher may still take a student
//! off their own list, and a student never manages one. Assigning and unassigning are
//! idempotent: asking for what is already true is answered with success and records nothing.

use crate::actor::{Actor, Role};
use crate::error::{DomainError, ErrorKind};
use crate::ids::UserId;
use crate::services::{DomainServices, PortError, UserFacts};
use cqrs_es::event_sink::EventSink;
use cqrs_es::{Aggregate, DomainEvent};
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;

/// The students assigned to one teacher.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TeacherStudents {
    students: BTreeSet<UserId>,
}

impl TeacherStudents {
    pub fn is_assigned(&self, student: UserId) -> bool {
        self.students.contains(&student)
    }

    pub fn students(&self) -> impl Iterator<Item = UserId> + '_ {
        self.students.iter().copied()
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum TeacherStudentsCommand {
    AssignStudent {
        teacher: UserId,
        student: UserId,
        actor: Actor,
    },
    UnassignStudent {
        teacher: UserId,
        student: UserId,
        actor: Actor,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum TeacherStudentsEvent {
    StudentAssigned { student: UserId },
    StudentUnassigned { student: UserId },
}

impl DomainEvent for TeacherStudentsEvent {
    fn event_type(&self) -> String {
        match self {
            TeacherStudentsEvent::StudentAssigned { .. } => "StudentAssigned",
            TeacherStudentsEvent::StudentUnassigned { .. } => "StudentUnassigned",
        }
        .to_string()
    }

    fn event_version(&self) -> String {
        "1.0".to_string()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TeacherStudentsError {
    #[error("only an admin or the teacher themself may change a teacher's list of students")]
    Forbidden,
    #[error("only an admin assigns a student to a teacher; a teacher invites students to a class")]
    OnlyAdminAssigns,
    #[error("user {id} was not found")]
    UserNotFound { field: &'static str, id: UserId },
    #[error("user {id} has the role {actual}, not {expected}")]
    WrongRole {
        field: &'static str,
        id: UserId,
        expected: Role,
        actual: Role,
    },
    #[error("user {0} was erased")]
    UserErased(UserId),
    #[error(transparent)]
    Port(#[from] PortError),
}

impl DomainError for TeacherStudentsError {
    fn kind(&self) -> ErrorKind {
        match self {
            TeacherStudentsError::Forbidden | TeacherStudentsError::OnlyAdminAssigns => {
                ErrorKind::Forbidden
            }
            TeacherStudentsError::UserNotFound { .. } => ErrorKind::NotFound,
            TeacherStudentsError::WrongRole { .. } => ErrorKind::InvalidInput,
            TeacherStudentsError::UserErased(_) => ErrorKind::Conflict,
            TeacherStudentsError::Port(e) => e.kind(),
        }
    }

    fn field(&self) -> Option<&'static str> {
        match self {
            TeacherStudentsError::WrongRole { field, .. } => Some(field),
            _ => None,
        }
    }
}

/// An admin manages any list; a teacher only their own.
fn ensure_may_manage(actor: Actor, teacher: UserId) -> Result<(), TeacherStudentsError> {
    let own_list = matches!(actor, Actor::User { id, role: Role::Teacher } if id == teacher);
    if actor.is_admin() || own_list {
        Ok(())
    } else {
        Err(TeacherStudentsError::Forbidden)
    }
}

/// Looks a user up, refusing unknown ones.
async fn known_user(
    services: &DomainServices,
    id: UserId,
    field: &'static str,
) -> Result<UserFacts, TeacherStudentsError> {
    services
        .users
        .user(id)
        .await?
        .ok_or(TeacherStudentsError::UserNotFound { field, id })
}

/// Looks a user up and insists they are a live user with the expected role.
async fn user_in_role(
    services: &DomainServices,
    id: UserId,
    expected: Role,
    field: &'static str,
) -> Result<(), TeacherStudentsError> {
    let facts = known_user(services, id, field).await?;
    if facts.erased {
        return Err(TeacherStudentsError::UserErased(id));
    }
    if facts.role != expected {
        return Err(TeacherStudentsError::WrongRole {
            field,
            id,
            expected,
            actual: facts.role,
        });
    }
    Ok(())
}

impl Aggregate for TeacherStudents {
    const TYPE: &'static str = "TeacherStudents";
    type Command = TeacherStudentsCommand;
    type Event = TeacherStudentsEvent;
    type Error = TeacherStudentsError;
    type Services = DomainServices;

    async fn handle(
        &mut self,
        command: Self::Command,
        services: &Self::Services,
        sink: &EventSink<Self>,
    ) -> Result<(), Self::Error> {
        match command {
            TeacherStudentsCommand::AssignStudent {
                teacher,
                student,
                actor,
            } => {
                if !actor.is_admin() {
                    return Err(TeacherStudentsError::OnlyAdminAssigns);
                }
                user_in_role(services, teacher, Role::Teacher, "teacherId").await?;
                user_in_role(services, student, Role::Student, "studentId").await?;
                if !self.is_assigned(student) {
                    sink.write(TeacherStudentsEvent::StudentAssigned { student }, self)
                        .await;
                }
            }
            TeacherStudentsCommand::UnassignStudent {
                teacher,
                student,
                actor,
            } => {
                ensure_may_manage(actor, teacher)?;
                user_in_role(services, teacher, Role::Teacher, "teacherId").await?;
                // The student must exist, but a student who has since been erased or has
                // become a teacher can still be taken off the list: removing a relationship
                // must always be possible, or the list could never be cleaned up.
                known_user(services, student, "studentId").await?;
                if self.is_assigned(student) {
                    sink.write(TeacherStudentsEvent::StudentUnassigned { student }, self)
                        .await;
                }
            }
        }
        Ok(())
    }

    fn apply(&mut self, event: Self::Event) {
        match event {
            TeacherStudentsEvent::StudentAssigned { student } => {
                self.students.insert(student);
            }
            TeacherStudentsEvent::StudentUnassigned { student } => {
                self.students.remove(&student);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::services::testing::TestWorld;
    use cqrs_es::test::{AggregateResultValidator, TestFramework};

    struct Fixture {
        world: TestWorld,
        teacher: UserId,
        student: UserId,
        other_teacher: UserId,
        admin: UserId,
    }

    fn fixture() -> Fixture {
        let (teacher, student, other_teacher, admin) =
            (UserId::new(), UserId::new(), UserId::new(), UserId::new());
        let world = TestWorld::default()
            .with_user(teacher, Role::Teacher)
            .with_user(student, Role::Student)
            .with_user(other_teacher, Role::Teacher)
            .with_user(admin, Role::Admin);
        Fixture {
            world,
            teacher,
            student,
            other_teacher,
            admin,
        }
    }

    impl Fixture {
        fn when(
            &self,
            given: Vec<TeacherStudentsEvent>,
            command: TeacherStudentsCommand,
        ) -> AggregateResultValidator<TeacherStudents> {
            TestFramework::<TeacherStudents>::with(self.world.services())
                .given(given)
                .when(command)
        }

        fn assign(&self, actor: Actor) -> TeacherStudentsCommand {
            TeacherStudentsCommand::AssignStudent {
                teacher: self.teacher,
                student: self.student,
                actor,
            }
        }

        fn unassign(&self, actor: Actor) -> TeacherStudentsCommand {
            TeacherStudentsCommand::UnassignStudent {
                teacher: self.teacher,
                student: self.student,
                actor,
            }
        }

        fn as_teacher(&self) -> Actor {
            Actor::user(self.teacher, Role::Teacher)
        }

        fn as_admin(&self) -> Actor {
            Actor::user(self.admin, Role::Admin)
        }

        fn erase(&self, id: UserId) {
            self.world.erase_user(id);
        }
    }

    fn assigned(student: UserId) -> TeacherStudentsEvent {
        TeacherStudentsEvent::StudentAssigned { student }
    }

    fn unassigned(student: UserId) -> TeacherStudentsEvent {
        TeacherStudentsEvent::StudentUnassigned { student }
    }

    #[test]
    fn a_teacher_cannot_assign_a_student_even_to_their_own_list() {
        let f = fixture();
        let err = f
            .when(vec![], f.assign(f.as_teacher()))
            .inspect_result()
            .unwrap_err();
        assert_eq!(err, TeacherStudentsError::OnlyAdminAssigns);
        assert_eq!(err.kind(), ErrorKind::Forbidden);
    }

    #[test]
    fn an_admin_or_the_system_assigns_to_any_teacher() {
        let f = fixture();
        for actor in [f.as_admin(), Actor::System] {
            f.when(vec![], f.assign(actor))
                .then_expect_events(vec![assigned(f.student)]);
        }
    }

    #[test]
    fn assigning_an_assigned_student_records_nothing() {
        let f = fixture();
        f.when(vec![assigned(f.student)], f.assign(f.as_admin()))
            .then_expect_events(vec![]);
    }

    #[test]
    fn nobody_else_may_manage_a_teachers_list() {
        let f = fixture();
        for actor in [
            Actor::user(f.other_teacher, Role::Teacher),
            Actor::user(f.student, Role::Student),
            // A student may not manage a list even if the ids happen to match.
            Actor::user(f.teacher, Role::Student),
            Actor::Anonymous,
        ] {
            f.when(vec![], f.assign(actor))
                .then_expect_error(TeacherStudentsError::OnlyAdminAssigns);
            f.when(vec![assigned(f.student)], f.unassign(actor))
                .then_expect_error(TeacherStudentsError::Forbidden);
        }
        assert_eq!(TeacherStudentsError::Forbidden.kind(), ErrorKind::Forbidden);
    }

    #[test]
    fn unknown_users_are_not_found() {
        let f = fixture();
        let stranger = UserId::new();
        let err = f
            .when(
                vec![],
                TeacherStudentsCommand::AssignStudent {
                    teacher: f.teacher,
                    student: stranger,
                    actor: f.as_admin(),
                },
            )
            .inspect_result()
            .unwrap_err();
        assert_eq!(
            err,
            TeacherStudentsError::UserNotFound {
                field: "studentId",
                id: stranger
            }
        );
        assert_eq!(err.kind(), ErrorKind::NotFound);

        f.when(
            vec![],
            TeacherStudentsCommand::AssignStudent {
                teacher: stranger,
                student: f.student,
                actor: Actor::System,
            },
        )
        .then_expect_error(TeacherStudentsError::UserNotFound {
            field: "teacherId",
            id: stranger,
        });

        f.when(
            vec![],
            TeacherStudentsCommand::UnassignStudent {
                teacher: f.teacher,
                student: stranger,
                actor: f.as_teacher(),
            },
        )
        .then_expect_error(TeacherStudentsError::UserNotFound {
            field: "studentId",
            id: stranger,
        });
    }

    #[test]
    fn only_a_teacher_has_a_list_and_only_a_student_is_on_one() {
        let f = fixture();
        let err = f
            .when(
                vec![],
                TeacherStudentsCommand::AssignStudent {
                    teacher: f.admin,
                    student: f.student,
                    actor: Actor::System,
                },
            )
            .inspect_result()
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidInput);
        assert_eq!(err.field(), Some("teacherId"));
        assert_eq!(
            err.to_string(),
            format!("user {} has the role Admin, not Teacher", f.admin)
        );

        let err = f
            .when(
                vec![],
                TeacherStudentsCommand::AssignStudent {
                    teacher: f.teacher,
                    student: f.other_teacher,
                    actor: f.as_admin(),
                },
            )
            .inspect_result()
            .unwrap_err();
        assert_eq!(
            err,
            TeacherStudentsError::WrongRole {
                field: "studentId",
                id: f.other_teacher,
                expected: Role::Student,
                actual: Role::Teacher,
            }
        );
        assert_eq!(err.field(), Some("studentId"));

        f.when(
            vec![],
            TeacherStudentsCommand::UnassignStudent {
                teacher: f.student,
                student: f.student,
                actor: Actor::System,
            },
        )
        .then_expect_error(TeacherStudentsError::WrongRole {
            field: "teacherId",
            id: f.student,
            expected: Role::Teacher,
            actual: Role::Student,
        });
    }

    #[test]
    fn erased_users_cannot_be_assigned() {
        let f = fixture();
        f.erase(f.student);
        let err = f
            .when(vec![], f.assign(f.as_admin()))
            .inspect_result()
            .unwrap_err();
        assert_eq!(err, TeacherStudentsError::UserErased(f.student));
        assert_eq!(err.kind(), ErrorKind::Conflict);

        let f = fixture();
        f.erase(f.teacher);
        f.when(vec![], f.assign(Actor::System))
            .then_expect_error(TeacherStudentsError::UserErased(f.teacher));
        f.when(vec![assigned(f.student)], f.unassign(Actor::System))
            .then_expect_error(TeacherStudentsError::UserErased(f.teacher));
    }

    #[test]
    fn a_teacher_unassigns_a_student_from_their_list() {
        let f = fixture();
        f.when(vec![assigned(f.student)], f.unassign(f.as_teacher()))
            .then_expect_events(vec![unassigned(f.student)]);
        f.when(vec![assigned(f.student)], f.unassign(f.as_admin()))
            .then_expect_events(vec![unassigned(f.student)]);
    }

    #[test]
    fn unassigning_a_student_who_is_not_assigned_records_nothing() {
        let f = fixture();
        f.when(vec![], f.unassign(f.as_teacher()))
            .then_expect_events(vec![]);
        f.when(
            vec![assigned(f.student), unassigned(f.student)],
            f.unassign(f.as_teacher()),
        )
        .then_expect_events(vec![]);
    }

    #[test]
    fn an_erased_student_can_still_be_unassigned() {
        let f = fixture();
        f.erase(f.student);
        f.when(vec![assigned(f.student)], f.unassign(f.as_teacher()))
            .then_expect_events(vec![unassigned(f.student)]);
    }

    #[test]
    fn the_list_follows_the_events_and_survives_a_snapshot() {
        let (a, b) = (UserId::new(), UserId::new());
        let mut list = TeacherStudents::default();
        list.apply(assigned(a));
        list.apply(assigned(b));
        list.apply(unassigned(a));
        assert!(!list.is_assigned(a));
        assert!(list.is_assigned(b));
        assert_eq!(list.students().collect::<Vec<_>>(), vec![b]);

        let json = serde_json::to_string(&list).unwrap();
        assert_eq!(
            serde_json::from_str::<TeacherStudents>(&json).unwrap(),
            list
        );
        assert_eq!(assigned(a).event_type(), "StudentAssigned");
        assert_eq!(unassigned(a).event_type(), "StudentUnassigned");
        assert_eq!(unassigned(a).event_version(), "1.0");
    }

    #[test]
    fn port_failures_are_unavailable_unless_the_subject_was_erased() {
        let erased = TeacherStudentsError::from(PortError::Erased(UserId::new()));
        assert_eq!(erased.kind(), ErrorKind::Conflict);
        let down = TeacherStudentsError::from(PortError::Unavailable("timeout".into()));
        assert_eq!(down.kind(), ErrorKind::Unavailable);
    }
}
