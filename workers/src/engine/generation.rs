//! Generation requests, from the `engine-queue` message to the callback: the handler of
//! `GenerateSentences`, `GenerateSplitSentences`, `GenerateWordExplain` and
//! `GenerateEmailDraft`.
//!
//! What was asked is loaded from the `GenerationRequest` aggregate (a request already
//! answered is done at once: a redelivery). The model is asked with a versioned prompt for a
//! JSON answer, which is checked before anything is sent back — the right number of usable
//! sentences, a definition and an explanation, a subject and a body. An answer that does not
//! pass is asked for again (up to `max_output_attempts` in all), then the request fails.
//!
//! Sentence prompts take three hint words and, half the time, one of the student's
//! interests (as the original); both are picked from the request id, not at random, so a
//! redelivered request is asked the same way.

use super::context::{language_name, ContextError, ContextReader};
use super::prompting::json_object;
use super::usage::UsageLedger;
use crate::ai::prompts::{self, Prompt};
use crate::ai::{AiError, AiProvider, ChatMessage, ChatRequest, Speaker, StreamEvent, Usage};
use crate::bus::{Bus, OutgoingMessage, QueueName};
use crate::consumer::{Handler, HandlerError, MessageContext};
use crate::contracts::{
    callback, engine, message_ids, EmailDrafted, GenerationFailed, GenerationJob, GenerationUsage,
    SentencesGenerated, WordExplained,
};
use async_trait::async_trait;
use serde::Serialize;
use serde_json::Value;
use std::sync::Arc;
use std::time::Instant;
use teachin_commands::AggregateReader;
use teachin_domain::generation::{
    GenerationRequest, GenerationStatus, GenerationTask, MAX_EMAIL_BODY_CHARS,
    MAX_EXPLANATION_CHARS, MAX_SUBJECT_CHARS,
};
use teachin_domain::ids::{RequestId, UserId};
use teachin_domain::practice::{grading, MAX_SENTENCE_CHARS};
use teachin_domain::user::Language;
use teachin_domain::vocabulary::{Difficulty, GameType};

const HINTS_EASY: &str = include_str!("../../prompts/hints.easy.v1.txt");
const HINTS_MEDIUM: &str = include_str!("../../prompts/hints.medium.v1.txt");
const HINTS_HARD: &str = include_str!("../../prompts/hints.hard.v1.txt");

/// How many hint words a sentence prompt gets (the original's 3).
const HINTS_PER_PROMPT: usize = 3;

#[derive(Debug, Clone)]
pub struct GenerationSettings {
    /// Times the model is asked before an unusable answer fails the request.
    pub max_output_attempts: u32,
}

impl Default for GenerationSettings {
    fn default() -> Self {
        GenerationSettings {
            max_output_attempts: 2,
        }
    }
}

/// The action that carries a task.
pub fn action_of(task: &GenerationTask) -> &'static str {
    match task {
        GenerationTask::Sentences {
            game_type: GameType::WordOrder,
            ..
        } => engine::GENERATE_SPLIT_SENTENCES,
        GenerationTask::Sentences { .. } => engine::GENERATE_SENTENCES,
        GenerationTask::WordExplanation { .. } => engine::GENERATE_WORD_EXPLAIN,
        GenerationTask::EmailDraft { .. } => engine::GENERATE_EMAIL_DRAFT,
    }
}

/// The words a sentence of `difficulty` has (the original's rules).
pub fn word_range(difficulty: Difficulty) -> (u32, u32) {
    match difficulty {
        Difficulty::Easy => (2, 4),
        Difficulty::Medium => (5, 9),
        Difficulty::Hard => (10, 18),
    }
}

/// Three hint words for `difficulty`, picked from the request id.
pub fn hints(request: RequestId, difficulty: Difficulty) -> Vec<&'static str> {
    let list: Vec<&'static str> = match difficulty {
        Difficulty::Easy => HINTS_EASY,
        Difficulty::Medium => HINTS_MEDIUM,
        Difficulty::Hard => HINTS_HARD,
    }
    .lines()
    .map(str::trim)
    .filter(|w| !w.is_empty())
    .collect();
    let mut seed = request.0.as_u128();
    let mut picked = Vec::new();
    while picked.len() < HINTS_PER_PROMPT.min(list.len()) {
        let word = list[(seed % list.len() as u128) as usize];
        seed = seed / list.len() as u128 + 7919;
        if !picked.contains(&word) {
            picked.push(word);
        }
    }
    picked
}

