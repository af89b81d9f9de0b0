//! The messages on the queues: their action names and payloads, in one place, so that the
//! producer (the outbox relay, the engine) and the consumer (the engine, the manager) cannot
//! drift apart. Payloads are camelCase JSON.
//!
//! Action names of `engine-queue` are the original system's (`ProcessingChatMessage`, ...;
//! see `original-system.md` §4), so dashboards and runbooks keep their words. The payloads are
//! ours: a request names the work and the worker loads the details from the log, rather than
//! carrying personal text through the broker. What comes back (frames, the reply) has to carry
//! the text: it is the result.
//!
//! | queue | action | payload | message id |
//! |---|---|---|---|
//! | `engine-queue` | `ProcessingChatMessage`, `ProcessingGlobalChatMessage`, `ProcessingExplainMistake` | [`TutorReplyRequest`] | the `AiReplyRequested` event's id |
//! | `manager-callback-session-queue` | `ChatStream` | [`TutorReplyFrame`] | `tutor-frame:{request}:{attempt}:{sequence}` |
//! | `manager-callback-queue` | `TutorToolCalled` | [`TutorToolCalled`] | `tutor-tool:{request}:{attempt}:{index}` |
//! | `manager-callback-queue` | `TutorReplyCompleted` | [`TutorReplyCompleted`] | `tutor-reply:{request}` |
//! | `manager-callback-queue` | `TutorReplyFailed` | [`TutorReplyFailed`] | `tutor-reply:{request}` (one outcome per request) |
//! | `manager-callback-queue` | `SessionTitleGenerated` | [`SessionTitleGenerated`] | `tutor-title:{request}` |
//! | `engine-queue` | `GenerateSentences`, `GenerateSplitSentences`, `GenerateWordExplain`, `GenerateEmailDraft` | [`GenerationJob`] | the `…Requested` event's id |
//! | `manager-callback-queue` | `SentencesGenerated`, `WordExplained`, `EmailDrafted`, `GenerationFailed` | [`SentencesGenerated`], [`WordExplained`], [`EmailDrafted`], [`GenerationFailed`] | `generation-result:{request}` (one outcome per request) |
//!
//! Every id the engine gives is derived from the request (and the delivery attempt, the
//! sequence or the tool call's index), never random: a request redelivered after a worker
//! died sends the same ids again, and the bus accepts an id once.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use teachin_domain::ids::{AttemptId, ExerciseId, RequestId, TutorSessionId, UserId};
use teachin_domain::vocabulary::{Difficulty, GameType};

/// `engine-queue` actions.
pub mod engine {
    /// A student's message in a plain tutor conversation.
    pub const PROCESSING_CHAT_MESSAGE: &str = "ProcessingChatMessage";
    /// A student's message to the page-aware global tutor.
    pub const PROCESSING_GLOBAL_CHAT_MESSAGE: &str = "ProcessingGlobalChatMessage";
    /// The explanation of one wrong attempt.
    pub const PROCESSING_EXPLAIN_MISTAKE: &str = "ProcessingExplainMistake";
    /// Sentences for the typing or speaking game.
    pub const GENERATE_SENTENCES: &str = "GenerateSentences";
    /// Sentences for the word-order game.
    pub const GENERATE_SPLIT_SENTENCES: &str = "GenerateSplitSentences";
    /// What a word means in its sentence.
    pub const GENERATE_WORD_EXPLAIN: &str = "GenerateWordExplain";
    /// A teacher's email draft.
    pub const GENERATE_EMAIL_DRAFT: &str = "GenerateEmailDraft";
}

/// How long a tutor request may wait for the engine before it is answered with an error
/// frame instead of a reply (the original's `ttlSeconds`).
pub const TUTOR_REQUEST_TTL_SECONDS: u32 = 60;

