//! Approvals (`interrupts`): raised with the paused turn's checkpoint, loaded by the answer,
//! decided once.

use shared::turns::{InterruptId, InterruptStatus};
use uuid::Uuid;

use super::{storable_json, to_i64, to_u64, Store};
use crate::error::TurnError;
use crate::records::PendingInterrupt;

impl Store {
    /// When an approval was raised (stored, just before its `interrupt` frame went out).
    pub async fn interrupt_raised_at(
        &self,
        id: InterruptId,
    ) -> Result<Option<chrono::DateTime<chrono::Utc>>, TurnError> {
        Ok(
            sqlx::query_file_scalar!("queries/interrupt_raised_at.sql", id.as_uuid())
                .fetch_optional(&self.db)
                .await?,
        )
    }

    /// The approval `id`, with its checkpoint.
    pub async fn load_interrupt(
        &self,
        id: InterruptId,
    ) -> Result<Option<PendingInterrupt>, TurnError> {
        let Some(row) = sqlx::query_file!("queries/load_interrupt.sql", id.as_uuid())
            .fetch_optional(&self.db)
            .await?
        else {
            return Ok(None);
        };
        let checkpoint = serde_json::from_value(row.checkpoint).map_err(|error| {
            TurnError::Turn(format!(
                "the checkpoint of approval {id} does not decode: {error}"
            ))
        })?;
        Ok(Some(PendingInterrupt {
            id,
            turn_id: row.turn_id,
            agent: row.agent,
            action: row.action,
            params: row.params,
            checkpoint,
            expires_at: row.expires_at,
            status: row.status,
            decided_in_seq: row.decided_in_seq.map(to_u64),
        }))
    }

    /// Records what became of an approval (`approved`, `rejected`, `expired`, `superseded`), by
    /// the message at `in_seq`. Idempotent for that message; a decision by another one stands.
    pub async fn decide_interrupt(
        &self,
        id: InterruptId,
        status: InterruptStatus,
        in_seq: u64,
    ) -> Result<(), sqlx::Error> {
        sqlx::query_file!(
            "queries/decide_interrupt.sql",
            id.as_uuid(),
            status.as_str(),
            to_i64(in_seq),
        )
        .execute(&self.db)
        .await?;
        Ok(())
    }

    /// Marks an approved approval `cancelled` if its tool never ran (its turn was cancelled
    /// between the answer and the call).
    pub async fn withdraw_unexecuted(&self, id: InterruptId) -> Result<(), sqlx::Error> {
        sqlx::query!(
            "UPDATE interrupts SET status = 'cancelled'
              WHERE id = $1 AND status = 'approved'
                AND NOT EXISTS (SELECT 1 FROM tool_executions WHERE interrupt_id = $1)",
            id.as_uuid(),
        )
        .execute(&self.db)
        .await?;
        Ok(())
    }

    /// Stores a new approval `id` for the turn at `in_seq` with the checkpoint it continues
    /// from. An approval an earlier attempt at the same message raised and then failed is marked
    /// `abandoned` first: it was never the thread's pending approval.
    pub async fn raise_interrupt(&self, interrupt: &NewInterrupt<'_>) -> Result<(), sqlx::Error> {
        let in_seq = to_i64(interrupt.in_seq);
        sqlx::query_file!(
            "queries/abandon_interrupts.sql",
            interrupt.thread_id,
            in_seq,
        )
        .execute(&self.db)
        .await?;
        sqlx::query!(
            "INSERT INTO interrupts (id, thread_id, turn_id, in_seq, agent, action, params, checkpoint, expires_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
            interrupt.id.as_uuid(),
            interrupt.thread_id,
            interrupt.turn_id,
            in_seq,
            interrupt.agent,
            interrupt.action,
            &*storable_json(interrupt.params),
            &*storable_json(interrupt.checkpoint),
            interrupt.expires_at,
        )
        .execute(&self.db)
        .await?;
        Ok(())
    }
}

/// An approval about to be raised.
#[derive(Debug)]
pub struct NewInterrupt<'a> {
    pub id: InterruptId,
    pub thread_id: &'a str,
    pub turn_id: Uuid,
    pub in_seq: u64,
    pub agent: &'a str,
    pub action: &'a str,
    pub params: &'a serde_json::Value,
    /// The encoded [`crate::records::Checkpoint`].
    pub checkpoint: &'a serde_json::Value,
    pub expires_at: chrono::DateTime<chrono::Utc>,
}
