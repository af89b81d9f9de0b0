//! `exercises`, `attempts` and `practice_summary`: the practice history of every student.
//!
//! `game_type` and `difficulty` are spelled as serde writes them (`WordOrder`,
//! `TypingPractice`, `SpeakingPractice`; `Easy`, `Medium`, `Hard`). An attempt copies them,
//! and its student, from its exercise (read from the table when the exercise was generated
//! in an earlier batch). `given_answer` is the opened JSON list, NULL once the student is
//! erased: `UserErased` (from the `User` stream) clears that student's answers.
//! `practice_summary` counts attempts, successes and failures per student, game and
//! difficulty.

use super::{erased_user, int4, is_user_erasure, open_json, prefetch, serde_name};
use crate::log::LoggedEvent;
use crate::projection::{ApplyContext, ApplyError, Projection};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use cqrs_es::Aggregate;
use serde_json::Value;
use std::collections::{HashMap, HashSet};
use teachin_domain::practice::{Exercise, ExerciseEvent};
use uuid::Uuid;

pub struct Practice;

#[derive(Debug, Clone, sqlx::FromRow)]
struct ExerciseRow {
    exercise_id: Uuid,
    student_id: Uuid,
    game_type: String,
    difficulty: String,
    nikud: bool,
    correct_answer: Value,
    request_id: Option<Uuid>,
    created_at: DateTime<Utc>,
    solved_at: Option<DateTime<Utc>>,
}

struct AttemptRow {
    attempt_id: Uuid,
    exercise_id: Uuid,
    student_id: Uuid,
    game_type: String,
    difficulty: String,
    attempt_number: i32,
    given_answer: Option<Value>,
    accuracy: f64,
    correct: bool,
    created_at: DateTime<Utc>,
    cleared_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, sqlx::FromRow)]
struct SummaryRow {
    student_id: Uuid,
    game_type: String,
    difficulty: String,
    attempts: i32,
    successes: i32,
    failures: i32,
    last_attempt_at: DateTime<Utc>,
}

type SummaryKey = (Uuid, String, String);

enum Step<'b> {
    Exercise(&'b LoggedEvent, ExerciseEvent),
    Erased(Uuid),
}

