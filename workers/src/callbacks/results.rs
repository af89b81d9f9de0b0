//! `manager-callback-queue`: the engine's results become commands, and so events.
//!
//! Each command is issued as [`Actor::System`] with causation `message:<id>`, the message's
//! correlation id, and the message id as its idempotency key: a callback delivered twice (a
//! lost completion, a resend after a worker died) applies once, and what the log says was
//! caused by which message stays traceable.
//!
//! | action | commands |
//! |---|---|
//! | `TutorToolCalled` | `RecordToolCall` |
//! | `TutorReplyCompleted` | `RecordToolCall` for each tool call (keyed by the tool call's own message id, so one already recorded is not recorded again), then `CompleteAiReply` |
//! | `TutorReplyFailed` | the same, then `FailAiReply` |
//! | `SessionTitleGenerated` | `SetTitle` |
//!
//! Refusals that mean "already settled" are done, not errors: a completion for a reply that
//! had already failed (it expired, then a slow worker finished it anyway), a failure for one
//! already completed, a tool call for a reply no longer in flight, anything about an erased
//! student. Other refusals cannot succeed later and are dead-lettered with the reason; a
//! store that is unavailable or a conflict that outlasted the bus's retries asks for another
//! delivery.

use crate::consumer::{Handler, HandlerError, MessageContext};
use crate::contracts::{
    SessionTitleGenerated, ToolCallRecord, TutorReplyCompleted, TutorReplyFailed, TutorToolCalled,
};
use async_trait::async_trait;
use teachin_commands::{CommandBus, CommandContext, CommandError};
use teachin_domain::actor::Actor;
use teachin_domain::error::{DomainError, ErrorKind};
use teachin_domain::ids::{RequestId, TutorSessionId};
use teachin_domain::services::PortError;
use teachin_domain::tutor_session::{TutorSession, TutorSessionCommand, TutorSessionError};
use uuid::Uuid;

/// The context of a command issued for a message: `key` is its idempotency key.
pub fn command_context(message: &MessageContext, key: &str) -> CommandContext {
    let mut context = CommandContext::new(Actor::System, format!("message:{}", message.message_id))
        .with_idempotency_key(key);
    if let Some(correlation) = message
        .correlation_id
        .as_deref()
        .and_then(|c| Uuid::parse_str(c).ok())
    {
        context = context.with_correlation_id(correlation);
    }
    context
}

/// What a command's refusal means for the message.
pub fn settle<E: DomainError>(
    outcome: Result<(), CommandError<E>>,
    already_settled: impl Fn(&E) -> bool,
    what: &str,
) -> Result<(), HandlerError> {
    match outcome {
        Ok(()) => Ok(()),
        Err(CommandError::Rejected(e)) if already_settled(&e) => {
            tracing::info!(error = %e, "{what}: already settled; nothing to do");
            Ok(())
        }
        Err(CommandError::Rejected(e)) if e.kind() == ErrorKind::Unavailable => {
            Err(HandlerError::Retry(format!("{what}: {e}")))
        }
        Err(CommandError::Rejected(e)) => Err(HandlerError::Reject(format!("{what}: {e}"))),
        Err(e @ (CommandError::Conflict { .. } | CommandError::Store(_))) => {
            Err(HandlerError::Retry(format!("{what}: {e}")))
        }
        Err(e @ CommandError::IdempotencyKeyReused) => {
            Err(HandlerError::Reject(format!("{what}: {e}")))
        }
    }
}

fn erased(e: &TutorSessionError) -> bool {
    matches!(e, TutorSessionError::Port(PortError::Erased(_)))
}

/// Runs one tutor-session command for a message.
async fn tutor_command(
    commands: &CommandBus,
    session: TutorSessionId,
    command: TutorSessionCommand,
    context: &CommandContext,
) -> Result<(), CommandError<TutorSessionError>> {
    commands
        .execute::<TutorSession>(&session.to_string(), command, context)
        .await
        .map(|_| ())
}

