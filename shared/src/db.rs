//! PostgreSQL start-up: connect to an existing database (read-only commands, `MIGRATE=false`), or
//! create the database when missing and apply the embedded migrations (start-up, `worker setup`).

use std::borrow::Cow;
use std::time::Duration;

use anyhow::Context as _;
use futures_util::future::BoxFuture;
use sqlx::migrate::{MigrateDatabase as _, Migration, MigrationSource, Migrator};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{PgPool, Postgres};

use crate::config::DatabaseSettings;
use crate::redact::redact_url;

/// The migrations in `migrations/`, compiled into every binary.
pub static MIGRATOR: Migrator = sqlx::migrate!("../migrations");

/// The migration that, as first released, also created and filled the demo shop's tables (now
/// loaded by `worker seed`). Databases that applied that version keep it: see [`migrator_for`].
const AGENTS_MIGRATION: i64 = 20261124000003;
/// SHA-384 of [`AGENTS_MIGRATION`] as first released (tests/fixtures/legacy_migrations/ keeps it).
const AGENTS_MIGRATION_FIRST_CHECKSUM: &str = "a0c2089e44dc7af55f7509f1f3a59633b1618b22e8cd8448c7b47925985ff48386a39821707153e5a08ea5928e221f09";

/// What [`set_up`] did to the database.
#[derive(Debug, Clone, Default)]
pub struct DatabaseSetup {
    /// The database named in `DATABASE_URL` did not exist and was created.
    pub created: bool,
    /// Migrations applied now, as `<version> <description>`, oldest first.
    pub applied: Vec<String>,
}

/// Connects to `DATABASE_URL`, creating the database if it does not exist and migrating it.
/// A failed migration stops start-up with an error that names it.
pub async fn connect_and_migrate(settings: &DatabaseSettings) -> anyhow::Result<PgPool> {
    Ok(set_up(settings).await?.0)
}

/// Start-up: [`connect_and_migrate`], or [`connect_existing`] when `MIGRATE=false`.
pub async fn connect_at_start_up(settings: &DatabaseSettings) -> anyhow::Result<PgPool> {
    if settings.migrate {
        connect_and_migrate(settings).await
    } else {
        tracing::info!("MIGRATE=false: the database is used as it is.");
        connect_existing(settings).await
    }
}

/// [`connect_and_migrate`], saying what it did (for `worker setup`).
pub async fn set_up(settings: &DatabaseSettings) -> anyhow::Result<(PgPool, DatabaseSetup)> {
    let created = create_if_missing(&settings.url).await?;
    let pool = connect_existing(settings).await?;
    let applied = migrate(&pool).await?;
    Ok((pool, DatabaseSetup { created, applied }))
}

/// Connects to the database of `DATABASE_URL` without creating, migrating or changing anything.
/// Fails, naming the database, when it does not exist.
pub async fn connect_existing(settings: &DatabaseSettings) -> anyhow::Result<PgPool> {
    let options: PgConnectOptions = settings
        .url
        .parse()
        .context("DATABASE_URL is not a valid PostgreSQL URL")?;
    let name = options.get_database().unwrap_or("postgres").to_owned();
    let connected = PgPoolOptions::new()
        .max_connections(settings.max_connections)
        .acquire_timeout(Duration::from_secs(5))
        .connect_with(options)
        .await;
    match connected {
        Ok(pool) => Ok(pool),
        Err(sqlx::Error::Database(error)) if error.code().as_deref() == Some("3D000") => {
            anyhow::bail!(
                "The database `{name}` named in DATABASE_URL ({}) does not exist; `worker setup` creates it",
                redact_url(&settings.url)
            )
        }
        Err(error) => Err(error).with_context(|| {
            format!(
                "Failed to connect to PostgreSQL at {}",
                redact_url(&settings.url)
            )
        }),
    }
}

/// Applies the migrations not applied yet; returns them, oldest first.
pub async fn migrate(pool: &PgPool) -> anyhow::Result<Vec<String>> {
    let migrator = migrator_for(pool).await?;
    let before = applied_versions(pool).await?;
    migrator
        .run(pool)
        .await
        .context("Failed to apply the database migrations in migrations/")?;
    Ok(migrator
        .iter()
        .filter(|migration| !before.contains(&migration.version))
        .map(|migration| format!("{} {}", migration.version, migration.description))
        .collect())
}

