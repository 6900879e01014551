//! `GET /api/threads/{id}/messages`: the thread's history for the chat page, behind its token.
//!
//! Paginated from the newest turn back: `?limit=` turns per page (default [`DEFAULT_LIMIT`], at
//! most [`MAX_LIMIT`]), in chronological order; `next_cursor` (opaque) is passed back as
//! `?before=` for the turns before the page, and is `null` on the oldest page.
//!
//! `handoff` says what the last `handoff` frame of the listed history said (SPEC §7), so that a
//! reloaded page shows who answers and the CSAT prompt without waiting for the next one.

use anyhow::Context as _;
use axum::extract::{Path, Query, State};
use axum::http::header::AUTHORIZATION;
use axum::http::HeaderMap;
use axum::Json;
use serde::{Deserialize, Serialize};
use shared::ids::ThreadId;
use shared::protocol::{HandoffState, OperatorRef, Usage};
use shared::turns::{ThreadStatus, TurnKind};

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
        /// `completed`, `interrupted` (waiting for an approval), `clarification`,
        /// `session_expired`, or `dead_lettered` when the message could not be processed.
        outcome: String,
        /// The `seq` of the turn's last frame: a client resumes after it.
        last_seq: i64,
        usage: Usage,
        at: chrono::DateTime<chrono::Utc>,
    },
    /// A human operator's message (SPEC §7).
    Operator {
        message_id: String,
        turn_id: uuid::Uuid,
        content: Option<String>,
        /// The operator's name as the customer saw it (`null` only for rows older than it).
        operator: Option<OperatorRef>,
        last_seq: i64,
        at: chrono::DateTime<chrono::Utc>,
    },
}

/// The approval the thread waits for: what the chat page shows as an approval card.
#[derive(Debug, Serialize)]
pub(super) struct PendingApproval {
    interrupt_id: uuid::Uuid,
    turn_id: uuid::Uuid,
    action: String,
    params: serde_json::Value,
    expires_at: chrono::DateTime<chrono::Utc>,
}

/// The thread's handoff state as of `last_seq`: the fields of its last `handoff` frame.
#[derive(Debug, Serialize)]
pub(super) struct Handoff {
    state: HandoffState,
    /// Who joined, while `human`.
    operator: Option<OperatorRef>,
    /// An operator resolved the conversation and nobody asked for a human since: the page may
    /// ask for a CSAT score.
    resolved: bool,
}

/// Turns per page when the client names no `limit`.
pub(super) const DEFAULT_LIMIT: u32 = 50;
/// The largest `limit` accepted.
pub(super) const MAX_LIMIT: u32 = 200;

#[derive(Debug, Deserialize)]
pub(super) struct Page {
    limit: Option<u32>,
    /// `next_cursor` of the page after this one (newer turns).
    before: Option<String>,
}

#[derive(Debug, Serialize)]
pub(super) struct History {
    thread_id: ThreadId,
    status: ThreadStatus,
    /// The thread's last frame `seq` committed so far.
    last_seq: i64,
    messages: Vec<Entry>,
    /// Pass as `?before=` for the older turns; `null` when this page holds the oldest.
    next_cursor: Option<String>,
    /// Set while the thread's last turn waits for an approval.
    pending_approval: Option<PendingApproval>,
    /// Who answers the customer now (SPEC §7), whatever the page.
    handoff: Handoff,
}

