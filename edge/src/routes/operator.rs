//! Humans in the conversation (SPEC §7), on the edge's side:
//! - `/api/admin/operators`: the admin creates (the token is shown once), lists and revokes
//!   operators. Only a keyed hash of each token is stored ([`ThreadTokens::operator_token_hash`]).
//! - `/api/operator/*`: the operator's inbox, and join / leave / resolve / reply on a
//!   conversation, with `Authorization: Bearer <operator token>`. Every request looks the token up
//!   in PostgreSQL, so a revoked token is refused at once on every edge.
//! - On `/ws`: an operator token may `resume` (watch) any thread, and nothing else; `feedback`
//!   frames are validated and stored here.
//!
//! Join, leave, resolve and operator messages are published to the thread's inbound subject like
//! customer messages: the thread's worker applies them in order and sends their frames (`handoff`,
//! `human_message`) with `seq` (worker/src/handoff.rs). The edge keeps the assignment
//! (`threads.operator_id`), so a second operator's join is refused at once with 409.
//!
//! [`ThreadTokens::operator_token_hash`]: shared::auth::ThreadTokens::operator_token_hash

use anyhow::Context as _;
use axum::extract::{Path, Request, State};
use axum::http::header::AUTHORIZATION;
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::Response;
use axum::{Extension, Json};
use serde::Deserialize;
use serde_json::{json, Value};
use shared::ids::{MessageId, ThreadId, TurnId};
use shared::protocol::bus::{InboundKind, InboundMessage, OperatorId};
use shared::protocol::frames::UserText;
use shared::protocol::{ClientFrame, ErrorCode, FeedbackTarget, FrameError};
use uuid::Uuid;

use crate::connection::upstream::publish_inbound;
use crate::error::ApiError;
use crate::state::AppState;

/// An authenticated operator.
#[derive(Debug, Clone)]
pub struct Operator {
    pub id: Uuid,
    pub name: String,
}

impl Operator {
    fn as_bus(&self) -> OperatorId {
        OperatorId {
            id: self.id,
            name: self.name.clone(),
        }
    }
}

/// The operator whose token this is, if it is one and is not revoked.
pub async fn authenticate(state: &AppState, token: &str) -> Result<Option<Operator>, sqlx::Error> {
    if !token.starts_with(shared::auth::OPERATOR_TOKEN_PREFIX) || token.len() > 200 {
        return Ok(None);
    }
    let hash = state.tokens.operator_token_hash(token);
    sqlx::query_as!(
        Operator,
        "SELECT id, name FROM operators WHERE token_hash = $1 AND revoked_at IS NULL",
        hash,
    )
    .fetch_optional(&state.db)
    .await
}

/// A client frame that carried an operator token instead of the thread's: only `resume` (watching
/// the thread, read only) is allowed, with a valid, unrevoked token.
pub async fn authorize_watch(
    state: &AppState,
    frame: &ClientFrame,
    token: &str,
) -> Result<(), FrameError> {
    let thread = frame.thread_id();
    if !matches!(frame, ClientFrame::Resume { .. }) {
        return Err(FrameError::new(
            ErrorCode::Unauthorized,
            "an operator token may only resume (watch) a thread; this frame needs the thread's own token",
        )
        .on_thread(thread));
    }
    match authenticate(state, token).await {
        Ok(Some(_)) => Ok(()),
        Ok(None) => Err(FrameError::new(
            ErrorCode::Unauthorized,
            "the token does not match this thread",
        )
        .on_thread(thread)),
        Err(error) => {
            tracing::warn!(%error, "Cannot check an operator token.");
            Err(FrameError::new(
                ErrorCode::Busy,
                "the service is temporarily unavailable; try again",
            )
            .on_thread(thread))
        }
    }
}

