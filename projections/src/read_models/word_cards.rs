//! `word_cards`: every student's cards, their texts opened (NULL once the owner is erased).
//!
//! `UserErased` (from the `User` stream) clears the texts of that owner's cards.

use super::{erased_user, is_user_erasure, open, open_opt, prefetch};
use crate::log::LoggedEvent;
use crate::projection::{ApplyContext, ApplyError, Projection};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use cqrs_es::Aggregate;
use std::collections::HashMap;
use teachin_domain::word_cards::{WordCardDeck, WordCardEvent};
use uuid::Uuid;

pub struct WordCards;

#[derive(Debug, Clone, sqlx::FromRow)]
struct Row {
    card_id: Uuid,
    owner_id: Uuid,
    hebrew: Option<String>,
    english: Option<String>,
    explanation: Option<String>,
    is_learned: bool,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    learned_at: Option<DateTime<Utc>>,
}

enum Step<'b> {
    Card(&'b LoggedEvent, WordCardEvent),
    Erased(Uuid),
}

#[async_trait]
impl Projection for WordCards {
    fn name(&self) -> &'static str {
        "word_cards"
    }

    fn tables(&self) -> &'static [&'static str] {
        &["word_cards"]
    }

    async fn apply(
        &self,
        batch: &[LoggedEvent],
        cx: &mut ApplyContext<'_>,
    ) -> Result<(), ApplyError> {
        let mut steps = Vec::new();
        for logged in batch {
            if is_user_erasure(logged) {
                steps.push(Step::Erased(erased_user(logged)?));
            } else if logged.aggregate_type == WordCardDeck::TYPE {
                steps.push(Step::Card(logged, logged.decode::<WordCardEvent>()?));
            }
        }
        if steps.is_empty() {
            return Ok(());
        }

        // Cards changed but not added in this batch are read first.
        let mut wanted = Vec::new();
        let mut sealed = Vec::new();
        for step in &steps {
            match step {
                Step::Card(_, WordCardEvent::WordCardLearnedChanged { card_id, .. }) => {
                    wanted.push(card_id.0)
                }
                Step::Card(
                    _,
                    WordCardEvent::WordCardAdded {
                        hebrew,
                        english,
                        explanation,
                        ..
                    },
                ) => {
                    sealed.push(hebrew);
                    sealed.push(english);
                    sealed.extend(explanation.iter());
                }
                Step::Erased(_) => {}
            }
        }
        prefetch(cx, sealed).await?;
        let mut rows: HashMap<Uuid, Row> = if wanted.is_empty() {
            HashMap::new()
        } else {
            sqlx::query_as::<_, Row>("SELECT * FROM word_cards WHERE card_id = ANY($1)")
                .bind(&wanted)
                .fetch_all(&mut *cx.conn)
                .await?
                .into_iter()
                .map(|row| (row.card_id, row))
                .collect()
        };

        let mut erased = Vec::new();
        for step in steps {
            match step {
                Step::Erased(user) => {
                    for row in rows.values_mut().filter(|r| r.owner_id == user) {
                        row.hebrew = None;
                        row.english = None;
                        row.explanation = None;
                    }
                    cx.keys.forget(teachin_domain::ids::UserId(user));
                    erased.push(user);
                }
                Step::Card(logged, event) => {
                    let owner = logged.aggregate_uuid()?;
                    let at = logged.recorded_at;
                    match event {
                        WordCardEvent::WordCardAdded {
                            card_id,
                            hebrew,
                            english,
                            explanation,
                        } => {
                            let row = Row {
                                card_id: card_id.0,
                                owner_id: owner,
                                hebrew: open(cx, &hebrew).await?,
                                english: open(cx, &english).await?,
                                explanation: open_opt(cx, explanation.as_ref()).await?,
                                is_learned: false,
                                created_at: at,
                                updated_at: at,
                                learned_at: None,
                            };
                            rows.insert(card_id.0, row);
                        }
                        WordCardEvent::WordCardLearnedChanged {
                            card_id,
                            is_learned,
                        } => {
                            let Some(row) = rows.get_mut(&card_id.0) else {
                                return Err(ApplyError::poison(
                                    logged,
                                    format!("word card {card_id} has no row in word_cards"),
                                ));
                            };
                            row.is_learned = is_learned;
                            row.learned_at = is_learned.then_some(at);
                            row.updated_at = at;
                        }
                    }
                }
            }
        }

        // Cards of erased owners that this batch did not touch lose their texts in place.
        if !erased.is_empty() {
            sqlx::query(
                "UPDATE word_cards SET hebrew = NULL, english = NULL, explanation = NULL
                  WHERE owner_id = ANY($1)",
            )
            .bind(&erased)
            .execute(&mut *cx.conn)
            .await?;
        }
        if rows.is_empty() {
            return Ok(());
        }
        let mut c = Columns::default();
        for row in rows.into_values() {
            c.card_id.push(row.card_id);
            c.owner_id.push(row.owner_id);
            c.hebrew.push(row.hebrew);
            c.english.push(row.english);
            c.explanation.push(row.explanation);
            c.is_learned.push(row.is_learned);
            c.created_at.push(row.created_at);
            c.updated_at.push(row.updated_at);
            c.learned_at.push(row.learned_at);
        }
        sqlx::query(
            "INSERT INTO word_cards (card_id, owner_id, hebrew, english, explanation, is_learned,
                    created_at, updated_at, learned_at)
             SELECT * FROM UNNEST($1::uuid[], $2::uuid[], $3::text[], $4::text[], $5::text[],
                    $6::bool[], $7::timestamptz[], $8::timestamptz[], $9::timestamptz[])
             ON CONFLICT (card_id) DO UPDATE SET
                owner_id = EXCLUDED.owner_id, hebrew = EXCLUDED.hebrew,
                english = EXCLUDED.english, explanation = EXCLUDED.explanation,
                is_learned = EXCLUDED.is_learned, created_at = EXCLUDED.created_at,
                updated_at = EXCLUDED.updated_at, learned_at = EXCLUDED.learned_at",
        )
        .bind(&c.card_id)
        .bind(&c.owner_id)
        .bind(&c.hebrew)
        .bind(&c.english)
        .bind(&c.explanation)
        .bind(&c.is_learned)
        .bind(&c.created_at)
        .bind(&c.updated_at)
        .bind(&c.learned_at)
        .execute(&mut *cx.conn)
        .await?;
        Ok(())
    }
}

#[derive(Default)]
struct Columns {
    card_id: Vec<Uuid>,
    owner_id: Vec<Uuid>,
    hebrew: Vec<Option<String>>,
    english: Vec<Option<String>>,
    explanation: Vec<Option<String>>,
    is_learned: Vec<bool>,
    created_at: Vec<DateTime<Utc>>,
    updated_at: Vec<DateTime<Utc>>,
    learned_at: Vec<Option<DateTime<Utc>>>,
}
