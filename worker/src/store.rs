//! PostgreSQL: per-thread leases fenced by an epoch, and the one statement that commits a turn.

use std::time::Duration;

use shared::ids::ThreadId;
use shared::protocol::HandoffState;
use sqlx::PgPool;
use uuid::Uuid;

use crate::agents::runtime::AgentShare;
use crate::agents::PendingInterrupt;
use crate::error::TurnError;
use crate::llm::ChatMessage;

/// This worker's hold on a thread. Only the holder of the current epoch can commit a turn.
#[derive(Debug, Clone)]
pub struct Lease {
    pub thread_id: ThreadId,
    pub epoch: i64,
    /// Stream sequence of the last client message whose turn committed.
    pub last_in_seq: u64,
    /// The last reply frame `seq` committed for the thread.
    pub last_seq: u64,
    /// The thread's status is `expired`.
    pub expired: bool,
    /// The thread's last activity (its last committed turn, or its creation).
    pub last_active_at: chrono::DateTime<chrono::Utc>,
    /// The approval the thread's last turn is waiting for.
    pub pending_interrupt: Option<Uuid>,
    /// Who answers the thread's customer messages (SPEC §7).
    pub handoff: HandoffState,
}

/// A finished turn, written once with the thread's new position.
#[derive(Debug, Clone)]
pub struct TurnRecord {
    pub in_seq: u64,
    pub turn_id: Uuid,
    pub message_id: String,
    pub kind: &'static str,
    pub content: Option<String>,
    pub reply: String,
    pub first_seq: u64,
    pub last_seq: u64,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub cost_usd: f64,
    pub received_at: chrono::DateTime<chrono::Utc>,
    pub started_at: chrono::DateTime<chrono::Utc>,
    /// The thread's status after this turn.
    pub status: ThreadStatus,
    /// `completed`, `interrupted`, `clarification`, `session_expired`.
    pub outcome: &'static str,
    /// The approval the thread waits for after this turn.
    pub pending_interrupt: Option<Uuid>,
    pub agents: Vec<String>,
    /// The turn's timeline events (JSON array).
    pub events: serde_json::Value,
    /// Each agent's share of the turn, in order.
    pub shares: Vec<AgentShare>,
    /// A tool handed the conversation to a human.
    pub escalated: bool,
}

/// Where a conversation stands after a turn (its lifecycle; see the migration
/// `20261124000004`). `open` is a new thread's; `failed` is set by a dead letter; `escalated` is
/// kept once a turn handed the conversation to a human, unless it waits for an approval or expired.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ThreadStatus {
    /// The last turn was answered.
    Resolved,
    /// The last turn waits for an approval.
    AwaitingApproval,
    /// The session expired.
    Expired,
}

impl ThreadStatus {
    fn as_str(self) -> &'static str {
        match self {
            Self::Resolved => "resolved",
            Self::AwaitingApproval => "awaiting_approval",
            Self::Expired => "expired",
        }
    }
}

/// A message given up on, with what its last attempt published.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    pub in_seq: u64,
    pub kind: &'static str,
    pub message_id: String,
    pub turn_id: Uuid,
    pub attempts: u32,
    pub reason: String,
    pub content: Option<String>,
    pub received_at: chrono::DateTime<chrono::Utc>,
    pub first_seq: u64,
    pub last_seq: u64,
}

/// Whether the commit hands the lease back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterCommit {
    KeepLease,
    ReleaseLease,
}

/// Outcome of a commit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Committed {
    Yes,
    /// Another worker took the lease (a newer epoch): nothing was written.
    Fenced,
}

/// Text as PostgreSQL can store it: a NUL character (which a client may send) becomes U+FFFD.
fn storable(text: &str) -> std::borrow::Cow<'_, str> {
    if text.contains('\0') {
        std::borrow::Cow::Owned(text.replace('\0', "\u{FFFD}"))
    } else {
        std::borrow::Cow::Borrowed(text)
    }
}

