//! One tutor reply, from the `engine-queue` message to the callbacks: the handler of
//! `ProcessingChatMessage`, `ProcessingGlobalChatMessage` and `ProcessingExplainMistake`.
//!
//! 1. The session is loaded; a request it already answered (completed or failed: this is a
//!    redelivery after the manager recorded the outcome) is done at once.
//! 2. A request past its time-to-live gets an `Expired` frame and a `TutorReplyFailed`
//!    callback: the student hears that no answer is coming (the original dead-lettered it
//!    silently).
//! 3. The conversation is read from the log and framed with the versioned prompts; the model
//!    streams its answer into frames. When it calls tools they run, each is reported
//!    (`TutorToolCalled`), and the model is asked again with their results, up to
//!    `max_tool_rounds` times.
//! 4. A `Final` frame with the whole answer, then `TutorReplyCompleted` — or, if the provider
//!    gave up (after its own retries), a `Failed` frame and `TutorReplyFailed`.
//! 5. A conversation still without a title gets one (`SessionTitleGenerated`).
//!
//! What can go wrong on our side (the store, the bus) asks the consumer for a retry: the
//! message comes back with the next delivery count, which becomes the next attempt's
//! number. Every message sent carries an id derived from the request, so whatever an earlier
//! attempt already sent is not sent twice, and the reply has one outcome.

use super::context::{ContextError, ContextReader, Conversation};
use super::prompting::{self, fallback_title, fixed_title, parse_title};
use super::stream::{FrameOut, FrameSettings};
use super::tools::Tools;
use super::usage::UsageLedger;
use crate::ai::{AiError, AiProvider, ChatMessage, ChatRequest, Speaker, StreamEvent, Usage};
use crate::bus::{Bus, BusError, OutgoingMessage, QueueName};
use crate::consumer::{Handler, HandlerError, MessageContext};
use crate::contracts::{
    callback, message_ids, FrameStage, SessionTitleGenerated, ToolCallRecord, TutorReplyCompleted,
    TutorReplyFailed, TutorReplyRequest, TutorToolCalled,
};
use async_trait::async_trait;
use chrono::Utc;
use serde::Serialize;
use std::sync::Arc;
use std::time::{Duration, Instant};
use teachin_commands::AggregateReader;
use teachin_domain::ids::UserId;
use teachin_domain::tutor_session::{ReplyStatus, SessionKind, TutorSession};

/// What the student reads when their request expired.
pub const EXPIRED_NOTICE: &str =
    "The tutor could not get to your message in time. Please send it again.";
/// What the student reads when the reply failed.
pub const FAILED_NOTICE: &str = "The tutor could not answer right now. Please try again.";

/// How a tutor reply is written.
#[derive(Debug, Clone)]
pub struct TutorSettings {
    pub frames: FrameSettings,
    /// Times the model may call tools before it must answer.
    pub max_tool_rounds: u32,
    /// The conversation's turns the model sees (the newest).
    pub history_turns: usize,
    pub temperature: Option<f32>,
}

impl Default for TutorSettings {
    fn default() -> Self {
        TutorSettings {
            frames: FrameSettings::default(),
            max_tool_rounds: 3,
            history_turns: 40,
            temperature: Some(0.5),
        }
    }
}

/// The handler of the three tutor actions. Cheap to clone.
#[derive(Clone)]
pub struct TutorReplies {
    inner: Arc<Inner>,
}

struct Inner {
    bus: Arc<dyn Bus>,
    reader: AggregateReader,
    context: ContextReader,
    provider: Arc<dyn AiProvider>,
    tools: Tools,
    settings: TutorSettings,
    usage: Option<UsageLedger>,
}

impl TutorReplies {
    pub fn new(
        bus: Arc<dyn Bus>,
        reader: AggregateReader,
        context: ContextReader,
        provider: Arc<dyn AiProvider>,
        tools: Tools,
        settings: TutorSettings,
        usage: Option<UsageLedger>,
    ) -> Self {
        TutorReplies {
            inner: Arc::new(Inner {
                bus,
                reader,
                context,
                provider,
                tools,
                settings,
                usage,
            }),
        }
    }
}

fn retry(what: &str) -> impl Fn(BusError) -> HandlerError + '_ {
    move |e| HandlerError::Retry(format!("{what}: {e}"))
}

fn sending(what: &str) -> impl Fn(BusError) -> Stop + '_ {
    move |e| Stop::Retry(format!("sending {what}: {e}"))
}

