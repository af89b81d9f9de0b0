//! Practice games: a student's attempts (detailed and summarised, with date filters), the
//! mistakes still waiting to be corrected, the teacher's overview of their students, and
//! submitting an answer, which the domain grades.

use super::{
    authorize, connection, execute, page_request, signed_in, state, Changed, PageConnection,
};
use crate::access::{Caller, Subject};
use crate::error::{ApiError, ApiResult};
use async_graphql::{Context, Object};
use chrono::{DateTime, Utc};
use teachin_domain::actor::Role;
use teachin_domain::ids::{AttemptId, UserId};
use teachin_domain::practice::{Exercise, ExerciseCommand};
use teachin_projections::queries::practice::{
    AttemptDetail, MistakeExercise, PracticeSummaryRow, StudentPracticeRow,
};
use teachin_projections::queries::DateRange;
use uuid::Uuid;

/// A date filter, checked for order.
pub(crate) fn date_range(
    from: Option<DateTime<Utc>>,
    to: Option<DateTime<Utc>>,
) -> ApiResult<DateRange> {
    if let (Some(f), Some(t)) = (from, to) {
        if f > t {
            return Err(ApiError::bad_input("from", "`from` is after `to`"));
        }
    }
    Ok(DateRange::new(from, to))
}

#[derive(Default)]
pub struct PracticeQuery;

#[Object]
impl PracticeQuery {
    /// Every attempt of a student, newest first.
    async fn practice_history(
        &self,
        ctx: &Context<'_>,
        student_id: Uuid,
        from: Option<DateTime<Utc>>,
        to: Option<DateTime<Utc>>,
        first: Option<i32>,
        after: Option<String>,
    ) -> ApiResult<PageConnection<AttemptDetail>> {
        authorize(ctx, "practiceHistory", Subject::Person(UserId(student_id))).await?;
        let range = date_range(from, to)?;
        let page = page_request(first, after.as_deref())?;
        Ok(connection(
            state(ctx)
                .read
                .practice_history(student_id, range, &page)
                .await?,
        ))
    }

    /// Attempts, successes and failures per game and difficulty.
    async fn practice_summary(
        &self,
        ctx: &Context<'_>,
        student_id: Uuid,
        from: Option<DateTime<Utc>>,
        to: Option<DateTime<Utc>>,
    ) -> ApiResult<Vec<PracticeSummaryRow>> {
        authorize(ctx, "practiceSummary", Subject::Person(UserId(student_id))).await?;
        let range = date_range(from, to)?;
        Ok(state(ctx).read.practice_summary(student_id, range).await?)
    }

    /// Exercises with wrong attempts not yet followed by a correct one.
    async fn mistakes(
        &self,
        ctx: &Context<'_>,
        student_id: Uuid,
        from: Option<DateTime<Utc>>,
        to: Option<DateTime<Utc>>,
        first: Option<i32>,
        after: Option<String>,
    ) -> ApiResult<PageConnection<MistakeExercise>> {
        authorize(ctx, "mistakes", Subject::Person(UserId(student_id))).await?;
        let range = date_range(from, to)?;
        let page = page_request(first, after.as_deref())?;
        Ok(connection(
            state(ctx).read.mistakes(student_id, range, &page).await?,
        ))
    }

    /// Practice of the caller's students (teachers) or of everyone (admins).
    async fn students_practice(
        &self,
        ctx: &Context<'_>,
        first: Option<i32>,
        after: Option<String>,
    ) -> ApiResult<PageConnection<StudentPracticeRow>> {
        let caller = authorize(ctx, "studentsPractice", Subject::Caller).await?;
        let page = page_request(first, after.as_deref())?;
        let read = &state(ctx).read;
        let rows = match caller {
            Caller::User {
                role: Role::Admin, ..
            } => read.all_practice_history(None, &page).await?,
            Caller::User { id, .. } => {
                let students = read.student_ids_of(id.0).await?;
                read.all_practice_history(Some(&students), &page).await?
            }
            Caller::Anonymous => return Err(ApiError::unauthenticated()),
        };
        Ok(connection(rows))
    }
}

#[derive(Default)]
pub struct PracticeMutation;

#[Object]
impl PracticeMutation {
    /// Submits an answer to one of the caller's exercises. Resubmitting the same
    /// `attemptId` changes nothing.
    async fn submit_attempt(
        &self,
        ctx: &Context<'_>,
        exercise_id: Uuid,
        attempt_id: Uuid,
        given_answer: Vec<String>,
        idempotency_key: Option<String>,
    ) -> ApiResult<Changed> {
        let caller = authorize(ctx, "submitAttempt", Subject::Caller).await?;
        let student = signed_in(caller)?;
        let command = ExerciseCommand::SubmitAttempt {
            attempt_id: AttemptId(attempt_id),
            student,
            given_answer,
        };
        execute::<Exercise>(
            ctx,
            caller,
            exercise_id,
            command,
            idempotency_key.as_deref(),
        )
        .await
    }
}
