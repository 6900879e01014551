//! How a delivery can fail, and what the consumer answers JetStream for each.

use std::time::Duration;

use async_nats::jetstream::AckKind;

/// How long a delivery waits before JetStream offers it again after a failure.
const RETRY_DELAY: Duration = Duration::from_secs(1);

/// The longest backoff between counted attempts.
const MAX_RETRY_DELAY: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum TurnError {
    #[error("database error")]
    Database(#[from] sqlx::Error),
    #[error("NATS error: {0}")]
    Nats(String),
    #[error("the thread's lease was lost to another worker")]
    LeaseLost,
    /// The turn itself failed (the model, a tool): counted as an attempt at the message.
    #[error("the turn failed: {0}")]
    Turn(String),
    /// A counted failure; the message is offered again after a backoff.
    #[error("attempt {attempts} failed: {reason}")]
    AttemptFailed { attempts: u32, reason: String },
}

impl TurnError {
    pub fn nats(error: impl std::fmt::Display) -> Self {
        Self::Nats(error.to_string())
    }

    /// What the consumer answers JetStream when a turn fails this way.
    pub fn ack_kind(&self) -> AckKind {
        match self {
            // Whoever holds the lease now runs the thread; this delivery is checked again later.
            Self::Database(_) | Self::Nats(_) | Self::LeaseLost | Self::Turn(_) => {
                AckKind::Nak(Some(RETRY_DELAY))
            }
            // Exponential backoff between counted attempts: 1 s, 2 s, 4 s … up to 30 s.
            Self::AttemptFailed { attempts, .. } => {
                let exponent = attempts.saturating_sub(1).min(5);
                AckKind::Nak(Some(
                    (RETRY_DELAY * 2u32.pow(exponent)).min(MAX_RETRY_DELAY),
                ))
            }
        }
    }
}