/// What the engine is asked to write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "camelCase")]
pub enum TutorTask {
    /// Reply to the student's last message.
    Chat,
    /// Reply to the student's last message, with the page context it carries.
    GlobalChat,
    /// Explain why this attempt was wrong.
    #[serde(rename_all = "camelCase")]
    ExplainMistake {
        exercise_id: ExerciseId,
        attempt_id: AttemptId,
    },
}

impl TutorTask {
    /// The `engine-queue` action that carries this task.
    pub fn action(&self) -> &'static str {
        match self {
            TutorTask::Chat => engine::PROCESSING_CHAT_MESSAGE,
            TutorTask::GlobalChat => engine::PROCESSING_GLOBAL_CHAT_MESSAGE,
            TutorTask::ExplainMistake { .. } => engine::PROCESSING_EXPLAIN_MISTAKE,
        }
    }
}

/// The payload of every tutor action on `engine-queue`: derived from an `AiReplyRequested`
/// event, whose id is the message id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TutorReplyRequest {
    pub session_id: TutorSessionId,
    pub request_id: RequestId,
    pub task: TutorTask,
    /// When the request was recorded; with `ttl_seconds`, when it expires.
    pub requested_at: DateTime<Utc>,
    pub ttl_seconds: u32,
}

impl TutorReplyRequest {
    pub fn expired(&self, now: DateTime<Utc>) -> bool {
        now > self.requested_at + chrono::Duration::seconds(i64::from(self.ttl_seconds))
    }
}

/// `manager-callback-queue` actions: results the manager turns into commands.
pub mod callback {
    /// The tutor finished a reply ([`super::TutorReplyCompleted`]).
    pub const TUTOR_REPLY_COMPLETED: &str = "TutorReplyCompleted";
    /// The tutor gave up on a reply ([`super::TutorReplyFailed`]).
    pub const TUTOR_REPLY_FAILED: &str = "TutorReplyFailed";
    /// The model called a tool while writing a reply ([`super::TutorToolCalled`]).
    pub const TUTOR_TOOL_CALLED: &str = "TutorToolCalled";
    /// A conversation got its title ([`super::SessionTitleGenerated`]).
    pub const SESSION_TITLE_GENERATED: &str = "SessionTitleGenerated";
    /// Sentences were written ([`super::SentencesGenerated`]).
    pub const SENTENCES_GENERATED: &str = "SentencesGenerated";
    /// A word was explained ([`super::WordExplained`]).
    pub const WORD_EXPLAINED: &str = "WordExplained";
    /// An email was drafted ([`super::EmailDrafted`]).
    pub const EMAIL_DRAFTED: &str = "EmailDrafted";
    /// A generation request failed ([`super::GenerationFailed`]).
    pub const GENERATION_FAILED: &str = "GenerationFailed";
}

/// `manager-callback-session-queue` actions: the frames of streamed answers.
pub mod session {
    /// One frame of a tutor reply ([`super::TutorReplyFrame`]); the original's action name.
    pub const CHAT_STREAM: &str = "ChatStream";
}

/// The message ids the engine gives, derived from what they answer (see the module table).
pub mod message_ids {
    use teachin_domain::ids::RequestId;

    pub fn frame(request: RequestId, attempt: u32, sequence: u32) -> String {
        format!("tutor-frame:{request}:{attempt}:{sequence}")
    }

    pub fn tool_call(request: RequestId, attempt: u32, index: u32) -> String {
        format!("tutor-tool:{request}:{attempt}:{index}")
    }

    /// Shared by the completion and the failure: a request has one outcome.
    pub fn reply(request: RequestId) -> String {
        format!("tutor-reply:{request}")
    }

    pub fn title(request: RequestId) -> String {
        format!("tutor-title:{request}")
    }

    /// Shared by every outcome of a generation request.
    pub fn generation_result(request: RequestId) -> String {
        format!("generation-result:{request}")
    }
}

