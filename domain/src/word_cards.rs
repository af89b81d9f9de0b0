//! A student's word cards: Hebrew words they collected, with a translation and maybe an
//! explanation, each marked learned once they know it.
//!
//! The whole deck is one aggregate, keyed by its owner, because the rules are about the deck
//! (a card id appears once; only an existing card can be marked). Every text on a card was
//! chosen by the student, so it is sealed under their key.

use crate::error::{DomainError, ErrorKind};
use crate::ids::{UserId, WordCardId};
use crate::personal_data::Sealed;
use crate::services::{DomainServices, PortError};
use crate::text;
use cqrs_es::event_sink::EventSink;
use cqrs_es::{Aggregate, DomainEvent};
use serde::{Deserialize, Serialize};

/// The longest Hebrew word or phrase on a card, in characters.
pub const MAX_HEBREW_CHARS: usize = 100;
/// The longest translation on a card, in characters.
pub const MAX_ENGLISH_CHARS: usize = 100;
/// The longest explanation on a card, in characters.
pub const MAX_EXPLANATION_CHARS: usize = 2000;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum WordCardCommand {
    AddCard {
        owner: UserId,
        card_id: WordCardId,
        hebrew: String,
        english: String,
        explanation: Option<String>,
    },
    MarkLearned {
        card_id: WordCardId,
        is_learned: bool,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum WordCardEvent {
    WordCardAdded {
        card_id: WordCardId,
        hebrew: Sealed,
        english: Sealed,
        explanation: Option<Sealed>,
    },
    WordCardLearnedChanged {
        card_id: WordCardId,
        is_learned: bool,
    },
}

impl DomainEvent for WordCardEvent {
    fn event_type(&self) -> String {
        match self {
            WordCardEvent::WordCardAdded { .. } => "WordCardAdded",
            WordCardEvent::WordCardLearnedChanged { .. } => "WordCardLearnedChanged",
        }
        .to_string()
    }

    fn event_version(&self) -> String {
        "1.0".to_string()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WordCardError {
    #[error("the Hebrew word is empty")]
    HebrewEmpty,
    #[error("the Hebrew word is longer than {MAX_HEBREW_CHARS} characters")]
    HebrewTooLong,
    #[error("the English translation is empty")]
    EnglishEmpty,
    #[error("the English translation is longer than {MAX_ENGLISH_CHARS} characters")]
    EnglishTooLong,
    #[error("the explanation is longer than {MAX_EXPLANATION_CHARS} characters")]
    ExplanationTooLong,
    #[error("this word card already exists")]
    CardExists,
    #[error("no such word card in your deck")]
    CardNotFound,
    #[error("this word-card deck belongs to another student")]
    NotYourDeck,
    #[error(transparent)]
    Port(#[from] PortError),
}

impl DomainError for WordCardError {
    fn kind(&self) -> ErrorKind {
        use WordCardError::*;
        match self {
            HebrewEmpty | HebrewTooLong | EnglishEmpty | EnglishTooLong | ExplanationTooLong => {
                ErrorKind::InvalidInput
            }
            CardExists => ErrorKind::Conflict,
            CardNotFound => ErrorKind::NotFound,
            NotYourDeck => ErrorKind::Forbidden,
            Port(e) => e.kind(),
        }
    }

    fn field(&self) -> Option<&'static str> {
        use WordCardError::*;
        match self {
            HebrewEmpty | HebrewTooLong => Some("hebrew"),
            EnglishEmpty | EnglishTooLong => Some("english"),
            ExplanationTooLong => Some("explanation"),
            _ => None,
        }
    }
}

/// One card as the deck's rules need it: that it exists, and whether it is learned. The texts
/// live in the events and the read model; kept here, they made every load of a big deck parse
/// and copy kilobytes of sealed text that no rule reads.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WordCard {
    pub card_id: WordCardId,
    pub is_learned: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WordCardDeck {
    /// Known from the first card: everything in the deck is sealed under its owner.
    owner: Option<UserId>,
    cards: Vec<WordCard>,
}

impl WordCardDeck {
    /// The student the deck belongs to, once it has a card.
    pub fn owner(&self) -> Option<UserId> {
        self.owner
    }

    /// The cards, in the order they were added.
    pub fn cards(&self) -> &[WordCard] {
        &self.cards
    }

    pub fn card(&self, card_id: WordCardId) -> Option<&WordCard> {
        self.cards.iter().find(|c| c.card_id == card_id)
    }

    /// How many cards are marked learned.
    pub fn learned_count(&self) -> usize {
        self.cards.iter().filter(|c| c.is_learned).count()
    }
}

impl Aggregate for WordCardDeck {
    const TYPE: &'static str = "WordCardDeck";
    type Command = WordCardCommand;
    type Event = WordCardEvent;
    type Error = WordCardError;
    type Services = DomainServices;

    async fn handle(
        &mut self,
        command: Self::Command,
        services: &Self::Services,
        sink: &EventSink<Self>,
    ) -> Result<(), Self::Error> {
        match command {
            WordCardCommand::AddCard {
                owner,
                card_id,
                hebrew,
                english,
                explanation,
            } => {
                let hebrew = text::bounded(&hebrew, MAX_HEBREW_CHARS).map_err(|p| {
                    p.pick(WordCardError::HebrewEmpty, WordCardError::HebrewTooLong)
                })?;
                let english = text::bounded(&english, MAX_ENGLISH_CHARS).map_err(|p| {
                    p.pick(WordCardError::EnglishEmpty, WordCardError::EnglishTooLong)
                })?;
                // A blank explanation is no explanation.
                let explanation = text::optional(explanation.as_deref(), MAX_EXPLANATION_CHARS)
                    .map_err(|_| WordCardError::ExplanationTooLong)?;
                if self.owner.is_some_and(|o| o != owner) {
                    return Err(WordCardError::NotYourDeck);
                }
                if self.card(card_id).is_some() {
                    return Err(WordCardError::CardExists);
                }
                let hebrew = services.vault.seal(owner, hebrew).await?;
                let english = services.vault.seal(owner, english).await?;
                let explanation = match explanation {
                    Some(text) => Some(services.vault.seal(owner, text).await?),
                    None => None,
                };
                sink.write(
                    WordCardEvent::WordCardAdded {
                        card_id,
                        hebrew,
                        english,
                        explanation,
                    },
                    self,
                )
                .await;
            }

            WordCardCommand::MarkLearned {
                card_id,
                is_learned,
            } => {
                let card = self.card(card_id).ok_or(WordCardError::CardNotFound)?;
                if card.is_learned != is_learned {
                    sink.write(
                        WordCardEvent::WordCardLearnedChanged {
                            card_id,
                            is_learned,
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
            WordCardEvent::WordCardAdded {
                card_id, hebrew, ..
            } => {
                self.owner.get_or_insert(hebrew.subject);
                self.cards.push(WordCard {
                    card_id,
                    is_learned: false,
                });
            }
            WordCardEvent::WordCardLearnedChanged {
                card_id,
                is_learned,
            } => {
                if let Some(card) = self.cards.iter_mut().find(|c| c.card_id == card_id) {
                    card.is_learned = is_learned;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::services::testing::{sealed, TestWorld};
    use cqrs_es::test::TestFramework;

    type Framework = TestFramework<WordCardDeck>;

    fn framework() -> Framework {
        Framework::with(TestWorld::default().services())
    }

    fn add(
        owner: UserId,
        card_id: WordCardId,
        hebrew: &str,
        english: &str,
        explanation: Option<&str>,
    ) -> WordCardCommand {
        WordCardCommand::AddCard {
            owner,
            card_id,
            hebrew: hebrew.to_string(),
            english: english.to_string(),
            explanation: explanation.map(str::to_string),
        }
    }

    fn added(owner: UserId, card_id: WordCardId) -> WordCardEvent {
        WordCardEvent::WordCardAdded {
            card_id,
            hebrew: sealed(owner, "שלום"),
            english: sealed(owner, "hello"),
            explanation: None,
        }
    }

    #[test]
    fn a_card_is_added_with_its_texts_trimmed_and_sealed() {
        let owner = UserId::new();
        let card = WordCardId::new();
        framework()
            .given_no_previous_events()
            .when(add(
                owner,
                card,
                " כֶּלֶב ",
                " dog ",
                Some(" an animal that barks "),
            ))
            .then_expect_events(vec![WordCardEvent::WordCardAdded {
                card_id: card,
                hebrew: sealed(owner, "כֶּלֶב"),
                english: sealed(owner, "dog"),
                explanation: Some(sealed(owner, "an animal that barks")),
            }]);
    }

    #[test]
    fn a_blank_explanation_is_left_out() {
        let owner = UserId::new();
        let card = WordCardId::new();
        framework()
            .given_no_previous_events()
            .when(add(owner, card, "שלום", "hello", Some("   ")))
            .then_expect_events(vec![added(owner, card)]);
    }

    #[test]
    fn a_card_id_is_used_once() {
        let owner = UserId::new();
        let card = WordCardId::new();
        let error = WordCardError::CardExists;
        assert_eq!(error.kind(), ErrorKind::Conflict);
        framework()
            .given(vec![added(owner, card)])
            .when(add(owner, card, "כלב", "dog", None))
            .then_expect_error(error);
    }

    #[test]
    fn only_the_owner_adds_to_a_deck() {
        let owner = UserId::new();
        assert_eq!(WordCardError::NotYourDeck.kind(), ErrorKind::Forbidden);
        framework()
            .given(vec![added(owner, WordCardId::new())])
            .when(add(UserId::new(), WordCardId::new(), "כלב", "dog", None))
            .then_expect_error(WordCardError::NotYourDeck);
    }

    #[test]
    fn card_texts_must_fit() {
        let owner = UserId::new();
        let cases = [
            (" ", "dog", None, WordCardError::HebrewEmpty, "hebrew"),
            (
                &*"כ".repeat(MAX_HEBREW_CHARS + 1),
                "dog",
                None,
                WordCardError::HebrewTooLong,
                "hebrew",
            ),
            ("כלב", "", None, WordCardError::EnglishEmpty, "english"),
            (
                "כלב",
                &*"d".repeat(MAX_ENGLISH_CHARS + 1),
                None,
                WordCardError::EnglishTooLong,
                "english",
            ),
            (
                "כלב",
                "dog",
                Some("ה".repeat(MAX_EXPLANATION_CHARS + 1)),
                WordCardError::ExplanationTooLong,
                "explanation",
            ),
        ];
        for (hebrew, english, explanation, error, field) in cases {
            assert_eq!(error.kind(), ErrorKind::InvalidInput);
            assert_eq!(error.field(), Some(field));
            framework()
                .given_no_previous_events()
                .when(add(
                    owner,
                    WordCardId::new(),
                    hebrew,
                    english,
                    explanation.as_deref(),
                ))
                .then_expect_error(error);
        }
        // The limits count characters, not bytes.
        let card = WordCardId::new();
        let hebrew = "כ".repeat(MAX_HEBREW_CHARS);
        framework()
            .given_no_previous_events()
            .when(add(owner, card, &hebrew, "dog", None))
            .then_expect_events(vec![WordCardEvent::WordCardAdded {
                card_id: card,
                hebrew: sealed(owner, &hebrew),
                english: sealed(owner, "dog"),
                explanation: None,
            }]);
    }

    #[test]
    fn an_erased_student_cannot_add_cards() {
        let owner = UserId::new();
        let world = TestWorld::default();
        world.shred(owner);
        let error = Framework::with(world.services())
            .given_no_previous_events()
            .when(add(owner, WordCardId::new(), "שלום", "hello", None))
            .inspect_result()
            .unwrap_err();
        assert_eq!(error, WordCardError::Port(PortError::Erased(owner)));
        assert_eq!(error.kind(), ErrorKind::Conflict);
        assert_eq!(
            WordCardError::Port(PortError::Unavailable("down".into())).kind(),
            ErrorKind::Unavailable
        );
    }

    #[test]
    fn a_card_is_marked_learned_and_unlearned() {
        let owner = UserId::new();
        let card = WordCardId::new();
        framework()
            .given(vec![added(owner, card)])
            .when(WordCardCommand::MarkLearned {
                card_id: card,
                is_learned: true,
            })
            .then_expect_events(vec![WordCardEvent::WordCardLearnedChanged {
                card_id: card,
                is_learned: true,
            }]);
        framework()
            .given(vec![
                added(owner, card),
                WordCardEvent::WordCardLearnedChanged {
                    card_id: card,
                    is_learned: true,
                },
            ])
            .when(WordCardCommand::MarkLearned {
                card_id: card,
                is_learned: false,
            })
            .then_expect_events(vec![WordCardEvent::WordCardLearnedChanged {
                card_id: card,
                is_learned: false,
            }]);
    }

    #[test]
    fn marking_a_card_as_it_already_is_changes_nothing() {
        let owner = UserId::new();
        let card = WordCardId::new();
        framework()
            .given(vec![added(owner, card)])
            .when(WordCardCommand::MarkLearned {
                card_id: card,
                is_learned: false,
            })
            .then_expect_events(vec![]);
    }

    #[test]
    fn marking_an_unknown_card_is_not_found() {
        let error = WordCardError::CardNotFound;
        assert_eq!(error.kind(), ErrorKind::NotFound);
        assert_eq!(error.to_string(), "no such word card in your deck");
        framework()
            .given(vec![added(UserId::new(), WordCardId::new())])
            .when(WordCardCommand::MarkLearned {
                card_id: WordCardId::new(),
                is_learned: true,
            })
            .then_expect_error(error);
    }

    #[test]
    fn the_deck_remembers_its_owner_and_cards() {
        let owner = UserId::new();
        let (first, second) = (WordCardId::new(), WordCardId::new());
        let mut deck = WordCardDeck::default();
        assert_eq!(deck.owner(), None);
        deck.apply(added(owner, first));
        deck.apply(added(owner, second));
        deck.apply(WordCardEvent::WordCardLearnedChanged {
            card_id: second,
            is_learned: true,
        });
        assert_eq!(deck.owner(), Some(owner));
        assert_eq!(deck.cards().len(), 2);
        assert!(!deck.card(first).unwrap().is_learned);
        assert!(deck.card(second).unwrap().is_learned);
        assert_eq!(deck.learned_count(), 1);
        assert_eq!(added(owner, first).event_type(), "WordCardAdded");
        assert_eq!(added(owner, first).event_version(), "1.0");
    }
}
