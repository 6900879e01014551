//! `POST /api/threads`: a new thread and its token.

use anyhow::Context as _;
use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde::Serialize;
use shared::ids::ThreadId;

use crate::client_addr::ClientAddr;
use crate::error::ApiError;
use crate::rate_limit::Decision;
use crate::state::AppState;

#[derive(Debug, Serialize)]
pub(super) struct NewThread {
    thread_id: ThreadId,
    token: String,
}

pub(super) async fn create_thread(
    State(state): State<AppState>,
    ClientAddr(client): ClientAddr,
) -> Result<(StatusCode, Json<NewThread>), ApiError> {
    if state.thread_limit.check(&client) == Decision::Limited {
        state
            .metrics
            .errors
            .with_label_values(&["rate_limited"])
            .inc();
        return Err(ApiError::RateLimited);
    }
    let thread_id = ThreadId::generate();
    sqlx::query!("INSERT INTO threads (id) VALUES ($1)", thread_id.as_str())
        .execute(&state.db)
        .await
        .context("Failed to insert the new thread")
        .map_err(ApiError::Unavailable)?;
    state.metrics.threads_created.inc();
    let token = state.tokens.sign(&thread_id);
    Ok((StatusCode::CREATED, Json(NewThread { thread_id, token })))
}