/// How long to wait before the next delivery of a reply the model refused with a
/// `Retry-After` (`AiError::Unavailable { retry_after: Some(..) }`), if waiting is still worth
/// it; `None` means the reply fails now, as any other AI error does.
///
/// A tutor reply is worth something only while the student waits for it: past
/// `requestedAt + ttlSeconds` the next delivery would only answer `Expired` (and a
/// `TutorReplyFailed`). So the bus brings the request back after the model's delay only if
/// that delivery lands before the deadline — with [`RETRY_LANDING_MARGIN`] to spare, for the
/// Service Bus adapter's rounding of a scheduled retry up to the whole second and for the
/// time the consumer takes to pick it up. Otherwise the student gets the `Failed` frame and
/// the reply fails today, not an `Expired` one some seconds later. Because time-to-lives are
/// far shorter than the bus's retry budget in time (20 minutes), such a retry never spends
/// the budget: the request is never dead-lettered without an outcome.
fn retry_within_ttl(
    error: &AiError,
    request: &TutorReplyRequest,
    now: chrono::DateTime<Utc>,
) -> Option<Duration> {
    let AiError::Unavailable {
        retry_after: Some(after),
        ..
    } = error
    else {
        return None;
    };
    let deadline = request.requested_at + chrono::Duration::seconds(i64::from(request.ttl_seconds));
    let lands = now + chrono::Duration::from_std(*after + RETRY_LANDING_MARGIN).ok()?;
    (lands < deadline).then_some(*after)
}

/// What a retried delivery may take beyond the delay asked for (see [`retry_within_ttl`]).
const RETRY_LANDING_MARGIN: Duration = Duration::from_secs(2);

/// One attempt at one request: what every step needs to know.
struct Job<'a> {
    request: &'a TutorReplyRequest,
    student: UserId,
    attempt: u32,
    started: Instant,
    context: &'a MessageContext,
}

/// Why writing a reply stopped.
enum Stop {
    /// Our side failed (the store, the bus): another delivery may do better.
    Retry(String),
    /// The model is busy and said when to come back (a 429's `Retry-After`), early enough
    /// that the next delivery still lands within the request's time-to-live.
    RetryAfter { why: String, after: Duration },
    /// The reply fails, with the tool calls made on the way.
    Fail {
        reason: String,
        model: Option<String>,
        tool_calls: Vec<ToolCallRecord>,
    },
}

impl Stop {
    fn fail(reason: impl Into<String>) -> Stop {
        Stop::Fail {
            reason: reason.into(),
            model: None,
            tool_calls: Vec::new(),
        }
    }
}

impl From<ContextError> for Stop {
    fn from(e: ContextError) -> Self {
        match e {
            ContextError::Unavailable(why) => Stop::Retry(why),
            ContextError::Unusable(why) => Stop::fail(why),
        }
    }
}

/// The outcome being put together over the rounds of one reply.
struct Reply {
    text: String,
    usage: Usage,
    model: Option<String>,
    tool_calls: Vec<ToolCallRecord>,
}

#[async_trait]
impl Handler for TutorReplies {
    type Payload = TutorReplyRequest;

    async fn handle(
        &self,
        request: TutorReplyRequest,
        context: &MessageContext,
    ) -> Result<(), HandlerError> {
        self.inner.reply(request, context).await
    }
}

impl Inner {
    async fn reply(
        &self,
        request: TutorReplyRequest,
        context: &MessageContext,
    ) -> Result<(), HandlerError> {
        let started = Instant::now();
        if request.task.action() != context.action {
            return Err(HandlerError::Reject(format!(
                "a {:?} task cannot come as {}",
                request.task, context.action
            )));
        }
        let session: TutorSession = self
            .reader
            .load(&request.session_id.to_string())
            .await
            .map_err(|e| HandlerError::Retry(format!("loading the session: {e}")))?;
        let Some(student) = session.student() else {
            return Err(HandlerError::Reject(format!(
                "no tutor session {}",
                request.session_id
            )));
        };
        match session.reply_status(request.request_id) {
            None => {
                return Err(HandlerError::Reject(format!(
                    "session {} never asked for request {}",
                    request.session_id, request.request_id
                )))
            }
            Some(ReplyStatus::Completed | ReplyStatus::Failed) => {
                tracing::info!(request = %request.request_id, "already answered; nothing to do");
                return Ok(());
            }
            Some(ReplyStatus::InFlight) => {}
        }
        let job = Job {
            request: &request,
            student,
            attempt: context.delivery_count.max(1),
            started,
            context,
        };
        let mut out = FrameOut::new(
            self.bus.as_ref(),
            context.correlation_id.clone(),
            student,
            request.session_id,
            request.request_id,
            job.attempt,
            self.settings.frames,
            started,
        );

        let now = Utc::now();
        if request.expired(now) {
            let waited = (now - request.requested_at).num_seconds();
            tracing::warn!(request = %request.request_id, waited, ttl = request.ttl_seconds,
                "tutor request expired before it was taken; answering with an error");
            out.send(FrameStage::Expired, EXPIRED_NOTICE.into(), None)
                .await
                .map_err(retry("sending the expiry frame"))?;
            let reason = format!(
                "expired: waited {waited} s for the engine; the time-to-live is {} s",
                request.ttl_seconds
            );
            return self.fail(&job, reason, None, Vec::new()).await;
        }

        match self.write(&job, &mut out).await {
            Ok(()) => Ok(()),
            Err(Stop::Retry(why)) => Err(HandlerError::Retry(why)),
            Err(Stop::RetryAfter { why, after }) => {
                tracing::info!(request = %request.request_id, %why, ?after,
                    "the model is busy; the request comes back when it asked");
                Err(HandlerError::RetryAfter { why, after })
            }
            Err(Stop::Fail {
                reason,
                model,
                tool_calls,
            }) => {
                tracing::warn!(request = %request.request_id, %reason, "tutor reply failed");
                out.send(FrameStage::Failed, FAILED_NOTICE.into(), None)
                    .await
                    .map_err(retry("sending the failure frame"))?;
                self.fail(&job, reason, model, tool_calls).await
            }
        }
    }

