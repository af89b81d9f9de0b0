//! Achievements: badges a student earns by using the platform's features — practising each
//! game, collecting word cards, working through their mistakes.
//!
//! Each student has one progress aggregate counting uses per feature. The counter really
//! accumulates (the original's never did: it read progress from a route that did not exist,
//! so every count restarted at the last increment and only the first badges could unlock),
//! and each badge unlocks exactly once, the moment its feature's count reaches the target.
//!
//! The badges themselves are a fixed catalog, the original's 18 seeded ones, compiled in:
//! they are reference data, not something users change.

use crate::error::{DomainError, ErrorKind};
use crate::services::{DomainServices, PortError};
use cqrs_es::event_sink::EventSink;
use cqrs_es::{Aggregate, DomainEvent};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

/// The largest step one `Track` may add (the original's `incrementBy` 1..1000).
pub const MAX_INCREMENT: u32 = 1000;

/// A part of the platform whose use is counted towards achievements.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[cfg_attr(feature = "graphql", derive(async_graphql::Enum))]
pub enum Feature {
    WordCards,
    TypingPractice,
    SpeakingPractice,
    WordOrder,
    PracticeMistakes,
    WordCardsChallenge,
}

impl Feature {
    pub const ALL: [Feature; 6] = [
        Feature::WordCards,
        Feature::TypingPractice,
        Feature::SpeakingPractice,
        Feature::WordOrder,
        Feature::PracticeMistakes,
        Feature::WordCardsChallenge,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Feature::WordCards => "WordCards",
            Feature::TypingPractice => "TypingPractice",
            Feature::SpeakingPractice => "SpeakingPractice",
            Feature::WordOrder => "WordOrder",
            Feature::PracticeMistakes => "PracticeMistakes",
            Feature::WordCardsChallenge => "WordCardsChallenge",
        }
    }
}

impl fmt::Display for Feature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Feature {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let wanted = s.trim();
        Feature::ALL
            .into_iter()
            .find(|f| f.as_str().eq_ignore_ascii_case(wanted))
            .ok_or_else(|| {
                format!(
                    "unknown feature `{wanted}` (expected WordCards, TypingPractice, \
                     SpeakingPractice, WordOrder, PracticeMistakes or WordCardsChallenge)"
                )
            })
    }
}

/// Whether a badge marks a first step or a number of uses (the original's `type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "graphql", derive(async_graphql::Enum))]
pub enum AchievementType {
    Milestone,
    Count,
}

/// One badge of the catalog.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Achievement {
    /// Stable identifier, stored in events: `<feature in snake case>_<target>`.
    pub key: &'static str,
    pub name: &'static str,
    pub description: &'static str,
    pub achievement_type: AchievementType,
    pub feature: Feature,
    /// The count of uses of `feature` that unlocks the badge.
    pub target: u32,
}

const fn badge(
    key: &'static str,
    name: &'static str,
    description: &'static str,
    feature: Feature,
    target: u32,
) -> Achievement {
    Achievement {
        key,
        name,
        description,
        achievement_type: if target == 1 {
            AchievementType::Milestone
        } else {
            AchievementType::Count
        },
        feature,
        target,
    }
}

