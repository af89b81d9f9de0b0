//! A class: a named group of teachers and students, with a code students can use to find it.
//!
//! Membership matters beyond the roster: a teacher manages only the classes they belong to,
//! so the creator of a class joins it as its first teacher. The original let any teacher
//! change any class and never generated the join code; here both are decided in this
//! aggregate.
//!
//! Membership is also what makes a teacher the teacher of a student (they may then read the
//! student's practice, sessions and replays), so it needs the student's side: only students
//! are members besides the class's teachers, and a student becomes one by joining with the
//! class's code, by accepting a teacher's invitation, or by an admin adding them. A teacher
//! who adds a student only *invites* them; a pending invitation grants the teacher nothing.
//!
//! Two facts are unique across all classes — the name (case-insensitively) and the join
//! code — and one class cannot know about the others, so both are claimed through the
//! [`crate::services::UniqueClaims`] port when the class is created and released when it is
//! deleted. Names and descriptions describe a class, not a person: they are stored as plain
//! text.

use crate::actor::{Actor, Role};
use crate::error::{DomainError, ErrorKind};
use crate::ids::{ClassroomId, UserId};
use crate::services::{ClaimOutcome, ClaimScope, DomainServices, PortError};
use crate::text;
use cqrs_es::event_sink::EventSink;
use cqrs_es::{Aggregate, DomainEvent};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

/// Longest class name, in characters.
pub const NAME_MAX_CHARS: usize = 100;
/// Longest class description, in characters.
pub const DESCRIPTION_MAX_CHARS: usize = 500;
/// Most users one command may add or remove.
pub const MEMBERS_PER_COMMAND_MAX: usize = 200;

/// The characters of a join code: upper-case letters and digits without the look-alikes
/// (0/O, 1/I/L), so a code read aloud or copied from a board is typed right.
pub const JOIN_CODE_ALPHABET: &[u8; 31] = b"ABCDEFGHJKMNPQRSTUVWXYZ23456789";
/// Length of a join code.
pub const JOIN_CODE_LEN: usize = 8;

/// The short code a student types to find a class.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct JoinCode(String);

impl JoinCode {
    /// Turns random bytes (supplied by the command layer; the domain has no randomness) into
    /// a code. Each byte picks one character; the slight bias of `byte % 31` towards the
    /// first characters is irrelevant for a code that is also checked for uniqueness.
    pub fn from_entropy(bytes: [u8; JOIN_CODE_LEN]) -> JoinCode {
        let code = bytes
            .iter()
            .map(|b| JOIN_CODE_ALPHABET[usize::from(*b) % JOIN_CODE_ALPHABET.len()] as char)
            .collect();
        JoinCode(code)
    }

    /// Reads a code as a person typed it: surrounding spaces and lower case are forgiven,
    /// anything outside the alphabet is not.
    pub fn parse(raw: &str) -> Result<JoinCode, ClassroomError> {
        let code = raw.trim().to_ascii_uppercase();
        let valid =
            code.len() == JOIN_CODE_LEN && code.bytes().all(|b| JOIN_CODE_ALPHABET.contains(&b));
        if valid {
            Ok(JoinCode(code))
        } else {
            Err(ClassroomError::InvalidInput {
                field: "joinCode",
                reason: format!(
                    "a join code is {JOIN_CODE_LEN} letters and digits (without 0, 1, I, L or O)"
                ),
            })
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for JoinCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<String> for JoinCode {
    type Error = ClassroomError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        JoinCode::parse(&value)
    }
}

impl From<JoinCode> for String {
    fn from(code: JoinCode) -> Self {
        code.0
    }
}

/// A class and its members.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Classroom {
    id: ClassroomId,
    created: bool,
    deleted: bool,
    name: String,
    description: Option<String>,
    join_code: Option<JoinCode>,
    /// Each member with the role they had when they joined.
    members: BTreeMap<UserId, Role>,
    /// Students a teacher invited who have not answered yet, each with who invited them.
    /// Not membership. (Absent from snapshots taken before invitations existed.)
    #[serde(default)]
    invitations: BTreeMap<UserId, Option<UserId>>,
}

impl Classroom {
    /// Whether the class exists (was created and not deleted).
    pub fn exists(&self) -> bool {
        self.created && !self.deleted
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn description(&self) -> Option<&str> {
        self.description.as_deref()
    }

    pub fn join_code(&self) -> Option<&JoinCode> {
        self.join_code.as_ref()
    }

    /// The role `user` has in this class, if they are a member.
    pub fn member_role(&self, user: UserId) -> Option<Role> {
        self.members.get(&user).copied()
    }

    pub fn members(&self) -> impl Iterator<Item = (UserId, Role)> + '_ {
        self.members.iter().map(|(id, role)| (*id, *role))
    }