    /// Writes the reply: frames as it streams, the tool calls' callbacks, the final frame,
    /// the completion and the title.
    async fn write(&self, job: &Job<'_>, out: &mut FrameOut<'_>) -> Result<(), Stop> {
        let request = job.request;
        let conversation = self.context.conversation(request).await?;
        let profile = match conversation.kind {
            SessionKind::Default => None,
            SessionKind::Global | SessionKind::ExplainMistake { .. } => {
                self.context.profile(job.student).await?
            }
        };
        let prompted =
            prompting::tutor_messages(&conversation, profile.as_ref(), self.settings.history_turns)
                .map_err(|e| Stop::fail(e.to_string()))?;

        let mut messages = prompted.messages;
        let mut reply = Reply {
            text: String::new(),
            usage: Usage::default(),
            model: None,
            tool_calls: Vec::new(),
        };
        let mut round = 0;
        loop {
            let offer_tools = round < self.settings.max_tool_rounds;
            let chat = ChatRequest {
                messages: messages.clone(),
                tools: if offer_tools {
                    self.tools.specs()
                } else {
                    Vec::new()
                },
                temperature: self.settings.temperature,
                max_tokens: None,
            };
            let completion = match out
                .stream(self.provider.as_ref(), &chat)
                .await
                .map_err(sending("a frame"))?
            {
                Ok(completion) => completion,
                Err(error) => {
                    out.flush().await.map_err(sending("a frame"))?;
                    if let Some(after) = retry_within_ttl(&error, request, Utc::now()) {
                        return Err(Stop::RetryAfter {
                            why: error.to_string(),
                            after,
                        });
                    }
                    return Err(Stop::Fail {
                        reason: error.to_string(),
                        model: reply
                            .model
                            .or_else(|| Some(self.provider.model().to_string())),
                        tool_calls: reply.tool_calls,
                    });
                }
            };
            self.record_usage(job.student, completion.usage).await;
            reply.text.push_str(&completion.text);
            reply.usage.prompt_tokens += completion.usage.prompt_tokens;
            reply.usage.completion_tokens += completion.usage.completion_tokens;
            reply.model = Some(completion.model.clone());
            if completion.tool_calls.is_empty() || !offer_tools {
                break;
            }
            let mut assistant = ChatMessage::new(Speaker::Assistant, completion.text.clone());
            assistant.tool_calls = completion.tool_calls.clone();
            messages.push(assistant);
            for call in &completion.tool_calls {
                let outcome = self.tools.run(call, Utc::now()).await;
                let record = ToolCallRecord {
                    message_id: message_ids::tool_call(
                        request.request_id,
                        job.attempt,
                        reply.tool_calls.len() as u32,
                    ),
                    tool: call.name.clone(),
                    arguments: call.arguments.clone(),
                    result: outcome.result.clone(),
                };
                self.callback(
                    record.message_id.clone(),
                    callback::TUTOR_TOOL_CALLED,
                    &TutorToolCalled {
                        session_id: request.session_id,
                        request_id: request.request_id,
                        call: record.clone(),
                    },
                    job.context,
                )
                .await
                .map_err(sending("a tool call"))?;
                reply.tool_calls.push(record);
                let mut result = ChatMessage::new(Speaker::Tool, outcome.for_model);
                result.tool_call_id = Some(call.id.clone());
                messages.push(result);
            }
            round += 1;
        }
        out.flush().await.map_err(sending("a frame"))?;
        let model = reply
            .model
            .unwrap_or_else(|| self.provider.model().to_string());
        if reply.text.trim().is_empty() {
            return Err(Stop::Fail {
                reason: "the model returned an empty answer".into(),
                model: Some(model),
                tool_calls: reply.tool_calls,
            });
        }
        out.send(FrameStage::Final, reply.text.clone(), None)
            .await
            .map_err(sending("the final frame"))?;
        let latency_ms = job.started.elapsed().as_millis() as u64;
        tracing::info!(request = %request.request_id, %model, latency_ms,
            prompt_tokens = reply.usage.prompt_tokens, completion_tokens = reply.usage.completion_tokens,
            "tutor reply written");
        self.callback(
            message_ids::reply(request.request_id),
            callback::TUTOR_REPLY_COMPLETED,
            &TutorReplyCompleted {
                session_id: request.session_id,
                request_id: request.request_id,
                student_id: job.student,
                text: reply.text,
                model,
                prompt_tokens: reply.usage.prompt_tokens,
                completion_tokens: reply.usage.completion_tokens,
                latency_ms,
                prompts: prompted.prompts,
                tool_calls: reply.tool_calls,
            },
            job.context,
        )
        .await
        .map_err(sending("the reply"))?;
        if !conversation.has_title {
            self.title(request, job.student, &conversation, job.context)
                .await
                .map_err(sending("the title"))?;
        }
        Ok(())
    }

