//! Every read model the portals query, one module per projection. [`all`] is the catalogue the
//! accessor runs and `teachin projections` names.
//!
//! | projection | tables |
//! |---|---|
//! | `game_configs` | game_configs |
//! | `users` | users |
//! | `teacher_students` | teacher_students |
//! | `classrooms` | classrooms, classroom_members, classroom_invitations |
//! | `tutor_sessions` | tutor_sessions, tutor_messages, ai_requests |
//! | `practice` | exercises, attempts, practice_summary |
//! | `word_cards` | word_cards |
//! | `achievements` | achievement_progress, user_achievements |
//! | `ai_generations` | ai_generations |
//!
//! Enumerations are stored in the spelling serde writes them in the log (externally tagged
//! unit variants: `"Student"`, `"En"`, `"Beginner"`, `"WordOrder"`, `"Medium"`...), so a value
//! read from a table compares equal to the one in an event. The only exceptions are the
//! projection-made vocabularies the schema spells out itself (a tutor session's `kind`, a
//! message's `role`, an AI request's `kind`).
//!
//! Projections that keep a person's free text outside `users` (tutor messages and titles,
//! word cards, given answers) also read `UserErased` from the `User` stream and clear that
//! person's texts in their own tables, so no read model keeps what an erasure forgot.

mod achievements;
mod ai_generations;
mod classrooms;
mod game_configs;
mod practice;
mod teacher_students;
mod tutor_sessions;
mod users;
mod word_cards;

pub use achievements::Achievements;
pub use ai_generations::AiGenerations;
pub use classrooms::Classrooms;
pub use game_configs::GameConfigs;
pub use practice::Practice;
pub use teacher_students::TeacherStudents;
pub use tutor_sessions::TutorSessions;
pub use users::Users;
pub use word_cards::WordCards;

use crate::log::LoggedEvent;
use crate::projection::{ApplyContext, ApplyError, Projection};
use cqrs_es::Aggregate;
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::collections::HashSet;
use std::sync::Arc;
use teachin_domain::ids::UserId;
use teachin_domain::personal_data::Sealed;
use teachin_domain::user::{User, UserEvent};
use uuid::Uuid;

/// Every read-model projection, in no particular order (each has its own checkpoint).
pub fn all() -> Vec<Arc<dyn Projection>> {
    vec![
        Arc::new(GameConfigs),
        Arc::new(Users),
        Arc::new(TeacherStudents),
        Arc::new(Classrooms),
        Arc::new(TutorSessions),
        Arc::new(Practice),
        Arc::new(WordCards),
        Arc::new(Achievements),
        Arc::new(AiGenerations),
    ]
}

/// The spelling serde gives a unit-variant enum (or any value serializing to a string).
pub(crate) fn serde_name<T: Serialize>(value: &T) -> String {
    match serde_json::to_value(value) {
        Ok(serde_json::Value::String(name)) => name,
        Ok(other) => other.to_string(),
        Err(e) => format!("<unserializable: {e}>"),
    }
}

/// The events of `aggregate_type` in `batch`, decoded, in log order.
pub(crate) fn decode_all<'b, E: DeserializeOwned>(
    batch: &'b [LoggedEvent],
    aggregate_type: &str,
) -> Result<Vec<(&'b LoggedEvent, E)>, ApplyError> {
    batch
        .iter()
        .filter(|e| e.aggregate_type == aggregate_type)
        .map(|e| Ok((e, e.decode::<E>()?)))
        .collect()
}

/// Is this a `UserErased` of the `User` stream? Only that event type is decoded, so another
/// projection never halts on a `User` event it does not care about.
pub(crate) fn is_user_erasure(event: &LoggedEvent) -> bool {
    event.aggregate_type == User::TYPE && event.event_type == "UserErased"
}

/// The user an erasure event forgets (checked by decoding it).
pub(crate) fn erased_user(event: &LoggedEvent) -> Result<Uuid, ApplyError> {
    match event.decode::<UserEvent>()? {
        UserEvent::UserErased => event.aggregate_uuid(),
        other => Err(ApplyError::poison(
            event,
            format!("expected UserErased, decoded {other:?}"),
        )),
    }
}

/// Loads the keys of every subject of `sealed` values in one query.
pub(crate) async fn prefetch<'s>(
    cx: &mut ApplyContext<'_>,
    sealed: impl IntoIterator<Item = &'s Sealed>,
) -> Result<(), ApplyError> {
    let subjects: HashSet<UserId> = sealed.into_iter().map(|s| s.subject).collect();
    if !subjects.is_empty() {
        cx.keys.prefetch(&mut *cx.conn, subjects).await?;
    }
    Ok(())
}

/// Opens a sealed value; `None` when its subject was erased.
pub(crate) async fn open(
    cx: &mut ApplyContext<'_>,
    sealed: &Sealed,
) -> Result<Option<String>, ApplyError> {
    Ok(cx.keys.open(&mut *cx.conn, sealed).await?)
}

/// Opens an optional sealed value.
pub(crate) async fn open_opt(
    cx: &mut ApplyContext<'_>,
    sealed: Option<&Sealed>,
) -> Result<Option<String>, ApplyError> {
    match sealed {
        Some(sealed) => open(cx, sealed).await,
        None => Ok(None),
    }
}

/// Opens a sealed JSON document; `None` when its subject was erased. A value that opens but
/// is not JSON can never be applied: poison.
pub(crate) async fn open_json(
    cx: &mut ApplyContext<'_>,
    event: &LoggedEvent,
    sealed: &Sealed,
) -> Result<Option<serde_json::Value>, ApplyError> {
    match open(cx, sealed).await? {
        Some(text) => serde_json::from_str(&text)
            .map(Some)
            .map_err(|e| ApplyError::poison(event, format!("sealed JSON does not parse: {e}"))),
        None => Ok(None),
    }
}

/// A `u32` from an event as a Postgres `integer`, saturating.
pub(crate) fn int4(value: u32) -> i32 {
    i32::try_from(value).unwrap_or(i32::MAX)
}

/// A `u64` from an event as a Postgres `bigint`, saturating.
pub(crate) fn int8(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}
