//! A learner's saved settings for each practice game: how hard, whether to show nikud (the
//! Hebrew vowel marks), and how many sentences a round has.
//!
//! One aggregate per user (its id is the user's id) holds the settings of every game, so a
//! portal can read "my WordOrder settings" from one place and a missing entry simply means
//! "use the defaults". The original stored these as rows keyed by `(userId, gameName)`;
//! here each save or delete is an event, so a teacher can later see when a student made the
//! game easier or harder.

use crate::error::{DomainError, ErrorKind};
use crate::services::{DomainServices, PortError};
use crate::vocabulary::{Difficulty, GameType};
use cqrs_es::event_sink::EventSink;
use cqrs_es::{Aggregate, DomainEvent};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

/// Fewest and most sentences a round of a game may have.
pub const SENTENCES_PER_ROUND: std::ops::RangeInclusive<u8> = 1..=10;

/// The settings of one game for one user.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct GameConfig {
    pub difficulty: Difficulty,
    pub nikud: bool,
    pub number_of_sentences: u8,
}

/// All of one user's game settings.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct GameConfiguration {
    configs: HashMap<GameType, GameConfig>,
}

impl GameConfiguration {
    /// The saved settings of `game`, if the user saved any.
    pub fn config(&self, game: GameType) -> Option<&GameConfig> {
        self.configs.get(&game)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum GameConfigurationCommand {
    /// Creates or replaces the settings of one game (the original's upsert).
    Save {
        game: GameType,
        difficulty: Difficulty,
        nikud: bool,
        number_of_sentences: u8,
    },
    /// Forgets the settings of one game, so the defaults apply again.
    Delete { game: GameType },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum GameConfigurationEvent {
    GameConfigSaved {
        game: GameType,
        difficulty: Difficulty,
        nikud: bool,
        number_of_sentences: u8,
    },
    GameConfigDeleted {
        game: GameType,
    },
}

impl DomainEvent for GameConfigurationEvent {
    fn event_type(&self) -> String {
        match self {
            GameConfigurationEvent::GameConfigSaved { .. } => "GameConfigSaved",
            GameConfigurationEvent::GameConfigDeleted { .. } => "GameConfigDeleted",
        }
        .to_string()
    }

    fn event_version(&self) -> String {
        "1.0".to_string()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GameConfigurationError {
    #[error("{reason}")]
    InvalidInput { field: &'static str, reason: String },
    #[error("there are no saved settings for {0}")]
    NotFound(GameType),
    #[error(transparent)]
    Port(#[from] PortError),
}

impl DomainError for GameConfigurationError {
    fn kind(&self) -> ErrorKind {
        match self {
            GameConfigurationError::InvalidInput { .. } => ErrorKind::InvalidInput,
            GameConfigurationError::NotFound(_) => ErrorKind::NotFound,
            GameConfigurationError::Port(e) => e.kind(),
        }
    }

    fn field(&self) -> Option<&'static str> {
        match self {
            GameConfigurationError::InvalidInput { field, .. } => Some(field),
            _ => None,
        }
    }
}

impl Aggregate for GameConfiguration {
    const TYPE: &'static str = "GameConfiguration";
    type Command = GameConfigurationCommand;
    type Event = GameConfigurationEvent;
    type Error = GameConfigurationError;
    type Services = DomainServices;

    async fn handle(
        &mut self,
        command: Self::Command,
        _services: &Self::Services,
        sink: &EventSink<Self>,
    ) -> Result<(), Self::Error> {
        match command {
            GameConfigurationCommand::Save {
                game,
                difficulty,
                nikud,
                number_of_sentences,
            } => {
                if !SENTENCES_PER_ROUND.contains(&number_of_sentences) {
                    return Err(GameConfigurationError::InvalidInput {
                        field: "numberOfSentences",
                        reason: format!(
                            "the number of sentences must be between {} and {}",
                            SENTENCES_PER_ROUND.start(),
                            SENTENCES_PER_ROUND.end()
                        ),
                    });
                }
                let wanted = GameConfig {
                    difficulty,
                    nikud,
                    number_of_sentences,
                };
                // Saving what is already saved changes nothing worth recording.
                if self.config(game) == Some(&wanted) {
                    return Ok(());
                }
                let event = GameConfigurationEvent::GameConfigSaved {
                    game,
                    difficulty,
                    nikud,
                    number_of_sentences,
                };
                sink.write(event, self).await;
            }
            GameConfigurationCommand::Delete { game } => {
                if self.config(game).is_none() {
                    return Err(GameConfigurationError::NotFound(game));
                }
                sink.write(GameConfigurationEvent::GameConfigDeleted { game }, self)
                    .await;
            }
        }
        Ok(())
    }

    fn apply(&mut self, event: Self::Event) {
        match event {
            GameConfigurationEvent::GameConfigSaved {
                game,
                difficulty,
                nikud,
                number_of_sentences,
            } => {
                self.configs.insert(
                    game,
                    GameConfig {
                        difficulty,
                        nikud,
                        number_of_sentences,
                    },
                );
            }
            GameConfigurationEvent::GameConfigDeleted { game } => {
                self.configs.remove(&game);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::services::testing::TestWorld;
    use cqrs_es::test::{AggregateResultValidator, TestFramework};

    fn when(
        given: Vec<GameConfigurationEvent>,
        command: GameConfigurationCommand,
    ) -> AggregateResultValidator<GameConfiguration> {
        TestFramework::<GameConfiguration>::with(TestWorld::default().services())
            .given(given)
            .when(command)
    }

    fn saved(game: GameType, difficulty: Difficulty, n: u8) -> GameConfigurationEvent {
        GameConfigurationEvent::GameConfigSaved {
            game,
            difficulty,
            nikud: true,
            number_of_sentences: n,
        }
    }

    fn save(game: GameType, difficulty: Difficulty, n: u8) -> GameConfigurationCommand {
        GameConfigurationCommand::Save {
            game,
            difficulty,
            nikud: true,
            number_of_sentences: n,
        }
    }

    #[test]
    fn first_save_records_the_settings() {
        when(vec![], save(GameType::WordOrder, Difficulty::Hard, 5))
            .then_expect_events(vec![saved(GameType::WordOrder, Difficulty::Hard, 5)]);
    }

    #[test]
    fn saving_different_settings_replaces_them() {
        when(
            vec![saved(GameType::WordOrder, Difficulty::Hard, 5)],
            save(GameType::WordOrder, Difficulty::Easy, 10),
        )
        .then_expect_events(vec![saved(GameType::WordOrder, Difficulty::Easy, 10)]);
    }

    #[test]
    fn saving_the_same_settings_records_nothing() {
        when(
            vec![saved(GameType::WordOrder, Difficulty::Hard, 5)],
            save(GameType::WordOrder, Difficulty::Hard, 5),
        )
        .then_expect_events(vec![]);
    }

    #[test]
    fn settings_are_kept_per_game() {
        when(
            vec![saved(GameType::WordOrder, Difficulty::Hard, 5)],
            save(GameType::TypingPractice, Difficulty::Hard, 5),
        )
        .then_expect_events(vec![saved(GameType::TypingPractice, Difficulty::Hard, 5)]);
    }

    #[test]
    fn a_round_has_one_to_ten_sentences() {
        for n in [0, 11, u8::MAX] {
            let err = when(
                vec![],
                save(GameType::SpeakingPractice, Difficulty::Easy, n),
            )
            .inspect_result()
            .unwrap_err();
            assert_eq!(err.kind(), ErrorKind::InvalidInput);
            assert_eq!(err.field(), Some("numberOfSentences"));
        }
        for n in [1, 10] {
            when(
                vec![],
                save(GameType::SpeakingPractice, Difficulty::Easy, n),
            )
            .then_expect_events(vec![saved(
                GameType::SpeakingPractice,
                Difficulty::Easy,
                n,
            )]);
        }
    }

    #[test]
    fn deleting_saved_settings_records_it() {
        when(
            vec![saved(GameType::WordOrder, Difficulty::Hard, 5)],
            GameConfigurationCommand::Delete {
                game: GameType::WordOrder,
            },
        )
        .then_expect_events(vec![GameConfigurationEvent::GameConfigDeleted {
            game: GameType::WordOrder,
        }]);
    }

    #[test]
    fn deleting_settings_that_were_never_saved_is_not_found() {
        let validator = when(
            vec![
                saved(GameType::WordOrder, Difficulty::Hard, 5),
                GameConfigurationEvent::GameConfigDeleted {
                    game: GameType::WordOrder,
                },
            ],
            GameConfigurationCommand::Delete {
                game: GameType::WordOrder,
            },
        );
        let err = validator.inspect_result().unwrap_err();
        assert_eq!(err, GameConfigurationError::NotFound(GameType::WordOrder));
        assert_eq!(err.kind(), ErrorKind::NotFound);
    }

    #[test]
    fn config_reads_back_what_was_saved_and_survives_a_snapshot() {
        let mut configuration = GameConfiguration::default();
        configuration.apply(saved(GameType::TypingPractice, Difficulty::Medium, 3));
        let expected = GameConfig {
            difficulty: Difficulty::Medium,
            nikud: true,
            number_of_sentences: 3,
        };
        assert_eq!(
            configuration.config(GameType::TypingPractice),
            Some(&expected)
        );
        assert_eq!(configuration.config(GameType::WordOrder), None);

        let json = serde_json::to_string(&configuration).unwrap();
        let back: GameConfiguration = serde_json::from_str(&json).unwrap();
        assert_eq!(back, configuration);
    }

    #[test]
    fn events_are_named_after_their_variant() {
        let event = saved(GameType::WordOrder, Difficulty::Easy, 1);
        assert_eq!(event.event_type(), "GameConfigSaved");
        assert_eq!(event.event_version(), "1.0");
        let json = serde_json::to_value(&event).unwrap();
        assert!(json.get("GameConfigSaved").is_some());
    }

    #[test]
    fn an_erased_subject_is_a_conflict_and_a_failed_port_is_unavailable() {
        let erased = GameConfigurationError::from(PortError::Erased(Default::default()));
        assert_eq!(erased.kind(), ErrorKind::Conflict);
        let down = GameConfigurationError::from(PortError::Unavailable("db down".into()));
        assert_eq!(down.kind(), ErrorKind::Unavailable);
    }
}