    /// Names the conversation: a fixed title for the global tutor and mistake explanations,
    /// else one the model writes from the student's messages, else the time.
    async fn title(
        &self,
        request: &TutorReplyRequest,
        student: UserId,
        conversation: &Conversation,
        context: &MessageContext,
    ) -> Result<(), BusError> {
        let (title, generated) = match fixed_title(conversation) {
            Some(title) => (title, false),
            None => match self.generate_title(student, conversation).await {
                Some(title) => (title, true),
                None => (fallback_title(Utc::now()), false),
            },
        };
        self.callback(
            message_ids::title(request.request_id),
            callback::SESSION_TITLE_GENERATED,
            &SessionTitleGenerated {
                session_id: request.session_id,
                request_id: request.request_id,
                title,
                generated,
            },
            context,
        )
        .await
    }

    async fn generate_title(&self, student: UserId, conversation: &Conversation) -> Option<String> {
        let messages = match prompting::title_messages(conversation) {
            Ok(messages) => messages,
            Err(error) => {
                tracing::error!(%error, "the title prompt does not render");
                return None;
            }
        };
        let request = ChatRequest {
            messages,
            tools: Vec::new(),
            temperature: Some(0.2),
            max_tokens: Some(60),
        };
        let mut ignore = |_: StreamEvent| {};
        match self.provider.complete(&request, &mut ignore).await {
            Ok(completion) => {
                self.record_usage(student, completion.usage).await;
                let title = parse_title(&completion.text);
                if title.is_none() {
                    // The answer's size only: it is the model's text about the student's words.
                    tracing::warn!(
                        answer_chars = completion.text.chars().count(),
                        "the model's title is not {{\"title\"}}; using the fallback"
                    );
                }
                title
            }
            Err(error) => {
                tracing::warn!(%error, "title generation failed; using the fallback");
                None
            }
        }
    }

    /// Counts a model call's tokens against the student's daily quota.
    async fn record_usage(&self, student: UserId, usage: Usage) {
        if let Some(ledger) = &self.usage {
            let tokens = u64::from(usage.prompt_tokens) + u64::from(usage.completion_tokens);
            ledger.record_tokens(student, tokens).await;
        }
    }

    /// The failure callback.
    async fn fail(
        &self,
        job: &Job<'_>,
        reason: String,
        model: Option<String>,
        tool_calls: Vec<ToolCallRecord>,
    ) -> Result<(), HandlerError> {
        self.callback(
            message_ids::reply(job.request.request_id),
            callback::TUTOR_REPLY_FAILED,
            &TutorReplyFailed {
                session_id: job.request.session_id,
                request_id: job.request.request_id,
                student_id: job.student,
                reason,
                model,
                latency_ms: job.started.elapsed().as_millis() as u64,
                tool_calls,
            },
            job.context,
        )
        .await
        .map_err(retry("sending the failure"))
    }

    async fn callback(
        &self,
        message_id: String,
        action: &str,
        payload: &impl Serialize,
        context: &MessageContext,
    ) -> Result<(), BusError> {
        let mut message = OutgoingMessage::new(
            message_id,
            action,
            serde_json::to_value(payload).expect("a callback serializes"),
        );
        if let Some(correlation) = &context.correlation_id {
            message = message.with_correlation_id(correlation.clone());
        }
        self.bus.send(QueueName::ManagerCallback, message).await
    }
}
