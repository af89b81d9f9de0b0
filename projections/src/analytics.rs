//! Analytics for admins and analysts: typed reads of the `analytics` views
//! (`commands/migrations/20261126000005_analytics.sql`, docs/analytics.md) and the per-student
//! period summaries of the original's summaries manager (original §1.9).
//!
//! The view reads go through the `analytics` schema, as a BI tool would. The summaries are
//! per student and read the read models directly (they need the student's own texts for the
//! examples, and per-student filters are index lookups there). The period rules are a pure
//! function, [`resolve_period`]. The summaries count what the original left at zero
//! (`totalCards`, `totalLearned`).

use crate::queries::{enum_column, strings_column};
use chrono::{DateTime, Duration, NaiveDate, Utc};
use serde::Serialize;
use sqlx::{PgPool, Row};
use teachin_domain::achievements::{achievement, Feature};
use teachin_domain::vocabulary::{Difficulty, GameType};
use uuid::Uuid;

/// How far back a summary looks when no dates are given, and how long a period becomes when
/// its start was after its end.
pub const DEFAULT_PERIOD_DAYS: i64 = 7;

/// How many patterns and examples a game-practice summary lists, and how many cards a
/// word-cards summary lists.
pub const TOP_N: i64 = 10;

/// The time window of a summary; both ends inclusive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
#[cfg_attr(feature = "graphql", derive(async_graphql::SimpleObject))]
pub struct Period {
    pub start_date: DateTime<Utc>,
    pub end_date: DateTime<Utc>,
}

/// The original's period rules: both dates missing → the last 7 days; an end in the future
/// (or missing) → now; a start after the end (or missing) → end − 7 days.
pub fn resolve_period(
    start: Option<DateTime<Utc>>,
    end: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
) -> Period {
    let default_span = Duration::days(DEFAULT_PERIOD_DAYS);
    let end_date = end.map_or(now, |end| end.min(now));
    let start_date = match start {
        Some(start) if start <= end_date => start,
        _ => end_date - default_span,
    };
    Period {
        start_date,
        end_date,
    }
}

// ---- Views -----------------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq, Serialize, sqlx::FromRow)]
#[serde(rename_all = "camelCase")]
#[cfg_attr(feature = "graphql", derive(async_graphql::SimpleObject))]
pub struct StudentDailyActivity {
    pub student_id: Uuid,
    pub day: NaiveDate,
    pub attempts: i64,
    pub successes: i64,
    pub accuracy_avg: Option<f64>,
    pub word_cards_added: i64,
    pub tutor_messages: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize, sqlx::FromRow)]
#[serde(rename_all = "camelCase")]
#[cfg_attr(feature = "graphql", derive(async_graphql::SimpleObject))]
pub struct ClassDailyActivity {
    pub classroom_id: Uuid,
    pub day: NaiveDate,
    pub active_students: i64,
    pub attempts: i64,
    pub successes: i64,
    pub accuracy_avg: Option<f64>,
    pub word_cards_added: i64,
    pub tutor_messages: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
#[cfg_attr(feature = "graphql", derive(async_graphql::SimpleObject))]
pub struct AccuracyTrend {
    pub day: NaiveDate,
    pub game_type: GameType,
    pub difficulty: Difficulty,
    pub attempts: i64,
    pub successes: i64,
    pub success_rate: f64,
    pub accuracy_avg: f64,
    pub students: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
#[cfg_attr(feature = "graphql", derive(async_graphql::SimpleObject))]
pub struct MistakePattern {
    pub game_type: GameType,
    pub difficulty: Difficulty,
    pub uncleared_failed_attempts: i64,
    pub exercises_affected: i64,
    pub students_affected: i64,
    pub accuracy_avg: f64,
    pub oldest_at: DateTime<Utc>,
    pub newest_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, sqlx::FromRow)]
#[serde(rename_all = "camelCase")]
#[cfg_attr(feature = "graphql", derive(async_graphql::SimpleObject))]
pub struct AchievementsDaily {
    pub day: NaiveDate,
    pub achievement_key: String,
    pub feature: String,
    pub unlocked: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize, sqlx::FromRow)]
