//! The demo shop's data (SPEC §5: customers, orders 1001–1010, invoices, FAQ), which the built-in
//! demo agents' tools read. Not a migration: `worker seed` loads it, or a worker started with
//! `SEED_DEMO_DATA=true`; production databases never get it.

use anyhow::Context as _;
use sqlx::PgPool;

/// Creates the demo tables when missing and inserts the rows that are missing.
const SEED: &str = include_str!("demo_seed.sql");

/// Key of the advisory lock that makes workers starting together seed one after the other.
const SEED_LOCK: i64 = 0x5eed_de70;

/// Loads the demo shop's data. Idempotent: what demo conversations changed stays as it is.
pub async fn seed(db: &PgPool) -> anyhow::Result<()> {
    let mut tx = db
        .begin()
        .await
        .context("Failed to load the demo shop's data")?;
    sqlx::query!("SELECT pg_advisory_xact_lock($1)", SEED_LOCK)
        .execute(&mut *tx)
        .await
        .context("Failed to load the demo shop's data")?;
    sqlx::raw_sql(SEED)
        .execute(&mut *tx)
        .await
        .context("Failed to load the demo shop's data (worker/src/demo_seed.sql)")?;
    tx.commit()
        .await
        .context("Failed to load the demo shop's data")?;
    Ok(())
}

/// Whether the demo shop's tables exist.
pub async fn is_seeded(db: &PgPool) -> anyhow::Result<bool> {
    sqlx::query_scalar!(r#"SELECT to_regclass('demo_orders') IS NOT NULL AS "seeded!""#)
        .fetch_one(db)
        .await
        .context("Failed to look for the demo shop's data")
}
