//! Grouped statements: the lease acquires, and the commits, of this worker's threads that come at
//! the same moment share one statement each, so one round trip, one transaction and one WAL flush
//! for all of them (group commit). The statements are [`super::lease`]'s acquire and
//! [`super::turns`]'s commit, each an [`Statement`] over arrays, one element a thread.
//!
//! A thread's row is queued ([`Group::run`]); one task takes what is queued when a statement may
//! start and runs it for the batch. Nothing waits for company: while no statement of the kind is
//! in flight, a row goes out at once, alone. While one is, the rows that come meanwhile wait for
//! it to end and go together in the next, so that under load one statement at a time carries as
//! many rows as it can; but the next waits at most [`SECOND_AFTER`], then starts beside the one
//! that is slow (a row lock waited for, a slow WAL flush; [`IN_FLIGHT`] at most). Each row keeps
//! its own condition (a commit its thread's epoch and owner, an acquire its thread's lease being
//! free), so a row that does not qualify never blocks the others and each caller learns what
//! became of its own. A thread is at most once in a batch, and the batch is sorted by thread:
//! the statements take the rows' locks in the array's order, so every worker's take them in one
//! order.
//!
//! A batch waits for a row lock at most [`GROUP_SETTINGS`]' `lock_timeout`: a row held elsewhere
//! for longer (a stalled transaction) must not hold up, with the locks the batch took already,
//! every other thread of the batch. When PostgreSQL refuses the statement as a whole for one row
//! ([`refused_for_a_row`]: its data, a deadlock, that lock timeout), each row runs again on its
//! own, so that a caller fails only for its own row. Any other error (the connection lost, the
//! server shutting down: whether the statement committed is not known) is every caller's,
//! retried as the database being unavailable.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use prometheus::Histogram;
use sqlx::postgres::PgConnectOptions;
use sqlx::{PgConnection, PgPool};
use tokio::sync::{mpsc, oneshot, Notify, Semaphore};

use super::connections::{self, Connections, Taken, STATEMENT_TIMEOUT};

/// Rows in one statement at most.
const MAX_BATCH: usize = 64;

/// Statements of a kind in flight at once, at most.
const IN_FLIGHT: usize = 2;

/// How long the next statement waits for the one in flight to end before it starts beside it.
/// Two in flight as a rule split the load into statements half as full: in `BENCHMARKS.md`
/// (issue 10, 50 connections), waiting cut the pipeline's CPU per turn by a tenth and
/// PostgreSQL's by a seventh. Not one at most: a statement stalled on a row lock (up to
/// `lock_timeout`) would then hold up every thread of the worker.
const SECOND_AFTER: Duration = Duration::from_millis(5);

/// Rows queued for a statement at most; a caller waits for room beyond.
const QUEUE: usize = 1024;

/// Settings of the connections the grouped statements run on. With sequential scans off, the
/// batch's rows are found through the primary keys (one probe each) whatever the plan and the
/// size of the tables (on a small table, a generic plan would otherwise hash the batch with all
/// of `threads`). Only the grouped statements run on them. Public for `tests/e2e/hot_path.rs`,
/// which explains the statements under them.
///
/// `plan_cache_mode`: a statement over arrays is estimated cheaper with its arguments known, so
/// PostgreSQL would plan the acquire again at every execution (a custom plan: 7 µs a turn in
/// `BENCHMARKS.md`, for nothing). Its generic plan, made once per connection, is as bounded (the
/// same probes).
///
/// `lock_timeout`: a row lock is held for milliseconds (a thread's previous commit, a lease's
/// renewal); one held longer fails the batch, and its rows run again alone.
pub const GROUP_SETTINGS: &[(&str, &str)] = &[
    ("enable_seqscan", "off"),
    ("plan_cache_mode", "force_generic_plan"),
    ("lock_timeout", "1s"),
];

/// A statement over a batch of rows, one a thread.
pub(super) trait Statement: Send + Sync + 'static {
    type Row: Send + Sync + 'static;
    type Answer: Send + 'static;

    /// The row's thread: at most once in a batch, and the batch's order.
    fn thread(row: &Self::Row) -> &str;

    /// Runs the statement for `rows` on `db`; one answer a row, in their order.
    fn run(
        &self,
        db: &mut Lane<'_>,
        rows: &[&Self::Row],
    ) -> impl Future<Output = Result<Vec<Self::Answer>, sqlx::Error>> + Send;
}

/// The connection a statement runs on: one of the group's, taken at its first use.
pub(super) struct Lane<'a> {
    connections: &'a Connections,
    taken: Option<Taken>,
}

impl Lane<'_> {
    /// The connection, taken from the group's (or opened) at the first call.
    pub(super) async fn get(&mut self) -> Result<&mut PgConnection, sqlx::Error> {
        let taken = match self.taken.take() {
            Some(taken) => taken,
            None => connections::take(self.connections).await?,
        };
        Ok(&mut **self.taken.insert(taken))
    }
}

