//! `/metrics` in the Prometheus text format. The projection figures are read from the
//! checkpoint table at scrape time, so every replica reports the same truth whichever of them
//! owns a projection: halted (with the alert-worthy `1`), events applied, and backlog.

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use sqlx::PgPool;
use std::fmt::Write;
use teachin_projections::checkpoint::{self, Status, LAG_COUNT_LIMIT};
use teachin_projections::read_models;

pub fn router(pool: PgPool) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .with_state(pool)
}

async fn metrics(State(pool): State<PgPool>) -> impl IntoResponse {
    match render(&pool).await {
        Ok(body) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
            body,
        ),
        Err(e) => {
            tracing::warn!(error = %e, "metrics unavailable");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
                String::from("# database unreachable\n"),
            )
        }
    }
}

/// The projection metrics as Prometheus text.
pub async fn render(pool: &PgPool) -> Result<String, sqlx::Error> {
    let stored = checkpoint::all(pool).await?;
    let mut halted = String::new();
    let mut applied = String::new();
    let mut lag = String::new();
    for projection in read_models::all() {
        let name = projection.name();
        let cp = stored
            .iter()
            .find(|c| c.name == name)
            .cloned()
            .unwrap_or_else(|| checkpoint::Checkpoint::not_started(name));
        let backlog = checkpoint::lag_events(pool, cp.position, LAG_COUNT_LIMIT).await?;
        let is_halted = u8::from(cp.status == Status::Halted);
        let _ = writeln!(
            halted,
            "teachin_projection_halted{{projection=\"{name}\"}} {is_halted}"
        );
        let _ = writeln!(
            applied,
            "teachin_projection_events_applied_total{{projection=\"{name}\"}} {}",
            cp.events_applied
        );
        let _ = writeln!(
            lag,
            "teachin_projection_lag_events{{projection=\"{name}\"}} {backlog}"
        );
    }
    Ok(format!(
        "# HELP teachin_projection_halted 1 when the projection stopped on an event it cannot apply (see `teachin projections status`).\n\
         # TYPE teachin_projection_halted gauge\n{halted}\
         # HELP teachin_projection_events_applied_total Events the projection has consumed since its last rebuild.\n\
         # TYPE teachin_projection_events_applied_total counter\n{applied}\
         # HELP teachin_projection_lag_events Events committed after the projection's checkpoint (counted up to {LAG_COUNT_LIMIT}).\n\
         # TYPE teachin_projection_lag_events gauge\n{lag}"
    ))
}
