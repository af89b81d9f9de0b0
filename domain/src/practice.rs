//! Practice: one generated exercise (a sentence to put in order, type or say) and every
//! attempt a student makes at it.
//!
//! The sentence comes from the AI engine, so the command that records it carries the text;
//! the aggregate only derives the answer key and then marks each submitted answer against it
//! with the pure rules in [`grading`]. An exercise belongs to the student it was generated
//! for: to anyone else it does not exist, as in the original, which answered 404.
//!
//! What the student typed is personal and is sealed under their key; the AI's sentence is not.
//! A wrong attempt is a "mistake" until a later attempt at the same exercise is correct, which
//! clears the mistakes once and for all ([`ExerciseEvent::MistakesCleared`]).

pub mod grading;

use crate::error::{DomainError, ErrorKind};
use crate::ids::{AttemptId, ExerciseId, RequestId, UserId};
use crate::personal_data::Sealed;
use crate::services::{AttemptFacts, DomainServices, PortError};
use crate::text;
use crate::vocabulary::{Difficulty, GameType};
use cqrs_es::event_sink::EventSink;
use cqrs_es::{Aggregate, DomainEvent};
use serde::{Deserialize, Serialize};

/// The longest generated sentence accepted, in characters.
pub const MAX_SENTENCE_CHARS: usize = 500;
/// The most elements an answer may have (the original's `givenAnswer: string[1..20]`).
pub const MAX_ANSWER_ITEMS: usize = 20;
/// The longest element of an answer, in characters.
pub const MAX_ANSWER_ITEM_CHARS: usize = 500;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum ExerciseCommand {
    /// Record the sentence the AI generated for `student`'s game.
    Generate {
        student: UserId,
        game_type: GameType,
        difficulty: Difficulty,
        nikud: bool,
        sentence: String,
        request_id: RequestId,
    },
    /// Mark a student's answer. Resubmitting the same `attempt_id` changes nothing.
    SubmitAttempt {
        attempt_id: AttemptId,
        student: UserId,
        given_answer: Vec<String>,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ExerciseEvent {
    ExerciseGenerated {
        student: UserId,
        game_type: GameType,
        difficulty: Difficulty,
        nikud: bool,
        /// The answer key: the words in order for the word-order game, otherwise the
        /// sentence as one element.
        correct_answer: Vec<String>,
        request_id: RequestId,
    },
    AttemptGraded {
        attempt_id: AttemptId,
        /// 1 for the first attempt at this exercise, then 2, 3...
        attempt_number: u32,
        /// The answer as a JSON list of strings, sealed under the student.
        given_answer: Sealed,
        accuracy: f64,
        correct: bool,
    },
    /// The exercise was finally answered correctly, so its earlier wrong attempts are no
    /// longer mistakes to practise.
    MistakesCleared { attempt_ids: Vec<AttemptId> },
}

impl DomainEvent for ExerciseEvent {
    fn event_type(&self) -> String {
        match self {
            ExerciseEvent::ExerciseGenerated { .. } => "ExerciseGenerated",
            ExerciseEvent::AttemptGraded { .. } => "AttemptGraded",
            ExerciseEvent::MistakesCleared { .. } => "MistakesCleared",
        }
        .to_string()
    }

    fn event_version(&self) -> String {
        "1.0".to_string()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExerciseError {
    #[error("this exercise has already been generated")]
    AlreadyGenerated,
    #[error("the generated sentence is empty")]
    SentenceEmpty,
    #[error("the generated sentence is longer than {MAX_SENTENCE_CHARS} characters")]
    SentenceTooLong,
    #[error("the generated sentence has no words to put in order")]
    SentenceHasNoWords,
    #[error("no such exercise for this student")]
    NotFound,
    #[error("the answer is empty")]
    AnswerEmpty,
    #[error("an answer may have at most {MAX_ANSWER_ITEMS} parts")]
    AnswerTooManyItems,
    #[error("each part of an answer may be at most {MAX_ANSWER_ITEM_CHARS} characters long")]
    AnswerItemTooLong,
    #[error(transparent)]
    Port(#[from] PortError),
}

impl DomainError for ExerciseError {
    fn kind(&self) -> ErrorKind {
        match self {
            ExerciseError::AlreadyGenerated => ErrorKind::Conflict,
            ExerciseError::SentenceEmpty
            | ExerciseError::SentenceTooLong
            | ExerciseError::SentenceHasNoWords
            | ExerciseError::AnswerEmpty
            | ExerciseError::AnswerTooManyItems
            | ExerciseError::AnswerItemTooLong => ErrorKind::InvalidInput,
            ExerciseError::NotFound => ErrorKind::NotFound,
            ExerciseError::Port(e) => e.kind(),
        }
    }

    fn field(&self) -> Option<&'static str> {
        match self {
            ExerciseError::SentenceEmpty
            | ExerciseError::SentenceTooLong
            | ExerciseError::SentenceHasNoWords => Some("sentence"),
            ExerciseError::AnswerEmpty
            | ExerciseError::AnswerTooManyItems
            | ExerciseError::AnswerItemTooLong => Some("givenAnswer"),
            _ => None,
        }
    }
}

/// What was generated: whose exercise it is and the key answers are marked against.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GeneratedExercise {
    pub student: UserId,
    pub game_type: GameType,
    pub difficulty: Difficulty,
    pub nikud: bool,
    pub correct_answer: Vec<String>,
}

/// One marked attempt. The answer itself stays sealed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GradedAttempt {
    pub attempt_id: AttemptId,
    pub attempt_number: u32,
    pub given_answer: Sealed,
    pub accuracy: f64,
    pub correct: bool,
}

/// What other parts of the system may know about one attempt (see [`Exercise::attempt`]).
#[derive(Debug, Clone, PartialEq)]
pub struct AttemptSummary {
    pub student: UserId,
    pub game_type: GameType,
    pub difficulty: Difficulty,
    pub attempt_number: u32,
    pub accuracy: f64,
    pub correct: bool,
}

impl AttemptSummary {
    /// The facts the [`crate::services::PracticeRecords`] port hands out, for the exercise
    /// this attempt belongs to.
    pub fn facts(&self, exercise: ExerciseId) -> AttemptFacts {
        AttemptFacts {
            student: self.student,
            exercise,
            game_type: self.game_type,
            difficulty: self.difficulty,
            correct: self.correct,
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Exercise {
    generated: Option<GeneratedExercise>,
    attempts: Vec<GradedAttempt>,
}

impl Exercise {
    /// The exercise as generated, or `None` before generation.
    pub fn generated(&self) -> Option<&GeneratedExercise> {
        self.generated.as_ref()
    }

    /// Every attempt, in the order they were made.
    pub fn attempts(&self) -> &[GradedAttempt] {
        &self.attempts
    }

    /// One attempt, with what is known about its exercise.
    pub fn attempt(&self, id: AttemptId) -> Option<AttemptSummary> {
        let exercise = self.generated.as_ref()?;
        let attempt = self.attempts.iter().find(|a| a.attempt_id == id)?;
        Some(AttemptSummary {
            student: exercise.student,
            game_type: exercise.game_type,
            difficulty: exercise.difficulty,
            attempt_number: attempt.attempt_number,
            accuracy: attempt.accuracy,
            correct: attempt.correct,
        })
    }

    /// Whether some attempt has answered the exercise correctly.
    pub fn solved(&self) -> bool {
        self.attempts.iter().any(|a| a.correct)
    }

    /// The wrong attempts still waiting to be put right, in order: all of them until the
    /// exercise is solved, none afterwards.
    pub fn outstanding_mistakes(&self) -> Vec<AttemptId> {
        if self.solved() {
            return Vec::new();
        }
        self.attempts
            .iter()
            .filter(|a| !a.correct)
            .map(|a| a.attempt_id)
            .collect()
    }

    fn exercise_of(&self, student: UserId) -> Result<&GeneratedExercise, ExerciseError> {
        self.generated
            .as_ref()
            .filter(|e| e.student == student)
            .ok_or(ExerciseError::NotFound)
    }
}

/// The answer with each element trimmed, if its size is within bounds.
fn checked_answer(given: &[String]) -> Result<Vec<String>, ExerciseError> {
    if given.is_empty() {
        return Err(ExerciseError::AnswerEmpty);
    }
    if given.len() > MAX_ANSWER_ITEMS {
        return Err(ExerciseError::AnswerTooManyItems);
    }
    given
        .iter()
        .map(|item| {
            // A blank part stays in the answer, as an empty one.
            let item = text::optional(Some(item), MAX_ANSWER_ITEM_CHARS)
                .map_err(|_| ExerciseError::AnswerItemTooLong)?;
            Ok(item.unwrap_or_default().to_string())
        })
        .collect()
}

impl Aggregate for Exercise {
    const TYPE: &'static str = "Exercise";
    type Command = ExerciseCommand;
    type Event = ExerciseEvent;
    type Error = ExerciseError;
    type Services = DomainServices;

    async fn handle(
        &mut self,
        command: Self::Command,
        services: &Self::Services,
        sink: &EventSink<Self>,
    ) -> Result<(), Self::Error> {
        match command {
            ExerciseCommand::Generate {
                student,
                game_type,
                difficulty,
                nikud,
                sentence,
                request_id,
            } => {
                if self.generated.is_some() {
                    return Err(ExerciseError::AlreadyGenerated);
                }
                let sentence = text::bounded(&sentence, MAX_SENTENCE_CHARS).map_err(|p| {
                    p.pick(ExerciseError::SentenceEmpty, ExerciseError::SentenceTooLong)
                })?;
                let correct_answer = grading::answer_key(game_type, sentence);
                if correct_answer.is_empty() {
                    return Err(ExerciseError::SentenceHasNoWords);
                }
                sink.write(
                    ExerciseEvent::ExerciseGenerated {
                        student,
                        game_type,
                        difficulty,
                        nikud,
                        correct_answer,
                        request_id,
                    },
                    self,
                )
                .await;
            }

            ExerciseCommand::SubmitAttempt {
                attempt_id,
                student,
                given_answer,
            } => {
                let given_answer = checked_answer(&given_answer)?;
                let exercise = self.exercise_of(student)?;
                if self.attempts.iter().any(|a| a.attempt_id == attempt_id) {
                    // A retried submission: it was marked the first time.
                    return Ok(());
                }
                let grade =
                    grading::grade(exercise.game_type, &exercise.correct_answer, &given_answer);
                let answer_json =
                    serde_json::to_string(&given_answer).expect("a list of strings serializes");
                let sealed_answer = services.vault.seal(student, &answer_json).await?;
                // Only the first correct attempt clears mistakes; after it there are none.
                let cleared = if grade.correct {
                    self.outstanding_mistakes()
                } else {
                    Vec::new()
                };
                let attempt_number = self.attempts.len() as u32 + 1;
                sink.write(
                    ExerciseEvent::AttemptGraded {
                        attempt_id,
                        attempt_number,
                        given_answer: sealed_answer,
                        accuracy: grade.accuracy,
                        correct: grade.correct,
                    },
                    self,
                )
                .await;
                if !cleared.is_empty() {
                    sink.write(
                        ExerciseEvent::MistakesCleared {
                            attempt_ids: cleared,
                        },
                        self,
                    )
                    .await;
                }
            }
        }
        Ok(())
    }

    fn apply(&mut self, event: Self::Event) {
        match event {
            ExerciseEvent::ExerciseGenerated {
                student,
                game_type,
                difficulty,
                nikud,
                correct_answer,
                request_id: _,
            } => {
                self.generated = Some(GeneratedExercise {
                    student,
                    game_type,
                    difficulty,
                    nikud,
                    correct_answer,
                });
            }
            ExerciseEvent::AttemptGraded {
                attempt_id,
                attempt_number,
                given_answer,
                accuracy,
                correct,
            } => self.attempts.push(GradedAttempt {
                attempt_id,
                attempt_number,
                given_answer,
                accuracy,
                correct,
            }),
            // Nothing to remember: a solved exercise has no outstanding mistakes. The event
            // exists for the read side (the "my mistakes" list).
            ExerciseEvent::MistakesCleared { .. } => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::services::testing::{sealed, TestWorld};
    use cqrs_es::test::TestFramework;

    type Framework = TestFramework<Exercise>;

    fn framework() -> Framework {
        Framework::with(TestWorld::default().services())
    }

    fn ids() -> (UserId, RequestId) {
        (
            UserId::from(uuid::Uuid::from_u128(1)),
            RequestId::from(uuid::Uuid::from_u128(2)),
        )
    }

    fn strings(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    fn sealed_answer(student: UserId, items: &[&str]) -> Sealed {
        sealed(student, &serde_json::to_string(&strings(items)).unwrap())
    }

    fn generated(student: UserId, game_type: GameType, key: &[&str]) -> ExerciseEvent {
        ExerciseEvent::ExerciseGenerated {
            student,
            game_type,
            difficulty: Difficulty::Easy,
            nikud: false,
            correct_answer: strings(key),
            request_id: ids().1,
        }
    }

    fn graded(
        student: UserId,
        attempt_id: AttemptId,
        attempt_number: u32,
        items: &[&str],
        accuracy: f64,
        correct: bool,
    ) -> ExerciseEvent {
        ExerciseEvent::AttemptGraded {
            attempt_id,
            attempt_number,
            given_answer: sealed_answer(student, items),
            accuracy,
            correct,
        }
    }

    fn submit(attempt_id: AttemptId, student: UserId, items: &[&str]) -> ExerciseCommand {
        ExerciseCommand::SubmitAttempt {
            attempt_id,
            student,
            given_answer: strings(items),
        }
    }

    fn generate(student: UserId, game_type: GameType, sentence: &str) -> ExerciseCommand {
        ExerciseCommand::Generate {
            student,
            game_type,
            difficulty: Difficulty::Easy,
            nikud: false,
            sentence: sentence.to_string(),
            request_id: ids().1,
        }
    }

    #[test]
    fn generating_a_word_order_exercise_splits_the_sentence_into_words() {
        let (student, _) = ids();
        framework()
            .given_no_previous_events()
            .when(generate(student, GameType::WordOrder, " שָׁלוֹם, מָה שְׁלוֹמְךָ? "))
            .then_expect_events(vec![generated(
                student,
                GameType::WordOrder,
                &["שָׁלוֹם", "מָה", "שְׁלוֹמְךָ"],
            )]);
    }

    #[test]
    fn generating_a_typing_exercise_keeps_the_whole_sentence() {
        let (student, _) = ids();
        framework()
            .given_no_previous_events()
            .when(generate(
                student,
                GameType::TypingPractice,
                " אני אוהב קפה. ",
            ))
            .then_expect_events(vec![generated(
                student,
                GameType::TypingPractice,
                &["אני אוהב קפה."],
            )]);
    }

    #[test]
    fn an_exercise_is_generated_only_once() {
        let (student, _) = ids();
        framework()
            .given(vec![generated(student, GameType::WordOrder, &["שלום"])])
            .when(generate(student, GameType::WordOrder, "שלום"))
            .then_expect_error(ExerciseError::AlreadyGenerated);
    }

    #[test]
    fn a_generated_sentence_must_be_present_short_enough_and_have_words() {
        let (student, _) = ids();
        let cases = [
            (
                GameType::TypingPractice,
                "   ".to_string(),
                ExerciseError::SentenceEmpty,
            ),
            (
                GameType::TypingPractice,
                "א".repeat(MAX_SENTENCE_CHARS + 1),
                ExerciseError::SentenceTooLong,
            ),
            (
                GameType::WordOrder,
                "?! ...".to_string(),
                ExerciseError::SentenceHasNoWords,
            ),
        ];
        for (game, sentence, error) in cases {
            assert_eq!(error.kind(), ErrorKind::InvalidInput);
            assert_eq!(error.field(), Some("sentence"));
            framework()
                .given_no_previous_events()
                .when(generate(student, game, &sentence))
                .then_expect_error(error);
        }
        // Exactly the limit, in Hebrew characters (two bytes each), is fine.
        let longest = "א".repeat(MAX_SENTENCE_CHARS);
        framework()
            .given_no_previous_events()
            .when(generate(student, GameType::TypingPractice, &longest))
            .then_expect_events(vec![generated(
                student,
                GameType::TypingPractice,
                &[longest.as_str()],
            )]);
    }

    #[test]
    fn a_correct_first_attempt_is_graded_without_clearing_anything() {
        let (student, _) = ids();
        let attempt = AttemptId::new();
        framework()
            .given(vec![generated(
                student,
                GameType::WordOrder,
                &["אני", "אוהב", "קפה"],
            )])
            .when(submit(attempt, student, &["אני", " אוהב ", "קפה"]))
            .then_expect_events(vec![graded(
                student,
                attempt,
                1,
                &["אני", "אוהב", "קפה"],
                100.0,
                true,
            )]);
    }

    #[test]
    fn a_wrong_attempt_is_graded_with_partial_accuracy_and_numbered() {
        let (student, _) = ids();
        let (first, second) = (AttemptId::new(), AttemptId::new());
        framework()
            .given(vec![
                generated(student, GameType::WordOrder, &["אני", "אוהב", "קפה"]),
                graded(student, first, 1, &["קפה", "אוהב", "אני"], 33.33, false),
            ])
            .when(submit(second, student, &["אני", "קפה", "אוהב"]))
            .then_expect_events(vec![graded(
                student,
                second,
                2,
                &["אני", "קפה", "אוהב"],
                33.33,
                false,
            )]);
    }

    #[test]
    fn a_typed_answer_is_graded_by_similarity() {
        let (student, _) = ids();
        let attempt = AttemptId::new();
        framework()
            .given(vec![generated(
                student,
                GameType::TypingPractice,
                &["אני אוהב קפה"],
            )])
            .when(submit(attempt, student, &["אני אוהב כפה"]))
            .then_expect_events(vec![graded(
                student,
                attempt,
                1,
                &["אני אוהב כפה"],
                91.67,
                false,
            )]);
    }

    #[test]
    fn a_later_correct_attempt_clears_the_earlier_mistakes_once() {
        let (student, _) = ids();
        let (first, second, third, fourth) = (
            AttemptId::new(),
            AttemptId::new(),
            AttemptId::new(),
            AttemptId::new(),
        );
        let history = vec![
            generated(student, GameType::WordOrder, &["אני", "אוהב"]),
            graded(student, first, 1, &["אוהב", "אני"], 0.0, false),
            graded(student, second, 2, &["אוהב"], 0.0, false),
        ];
        framework()
            .given(history.clone())
            .when(submit(third, student, &["אני", "אוהב"]))
            .then_expect_events(vec![
                graded(student, third, 3, &["אני", "אוהב"], 100.0, true),
                ExerciseEvent::MistakesCleared {
                    attempt_ids: vec![first, second],
                },
            ]);

        // Once solved, another correct attempt has nothing left to clear.
        let mut solved = history;
        solved.push(graded(student, third, 3, &["אני", "אוהב"], 100.0, true));
        solved.push(ExerciseEvent::MistakesCleared {
            attempt_ids: vec![first, second],
        });
        framework()
            .given(solved)
            .when(submit(fourth, student, &["אני", "אוהב"]))
            .then_expect_events(vec![graded(
                student,
                fourth,
                4,
                &["אני", "אוהב"],
                100.0,
                true,
            )]);
    }

    #[test]
    fn resubmitting_the_same_attempt_changes_nothing() {
        let (student, _) = ids();
        let attempt = AttemptId::new();
        framework()
            .given(vec![
                generated(student, GameType::WordOrder, &["אני", "אוהב"]),
                graded(student, attempt, 1, &["אוהב", "אני"], 0.0, false),
            ])
            .when(submit(attempt, student, &["אוהב", "אני"]))
            .then_expect_events(vec![]);
    }

    #[test]
    fn an_exercise_never_generated_or_of_another_student_is_not_found() {
        let (student, _) = ids();
        let error = ExerciseError::NotFound;
        assert_eq!(error.kind(), ErrorKind::NotFound);
        assert_eq!(error.to_string(), "no such exercise for this student");
        framework()
            .given_no_previous_events()
            .when(submit(AttemptId::new(), student, &["שלום"]))
            .then_expect_error(ExerciseError::NotFound);
        framework()
            .given(vec![generated(student, GameType::WordOrder, &["שלום"])])
            .when(submit(AttemptId::new(), UserId::new(), &["שלום"]))
            .then_expect_error(ExerciseError::NotFound);
    }

    #[test]
    fn an_answer_must_have_one_to_twenty_short_enough_parts() {
        let (student, _) = ids();
        let long = "א".repeat(MAX_ANSWER_ITEM_CHARS + 1);
        let cases: [(Vec<String>, ExerciseError); 3] = [
            (vec![], ExerciseError::AnswerEmpty),
            (
                vec!["מילה".to_string(); MAX_ANSWER_ITEMS + 1],
                ExerciseError::AnswerTooManyItems,
            ),
            (
                vec!["שלום".to_string(), long],
                ExerciseError::AnswerItemTooLong,
            ),
        ];
        for (given_answer, error) in cases {
            assert_eq!(error.kind(), ErrorKind::InvalidInput);
            assert_eq!(error.field(), Some("givenAnswer"));
            framework()
                .given(vec![generated(student, GameType::WordOrder, &["שלום"])])
                .when(ExerciseCommand::SubmitAttempt {
                    attempt_id: AttemptId::new(),
                    student,
                    given_answer,
                })
                .then_expect_error(error);
        }
    }

    #[test]
    fn an_erased_student_cannot_submit() {
        let (student, _) = ids();
        let world = TestWorld::default();
        world.shred(student);
        let error = Framework::with(world.services())
            .given(vec![generated(student, GameType::WordOrder, &["שלום"])])
            .when(submit(AttemptId::new(), student, &["שלום"]))
            .inspect_result()
            .unwrap_err();
        assert_eq!(error, ExerciseError::Port(PortError::Erased(student)));
        assert_eq!(error.kind(), ErrorKind::Conflict);
        assert_eq!(
            ExerciseError::Port(PortError::Unavailable("down".into())).kind(),
            ErrorKind::Unavailable
        );
    }

    #[test]
    fn accessors_describe_attempts_and_outstanding_mistakes() {
        let (student, _) = ids();
        let exercise_id = ExerciseId::new();
        let (first, second) = (AttemptId::new(), AttemptId::new());
        let mut exercise = Exercise::default();
        assert!(exercise.generated().is_none());
        assert_eq!(exercise.attempt(first), None);
        for event in [
            generated(student, GameType::WordOrder, &["אני", "אוהב"]),
            graded(student, first, 1, &["אוהב", "אני"], 0.0, false),
        ] {
            exercise.apply(event);
        }
        assert_eq!(exercise.outstanding_mistakes(), vec![first]);
        assert!(!exercise.solved());
        let summary = exercise.attempt(first).unwrap();
        assert_eq!(
            summary.facts(exercise_id),
            AttemptFacts {
                student,
                exercise: exercise_id,
                game_type: GameType::WordOrder,
                difficulty: Difficulty::Easy,
                correct: false,
            }
        );
        assert_eq!(summary.attempt_number, 1);
        assert_eq!(exercise.attempt(second), None);

        exercise.apply(graded(student, second, 2, &["אני", "אוהב"], 100.0, true));
        exercise.apply(ExerciseEvent::MistakesCleared {
            attempt_ids: vec![first],
        });
        assert!(exercise.solved());
        assert!(exercise.outstanding_mistakes().is_empty());
        assert!(exercise.attempt(second).unwrap().correct);
        assert_eq!(exercise.attempts().len(), 2);
    }

    #[test]
    fn event_names_and_versions() {
        let (student, _) = ids();
        let event = generated(student, GameType::WordOrder, &["שלום"]);
        assert_eq!(event.event_type(), "ExerciseGenerated");
        assert_eq!(event.event_version(), "1.0");
        let cleared = ExerciseEvent::MistakesCleared {
            attempt_ids: vec![],
        };
        assert_eq!(cleared.event_type(), "MistakesCleared");
        let json = serde_json::to_value(&cleared).unwrap();
        assert!(json.get("MistakesCleared").is_some());
    }
}
