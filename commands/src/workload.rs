//! A realistic stream of student activity, issued through the real command bus: sign-up,
//! game settings, exercises with wrong and right attempts, word cards, achievements, and a
//! tutor conversation with AI replies. The crash-recovery tests and `teachin bench` both drive
//! the system with it, so they exercise every aggregate and every projection.

use crate::bus::{CommandBus, CommandContext, CommandReceipt};
use cqrs_es::Aggregate;
use teachin_domain::achievements::{AchievementCommand, AchievementProgress, Feature};
use teachin_domain::actor::{Actor, Role};
use teachin_domain::game_config::{GameConfiguration, GameConfigurationCommand};
use teachin_domain::ids::{AttemptId, ExerciseId, RequestId, TutorSessionId, UserId, WordCardId};
use teachin_domain::practice::{Exercise, ExerciseCommand};
use teachin_domain::tutor_session::{SessionKind, TutorSession, TutorSessionCommand};
use teachin_domain::user::{Language, User, UserCommand};
use teachin_domain::vocabulary::{Difficulty, GameType};
use teachin_domain::word_cards::{WordCardCommand, WordCardDeck};

/// A fixed, valid argon2id PHC string: the workload measures the event store, not hashing.
const PASSWORD_HASH: &str =
    "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaGhhc2g";

/// One student's session on the platform. Each `step` issues one command.
pub struct StudentActivity {
    pub student: UserId,
    step: usize,
    exercise: ExerciseId,
    session: TutorSessionId,
    request: RequestId,
    card: WordCardId,
}