/// One of `interests` half the time (decided by the request id), else none.
pub fn interest(request: RequestId, interests: &[String]) -> Option<&str> {
    let bits = request.0.as_u128();
    if interests.is_empty() || bits >> 127 == 0 {
        return None;
    }
    Some(&interests[((bits >> 64) as u64 % interests.len() as u64) as usize])
}

/// The usable sentences of an answer `{"sentences": [{"text": ...}]}`: trimmed, not too
/// long, with words to play with. `None` when the answer is not that JSON at all.
pub fn parse_sentences(answer: &str, game_type: GameType) -> Option<Vec<String>> {
    let value = json_object(answer)?;
    let sentences = value.get("sentences")?.as_array()?;
    Some(
        sentences
            .iter()
            .filter_map(|s| s.get("text").and_then(Value::as_str).or_else(|| s.as_str()))
            .map(str::trim)
            .filter(|s| {
                !s.is_empty()
                    && s.chars().count() <= MAX_SENTENCE_CHARS
                    && !grading::answer_key(game_type, s).is_empty()
            })
            .map(str::to_string)
            .collect(),
    )
}

/// Two required strings of a JSON answer, each at most `max` characters.
pub fn parse_pair(
    answer: &str,
    (first, first_max): (&str, usize),
    (second, second_max): (&str, usize),
) -> Option<(String, String)> {
    let value = json_object(answer)?;
    let field = |name: &str, max: usize| {
        let text = value.get(name)?.as_str()?.trim();
        (!text.is_empty() && text.chars().count() <= max).then(|| text.to_string())
    };
    Some((field(first, first_max)?, field(second, second_max)?))
}

/// The handler of the generation actions. Cheap to clone.
#[derive(Clone)]
pub struct Generations {
    inner: Arc<Inner>,
}

struct Inner {
    bus: Arc<dyn Bus>,
    reader: AggregateReader,
    context: ContextReader,
    provider: Arc<dyn AiProvider>,
    settings: GenerationSettings,
    usage: Option<UsageLedger>,
}

impl Generations {
    pub fn new(
        bus: Arc<dyn Bus>,
        reader: AggregateReader,
        context: ContextReader,
        provider: Arc<dyn AiProvider>,
        settings: GenerationSettings,
        usage: Option<UsageLedger>,
    ) -> Self {
        Generations {
            inner: Arc::new(Inner {
                bus,
                reader,
                context,
                provider,
                settings,
                usage,
            }),
        }
    }
}

/// Why a generation stopped.
enum Stop {
    /// Our side failed; another delivery may do better.
    Retry(String),
    /// The model is busy and said when to come back (a 429's `Retry-After`): the bus brings
    /// the request back after that delay, within its retry budget.
    RetryAfter {
        why: String,
        after: std::time::Duration,
    },
    /// The request fails.
    Fail {
        reason: String,
        model: Option<String>,
    },
}

impl From<ContextError> for Stop {
    fn from(e: ContextError) -> Self {
        match e {
            ContextError::Unavailable(why) => Stop::Retry(why),
            ContextError::Unusable(reason) => Stop::Fail {
                reason,
                model: None,
            },
        }
    }
}

/// A checked answer and what it took.
struct Written<T> {
    value: T,
    usage: Usage,
    model: String,
}

#[async_trait]
impl Handler for Generations {
    type Payload = GenerationJob;

    async fn handle(
        &self,
        job: GenerationJob,
        context: &MessageContext,
    ) -> Result<(), HandlerError> {
        self.inner.generate(job, context).await
    }
}