/// Stores a `feedback` frame (the last one of each kind counts) and returns the id its
/// `accepted` carries. A turn the thread does not have is `invalid_frame`.
pub async fn feedback(
    state: &AppState,
    thread: &ThreadId,
    target: FeedbackTarget,
    comment: Option<String>,
) -> Result<MessageId, FrameError> {
    let unavailable = |error: sqlx::Error| {
        tracing::warn!(%error, thread_id = %thread, "Cannot store feedback.");
        FrameError::new(
            ErrorCode::Busy,
            "the service is temporarily unavailable; nothing was stored, send it again",
        )
        .on_thread(thread)
    };
    let comment = comment.map(|comment| comment.replace('\0', "\u{FFFD}"));
    let stored = match target {
        FeedbackTarget::Turn { turn_id, up } => {
            // The agents of every segment of the turn (an approval continues the same turn).
            let agents: Option<Vec<String>> = sqlx::query_scalar!(
                r#"SELECT array(SELECT DISTINCT a FROM turns t, unnest(t.agents) AS a
                                 WHERE t.thread_id = $1 AND t.turn_id = $2 ORDER BY a)
                              AS "agents!"
                    WHERE EXISTS (SELECT 1 FROM turns WHERE thread_id = $1 AND turn_id = $2
                                     AND kind IN ('message', 'interrupt_response'))"#,
                thread.as_str(),
                turn_id.as_uuid(),
            )
            .fetch_optional(&state.db)
            .await
            .map_err(unavailable)?;
            let Some(agents) = agents else {
                return Err(FrameError::new(
                    ErrorCode::InvalidFrame,
                    "`turn_id` is not a turn of this thread",
                )
                .on_thread(thread));
            };
            sqlx::query!(
                "INSERT INTO feedback (thread_id, kind, turn_id, rating, comment, agents)
                 VALUES ($1, 'turn', $2, $3, $4, $5)
                 ON CONFLICT (thread_id, turn_id) WHERE kind = 'turn'
                 DO UPDATE SET rating = EXCLUDED.rating, comment = EXCLUDED.comment,
                               agents = EXCLUDED.agents, created_at = now()",
                thread.as_str(),
                turn_id.as_uuid(),
                if up { "up" } else { "down" },
                comment,
                &agents,
            )
            .execute(&state.db)
            .await
        }
        FeedbackTarget::Csat { score } => {
            sqlx::query!(
                "INSERT INTO feedback (thread_id, kind, score, comment)
                 SELECT id, 'csat', $2, $3 FROM threads WHERE id = $1
                 ON CONFLICT (thread_id) WHERE kind = 'csat'
                 DO UPDATE SET score = EXCLUDED.score, comment = EXCLUDED.comment, created_at = now()",
                thread.as_str(),
                i16::from(score),
                comment,
            )
            .execute(&state.db)
            .await
        }
    };
    match stored {
        Ok(done) if done.rows_affected() == 0 => Err(FrameError::new(
            ErrorCode::InvalidFrame,
            "this thread has no conversation to rate yet",
        )
        .on_thread(thread)),
        Ok(_) => Ok(MessageId::generate()),
        Err(error) => Err(unavailable(error)),
    }
}

// ---- Admin: operators ----

#[derive(Debug, Deserialize)]
pub(super) struct NewOperator {
    name: String,
}

/// `POST /api/admin/operators` `{"name"}` → `201 {"id","name","token"}`; the token is shown once.
pub(super) async fn create(
    State(state): State<AppState>,
    body: Result<Json<NewOperator>, axum::extract::rejection::JsonRejection>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let Json(body) = body.map_err(|error| ApiError::BadRequest(error.body_text()))?;
    let name = body.name.trim().to_owned();
    if name.is_empty() || name.chars().count() > 100 || name.contains('\0') {
        return Err(ApiError::BadRequest(
            "`name` must be 1 to 100 characters".into(),
        ));
    }
    let id = Uuid::now_v7();
    let token = shared::auth::ThreadTokens::new_operator_token();
    let created_at = sqlx::query_scalar!(
        "INSERT INTO operators (id, name, token_hash) VALUES ($1, $2, $3) RETURNING created_at",
        id,
        name,
        state.tokens.operator_token_hash(&token),
    )
    .fetch_one(&state.db)
    .await
    .context("Failed to create an operator")
    .map_err(ApiError::Unavailable)?;
    tracing::info!(operator_id = %id, "Operator created.");
    Ok((
        StatusCode::CREATED,
        Json(json!({"id": id, "name": name, "token": token, "created_at": created_at})),
    ))
}

/// `GET /api/admin/operators`: every operator, without tokens, revoked ones included (marked).
pub(super) async fn list(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    let rows = sqlx::query!(
        "SELECT id, name, created_at, revoked_at FROM operators ORDER BY created_at, id LIMIT 1000",
    )
    .fetch_all(&state.db)
    .await
    .context("Failed to list operators")
    .map_err(ApiError::Unavailable)?;
    let operators: Vec<Value> = rows
        .into_iter()
        .map(|row| {
            json!({"id": row.id, "name": row.name, "created_at": row.created_at,
                   "revoked": row.revoked_at.is_some(), "revoked_at": row.revoked_at})
        })
        .collect();
    Ok(Json(json!({ "operators": operators })))
}