/// What a frame carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum FrameStage {
    /// More of the answer's text.
    Model,
    /// The model started calling a tool (`tool_call` names it).
    Tool,
    /// The end of the answer; `delta` holds the whole of it (as in the original).
    Final,
    /// The request waited past its time-to-live; no answer will come.
    Expired,
    /// The answer failed; `delta` says why, in words for the student.
    Failed,
}

impl FrameStage {
    /// Whether this frame ends the stream.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            FrameStage::Final | FrameStage::Expired | FrameStage::Failed
        )
    }
}

/// One frame of a streamed tutor reply, on `manager-callback-session-queue`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TutorReplyFrame {
    pub student_id: UserId,
    pub session_id: TutorSessionId,
    pub request_id: RequestId,
    /// The engine message's delivery that wrote this frame (1 for the first). A request
    /// redelivered after a worker died streams again from sequence 0 with the next attempt;
    /// the manager drops what is left of the older one.
    pub attempt: u32,
    /// 0, 1, 2... within one attempt; the final frame has the highest.
    pub sequence: u32,
    pub stage: FrameStage,
    pub delta: String,
    /// For a `Tool` frame, the tool's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_call: Option<String>,
    /// `stage.is_final()`, spelled out for consumers that read only this.
    #[serde(rename = "final")]
    pub is_final: bool,
    /// Since the engine took the request.
    pub elapsed_ms: u64,
}

/// A tool the model called, with what it returned.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ToolCallRecord {
    /// The id of the `TutorToolCalled` message that reports it, and the idempotency key of
    /// the `RecordToolCall` command, wherever it is issued from.
    pub message_id: String,
    /// The tool's name as the model saw it (`Time-current_time`, `WebSearch-web_search`).
    pub tool: String,
    /// The arguments as the model wrote them (JSON text).
    pub arguments: String,
    /// What the tool returned, or `None` if it failed.
    pub result: Option<String>,
}

/// `TutorToolCalled`: sent as soon as a tool has run, so the conversation shows it while the
/// answer is still being written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TutorToolCalled {
    pub session_id: TutorSessionId,
    pub request_id: RequestId,
    pub call: ToolCallRecord,
}

/// `TutorReplyCompleted`. It repeats the tool calls of the reply: the domain records a tool
/// call only while its reply is in flight, and the callback queue does not keep order, so
/// the manager records them (once, by their message ids) before it completes the reply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TutorReplyCompleted {
    pub session_id: TutorSessionId,
    pub request_id: RequestId,
    pub student_id: UserId,
    pub text: String,
    pub model: String,
    /// Summed over every round of the reply (tool calls make more than one).
    pub prompt_tokens: u32,
    pub completion_tokens: u32,
    /// From the engine taking the request to the whole answer.
    pub latency_ms: u64,
    /// The prompts it was written with (`tutor.system@v1`, ...).
    pub prompts: Vec<String>,
    pub tool_calls: Vec<ToolCallRecord>,
}

/// `TutorReplyFailed`: the student gets no reply to this request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TutorReplyFailed {
    pub session_id: TutorSessionId,
    pub request_id: RequestId,
    pub student_id: UserId,
    /// For operators (the domain cuts it to length).
    pub reason: String,
    pub model: Option<String>,
    pub latency_ms: u64,
    pub tool_calls: Vec<ToolCallRecord>,
}

/// `SessionTitleGenerated`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SessionTitleGenerated {
    pub session_id: TutorSessionId,
    /// The request whose reply prompted the title.
    pub request_id: RequestId,
    /// At most `teachin_domain::tutor_session::MAX_TITLE_CHARS` characters.
    pub title: String,
    /// False when the model gave nothing usable and the fallback (`HHmm_dd_MM`) was used.
    pub generated: bool,
}

/// The payload of every generation action on `engine-queue`, derived from the
/// `GenerationRequest`'s `…Requested` event (whose id is the message id). The worker loads
/// what was asked from the aggregate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GenerationJob {
    pub request_id: RequestId,
    pub requested_at: DateTime<Utc>,
}

