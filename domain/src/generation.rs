//! A request for something the AI writes on its own, outside a tutor conversation: practice
//! sentences (for the typing, speaking or word-order game), the explanation of a word met in
//! a sentence, or a teacher's email draft.
//!
//! Like a tutor reply, it is asked for in one step and answered in another (the engine works
//! asynchronously), so the request is an aggregate of its own, named by the request id the
//! caller chose: asking twice, or the engine reporting twice, changes nothing. The request
//! knows what was asked and whether it was answered; the answer itself is recorded with it
//! (sentences become exercises of their own, see [`crate::practice`]).
//!
//! What the requester typed (a word and its sentence, an email's subject and purpose) and
//! what the AI wrote for them are personal and sealed under the requester's key; model
//! names, token counts and failure reasons are operational and plain.

use crate::actor::Role;
use crate::error::{DomainError, ErrorKind};
use crate::ids::{ExerciseId, UserId};
use crate::personal_data::Sealed;
use crate::services::{DomainServices, PortError};
use crate::text;
use crate::user::Language;
use crate::vocabulary::{Difficulty, GameType};
use cqrs_es::event_sink::EventSink;
use cqrs_es::{Aggregate, DomainEvent};
use serde::{Deserialize, Serialize};

/// Fewest and most sentences one request may ask for (the original's `count`).
pub const MIN_SENTENCES: u32 = 1;
pub const MAX_SENTENCES: u32 = 10;
/// The longest word to explain, in characters.
pub const MAX_WORD_CHARS: usize = 100;
/// The longest sentence a word is explained in, in characters.
pub const MAX_CONTEXT_CHARS: usize = 1000;
/// The longest email subject, in characters.
pub const MAX_SUBJECT_CHARS: usize = 200;
/// The longest description of an email's purpose, in characters.
pub const MAX_PURPOSE_CHARS: usize = 2000;
/// The longest definition or explanation of a word, in characters.
pub const MAX_EXPLANATION_CHARS: usize = 4000;
/// The longest email body, in characters.
pub const MAX_EMAIL_BODY_CHARS: usize = 10_000;
/// Failure reasons longer than this are cut, in characters.
pub const MAX_FAILURE_REASON_CHARS: usize = 500;

