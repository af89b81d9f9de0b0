//! `game_configs`: each user's saved settings per practice game (original §1.6).
//!
//! The pattern every read model follows: fold the batch in memory to the final state of each
//! row it touches, then write those rows once — upserts with `UNNEST`, deletes by key.

use crate::log::LoggedEvent;
use crate::projection::{ApplyContext, ApplyError, Projection};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use cqrs_es::Aggregate;
use std::collections::HashMap;
use teachin_domain::game_config::{GameConfiguration, GameConfigurationEvent};
use uuid::Uuid;

pub struct GameConfigs;

struct Row {
    difficulty: String,
    nikud: bool,
    number_of_sentences: i16,
    updated_at: DateTime<Utc>,
}

#[async_trait]
impl Projection for GameConfigs {
    fn name(&self) -> &'static str {
        "game_configs"
    }

    fn tables(&self) -> &'static [&'static str] {
        &["game_configs"]
    }

    async fn apply(
        &self,
        batch: &[LoggedEvent],
        cx: &mut ApplyContext<'_>,
    ) -> Result<(), ApplyError> {
        // Final state per (user, game): Some = saved, None = deleted.
        let mut rows: HashMap<(Uuid, String), Option<Row>> = HashMap::new();
        for event in batch
            .iter()
            .filter(|e| e.aggregate_type == GameConfiguration::TYPE)
        {
            let user = event.aggregate_uuid()?;
            match event.decode::<GameConfigurationEvent>()? {
                GameConfigurationEvent::GameConfigSaved {
                    game,
                    difficulty,
                    nikud,
                    number_of_sentences,
                } => {
                    rows.insert(
                        (user, game.to_string()),
                        Some(Row {
                            difficulty: difficulty.to_string(),
                            nikud,
                            number_of_sentences: number_of_sentences.into(),
                            updated_at: event.recorded_at,
                        }),
                    );
                }
                GameConfigurationEvent::GameConfigDeleted { game } => {
                    rows.insert((user, game.to_string()), None);
                }
            }
        }
        if rows.is_empty() {
            return Ok(());
        }

        let (mut users, mut games, mut difficulties, mut nikuds, mut counts, mut times) =
            (vec![], vec![], vec![], vec![], vec![], vec![]);
        let (mut gone_users, mut gone_games) = (vec![], vec![]);
        for ((user, game), row) in rows {
            match row {
                Some(row) => {
                    users.push(user);
                    games.push(game);
                    difficulties.push(row.difficulty);
                    nikuds.push(row.nikud);
                    counts.push(row.number_of_sentences);
                    times.push(row.updated_at);
                }
                None => {
                    gone_users.push(user);
                    gone_games.push(game);
                }
            }
        }
        sqlx::query(
            "INSERT INTO game_configs (user_id, game, difficulty, nikud, number_of_sentences, updated_at)
             SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::bool[], $5::int2[], $6::timestamptz[])
             ON CONFLICT (user_id, game) DO UPDATE SET
                difficulty = EXCLUDED.difficulty, nikud = EXCLUDED.nikud,
                number_of_sentences = EXCLUDED.number_of_sentences, updated_at = EXCLUDED.updated_at",
        )
        .bind(&users)
        .bind(&games)
        .bind(&difficulties)
        .bind(&nikuds)
        .bind(&counts)
        .bind(&times)
        .execute(&mut *cx.conn)
        .await?;
        sqlx::query(
            "DELETE FROM game_configs
              WHERE (user_id, game) IN (SELECT * FROM UNNEST($1::uuid[], $2::text[]))",
        )
        .bind(&gone_users)
        .bind(&gone_games)
        .execute(&mut *cx.conn)
        .await?;
        Ok(())
    }
}
