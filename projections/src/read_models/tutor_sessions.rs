//! `tutor_sessions`, `tutor_messages` and `ai_requests`: every conversation with the AI tutor,
//! its messages, and every request the engine was asked to answer.
//!
//! Spellings (the schema's own vocabulary): a session's `kind` is `default` | `global` |
//! `explain_mistake` (with the exercise and attempt being explained; a later explanation
//! request in the same thread moves them to the attempt it asks about). A message's `role`
//! is `context` (the page context of a global-tutor message) | `student` | `assistant` |
//! `tool` (`tool` names it, `text` holds the opened arguments) | `error` (`text` holds the
//! failure reason). Messages are keyed by (session, event sequence, part within the event).
//! An AI request's `kind` is `mistake_explanation` when a `MistakeExplanationRequested` asked
//! for it, `reply` otherwise.
//!
//! `message_count` counts the session's message rows; `awaiting_reply` is set by a posted
//! message or a requested reply and cleared when the reply completes or fails.
//!
//! `UserErased` (from the `User` stream) clears the text of that student's messages and the
//! titles of their sessions.

use super::{erased_user, int4, int8, is_user_erasure, open, prefetch};
use crate::log::LoggedEvent;
use crate::projection::{ApplyContext, ApplyError, Projection};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use cqrs_es::Aggregate;
use std::collections::{HashMap, HashSet};
use teachin_domain::personal_data::Sealed;
use teachin_domain::tutor_session::{SessionKind, TutorSession, TutorSessionEvent};
use uuid::Uuid;

pub struct TutorSessions;

#[derive(Debug, Clone, sqlx::FromRow)]
struct SessionRow {
    session_id: Uuid,
    student_id: Uuid,
    kind: String,
    exercise_id: Option<Uuid>,
    attempt_id: Option<Uuid>,
    title: Option<String>,
    awaiting_reply: bool,
    message_count: i32,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

struct MessageRow {
    session_id: Uuid,
    event_sequence: i64,
    part: i16,
    request_id: Option<Uuid>,
    role: &'static str,
    text: Option<String>,
    tool: Option<String>,
    created_at: DateTime<Utc>,
}

#[derive(Debug, Clone, sqlx::FromRow)]
struct RequestRow {
    request_id: Uuid,
    session_id: Uuid,
    student_id: Uuid,
    kind: String,
    requested_at: DateTime<Utc>,
    completed_at: Option<DateTime<Utc>>,
    failed_at: Option<DateTime<Utc>>,
    model: Option<String>,
    prompt_tokens: Option<i32>,
    completion_tokens: Option<i32>,
    latency_ms: Option<i64>,
    failure: Option<String>,
}

enum Step<'b> {
    Session(&'b LoggedEvent, TutorSessionEvent),
    Erased(Uuid),
}

fn kind_name(kind: &SessionKind) -> &'static str {
    match kind {
        SessionKind::Default => "default",
        SessionKind::Global => "global",
        SessionKind::ExplainMistake { .. } => "explain_mistake",
    }
}

/// The request an event is about, if any.
fn request_of(event: &TutorSessionEvent) -> Option<Uuid> {
    match event {
        TutorSessionEvent::TutorSessionStarted { .. } | TutorSessionEvent::TitleSet { .. } => None,
        TutorSessionEvent::StudentMessagePosted { request_id, .. }
        | TutorSessionEvent::MistakeExplanationRequested { request_id, .. }
        | TutorSessionEvent::AiReplyRequested { request_id }
        | TutorSessionEvent::AiReplyCompleted { request_id, .. }
        | TutorSessionEvent::AiReplyFailed { request_id, .. }
        | TutorSessionEvent::ToolCallRecorded { request_id, .. } => Some(request_id.0),
    }
}

/// Every sealed value an event carries that the read model opens.
fn sealed_of(event: &TutorSessionEvent) -> Vec<&Sealed> {
    match event {
        TutorSessionEvent::StudentMessagePosted {
            text, page_context, ..
        } => std::iter::once(text).chain(page_context.iter()).collect(),
        TutorSessionEvent::AiReplyCompleted { text, .. } => vec![text],
        TutorSessionEvent::TitleSet { title } => vec![title],
        TutorSessionEvent::ToolCallRecorded { arguments, .. } => vec![arguments],
        _ => vec![],
    }
}