#[async_trait]
impl Projection for Practice {
    fn name(&self) -> &'static str {
        "practice"
    }

    fn tables(&self) -> &'static [&'static str] {
        &["exercises", "attempts", "practice_summary"]
    }

    async fn apply(
        &self,
        batch: &[LoggedEvent],
        cx: &mut ApplyContext<'_>,
    ) -> Result<(), ApplyError> {
        let mut steps = Vec::new();
        let mut exercise_ids = HashSet::new();
        for logged in batch {
            if is_user_erasure(logged) {
                steps.push(Step::Erased(erased_user(logged)?));
            } else if logged.aggregate_type == Exercise::TYPE {
                exercise_ids.insert(logged.aggregate_uuid()?);
                steps.push(Step::Exercise(logged, logged.decode::<ExerciseEvent>()?));
            }
        }
        if steps.is_empty() {
            return Ok(());
        }
        prefetch(
            cx,
            steps.iter().filter_map(|s| match s {
                Step::Exercise(_, ExerciseEvent::AttemptGraded { given_answer, .. }) => {
                    Some(given_answer)
                }
                _ => None,
            }),
        )
        .await?;

        // The exercises this batch touches, as they were before it.
        let exercise_ids: Vec<Uuid> = exercise_ids.into_iter().collect();
        let mut exercises: HashMap<Uuid, ExerciseRow> = if exercise_ids.is_empty() {
            HashMap::new()
        } else {
            sqlx::query_as::<_, ExerciseRow>("SELECT * FROM exercises WHERE exercise_id = ANY($1)")
                .bind(&exercise_ids)
                .fetch_all(&mut *cx.conn)
                .await?
                .into_iter()
                .map(|row| (row.exercise_id, row))
                .collect()
        };

        // The summaries this batch adds to, as they were before it.
        let mut summary_keys: HashSet<SummaryKey> = HashSet::new();
        {
            let mut generated: HashMap<Uuid, SummaryKey> = HashMap::new();
            for step in &steps {
                let Step::Exercise(logged, event) = step else {
                    continue;
                };
                let exercise = logged.aggregate_uuid()?;
                match event {
                    ExerciseEvent::ExerciseGenerated {
                        student,
                        game_type,
                        difficulty,
                        ..
                    } => {
                        generated.insert(
                            exercise,
                            (student.0, serde_name(game_type), serde_name(difficulty)),
                        );
                    }
                    ExerciseEvent::AttemptGraded { .. } => {
                        if let Some(key) = generated.get(&exercise).cloned().or_else(|| {
                            exercises
                                .get(&exercise)
                                .map(|e| (e.student_id, e.game_type.clone(), e.difficulty.clone()))
                        }) {
                            summary_keys.insert(key);
                        }
                    }
                    ExerciseEvent::MistakesCleared { .. } => {}
                }
            }
        }
        let mut summaries: HashMap<SummaryKey, SummaryRow> = if summary_keys.is_empty() {
            HashMap::new()
        } else {
            let (mut students, mut games, mut difficulties) = (vec![], vec![], vec![]);
            for (student, game, difficulty) in &summary_keys {
                students.push(*student);
                games.push(game.clone());
                difficulties.push(difficulty.clone());
            }
            sqlx::query_as::<_, SummaryRow>(
                "SELECT * FROM practice_summary
                  WHERE (student_id, game_type, difficulty)
                     IN (SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::text[]))",
            )
            .bind(&students)
            .bind(&games)
            .bind(&difficulties)
            .fetch_all(&mut *cx.conn)
            .await?
            .into_iter()
            .map(|row| {
                (
                    (
                        row.student_id,
                        row.game_type.clone(),
                        row.difficulty.clone(),
                    ),
                    row,
                )
            })
            .collect()
        };

        let mut changed_exercises: HashSet<Uuid> = HashSet::new();
        let mut attempts: Vec<AttemptRow> = Vec::new();
        let mut attempt_index: HashMap<Uuid, usize> = HashMap::new();
        // Attempts of earlier batches whose mistakes were cleared: (attempt, when).
        let mut cleared: Vec<(Uuid, DateTime<Utc>)> = Vec::new();
        let mut erased: Vec<Uuid> = Vec::new();
        for step in steps {
            let (logged, event) = match step {
                Step::Erased(student) => {
                    for attempt in attempts.iter_mut().filter(|a| a.student_id == student) {
                        attempt.given_answer = None;
                    }
                    cx.keys.forget(teachin_domain::ids::UserId(student));
                    erased.push(student);
                    continue;
                }
                Step::Exercise(logged, event) => (logged, event),
            };
            let exercise_id = logged.aggregate_uuid()?;
            let at = logged.recorded_at;
            match event {
                ExerciseEvent::ExerciseGenerated {
                    student,
                    game_type,
                    difficulty,
                    nikud,
                    correct_answer,
                    request_id,
                } => {
                    exercises.insert(
                        exercise_id,
                        ExerciseRow {
                            exercise_id,
                            student_id: student.0,
                            game_type: serde_name(&game_type),
                            difficulty: serde_name(&difficulty),
                            nikud,
                            correct_answer: Value::from(correct_answer),
                            request_id: Some(request_id.0),
                            created_at: at,
                            solved_at: None,
                        },
                    );
                    changed_exercises.insert(exercise_id);
                }
                ExerciseEvent::AttemptGraded {
                    attempt_id,
                    attempt_number,
                    given_answer,
                    accuracy,
                    correct,
                } => {
                    let given_answer = open_json(cx, logged, &given_answer).await?;
                    let Some(exercise) = exercises.get_mut(&exercise_id) else {
                        return Err(ApplyError::poison(
                            logged,
                            format!(
                                "attempt at exercise {exercise_id}, which has no row in exercises"
                            ),
                        ));
                    };
                    if correct && exercise.solved_at.is_none() {
                        exercise.solved_at = Some(at);
                        changed_exercises.insert(exercise_id);
                    }
                    let key = (
                        exercise.student_id,
                        exercise.game_type.clone(),
                        exercise.difficulty.clone(),
                    );
                    let summary = summaries.entry(key).or_insert_with(|| SummaryRow {
                        student_id: exercise.student_id,
                        game_type: exercise.game_type.clone(),
                        difficulty: exercise.difficulty.clone(),
                        attempts: 0,
                        successes: 0,
                        failures: 0,
                        last_attempt_at: at,
                    });
                    summary.attempts += 1;
                    if correct {
                        summary.successes += 1;
                    } else {
                        summary.failures += 1;
                    }
                    summary.last_attempt_at = summary.last_attempt_at.max(at);
                    attempt_index.insert(attempt_id.0, attempts.len());
                    attempts.push(AttemptRow {
                        attempt_id: attempt_id.0,
                        exercise_id,
                        student_id: exercise.student_id,
                        game_type: exercise.game_type.clone(),
                        difficulty: exercise.difficulty.clone(),
                        attempt_number: int4(attempt_number),
                        given_answer,
                        accuracy,
                        correct,
                        created_at: at,
                        cleared_at: None,
                    });
                }
                ExerciseEvent::MistakesCleared { attempt_ids } => {
                    for attempt in attempt_ids {
                        match attempt_index.get(&attempt.0) {
                            Some(&i) => attempts[i].cleared_at = Some(at),
                            None => cleared.push((attempt.0, at)),
                        }
                    }
                }
            }
        }

        // Answers of erased students from earlier batches; this batch's are cleared above.
        if !erased.is_empty() {
            sqlx::query("UPDATE attempts SET given_answer = NULL WHERE student_id = ANY($1)")
                .bind(&erased)
                .execute(&mut *cx.conn)
                .await?;
        }
        write_exercises(
            cx,
            exercises
                .into_values()
                .filter(|e| changed_exercises.contains(&e.exercise_id)),
        )
        .await?;
        write_attempts(cx, attempts).await?;
        if !cleared.is_empty() {
            let (ids, times): (Vec<Uuid>, Vec<DateTime<Utc>>) = cleared.into_iter().unzip();
            sqlx::query(
                "UPDATE attempts SET cleared_at = c.at
                   FROM UNNEST($1::uuid[], $2::timestamptz[]) AS c(id, at)
                  WHERE attempts.attempt_id = c.id",
            )
            .bind(&ids)
            .bind(&times)
            .execute(&mut *cx.conn)
            .await?;
        }
        write_summaries(cx, summaries.into_values()).await
    }
}

