//! What the engine knows when it writes a reply, read from the event log rather than from a
//! read model: the log is never behind, while a projection may not yet have seen the message
//! just posted. Personal text is opened with the personal-data vault as it is read; an erased
//! person's text no longer opens, and a reply that would need it is not written.
//!
//! - [`Conversation`] — a tutor session's turns up to the request being answered: the
//!   student's messages (with the page context of the global tutor), the mistakes they asked
//!   about, the tutor's earlier replies.
//! - [`LearnerProfile`] — the person the global tutor talks to: name, role, preferred
//!   language, Hebrew level, interests (folded from the `User` stream).
//! - [`MistakeFacts`] — one wrong attempt: the exercise's correct answer and the given one.

use crate::contracts::TutorReplyRequest;
use std::sync::Arc;
use teachin_commands::AggregateReader;
use teachin_domain::actor::Role;
use teachin_domain::ids::{AttemptId, ExerciseId, UserId};
use teachin_domain::personal_data::Sealed;
use teachin_domain::practice::Exercise;
use teachin_domain::services::{PersonalDataVault, PortError};
use teachin_domain::tutor_session::{SessionKind, TutorSessionEvent};
use teachin_domain::user::{HebrewLevel, Language, UserEvent};
use teachin_domain::vocabulary::{Difficulty, GameType};
use teachin_projections::EventLog;

/// Why the context could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ContextError {
    /// The store or the vault failed: worth another delivery.
    #[error("{0}")]
    Unavailable(String),
    /// The reply cannot be written from what is there (erased data, a missing attempt).
    #[error("{0}")]
    Unusable(String),
}

impl From<sqlx::Error> for ContextError {
    fn from(e: sqlx::Error) -> Self {
        ContextError::Unavailable(format!("event store: {e}"))
    }
}

impl From<PortError> for ContextError {
    fn from(e: PortError) -> Self {
        match e {
            PortError::Erased(_) => ContextError::Unusable(e.to_string()),
            PortError::Unavailable(_) => ContextError::Unavailable(e.to_string()),
        }
    }
}

/// Reads the log and the aggregates, opening personal data as it goes.
#[derive(Clone)]
pub struct ContextReader {
    log: EventLog,
    reader: AggregateReader,
    vault: Arc<dyn PersonalDataVault>,
}

/// One turn of a conversation, opened.
#[derive(Debug, Clone, PartialEq)]
pub enum Turn {
    Student {
        text: String,
        /// The global tutor's page context (minified JSON).
        page_context: Option<String>,
    },
    Mistake(MistakeFacts),
    Tutor {
        text: String,
    },
}

/// A tutor session as the engine needs it to answer one request.
#[derive(Debug, Clone, PartialEq)]
pub struct Conversation {
    pub student: UserId,
    pub kind: SessionKind,
    /// Every turn up to and including the one that asked for this reply.
    pub turns: Vec<Turn>,
    pub has_title: bool,
}

impl Conversation {
    /// The student's last `n` messages, oldest first (what a title is made from).
    pub fn last_student_texts(&self, n: usize) -> Vec<&str> {
        let mut texts: Vec<&str> = self
            .turns
            .iter()
            .rev()
            .filter_map(|t| match t {
                Turn::Student { text, .. } => Some(text.as_str()),
                _ => None,
            })
            .take(n)
            .collect();
        texts.reverse();
        texts
    }
}

/// One wrong attempt, opened.
#[derive(Debug, Clone, PartialEq)]
pub struct MistakeFacts {
    pub game_type: GameType,
    pub difficulty: Difficulty,
    pub given_answer: String,
    pub correct_answer: String,
}

/// The person the global tutor talks to.
#[derive(Debug, Clone, PartialEq)]
pub struct LearnerProfile {
    pub first_name: String,
    pub last_name: String,
    pub role: Role,
    pub preferred_language: Language,
    pub hebrew_level: Option<HebrewLevel>,
    pub interests: Vec<String>,
}

impl LearnerProfile {
    /// The language's name, as a prompt says it.
    pub fn language_name(&self) -> &'static str {
        language_name(self.preferred_language)
    }
}

pub fn language_name(language: Language) -> &'static str {
    match language {
        Language::En => "English",
        Language::He => "Hebrew",
    }
}

impl ContextReader {
    pub fn new(log: EventLog, reader: AggregateReader, vault: Arc<dyn PersonalDataVault>) -> Self {
        ContextReader { log, reader, vault }
    }

    /// Opens one sealed value; erased data is [`ContextError::Unusable`].
    pub async fn open(&self, sealed: &Sealed) -> Result<String, ContextError> {
        self.vault.open(sealed).await?.ok_or_else(|| {
            ContextError::Unusable(format!(
                "the personal data of user {} has been erased",
                sealed.subject
            ))
        })
    }

