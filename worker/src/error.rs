//! How a delivery can fail, and what the consumer answers JetStream for each.

use std::time::Duration;

use async_nats::jetstream::AckKind;

/// How long a delivery waits before JetStream offers it again after a failure.
const RETRY_DELAY: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum TurnError {
    #[error("database error")]
    Database(#[from] sqlx::Error),
    #[error("NATS error: {0}")]
    Nats(String),
    #[error("the thread's lease was lost to another worker")]
    LeaseLost,
}

impl TurnError {
    pub fn nats(error: impl std::fmt::Display) -> Self {
        Self::Nats(error.to_string())
    }

    /// What the consumer answers JetStream when a turn fails this way.
    pub fn ack_kind(&self) -> AckKind {
        match self {
            // Whoever holds the lease now runs the thread; this delivery is checked again later.
            Self::Database(_) | Self::Nats(_) | Self::LeaseLost => AckKind::Nak(Some(RETRY_DELAY)),
        }
    }
}
