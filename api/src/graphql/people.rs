//! People: the caller (`me`), profiles, the admin's user list, who teaches whom, and the
//! mutations on an account. Role changes and account creation for staff are admin-only;
//! everyone else changes only their own account.

use super::{authorize, connection, execute, new_id, page_request, state, Changed, PageConnection};
use crate::access::Subject;
use crate::auth::password;
use crate::error::{ApiError, ApiResult};
use async_graphql::dataloader::{DataLoader, Loader};
use async_graphql::{Context, InputObject, Object};
use std::collections::HashMap;
use std::sync::Arc;
use teachin_domain::actor::Role;
use teachin_domain::ids::UserId;
use teachin_domain::teaching::{TeacherStudents, TeacherStudentsCommand};
use teachin_domain::user::{HebrewLevel, Language, User, UserCommand};
use teachin_projections::queries::users::{Recipient, Recipients, UserView};
use teachin_projections::queries::ReadModels;
use uuid::Uuid;

/// Loads profiles in batches: a list that shows a person per row asks once per request.
pub struct UserLoader(pub ReadModels);

impl Loader<Uuid> for UserLoader {
    type Value = UserView;
    type Error = Arc<sqlx::Error>;

    async fn load(&self, keys: &[Uuid]) -> Result<HashMap<Uuid, UserView>, Self::Error> {
        let users = self.0.users_by_ids(keys).await.map_err(Arc::new)?;
        Ok(users.into_iter().map(|u| (u.user_id, u)).collect())
    }
}

/// One profile through the request's loader.
pub(crate) async fn load_user(ctx: &Context<'_>, id: Uuid) -> ApiResult<Option<UserView>> {
    ctx.data_unchecked::<DataLoader<UserLoader>>()
        .load_one(id)
        .await
        .map_err(|e| ApiError::internal(format!("loading users: {e}")))
}

/// Someone connected to the hub, with how many connections (tabs, devices) they have.
#[derive(async_graphql::SimpleObject)]
pub struct OnlineUserView {
    pub user_id: Uuid,
    pub role: Role,
    pub name: Option<String>,
    pub connections: i32,
}

#[derive(Default)]
pub struct PeopleQuery;

#[Object]
impl PeopleQuery {
    /// The signed-in caller's profile.
    async fn me(&self, ctx: &Context<'_>) -> ApiResult<UserView> {
        let caller = authorize(ctx, "me", Subject::Caller).await?;
        let id = super::signed_in(caller)?;
        load_user(ctx, id.0)
            .await?
            .ok_or_else(|| ApiError::not_found("your profile (it may still be being created)"))
    }

    /// A profile: yours, one of your students', or anyone's for an admin.
    async fn user(&self, ctx: &Context<'_>, id: Uuid) -> ApiResult<Option<UserView>> {
        authorize(ctx, "user", Subject::Person(UserId(id))).await?;
        load_user(ctx, id).await
    }

    /// Every account, newest first (admins).
    async fn users(
        &self,
        ctx: &Context<'_>,
        role: Option<Role>,
        first: Option<i32>,
        after: Option<String>,
    ) -> ApiResult<PageConnection<UserView>> {
        authorize(ctx, "users", Subject::Caller).await?;
        let page = page_request(first, after.as_deref())?;
        Ok(connection(state(ctx).read.users(role, &page).await?))
    }

    /// The students assigned to a teacher.
    async fn students_of(
        &self,
        ctx: &Context<'_>,
        teacher_id: Uuid,
        first: Option<i32>,
        after: Option<String>,
    ) -> ApiResult<PageConnection<UserView>> {
        authorize(ctx, "studentsOf", Subject::Person(UserId(teacher_id))).await?;
        let page = page_request(first, after.as_deref())?;
        Ok(connection(
            state(ctx).read.students_of(teacher_id, &page).await?,
        ))
    }

    /// The teachers of a student.
    async fn teachers_of(&self, ctx: &Context<'_>, student_id: Uuid) -> ApiResult<Vec<UserView>> {
        authorize(ctx, "teachersOf", Subject::Person(UserId(student_id))).await?;
        Ok(state(ctx).read.teachers_of(student_id).await?)
    }

    /// Who is connected to the realtime hub right now, across replicas (admins).
    async fn online_users(&self, ctx: &Context<'_>) -> ApiResult<Vec<OnlineUserView>> {
        authorize(ctx, "onlineUsers", Subject::Caller).await?;
        let Some(hub) = &state(ctx).hub else {
            return Ok(Vec::new());
        };
        let online = hub.online_users().await.map_err(ApiError::internal)?;
        Ok(online
            .into_iter()
            .map(|u| OnlineUserView {
                user_id: u.user_id.0,
                role: u.role,
                name: u.name,
                connections: u.connections as i32,
            })
            .collect())
    }

