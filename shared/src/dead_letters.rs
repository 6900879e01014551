//! Reading the dead letters: messages given up on after `TURN_MAX_ATTEMPTS` failed attempts.
//! Shared by `worker dead-letters …` and `GET /api/admin/dead-letters`.

use serde::Serialize;
use sqlx::PgPool;
use uuid::Uuid;

/// One dead letter, as operators see it.
#[derive(Debug, Clone, Serialize)]
pub struct DeadLetterRow {
    pub id: Uuid,
    pub thread_id: String,
    /// Stream sequence of the message in `<PREFIX>_IN`.
    pub in_seq: i64,
    pub message_id: String,
    pub turn_id: Uuid,
    pub attempts: i32,
    pub reason: String,
    /// Every failed attempt: `[{"at", "error"}]`, oldest first.
    pub history: serde_json::Value,
    pub created_at: chrono::DateTime<chrono::Utc>,
    pub replayed_at: Option<chrono::DateTime<chrono::Utc>>,
    pub replay_seq: Option<i64>,
}

/// Dead letters, newest first; `include_replayed` also lists those already re-driven.
pub async fn list(
    db: &PgPool,
    include_replayed: bool,
    limit: i64,
) -> Result<Vec<DeadLetterRow>, sqlx::Error> {
    sqlx::query_as!(
        DeadLetterRow,
        "SELECT id, thread_id, in_seq, message_id, turn_id, attempts, reason, history,
                created_at, replayed_at, replay_seq
           FROM dead_letters WHERE $1 OR replayed_at IS NULL
          ORDER BY created_at DESC, id DESC LIMIT $2",
        include_replayed,
        limit,
    )
    .fetch_all(db)
    .await
}

pub async fn get(db: &PgPool, id: Uuid) -> Result<Option<DeadLetterRow>, sqlx::Error> {
    sqlx::query_as!(
        DeadLetterRow,
        "SELECT id, thread_id, in_seq, message_id, turn_id, attempts, reason, history,
                created_at, replayed_at, replay_seq
           FROM dead_letters WHERE id = $1",
        id,
    )
    .fetch_optional(db)
    .await
}