    /// The conversation up to the `AiReplyRequested` of `request`.
    pub async fn conversation(
        &self,
        request: &TutorReplyRequest,
    ) -> Result<Conversation, ContextError> {
        let events = self
            .log
            .read_stream("TutorSession", &request.session_id.to_string(), 0)
            .await?;
        let mut started = None;
        let mut turns = Vec::new();
        let mut reached = false;
        for logged in &events {
            let event: TutorSessionEvent = logged
                .decode()
                .map_err(|e| ContextError::Unusable(e.to_string()))?;
            match event {
                TutorSessionEvent::TutorSessionStarted { student, kind } => {
                    started = Some((student, kind))
                }
                TutorSessionEvent::StudentMessagePosted {
                    text, page_context, ..
                } => {
                    let page_context = match page_context {
                        Some(sealed) => Some(self.open(&sealed).await?),
                        None => None,
                    };
                    turns.push(Turn::Student {
                        text: self.open(&text).await?,
                        page_context,
                    });
                }
                TutorSessionEvent::MistakeExplanationRequested {
                    exercise, attempt, ..
                } => turns.push(Turn::Mistake(self.mistake(exercise, attempt).await?)),
                TutorSessionEvent::AiReplyCompleted { text, .. } => turns.push(Turn::Tutor {
                    text: self.open(&text).await?,
                }),
                TutorSessionEvent::AiReplyRequested { request_id }
                    if request_id == request.request_id =>
                {
                    reached = true;
                    break;
                }
                TutorSessionEvent::AiReplyRequested { .. }
                | TutorSessionEvent::TitleSet { .. }
                | TutorSessionEvent::AiReplyFailed { .. }
                | TutorSessionEvent::ToolCallRecorded { .. } => {}
            }
        }
        let Some((student, kind)) = started else {
            return Err(ContextError::Unusable("no such tutor session".into()));
        };
        if !reached {
            return Err(ContextError::Unusable(format!(
                "the session never asked for request {}",
                request.request_id
            )));
        }
        // A title set after the request counts too: it is there when the reply is done.
        let has_title = events.iter().any(|e| e.event_type == "TitleSet");
        Ok(Conversation {
            student,
            kind,
            turns,
            has_title,
        })
    }

    /// One attempt at one exercise, with both answers opened.
    pub async fn mistake(
        &self,
        exercise_id: ExerciseId,
        attempt_id: AttemptId,
    ) -> Result<MistakeFacts, ContextError> {
        let exercise: Exercise = self
            .reader
            .load(&exercise_id.to_string())
            .await
            .map_err(|e| ContextError::Unavailable(format!("event store: {e}")))?;
        let generated = exercise
            .generated()
            .ok_or_else(|| ContextError::Unusable(format!("no exercise {exercise_id}")))?;
        let attempt = exercise
            .attempts()
            .iter()
            .find(|a| a.attempt_id == attempt_id)
            .ok_or_else(|| {
                ContextError::Unusable(format!("no attempt {attempt_id} at {exercise_id}"))
            })?;
        let given = self.open(&attempt.given_answer).await?;
        let given: Vec<String> = serde_json::from_str(&given).map_err(|e| {
            ContextError::Unusable(format!("the given answer is not a list of strings: {e}"))
        })?;
        Ok(MistakeFacts {
            game_type: generated.game_type,
            difficulty: generated.difficulty,
            given_answer: given.join(" "),
            correct_answer: generated.correct_answer.join(" "),
        })
    }

    /// The user's profile as their events say now; `None` if there is no such user.
    pub async fn profile(&self, user: UserId) -> Result<Option<LearnerProfile>, ContextError> {
        let events = self.log.read_stream("User", &user.to_string(), 0).await?;
        let mut registered = false;
        let mut first_name = None;
        let mut last_name = None;
        let mut role = Role::Student;
        let mut preferred_language = Language::En;
        let mut hebrew_level = None;
        let mut interests = None;
        for logged in &events {
            let event: UserEvent = logged
                .decode()
                .map_err(|e| ContextError::Unusable(e.to_string()))?;
            match event {
                UserEvent::UserRegistered {
                    role: r,
                    first_name: f,
                    last_name: l,
                    preferred_language: p,
                    hebrew_level: h,
                    interests: i,
                    ..
                } => {
                    registered = true;
                    role = r;
                    first_name = Some(f);
                    last_name = Some(l);
                    preferred_language = p;
                    hebrew_level = h;
                    interests = Some(i);
                }
                UserEvent::ProfileUpdated {
                    first_name: f,
                    last_name: l,
                } => {
                    first_name = f.or(first_name);
                    last_name = l.or(last_name);
                }
                UserEvent::PreferredLanguageChanged { language } => preferred_language = language,
                UserEvent::HebrewLevelChanged { level } => hebrew_level = Some(level),
                UserEvent::InterestsReplaced { interests: i } => interests = Some(i),
                UserEvent::RoleChanged { to, .. } => {
                    if to != Role::Student {
                        hebrew_level = None;
                        interests = None;
                    }
                    role = to;
                }
                UserEvent::UserErased => {
                    return Err(ContextError::Unusable(format!("user {user} was erased")))
                }
                UserEvent::AvatarSet { .. }
                | UserEvent::AvatarCleared
                | UserEvent::PasswordChanged { .. } => {}
            }
        }
        if !registered {
            return Ok(None);
        }
        let open = |sealed: Option<Sealed>| async move {
            match sealed {
                Some(s) => self.open(&s).await.map(Some),
                None => Ok(None),
            }
        };
        let interests: Vec<String> = match open(interests).await? {
            Some(json) => serde_json::from_str(&json).unwrap_or_default(),
            None => Vec::new(),
        };
        Ok(Some(LearnerProfile {
            first_name: open(first_name).await?.unwrap_or_default(),
            last_name: open(last_name).await?.unwrap_or_default(),
            role,
            preferred_language,
            hebrew_level,
            interests,
        }))
    }
}
