//! The outbox relay: integration messages derived from the event log (DESIGN.md decision 3).
//!
//! A command only appends events; it never writes to the bus, so there is no dual write to
//! get half done. The relay follows the global log like a projection — the gap-safe reader
//! (`teachin_projections::log`) and a checkpoint row of its own, `outbox_relay`, in
//! `projection_checkpoints` (`teachin_projections::checkpoint`) — and turns the events that
//! ask another role for work into bus messages:
//!
//! | event (aggregate) | queue | action | payload |
//! |---|---|---|---|
//! | `AiReplyRequested` (TutorSession), after `StudentMessagePosted` without page context | `engine-queue` | `ProcessingChatMessage` | [`TutorReplyRequest`] with task `chat` |
//! | the same, with page context (the global tutor) | `engine-queue` | `ProcessingGlobalChatMessage` | task `globalChat` |
//! | `AiReplyRequested`, after `MistakeExplanationRequested` | `engine-queue` | `ProcessingExplainMistake` | task `explainMistake` with the exercise and attempt |
//!
//! | `SentencesRequested` (GenerationRequest), word-order game | `engine-queue` | `GenerateSplitSentences` | [`GenerationJob`] |
//! | `SentencesRequested`, typing or speaking game | `engine-queue` | `GenerateSentences` | [`GenerationJob`] |
//! | `WordExplanationRequested` (GenerationRequest) | `engine-queue` | `GenerateWordExplain` | [`GenerationJob`] |
//! | `EmailDraftRequested` (GenerationRequest) | `engine-queue` | `GenerateEmailDraft` | [`GenerationJob`] |
//!
//! | `EmailQueued` (OutgoingEmail) | `accessor-queue` | `SendEmail` | [`SendEmail`], opened |
//!
//! An email is the one message that carries personal data: the accessor has no access to
//! the log, so the relay opens the sealed address, subject and body with the recipient's
//! key (each sealed value names its key holder; the [`KeyRing`] projections use) and puts
//! the plaintext on the queue. An email whose recipient was erased before it was relayed
//! opens to nothing and is logged and skipped: the erasure shredded it, and it must not be
//! sent.
//!
//! The message id is the event's `event_id`, the correlation id the command's.
//!
//! # Delivery: at-least-once, and no duplicates on the queue
//!
//! A batch is read, every message sent, and only then is the checkpoint moved. A crash in
//! between sends the batch again on restart; the bus accepts each message id once, so the
//! queue still holds each message once. No transaction is held open while sending (it would
//! hold every log reader's horizon back). One replica relays at a time, under a session-level
//! advisory lock, as the realtime feed does.
//!
//! An event that does not decode is logged and relayed as nothing, as the feed does: one bad
//! event must not stop every later request (the read models halt on it and report it).

use crate::bus::{Bus, BusError, OutgoingMessage, QueueName};
use crate::contracts::{
    engine, GenerationJob, TutorReplyRequest, TutorTask, TUTOR_REQUEST_TTL_SECONDS,
};
use crate::email::{SendEmail, SEND_EMAIL};
use sqlx::pool::PoolConnection;
use sqlx::{Connection, PgPool, Postgres};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use teachin_domain::generation::GenerationEvent;
use teachin_domain::ids::{RequestId, TutorSessionId};
use teachin_domain::outgoing_email::OutgoingEmailEvent;
use teachin_domain::tutor_session::TutorSessionEvent;
use teachin_domain::vocabulary::GameType;
use teachin_projections::checkpoint;
use teachin_projections::follower::{follow, LeaderLock, Pacing};
use teachin_projections::log::{read_after, EventLog, LogPosition, LoggedEvent};
use teachin_projections::KeyRing;
use tokio::sync::watch;

/// The relay's checkpoint in `public.projection_checkpoints`.
pub const CHECKPOINT: &str = "outbox_relay";

/// The advisory lock that makes one replica the relay ("outbox_r" in ASCII).
const LEADER_LOCK: LeaderLock = LeaderLock(0x6f75_7462_6f78_5f72);

#[derive(Debug, Clone)]
pub struct RelayConfig {
    /// Events read per batch.
    pub batch_size: i64,
    /// The first poll interval when the log is idle; it doubles up to `max_poll`.
    pub min_poll: Duration,
    pub max_poll: Duration,
}

impl Default for RelayConfig {
    fn default() -> Self {
        RelayConfig {
            batch_size: 500,
            min_poll: Duration::from_millis(50),
            max_poll: Duration::from_secs(2),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("bus: {0}")]
    Bus(#[from] BusError),
    #[error("the checkpoint of the outbox relay was moved by someone else")]
    LostOwnership,
}

/// What one step did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    Relayed { messages: usize },
    CaughtUp,
    NotLeader,
}

pub struct OutboxRelay {
    log: EventLog,
    bus: Arc<dyn Bus>,
    config: RelayConfig,
}

impl OutboxRelay {
    pub fn new(pool: PgPool, bus: Arc<dyn Bus>, config: RelayConfig) -> Self {
        OutboxRelay {
            log: EventLog::new(pool),
            bus,
            config,
        }
    }

