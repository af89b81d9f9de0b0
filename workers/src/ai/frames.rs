//! Batching a streamed answer into frames for the browser: one push per token would flood
//! the hub and the student's connection, one push per answer would not stream at all. Like
//! the original, a frame goes out when about 80 characters have gathered or 250 ms have
//! passed since the first of them; frames are numbered so the manager can put them back in
//! order: a session's frames go to one manager replica at a time (`bus_sessions` leases), but
//! a hand-over or a redelivery can still bring one early.
//!
//! The batcher is pure: the caller passes the time, so tests need no clock.

use serde::Serialize;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Frame {
    /// 0, 1, 2... within one answer.
    pub sequence: u32,
    pub text: String,
}

#[derive(Debug)]
pub struct FrameBatcher {
    max_chars: usize,
    max_wait: Duration,
    buffer: String,
    buffered_chars: usize,
    first_at: Option<Instant>,
    next_sequence: u32,
}

impl Default for FrameBatcher {
    fn default() -> Self {
        FrameBatcher::new(80, Duration::from_millis(250))
    }
}

impl FrameBatcher {
    pub fn new(max_chars: usize, max_wait: Duration) -> Self {
        FrameBatcher {
            max_chars: max_chars.max(1),
            max_wait,
            buffer: String::new(),
            buffered_chars: 0,
            first_at: None,
            next_sequence: 0,
        }
    }

    /// Adds a delta received at `now`; returns a frame if one is due.
    pub fn push(&mut self, delta: &str, now: Instant) -> Option<Frame> {
        if delta.is_empty() {
            return self.due(now);
        }
        self.first_at.get_or_insert(now);
        self.buffer.push_str(delta);
        self.buffered_chars += delta.chars().count();
        if self.buffered_chars >= self.max_chars {
            return self.flush();
        }
        self.due(now)
    }

    /// A frame if the oldest buffered text has waited long enough (call on a timer).
    pub fn due(&mut self, now: Instant) -> Option<Frame> {
        match self.first_at {
            Some(first) if now.duration_since(first) >= self.max_wait => self.flush(),
            _ => None,
        }
    }

    /// When [`FrameBatcher::due`] will next have a frame, if anything is buffered.
    pub fn deadline(&self) -> Option<Instant> {
        self.first_at.map(|first| first + self.max_wait)
    }

    /// Whatever is left, at the end of the answer.
    pub fn finish(&mut self) -> Option<Frame> {
        self.flush()
    }

    /// The sequence number the next frame will carry (e.g. for the final frame).
    pub fn next_sequence(&self) -> u32 {
        self.next_sequence
    }

    fn flush(&mut self) -> Option<Frame> {
        if self.buffer.is_empty() {
            return None;
        }
        self.first_at = None;
        self.buffered_chars = 0;
        let frame = Frame {
            sequence: self.next_sequence,
            text: std::mem::take(&mut self.buffer),
        };
        self.next_sequence += 1;
        Some(frame)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_frame_goes_out_at_80_characters_or_after_250_ms() {
        let t0 = Instant::now();
        let mut batcher = FrameBatcher::default();
        assert_eq!(batcher.push("שלום ", t0), None);
        assert_eq!(batcher.deadline(), Some(t0 + Duration::from_millis(250)));
        assert_eq!(batcher.due(t0 + Duration::from_millis(249)), None);
        let first = batcher.due(t0 + Duration::from_millis(250)).unwrap();
        assert_eq!((first.sequence, first.text.as_str()), (0, "שלום "));
        assert_eq!(batcher.deadline(), None);

        // Counted in characters, not bytes: 79 Hebrew letters are not yet a frame.
        let t1 = t0 + Duration::from_secs(1);
        assert_eq!(batcher.push(&"א".repeat(79), t1), None);
        let second = batcher.push("ב", t1).unwrap();
        assert_eq!((second.sequence, second.text.chars().count()), (1, 80));

        assert_eq!(batcher.push("end", t1), None);
        assert_eq!(
            batcher.finish().unwrap(),
            Frame {
                sequence: 2,
                text: "end".into()
            }
        );
        assert_eq!(batcher.finish(), None);
        assert_eq!(batcher.next_sequence(), 3);
    }

    #[test]
    fn the_wait_counts_from_the_first_buffered_delta() {
        let t0 = Instant::now();
        let mut batcher = FrameBatcher::default();
        batcher.push("a", t0);
        assert_eq!(batcher.push("b", t0 + Duration::from_millis(200)), None);
        let frame = batcher.push("c", t0 + Duration::from_millis(260)).unwrap();
        assert_eq!(frame.text, "abc");
    }
}