#[async_trait]
impl Projection for TutorSessions {
    fn name(&self) -> &'static str {
        "tutor_sessions"
    }

    fn tables(&self) -> &'static [&'static str] {
        &["tutor_sessions", "tutor_messages", "ai_requests"]
    }

    async fn apply(
        &self,
        batch: &[LoggedEvent],
        cx: &mut ApplyContext<'_>,
    ) -> Result<(), ApplyError> {
        let mut steps = Vec::new();
        let mut session_ids = HashSet::new();
        let mut request_ids = HashSet::new();
        for logged in batch {
            if is_user_erasure(logged) {
                steps.push(Step::Erased(erased_user(logged)?));
            } else if logged.aggregate_type == TutorSession::TYPE {
                let event = logged.decode::<TutorSessionEvent>()?;
                session_ids.insert(logged.aggregate_uuid()?);
                request_ids.extend(request_of(&event));
                steps.push(Step::Session(logged, event));
            }
        }
        if steps.is_empty() {
            return Ok(());
        }
        prefetch(
            cx,
            steps.iter().flat_map(|s| match s {
                Step::Session(_, event) => sealed_of(event),
                Step::Erased(_) => vec![],
            }),
        )
        .await?;

        let session_ids: Vec<Uuid> = session_ids.into_iter().collect();
        let mut sessions: HashMap<Uuid, SessionRow> = if session_ids.is_empty() {
            HashMap::new()
        } else {
            sqlx::query_as::<_, SessionRow>(
                "SELECT * FROM tutor_sessions WHERE session_id = ANY($1)",
            )
            .bind(&session_ids)
            .fetch_all(&mut *cx.conn)
            .await?
            .into_iter()
            .map(|row| (row.session_id, row))
            .collect()
        };
        let request_ids: Vec<Uuid> = request_ids.into_iter().collect();
        let mut requests: HashMap<Uuid, RequestRow> = if request_ids.is_empty() {
            HashMap::new()
        } else {
            sqlx::query_as::<_, RequestRow>("SELECT * FROM ai_requests WHERE request_id = ANY($1)")
                .bind(&request_ids)
                .fetch_all(&mut *cx.conn)
                .await?
                .into_iter()
                .map(|row| (row.request_id, row))
                .collect()
        };
        let mut changed_sessions: HashSet<Uuid> = HashSet::new();
        let mut changed_requests: HashSet<Uuid> = HashSet::new();
        let mut messages: Vec<MessageRow> = Vec::new();
        let mut erased: Vec<Uuid> = Vec::new();

        for step in steps {
            let (logged, event) = match step {
                Step::Erased(student) => {
                    for session in sessions.values_mut().filter(|s| s.student_id == student) {
                        session.title = None;
                        changed_sessions.insert(session.session_id);
                    }
                    for message in messages.iter_mut() {
                        if sessions
                            .get(&message.session_id)
                            .is_some_and(|s| s.student_id == student)
                        {
                            message.text = None;
                        }
                    }
                    cx.keys.forget(teachin_domain::ids::UserId(student));
                    erased.push(student);
                    continue;
                }
                Step::Session(logged, event) => (logged, event),
            };
            let session_id = logged.aggregate_uuid()?;
            let at = logged.recorded_at;

            if let TutorSessionEvent::TutorSessionStarted { student, kind } = &event {
                let (exercise_id, attempt_id) = match kind {
                    SessionKind::ExplainMistake { exercise, attempt } => {
                        (Some(exercise.0), Some(attempt.0))
                    }
                    _ => (None, None),
                };
                sessions.insert(
                    session_id,
                    SessionRow {
                        session_id,
                        student_id: student.0,
                        kind: kind_name(kind).to_string(),
                        exercise_id,
                        attempt_id,
                        title: None,
                        awaiting_reply: false,
                        message_count: 0,
                        created_at: at,
                        updated_at: at,
                    },
                );
                changed_sessions.insert(session_id);
                continue;
            }

            // The parts this event adds to the conversation: (request, role, text, tool).
            let mut parts: Vec<(Option<Uuid>, &'static str, Option<String>, Option<String>)> =
                Vec::new();
            let mut title = None;
            match &event {
                TutorSessionEvent::StudentMessagePosted {
                    request_id,
                    text,
                    page_context,
                } => {
                    if let Some(context) = page_context {
                        parts.push((
                            Some(request_id.0),
                            "context",
                            open(cx, context).await?,
                            None,
                        ));
                    }
                    parts.push((Some(request_id.0), "student", open(cx, text).await?, None));
                }
                TutorSessionEvent::AiReplyCompleted {
                    request_id, text, ..
                } => parts.push((Some(request_id.0), "assistant", open(cx, text).await?, None)),
                TutorSessionEvent::AiReplyFailed {
                    request_id, reason, ..
                } => parts.push((Some(request_id.0), "error", Some(reason.clone()), None)),
                TutorSessionEvent::ToolCallRecorded {
                    request_id,
                    tool,
                    arguments,
                    ..
                } => parts.push((
                    Some(request_id.0),
                    "tool",
                    open(cx, arguments).await?,
                    Some(tool.clone()),
                )),
                TutorSessionEvent::TitleSet { title: sealed } => title = open(cx, sealed).await?,
                _ => {}
            }

            let Some(session) = sessions.get_mut(&session_id) else {
                return Err(ApplyError::poison(
                    logged,
                    format!(
                        "{} in tutor session {session_id}, which has no row in tutor_sessions",
                        logged.event_type
                    ),
                ));
            };
            changed_sessions.insert(session_id);
            session.updated_at = at;
            for (part, (request_id, role, text, tool)) in parts.into_iter().enumerate() {
                messages.push(MessageRow {
                    session_id,
                    event_sequence: logged.sequence,
                    part: part as i16,
                    request_id,
                    role,
                    text,
                    tool,
                    created_at: at,
                });
                session.message_count += 1;
            }

            let unknown_request = |request_id: Uuid| {
                ApplyError::poison(
                    logged,
                    format!(
                        "{} for AI request {request_id}, which was never requested",
                        logged.event_type
                    ),
                )
            };
            match event {
                TutorSessionEvent::TutorSessionStarted { .. } => unreachable!("handled above"),
                TutorSessionEvent::StudentMessagePosted { .. } => session.awaiting_reply = true,
                TutorSessionEvent::MistakeExplanationRequested {
                    request_id,
                    exercise,
                    attempt,
                } => {
                    session.exercise_id = Some(exercise.0);
                    session.attempt_id = Some(attempt.0);
                    let request = requests.entry(request_id.0).or_insert_with(|| RequestRow {
                        request_id: request_id.0,
                        session_id,
                        student_id: session.student_id,
                        kind: String::new(),
                        requested_at: at,
                        completed_at: None,
                        failed_at: None,
                        model: None,
                        prompt_tokens: None,
                        completion_tokens: None,
                        latency_ms: None,
                        failure: None,
                    });
                    request.kind = "mistake_explanation".to_string();
                    changed_requests.insert(request_id.0);
                }
                TutorSessionEvent::AiReplyRequested { request_id } => {
                    session.awaiting_reply = true;
                    let request = requests.entry(request_id.0).or_insert_with(|| RequestRow {
                        request_id: request_id.0,
                        session_id,
                        student_id: session.student_id,
                        kind: "reply".to_string(),
                        requested_at: at,
                        completed_at: None,
                        failed_at: None,
                        model: None,
                        prompt_tokens: None,
                        completion_tokens: None,
                        latency_ms: None,
                        failure: None,
                    });
                    request.requested_at = at;
                    changed_requests.insert(request_id.0);
                }
                TutorSessionEvent::AiReplyCompleted {
                    request_id,
                    model,
                    prompt_tokens,
                    completion_tokens,
                    latency_ms,
                    ..
                } => {
                    session.awaiting_reply = false;
                    let request = requests
                        .get_mut(&request_id.0)
                        .ok_or_else(|| unknown_request(request_id.0))?;
                    request.completed_at = Some(at);
                    request.model = Some(model);
                    request.prompt_tokens = Some(int4(prompt_tokens));
                    request.completion_tokens = Some(int4(completion_tokens));
                    request.latency_ms = Some(int8(latency_ms));
                    changed_requests.insert(request_id.0);
                }
                TutorSessionEvent::AiReplyFailed {
                    request_id,
                    reason,
                    model,
                    latency_ms,
                } => {
                    session.awaiting_reply = false;
                    let request = requests
                        .get_mut(&request_id.0)
                        .ok_or_else(|| unknown_request(request_id.0))?;
                    request.failed_at = Some(at);
                    request.failure = Some(reason);
                    request.model = model;
                    request.latency_ms = Some(int8(latency_ms));
                    changed_requests.insert(request_id.0);
                }
                TutorSessionEvent::TitleSet { .. } => session.title = title,
                TutorSessionEvent::ToolCallRecorded { .. } => {}
            }
        }

        // What erased students wrote in earlier batches; this batch's rows are cleared above.
        if !erased.is_empty() {
            sqlx::query("UPDATE tutor_sessions SET title = NULL WHERE student_id = ANY($1)")
                .bind(&erased)
                .execute(&mut *cx.conn)
                .await?;
            sqlx::query(
                "UPDATE tutor_messages m SET text = NULL
                   FROM tutor_sessions s
                  WHERE s.session_id = m.session_id AND s.student_id = ANY($1)",
            )
            .bind(&erased)
            .execute(&mut *cx.conn)
            .await?;
        }
        write_sessions(
            cx,
            sessions
                .into_values()
                .filter(|s| changed_sessions.contains(&s.session_id)),
        )
        .await?;
        write_messages(cx, messages).await?;
        write_requests(
            cx,
            requests
                .into_values()
                .filter(|r| changed_requests.contains(&r.request_id)),
        )
        .await
    }
}

