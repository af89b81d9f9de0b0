//! `users`: every account's profile, opened from its sealed personal data.
//!
//! Spellings, as serde writes them in the log: `role` is `Student` | `Teacher` | `Admin`,
//! `preferred_language` is `En` | `He`, `hebrew_level` is `Beginner` | `Intermediate` |
//! `Advanced` | `Fluent` (NULL for anyone but a student). `interests` is the opened JSON list
//! (`[]` when there are none, the person left the student role, or was erased).
//!
//! A sealed value whose subject was erased opens to `None` and is stored as NULL, so a rebuild
//! after an erasure cannot bring anything back. `UserErased` clears every personal column
//! (names, email, password hash, interests) and, like the aggregate, the Hebrew level and the
//! avatar, and sets `erased`.

use super::{decode_all, open, open_json, open_opt, prefetch, serde_name};
use crate::log::LoggedEvent;
use crate::projection::{ApplyContext, ApplyError, Projection};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use cqrs_es::Aggregate;
use serde_json::Value;
use std::collections::HashMap;
use teachin_domain::actor::Role;
use teachin_domain::ids::UserId;
use teachin_domain::personal_data::Sealed;
use teachin_domain::user::{User, UserEvent};
use uuid::Uuid;

pub struct Users;

#[derive(Debug, Clone, sqlx::FromRow)]
struct Row {
    user_id: Uuid,
    role: String,
    first_name: Option<String>,
    last_name: Option<String>,
    email: Option<String>,
    password_hash: Option<String>,
    preferred_language: String,
    hebrew_level: Option<String>,
    interests: Value,
    avatar_path: Option<String>,
    avatar_content_type: Option<String>,
    avatar_updated_at: Option<DateTime<Utc>>,
    erased: bool,
    registered_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

fn no_interests() -> Value {
    Value::Array(vec![])
}

/// Every sealed value an event carries (to prefetch their keys).
fn sealed_of(event: &UserEvent) -> Vec<&Sealed> {
    match event {
        UserEvent::UserRegistered {
            first_name,
            last_name,
            email,
            password_hash,
            interests,
            ..
        } => vec![first_name, last_name, email, password_hash, interests],
        UserEvent::ProfileUpdated {
            first_name,
            last_name,
        } => first_name.iter().chain(last_name.iter()).collect(),
        UserEvent::InterestsReplaced { interests } => vec![interests],
        UserEvent::PasswordChanged { password_hash } => vec![password_hash],
        _ => vec![],
    }
}

#[async_trait]
impl Projection for Users {
    fn name(&self) -> &'static str {
        "users"
    }

    fn tables(&self) -> &'static [&'static str] {
        &["users"]
    }

    async fn apply(
        &self,
        batch: &[LoggedEvent],
        cx: &mut ApplyContext<'_>,
    ) -> Result<(), ApplyError> {
        let events = decode_all::<UserEvent>(batch, User::TYPE)?;
        if events.is_empty() {
            return Ok(());
        }
        let mut ids = Vec::with_capacity(events.len());
        for (logged, _) in &events {
            ids.push(logged.aggregate_uuid()?);
        }
        ids.sort();
        ids.dedup();
        prefetch(cx, events.iter().flat_map(|(_, e)| sealed_of(e))).await?;

        let mut rows: HashMap<Uuid, Row> =
            sqlx::query_as::<_, Row>("SELECT * FROM users WHERE user_id = ANY($1)")
                .bind(&ids)
                .fetch_all(&mut *cx.conn)
                .await?
                .into_iter()
                .map(|row| (row.user_id, row))
                .collect();

        for (logged, event) in events {
            let user = logged.aggregate_uuid()?;
            let at = logged.recorded_at;
            if let UserEvent::UserRegistered {
                role,
                first_name,
                last_name,
                email,
                password_hash,
                preferred_language,
                hebrew_level,
                interests,
            } = &event
            {
                let row = Row {
                    user_id: user,
                    role: serde_name(role),
                    first_name: open(cx, first_name).await?,
                    last_name: open(cx, last_name).await?,
                    email: open(cx, email).await?,
                    password_hash: open(cx, password_hash).await?,
                    preferred_language: serde_name(preferred_language),
                    hebrew_level: hebrew_level.as_ref().map(serde_name),
                    interests: open_json(cx, logged, interests)
                        .await?
                        .unwrap_or_else(no_interests),
                    avatar_path: None,
                    avatar_content_type: None,
                    avatar_updated_at: None,
                    erased: false,
                    registered_at: at,
                    updated_at: at,
                };
                rows.insert(user, row);
                continue;
            }
            // Open what the event seals before borrowing the row.
            let (first, last, hash, interests) = match &event {
                UserEvent::ProfileUpdated {
                    first_name,
                    last_name,
                } => (
                    open_opt(cx, first_name.as_ref()).await?,
                    open_opt(cx, last_name.as_ref()).await?,
                    None,
                    None,
                ),
                UserEvent::PasswordChanged { password_hash } => {
                    (None, None, open(cx, password_hash).await?, None)
                }
                UserEvent::InterestsReplaced { interests } => (
                    None,
                    None,
                    None,
                    Some(
                        open_json(cx, logged, interests)
                            .await?
                            .unwrap_or_else(no_interests),
                    ),
                ),
                _ => (None, None, None, None),
            };
            let Some(row) = rows.get_mut(&user) else {
                return Err(ApplyError::poison(
                    logged,
                    format!(
                        "{} for user {user}, who has no row in users",
                        logged.event_type
                    ),
                ));
            };
            row.updated_at = at;
            match event {
                UserEvent::UserRegistered { .. } => unreachable!("handled above"),
                UserEvent::ProfileUpdated {
                    first_name,
                    last_name,
                } => {
                    // A sealed name that no longer opens is gone; an absent one is unchanged.
                    if first_name.is_some() {
                        row.first_name = first;
                    }
                    if last_name.is_some() {
                        row.last_name = last;
                    }
                }
                UserEvent::PreferredLanguageChanged { language } => {
                    row.preferred_language = serde_name(&language);
                }
                UserEvent::HebrewLevelChanged { level } => {
                    row.hebrew_level = Some(serde_name(&level));
                }
                UserEvent::InterestsReplaced { .. } => {
                    row.interests = interests.unwrap_or_else(no_interests);
                }
                UserEvent::RoleChanged { to, .. } => {
                    row.role = serde_name(&to);
                    if to != Role::Student {
                        row.hebrew_level = None;
                        row.interests = no_interests();
                    }
                }
                UserEvent::AvatarSet {
                    blob_path,
                    content_type,
                } => {
                    row.avatar_path = Some(blob_path);
                    row.avatar_content_type = Some(content_type);
                    row.avatar_updated_at = Some(at);
                }
                UserEvent::AvatarCleared => {
                    row.avatar_path = None;
                    row.avatar_content_type = None;
                    row.avatar_updated_at = Some(at);
                }
                UserEvent::PasswordChanged { .. } => row.password_hash = hash,
                UserEvent::UserErased => {
                    row.first_name = None;
                    row.last_name = None;
                    row.email = None;
                    row.password_hash = None;
                    row.interests = no_interests();
                    row.hebrew_level = None;
                    row.avatar_path = None;
                    row.avatar_content_type = None;
                    row.avatar_updated_at = None;
                    row.erased = true;
                    cx.keys.forget(UserId(user));
                }
            }
        }

        write(cx, rows.into_values()).await
    }
}

