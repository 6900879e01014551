//! The per-thread lease: one worker at a time runs a thread's turns, fenced by an epoch that
//! every commit checks. Also what a lease holder checks first: erasure and session expiry.

use std::time::Duration;

use shared::ids::ThreadId;
use shared::protocol::HandoffState;
use shared::turns::{InterruptId, TurnKind};

use super::turns::{history_messages, HISTORY_TURNS};
use super::{to_u64, Store};
use crate::records::{Lease, PrefetchedHistory};

/// What [`Store::acquire`] found.
#[derive(Debug)]
pub enum Acquired {
    /// The thread's lease, now this worker's.
    Lease(Lease),
    /// Another worker holds it.
    Busy,
    /// The conversation was erased (SPEC §8): it is never re-created.
    Erased,
}

/// [`Store::acquire`] (public for `tests/e2e/hot_path.rs`, which checks its plans): `$1` the
/// thread, `$2` how many exchanges of history, `$3` this worker, `$4` the lease's TTL in seconds.
/// One round trip that takes the lease if it is free or expired and, in the same statement, reads
/// what the lease's first turn reads next: the thread's history (only when a message will be
/// answered by the agents) or, when the lease is taken, whether the thread was erased. One row
/// per history message, at least one; newest first (the join's outer side is a single row, so
/// the rows come in the order of the history's `ORDER BY`).
///
/// The history is read with the statement's snapshot, taken before the `INSERT` may have waited
/// for the previous holder's commit to release the lease; the lease's row is then newer than that
/// snapshot, and the history may miss the committed turn. So the statement also returns the
/// newest `in_seq` of the thread's turns that its snapshot sees, and the history counts only when
/// that is the lease's `last_in_seq` (the commit that advanced the thread wrote that turn).
pub const ACQUIRE_SQL: &str = concat!(
    "WITH lease AS (
    INSERT INTO threads (id, lease_owner, lease_epoch, lease_expires_at)
    SELECT $1, $3, 1, now() + make_interval(secs => $4)
     WHERE NOT EXISTS (SELECT 1 FROM erasures WHERE thread_id = $1)
    ON CONFLICT (id) DO UPDATE
       SET lease_owner = EXCLUDED.lease_owner,
           lease_epoch = threads.lease_epoch + 1,
           lease_expires_at = EXCLUDED.lease_expires_at
       WHERE threads.lease_owner IS NULL OR threads.lease_expires_at < now()
    RETURNING lease_epoch, last_in_seq, last_seq, status = 'expired' AS expired, last_active_at,
              pending_interrupt, handoff_state
)
SELECT l.lease_epoch, l.last_in_seq, l.last_seq, l.expired, l.last_active_at,
       l.pending_interrupt, l.handoff_state,
       CASE WHEN l.lease_epoch IS NULL
            THEN EXISTS (SELECT 1 FROM erasures WHERE thread_id = $1) ELSE false END,
       CASE WHEN l.last_in_seq > 0 AND l.handoff_state = 'ai'
            THEN (SELECT max(v.in_seq) FROM turns v WHERE v.thread_id = $1) END,
       h.kind, h.content, h.reply
  FROM (VALUES (true)) AS one (x)
  LEFT JOIN lease l ON true
  LEFT JOIN LATERAL (
",
    super::turns::history_rows!(),
    "
    AND l.last_in_seq > 0 AND l.handoff_state = 'ai'
  ORDER BY t.in_seq DESC LIMIT $2
  ) AS h (kind, content, reply) ON true"
);

impl Store {
    /// Takes the thread's lease if it is free or expired, with the history its first turn needs.
    pub async fn acquire(&self, thread_id: &ThreadId) -> Result<Acquired, sqlx::Error> {
        type Row = (
            Option<i64>,
            Option<i64>,
            Option<i64>,
            Option<bool>,
            Option<chrono::DateTime<chrono::Utc>>,
            Option<InterruptId>,
            Option<HandoffState>,
            bool,
            Option<i64>,
            Option<TurnKind>,
            Option<String>,
            Option<String>,
        );
        let rows: Vec<Row> = sqlx::query_as(ACQUIRE_SQL)
            .bind(thread_id.as_str())
            .bind(HISTORY_TURNS)
            .bind(self.worker_id)
            .bind(self.lease_ttl.as_secs_f64())
            .fetch_all(&self.db)
            .await?;
        let Some(first) = rows.first() else {
            return Err(sqlx::Error::RowNotFound);
        };
        let &(
            epoch,
            last_in_seq,
            last_seq,
            expired,
            last_active_at,
            pending_interrupt,
            handoff,
            erased,
            seen_in_seq,
            ..,
        ) = first;
        let (
            Some(epoch),
            Some(last_in_seq),
            Some(last_seq),
            Some(expired),
            Some(last_active_at),
            Some(handoff),
        ) = (
            epoch,
            last_in_seq,
            last_seq,
            expired,
            last_active_at,
            handoff,
        )
        else {
            return Ok(if erased {
                Acquired::Erased
            } else {
                Acquired::Busy
            });
        };
        let last_in_seq = to_u64(last_in_seq);
        // Read only for an agents' turn after the first, and current only if the snapshot saw
        // the turn that set `last_in_seq`.
        let history = match seen_in_seq {
            Some(seen) if to_u64(seen) == last_in_seq => Some(PrefetchedHistory {
                after_in_seq: last_in_seq,
                messages: history_messages(
                    rows.into_iter()
                        .filter_map(|(.., kind, content, reply)| Some((kind?, content?, reply?))),
                ),
            }),
            _ => None,
        };
        Ok(Acquired::Lease(Lease {
            thread_id: thread_id.clone(),
            epoch,
            last_in_seq,
            last_seq: to_u64(last_seq),
            expired,
            last_active_at,
            pending_interrupt,
            handoff,
            history,
        }))
    }

    /// Extends the lease by its TTL; `false` if another worker has taken it.
    pub async fn renew(&self, thread_id: &ThreadId, epoch: i64) -> Result<bool, sqlx::Error> {
        let done = sqlx::query!(
            "UPDATE threads SET lease_expires_at = now() + make_interval(secs => $3)
              WHERE id = $1 AND lease_epoch = $2 AND lease_owner = $4",
            thread_id.as_str(),
            epoch,
            self.lease_ttl.as_secs_f64(),
            self.worker_id,
        )
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
        sqlx::query!(
            "UPDATE threads SET lease_owner = NULL, lease_expires_at = NULL
              WHERE id = $1 AND lease_epoch = $2 AND lease_owner = $3",
            lease.thread_id.as_str(),
            lease.epoch,
            self.worker_id,
        )
        .execute(&self.db)
        .await?;
        Ok(())
    }

    /// Whether the thread was erased (SPEC §8): it is never re-created.
    pub async fn is_erased(&self, thread_id: &ThreadId) -> Result<bool, sqlx::Error> {
        sqlx::query_scalar!(
            r#"SELECT EXISTS (SELECT 1 FROM erasures WHERE thread_id = $1) AS "erased!""#,
            thread_id.as_str()
        )
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
