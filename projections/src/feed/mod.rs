//! The realtime feed: a checkpointed subscriber of the global log that turns events into
//! notifications for browsers and publishes them on a Redis pub/sub channel, so every manager
//! replica can push them to the connections it holds (DESIGN.md decisions 2 and 5).
//!
//! ```text
//! events ──read_after──▶ FeedPublisher ──PUBLISH teachin:{namespace}:feed──▶ Redis
//!                          │ checkpoint "realtime_feed"                        │
//!                          │ + feed_session_owners (same transaction)          ▼
//!                                                    every replica: FeedSubscriber ──▶ hub
//! ```
//!
//! # Delivery: at-least-once, deduplicated by event id
//!
//! The publisher reads a batch after its checkpoint with the gap-safe reader, publishes each
//! notification, and only *then* moves its checkpoint. A crash in between publishes the batch
//! again on restart — duplicates, never losses. [`FeedSubscriber`] drops those duplicates by
//! `(id, part)` — the event id, and the index of the notification among that event's — with a
//! bounded set of recently seen keys ([`RecentIds`], 10 000 by default).
//!
//! Only one replica publishes at a time: a batch runs under a session-level advisory lock, so
//! the others' steps return at once. No transaction is held open while Redis is written to
//! (an open transaction with an id would hold every log reader's horizon back).
//!
//! Redis pub/sub itself delivers at most once to whoever is subscribed at the moment: a
//! replica that is disconnected when a notification is published does not receive it.
//!
//! # The mapping (see [`notifications_for`])
//!
//! | event (aggregate) | method | target | payload |
//! |---|---|---|---|
//! | `AchievementUnlocked` (AchievementProgress) | `ReceiveEvent` | the student (the stream id) | `{eventType:"AchievementUnlocked", payload:{key, name, description, feature, target}}` |
//! | `AiReplyCompleted` (TutorSession) | `ReceiveEvent` | the session's student | `{eventType:"ChatAiAnswer", payload:{requestId, threadId, text (opened), model, stage:"Last"}}` |
//! | `AiReplyFailed` (TutorSession) | `ReceiveEvent` | the session's student | `{eventType:"ChatAiAnswer", payload:{requestId, threadId, model, stage:"Error", error}}` |
//! | `ExerciseGenerated` (Exercise), typing or speaking | `ReceiveEvent` | the student | `{eventType:"SentenceGeneration", payload:{requestId, exercises:[{exerciseId, gameType, text, words, difficulty, nikud}]}}` |
//! | `ExerciseGenerated` (Exercise), word order | `ReceiveEvent` | the student | `{eventType:"SplitSentenceGeneration", payload: as above}` |
//! | `StudentAssigned` (TeacherStudents) | `NotificationMessage` | the student | `{message, type:"Info", timestamp, teacherId}` |
//! | `StudentUnassigned` (TeacherStudents) | `NotificationMessage` | the student | `{message, type:"Info", timestamp, teacherId}` |
//! | `MemberAdded` (Classroom) | `NotificationMessage` | the member | `{message, type:"Info", timestamp, classroomId}` |
//! | `MemberRemoved` (Classroom) | `NotificationMessage` | the former member | `{message, type:"Info", timestamp, classroomId}` |
//! | `RoleChanged` (User) | `NotificationMessage` | the user | `{message, type:"Info", timestamp}` |
//! | `UserRegistered` (User) | `NotificationMessage` | group `Admins` | `{message (role and opened name), type:"Info", timestamp, userId, role}` |
//! | `WordExplained` (GenerationRequest) | `ReceiveEvent` | the requester | `{eventType:"WordExplain", payload:{id, definition, explanation}}` (opened) |
//! | `EmailDrafted` (GenerationRequest) | `ReceiveEvent` | the requester | `{eventType:"EmailDraftGenerated", payload:{requestId, subject, body}}` (opened) |
//! | `GenerationFailed` (GenerationRequest) | `NotificationMessage` | the requester | `{message, type:"Error", timestamp, requestId, reason}` |
//! | anything else | — | — | nothing |
//!
//! The session's student is known from `TutorSessionStarted`, a request's requester from its
//! `…Requested` event; the feed keeps them in its own
//! table, `public.feed_session_owners`, written in the transaction that moves its checkpoint,
//! so it depends on no other projection's progress. Personal data is opened with the
//! [`KeyRing`](crate::KeyRing); an erased person's text shows as `[erased]`.
//!
//! An event that does not decode is logged and mapped to nothing: a realtime push is not worth
//! stopping every later one for (the read models halt on such events and report them).
//!
//! Presence (`UserOnline`, `UserOffline`, `UpdateUserConnections`) and streamed reply frames
//! (`StreamEvent`) are not log events; the hub publishes those itself.