/// `DELETE /api/admin/operators/{id}`: revokes the operator's token at once (`204`); the
/// conversations they held go back to the inbox's unassigned ones.
pub(super) async fn revoke(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let id = Uuid::parse_str(&id).map_err(|_| ApiError::NotFound)?;
    let done = sqlx::query!(
        "UPDATE operators SET revoked_at = COALESCE(revoked_at, now()) WHERE id = $1",
        id,
    )
    .execute(&state.db)
    .await
    .context("Failed to revoke an operator")
    .map_err(ApiError::Unavailable)?;
    if done.rows_affected() == 0 {
        return Err(ApiError::NotFound);
    }
    tracing::info!(operator_id = %id, "Operator revoked.");
    Ok(StatusCode::NO_CONTENT)
}

// ---- Operator API ----

/// Lets a request through only with a valid, unrevoked operator token (the admin token is not
/// one), and an action (`POST`) only within `OPERATOR_ACTIONS_PER_MINUTE` of that operator's
/// (`429` with `Retry-After` past it); the handler gets the [`Operator`].
pub(super) async fn require_operator(
    State(state): State<AppState>,
    mut request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let presented = request
        .headers()
        .get(AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "))
        .unwrap_or_default();
    let operator = authenticate(&state, presented)
        .await
        .context("Failed to check an operator token")
        .map_err(ApiError::Unavailable)?
        .ok_or(ApiError::Unauthorized)?;
    // Actions (messages, join, leave, resolve) are bounded per operator; reading is not.
    if request.method() == axum::http::Method::POST {
        if let Err(retry_after) = state.operator_limit.check_wait(&operator.id) {
            tracing::info!(operator_id = %operator.id, "Operator rate limited.");
            return Err(ApiError::OperatorRateLimited { retry_after });
        }
    }
    request.extensions_mut().insert(operator);
    Ok(next.run(request).await)
}

/// `GET /api/operator/me`: who the token belongs to (the console shows it).
pub(super) async fn me(Extension(operator): Extension<Operator>) -> Json<Value> {
    Json(json!({"id": operator.id, "name": operator.name}))
}

/// `GET /api/operator/inbox`: conversations in `waiting` or `human` state, waiting ones first
/// (oldest wait first), then the ones with an operator.
pub(super) async fn inbox(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    let rows = sqlx::query!(
        r#"SELECT t.id, t.handoff_state, t.waiting_since, t.operator_id, o.name AS "operator?",
                  t.title,
                  (SELECT content FROM turns
                    WHERE thread_id = t.id AND kind IN ('message', 'human_message')
                      AND content IS NOT NULL
                    ORDER BY in_seq DESC LIMIT 1) AS last_message,
                  t.last_active_at, t.status
             FROM threads t LEFT JOIN operators o ON o.id = t.operator_id
            WHERE t.handoff_state <> 'ai'
            ORDER BY (t.handoff_state = 'waiting') DESC, t.waiting_since ASC NULLS LAST, t.id
            LIMIT 500"#,
    )
    .fetch_all(&state.db)
    .await
    .context("Failed to read the inbox")
    .map_err(ApiError::Unavailable)?;
    let now = chrono::Utc::now();
    let conversations: Vec<Value> = rows
        .into_iter()
        .map(|row| {
            let waiting_ms = row
                .waiting_since
                .filter(|_| row.handoff_state == "waiting")
                .map(|since| (now - since).num_milliseconds().max(0));
            let operator_id = row.operator_id;
            json!({
                "thread_id": row.id,
                "state": row.handoff_state,
                "status": row.status,
                "waiting_since": row.waiting_since,
                "waiting_ms": waiting_ms,
                "operator": row.operator.map(|name| json!({"id": operator_id, "name": name})),
                "title": row.title,
                "last_message": row.last_message,
                "last_active_at": row.last_active_at,
            })
        })
        .collect();
    Ok(Json(json!({ "conversations": conversations })))
}

fn thread_of(raw: &str) -> Result<ThreadId, ApiError> {
    ThreadId::parse(raw).map_err(|_| ApiError::NotFound)
}

/// The operator holding the thread: `Err(NotFound)` for an unknown thread.
async fn holder(state: &AppState, thread: &ThreadId) -> Result<Option<(Uuid, String)>, ApiError> {
    let row = sqlx::query!(
        r#"SELECT t.operator_id, o.name AS "name?"
             FROM threads t LEFT JOIN operators o ON o.id = t.operator_id
            WHERE t.id = $1"#,
        thread.as_str(),
    )
    .fetch_optional(&state.db)
    .await
    .context("Failed to read a conversation")
    .map_err(ApiError::Unavailable)?;
    match row.map(|row| (row.operator_id, row.name)) {
        None => Err(ApiError::NotFound),
        Some((Some(id), name)) => Ok(Some((id, name.unwrap_or_default()))),
        Some((None, _)) => Ok(None),
    }
}

fn held_by_other(name: &str) -> ApiError {
    ApiError::Conflict(format!(
        "{name} has joined this conversation; only one operator holds it at a time"
    ))
}

/// `POST /api/operator/conversations/{id}/join`: the operator takes the conversation (`human`,
/// assigned to them); `409` when another operator holds it. Joining again is a no-op.
pub(super) async fn join(
    State(state): State<AppState>,
    Extension(operator): Extension<Operator>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let thread = thread_of(&id)?;
    let claimed: Option<Option<Uuid>> = sqlx::query_scalar!(
        r#"UPDATE threads t SET operator_id = $2
             FROM (SELECT id, operator_id AS before FROM threads WHERE id = $1 FOR UPDATE) b
            WHERE t.id = b.id AND (t.operator_id IS NULL OR t.operator_id = $2)
           RETURNING b.before AS "before?""#,
        thread.as_str(),
        operator.id,
    )
    .fetch_optional(&state.db)
    .await
    .context("Failed to assign a conversation")
    .map_err(ApiError::Unavailable)?;
    let Some(before) = claimed else {
        return Err(match holder(&state, &thread).await? {
            Some((_, name)) => held_by_other(&name),
            None => ApiError::Conflict("the conversation changed hands; try again".into()),
        });
    };
    if before != Some(operator.id) {
        let kind = InboundKind::OperatorJoin {
            operator: operator.as_bus(),
        };
        if let Err(error) = publish(&state, &thread, None, kind).await {
            // Not stored: the conversation is not taken.
            let _ = sqlx::query!(
                "UPDATE threads SET operator_id = NULL WHERE id = $1 AND operator_id = $2",
                thread.as_str(),
                operator.id,
            )
            .execute(&state.db)
            .await;
            return Err(error);
        }
    }
    Ok(Json(json!({"thread_id": thread, "state": "human",
                   "operator": {"id": operator.id, "name": operator.name}})))
}

/// `POST /api/operator/conversations/{id}/leave`: hands the conversation back to the AI (`ai`).
/// Only the operator who joined may leave it.
pub(super) async fn leave(
    State(state): State<AppState>,
    Extension(operator): Extension<Operator>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let thread = thread_of(&id)?;
    release(&state, &thread, &operator, false).await?;
    let kind = InboundKind::OperatorLeave {
        operator: operator.as_bus(),
    };
    if let Err(error) = publish(&state, &thread, None, kind).await {
        reclaim(&state, &thread, &operator).await;
        return Err(error);
    }
    Ok(Json(json!({"thread_id": thread, "state": "ai"})))
}

/// `POST /api/operator/conversations/{id}/resolve`: ends the conversation (thread status
/// `resolved`, state `ai`). Any operator may resolve a conversation no other operator holds.
pub(super) async fn resolve(
    State(state): State<AppState>,
    Extension(operator): Extension<Operator>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let thread = thread_of(&id)?;
    let held = release(&state, &thread, &operator, true).await?;
    let kind = InboundKind::OperatorResolve {
        operator: operator.as_bus(),
    };
    if let Err(error) = publish(&state, &thread, None, kind).await {
        if held {
            reclaim(&state, &thread, &operator).await;
        }
        return Err(error);
    }
    Ok(Json(
        json!({"thread_id": thread, "state": "ai", "status": "resolved"}),
    ))
}

/// Clears the operator's assignment of the thread; with `unheld_ok`, a thread nobody holds is
/// fine too. Returns whether the operator held it.
async fn release(
    state: &AppState,
    thread: &ThreadId,
    operator: &Operator,
    unheld_ok: bool,
) -> Result<bool, ApiError> {
    let held: Option<bool> = sqlx::query_scalar!(
        r#"UPDATE threads t SET operator_id = NULL
             FROM (SELECT id, operator_id AS before FROM threads WHERE id = $1 FOR UPDATE) b
            WHERE t.id = b.id AND (t.operator_id = $2 OR ($3 AND t.operator_id IS NULL))
           RETURNING b.before IS NOT NULL AS "held!""#,
        thread.as_str(),
        operator.id,
        unheld_ok,
    )
    .fetch_optional(&state.db)
    .await
    .context("Failed to release a conversation")
    .map_err(ApiError::Unavailable)?;
    match held {
        Some(held) => Ok(held),
        None => Err(match holder(state, thread).await? {
            Some((_, name)) => held_by_other(&name),
            None => ApiError::Conflict("you have not joined this conversation".into()),
        }),
    }
}

/// Gives the operator the thread back after a publish that did not store.
async fn reclaim(state: &AppState, thread: &ThreadId, operator: &Operator) {
    let _ = sqlx::query!(
        "UPDATE threads SET operator_id = $2 WHERE id = $1 AND operator_id IS NULL",
        thread.as_str(),
        operator.id,
    )
    .execute(&state.db)
    .await;
}

#[derive(Debug, Deserialize)]
pub(super) struct OperatorMessage {
    content: Option<Value>,
    message_id: Option<Value>,
}

/// `POST /api/operator/conversations/{id}/messages` `{"content", "message_id"?}` → `202`: the
/// thread's worker sends it to every socket as `human_message`. Only by the operator who joined;
/// retried with the same `message_id`, it is delivered once.
pub(super) async fn message(
    State(state): State<AppState>,
    Extension(operator): Extension<Operator>,
    Path(id): Path<String>,
    body: Result<Json<OperatorMessage>, axum::extract::rejection::JsonRejection>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let thread = thread_of(&id)?;
    let Json(body) = body.map_err(|error| ApiError::BadRequest(error.body_text()))?;
    let content = match body.content {
        Some(Value::String(content)) => UserText::parse(content).map_err(|code| {
            ApiError::BadRequest(match code {
                ErrorCode::ContentTooLong => "`content` is longer than 10000 characters".into(),
                _ => "`content` is missing or blank".into(),
            })
        })?,
        _ => return Err(ApiError::BadRequest("`content` must be a string".into())),
    };
    let message_id = match body.message_id {
        None | Some(Value::Null) => MessageId::generate(),
        Some(Value::String(raw)) => MessageId::parse(&raw).map_err(|_| {
            ApiError::BadRequest(
                "`message_id` must be 1 to 64 characters of a-z, A-Z, 0-9, '_' or '-'".into(),
            )
        })?,
        Some(_) => return Err(ApiError::BadRequest("`message_id` must be a string".into())),
    };
    match holder(&state, &thread).await? {
        Some((holder, _)) if holder == operator.id => {}
        Some((_, name)) => return Err(held_by_other(&name)),
        None => {
            return Err(ApiError::Conflict(
                "join the conversation before writing in it".into(),
            ))
        }
    }
    let kind = InboundKind::HumanMessage {
        operator: operator.as_bus(),
        content,
    };
    publish(&state, &thread, Some(message_id.clone()), kind).await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({"thread_id": thread, "message_id": message_id})),
    ))
}