async fn write(
    cx: &mut ApplyContext<'_>,
    rows: impl Iterator<Item = Row>,
) -> Result<(), ApplyError> {
    let mut c = Columns::default();
    for row in rows {
        c.user_id.push(row.user_id);
        c.role.push(row.role);
        c.first_name.push(row.first_name);
        c.last_name.push(row.last_name);
        c.email.push(row.email);
        c.password_hash.push(row.password_hash);
        c.preferred_language.push(row.preferred_language);
        c.hebrew_level.push(row.hebrew_level);
        c.interests.push(row.interests);
        c.avatar_path.push(row.avatar_path);
        c.avatar_content_type.push(row.avatar_content_type);
        c.avatar_updated_at.push(row.avatar_updated_at);
        c.erased.push(row.erased);
        c.registered_at.push(row.registered_at);
        c.updated_at.push(row.updated_at);
    }
    if c.user_id.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "INSERT INTO users (user_id, role, first_name, last_name, email, password_hash,
                preferred_language, hebrew_level, interests, avatar_path, avatar_content_type,
                avatar_updated_at, erased, registered_at, updated_at)
         SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[],
                $6::text[], $7::text[], $8::text[], $9::jsonb[], $10::text[], $11::text[],
                $12::timestamptz[], $13::bool[], $14::timestamptz[], $15::timestamptz[])
         ON CONFLICT (user_id) DO UPDATE SET
            role = EXCLUDED.role, first_name = EXCLUDED.first_name,
            last_name = EXCLUDED.last_name, email = EXCLUDED.email,
            password_hash = EXCLUDED.password_hash,
            preferred_language = EXCLUDED.preferred_language,
            hebrew_level = EXCLUDED.hebrew_level, interests = EXCLUDED.interests,
            avatar_path = EXCLUDED.avatar_path,
            avatar_content_type = EXCLUDED.avatar_content_type,
            avatar_updated_at = EXCLUDED.avatar_updated_at, erased = EXCLUDED.erased,
            registered_at = EXCLUDED.registered_at, updated_at = EXCLUDED.updated_at",
    )
    .bind(&c.user_id)
    .bind(&c.role)
    .bind(&c.first_name)
    .bind(&c.last_name)
    .bind(&c.email)
    .bind(&c.password_hash)
    .bind(&c.preferred_language)
    .bind(&c.hebrew_level)
    .bind(&c.interests)
    .bind(&c.avatar_path)
    .bind(&c.avatar_content_type)
    .bind(&c.avatar_updated_at)
    .bind(&c.erased)
    .bind(&c.registered_at)
    .bind(&c.updated_at)
    .execute(&mut *cx.conn)
    .await?;
    Ok(())
}

#[derive(Default)]
struct Columns {
    user_id: Vec<Uuid>,
    role: Vec<String>,
    first_name: Vec<Option<String>>,
    last_name: Vec<Option<String>>,
    email: Vec<Option<String>>,
    password_hash: Vec<Option<String>>,
    preferred_language: Vec<String>,
    hebrew_level: Vec<Option<String>>,
    interests: Vec<Value>,
    avatar_path: Vec<Option<String>>,
    avatar_content_type: Vec<Option<String>>,
    avatar_updated_at: Vec<Option<DateTime<Utc>>>,
    erased: Vec<bool>,
    registered_at: Vec<DateTime<Utc>>,
    updated_at: Vec<DateTime<Utc>>,
}
