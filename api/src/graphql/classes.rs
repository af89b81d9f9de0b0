//! Classes: created by teachers and admins, managed by the class's teachers, visible to its
//! members. Membership is also what makes a teacher "teacher of" a student, so it takes the
//! student's word: a student joins with the class's code or accepts a teacher's invitation;
//! only an admin adds a student directly.

use super::{authorize, execute, new_id, signed_in, state, Changed};
use crate::access::Subject;
use crate::error::{ApiError, ApiResult};
use async_graphql::{Context, Object};
use rand::RngCore;
use teachin_domain::classroom::{Classroom, ClassroomCommand, JoinCode, JOIN_CODE_LEN};
use teachin_domain::ids::UserId;
use teachin_domain::services::ClaimScope;
use teachin_projections::queries::classes::{ClassInvitation, ClassView};
use uuid::Uuid;

#[derive(Default)]
pub struct ClassQuery;

#[Object]
impl ClassQuery {
    /// Every class (admins).
    async fn classes(&self, ctx: &Context<'_>) -> ApiResult<Vec<ClassView>> {
        authorize(ctx, "classes", Subject::Caller).await?;
        Ok(state(ctx).read.classes().await?)
    }

    /// The classes a person belongs to.
    async fn classes_of(&self, ctx: &Context<'_>, user_id: Uuid) -> ApiResult<Vec<ClassView>> {
        authorize(ctx, "classesOf", Subject::Person(UserId(user_id))).await?;
        Ok(state(ctx).read.classes_of_member(user_id).await?)
    }

    /// One class with its members.
    async fn class(&self, ctx: &Context<'_>, id: Uuid) -> ApiResult<Option<ClassView>> {
        authorize(ctx, "class", Subject::Class(id)).await?;
        Ok(state(ctx).read.class(id).await?)
    }

    /// The invitations to classes a student has not answered yet, newest first.
    async fn class_invitations(
        &self,
        ctx: &Context<'_>,
        student_id: Uuid,
    ) -> ApiResult<Vec<ClassInvitation>> {
        authorize(ctx, "classInvitations", Subject::Person(UserId(student_id))).await?;
        Ok(state(ctx).read.class_invitations_of(student_id).await?)
    }
}

#[derive(Default)]
pub struct ClassMutation;

#[Object]
impl ClassMutation {
    /// Creates a class with a fresh join code. A teacher who creates a class is its first
    /// member (as its teacher); an admin creates classes for others to join.
    async fn create_class(
        &self,
        ctx: &Context<'_>,
        name: String,
        description: Option<String>,
        idempotency_key: Option<String>,
    ) -> ApiResult<Changed> {
        let caller = authorize(ctx, "createClass", Subject::Caller).await?;
        signed_in(caller)?;
        let id = new_id(caller, "createClass", idempotency_key.as_deref());
        let mut entropy = [0u8; JOIN_CODE_LEN];
        rand::thread_rng().fill_bytes(&mut entropy);
        let command = ClassroomCommand::Create {
            classroom_id: id.into(),
            name,
            description,
            join_code: JoinCode::from_entropy(entropy),
            created_by: caller.actor(),
        };
        execute::<Classroom>(ctx, caller, id, command, idempotency_key.as_deref()).await
    }

    /// Students only (a teacher or admin is refused with `BAD_USER_INPUT` on `userIds`). An
    /// admin makes them members at once; a teacher of the class invites them, and they
    /// become members when they accept.
    async fn add_class_members(
        &self,
        ctx: &Context<'_>,
        class_id: Uuid,
        user_ids: Vec<Uuid>,
        idempotency_key: Option<String>,
    ) -> ApiResult<Changed> {
        let caller = authorize(ctx, "addClassMembers", Subject::Class(class_id)).await?;
        let command = ClassroomCommand::AddMembers {
            user_ids: members(user_ids)?,
            actor: caller.actor(),
        };
        execute::<Classroom>(ctx, caller, class_id, command, idempotency_key.as_deref()).await
    }

    async fn remove_class_members(
        &self,
        ctx: &Context<'_>,
        class_id: Uuid,
        user_ids: Vec<Uuid>,
        idempotency_key: Option<String>,
    ) -> ApiResult<Changed> {
        let caller = authorize(ctx, "removeClassMembers", Subject::Class(class_id)).await?;
        let command = ClassroomCommand::RemoveMembers {
            user_ids: members(user_ids)?,
            actor: caller.actor(),
        };
        execute::<Classroom>(ctx, caller, class_id, command, idempotency_key.as_deref()).await
    }

    /// A student joins the class whose join code they were given, and is a member at once.
    async fn join_class(
        &self,
        ctx: &Context<'_>,
        join_code: String,
        idempotency_key: Option<String>,
    ) -> ApiResult<Changed> {
        let caller = authorize(ctx, "joinClass", Subject::Caller).await?;
        let join_code = JoinCode::parse(&join_code)
            .map_err(|e| ApiError::bad_input("joinCode", e.to_string()))?;
        // The code's claim names its class, and is consistent with the write side at once
        // (the read model may not have the class yet).
        let class_id = state(ctx)
            .claims
            .holder(ClaimScope::ClassroomJoinCode, join_code.as_str())
            .await?
            .and_then(|owner| Uuid::parse_str(&owner).ok())
            .ok_or_else(|| ApiError::not_found("a class with this join code"))?;
        let command = ClassroomCommand::Join {
            join_code,
            actor: caller.actor(),
        };
        execute::<Classroom>(ctx, caller, class_id, command, idempotency_key.as_deref()).await
    }

    /// The invited student says yes, and is a member.
    async fn accept_class_invitation(
        &self,
        ctx: &Context<'_>,
        class_id: Uuid,
        idempotency_key: Option<String>,
    ) -> ApiResult<Changed> {
        let caller = authorize(ctx, "acceptClassInvitation", Subject::Class(class_id)).await?;
        let command = ClassroomCommand::AcceptInvitation {
            actor: caller.actor(),
        };
        execute::<Classroom>(ctx, caller, class_id, command, idempotency_key.as_deref()).await
    }

    /// The invited student says no (nothing happens if there is no invitation).
    async fn decline_class_invitation(
        &self,
        ctx: &Context<'_>,
        class_id: Uuid,
        idempotency_key: Option<String>,
    ) -> ApiResult<Changed> {
        let caller = authorize(ctx, "declineClassInvitation", Subject::Class(class_id)).await?;
        let command = ClassroomCommand::DeclineInvitation {
            actor: caller.actor(),
        };
        execute::<Classroom>(ctx, caller, class_id, command, idempotency_key.as_deref()).await
    }

    async fn delete_class(
        &self,
        ctx: &Context<'_>,
        class_id: Uuid,
        idempotency_key: Option<String>,
    ) -> ApiResult<Changed> {
        let caller = authorize(ctx, "deleteClass", Subject::Class(class_id)).await?;
        let command = ClassroomCommand::Delete {
            actor: caller.actor(),
        };
        execute::<Classroom>(ctx, caller, class_id, command, idempotency_key.as_deref()).await
    }
}

/// The most members one mutation may add or remove.
const MAX_MEMBERS_PER_CALL: usize = 200;

fn members(ids: Vec<Uuid>) -> ApiResult<Vec<UserId>> {
    if ids.is_empty() || ids.len() > MAX_MEMBERS_PER_CALL {
        return Err(ApiError::bad_input(
            "userIds",
            format!("give 1 to {MAX_MEMBERS_PER_CALL} user ids"),
        ));
    }
    Ok(ids.into_iter().map(UserId).collect())
}
