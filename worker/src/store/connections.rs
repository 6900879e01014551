//! Connections kept open for the statements of every turn: the grouped acquire and commit
//! ([`super::group`]) and the tools that work in the database ([`super::ledger`]).
//!
//! Not sqlx's pool: it tests a connection with a round trip to the server when it hands it out
//! and again, always, when it takes it back: two round trips besides each statement, more than
//! the statements themselves on the hot path (`BENCHMARKS.md`, issue 10). Here a connection is
//! tested only when it has not been used for [`TEST_IDLE_AFTER`], and it goes back only after a
//! statement that ended with the server's answer ([`Taken::give_back`]): one whose statement
//! failed otherwise, ran past [`STATEMENT_TIMEOUT`] or was stopped half-way (its turn abandoned,
//! perhaps in a transaction) is closed.

use std::ops::{Deref, DerefMut};
use std::time::Duration;

use deadpool::managed::{Manager, Metrics, Object, Pool, PoolError, QueueMode, RecycleResult};
use sqlx::postgres::PgConnectOptions;
use sqlx::{Connection as _, PgConnection};

/// How long taking a connection may wait, for a free one or a new one to open: PostgreSQL down is
/// an error soon, and retried (as the pools' acquire, `shared::db`).
const TAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// A connection not used for this long is tested with a round trip before it is handed out.
const TEST_IDLE_AFTER: Duration = Duration::from_secs(30);

/// A statement (or a tool's call) on these connections that has not ended after this long is
/// abandoned and its connection closed: one cut without a word (a network partition) would
/// otherwise hold it until TCP gives up. Statements here take milliseconds; a row lock is waited
/// for a second at most (`group::GROUP_SETTINGS`).
pub(super) const STATEMENT_TIMEOUT: Duration = Duration::from_secs(10);

/// Connections to one database, `size` at most, each kept open between statements.
pub(super) type Connections = Pool<Connect>;

/// Opens the connections of a [`Connections`], and tests one not used for long before it is used.
pub(super) struct Connect(PgConnectOptions);

impl Manager for Connect {
    type Type = PgConnection;
    type Error = sqlx::Error;

    async fn create(&self) -> Result<PgConnection, sqlx::Error> {
        PgConnection::connect_with(&self.0).await
    }

    async fn recycle(
        &self,
        connection: &mut PgConnection,
        metrics: &Metrics,
    ) -> RecycleResult<sqlx::Error> {
        if metrics.last_used() >= TEST_IDLE_AFTER {
            connection.ping().await?;
        }
        Ok(())
    }
}

/// Connections opened with `options` when needed, `size` at most. The last given back is the
/// next taken: under light load one stays in use and the others idle (then tested before use).
pub(super) fn connections(options: PgConnectOptions, size: usize) -> Connections {
    let built = Pool::builder(Connect(options))
        .max_size(size)
        .queue_mode(QueueMode::Lifo)
        .build();
    // The builder fails only for timeouts without a runtime to run them; it is given none.
    built.expect("a pool without timeouts builds")
}

/// A connection taken from [`Connections`] for a statement or a call: closed when dropped,
/// unless given back.
pub(super) struct Taken(Option<Object<Connect>>);

/// A connection of `connections`: an idle one, or a new one.
pub(super) async fn take(connections: &Connections) -> Result<Taken, sqlx::Error> {
    match tokio::time::timeout(TAKE_TIMEOUT, connections.get()).await {
        Ok(Ok(held)) => Ok(Taken(Some(held))),
        Ok(Err(PoolError::Backend(error))) => Err(error),
        Ok(Err(error)) => Err(sqlx::Error::Configuration(error.to_string().into())),
        Err(_) => Err(sqlx::Error::PoolTimedOut),
    }
}

impl Taken {
    /// Gives the connection back for the next statement when `clean` (the statement ended with
    /// the server's answer, and left no transaction open); closes it otherwise.
    pub(super) fn give_back(mut self, clean: bool) {
        if clean {
            // Dropped as an `Object`: back to its pool. Otherwise `Drop` closes it.
            drop(self.0.take());
        }
    }
}

impl Drop for Taken {
    fn drop(&mut self) {
        if let Some(held) = self.0.take() {
            drop(Object::take(held));
        }
    }
}

impl Deref for Taken {
    type Target = PgConnection;

    fn deref(&self) -> &PgConnection {
        self.0
            .as_deref()
            .expect("a connection is taken until given back")
    }
}

impl DerefMut for Taken {
    fn deref_mut(&mut self) -> &mut PgConnection {
        self.0
            .as_deref_mut()
            .expect("a connection is taken until given back")
    }
}
