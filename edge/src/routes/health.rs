//! Health: `GET /api/health` and `GET /readyz` really ask NATS and PostgreSQL and name the one that
//! fails (503); `GET /livez` only says the process serves, so a dependency's blip restarts nothing.

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde_json::{json, Value};

use crate::state::AppState;

/// `/api/health` (SPEC §4) and `/readyz` (SPEC §9): the same checks and body.
pub(super) async fn health(State(state): State<AppState>) -> (StatusCode, Json<Value>) {
    readiness(&state.dependencies()).await
}

/// `/livez`: no dependency is checked.
pub(super) async fn live() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

async fn readiness(dependencies: &shared::health::Dependencies) -> (StatusCode, Json<Value>) {
    let readiness = dependencies.check().await;
    let status = if readiness.is_ready() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(readiness.body("edge")))
}
