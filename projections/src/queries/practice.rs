//! Practice history: attempts, summaries, mistakes, and the teachers' all-students view
//! (original §1.5, §9).

use super::paging::{Cursor, Page, PageRequest};
use super::{enum_column, strings_column, DateRange, ReadModels};
use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::postgres::PgRow;
use sqlx::Row;
use std::collections::HashMap;
use teachin_domain::vocabulary::{Difficulty, GameType};
use uuid::Uuid;

/// One attempt with the exercise it answered (detailed history).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
#[cfg_attr(feature = "graphql", derive(async_graphql::SimpleObject))]
pub struct AttemptDetail {
    pub attempt_id: Uuid,
    pub exercise_id: Uuid,
    pub student_id: Uuid,
    pub game_type: GameType,
    pub difficulty: Difficulty,
    pub nikud: bool,
    pub attempt_number: i32,
    /// Empty once the student is erased (the answer was personal free text).
    pub given_answer: Vec<String>,
    pub correct_answer: Vec<String>,
    /// Success (`true`) or failure.
    pub correct: bool,
    /// 0–100.
    pub accuracy: f64,
    pub created_at: DateTime<Utc>,
}

/// Attempts per game and difficulty (summary history).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
#[cfg_attr(feature = "graphql", derive(async_graphql::SimpleObject))]
pub struct PracticeSummaryRow {
    pub game_type: GameType,
    pub difficulty: Difficulty,
    pub attempts: i64,
    pub successes: i64,
    pub failures: i64,
    pub last_attempt_at: DateTime<Utc>,
}

/// An exercise the student has not yet answered correctly, with its failed attempts.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
#[cfg_attr(feature = "graphql", derive(async_graphql::SimpleObject))]
pub struct MistakeExercise {
    pub exercise_id: Uuid,
    /// The latest failed attempt (what "explain my mistake" and a retry refer to).
    pub last_attempt_id: Uuid,
    pub game_type: GameType,
    pub difficulty: Difficulty,
    pub correct_answer: Vec<String>,
    pub created_at: DateTime<Utc>,
    /// In attempt order.
    pub mistakes: Vec<FailedAttempt>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
#[cfg_attr(feature = "graphql", derive(async_graphql::SimpleObject))]
pub struct FailedAttempt {
    pub attempt_id: Uuid,
    pub attempt_number: i32,
    pub wrong_answer: Vec<String>,
    pub accuracy: f64,
    pub created_at: DateTime<Utc>,
}

/// One student's practice in one game and difficulty (teachers' and admins' overview).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
#[cfg_attr(feature = "graphql", derive(async_graphql::SimpleObject))]
pub struct StudentPracticeRow {
    pub student_id: Uuid,
    pub student_first_name: Option<String>,
    pub student_last_name: Option<String>,
    pub game_type: GameType,
    pub difficulty: Difficulty,
    pub attempts: i64,
    pub successes: i64,
    pub failures: i64,
    /// When the last attempt came in.
    pub last_attempt_at: DateTime<Utc>,
}

impl StudentPracticeRow {
    fn cursor(&self) -> Cursor {
        Cursor::with_tie(self.last_attempt_at, self.student_id, self.tie())
    }

    fn tie(&self) -> String {
        format!("{}|{}", self.game_type, self.difficulty)
    }
}

fn attempt_from_row(row: &PgRow) -> Result<AttemptDetail, sqlx::Error> {
    Ok(AttemptDetail {
        attempt_id: row.try_get("attempt_id")?,
        exercise_id: row.try_get("exercise_id")?,
        student_id: row.try_get("student_id")?,
        game_type: enum_column(row, "game_type")?,
        difficulty: enum_column(row, "difficulty")?,
        nikud: row.try_get("nikud")?,
        attempt_number: row.try_get("attempt_number")?,
        given_answer: strings_column(row, "given_answer")?,
        correct_answer: strings_column(row, "correct_answer")?,
        correct: row.try_get("correct")?,
        accuracy: row.try_get("accuracy")?,
        created_at: row.try_get("created_at")?,
    })
}

fn summary_from_row(row: &PgRow) -> Result<PracticeSummaryRow, sqlx::Error> {
    Ok(PracticeSummaryRow {
        game_type: enum_column(row, "game_type")?,
        difficulty: enum_column(row, "difficulty")?,
        attempts: row.try_get("attempts")?,
        successes: row.try_get("successes")?,
        failures: row.try_get("failures")?,
        last_attempt_at: row.try_get("last_attempt_at")?,
    })
}

impl ReadModels {
    /// A student's attempts, newest first, each with its exercise; `range` filters on when
    /// the attempt was made.
    pub async fn practice_history(
        &self,
        student_id: Uuid,
        range: DateRange,
        page: &PageRequest,
    ) -> Result<Page<AttemptDetail>, sqlx::Error> {
        let total: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM read_model.attempts a
             WHERE a.student_id = $1
               AND ($2::timestamptz IS NULL OR a.created_at >= $2)
               AND ($3::timestamptz IS NULL OR a.created_at <= $3)",
        )
        .bind(student_id)
        .bind(range.from)
        .bind(range.to)
        .fetch_one(&self.pool)
        .await?;
        let rows = sqlx::query(
            "SELECT a.attempt_id, a.exercise_id, a.student_id, a.game_type, a.difficulty,
                    coalesce(e.nikud, false) AS nikud, a.attempt_number, a.given_answer,
                    e.correct_answer, a.correct, a.accuracy::float8 AS accuracy, a.created_at
             FROM read_model.attempts a
             LEFT JOIN read_model.exercises e ON e.exercise_id = a.exercise_id
             WHERE a.student_id = $1
               AND ($2::timestamptz IS NULL OR a.created_at >= $2)
               AND ($3::timestamptz IS NULL OR a.created_at <= $3)
               AND ($4::timestamptz IS NULL OR (a.created_at, a.attempt_id) < ($4, $5))
             ORDER BY a.created_at DESC, a.attempt_id DESC
             LIMIT $6",
        )
        .bind(student_id)
        .bind(range.from)
        .bind(range.to)
        .bind(page.after_at())
        .bind(page.after_id())
        .bind(page.fetch_limit())
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(attempt_from_row)
        .collect::<Result<Vec<_>, _>>()?;
        Ok(page.finish(rows, total, |a| Cursor::new(a.created_at, a.attempt_id)))
    }

