//! `manager-callback-session-queue`: the frames of streamed tutor replies, put back in order
//! and pushed to the student's SignalR connections.
//!
//! Frames travel in their tutor session's bus session, so one manager replica gets every frame
//! of a session while it holds it (the bus's session lock, `crate::bus`); within the replica
//! several handlers run at once, so frames still arrive in any order. [`Reorderer`] keeps, per
//! request, the next sequence it expects and buffers the frames that came early; a frame is
//! pushed only after every frame before it. It is bounded:
//! - at most `max_buffered` frames wait per request; past that the gap is skipped (what
//!   waits goes out in order, the missing frames are dropped if they come later);
//! - a gap older than `gap_timeout` is skipped the same way (a frame can be lost for good:
//!   a replica that held the session died — the browser orders frames by `sequenceNumber`
//!   too);
//! - at most `max_streams` requests are tracked; the least recently active are forgotten.
//!
//! A newer delivery attempt of the same request (the engine worker died, the request came
//! back) restarts the stream from sequence 0: the older attempt's leftovers are dropped.
//! Frames after the final one, and repeats, are dropped. The final answer itself also
//! reaches the student through the event log (`ReceiveEvent ChatAiAnswer`, the realtime
//! feed), so a dropped frame never loses the reply.

use super::StreamPush;
use crate::consumer::{Handler, HandlerError, MessageContext};
use crate::contracts::{FrameStage, TutorReplyFrame};
use async_trait::async_trait;
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};
use teachin_domain::ids::RequestId;
use tokio::sync::Mutex;

#[derive(Debug, Clone, Copy)]
pub struct ReorderSettings {
    /// Frames that may wait for an earlier one, per request.
    pub max_buffered: usize,
    /// Requests tracked at once.
    pub max_streams: usize,
    /// How long a gap may hold frames back.
    pub gap_timeout: Duration,
    /// How often stale gaps are looked for.
    pub sweep_every: Duration,
}

impl Default for ReorderSettings {
    fn default() -> Self {
        ReorderSettings {
            max_buffered: 256,
            max_streams: 10_000,
            gap_timeout: Duration::from_secs(2),
            sweep_every: Duration::from_millis(250),
        }
    }
}

#[derive(Debug)]
struct Stream {
    attempt: u32,
    next: u32,
    waiting: BTreeMap<u32, TutorReplyFrame>,
    /// Since when the oldest waiting frame has waited.
    gap_since: Option<Instant>,
    finished: bool,
    touched: Instant,
}

impl Stream {
    fn new(attempt: u32, now: Instant) -> Self {
        Stream {
            attempt,
            next: 0,
            waiting: BTreeMap::new(),
            gap_since: None,
            finished: false,
            touched: now,
        }
    }

    /// Moves every frame that is next in line to `out`.
    fn release(&mut self, out: &mut Vec<TutorReplyFrame>) {
        while let Some(frame) = self.waiting.remove(&self.next) {
            self.next += 1;
            let last = frame.is_final;
            out.push(frame);
            if last {
                self.finished = true;
                self.waiting.clear();
                break;
            }
        }
    }

    /// Gives up on the missing frames before the first waiting one.
    fn skip_gap(&mut self, out: &mut Vec<TutorReplyFrame>) {
        if let Some(first) = self.waiting.keys().next().copied() {
            self.next = first;
            self.release(out);
        }
    }

    fn update_gap(&mut self, now: Instant) {
        if self.waiting.is_empty() {
            self.gap_since = None;
        } else {
            self.gap_since.get_or_insert(now);
        }
    }
}

/// Puts the frames of many requests back in order. Pure: the caller passes the time.
#[derive(Debug)]
pub struct Reorderer {
    settings: ReorderSettings,
    streams: HashMap<RequestId, Stream>,
}

impl Reorderer {
    pub fn new(settings: ReorderSettings) -> Self {
        Reorderer {
            settings,
            streams: HashMap::new(),
        }
    }

