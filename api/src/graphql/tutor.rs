//! The AI tutor: a student's conversations, sending a message (default or the global
//! side-panel tutor with the page the student is on), and asking why an attempt was wrong.
//! The reply arrives later, streamed over the realtime feed and recorded as an event.
//!
//! Both mutations call the model, so each goes through `limits::model_call`: counted against
//! the student's daily quota, and answered once per document for identical fields.

use super::limits::model_call;
use super::{authorize, execute, new_id, signed_in, state};
use crate::access::{Caller, Subject};
use crate::error::ApiResult;
use async_graphql::{Context, Enum, Object, SimpleObject};
use teachin_domain::ids::{AttemptId, ExerciseId, RequestId, UserId};
use teachin_domain::tutor_session::{SessionKind, TutorSession, TutorSessionCommand};
use teachin_projections::queries::tutor::{TutorSessionView, TutorSessionWithMessages};
use uuid::Uuid;

/// Which tutor a message is for.
#[derive(Enum, Clone, Copy, PartialEq, Eq)]
pub enum TutorKind {
    /// A free conversation.
    Default,
    /// The side-panel tutor; needs the page context.
    Global,
}

/// A message accepted for the tutor: the reply will carry `requestId`.
#[derive(SimpleObject, Clone)]
pub struct TutorRequest {
    pub session_id: Uuid,
    pub request_id: Uuid,
    pub replayed: bool,
}

#[derive(Default)]
pub struct TutorQuery;

#[Object]
impl TutorQuery {
    /// A student's conversations, most recent first.
    async fn tutor_sessions(
        &self,
        ctx: &Context<'_>,
        student_id: Uuid,
    ) -> ApiResult<Vec<TutorSessionView>> {
        authorize(ctx, "tutorSessions", Subject::Person(UserId(student_id))).await?;
        Ok(state(ctx).read.tutor_sessions_of(student_id).await?)
    }

    /// One conversation with its messages: for its student, their teachers and admins only.
    async fn tutor_session(
        &self,
        ctx: &Context<'_>,
        id: Uuid,
    ) -> ApiResult<Option<TutorSessionWithMessages>> {
        let Some(found) = state(ctx).read.tutor_session(id).await? else {
            // Unknown ids answer like forbidden ones for anyone but an admin, so ids
            // cannot be probed.
            authorize(ctx, "tutorSession", Subject::Person(UserId(Uuid::nil()))).await?;
            return Ok(None);
        };
        authorize(
            ctx,
            "tutorSession",
            Subject::Person(UserId(found.session.student_id)),
        )
        .await?;
        Ok(Some(found))
    }
}

#[derive(Default)]
pub struct TutorMutation;

#[Object]
impl TutorMutation {
    /// Writes to the tutor. Without `sessionId` a new conversation starts.
    #[allow(clippy::too_many_arguments)]
    async fn send_tutor_message(
        &self,
        ctx: &Context<'_>,
        session_id: Option<Uuid>,
        kind: TutorKind,
        text: String,
        #[graphql(desc = "JSON describing the page the student is on (global tutor only).")]
        page_context: Option<String>,
        idempotency_key: Option<String>,
    ) -> ApiResult<TutorRequest> {
        let caller = authorize(ctx, "sendTutorMessage", Subject::Caller).await?;
        let student = signed_in(caller)?;
        let key = idempotency_key.as_deref();
        let session_id =
            session_id.unwrap_or_else(|| new_id(caller, "sendTutorMessage:session", key));
        let request_id = new_id(caller, "sendTutorMessage:request", key);
        let command = TutorSessionCommand::PostStudentMessage {
            student,
            kind: match kind {
                TutorKind::Default => SessionKind::Default,
                TutorKind::Global => SessionKind::Global,
            },
            text,
            page_context,
            request_id: RequestId(request_id),
        };
        request_reply(ctx, caller, session_id, request_id, command, key).await
    }

    /// Asks the tutor why an attempt was wrong, in a new conversation or again in `sessionId`.
    async fn explain_mistake(
        &self,
        ctx: &Context<'_>,
        session_id: Option<Uuid>,
        exercise_id: Uuid,
        attempt_id: Uuid,
        idempotency_key: Option<String>,
    ) -> ApiResult<TutorRequest> {
        let caller = authorize(ctx, "explainMistake", Subject::Caller).await?;
        let student = signed_in(caller)?;
        let key = idempotency_key.as_deref();
        let session_id =
            session_id.unwrap_or_else(|| new_id(caller, "explainMistake:session", key));
        let request_id = new_id(caller, "explainMistake:request", key);
        let command = TutorSessionCommand::RequestMistakeExplanation {
            student,
            exercise: ExerciseId(exercise_id),
            attempt: AttemptId(attempt_id),
            request_id: RequestId(request_id),
        };
        request_reply(ctx, caller, session_id, request_id, command, key).await
    }
}

/// Issues a command that asks the tutor for a reply, counted against the caller's model
/// quota (`model_call`), and answers with the request to follow.
async fn request_reply(
    ctx: &Context<'_>,
    caller: Caller,
    session_id: Uuid,
    request_id: Uuid,
    command: TutorSessionCommand,
    key: Option<&str>,
) -> ApiResult<TutorRequest> {
    model_call(ctx, caller, |r: &TutorRequest| r.replayed, async {
        let changed = execute::<TutorSession>(ctx, caller, session_id, command, key).await?;
        Ok(TutorRequest {
            session_id,
            request_id,
            replayed: changed.replayed,
        })
    })
    .await
}
