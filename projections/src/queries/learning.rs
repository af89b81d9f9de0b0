//! Word cards, game configuration and achievements (original §1.6–1.8).

use super::{enum_column, DateRange, ReadModels};
use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::Row;
use std::collections::HashMap;
use teachin_domain::achievements::{catalog, AchievementType, Feature};
use teachin_domain::vocabulary::{Difficulty, GameType};
use uuid::Uuid;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, sqlx::FromRow)]
#[serde(rename_all = "camelCase")]
#[cfg_attr(feature = "graphql", derive(async_graphql::SimpleObject))]
pub struct WordCardView {
    pub card_id: Uuid,
    /// `None` once the owner is erased.
    pub hebrew: Option<String>,
    pub english: Option<String>,
    pub explanation: Option<String>,
    pub is_learned: bool,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub learned_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
#[cfg_attr(feature = "graphql", derive(async_graphql::SimpleObject))]
pub struct GameConfigView {
    pub user_id: Uuid,
    pub game: GameType,
    pub difficulty: Difficulty,
    pub nikud: bool,
    pub number_of_sentences: i16,
    pub updated_at: DateTime<Utc>,
}

/// One catalog achievement, as seen by one user.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
#[cfg_attr(feature = "graphql", derive(async_graphql::SimpleObject))]
pub struct AchievementStatus {
    pub key: String,
    pub name: String,
    pub description: String,
    #[serde(rename = "type")]
    pub achievement_type: AchievementType,
    pub feature: Feature,
    pub target_count: u32,
    /// The user's count of uses of `feature` so far.
    pub progress: i64,
    pub is_unlocked: bool,
    pub unlocked_at: Option<DateTime<Utc>>,
}

impl ReadModels {
    /// A user's word cards, newest first; `range` filters on when each card was added.
    pub async fn word_cards(
        &self,
        owner_id: Uuid,
        range: DateRange,
    ) -> Result<Vec<WordCardView>, sqlx::Error> {
        sqlx::query_as::<_, WordCardView>(
            "SELECT card_id, hebrew, english, explanation, is_learned, created_at, updated_at,
                    learned_at
             FROM read_model.word_cards
             WHERE owner_id = $1
               AND ($2::timestamptz IS NULL OR created_at >= $2)
               AND ($3::timestamptz IS NULL OR created_at <= $3)
             ORDER BY created_at DESC, card_id DESC",
        )
        .bind(owner_id)
        .bind(range.from)
        .bind(range.to)
        .fetch_all(&self.pool)
        .await
    }

    /// A user's settings for one game, or `None` if never saved.
    pub async fn game_config(
        &self,
        user_id: Uuid,
        game: GameType,
    ) -> Result<Option<GameConfigView>, sqlx::Error> {
        let row = sqlx::query(
            "SELECT user_id, game, difficulty, nikud, number_of_sentences, updated_at
             FROM read_model.game_configs WHERE user_id = $1 AND game = $2",
        )
        .bind(user_id)
        .bind(game.as_str())
        .fetch_optional(&self.pool)
        .await?;
        row.map(|row| {
            Ok(GameConfigView {
                user_id: row.try_get("user_id")?,
                game: enum_column(&row, "game")?,
                difficulty: enum_column(&row, "difficulty")?,
                nikud: row.try_get("nikud")?,
                number_of_sentences: row.try_get("number_of_sentences")?,
                updated_at: row.try_get("updated_at")?,
            })
        })
        .transpose()
    }

    /// Every achievement of the catalog, in catalog order, with the user's unlock and their
    /// progress count for the achievement's feature.
    pub async fn achievements(&self, user_id: Uuid) -> Result<Vec<AchievementStatus>, sqlx::Error> {
        let unlocked: HashMap<String, DateTime<Utc>> = sqlx::query_as(
            "SELECT achievement_key, unlocked_at FROM read_model.user_achievements
             WHERE user_id = $1",
        )
        .bind(user_id)
        .fetch_all(&self.pool)
        .await?
        .into_iter()
        .collect();
        let progress: HashMap<String, i64> = sqlx::query_as(
            "SELECT feature, count FROM read_model.achievement_progress WHERE user_id = $1",
        )
        .bind(user_id)
        .fetch_all(&self.pool)
        .await?
        .into_iter()
        .collect();
        Ok(catalog()
            .iter()
            .map(|a| {
                let unlocked_at = unlocked.get(a.key).copied();
                AchievementStatus {
                    key: a.key.to_string(),
                    name: a.name.to_string(),
                    description: a.description.to_string(),
                    achievement_type: a.achievement_type,
                    feature: a.feature,
                    target_count: a.target,
                    progress: progress.get(a.feature.as_str()).copied().unwrap_or(0),
                    is_unlocked: unlocked_at.is_some(),
                    unlocked_at,
                }
            })
            .collect())
    }
}
