//! Looking back: period summaries of one student (the original's §1.9), a session replayed
//! event by event for a teacher, and the platform-wide analytics for admins.

use super::{authorize, state};
use crate::access::Subject;
use crate::error::{ApiError, ApiResult};
use async_graphql::{Context, Json, Object, SimpleObject};
use chrono::{DateTime, NaiveDate, Utc};
use teachin_domain::ids::UserId;
use teachin_projections::analytics::{
    resolve_period, AccuracyTrend, AchievementsDaily, AchievementsSummary, AiUsageDaily,
    ClassDailyActivity, GamePracticeSummary, MistakePattern, OverviewSummary, RegistrationsDaily,
    StudentDailyActivity, WordCardsSummary,
};
use teachin_projections::replay::{AsOf, ReplayError, SessionState, SessionType, SessionView};
use uuid::Uuid;

/// Everything the portals show for one student over a period.
#[derive(SimpleObject)]
pub struct PeriodSummary {
    pub overview: OverviewSummary,
    pub game_practice: GamePracticeSummary,
    pub word_cards: WordCardsSummary,
    pub achievements: AchievementsSummary,
}

/// One event of a replayed session.
#[derive(SimpleObject)]
pub struct ReplayedEvent {
    pub sequence: i64,
    pub event_type: String,
    pub recorded_at: DateTime<Utc>,
    /// Who issued it: `user:<id>:<role>`, `system`...
    pub actor: String,
    pub correlation_id: Option<Uuid>,
    /// The event's fields, personal data opened (or `[erased]`).
    pub payload: Json<serde_json::Value>,
}

/// A session at one point of its history.
#[derive(SimpleObject)]
pub struct ReplayedState {
    pub session_type: SessionType,
    pub id: String,
    /// The last event included (0: before the first).
    pub version: i64,
    pub recorded_at: Option<DateTime<Utc>>,
    /// The snapshot the fold started from, if one was used.
    pub snapshot_version: Option<i64>,
    pub events_applied: i64,
    /// The session's state (transcript or exercise with attempts).
    pub view: Json<serde_json::Value>,
}

/// A session's history and its state as of the requested point.
#[derive(SimpleObject)]
pub struct SessionReplayResult {
    pub history: Vec<ReplayedEvent>,
    pub state: ReplayedState,
}

#[derive(Default)]
pub struct InsightQuery;

#[Object]
impl InsightQuery {
    /// A student's summary of a period (default: the last 7 days).
    async fn period_summary(
        &self,
        ctx: &Context<'_>,
        user_id: Uuid,
        start: Option<DateTime<Utc>>,
        end: Option<DateTime<Utc>>,
    ) -> ApiResult<PeriodSummary> {
        authorize(ctx, "periodSummary", Subject::Person(UserId(user_id))).await?;
        let period = resolve_period(start, end, Utc::now());
        let a = &state(ctx).analytics;
        let (overview, game_practice, word_cards, achievements) = futures::try_join!(
            a.overview(user_id, period),
            a.game_practice(user_id, period),
            a.word_cards(user_id, period),
            a.achievements(user_id, period),
        )?;
        Ok(PeriodSummary {
            overview,
            game_practice,
            word_cards,
            achievements,
        })
    }

    /// A tutor or practice session's events, and its state after event `version` or as of
    /// instant `at` (default: now). For the session's student, their teachers and admins.
    async fn session_replay(
        &self,
        ctx: &Context<'_>,
        session_type: SessionType,
        id: Uuid,
        version: Option<i64>,
        at: Option<DateTime<Utc>>,
    ) -> ApiResult<SessionReplayResult> {
        let as_of = match (version, at) {
            (Some(_), Some(_)) => {
                return Err(ApiError::bad_input(
                    "at",
                    "give `version` or `at`, not both",
                ))
            }
            (Some(v), None) if v < 0 => {
                return Err(ApiError::bad_input("version", "versions start at 0"))
            }
            (Some(v), None) => AsOf::Version(v),
            (None, Some(t)) => AsOf::Instant(t),
            (None, None) => AsOf::Version(i64::MAX),
        };
        let (history, replayed) =
            replay_session(ctx, "sessionReplay", session_type, id, as_of).await?;
        Ok(SessionReplayResult {
            history: history.into_iter().map(replayed_event).collect(),
            state: replayed,
        })
    }

    /// Daily activity of one student or of everyone (admins).
    async fn analytics_daily_activity(
        &self,
        ctx: &Context<'_>,
        student_id: Option<Uuid>,
        from: NaiveDate,
        to: NaiveDate,
    ) -> ApiResult<Vec<StudentDailyActivity>> {
        authorize(ctx, "analyticsDailyActivity", Subject::Caller).await?;
        check_days(from, to)?;
        Ok(state(ctx)
            .analytics
            .student_daily_activity(student_id, from, to)
            .await?)
    }

