//! A conversation with the AI tutor: one chat thread (the original's `threadId`).
//!
//! The student writes, the platform asks the engine for a reply, and the engine reports back
//! — the reply, a failure, or the tools it called on the way. The aggregate keeps that
//! exchange honest: a thread belongs to the student who started it, keeps the kind it started
//! with (plain chat, the page-aware global tutor, or the explanation of one real mistake), and
//! takes one message at a time, so a student cannot talk over a reply still being written.
//!
//! Requests are identified by the id the caller chose, which makes every step safe to retry:
//! posting the same request twice, or the engine redelivering a reply, changes nothing.
//!
//! Everything typed by the student or written to them is personal and is sealed under the
//! student's key; model names, token counts and failure reasons are operational and plain.

use crate::error::{DomainError, ErrorKind};
use crate::ids::{AttemptId, ExerciseId, RequestId, UserId};
use crate::personal_data::Sealed;
use crate::services::{DomainServices, PortError};
use crate::text;
use cqrs_es::event_sink::EventSink;
use cqrs_es::{Aggregate, DomainEvent};
use serde::{Deserialize, Serialize};
use std::fmt;

/// The longest message a student may post, in characters.
pub const MAX_MESSAGE_CHARS: usize = 4000;
/// The longest page context (minified JSON) the global tutor accepts, in characters.
pub const MAX_PAGE_CONTEXT_CHARS: usize = 8000;
/// The longest conversation title, in characters.
pub const MAX_TITLE_CHARS: usize = 64;
/// Failure reasons longer than this are cut, in characters.
pub const MAX_FAILURE_REASON_CHARS: usize = 500;
/// The longest tool name, in characters.
pub const MAX_TOOL_NAME_CHARS: usize = 100;

/// What a conversation is about; it decides how the engine prompts the model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SessionKind {
    /// A free conversation with the tutor.
    Default,
    /// The side-panel tutor, told on every message what page the student is looking at.
    Global,
    /// The explanation of one wrong attempt, and the student's follow-up questions.
    ExplainMistake {
        exercise: ExerciseId,
        attempt: AttemptId,
    },
}

impl SessionKind {
    /// The kind's name, as the portal spells `chatType`.
    pub fn name(&self) -> &'static str {
        match self {
            SessionKind::Default => "Default",
            SessionKind::Global => "Global",
            SessionKind::ExplainMistake { .. } => "ExplainMistake",
        }
    }
}