impl Inner {
    async fn generate(
        &self,
        job: GenerationJob,
        context: &MessageContext,
    ) -> Result<(), HandlerError> {
        let started = Instant::now();
        let request: GenerationRequest = self
            .reader
            .load(&job.request_id.to_string())
            .await
            .map_err(|e| HandlerError::Retry(format!("loading the request: {e}")))?;
        let (Some(requester), Some(task), Some(status)) =
            (request.requester(), request.task(), request.status())
        else {
            return Err(HandlerError::Reject(format!(
                "no generation request {}",
                job.request_id
            )));
        };
        if status != GenerationStatus::Requested {
            tracing::info!(request = %job.request_id, "already answered; nothing to do");
            return Ok(());
        }
        if action_of(task) != context.action {
            return Err(HandlerError::Reject(format!(
                "a {} request cannot come as {}",
                action_of(task),
                context.action
            )));
        }
        let sent = match task {
            GenerationTask::Sentences {
                game_type,
                difficulty,
                nikud,
                count,
            } => {
                self.sentences(
                    job.request_id,
                    requester,
                    *game_type,
                    *difficulty,
                    *nikud,
                    *count,
                    started,
                    context,
                )
                .await
            }
            GenerationTask::WordExplanation {
                word,
                context: sentence,
            } => {
                self.word(job.request_id, requester, word, sentence, started, context)
                    .await
            }
            GenerationTask::EmailDraft {
                subject,
                purpose,
                language,
            } => {
                self.email(
                    job.request_id,
                    requester,
                    subject,
                    purpose,
                    *language,
                    started,
                    context,
                )
                .await
            }
        };
        match sent {
            Ok(()) => Ok(()),
            Err(Stop::Retry(why)) => Err(HandlerError::Retry(why)),
            Err(Stop::RetryAfter { why, after }) => {
                tracing::info!(request = %job.request_id, %why, ?after,
                    "the model is busy; the request comes back when it asked");
                Err(HandlerError::RetryAfter { why, after })
            }
            Err(Stop::Fail { reason, model }) => {
                tracing::warn!(request = %job.request_id, %reason, "generation failed");
                self.callback(
                    job.request_id,
                    callback::GENERATION_FAILED,
                    &GenerationFailed {
                        request_id: job.request_id,
                        reason,
                        model,
                        latency_ms: started.elapsed().as_millis() as u64,
                    },
                    context,
                )
                .await
                .map_err(|e| HandlerError::Retry(format!("sending a callback: {e}")))
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn sentences(
        &self,
        request: RequestId,
        requester: UserId,
        game_type: GameType,
        difficulty: Difficulty,
        nikud: bool,
        count: u32,
        started: Instant,
        context: &MessageContext,
    ) -> Result<(), Stop> {
        let interests = self
            .context
            .profile(requester)
            .await?
            .map(|p| p.interests)
            .unwrap_or_default();
        let (min_words, max_words) = word_range(difficulty);
        let level = difficulty.as_str().to_lowercase();
        let prompt = prompts::SENTENCES
            .render(&[
                ("count", &count.to_string()),
                ("difficulty", &level),
                ("min_words", &min_words.to_string()),
                ("max_words", &max_words.to_string()),
                ("nikud", if nikud { "true" } else { "false" }),
                ("hints", &hints(request, difficulty).join(", ")),
                ("interest", interest(request, &interests).unwrap_or("")),
            ])
            .map_err(|e| fail(e.to_string()))?;
        let written = self
            .ask(requester, &prompt, 0.3, |answer| {
                parse_sentences(answer, game_type)
                    .filter(|s| s.len() >= count as usize)
                    .map(|mut s| {
                        s.truncate(count as usize);
                        s
                    })
            })
            .await?;
        let usage = self.usage(&written, prompts::SENTENCES, started);
        self.send(
            request,
            callback::SENTENCES_GENERATED,
            &SentencesGenerated {
                request_id: request,
                requester,
                game_type,
                difficulty,
                nikud,
                sentences: written.value,
                usage,
            },
            context,
        )
        .await
    }

    async fn word(
        &self,
        request: RequestId,
        requester: UserId,
        word: &teachin_domain::personal_data::Sealed,
        sentence: &teachin_domain::personal_data::Sealed,
        started: Instant,
        context: &MessageContext,
    ) -> Result<(), Stop> {
        let word = self.context.open(word).await?;
        let sentence = self.context.open(sentence).await?;
        let language = self
            .context
            .profile(requester)
            .await?
            .map(|p| p.preferred_language)
            .unwrap_or_default();
        let prompt = prompts::WORD_EXPLAIN
            .render(&[
                ("word", &word),
                ("context", &sentence),
                ("language", language_name(language)),
            ])
            .map_err(|e| fail(e.to_string()))?;
        let written = self
            .ask(requester, &prompt, 0.3, |answer| {
                parse_pair(
                    answer,
                    ("definition", MAX_EXPLANATION_CHARS),
                    ("explanation", MAX_EXPLANATION_CHARS),
                )
            })
            .await?;
        let usage = self.usage(&written, prompts::WORD_EXPLAIN, started);
        let (definition, explanation) = written.value;
        self.send(
            request,
            callback::WORD_EXPLAINED,
            &WordExplained {
                request_id: request,
                definition,
                explanation,
                usage,
            },
            context,
        )
        .await
    }

    #[allow(clippy::too_many_arguments)]
    async fn email(
        &self,
        request: RequestId,
        requester: UserId,
        subject: &teachin_domain::personal_data::Sealed,
        purpose: &teachin_domain::personal_data::Sealed,
        language: Language,
        started: Instant,
        context: &MessageContext,
    ) -> Result<(), Stop> {
        let subject = self.context.open(subject).await?;
        let purpose = self.context.open(purpose).await?;
        let prompt = prompts::EMAIL_DRAFT
            .render(&[
                ("subject", &subject),
                ("purpose", &purpose),
                ("language", language_name(language)),
            ])
            .map_err(|e| fail(e.to_string()))?;
        let written = self
            .ask(requester, &prompt, 0.7, |answer| {
                parse_pair(
                    answer,
                    ("subject", MAX_SUBJECT_CHARS),
                    ("body", MAX_EMAIL_BODY_CHARS),
                )
            })
            .await?;
        let usage = self.usage(&written, prompts::EMAIL_DRAFT, started);
        let (subject, body) = written.value;
        self.send(
            request,
            callback::EMAIL_DRAFTED,
            &EmailDrafted {
                request_id: request,
                subject,
                body,
                usage,
            },
            context,
        )
        .await
    }

    /// Asks the model with `prompt` until `check` accepts its answer, at most
    /// `max_output_attempts` times.
    async fn ask<T>(
        &self,
        requester: UserId,
        prompt: &str,
        temperature: f32,
        check: impl Fn(&str) -> Option<T>,
    ) -> Result<Written<T>, Stop> {
        let request = ChatRequest {
            messages: vec![ChatMessage::new(Speaker::User, prompt)],
            tools: Vec::new(),
            temperature: Some(temperature),
            max_tokens: None,
        };
        let mut usage = Usage::default();
        let mut model = self.provider.model().to_string();
        let attempts = self.settings.max_output_attempts.max(1);
        for attempt in 1..=attempts {
            let mut ignore = |_: StreamEvent| {};
            let completion = self
                .provider
                .complete(&request, &mut ignore)
                .await
                .map_err(|e: AiError| match e {
                    // A 429 (or 503) that says when to come back: nothing is wrong with the
                    // request, so it waits on the bus rather than failing.
                    AiError::Unavailable {
                        retry_after: Some(after),
                        ..
                    } => Stop::RetryAfter {
                        why: e.to_string(),
                        after,
                    },
                    e => Stop::Fail {
                        reason: e.to_string(),
                        model: Some(model.clone()),
                    },
                })?;
            if let Some(ledger) = &self.usage {
                let tokens = u64::from(completion.usage.prompt_tokens)
                    + u64::from(completion.usage.completion_tokens);
                ledger.record_tokens(requester, tokens).await;
            }
            usage.prompt_tokens += completion.usage.prompt_tokens;
            usage.completion_tokens += completion.usage.completion_tokens;
            model = completion.model.clone();
            if let Some(value) = check(&completion.text) {
                return Ok(Written {
                    value,
                    usage,
                    model,
                });
            }
            // Its size only: the answer may quote what the person asked about.
            tracing::warn!(
                attempt,
                answer_chars = completion.text.chars().count(),
                "the model's answer is not what was asked for"
            );
        }
        Err(Stop::Fail {
            reason: format!("the model's answer was unusable {attempts} times"),
            model: Some(model),
        })
    }

    fn usage<T>(&self, written: &Written<T>, prompt: Prompt, started: Instant) -> GenerationUsage {
        GenerationUsage {
            model: written.model.clone(),
            prompt_tokens: written.usage.prompt_tokens,
            completion_tokens: written.usage.completion_tokens,
            latency_ms: started.elapsed().as_millis() as u64,
            prompt: prompt.id(),
        }
    }

    async fn send(
        &self,
        request: RequestId,
        action: &str,
        payload: &impl Serialize,
        context: &MessageContext,
    ) -> Result<(), Stop> {
        self.callback(request, action, payload, context)
            .await
            .map_err(|e| Stop::Retry(format!("sending a callback: {e}")))
    }

    async fn callback(
        &self,
        request: RequestId,
        action: &str,
        payload: &impl Serialize,
        context: &MessageContext,
    ) -> Result<(), crate::bus::BusError> {
        let mut message = OutgoingMessage::new(
            message_ids::generation_result(request),
            action,
            serde_json::to_value(payload).expect("a callback serializes"),
        );
        if let Some(correlation) = &context.correlation_id {
            message = message.with_correlation_id(correlation.clone());
        }
        self.bus.send(QueueName::ManagerCallback, message).await
    }
}

fn fail(reason: String) -> Stop {
    Stop::Fail {
        reason,
        model: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hints_and_interests_are_picked_from_the_request_id() {
        let request = RequestId::new();
        let picked = hints(request, Difficulty::Medium);
        assert_eq!(picked.len(), 3);
        assert_eq!(
            picked,
            hints(request, Difficulty::Medium),
            "the same every time"
        );
        assert!(picked.iter().all(|w| HINTS_MEDIUM.lines().any(|l| l == *w)));
        let mut distinct = picked.clone();
        distinct.dedup();
        assert_eq!(distinct.len(), 3);

        let interests = vec!["music".to_string(), "football".to_string()];
        let with = RequestId(uuid::Uuid::from_u128(1 << 127));
        let without = RequestId(uuid::Uuid::from_u128(5));
        assert!(interest(with, &interests).is_some());
        assert_eq!(interest(without, &interests), None);
        assert_eq!(interest(with, &[]), None);
        assert_eq!(word_range(Difficulty::Hard), (10, 18));
    }

    #[test]
    fn sentences_are_taken_only_when_usable() {
        let answer = r#"```json
{"sentences": [{"text": " אני אוהב לטייל "}, {"text": ""}, {"text": "   "}, "הכלב רץ מהר"]}
```"#;
        assert_eq!(
            parse_sentences(answer, GameType::WordOrder),
            Some(vec![
                "אני אוהב לטייל".to_string(),
                "הכלב רץ מהר".to_string()
            ])
        );
        let long = format!(r#"{{"sentences": [{{"text": "{}"}}]}}"#, "א".repeat(501));
        assert_eq!(
            parse_sentences(&long, GameType::TypingPractice),
            Some(vec![])
        );
        assert_eq!(parse_sentences("no json", GameType::TypingPractice), None);
        assert_eq!(
            parse_sentences(r#"{"lines": []}"#, GameType::TypingPractice),
            None
        );
    }

    #[test]
    fn a_pair_needs_both_fields_within_their_limits() {
        assert_eq!(
            parse_pair(
                r#"{"definition": "peace", "explanation": "A greeting."}"#,
                ("definition", 10),
                ("explanation", 100)
            ),
            Some(("peace".into(), "A greeting.".into()))
        );
        for bad in [
            r#"{"definition": "peace"}"#,
            r#"{"definition": " ", "explanation": "x"}"#,
            r#"{"definition": "far too long a definition", "explanation": "x"}"#,
            "peace",
        ] {
            assert_eq!(
                parse_pair(bad, ("definition", 10), ("explanation", 100)),
                None,
                "{bad}"
            );
        }
    }

    #[test]
    fn word_order_sentences_are_split_and_the_rest_are_not() {
        let split = GenerationTask::Sentences {
            game_type: GameType::WordOrder,
            difficulty: Difficulty::Easy,
            nikud: false,
            count: 1,
        };
        assert_eq!(action_of(&split), engine::GENERATE_SPLIT_SENTENCES);
        let typed = GenerationTask::Sentences {
            game_type: GameType::SpeakingPractice,
            difficulty: Difficulty::Easy,
            nikud: false,
            count: 1,
        };
        assert_eq!(action_of(&typed), engine::GENERATE_SENTENCES);
    }
}
