//! The dependency checks behind `/api/health` (SPEC §4) and `/readyz` (SPEC §9): each really asks
//! NATS and PostgreSQL, within a short timeout, and names the one that fails.

use std::time::Duration;

use serde_json::{json, Value};

/// How long one check may take before it counts as failed.
pub const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// What a process needs to reach to do its work.
#[derive(Clone)]
pub struct Dependencies {
    pub nats: async_nats::Client,
    pub jetstream: async_nats::jetstream::Context,
    /// A stream the process uses: reading its info proves JetStream answers.
    pub stream: String,
    pub db: sqlx::PgPool,
}

/// The outcome of checking both dependencies.
#[derive(Debug)]
pub struct Readiness {
    pub nats: Result<(), String>,
    pub database: Result<(), String>,
}

impl Dependencies {
    /// Checks NATS and PostgreSQL at once.
    pub async fn check(&self) -> Readiness {
        let (nats, database) = tokio::join!(self.check_nats(), self.check_database());
        Readiness { nats, database }
    }

    /// A JetStream round trip: proves the server is reachable and the stream answers.
    async fn check_nats(&self) -> Result<(), String> {
        if self.nats.connection_state() != async_nats::connection::State::Connected {
            return Err("error: not connected".into());
        }
        match tokio::time::timeout(CHECK_TIMEOUT, self.jetstream.get_stream(&self.stream)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(error)) => Err(format!("error: {error}")),
            Err(_) => Err("error: timed out".into()),
        }
    }

    async fn check_database(&self) -> Result<(), String> {
        let query = sqlx::query_scalar!("SELECT 1").fetch_one(&self.db);
        match tokio::time::timeout(CHECK_TIMEOUT, query).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(error)) => Err(format!("error: {error}")),
            Err(_) => Err("error: timed out".into()),
        }
    }
}

impl Readiness {
    pub fn is_ready(&self) -> bool {
        self.nats.is_ok() && self.database.is_ok()
    }

    /// `{"status": "ok"|"unavailable", "service", "version", "checks": {"nats", "database"}}`,
    /// each check `"ok"` or the error.
    pub fn body(&self, service: &str) -> Value {
        let describe = |check: &Result<(), String>| match check {
            Ok(()) => "ok".to_owned(),
            Err(error) => error.clone(),
        };
        json!({
            "status": if self.is_ready() { "ok" } else { "unavailable" },
            "service": service,
            "version": env!("CARGO_PKG_VERSION"),
            "checks": {"nats": describe(&self.nats), "database": describe(&self.database)},
        })
    }
}
