//! The message the edge publishes to `<prefix>.in.<thread>` and workers consume.

use serde::{Deserialize, Serialize};

use crate::ids::{MessageId, ThreadId, TurnId};
use crate::protocol::frames::UserText;

/// One accepted client frame, as stored in the `<PREFIX>_IN` stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InboundMessage {
    pub thread_id: ThreadId,
    pub message_id: MessageId,
    /// Chosen by the edge; JetStream's duplicate window keeps the first copy, so every attempt
    /// at this message sees the same turn id.
    pub turn_id: TurnId,
    pub received_at: chrono::DateTime<chrono::Utc>,
    #[serde(flatten)]
    pub kind: InboundKind,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum InboundKind {
    Message {
        content: UserText,
    },
    InterruptResponse {
        approved: bool,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        interrupt_id: Option<String>,
    },
    /// A `cancel` frame (SPEC §8). Its live notice ([`CancelNotice`]) stops the turn in progress
    /// at once; the stored message is the durable record, taken in order by the thread's lease
    /// holder (it withdraws a pending approval) and re-announced while it waits behind the turn.
    Cancel {
        /// The turn named by the client (its own key: the message's `turn_id` is the cancel's).
        #[serde(
            default,
            rename = "cancels_turn_id",
            skip_serializing_if = "Option::is_none"
        )]
        turn_id: Option<TurnId>,
    },
    /// The customer asked for a human (SPEC §7).
    RequestHuman,
    /// An operator took the conversation (the edge has assigned it to them).
    OperatorJoin {
        operator: OperatorId,
    },
    /// The operator handed the conversation back to the AI.
    OperatorLeave {
        operator: OperatorId,
    },
    /// An operator ended the conversation.
    OperatorResolve {
        operator: OperatorId,
    },
    /// A message of the operator who joined.
    HumanMessage {
        operator: OperatorId,
        content: UserText,
    },
}

/// An operator acting on a thread, as the worker records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OperatorId {
    pub id: uuid::Uuid,
    pub name: String,
}

impl InboundKind {
    /// The text it carries: a customer's or an operator's message.
    pub fn content(&self) -> Option<&str> {
        match self {
            Self::Message { content } | Self::HumanMessage { content, .. } => {
                Some(content.as_str())
            }
            _ => None,
        }
    }

    /// The kind as `turns.kind` and dead letters record it.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Message { .. } => "message",
            Self::InterruptResponse { .. } => "interrupt_response",
            Self::RequestHuman => "request_human",
            Self::OperatorJoin { .. } => "operator_join",
            Self::OperatorLeave { .. } => "operator_leave",
            Self::OperatorResolve { .. } => "operator_resolve",
            Self::HumanMessage { .. } => "human_message",
            Self::Cancel { .. } => "cancel",
        }
    }
}

/// Published on core NATS `<prefix>.cancel.<thread>` (never stored): every turn of the thread
/// whose message is stored before `before_seq` (its `<PREFIX>_IN` stream sequence) and is still
/// running, or starts later, stops (only `turn_id`'s, if named). With `erased` the conversation
/// is being erased: the turn stops and publishes nothing more.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CancelNotice {
    pub thread_id: ThreadId,
    pub before_seq: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub turn_id: Option<TurnId>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub erased: bool,
}

impl InboundMessage {
    pub fn to_bytes(&self) -> Result<bytes::Bytes, serde_json::Error> {
        serde_json::to_vec(self).map(bytes::Bytes::from)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        let message = InboundMessage {
            thread_id: ThreadId::parse("t").unwrap(),
            message_id: MessageId::parse("m").unwrap(),
            turn_id: TurnId::generate(),
            received_at: chrono::Utc::now(),
            kind: InboundKind::Message {
                content: UserText::parse("hello".into()).unwrap(),
            },
        };
        let bytes = message.to_bytes().unwrap();
        assert_eq!(
            serde_json::from_slice::<InboundMessage>(&bytes).unwrap(),
            message
        );
    }
}

/// Reply frames travel from workers to edges in **bundles**: one NATS message on
/// `<prefix>.out.<thread>` carries one or more `ThreadFrame`s, each a line of JSON (JSON text
/// never holds a raw newline). A worker bundles the frames it has ready at once — a burst of tokens
/// from one model chunk — so the bus carries fewer, larger messages; edges write each line to the
/// socket as its own WebSocket frame.
pub mod bundle {
    /// Header naming the `type` of each frame of the bundle, comma-separated and in order, so an
    /// edge can count frames by type without parsing them.
    pub const FRAME_TYPES_HEADER: &str = "Frame-Types";

    /// Header with the `seq` of the bundle's first frame; the others follow one by one. Edges use
    /// it to skip frames a socket already has (the seam of a `resume`) without parsing them.
    pub const FIRST_SEQ_HEADER: &str = "Frame-First-Seq";

