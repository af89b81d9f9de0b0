//! Session replay and time travel, for teachers (reference §9): a tutor conversation
//! (`TutorSession` stream) or a practice session (`Exercise` stream), event by event, as it
//! was at any version or instant, and re-played at its original pace.
//!
//! - [`SessionReplay::history`] — every event of a stream with who did it, as part of what,
//!   and its payload with personal data opened (`[erased]` once the person was erased).
//! - [`SessionReplay::state_as_of`] — the domain aggregate folded up to a version or an
//!   instant, plus a presentable view of it (the conversation so far; the attempts so far).
//! - [`paced`] — a history re-emitted with its original spacing, sped up.
//!
//! # Snapshots
//!
//! The fold starts from the stream's snapshot in `public.snapshots` (the serialized aggregate
//! after event `last_sequence`) when the requested version is at or after it. A snapshot is
//! used only if it deserializes and is *sound*: cqrs-es 0.5 applies a command's events to the
//! aggregate twice when it writes a snapshot (once through `EventSink::write` while handling,
//! again in `update_snapshot_with_events`), so a snapshot can hold a request or an attempt
//! twice. Both session aggregates key those entries by id, so a duplicate id marks the
//! snapshot as damaged and the replay folds from the first event instead.
//!
//! The tutor aggregate keeps no text (the conversation lives in the events), so a tutor
//! state reads the stream up to the version for its transcript anyway; the snapshot only
//! spares folding. A practice aggregate holds every attempt, so there the snapshot spares
//! reading the events before it.
//!
//! Authorization (a teacher sees only their students) is the API's business, not this one's.

use crate::log::{EventLog, LoggedEvent};
use crate::projection::KeyRing;
use chrono::{DateTime, Utc};
use cqrs_es::Aggregate;
use futures::Stream;
use serde::Serialize;
use serde_json::Value;
use sqlx::{PgConnection, PgPool};
use std::collections::HashMap;
use std::time::Duration;
use teachin_domain::ids::{AttemptId, ExerciseId, RequestId, UserId};
use teachin_domain::personal_data::Sealed;
use teachin_domain::practice::Exercise;
use teachin_domain::tutor_session::{ReplyStatus, TutorSession, TutorSessionEvent};
use teachin_domain::vocabulary::{Difficulty, GameType};
use uuid::Uuid;

/// The two kinds of session a teacher replays.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "graphql", derive(async_graphql::Enum))]
pub enum SessionType {
    /// A tutor conversation: the `TutorSession` stream.
    Tutor,
    /// One exercise and its attempts: the `Exercise` stream.
    Practice,
}

impl SessionType {
    pub fn aggregate_type(self) -> &'static str {
        match self {
            SessionType::Tutor => TutorSession::TYPE,
            SessionType::Practice => Exercise::TYPE,
        }
    }
}

/// One event of a session, ready to show.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ReplayEvent {
    pub sequence: i64,
    pub event_type: String,
    pub recorded_at: DateTime<Utc>,
    /// Who issued the command (`user:<id>:<role>`, `system`...), from the metadata.
    pub actor: String,
    /// The interaction the event was part of.
    pub correlation_id: Option<Uuid>,
    /// The event's fields (upcast to the current version), sealed values opened — or
    /// `"[erased]"`.
    pub payload_view: Value,
}

/// Which point of a session to show.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AsOf {
    /// After the event with this sequence number (0: before the first).
    Version(i64),
    /// After every event recorded at or before this instant.
    Instant(DateTime<Utc>),
}

/// A session at one point of its history.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SessionState {
    pub session_type: SessionType,
    pub id: String,
    /// The sequence of the last event included (0: none).
    pub version: i64,
    /// When that event was recorded.
    pub recorded_at: Option<DateTime<Utc>>,
    /// The version of the snapshot the fold started from, if it used one.
    pub snapshot_version: Option<i64>,
    /// How many events were applied to the aggregate (after the snapshot, if any).
    pub events_applied: usize,
    #[serde(skip)]
    pub aggregate: SessionAggregate,
    pub view: SessionView,
}