/// JSON as PostgreSQL's `jsonb` can store it: no NUL character in any string (`\u0000`).
pub(crate) fn storable_json(value: &serde_json::Value) -> std::borrow::Cow<'_, serde_json::Value> {
    fn has_nul(value: &serde_json::Value) -> bool {
        match value {
            serde_json::Value::String(text) => text.contains('\0'),
            serde_json::Value::Array(items) => items.iter().any(has_nul),
            serde_json::Value::Object(fields) => fields
                .iter()
                .any(|(key, value)| key.contains('\0') || has_nul(value)),
            _ => false,
        }
    }
    fn clean(value: &mut serde_json::Value) {
        match value {
            serde_json::Value::String(text) if text.contains('\0') => {
                *text = text.replace('\0', "\u{FFFD}");
            }
            serde_json::Value::Array(items) => items.iter_mut().for_each(clean),
            serde_json::Value::Object(fields) => {
                *fields = std::mem::take(fields)
                    .into_iter()
                    .map(|(key, mut value)| {
                        clean(&mut value);
                        (key.replace('\0', "\u{FFFD}"), value)
                    })
                    .collect();
            }
            _ => {}
        }
    }
    if has_nul(value) {
        let mut value = value.clone();
        clean(&mut value);
        std::borrow::Cow::Owned(value)
    } else {
        std::borrow::Cow::Borrowed(value)
    }
}

fn to_i64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

fn to_u64(value: i64) -> u64 {
    u64::try_from(value).unwrap_or_default()
}

/// [`Store::history`]: `$1` the thread, `$2` how many exchanges. Public for the test that checks
/// its plans on a database with history (`tests/e2e/hot_path.rs`).
///
/// The thread's last messages are a backward walk of `turns_thread_messages_idx` (migration
/// `20261201300000`), bounded by `$2` whatever the size of the table. A turn continued by
/// approvals has one row per segment, the later ones at greater stream sequences: the reply is
/// all of them, read from the primary key from the message on.
pub const HISTORY_SQL: &str = "SELECT t.kind, t.content,
        (SELECT coalesce(string_agg(s.reply, ' ' ORDER BY s.in_seq), '')
           FROM turns s
          WHERE s.thread_id = t.thread_id AND s.in_seq >= t.in_seq AND s.turn_id = t.turn_id
            AND s.reply <> '')
   FROM turns t
  WHERE t.thread_id = $1 AND t.kind IN ('message', 'human_message') AND t.content IS NOT NULL
    AND t.outcome IN ('completed', 'interrupted', 'clarification', 'held', 'delivered')
  ORDER BY t.in_seq DESC LIMIT $2";

#[derive(Clone)]
pub struct Store {
    db: PgPool,
    /// Renewals of leases: a pool of their own, so that turns using every connection of `db`
    /// cannot make a lease run out.
    leases: PgPool,
    worker_id: Uuid,
    lease_ttl: Duration,
    session_ttl: Duration,
    interrupt_ttl: Duration,
}

impl Store {
    pub fn new(
        db: PgPool,
        leases: PgPool,
        worker_id: Uuid,
        lease_ttl: Duration,
        session_ttl: Duration,
        interrupt_ttl: Duration,
    ) -> Self {
        Self {
            db,
            leases,
            worker_id,
            lease_ttl,
            session_ttl,
            interrupt_ttl,
        }
    }

    pub fn pool(&self) -> &PgPool {
        &self.db
    }

    /// This worker's id, the owner of the leases it takes.
    pub fn worker_id(&self) -> Uuid {
        self.worker_id
    }