async fn write_sessions(
    cx: &mut ApplyContext<'_>,
    rows: impl Iterator<Item = SessionRow>,
) -> Result<(), ApplyError> {
    let (mut ids, mut students, mut kinds, mut exercises, mut attempts) =
        (vec![], vec![], vec![], vec![], vec![]);
    let (mut titles, mut awaiting, mut counts, mut created, mut updated) =
        (vec![], vec![], vec![], vec![], vec![]);
    for row in rows {
        ids.push(row.session_id);
        students.push(row.student_id);
        kinds.push(row.kind);
        exercises.push(row.exercise_id);
        attempts.push(row.attempt_id);
        titles.push(row.title);
        awaiting.push(row.awaiting_reply);
        counts.push(row.message_count);
        created.push(row.created_at);
        updated.push(row.updated_at);
    }
    if ids.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "INSERT INTO tutor_sessions (session_id, student_id, kind, exercise_id, attempt_id, title,
                awaiting_reply, message_count, created_at, updated_at)
         SELECT * FROM UNNEST($1::uuid[], $2::uuid[], $3::text[], $4::uuid[], $5::uuid[],
                $6::text[], $7::bool[], $8::int4[], $9::timestamptz[], $10::timestamptz[])
         ON CONFLICT (session_id) DO UPDATE SET
            student_id = EXCLUDED.student_id, kind = EXCLUDED.kind,
            exercise_id = EXCLUDED.exercise_id, attempt_id = EXCLUDED.attempt_id,
            title = EXCLUDED.title, awaiting_reply = EXCLUDED.awaiting_reply,
            message_count = EXCLUDED.message_count, created_at = EXCLUDED.created_at,
            updated_at = EXCLUDED.updated_at",
    )
    .bind(&ids)
    .bind(&students)
    .bind(&kinds)
    .bind(&exercises)
    .bind(&attempts)
    .bind(&titles)
    .bind(&awaiting)
    .bind(&counts)
    .bind(&created)
    .bind(&updated)
    .execute(&mut *cx.conn)
    .await?;
    Ok(())
}