    /// Attempts, successes and failures per game and difficulty. Without a range this is the
    /// maintained `practice_summary`; with one it is counted from the attempts in the range.
    pub async fn practice_summary(
        &self,
        student_id: Uuid,
        range: DateRange,
    ) -> Result<Vec<PracticeSummaryRow>, sqlx::Error> {
        let rows = if range.is_unbounded() {
            sqlx::query(
                "SELECT game_type, difficulty, attempts::int8 AS attempts,
                        successes::int8 AS successes, failures::int8 AS failures, last_attempt_at
                 FROM read_model.practice_summary
                 WHERE student_id = $1
                 ORDER BY game_type, difficulty",
            )
            .bind(student_id)
            .fetch_all(&self.pool)
            .await?
        } else {
            sqlx::query(
                "SELECT game_type, difficulty, count(*) AS attempts,
                        count(*) FILTER (WHERE correct) AS successes,
                        count(*) FILTER (WHERE NOT correct) AS failures,
                        max(created_at) AS last_attempt_at
                 FROM read_model.attempts
                 WHERE student_id = $1
                   AND ($2::timestamptz IS NULL OR created_at >= $2)
                   AND ($3::timestamptz IS NULL OR created_at <= $3)
                 GROUP BY game_type, difficulty
                 ORDER BY game_type, difficulty",
            )
            .bind(student_id)
            .bind(range.from)
            .bind(range.to)
            .fetch_all(&self.pool)
            .await?
        };
        rows.iter().map(summary_from_row).collect()
    }

