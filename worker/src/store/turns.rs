//! Committing a thread's turns: a turn's row with the thread's new position in one statement
//! fenced by the lease, a message skipped or dead-lettered, failed attempts, and the history
//! the agents see.

use chrono::{DateTime, Utc};
use shared::ids::ThreadId;
use shared::turns::{InterruptId, TurnKind};
use sqlx::PgConnection;
use uuid::Uuid;

use super::group::{Lane, Statement};
use super::{storable, storable_json, to_i64, Store};
use crate::llm::ChatMessage;
use crate::records::{AfterCommit, Committed, DeadLetter, HandoffRecord, Lease, TurnRecord};

/// How many of the thread's last exchanges the agents see.
pub const HISTORY_TURNS: i64 = 5;

/// The history's rows, newest first: of the thread `$thread` (an SQL expression), `$2` how many
/// exchanges. Without its `ORDER BY … LIMIT`, so that the acquire ([`super::lease`]) can add a
/// condition of its own.
///
/// The thread's last messages are a backward walk of `turns_thread_messages_idx` (migration
/// `20261201300000`), bounded by `$2` whatever the size of the table. A turn continued by
/// approvals has one row per segment, the later ones at greater stream sequences: the reply is
/// all of them, read from the primary key from the message on.
macro_rules! history_rows {
    ($thread:literal) => {
        concat!(
            "SELECT t.kind, t.content,
        (SELECT coalesce(string_agg(s.reply, ' ' ORDER BY s.in_seq), '')
           FROM turns s
          WHERE s.thread_id = t.thread_id AND s.in_seq >= t.in_seq AND s.turn_id = t.turn_id
            AND s.reply <> '')
   FROM turns t
  WHERE t.thread_id = ",
            $thread,
            " AND t.kind IN ('message', 'human_message') AND t.content IS NOT NULL
    AND t.outcome IN ('completed', 'interrupted', 'clarification', 'held', 'delivered')"
        )
    };
}
pub(super) use history_rows;