#[serde(rename_all = "camelCase")]
#[cfg_attr(feature = "graphql", derive(async_graphql::SimpleObject))]
pub struct AiUsageDaily {
    pub day: NaiveDate,
    pub model: String,
    pub requests: i64,
    pub completed: i64,
    pub failed: i64,
    pub pending: i64,
    pub prompt_tokens: i64,
    pub completion_tokens: i64,
    pub avg_latency_ms: Option<f64>,
    pub p95_latency_ms: Option<f64>,
    pub students: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, sqlx::FromRow)]
#[serde(rename_all = "camelCase")]
#[cfg_attr(feature = "graphql", derive(async_graphql::SimpleObject))]
pub struct RegistrationsDaily {
    pub day: NaiveDate,
    pub role: String,
    pub registrations: i64,
}

// ---- Period summaries --------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
#[cfg_attr(feature = "graphql", derive(async_graphql::SimpleObject))]
pub struct OverviewSummary {
    pub period: Period,
    pub summary: OverviewCounts,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, sqlx::FromRow)]
#[serde(rename_all = "camelCase")]
#[cfg_attr(feature = "graphql", derive(async_graphql::SimpleObject))]
pub struct OverviewCounts {
    pub total_attempts: i64,
    /// Word cards marked learned in the period.
    pub words_learned: i64,
    pub achievements_unlocked: i64,
    /// Distinct UTC dates with at least one attempt.
    pub practice_days: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
#[cfg_attr(feature = "graphql", derive(async_graphql::SimpleObject))]
pub struct GamePracticeSummary {
    pub period: Period,
    pub summary: PracticeTotals,
    pub by_game_type: Vec<GameTypePractice>,
    pub daily: Vec<DailyPractice>,
    pub mistakes: MistakesOverview,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
#[cfg_attr(feature = "graphql", derive(async_graphql::SimpleObject))]
pub struct PracticeTotals {
    pub total_attempts: i64,
    /// 0–1; 0 without attempts.
    pub success_rate: f64,
    /// 0–100; 0 without attempts.
    pub average_accuracy: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
#[cfg_attr(feature = "graphql", derive(async_graphql::SimpleObject))]
pub struct GameTypePractice {
    pub game_type: GameType,
    pub attempts: i64,
    pub success_rate: f64,
    pub average_accuracy: f64,
    /// Failed attempts in the period.
    pub mistakes_count: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
#[cfg_attr(feature = "graphql", derive(async_graphql::SimpleObject))]
pub struct DailyPractice {
    pub date: NaiveDate,
    pub attempts: i64,
    pub success_rate: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
#[cfg_attr(feature = "graphql", derive(async_graphql::SimpleObject))]
pub struct MistakesOverview {
    pub summary: MistakeCounts,
    /// The ten most frequent (game, difficulty) of uncorrected mistakes.
    pub patterns: Vec<MistakePatternCount>,
    /// The ten newest uncorrected failed attempts.
    pub uncorrected_examples: Vec<UncorrectedExample>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, sqlx::FromRow)]
#[serde(rename_all = "camelCase")]
#[cfg_attr(feature = "graphql", derive(async_graphql::SimpleObject))]
pub struct MistakeCounts {
    /// Failed attempts in the period whose exercise was never answered correctly.
    #[sqlx(rename = "mistakes")]
    pub total_uncorrected_mistakes: i64,
    /// Of those exercises, the ones tried more than once.
    #[sqlx(rename = "retried")]
    pub retried_but_not_corrected: i64,
    /// Exercises with such failed attempts.
    #[sqlx(rename = "exercises")]
    pub uncorrected_exercises: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
#[cfg_attr(feature = "graphql", derive(async_graphql::SimpleObject))]
pub struct MistakePatternCount {
    pub game_type: GameType,
    pub difficulty: Difficulty,
    pub count: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
#[cfg_attr(feature = "graphql", derive(async_graphql::SimpleObject))]
pub struct UncorrectedExample {
    pub exercise_id: Uuid,
    pub attempt_id: Uuid,
    pub game_type: GameType,
    pub difficulty: Difficulty,
    pub correct_answer: Vec<String>,
    pub given_answer: Vec<String>,
    pub accuracy: f64,
    pub attempt_number: i32,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
#[cfg_attr(feature = "graphql", derive(async_graphql::SimpleObject))]
pub struct WordCardsSummary {
    pub period: Period,
    pub summary: WordCardCounts,
    /// Up to ten cards learned in the period, latest first.
    pub recent_learned: Vec<CardMoment>,
    /// Up to ten cards added in the period, newest first.
    pub new_cards: Vec<CardMoment>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, sqlx::FromRow)]
#[serde(rename_all = "camelCase")]
#[cfg_attr(feature = "graphql", derive(async_graphql::SimpleObject))]
pub struct WordCardCounts {
    /// Cards the user had at the end of the period (the original always said 0).
    pub total_cards: i64,
    pub new_in_period: i64,
    pub learned_in_period: i64,
    /// Cards marked learned at the end of the period (the original always said 0).
    pub total_learned: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, sqlx::FromRow)]
#[serde(rename_all = "camelCase")]
#[cfg_attr(feature = "graphql", derive(async_graphql::SimpleObject))]
pub struct CardMoment {
    pub card_id: Uuid,
    pub hebrew: Option<String>,
    pub english: Option<String>,
    /// When it was learned (recent learned) or added (new cards).
    pub timestamp: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
#[cfg_attr(feature = "graphql", derive(async_graphql::SimpleObject))]
pub struct AchievementsSummary {
    pub period: Period,
    pub unlocked_in_period: Vec<UnlockedAchievement>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
#[cfg_attr(feature = "graphql", derive(async_graphql::SimpleObject))]
pub struct UnlockedAchievement {
    /// The catalog key (the original's achievementId).
    pub key: String,
    pub name: String,
    pub description: String,
    pub feature: String,
    pub unlocked_at: DateTime<Utc>,
}

// ---- The service -----------------------------------------------------------------------

/// Reads the analytics views and builds period summaries.
#[derive(Debug, Clone)]
pub struct Analytics {
    pool: PgPool,
}

fn rate(part: i64, whole: i64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        round_to(part as f64 / whole as f64, 4)
    }
}

fn round_to(value: f64, places: i32) -> f64 {
    let factor = 10f64.powi(places);
    (value * factor).round() / factor
}

impl Analytics {
    pub fn new(pool: PgPool) -> Self {
        Analytics { pool }
    }