async fn write_messages(
    cx: &mut ApplyContext<'_>,
    rows: Vec<MessageRow>,
) -> Result<(), ApplyError> {
    if rows.is_empty() {
        return Ok(());
    }
    let (mut sessions, mut sequences, mut parts, mut requests) = (vec![], vec![], vec![], vec![]);
    let (mut roles, mut texts, mut tools, mut created) = (vec![], vec![], vec![], vec![]);
    for row in rows {
        sessions.push(row.session_id);
        sequences.push(row.event_sequence);
        parts.push(row.part);
        requests.push(row.request_id);
        roles.push(row.role);
        texts.push(row.text);
        tools.push(row.tool);
        created.push(row.created_at);
    }
    sqlx::query(
        "INSERT INTO tutor_messages (session_id, event_sequence, part, request_id, role, text,
                tool, created_at)
         SELECT * FROM UNNEST($1::uuid[], $2::int8[], $3::int2[], $4::uuid[], $5::text[],
                $6::text[], $7::text[], $8::timestamptz[])
         ON CONFLICT (session_id, event_sequence, part) DO UPDATE SET
            request_id = EXCLUDED.request_id, role = EXCLUDED.role, text = EXCLUDED.text,
            tool = EXCLUDED.tool, created_at = EXCLUDED.created_at",
    )
    .bind(&sessions)
    .bind(&sequences)
    .bind(&parts)
    .bind(&requests)
    .bind(&roles)
    .bind(&texts)
    .bind(&tools)
    .bind(&created)
    .execute(&mut *cx.conn)
    .await?;
    Ok(())
}

