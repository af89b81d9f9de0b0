//! From a conversation to what the model reads: which versioned prompts frame it, in which
//! order the turns go, and how a title is asked for and checked. Pure functions, so the exact
//! prompts a reply was written with are testable without a model.

use super::context::{language_name, Conversation, LearnerProfile, MistakeFacts, Turn};
use crate::ai::prompts::{self, Prompt, PromptError};
use crate::ai::{ChatMessage, Speaker};
use chrono::{DateTime, Utc};
use teachin_domain::tutor_session::{SessionKind, MAX_TITLE_CHARS};
use teachin_domain::user::Language;

/// The messages for the model, and the prompts they were made with (`key@vN`).
#[derive(Debug, Clone, PartialEq)]
pub struct Prompted {
    pub messages: Vec<ChatMessage>,
    pub prompts: Vec<String>,
}

#[derive(Default)]
struct Builder {
    messages: Vec<ChatMessage>,
    prompts: Vec<String>,
}

impl Builder {
    fn prompt(
        &mut self,
        speaker: Speaker,
        prompt: Prompt,
        values: &[(&str, &str)],
    ) -> Result<(), PromptError> {
        self.messages
            .push(ChatMessage::new(speaker, prompt.render(values)?));
        let id = prompt.id();
        if !self.prompts.contains(&id) {
            self.prompts.push(id);
        }
        Ok(())
    }

    fn say(&mut self, speaker: Speaker, text: &str) {
        self.messages.push(ChatMessage::new(speaker, text));
    }
}

/// Why the messages could not be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PromptingError {
    #[error("the global tutor needs the learner's profile, and there is none")]
    NoProfile,
    #[error(transparent)]
    Prompt(#[from] PromptError),
}

/// The messages of a tutor reply: the kind's system prompt, then the last `history_turns`
/// turns. The global tutor's page context goes in as an application (`developer`) message
/// before each message it came with, as in the original.
pub fn tutor_messages(
    conversation: &Conversation,
    profile: Option<&LearnerProfile>,
    history_turns: usize,
) -> Result<Prompted, PromptingError> {
    let mut b = Builder::default();
    match conversation.kind {
        SessionKind::Default => b.prompt(Speaker::System, prompts::TUTOR_SYSTEM, &[])?,
        SessionKind::Global => {
            let profile = profile.ok_or(PromptingError::NoProfile)?;
            let level = profile
                .hebrew_level
                .map(|l| l.as_str())
                .unwrap_or("not given");
            let interests = if profile.interests.is_empty() {
                "not given".to_string()
            } else {
                profile.interests.join(", ")
            };
            b.prompt(
                Speaker::System,
                prompts::TUTOR_GLOBAL_SYSTEM,
                &[
                    ("first_name", &profile.first_name),
                    ("role", profile.role.as_str()),
                    ("preferred_language", profile.language_name()),
                    ("hebrew_level", level),
                    ("interests", &interests),
                ],
            )?;
        }
        SessionKind::ExplainMistake { .. } => {
            let language = profile
                .map(|p| p.preferred_language)
                .unwrap_or(Language::En);
            b.prompt(Speaker::System, prompts::EXPLAIN_MISTAKE_SYSTEM, &[])?;
            b.prompt(
                Speaker::System,
                prompts::EXPLAIN_MISTAKE_RULE,
                &[("language", language_name(language))],
            )?;
        }
    }
    let skip = conversation.turns.len().saturating_sub(history_turns);
    for turn in &conversation.turns[skip..] {
        match turn {
            Turn::Student { text, page_context } => {
                if let Some(context) = page_context {
                    b.prompt(
                        Speaker::Developer,
                        prompts::TUTOR_GLOBAL_PAGE_CONTEXT,
                        &[("page_context", context)],
                    )?;
                }
                b.say(Speaker::User, text);
            }
            Turn::Mistake(facts) => mistake(&mut b, facts)?,
            Turn::Tutor { text } => b.say(Speaker::Assistant, text),
        }
    }
    Ok(Prompted {
        messages: b.messages,
        prompts: b.prompts,
    })
}