    /// `analytics.student_daily_activity` between two UTC dates (inclusive), for one student
    /// or all.
    pub async fn student_daily_activity(
        &self,
        student_id: Option<Uuid>,
        from: NaiveDate,
        to: NaiveDate,
    ) -> Result<Vec<StudentDailyActivity>, sqlx::Error> {
        sqlx::query_as::<_, StudentDailyActivity>(
            "SELECT student_id, day, attempts, successes, accuracy_avg::float8 AS accuracy_avg,
                    word_cards_added, tutor_messages
             FROM analytics.student_daily_activity
             WHERE day BETWEEN $1 AND $2 AND ($3::uuid IS NULL OR student_id = $3)
             ORDER BY day, student_id",
        )
        .bind(from)
        .bind(to)
        .bind(student_id)
        .fetch_all(&self.pool)
        .await
    }

    /// `analytics.class_daily_activity` of one classroom between two UTC dates (inclusive).
    pub async fn class_daily_activity(
        &self,
        classroom_id: Uuid,
        from: NaiveDate,
        to: NaiveDate,
    ) -> Result<Vec<ClassDailyActivity>, sqlx::Error> {
        sqlx::query_as::<_, ClassDailyActivity>(
            "SELECT classroom_id, day, active_students, attempts, successes,
                    accuracy_avg::float8 AS accuracy_avg, word_cards_added, tutor_messages
             FROM analytics.class_daily_activity
             WHERE classroom_id = $1 AND day BETWEEN $2 AND $3
             ORDER BY day",
        )
        .bind(classroom_id)
        .bind(from)
        .bind(to)
        .fetch_all(&self.pool)
        .await
    }