mod dedupe;
mod mapping;
mod publisher;
mod subscriber;

pub use dedupe::RecentIds;
pub use mapping::{notifications_for, sealed_to_open, session_started, FeedLookup};
pub use publisher::{FeedPublisher, CHECKPOINT};
pub use subscriber::FeedSubscriber;

use crate::log::LogPosition;
use serde::{Deserialize, Serialize};
use std::time::Duration;
use teachin_domain::ids::UserId;
use uuid::Uuid;

/// The group every admin's connections join (the original's `SubscribeAdmin`).
pub const ADMINS_GROUP: &str = "Admins";

/// How many notification keys a subscriber remembers to drop duplicates.
pub const DEFAULT_RECENT_IDS: usize = 10_000;

/// Who a notification is for.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Target {
    /// Every connection of one user.
    User(UserId),
    /// Every connection in a hub group (`Admins`).
    Group(String),
}

/// One push for the hub: call `method` with `payload` on the connections of `target`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Notification {
    /// The id of the event it comes from: with `part`, the dedupe key.
    pub id: Uuid,
    /// Which of the event's notifications this is (0 for the first).
    #[serde(default)]
    pub part: u32,
    pub target: Target,
    /// The SignalR client method: `ReceiveEvent`, `NotificationMessage`...
    pub method: String,
    /// The method's argument, camelCase as the portals expect.
    pub payload: serde_json::Value,
    /// Where the event is in the log.
    #[serde(with = "position_text")]
    pub position: LogPosition,
}

impl Notification {
    /// The key duplicates are recognised by.
    pub fn key(&self) -> (Uuid, u32) {
        (self.id, self.part)
    }
}

/// The pub/sub channel of an environment: `teachin:{namespace}:feed`.
pub fn channel(namespace: &str) -> String {
    format!("teachin:{namespace}:feed")
}

/// The publisher's settings.
#[derive(Debug, Clone)]
pub struct FeedConfig {
    /// One per environment (`dev`, `prod`, a dynamic environment's name).
    pub namespace: String,
    /// Events read per batch.
    pub batch_size: i64,
    /// The first poll interval when the log is idle; it doubles up to `max_poll`.
    pub min_poll: Duration,
    pub max_poll: Duration,
    /// How long one PUBLISH may take before the batch is given up (and retried).
    pub publish_timeout: Duration,
}

impl FeedConfig {
    pub fn new(namespace: impl Into<String>) -> Self {
        FeedConfig {
            namespace: namespace.into(),
            batch_size: 500,
            min_poll: Duration::from_millis(50),
            max_poll: Duration::from_secs(2),
            publish_timeout: Duration::from_secs(5),
        }
    }

    pub fn channel(&self) -> String {
        channel(&self.namespace)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum FeedError {
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("redis: {0}")]
    Redis(#[from] fred::error::Error),
    #[error("publishing to redis timed out")]
    Timeout,
    #[error("notification does not serialize: {0}")]
    Serialize(#[from] serde_json::Error),
    #[error("the checkpoint of the realtime feed was moved by someone else")]
    LostOwnership,
}

/// `LogPosition` travels as its text form, `transaction/position`.
mod position_text {
    use crate::log::LogPosition;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(p: &LogPosition, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(p)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<LogPosition, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_notification_round_trips_as_json() {
        let n = Notification {
            id: Uuid::new_v4(),
            part: 1,
            target: Target::User(UserId::new()),
            method: "ReceiveEvent".into(),
            payload: serde_json::json!({"eventType": "ChatAiAnswer"}),
            position: LogPosition {
                transaction_id: 7,
                global_position: 42,
            },
        };
        let text = serde_json::to_string(&n).unwrap();
        assert!(text.contains("\"position\":\"7/42\""), "{text}");
        assert!(text.contains("\"target\":{\"user\":"), "{text}");
        assert_eq!(serde_json::from_str::<Notification>(&text).unwrap(), n);
        let group = serde_json::to_value(Target::Group(ADMINS_GROUP.into())).unwrap();
        assert_eq!(group, serde_json::json!({"group": "Admins"}));
        assert_eq!(channel("dev"), "teachin:dev:feed");
    }
}