    /// Daily activity of a class (admins).
    async fn analytics_class_activity(
        &self,
        ctx: &Context<'_>,
        class_id: Uuid,
        from: NaiveDate,
        to: NaiveDate,
    ) -> ApiResult<Vec<ClassDailyActivity>> {
        authorize(ctx, "analyticsClassActivity", Subject::Caller).await?;
        check_days(from, to)?;
        Ok(state(ctx)
            .analytics
            .class_daily_activity(class_id, from, to)
            .await?)
    }

    /// Accuracy by day, game type and difficulty (admins).
    async fn analytics_accuracy_trends(
        &self,
        ctx: &Context<'_>,
        from: NaiveDate,
        to: NaiveDate,
    ) -> ApiResult<Vec<AccuracyTrend>> {
        authorize(ctx, "analyticsAccuracyTrends", Subject::Caller).await?;
        check_days(from, to)?;
        Ok(state(ctx).analytics.accuracy_trends(from, to).await?)
    }

    /// Where students keep failing (admins).
    async fn analytics_mistake_patterns(
        &self,
        ctx: &Context<'_>,
    ) -> ApiResult<Vec<MistakePattern>> {
        authorize(ctx, "analyticsMistakePatterns", Subject::Caller).await?;
        Ok(state(ctx).analytics.mistake_patterns().await?)
    }

    /// AI requests, tokens, latency and failures by day and model (admins).
    async fn analytics_ai_usage(
        &self,
        ctx: &Context<'_>,
        from: NaiveDate,
        to: NaiveDate,
    ) -> ApiResult<Vec<AiUsageDaily>> {
        authorize(ctx, "analyticsAiUsage", Subject::Caller).await?;
        check_days(from, to)?;
        Ok(state(ctx).analytics.ai_usage_daily(from, to).await?)
    }

    /// Sign-ups by day and role (admins).
    async fn analytics_registrations(
        &self,
        ctx: &Context<'_>,
        from: NaiveDate,
        to: NaiveDate,
    ) -> ApiResult<Vec<RegistrationsDaily>> {
        authorize(ctx, "analyticsRegistrations", Subject::Caller).await?;
        check_days(from, to)?;
        Ok(state(ctx).analytics.registrations_daily(from, to).await?)
    }

    /// Achievements unlocked by day (admins).
    async fn analytics_achievements(
        &self,
        ctx: &Context<'_>,
        from: NaiveDate,
        to: NaiveDate,
    ) -> ApiResult<Vec<AchievementsDaily>> {
        authorize(ctx, "analyticsAchievements", Subject::Caller).await?;
        check_days(from, to)?;
        Ok(state(ctx).analytics.achievements_daily(from, to).await?)
    }
}

/// The longest range an analytics query may span.
const MAX_DAYS: i64 = 366;

fn check_days(from: NaiveDate, to: NaiveDate) -> ApiResult<()> {
    if from > to {
        return Err(ApiError::bad_input("from", "`from` is after `to`"));
    }
    if (to - from).num_days() > MAX_DAYS {
        return Err(ApiError::bad_input(
            "to",
            format!("at most {MAX_DAYS} days at a time"),
        ));
    }
    Ok(())
}

/// Loads a session's state and history after checking that the caller may see it: the
/// student is found in the session itself.
pub(crate) async fn replay_session(
    ctx: &Context<'_>,
    operation: &str,
    session_type: SessionType,
    id: Uuid,
    as_of: AsOf,
) -> ApiResult<(Vec<teachin_projections::replay::ReplayEvent>, ReplayedState)> {
    let replay = &state(ctx).replay;
    let at = replay
        .state_as_of(session_type, &id.to_string(), as_of)
        .await
        .map_err(replay_error)?;
    // The latest state names the student even when the requested point is before the
    // first event.
    let latest = replay
        .state_as_of(session_type, &id.to_string(), AsOf::Version(i64::MAX))
        .await
        .map_err(replay_error)?;
    let student = match &latest.view {
        SessionView::Tutor(t) => t.student,
        SessionView::Practice(p) => p.student,
    }
    .ok_or_else(|| ApiError::not_found("the session"))?;
    authorize(ctx, operation, Subject::Person(student)).await?;
    let history = replay
        .history(session_type.aggregate_type(), &id.to_string())
        .await
        .map_err(replay_error)?;
    Ok((history, replayed_state(at)))
}

fn replay_error(e: ReplayError) -> ApiError {
    match e {
        ReplayError::NotFound => ApiError::not_found("the session"),
        other => ApiError::internal(other),
    }
}

pub(crate) fn replayed_event(e: teachin_projections::replay::ReplayEvent) -> ReplayedEvent {
    ReplayedEvent {
        sequence: e.sequence,
        event_type: e.event_type,
        recorded_at: e.recorded_at,
        actor: e.actor,
        correlation_id: e.correlation_id,
        payload: Json(e.payload_view),
    }
}

fn replayed_state(s: SessionState) -> ReplayedState {
    ReplayedState {
        session_type: s.session_type,
        id: s.id,
        version: s.version,
        recorded_at: s.recorded_at,
        snapshot_version: s.snapshot_version,
        events_applied: s.events_applied as i64,
        view: Json(serde_json::to_value(&s.view).unwrap_or_default()),
    }
}