async fn applied_versions(pool: &PgPool) -> anyhow::Result<Vec<i64>> {
    if !migrations_table_exists(pool).await? {
        return Ok(Vec::new());
    }
    // Runtime SQL: `_sqlx_migrations` is sqlx's own table, not part of the schema in migrations/.
    sqlx::query_scalar("SELECT version FROM _sqlx_migrations WHERE success")
        .fetch_all(pool)
        .await
        .context("Failed to read the applied migrations")
}

async fn migrations_table_exists(pool: &PgPool) -> anyhow::Result<bool> {
    sqlx::query_scalar!(r#"SELECT to_regclass('_sqlx_migrations') IS NOT NULL AS "exists!""#)
        .fetch_one(pool)
        .await
        .context("Failed to read the applied migrations")
}

/// [`MIGRATOR`], except that a database which applied [`AGENTS_MIGRATION`] as first released
/// (with the demo shop in it) is held to that version's checksum: sqlx refuses a database whose
/// applied migration differs from the code's, and the demo tables it created are harmless.
async fn migrator_for(pool: &PgPool) -> anyhow::Result<Migrator> {
    let mut migrations: Vec<Migration> = MIGRATOR.iter().cloned().collect();
    if migrations_table_exists(pool).await? {
        // Runtime SQL: `_sqlx_migrations` is sqlx's own table, not part of the schema in migrations/.
        let applied: Option<Vec<u8>> =
            sqlx::query_scalar("SELECT checksum FROM _sqlx_migrations WHERE version = $1")
                .bind(AGENTS_MIGRATION)
                .fetch_optional(pool)
                .await
                .context("Failed to read the applied migrations")?;
        if applied.as_deref() == Some(first_checksum().as_slice()) {
            for migration in &mut migrations {
                if migration.version == AGENTS_MIGRATION {
                    migration.checksum = Cow::Owned(first_checksum());
                }
            }
        }
    }
    Migrator::new(Resolved(migrations))
        .await
        .context("Failed to load the database migrations")
}

fn first_checksum() -> Vec<u8> {
    (0..AGENTS_MIGRATION_FIRST_CHECKSUM.len())
        .step_by(2)
        .filter_map(|at| u8::from_str_radix(&AGENTS_MIGRATION_FIRST_CHECKSUM[at..at + 2], 16).ok())
        .collect()
}

/// Migrations resolved already (sqlx's [`MigrationSource`] for a list in memory).
#[derive(Debug)]
struct Resolved(Vec<Migration>);

impl<'s> MigrationSource<'s> for Resolved {
    fn resolve(self) -> BoxFuture<'s, Result<Vec<Migration>, sqlx::error::BoxDynError>> {
        Box::pin(async move { Ok(self.0) })
    }
}

/// Creates the database named in `url` unless it exists; `true` when it created it.
async fn create_if_missing(url: &str) -> anyhow::Result<bool> {
    let exists = Postgres::database_exists(url).await.with_context(|| {
        format!(
            "Failed to reach PostgreSQL at {} to check that the database exists",
            redact_url(url)
        )
    })?;
    if exists {
        return Ok(false);
    }
    if let Err(error) = Postgres::create_database(url).await {
        // Another process (a second worker, the edge) may have created it a moment ago.
        if !Postgres::database_exists(url).await.unwrap_or(false) {
            return Err(error).context("Failed to create the database named in DATABASE_URL");
        }
        return Ok(false);
    }
    tracing::info!("Created the database named in DATABASE_URL.");
    Ok(true)
}

#[cfg(test)]
mod tests {
    use sha2::Digest as _;

    use super::*;

    #[test]
    fn the_first_checksum_is_that_of_the_first_release() {
        let legacy = include_str!(
            "../../tests/fixtures/legacy_migrations/20261124000003_agents_interrupts_demo_shop.sql"
        );
        assert_eq!(
            first_checksum(),
            sha2::Sha384::digest(legacy.as_bytes()).to_vec()
        );
        assert_eq!(first_checksum().len(), 48);
    }

    #[test]
    fn the_current_migration_no_longer_loads_the_demo_shop() {
        let current = MIGRATOR
            .iter()
            .find(|migration| migration.version == AGENTS_MIGRATION)
            .expect("the agents migration");
        assert!(!current.sql.contains("demo_orders"), "{}", current.sql);
        assert_ne!(current.checksum.as_ref(), first_checksum().as_slice());
    }
}