fn mistake(b: &mut Builder, facts: &MistakeFacts) -> Result<(), PromptError> {
    b.prompt(
        Speaker::User,
        prompts::EXPLAIN_MISTAKE_USER,
        &[
            ("game_type", facts.game_type.as_str()),
            ("difficulty", facts.difficulty.as_str()),
            ("user_answer", &facts.given_answer),
            ("correct_answer", &facts.correct_answer),
        ],
    )
}

/// How many of the student's messages a title is made from (the original's 6).
pub const TITLE_FROM_MESSAGES: usize = 6;

/// The request for a title, from the student's last messages.
pub fn title_messages(conversation: &Conversation) -> Result<Vec<ChatMessage>, PromptError> {
    let listed = conversation
        .last_student_texts(TITLE_FROM_MESSAGES)
        .iter()
        .map(|t| format!("- {t}"))
        .collect::<Vec<_>>()
        .join("\n");
    Ok(vec![ChatMessage::new(
        Speaker::User,
        prompts::TITLE.render(&[("messages", &listed)])?,
    )])
}

/// The title the model wrote, if its answer is the JSON `{"title": "..."}` asked for (a
/// Markdown code fence around it is tolerated) with a title that fits.
pub fn parse_title(answer: &str) -> Option<String> {
    let value = json_object(answer)?;
    let title = value.get("title")?.as_str()?;
    let title = title.trim().trim_matches(['"', '\'', '«', '»']).trim();
    let title: String = title
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    let title = title.trim();
    if title.is_empty() {
        return None;
    }
    let cut: String = title.chars().take(MAX_TITLE_CHARS).collect();
    Some(cut.trim_end().to_string())
}

/// The JSON object a model was asked to answer with: the whole answer, or what lies between
/// its first `{` and last `}` (models like to wrap JSON in a Markdown code fence).
pub fn json_object(answer: &str) -> Option<serde_json::Value> {
    let trimmed = answer.trim();
    let json = match (trimmed.find('{'), trimmed.rfind('}')) {
        (Some(start), Some(end)) if start < end => &trimmed[start..=end],
        _ => return None,
    };
    serde_json::from_str::<serde_json::Value>(json)
        .ok()
        .filter(serde_json::Value::is_object)
}

/// The original's fallback title when the model gives none: `HHmm_dd_MM`.
pub fn fallback_title(now: DateTime<Utc>) -> String {
    now.format("%H%M_%d_%m").to_string()
}