    /// Takes a frame received at `now`; returns the frames now due, in order.
    pub fn accept(&mut self, frame: TutorReplyFrame, now: Instant) -> Vec<TutorReplyFrame> {
        let mut out = Vec::new();
        if !self.streams.contains_key(&frame.request_id) {
            self.evict_if_full();
        }
        let stream = self
            .streams
            .entry(frame.request_id)
            .or_insert_with(|| Stream::new(frame.attempt, now));
        stream.touched = now;
        if frame.attempt < stream.attempt {
            return out;
        }
        if frame.attempt > stream.attempt {
            *stream = Stream::new(frame.attempt, now);
        }
        if stream.finished || frame.sequence < stream.next {
            return out;
        }
        stream.waiting.insert(frame.sequence, frame);
        stream.release(&mut out);
        while stream.waiting.len() > self.settings.max_buffered {
            stream.skip_gap(&mut out);
        }
        stream.update_gap(now);
        out
    }

    /// The frames held back by gaps older than the timeout, in order per request.
    pub fn flush_stale(&mut self, now: Instant) -> Vec<TutorReplyFrame> {
        let mut out = Vec::new();
        for stream in self.streams.values_mut() {
            if matches!(stream.gap_since, Some(since) if now.duration_since(since) >= self.settings.gap_timeout)
            {
                stream.gap_since = None;
                stream.skip_gap(&mut out);
                stream.update_gap(now);
            }
        }
        out
    }

    /// How many requests are tracked.
    pub fn streams(&self) -> usize {
        self.streams.len()
    }

    /// Forgets the least recently active tenth when the table is full.
    fn evict_if_full(&mut self) {
        if self.streams.len() < self.settings.max_streams {
            return;
        }
        let mut by_age: Vec<(Instant, RequestId)> = self
            .streams
            .iter()
            .map(|(id, s)| (s.touched, *id))
            .collect();
        by_age.sort();
        let drop = (self.settings.max_streams / 10).max(1);
        for (_, id) in by_age.into_iter().take(drop) {
            self.streams.remove(&id);
        }
    }
}

/// The SignalR `StreamEvent` argument for a frame (original-system.md §5): `{eventType:
/// "ChatAiAnswer", payload, sequenceNumber, stage: First|Chunk|Last|Error, requestId}`, the
/// payload shaped like the original's `EngineChatStreamResponse`, camelCase, plus `attempt`.
pub fn stream_event(frame: &TutorReplyFrame) -> Value {
    let (engine_stage, hub_stage) = match frame.stage {
        FrameStage::Model | FrameStage::Tool if frame.sequence == 0 => {
            (stage_name(frame.stage), "First")
        }
        FrameStage::Model | FrameStage::Tool => (stage_name(frame.stage), "Chunk"),
        FrameStage::Final => ("Final", "Last"),
        FrameStage::Expired => ("Expired", "Error"),
        FrameStage::Failed => ("Failed", "Error"),
    };
    json!({
        "eventType": "ChatAiAnswer",
        "payload": {
            "requestId": frame.request_id,
            "threadId": frame.session_id,
            "userId": frame.student_id,
            "sequence": frame.sequence,
            "attempt": frame.attempt,
            "delta": frame.delta,
            "toolCall": frame.tool_call,
            "toolResult": Value::Null,
            "isFinal": frame.is_final,
            "stage": engine_stage,
            "elapsedMs": frame.elapsed_ms,
        },
        "sequenceNumber": frame.sequence,
        "stage": hub_stage,
        "requestId": frame.request_id,
    })
}

fn stage_name(stage: FrameStage) -> &'static str {
    match stage {
        FrameStage::Model => "Model",
        FrameStage::Tool => "Tool",
        FrameStage::Final => "Final",
        FrameStage::Expired => "Expired",
        FrameStage::Failed => "Failed",
    }
}

