//! Liveness (`/healthz`: the process answers) and readiness (`/readyz`: it can reach its
//! database and, where the role uses it, Redis, and the schema is the one this binary
//! expects — so traffic may be routed to it). Kubernetes probes both on every role.

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use fred::prelude::{Client, ClientLike};
use serde_json::{json, Value};
use sqlx::PgPool;

#[derive(Clone)]
struct HealthState {
    role: &'static str,
    pool: PgPool,
    redis: Option<Client>,
}

/// The health routes of one role; `redis` when the role cannot work without it.
pub fn router(role: &'static str, pool: PgPool, redis: Option<Client>) -> Router {
    Router::new()
        .route("/healthz", get(live))
        .route("/readyz", get(ready))
        .with_state(HealthState { role, pool, redis })
}

async fn live(State(state): State<HealthState>) -> Json<Value> {
    Json(json!({ "status": "ok", "role": state.role }))
}

async fn ready(State(state): State<HealthState>) -> (StatusCode, Json<Value>) {
    let reason = if sqlx::query_scalar::<_, i32>("SELECT 1")
        .fetch_one(&state.pool)
        .await
        .is_err()
    {
        Some("database unreachable")
    } else if !teachin_commands::migrations::is_current(&state.pool).await {
        Some("database migrations not applied")
    } else if let Some(redis) = &state.redis {
        match redis.ping::<String>(None).await {
            Ok(_) => None,
            Err(_) => Some("redis unreachable"),
        }
    } else {
        None
    };
    match reason {
        None => (
            StatusCode::OK,
            Json(json!({ "status": "ready", "role": state.role })),
        ),
        Some(reason) => {
            tracing::warn!(reason, "readiness check failed");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(json!({ "status": "unavailable", "role": state.role, "reason": reason })),
            )
        }
    }
}