    /// Relays everything settled after the checkpoint, batch by batch; returns how many
    /// messages were sent (0 as well when another replica is the relay).
    pub async fn relay_pending(&self) -> Result<usize, RelayError> {
        let mut sent = 0;
        loop {
            match self.step(true).await? {
                Step::Relayed { messages } => sent += messages,
                Step::CaughtUp | Step::NotLeader => return Ok(sent),
            }
        }
    }

    /// Test hook: relays the next batch and stops as if the process died before it could
    /// move the checkpoint. Returns how many messages were sent.
    #[doc(hidden)]
    pub async fn relay_batch_then_crash(&self) -> Result<usize, RelayError> {
        Ok(match self.step(false).await? {
            Step::Relayed { messages } => messages,
            Step::CaughtUp | Step::NotLeader => 0,
        })
    }

    /// Relays until `shutdown` turns true (or its sender goes away): woken by the log's
    /// NOTIFY, polling with back-off while idle, retrying with back-off after failures.
    pub async fn run(self, shutdown: watch::Receiver<bool>) {
        let pacing = Pacing {
            min_poll: self.config.min_poll,
            max_poll: self.config.max_poll,
        };
        follow(&self.log, "outbox relay", pacing, shutdown, || async {
            self.step(true)
                .await
                .map(|step| matches!(step, Step::Relayed { .. }))
        })
        .await;
    }

    async fn step(&self, advance: bool) -> Result<Step, RelayError> {
        let mut conn = self.log.pool().acquire().await?;
        checkpoint::ensure(&mut *conn, CHECKPOINT).await?;
        // A panic or a cancellation before `release` closes the connection: the lock dies
        // with its session instead of staying held by an idle pooled connection.
        let Some(mut leader) = LEADER_LOCK.try_acquire(conn).await? else {
            return Ok(Step::NotLeader);
        };
        let outcome = self.step_as_leader(&mut leader, advance).await;
        leader.release().await;
        outcome
    }

    async fn step_as_leader(
        &self,
        conn: &mut PoolConnection<Postgres>,
        advance: bool,
    ) -> Result<Step, RelayError> {
        let from = checkpoint::get(&mut **conn, CHECKPOINT)
            .await?
            .map(|c| c.position)
            .unwrap_or(LogPosition::START);
        let events = read_after(&mut **conn, from, self.config.batch_size).await?;
        let Some(last) = events.last().map(|e| e.position) else {
            return Ok(Step::CaughtUp);
        };
        let messages = self.messages_for(&events).await?;
        for (queue, message) in &messages {
            self.bus.send(*queue, message.clone()).await?;
        }
        if advance {
            let mut tx = conn.begin().await?;
            let current = checkpoint::lock(&mut tx, CHECKPOINT).await?;
            if current.position != from {
                return Err(RelayError::LostOwnership);
            }
            checkpoint::advance(&mut tx, CHECKPOINT, last, events.len() as i64).await?;
            tx.commit().await?;
        }
        Ok(Step::Relayed {
            messages: messages.len(),
        })
    }