/// Stores an operator's message in the thread's inbound subject, as the socket does a customer's
/// (a publish that may have stored is sent again with the same id before giving up). Operator
/// messages have their own duplicate ids (`<thread>:op:<message_id>`), apart from the customer's.
async fn publish(
    state: &AppState,
    thread: &ThreadId,
    message_id: Option<MessageId>,
    kind: InboundKind,
) -> Result<(), ApiError> {
    let unavailable = |what: &str| {
        ApiError::Unavailable(anyhow::anyhow!("the message queue is unavailable: {what}"))
    };
    if state.nats.connection_state() != async_nats::connection::State::Connected {
        return Err(unavailable("not connected"));
    }
    let message = InboundMessage {
        thread_id: thread.clone(),
        message_id: message_id.unwrap_or_else(MessageId::generate),
        turn_id: TurnId::generate(),
        received_at: chrono::Utc::now(),
        kind,
    };
    let payload = message
        .to_bytes()
        .map_err(|error| unavailable(&error.to_string()))?;
    let dedup_id = format!("{thread}:op:{}", message.message_id);
    let trace_context = shared::telemetry::trace_headers();
    let subject = state.subjects.inbound(thread);
    let stored = publish_inbound(state, subject, &payload, &dedup_id, &trace_context, None).await;
    stored
        .map(|_ack| ())
        .map_err(|error| unavailable(&error.to_string()))
}
