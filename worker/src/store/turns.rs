//! Committing a thread's turns: a turn's row with the thread's new position in one statement
//! fenced by the lease, a message skipped or dead-lettered, failed attempts, and the history
//! the agents see.

use shared::ids::ThreadId;
use shared::turns::{InterruptId, TurnKind};
use uuid::Uuid;

use super::{storable, storable_json, to_i64, Store};
use crate::llm::ChatMessage;
use crate::records::{AfterCommit, Committed, DeadLetter, HandoffRecord, Lease, TurnRecord};

/// How many of the thread's last exchanges the agents see.
pub const HISTORY_TURNS: i64 = 5;

/// The history's rows, newest first: `$1` the thread, `$2` how many exchanges. Without its
/// `ORDER BY … LIMIT`, so that the acquire ([`super::lease`]) can add a condition of its own.
///
/// The thread's last messages are a backward walk of `turns_thread_messages_idx` (migration
/// `20261201300000`), bounded by `$2` whatever the size of the table. A turn continued by
/// approvals has one row per segment, the later ones at greater stream sequences: the reply is
/// all of them, read from the primary key from the message on.
macro_rules! history_rows {
    () => {
        "SELECT t.kind, t.content,
        (SELECT coalesce(string_agg(s.reply, ' ' ORDER BY s.in_seq), '')
           FROM turns s
          WHERE s.thread_id = t.thread_id AND s.in_seq >= t.in_seq AND s.turn_id = t.turn_id
            AND s.reply <> '')
   FROM turns t
  WHERE t.thread_id = $1 AND t.kind IN ('message', 'human_message') AND t.content IS NOT NULL
    AND t.outcome IN ('completed', 'interrupted', 'clarification', 'held', 'delivered')"
    };
}
pub(super) use history_rows;

/// [`Store::history`]: `$1` the thread, `$2` how many exchanges. Public for the test that checks
/// its plans on a database with history (`tests/e2e/hot_path.rs`).
pub const HISTORY_SQL: &str = concat!(history_rows!(), "\n  ORDER BY t.in_seq DESC LIMIT $2");

/// The history's rows (newest first) as the agents see them, oldest first.
pub(super) fn history_messages(
    rows: impl DoubleEndedIterator<Item = (TurnKind, String, String)>,
) -> Vec<ChatMessage> {
    let mut history = Vec::new();
    for (kind, content, reply) in rows.rev() {
        // An operator's message is the support side speaking: the agents see it as an
        // earlier reply of theirs, marked as the operator's (SPEC §7: after `leave`).
        if kind == TurnKind::HumanMessage {
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
    history
}

impl Store {
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

    /// The thread's last [`HISTORY_TURNS`] exchanges, oldest first, as the agents see them: those
    /// the acquire read with the lease while they are current, else read now.
    pub async fn history(&self, lease: &Lease) -> Result<Vec<ChatMessage>, sqlx::Error> {
        if let Some(prefetched) = lease
            .history
            .as_ref()
            .filter(|prefetched| prefetched.after_in_seq == lease.last_in_seq)
        {
            return Ok(prefetched.messages.clone());
        }
        let rows: Vec<(TurnKind, String, String)> = sqlx::query_as(HISTORY_SQL)
            .bind(lease.thread_id.as_str())
            .bind(HISTORY_TURNS)
            .fetch_all(&self.db)
            .await?;
        Ok(history_messages(rows.into_iter()))
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
        pending_interrupt: Option<InterruptId>,
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

    /// Advances the thread past a handoff message, applies its handoff state and records it on
    /// the timeline, in one statement, only if this lease is still the current one.
    pub async fn commit_handoff(
        &self,
        lease: &Lease,
        handoff: &HandoffRecord,
        after: AfterCommit,
    ) -> Result<Committed, sqlx::Error> {
        let events = serde_json::Value::Array(handoff.events.clone());
        let committed: i64 = sqlx::query_scalar(
            "WITH advanced AS (
                UPDATE threads
                   SET last_in_seq = $3,
                       last_seq = GREATEST(last_seq, $4),
                       lease_owner = CASE WHEN $5 THEN NULL ELSE lease_owner END,
                       lease_expires_at = CASE WHEN $5 THEN NULL ELSE lease_expires_at END,
                       last_active_at = CASE WHEN status = 'expired' THEN last_active_at ELSE now() END,
                       handoff_state = $6,
                       -- An approval withdrawn because a human was asked for or joined.
                       pending_interrupt = CASE WHEN pending_interrupt = $18 THEN NULL
                                                ELSE pending_interrupt END,
                       waiting_since = CASE WHEN $6 = 'ai' THEN NULL
                                            WHEN handoff_state = 'ai' THEN $8
                                            ELSE COALESCE(waiting_since, $8) END,
                       first_waiting_at = CASE WHEN $6 <> 'ai' THEN COALESCE(first_waiting_at, $8)
                                               ELSE first_waiting_at END,
                       first_human_at = CASE WHEN $6 = 'human' THEN COALESCE(first_human_at, $8)
                                             ELSE first_human_at END,
                       time_to_human_ms = CASE
                           WHEN $6 = 'human' AND handoff_state = 'waiting' AND time_to_human_ms IS NULL
                                AND waiting_since IS NOT NULL
                           THEN GREATEST(0, (extract(epoch FROM ($8 - waiting_since)) * 1000)::bigint)
                           ELSE time_to_human_ms END,
                       escalated_at = CASE WHEN $6 <> 'ai' THEN COALESCE(escalated_at, $8)
                                           ELSE escalated_at END,
                       status = CASE WHEN status = 'expired' THEN status
                                     WHEN $9 THEN 'resolved'
                                     WHEN $6 <> 'ai' AND (status NOT IN ('expired', 'awaiting_approval')
                                                          OR pending_interrupt = $18)
                                     THEN 'escalated'
                                     ELSE status END
                 WHERE id = $1 AND lease_epoch = $2 AND lease_owner = $7 AND last_in_seq < $3
             RETURNING id
             ),
             turn AS (
                INSERT INTO turns (thread_id, in_seq, turn_id, message_id, kind, content, reply,
                                   first_seq, last_seq, received_at, started_at, outcome, events)
                SELECT id, $3, $10, $11, $12, $13, '', $14, $4, $8, $15, $16, $17 FROM advanced
             RETURNING 1
             )
             SELECT count(*) FROM turn",
        )
        .bind(lease.thread_id.as_str())
        .bind(lease.epoch)
        .bind(to_i64(handoff.in_seq))
        .bind(to_i64(handoff.last_seq))
        .bind(after == AfterCommit::ReleaseLease)
        .bind(handoff.next)
        .bind(self.worker_id)
        .bind(handoff.received_at)
        .bind(handoff.resolved)
        .bind(handoff.turn_id)
        .bind(&handoff.message_id)
        .bind(handoff.kind)
        .bind(handoff.content.as_deref().map(storable))
        .bind(to_i64(handoff.first_seq))
        .bind(handoff.started_at)
        .bind(handoff.outcome)
        .bind(storable_json(&events).as_ref())
        .bind(handoff.withdrawn)
        .fetch_one(&self.db)
        .await?;
        Ok(if committed == 1 {
            Committed::Yes
        } else {
            Committed::Fenced
        })
    }
}
