//! Liveness (`/healthz`: the process answers) and readiness (`/readyz`: it can reach its
//! database, so traffic may be routed to it). Kubernetes probes both on every role.

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Value};
use sqlx::PgPool;

#[derive(Clone)]
struct HealthState {
    role: &'static str,
    pool: PgPool,
}

/// The health routes of one role.
pub fn router(role: &'static str, pool: PgPool) -> Router {
    Router::new()
        .route("/healthz", get(live))
        .route("/readyz", get(ready))
        .with_state(HealthState { role, pool })
}

async fn live(State(state): State<HealthState>) -> Json<Value> {
    Json(json!({ "status": "ok", "role": state.role }))
}

async fn ready(State(state): State<HealthState>) -> (StatusCode, Json<Value>) {
    match sqlx::query_scalar::<_, i32>("SELECT 1")
        .fetch_one(&state.pool)
        .await
    {
        Ok(_) => (
            StatusCode::OK,
            Json(json!({ "status": "ready", "role": state.role })),
        ),
        Err(e) => {
            tracing::warn!(error = %e, "readiness check: database unreachable");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(
                    json!({ "status": "unavailable", "role": state.role, "reason": "database unreachable" }),
                ),
            )
        }
    }
}
