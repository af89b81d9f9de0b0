//! A student's own learning tools: word cards, per-game settings, and achievements.

use super::{authorize, execute, new_id, signed_in, state, Changed};
use crate::access::Subject;
use crate::error::{ApiError, ApiResult};
use async_graphql::{Context, Object};
use chrono::{DateTime, Utc};
use teachin_domain::game_config::{GameConfiguration, GameConfigurationCommand};
use teachin_domain::ids::{UserId, WordCardId};
use teachin_domain::vocabulary::{Difficulty, GameType};
use teachin_domain::word_cards::{WordCardCommand, WordCardDeck};
use teachin_projections::queries::learning::{AchievementStatus, GameConfigView, WordCardView};
use uuid::Uuid;

#[derive(Default)]
pub struct LearningQuery;

#[Object]
impl LearningQuery {
    /// A person's word cards, newest first.
    async fn word_cards(
        &self,
        ctx: &Context<'_>,
        user_id: Uuid,
        from: Option<DateTime<Utc>>,
        to: Option<DateTime<Utc>>,
    ) -> ApiResult<Vec<WordCardView>> {
        authorize(ctx, "wordCards", Subject::Person(UserId(user_id))).await?;
        let range = super::practice::date_range(from, to)?;
        Ok(state(ctx).read.word_cards(user_id, range).await?)
    }

    /// A person's settings for one game (`null`: the defaults apply).
    async fn game_config(
        &self,
        ctx: &Context<'_>,
        user_id: Uuid,
        game: GameType,
    ) -> ApiResult<Option<GameConfigView>> {
        authorize(ctx, "gameConfig", Subject::Person(UserId(user_id))).await?;
        Ok(state(ctx).read.game_config(user_id, game).await?)
    }

    /// Every achievement with the person's progress towards it.
    async fn achievements(
        &self,
        ctx: &Context<'_>,
        user_id: Uuid,
    ) -> ApiResult<Vec<AchievementStatus>> {
        authorize(ctx, "achievements", Subject::Person(UserId(user_id))).await?;
        Ok(state(ctx).read.achievements(user_id).await?)
    }
}

#[derive(Default)]
pub struct LearningMutation;

#[Object]
impl LearningMutation {
    /// Adds a card to the caller's deck.
    async fn add_word_card(
        &self,
        ctx: &Context<'_>,
        hebrew: String,
        english: String,
        explanation: Option<String>,
        idempotency_key: Option<String>,
    ) -> ApiResult<Changed> {
        let caller = authorize(ctx, "addWordCard", Subject::Caller).await?;
        let owner = signed_in(caller)?;
        let card_id = new_id(caller, "addWordCard", idempotency_key.as_deref());
        let command = WordCardCommand::AddCard {
            owner,
            card_id: WordCardId(card_id),
            hebrew,
            english,
            explanation,
        };
        let mut changed =
            execute::<WordCardDeck>(ctx, caller, owner.0, command, idempotency_key.as_deref())
                .await?;
        changed.id = card_id;
        Ok(changed)
    }

    async fn set_word_card_learned(
        &self,
        ctx: &Context<'_>,
        card_id: Uuid,
        is_learned: bool,
        idempotency_key: Option<String>,
    ) -> ApiResult<Changed> {
        let caller = authorize(ctx, "setWordCardLearned", Subject::Caller).await?;
        let owner = signed_in(caller)?;
        let command = WordCardCommand::MarkLearned {
            card_id: WordCardId(card_id),
            is_learned,
        };
        let mut changed =
            execute::<WordCardDeck>(ctx, caller, owner.0, command, idempotency_key.as_deref())
                .await?;
        changed.id = card_id;
        Ok(changed)
    }

    /// Saves the caller's settings for one game.
    async fn save_game_config(
        &self,
        ctx: &Context<'_>,
        game: GameType,
        difficulty: Difficulty,
        nikud: bool,
        number_of_sentences: i32,
        idempotency_key: Option<String>,
    ) -> ApiResult<Changed> {
        let caller = authorize(ctx, "saveGameConfig", Subject::Caller).await?;
        let owner = signed_in(caller)?;
        let number_of_sentences = u8::try_from(number_of_sentences)
            .map_err(|_| ApiError::bad_input("numberOfSentences", "between 1 and 10 sentences"))?;
        let command = GameConfigurationCommand::Save {
            game,
            difficulty,
            nikud,
            number_of_sentences,
        };
        execute::<GameConfiguration>(ctx, caller, owner.0, command, idempotency_key.as_deref())
            .await
    }

    async fn delete_game_config(
        &self,
        ctx: &Context<'_>,
        game: GameType,
        idempotency_key: Option<String>,
    ) -> ApiResult<Changed> {
        let caller = authorize(ctx, "deleteGameConfig", Subject::Caller).await?;
        let owner = signed_in(caller)?;
        let command = GameConfigurationCommand::Delete { game };
        execute::<GameConfiguration>(ctx, caller, owner.0, command, idempotency_key.as_deref())
            .await
    }
}