async fn write_exercises(
    cx: &mut ApplyContext<'_>,
    rows: impl Iterator<Item = ExerciseRow>,
) -> Result<(), ApplyError> {
    let (mut ids, mut students, mut games, mut difficulties, mut nikuds) =
        (vec![], vec![], vec![], vec![], vec![]);
    let (mut answers, mut requests, mut created, mut solved) = (vec![], vec![], vec![], vec![]);
    for row in rows {
        ids.push(row.exercise_id);
        students.push(row.student_id);
        games.push(row.game_type);
        difficulties.push(row.difficulty);
        nikuds.push(row.nikud);
        answers.push(row.correct_answer);
        requests.push(row.request_id);
        created.push(row.created_at);
        solved.push(row.solved_at);
    }
    if ids.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "INSERT INTO exercises (exercise_id, student_id, game_type, difficulty, nikud,
                correct_answer, request_id, created_at, solved_at)
         SELECT * FROM UNNEST($1::uuid[], $2::uuid[], $3::text[], $4::text[], $5::bool[],
                $6::jsonb[], $7::uuid[], $8::timestamptz[], $9::timestamptz[])
         ON CONFLICT (exercise_id) DO UPDATE SET
            student_id = EXCLUDED.student_id, game_type = EXCLUDED.game_type,
            difficulty = EXCLUDED.difficulty, nikud = EXCLUDED.nikud,
            correct_answer = EXCLUDED.correct_answer, request_id = EXCLUDED.request_id,
            created_at = EXCLUDED.created_at, solved_at = EXCLUDED.solved_at",
    )
    .bind(&ids)
    .bind(&students)
    .bind(&games)
    .bind(&difficulties)
    .bind(&nikuds)
    .bind(&answers)
    .bind(&requests)
    .bind(&created)
    .bind(&solved)
    .execute(&mut *cx.conn)
    .await?;
    Ok(())
}