static CATALOG: [Achievement; 18] = [
    badge(
        "word_cards_1",
        "First Word Card",
        "Add your first word card.",
        Feature::WordCards,
        1,
    ),
    badge(
        "word_cards_3",
        "Word Collector",
        "Add 3 word cards.",
        Feature::WordCards,
        3,
    ),
    badge(
        "word_cards_5",
        "Vocabulary Builder",
        "Add 5 word cards.",
        Feature::WordCards,
        5,
    ),
    badge(
        "typing_practice_1",
        "First Keystrokes",
        "Complete your first typing practice.",
        Feature::TypingPractice,
        1,
    ),
    badge(
        "typing_practice_3",
        "Steady Typist",
        "Complete 3 typing practices.",
        Feature::TypingPractice,
        3,
    ),
    badge(
        "typing_practice_5",
        "Typing Pro",
        "Complete 5 typing practices.",
        Feature::TypingPractice,
        5,
    ),
    badge(
        "speaking_practice_1",
        "First Words Spoken",
        "Complete your first speaking practice.",
        Feature::SpeakingPractice,
        1,
    ),
    badge(
        "speaking_practice_3",
        "Finding Your Voice",
        "Complete 3 speaking practices.",
        Feature::SpeakingPractice,
        3,
    ),
    badge(
        "speaking_practice_5",
        "Confident Speaker",
        "Complete 5 speaking practices.",
        Feature::SpeakingPractice,
        5,
    ),
    badge(
        "word_order_1",
        "First Sentence Built",
        "Complete your first word-order game.",
        Feature::WordOrder,
        1,
    ),
    badge(
        "word_order_3",
        "Sentence Builder",
        "Complete 3 word-order games.",
        Feature::WordOrder,
        3,
    ),
    badge(
        "word_order_5",
        "Word Order Master",
        "Complete 5 word-order games.",
        Feature::WordOrder,
        5,
    ),
    badge(
        "practice_mistakes_1",
        "Learning from Mistakes",
        "Practise one of your mistakes again.",
        Feature::PracticeMistakes,
        1,
    ),
    badge(
        "practice_mistakes_3",
        "Mistake Fixer",
        "Practise 3 of your mistakes again.",
        Feature::PracticeMistakes,
        3,
    ),
    badge(
        "practice_mistakes_5",
        "Mistake Master",
        "Practise 5 of your mistakes again.",
        Feature::PracticeMistakes,
        5,
    ),
    badge(
        "word_cards_challenge_1",
        "Challenge Accepted",
        "Complete your first word-cards challenge.",
        Feature::WordCardsChallenge,
        1,
    ),
    badge(
        "word_cards_challenge_3",
        "Challenge Regular",
        "Complete 3 word-cards challenges.",
        Feature::WordCardsChallenge,
        3,
    ),
    badge(
        "word_cards_challenge_5",
        "Challenge Champion",
        "Complete 5 word-cards challenges.",
        Feature::WordCardsChallenge,
        5,
    ),
];

/// Every achievement there is, grouped by feature, lowest target first.
pub fn catalog() -> &'static [Achievement] {
    &CATALOG
}

