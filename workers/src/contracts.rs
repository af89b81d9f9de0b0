//! The messages on the queues: their action names and payloads, in one place, so that the
//! producer (the outbox relay, the engine) and the consumer (the engine, the manager) cannot
//! drift apart. Payloads are camelCase JSON.
//!
//! Action names are the original system's (`ProcessingChatMessage`, ...; see
//! `original-system.md` §4), so dashboards and runbooks keep their words. The payloads are
//! ours: a message names the work and the worker loads the details from the log, rather than
//! carrying personal text through the broker.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use teachin_domain::ids::{AttemptId, ExerciseId, RequestId, TutorSessionId};

/// `engine-queue` actions.
pub mod engine {
    /// A student's message in a plain tutor conversation.
    pub const PROCESSING_CHAT_MESSAGE: &str = "ProcessingChatMessage";
    /// A student's message to the page-aware global tutor.
    pub const PROCESSING_GLOBAL_CHAT_MESSAGE: &str = "ProcessingGlobalChatMessage";
    /// The explanation of one wrong attempt.
    pub const PROCESSING_EXPLAIN_MISTAKE: &str = "ProcessingExplainMistake";
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
}