/// The domain aggregate itself.
#[derive(Debug, Clone, PartialEq)]
pub enum SessionAggregate {
    Tutor(TutorSession),
    Practice(Exercise),
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "camelCase")]
pub enum SessionView {
    Tutor(TutorView),
    Practice(PracticeView),
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TutorView {
    pub student: Option<UserId>,
    /// `Default`, `Global` or `ExplainMistake`.
    pub kind: Option<String>,
    pub title: Option<String>,
    /// The engine still owes a reply.
    pub awaiting_reply: bool,
    pub messages: Vec<MessageView>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum MessageRole {
    Student,
    Tutor,
}

/// One turn of the conversation.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MessageView {
    pub sequence: i64,
    pub recorded_at: DateTime<Utc>,
    pub role: MessageRole,
    pub request_id: RequestId,
    /// The text, opened (`[erased]` once the student was erased); `None` for a request to
    /// explain a mistake and for a failed reply.
    pub text: Option<String>,
    /// The attempt a mistake explanation was asked for.
    pub explains: Option<(ExerciseId, AttemptId)>,
    pub model: Option<String>,
    /// Why the tutor could not answer.
    pub failure: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PracticeView {
    pub student: Option<UserId>,
    pub game_type: Option<GameType>,
    pub difficulty: Option<Difficulty>,
    pub nikud: Option<bool>,
    pub correct_answer: Vec<String>,
    pub solved: bool,
    pub attempts: Vec<AttemptView>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AttemptView {
    pub attempt_id: AttemptId,
    pub attempt_number: u32,
    /// What the student answered; `None` once the student was erased.
    pub given_answer: Option<Vec<String>>,
    pub accuracy: f64,
    pub correct: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error("no such session")]
    NotFound,
    #[error(transparent)]
    Database(#[from] sqlx::Error),
    #[error("{0}")]
    Undecodable(String),
}

impl From<crate::projection::ApplyError> for ReplayError {
    fn from(error: crate::projection::ApplyError) -> Self {
        match error {
            crate::projection::ApplyError::Database(e) => ReplayError::Database(e),
            other => ReplayError::Undecodable(other.to_string()),
        }
    }
}

/// Reads sessions' histories and past states.
#[derive(Clone)]
pub struct SessionReplay {
    log: EventLog,
    use_snapshots: bool,
}

impl SessionReplay {
    pub fn new(pool: PgPool) -> Self {
        SessionReplay {
            log: EventLog::new(pool),
            use_snapshots: true,
        }
    }

    /// A replay that always folds from the first event.
    pub fn without_snapshots(mut self) -> Self {
        self.use_snapshots = false;
        self
    }

    /// Every event of one stream, oldest first.
    pub async fn history(
        &self,
        aggregate_type: &str,
        aggregate_id: &str,
    ) -> Result<Vec<ReplayEvent>, ReplayError> {
        let events = self
            .log
            .read_stream(aggregate_type, aggregate_id, 0)
            .await?;
        let mut views = Vec::with_capacity(events.len());
        let mut sealed = Vec::new();
        for event in &events {
            let payload = variant_fields(event.decode::<Value>()?, &event.event_type);
            collect_sealed(&payload, &mut sealed);
            views.push(payload);
        }
        let mut conn = self.log.pool().acquire().await?;
        let opened = open_all(&mut conn, sealed).await?;
        Ok(events
            .iter()
            .zip(views)
            .map(|(event, mut payload_view)| {
                replace_sealed(&mut payload_view, &opened);
                ReplayEvent {
                    sequence: event.sequence,
                    event_type: event.event_type.clone(),
                    recorded_at: event.recorded_at,
                    actor: event.issued_by().to_string(),
                    correlation_id: event
                        .metadata
                        .get("correlation_id")
                        .and_then(Value::as_str)
                        .and_then(|s| s.parse().ok()),
                    payload_view,
                }
            })
            .collect())
    }

    /// The session as it was at `as_of`. A version past the end means the latest state.
    pub async fn state_as_of(
        &self,
        session_type: SessionType,
        id: &str,
        as_of: AsOf,
    ) -> Result<SessionState, ReplayError> {
        let aggregate_type = session_type.aggregate_type();
        let (version, recorded_at) = self.resolve(aggregate_type, id, as_of).await?;
        let snapshot = self.snapshot(aggregate_type, id, version).await?;
        let mut conn = self.log.pool().acquire().await?;
        match session_type {
            SessionType::Tutor => {
                // The transcript needs every event up to the version.
                let events = self.events_until(aggregate_type, id, 0, version).await?;
                let start = usable::<TutorSession>(snapshot, sound_tutor);
                let (aggregate, snapshot_version, applied) = fold(start, &events)?;
                let view = tutor_view(&mut conn, &aggregate, &events).await?;
                Ok(SessionState {
                    session_type,
                    id: id.to_string(),
                    version,
                    recorded_at,
                    snapshot_version,
                    events_applied: applied,
                    aggregate: SessionAggregate::Tutor(aggregate),
                    view: SessionView::Tutor(view),
                })
            }
            SessionType::Practice => {
                let start = usable::<Exercise>(snapshot, sound_practice);
                let after = start.as_ref().map_or(0, |(v, _)| *v);
                let events = self
                    .events_until(aggregate_type, id, after, version)
                    .await?;
                let (aggregate, snapshot_version, applied) = fold(start, &events)?;
                let view = practice_view(&mut conn, &aggregate).await?;
                Ok(SessionState {
                    session_type,
                    id: id.to_string(),
                    version,
                    recorded_at,
                    snapshot_version,
                    events_applied: applied,
                    aggregate: SessionAggregate::Practice(aggregate),
                    view: SessionView::Practice(view),
                })
            }
        }
    }

    /// The version `as_of` names, and when that event was recorded.
    async fn resolve(
        &self,
        aggregate_type: &str,
        id: &str,
        as_of: AsOf,
    ) -> Result<(i64, Option<DateTime<Utc>>), ReplayError> {
        let (limit, instant) = match as_of {
            AsOf::Version(n) => (Some(n.max(0)), None),
            AsOf::Instant(at) => (None, Some(at)),
        };
        let (exists, row): (bool, Option<(i64, DateTime<Utc>)>) = {
            let exists: bool = sqlx::query_scalar(
                "SELECT EXISTS (SELECT 1 FROM public.events WHERE aggregate_type = $1 AND aggregate_id = $2)",
            )
            .bind(aggregate_type)
            .bind(id)
            .fetch_one(self.log.pool())
            .await?;
            let row = sqlx::query_as(
                "SELECT sequence, recorded_at FROM public.events
                  WHERE aggregate_type = $1 AND aggregate_id = $2
                    AND ($3::bigint IS NULL OR sequence <= $3)
                    AND ($4::timestamptz IS NULL OR recorded_at <= $4)
                  ORDER BY sequence DESC LIMIT 1",
            )
            .bind(aggregate_type)
            .bind(id)
            .bind(limit)
            .bind(instant)
            .fetch_optional(self.log.pool())
            .await?;
            (exists, row)
        };
        if !exists {
            return Err(ReplayError::NotFound);
        }
        Ok(match row {
            Some((version, at)) => (version, Some(at)),
            None => (0, None),
        })
    }

    /// The stream's snapshot and the version it holds, if it can serve `version`.
    async fn snapshot(
        &self,
        aggregate_type: &str,
        id: &str,
        version: i64,
    ) -> Result<Option<(i64, Value)>, ReplayError> {
        if !self.use_snapshots {
            return Ok(None);
        }
        let row: Option<(i64, Value)> = sqlx::query_as(
            "SELECT last_sequence, payload FROM public.snapshots
              WHERE aggregate_type = $1 AND aggregate_id = $2",
        )
        .bind(aggregate_type)
        .bind(id)
        .fetch_optional(self.log.pool())
        .await?;
        Ok(row.filter(|(last_sequence, _)| *last_sequence > 0 && *last_sequence <= version))
    }

    async fn events_until(
        &self,
        aggregate_type: &str,
        id: &str,
        after: i64,
        version: i64,
    ) -> Result<Vec<LoggedEvent>, ReplayError> {
        let mut events = self.log.read_stream(aggregate_type, id, after).await?;
        events.retain(|e| e.sequence <= version);
        Ok(events)
    }
}

/// The snapshot as an aggregate, if it deserializes and is `sound`.
fn usable<A: Aggregate>(snapshot: Option<(i64, Value)>, sound: fn(&A) -> bool) -> Option<(i64, A)> {
    let (version, payload) = snapshot?;
    match serde_json::from_value::<A>(payload) {
        Ok(aggregate) if sound(&aggregate) => Some((version, aggregate)),
        Ok(_) => {
            tracing::warn!(
                aggregate = A::TYPE,
                version,
                "damaged snapshot (an entry applied twice); folding from the start"
            );
            None
        }
        Err(error) => {
            tracing::debug!(%error, "snapshot does not deserialize; folding from the start");
            None
        }
    }
}

/// Folds `events` (in order, all at or before the wanted version) onto the snapshot, or onto
/// the empty aggregate. Returns the aggregate, the snapshot version used and how many events
/// were applied.
fn fold<A: Aggregate>(
    start: Option<(i64, A)>,
    events: &[LoggedEvent],
) -> Result<(A, Option<i64>, usize), ReplayError> {
    let (mut aggregate, from) = match start {
        Some((version, aggregate)) => (aggregate, Some(version)),
        None => (A::default(), None),
    };
    let after = from.unwrap_or(0);
    let mut applied = 0;
    for event in events.iter().filter(|e| e.sequence > after) {
        aggregate.apply(event.decode::<A::Event>()?);
        applied += 1;
    }
    Ok((aggregate, from, applied))
}

/// No request twice (see the module documentation on snapshots).
fn sound_tutor(session: &TutorSession) -> bool {
    let mut seen = std::collections::HashSet::new();
    session.requests().iter().all(|r| seen.insert(r.request_id))
}

/// No attempt twice.
fn sound_practice(exercise: &Exercise) -> bool {
    let mut seen = std::collections::HashSet::new();
    exercise
        .attempts()
        .iter()
        .all(|a| seen.insert(a.attempt_id))
}

async fn tutor_view(
    conn: &mut PgConnection,
    aggregate: &TutorSession,
    events: &[LoggedEvent],
) -> Result<TutorView, ReplayError> {
    let mut keys = KeyRing::default();
    let mut messages = Vec::new();
    for event in events {
        let message = |role, request_id| MessageView {
            sequence: event.sequence,
            recorded_at: event.recorded_at,
            role,
            request_id,
            text: None,
            explains: None,
            model: None,
            failure: None,
        };
        match event.decode::<TutorSessionEvent>()? {
            TutorSessionEvent::StudentMessagePosted {
                request_id, text, ..
            } => messages.push(MessageView {
                text: Some(open(conn, &mut keys, &text).await?),
                ..message(MessageRole::Student, request_id)
            }),
            TutorSessionEvent::MistakeExplanationRequested {
                request_id,
                exercise,
                attempt,
            } => messages.push(MessageView {
                explains: Some((exercise, attempt)),
                ..message(MessageRole::Student, request_id)
            }),
            TutorSessionEvent::AiReplyCompleted {
                request_id,
                text,
                model,
                ..
            } => messages.push(MessageView {
                text: Some(open(conn, &mut keys, &text).await?),
                model: Some(model),
                ..message(MessageRole::Tutor, request_id)
            }),
            TutorSessionEvent::AiReplyFailed {
                request_id,
                reason,
                model,
                ..
            } => messages.push(MessageView {
                model,
                failure: Some(reason),
                ..message(MessageRole::Tutor, request_id)
            }),
            _ => {}
        }
    }
    let title = match aggregate.title() {
        Some(title) => Some(open(conn, &mut keys, title).await?),
        None => None,
    };
    Ok(TutorView {
        student: aggregate.student(),
        kind: aggregate.kind().map(|k| k.name().to_string()),
        title,
        awaiting_reply: aggregate
            .requests()
            .iter()
            .any(|r| r.status == ReplyStatus::InFlight),
        messages,
    })
}

async fn practice_view(
    conn: &mut PgConnection,
    aggregate: &Exercise,
) -> Result<PracticeView, ReplayError> {
    let mut keys = KeyRing::default();
    let mut attempts = Vec::with_capacity(aggregate.attempts().len());
    for attempt in aggregate.attempts() {
        let given_answer = keys
            .open(conn, &attempt.given_answer)
            .await?
            .and_then(|json| serde_json::from_str::<Vec<String>>(&json).ok());
        attempts.push(AttemptView {
            attempt_id: attempt.attempt_id,
            attempt_number: attempt.attempt_number,
            given_answer,
            accuracy: attempt.accuracy,
            correct: attempt.correct,
        });
    }
    let generated = aggregate.generated();
    Ok(PracticeView {
        student: generated.map(|g| g.student),
        game_type: generated.map(|g| g.game_type),
        difficulty: generated.map(|g| g.difficulty),
        nikud: generated.map(|g| g.nikud),
        correct_answer: generated
            .map(|g| g.correct_answer.clone())
            .unwrap_or_default(),
        solved: aggregate.solved(),
        attempts,
    })
}

async fn open(
    conn: &mut PgConnection,
    keys: &mut KeyRing,
    sealed: &Sealed,
) -> Result<String, sqlx::Error> {
    Ok(keys
        .open(conn, sealed)
        .await?
        .unwrap_or_else(|| Sealed::ERASED.to_string()))
}

/// The fields of an externally tagged event (`{"Variant": {...}}` → `{...}`).
fn variant_fields(payload: Value, event_type: &str) -> Value {
    match payload {
        Value::Object(mut map) if map.len() == 1 && map.contains_key(event_type) => {
            map.remove(event_type).unwrap_or(Value::Null)
        }
        other => other,
    }
}

/// A JSON value shaped like a [`Sealed`]: exactly `subject` (a UUID) and `ciphertext`.
fn as_sealed(value: &Value) -> Option<Sealed> {
    let map = value.as_object()?;
    if map.len() != 2 || !map.contains_key("subject") || !map.contains_key("ciphertext") {
        return None;
    }
    serde_json::from_value(value.clone()).ok()
}

fn collect_sealed(value: &Value, into: &mut Vec<Sealed>) {
    if let Some(sealed) = as_sealed(value) {
        into.push(sealed);
        return;
    }
    match value {
        Value::Object(map) => map.values().for_each(|v| collect_sealed(v, into)),
        Value::Array(items) => items.iter().for_each(|v| collect_sealed(v, into)),
        _ => {}
    }
}

fn replace_sealed(value: &mut Value, opened: &HashMap<String, Option<String>>) {
    if let Some(sealed) = as_sealed(value) {
        let text = opened.get(&sealed.ciphertext).cloned().flatten();
        *value = Value::String(text.unwrap_or_else(|| Sealed::ERASED.to_string()));
        return;
    }
    match value {
        Value::Object(map) => map.values_mut().for_each(|v| replace_sealed(v, opened)),
        Value::Array(items) => items.iter_mut().for_each(|v| replace_sealed(v, opened)),
        _ => {}
    }
}

async fn open_all(
    conn: &mut PgConnection,
    sealed: Vec<Sealed>,
) -> Result<HashMap<String, Option<String>>, sqlx::Error> {
    let mut keys = KeyRing::default();
    keys.prefetch(conn, sealed.iter().map(|s| s.subject))
        .await?;
    let mut opened = HashMap::with_capacity(sealed.len());
    for value in sealed {
        if let std::collections::hash_map::Entry::Vacant(slot) =
            opened.entry(value.ciphertext.clone())
        {
            slot.insert(keys.open(conn, &value).await?);
        }
    }
    Ok(opened)
}

/// Re-emits `history` with the original spacing between events divided by `speed` (2.0:
/// twice as fast). The first event comes at once. A speed that is not a positive number
/// counts as 1.
pub fn paced(history: Vec<ReplayEvent>, speed: f64) -> impl Stream<Item = ReplayEvent> {
    paced_capped(history, speed, None)
}

/// As [`paced`], but no pause is longer than `max_pause` (a student who left for an hour
/// need not be watched for an hour).
pub fn paced_capped(
    history: Vec<ReplayEvent>,
    speed: f64,
    max_pause: Option<Duration>,
) -> impl Stream<Item = ReplayEvent> {
    let speed = if speed.is_finite() && speed > 0.0 {
        speed
    } else {
        1.0
    };
    let state = (history.into_iter(), None::<DateTime<Utc>>);
    futures::stream::unfold(state, move |(mut events, previous)| async move {
        let event = events.next()?;
        if let Some(previous) = previous {
            let gap = (event.recorded_at - previous).to_std().unwrap_or_default();
            let mut pause =
                Duration::try_from_secs_f64(gap.as_secs_f64() / speed).unwrap_or(Duration::MAX);
            if let Some(max) = max_pause {
                pause = pause.min(max);
            }
            if !pause.is_zero() {
                tokio::time::sleep(pause).await;
            }
        }
        let at = event.recorded_at;
        Some((event, (events, Some(at))))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn sealed_values_are_found_and_replaced_anywhere_in_a_payload() {
        let subject = UserId::new();
        let sealed = |c: &str| json!({"subject": subject, "ciphertext": c});
        let mut payload = json!({
            "text": sealed("a"),
            "page_context": null,
            "nested": [sealed("b"), {"subject": "not a uuid", "ciphertext": "c"}],
            "other": {"subject": subject, "ciphertext": "d", "extra": 1},
        });
        let mut found = Vec::new();
        collect_sealed(&payload, &mut found);
        let mut names: Vec<&str> = found.iter().map(|s| s.ciphertext.as_str()).collect();
        names.sort();
        assert_eq!(names, ["a", "b"]);
        assert_eq!(found.len(), 2);
        let opened = HashMap::from([
            ("a".to_string(), Some("hello".to_string())),
            ("b".into(), None),
        ]);
        replace_sealed(&mut payload, &opened);
        assert_eq!(payload["text"], "hello");
        assert_eq!(payload["nested"][0], "[erased]");
        assert_eq!(payload["nested"][1]["ciphertext"], "c");
        assert_eq!(payload["other"]["ciphertext"], "d");
    }

    #[test]
    fn variant_fields_unwrap_the_event_tag() {
        assert_eq!(
            variant_fields(json!({"TitleSet": {"title": 1}}), "TitleSet"),
            json!({"title": 1})
        );
        assert_eq!(
            variant_fields(json!("AvatarCleared"), "AvatarCleared"),
            json!("AvatarCleared")
        );
    }
}