/// What the model used to answer, for analytics.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AiUsage {
    pub model: String,
    pub prompt_tokens: u32,
    pub completion_tokens: u32,
    pub latency_ms: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum GenerationCommand {
    /// Sentences for a game; for the word-order game they are split into words to order.
    RequestSentences {
        requester: UserId,
        game_type: GameType,
        difficulty: Difficulty,
        nikud: bool,
        count: u32,
    },
    /// What a word means in the sentence it was met in.
    RequestWordExplanation {
        requester: UserId,
        word: String,
        context: String,
    },
    /// A draft of an email from a teacher.
    RequestEmailDraft {
        requester: UserId,
        subject: String,
        purpose: String,
        language: Language,
    },
    /// The engine wrote the sentences; each is already an exercise.
    CompleteSentences {
        exercises: Vec<ExerciseId>,
        usage: AiUsage,
    },
    CompleteWordExplanation {
        definition: String,
        explanation: String,
        usage: AiUsage,
    },
    CompleteEmailDraft {
        subject: String,
        body: String,
        usage: AiUsage,
    },
    /// The engine gave up.
    FailGeneration {
        reason: String,
        model: Option<String>,
        latency_ms: u64,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum GenerationEvent {
    SentencesRequested {
        requester: UserId,
        game_type: GameType,
        difficulty: Difficulty,
        nikud: bool,
        count: u32,
    },
    WordExplanationRequested {
        requester: UserId,
        word: Sealed,
        context: Sealed,
    },
    EmailDraftRequested {
        requester: UserId,
        subject: Sealed,
        purpose: Sealed,
        language: Language,
    },
    SentencesGenerated {
        exercises: Vec<ExerciseId>,
        usage: AiUsage,
    },
    WordExplained {
        definition: Sealed,
        explanation: Sealed,
        usage: AiUsage,
    },
    EmailDrafted {
        subject: Sealed,
        body: Sealed,
        usage: AiUsage,
    },
    GenerationFailed {
        reason: String,
        model: Option<String>,
        latency_ms: u64,
    },
}

impl DomainEvent for GenerationEvent {
    fn event_type(&self) -> String {
        match self {
            GenerationEvent::SentencesRequested { .. } => "SentencesRequested",
            GenerationEvent::WordExplanationRequested { .. } => "WordExplanationRequested",
            GenerationEvent::EmailDraftRequested { .. } => "EmailDraftRequested",
            GenerationEvent::SentencesGenerated { .. } => "SentencesGenerated",
            GenerationEvent::WordExplained { .. } => "WordExplained",
            GenerationEvent::EmailDrafted { .. } => "EmailDrafted",
            GenerationEvent::GenerationFailed { .. } => "GenerationFailed",
        }
        .to_string()
    }

    fn event_version(&self) -> String {
        "1.0".to_string()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GenerationError {
    #[error("this request id was already used by someone else")]
    AlreadyRequested,
    #[error("a request asks for {MIN_SENTENCES} to {MAX_SENTENCES} sentences")]
    CountOutOfRange,
    #[error("the word is empty")]
    WordEmpty,
    #[error("the word is longer than {MAX_WORD_CHARS} characters")]
    WordTooLong,
    #[error("the sentence the word is in is empty")]
    ContextEmpty,
    #[error("the sentence the word is in is longer than {MAX_CONTEXT_CHARS} characters")]
    ContextTooLong,
    #[error("the subject is empty")]
    SubjectEmpty,
    #[error("the subject is longer than {MAX_SUBJECT_CHARS} characters")]
    SubjectTooLong,
    #[error("the purpose is empty")]
    PurposeEmpty,
    #[error("the purpose is longer than {MAX_PURPOSE_CHARS} characters")]
    PurposeTooLong,
    #[error("only teachers and admins draft emails")]
    TeachersOnly,
    #[error("no such user")]
    RequesterNotFound,
    #[error("no such generation request")]
    NotFound,
    #[error("this answer is for another kind of request")]
    KindMismatch,
    #[error("{given} exercises were reported for {asked} sentences")]
    ExerciseCountMismatch { asked: u32, given: usize },
    #[error("the generated text is empty")]
    ResultEmpty,
    #[error("the generated text is too long")]
    ResultTooLong,
    #[error("this request has already failed")]
    AlreadyFailed,
    #[error("this request has already been answered")]
    AlreadyCompleted,
    #[error(transparent)]
    Port(#[from] PortError),
}

impl DomainError for GenerationError {
    fn kind(&self) -> ErrorKind {
        use GenerationError::*;
        match self {
            AlreadyRequested | KindMismatch | AlreadyFailed | AlreadyCompleted => {
                ErrorKind::Conflict
            }
            CountOutOfRange
            | WordEmpty
            | WordTooLong
            | ContextEmpty
            | ContextTooLong
            | SubjectEmpty
            | SubjectTooLong
            | PurposeEmpty
            | PurposeTooLong
            | ExerciseCountMismatch { .. }
            | ResultEmpty
            | ResultTooLong => ErrorKind::InvalidInput,
            TeachersOnly => ErrorKind::Forbidden,
            RequesterNotFound | NotFound => ErrorKind::NotFound,
            Port(e) => e.kind(),
        }
    }

    fn field(&self) -> Option<&'static str> {
        use GenerationError::*;
        match self {
            CountOutOfRange => Some("count"),
            WordEmpty | WordTooLong => Some("word"),
            ContextEmpty | ContextTooLong => Some("context"),
            SubjectEmpty | SubjectTooLong => Some("subject"),
            PurposeEmpty | PurposeTooLong => Some("purpose"),
            _ => None,
        }
    }
}

/// What was asked for. Free text stays sealed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum GenerationTask {
    Sentences {
        game_type: GameType,
        difficulty: Difficulty,
        nikud: bool,
        count: u32,
    },
    WordExplanation {
        word: Sealed,
        context: Sealed,
    },
    EmailDraft {
        subject: Sealed,
        purpose: Sealed,
        language: Language,
    },
}

/// Where a request is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum GenerationStatus {
    Requested,
    Completed,
    Failed,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct GenerationRequest {
    requester: Option<UserId>,
    task: Option<GenerationTask>,
    status: Option<GenerationStatus>,
}

impl GenerationRequest {
    pub fn requester(&self) -> Option<UserId> {
        self.requester
    }

    /// What was asked for, once requested.
    pub fn task(&self) -> Option<&GenerationTask> {
        self.task.as_ref()
    }

    pub fn status(&self) -> Option<GenerationStatus> {
        self.status
    }

    /// `Ok(false)` for a repeat of the request by the same person; refused if someone else
    /// already used this id.
    fn admits_request(&self, requester: UserId) -> Result<bool, GenerationError> {
        match self.requester {
            None => Ok(true),
            Some(earlier) if earlier == requester => Ok(false),
            Some(_) => Err(GenerationError::AlreadyRequested),
        }
    }

    /// The requester of a request still open to an answer of `kind`; `Ok(None)` when it was
    /// already answered so (a redelivered answer).
    fn answerable(
        &self,
        fits: impl Fn(&GenerationTask) -> bool,
    ) -> Result<Option<UserId>, GenerationError> {
        let (Some(requester), Some(task), Some(status)) = (self.requester, &self.task, self.status)
        else {
            return Err(GenerationError::NotFound);
        };
        if !fits(task) {
            return Err(GenerationError::KindMismatch);
        }
        match status {
            GenerationStatus::Requested => Ok(Some(requester)),
            GenerationStatus::Completed => Ok(None),
            GenerationStatus::Failed => Err(GenerationError::AlreadyFailed),
        }
    }
}

/// A required text, or the error of its problem.
fn required(
    raw: &str,
    max: usize,
    empty: GenerationError,
    too_long: GenerationError,
) -> Result<&str, GenerationError> {
    text::bounded(raw, max).map_err(|p| p.pick(empty, too_long))
}

/// A generated text: present, and not absurdly long.
fn generated(raw: &str, max: usize) -> Result<&str, GenerationError> {
    required(
        raw,
        max,
        GenerationError::ResultEmpty,
        GenerationError::ResultTooLong,
    )
}

impl Aggregate for GenerationRequest {
    const TYPE: &'static str = "GenerationRequest";
    type Command = GenerationCommand;
    type Event = GenerationEvent;
    type Error = GenerationError;
    type Services = DomainServices;

    async fn handle(
        &mut self,
        command: Self::Command,
        services: &Self::Services,
        sink: &EventSink<Self>,
    ) -> Result<(), Self::Error> {
        use GenerationError as E;
        let event = match command {
            GenerationCommand::RequestSentences {
                requester,
                game_type,
                difficulty,
                nikud,
                count,
            } => {
                if !(MIN_SENTENCES..=MAX_SENTENCES).contains(&count) {
                    return Err(E::CountOutOfRange);
                }
                if !self.admits_request(requester)? {
                    return Ok(());
                }
                GenerationEvent::SentencesRequested {
                    requester,
                    game_type,
                    difficulty,
                    nikud,
                    count,
                }
            }

            GenerationCommand::RequestWordExplanation {
                requester,
                word,
                context,
            } => {
                let word = required(&word, MAX_WORD_CHARS, E::WordEmpty, E::WordTooLong)?;
                let context = required(
                    &context,
                    MAX_CONTEXT_CHARS,
                    E::ContextEmpty,
                    E::ContextTooLong,
                )?;
                if !self.admits_request(requester)? {
                    return Ok(());
                }
                GenerationEvent::WordExplanationRequested {
                    requester,
                    word: services.vault.seal(requester, word).await?,
                    context: services.vault.seal(requester, context).await?,
                }
            }

            GenerationCommand::RequestEmailDraft {
                requester,
                subject,
                purpose,
                language,
            } => {
                let subject = required(
                    &subject,
                    MAX_SUBJECT_CHARS,
                    E::SubjectEmpty,
                    E::SubjectTooLong,
                )?;
                let purpose = required(
                    &purpose,
                    MAX_PURPOSE_CHARS,
                    E::PurposeEmpty,
                    E::PurposeTooLong,
                )?;
                if !self.admits_request(requester)? {
                    return Ok(());
                }
                match services.users.user(requester).await? {
                    None => return Err(E::RequesterNotFound),
                    Some(facts) if facts.erased => {
                        return Err(E::Port(PortError::Erased(requester)))
                    }
                    Some(facts) if facts.role == Role::Student => return Err(E::TeachersOnly),
                    Some(_) => {}
                }
                GenerationEvent::EmailDraftRequested {
                    requester,
                    subject: services.vault.seal(requester, subject).await?,
                    purpose: services.vault.seal(requester, purpose).await?,
                    language,
                }
            }

            GenerationCommand::CompleteSentences { exercises, usage } => {
                if self
                    .answerable(|t| matches!(t, GenerationTask::Sentences { .. }))?
                    .is_none()
                {
                    return Ok(());
                }
                let asked = match &self.task {
                    Some(GenerationTask::Sentences { count, .. }) => *count,
                    _ => 0,
                };
                if exercises.len() != asked as usize {
                    return Err(E::ExerciseCountMismatch {
                        asked,
                        given: exercises.len(),
                    });
                }
                GenerationEvent::SentencesGenerated { exercises, usage }
            }

            GenerationCommand::CompleteWordExplanation {
                definition,
                explanation,
                usage,
            } => {
                let Some(requester) =
                    self.answerable(|t| matches!(t, GenerationTask::WordExplanation { .. }))?
                else {
                    return Ok(());
                };
                let definition = generated(&definition, MAX_EXPLANATION_CHARS)?;
                let explanation = generated(&explanation, MAX_EXPLANATION_CHARS)?;
                GenerationEvent::WordExplained {
                    definition: services.vault.seal(requester, definition).await?,
                    explanation: services.vault.seal(requester, explanation).await?,
                    usage,
                }
            }

            GenerationCommand::CompleteEmailDraft {
                subject,
                body,
                usage,
            } => {
                let Some(requester) =
                    self.answerable(|t| matches!(t, GenerationTask::EmailDraft { .. }))?
                else {
                    return Ok(());
                };
                let subject = generated(&subject, MAX_SUBJECT_CHARS)?;
                let body = generated(&body, MAX_EMAIL_BODY_CHARS)?;
                GenerationEvent::EmailDrafted {
                    subject: services.vault.seal(requester, subject).await?,
                    body: services.vault.seal(requester, body).await?,
                    usage,
                }
            }

            GenerationCommand::FailGeneration {
                reason,
                model,
                latency_ms,
            } => {
                match self.status {
                    None => return Err(E::NotFound),
                    Some(GenerationStatus::Failed) => return Ok(()),
                    Some(GenerationStatus::Completed) => return Err(E::AlreadyCompleted),
                    Some(GenerationStatus::Requested) => {}
                }
                GenerationEvent::GenerationFailed {
                    reason: reason
                        .trim()
                        .chars()
                        .take(MAX_FAILURE_REASON_CHARS)
                        .collect(),
                    model,
                    latency_ms,
                }
            }
        };
        sink.write(event, self).await;
        Ok(())
    }

    fn apply(&mut self, event: Self::Event) {
        fn requested(this: &mut GenerationRequest, requester: UserId, task: GenerationTask) {
            this.requester = Some(requester);
            this.task = Some(task);
            this.status = Some(GenerationStatus::Requested);
        }
        match event {
            GenerationEvent::SentencesRequested {
                requester,
                game_type,
                difficulty,
                nikud,
                count,
            } => requested(
                self,
                requester,
                GenerationTask::Sentences {
                    game_type,
                    difficulty,
                    nikud,
                    count,
                },
            ),
            GenerationEvent::WordExplanationRequested {
                requester,
                word,
                context,
            } => requested(
                self,
                requester,
                GenerationTask::WordExplanation { word, context },
            ),
            GenerationEvent::EmailDraftRequested {
                requester,
                subject,
                purpose,
                language,
            } => requested(
                self,
                requester,
                GenerationTask::EmailDraft {
                    subject,
                    purpose,
                    language,
                },
            ),
            GenerationEvent::SentencesGenerated { .. }
            | GenerationEvent::WordExplained { .. }
            | GenerationEvent::EmailDrafted { .. } => {
                self.status = Some(GenerationStatus::Completed)
            }
            GenerationEvent::GenerationFailed { .. } => {
                self.status = Some(GenerationStatus::Failed)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::services::testing::{sealed, TestWorld};
    use cqrs_es::test::TestFramework;

    type Framework = TestFramework<GenerationRequest>;

    fn framework() -> Framework {
        Framework::with(TestWorld::default().services())
    }

    fn usage() -> AiUsage {
        AiUsage {
            model: "gpt-test".into(),
            prompt_tokens: 10,
            completion_tokens: 20,
            latency_ms: 300,
        }
    }

    fn ask_sentences(requester: UserId, count: u32) -> GenerationCommand {
        GenerationCommand::RequestSentences {
            requester,
            game_type: GameType::WordOrder,
            difficulty: Difficulty::Hard,
            nikud: true,
            count,
        }
    }

    fn sentences_requested(requester: UserId, count: u32) -> GenerationEvent {
        GenerationEvent::SentencesRequested {
            requester,
            game_type: GameType::WordOrder,
            difficulty: Difficulty::Hard,
            nikud: true,
            count,
        }
    }

    fn word_requested(requester: UserId) -> GenerationEvent {
        GenerationEvent::WordExplanationRequested {
            requester,
            word: sealed(requester, "שלום"),
            context: sealed(requester, "שלום, מה שלומך?"),
        }
    }

    fn failed(reason: &str) -> GenerationEvent {
        GenerationEvent::GenerationFailed {
            reason: reason.into(),
            model: None,
            latency_ms: 5,
        }
    }

    fn fail(reason: &str) -> GenerationCommand {
        GenerationCommand::FailGeneration {
            reason: reason.into(),
            model: None,
            latency_ms: 5,
        }
    }

    #[test]
    fn sentences_are_requested_one_to_ten_at_a_time_and_a_retry_changes_nothing() {
        let student = UserId::new();
        framework()
            .given_no_previous_events()
            .when(ask_sentences(student, 10))
            .then_expect_events(vec![sentences_requested(student, 10)]);
        for count in [0, 11] {
            let error = GenerationError::CountOutOfRange;
            assert_eq!(
                (error.kind(), error.field()),
                (ErrorKind::InvalidInput, Some("count"))
            );
            framework()
                .given_no_previous_events()
                .when(ask_sentences(student, count))
                .then_expect_error(error);
        }
        framework()
            .given(vec![sentences_requested(student, 3)])
            .when(ask_sentences(student, 3))
            .then_expect_events(vec![]);
        assert_eq!(
            GenerationError::AlreadyRequested.kind(),
            ErrorKind::Conflict
        );
        framework()
            .given(vec![sentences_requested(student, 3)])
            .when(ask_sentences(UserId::new(), 3))
            .then_expect_error(GenerationError::AlreadyRequested);
    }

    #[test]
    fn generated_sentences_complete_the_request_once_with_one_exercise_each() {
        let student = UserId::new();
        let exercises = vec![ExerciseId::new(), ExerciseId::new()];
        framework()
            .given(vec![sentences_requested(student, 2)])
            .when(GenerationCommand::CompleteSentences {
                exercises: exercises.clone(),
                usage: usage(),
            })
            .then_expect_events(vec![GenerationEvent::SentencesGenerated {
                exercises: exercises.clone(),
                usage: usage(),
            }]);
        let done = vec![
            sentences_requested(student, 2),
            GenerationEvent::SentencesGenerated {
                exercises: exercises.clone(),
                usage: usage(),
            },
        ];
        framework()
            .given(done.clone())
            .when(GenerationCommand::CompleteSentences {
                exercises: exercises.clone(),
                usage: usage(),
            })
            .then_expect_events(vec![]);
        framework()
            .given(vec![sentences_requested(student, 3)])
            .when(GenerationCommand::CompleteSentences {
                exercises,
                usage: usage(),
            })
            .then_expect_error(GenerationError::ExerciseCountMismatch { asked: 3, given: 2 });
        assert_eq!(
            GenerationError::AlreadyCompleted.kind(),
            ErrorKind::Conflict
        );
        framework()
            .given(done)
            .when(fail("late"))
            .then_expect_error(GenerationError::AlreadyCompleted);
    }

    #[test]
    fn a_word_and_its_sentence_are_sealed_and_so_is_the_explanation() {
        let student = UserId::new();
        framework()
            .given_no_previous_events()
            .when(GenerationCommand::RequestWordExplanation {
                requester: student,
                word: " שלום ".into(),
                context: "שלום, מה שלומך?".into(),
            })
            .then_expect_events(vec![word_requested(student)]);
        for (word, context, error) in [
            (" ", "x", GenerationError::WordEmpty),
            (
                &*"ש".repeat(MAX_WORD_CHARS + 1),
                "x",
                GenerationError::WordTooLong,
            ),
            ("שלום", "", GenerationError::ContextEmpty),
            (
                "שלום",
                &*"x".repeat(MAX_CONTEXT_CHARS + 1),
                GenerationError::ContextTooLong,
            ),
        ] {
            assert_eq!(error.kind(), ErrorKind::InvalidInput);
            framework()
                .given_no_previous_events()
                .when(GenerationCommand::RequestWordExplanation {
                    requester: student,
                    word: word.into(),
                    context: context.into(),
                })
                .then_expect_error(error);
        }
        framework()
            .given(vec![word_requested(student)])
            .when(GenerationCommand::CompleteWordExplanation {
                definition: "hello; peace".into(),
                explanation: "A greeting.".into(),
                usage: usage(),
            })
            .then_expect_events(vec![GenerationEvent::WordExplained {
                definition: sealed(student, "hello; peace"),
                explanation: sealed(student, "A greeting."),
                usage: usage(),
            }]);
        framework()
            .given(vec![word_requested(student)])
            .when(GenerationCommand::CompleteWordExplanation {
                definition: " ".into(),
                explanation: "A greeting.".into(),
                usage: usage(),
            })
            .then_expect_error(GenerationError::ResultEmpty);
    }

    #[test]
    fn only_teachers_and_admins_draft_emails() {
        let teacher = UserId::new();
        let student = UserId::new();
        let world = TestWorld::default()
            .with_user(teacher, Role::Teacher)
            .with_user(student, Role::Student);
        let ask = |requester| GenerationCommand::RequestEmailDraft {
            requester,
            subject: "Parents' evening".into(),
            purpose: "Invite the parents to talk about progress".into(),
            language: Language::He,
        };
        let requested = GenerationEvent::EmailDraftRequested {
            requester: teacher,
            subject: sealed(teacher, "Parents' evening"),
            purpose: sealed(teacher, "Invite the parents to talk about progress"),
            language: Language::He,
        };
        Framework::with(world.services())
            .given_no_previous_events()
            .when(ask(teacher))
            .then_expect_events(vec![requested.clone()]);
        assert_eq!(GenerationError::TeachersOnly.kind(), ErrorKind::Forbidden);
        Framework::with(world.services())
            .given_no_previous_events()
            .when(ask(student))
            .then_expect_error(GenerationError::TeachersOnly);
        Framework::with(world.services())
            .given_no_previous_events()
            .when(ask(UserId::new()))
            .then_expect_error(GenerationError::RequesterNotFound);
        Framework::with(world.services())
            .given(vec![requested.clone()])
            .when(GenerationCommand::CompleteEmailDraft {
                subject: "ערב הורים".into(),
                body: "שלום רב, ...".into(),
                usage: usage(),
            })
            .then_expect_events(vec![GenerationEvent::EmailDrafted {
                subject: sealed(teacher, "ערב הורים"),
                body: sealed(teacher, "שלום רב, ..."),
                usage: usage(),
            }]);
        // An answer of the wrong kind is refused.
        assert_eq!(GenerationError::KindMismatch.kind(), ErrorKind::Conflict);
        Framework::with(world.services())
            .given(vec![requested])
            .when(GenerationCommand::CompleteSentences {
                exercises: vec![],
                usage: usage(),
            })
            .then_expect_error(GenerationError::KindMismatch);
    }

    #[test]
    fn a_failure_is_recorded_once_and_ends_the_request() {
        let student = UserId::new();
        framework()
            .given(vec![word_requested(student)])
            .when(fail(&format!(
                "  {}",
                "x".repeat(MAX_FAILURE_REASON_CHARS + 9)
            )))
            .then_expect_events(vec![failed(&"x".repeat(MAX_FAILURE_REASON_CHARS))]);
        framework()
            .given(vec![word_requested(student), failed("timeout")])
            .when(fail("timeout"))
            .then_expect_events(vec![]);
        assert_eq!(GenerationError::AlreadyFailed.kind(), ErrorKind::Conflict);
        framework()
            .given(vec![word_requested(student), failed("timeout")])
            .when(GenerationCommand::CompleteWordExplanation {
                definition: "d".into(),
                explanation: "e".into(),
                usage: usage(),
            })
            .then_expect_error(GenerationError::AlreadyFailed);
        assert_eq!(GenerationError::NotFound.kind(), ErrorKind::NotFound);
        framework()
            .given_no_previous_events()
            .when(fail("x"))
            .then_expect_error(GenerationError::NotFound);
        framework()
            .given_no_previous_events()
            .when(GenerationCommand::CompleteSentences {
                exercises: vec![],
                usage: usage(),
            })
            .then_expect_error(GenerationError::NotFound);
    }

    #[test]
    fn the_state_knows_the_task_and_where_it_is() {
        let student = UserId::new();
        let mut request = GenerationRequest::default();
        assert_eq!((request.requester(), request.status()), (None, None));
        request.apply(sentences_requested(student, 4));
        assert_eq!(request.requester(), Some(student));
        assert_eq!(
            request.task(),
            Some(&GenerationTask::Sentences {
                game_type: GameType::WordOrder,
                difficulty: Difficulty::Hard,
                nikud: true,
                count: 4
            })
        );
        assert_eq!(request.status(), Some(GenerationStatus::Requested));
        request.apply(failed("x"));
        assert_eq!(request.status(), Some(GenerationStatus::Failed));
        assert_eq!(failed("x").event_type(), "GenerationFailed");
        assert_eq!(failed("x").event_version(), "1.0");
    }
}
