//! How a delivery can fail, and what the consumer answers JetStream for each.

use std::time::Duration;

use async_nats::jetstream::context::PublishError;
use async_nats::jetstream::stream::RawMessageError;
use async_nats::jetstream::AckKind;

/// How long a delivery waits before JetStream offers it again after a failure.
const RETRY_DELAY: Duration = Duration::from_secs(1);

/// The longest backoff between counted attempts.
const MAX_RETRY_DELAY: Duration = Duration::from_secs(30);

/// A JetStream call of the turn that failed, with async-nats's own error: its kind (no message
/// found, wrong last sequence, timeout, …) stays matchable and its source chain intact.
#[derive(Debug, thiserror::Error)]
pub enum NatsError {
    /// Reading a stored message (`<PREFIX>_IN` or `<PREFIX>_OUT`) by sequence, or a subject's
    /// last one (the thread's last frame): async-nats gives both one error type.
    #[error("reading the stream: {0}")]
    Read(#[from] RawMessageError),
    /// Publishing a bundle of frames, or its acknowledgement.
    #[error("publishing: {0}")]
    Publish(#[from] PublishError),
}

#[derive(Debug, thiserror::Error)]
pub enum TurnError {
    #[error("database error: {0}")]
    Database(sqlx::Error),
    #[error("NATS error: {0}")]
    Nats(#[from] NatsError),
    #[error("the thread's lease was lost to another worker")]
    LeaseLost,
    /// The turn itself failed (the model, a tool): counted as an attempt at the message.
    #[error("the turn failed: {0}")]
    Turn(String),
    /// The turn failed in a way every attempt would (the model server refused the request with
    /// a 400): the message is dead-lettered at once, with this reason.
    #[error("the turn was refused: {0}")]
    Rejected(String),
    /// The worker is shutting down and handed the turn back.
    #[error("abandoned at shutdown")]
    Abandoned,
    /// The conversation was erased (SPEC §8): its deliveries are dropped, nothing is re-created.
    #[error("the conversation was erased")]
    Erased,
    /// A counted failure; the message is offered again after a backoff.
    #[error("attempt {attempts} failed: {reason}")]
    AttemptFailed { attempts: u32, reason: String },
}

impl From<sqlx::Error> for TurnError {
    /// Data the database refuses (SQLSTATE classes 22 and 23) will be refused on every attempt:
    /// it counts against the message, which is dead-lettered in the end instead of retried for
    /// ever. Anything else is the database being unavailable: retried without counting.
    fn from(error: sqlx::Error) -> Self {
        let refused = error
            .as_database_error()
            .and_then(|db| db.code())
            .is_some_and(|code| code.starts_with("22") || code.starts_with("23"));
        if refused {
            Self::Turn(format!("the database refused the turn: {error}"))
        } else {
            Self::Database(error)
        }
    }
}

impl TurnError {
    pub fn nats(error: impl Into<NatsError>) -> Self {
        Self::Nats(error.into())
    }

    /// What the consumer answers JetStream when a turn fails this way.
    pub fn ack_kind(&self) -> AckKind {
        match self {
            // Whoever holds the lease now runs the thread; this delivery is checked again later.
            Self::Database(_)
            | Self::Nats(_)
            | Self::LeaseLost
            | Self::Turn(_)
            | Self::Rejected(_) => AckKind::Nak(Some(RETRY_DELAY)),
            // Another worker can take it at once.
            Self::Abandoned => AckKind::Nak(None),
            // Its messages are purged; a delivery still in flight has nothing left to do.
            Self::Erased => AckKind::Ack,
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

#[cfg(test)]
mod tests {
    use std::error::Error as _;

    use async_nats::jetstream::context::{PublishError, PublishErrorKind};
    use async_nats::jetstream::stream::{RawMessageError, RawMessageErrorKind};

    use super::{NatsError, TurnError};

    #[test]
    fn a_nats_failure_keeps_async_nats_error_and_its_kind() {
        let error = TurnError::nats(PublishError::new(PublishErrorKind::TimedOut));
        let TurnError::Nats(NatsError::Publish(publish)) = &error else {
            panic!("not a publish error: {error:?}")
        };
        assert_eq!(publish.kind(), PublishErrorKind::TimedOut);
        let source = error.source().expect("the NATS error is the source");
        assert!(source.downcast_ref::<NatsError>().is_some());

        let error = TurnError::nats(RawMessageError::new(RawMessageErrorKind::NoMessageFound));
        assert!(matches!(
            &error,
            TurnError::Nats(NatsError::Read(read)) if read.kind() == RawMessageErrorKind::NoMessageFound
        ));
        // Still retried like any NATS failure.
        assert!(matches!(
            error.ack_kind(),
            async_nats::jetstream::AckKind::Nak(Some(_))
        ));
    }
}
