//! Words shared by several aggregates: which game, how hard. Kept in one place so practice,
//! game configuration, tutor sessions and achievements all speak the same names.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// The three practice games of the student portal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "graphql", derive(async_graphql::Enum))]
pub enum GameType {
    /// Arrange the words of a sentence in order.
    WordOrder,
    /// Type the sentence you hear.
    TypingPractice,
    /// Say the sentence you read.
    SpeakingPractice,
}

impl GameType {
    pub const ALL: [GameType; 3] = [
        GameType::WordOrder,
        GameType::TypingPractice,
        GameType::SpeakingPractice,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            GameType::WordOrder => "WordOrder",
            GameType::TypingPractice => "TypingPractice",
            GameType::SpeakingPractice => "SpeakingPractice",
        }
    }
}

impl fmt::Display for GameType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for GameType {
    type Err = String;
    /// Accepts the original's spellings, including `WordOrderGame` (which the original
    /// wrongly mapped to typing practice).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "wordorder" | "wordordergame" => Ok(GameType::WordOrder),
            "typingpractice" | "typing" => Ok(GameType::TypingPractice),
            "speakingpractice" | "speaking" => Ok(GameType::SpeakingPractice),
            other => Err(format!(
                "unknown game `{other}` (expected WordOrder, TypingPractice or SpeakingPractice)"
            )),
        }
    }
}

/// How hard a generated exercise is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "graphql", derive(async_graphql::Enum))]
pub enum Difficulty {
    Easy,
    #[default]
    Medium,
    Hard,
}

impl Difficulty {
    pub fn as_str(self) -> &'static str {
        match self {
            Difficulty::Easy => "Easy",
            Difficulty::Medium => "Medium",
            Difficulty::Hard => "Hard",
        }
    }
}

impl fmt::Display for Difficulty {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Difficulty {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "easy" => Ok(Difficulty::Easy),
            "medium" => Ok(Difficulty::Medium),
            "hard" => Ok(Difficulty::Hard),
            other => Err(format!(
                "unknown difficulty `{other}` (expected Easy, Medium or Hard)"
            )),
        }
    }
}