/// The fixed titles the original gives: the global tutor is always "Global Chat", a mistake
/// explanation names its game. `None` for a plain chat, whose title is generated.
pub fn fixed_title(conversation: &Conversation) -> Option<String> {
    match conversation.kind {
        SessionKind::Default => None,
        SessionKind::Global => Some("Global Chat".into()),
        SessionKind::ExplainMistake { .. } => {
            let game = conversation.turns.iter().find_map(|t| match t {
                Turn::Mistake(facts) => Some(facts.game_type.as_str()),
                _ => None,
            });
            Some(match game {
                Some(game) => format!("Mistake Explanation - {game}"),
                None => "Mistake Explanation".into(),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use teachin_domain::actor::Role;
    use teachin_domain::ids::{AttemptId, ExerciseId, UserId};
    use teachin_domain::user::HebrewLevel;
    use teachin_domain::vocabulary::{Difficulty, GameType};

    fn student(text: &str, page_context: Option<&str>) -> Turn {
        Turn::Student {
            text: text.into(),
            page_context: page_context.map(str::to_string),
        }
    }

    fn conversation(kind: SessionKind, turns: Vec<Turn>) -> Conversation {
        Conversation {
            student: UserId::new(),
            kind,
            turns,
            has_title: false,
        }
    }

    fn speakers(p: &Prompted) -> Vec<Speaker> {
        p.messages.iter().map(|m| m.speaker).collect()
    }

    #[test]
    fn a_plain_chat_is_the_tutor_prompt_then_the_turns_cut_to_the_history() {
        let c = conversation(
            SessionKind::Default,
            vec![
                student("first", None),
                Turn::Tutor {
                    text: "answer".into(),
                },
                student("second", None),
            ],
        );
        let p = tutor_messages(&c, None, 10).unwrap();
        assert_eq!(
            speakers(&p),
            [
                Speaker::System,
                Speaker::User,
                Speaker::Assistant,
                Speaker::User
            ]
        );
        assert_eq!(
            p.messages[0].content,
            prompts::TUTOR_SYSTEM.render(&[]).unwrap()
        );
        assert_eq!(p.prompts, ["tutor.system@v1"]);
        let cut = tutor_messages(&c, None, 1).unwrap();
        assert_eq!(speakers(&cut), [Speaker::System, Speaker::User]);
        assert_eq!(cut.messages[1].content, "second");
    }

    #[test]
    fn the_global_tutor_knows_the_learner_and_each_page() {
        let profile = LearnerProfile {
            first_name: "Dana".into(),
            last_name: "Levi".into(),
            role: Role::Student,
            preferred_language: Language::He,
            hebrew_level: Some(HebrewLevel::Intermediate),
            interests: vec!["music".into(), "football".into()],
        };
        let c = conversation(
            SessionKind::Global,
            vec![student("what is 777?", Some(r#"{"page":"cards","n":777}"#))],
        );
        assert_eq!(tutor_messages(&c, None, 10), Err(PromptingError::NoProfile));
        let p = tutor_messages(&c, Some(&profile), 10).unwrap();
        assert_eq!(
            speakers(&p),
            [Speaker::System, Speaker::Developer, Speaker::User]
        );
        let system = &p.messages[0].content;
        for part in [
            "Dana",
            "Student",
            "Hebrew",
            "intermediate",
            "music, football",
        ] {
            assert!(system.contains(part), "{part} missing from {system}");
        }
        assert!(p.messages[1]
            .content
            .contains(r#"{"page":"cards","n":777}"#));
        assert_eq!(
            p.prompts,
            ["tutor.global.system@v1", "tutor.global.page_context@v1"]
        );
    }

    #[test]
    fn a_mistake_is_explained_with_both_answers_in_the_learners_language() {
        let kind = SessionKind::ExplainMistake {
            exercise: ExerciseId::new(),
            attempt: AttemptId::new(),
        };
        let c = conversation(
            kind,
            vec![Turn::Mistake(MistakeFacts {
                game_type: GameType::WordOrder,
                difficulty: Difficulty::Hard,
                given_answer: "עולם שלום".into(),
                correct_answer: "שלום עולם".into(),
            })],
        );
        let p = tutor_messages(&c, None, 10).unwrap();
        assert_eq!(
            speakers(&p),
            [Speaker::System, Speaker::System, Speaker::User]
        );
        assert!(p.messages[1].content.contains("English"));
        let asked = &p.messages[2].content;
        assert!(asked.contains("My answer: עולם שלום"), "{asked}");
        assert!(asked.contains("The correct answer: שלום עולם"));
        assert!(asked.contains("WordOrder") && asked.contains("Hard"));
        assert_eq!(
            fixed_title(&c).as_deref(),
            Some("Mistake Explanation - WordOrder")
        );
    }

    #[test]
    fn a_title_is_strict_json_within_sixty_four_characters_or_nothing() {
        assert_eq!(
            parse_title(r#"{"title": "ברכות בעברית"}"#).as_deref(),
            Some("ברכות בעברית")
        );
        assert_eq!(
            parse_title("```json\n{\"title\": \" Greetings \"}\n```").as_deref(),
            Some("Greetings")
        );
        let long = format!(r#"{{"title": "{}"}}"#, "ש".repeat(100));
        assert_eq!(parse_title(&long).unwrap().chars().count(), MAX_TITLE_CHARS);
        for bad in ["Greetings", r#"{"name": "x"}"#, r#"{"title": "  "}"#, "{"] {
            assert_eq!(parse_title(bad), None, "{bad}");
        }
        let at = DateTime::parse_from_rfc3339("2025-03-07T09:05:00Z")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(fallback_title(at), "0905_07_03");
    }

    #[test]
    fn a_title_is_asked_for_from_the_last_six_student_messages() {
        let turns = (1..=8).map(|i| student(&format!("m{i}"), None)).collect();
        let c = conversation(SessionKind::Default, turns);
        let asked = &title_messages(&c).unwrap()[0].content;
        assert!(!asked.contains("- m2\n") && asked.contains("- m3\n") && asked.contains("- m8"));
        assert_eq!(fixed_title(&c), None);
        assert_eq!(
            fixed_title(&conversation(SessionKind::Global, vec![])).as_deref(),
            Some("Global Chat")
        );
    }
}