/// What the model used for a generation, for analytics.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GenerationUsage {
    pub model: String,
    pub prompt_tokens: u32,
    pub completion_tokens: u32,
    pub latency_ms: u64,
    /// The prompt it was written with (`sentences@v1`, ...).
    pub prompt: String,
}

/// The exercise the `index`-th sentence of a generation request becomes: derived from the
/// request, so a callback handled twice records the same exercises.
pub fn generated_exercise(request: RequestId, index: usize) -> ExerciseId {
    ExerciseId(uuid::Uuid::new_v5(
        &uuid::Uuid::NAMESPACE_OID,
        format!("teachin:generation:{request}:sentence:{index}").as_bytes(),
    ))
}

/// `SentencesGenerated`: the manager records one exercise per sentence, then completes the
/// request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SentencesGenerated {
    pub request_id: RequestId,
    pub requester: UserId,
    pub game_type: GameType,
    pub difficulty: Difficulty,
    pub nikud: bool,
    /// Exactly as many as were asked for, each one the exercise's sentence.
    pub sentences: Vec<String>,
    pub usage: GenerationUsage,
}

/// `WordExplained`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WordExplained {
    pub request_id: RequestId,
    pub definition: String,
    pub explanation: String,
    pub usage: GenerationUsage,
}

/// `EmailDrafted`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EmailDrafted {
    pub request_id: RequestId,
    pub subject: String,
    pub body: String,
    pub usage: GenerationUsage,
}

/// `GenerationFailed`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GenerationFailed {
    pub request_id: RequestId,
    pub reason: String,
    pub model: Option<String>,
    pub latency_ms: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tutor_request_is_camel_case_json_and_knows_its_action_and_expiry() {
        let at = DateTime::from_timestamp(1_700_000_000, 0).unwrap();
        let request = TutorReplyRequest {
            session_id: TutorSessionId::new(),
            request_id: RequestId::new(),
            task: TutorTask::ExplainMistake {
                exercise_id: ExerciseId::new(),
                attempt_id: AttemptId::new(),
            },
            requested_at: at,
            ttl_seconds: 60,
        };
        let json = serde_json::to_value(&request).unwrap();
        assert_eq!(json["task"]["kind"], "explainMistake");
        assert!(json["task"]["exerciseId"].is_string());
        assert!(json["sessionId"].is_string() && json["requestedAt"].is_string());
        assert_eq!(
            serde_json::from_value::<TutorReplyRequest>(json).unwrap(),
            request
        );
        assert_eq!(request.task.action(), engine::PROCESSING_EXPLAIN_MISTAKE);
        assert!(!request.expired(at + chrono::Duration::seconds(60)));
        assert!(request.expired(at + chrono::Duration::seconds(61)));
    }

    #[test]
    fn a_frame_names_its_stage_and_finality_in_camel_case() {
        let frame = TutorReplyFrame {
            student_id: UserId::new(),
            session_id: TutorSessionId::new(),
            request_id: RequestId::new(),
            attempt: 2,
            sequence: 7,
            stage: FrameStage::Final,
            delta: "שלום".into(),
            tool_call: None,
            is_final: FrameStage::Final.is_final(),
            elapsed_ms: 12,
        };
        let json = serde_json::to_value(&frame).unwrap();
        assert_eq!(json["stage"], "final");
        assert_eq!(json["final"], true);
        assert_eq!(json["elapsedMs"], 12);
        assert!(json.get("toolCall").is_none());
        assert_eq!(
            serde_json::from_value::<TutorReplyFrame>(json).unwrap(),
            frame
        );
        assert!(!FrameStage::Model.is_final() && !FrameStage::Tool.is_final());
        assert!(FrameStage::Expired.is_final() && FrameStage::Failed.is_final());
        let request = RequestId::new();
        assert_eq!(
            message_ids::frame(request, 2, 7),
            format!("tutor-frame:{request}:2:7")
        );
        assert_ne!(message_ids::reply(request), message_ids::title(request));
    }
}
