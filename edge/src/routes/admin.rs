//! `/api/admin/*` (SPEC §4): bearer-token operator routes. With `ADMIN_TOKEN` unset they answer
//! 404, as if they did not exist.

use anyhow::Context as _;
use axum::extract::{Query, Request, State};
use axum::http::header::AUTHORIZATION;
use axum::middleware::Next;
use axum::response::Response;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};
use sha2::{Digest as _, Sha256};
use shared::ids::ThreadId;
use shared::replay::{ReplayRequest, ReplaySummary, Replayer, Selection};
use subtle::ConstantTimeEq as _;

use crate::error::ApiError;
use crate::state::AppState;

/// Lets a request through only with `Authorization: Bearer <ADMIN_TOKEN>`, compared in constant
/// time (digests of equal length, so the token's length does not leak either).
pub(super) async fn require_admin(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let Some(expected) = &state.admin_token else {
        return Err(ApiError::NotFound);
    };
    let presented = request
        .headers()
        .get(AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "))
        .unwrap_or_default();
    let matches: bool = Sha256::digest(presented.as_bytes())
        .ct_eq(&Sha256::digest(expected.expose().as_bytes()))
        .into();
    if presented.is_empty() || !matches {
        return Err(ApiError::Unauthorized);
    }
    Ok(next.run(request).await)
}

#[derive(Debug, Deserialize)]
pub(super) struct DeadLettersQuery {
    /// Also list dead letters already re-driven.
    #[serde(default)]
    all: bool,
    limit: Option<i64>,
}

/// `GET /api/admin/dead-letters`: the same list as `worker dead-letters list`.
pub(super) async fn dead_letters(
    State(state): State<AppState>,
    Query(query): Query<DeadLettersQuery>,
) -> Result<Json<Value>, ApiError> {
    let limit = query.limit.unwrap_or(100).clamp(1, 1000);
    let letters = shared::dead_letters::list(&state.db, query.all, limit)
        .await
        .context("Failed to read the dead letters")
        .map_err(ApiError::Unavailable)?;
    Ok(Json(json!({ "dead_letters": letters })))
}

/// The body of `POST /api/admin/replay`: exactly one of `thread_id`, `since` (with an optional
/// `until`) or `dead_letters: true`.
#[derive(Debug, Deserialize)]
pub(super) struct ReplayBody {
    thread_id: Option<String>,
    since: Option<chrono::DateTime<chrono::Utc>>,
    until: Option<chrono::DateTime<chrono::Utc>>,
    #[serde(default)]
    dead_letters: bool,
    #[serde(default)]
    dry_run: bool,
    #[serde(default)]
    force: bool,
}

/// `POST /api/admin/replay`: the same operation as `worker replay`.
pub(super) async fn replay(
    State(state): State<AppState>,
    body: Result<Json<ReplayBody>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<ReplaySummary>, ApiError> {
    let Json(body) = body.map_err(|rejection| ApiError::BadRequest(rejection.body_text()))?;
    let selection = match (body.thread_id, body.since, body.dead_letters) {
        (Some(thread), None, false) => Selection::Thread(
            ThreadId::parse(thread)
                .map_err(|error| ApiError::BadRequest(format!("thread_id {error}")))?,
        ),
        (None, Some(since), false) => Selection::Window {
            since,
            until: body.until,
        },
        (None, None, true) => Selection::DeadLetters,
        _ => return Err(ApiError::BadRequest(
            "give exactly one of thread_id, since (with an optional until) or dead_letters: true"
                .into(),
        )),
    };
    if body.until.is_some() && !matches!(selection, Selection::Window { .. }) {
        return Err(ApiError::BadRequest("until needs since".into()));
    }
    let replayer = Replayer {
        jetstream: &state.jetstream,
        inbound: &state.inbound,
        db: &state.db,
        subjects: &state.subjects,
    };
    let request = ReplayRequest {
        selection,
        dry_run: body.dry_run,
        force: body.force,
    };
    let summary = replayer
        .run(&request, |_, _| {})
        .await
        .map_err(ApiError::Unavailable)?;
    Ok(Json(summary))
}