    /// `analytics.accuracy_trends` between two UTC dates (inclusive).
    pub async fn accuracy_trends(
        &self,
        from: NaiveDate,
        to: NaiveDate,
    ) -> Result<Vec<AccuracyTrend>, sqlx::Error> {
        sqlx::query(
            "SELECT day, game_type, difficulty, attempts, successes,
                    success_rate::float8 AS success_rate, accuracy_avg::float8 AS accuracy_avg,
                    students
             FROM analytics.accuracy_trends
             WHERE day BETWEEN $1 AND $2
             ORDER BY day, game_type, difficulty",
        )
        .bind(from)
        .bind(to)
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(|row| {
            Ok(AccuracyTrend {
                day: row.try_get("day")?,
                game_type: enum_column(row, "game_type")?,
                difficulty: enum_column(row, "difficulty")?,
                attempts: row.try_get("attempts")?,
                successes: row.try_get("successes")?,
                success_rate: row.try_get("success_rate")?,
                accuracy_avg: row.try_get("accuracy_avg")?,
                students: row.try_get("students")?,
            })
        })
        .collect()
    }

    /// `analytics.mistake_patterns`, most uncleared mistakes first.
    pub async fn mistake_patterns(&self) -> Result<Vec<MistakePattern>, sqlx::Error> {
        sqlx::query(
            "SELECT game_type, difficulty, uncleared_failed_attempts, exercises_affected,
                    students_affected, accuracy_avg::float8 AS accuracy_avg, oldest_at, newest_at
             FROM analytics.mistake_patterns
             ORDER BY uncleared_failed_attempts DESC, game_type, difficulty",
        )
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(|row| {
            Ok(MistakePattern {
                game_type: enum_column(row, "game_type")?,
                difficulty: enum_column(row, "difficulty")?,
                uncleared_failed_attempts: row.try_get("uncleared_failed_attempts")?,
                exercises_affected: row.try_get("exercises_affected")?,
                students_affected: row.try_get("students_affected")?,
                accuracy_avg: row.try_get("accuracy_avg")?,
                oldest_at: row.try_get("oldest_at")?,
                newest_at: row.try_get("newest_at")?,
            })
        })
        .collect()
    }

    /// `analytics.achievements_daily` between two UTC dates (inclusive).
    pub async fn achievements_daily(
        &self,
        from: NaiveDate,
        to: NaiveDate,
    ) -> Result<Vec<AchievementsDaily>, sqlx::Error> {
        sqlx::query_as::<_, AchievementsDaily>(
            "SELECT day, achievement_key, feature, unlocked FROM analytics.achievements_daily
             WHERE day BETWEEN $1 AND $2 ORDER BY day, achievement_key",
        )
        .bind(from)
        .bind(to)
        .fetch_all(&self.pool)
        .await
    }

    /// `analytics.ai_usage_daily` between two UTC dates (inclusive).
    pub async fn ai_usage_daily(
        &self,
        from: NaiveDate,
        to: NaiveDate,
    ) -> Result<Vec<AiUsageDaily>, sqlx::Error> {
        sqlx::query_as::<_, AiUsageDaily>(
            "SELECT day, model, requests, completed, failed, pending, prompt_tokens,
                    completion_tokens, avg_latency_ms::float8 AS avg_latency_ms,
                    p95_latency_ms, students
             FROM analytics.ai_usage_daily
             WHERE day BETWEEN $1 AND $2 ORDER BY day, model",
        )
        .bind(from)
        .bind(to)
        .fetch_all(&self.pool)
        .await
    }

    /// `analytics.registrations_daily` between two UTC dates (inclusive).
    pub async fn registrations_daily(
        &self,
        from: NaiveDate,
        to: NaiveDate,
    ) -> Result<Vec<RegistrationsDaily>, sqlx::Error> {
        sqlx::query_as::<_, RegistrationsDaily>(
            "SELECT day, role, registrations FROM analytics.registrations_daily
             WHERE day BETWEEN $1 AND $2 ORDER BY day, role",
        )
        .bind(from)
        .bind(to)
        .fetch_all(&self.pool)
        .await
    }

    // ---- Period summaries (per student) ----------------------------------------------------

