//! Streaming one reply to the student while the model writes it: the provider's deltas are
//! batched ([`FrameBatcher`]: about 80 characters or 250 ms) into numbered frames sent on
//! `manager-callback-session-queue`, with a `Tool` frame when the model starts a tool call
//! and one closing frame (`Final` with the whole answer, or `Expired` / `Failed`).
//!
//! The provider hands deltas to a synchronous callback; they go through a channel to this
//! task, which sends frames as they are due — on a delta, or when the oldest buffered text
//! has waited its 250 ms even if the model is silent. Frame ids are derived from the request,
//! the delivery attempt and the sequence ([`message_ids::frame`]).

use crate::ai::frames::FrameBatcher;
use crate::ai::{AiError, AiProvider, ChatRequest, Completion, StreamEvent};
use crate::bus::{Bus, BusError, OutgoingMessage, QueueName};
use crate::contracts::{message_ids, session, FrameStage, TutorReplyFrame};
use std::time::{Duration, Instant};
use teachin_domain::ids::{RequestId, TutorSessionId, UserId};
use tokio::sync::mpsc;

/// How frames are batched.
#[derive(Debug, Clone, Copy)]
pub struct FrameSettings {
    pub max_chars: usize,
    pub max_wait: Duration,
}

impl Default for FrameSettings {
    fn default() -> Self {
        FrameSettings {
            max_chars: 80,
            max_wait: Duration::from_millis(250),
        }
    }
}

/// Where one attempt at one reply sends its frames.
pub struct FrameOut<'a> {
    bus: &'a dyn Bus,
    correlation_id: Option<String>,
    student: UserId,
    session: TutorSessionId,
    request: RequestId,
    attempt: u32,
    next_sequence: u32,
    batcher: FrameBatcher,
    started: Instant,
}

impl<'a> FrameOut<'a> {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        bus: &'a dyn Bus,
        correlation_id: Option<String>,
        student: UserId,
        session: TutorSessionId,
        request: RequestId,
        attempt: u32,
        settings: FrameSettings,
        started: Instant,
    ) -> Self {
        FrameOut {
            bus,
            correlation_id,
            student,
            session,
            request,
            attempt,
            next_sequence: 0,
            batcher: FrameBatcher::new(settings.max_chars, settings.max_wait),
            started,
        }
    }

    /// Sends one frame with the next sequence number. The batcher's own numbering is not
    /// used: tool frames and the closing frame take numbers too.
    pub async fn send(
        &mut self,
        stage: FrameStage,
        delta: String,
        tool_call: Option<String>,
    ) -> Result<(), BusError> {
        let frame = TutorReplyFrame {
            student_id: self.student,
            session_id: self.session,
            request_id: self.request,
            attempt: self.attempt,
            sequence: self.next_sequence,
            stage,
            delta,
            tool_call,
            is_final: stage.is_final(),
            elapsed_ms: self.started.elapsed().as_millis() as u64,
        };
        let mut message = OutgoingMessage::new(
            message_ids::frame(self.request, self.attempt, self.next_sequence),
            session::CHAT_STREAM,
            serde_json::to_value(&frame).expect("a frame serializes"),
        )
        .with_property("session-id", self.session.to_string())
        // The tutor session is the bus session: one manager replica gets the whole stream.
        .with_session_id(self.session.to_string());
        if let Some(correlation) = &self.correlation_id {
            message = message.with_correlation_id(correlation.clone());
        }
        self.bus
            .send(QueueName::ManagerCallbackSession, message)
            .await?;
        self.next_sequence += 1;
        Ok(())
    }

    /// Sends whatever text is buffered.
    pub async fn flush(&mut self) -> Result<(), BusError> {
        match self.batcher.finish() {
            Some(frame) => self.send(FrameStage::Model, frame.text, None).await,
            None => Ok(()),
        }
    }

    async fn take(&mut self, event: StreamEvent) -> Result<(), BusError> {
        match event {
            StreamEvent::Delta(delta) => match self.batcher.push(&delta, Instant::now()) {
                Some(frame) => self.send(FrameStage::Model, frame.text, None).await,
                None => Ok(()),
            },
            StreamEvent::ToolCallStarted { name } => {
                self.flush().await?;
                self.send(FrameStage::Tool, String::new(), Some(name)).await
            }
        }
    }

    async fn tick(&mut self) -> Result<(), BusError> {
        match self.batcher.due(Instant::now()) {
            Some(frame) => self.send(FrameStage::Model, frame.text, None).await,
            None => Ok(()),
        }
    }

    /// Asks `provider` for `request`, sending frames as the answer comes. The outer error is
    /// the bus's (the frames could not be sent); the inner one the provider's.
    pub async fn stream(
        &mut self,
        provider: &dyn AiProvider,
        request: &ChatRequest,
    ) -> Result<Result<Completion, AiError>, BusError> {
        let (events, mut received) = mpsc::unbounded_channel();
        let mut on_event = move |event: StreamEvent| {
            // The receiver outlives the provider's call, so a send cannot fail.
            let _ = events.send(event);
        };
        let completion = provider.complete(request, &mut on_event);
        tokio::pin!(completion);
        let outcome = loop {
            // Far away when nothing is buffered; the branch is then never taken.
            let deadline = self
                .batcher
                .deadline()
                .unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
            tokio::select! {
                biased;
                Some(event) = received.recv() => self.take(event).await?,
                _ = tokio::time::sleep_until(deadline.into()) => self.tick().await?,
                outcome = &mut completion => break outcome,
            }
        };
        while let Ok(event) = received.try_recv() {
            self.take(event).await?;
        }
        Ok(outcome)
    }
}
