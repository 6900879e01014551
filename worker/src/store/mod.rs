//! PostgreSQL, for the turn: the one place the worker's per-turn SQL lives. The agent graph and
//! the turn ask the store; neither holds a pool nor writes a statement. The statements are
//! checked against the schema when compiled (sqlx `query!`); those `tests/e2e/hot_path.rs`
//! explains are files in `worker/queries/` (`query_file!`), which the test reads too.
//!
//! - [`lease`]: the per-thread lease fenced by an epoch (acquire, renew, release), erasure and
//!   session expiry;
//! - [`turns`]: committing a turn (and a skipped, dead-lettered or handoff message), failed
//!   attempts, the history the agents see;
//! - [`group`]: the acquires, and the commits, of threads that come together share a statement;
//! - [`connections`]: the connections those statements and the tools' run on, one round trip a
//!   statement;
//! - [`interrupts`]: approvals: raised with their checkpoint, loaded, decided;
//! - [`ledger`]: what agents' tools touch: the approval ledger that runs an approved call at
//!   most once, a tool's connection, the imported tools in use.

mod connections;
mod group;
mod interrupts;
mod lease;
mod ledger;
mod turns;

use group::Group;

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use prometheus::HistogramVec;
use sqlx::PgPool;
use uuid::Uuid;

pub use group::GROUP_SETTINGS;
pub use interrupts::NewInterrupt;
pub use lease::{Acquired, ACQUIRE_SQL};
pub use ledger::{ApprovedRun, RemoteClaim};
pub use turns::{HISTORY_SQL, HISTORY_TURNS};

/// Text as PostgreSQL can store it: a NUL character (which a client may send) becomes U+FFFD.
pub(crate) fn storable(text: &str) -> std::borrow::Cow<'_, str> {
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

pub(crate) fn to_i64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

pub(crate) fn to_u64(value: i64) -> u64 {
    u64::try_from(value).unwrap_or_default()
}

/// Connections for the tools that work in the database, at most: a call holds one for a query or
/// two (the demo shop's), never across a call out.
const TOOL_CONNECTIONS: usize = 4;

/// The statements of a turn that this worker's threads share ([`group`]).
struct Groups {
    acquires: Group<lease::Acquires>,
    commits: Group<turns::Commits>,
}

#[derive(Clone)]
pub struct Store {
    db: PgPool,
    /// Renewals of leases: a pool of their own, so that turns using every connection of `db`
    /// cannot make a lease run out.
    leases: PgPool,
    /// The connections of the tools that work in the database ([`connections`]).
    tools: connections::Connections,
    worker_id: Uuid,
    lease_ttl: Duration,
    session_ttl: Duration,
    interrupt_ttl: Duration,
    /// The grouped statements' queues, started with their first use (inside the runtime).
    groups: Arc<OnceLock<Groups>>,
    /// Observes the rows of each grouped statement.
    group_sizes: Option<HistogramVec>,
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
        let tools =
            connections::connections(db.connect_options().as_ref().clone(), TOOL_CONNECTIONS);
        Self {
            db,
            leases,
            tools,
            worker_id,
            lease_ttl,
            session_ttl,
            interrupt_ttl,
            groups: Arc::default(),
            group_sizes: None,
        }
    }

    /// Observes in `sizes`, by statement (`acquire`, `commit`), how many threads each grouped
    /// statement takes.
    pub fn with_group_sizes(mut self, sizes: HistogramVec) -> Self {
        self.group_sizes = Some(sizes);
        self
    }

    fn groups(&self) -> &Groups {
        self.groups.get_or_init(|| {
            let sizes = |statement: &str| {
                self.group_sizes
                    .as_ref()
                    .map(|sizes| sizes.with_label_values(&[statement]))
            };
            Groups {
                acquires: Group::start(
                    lease::Acquires {
                        owner: self.worker_id,
                        lease_ttl: self.lease_ttl,
                    },
                    &self.db,
                    sizes("acquire"),
                ),
                commits: Group::start(
                    turns::Commits {
                        owner: self.worker_id,
                    },
                    &self.db,
                    sizes("commit"),
                ),
            }
        })
    }

    fn acquires(&self) -> &Group<lease::Acquires> {
        &self.groups().acquires
    }

    fn commits(&self) -> &Group<turns::Commits> {
        &self.groups().commits
    }

    pub fn pool(&self) -> &PgPool {
        &self.db
    }

    /// This worker's id, the owner of the leases it takes.
    pub fn worker_id(&self) -> Uuid {
        self.worker_id
    }
}

#[cfg(test)]
mod tests {
    use shared::ids::ThreadId;
    use shared::protocol::HandoffState;

    use super::*;
    use crate::records::Lease;

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
            history: None,
        };
        assert!(store.session_expired(&lease, now), "idle 12 min > 10 min");
        lease.pending_interrupt = Some(shared::turns::InterruptId::from(Uuid::nil()));
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