    /// Attempts, words learned, achievements unlocked and practice days in the period.
    pub async fn overview(
        &self,
        user_id: Uuid,
        period: Period,
    ) -> Result<OverviewSummary, sqlx::Error> {
        let summary = sqlx::query_as::<_, OverviewCounts>(
            "SELECT
                 (SELECT count(*) FROM read_model.attempts
                  WHERE student_id = $1 AND created_at BETWEEN $2 AND $3) AS total_attempts,
                 (SELECT count(DISTINCT (created_at AT TIME ZONE 'UTC')::date) FROM read_model.attempts
                  WHERE student_id = $1 AND created_at BETWEEN $2 AND $3) AS practice_days,
                 (SELECT count(*) FROM read_model.word_cards
                  WHERE owner_id = $1 AND is_learned
                    AND learned_at BETWEEN $2 AND $3) AS words_learned,
                 (SELECT count(*) FROM read_model.user_achievements
                  WHERE user_id = $1 AND unlocked_at BETWEEN $2 AND $3) AS achievements_unlocked",
        )
        .bind(user_id)
        .bind(period.start_date)
        .bind(period.end_date)
        .fetch_one(&self.pool)
        .await?;
        Ok(OverviewSummary { period, summary })
    }

    /// Success and accuracy overall, per game and per day, and the uncorrected mistakes.
    pub async fn game_practice(
        &self,
        user_id: Uuid,
        period: Period,
    ) -> Result<GamePracticeSummary, sqlx::Error> {
        let (start, end) = (period.start_date, period.end_date);
        let totals = sqlx::query(
            "SELECT count(*) AS attempts, count(*) FILTER (WHERE correct) AS successes,
                    coalesce(avg(accuracy), 0)::float8 AS accuracy
             FROM read_model.attempts
             WHERE student_id = $1 AND created_at BETWEEN $2 AND $3",
        )
        .bind(user_id)
        .bind(start)
        .bind(end)
        .fetch_one(&self.pool)
        .await?;
        let total_attempts: i64 = totals.try_get("attempts")?;
        let summary = PracticeTotals {
            total_attempts,
            success_rate: rate(totals.try_get("successes")?, total_attempts),
            average_accuracy: round_to(totals.try_get("accuracy")?, 2),
        };

        let by_game_type = sqlx::query(
            "SELECT game_type, count(*) AS attempts, count(*) FILTER (WHERE correct) AS successes,
                    avg(accuracy)::float8 AS accuracy,
                    count(*) FILTER (WHERE NOT correct) AS mistakes
             FROM read_model.attempts
             WHERE student_id = $1 AND created_at BETWEEN $2 AND $3
             GROUP BY game_type ORDER BY game_type",
        )
        .bind(user_id)
        .bind(start)
        .bind(end)
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(|row| {
            let attempts: i64 = row.try_get("attempts")?;
            Ok(GameTypePractice {
                game_type: enum_column(row, "game_type")?,
                attempts,
                success_rate: rate(row.try_get("successes")?, attempts),
                average_accuracy: round_to(row.try_get("accuracy")?, 2),
                mistakes_count: row.try_get("mistakes")?,
            })
        })
        .collect::<Result<Vec<_>, sqlx::Error>>()?;

        let daily = sqlx::query(
            "SELECT (created_at AT TIME ZONE 'UTC')::date AS day, count(*) AS attempts,
                    count(*) FILTER (WHERE correct) AS successes
             FROM read_model.attempts
             WHERE student_id = $1 AND created_at BETWEEN $2 AND $3
             GROUP BY 1 ORDER BY 1",
        )
        .bind(user_id)
        .bind(start)
        .bind(end)
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(|row| {
            let attempts: i64 = row.try_get("attempts")?;
            Ok(DailyPractice {
                date: row.try_get("day")?,
                attempts,
                success_rate: rate(row.try_get("successes")?, attempts),
            })
        })
        .collect::<Result<Vec<_>, sqlx::Error>>()?;

        // Uncorrected: failed attempts in the period whose exercise has no correct attempt.
        const UNCORRECTED: &str = "a.student_id = $1 AND a.created_at BETWEEN $2 AND $3
             AND NOT a.correct
             AND NOT EXISTS (SELECT 1 FROM read_model.attempts ok
                             WHERE ok.exercise_id = a.exercise_id AND ok.correct)";
        let counts = sqlx::query_as::<_, MistakeCounts>(&format!(
            "SELECT count(*) AS mistakes,
                    count(DISTINCT a.exercise_id) AS exercises,
                    count(DISTINCT a.exercise_id) FILTER (
                        WHERE (SELECT count(*) FROM read_model.attempts r
                               WHERE r.exercise_id = a.exercise_id) > 1) AS retried
             FROM read_model.attempts a WHERE {UNCORRECTED}"
        ))
        .bind(user_id)
        .bind(start)
        .bind(end)
        .fetch_one(&self.pool)
        .await?;
        let patterns = sqlx::query(&format!(
            "SELECT a.game_type, a.difficulty, count(*) AS count
             FROM read_model.attempts a WHERE {UNCORRECTED}
             GROUP BY a.game_type, a.difficulty
             ORDER BY count DESC, a.game_type, a.difficulty
             LIMIT {TOP_N}"
        ))
        .bind(user_id)
        .bind(start)
        .bind(end)
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(|row| {
            Ok(MistakePatternCount {
                game_type: enum_column(row, "game_type")?,
                difficulty: enum_column(row, "difficulty")?,
                count: row.try_get("count")?,
            })
        })
        .collect::<Result<Vec<_>, sqlx::Error>>()?;
        let uncorrected_examples = sqlx::query(&format!(
            "SELECT a.exercise_id, a.attempt_id, a.game_type, a.difficulty, e.correct_answer,
                    a.given_answer, a.accuracy::float8 AS accuracy, a.attempt_number, a.created_at
             FROM read_model.attempts a
             LEFT JOIN read_model.exercises e ON e.exercise_id = a.exercise_id
             WHERE {UNCORRECTED}
             ORDER BY a.created_at DESC, a.attempt_id DESC
             LIMIT {TOP_N}"
        ))
        .bind(user_id)
        .bind(start)
        .bind(end)
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(|row| {
            Ok(UncorrectedExample {
                exercise_id: row.try_get("exercise_id")?,
                attempt_id: row.try_get("attempt_id")?,
                game_type: enum_column(row, "game_type")?,
                difficulty: enum_column(row, "difficulty")?,
                correct_answer: strings_column(row, "correct_answer")?,
                given_answer: strings_column(row, "given_answer")?,
                accuracy: row.try_get("accuracy")?,
                attempt_number: row.try_get("attempt_number")?,
                created_at: row.try_get("created_at")?,
            })
        })
        .collect::<Result<Vec<_>, sqlx::Error>>()?;

        Ok(GamePracticeSummary {
            period,
            summary,
            by_game_type,
            daily,
            mistakes: MistakesOverview {
                summary: counts,
                patterns,
                uncorrected_examples,
            },
        })
    }