    /// People whose name matches, to address an email to: a teacher's own students
    /// (assigned, or members of a class they teach); anyone for an admin.
    async fn recipients(&self, ctx: &Context<'_>, name: String) -> ApiResult<Vec<Recipient>> {
        let caller = authorize(ctx, "recipients", Subject::Caller).await?;
        if name.trim().chars().count() < 2 {
            return Err(ApiError::bad_input(
                "name",
                "give at least two characters of the name",
            ));
        }
        let among = match caller {
            crate::access::Caller::User {
                role: Role::Admin, ..
            } => Recipients::Everyone,
            _ => Recipients::StudentsOf(super::signed_in(caller)?.0),
        };
        Ok(state(ctx).read.search_recipients(&name, among).await?)
    }
}

#[derive(InputObject)]
pub struct CreateUserInput {
    pub role: Role,
    pub first_name: String,
    pub last_name: String,
    pub email: String,
    pub password: String,
    pub preferred_language: Option<Language>,
    pub hebrew_level: Option<HebrewLevel>,
    #[graphql(default)]
    pub interests: Vec<String>,
}

#[derive(Default)]
pub struct PeopleMutation;

#[Object]
impl PeopleMutation {
    /// Creates an account of any role (admins).
    async fn create_user(
        &self,
        ctx: &Context<'_>,
        input: CreateUserInput,
        idempotency_key: Option<String>,
    ) -> ApiResult<Changed> {
        let caller = authorize(ctx, "createUser", Subject::Caller).await?;
        password::check_strength(&input.password)
            .map_err(|rule| ApiError::bad_input("password", rule))?;
        let user_id = UserId(new_id(caller, "createUser", idempotency_key.as_deref()));
        let password_hash = password::hash_async(input.password)
            .await
            .map_err(ApiError::internal)?;
        let command = UserCommand::Register {
            user_id,
            role: input.role,
            first_name: input.first_name,
            last_name: input.last_name,
            email: input.email,
            password_hash,
            preferred_language: input.preferred_language.unwrap_or_default(),
            hebrew_level: input.hebrew_level,
            interests: input.interests,
            registered_by: caller.actor(),
        };
        execute::<User>(ctx, caller, user_id.0, command, idempotency_key.as_deref()).await
    }

    async fn update_profile(
        &self,
        ctx: &Context<'_>,
        user_id: Uuid,
        first_name: Option<String>,
        last_name: Option<String>,
        idempotency_key: Option<String>,
    ) -> ApiResult<Changed> {
        let caller = authorize(ctx, "updateProfile", Subject::Person(UserId(user_id))).await?;
        let command = UserCommand::UpdateProfile {
            first_name,
            last_name,
            actor: caller.actor(),
        };
        execute::<User>(ctx, caller, user_id, command, idempotency_key.as_deref()).await
    }

    async fn change_preferred_language(
        &self,
        ctx: &Context<'_>,
        user_id: Uuid,
        language: Language,
        idempotency_key: Option<String>,
    ) -> ApiResult<Changed> {
        let caller = authorize(
            ctx,
            "changePreferredLanguage",
            Subject::Person(UserId(user_id)),
        )
        .await?;
        let command = UserCommand::ChangePreferredLanguage { language };
        execute::<User>(ctx, caller, user_id, command, idempotency_key.as_deref()).await
    }

    async fn change_hebrew_level(
        &self,
        ctx: &Context<'_>,
        user_id: Uuid,
        level: HebrewLevel,
        idempotency_key: Option<String>,
    ) -> ApiResult<Changed> {
        let caller = authorize(ctx, "changeHebrewLevel", Subject::Person(UserId(user_id))).await?;
        let command = UserCommand::ChangeHebrewLevel { level };
        execute::<User>(ctx, caller, user_id, command, idempotency_key.as_deref()).await
    }

    async fn replace_interests(
        &self,
        ctx: &Context<'_>,
        user_id: Uuid,
        interests: Vec<String>,
        idempotency_key: Option<String>,
    ) -> ApiResult<Changed> {
        let caller = authorize(ctx, "replaceInterests", Subject::Person(UserId(user_id))).await?;
        let command = UserCommand::ReplaceInterests { interests };
        execute::<User>(ctx, caller, user_id, command, idempotency_key.as_deref()).await
    }