    /// Whether `student` has an invitation they have not answered yet.
    pub fn is_invited(&self, student: UserId) -> bool {
        self.invitations.contains_key(&student)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum ClassroomCommand {
    Create {
        /// The id of the class being created; it owns the name and join-code claims.
        classroom_id: ClassroomId,
        name: String,
        description: Option<String>,
        join_code: JoinCode,
        created_by: Actor,
    },
    /// Students only. An admin (or the platform) makes them members at once; a teacher of
    /// the class invites them.
    AddMembers {
        user_ids: Vec<UserId>,
        actor: Actor,
    },
    /// Removes members, and withdraws invitations not yet answered.
    RemoveMembers {
        user_ids: Vec<UserId>,
        actor: Actor,
    },
    Delete {
        actor: Actor,
    },
    /// The invited student (the actor) says yes and becomes a member.
    AcceptInvitation {
        actor: Actor,
    },
    /// The invited student (the actor) says no.
    DeclineInvitation {
        actor: Actor,
    },
    /// A student (the actor) joins with the class's code and becomes a member.
    Join {
        join_code: JoinCode,
        actor: Actor,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ClassroomEvent {
    ClassroomCreated {
        classroom_id: ClassroomId,
        name: String,
        description: Option<String>,
        join_code: JoinCode,
        /// `None` when the platform itself created the class.
        created_by: Option<UserId>,
    },
    MemberAdded {
        user: UserId,
        role: Role,
        added_by: Option<UserId>,
    },
    MemberRemoved {
        user: UserId,
    },
    ClassroomDeleted,
    /// A teacher of the class invited a student; not yet a member.
    MemberInvited {
        student: UserId,
        invited_by: Option<UserId>,
    },
    /// The student accepted the invitation of `invited_by` and is a member.
    InvitationAccepted {
        student: UserId,
        invited_by: Option<UserId>,
    },
    InvitationDeclined {
        student: UserId,
    },
    /// A teacher or admin took back an invitation not yet answered.
    InvitationWithdrawn {
        student: UserId,
    },
    /// The student joined with the class's code and is a member.
    MemberJoined {
        student: UserId,
    },
}

impl DomainEvent for ClassroomEvent {
    fn event_type(&self) -> String {
        match self {
            ClassroomEvent::ClassroomCreated { .. } => "ClassroomCreated",
            ClassroomEvent::MemberAdded { .. } => "MemberAdded",
            ClassroomEvent::MemberRemoved { .. } => "MemberRemoved",
            ClassroomEvent::ClassroomDeleted => "ClassroomDeleted",
            ClassroomEvent::MemberInvited { .. } => "MemberInvited",
            ClassroomEvent::InvitationAccepted { .. } => "InvitationAccepted",
            ClassroomEvent::InvitationDeclined { .. } => "InvitationDeclined",
            ClassroomEvent::InvitationWithdrawn { .. } => "InvitationWithdrawn",
            ClassroomEvent::MemberJoined { .. } => "MemberJoined",
        }
        .to_string()
    }

    fn event_version(&self) -> String {
        "1.0".to_string()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClassroomError {
    #[error("{reason}")]
    InvalidInput { field: &'static str, reason: String },
    #[error("{0}")]
    Forbidden(&'static str),
    #[error("this class does not exist")]
    NotFound,
    #[error("user {0} was not found")]
    UserNotFound(UserId),
    #[error("user {0} was erased and cannot join a class")]
    UserErased(UserId),
    #[error("this class was already created")]
    AlreadyCreated,
    #[error("a class with this name already exists")]
    NameTaken,
    #[error("another class already uses this join code")]
    JoinCodeTaken,
    #[error("user {id} is a {role}: only students can be added to a class")]
    NotAStudent { id: UserId, role: Role },
    #[error("you have no invitation to this class")]
    NoInvitation,
    #[error("no class has this join code")]
    WrongJoinCode,
    #[error(transparent)]
    Port(#[from] PortError),
}

impl DomainError for ClassroomError {
    fn kind(&self) -> ErrorKind {
        match self {
            ClassroomError::InvalidInput { .. } => ErrorKind::InvalidInput,
            ClassroomError::Forbidden(_) => ErrorKind::Forbidden,
            ClassroomError::NotFound
            | ClassroomError::UserNotFound(_)
            | ClassroomError::NoInvitation
            | ClassroomError::WrongJoinCode => ErrorKind::NotFound,
            ClassroomError::NotAStudent { .. } => ErrorKind::InvalidInput,
            ClassroomError::UserErased(_)
            | ClassroomError::AlreadyCreated
            | ClassroomError::NameTaken
            | ClassroomError::JoinCodeTaken => ErrorKind::Conflict,
            ClassroomError::Port(e) => e.kind(),
        }
    }

    fn field(&self) -> Option<&'static str> {
        match self {
            ClassroomError::InvalidInput { field, .. } => Some(field),
            ClassroomError::NotAStudent { .. } => Some("userIds"),
            _ => None,
        }
    }
}

/// The form of a name that uniqueness is judged on: "Hebrew 101" and " hebrew 101 " are the
/// same class.
fn name_key(name: &str) -> String {
    name.trim().to_lowercase()
}

fn invalid(field: &'static str, reason: impl Into<String>) -> ClassroomError {
    ClassroomError::InvalidInput {
        field,
        reason: reason.into(),
    }
}

fn valid_name(raw: &str) -> Result<String, ClassroomError> {
    let name = text::bounded(raw, NAME_MAX_CHARS)
        .map_err(|p| invalid("name", p.reason("a class needs a name", "a class name")))?;
    Ok(name.to_string())
}

/// A blank description is no description.
fn valid_description(raw: Option<String>) -> Result<Option<String>, ClassroomError> {
    // `optional` only ever finds a description too long, so no "required" reason is needed.
    let description = text::optional(raw.as_deref(), DESCRIPTION_MAX_CHARS)
        .map_err(|p| invalid("description", p.reason("", "a class description")))?;
    Ok(description.map(str::to_string))
}

/// The users a membership command names, each once, in the order given.
fn valid_user_ids(user_ids: Vec<UserId>) -> Result<Vec<UserId>, ClassroomError> {
    if user_ids.is_empty() {
        return Err(invalid("userIds", "name at least one user"));
    }
    if user_ids.len() > MEMBERS_PER_COMMAND_MAX {
        return Err(invalid(
            "userIds",
            format!("at most {MEMBERS_PER_COMMAND_MAX} users can be added or removed at once"),
        ));
    }
    let mut seen = BTreeSet::new();
    Ok(user_ids.into_iter().filter(|id| seen.insert(*id)).collect())
}

/// Insists `id` is a live student: the only people who become members besides the class's
/// teachers.
async fn ensure_student(services: &DomainServices, id: UserId) -> Result<(), ClassroomError> {
    let facts = services
        .users
        .user(id)
        .await?
        .ok_or(ClassroomError::UserNotFound(id))?;
    if facts.erased {
        return Err(ClassroomError::UserErased(id));
    }
    if facts.role != Role::Student {
        return Err(ClassroomError::NotAStudent {
            id,
            role: facts.role,
        });
    }
    Ok(())
}

/// The student acting for themself (joining, accepting); nobody else may.
fn acting_student(actor: Actor, refusal: &'static str) -> Result<UserId, ClassroomError> {
    match actor {
        Actor::User {
            id,
            role: Role::Student,
        } => Ok(id),
        _ => Err(ClassroomError::Forbidden(refusal)),
    }
}

/// What a `Create` command asks for, before it is validated.
struct NewClass {
    classroom_id: ClassroomId,
    name: String,
    description: Option<String>,
    join_code: JoinCode,
    created_by: Actor,
}

impl Classroom {
    /// Commands other than `Create` act on an existing class.
    fn ensure_exists(&self) -> Result<(), ClassroomError> {
        if self.exists() {
            Ok(())
        } else {
            Err(ClassroomError::NotFound)
        }
    }

    /// An admin manages any class; a teacher only a class they are a teacher of.
    fn ensure_may_manage(&self, actor: Actor) -> Result<(), ClassroomError> {
        let member_teacher = matches!(
            actor,
            Actor::User { id, role: Role::Teacher } if self.member_role(id) == Some(Role::Teacher)
        );
        if actor.is_admin() || member_teacher {
            Ok(())
        } else {
            Err(ClassroomError::Forbidden(
                "only an admin or a teacher of this class may change it",
            ))
        }
    }

    async fn create(
        &mut self,
        new_class: NewClass,
        services: &DomainServices,
        sink: &EventSink<Self>,
    ) -> Result<(), ClassroomError> {
        let NewClass {
            classroom_id,
            name,
            description,
            join_code,
            created_by,
        } = new_class;
        if self.created {
            return Err(ClassroomError::AlreadyCreated);
        }
        let creator_teacher = match created_by {
            Actor::User {
                id,
                role: Role::Teacher,
            } => Some(id),
            actor if actor.is_admin() => None,
            _ => {
                return Err(ClassroomError::Forbidden(
                    "only a teacher or an admin may create a class",
                ))
            }
        };
        let name = valid_name(&name)?;
        let description = valid_description(description)?;

        let owner = classroom_id.to_string();
        let key = name_key(&name);
        if let ClaimOutcome::TakenBy(_) = services
            .claims
            .claim(ClaimScope::ClassroomName, &key, &owner)
            .await?
        {
            return Err(ClassroomError::NameTaken);
        }
        let code_claim = services
            .claims
            .claim(ClaimScope::ClassroomJoinCode, join_code.as_str(), &owner)
            .await?;
        if let ClaimOutcome::TakenBy(_) = code_claim {
            // Give the name back, so a retry with a fresh code is not blocked by ourselves
            // and a failed creation leaves nothing behind.
            services
                .claims
                .release(ClaimScope::ClassroomName, &key, &owner)
                .await?;
            return Err(ClassroomError::JoinCodeTaken);
        }

        let event = ClassroomEvent::ClassroomCreated {
            classroom_id,
            name,
            description,
            join_code,
            created_by: created_by.user_id(),
        };
        sink.write(event, self).await;
        if let Some(teacher) = creator_teacher {
            let event = ClassroomEvent::MemberAdded {
                user: teacher,
                role: Role::Teacher,
                added_by: Some(teacher),
            };
            sink.write(event, self).await;
        }
        Ok(())
    }

    async fn add_members(
        &mut self,
        user_ids: Vec<UserId>,
        actor: Actor,
        services: &DomainServices,
        sink: &EventSink<Self>,
    ) -> Result<(), ClassroomError> {
        self.ensure_exists()?;
        self.ensure_may_manage(actor)?;
        let user_ids = valid_user_ids(user_ids)?;
        // Every user is checked before anyone is added: the command succeeds or fails whole.
        for id in &user_ids {
            ensure_student(services, *id).await?;
        }
        // An admin's word is enough; a teacher's is an invitation the student answers.
        let direct = actor.is_admin();
        for user in user_ids {
            if self.members.contains_key(&user) {
                continue;
            }
            let event = if direct {
                ClassroomEvent::MemberAdded {
                    user,
                    role: Role::Student,
                    added_by: actor.user_id(),
                }
            } else if self.is_invited(user) {
                continue;
            } else {
                ClassroomEvent::MemberInvited {
                    student: user,
                    invited_by: actor.user_id(),
                }
            };
            sink.write(event, self).await;
        }
        Ok(())
    }

    async fn remove_members(
        &mut self,
        user_ids: Vec<UserId>,
        actor: Actor,
        sink: &EventSink<Self>,
    ) -> Result<(), ClassroomError> {
        self.ensure_exists()?;
        self.ensure_may_manage(actor)?;
        for user in valid_user_ids(user_ids)? {
            if self.members.contains_key(&user) {
                sink.write(ClassroomEvent::MemberRemoved { user }, self)
                    .await;
            } else if self.is_invited(user) {
                sink.write(ClassroomEvent::InvitationWithdrawn { student: user }, self)
                    .await;
            }
        }
        Ok(())
    }

    async fn accept_invitation(
        &mut self,
        actor: Actor,
        services: &DomainServices,
        sink: &EventSink<Self>,
    ) -> Result<(), ClassroomError> {
        self.ensure_exists()?;
        let student = acting_student(actor, "only the invited student can accept an invitation")?;
        ensure_student(services, student).await?;
        if self.members.contains_key(&student) {
            return Ok(());
        }
        let Some(invited_by) = self.invitations.get(&student).copied() else {
            return Err(ClassroomError::NoInvitation);
        };
        let event = ClassroomEvent::InvitationAccepted {
            student,
            invited_by,
        };
        sink.write(event, self).await;
        Ok(())
    }

    /// Saying no needs no check of the student's standing: ending a relationship that never
    /// began must always be possible.
    async fn decline_invitation(
        &mut self,
        actor: Actor,
        sink: &EventSink<Self>,
    ) -> Result<(), ClassroomError> {
        self.ensure_exists()?;
        let student = actor.user_id().ok_or(ClassroomError::Forbidden(
            "only the invited student can decline an invitation",
        ))?;
        if self.is_invited(student) {
            sink.write(ClassroomEvent::InvitationDeclined { student }, self)
                .await;
        }
        Ok(())
    }

    async fn join(
        &mut self,
        join_code: JoinCode,
        actor: Actor,
        services: &DomainServices,
        sink: &EventSink<Self>,
    ) -> Result<(), ClassroomError> {
        self.ensure_exists()?;
        let student = acting_student(actor, "only a student can join a class with its code")?;
        if self.join_code.as_ref() != Some(&join_code) {
            return Err(ClassroomError::WrongJoinCode);
        }
        ensure_student(services, student).await?;
        if !self.members.contains_key(&student) {
            sink.write(ClassroomEvent::MemberJoined { student }, self)
                .await;
        }
        Ok(())
    }

    async fn delete(
        &mut self,
        actor: Actor,
        services: &DomainServices,
        sink: &EventSink<Self>,
    ) -> Result<(), ClassroomError> {
        self.ensure_exists()?;
        self.ensure_may_manage(actor)?;
        let owner = self.id.to_string();
        services
            .claims
            .release(ClaimScope::ClassroomName, &name_key(&self.name), &owner)
            .await?;
        if let Some(code) = &self.join_code {
            services
                .claims
                .release(ClaimScope::ClassroomJoinCode, code.as_str(), &owner)
                .await?;
        }
        sink.write(ClassroomEvent::ClassroomDeleted, self).await;
        Ok(())
    }
}

impl Aggregate for Classroom {
    const TYPE: &'static str = "Classroom";
    type Command = ClassroomCommand;
    type Event = ClassroomEvent;
    type Error = ClassroomError;
    type Services = DomainServices;

    async fn handle(
        &mut self,
        command: Self::Command,
        services: &Self::Services,
        sink: &EventSink<Self>,
    ) -> Result<(), Self::Error> {
        match command {
            ClassroomCommand::Create {
                classroom_id,
                name,
                description,
                join_code,
                created_by,
            } => {
                let new_class = NewClass {
                    classroom_id,
                    name,
                    description,
                    join_code,
                    created_by,
                };
                self.create(new_class, services, sink).await
            }
            ClassroomCommand::AddMembers { user_ids, actor } => {
                self.add_members(user_ids, actor, services, sink).await
            }
            ClassroomCommand::RemoveMembers { user_ids, actor } => {
                self.remove_members(user_ids, actor, sink).await
            }
            ClassroomCommand::Delete { actor } => self.delete(actor, services, sink).await,
            ClassroomCommand::AcceptInvitation { actor } => {
                self.accept_invitation(actor, services, sink).await
            }
            ClassroomCommand::DeclineInvitation { actor } => {
                self.decline_invitation(actor, sink).await
            }
            ClassroomCommand::Join { join_code, actor } => {
                self.join(join_code, actor, services, sink).await
            }
        }
    }

    fn apply(&mut self, event: Self::Event) {
        match event {
            ClassroomEvent::ClassroomCreated {
                classroom_id,
                name,
                description,
                join_code,
                created_by: _,
            } => {
                self.id = classroom_id;
                self.created = true;
                self.name = name;
                self.description = description;
                self.join_code = Some(join_code);
            }
            ClassroomEvent::MemberAdded { user, role, .. } => {
                self.invitations.remove(&user);
                self.members.insert(user, role);
            }
            ClassroomEvent::MemberRemoved { user } => {
                self.members.remove(&user);
            }
            ClassroomEvent::ClassroomDeleted => {
                self.deleted = true;
            }
            ClassroomEvent::MemberInvited {
                student,
                invited_by,
            } => {
                self.invitations.insert(student, invited_by);
            }
            ClassroomEvent::InvitationAccepted { student, .. }
            | ClassroomEvent::MemberJoined { student } => {
                self.invitations.remove(&student);
                self.members.insert(student, Role::Student);
            }
            ClassroomEvent::InvitationDeclined { student }
            | ClassroomEvent::InvitationWithdrawn { student } => {
                self.invitations.remove(&student);
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
        class: ClassroomId,
        teacher: UserId,
        other_teacher: UserId,
        student: UserId,
        admin: UserId,
    }

    fn fixture() -> Fixture {
        let (teacher, other_teacher, student, admin) =
            (UserId::new(), UserId::new(), UserId::new(), UserId::new());
        Fixture {
            world: TestWorld::default()
                .with_user(teacher, Role::Teacher)
                .with_user(other_teacher, Role::Teacher)
                .with_user(student, Role::Student)
                .with_user(admin, Role::Admin),
            class: ClassroomId::new(),
            teacher,
            other_teacher,
            student,
            admin,
        }
    }

    fn code() -> JoinCode {
        JoinCode::parse("HEB2ABCD").unwrap()
    }

    impl Fixture {
        fn when(
            &self,
            given: Vec<ClassroomEvent>,
            command: ClassroomCommand,
        ) -> AggregateResultValidator<Classroom> {
            TestFramework::<Classroom>::with(self.world.services())
                .given(given)
                .when(command)
        }

        fn as_teacher(&self) -> Actor {
            Actor::user(self.teacher, Role::Teacher)
        }

        fn as_admin(&self) -> Actor {
            Actor::user(self.admin, Role::Admin)
        }

        fn as_student(&self) -> Actor {
            Actor::user(self.student, Role::Student)
        }

        fn accept(&self, actor: Actor) -> ClassroomCommand {
            ClassroomCommand::AcceptInvitation { actor }
        }

        fn join(&self, code: &str, actor: Actor) -> ClassroomCommand {
            ClassroomCommand::Join {
                join_code: JoinCode::parse(code).unwrap(),
                actor,
            }
        }

        fn create(&self, name: &str, created_by: Actor) -> ClassroomCommand {
            ClassroomCommand::Create {
                classroom_id: self.class,
                name: name.to_string(),
                description: Some("  Sunday mornings  ".to_string()),
                join_code: code(),
                created_by,
            }
        }

        fn created(&self, created_by: Option<UserId>) -> ClassroomEvent {
            ClassroomEvent::ClassroomCreated {
                classroom_id: self.class,
                name: "Hebrew 101".to_string(),
                description: Some("Sunday mornings".to_string()),
                join_code: code(),
                created_by,
            }
        }

        /// A class created by the teacher, who is its first member.
        fn teachers_class(&self) -> Vec<ClassroomEvent> {
            vec![
                self.created(Some(self.teacher)),
                member_added(self.teacher, Role::Teacher, Some(self.teacher)),
            ]
        }

        fn claim_holder(&self, scope: ClaimScope, value: &str) -> Option<String> {
            self.world.claim_holder(scope, value)
        }

        fn hold_claim(&self, scope: ClaimScope, value: &str, owner: &str) {
            self.world.hold_claim(scope, value, owner);
        }
    }

    fn member_added(user: UserId, role: Role, added_by: Option<UserId>) -> ClassroomEvent {
        ClassroomEvent::MemberAdded {
            user,
            role,
            added_by,
        }
    }

    fn invited(student: UserId, invited_by: Option<UserId>) -> ClassroomEvent {
        ClassroomEvent::MemberInvited {
            student,
            invited_by,
        }
    }

    fn assert_invalid(result: Result<Vec<ClassroomEvent>, ClassroomError>, field: &str) {
        let err = result.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidInput, "{err}");
        assert_eq!(err.field(), Some(field));
    }

    // --- join codes ---

    #[test]
    fn join_codes_from_entropy_use_only_the_unambiguous_alphabet() {
        let code = JoinCode::from_entropy([0, 30, 31, 255, 8, 22, 23, 100]);
        assert_eq!(code.as_str(), "A9AHJZ2H");
        for bytes in [[0u8; 8], [255; 8], [7, 77, 177, 27, 127, 227, 3, 33]] {
            let code = JoinCode::from_entropy(bytes);
            assert_eq!(code.as_str().len(), JOIN_CODE_LEN);
            assert_eq!(JoinCode::parse(code.as_str()).unwrap(), code);
        }
        assert!(!JOIN_CODE_ALPHABET.iter().any(|c| b"01ILO".contains(c)));
    }

    #[test]
    fn a_typed_join_code_is_forgiven_case_and_spaces_but_nothing_else() {
        assert_eq!(JoinCode::parse(" heb2abcd ").unwrap().as_str(), "HEB2ABCD");
        for bad in [
            "",
            "HEB2ABC",
            "HEB2ABCDE",
            "HEB0ABCD",
            "HEBIABCD",
            "HEB-ABCD",
            "אבגדהוזח",
        ] {
            let err = JoinCode::parse(bad).unwrap_err();
            assert_eq!(err.field(), Some("joinCode"), "{bad}");
        }
    }

    #[test]
    fn join_codes_are_plain_strings_on_the_wire_and_checked_on_the_way_in() {
        assert_eq!(serde_json::to_string(&code()).unwrap(), "\"HEB2ABCD\"");
        assert_eq!(
            serde_json::from_str::<JoinCode>("\"HEB2ABCD\"").unwrap(),
            code()
        );
        assert!(serde_json::from_str::<JoinCode>("\"0000\"").is_err());
    }

    // --- create ---

    #[test]
    fn a_teacher_creates_a_class_and_becomes_its_first_member() {
        let f = fixture();
        f.when(vec![], f.create("  Hebrew 101 ", f.as_teacher()))
            .then_expect_events(f.teachers_class());
        let owner = Some(f.class.to_string());
        assert_eq!(
            f.claim_holder(ClaimScope::ClassroomName, "hebrew 101"),
            owner
        );
        assert_eq!(
            f.claim_holder(ClaimScope::ClassroomJoinCode, "HEB2ABCD"),
            owner
        );
    }

    #[test]
    fn an_admin_or_the_system_creates_a_class_without_joining_it() {
        let f = fixture();
        f.when(vec![], f.create("Hebrew 101", f.as_admin()))
            .then_expect_events(vec![f.created(Some(f.admin))]);
        let f = fixture();
        f.when(vec![], f.create("Hebrew 101", Actor::System))
            .then_expect_events(vec![f.created(None)]);
    }

    #[test]
    fn a_blank_description_is_no_description() {
        let f = fixture();
        let events = f
            .when(
                vec![],
                ClassroomCommand::Create {
                    classroom_id: f.class,
                    name: "Hebrew 101".into(),
                    description: Some("   ".into()),
                    join_code: code(),
                    created_by: Actor::System,
                },
            )
            .inspect_result()
            .unwrap();
        assert!(matches!(
            &events[..],
            [ClassroomEvent::ClassroomCreated {
                description: None,
                ..
            }]
        ));
    }

    #[test]
    fn students_and_strangers_cannot_create_a_class() {
        let f = fixture();
        for actor in [Actor::user(f.student, Role::Student), Actor::Anonymous] {
            let err = f
                .when(vec![], f.create("Hebrew 101", actor))
                .inspect_result()
                .unwrap_err();
            assert_eq!(err.kind(), ErrorKind::Forbidden);
        }
        assert_eq!(
            f.claim_holder(ClaimScope::ClassroomName, "hebrew 101"),
            None
        );
    }

    #[test]
    fn a_class_needs_a_reasonable_name_and_description() {
        let f = fixture();
        for name in ["", "   ", &"א".repeat(NAME_MAX_CHARS + 1)] {
            assert_invalid(
                f.when(vec![], f.create(name, f.as_teacher()))
                    .inspect_result(),
                "name",
            );
        }
        // Hebrew counts by characters, not bytes.
        f.when(vec![], f.create(&"א".repeat(NAME_MAX_CHARS), Actor::System))
            .inspect_result()
            .unwrap();

        let long = ClassroomCommand::Create {
            classroom_id: ClassroomId::new(),
            name: "Hebrew 102".into(),
            description: Some("x".repeat(DESCRIPTION_MAX_CHARS + 1)),
            join_code: JoinCode::from_entropy([1; 8]),
            created_by: Actor::System,
        };
        assert_invalid(f.when(vec![], long).inspect_result(), "description");
    }

    #[test]
    fn class_names_are_unique_whatever_their_case() {
        let f = fixture();
        f.hold_claim(ClaimScope::ClassroomName, "hebrew 101", "another-class");
        let err = f
            .when(vec![], f.create("HEBREW 101", f.as_teacher()))
            .inspect_result()
            .unwrap_err();
        assert_eq!(err, ClassroomError::NameTaken);
        assert_eq!(err.kind(), ErrorKind::Conflict);
        assert_eq!(err.to_string(), "a class with this name already exists");
        assert_eq!(
            f.claim_holder(ClaimScope::ClassroomJoinCode, "HEB2ABCD"),
            None
        );
    }

    #[test]
    fn a_join_code_in_use_is_a_conflict_and_gives_the_name_back() {
        let f = fixture();
        f.hold_claim(ClaimScope::ClassroomJoinCode, "HEB2ABCD", "another-class");
        let err = f
            .when(vec![], f.create("Hebrew 101", f.as_teacher()))
            .inspect_result()
            .unwrap_err();
        assert_eq!(err, ClassroomError::JoinCodeTaken);
        assert_eq!(err.kind(), ErrorKind::Conflict);
        assert_eq!(
            f.claim_holder(ClaimScope::ClassroomName, "hebrew 101"),
            None
        );
    }

    #[test]
    fn a_class_is_created_once() {
        let f = fixture();
        f.when(f.teachers_class(), f.create("Hebrew 101", f.as_teacher()))
            .then_expect_error(ClassroomError::AlreadyCreated);
        let mut deleted = f.teachers_class();
        deleted.push(ClassroomEvent::ClassroomDeleted);
        f.when(deleted, f.create("Hebrew 101", f.as_teacher()))
            .then_expect_error(ClassroomError::AlreadyCreated);
    }

    // --- members ---

    #[test]
    fn a_class_teacher_adding_students_only_invites_them() {
        let f = fixture();
        f.when(
            f.teachers_class(),
            ClassroomCommand::AddMembers {
                user_ids: vec![f.student, f.student],
                actor: f.as_teacher(),
            },
        )
        .then_expect_events(vec![invited(f.student, Some(f.teacher))]);
    }

    #[test]
    fn an_admin_adds_students_to_any_class_at_once() {
        let f = fixture();
        f.when(
            vec![f.created(None)],
            ClassroomCommand::AddMembers {
                user_ids: vec![f.student],
                actor: f.as_admin(),
            },
        )
        .then_expect_events(vec![member_added(f.student, Role::Student, Some(f.admin))]);
        f.when(
            vec![f.created(None)],
            ClassroomCommand::AddMembers {
                user_ids: vec![f.student],
                actor: Actor::System,
            },
        )
        .then_expect_events(vec![member_added(f.student, Role::Student, None)]);
        // An admin's word also settles an invitation still waiting for an answer.
        let mut given = f.teachers_class();
        given.push(invited(f.student, Some(f.teacher)));
        f.when(
            given,
            ClassroomCommand::AddMembers {
                user_ids: vec![f.student],
                actor: f.as_admin(),
            },
        )
        .then_expect_events(vec![member_added(f.student, Role::Student, Some(f.admin))]);
    }

    #[test]
    fn only_students_can_be_added_by_anyone() {
        let f = fixture();
        for actor in [f.as_teacher(), f.as_admin(), Actor::System] {
            for (other, role) in [(f.other_teacher, Role::Teacher), (f.admin, Role::Admin)] {
                let err = f
                    .when(
                        f.teachers_class(),
                        ClassroomCommand::AddMembers {
                            // The student named first is not added either.
                            user_ids: vec![f.student, other],
                            actor,
                        },
                    )
                    .inspect_result()
                    .unwrap_err();
                assert_eq!(err, ClassroomError::NotAStudent { id: other, role });
                assert_eq!(err.kind(), ErrorKind::InvalidInput);
                assert_eq!(err.field(), Some("userIds"));
                assert_eq!(
                    err.to_string(),
                    format!("user {other} is a {role}: only students can be added to a class")
                );
            }
        }
    }

    #[test]
    fn adding_members_or_invitees_again_records_nothing() {
        let f = fixture();
        let mut given = f.teachers_class();
        given.push(member_added(f.student, Role::Student, Some(f.admin)));
        for actor in [f.as_teacher(), f.as_admin()] {
            f.when(
                given.clone(),
                ClassroomCommand::AddMembers {
                    user_ids: vec![f.student],
                    actor,
                },
            )
            .then_expect_events(vec![]);
        }
        let mut given = f.teachers_class();
        given.push(invited(f.student, Some(f.teacher)));
        f.when(
            given,
            ClassroomCommand::AddMembers {
                user_ids: vec![f.student],
                actor: f.as_teacher(),
            },
        )
        .then_expect_events(vec![]);
    }

    // --- the student's side: invitations and the join code ---

    #[test]
    fn an_invited_student_accepts_and_becomes_a_member() {
        let f = fixture();
        let mut given = f.teachers_class();
        given.push(invited(f.student, Some(f.teacher)));
        f.when(given.clone(), f.accept(f.as_student()))
            .then_expect_events(vec![ClassroomEvent::InvitationAccepted {
                student: f.student,
                invited_by: Some(f.teacher),
            }]);
        // Accepting again (a retry) records nothing.
        given.push(ClassroomEvent::InvitationAccepted {
            student: f.student,
            invited_by: Some(f.teacher),
        });
        f.when(given, f.accept(f.as_student()))
            .then_expect_events(vec![]);
    }

    #[test]
    fn nobody_accepts_without_an_invitation_or_for_someone_else() {
        let f = fixture();
        let err = f
            .when(f.teachers_class(), f.accept(f.as_student()))
            .inspect_result()
            .unwrap_err();
        assert_eq!(err, ClassroomError::NoInvitation);
        assert_eq!(err.kind(), ErrorKind::NotFound);

        let mut given = f.teachers_class();
        given.push(invited(f.student, Some(f.teacher)));
        for actor in [
            f.as_teacher(),
            f.as_admin(),
            Actor::System,
            Actor::Anonymous,
        ] {
            let err = f
                .when(given.clone(), f.accept(actor))
                .inspect_result()
                .unwrap_err();
            assert_eq!(err.kind(), ErrorKind::Forbidden, "{actor:?}");
        }
        // A student who was invited and then erased cannot accept.
        f.world.erase_user(f.student);
        f.when(given, f.accept(f.as_student()))
            .then_expect_error(ClassroomError::UserErased(f.student));
    }

    #[test]
    fn an_invited_student_declines_and_a_teacher_withdraws() {
        let f = fixture();
        let mut given = f.teachers_class();
        given.push(invited(f.student, Some(f.teacher)));
        f.when(
            given.clone(),
            ClassroomCommand::DeclineInvitation {
                actor: f.as_student(),
            },
        )
        .then_expect_events(vec![ClassroomEvent::InvitationDeclined {
            student: f.student,
        }]);
        // Declining what is not (or no longer) there records nothing.
        f.when(
            f.teachers_class(),
            ClassroomCommand::DeclineInvitation {
                actor: f.as_student(),
            },
        )
        .then_expect_events(vec![]);

        f.when(
            given,
            ClassroomCommand::RemoveMembers {
                user_ids: vec![f.student],
                actor: f.as_teacher(),
            },
        )
        .then_expect_events(vec![ClassroomEvent::InvitationWithdrawn {
            student: f.student,
        }]);
    }

    #[test]
    fn a_student_joins_with_the_class_code() {
        let f = fixture();
        f.when(f.teachers_class(), f.join(" heb2abcd ", f.as_student()))
            .then_expect_events(vec![ClassroomEvent::MemberJoined { student: f.student }]);
        // An invited student may join with the code too: that answers the invitation.
        let mut given = f.teachers_class();
        given.push(invited(f.student, Some(f.teacher)));
        f.when(given, f.join("HEB2ABCD", f.as_student()))
            .then_expect_events(vec![ClassroomEvent::MemberJoined { student: f.student }]);
        // Joining again records nothing.
        let mut given = f.teachers_class();
        given.push(ClassroomEvent::MemberJoined { student: f.student });
        f.when(given, f.join("HEB2ABCD", f.as_student()))
            .then_expect_events(vec![]);
    }

    #[test]
    fn only_a_student_with_the_right_code_joins() {
        let f = fixture();
        let err = f
            .when(f.teachers_class(), f.join("ZZZZZZZZ", f.as_student()))
            .inspect_result()
            .unwrap_err();
        assert_eq!(err, ClassroomError::WrongJoinCode);
        assert_eq!(err.kind(), ErrorKind::NotFound);
        for actor in [
            Actor::user(f.other_teacher, Role::Teacher),
            f.as_admin(),
            Actor::System,
            Actor::Anonymous,
        ] {
            let err = f
                .when(f.teachers_class(), f.join("HEB2ABCD", actor))
                .inspect_result()
                .unwrap_err();
            assert_eq!(err.kind(), ErrorKind::Forbidden, "{actor:?}");
        }
        // A token that still says Student for someone who is now a teacher is not enough.
        let promoted = Actor::user(f.other_teacher, Role::Student);
        f.when(f.teachers_class(), f.join("HEB2ABCD", promoted))
            .then_expect_error(ClassroomError::NotAStudent {
                id: f.other_teacher,
                role: Role::Teacher,
            });
        f.world.erase_user(f.student);
        f.when(f.teachers_class(), f.join("HEB2ABCD", f.as_student()))
            .then_expect_error(ClassroomError::UserErased(f.student));
        let mut deleted = f.teachers_class();
        deleted.push(ClassroomEvent::ClassroomDeleted);
        f.when(deleted, f.join("HEB2ABCD", f.as_student()))
            .then_expect_error(ClassroomError::NotFound);
    }

    #[test]
    fn only_admins_and_the_class_teachers_manage_members() {
        let f = fixture();
        let outsiders = [
            Actor::user(f.other_teacher, Role::Teacher),
            Actor::user(f.student, Role::Student),
            Actor::Anonymous,
        ];
        let mut given = f.teachers_class();
        // Even a student who is a member may not manage the class.
        given.push(member_added(f.student, Role::Student, Some(f.teacher)));
        for actor in outsiders {
            for command in [
                ClassroomCommand::AddMembers {
                    user_ids: vec![f.other_teacher],
                    actor,
                },
                ClassroomCommand::RemoveMembers {
                    user_ids: vec![f.teacher],
                    actor,
                },
                ClassroomCommand::Delete { actor },
            ] {
                let err = f.when(given.clone(), command).inspect_result().unwrap_err();
                assert_eq!(err.kind(), ErrorKind::Forbidden);
            }
        }
    }

    #[test]
    fn unknown_users_are_named_and_nobody_is_added() {
        let f = fixture();
        let stranger = UserId::new();
        let err = f
            .when(
                f.teachers_class(),
                ClassroomCommand::AddMembers {
                    user_ids: vec![f.student, stranger],
                    actor: f.as_teacher(),
                },
            )
            .inspect_result()
            .unwrap_err();
        assert_eq!(err, ClassroomError::UserNotFound(stranger));
        assert_eq!(err.kind(), ErrorKind::NotFound);
        assert!(err.to_string().contains(&stranger.to_string()));
    }

    #[test]
    fn erased_users_cannot_join() {
        let f = fixture();
        f.world.erase_user(f.student);
        let err = f
            .when(
                f.teachers_class(),
                ClassroomCommand::AddMembers {
                    user_ids: vec![f.student],
                    actor: f.as_teacher(),
                },
            )
            .inspect_result()
            .unwrap_err();
        assert_eq!(err, ClassroomError::UserErased(f.student));
        assert_eq!(err.kind(), ErrorKind::Conflict);
    }

    #[test]
    fn a_membership_command_names_one_to_two_hundred_users() {
        let f = fixture();
        let too_many: Vec<UserId> = (0..=MEMBERS_PER_COMMAND_MAX)
            .map(|_| UserId::new())
            .collect();
        for user_ids in [vec![], too_many] {
            assert_invalid(
                f.when(
                    f.teachers_class(),
                    ClassroomCommand::AddMembers {
                        user_ids: user_ids.clone(),
                        actor: f.as_teacher(),
                    },
                )
                .inspect_result(),
                "userIds",
            );
            assert_invalid(
                f.when(
                    f.teachers_class(),
                    ClassroomCommand::RemoveMembers {
                        user_ids,
                        actor: f.as_teacher(),
                    },
                )
                .inspect_result(),
                "userIds",
            );
        }
    }

    #[test]
    fn removing_members_skips_non_members() {
        let f = fixture();
        let mut given = f.teachers_class();
        given.push(member_added(f.student, Role::Student, Some(f.teacher)));
        f.when(
            given,
            ClassroomCommand::RemoveMembers {
                user_ids: vec![f.student, f.other_teacher, UserId::new()],
                actor: f.as_teacher(),
            },
        )
        .then_expect_events(vec![ClassroomEvent::MemberRemoved { user: f.student }]);
    }

    #[test]
    fn a_teacher_who_left_the_class_no_longer_manages_it() {
        let f = fixture();
        let mut given = f.teachers_class();
        given.push(ClassroomEvent::MemberRemoved { user: f.teacher });
        let err = f
            .when(
                given,
                ClassroomCommand::AddMembers {
                    user_ids: vec![f.student],
                    actor: f.as_teacher(),
                },
            )
            .inspect_result()
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Forbidden);
    }

    // --- delete ---

    #[test]
    fn deleting_a_class_frees_its_name_and_code() {
        let f = fixture();
        let owner = f.class.to_string();
        f.hold_claim(ClaimScope::ClassroomName, "hebrew 101", &owner);
        f.hold_claim(ClaimScope::ClassroomJoinCode, "HEB2ABCD", &owner);
        f.when(
            f.teachers_class(),
            ClassroomCommand::Delete {
                actor: f.as_teacher(),
            },
        )
        .then_expect_events(vec![ClassroomEvent::ClassroomDeleted]);
        assert_eq!(
            f.claim_holder(ClaimScope::ClassroomName, "hebrew 101"),
            None
        );
        assert_eq!(
            f.claim_holder(ClaimScope::ClassroomJoinCode, "HEB2ABCD"),
            None
        );

        f.when(
            vec![f.created(None)],
            ClassroomCommand::Delete {
                actor: f.as_admin(),
            },
        )
        .then_expect_events(vec![ClassroomEvent::ClassroomDeleted]);
    }

    #[test]
    fn a_deleted_or_never_created_class_is_not_found() {
        let f = fixture();
        let mut deleted = f.teachers_class();
        deleted.push(ClassroomEvent::ClassroomDeleted);
        for given in [vec![], deleted] {
            for command in [
                ClassroomCommand::AddMembers {
                    user_ids: vec![f.student],
                    actor: Actor::System,
                },
                ClassroomCommand::RemoveMembers {
                    user_ids: vec![f.teacher],
                    actor: Actor::System,
                },
                ClassroomCommand::Delete {
                    actor: Actor::System,
                },
            ] {
                f.when(given.clone(), command)
                    .then_expect_error(ClassroomError::NotFound);
            }
        }
        assert_eq!(ClassroomError::NotFound.kind(), ErrorKind::NotFound);
    }

    // --- state and wire ---

    #[test]
    fn state_follows_the_events_and_survives_a_snapshot() {
        let f = fixture();
        let mut class = Classroom::default();
        for event in f.teachers_class() {
            class.apply(event);
        }
        class.apply(member_added(f.student, Role::Student, Some(f.teacher)));
        assert!(class.exists());
        assert_eq!(class.name(), "Hebrew 101");
        assert_eq!(class.description(), Some("Sunday mornings"));
        assert_eq!(class.join_code(), Some(&code()));
        assert_eq!(class.member_role(f.teacher), Some(Role::Teacher));
        assert_eq!(class.member_role(f.student), Some(Role::Student));
        assert_eq!(class.members().count(), 2);

        // An invitation is not membership, until it is accepted.
        class.apply(invited(f.other_teacher, Some(f.teacher)));
        assert!(class.is_invited(f.other_teacher));
        assert_eq!(class.member_role(f.other_teacher), None);

        let json = serde_json::to_string(&class).unwrap();
        assert_eq!(serde_json::from_str::<Classroom>(&json).unwrap(), class);

        class.apply(ClassroomEvent::ClassroomDeleted);
        assert!(!class.exists());
    }

    #[test]
    fn events_are_named_after_their_variant() {
        let f = fixture();
        let names: Vec<String> = [
            f.created(None),
            member_added(f.student, Role::Student, None),
            ClassroomEvent::MemberRemoved { user: f.student },
            ClassroomEvent::ClassroomDeleted,
            invited(f.student, None),
            ClassroomEvent::InvitationAccepted {
                student: f.student,
                invited_by: None,
            },
            ClassroomEvent::InvitationDeclined { student: f.student },
            ClassroomEvent::InvitationWithdrawn { student: f.student },
            ClassroomEvent::MemberJoined { student: f.student },
        ]
        .iter()
        .map(|e| {
            assert_eq!(e.event_version(), "1.0");
            e.event_type()
        })
        .collect();
        assert_eq!(
            names,
            [
                "ClassroomCreated",
                "MemberAdded",
                "MemberRemoved",
                "ClassroomDeleted",
                "MemberInvited",
                "InvitationAccepted",
                "InvitationDeclined",
                "InvitationWithdrawn",
                "MemberJoined"
            ]
        );
    }

    #[test]
    fn events_and_snapshots_stored_before_invitations_still_load() {
        let (teacher, student) = (UserId::new(), UserId::new());
        // As the log holds them: `MemberAdded` kept its shape, so no upcaster is needed.
        let stored: ClassroomEvent = serde_json::from_value(serde_json::json!({
            "MemberAdded": {"user": student, "role": "Student", "added_by": teacher}
        }))
        .unwrap();
        assert_eq!(stored, member_added(student, Role::Student, Some(teacher)));
        // A snapshot taken before `invitations` existed.
        let snapshot = serde_json::json!({
            "id": ClassroomId::new(), "created": true, "deleted": false,
            "name": "Hebrew 101", "description": null, "join_code": "HEB2ABCD",
            "members": {teacher.to_string(): "Teacher", student.to_string(): "Student"}
        });
        let class: Classroom = serde_json::from_value(snapshot).unwrap();
        assert_eq!(class.member_role(student), Some(Role::Student));
        assert!(!class.is_invited(student));
    }

    #[test]
    fn port_failures_are_unavailable_unless_the_subject_was_erased() {
        let erased = ClassroomError::from(PortError::Erased(UserId::new()));
        assert_eq!(erased.kind(), ErrorKind::Conflict);
        let down = ClassroomError::from(PortError::Unavailable("timeout".into()));
        assert_eq!(down.kind(), ErrorKind::Unavailable);
        assert_eq!(down.field(), None);
    }
}
