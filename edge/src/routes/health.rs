//! `GET /api/health`: really asks NATS and PostgreSQL, and names the one that fails.

use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde_json::{json, Value};

use crate::state::AppState;

const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

pub(super) async fn health(State(state): State<AppState>) -> (StatusCode, Json<Value>) {
    let (nats, database) = tokio::join!(check_nats(&state), check_database(&state));
    let healthy = nats.is_ok() && database.is_ok();
    let describe = |check: Result<(), String>| match check {
        Ok(()) => "ok".to_owned(),
        Err(error) => error,
    };
    let body = json!({
        "status": if healthy { "ok" } else { "unavailable" },
        "service": "edge",
        "version": env!("CARGO_PKG_VERSION"),
        "checks": {"nats": describe(nats), "database": describe(database)},
    });
    let status = if healthy {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body))
}

/// A JetStream round trip: proves the server is reachable and the inbound stream answers.
async fn check_nats(state: &AppState) -> Result<(), String> {
    if state.nats.connection_state() != async_nats::connection::State::Connected {
        return Err("error: not connected".into());
    }
    match tokio::time::timeout(
        CHECK_TIMEOUT,
        state.jetstream.get_stream(state.subjects.inbound_stream()),
    )
    .await
    {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(error)) => Err(format!("error: {error}")),
        Err(_) => Err("error: timed out".into()),
    }
}

async fn check_database(state: &AppState) -> Result<(), String> {
    let query = sqlx::query_scalar::<_, i32>("SELECT 1").fetch_one(&state.db);
    match tokio::time::timeout(CHECK_TIMEOUT, query).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(error)) => Err(format!("error: {error}")),
        Err(_) => Err("error: timed out".into()),
    }
}