    /// Cards added and learned in the period, and the totals at its end.
    pub async fn word_cards(
        &self,
        user_id: Uuid,
        period: Period,
    ) -> Result<WordCardsSummary, sqlx::Error> {
        let (start, end) = (period.start_date, period.end_date);
        let summary = sqlx::query_as::<_, WordCardCounts>(
            "SELECT count(*) FILTER (WHERE created_at <= $3) AS total_cards,
                    count(*) FILTER (WHERE created_at BETWEEN $2 AND $3) AS new_in_period,
                    count(*) FILTER (WHERE is_learned AND learned_at BETWEEN $2 AND $3)
                        AS learned_in_period,
                    count(*) FILTER (WHERE is_learned AND learned_at <= $3) AS total_learned
             FROM read_model.word_cards WHERE owner_id = $1",
        )
        .bind(user_id)
        .bind(start)
        .bind(end)
        .fetch_one(&self.pool)
        .await?;
        let moments = |sql: String| {
            let pool = self.pool.clone();
            async move {
                sqlx::query_as::<_, CardMoment>(&sql)
                    .bind(user_id)
                    .bind(start)
                    .bind(end)
                    .fetch_all(&pool)
                    .await
            }
        };
        let recent_learned = moments(format!(
            "SELECT card_id, hebrew, english, learned_at AS timestamp FROM read_model.word_cards
             WHERE owner_id = $1 AND is_learned AND learned_at BETWEEN $2 AND $3
             ORDER BY learned_at DESC, card_id DESC LIMIT {TOP_N}"
        ))
        .await?;
        let new_cards = moments(format!(
            "SELECT card_id, hebrew, english, created_at AS timestamp FROM read_model.word_cards
             WHERE owner_id = $1 AND created_at BETWEEN $2 AND $3
             ORDER BY created_at DESC, card_id DESC LIMIT {TOP_N}"
        ))
        .await?;
        Ok(WordCardsSummary {
            period,
            summary,
            recent_learned,
            new_cards,
        })
    }

