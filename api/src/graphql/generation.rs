//! What the portals ask the AI to write outside a tutor conversation: practice sentences,
//! the explanation of a word, a teacher's email draft. A mutation records the request (a
//! `GenerationRequest` event) and answers at once with its id; the engine writes the result
//! and the manager records it, and the realtime feed brings it to the browser (generated
//! sentences as `SentenceGeneration` / `SplitSentenceGeneration`, one exercise each).
//!
//! Every field here calls the model, so each request goes through `limits::model_call`:
//! counted against the caller's daily quota, and answered once per document for identical
//! fields.

use super::limits::model_call;
use super::{authorize, execute, new_id, signed_in};
use crate::access::Subject;
use crate::error::ApiResult;
use async_graphql::{Context, Object, SimpleObject};
use teachin_domain::generation::{GenerationCommand, GenerationRequest};
use teachin_domain::user::Language;
use teachin_domain::vocabulary::{Difficulty, GameType};
use uuid::Uuid;

/// A generation request accepted: its result will carry `requestId`.
#[derive(SimpleObject, Clone)]
pub struct GenerationRequested {
    pub request_id: Uuid,
    /// True when this answer is the replay of an earlier call with the same idempotency key.
    pub replayed: bool,
}

#[derive(Default)]
pub struct GenerationMutation;

/// Records `command` as a new request of `operation` (an id derived from the idempotency
/// key when there is one, so a retry names the same request).
async fn request(
    ctx: &Context<'_>,
    operation: &str,
    command: impl FnOnce(teachin_domain::ids::UserId) -> GenerationCommand,
    idempotency_key: Option<String>,
) -> ApiResult<GenerationRequested> {
    let caller = authorize(ctx, operation, Subject::Caller).await?;
    let requester = signed_in(caller)?;
    let key = idempotency_key.as_deref();
    let request_id = new_id(caller, &format!("{operation}:request"), key);
    model_call(ctx, caller, |r: &GenerationRequested| r.replayed, async {
        let changed =
            execute::<GenerationRequest>(ctx, caller, request_id, command(requester), key).await?;
        Ok(GenerationRequested {
            request_id,
            replayed: changed.replayed,
        })
    })
    .await
}

/// Records a request for `count` sentences for `game_type`.
async fn sentences(
    ctx: &Context<'_>,
    operation: &str,
    game_type: GameType,
    difficulty: Difficulty,
    nikud: bool,
    count: i32,
    idempotency_key: Option<String>,
) -> ApiResult<GenerationRequested> {
    // Out-of-range counts are the domain's to refuse; a negative one is simply out of range.
    let count = u32::try_from(count).unwrap_or(0);
    request(
        ctx,
        operation,
        |requester| GenerationCommand::RequestSentences {
            requester,
            game_type,
            difficulty,
            nikud,
            count,
        },
        idempotency_key,
    )
    .await
}

#[Object]
impl GenerationMutation {
    /// 1 to 10 sentences for a game; for the word-order game they are split into words (as
    /// `requestSplitSentences`). Each becomes an exercise of the caller's.
    async fn request_sentences(
        &self,
        ctx: &Context<'_>,
        game_type: GameType,
        #[graphql(default)] difficulty: Difficulty,
        #[graphql(default)] nikud: bool,
        #[graphql(default = 1)] count: i32,
        idempotency_key: Option<String>,
    ) -> ApiResult<GenerationRequested> {
        sentences(
            ctx,
            "requestSentences",
            game_type,
            difficulty,
            nikud,
            count,
            idempotency_key,
        )
        .await
    }

    /// 1 to 10 sentences for the word-order game, split into the words to put in order.
    async fn request_split_sentences(
        &self,
        ctx: &Context<'_>,
        #[graphql(default)] difficulty: Difficulty,
        #[graphql(default)] nikud: bool,
        #[graphql(default = 1)] count: i32,
        idempotency_key: Option<String>,
    ) -> ApiResult<GenerationRequested> {
        sentences(
            ctx,
            "requestSplitSentences",
            GameType::WordOrder,
            difficulty,
            nikud,
            count,
            idempotency_key,
        )
        .await
    }

    /// What `word` means in `context`, the sentence it was met in, in the caller's language.
    async fn request_word_explanation(
        &self,
        ctx: &Context<'_>,
        word: String,
        context: String,
        idempotency_key: Option<String>,
    ) -> ApiResult<GenerationRequested> {
        request(
            ctx,
            "requestWordExplanation",
            |requester| GenerationCommand::RequestWordExplanation {
                requester,
                word,
                context,
            },
            idempotency_key,
        )
        .await
    }

    /// A draft of an email about `subject`, for `purpose`, written in `language`. Teachers
    /// and admins only.
    async fn request_email_draft(
        &self,
        ctx: &Context<'_>,
        subject: String,
        purpose: String,
        language: Language,
        idempotency_key: Option<String>,
    ) -> ApiResult<GenerationRequested> {
        request(
            ctx,
            "requestEmailDraft",
            |requester| GenerationCommand::RequestEmailDraft {
                requester,
                subject,
                purpose,
                language,
            },
            idempotency_key,
        )
        .await
    }
}