async fn write_requests(
    cx: &mut ApplyContext<'_>,
    rows: impl Iterator<Item = RequestRow>,
) -> Result<(), ApplyError> {
    let (mut ids, mut sessions, mut students, mut kinds, mut requested, mut completed) =
        (vec![], vec![], vec![], vec![], vec![], vec![]);
    let (mut failed, mut models, mut prompt, mut completion, mut latency, mut failures) =
        (vec![], vec![], vec![], vec![], vec![], vec![]);
    for row in rows {
        ids.push(row.request_id);
        sessions.push(row.session_id);
        students.push(row.student_id);
        kinds.push(row.kind);
        requested.push(row.requested_at);
        completed.push(row.completed_at);
        failed.push(row.failed_at);
        models.push(row.model);
        prompt.push(row.prompt_tokens);
        completion.push(row.completion_tokens);
        latency.push(row.latency_ms);
        failures.push(row.failure);
    }
    if ids.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "INSERT INTO ai_requests (request_id, session_id, student_id, kind, requested_at,
                completed_at, failed_at, model, prompt_tokens, completion_tokens, latency_ms,
                failure)
         SELECT * FROM UNNEST($1::uuid[], $2::uuid[], $3::uuid[], $4::text[], $5::timestamptz[],
                $6::timestamptz[], $7::timestamptz[], $8::text[], $9::int4[], $10::int4[],
                $11::int8[], $12::text[])
         ON CONFLICT (request_id) DO UPDATE SET
            session_id = EXCLUDED.session_id, student_id = EXCLUDED.student_id,
            kind = EXCLUDED.kind, requested_at = EXCLUDED.requested_at,
            completed_at = EXCLUDED.completed_at, failed_at = EXCLUDED.failed_at,
            model = EXCLUDED.model, prompt_tokens = EXCLUDED.prompt_tokens,
            completion_tokens = EXCLUDED.completion_tokens, latency_ms = EXCLUDED.latency_ms,
            failure = EXCLUDED.failure",
    )
    .bind(&ids)
    .bind(&sessions)
    .bind(&students)
    .bind(&kinds)
    .bind(&requested)
    .bind(&completed)
    .bind(&failed)
    .bind(&models)
    .bind(&prompt)
    .bind(&completion)
    .bind(&latency)
    .bind(&failures)
    .execute(&mut *cx.conn)
    .await?;
    Ok(())
}