/// Identifies one appended event: (aggregate type, aggregate id, sequence).
pub type EventKey = (&'static str, String, usize);

/// The events a command appended.
fn keys<A: Aggregate>(receipt: &CommandReceipt<A>) -> Vec<EventKey> {
    receipt
        .events
        .iter()
        .map(|e| (A::TYPE, receipt.aggregate_id.clone(), e.sequence))
        .collect()
}

/// How many commands one full round of [`StudentActivity::step`] issues.
pub const STEPS_PER_ROUND: usize = 12;

impl StudentActivity {
    pub fn new() -> Self {
        Self {
            student: UserId::new(),
            step: 0,
            exercise: ExerciseId::new(),
            session: TutorSessionId::new(),
            request: RequestId::new(),
            card: WordCardId::new(),
        }
    }

    fn actor(&self) -> Actor {
        Actor::user(self.student, Role::Student)
    }

    /// Issues the next command of this student's routine (the first is always the sign-up)
    /// and returns the events it appended.
    pub async fn step(&mut self, bus: &CommandBus) -> Result<Vec<EventKey>, String> {
        let student = self.student;
        let round = self.step / STEPS_PER_ROUND;
        let context = CommandContext::new(self.actor(), "workload");
        let id = student.to_string();
        let result = match (self.step == 0, self.step % STEPS_PER_ROUND) {
            (true, _) => bus
                .execute::<User>(
                    &id,
                    UserCommand::Register {
                        user_id: student,
                        role: Role::Student,
                        first_name: "Avi".into(),
                        last_name: format!("Student {}", &id[..8]),
                        email: format!("{id}@students.example"),
                        password_hash: PASSWORD_HASH.into(),
                        preferred_language: Language::He,
                        hebrew_level: None,
                        interests: vec!["music".into()],
                        registered_by: Actor::Anonymous,
                    },
                    &CommandContext::new(Actor::Anonymous, "workload"),
                )
                .await
                .map_or_else(|e| Err(e.to_string()), |r| Ok(keys(&r))),
            (false, 0) => bus
                .execute::<GameConfiguration>(
                    &id,
                    GameConfigurationCommand::Save {
                        game: GameType::WordOrder,
                        difficulty: Difficulty::Medium,
                        nikud: round.is_multiple_of(2),
                        number_of_sentences: (round % 10 + 1) as u8,
                    },
                    &context,
                )
                .await
                .map_or_else(|e| Err(e.to_string()), |r| Ok(keys(&r))),
            (false, 1) => {
                self.exercise = ExerciseId::new();
                bus.execute::<Exercise>(
                    &self.exercise.to_string(),
                    ExerciseCommand::Generate {
                        student,
                        game_type: GameType::WordOrder,
                        difficulty: Difficulty::Easy,
                        nikud: false,
                        sentence: "אני אוהב ללמוד עברית".into(),
                        request_id: RequestId::new(),
                    },
                    &context,
                )
                .await
                .map_or_else(|e| Err(e.to_string()), |r| Ok(keys(&r)))
            }
            (false, 2) => {
                self.attempt(bus, &["עברית", "אני", "אוהב", "ללמוד"], &context)
                    .await
            }
            (false, 3) => {
                self.attempt(bus, &["אני", "אוהב", "ללמוד", "עברית"], &context)
                    .await
            }
            (false, 4) => {
                self.card = WordCardId::new();
                bus.execute::<WordCardDeck>(
                    &id,
                    WordCardCommand::AddCard {
                        owner: student,
                        card_id: self.card,
                        hebrew: "ספר".into(),
                        english: "book".into(),
                        explanation: Some("a thing you read".into()),
                    },
                    &context,
                )
                .await
                .map_or_else(|e| Err(e.to_string()), |r| Ok(keys(&r)))
            }
            (false, 5) => bus
                .execute::<WordCardDeck>(
                    &id,
                    WordCardCommand::MarkLearned {
                        card_id: self.card,
                        is_learned: true,
                    },
                    &context,
                )
                .await
                .map_or_else(|e| Err(e.to_string()), |r| Ok(keys(&r))),
            (false, 6) => bus
                .execute::<AchievementProgress>(
                    &id,
                    AchievementCommand::Track {
                        feature: Feature::WordOrder,
                        increment_by: 1,
                    },
                    &context,
                )
                .await
                .map_or_else(|e| Err(e.to_string()), |r| Ok(keys(&r))),
            (false, 7) => {
                self.request = RequestId::new();
                bus.execute::<TutorSession>(
                    &self.session.to_string(),
                    TutorSessionCommand::PostStudentMessage {
                        student,
                        kind: SessionKind::Default,
                        text: "מה ההבדל בין ספר לסיפור?".into(),
                        page_context: None,
                        request_id: self.request,
                    },
                    &context,
                )
                .await
                .map_or_else(|e| Err(e.to_string()), |r| Ok(keys(&r)))
            }
            (false, 8) => {
                self.tutor(
                    bus,
                    TutorSessionCommand::RecordToolCall {
                        request_id: self.request,
                        tool: "Time-current_time".into(),
                        arguments: "{}".into(),
                        result: Some("2026-11-26T10:00:00Z".into()),
                    },
                )
                .await
            }
            (false, 9) => {
                self.tutor(
                    bus,
                    TutorSessionCommand::CompleteAiReply {
                        request_id: self.request,
                        text: "ספר is a book; סיפור is a story.".into(),
                        model: "gpt-4.1-mini".into(),
                        prompt_tokens: 120,
                        completion_tokens: 30,
                        latency_ms: 850,
                    },
                )
                .await
            }
            (false, 10) => {
                self.tutor(
                    bus,
                    TutorSessionCommand::SetTitle {
                        title: format!("Books and stories {round}"),
                    },
                )
                .await
            }
            (false, _) => bus
                .execute::<AchievementProgress>(
                    &id,
                    AchievementCommand::Track {
                        feature: Feature::WordCards,
                        increment_by: 2,
                    },
                    &context,
                )
                .await
                .map_or_else(|e| Err(e.to_string()), |r| Ok(keys(&r))),
        };
        self.step += 1;
        result
    }

    async fn attempt(
        &self,
        bus: &CommandBus,
        answer: &[&str],
        context: &CommandContext,
    ) -> Result<Vec<EventKey>, String> {
        bus.execute::<Exercise>(
            &self.exercise.to_string(),
            ExerciseCommand::SubmitAttempt {
                attempt_id: AttemptId::new(),
                student: self.student,
                given_answer: answer.iter().map(|w| w.to_string()).collect(),
            },
            context,
        )
        .await
        .map_or_else(|e| Err(e.to_string()), |r| Ok(keys(&r)))
    }

    async fn tutor(
        &self,
        bus: &CommandBus,
        command: TutorSessionCommand,
    ) -> Result<Vec<EventKey>, String> {
        bus.execute::<TutorSession>(
            &self.session.to_string(),
            command,
            &CommandContext::new(Actor::System, "workload:engine"),
        )
        .await
        .map_or_else(|e| Err(e.to_string()), |r| Ok(keys(&r)))
    }
}

impl Default for StudentActivity {
    fn default() -> Self {
        Self::new()
    }
}