/// Runs `statement` for `rows` on one of `connections`, for [`STATEMENT_TIMEOUT`] at most. The
/// connection goes back when the statement succeeded or PostgreSQL refused it for a row (which
/// leaves the connection as it was); otherwise it is closed.
async fn run_on<S: Statement>(
    statement: &S,
    connections: &Connections,
    rows: &[&S::Row],
) -> Result<Vec<S::Answer>, sqlx::Error> {
    let mut lane = Lane {
        connections,
        taken: None,
    };
    let outcome = tokio::time::timeout(STATEMENT_TIMEOUT, statement.run(&mut lane, rows))
        .await
        .unwrap_or_else(|_| {
            Err(sqlx::Error::Io(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("no answer from PostgreSQL in {STATEMENT_TIMEOUT:?}"),
            )))
        });
    if let Some(taken) = lane.taken {
        taken.give_back(outcome.as_ref().map_or_else(refused_for_a_row, |_| true));
    }
    outcome
}

/// The queue of one statement's rows (cheap to clone: a sender).
pub(super) struct Group<S: Statement> {
    queue: mpsc::Sender<Pending<S>>,
}

impl<S: Statement> Clone for Group<S> {
    fn clone(&self) -> Self {
        Self {
            queue: self.queue.clone(),
        }
    }
}

/// How the group's connections connect: as `db`'s, with [`GROUP_SETTINGS`].
fn connect_options(db: &PgPool) -> PgConnectOptions {
    db.connect_options()
        .as_ref()
        .clone()
        .options(GROUP_SETTINGS.iter().copied())
}

struct Pending<S: Statement> {
    row: S::Row,
    done: oneshot::Sender<Result<S::Answer, sqlx::Error>>,
}

impl<S: Statement> Group<S> {
    /// Starts the task that runs the batches, on connections of its own to `db`'s database (one a
    /// statement in flight, with [`GROUP_SETTINGS`]); `sizes` observes the rows of each statement.
    pub(super) fn start(statement: S, db: &PgPool, sizes: Option<Histogram>) -> Self {
        let connections = connections::connections(connect_options(db), IN_FLIGHT);
        let (queue, pending) = mpsc::channel(QUEUE);
        tokio::spawn(gather(Arc::new(statement), connections, sizes, pending));
        Self { queue }
    }

    /// Runs the statement for `row`, with whatever else is queued.
    pub(super) async fn run(&self, row: S::Row) -> Result<S::Answer, sqlx::Error> {
        let (done, answer) = oneshot::channel();
        self.queue
            .send(Pending { row, done })
            .await
            .map_err(|_| sqlx::Error::WorkerCrashed)?;
        // The sender is dropped unanswered only if the statement's task panicked.
        answer.await.map_err(|_| sqlx::Error::WorkerCrashed)?
    }
}

/// Takes the queued rows into batches, each run by a task of its own, [`IN_FLIGHT`] at once, a
/// second only after [`SECOND_AFTER`] waiting for the first. Ends when every [`Group`] is
/// dropped, after the last batch has started.
async fn gather<S: Statement>(
    statement: Arc<S>,
    connections: Connections,
    sizes: Option<Histogram>,
    mut queue: mpsc::Receiver<Pending<S>>,
) {
    let in_flight = Arc::new(Semaphore::new(IN_FLIGHT));
    let ended = Arc::new(Notify::new());
    // A row taken from the queue whose thread was in the batch already: the next batch's first.
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
        // Registered before looking, so that an end between the look and the wait is not missed.
        let one_ended = ended.notified();
        tokio::pin!(one_ended);
        one_ended.as_mut().enable();
        if in_flight.available_permits() + 1 < IN_FLIGHT {
            let _ = tokio::time::timeout(SECOND_AFTER, one_ended).await;
        }
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            let Ok(next) = queue.try_recv() else {
                break;
            };
            let thread = S::thread(&next.row);
            if batch.iter().any(|queued| S::thread(&queued.row) == thread) {
                held = Some(next);
                break;
            }
            batch.push(next);
        }
        if let Some(sizes) = &sizes {
            sizes.observe(batch.len() as f64);
        }
        let (statement, connections, ended) =
            (statement.clone(), connections.clone(), ended.clone());
        tokio::spawn(async move {
            run_batch(&*statement, &connections, batch).await;
            drop(permit);
            ended.notify_waiters();
        });
    }
}