pub(super) async fn messages(
    State(state): State<AppState>,
    Path(thread_id): Path<String>,
    Query(page): Query<Page>,
    headers: HeaderMap,
) -> Result<Json<History>, ApiError> {
    let limit = page.limit.unwrap_or(DEFAULT_LIMIT);
    if !(1..=MAX_LIMIT).contains(&limit) {
        return Err(ApiError::BadRequest(format!(
            "limit must be between 1 and {MAX_LIMIT}"
        )));
    }
    let before = match page.before.as_deref() {
        None => i64::MAX,
        Some(cursor) => cursor
            .parse::<i64>()
            .ok()
            .filter(|position| *position > 0)
            .ok_or_else(|| ApiError::BadRequest("before is not a cursor of this API".into()))?,
    };
    let thread_id = ThreadId::parse(thread_id)
        .map_err(|error| ApiError::BadRequest(format!("thread id {error}")))?;
    let token = headers
        .get(AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "))
        .unwrap_or_default();
    // An erased conversation's owner learns it is gone (404: its row is deleted), nothing else.
    if !state.tokens.verify_signature(&thread_id, token) {
        return Err(ApiError::Unauthorized);
    }
    if state.tokens.erased().contains(&thread_id) {
        return Err(ApiError::NotFound);
    }
    // One snapshot for the thread and its turns, so `last_seq` matches the turns listed.
    let mut snapshot = state
        .db
        .begin()
        .await
        .context("Failed to start a read")
        .map_err(ApiError::Unavailable)?;
    sqlx::query!("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
        .execute(&mut *snapshot)
        .await
        .context("Failed to start a read")
        .map_err(ApiError::Unavailable)?;
    // The handoff state is committed with `last_seq` by the thread's worker; the name of the
    // operator who joined and whether the last change was a resolve come from the handoff turns
    // (their events name the operator as the frames did), so all of it matches `last_seq`.
    let thread = sqlx::query!(
        r#"SELECT t.status AS "status: ThreadStatus", t.last_seq, t.handoff_state AS "handoff_state: HandoffState",
                  (SELECT events->0->>'operator_name' FROM turns
                    WHERE thread_id = t.id AND kind = 'operator_join'
                    ORDER BY in_seq DESC LIMIT 1) AS joined_name,
                  COALESCE((SELECT kind = 'operator_resolve' FROM turns
                             WHERE thread_id = t.id
                               AND kind IN ('request_human', 'operator_join', 'operator_resolve')
                             ORDER BY in_seq DESC LIMIT 1), false) AS "resolved!",
                  i.id AS "interrupt_id?", i.turn_id AS "turn_id?", i.action AS "action?",
                  i.params AS "params?", i.expires_at AS "expires_at?"
             FROM threads t LEFT JOIN interrupts i ON i.id = t.pending_interrupt
            WHERE t.id = $1"#,
        thread_id.as_str(),
    )
    .fetch_optional(&mut *snapshot)
    .await
    .context("Failed to read the thread")
    .map_err(ApiError::Unavailable)?;
    let Some(thread) = thread else {
        return Err(ApiError::NotFound);
    };
    let handoff_state = thread.handoff_state;
    let handoff = Handoff {
        state: handoff_state,
        operator: thread
            .joined_name
            .filter(|_| handoff_state == HandoffState::Human)
            .map(|name| OperatorRef { name }),
        // A resolve hands the conversation back to the AI; a later wait or join ends it.
        resolved: thread.resolved && handoff_state == HandoffState::Ai,
    };
    // The page's messages (one more, to know whether older ones exist), newest first; then their
    // rows and the rows of the approvals' answers that continue their turns, in order.
    let page_starts: Vec<i64> = sqlx::query_scalar!(
        "SELECT in_seq FROM turns
          WHERE thread_id = $1 AND kind = 'message' AND in_seq < $2
          ORDER BY in_seq DESC LIMIT $3",
        thread_id.as_str(),
        before,
        i64::from(limit) + 1,
    )
    .fetch_all(&mut *snapshot)
    .await
    .context("Failed to read the thread's turns")
    .map_err(ApiError::Unavailable)?;
    let has_older = page_starts.len() > limit as usize;
    let oldest = page_starts
        .get(..page_starts.len().min(limit as usize))
        .and_then(<[i64]>::last)
        .copied()
        .unwrap_or(before);
    let next_cursor = has_older.then(|| oldest.to_string());
    let rows = sqlx::query!(
        r#"SELECT kind AS "kind: TurnKind", message_id, turn_id, content, reply, outcome,
                  last_seq, prompt_tokens, completion_tokens, cost_usd, received_at, completed_at,
                  CASE WHEN kind = 'human_message' THEN events->0->>'operator_name' END
                      AS operator_name
             FROM turns WHERE thread_id = $1 AND in_seq >= $2 AND in_seq < $3 ORDER BY in_seq"#,
        thread_id.as_str(),
        oldest,
        before,
    )
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
        let usage = Usage {
            prompt_tokens: u64::try_from(row.prompt_tokens).unwrap_or_default(),
            completion_tokens: u64::try_from(row.completion_tokens).unwrap_or_default(),
            cost_usd: row.cost_usd,
        };
        if row.kind == TurnKind::HumanMessage {
            messages.push(Entry::Operator {
                message_id: row.message_id,
                turn_id: row.turn_id,
                content: row.content,
                operator: row.operator_name.map(|name| OperatorRef { name }),
                last_seq: row.last_seq,
                at: row.received_at,
            });
            continue;
        }
        if row.kind != TurnKind::Message {
            // An answer to an approval continues its turn: its reply belongs to that turn's.
            continue_turn(
                &mut messages,
                row.turn_id,
                &row.reply,
                &row.outcome,
                row.last_seq,
                usage,
                row.completed_at,
            );
            continue;
        }
        messages.push(Entry::User {
            message_id: row.message_id,
            turn_id: row.turn_id,
            content: row.content,
            at: row.received_at,
        });
        messages.push(Entry::Assistant {
            turn_id: row.turn_id,
            content: row.reply,
            outcome: row.outcome,
            last_seq: row.last_seq,
            usage,
            at: row.completed_at,
        });
    }
    let pending_approval = match (
        thread.interrupt_id,
        thread.turn_id,
        thread.action,
        thread.params,
        thread.expires_at,
    ) {
        (Some(interrupt_id), Some(turn_id), Some(action), Some(params), Some(expires_at)) => {
            Some(PendingApproval {
                interrupt_id,
                turn_id,
                action,
                params,
                expires_at,
            })
        }
        _ => None,
    };
    Ok(Json(History {
        thread_id,
        status: thread.status,
        last_seq: thread.last_seq,
        messages,
        next_cursor,
        pending_approval,
        handoff,
    }))
}

/// Adds the segment of a turn that an approval's answer ran to the turn's assistant entry.
fn continue_turn(
    messages: &mut [Entry],
    turn: uuid::Uuid,
    reply: &str,
    segment_outcome: &str,
    segment_last_seq: i64,
    segment_usage: Usage,
    completed: chrono::DateTime<chrono::Utc>,
) {
    let entry = messages
        .iter_mut()
        .rev()
        .find(|entry| matches!(entry, Entry::Assistant { turn_id, .. } if *turn_id == turn));
    if let Some(Entry::Assistant {
        content,
        outcome,
        last_seq,
        usage,
        at,
        ..
    }) = entry
    {
        if !content.is_empty() && !reply.is_empty() {
            content.push_str("\n\n");
        }
        content.push_str(reply);
        *outcome = segment_outcome.to_owned();
        *last_seq = segment_last_seq;
        usage.prompt_tokens += segment_usage.prompt_tokens;
        usage.completion_tokens += segment_usage.completion_tokens;
        usage.cost_usd += segment_usage.cost_usd;
        *at = completed;
    }
}
