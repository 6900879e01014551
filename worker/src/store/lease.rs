//! The per-thread lease: one worker at a time runs a thread's turns, fenced by an epoch that
//! every commit checks. Also what a lease holder checks first: erasure and session expiry.

use std::time::Duration;

use shared::ids::ThreadId;
use shared::protocol::HandoffState;
use shared::turns::InterruptId;

use super::{to_u64, Store};
use crate::records::Lease;

impl Store {
    /// Takes the thread's lease if it is free or expired; `None` while another worker holds it.
    pub async fn acquire(&self, thread_id: &ThreadId) -> Result<Option<Lease>, sqlx::Error> {
        type Row = (
            i64,
            i64,
            i64,
            bool,
            chrono::DateTime<chrono::Utc>,
            Option<InterruptId>,
            HandoffState,
        );
        let row: Option<Row> = sqlx::query_as(
            "INSERT INTO threads (id, lease_owner, lease_epoch, lease_expires_at)
             SELECT $1, $2, 1, now() + make_interval(secs => $3)
              WHERE NOT EXISTS (SELECT 1 FROM erasures WHERE thread_id = $1)
             ON CONFLICT (id) DO UPDATE
                SET lease_owner = EXCLUDED.lease_owner,
                    lease_epoch = threads.lease_epoch + 1,
                    lease_expires_at = EXCLUDED.lease_expires_at
                WHERE threads.lease_owner IS NULL OR threads.lease_expires_at < now()
             RETURNING lease_epoch, last_in_seq, last_seq, status = 'expired', last_active_at,
                       pending_interrupt, handoff_state",
        )
        .bind(thread_id.as_str())
        .bind(self.worker_id)
        .bind(self.lease_ttl.as_secs_f64())
        .fetch_optional(&self.db)
        .await?;
        Ok(row.map(
            |(
                epoch,
                last_in_seq,
                last_seq,
                expired,
                last_active_at,
                pending_interrupt,
                handoff,
            )| {
                Lease {
                    thread_id: thread_id.clone(),
                    epoch,
                    last_in_seq: to_u64(last_in_seq),
                    last_seq: to_u64(last_seq),
                    expired,
                    last_active_at,
                    pending_interrupt,
                    handoff,
                }
            },
        ))
    }

    /// Extends the lease by its TTL; `false` if another worker has taken it.
    pub async fn renew(&self, thread_id: &ThreadId, epoch: i64) -> Result<bool, sqlx::Error> {
        let done = sqlx::query(
            "UPDATE threads SET lease_expires_at = now() + make_interval(secs => $3)
              WHERE id = $1 AND lease_epoch = $2 AND lease_owner = $4",
        )
        .bind(thread_id.as_str())
        .bind(epoch)
        .bind(self.lease_ttl.as_secs_f64())
        .bind(self.worker_id)
        .execute(&self.leases)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// How long a lease lasts without renewal.
    pub fn lease_ttl(&self) -> Duration {
        self.lease_ttl
    }

    /// Hands the lease back so the next delivery for the thread need not wait for it to expire.
    pub async fn release(&self, lease: &Lease) -> Result<(), sqlx::Error> {
        sqlx::query(
            "UPDATE threads SET lease_owner = NULL, lease_expires_at = NULL
              WHERE id = $1 AND lease_epoch = $2 AND lease_owner = $3",
        )
        .bind(lease.thread_id.as_str())
        .bind(lease.epoch)
        .bind(self.worker_id)
        .execute(&self.db)
        .await?;
        Ok(())
    }

    /// Whether the thread was erased (SPEC §8): it is never re-created.
    pub async fn is_erased(&self, thread_id: &ThreadId) -> Result<bool, sqlx::Error> {
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM erasures WHERE thread_id = $1)")
            .bind(thread_id.as_str())
            .fetch_one(&self.db)
            .await
    }

    /// Whether a message received at `received_at` finds the session expired: the thread is
    /// marked expired, or it had been idle for longer than `SESSION_TTL_SECS` when the message
    /// arrived (not when a worker got to it: a queue backlog does not expire anyone). While an
    /// approval is pending the session lasts `INTERRUPT_TTL_SECS` longer.
    pub fn session_expired(
        &self,
        lease: &Lease,
        received_at: chrono::DateTime<chrono::Utc>,
    ) -> bool {
        let idle = (received_at - lease.last_active_at)
            .to_std()
            .unwrap_or_default();
        let ttl = if lease.pending_interrupt.is_some() {
            self.session_ttl.saturating_add(self.interrupt_ttl)
        } else {
            self.session_ttl
        };
        lease.expired || idle > ttl
    }
}