async fn write_attempts(
    cx: &mut ApplyContext<'_>,
    rows: Vec<AttemptRow>,
) -> Result<(), ApplyError> {
    if rows.is_empty() {
        return Ok(());
    }
    let (mut ids, mut exercises, mut students, mut games, mut difficulties) =
        (vec![], vec![], vec![], vec![], vec![]);
    let (mut numbers, mut answers, mut accuracies, mut corrects, mut created, mut cleared) =
        (vec![], vec![], vec![], vec![], vec![], vec![]);
    for row in rows {
        ids.push(row.attempt_id);
        exercises.push(row.exercise_id);
        students.push(row.student_id);
        games.push(row.game_type);
        difficulties.push(row.difficulty);
        numbers.push(row.attempt_number);
        answers.push(row.given_answer);
        accuracies.push(row.accuracy);
        corrects.push(row.correct);
        created.push(row.created_at);
        cleared.push(row.cleared_at);
    }
    sqlx::query(
        "INSERT INTO attempts (attempt_id, exercise_id, student_id, game_type, difficulty,
                attempt_number, given_answer, accuracy, correct, created_at, cleared_at)
         SELECT * FROM UNNEST($1::uuid[], $2::uuid[], $3::uuid[], $4::text[], $5::text[],
                $6::int4[], $7::jsonb[], $8::float8[], $9::bool[], $10::timestamptz[],
                $11::timestamptz[])
         ON CONFLICT (attempt_id) DO UPDATE SET
            exercise_id = EXCLUDED.exercise_id, student_id = EXCLUDED.student_id,
            game_type = EXCLUDED.game_type, difficulty = EXCLUDED.difficulty,
            attempt_number = EXCLUDED.attempt_number, given_answer = EXCLUDED.given_answer,
            accuracy = EXCLUDED.accuracy, correct = EXCLUDED.correct,
            created_at = EXCLUDED.created_at, cleared_at = EXCLUDED.cleared_at",
    )
    .bind(&ids)
    .bind(&exercises)
    .bind(&students)
    .bind(&games)
    .bind(&difficulties)
    .bind(&numbers)
    .bind(&answers)
    .bind(&accuracies)
    .bind(&corrects)
    .bind(&created)
    .bind(&cleared)
    .execute(&mut *cx.conn)
    .await?;
    Ok(())
}

async fn write_summaries(
    cx: &mut ApplyContext<'_>,
    rows: impl Iterator<Item = SummaryRow>,
) -> Result<(), ApplyError> {
    let (mut students, mut games, mut difficulties) = (vec![], vec![], vec![]);
    let (mut attempts, mut successes, mut failures, mut last) = (vec![], vec![], vec![], vec![]);
    for row in rows {
        students.push(row.student_id);
        games.push(row.game_type);
        difficulties.push(row.difficulty);
        attempts.push(row.attempts);
        successes.push(row.successes);
        failures.push(row.failures);
        last.push(row.last_attempt_at);
    }
    if students.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "INSERT INTO practice_summary (student_id, game_type, difficulty, attempts, successes,
                failures, last_attempt_at)
         SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::int4[], $5::int4[],
                $6::int4[], $7::timestamptz[])
         ON CONFLICT (student_id, game_type, difficulty) DO UPDATE SET
            attempts = EXCLUDED.attempts, successes = EXCLUDED.successes,
            failures = EXCLUDED.failures, last_attempt_at = EXCLUDED.last_attempt_at",
    )
    .bind(&students)
    .bind(&games)
    .bind(&difficulties)
    .bind(&attempts)
    .bind(&successes)
    .bind(&failures)
    .bind(&last)
    .execute(&mut *cx.conn)
    .await?;
    Ok(())
}