    /// Sets a new password. People changing their own give the current one; admins reset.
    /// Every other login of the account is signed out.
    async fn change_password(
        &self,
        ctx: &Context<'_>,
        user_id: Uuid,
        current_password: Option<String>,
        new_password: String,
        idempotency_key: Option<String>,
    ) -> ApiResult<Changed> {
        let caller = authorize(ctx, "changePassword", Subject::Person(UserId(user_id))).await?;
        password::check_strength(&new_password)
            .map_err(|rule| ApiError::bad_input("newPassword", rule))?;
        if caller.user_id() == Some(UserId(user_id)) {
            let current = current_password.ok_or_else(|| {
                ApiError::bad_input("currentPassword", "give your current password")
            })?;
            let api = state(ctx);
            let user = api
                .bus
                .reader()
                .load::<User>(&user_id.to_string())
                .await
                .map_err(ApiError::internal)?;
            let stored = match user.password_hash() {
                Some(sealed) => api
                    .bus
                    .services()
                    .vault
                    .open(sealed)
                    .await
                    .map_err(ApiError::internal)?,
                None => None,
            }
            .ok_or_else(|| ApiError::not_found("the account"))?;
            let ok = password::verify_async(current, Some(stored))
                .await
                .map_err(ApiError::internal)?;
            if !ok {
                return Err(ApiError::bad_input(
                    "currentPassword",
                    "the current password is wrong",
                ));
            }
        }
        let password_hash = password::hash_async(new_password)
            .await
            .map_err(ApiError::internal)?;
        let command = UserCommand::ChangePassword { password_hash };
        execute_then_sign_out(ctx, caller, user_id, command, idempotency_key).await
    }

    /// Changes a person's role (admins). Their logins are signed out so the new role applies.
    async fn change_role(
        &self,
        ctx: &Context<'_>,
        user_id: Uuid,
        role: Role,
        idempotency_key: Option<String>,
    ) -> ApiResult<Changed> {
        let caller = authorize(ctx, "changeRole", Subject::Person(UserId(user_id))).await?;
        let command = UserCommand::ChangeRole {
            role,
            actor: caller.actor(),
        };
        execute_then_sign_out(ctx, caller, user_id, command, idempotency_key).await
    }

    /// Forgets a person (GDPR erasure): their personal data becomes unreadable everywhere,
    /// in the log included, and every login ends.
    async fn erase_user(
        &self,
        ctx: &Context<'_>,
        user_id: Uuid,
        idempotency_key: Option<String>,
    ) -> ApiResult<Changed> {
        let caller = authorize(ctx, "eraseUser", Subject::Person(UserId(user_id))).await?;
        let command = UserCommand::Erase {
            actor: caller.actor(),
        };
        let erased = execute_then_sign_out(ctx, caller, user_id, command, idempotency_key).await?;
        super::media::delete_files_of_erased(ctx, user_id).await;
        Ok(erased)
    }

    /// Assigns a student to a teacher (admins). A teacher reaches students through a class:
    /// the student joins with its code or accepts the teacher's invitation.
    async fn assign_student(
        &self,
        ctx: &Context<'_>,
        teacher_id: Uuid,
        student_id: Uuid,
        idempotency_key: Option<String>,
    ) -> ApiResult<Changed> {
        let caller = authorize(ctx, "assignStudent", Subject::Person(UserId(teacher_id))).await?;
        let command = TeacherStudentsCommand::AssignStudent {
            teacher: UserId(teacher_id),
            student: UserId(student_id),
            actor: caller.actor(),
        };
        execute::<TeacherStudents>(ctx, caller, teacher_id, command, idempotency_key.as_deref())
            .await
    }

    async fn unassign_student(
        &self,
        ctx: &Context<'_>,
        teacher_id: Uuid,
        student_id: Uuid,
        idempotency_key: Option<String>,
    ) -> ApiResult<Changed> {
        let caller = authorize(ctx, "unassignStudent", Subject::Person(UserId(teacher_id))).await?;
        let command = TeacherStudentsCommand::UnassignStudent {
            teacher: UserId(teacher_id),
            student: UserId(student_id),
            actor: caller.actor(),
        };
        execute::<TeacherStudents>(ctx, caller, teacher_id, command, idempotency_key.as_deref())
            .await
    }
}

/// Runs a change that must end the person's logins (password, role, erasure): their refresh
/// sessions are revoked and their revocation epoch bumped once the event is stored, so their
/// access tokens stop working, their sockets close, and the next login reads the new state.
async fn execute_then_sign_out(
    ctx: &Context<'_>,
    caller: crate::access::Caller,
    user_id: Uuid,
    command: UserCommand,
    idempotency_key: Option<String>,
) -> ApiResult<Changed> {
    let changed =
        execute::<User>(ctx, caller, user_id, command, idempotency_key.as_deref()).await?;
    let sessions = &state(ctx).sessions;
    sessions
        .revoke_user(UserId(user_id))
        .await
        .map_err(ApiError::internal)?;
    // And the access tokens and open sockets (graphql-ws, SignalR) of every replica.
    sessions
        .revocations()
        .bump(UserId(user_id))
        .await
        .map_err(ApiError::internal)?;
    Ok(changed)
}