    /// Appends `frame` to a bundle's payload as one line of JSON (what workers publish).
    pub fn push(
        payload: &mut Vec<u8>,
        frame: &crate::protocol::ThreadFrame,
    ) -> Result<(), serde_json::Error> {
        serde_json::to_writer(&mut *payload, frame)?;
        payload.push(b'\n');
        Ok(())
    }

    /// The `seq` of the frame at `index` in a bundle whose first frame has `first`; `None` past
    /// `u64::MAX` (headers no worker wrote).
    pub fn seq_at(first: u64, index: usize) -> Option<u64> {
        first.checked_add(u64::try_from(index).ok()?)
    }

    /// The `seq` of a bundle's last frame from its [`FIRST_SEQ_HEADER`] and
    /// [`FRAME_TYPES_HEADER`] values; `None` when either is missing or malformed.
    pub fn last_seq(first_seq: Option<&str>, frame_types: Option<&str>) -> Option<u64> {
        let first = first_seq?.parse::<u64>().ok()?;
        let count = frame_types?.split(',').count();
        seq_at(first, count.checked_sub(1)?)
    }

    /// The frames of a bundle, in order.
    pub fn frames(payload: &[u8]) -> impl Iterator<Item = &[u8]> {
        payload
            .split(|byte| *byte == b'\n')
            .filter(|line| !line.is_empty())
    }

    /// The last frame of a bundle.
    pub fn last_frame(payload: &[u8]) -> Option<&[u8]> {
        payload
            .rsplit(|byte| *byte == b'\n')
            .find(|line| !line.is_empty())
    }

    /// One frame of a bundle, with what its headers say about it.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct NumberedFrame<'a> {
        /// Its `type` from [`FRAME_TYPES_HEADER`]; `unknown` past the header's end or without it.
        pub kind: &'a str,
        /// Its `seq` from [`FIRST_SEQ_HEADER`]; `None` without a parseable header (a bundle not
        /// from our workers), and then every frame is `None`.
        pub seq: Option<u64>,
        /// The frame's JSON text.
        pub frame: &'a [u8],
    }

    /// The frames of a bundle as an edge relays them: each with its type and `seq`, read from the
    /// raw values of [`FRAME_TYPES_HEADER`] and [`FIRST_SEQ_HEADER`] without parsing any frame.
    /// A frame whose `seq` would pass `u64::MAX` ends the bundle (no frame can have it).
    pub fn numbered<'a>(
        frame_types: Option<&'a str>,
        first_seq: Option<&str>,
        payload: &'a [u8],
    ) -> impl Iterator<Item = NumberedFrame<'a>> {
        let mut kinds = frame_types.unwrap_or("").split(',');
        let first = first_seq.and_then(|raw| raw.parse::<u64>().ok());
        frames(payload)
            .enumerate()
            .map_while(move |(index, frame)| {
                let seq = match first {
                    Some(first) => Some(first.checked_add(u64::try_from(index).ok()?)?),
                    None => None,
                };
                Some(NumberedFrame {
                    kind: kinds.next().unwrap_or("unknown"),
                    seq,
                    frame,
                })
            })
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn splits_lines_and_finds_the_last() {
            let payload = b"{\"a\":1}\n{\"b\":\"x\\ny\"}\n";
            let frames: Vec<_> = frames(payload).collect();
            assert_eq!(frames, vec![&b"{\"a\":1}"[..], &b"{\"b\":\"x\\ny\"}"[..]]);
            assert_eq!(last_frame(payload), Some(&b"{\"b\":\"x\\ny\"}"[..]));
            assert_eq!(last_frame(b""), None);
        }

        #[test]
        fn numbers_frames_from_the_headers() {
            let payload = b"{\"a\":1}\n{\"b\":2}\n{\"c\":3}\n";
            let found: Vec<_> = numbered(Some("token,tool_call"), Some("7"), payload)
                .map(|frame| (frame.kind, frame.seq, frame.frame))
                .collect();
            assert_eq!(
                found,
                vec![
                    ("token", Some(7), &b"{\"a\":1}"[..]),
                    ("tool_call", Some(8), &b"{\"b\":2}"[..]),
                    ("unknown", Some(9), &b"{\"c\":3}"[..]),
                ]
            );
            // Without a first seq, every frame is relayed unnumbered.
            assert!(numbered(None, Some("x"), payload).all(|frame| frame.seq.is_none()));
            assert_eq!(numbered(None, None, payload).count(), 3);
        }

        #[test]
        fn a_seq_past_u64_max_ends_the_bundle() {
            let max = u64::MAX.to_string();
            let seqs: Vec<_> = numbered(Some("token,token"), Some(&max), b"{}\n{}\n")
                .map(|frame| frame.seq)
                .collect();
            assert_eq!(seqs, vec![Some(u64::MAX)]);
        }
    }
}