/// Records the tool calls of a reply, each once.
async fn record_tool_calls(
    commands: &CommandBus,
    session: TutorSessionId,
    request: RequestId,
    calls: &[ToolCallRecord],
    message: &MessageContext,
) -> Result<(), HandlerError> {
    for call in calls {
        let outcome = tutor_command(
            commands,
            session,
            TutorSessionCommand::RecordToolCall {
                request_id: request,
                tool: call.tool.clone(),
                arguments: call.arguments.clone(),
                result: call.result.clone(),
            },
            &command_context(message, &call.message_id),
        )
        .await;
        settle(
            outcome,
            |e| matches!(e, TutorSessionError::ReplyNotInFlight) || erased(e),
            "recording a tool call",
        )?;
    }
    Ok(())
}

/// `TutorToolCalled` → `RecordToolCall`.
#[derive(Clone)]
pub struct ToolCalled(pub CommandBus);

#[async_trait]
impl Handler for ToolCalled {
    type Payload = TutorToolCalled;

    async fn handle(&self, p: TutorToolCalled, m: &MessageContext) -> Result<(), HandlerError> {
        record_tool_calls(&self.0, p.session_id, p.request_id, &[p.call], m).await
    }
}

/// `TutorReplyCompleted` → the tool calls, then `CompleteAiReply`.
#[derive(Clone)]
pub struct ReplyCompleted(pub CommandBus);

#[async_trait]
impl Handler for ReplyCompleted {
    type Payload = TutorReplyCompleted;

    async fn handle(&self, p: TutorReplyCompleted, m: &MessageContext) -> Result<(), HandlerError> {
        record_tool_calls(&self.0, p.session_id, p.request_id, &p.tool_calls, m).await?;
        let outcome = tutor_command(
            &self.0,
            p.session_id,
            TutorSessionCommand::CompleteAiReply {
                request_id: p.request_id,
                text: p.text,
                model: p.model,
                prompt_tokens: p.prompt_tokens,
                completion_tokens: p.completion_tokens,
                latency_ms: p.latency_ms,
            },
            &command_context(m, &m.dedupe_key),
        )
        .await;
        settle(
            outcome,
            |e| matches!(e, TutorSessionError::ReplyAlreadyFailed) || erased(e),
            "completing a tutor reply",
        )
    }
}

/// `TutorReplyFailed` → the tool calls, then `FailAiReply`.
#[derive(Clone)]
pub struct ReplyFailed(pub CommandBus);

#[async_trait]
impl Handler for ReplyFailed {
    type Payload = TutorReplyFailed;

    async fn handle(&self, p: TutorReplyFailed, m: &MessageContext) -> Result<(), HandlerError> {
        record_tool_calls(&self.0, p.session_id, p.request_id, &p.tool_calls, m).await?;
        let outcome = tutor_command(
            &self.0,
            p.session_id,
            TutorSessionCommand::FailAiReply {
                request_id: p.request_id,
                reason: p.reason,
                model: p.model,
                latency_ms: p.latency_ms,
            },
            &command_context(m, &m.dedupe_key),
        )
        .await;
        settle(
            outcome,
            |e| matches!(e, TutorSessionError::ReplyAlreadyCompleted) || erased(e),
            "failing a tutor reply",
        )
    }
}

/// `SessionTitleGenerated` → `SetTitle`.
#[derive(Clone)]
pub struct TitleGenerated(pub CommandBus);

#[async_trait]
impl Handler for TitleGenerated {
    type Payload = SessionTitleGenerated;

    async fn handle(
        &self,
        p: SessionTitleGenerated,
        m: &MessageContext,
    ) -> Result<(), HandlerError> {
        let outcome = tutor_command(
            &self.0,
            p.session_id,
            TutorSessionCommand::SetTitle { title: p.title },
            &command_context(m, &m.dedupe_key),
        )
        .await;
        settle(outcome, erased, "setting a session title")
    }
}
