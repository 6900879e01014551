//! The stored vocabulary of a conversation's turns and approvals: what `threads.status`,
//! `turns.kind`, `turns.outcome`, `interrupts.status` and `threads.handoff_state` hold. The worker writes them and the edge reads them
//! through these types, never through string literals. Each is stored as its `as_str()` text
//! (the values the migrations document; no migration changed them): binding one is binding that
//! `TEXT`, and decoding an unknown text is an error rather than a silent default.

use std::fmt;
use std::str::FromStr;

use sqlx::encode::IsNull;
use sqlx::error::BoxDynError;
use sqlx::postgres::{PgArgumentBuffer, PgTypeInfo, PgValueRef};
use sqlx::{Decode, Encode, Postgres, Type};

use crate::protocol::bus::InboundKind;
use crate::protocol::HandoffState;

/// A stored text that is not one of a vocabulary's values.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{value:?} is not a {of}")]
pub struct UnknownValue {
    /// The vocabulary (type) asked for.
    pub of: &'static str,
    pub value: String,
}

/// A closed set of values stored as `TEXT`: `as_str`, `FromStr`, `Display`, serde (the same
/// text) and the sqlx `Type`/`Encode`/`Decode` of `TEXT`.
macro_rules! text_vocabulary {
    (
        $(#[$meta:meta])*
        pub enum $name:ident {
            $( $(#[$variant_meta:meta])* $variant:ident => $text:literal, )+
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
        #[serde(rename_all = "snake_case")]
        pub enum $name {
            $( $(#[$variant_meta])* $variant, )+
        }

        impl $name {
            /// Every value, in declaration order.
            pub const ALL: &'static [Self] = &[$(Self::$variant),+];

            /// The stored text.
            pub fn as_str(self) -> &'static str {
                match self {
                    $( Self::$variant => $text, )+
                }
            }
        }

        impl FromStr for $name {
            type Err = UnknownValue;

            fn from_str(text: &str) -> Result<Self, UnknownValue> {
                match text {
                    $( $text => Ok(Self::$variant), )+
                    _ => Err(UnknownValue {
                        of: stringify!($name),
                        value: text.to_owned(),
                    }),
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        text_column!($name);
    };
}

/// The sqlx `Type`/`Encode`/`Decode` of `TEXT` for a type with `as_str` and `FromStr`.
macro_rules! text_column {
    ($name:ty) => {
        impl Type<Postgres> for $name {
            fn type_info() -> PgTypeInfo {
                <str as Type<Postgres>>::type_info()
            }

            fn compatible(ty: &PgTypeInfo) -> bool {
                <str as Type<Postgres>>::compatible(ty)
            }
        }

        impl Encode<'_, Postgres> for $name {
            fn encode_by_ref(&self, buf: &mut PgArgumentBuffer) -> Result<IsNull, BoxDynError> {
                <&str as Encode<'_, Postgres>>::encode(self.as_str(), buf)
            }
        }

        impl<'r> Decode<'r, Postgres> for $name {
            fn decode(value: PgValueRef<'r>) -> Result<Self, BoxDynError> {
                Ok(<&str as Decode<'r, Postgres>>::decode(value)?.parse()?)
            }
        }
    };
}

text_vocabulary! {
    /// Where a conversation stands (`threads.status`, migration `20261124000004`): the worker
    /// sets it with each turn, the edge lists, filters and shows it.
    pub enum ThreadStatus {
        /// New, or a message is being answered.
        Open => "open",
        /// The last turn waits for an approval.
        AwaitingApproval => "awaiting_approval",
        /// The last turn was answered.
        Resolved => "resolved",
        /// Handed to a human (kept unless it waits for an approval or expired).
        Escalated => "escalated",
        /// The session expired: terminal.
        Expired => "expired",
        /// The last message was dead-lettered.
        Failed => "failed",
    }
}

text_vocabulary! {
    /// What a stored client message was (`turns.kind`): the kind of its `InboundMessage`.
    pub enum TurnKind {
        /// A customer's message.
        Message => "message",
        /// An answer to an approval.
        InterruptResponse => "interrupt_response",
        /// A `cancel` (SPEC §8).
        Cancel => "cancel",
        /// The customer asked for a human (SPEC §7).
        RequestHuman => "request_human",
        OperatorJoin => "operator_join",
        OperatorLeave => "operator_leave",
        OperatorResolve => "operator_resolve",
        /// An operator's message to the customer.
        HumanMessage => "human_message",
    }
}

impl TurnKind {
    /// A handoff message (SPEC §7) rather than a customer's turn.
    pub fn is_handoff(self) -> bool {
        matches!(
            self,
            Self::RequestHuman
                | Self::OperatorJoin
                | Self::OperatorLeave
                | Self::OperatorResolve
                | Self::HumanMessage
        )
    }
}

impl From<&InboundKind> for TurnKind {
    fn from(kind: &InboundKind) -> Self {
        match kind {
            InboundKind::Message { .. } => Self::Message,
            InboundKind::InterruptResponse { .. } => Self::InterruptResponse,
            InboundKind::Cancel { .. } => Self::Cancel,
            InboundKind::RequestHuman => Self::RequestHuman,
            InboundKind::OperatorJoin { .. } => Self::OperatorJoin,
            InboundKind::OperatorLeave { .. } => Self::OperatorLeave,
            InboundKind::OperatorResolve { .. } => Self::OperatorResolve,
            InboundKind::HumanMessage { .. } => Self::HumanMessage,
        }
    }
}

text_vocabulary! {
    /// How a stored message's turn ended (`turns.outcome`); also the `outcome` label of
    /// `worker_turns_total`.
    pub enum TurnOutcome {
        /// Answered (`message_complete`).
        Completed => "completed",
        /// Paused on an approval (`interrupt`).
        Interrupted => "interrupted",
        /// The classifier asked the customer to say more.
        Clarification => "clarification",
        /// The session had expired: nothing ran.
        SessionExpired => "session_expired",
        /// Stopped by a cancel (SPEC §8).
        Cancelled => "cancelled",
        /// Given up on after its last attempt.
        DeadLettered => "dead_lettered",
        /// A handoff message changed (or kept) the handoff state.
        Handoff => "handoff",
        /// An operator's message was delivered.
        Delivered => "delivered",
    }
}

text_vocabulary! {
    /// Where an approval stands (`interrupts.status`).
    pub enum InterruptStatus {
        /// Raised and not decided: the thread waits for it.
        Pending => "pending",
        Approved => "approved",
        Rejected => "rejected",
        /// The answer came after `expires_at`: nothing ran.
        Expired => "expired",
        /// A new customer message withdrew it.
        Superseded => "superseded",
        /// A cancel withdrew it (or its turn was cancelled before the approved tool ran).
        Cancelled => "cancelled",
        /// An attempt raised it and then failed: it was never the thread's pending approval.
        Abandoned => "abandoned",
    }
}

/// Names an approval (`interrupts.id`, `threads.pending_interrupt`, `tool_executions.interrupt_id`).
/// A UUID in storage; on the wire (`interrupt`, `interrupt_response`) its hyphenated text.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize, sqlx::Type,
)]
#[serde(transparent)]
#[sqlx(transparent)]
pub struct InterruptId(uuid::Uuid);

impl InterruptId {
    /// A new, random id.
    pub fn generate() -> Self {
        Self(uuid::Uuid::new_v4())
    }

    pub fn as_uuid(self) -> uuid::Uuid {
        self.0
    }
}

impl From<uuid::Uuid> for InterruptId {
    fn from(id: uuid::Uuid) -> Self {
        Self(id)
    }
}

impl FromStr for InterruptId {
    type Err = uuid::Error;

    fn from_str(text: &str) -> Result<Self, uuid::Error> {
        uuid::Uuid::parse_str(text).map(Self)
    }
}

impl fmt::Display for InterruptId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// `threads.handoff_state` (its CHECK allows exactly these three).
impl FromStr for HandoffState {
    type Err = UnknownValue;

    fn from_str(text: &str) -> Result<Self, UnknownValue> {
        match text {
            "ai" => Ok(Self::Ai),
            "waiting" => Ok(Self::Waiting),
            "human" => Ok(Self::Human),
            _ => Err(UnknownValue {
                of: "HandoffState",
                value: text.to_owned(),
            }),
        }
    }
}

text_column!(HandoffState);

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trips<T>(all: &[T])
    where
        T: Copy + fmt::Debug + PartialEq + FromStr + serde::Serialize + fmt::Display,
        <T as FromStr>::Err: fmt::Debug,
    {
        for value in all {
            let text = value.to_string();
            assert_eq!(text.parse::<T>().unwrap(), *value);
            // The JSON form is the stored text.
            assert_eq!(serde_json::to_value(value).unwrap(), text.as_str());
        }
    }

    #[test]
    fn every_value_round_trips_through_its_text_and_json() {
        round_trips(ThreadStatus::ALL);
        round_trips(TurnKind::ALL);
        round_trips(TurnOutcome::ALL);
        round_trips(InterruptStatus::ALL);
        for state in [HandoffState::Ai, HandoffState::Waiting, HandoffState::Human] {
            assert_eq!(state.as_str().parse::<HandoffState>().unwrap(), state);
            assert_eq!(serde_json::to_value(state).unwrap(), state.as_str());
        }
    }

    #[test]
    fn an_interrupt_id_is_its_uuid_text_on_the_wire() {
        let id = InterruptId::generate();
        assert_eq!(id.to_string(), id.as_uuid().to_string());
        assert_eq!(id.to_string().parse::<InterruptId>().unwrap(), id);
        assert_eq!(serde_json::to_value(id).unwrap(), id.to_string().as_str());
        assert!("not-a-uuid".parse::<InterruptId>().is_err());
    }

    #[test]
    fn an_unknown_text_is_an_error() {
        let error = "paused".parse::<InterruptStatus>().unwrap_err();
        assert_eq!(error.of, "InterruptStatus");
        assert!("Message".parse::<TurnKind>().is_err());
    }

    #[test]
    fn a_turn_kind_is_its_inbound_kind() {
        for kind in [
            InboundKind::RequestHuman,
            InboundKind::Cancel { turn_id: None },
        ] {
            assert_eq!(TurnKind::from(&kind).as_str(), kind.as_str());
        }
        assert!(TurnKind::RequestHuman.is_handoff());
        assert!(TurnKind::HumanMessage.is_handoff());
        assert!(!TurnKind::Cancel.is_handoff());
        assert!(!TurnKind::Message.is_handoff());
    }
}