    /// Takes the thread's lease if it is free or expired; `None` while another worker holds it.
    pub async fn acquire(&self, thread_id: &ThreadId) -> Result<Option<Lease>, sqlx::Error> {
        type Row = (
            i64,
            i64,
            i64,
            bool,
            chrono::DateTime<chrono::Utc>,
            Option<Uuid>,
            String,
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
                    handoff: HandoffState::from_db(&handoff),
                }
            },
        ))
    }

    /// Advances the thread past `turn.in_seq` and records the turn, in one statement, only if
    /// this lease is still the current one.
    pub async fn commit(
        &self,
        lease: &Lease,
        turn: &TurnRecord,
        after: AfterCommit,
    ) -> Result<Committed, sqlx::Error> {
        let release = after == AfterCommit::ReleaseLease;
        let shares = &turn.shares;
        let committed: i64 = sqlx::query_scalar(
            "WITH advanced AS (
                UPDATE threads
                   SET last_in_seq = $3,
                       last_seq = GREATEST(last_seq, $4),
                       status = CASE WHEN $5 = 'resolved' AND (escalated_at IS NOT NULL OR $23)
                                     THEN 'escalated' ELSE $5 END,
                       last_active_at = CASE WHEN $5 <> 'expired' THEN now() ELSE last_active_at END,
                       lease_owner = CASE WHEN $6 THEN NULL ELSE lease_owner END,
                       lease_expires_at = CASE WHEN $6 THEN NULL ELSE lease_expires_at END,
                       pending_interrupt = $19,
                       title = COALESCE(title, left($11, 200)),
                       agents = agents || ARRAY(SELECT a FROM unnest($21::text[]) WITH ORDINALITY AS n(a, i)
                                                 WHERE a <> ALL(threads.agents) ORDER BY i),
                       messages = messages + CASE WHEN $10 = 'message' THEN 1 ELSE 0 END,
                       prompt_tokens = prompt_tokens + $14,
                       completion_tokens = completion_tokens + $15,
                       cost_usd = cost_usd + $16,
                       escalated_at = CASE WHEN $23 THEN COALESCE(escalated_at, now()) ELSE escalated_at END,
                       -- escalate_to_human asks for a human, as `request_human` does (SPEC §7).
                       handoff_state = CASE WHEN $23 AND handoff_state = 'ai' THEN 'waiting' ELSE handoff_state END,
                       waiting_since = CASE WHEN $23 AND handoff_state = 'ai' THEN now() ELSE waiting_since END,
                       first_waiting_at = CASE WHEN $23 THEN COALESCE(first_waiting_at, now()) ELSE first_waiting_at END
                 WHERE id = $1 AND lease_epoch = $2 AND lease_owner = $7 AND last_in_seq < $3
             RETURNING id
             ),
             turn AS (
                INSERT INTO turns (thread_id, in_seq, turn_id, message_id, kind, content, reply,
                                   first_seq, last_seq, prompt_tokens, completion_tokens, cost_usd,
                                   received_at, started_at, outcome, agents, events)
                SELECT id, $3, $8, $9, $10, $11, $12, $13, $4, $14, $15, $16, $17, $18, $20, $21, $22
                  FROM advanced
             RETURNING thread_id, in_seq
             ),
             shares AS (
                INSERT INTO turn_agents (thread_id, in_seq, position, agent, prompt_tokens,
                                         completion_tokens, cost_usd, tool_calls, duration_ms)
                SELECT turn.thread_id, turn.in_seq, s.position, s.agent, s.prompt, s.completion,
                       s.cost, s.tools, s.ms
                  FROM turn,
                       unnest($24::text[], $25::bigint[], $26::bigint[], $27::float8[], $28::int[],
                              $29::bigint[])
                       WITH ORDINALITY AS s(agent, prompt, completion, cost, tools, ms, position)
             )
             SELECT count(*) FROM turn",
        )
        .bind(lease.thread_id.as_str())
        .bind(lease.epoch)
        .bind(to_i64(turn.in_seq))
        .bind(to_i64(turn.last_seq))
        .bind(turn.status.as_str())
        .bind(release)
        .bind(self.worker_id)
        .bind(turn.turn_id)
        .bind(&turn.message_id)
        .bind(turn.kind)
        .bind(turn.content.as_deref().map(storable))
        .bind(storable(&turn.reply))
        .bind(to_i64(turn.first_seq))
        .bind(to_i64(turn.prompt_tokens))
        .bind(to_i64(turn.completion_tokens))
        .bind(turn.cost_usd)
        .bind(turn.received_at)
        .bind(turn.started_at)
        .bind(turn.pending_interrupt)
        .bind(turn.outcome)
        .bind(&turn.agents)
        .bind(storable_json(&turn.events).as_ref())
        .bind(turn.escalated)
        .bind(shares.iter().map(|share| share.agent.clone()).collect::<Vec<_>>())
        .bind(shares.iter().map(|share| to_i64(share.usage.prompt_tokens)).collect::<Vec<_>>())
        .bind(shares.iter().map(|share| to_i64(share.usage.completion_tokens)).collect::<Vec<_>>())
        .bind(shares.iter().map(|share| share.usage.cost_usd).collect::<Vec<_>>())
        .bind(shares.iter().map(|share| i32::try_from(share.tool_calls).unwrap_or(i32::MAX)).collect::<Vec<_>>())
        .bind(shares.iter().map(|share| i64::try_from(share.duration.as_millis()).unwrap_or(i64::MAX)).collect::<Vec<_>>())
        .fetch_one(&self.db)
        .await?;
        Ok(if committed == 1 {
            Committed::Yes
        } else {
            Committed::Fenced
        })
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

    /// When an approval was raised (stored, just before its `interrupt` frame went out).
    pub async fn interrupt_raised_at(
        &self,
        id: Uuid,
    ) -> Result<Option<chrono::DateTime<chrono::Utc>>, TurnError> {
        Ok(
            sqlx::query_scalar("SELECT created_at FROM interrupts WHERE id = $1")
                .bind(id)
                .fetch_optional(&self.db)
                .await?,
        )
    }

    /// The approval `id`, with its checkpoint.
    pub async fn load_interrupt(&self, id: Uuid) -> Result<Option<PendingInterrupt>, TurnError> {
        type Row = (
            Uuid,
            String,
            String,
            serde_json::Value,
            serde_json::Value,
            chrono::DateTime<chrono::Utc>,
            String,
            Option<i64>,
        );
        let row: Option<Row> = sqlx::query_as(
            "SELECT turn_id, agent, action, params, checkpoint, expires_at, status, decided_in_seq
               FROM interrupts WHERE id = $1",
        )
        .bind(id)
        .fetch_optional(&self.db)
        .await?;
        let Some((turn_id, agent, action, params, checkpoint, expires_at, status, decided_in_seq)) =
            row
        else {
            return Ok(None);
        };
        let checkpoint = serde_json::from_value(checkpoint).map_err(|error| {
            TurnError::Turn(format!(
                "the checkpoint of approval {id} does not decode: {error}"
            ))
        })?;
        Ok(Some(PendingInterrupt {
            id,
            turn_id,
            agent,
            action,
            params,
            checkpoint,
            expires_at,
            status,
            decided_in_seq: decided_in_seq.map(to_u64),
        }))
    }

    /// Records what became of an approval (`approved`, `rejected`, `expired`, `superseded`), by
    /// the message at `in_seq`. Idempotent for that message; a decision by another one stands.
    pub async fn decide_interrupt(
        &self,
        id: Uuid,
        status: &str,
        in_seq: u64,
    ) -> Result<(), sqlx::Error> {
        sqlx::query(
            "UPDATE interrupts SET status = $2, decided_at = COALESCE(decided_at, now()), decided_in_seq = $3
              WHERE id = $1 AND (status = 'pending' OR decided_in_seq = $3)",
        )
        .bind(id)
        .bind(status)
        .bind(to_i64(in_seq))
        .execute(&self.db)
        .await?;
        Ok(())
    }

    /// Marks an approved approval `cancelled` if its tool never ran (its turn was cancelled
    /// between the answer and the call).
    pub async fn withdraw_unexecuted(&self, id: Uuid) -> Result<(), sqlx::Error> {
        sqlx::query(
            "UPDATE interrupts SET status = 'cancelled'
              WHERE id = $1 AND status = 'approved'
                AND NOT EXISTS (SELECT 1 FROM tool_executions WHERE interrupt_id = $1)",
        )
        .bind(id)
        .execute(&self.db)
        .await?;
        Ok(())
    }

    /// The thread's last few exchanges, oldest first, as the agents see them.
    pub async fn history(
        &self,
        thread_id: &ThreadId,
        turns: i64,
    ) -> Result<Vec<ChatMessage>, sqlx::Error> {
        let rows: Vec<(String, String, String)> = sqlx::query_as(HISTORY_SQL)
            .bind(thread_id.as_str())
            .bind(turns)
            .fetch_all(&self.db)
            .await?;
        let mut history = Vec::with_capacity(rows.len() * 2);
        for (kind, content, reply) in rows.into_iter().rev() {
            // An operator's message is the support side speaking: the agents see it as an
            // earlier reply of theirs, marked as the operator's (SPEC §7: after `leave`).
            if kind == "human_message" {
                history.push(ChatMessage::Assistant {
                    content: format!("[human operator] {content}"),
                    tool_calls: Vec::new(),
                });
                continue;
            }
            history.push(ChatMessage::User { content });
            if !reply.is_empty() {
                history.push(ChatMessage::Assistant {
                    content: reply,
                    tool_calls: Vec::new(),
                });
            }
        }
        Ok(history)
    }

    /// Advances the thread past a message that cannot be a turn (it does not decode), with no row.
    pub async fn skip(
        &self,
        lease: &Lease,
        in_seq: u64,
        after: AfterCommit,
    ) -> Result<Committed, sqlx::Error> {
        let done = sqlx::query(
            "UPDATE threads SET last_in_seq = $3,
                    lease_owner = CASE WHEN $5 THEN NULL ELSE lease_owner END,
                    lease_expires_at = CASE WHEN $5 THEN NULL ELSE lease_expires_at END
              WHERE id = $1 AND lease_epoch = $2 AND lease_owner = $4 AND last_in_seq < $3",
        )
        .bind(lease.thread_id.as_str())
        .bind(lease.epoch)
        .bind(to_i64(in_seq))
        .bind(self.worker_id)
        .bind(after == AfterCommit::ReleaseLease)
        .execute(&self.db)
        .await?;
        Ok(if done.rows_affected() == 1 {
            Committed::Yes
        } else {
            Committed::Fenced
        })
    }

    /// Counts a failed attempt at the message; returns the attempts so far.
    pub async fn record_failure(
        &self,
        thread_id: &ThreadId,
        in_seq: u64,
        reason: &str,
    ) -> Result<u32, sqlx::Error> {
        let attempts: i32 = sqlx::query_scalar(
            "INSERT INTO turn_attempts (thread_id, in_seq, attempts, history)
             VALUES ($1, $2, 1, jsonb_build_array(jsonb_build_object('at', now(), 'error', $3::text)))
             ON CONFLICT (thread_id, in_seq) DO UPDATE
                SET attempts = turn_attempts.attempts + 1,
                    history = turn_attempts.history
                              || jsonb_build_object('at', now(), 'error', $3::text)
             RETURNING attempts",
        )
        .bind(thread_id.as_str())
        .bind(to_i64(in_seq))
        .bind(storable(reason))
        .fetch_one(&self.db)
        .await?;
        Ok(u32::try_from(attempts).unwrap_or(u32::MAX))
    }

    /// The failed attempts counted for a message, and the last error.
    pub async fn failures(
        &self,
        thread_id: &ThreadId,
        in_seq: u64,
    ) -> Result<Option<(u32, String)>, sqlx::Error> {
        let row: Option<(i32, Option<String>)> = sqlx::query_as(
            "SELECT attempts, history -> -1 ->> 'error' FROM turn_attempts
              WHERE thread_id = $1 AND in_seq = $2",
        )
        .bind(thread_id.as_str())
        .bind(to_i64(in_seq))
        .fetch_optional(&self.db)
        .await?;
        Ok(row.map(|(attempts, error)| {
            (
                u32::try_from(attempts).unwrap_or_default(),
                error.unwrap_or_default(),
            )
        }))
    }

    /// Advances the thread past a dead-lettered message and files it, in one transaction, only if
    /// this lease is still the current one.
    pub async fn dead_letter(
        &self,
        lease: &Lease,
        letter: &DeadLetter,
        after: AfterCommit,
        pending_interrupt: Option<Uuid>,
    ) -> Result<Committed, sqlx::Error> {
        let release = after == AfterCommit::ReleaseLease;
        let mut tx = self.db.begin().await?;
        let advanced = sqlx::query(
            "UPDATE threads
                SET last_in_seq = $3,
                    last_seq = GREATEST(last_seq, $4),
                    lease_owner = CASE WHEN $5 THEN NULL ELSE lease_owner END,
                    lease_expires_at = CASE WHEN $5 THEN NULL ELSE lease_expires_at END,
                    pending_interrupt = $7,
                    status = 'failed',
                    last_active_at = now(),
                    title = COALESCE(title, left($8, 200)),
                    messages = messages + CASE WHEN $9 = 'message' THEN 1 ELSE 0 END
              WHERE id = $1 AND lease_epoch = $2 AND lease_owner = $6 AND last_in_seq < $3",
        )
        .bind(lease.thread_id.as_str())
        .bind(lease.epoch)
        .bind(to_i64(letter.in_seq))
        .bind(to_i64(letter.last_seq))
        .bind(release)
        .bind(self.worker_id)
        .bind(pending_interrupt)
        .bind(letter.content.as_deref().map(storable))
        .bind(letter.kind)
        .execute(&mut *tx)
        .await?;
        if advanced.rows_affected() != 1 {
            tx.rollback().await?;
            return Ok(Committed::Fenced);
        }
        sqlx::query(
            "INSERT INTO dead_letters (id, thread_id, in_seq, message_id, turn_id, attempts, reason, history)
             SELECT $1, $2, $3, $4, $5, $6, $7, COALESCE(
                 (SELECT history FROM turn_attempts WHERE thread_id = $2 AND in_seq = $3), '[]')",
        )
        .bind(Uuid::now_v7())
        .bind(lease.thread_id.as_str())
        .bind(to_i64(letter.in_seq))
        .bind(&letter.message_id)
        .bind(letter.turn_id)
        .bind(i32::try_from(letter.attempts).unwrap_or(i32::MAX))
        .bind(storable(&letter.reason))
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "INSERT INTO turns (thread_id, in_seq, turn_id, message_id, kind, content, first_seq,
                                last_seq, received_at, started_at, outcome)
             VALUES ($1, $2, $3, $4, $9, $5, $6, $7, $8, now(), 'dead_lettered')",
        )
        .bind(lease.thread_id.as_str())
        .bind(to_i64(letter.in_seq))
        .bind(letter.turn_id)
        .bind(&letter.message_id)
        .bind(letter.content.as_deref().map(storable))
        .bind(to_i64(letter.first_seq))
        .bind(to_i64(letter.last_seq))
        .bind(letter.received_at)
        .bind(letter.kind)
        .execute(&mut *tx)
        .await?;
        sqlx::query("DELETE FROM turn_attempts WHERE thread_id = $1 AND in_seq = $2")
            .bind(lease.thread_id.as_str())
            .bind(to_i64(letter.in_seq))
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(Committed::Yes)
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_with_nul_is_cleaned_and_other_json_is_borrowed() {
        let clean = serde_json::json!({"a": ["x", {"b": 1}]});
        assert!(matches!(
            storable_json(&clean),
            std::borrow::Cow::Borrowed(_)
        ));
        let dirty = serde_json::json!({"a": ["x\u{0}y"], "k\u{0}": {"c": "\u{0}"}});
        let stored = storable_json(&dirty);
        assert_eq!(
            *stored,
            serde_json::json!({"a": ["x\u{FFFD}y"], "k\u{FFFD}": {"c": "\u{FFFD}"}})
        );
    }

    #[tokio::test]
    async fn a_pending_approval_extends_the_session() {
        let db = sqlx::postgres::PgPoolOptions::new()
            .connect_lazy("postgres://nobody@127.0.0.1:1/none")
            .unwrap();
        let minute = Duration::from_secs(60);
        let store = Store::new(db.clone(), db, Uuid::nil(), minute, 10 * minute, 5 * minute);
        let now = chrono::Utc::now();
        let mut lease = Lease {
            thread_id: ThreadId::parse("t").unwrap(),
            epoch: 1,
            last_in_seq: 1,
            last_seq: 1,
            expired: false,
            last_active_at: now - chrono::Duration::minutes(12),
            pending_interrupt: None,
            handoff: HandoffState::Ai,
        };
        assert!(store.session_expired(&lease, now), "idle 12 min > 10 min");
        lease.pending_interrupt = Some(Uuid::nil());
        assert!(!store.session_expired(&lease, now), "12 min < 10 + 5 min");
        lease.last_active_at = now - chrono::Duration::minutes(16);
        assert!(store.session_expired(&lease, now));
        lease.last_active_at = now;
        lease.expired = true;
        assert!(
            store.session_expired(&lease, now),
            "an expired thread stays expired"
        );
    }
}
