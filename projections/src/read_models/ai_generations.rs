//! `ai_generations`: every content-generation request (sentences for a game, a word
//! explained, an email drafted) and how it ended — the engine's AI calls outside the tutor,
//! for the AI-usage analytics (`analytics.ai_usage_daily`, `analytics.ai_usage_by_feature_daily`).
//!
//! A request's `task` is `sentences` | `word_explanation` | `email_draft`. No text is kept:
//! the generated content lives in the exercises and the requester's feed, and the failure
//! reason is operational (the domain caps it and never puts user text in it).

use super::{int4, int8};
use crate::log::LoggedEvent;
use crate::projection::{ApplyContext, ApplyError, Projection};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use cqrs_es::Aggregate;
use std::collections::HashMap;
use teachin_domain::generation::{AiUsage, GenerationEvent, GenerationRequest};
use uuid::Uuid;

pub struct AiGenerations;

#[derive(Debug, Clone, sqlx::FromRow)]
struct Row {
    request_id: Uuid,
    requester_id: Uuid,
    task: String,
    requested_at: DateTime<Utc>,
    completed_at: Option<DateTime<Utc>>,
    failed_at: Option<DateTime<Utc>>,
    model: Option<String>,
    prompt_tokens: Option<i32>,
    completion_tokens: Option<i32>,
    latency_ms: Option<i64>,
    failure: Option<String>,
}

impl Row {
    fn completed(&mut self, at: DateTime<Utc>, usage: AiUsage) {
        self.completed_at = Some(at);
        self.model = Some(usage.model);
        self.prompt_tokens = Some(int4(usage.prompt_tokens));
        self.completion_tokens = Some(int4(usage.completion_tokens));
        self.latency_ms = Some(int8(usage.latency_ms));
    }
}

#[async_trait]
impl Projection for AiGenerations {
    fn name(&self) -> &'static str {
        "ai_generations"
    }

    fn tables(&self) -> &'static [&'static str] {
        &["ai_generations"]
    }

    async fn apply(
        &self,
        batch: &[LoggedEvent],
        cx: &mut ApplyContext<'_>,
    ) -> Result<(), ApplyError> {
        let events = super::decode_all::<GenerationEvent>(batch, GenerationRequest::TYPE)?;
        if events.is_empty() {
            return Ok(());
        }
        let ids: Vec<Uuid> = events
            .iter()
            .map(|(logged, _)| logged.aggregate_uuid())
            .collect::<Result<_, _>>()?;
        let mut rows: HashMap<Uuid, Row> =
            sqlx::query_as::<_, Row>("SELECT * FROM ai_generations WHERE request_id = ANY($1)")
                .bind(&ids)
                .fetch_all(&mut *cx.conn)
                .await?
                .into_iter()
                .map(|row| (row.request_id, row))
                .collect();

        for ((logged, event), request_id) in events.into_iter().zip(ids) {
            let at = logged.recorded_at;
            let requested = |requester: teachin_domain::ids::UserId, task: &str| Row {
                request_id,
                requester_id: requester.0,
                task: task.to_string(),
                requested_at: at,
                completed_at: None,
                failed_at: None,
                model: None,
                prompt_tokens: None,
                completion_tokens: None,
                latency_ms: None,
                failure: None,
            };
            match event {
                GenerationEvent::SentencesRequested { requester, .. } => {
                    rows.insert(request_id, requested(requester, "sentences"));
                }
                GenerationEvent::WordExplanationRequested { requester, .. } => {
                    rows.insert(request_id, requested(requester, "word_explanation"));
                }
                GenerationEvent::EmailDraftRequested { requester, .. } => {
                    rows.insert(request_id, requested(requester, "email_draft"));
                }
                GenerationEvent::SentencesGenerated { usage, .. }
                | GenerationEvent::WordExplained { usage, .. }
                | GenerationEvent::EmailDrafted { usage, .. } => {
                    existing(&mut rows, logged, request_id)?.completed(at, usage)
                }
                GenerationEvent::GenerationFailed {
                    reason,
                    model,
                    latency_ms,
                } => {
                    let row = existing(&mut rows, logged, request_id)?;
                    row.failed_at = Some(at);
                    row.failure = Some(reason);
                    row.model = model;
                    row.latency_ms = Some(int8(latency_ms));
                }
            }
        }
        write(cx, rows.into_values()).await
    }
}

/// The row of a request an outcome is about; an outcome without its request is poison.
fn existing<'r>(
    rows: &'r mut HashMap<Uuid, Row>,
    logged: &LoggedEvent,
    request_id: Uuid,
) -> Result<&'r mut Row, ApplyError> {
    rows.get_mut(&request_id).ok_or_else(|| {
        ApplyError::poison(
            logged,
            format!(
                "{} for generation request {request_id}, which has no row in ai_generations",
                logged.event_type
            ),
        )
    })
}

async fn write(
    cx: &mut ApplyContext<'_>,
    rows: impl Iterator<Item = Row>,
) -> Result<(), ApplyError> {
    let (mut ids, mut requesters, mut tasks, mut requested, mut completed, mut failed) =
        (vec![], vec![], vec![], vec![], vec![], vec![]);
    let (mut models, mut prompt, mut completion, mut latency, mut failures) =
        (vec![], vec![], vec![], vec![], vec![]);
    for row in rows {
        ids.push(row.request_id);
        requesters.push(row.requester_id);
        tasks.push(row.task);
        requested.push(row.requested_at);
        completed.push(row.completed_at);
        failed.push(row.failed_at);
        models.push(row.model);
        prompt.push(row.prompt_tokens);
        completion.push(row.completion_tokens);
        latency.push(row.latency_ms);
        failures.push(row.failure);
    }
    sqlx::query(
        "INSERT INTO ai_generations (request_id, requester_id, task, requested_at, completed_at,
                failed_at, model, prompt_tokens, completion_tokens, latency_ms, failure)
         SELECT * FROM UNNEST($1::uuid[], $2::uuid[], $3::text[], $4::timestamptz[],
                $5::timestamptz[], $6::timestamptz[], $7::text[], $8::int4[], $9::int4[],
                $10::int8[], $11::text[])
         ON CONFLICT (request_id) DO UPDATE SET
            requester_id = EXCLUDED.requester_id, task = EXCLUDED.task,
            requested_at = EXCLUDED.requested_at, completed_at = EXCLUDED.completed_at,
            failed_at = EXCLUDED.failed_at, model = EXCLUDED.model,
            prompt_tokens = EXCLUDED.prompt_tokens, completion_tokens = EXCLUDED.completion_tokens,
            latency_ms = EXCLUDED.latency_ms, failure = EXCLUDED.failure",
    )
    .bind(&ids)
    .bind(&requesters)
    .bind(&tasks)
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
