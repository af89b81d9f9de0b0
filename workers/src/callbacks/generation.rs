//! `manager-callback-queue`: generation results become commands (see [`super::results`] for
//! how a command is issued for a message and what a refusal means).
//!
//! | action | commands |
//! |---|---|
//! | `SentencesGenerated` | `ExerciseCommand::Generate` for each sentence (the exercise id derived from the request and the sentence's index, keyed `<message id>:exercise:<index>`), then `CompleteSentences` |
//! | `WordExplained` | `CompleteWordExplanation` |
//! | `EmailDrafted` | `CompleteEmailDraft` |
//! | `GenerationFailed` | `FailGeneration` |
//!
//! The realtime feed pushes each generated exercise (`SentenceGeneration` /
//! `SplitSentenceGeneration`) from its `ExerciseGenerated` event.

use super::results::{command_context, settle};
use crate::consumer::{Handler, HandlerError, MessageContext};
use crate::contracts::{
    generated_exercise, EmailDrafted, GenerationFailed, GenerationUsage, SentencesGenerated,
    WordExplained,
};
use async_trait::async_trait;
use teachin_commands::{CommandBus, CommandContext, CommandError};
use teachin_domain::generation::{AiUsage, GenerationCommand, GenerationError, GenerationRequest};
use teachin_domain::ids::RequestId;
use teachin_domain::practice::{Exercise, ExerciseCommand, ExerciseError};
use teachin_domain::services::PortError;

fn usage(u: GenerationUsage) -> AiUsage {
    AiUsage {
        model: u.model,
        prompt_tokens: u.prompt_tokens,
        completion_tokens: u.completion_tokens,
        latency_ms: u.latency_ms,
    }
}

/// Refusals that mean the request was already settled (or its requester erased).
fn settled_already(e: &GenerationError) -> bool {
    matches!(
        e,
        GenerationError::AlreadyFailed
            | GenerationError::AlreadyCompleted
            | GenerationError::Port(PortError::Erased(_))
    )
}

async fn generation_command(
    commands: &CommandBus,
    request: RequestId,
    command: GenerationCommand,
    context: &CommandContext,
) -> Result<(), CommandError<GenerationError>> {
    commands
        .execute::<GenerationRequest>(&request.to_string(), command, context)
        .await
        .map(|_| ())
}

/// `SentencesGenerated` → one exercise per sentence, then `CompleteSentences`.
#[derive(Clone)]
pub struct SentencesDone(pub CommandBus);

#[async_trait]
impl Handler for SentencesDone {
    type Payload = SentencesGenerated;

    async fn handle(&self, p: SentencesGenerated, m: &MessageContext) -> Result<(), HandlerError> {
        let mut exercises = Vec::with_capacity(p.sentences.len());
        for (index, sentence) in p.sentences.into_iter().enumerate() {
            let exercise = generated_exercise(p.request_id, index);
            let outcome = self
                .0
                .execute::<Exercise>(
                    &exercise.to_string(),
                    ExerciseCommand::Generate {
                        student: p.requester,
                        game_type: p.game_type,
                        difficulty: p.difficulty,
                        nikud: p.nikud,
                        sentence,
                        request_id: p.request_id,
                    },
                    &command_context(m, &format!("{}:exercise:{index}", m.dedupe_key)),
                )
                .await
                .map(|_| ());
            settle(
                outcome,
                |e| matches!(e, ExerciseError::AlreadyGenerated),
                "recording a generated exercise",
            )?;
            exercises.push(exercise);
        }
        let outcome = generation_command(
            &self.0,
            p.request_id,
            GenerationCommand::CompleteSentences {
                exercises,
                usage: usage(p.usage),
            },
            &command_context(m, &m.dedupe_key),
        )
        .await;
        settle(outcome, settled_already, "completing a sentence request")
    }
}

/// `WordExplained` → `CompleteWordExplanation`.
#[derive(Clone)]
pub struct WordDone(pub CommandBus);

#[async_trait]
impl Handler for WordDone {
    type Payload = WordExplained;

    async fn handle(&self, p: WordExplained, m: &MessageContext) -> Result<(), HandlerError> {
        let outcome = generation_command(
            &self.0,
            p.request_id,
            GenerationCommand::CompleteWordExplanation {
                definition: p.definition,
                explanation: p.explanation,
                usage: usage(p.usage),
            },
            &command_context(m, &m.dedupe_key),
        )
        .await;
        settle(outcome, settled_already, "completing a word explanation")
    }
}

/// `EmailDrafted` → `CompleteEmailDraft`.
#[derive(Clone)]
pub struct EmailDone(pub CommandBus);

#[async_trait]
impl Handler for EmailDone {
    type Payload = EmailDrafted;

    async fn handle(&self, p: EmailDrafted, m: &MessageContext) -> Result<(), HandlerError> {
        let outcome = generation_command(
            &self.0,
            p.request_id,
            GenerationCommand::CompleteEmailDraft {
                subject: p.subject,
                body: p.body,
                usage: usage(p.usage),
            },
            &command_context(m, &m.dedupe_key),
        )
        .await;
        settle(outcome, settled_already, "completing an email draft")
    }
}

/// `GenerationFailed` → `FailGeneration`.
#[derive(Clone)]
pub struct GenerationDidFail(pub CommandBus);

#[async_trait]
impl Handler for GenerationDidFail {
    type Payload = GenerationFailed;

    async fn handle(&self, p: GenerationFailed, m: &MessageContext) -> Result<(), HandlerError> {
        let outcome = generation_command(
            &self.0,
            p.request_id,
            GenerationCommand::FailGeneration {
                reason: p.reason,
                model: p.model,
                latency_ms: p.latency_ms,
            },
            &command_context(m, &m.dedupe_key),
        )
        .await;
        settle(outcome, settled_already, "failing a generation request")
    }
}
