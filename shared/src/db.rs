//! PostgreSQL start-up: create the database when missing, then apply the embedded migrations.

use std::time::Duration;

use anyhow::Context as _;
use sqlx::migrate::MigrateDatabase as _;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{PgPool, Postgres};

use crate::config::DatabaseSettings;

/// The migrations in `migrations/`, compiled into every binary.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations");

/// Connects to `DATABASE_URL`, creating the database if it does not exist and migrating it.
/// A failed migration stops start-up with an error that names it.
pub async fn connect_and_migrate(settings: &DatabaseSettings) -> anyhow::Result<PgPool> {
    create_if_missing(&settings.url).await?;
    let options: PgConnectOptions = settings
        .url
        .parse()
        .context("DATABASE_URL is not a valid PostgreSQL URL")?;
    let pool = PgPoolOptions::new()
        .max_connections(settings.max_connections)
        .acquire_timeout(Duration::from_secs(5))
        .connect_with(options)
        .await
        .context("Failed to connect to PostgreSQL")?;
    MIGRATOR
        .run(&pool)
        .await
        .context("Failed to apply the database migrations in migrations/")?;
    Ok(pool)
}

async fn create_if_missing(url: &str) -> anyhow::Result<()> {
    let exists = Postgres::database_exists(url)
        .await
        .context("Failed to reach PostgreSQL to check that the database exists")?;
    if exists {
        return Ok(());
    }
    if let Err(error) = Postgres::create_database(url).await {
        // Another process (a second worker, the edge) may have created it a moment ago.
        if !Postgres::database_exists(url).await.unwrap_or(false) {
            return Err(error).context("Failed to create the database named in DATABASE_URL");
        }
    }
    tracing::info!("Created the database named in DATABASE_URL.");
    Ok(())
}