    /// The achievements unlocked in the period, in unlock order, named from the catalog.
    pub async fn achievements(
        &self,
        user_id: Uuid,
        period: Period,
    ) -> Result<AchievementsSummary, sqlx::Error> {
        let unlocked_in_period = sqlx::query(
            "SELECT achievement_key, feature, unlocked_at FROM read_model.user_achievements
             WHERE user_id = $1 AND unlocked_at BETWEEN $2 AND $3
             ORDER BY unlocked_at, achievement_key",
        )
        .bind(user_id)
        .bind(period.start_date)
        .bind(period.end_date)
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(|row| {
            let key: String = row.try_get("achievement_key")?;
            let feature: String = row.try_get("feature")?;
            let known = achievement(&key);
            Ok(UnlockedAchievement {
                name: known.map_or_else(|| key.clone(), |a| a.name.to_string()),
                description: known.map(|a| a.description.to_string()).unwrap_or_default(),
                feature: known.map_or(feature, |a| Feature::as_str(a.feature).to_string()),
                unlocked_at: row.try_get("unlocked_at")?,
                key,
            })
        })
        .collect::<Result<Vec<_>, sqlx::Error>>()?;
        Ok(AchievementsSummary {
            period,
            unlocked_in_period,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn at(day: u32, hour: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 3, day, hour, 0, 0).unwrap()
    }

    #[test]
    fn no_dates_means_the_last_seven_days() {
        let now = at(20, 12);
        let period = resolve_period(None, None, now);
        assert_eq!(period.end_date, now);
        assert_eq!(period.start_date, at(13, 12));
    }

    #[test]
    fn a_future_end_is_capped_at_now() {
        let now = at(20, 12);
        let period = resolve_period(Some(at(10, 0)), Some(at(25, 0)), now);
        assert_eq!(period.start_date, at(10, 0));
        assert_eq!(period.end_date, now);
    }

    #[test]
    fn a_start_after_the_end_becomes_seven_days_before_it() {
        let now = at(20, 12);
        let period = resolve_period(Some(at(18, 0)), Some(at(15, 0)), now);
        assert_eq!(period.end_date, at(15, 0));
        assert_eq!(period.start_date, at(8, 0));
        // Also after capping: a start in the future, no end.
        let period = resolve_period(Some(at(22, 0)), None, now);
        assert_eq!(period.end_date, now);
        assert_eq!(period.start_date, at(13, 12));
    }

    #[test]
    fn valid_dates_are_kept_and_a_missing_one_is_filled() {
        let now = at(20, 12);
        assert_eq!(
            resolve_period(Some(at(1, 0)), Some(at(5, 0)), now),
            Period {
                start_date: at(1, 0),
                end_date: at(5, 0)
            }
        );
        assert_eq!(
            resolve_period(None, Some(at(10, 0)), now),
            Period {
                start_date: at(3, 0),
                end_date: at(10, 0)
            }
        );
        assert_eq!(
            resolve_period(Some(at(1, 0)), None, now),
            Period {
                start_date: at(1, 0),
                end_date: now
            }
        );
    }

    #[test]
    fn rates_round_and_never_divide_by_zero() {
        assert_eq!(rate(0, 0), 0.0);
        assert_eq!(rate(1, 3), 0.3333);
        assert_eq!(round_to(66.666, 2), 66.67);
    }
}
