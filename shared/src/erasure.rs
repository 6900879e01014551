//! Erasing a conversation everywhere (SPEC §8): by its owner (`DELETE /api/threads/{id}`), an
//! admin (`DELETE /api/admin/conversations/{id}`) or the retention sweep (`RETENTION_DAYS`).
//!
//! In order: a tombstone and audit row in `erasures` (the token stops working, no worker
//! re-creates the thread); a notice to every edge (`<prefix>.erased`) and to the worker running
//! one of its turns (a cancel notice with `erased`: the turn stops and publishes nothing more);
//! its PostgreSQL rows (the thread; its turns, attempts, approvals, tool ledger, dead letters and
//! agent shares go with it); its messages in `<PREFIX>_IN` and frames in `<PREFIX>_OUT`, purged by
//! subject. Every step is idempotent: [`erase`] may run again for the same thread (the edge runs
//! it a second time a moment later, for anything a turn that was stopping still wrote).

use std::collections::HashSet;
use std::sync::{Arc, RwLock};

use async_nats::jetstream::stream::Stream;
use sqlx::PgPool;

use crate::ids::ThreadId;
use crate::protocol::bus::CancelNotice;
use crate::subjects::Subjects;

/// Who asked for an erasure: all the audit log keeps of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Actor {
    Owner,
    Admin,
    Retention,
}

impl Actor {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Owner => "owner",
            Self::Admin => "admin",
            Self::Retention => "retention",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ErasureError {
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("NATS error: {0}")]
    Nats(String),
}

/// Where a conversation lives.
#[derive(Clone)]
pub struct Places {
    pub db: PgPool,
    pub nats: async_nats::Client,
    pub inbound: Stream,
    pub replies: Stream,
    pub subjects: Subjects,
}

/// Whether the thread exists (has a row) or was erased already.
pub async fn known(db: &PgPool, thread: &ThreadId) -> Result<(bool, bool), sqlx::Error> {
    let known = sqlx::query!(
        r#"SELECT EXISTS (SELECT 1 FROM threads WHERE id = $1) AS "exists!",
                  EXISTS (SELECT 1 FROM erasures WHERE thread_id = $1) AS "erased!""#,
        thread.as_str(),
    )
    .fetch_one(db)
    .await?;
    Ok((known.exists, known.erased))
}

/// Erases the conversation everywhere. Returns whether it had a row in PostgreSQL.
pub async fn erase(places: &Places, thread: &ThreadId, actor: Actor) -> Result<bool, ErasureError> {
    sqlx::query!(
        "INSERT INTO erasures (thread_id, actor) VALUES ($1, $2) ON CONFLICT (thread_id) DO NOTHING",
        thread.as_str(),
        actor.as_str(),
    )
    .execute(&places.db)
    .await?;
    announce(places, thread).await;
    let existed = delete_rows(&places.db, thread).await?;
    purge(places, thread).await?;
    Ok(existed)
}

/// Tells every edge (the token stops working) and the worker running a turn of the thread (the
/// turn stops, publishing nothing more). Best effort: edges also read the tombstones, and a
/// turn's commit finds its thread gone.
async fn announce(places: &Places, thread: &ThreadId) {
    if let Err(error) = places
        .nats
        .publish(places.subjects.erased(), thread.as_str().to_owned().into())
        .await
    {
        tracing::warn!(%error, "Cannot announce an erasure to the edges.");
    }
    let notice = CancelNotice {
        thread_id: thread.clone(),
        before_seq: u64::MAX,
        turn_id: None,
        erased: true,
    };
    if let Ok(payload) = serde_json::to_vec(&notice) {
        if let Err(error) = places
            .nats
            .publish(places.subjects.cancels(thread), payload.into())
            .await
        {
            tracing::warn!(%error, "Cannot announce an erasure to the workers.");
        }
    }
}

/// Deletes the thread's rows: everything keyed by the thread goes with its row (foreign keys
/// with `ON DELETE CASCADE`), and so can never be written again for it.
async fn delete_rows(db: &PgPool, thread: &ThreadId) -> Result<bool, sqlx::Error> {
    let mut tx = db.begin().await?;
    sqlx::query!(
        "DELETE FROM tool_executions WHERE thread_id = $1",
        thread.as_str()
    )
    .execute(&mut *tx)
    .await?;
    let deleted = sqlx::query!("DELETE FROM threads WHERE id = $1", thread.as_str())
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(deleted.rows_affected() > 0)
}

/// Purges the thread's subjects of both streams.
async fn purge(places: &Places, thread: &ThreadId) -> Result<(), ErasureError> {
    places
        .inbound
        .purge()
        .filter(places.subjects.inbound(thread))
        .await
        .map_err(|error| ErasureError::Nats(error.to_string()))?;
    places
        .replies
        .purge()
        .filter(places.subjects.replies(thread))
        .await
        .map_err(|error| ErasureError::Nats(error.to_string()))?;
    Ok(())
}

/// Erased thread ids, as an edge knows them: checked with every thread token.
#[derive(Debug, Clone, Default)]
pub struct ErasedSet {
    ids: Arc<RwLock<HashSet<String>>>,
}

/// Tombstones an edge loads at start-up (the most recent ones).
const LOAD_AT_START: i64 = 1_000_000;

impl ErasedSet {
    pub fn contains(&self, thread: &ThreadId) -> bool {
        self.ids
            .read()
            .map(|ids| ids.contains(thread.as_str()))
            .unwrap_or(false)
    }

    pub fn insert(&self, thread: &str) {
        if let Ok(mut ids) = self.ids.write() {
            ids.insert(thread.to_owned());
        }
    }

    /// Loads the tombstones erased since `since` (all of them with `None`, up to a bound);
    /// returns the latest `erased_at` seen.
    pub async fn load(
        &self,
        db: &PgPool,
        since: Option<chrono::DateTime<chrono::Utc>>,
    ) -> Result<Option<chrono::DateTime<chrono::Utc>>, sqlx::Error> {
        let rows = sqlx::query!(
            "SELECT thread_id, erased_at FROM erasures
              WHERE $1::timestamptz IS NULL OR erased_at >= $1
              ORDER BY erased_at DESC LIMIT $2",
            since,
            LOAD_AT_START,
        )
        .fetch_all(db)
        .await?;
        let latest = rows.iter().map(|row| row.erased_at).max().or(since);
        if let Ok(mut ids) = self.ids.write() {
            ids.extend(rows.into_iter().map(|row| row.thread_id));
        }
        Ok(latest)
    }
}