/// Runs the batch on one of `connections` and answers each of its callers.
async fn run_batch<S: Statement>(
    statement: &S,
    connections: &Connections,
    mut batch: Vec<Pending<S>>,
) {
    batch.sort_unstable_by(|a, b| S::thread(&a.row).cmp(S::thread(&b.row)));
    let rows: Vec<&S::Row> = batch.iter().map(|pending| &pending.row).collect();
    match run_on(statement, connections, &rows).await {
        Ok(answers) if answers.len() == batch.len() => {
            for (pending, answer) in batch.into_iter().zip(answers) {
                let _ = pending.done.send(Ok(answer));
            }
        }
        Ok(answers) => {
            let error = format!("{} answers for {} rows", answers.len(), batch.len());
            for pending in batch {
                let _ = pending.done.send(Err(sqlx::Error::Protocol(error.clone())));
            }
        }
        Err(error) if batch.len() > 1 && refused_for_a_row(&error) => {
            tracing::debug!(%error, rows = batch.len(), "the batch was refused: each row alone");
            for pending in batch {
                let alone = run_on(statement, connections, &[&pending.row])
                    .await
                    .and_then(|answers| {
                        answers.into_iter().next().ok_or_else(|| {
                            sqlx::Error::Protocol("no answer for the row".to_owned())
                        })
                    });
                let _ = pending.done.send(alone);
            }
        }
        Err(error) => {
            let message = error.to_string();
            let mut error = Some(error);
            for pending in batch {
                let error = error.take().unwrap_or_else(|| {
                    sqlx::Error::Io(std::io::Error::other(format!(
                        "the grouped statement failed: {message}"
                    )))
                });
                let _ = pending.done.send(Err(error));
            }
        }
    }
}

/// PostgreSQL refused the statement, which wrote nothing, possibly because of one row: data it
/// refuses (classes 21, 22, 23), a deadlock or serialization failure (40), a lock not available
/// (55: `lock_timeout`), the statement cancelled (57014). Not the server going away (57P01…) or a
/// connection failing (08): then the rows are every caller's to retry.
fn refused_for_a_row(error: &sqlx::Error) -> bool {
    let code = error.as_database_error().and_then(|error| error.code());
    code.is_some_and(|code| {
        ["21", "22", "23", "40", "55"]
            .iter()
            .any(|class| code.starts_with(class))
            || code == "57014"
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A statement that records each batch's threads and ends when the test lets it.
    #[derive(Clone)]
    struct Gated {
        batches: Arc<std::sync::Mutex<Vec<Vec<String>>>>,
        ends: Arc<Semaphore>,
    }

    impl Statement for Gated {
        type Row = String;
        type Answer = ();

        fn thread(row: &String) -> &str {
            row
        }

        fn run(
            &self,
            _db: &mut Lane<'_>,
            rows: &[&String],
        ) -> impl Future<Output = Result<Vec<()>, sqlx::Error>> + Send {
            let rows: Vec<String> = rows.iter().map(|row| (*row).clone()).collect();
            let answers = vec![(); rows.len()];
            self.batches.lock().unwrap().push(rows);
            let ends = self.ends.clone();
            async move {
                ends.acquire().await.unwrap().forget();
                Ok(answers)
            }
        }
    }

    impl Gated {
        fn new() -> Self {
            Self {
                batches: Arc::default(),
                ends: Arc::new(Semaphore::new(0)),
            }
        }

        fn batches(&self) -> Vec<Vec<String>> {
            self.batches.lock().unwrap().clone()
        }
    }

    fn group(statement: &Gated) -> Group<Gated> {
        let db = PgPool::connect_lazy("postgres://app@127.0.0.1:1/app").unwrap();
        Group::start(statement.clone(), &db, None)
    }

    fn run(group: &Group<Gated>, thread: &str) -> tokio::task::JoinHandle<()> {
        let (group, thread) = (group.clone(), thread.to_owned());
        tokio::spawn(async move { group.run(thread).await.unwrap() })
    }

    #[tokio::test(start_paused = true)]
    async fn rows_that_come_while_a_statement_runs_wait_for_it_and_go_together() {
        let statement = Gated::new();
        let group = group(&statement);
        let first = run(&group, "a");
        tokio::time::sleep(Duration::from_millis(1)).await;
        assert_eq!(statement.batches(), [["a"]], "a lone row goes out at once");

        let rest = [run(&group, "b"), run(&group, "c")];
        tokio::time::sleep(SECOND_AFTER / 2).await;
        assert_eq!(statement.batches().len(), 1, "no second statement yet");

        statement.ends.add_permits(3);
        first.await.unwrap();
        for row in rest {
            row.await.unwrap();
        }
        assert_eq!(statement.batches(), [vec!["a"], vec!["b", "c"]]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_statement_gets_a_second_beside_it() {
        let statement = Gated::new();
        let group = group(&statement);
        let slow = run(&group, "a");
        tokio::time::sleep(Duration::from_millis(1)).await;
        let next = run(&group, "b");
        tokio::time::sleep(SECOND_AFTER + Duration::from_millis(1)).await;
        assert_eq!(statement.batches(), [["a"], ["b"]]);

        statement.ends.add_permits(2);
        slow.await.unwrap();
        next.await.unwrap();
    }

    #[tokio::test]
    async fn the_groups_connections_start_with_its_settings() {
        let db = PgPool::connect_lazy("postgres://app@127.0.0.1:1/app?options=-c%20work_mem%3D8MB")
            .unwrap();
        let options = connect_options(&db);
        let sent = options.get_options().unwrap_or_default();
        assert!(sent.contains("work_mem=8MB"), "{sent}");
        for (name, value) in GROUP_SETTINGS {
            assert!(sent.contains(&format!("{name}={value}")), "{sent}");
        }
    }
}