/// The reorderer and the push, shared by the frame handlers and the sweeper. Frames are
/// pushed while the lock is held, so two handlers cannot interleave their releases.
#[derive(Clone)]
pub struct FramePusher {
    reorderer: Arc<Mutex<Reorderer>>,
    push: Arc<dyn StreamPush>,
}

impl FramePusher {
    pub fn new(settings: ReorderSettings, push: Arc<dyn StreamPush>) -> Self {
        FramePusher {
            reorderer: Arc::new(Mutex::new(Reorderer::new(settings))),
            push,
        }
    }

    pub async fn accept(&self, frame: TutorReplyFrame) {
        let mut reorderer = self.reorderer.lock().await;
        let due = reorderer.accept(frame, Instant::now());
        self.push_all(due).await;
    }

    /// Pushes what stale gaps held back.
    pub async fn sweep(&self) {
        let mut reorderer = self.reorderer.lock().await;
        let due = reorderer.flush_stale(Instant::now());
        self.push_all(due).await;
    }

    async fn push_all(&self, frames: Vec<TutorReplyFrame>) {
        for frame in frames {
            self.push
                .push_frame(frame.student_id, stream_event(&frame))
                .await;
        }
    }
}

#[async_trait]
impl Handler for FramePusher {
    type Payload = TutorReplyFrame;

