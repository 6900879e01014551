//! `GET /api/threads/{id}/messages`: the thread's history for the chat page, behind its token.

use anyhow::Context as _;
use axum::extract::{Path, State};
use axum::http::header::AUTHORIZATION;
use axum::http::HeaderMap;
use axum::Json;
use serde::Serialize;
use shared::ids::ThreadId;
use shared::protocol::Usage;

use crate::error::ApiError;
use crate::state::AppState;

/// One entry of the history: the user's message or the assistant's reply to it.
#[derive(Debug, Serialize)]
#[serde(tag = "role", rename_all = "snake_case")]
pub(super) enum Entry {
    User {
        message_id: String,
        turn_id: uuid::Uuid,
        content: Option<String>,
        at: chrono::DateTime<chrono::Utc>,
    },
    Assistant {
        turn_id: uuid::Uuid,
        content: String,
        /// `completed`, or `dead_lettered` when the message could not be processed.
        outcome: String,
        /// The `seq` of the turn's last frame: a client resumes after it.
        last_seq: i64,
        usage: Usage,
        at: chrono::DateTime<chrono::Utc>,
    },
}

#[derive(Debug, Serialize)]
pub(super) struct History {
    thread_id: ThreadId,
    status: String,
    /// The thread's last frame `seq` committed so far.
    last_seq: i64,
    messages: Vec<Entry>,
}

type TurnRow = (
    String,
    uuid::Uuid,
    Option<String>,
    String,
    String,
    i64,
    i64,
    i64,
    f64,
    chrono::DateTime<chrono::Utc>,
    chrono::DateTime<chrono::Utc>,
);

pub(super) async fn messages(
    State(state): State<AppState>,
    Path(thread_id): Path<String>,
    headers: HeaderMap,
) -> Result<Json<History>, ApiError> {
    let thread_id = ThreadId::parse(thread_id)
        .map_err(|error| ApiError::BadRequest(format!("thread id {error}")))?;
    let token = headers
        .get(AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "))
        .unwrap_or_default();
    if !state.tokens.verify(&thread_id, token) {
        return Err(ApiError::Unauthorized);
    }
    // One snapshot for the thread and its turns, so `last_seq` matches the turns listed.
    let mut snapshot = state
        .db
        .begin()
        .await
        .context("Failed to start a read")
        .map_err(ApiError::Unavailable)?;
    sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
        .execute(&mut *snapshot)
        .await
        .context("Failed to start a read")
        .map_err(ApiError::Unavailable)?;
    let thread: Option<(String, i64)> =
        sqlx::query_as("SELECT status, last_seq FROM threads WHERE id = $1")
            .bind(thread_id.as_str())
            .fetch_optional(&mut *snapshot)
            .await
            .context("Failed to read the thread")
            .map_err(ApiError::Unavailable)?;
    let Some((status, last_seq)) = thread else {
        return Err(ApiError::NotFound);
    };
    let rows: Vec<TurnRow> = sqlx::query_as(
        "SELECT message_id, turn_id, content, reply, outcome, last_seq, prompt_tokens,
                completion_tokens, cost_usd, received_at, completed_at
           FROM turns WHERE thread_id = $1 AND kind = 'message' ORDER BY in_seq",
    )
    .bind(thread_id.as_str())
    .fetch_all(&mut *snapshot)
    .await
    .context("Failed to read the thread's turns")
    .map_err(ApiError::Unavailable)?;
    snapshot
        .commit()
        .await
        .context("Failed to finish a read")
        .map_err(ApiError::Unavailable)?;
    let mut messages = Vec::with_capacity(rows.len() * 2);
    for row in rows {
        let (
            message_id,
            turn_id,
            content,
            reply,
            outcome,
            turn_last_seq,
            prompt,
            completion,
            cost,
            received,
            completed,
        ) = row;
        messages.push(Entry::User {
            message_id,
            turn_id,
            content,
            at: received,
        });
        messages.push(Entry::Assistant {
            turn_id,
            content: reply,
            outcome,
            last_seq: turn_last_seq,
            usage: Usage {
                prompt_tokens: u64::try_from(prompt).unwrap_or_default(),
                completion_tokens: u64::try_from(completion).unwrap_or_default(),
                cost_usd: cost,
            },
            at: completed,
        });
    }
    Ok(Json(History {
        thread_id,
        status,
        last_seq,
        messages,
    }))
}