    /// The student's exercises that have no correct attempt, newest exercise first, each with
    /// its failed attempts. With a range, only failed attempts made in it count (and are
    /// listed); an exercise corrected at any time is never a mistake.
    pub async fn mistakes(
        &self,
        student_id: Uuid,
        range: DateRange,
        page: &PageRequest,
    ) -> Result<Page<MistakeExercise>, sqlx::Error> {
        const OPEN: &str = "e.student_id = $1
               AND NOT EXISTS (SELECT 1 FROM read_model.attempts ok
                               WHERE ok.exercise_id = e.exercise_id AND ok.correct)
               AND EXISTS (SELECT 1 FROM read_model.attempts f
                           WHERE f.exercise_id = e.exercise_id AND NOT f.correct
                             AND ($2::timestamptz IS NULL OR f.created_at >= $2)
                             AND ($3::timestamptz IS NULL OR f.created_at <= $3))";
        let total: i64 = sqlx::query_scalar(&format!(
            "SELECT count(*) FROM read_model.exercises e WHERE {OPEN}"
        ))
        .bind(student_id)
        .bind(range.from)
        .bind(range.to)
        .fetch_one(&self.pool)
        .await?;
        let sql = format!(
            "SELECT e.exercise_id, e.game_type, e.difficulty, e.correct_answer, e.created_at
             FROM read_model.exercises e
             WHERE {OPEN}
               AND ($4::timestamptz IS NULL OR (e.created_at, e.exercise_id) < ($4, $5))
             ORDER BY e.created_at DESC, e.exercise_id DESC
             LIMIT $6"
        );
        let exercises = sqlx::query(&sql)
            .bind(student_id)
            .bind(range.from)
            .bind(range.to)
            .bind(page.after_at())
            .bind(page.after_id())
            .bind(page.fetch_limit())
            .fetch_all(&self.pool)
            .await?;
        let mut items = exercises
            .iter()
            .map(|row| {
                Ok(MistakeExercise {
                    exercise_id: row.try_get("exercise_id")?,
                    last_attempt_id: Uuid::nil(),
                    game_type: enum_column(row, "game_type")?,
                    difficulty: enum_column(row, "difficulty")?,
                    correct_answer: strings_column(row, "correct_answer")?,
                    created_at: row.try_get("created_at")?,
                    mistakes: Vec::new(),
                })
            })
            .collect::<Result<Vec<_>, sqlx::Error>>()?;
        let ids: Vec<Uuid> = items.iter().map(|m| m.exercise_id).collect();
        let failed = sqlx::query(
            "SELECT exercise_id, attempt_id, attempt_number, given_answer,
                    accuracy::float8 AS accuracy, created_at
             FROM read_model.attempts
             WHERE exercise_id = ANY($1) AND NOT correct
               AND ($2::timestamptz IS NULL OR created_at >= $2)
               AND ($3::timestamptz IS NULL OR created_at <= $3)
             ORDER BY attempt_number, created_at, attempt_id",
        )
        .bind(&ids)
        .bind(range.from)
        .bind(range.to)
        .fetch_all(&self.pool)
        .await?;
        let index: HashMap<Uuid, usize> = ids.iter().enumerate().map(|(i, id)| (*id, i)).collect();
        for row in &failed {
            let exercise_id: Uuid = row.try_get("exercise_id")?;
            let attempt = FailedAttempt {
                attempt_id: row.try_get("attempt_id")?,
                attempt_number: row.try_get("attempt_number")?,
                wrong_answer: strings_column(row, "given_answer")?,
                accuracy: row.try_get("accuracy")?,
                created_at: row.try_get("created_at")?,
            };
            if let Some(i) = index.get(&exercise_id) {
                items[*i].last_attempt_id = attempt.attempt_id;
                items[*i].mistakes.push(attempt);
            }
        }
        Ok(page.finish(items, total, |m| Cursor::new(m.created_at, m.exercise_id)))
    }

    /// Practice per student, game and difficulty with the student's name and last attempt
    /// time, most recent first — every student's, or only those in `student_ids` (the API
    /// passes a teacher's students).
    pub async fn all_practice_history(
        &self,
        student_ids: Option<&[Uuid]>,
        page: &PageRequest,
    ) -> Result<Page<StudentPracticeRow>, sqlx::Error> {
        let restricted = student_ids.is_some();
        let ids: Vec<Uuid> = student_ids.map(<[Uuid]>::to_vec).unwrap_or_default();
        let total: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM read_model.practice_summary ps
             WHERE (NOT $1 OR ps.student_id = ANY($2))",
        )
        .bind(restricted)
        .bind(&ids)
        .fetch_one(&self.pool)
        .await?;
        let rows = sqlx::query(
            "SELECT ps.student_id, u.first_name, u.last_name, ps.game_type, ps.difficulty,
                    ps.attempts::int8 AS attempts, ps.successes::int8 AS successes,
                    ps.failures::int8 AS failures, ps.last_attempt_at
             FROM read_model.practice_summary ps
             LEFT JOIN read_model.users u ON u.user_id = ps.student_id
             WHERE (NOT $1 OR ps.student_id = ANY($2))
               AND ($3::timestamptz IS NULL
                    OR (ps.last_attempt_at, ps.student_id,
                        (ps.game_type || '|' || ps.difficulty) COLLATE \"C\")
                       < ($3, $4, $5::text COLLATE \"C\"))
             ORDER BY ps.last_attempt_at DESC, ps.student_id DESC,
                      (ps.game_type || '|' || ps.difficulty) COLLATE \"C\" DESC
             LIMIT $6",
        )
        .bind(restricted)
        .bind(&ids)
        .bind(page.after_at())
        .bind(page.after_id())
        .bind(page.after_tie())
        .bind(page.fetch_limit())
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(|row| {
            Ok(StudentPracticeRow {
                student_id: row.try_get("student_id")?,
                student_first_name: row.try_get("first_name")?,
                student_last_name: row.try_get("last_name")?,
                game_type: enum_column(row, "game_type")?,
                difficulty: enum_column(row, "difficulty")?,
                attempts: row.try_get("attempts")?,
                successes: row.try_get("successes")?,
                failures: row.try_get("failures")?,
                last_attempt_at: row.try_get("last_attempt_at")?,
            })
        })
        .collect::<Result<Vec<_>, sqlx::Error>>()?;
        Ok(page.finish(rows, total, StudentPracticeRow::cursor))
    }
}