    async fn handle(&self, frame: TutorReplyFrame, _: &MessageContext) -> Result<(), HandlerError> {
        self.accept(frame).await;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use teachin_domain::ids::{TutorSessionId, UserId};

    fn frame(
        request: RequestId,
        attempt: u32,
        sequence: u32,
        stage: FrameStage,
    ) -> TutorReplyFrame {
        TutorReplyFrame {
            student_id: UserId::default(),
            session_id: TutorSessionId::default(),
            request_id: request,
            attempt,
            sequence,
            stage,
            delta: format!("{attempt}:{sequence}"),
            tool_call: None,
            is_final: stage.is_final(),
            elapsed_ms: 0,
        }
    }

    fn deltas(frames: &[TutorReplyFrame]) -> Vec<&str> {
        frames.iter().map(|f| f.delta.as_str()).collect()
    }

    fn settings() -> ReorderSettings {
        ReorderSettings {
            max_buffered: 3,
            max_streams: 10,
            gap_timeout: Duration::from_secs(2),
            sweep_every: Duration::from_millis(250),
        }
    }

    #[test]
    fn early_frames_wait_for_the_ones_before_them() {
        let t = Instant::now();
        let r1 = RequestId::new();
        let mut reorderer = Reorderer::new(settings());
        assert!(reorderer
            .accept(frame(r1, 1, 2, FrameStage::Model), t)
            .is_empty());
        assert!(reorderer
            .accept(frame(r1, 1, 1, FrameStage::Tool), t)
            .is_empty());
        assert_eq!(
            deltas(&reorderer.accept(frame(r1, 1, 0, FrameStage::Model), t)),
            ["1:0", "1:1", "1:2"]
        );
        // A repeat is dropped; the final frame ends the stream.
        assert!(reorderer
            .accept(frame(r1, 1, 1, FrameStage::Model), t)
            .is_empty());
        assert_eq!(
            deltas(&reorderer.accept(frame(r1, 1, 3, FrameStage::Final), t)),
            ["1:3"]
        );
        assert!(reorderer
            .accept(frame(r1, 1, 4, FrameStage::Model), t)
            .is_empty());
    }

    #[test]
    fn a_newer_attempt_restarts_the_stream_and_older_leftovers_are_dropped() {
        let t = Instant::now();
        let r = RequestId::new();
        let mut reorderer = Reorderer::new(settings());
        assert_eq!(
            deltas(&reorderer.accept(frame(r, 1, 0, FrameStage::Model), t)),
            ["1:0"]
        );
        assert!(reorderer
            .accept(frame(r, 1, 2, FrameStage::Model), t)
            .is_empty());
        assert_eq!(
            deltas(&reorderer.accept(frame(r, 2, 0, FrameStage::Model), t)),
            ["2:0"]
        );
        assert!(reorderer
            .accept(frame(r, 1, 1, FrameStage::Model), t)
            .is_empty());
        assert_eq!(
            deltas(&reorderer.accept(frame(r, 2, 1, FrameStage::Final), t)),
            ["2:1"]
        );
    }

    #[test]
    fn a_gap_is_skipped_when_too_many_wait_or_it_is_too_old() {
        let t = Instant::now();
        let r = RequestId::new();
        let mut reorderer = Reorderer::new(settings());
        for sequence in 1..=3 {
            assert!(reorderer
                .accept(frame(r, 1, sequence, FrameStage::Model), t)
                .is_empty());
        }
        // The fourth waiting frame is one too many: frame 0 is given up.
        assert_eq!(
            deltas(&reorderer.accept(frame(r, 1, 4, FrameStage::Model), t)),
            ["1:1", "1:2", "1:3", "1:4"]
        );
        assert!(reorderer
            .accept(frame(r, 1, 0, FrameStage::Model), t)
            .is_empty());

        let late = RequestId::new();
        assert!(reorderer
            .accept(frame(late, 1, 1, FrameStage::Final), t)
            .is_empty());
        assert!(reorderer
            .flush_stale(t + Duration::from_millis(1999))
            .is_empty());
        assert_eq!(
            deltas(&reorderer.flush_stale(t + Duration::from_secs(2))),
            ["1:1"]
        );
        assert!(reorderer
            .accept(frame(late, 1, 0, FrameStage::Model), t)
            .is_empty());
    }

    #[test]
    fn the_least_recently_active_requests_are_forgotten_when_full() {
        let t = Instant::now();
        let mut reorderer = Reorderer::new(settings());
        let first = RequestId::new();
        reorderer.accept(frame(first, 1, 0, FrameStage::Model), t);
        for i in 1..10 {
            reorderer.accept(
                frame(RequestId::new(), 1, 0, FrameStage::Model),
                t + Duration::from_millis(i),
            );
        }
        assert_eq!(reorderer.streams(), 10);
        reorderer.accept(
            frame(RequestId::new(), 1, 0, FrameStage::Model),
            t + Duration::from_millis(20),
        );
        assert_eq!(reorderer.streams(), 10);
        // The oldest was forgotten: its next frame starts it afresh, waiting for frame 0.
        assert!(reorderer
            .accept(
                frame(first, 1, 1, FrameStage::Model),
                t + Duration::from_millis(21)
            )
            .is_empty());
    }

    #[test]
    fn a_frame_becomes_the_originals_stream_event() {
        let r = RequestId::new();
        let first = stream_event(&frame(r, 1, 0, FrameStage::Model));
        assert_eq!(first["eventType"], "ChatAiAnswer");
        assert_eq!(first["stage"], "First");
        assert_eq!(first["sequenceNumber"], 0);
        assert_eq!(first["requestId"], r.to_string());
        assert_eq!(first["payload"]["stage"], "Model");
        assert_eq!(first["payload"]["isFinal"], false);
        assert_eq!(
            stream_event(&frame(r, 1, 1, FrameStage::Tool))["stage"],
            "Chunk"
        );
        let last = stream_event(&frame(r, 1, 2, FrameStage::Final));
        assert_eq!(
            (last["stage"].as_str(), last["payload"]["isFinal"].as_bool()),
            (Some("Last"), Some(true))
        );
        assert_eq!(
            stream_event(&frame(r, 1, 0, FrameStage::Expired))["stage"],
            "Error"
        );
        assert_eq!(
            stream_event(&frame(r, 1, 3, FrameStage::Failed))["payload"]["stage"],
            "Failed"
        );
    }
}