impl fmt::Display for SessionKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum TutorSessionCommand {
    /// The student writes to the tutor. Starts the conversation if it is new.
    PostStudentMessage {
        student: UserId,
        kind: SessionKind,
        text: String,
        /// JSON describing the page the student is on; required for, and only for, the
        /// global tutor.
        page_context: Option<String>,
        request_id: RequestId,
    },
    /// The student asks why an attempt was wrong. Starts the conversation if it is new; in
    /// an existing mistake-explanation conversation it asks again (the portal may reuse the
    /// thread for another wrong attempt, which the event records).
    RequestMistakeExplanation {
        student: UserId,
        exercise: ExerciseId,
        attempt: AttemptId,
        request_id: RequestId,
    },
    /// The engine finished a reply.
    CompleteAiReply {
        request_id: RequestId,
        text: String,
        model: String,
        prompt_tokens: u32,
        completion_tokens: u32,
        latency_ms: u64,
    },
    /// The engine gave up on a reply.
    FailAiReply {
        request_id: RequestId,
        reason: String,
        model: Option<String>,
        latency_ms: u64,
    },
    /// Name the conversation (the engine generates a title from the first messages).
    SetTitle { title: String },
    /// The model called a tool while writing a reply.
    RecordToolCall {
        request_id: RequestId,
        tool: String,
        arguments: String,
        result: Option<String>,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum TutorSessionEvent {
    TutorSessionStarted {
        student: UserId,
        kind: SessionKind,
    },
    StudentMessagePosted {
        request_id: RequestId,
        text: Sealed,
        /// The minified page-context JSON, sealed.
        page_context: Option<Sealed>,
    },
    MistakeExplanationRequested {
        request_id: RequestId,
        exercise: ExerciseId,
        attempt: AttemptId,
    },
    /// The engine owes a reply to this request.
    AiReplyRequested {
        request_id: RequestId,
    },
    AiReplyCompleted {
        request_id: RequestId,
        text: Sealed,
        model: String,
        prompt_tokens: u32,
        completion_tokens: u32,
        latency_ms: u64,
    },
    AiReplyFailed {
        request_id: RequestId,
        reason: String,
        model: Option<String>,
        latency_ms: u64,
    },
    TitleSet {
        title: Sealed,
    },
    ToolCallRecorded {
        request_id: RequestId,
        tool: String,
        arguments: Sealed,
        result: Option<Sealed>,
    },
}

impl DomainEvent for TutorSessionEvent {
    fn event_type(&self) -> String {
        match self {
            TutorSessionEvent::TutorSessionStarted { .. } => "TutorSessionStarted",
            TutorSessionEvent::StudentMessagePosted { .. } => "StudentMessagePosted",
            TutorSessionEvent::MistakeExplanationRequested { .. } => "MistakeExplanationRequested",
            TutorSessionEvent::AiReplyRequested { .. } => "AiReplyRequested",
            TutorSessionEvent::AiReplyCompleted { .. } => "AiReplyCompleted",
            TutorSessionEvent::AiReplyFailed { .. } => "AiReplyFailed",
            TutorSessionEvent::TitleSet { .. } => "TitleSet",
            TutorSessionEvent::ToolCallRecorded { .. } => "ToolCallRecorded",
        }
        .to_string()
    }

    fn event_version(&self) -> String {
        "1.0".to_string()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TutorSessionError {
    #[error("no such tutor conversation")]
    SessionNotFound,
    #[error("this tutor conversation belongs to another student")]
    NotYourSession,
    #[error("this is a {existing} conversation; a {requested} message cannot be posted to it")]
    KindMismatch {
        existing: &'static str,
        requested: &'static str,
    },
    #[error("the tutor is still answering the previous message")]
    ReplyInFlight,
    #[error("the message is empty")]
    MessageEmpty,
    #[error("the message is longer than {MAX_MESSAGE_CHARS} characters")]
    MessageTooLong,
    #[error("the global tutor needs the page context")]
    PageContextRequired,
    #[error("only the global tutor takes a page context")]
    PageContextNotAllowed,
    #[error("the page context is not valid JSON")]
    PageContextNotJson,
    #[error("the page context is longer than {MAX_PAGE_CONTEXT_CHARS} characters")]
    PageContextTooLong,
    #[error("no such attempt at this exercise")]
    AttemptNotFound,
    #[error("this attempt belongs to another student")]
    NotYourAttempt,
    #[error("no such tutor request in this conversation")]
    RequestNotFound,
    #[error("this tutor reply has already failed")]
    ReplyAlreadyFailed,
    #[error("this tutor reply has already been completed")]
    ReplyAlreadyCompleted,
    #[error("the tutor is no longer answering this request")]
    ReplyNotInFlight,
    #[error("the title is empty")]
    TitleEmpty,
    #[error("the title is longer than {MAX_TITLE_CHARS} characters")]
    TitleTooLong,
    #[error("the tool name is empty")]
    ToolNameEmpty,
    #[error("the tool name is longer than {MAX_TOOL_NAME_CHARS} characters")]
    ToolNameTooLong,
    #[error(transparent)]
    Port(#[from] PortError),
}

impl DomainError for TutorSessionError {
    fn kind(&self) -> ErrorKind {
        use TutorSessionError::*;
        match self {
            SessionNotFound | AttemptNotFound | RequestNotFound => ErrorKind::NotFound,
            NotYourSession | NotYourAttempt => ErrorKind::Forbidden,
            KindMismatch { .. }
            | ReplyInFlight
            | ReplyAlreadyFailed
            | ReplyAlreadyCompleted
            | ReplyNotInFlight => ErrorKind::Conflict,
            MessageEmpty
            | MessageTooLong
            | PageContextRequired
            | PageContextNotAllowed
            | PageContextNotJson
            | PageContextTooLong
            | TitleEmpty
            | TitleTooLong
            | ToolNameEmpty
            | ToolNameTooLong => ErrorKind::InvalidInput,
            Port(e) => e.kind(),
        }
    }

    fn field(&self) -> Option<&'static str> {
        use TutorSessionError::*;
        match self {
            MessageEmpty | MessageTooLong => Some("text"),
            PageContextRequired
            | PageContextNotAllowed
            | PageContextNotJson
            | PageContextTooLong => Some("pageContext"),
            TitleEmpty | TitleTooLong => Some("title"),
            ToolNameEmpty | ToolNameTooLong => Some("tool"),
            _ => None,
        }
    }
}

/// Where the engine is with one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ReplyStatus {
    InFlight,
    Completed,
    Failed,
}

/// One request the engine was asked to answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AiRequest {
    pub request_id: RequestId,
    pub status: ReplyStatus,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TutorSession {
    student: Option<UserId>,
    kind: Option<SessionKind>,
    title: Option<Sealed>,
    requests: Vec<AiRequest>,
}

impl TutorSession {
    /// The student the conversation belongs to, once started.
    pub fn student(&self) -> Option<UserId> {
        self.student
    }

    /// The kind the conversation started with.
    pub fn kind(&self) -> Option<SessionKind> {
        self.kind
    }

    /// The conversation's title, sealed, once one was set.
    pub fn title(&self) -> Option<&Sealed> {
        self.title.as_ref()
    }

    /// Every request made to the engine, oldest first.
    pub fn requests(&self) -> &[AiRequest] {
        &self.requests
    }

    /// Where the engine is with `request_id`, if this conversation made that request.
    pub fn reply_status(&self, request_id: RequestId) -> Option<ReplyStatus> {
        self.requests
            .iter()
            .find(|r| r.request_id == request_id)
            .map(|r| r.status)
    }

    /// Whether the engine still owes a reply.
    pub fn awaiting_reply(&self) -> bool {
        self.requests
            .iter()
            .any(|r| r.status == ReplyStatus::InFlight)
    }

    /// The student of a started conversation, or why a command cannot be taken.
    fn owner(&self) -> Result<UserId, TutorSessionError> {
        self.student.ok_or(TutorSessionError::SessionNotFound)
    }

    /// Checks that `student` may write here: the conversation is new or theirs.
    fn check_writer(&self, student: UserId) -> Result<(), TutorSessionError> {
        match self.student {
            Some(owner) if owner != student => Err(TutorSessionError::NotYourSession),
            _ => Ok(()),
        }
    }

    /// Checks that a message of `requested` kind fits the conversation. A mistake
    /// explanation takes follow-up questions sent as `ExplainMistake` (for any attempt) or as
    /// `Default`, since the portal sends both.
    fn check_kind(&self, requested: SessionKind) -> Result<(), TutorSessionError> {
        let Some(existing) = self.kind else {
            return Ok(());
        };
        let fits = match (existing, requested) {
            (SessionKind::ExplainMistake { .. }, SessionKind::ExplainMistake { .. })
            | (SessionKind::ExplainMistake { .. }, SessionKind::Default) => true,
            (existing, requested) => existing == requested,
        };
        if fits {
            Ok(())
        } else {
            Err(TutorSessionError::KindMismatch {
                existing: existing.name(),
                requested: requested.name(),
            })
        }
    }

    fn check_not_awaiting_reply(&self) -> Result<(), TutorSessionError> {
        if self.awaiting_reply() {
            Err(TutorSessionError::ReplyInFlight)
        } else {
            Ok(())
        }
    }

    /// Checks that `student` may ask for a reply to a `kind` message here. `Ok(false)` when
    /// `request_id` was taken before: a retry, with nothing left to do.
    fn admits_new_request(
        &self,
        student: UserId,
        kind: SessionKind,
        request_id: RequestId,
    ) -> Result<bool, TutorSessionError> {
        self.check_writer(student)?;
        if self.reply_status(request_id).is_some() {
            return Ok(false);
        }
        self.check_kind(kind)?;
        self.check_not_awaiting_reply()?;
        Ok(true)
    }

    /// The status of a request the engine reports on.
    fn request_status(&self, request_id: RequestId) -> Result<ReplyStatus, TutorSessionError> {
        self.reply_status(request_id)
            .ok_or(TutorSessionError::RequestNotFound)
    }
}

/// The page context as minified JSON when the kind takes one. A blank context counts as none.
fn checked_page_context(
    kind: SessionKind,
    page_context: Option<&str>,
) -> Result<Option<String>, TutorSessionError> {
    let page_context = page_context.map(str::trim).filter(|c| !c.is_empty());
    match (kind, page_context) {
        (SessionKind::Global, None) => Err(TutorSessionError::PageContextRequired),
        (SessionKind::Global, Some(raw)) => {
            let value: serde_json::Value =
                serde_json::from_str(raw).map_err(|_| TutorSessionError::PageContextNotJson)?;
            let minified = value.to_string();
            if minified.chars().count() > MAX_PAGE_CONTEXT_CHARS {
                return Err(TutorSessionError::PageContextTooLong);
            }
            Ok(Some(minified))
        }
        (_, None) => Ok(None),
        (_, Some(_)) => Err(TutorSessionError::PageContextNotAllowed),
    }
}

/// Checks through the practice records that the attempt exists and is `student`'s.
async fn check_attempt(
    services: &DomainServices,
    student: UserId,
    exercise: ExerciseId,
    attempt: AttemptId,
) -> Result<(), TutorSessionError> {
    match services.practice.attempt(exercise, attempt).await? {
        None => Err(TutorSessionError::AttemptNotFound),
        Some(facts) if facts.student != student => Err(TutorSessionError::NotYourAttempt),
        Some(_) => Ok(()),
    }
}

/// Cuts `text` to at most `max` characters.
fn truncated(text: &str, max: usize) -> String {
    text.chars().take(max).collect()
}

impl Aggregate for TutorSession {
    const TYPE: &'static str = "TutorSession";
    type Command = TutorSessionCommand;
    type Event = TutorSessionEvent;
    type Error = TutorSessionError;
    type Services = DomainServices;

    async fn handle(
        &mut self,
        command: Self::Command,
        services: &Self::Services,
        sink: &EventSink<Self>,
    ) -> Result<(), Self::Error> {
        match command {
            TutorSessionCommand::PostStudentMessage {
                student,
                kind,
                text,
                page_context,
                request_id,
            } => {
                let text = text::bounded(&text, MAX_MESSAGE_CHARS).map_err(|p| {
                    p.pick(
                        TutorSessionError::MessageEmpty,
                        TutorSessionError::MessageTooLong,
                    )
                })?;
                // Only a global-tutor message carries a page context; since a conversation
                // keeps its kind, only a global conversation ever holds one.
                let page_context = checked_page_context(kind, page_context.as_deref())?;
                if !self.admits_new_request(student, kind, request_id)? {
                    // A retried post: it was taken the first time.
                    return Ok(());
                }
                let fresh = self.student.is_none();
                if fresh {
                    if let SessionKind::ExplainMistake { exercise, attempt } = kind {
                        check_attempt(services, student, exercise, attempt).await?;
                    }
                }
                let text = services.vault.seal(student, text).await?;
                let page_context = match page_context {
                    Some(json) => Some(services.vault.seal(student, &json).await?),
                    None => None,
                };
                if fresh {
                    sink.write(
                        TutorSessionEvent::TutorSessionStarted { student, kind },
                        self,
                    )
                    .await;
                }
                sink.write(
                    TutorSessionEvent::StudentMessagePosted {
                        request_id,
                        text,
                        page_context,
                    },
                    self,
                )
                .await;
                sink.write(TutorSessionEvent::AiReplyRequested { request_id }, self)
                    .await;
            }

            TutorSessionCommand::RequestMistakeExplanation {
                student,
                exercise,
                attempt,
                request_id,
            } => {
                let kind = SessionKind::ExplainMistake { exercise, attempt };
                if !self.admits_new_request(student, kind, request_id)? {
                    return Ok(());
                }
                check_attempt(services, student, exercise, attempt).await?;
                if self.student.is_none() {
                    sink.write(
                        TutorSessionEvent::TutorSessionStarted { student, kind },
                        self,
                    )
                    .await;
                }
                sink.write(
                    TutorSessionEvent::MistakeExplanationRequested {
                        request_id,
                        exercise,
                        attempt,
                    },
                    self,
                )
                .await;
                sink.write(TutorSessionEvent::AiReplyRequested { request_id }, self)
                    .await;
            }

            TutorSessionCommand::CompleteAiReply {
                request_id,
                text,
                model,
                prompt_tokens,
                completion_tokens,
                latency_ms,
            } => {
                let student = self.owner()?;
                match self.request_status(request_id)? {
                    // The engine may deliver the same reply twice.
                    ReplyStatus::Completed => return Ok(()),
                    ReplyStatus::Failed => return Err(TutorSessionError::ReplyAlreadyFailed),
                    ReplyStatus::InFlight => {}
                }
                let text = services.vault.seal(student, &text).await?;
                sink.write(
                    TutorSessionEvent::AiReplyCompleted {
                        request_id,
                        text,
                        model,
                        prompt_tokens,
                        completion_tokens,
                        latency_ms,
                    },
                    self,
                )
                .await;
            }

            TutorSessionCommand::FailAiReply {
                request_id,
                reason,
                model,
                latency_ms,
            } => {
                self.owner()?;
                match self.request_status(request_id)? {
                    ReplyStatus::Failed => return Ok(()),
                    ReplyStatus::Completed => return Err(TutorSessionError::ReplyAlreadyCompleted),
                    ReplyStatus::InFlight => {}
                }
                sink.write(
                    TutorSessionEvent::AiReplyFailed {
                        request_id,
                        reason: truncated(reason.trim(), MAX_FAILURE_REASON_CHARS),
                        model,
                        latency_ms,
                    },
                    self,
                )
                .await;
            }

            TutorSessionCommand::SetTitle { title } => {
                let student = self.owner()?;
                let title = text::bounded(&title, MAX_TITLE_CHARS).map_err(|p| {
                    p.pick(
                        TutorSessionError::TitleEmpty,
                        TutorSessionError::TitleTooLong,
                    )
                })?;
                let title = services.vault.seal(student, title).await?;
                sink.write(TutorSessionEvent::TitleSet { title }, self)
                    .await;
            }

            TutorSessionCommand::RecordToolCall {
                request_id,
                tool,
                arguments,
                result,
            } => {
                let student = self.owner()?;
                let tool = text::bounded(&tool, MAX_TOOL_NAME_CHARS)
                    .map_err(|p| {
                        p.pick(
                            TutorSessionError::ToolNameEmpty,
                            TutorSessionError::ToolNameTooLong,
                        )
                    })?
                    .to_string();
                if self.request_status(request_id)? != ReplyStatus::InFlight {
                    return Err(TutorSessionError::ReplyNotInFlight);
                }
                let arguments = services.vault.seal(student, &arguments).await?;
                let result = match result {
                    Some(result) => Some(services.vault.seal(student, &result).await?),
                    None => None,
                };
                sink.write(
                    TutorSessionEvent::ToolCallRecorded {
                        request_id,
                        tool,
                        arguments,
                        result,
                    },
                    self,
                )
                .await;
            }
        }
        Ok(())
    }

    fn apply(&mut self, event: Self::Event) {
        match event {
            TutorSessionEvent::TutorSessionStarted { student, kind } => {
                self.student = Some(student);
                self.kind = Some(kind);
            }
            TutorSessionEvent::AiReplyRequested { request_id } => self.requests.push(AiRequest {
                request_id,
                status: ReplyStatus::InFlight,
            }),
            TutorSessionEvent::AiReplyCompleted { request_id, .. } => {
                self.set_status(request_id, ReplyStatus::Completed)
            }
            TutorSessionEvent::AiReplyFailed { request_id, .. } => {
                self.set_status(request_id, ReplyStatus::Failed)
            }
            TutorSessionEvent::TitleSet { title } => self.title = Some(title),
            // The conversation's text lives in the events, for the read side; the aggregate
            // needs only the state of each request to decide.
            TutorSessionEvent::StudentMessagePosted { .. }
            | TutorSessionEvent::MistakeExplanationRequested { .. }
            | TutorSessionEvent::ToolCallRecorded { .. } => {}
        }
    }
}

impl TutorSession {
    fn set_status(&mut self, request_id: RequestId, status: ReplyStatus) {
        if let Some(request) = self
            .requests
            .iter_mut()
            .find(|r| r.request_id == request_id)
        {
            request.status = status;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::services::testing::{sealed, TestWorld};
    use crate::services::AttemptFacts;
    use crate::vocabulary::{Difficulty, GameType};
    use cqrs_es::test::TestFramework;

    type Framework = TestFramework<TutorSession>;

    fn framework() -> Framework {
        Framework::with(TestWorld::default().services())
    }

    struct Fixture {
        student: UserId,
        exercise: ExerciseId,
        attempt: AttemptId,
        world: TestWorld,
    }

    /// A student with one real (wrong) attempt the tutor can explain.
    fn fixture() -> Fixture {
        let student = UserId::new();
        let exercise = ExerciseId::new();
        let attempt = AttemptId::new();
        let world = TestWorld::default().with_attempt(
            attempt,
            AttemptFacts {
                student,
                exercise,
                game_type: GameType::WordOrder,
                difficulty: Difficulty::Medium,
                correct: false,
            },
        );
        Fixture {
            student,
            exercise,
            attempt,
            world,
        }
    }

    fn post(
        student: UserId,
        kind: SessionKind,
        text: &str,
        page_context: Option<&str>,
        request_id: RequestId,
    ) -> TutorSessionCommand {
        TutorSessionCommand::PostStudentMessage {
            student,
            kind,
            text: text.to_string(),
            page_context: page_context.map(str::to_string),
            request_id,
        }
    }

    fn started(student: UserId, kind: SessionKind) -> TutorSessionEvent {
        TutorSessionEvent::TutorSessionStarted { student, kind }
    }

    fn posted(student: UserId, request_id: RequestId, text: &str) -> TutorSessionEvent {
        TutorSessionEvent::StudentMessagePosted {
            request_id,
            text: sealed(student, text),
            page_context: None,
        }
    }

    fn requested(request_id: RequestId) -> TutorSessionEvent {
        TutorSessionEvent::AiReplyRequested { request_id }
    }

    fn completed(student: UserId, request_id: RequestId, text: &str) -> TutorSessionEvent {
        TutorSessionEvent::AiReplyCompleted {
            request_id,
            text: sealed(student, text),
            model: "gpt-4.1-mini".to_string(),
            prompt_tokens: 120,
            completion_tokens: 40,
            latency_ms: 900,
        }
    }

    fn complete(request_id: RequestId, text: &str) -> TutorSessionCommand {
        TutorSessionCommand::CompleteAiReply {
            request_id,
            text: text.to_string(),
            model: "gpt-4.1-mini".to_string(),
            prompt_tokens: 120,
            completion_tokens: 40,
            latency_ms: 900,
        }
    }

    fn failed(request_id: RequestId, reason: &str) -> TutorSessionEvent {
        TutorSessionEvent::AiReplyFailed {
            request_id,
            reason: reason.to_string(),
            model: Some("gpt-4.1-mini".to_string()),
            latency_ms: 60_000,
        }
    }

    fn fail(request_id: RequestId, reason: &str) -> TutorSessionCommand {
        TutorSessionCommand::FailAiReply {
            request_id,
            reason: reason.to_string(),
            model: Some("gpt-4.1-mini".to_string()),
            latency_ms: 60_000,
        }
    }

    /// A default conversation with one answered message.
    fn answered_chat(student: UserId, request_id: RequestId) -> Vec<TutorSessionEvent> {
        vec![
            started(student, SessionKind::Default),
            posted(student, request_id, "מה זה שלום?"),
            requested(request_id),
            completed(student, request_id, "שלום means hello."),
        ]
    }

    /// A default conversation waiting for its first reply.
    fn waiting_chat(student: UserId, request_id: RequestId) -> Vec<TutorSessionEvent> {
        vec![
            started(student, SessionKind::Default),
            posted(student, request_id, "מה זה שלום?"),
            requested(request_id),
        ]
    }

    // ---- PostStudentMessage ----

    #[test]
    fn the_first_message_starts_the_conversation() {
        let student = UserId::new();
        let request = RequestId::new();
        framework()
            .given_no_previous_events()
            .when(post(
                student,
                SessionKind::Default,
                "  מה זה שלום? ",
                None,
                request,
            ))
            .then_expect_events(vec![
                started(student, SessionKind::Default),
                posted(student, request, "מה זה שלום?"),
                requested(request),
            ]);
    }

    #[test]
    fn a_later_message_continues_the_conversation() {
        let student = UserId::new();
        let (first, second) = (RequestId::new(), RequestId::new());
        framework()
            .given(answered_chat(student, first))
            .when(post(student, SessionKind::Default, "ותודה?", None, second))
            .then_expect_events(vec![posted(student, second, "ותודה?"), requested(second)]);
    }

    #[test]
    fn a_message_may_follow_a_failed_reply() {
        let student = UserId::new();
        let (first, second) = (RequestId::new(), RequestId::new());
        let mut history = waiting_chat(student, first);
        history.push(failed(first, "timeout"));
        framework()
            .given(history)
            .when(post(student, SessionKind::Default, "שוב?", None, second))
            .then_expect_events(vec![posted(student, second, "שוב?"), requested(second)]);
    }

    #[test]
    fn posting_the_same_request_twice_changes_nothing() {
        let student = UserId::new();
        let request = RequestId::new();
        framework()
            .given(waiting_chat(student, request))
            .when(post(
                student,
                SessionKind::Default,
                "מה זה שלום?",
                None,
                request,
            ))
            .then_expect_events(vec![]);
    }

    #[test]
    fn another_student_cannot_write_in_the_conversation() {
        let student = UserId::new();
        let error = TutorSessionError::NotYourSession;
        assert_eq!(error.kind(), ErrorKind::Forbidden);
        framework()
            .given(answered_chat(student, RequestId::new()))
            .when(post(
                UserId::new(),
                SessionKind::Default,
                "שלום",
                None,
                RequestId::new(),
            ))
            .then_expect_error(error);
    }

    #[test]
    fn the_kind_of_a_conversation_cannot_change() {
        let student = UserId::new();
        let error = TutorSessionError::KindMismatch {
            existing: "Default",
            requested: "Global",
        };
        assert_eq!(error.kind(), ErrorKind::Conflict);
        framework()
            .given(answered_chat(student, RequestId::new()))
            .when(post(
                student,
                SessionKind::Global,
                "שלום",
                Some("{}"),
                RequestId::new(),
            ))
            .then_expect_error(error);

        let f = fixture();
        framework()
            .given(answered_chat(f.student, RequestId::new()))
            .when(post(
                f.student,
                SessionKind::ExplainMistake {
                    exercise: f.exercise,
                    attempt: f.attempt,
                },
                "למה?",
                None,
                RequestId::new(),
            ))
            .then_expect_error(TutorSessionError::KindMismatch {
                existing: "Default",
                requested: "ExplainMistake",
            });
    }

    fn explained(f: &Fixture, request: RequestId) -> Vec<TutorSessionEvent> {
        vec![
            started(
                f.student,
                SessionKind::ExplainMistake {
                    exercise: f.exercise,
                    attempt: f.attempt,
                },
            ),
            TutorSessionEvent::MistakeExplanationRequested {
                request_id: request,
                exercise: f.exercise,
                attempt: f.attempt,
            },
            requested(request),
            completed(f.student, request, "The verb comes first."),
        ]
    }

    #[test]
    fn a_mistake_explanation_takes_follow_ups_as_explain_mistake_or_default() {
        let f = fixture();
        let first = RequestId::new();
        for kind in [
            SessionKind::Default,
            SessionKind::ExplainMistake {
                exercise: f.exercise,
                attempt: f.attempt,
            },
            // The portal's follow-ups do not say which attempt; any will do.
            SessionKind::ExplainMistake {
                exercise: ExerciseId::new(),
                attempt: AttemptId::new(),
            },
        ] {
            let follow_up = RequestId::new();
            Framework::with(f.world.services())
                .given(explained(&f, first))
                .when(post(f.student, kind, "ולמה?", None, follow_up))
                .then_expect_events(vec![
                    posted(f.student, follow_up, "ולמה?"),
                    requested(follow_up),
                ]);
        }
        // But not as a global-tutor message.
        Framework::with(f.world.services())
            .given(explained(&f, first))
            .when(post(
                f.student,
                SessionKind::Global,
                "ולמה?",
                Some("{}"),
                RequestId::new(),
            ))
            .then_expect_error(TutorSessionError::KindMismatch {
                existing: "ExplainMistake",
                requested: "Global",
            });
    }

    #[test]
    fn a_message_waits_for_the_previous_reply() {
        let student = UserId::new();
        let error = TutorSessionError::ReplyInFlight;
        assert_eq!(error.kind(), ErrorKind::Conflict);
        assert_eq!(
            error.to_string(),
            "the tutor is still answering the previous message"
        );
        framework()
            .given(waiting_chat(student, RequestId::new()))
            .when(post(
                student,
                SessionKind::Default,
                "?",
                None,
                RequestId::new(),
            ))
            .then_expect_error(error);
    }

    #[test]
    fn a_message_must_have_text_and_not_too_much_of_it() {
        let student = UserId::new();
        for (text, error) in [
            ("   ".to_string(), TutorSessionError::MessageEmpty),
            (
                "ש".repeat(MAX_MESSAGE_CHARS + 1),
                TutorSessionError::MessageTooLong,
            ),
        ] {
            assert_eq!(error.kind(), ErrorKind::InvalidInput);
            assert_eq!(error.field(), Some("text"));
            framework()
                .given_no_previous_events()
                .when(post(
                    student,
                    SessionKind::Default,
                    &text,
                    None,
                    RequestId::new(),
                ))
                .then_expect_error(error);
        }
        let longest = "ש".repeat(MAX_MESSAGE_CHARS);
        let request = RequestId::new();
        framework()
            .given_no_previous_events()
            .when(post(student, SessionKind::Default, &longest, None, request))
            .then_expect_events(vec![
                started(student, SessionKind::Default),
                posted(student, request, &longest),
                requested(request),
            ]);
    }

    #[test]
    fn the_global_tutor_stores_the_page_context_minified_and_sealed() {
        let student = UserId::new();
        let request = RequestId::new();
        let context = r#"{ "page": "typing",  "sentence": "אני אוהב קפה", "answer": 777 }"#;
        framework()
            .given_no_previous_events()
            .when(post(
                student,
                SessionKind::Global,
                "מה התשובה?",
                Some(context),
                request,
            ))
            .then_expect_events(vec![
                started(student, SessionKind::Global),
                TutorSessionEvent::StudentMessagePosted {
                    request_id: request,
                    text: sealed(student, "מה התשובה?"),
                    page_context: Some(sealed(
                        student,
                        r#"{"answer":777,"page":"typing","sentence":"אני אוהב קפה"}"#,
                    )),
                },
                requested(request),
            ]);
    }

    #[test]
    fn the_page_context_is_required_for_and_only_for_the_global_tutor() {
        let student = UserId::new();
        let too_long = format!(r#"{{"text":"{}"}}"#, "א".repeat(MAX_PAGE_CONTEXT_CHARS));
        let cases = [
            (
                SessionKind::Global,
                None,
                TutorSessionError::PageContextRequired,
            ),
            (
                SessionKind::Global,
                Some("  "),
                TutorSessionError::PageContextRequired,
            ),
            (
                SessionKind::Global,
                Some("{not json"),
                TutorSessionError::PageContextNotJson,
            ),
            (
                SessionKind::Global,
                Some(too_long.as_str()),
                TutorSessionError::PageContextTooLong,
            ),
            (
                SessionKind::Default,
                Some("{}"),
                TutorSessionError::PageContextNotAllowed,
            ),
        ];
        for (kind, context, error) in cases {
            assert_eq!(error.kind(), ErrorKind::InvalidInput);
            assert_eq!(error.field(), Some("pageContext"));
            framework()
                .given_no_previous_events()
                .when(post(student, kind, "שלום", context, RequestId::new()))
                .then_expect_error(error);
        }
        // Whitespace does not count towards the limit: only the minified JSON does.
        let padded = format!(
            "{{ \"text\" :   \"{}\"   {} }}",
            "א".repeat(MAX_PAGE_CONTEXT_CHARS - 11),
            " ".repeat(100)
        );
        let events = framework()
            .given_no_previous_events()
            .when(post(
                student,
                SessionKind::Global,
                "שלום",
                Some(&padded),
                RequestId::new(),
            ))
            .inspect_result()
            .unwrap();
        assert_eq!(events.len(), 3);
    }

    #[test]
    fn an_explain_mistake_conversation_starts_only_for_the_students_real_attempt() {
        let f = fixture();
        let request = RequestId::new();
        let kind = SessionKind::ExplainMistake {
            exercise: f.exercise,
            attempt: f.attempt,
        };
        Framework::with(f.world.services())
            .given_no_previous_events()
            .when(post(f.student, kind, "למה טעיתי?", None, request))
            .then_expect_events(vec![
                started(f.student, kind),
                posted(f.student, request, "למה טעיתי?"),
                requested(request),
            ]);

        let unknown = SessionKind::ExplainMistake {
            exercise: f.exercise,
            attempt: AttemptId::new(),
        };
        assert_eq!(
            TutorSessionError::AttemptNotFound.kind(),
            ErrorKind::NotFound
        );
        Framework::with(f.world.services())
            .given_no_previous_events()
            .when(post(f.student, unknown, "למה?", None, RequestId::new()))
            .then_expect_error(TutorSessionError::AttemptNotFound);

        assert_eq!(
            TutorSessionError::NotYourAttempt.kind(),
            ErrorKind::Forbidden
        );
        Framework::with(f.world.services())
            .given_no_previous_events()
            .when(post(UserId::new(), kind, "למה?", None, RequestId::new()))
            .then_expect_error(TutorSessionError::NotYourAttempt);
    }

    #[test]
    fn an_erased_student_cannot_post() {
        let student = UserId::new();
        let world = TestWorld::default();
        world.shred(student);
        let error = Framework::with(world.services())
            .given_no_previous_events()
            .when(post(
                student,
                SessionKind::Default,
                "שלום",
                None,
                RequestId::new(),
            ))
            .inspect_result()
            .unwrap_err();
        assert_eq!(error, TutorSessionError::Port(PortError::Erased(student)));
        assert_eq!(error.kind(), ErrorKind::Conflict);
        assert_eq!(
            TutorSessionError::Port(PortError::Unavailable("down".into())).kind(),
            ErrorKind::Unavailable
        );
    }

    // ---- RequestMistakeExplanation ----

    fn explain(f: &Fixture, request_id: RequestId) -> TutorSessionCommand {
        TutorSessionCommand::RequestMistakeExplanation {
            student: f.student,
            exercise: f.exercise,
            attempt: f.attempt,
            request_id,
        }
    }

    #[test]
    fn a_mistake_explanation_starts_a_conversation_bound_to_the_attempt() {
        let f = fixture();
        let request = RequestId::new();
        Framework::with(f.world.services())
            .given_no_previous_events()
            .when(explain(&f, request))
            .then_expect_events(vec![
                started(
                    f.student,
                    SessionKind::ExplainMistake {
                        exercise: f.exercise,
                        attempt: f.attempt,
                    },
                ),
                TutorSessionEvent::MistakeExplanationRequested {
                    request_id: request,
                    exercise: f.exercise,
                    attempt: f.attempt,
                },
                requested(request),
            ]);
    }

    #[test]
    fn a_mistake_explanation_can_be_requested_again_in_the_same_conversation() {
        let f = fixture();
        let (first, second) = (RequestId::new(), RequestId::new());
        Framework::with(f.world.services())
            .given(explained(&f, first))
            .when(explain(&f, second))
            .then_expect_events(vec![
                TutorSessionEvent::MistakeExplanationRequested {
                    request_id: second,
                    exercise: f.exercise,
                    attempt: f.attempt,
                },
                requested(second),
            ]);
        // Retrying a request already taken changes nothing.
        Framework::with(f.world.services())
            .given(explained(&f, first))
            .when(explain(&f, first))
            .then_expect_events(vec![]);
    }

    #[test]
    fn a_mistake_explanation_is_refused_where_it_does_not_fit() {
        let f = fixture();
        // Not the student's conversation.
        Framework::with(f.world.services())
            .given(answered_chat(UserId::new(), RequestId::new()))
            .when(explain(&f, RequestId::new()))
            .then_expect_error(TutorSessionError::NotYourSession);
        // Not a mistake-explanation conversation.
        Framework::with(f.world.services())
            .given(answered_chat(f.student, RequestId::new()))
            .when(explain(&f, RequestId::new()))
            .then_expect_error(TutorSessionError::KindMismatch {
                existing: "Default",
                requested: "ExplainMistake",
            });
        // The tutor is still answering.
        let mut waiting = explained(&f, RequestId::new());
        waiting.pop();
        Framework::with(f.world.services())
            .given(waiting)
            .when(explain(&f, RequestId::new()))
            .then_expect_error(TutorSessionError::ReplyInFlight);
        // No such attempt.
        Framework::with(f.world.services())
            .given_no_previous_events()
            .when(TutorSessionCommand::RequestMistakeExplanation {
                student: f.student,
                exercise: ExerciseId::new(),
                attempt: f.attempt,
                request_id: RequestId::new(),
            })
            .then_expect_error(TutorSessionError::AttemptNotFound);
        // Someone else's attempt.
        Framework::with(f.world.services())
            .given_no_previous_events()
            .when(TutorSessionCommand::RequestMistakeExplanation {
                student: UserId::new(),
                exercise: f.exercise,
                attempt: f.attempt,
                request_id: RequestId::new(),
            })
            .then_expect_error(TutorSessionError::NotYourAttempt);
    }

    // ---- CompleteAiReply / FailAiReply ----

    #[test]
    fn a_reply_is_sealed_under_the_student() {
        let student = UserId::new();
        let request = RequestId::new();
        framework()
            .given(waiting_chat(student, request))
            .when(complete(request, "שלום means hello."))
            .then_expect_events(vec![completed(student, request, "שלום means hello.")]);
    }

    #[test]
    fn a_redelivered_reply_changes_nothing() {
        let student = UserId::new();
        let request = RequestId::new();
        framework()
            .given(answered_chat(student, request))
            .when(complete(request, "שלום means hello."))
            .then_expect_events(vec![]);
    }

    #[test]
    fn a_failed_reply_cannot_complete() {
        let student = UserId::new();
        let request = RequestId::new();
        let mut history = waiting_chat(student, request);
        history.push(failed(request, "timeout"));
        assert_eq!(
            TutorSessionError::ReplyAlreadyFailed.kind(),
            ErrorKind::Conflict
        );
        framework()
            .given(history)
            .when(complete(request, "late"))
            .then_expect_error(TutorSessionError::ReplyAlreadyFailed);
    }

    #[test]
    fn replies_need_a_started_conversation_and_a_known_request() {
        let student = UserId::new();
        assert_eq!(
            TutorSessionError::SessionNotFound.kind(),
            ErrorKind::NotFound
        );
        assert_eq!(
            TutorSessionError::RequestNotFound.kind(),
            ErrorKind::NotFound
        );
        framework()
            .given_no_previous_events()
            .when(complete(RequestId::new(), "hi"))
            .then_expect_error(TutorSessionError::SessionNotFound);
        framework()
            .given(waiting_chat(student, RequestId::new()))
            .when(complete(RequestId::new(), "hi"))
            .then_expect_error(TutorSessionError::RequestNotFound);
        framework()
            .given_no_previous_events()
            .when(fail(RequestId::new(), "timeout"))
            .then_expect_error(TutorSessionError::SessionNotFound);
        framework()
            .given(waiting_chat(student, RequestId::new()))
            .when(fail(RequestId::new(), "timeout"))
            .then_expect_error(TutorSessionError::RequestNotFound);
    }

    #[test]
    fn a_failure_is_recorded_with_its_reason_cut_to_length() {
        let student = UserId::new();
        let request = RequestId::new();
        framework()
            .given(waiting_chat(student, request))
            .when(fail(request, &"x".repeat(MAX_FAILURE_REASON_CHARS + 50)))
            .then_expect_events(vec![failed(request, &"x".repeat(MAX_FAILURE_REASON_CHARS))]);
        framework()
            .given(waiting_chat(student, request))
            .when(fail(request, " request expired "))
            .then_expect_events(vec![failed(request, "request expired")]);
    }

    #[test]
    fn failing_twice_changes_nothing_but_a_completed_reply_cannot_fail() {
        let student = UserId::new();
        let request = RequestId::new();
        let mut history = waiting_chat(student, request);
        history.push(failed(request, "timeout"));
        framework()
            .given(history)
            .when(fail(request, "timeout"))
            .then_expect_events(vec![]);
        assert_eq!(
            TutorSessionError::ReplyAlreadyCompleted.kind(),
            ErrorKind::Conflict
        );
        framework()
            .given(answered_chat(student, request))
            .when(fail(request, "timeout"))
            .then_expect_error(TutorSessionError::ReplyAlreadyCompleted);
    }

    // ---- SetTitle ----

    #[test]
    fn a_title_is_trimmed_and_sealed() {
        let student = UserId::new();
        framework()
            .given(answered_chat(student, RequestId::new()))
            .when(TutorSessionCommand::SetTitle {
                title: "  ברכות בעברית ".to_string(),
            })
            .then_expect_events(vec![TutorSessionEvent::TitleSet {
                title: sealed(student, "ברכות בעברית"),
            }]);
    }

    #[test]
    fn a_title_needs_a_conversation_and_one_to_sixty_four_characters() {
        let student = UserId::new();
        framework()
            .given_no_previous_events()
            .when(TutorSessionCommand::SetTitle {
                title: "שלום".to_string(),
            })
            .then_expect_error(TutorSessionError::SessionNotFound);
        for (title, error) in [
            (" ".to_string(), TutorSessionError::TitleEmpty),
            (
                "ש".repeat(MAX_TITLE_CHARS + 1),
                TutorSessionError::TitleTooLong,
            ),
        ] {
            assert_eq!(error.kind(), ErrorKind::InvalidInput);
            assert_eq!(error.field(), Some("title"));
            framework()
                .given(answered_chat(student, RequestId::new()))
                .when(TutorSessionCommand::SetTitle { title })
                .then_expect_error(error);
        }
    }

    // ---- RecordToolCall ----

    fn tool_call(request_id: RequestId, result: Option<&str>) -> TutorSessionCommand {
        TutorSessionCommand::RecordToolCall {
            request_id,
            tool: "WebSearch-web_search".to_string(),
            arguments: r#"{"query":"שלום"}"#.to_string(),
            result: result.map(str::to_string),
        }
    }

    #[test]
    fn a_tool_call_is_recorded_with_sealed_arguments_and_result() {
        let student = UserId::new();
        let request = RequestId::new();
        framework()
            .given(waiting_chat(student, request))
            .when(tool_call(request, Some("1. Shalom — hello")))
            .then_expect_events(vec![TutorSessionEvent::ToolCallRecorded {
                request_id: request,
                tool: "WebSearch-web_search".to_string(),
                arguments: sealed(student, r#"{"query":"שלום"}"#),
                result: Some(sealed(student, "1. Shalom — hello")),
            }]);
        framework()
            .given(waiting_chat(student, request))
            .when(tool_call(request, None))
            .then_expect_events(vec![TutorSessionEvent::ToolCallRecorded {
                request_id: request,
                tool: "WebSearch-web_search".to_string(),
                arguments: sealed(student, r#"{"query":"שלום"}"#),
                result: None,
            }]);
    }

    #[test]
    fn a_tool_call_belongs_to_a_reply_being_written() {
        let student = UserId::new();
        let request = RequestId::new();
        framework()
            .given_no_previous_events()
            .when(tool_call(request, None))
            .then_expect_error(TutorSessionError::SessionNotFound);
        framework()
            .given(waiting_chat(student, request))
            .when(tool_call(RequestId::new(), None))
            .then_expect_error(TutorSessionError::RequestNotFound);
        assert_eq!(
            TutorSessionError::ReplyNotInFlight.kind(),
            ErrorKind::Conflict
        );
        framework()
            .given(answered_chat(student, request))
            .when(tool_call(request, None))
            .then_expect_error(TutorSessionError::ReplyNotInFlight);
        for (tool, error) in [
            (" ".to_string(), TutorSessionError::ToolNameEmpty),
            (
                "t".repeat(MAX_TOOL_NAME_CHARS + 1),
                TutorSessionError::ToolNameTooLong,
            ),
        ] {
            assert_eq!(error.field(), Some("tool"));
            framework()
                .given(waiting_chat(student, request))
                .when(TutorSessionCommand::RecordToolCall {
                    request_id: request,
                    tool,
                    arguments: "{}".to_string(),
                    result: None,
                })
                .then_expect_error(error);
        }
    }

    // ---- State ----

    #[test]
    fn the_state_follows_each_request() {
        let student = UserId::new();
        let (first, second) = (RequestId::new(), RequestId::new());
        let mut session = TutorSession::default();
        assert_eq!(session.student(), None);
        for event in answered_chat(student, first) {
            session.apply(event);
        }
        session.apply(requested(second));
        assert_eq!(session.student(), Some(student));
        assert_eq!(session.kind(), Some(SessionKind::Default));
        assert_eq!(session.reply_status(first), Some(ReplyStatus::Completed));
        assert_eq!(session.reply_status(second), Some(ReplyStatus::InFlight));
        assert!(session.awaiting_reply());
        session.apply(failed(second, "timeout"));
        assert!(!session.awaiting_reply());
        assert_eq!(session.requests().len(), 2);
        session.apply(TutorSessionEvent::TitleSet {
            title: sealed(student, "ברכות"),
        });
        assert_eq!(session.title(), Some(&sealed(student, "ברכות")));
        assert_eq!(requested(first).event_type(), "AiReplyRequested");
        assert_eq!(requested(first).event_version(), "1.0");
    }
}
