//! The `offline` provider: lets `teachin all` run on a laptop with no AI keys, and answers
//! every request by saying so — it never produces text that could pass for the tutor's.

use super::{AiError, AiProvider, ChatRequest, Completion, Speaker, StreamEvent, Usage};
use async_trait::async_trait;
use std::time::Instant;

/// What every offline answer starts with.
pub const OFFLINE_NOTICE: &str = "[offline] The AI tutor is offline on this server: no AI \
provider is configured (AZURE_OPENAI_* or an OpenAI-compatible base URL), so this is not a \
real answer.";

/// The longest piece of the student's message quoted back.
const QUOTE_CHARS: usize = 200;

#[derive(Debug, Default, Clone)]
pub struct Offline;

#[async_trait]
impl AiProvider for Offline {
    fn model(&self) -> &str {
        "offline"
    }

    async fn complete(
        &self,
        request: &ChatRequest,
        on_event: &mut (dyn FnMut(StreamEvent) + Send),
    ) -> Result<Completion, AiError> {
        let started = Instant::now();
        let mut text = OFFLINE_NOTICE.to_string();
        if let Some(asked) = request
            .messages
            .iter()
            .rev()
            .find(|m| m.speaker == Speaker::User)
        {
            let quoted: String = asked.content.chars().take(QUOTE_CHARS).collect();
            let ellipsis = if asked.content.chars().count() > QUOTE_CHARS {
                "…"
            } else {
                ""
            };
            text.push_str(&format!(" You wrote: “{quoted}{ellipsis}”"));
        }
        // Streamed word by word, as a real provider's answer would be.
        for piece in text.split_inclusive(' ') {
            on_event(StreamEvent::Delta(piece.to_string()));
        }
        Ok(Completion {
            text,
            tool_calls: Vec::new(),
            usage: Usage::default(),
            model: "offline".into(),
            finish_reason: Some("stop".into()),
            latency: started.elapsed(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ai::ChatMessage;

    #[tokio::test]
    async fn every_answer_says_it_is_offline_and_streams_what_it_returns() {
        let provider = Offline;
        for messages in [
            vec![],
            vec![
                ChatMessage::new(Speaker::System, "be kind"),
                ChatMessage::new(Speaker::User, "מה זה שלום?"),
            ],
        ] {
            let request = ChatRequest {
                messages,
                ..ChatRequest::default()
            };
            let mut streamed = String::new();
            let completion = provider
                .complete(&request, &mut |e| {
                    if let StreamEvent::Delta(d) = e {
                        streamed.push_str(&d)
                    }
                })
                .await
                .unwrap();
            assert!(completion.text.starts_with(OFFLINE_NOTICE));
            assert_eq!(streamed, completion.text);
            assert_eq!(completion.model, "offline");
        }
    }
}
