//! Tutor sessions, their messages and AI requests (original §1.4, §9).

use super::ReadModels;
use chrono::{DateTime, Utc};
use serde::Serialize;
use uuid::Uuid;

/// One tutor session (a chat thread).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, sqlx::FromRow)]
#[serde(rename_all = "camelCase")]
#[cfg_attr(feature = "graphql", derive(async_graphql::SimpleObject))]
pub struct TutorSessionView {
    pub session_id: Uuid,
    pub student_id: Uuid,
    /// `default` | `global` | `explain_mistake`.
    pub kind: String,
    pub exercise_id: Option<Uuid>,
    pub attempt_id: Option<Uuid>,
    pub title: Option<String>,
    pub awaiting_reply: bool,
    pub message_count: i32,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// One part of a message, in stream order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, sqlx::FromRow)]
#[serde(rename_all = "camelCase")]
#[cfg_attr(feature = "graphql", derive(async_graphql::SimpleObject))]
pub struct TutorMessageView {
    pub event_sequence: i64,
    pub part: i16,
    pub request_id: Option<Uuid>,
    /// `student` | `assistant` | `context` | `tool` | `error`.
    pub role: String,
    pub text: Option<String>,
    pub tool: Option<String>,
    pub created_at: DateTime<Utc>,
}

/// A session with its whole conversation and the requests still waiting for the AI.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
#[cfg_attr(feature = "graphql", derive(async_graphql::SimpleObject))]
pub struct TutorSessionWithMessages {
    pub session: TutorSessionView,
    pub messages: Vec<TutorMessageView>,
    pub pending_requests: Vec<AiRequestView>,
}

/// An AI request and how it ended (neither `completed_at` nor `failed_at`: still pending).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, sqlx::FromRow)]
#[serde(rename_all = "camelCase")]
#[cfg_attr(feature = "graphql", derive(async_graphql::SimpleObject))]
pub struct AiRequestView {
    pub request_id: Uuid,
    pub session_id: Uuid,
    pub student_id: Uuid,
    /// `reply` | `mistake_explanation`.
    pub kind: String,
    pub requested_at: DateTime<Utc>,
    pub completed_at: Option<DateTime<Utc>>,
    pub failed_at: Option<DateTime<Utc>>,
    pub model: Option<String>,
    pub failure: Option<String>,
}

const SESSION_COLUMNS: &str = "session_id, student_id, kind, exercise_id, attempt_id, title, \
     awaiting_reply, message_count, created_at, updated_at";

const REQUEST_COLUMNS: &str =
    "request_id, session_id, student_id, kind, requested_at, completed_at, failed_at, model, failure";

impl ReadModels {
    /// A student's tutor sessions, most recently active first.
    pub async fn tutor_sessions_of(
        &self,
        student_id: Uuid,
    ) -> Result<Vec<TutorSessionView>, sqlx::Error> {
        let sql = format!(
            "SELECT {SESSION_COLUMNS} FROM read_model.tutor_sessions
             WHERE student_id = $1 ORDER BY updated_at DESC, created_at DESC, session_id DESC"
        );
        sqlx::query_as::<_, TutorSessionView>(&sql)
            .bind(student_id)
            .fetch_all(&self.pool)
            .await
    }

    /// One session with its messages in stream order (event sequence, then part), or `None`.
    pub async fn tutor_session(
        &self,
        session_id: Uuid,
    ) -> Result<Option<TutorSessionWithMessages>, sqlx::Error> {
        let sql = format!(
            "SELECT {SESSION_COLUMNS} FROM read_model.tutor_sessions WHERE session_id = $1"
        );
        let Some(session) = sqlx::query_as::<_, TutorSessionView>(&sql)
            .bind(session_id)
            .fetch_optional(&self.pool)
            .await?
        else {
            return Ok(None);
        };
        let messages = sqlx::query_as::<_, TutorMessageView>(
            "SELECT event_sequence, part, request_id, role, text, tool, created_at
             FROM read_model.tutor_messages WHERE session_id = $1
             ORDER BY event_sequence, part",
        )
        .bind(session_id)
        .fetch_all(&self.pool)
        .await?;
        let sql = format!(
            "SELECT {REQUEST_COLUMNS} FROM read_model.ai_requests
             WHERE session_id = $1 AND completed_at IS NULL AND failed_at IS NULL
             ORDER BY requested_at, request_id"
        );
        let pending_requests = sqlx::query_as::<_, AiRequestView>(&sql)
            .bind(session_id)
            .fetch_all(&self.pool)
            .await?;
        Ok(Some(TutorSessionWithMessages {
            session,
            messages,
            pending_requests,
        }))
    }

    /// AI requests that have neither completed nor failed, oldest first: one student's, or
    /// everyone's when `student_id` is `None`.
    pub async fn pending_ai_requests(
        &self,
        student_id: Option<Uuid>,
    ) -> Result<Vec<AiRequestView>, sqlx::Error> {
        let sql = format!(
            "SELECT {REQUEST_COLUMNS} FROM read_model.ai_requests
             WHERE completed_at IS NULL AND failed_at IS NULL
               AND ($1::uuid IS NULL OR student_id = $1)
             ORDER BY requested_at, request_id"
        );
        sqlx::query_as::<_, AiRequestView>(&sql)
            .bind(student_id)
            .fetch_all(&self.pool)
            .await
    }

    /// One AI request, whatever its state.
    pub async fn ai_request(&self, request_id: Uuid) -> Result<Option<AiRequestView>, sqlx::Error> {
        let sql =
            format!("SELECT {REQUEST_COLUMNS} FROM read_model.ai_requests WHERE request_id = $1");
        sqlx::query_as::<_, AiRequestView>(&sql)
            .bind(request_id)
            .fetch_optional(&self.pool)
            .await
    }
}
