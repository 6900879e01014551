//! `RETENTION_DAYS` (SPEC §8): conversations inactive for longer are erased everywhere, as an
//! erasure by their owner would (`shared::erasure`), by a background sweep. One worker at a time
//! sweeps (a PostgreSQL advisory lock, held for the sweep by a transaction), in small batches; a
//! thread whose lease is held (a turn runs) is left for the next sweep.

use std::time::Duration;

use shared::erasure::{Actor, Places};
use shared::ids::ThreadId;
use tokio_util::sync::CancellationToken;

use crate::settings::ConversationSettings;
use crate::turn::TurnRunner;

/// The advisory lock's key (any constant shared by every worker of a database).
const SWEEP_LOCK: i64 = 0x5353_5245_5445_4e54; // "SSRETENT"

/// Batches of one sweep at most: a sweep ends in bounded time; the next goes on.
const MAX_BATCHES: u32 = 20;

/// Starts the sweep, if retention is on.
pub fn spawn(
    settings: &ConversationSettings,
    runner: &TurnRunner,
    stop: CancellationToken,
) -> Option<tokio::task::JoinHandle<()>> {
    if settings.retention_days == 0 {
        return None;
    }
    let window = Duration::from_secs(
        settings
            .retention_days
            .saturating_mul(settings.retention_unit_secs),
    );
    let every = Duration::from_secs(settings.retention_sweep_secs);
    let batch = i64::try_from(settings.retention_batch).unwrap_or(50);
    let places = Places {
        db: runner.store.pool().clone(),
        nats: runner.jetstream.client(),
        inbound: runner.inbound.clone(),
        replies: runner.replies.clone(),
        subjects: runner.subjects.clone(),
    };
    let deleted = runner.metrics.retention_deleted.clone();
    tracing::info!(?window, ?every, "Retention sweep on.");
    Some(tokio::spawn(async move {
        let mut ticks = tokio::time::interval(every);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = ticks.tick() => {}
                () = stop.cancelled() => break,
            }
            match sweep(&places, window, batch).await {
                Ok(0) => {}
                Ok(count) => {
                    deleted.inc_by(count);
                    tracing::info!(count, "Retention sweep deleted inactive conversations.");
                }
                Err(error) => tracing::warn!(%error, "Retention sweep failed; trying again later."),
            }
        }
    }))
}

/// One sweep: erases up to `MAX_BATCHES` batches of conversations inactive for longer than
/// `window`, unless another worker is sweeping. Returns how many it erased.
pub async fn sweep(places: &Places, window: Duration, batch: i64) -> anyhow::Result<u64> {
    let mut lock = places.db.begin().await?;
    let locked = sqlx::query_scalar!(
        r#"SELECT pg_try_advisory_xact_lock($1) AS "locked!""#,
        SWEEP_LOCK
    )
    .fetch_one(&mut *lock)
    .await?;
    if !locked {
        return Ok(0);
    }
    let mut erased = 0;
    for _ in 0..MAX_BATCHES {
        let ids = sqlx::query_scalar!(
            "SELECT id FROM threads
              WHERE last_active_at < now() - make_interval(secs => $1)
                AND (lease_owner IS NULL OR lease_expires_at < now())
              ORDER BY last_active_at LIMIT $2",
            window.as_secs_f64(),
            batch,
        )
        .fetch_all(&places.db)
        .await?;
        let found = ids.len();
        for id in ids {
            let Ok(thread) = ThreadId::parse(id) else {
                continue;
            };
            shared::erasure::erase(places, &thread, Actor::Retention).await?;
            erased += 1;
        }
        if found < usize::try_from(batch).unwrap_or(usize::MAX) {
            break;
        }
    }
    lock.commit().await?;
    Ok(erased)
}
