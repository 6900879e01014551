//! Group commit: the turns that end while another commit of this worker is in flight share one
//! statement (`queries/commit.sql`), so one round trip, one transaction and one WAL flush.
//!
//! A turn's commit is queued ([`GroupCommit::commit`]); one task takes what is queued when a
//! statement may start (at most [`IN_FLIGHT`] at once) and writes it as one batch. Nothing waits
//! for company: an idle worker's commit starts at once, alone; under load the turns that ended
//! during a round trip go together in the next. Each row keeps its own fence (its thread, epoch
//! and owner, as a single commit), so a fenced turn never blocks the others' rows and each turn
//! learns whether its own row was written. A thread is at most once in a batch.
//!
//! When PostgreSQL refuses the statement (the batch wrote nothing: one turn's data refused, a
//! deadlock with another worker's batch), each turn is written again on its own, so that a turn
//! fails only for its own row. Any other error (the connection lost: whether the statement
//! committed is not known) is every turn's, retried as the database being unavailable.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use prometheus::Histogram;
use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;
use tokio::sync::{mpsc, oneshot, Semaphore};
use uuid::Uuid;

/// Turns in one statement at most.
const MAX_BATCH: usize = 64;

/// Statements in flight at once: one can be on the wire while the next gathers.
const IN_FLIGHT: usize = 2;

/// Turns queued for a statement at most; a commit waits for room beyond.
const QUEUE: usize = 1024;

/// Settings of the connections the commit statements run on: with sequential scans off, the
/// batch's rows are found through the primary key (one probe each) whatever the plan and the size
/// of `threads`. Only the commit runs on them. Public for `tests/e2e/hot_path.rs`, which explains
/// the statement under them.
pub const COMMIT_SETTINGS: &[(&str, &str)] = &[("enable_seqscan", "off")];

/// The queue of this worker's commits (cheap to clone: a sender).
#[derive(Clone)]
pub(super) struct GroupCommit {
    queue: mpsc::Sender<Pending>,
}

/// One turn's row: the values `queries/commit.sql` takes for it, owned (the batch outlives the
/// turn's borrow).
pub(super) struct CommitRow {
    pub thread_id: String,
    pub epoch: i64,
    pub in_seq: i64,
    pub last_seq: i64,
    /// The thread's status after the turn.
    pub status: &'static str,
    /// The commit hands the lease back.
    pub release: bool,
    pub turn_id: Uuid,
    pub message_id: String,
    pub kind: &'static str,
    pub content: Option<String>,
    pub reply: String,
    pub first_seq: i64,
    pub prompt_tokens: i64,
    pub completion_tokens: i64,
    pub cost_usd: f64,
    pub received_at: DateTime<Utc>,
    pub started_at: DateTime<Utc>,
    pub pending_interrupt: Option<Uuid>,
    pub outcome: &'static str,
    /// The turn's agents, a JSON array of their names.
    pub agents: String,
    /// The turn's timeline events, JSON.
    pub events: String,
    pub escalated: bool,
    /// Each agent's share of the turn, in order.
    pub shares: Vec<ShareRow>,
}

pub(super) struct ShareRow {
    pub agent: String,
    pub prompt_tokens: i64,
    pub completion_tokens: i64,
    pub cost_usd: f64,
    pub tool_calls: i32,
    pub duration_ms: i64,
}

struct Pending {
    row: CommitRow,
    /// Whether the row was written (`false`: fenced).
    done: oneshot::Sender<Result<bool, sqlx::Error>>,
}

impl GroupCommit {
    /// Starts the task that writes the batches, on connections of its own to `db`'s database (one
    /// a statement in flight, with [`COMMIT_SETTINGS`]); `sizes` observes the turns of each
    /// statement.
    pub(super) fn start(db: &PgPool, owner: Uuid, sizes: Option<Histogram>) -> Self {
        let options = db
            .connect_options()
            .as_ref()
            .clone()
            .options(COMMIT_SETTINGS.iter().copied());
        let db = PgPoolOptions::new()
            .max_connections(IN_FLIGHT as u32)
            .connect_lazy_with(options);
        let (queue, pending) = mpsc::channel(QUEUE);
        tokio::spawn(gather(db, owner, sizes, pending));
        Self { queue }
    }

    /// Writes the row with whatever else is queued; `Ok(false)` if its lease was not current.
    pub(super) async fn commit(&self, row: CommitRow) -> Result<bool, sqlx::Error> {
        let (done, written) = oneshot::channel();
        self.queue
            .send(Pending { row, done })
            .await
            .map_err(|_| sqlx::Error::WorkerCrashed)?;
        // The sender is dropped unanswered only if the statement's task panicked.
        written.await.map_err(|_| sqlx::Error::WorkerCrashed)?
    }
}

/// Takes the queued commits into batches, each written by a task of its own, [`IN_FLIGHT`] at
/// once. Ends when every [`GroupCommit`] is dropped, after the last batch has started.
async fn gather(
    db: PgPool,
    owner: Uuid,
    sizes: Option<Histogram>,
    mut queue: mpsc::Receiver<Pending>,
) {
    let in_flight = Arc::new(Semaphore::new(IN_FLIGHT));
    // A commit taken from the queue whose thread was in the batch already: the next batch's first.
    let mut held = None;
    loop {
        let Ok(permit) = in_flight.clone().acquire_owned().await else {
            return;
        };
        let first = match held.take() {
            Some(first) => first,
            None => match queue.recv().await {
                Some(first) => first,
                None => return,
            },
        };
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            let Ok(next) = queue.try_recv() else {
                break;
            };
            if batch
                .iter()
                .any(|queued| queued.row.thread_id == next.row.thread_id)
            {
                held = Some(next);
                break;
            }
            batch.push(next);
        }
        if let Some(sizes) = &sizes {
            sizes.observe(batch.len() as f64);
        }
        let db = db.clone();
        tokio::spawn(async move {
            write_batch(&db, owner, batch).await;
            drop(permit);
        });
    }
}

/// Writes the batch and answers each of its turns.
async fn write_batch(db: &PgPool, owner: Uuid, mut batch: Vec<Pending>) {
    // Rows locked in one order by every worker's batches: two batches cannot wait on each other.
    batch.sort_unstable_by(|a, b| a.row.thread_id.cmp(&b.row.thread_id));
    let rows: Vec<&CommitRow> = batch.iter().map(|pending| &pending.row).collect();
    match write(db, owner, &rows).await {
        Ok(written) => {
            for pending in batch {
                let yes = written.contains(&pending.row.thread_id);
                let _ = pending.done.send(Ok(yes));
            }
        }
        Err(error) if batch.len() > 1 && error.as_database_error().is_some() => {
            tracing::debug!(%error, turns = batch.len(), "the batch was refused: each turn alone");
            for pending in batch {
                let alone = write(db, owner, &[&pending.row])
                    .await
                    .map(|written| !written.is_empty());
                let _ = pending.done.send(alone);
            }
        }
        Err(error) => {
            let message = error.to_string();
            let mut error = Some(error);
            for pending in batch {
                let error = error.take().unwrap_or_else(|| {
                    sqlx::Error::Io(std::io::Error::other(format!(
                        "the group commit's statement failed: {message}"
                    )))
                });
                let _ = pending.done.send(Err(error));
            }
        }
    }
}

/// One statement for the rows; the threads whose rows were written.
async fn write(db: &PgPool, owner: Uuid, rows: &[&CommitRow]) -> Result<Vec<String>, sqlx::Error> {
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
