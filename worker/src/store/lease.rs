//! The per-thread lease: one worker at a time runs a thread's turns, fenced by an epoch that
//! every commit checks. Also what a lease holder checks first: erasure and session expiry.

use std::collections::HashMap;
use std::time::Duration;

use shared::ids::ThreadId;
use shared::protocol::HandoffState;
use shared::turns::{InterruptId, TurnKind};
use uuid::Uuid;

use super::group::{Lane, Statement};
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

/// [`Store::acquire`] (public for `tests/e2e/hot_path.rs`, which checks its plans), grouped
/// ([`super::group`]): `$1` the threads (each at most once), `$2` how many exchanges of history,
/// `$3` this worker, `$4` the lease's TTL in seconds. One round trip that takes each thread's
/// lease if it is free or expired and, in the same statement, reads what the lease's first turn
/// reads next: the thread's history (only when a message will be answered by the agents) or,
/// when the lease is taken, whether the thread was erased. Rows of a thread: one per history
/// message, at least one, newest first, each thread's together (the history is the inner side of
/// a nested loop whose outer side has one row a thread, so its rows come in the order of its
/// `ORDER BY`). The leases are taken in the order of `$1`, which the group sorts.
///
/// The history is read with the statement's snapshot, taken before the `INSERT` may have waited
/// for the previous holder's commit to release the lease; the lease's row is then newer than that
/// snapshot, and the history may miss the committed turn. So the statement also returns the
/// newest `in_seq` of the thread's turns that its snapshot sees, and the history counts only when
/// that is the lease's `last_in_seq` (the commit that advanced the thread wrote that turn).
pub const ACQUIRE_SQL: &str = concat!(
    "WITH r AS MATERIALIZED (
    SELECT * FROM unnest($1::text[]) WITH ORDINALITY AS r (id, i)
),
lease AS (
    INSERT INTO threads (id, lease_owner, lease_epoch, lease_expires_at)
    SELECT r.id, $3, 1, now() + make_interval(secs => $4)
      FROM r
     WHERE NOT EXISTS (SELECT 1 FROM erasures WHERE thread_id = r.id)
     ORDER BY r.i
    ON CONFLICT (id) DO UPDATE
       SET lease_owner = EXCLUDED.lease_owner,
           lease_epoch = threads.lease_epoch + 1,
           lease_expires_at = EXCLUDED.lease_expires_at
       WHERE threads.lease_owner IS NULL OR threads.lease_expires_at < now()
    RETURNING id, lease_epoch, last_in_seq, last_seq, status = 'expired' AS expired, last_active_at,
              pending_interrupt, handoff_state
)
SELECT r.id, l.lease_epoch, l.last_in_seq, l.last_seq, l.expired, l.last_active_at,
       l.pending_interrupt, l.handoff_state,
       CASE WHEN l.lease_epoch IS NULL
            THEN EXISTS (SELECT 1 FROM erasures WHERE thread_id = r.id) ELSE false END,
       CASE WHEN l.last_in_seq > 0 AND l.handoff_state = 'ai'
            THEN (SELECT max(v.in_seq) FROM turns v WHERE v.thread_id = r.id) END,
       h.kind, h.content, h.reply
  FROM r
  LEFT JOIN lease l ON l.id = r.id
  LEFT JOIN LATERAL (
",
    super::turns::history_rows!("r.id"),
    "
    AND l.last_in_seq > 0 AND l.handoff_state = 'ai'
  ORDER BY t.in_seq DESC LIMIT $2
  ) AS h (kind, content, reply) ON true"
);

/// A row of [`ACQUIRE_SQL`].
type AcquireRow = (
    String,
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

/// The grouped acquire ([`ACQUIRE_SQL`]): this worker's threads whose deliveries come together,
/// in one statement.
pub(super) struct Acquires {
    /// This worker: the holder of the leases taken.
    pub(super) owner: Uuid,
    pub(super) lease_ttl: Duration,
}

impl Statement for Acquires {
    type Row = ThreadId;
    type Answer = Acquired;

    fn thread(row: &ThreadId) -> &str {
        row.as_str()
    }

    async fn run(
        &self,
        db: &mut Lane<'_>,
        threads: &[&ThreadId],
    ) -> Result<Vec<Acquired>, sqlx::Error> {
        let ids: Vec<&str> = threads.iter().map(|thread| thread.as_str()).collect();
        let rows: Vec<AcquireRow> = sqlx::query_as(ACQUIRE_SQL)
            .bind(&ids)
            .bind(HISTORY_TURNS)
            .bind(self.owner)
            .bind(self.lease_ttl.as_secs_f64())
            .fetch_all(db.get().await?)
            .await?;
        let mut by_thread: HashMap<String, Vec<AcquireRow>> = HashMap::with_capacity(ids.len());
        for row in rows {
            by_thread.entry(row.0.clone()).or_default().push(row);
        }
        threads
            .iter()
            .map(|thread| {
                let rows = by_thread.remove(thread.as_str()).unwrap_or_default();
                acquired(thread, rows)
            })
            .collect()
    }
}

/// What the acquire's rows of one thread say.
fn acquired(thread_id: &ThreadId, rows: Vec<AcquireRow>) -> Result<Acquired, sqlx::Error> {
    let Some(first) = rows.first() else {
        return Err(sqlx::Error::RowNotFound);
    };
    let &(
        _,
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
    // Read only for an agents' turn after the first, and current only if the snapshot saw the
    // turn that set `last_in_seq`.
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

impl Store {
    /// Takes the thread's lease if it is free or expired, with the history its first turn needs:
    /// in one statement with the other threads of this worker whose deliveries come meanwhile
    /// ([`super::group`]).
    pub async fn acquire(&self, thread_id: &ThreadId) -> Result<Acquired, sqlx::Error> {
        self.acquires().run(thread_id.clone()).await
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
