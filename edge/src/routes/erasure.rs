//! Erasure (SPEC §8): `DELETE /api/threads/{id}` with the thread's own token (the customer's
//! right to erasure) and `DELETE /api/admin/conversations/{id}`. Both answer `204` once the
//! conversation is gone everywhere (see `shared::erasure`).

use std::time::Duration;

use anyhow::Context as _;
use axum::extract::{Path, State};
use axum::http::header::AUTHORIZATION;
use axum::http::{HeaderMap, StatusCode};
use shared::erasure::{Actor, Places};
use shared::ids::ThreadId;

use crate::error::ApiError;
use crate::state::AppState;

/// A turn that was running when the conversation was erased stops at its next safe point; the
/// erasure runs once more after this delay for anything it wrote meanwhile.
const ERASE_AGAIN_AFTER: Duration = Duration::from_secs(3);

pub(super) async fn delete_own(
    State(state): State<AppState>,
    Path(thread_id): Path<String>,
    headers: HeaderMap,
) -> Result<StatusCode, ApiError> {
    let thread_id = ThreadId::parse(thread_id)
        .map_err(|error| ApiError::BadRequest(format!("thread id {error}")))?;
    let token = headers
        .get(AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "))
        .unwrap_or_default();
    if !state.tokens.verify_signature(&thread_id, token) {
        return Err(ApiError::Unauthorized);
    }
    erase(&state, &thread_id, Actor::Owner).await
}

pub(super) async fn delete_admin(
    State(state): State<AppState>,
    Path(thread_id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let thread_id = ThreadId::parse(thread_id)
        .map_err(|error| ApiError::BadRequest(format!("thread id {error}")))?;
    erase(&state, &thread_id, Actor::Admin).await
}

async fn erase(
    state: &AppState,
    thread_id: &ThreadId,
    actor: Actor,
) -> Result<StatusCode, ApiError> {
    let (exists, erased) = shared::erasure::known(&state.db, thread_id)
        .await
        .context("Failed to look the conversation up")
        .map_err(ApiError::Unavailable)?;
    if !exists || erased {
        return Err(ApiError::NotFound);
    }
    // This edge refuses the token at once; the others when the announcement reaches them.
    state.tokens.erased().insert(thread_id.as_str());
    let places = places(state);
    shared::erasure::erase(&places, thread_id, actor)
        .await
        .context("Failed to erase the conversation")
        .map_err(ApiError::Unavailable)?;
    state
        .metrics
        .erasures
        .with_label_values(&[actor.as_str()])
        .inc();
    tracing::info!(thread_id = %thread_id, actor = actor.as_str(), "Conversation erased.");
    let thread_id = thread_id.clone();
    tokio::spawn(async move {
        tokio::time::sleep(ERASE_AGAIN_AFTER).await;
        if let Err(error) = shared::erasure::erase(&places, &thread_id, actor).await {
            tracing::warn!(%error, thread_id = %thread_id, "The second pass of an erasure failed.");
        }
    });
    Ok(StatusCode::NO_CONTENT)
}

fn places(state: &AppState) -> Places {
    Places {
        db: state.db.clone(),
        nats: state.nats.clone(),
        inbound: (*state.inbound).clone(),
        replies: (*state.replies).clone(),
        subjects: (*state.subjects).clone(),
    }
}

/// Keeps this edge's set of erased threads current: the tombstones stored so far, then every
/// erasure announced on `<prefix>.erased`, and the tombstones again every so often (an
/// announcement sent while this edge was disconnected is not lost).
pub async fn watch_erasures(state: &AppState) -> anyhow::Result<()> {
    use futures_util::StreamExt as _;
    let mut announced = state
        .nats
        .subscribe(state.subjects.erased())
        .await
        .context("Failed to subscribe to erasure announcements")?;
    let erased = state.tokens.erased().clone();
    // Without the schema yet (`MIGRATE=false` before `worker setup`), the tombstones are read at
    // the next refresh; until then the announcements keep the set.
    let mut loaded = false;
    let mut since = match erased.load(&state.db, None).await {
        Ok(latest) => {
            loaded = true;
            latest
        }
        Err(error) => {
            tracing::warn!(%error, "Cannot load the erased conversations yet; trying again.");
            None
        }
    };
    let db = state.db.clone();
    tokio::spawn(async move {
        let mut refresh = tokio::time::interval(Duration::from_secs(10));
        refresh.tick().await;
        loop {
            tokio::select! {
                message = announced.next() => {
                    let Some(message) = message else { break };
                    if let Ok(thread) = std::str::from_utf8(&message.payload) {
                        erased.insert(thread);
                    }
                }
                _ = refresh.tick() => match erased.load(&db, since).await {
                    Ok(latest) => {
                        since = latest;
                        loaded = true;
                    }
                    Err(error) if loaded => tracing::warn!(%error, "Cannot refresh the erased conversations."),
                    Err(error) => tracing::debug!(%error, "The erased conversations cannot be read yet."),
                },
            }
        }
    });
    Ok(())
}