    /// The messages a batch of events asks for, in log order.
    pub async fn messages_for(
        &self,
        events: &[LoggedEvent],
    ) -> Result<Vec<(QueueName, OutgoingMessage)>, RelayError> {
        // The event that says what an AiReplyRequested is for is the one just before it in
        // its stream (the same command appended both): in the batch, or else in the log.
        let in_batch: HashMap<(&str, i64), &LoggedEvent> = events
            .iter()
            .filter(|e| e.aggregate_type == "TutorSession")
            .map(|e| ((e.aggregate_id.as_str(), e.sequence), e))
            .collect();
        let mut messages = Vec::new();
        // Keys are read once a batch holds an email, and kept for the rest of it.
        let mut keys: Option<(PoolConnection<Postgres>, KeyRing)> = None;
        for event in events {
            if event.aggregate_type == "GenerationRequest" {
                messages.extend(generation_message(event));
                continue;
            }
            if event.aggregate_type == "OutgoingEmail" {
                let (conn, ring) = match &mut keys {
                    Some(open) => open,
                    None => keys.insert((self.log.pool().acquire().await?, KeyRing::default())),
                };
                messages.extend(email_message(event, conn, ring).await?);
                continue;
            }
            if event.aggregate_type != "TutorSession" || event.event_type != "AiReplyRequested" {
                continue;
            }
            let Some(request_id) = decoded::<TutorSessionEvent>(event).and_then(|e| match e {
                TutorSessionEvent::AiReplyRequested { request_id } => Some(request_id),
                _ => None,
            }) else {
                continue;
            };
            let origin = match in_batch.get(&(event.aggregate_id.as_str(), event.sequence - 1)) {
                Some(origin) => Some((*origin).clone()),
                None => self
                    .log
                    .read_stream("TutorSession", &event.aggregate_id, event.sequence - 2)
                    .await?
                    .into_iter()
                    .find(|e| e.sequence == event.sequence - 1),
            };
            let task = match origin.as_ref().and_then(decoded::<TutorSessionEvent>) {
                Some(TutorSessionEvent::StudentMessagePosted {
                    request_id: asked,
                    page_context,
                    ..
                }) if asked == request_id => {
                    if page_context.is_some() {
                        TutorTask::GlobalChat
                    } else {
                        TutorTask::Chat
                    }
                }
                Some(TutorSessionEvent::MistakeExplanationRequested {
                    request_id: asked,
                    exercise,
                    attempt,
                }) if asked == request_id => TutorTask::ExplainMistake {
                    exercise_id: exercise,
                    attempt_id: attempt,
                },
                _ => {
                    tracing::error!(event_id = %event.event_id, session = %event.aggregate_id,
                        "outbox relay: AiReplyRequested without the event that asked for it; not relayed");
                    continue;
                }
            };
            let Ok(session_id) = event.aggregate_id.parse::<TutorSessionId>() else {
                tracing::error!(event_id = %event.event_id, "outbox relay: session id is not a UUID");
                continue;
            };
            let request = TutorReplyRequest {
                session_id,
                request_id,
                task,
                requested_at: event.recorded_at,
                ttl_seconds: TUTOR_REQUEST_TTL_SECONDS,
            };
            let message = OutgoingMessage::new(
                event.event_id.to_string(),
                task.action(),
                serde_json::to_value(&request).expect("a request serializes"),
            );
            messages.push((QueueName::Engine, with_correlation(message, event)));
        }
        Ok(messages)
    }
}

/// The `engine-queue` message a generation request's event asks for, if any.
fn generation_message(event: &LoggedEvent) -> Option<(QueueName, OutgoingMessage)> {
    let action = match decoded::<GenerationEvent>(event)? {
        GenerationEvent::SentencesRequested {
            game_type: GameType::WordOrder,
            ..
        } => engine::GENERATE_SPLIT_SENTENCES,
        GenerationEvent::SentencesRequested { .. } => engine::GENERATE_SENTENCES,
        GenerationEvent::WordExplanationRequested { .. } => engine::GENERATE_WORD_EXPLAIN,
        GenerationEvent::EmailDraftRequested { .. } => engine::GENERATE_EMAIL_DRAFT,
        _ => return None,
    };
    let Ok(request_id) = event.aggregate_id.parse::<RequestId>() else {
        tracing::error!(event_id = %event.event_id, "outbox relay: generation request id is not a UUID");
        return None;
    };
    let job = GenerationJob {
        request_id,
        requested_at: event.recorded_at,
    };
    Some((
        QueueName::Engine,
        with_correlation(
            OutgoingMessage::new(
                event.event_id.to_string(),
                action,
                serde_json::to_value(job).expect("a job serializes"),
            ),
            event,
        ),
    ))
}

/// The `accessor-queue` message an outgoing email's event asks for: the email, opened.
/// `None` for an email that cannot be opened any more (its recipient was erased).
async fn email_message(
    event: &LoggedEvent,
    conn: &mut PoolConnection<Postgres>,
    keys: &mut KeyRing,
) -> Result<Option<(QueueName, OutgoingMessage)>, sqlx::Error> {
    let Some(OutgoingEmailEvent::EmailQueued {
        sender,
        recipient_email,
        subject,
        body,
    }) = decoded::<OutgoingEmailEvent>(event)
    else {
        return Ok(None);
    };
    let (Some(recipient_email), Some(subject), Some(body)) = (
        keys.open(conn, &recipient_email).await?,
        keys.open(conn, &subject).await?,
        keys.open(conn, &body).await?,
    ) else {
        tracing::warn!(event_id = %event.event_id, email = %event.aggregate_id, %sender,
            "outbox relay: the recipient of a queued email was erased; the email is not sent");
        return Ok(None);
    };
    let job = SendEmail {
        recipient_email,
        subject,
        body,
    };
    Ok(Some((
        QueueName::Accessor,
        with_correlation(
            OutgoingMessage::new(
                event.event_id.to_string(),
                SEND_EMAIL,
                serde_json::to_value(job).expect("an email serializes"),
            ),
            event,
        ),
    )))
}

/// The message with the correlation id of the command that appended `event`.
fn with_correlation(message: OutgoingMessage, event: &LoggedEvent) -> OutgoingMessage {
    match event
        .metadata
        .get("correlation_id")
        .and_then(|v| v.as_str())
    {
        Some(correlation) => message.with_correlation_id(correlation),
        None => message,
    }
}

/// An event decoded to its current type; `None` (logged) if it does not decode.
fn decoded<E: serde::de::DeserializeOwned>(event: &LoggedEvent) -> Option<E> {
    match event.decode::<E>() {
        Ok(decoded) => Some(decoded),
        Err(error) => {
            tracing::error!(event_id = %event.event_id, %error, "outbox relay: event does not decode; not relayed");
            None
        }
    }
}