/// [`Store::history`]: `$1` the thread, `$2` how many exchanges. Public for the test that checks
/// its plans on a database with history (`tests/e2e/hot_path.rs`).
pub const HISTORY_SQL: &str = concat!(history_rows!("$1"), "\n  ORDER BY t.in_seq DESC LIMIT $2");

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
    /// Advances the thread past `turn.in_seq` and records the turn, only if this lease is still
    /// the current one: in one statement with the other turns of this worker that end meanwhile
    /// ([`super::group`]), each row fenced by its own lease.
    pub async fn commit(
        &self,
        lease: &Lease,
        turn: &TurnRecord,
        after: AfterCommit,
    ) -> Result<Committed, sqlx::Error> {
        let written = self.commits().run(commit_row(lease, turn, after)).await?;
        Ok(if written {
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
        let done = sqlx::query_file!(
            "queries/skip.sql",
            lease.thread_id.as_str(),
            lease.epoch,
            to_i64(in_seq),
            self.worker_id,
            after == AfterCommit::ReleaseLease,
        )
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
        let attempts = sqlx::query_file_scalar!(
            "queries/record_failure.sql",
            thread_id.as_str(),
            to_i64(in_seq),
            &*storable(reason),
        )
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
        let row = sqlx::query_file!("queries/failures.sql", thread_id.as_str(), to_i64(in_seq))
            .fetch_optional(&self.db)
            .await?;
        Ok(row.map(|row| {
            (
                u32::try_from(row.attempts).unwrap_or_default(),
                row.error.unwrap_or_default(),
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
        let content = letter.content.as_deref().map(storable);
        let mut tx = self.db.begin().await?;
        let advanced = sqlx::query!(
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
            lease.thread_id.as_str(),
            lease.epoch,
            to_i64(letter.in_seq),
            to_i64(letter.last_seq),
            release,
            self.worker_id,
            pending_interrupt.map(InterruptId::as_uuid),
            content.as_deref(),
            letter.kind.as_str(),
        )
        .execute(&mut *tx)
        .await?;
        if advanced.rows_affected() != 1 {
            tx.rollback().await?;
            return Ok(Committed::Fenced);
        }
        sqlx::query!(
            "INSERT INTO dead_letters (id, thread_id, in_seq, message_id, turn_id, attempts, reason, history)
             SELECT $1, $2, $3, $4, $5, $6, $7, COALESCE(
                 (SELECT history FROM turn_attempts WHERE thread_id = $2 AND in_seq = $3), '[]')",
            Uuid::now_v7(),
            lease.thread_id.as_str(),
            to_i64(letter.in_seq),
            letter.message_id,
            letter.turn_id,
            i32::try_from(letter.attempts).unwrap_or(i32::MAX),
            &*storable(&letter.reason),
        )
        .execute(&mut *tx)
        .await?;
        sqlx::query!(
            "INSERT INTO turns (thread_id, in_seq, turn_id, message_id, kind, content, first_seq,
                                last_seq, received_at, started_at, outcome)
             VALUES ($1, $2, $3, $4, $9, $5, $6, $7, $8, now(), 'dead_lettered')",
            lease.thread_id.as_str(),
            to_i64(letter.in_seq),
            letter.turn_id,
            letter.message_id,
            content.as_deref(),
            to_i64(letter.first_seq),
            to_i64(letter.last_seq),
            letter.received_at,
            letter.kind.as_str(),
        )
        .execute(&mut *tx)
        .await?;
        sqlx::query!(
            "DELETE FROM turn_attempts WHERE thread_id = $1 AND in_seq = $2",
            lease.thread_id.as_str(),
            to_i64(letter.in_seq),
        )
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
        let content = handoff.content.as_deref().map(storable);
        let committed = sqlx::query_scalar!(
            r#"WITH advanced AS (
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
             SELECT count(*) AS "committed!" FROM turn"#,
            lease.thread_id.as_str(),
            lease.epoch,
            to_i64(handoff.in_seq),
            to_i64(handoff.last_seq),
            after == AfterCommit::ReleaseLease,
            handoff.next.as_str(),
            self.worker_id,
            handoff.received_at,
            handoff.resolved,
            handoff.turn_id,
            handoff.message_id,
            handoff.kind.as_str(),
            content.as_deref(),
            to_i64(handoff.first_seq),
            handoff.started_at,
            handoff.outcome.as_str(),
            &*storable_json(&events),
            handoff.withdrawn.map(InterruptId::as_uuid),
        )
        .fetch_one(&self.db)
        .await?;
        Ok(if committed == 1 {
            Committed::Yes
        } else {
            Committed::Fenced
        })
    }
}

/// The turn's row of the group commit (`queries/commit.sql`), each value of the type the
/// statement's parameter has.
fn commit_row(lease: &Lease, turn: &TurnRecord, after: AfterCommit) -> CommitRow {
    CommitRow {
        thread_id: lease.thread_id.as_str().to_owned(),
        epoch: lease.epoch,
        in_seq: to_i64(turn.in_seq),
        last_seq: to_i64(turn.last_seq),
        status: turn.status.as_str(),
        release: after == AfterCommit::ReleaseLease,
        turn_id: turn.turn_id,
        message_id: turn.message_id.clone(),
        kind: turn.kind.as_str(),
        content: turn
            .content
            .as_deref()
            .map(|text| storable(text).into_owned()),
        reply: storable(&turn.reply).into_owned(),
        first_seq: to_i64(turn.first_seq),
        prompt_tokens: to_i64(turn.prompt_tokens),
        completion_tokens: to_i64(turn.completion_tokens),
        cost_usd: turn.cost_usd,
        received_at: turn.received_at,
        started_at: turn.started_at,
        pending_interrupt: turn.pending_interrupt.map(InterruptId::as_uuid),
        outcome: turn.outcome.as_str(),
        agents: serde_json::to_string(&turn.agents).unwrap_or_else(|_| "[]".to_owned()),
        events: serde_json::to_string(&storable_json(&turn.events))
            .unwrap_or_else(|_| "[]".to_owned()),
        escalated: turn.escalated,
        shares: turn
            .shares
            .iter()
            .map(|share| ShareRow {
                agent: share.agent.clone(),
                prompt_tokens: to_i64(share.usage.prompt_tokens),
                completion_tokens: to_i64(share.usage.completion_tokens),
                cost_usd: share.usage.cost_usd,
                tool_calls: i32::try_from(share.tool_calls).unwrap_or(i32::MAX),
                duration_ms: i64::try_from(share.duration.as_millis()).unwrap_or(i64::MAX),
            })
            .collect(),
    }
}

/// One turn's row: the values `queries/commit.sql` takes for it, owned (the batch outlives the
/// turn's borrow).
pub(super) struct CommitRow {
    thread_id: String,
    epoch: i64,
    in_seq: i64,
    last_seq: i64,
    /// The thread's status after the turn.
    status: &'static str,
    /// The commit hands the lease back.
    release: bool,
    turn_id: Uuid,
    message_id: String,
    kind: &'static str,
    content: Option<String>,
    reply: String,
    first_seq: i64,
    prompt_tokens: i64,
    completion_tokens: i64,
    cost_usd: f64,
    received_at: DateTime<Utc>,
    started_at: DateTime<Utc>,
    pending_interrupt: Option<Uuid>,
    outcome: &'static str,
    /// The turn's agents, a JSON array of their names.
    agents: String,
    /// The turn's timeline events, JSON.
    events: String,
    escalated: bool,
    /// Each agent's share of the turn, in order.
    shares: Vec<ShareRow>,
}

pub(super) struct ShareRow {
    agent: String,
    prompt_tokens: i64,
    completion_tokens: i64,
    cost_usd: f64,
    tool_calls: i32,
    duration_ms: i64,
}

/// The grouped commit (`queries/commit.sql`): this worker's turns that end together, in one
/// statement; each answer is whether the turn's row was written (`false`: fenced).
pub(super) struct Commits {
    /// This worker: the holder of every lease of a batch.
    pub(super) owner: Uuid,
}

impl Statement for Commits {
    type Row = CommitRow;
    type Answer = bool;

    fn thread(row: &CommitRow) -> &str {
        &row.thread_id
    }

    async fn run(&self, db: &mut Lane<'_>, rows: &[&CommitRow]) -> Result<Vec<bool>, sqlx::Error> {
        let written = write_commits(db.get().await?, self.owner, rows).await?;
        Ok(rows
            .iter()
            .map(|row| written.contains(&row.thread_id))
            .collect())
    }
}

/// One statement for the rows; the threads whose rows were written.
async fn write_commits(
    db: &mut PgConnection,
    owner: Uuid,
    rows: &[&CommitRow],
) -> Result<Vec<String>, sqlx::Error> {
    let column = |f: fn(&CommitRow) -> i64| rows.iter().map(|row| f(row)).collect::<Vec<_>>();
    let texts = |f: for<'r> fn(&'r CommitRow) -> &'r str| {
        rows.iter().map(|row| f(row)).collect::<Vec<&str>>()
    };
    let flags = |f: fn(&CommitRow) -> bool| rows.iter().map(|row| f(row)).collect::<Vec<_>>();
    let times =
        |f: fn(&CommitRow) -> DateTime<Utc>| rows.iter().map(|row| f(row)).collect::<Vec<_>>();
    let shares = rows.iter().enumerate().flat_map(|(i, row)| {
        row.shares
            .iter()
            .enumerate()
            .map(move |(k, share)| (i, k, share))
    });
    let mut share_turn = Vec::new();
    let mut share_position = Vec::new();
    let mut share_agent = Vec::new();
    let mut share_prompt_tokens = Vec::new();
    let mut share_completion_tokens = Vec::new();
    let mut share_cost_usd = Vec::new();
    let mut share_tool_calls = Vec::new();
    let mut share_duration_ms = Vec::new();
    for (i, k, share) in shares {
        // From 1, as `WITH ORDINALITY` numbers the batch's rows and the turn's shares.
        share_turn.push(i64::try_from(i + 1).unwrap_or(i64::MAX));
        share_position.push(i16::try_from(k + 1).unwrap_or(i16::MAX));
        share_agent.push(share.agent.as_str());
        share_prompt_tokens.push(share.prompt_tokens);
        share_completion_tokens.push(share.completion_tokens);
        share_cost_usd.push(share.cost_usd);
        share_tool_calls.push(share.tool_calls);
        share_duration_ms.push(share.duration_ms);
    }
    sqlx::query_file_scalar!(
        "queries/commit.sql",
        &texts(|row| &row.thread_id) as &[&str],
        &column(|row| row.epoch),
        &column(|row| row.in_seq),
        &column(|row| row.last_seq),
        &texts(|row| row.status) as &[&str],
        &flags(|row| row.release),
        owner,
        &rows.iter().map(|row| row.turn_id).collect::<Vec<_>>(),
        &texts(|row| &row.message_id) as &[&str],
        &texts(|row| row.kind) as &[&str],
        &rows
            .iter()
            .map(|row| row.content.as_deref())
            .collect::<Vec<_>>() as &[Option<&str>],
        &texts(|row| &row.reply) as &[&str],
        &column(|row| row.first_seq),
        &column(|row| row.prompt_tokens),
        &column(|row| row.completion_tokens),
        &rows.iter().map(|row| row.cost_usd).collect::<Vec<_>>(),
        &times(|row| row.received_at),
        &times(|row| row.started_at),
        // `Option<Uuid>` elements (NULLs): sqlx encodes them, its check knows only `Uuid`.
        &rows
            .iter()
            .map(|row| row.pending_interrupt)
            .collect::<Vec<Option<Uuid>>>() as _,
        &texts(|row| row.outcome) as &[&str],
        &texts(|row| &row.agents) as &[&str],
        &texts(|row| &row.events) as &[&str],
        &flags(|row| row.escalated),
        &share_turn,
        &share_position,
        &share_agent as &[&str],
        &share_prompt_tokens,
        &share_completion_tokens,
        &share_cost_usd,
        &share_tool_calls,
        &share_duration_ms,
    )
    .fetch_all(db)
    .await
}