/// The achievement with this key.
pub fn achievement(key: &str) -> Option<&'static Achievement> {
    CATALOG.iter().find(|a| a.key == key)
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum AchievementCommand {
    /// Count `increment_by` more uses of `feature`.
    Track { feature: Feature, increment_by: u32 },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum AchievementEvent {
    /// Version 2.0. Version 1.0 named the fields `increment` and `total`; see
    /// [`crate::upcasting`].
    ProgressRecorded {
        feature: Feature,
        increment_by: u32,
        new_count: u32,
    },
    AchievementUnlocked {
        key: String,
        feature: Feature,
        target: u32,
    },
}

impl DomainEvent for AchievementEvent {
    fn event_type(&self) -> String {
        match self {
            AchievementEvent::ProgressRecorded { .. } => "ProgressRecorded",
            AchievementEvent::AchievementUnlocked { .. } => "AchievementUnlocked",
        }
        .to_string()
    }

    fn event_version(&self) -> String {
        match self {
            AchievementEvent::ProgressRecorded { .. } => "2.0",
            AchievementEvent::AchievementUnlocked { .. } => "1.0",
        }
        .to_string()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AchievementError {
    #[error("the increment must be between 1 and {MAX_INCREMENT}")]
    IncrementOutOfRange,
    #[error(transparent)]
    Port(#[from] PortError),
}

impl DomainError for AchievementError {
    fn kind(&self) -> ErrorKind {
        match self {
            AchievementError::IncrementOutOfRange => ErrorKind::InvalidInput,
            AchievementError::Port(e) => e.kind(),
        }
    }

    fn field(&self) -> Option<&'static str> {
        match self {
            AchievementError::IncrementOutOfRange => Some("incrementBy"),
            AchievementError::Port(_) => None,
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AchievementProgress {
    counts: BTreeMap<Feature, u32>,
    /// Keys of the unlocked achievements, in the order they were unlocked.
    unlocked: Vec<String>,
}

impl AchievementProgress {
    /// How many uses of `feature` were counted so far.
    pub fn count(&self, feature: Feature) -> u32 {
        self.counts.get(&feature).copied().unwrap_or(0)
    }

    /// The keys of the unlocked achievements, in the order they were unlocked.
    pub fn unlocked(&self) -> &[String] {
        &self.unlocked
    }

    pub fn is_unlocked(&self, key: &str) -> bool {
        self.unlocked.iter().any(|k| k == key)
    }
}

impl Aggregate for AchievementProgress {
    const TYPE: &'static str = "AchievementProgress";
    type Command = AchievementCommand;
    type Event = AchievementEvent;
    type Error = AchievementError;
    type Services = DomainServices;

    async fn handle(
        &mut self,
        command: Self::Command,
        _services: &Self::Services,
        sink: &EventSink<Self>,
    ) -> Result<(), Self::Error> {
        match command {
            AchievementCommand::Track {
                feature,
                increment_by,
            } => {
                if !(1..=MAX_INCREMENT).contains(&increment_by) {
                    return Err(AchievementError::IncrementOutOfRange);
                }
                let new_count = self.count(feature).saturating_add(increment_by);
                sink.write(
                    AchievementEvent::ProgressRecorded {
                        feature,
                        increment_by,
                        new_count,
                    },
                    self,
                )
                .await;
                let reached = catalog()
                    .iter()
                    .filter(|a| a.feature == feature && a.target <= new_count)
                    .filter(|a| !self.is_unlocked(a.key))
                    .collect::<Vec<_>>();
                for achievement in reached {
                    sink.write(
                        AchievementEvent::AchievementUnlocked {
                            key: achievement.key.to_string(),
                            feature,
                            target: achievement.target,
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
            AchievementEvent::ProgressRecorded {
                feature, new_count, ..
            } => {
                self.counts.insert(feature, new_count);
            }
            AchievementEvent::AchievementUnlocked { key, .. } => self.unlocked.push(key),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::services::testing::TestWorld;
    use cqrs_es::test::TestFramework;

    type Framework = TestFramework<AchievementProgress>;

    fn framework() -> Framework {
        Framework::with(TestWorld::default().services())
    }

    fn track(feature: Feature, increment_by: u32) -> AchievementCommand {
        AchievementCommand::Track {
            feature,
            increment_by,
        }
    }

    fn progress(feature: Feature, increment_by: u32, new_count: u32) -> AchievementEvent {
        AchievementEvent::ProgressRecorded {
            feature,
            increment_by,
            new_count,
        }
    }

    fn unlocked(key: &str, feature: Feature, target: u32) -> AchievementEvent {
        AchievementEvent::AchievementUnlocked {
            key: key.to_string(),
            feature,
            target,
        }
    }

    #[test]
    fn the_catalog_holds_the_originals_eighteen_achievements() {
        let all = catalog();
        assert_eq!(all.len(), 18);
        for feature in Feature::ALL {
            let targets: Vec<u32> = all
                .iter()
                .filter(|a| a.feature == feature)
                .map(|a| a.target)
                .collect();
            assert_eq!(targets, vec![1, 3, 5], "{feature}");
        }
        for a in all {
            let expected = if a.target == 1 {
                AchievementType::Milestone
            } else {
                AchievementType::Count
            };
            assert_eq!(a.achievement_type, expected, "{}", a.key);
            assert!(!a.name.is_empty() && !a.description.is_empty());
            assert_eq!(achievement(a.key), Some(a));
        }
        let mut keys: Vec<&str> = all.iter().map(|a| a.key).collect();
        keys.sort_unstable();
        keys.dedup();
        assert_eq!(keys.len(), 18, "keys are unique");
        assert_eq!(
            achievement("word_cards_1").unwrap().feature,
            Feature::WordCards
        );
        assert_eq!(
            achievement("word_cards_challenge_5").unwrap().feature,
            Feature::WordCardsChallenge
        );
        assert_eq!(achievement("nope"), None);
    }

    #[test]
    fn features_parse_case_insensitively() {
        assert_eq!("wordcards".parse(), Ok(Feature::WordCards));
        assert_eq!(" TypingPractice ".parse(), Ok(Feature::TypingPractice));
        assert_eq!(
            "WORDCARDSCHALLENGE".parse(),
            Ok(Feature::WordCardsChallenge)
        );
        for feature in Feature::ALL {
            assert_eq!(feature.to_string().parse(), Ok(feature));
        }
        let error = "Chess".parse::<Feature>().unwrap_err();
        assert!(
            error.contains("Chess") && error.contains("PracticeMistakes"),
            "{error}"
        );
    }

    #[test]
    fn the_first_use_unlocks_the_milestone() {
        framework()
            .given_no_previous_events()
            .when(track(Feature::WordOrder, 1))
            .then_expect_events(vec![
                progress(Feature::WordOrder, 1, 1),
                unlocked("word_order_1", Feature::WordOrder, 1),
            ]);
    }

    #[test]
    fn progress_accumulates_across_tracks() {
        framework()
            .given(vec![
                progress(Feature::WordCards, 1, 1),
                unlocked("word_cards_1", Feature::WordCards, 1),
                progress(Feature::WordCards, 1, 2),
            ])
            .when(track(Feature::WordCards, 1))
            .then_expect_events(vec![
                progress(Feature::WordCards, 1, 3),
                unlocked("word_cards_3", Feature::WordCards, 3),
            ]);
    }

    #[test]
    fn a_big_step_unlocks_every_target_it_passes_once() {
        framework()
            .given_no_previous_events()
            .when(track(Feature::TypingPractice, 7))
            .then_expect_events(vec![
                progress(Feature::TypingPractice, 7, 7),
                unlocked("typing_practice_1", Feature::TypingPractice, 1),
                unlocked("typing_practice_3", Feature::TypingPractice, 3),
                unlocked("typing_practice_5", Feature::TypingPractice, 5),
            ]);
        framework()
            .given(vec![
                progress(Feature::TypingPractice, 7, 7),
                unlocked("typing_practice_1", Feature::TypingPractice, 1),
                unlocked("typing_practice_3", Feature::TypingPractice, 3),
                unlocked("typing_practice_5", Feature::TypingPractice, 5),
            ])
            .when(track(Feature::TypingPractice, 1))
            .then_expect_events(vec![progress(Feature::TypingPractice, 1, 8)]);
    }

    #[test]
    fn features_count_separately() {
        framework()
            .given(vec![
                progress(Feature::SpeakingPractice, 4, 4),
                unlocked("speaking_practice_1", Feature::SpeakingPractice, 1),
                unlocked("speaking_practice_3", Feature::SpeakingPractice, 3),
            ])
            .when(track(Feature::PracticeMistakes, 2))
            .then_expect_events(vec![
                progress(Feature::PracticeMistakes, 2, 2),
                unlocked("practice_mistakes_1", Feature::PracticeMistakes, 1),
            ]);
    }

    #[test]
    fn the_increment_must_be_between_one_and_a_thousand() {
        for increment in [0, MAX_INCREMENT + 1] {
            let error = AchievementError::IncrementOutOfRange;
            assert_eq!(error.kind(), ErrorKind::InvalidInput);
            assert_eq!(error.field(), Some("incrementBy"));
            framework()
                .given_no_previous_events()
                .when(track(Feature::WordCards, increment))
                .then_expect_error(error);
        }
        let events = framework()
            .given_no_previous_events()
            .when(track(Feature::WordCardsChallenge, MAX_INCREMENT))
            .inspect_result()
            .unwrap();
        assert_eq!(events[0], progress(Feature::WordCardsChallenge, 1000, 1000));
        assert_eq!(events.len(), 4);
        assert_eq!(
            AchievementError::Port(PortError::Unavailable("down".into())).kind(),
            ErrorKind::Unavailable
        );
    }

    #[test]
    fn the_state_holds_counts_and_unlocks() {
        let mut progress_state = AchievementProgress::default();
        assert_eq!(progress_state.count(Feature::WordCards), 0);
        for event in [
            progress(Feature::WordCards, 2, 2),
            unlocked("word_cards_1", Feature::WordCards, 1),
            progress(Feature::WordCards, 1, 3),
            unlocked("word_cards_3", Feature::WordCards, 3),
        ] {
            progress_state.apply(event);
        }
        assert_eq!(progress_state.count(Feature::WordCards), 3);
        assert_eq!(progress_state.count(Feature::WordOrder), 0);
        assert_eq!(progress_state.unlocked(), ["word_cards_1", "word_cards_3"]);
        assert!(progress_state.is_unlocked("word_cards_3"));
        assert!(!progress_state.is_unlocked("word_cards_5"));
    }

    #[test]
    fn progress_is_version_two_and_serializes_in_its_current_shape() {
        let event = progress(Feature::WordOrder, 2, 5);
        assert_eq!(event.event_type(), "ProgressRecorded");
        assert_eq!(event.event_version(), "2.0");
        assert_eq!(
            serde_json::to_value(&event).unwrap(),
            serde_json::json!({
                "ProgressRecorded": {"feature": "WordOrder", "increment_by": 2, "new_count": 5}
            })
        );
        let unlock = unlocked("word_order_5", Feature::WordOrder, 5);
        assert_eq!(unlock.event_type(), "AchievementUnlocked");
        assert_eq!(unlock.event_version(), "1.0");
    }
}
