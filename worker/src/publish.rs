//! Sends a turn's frames, numbered by the thread's `seq`, to the thread's reply subject, in
//! bundles (`shared::protocol::bus::bundle`): frames ready together go in one NATS message. The
//! `<PREFIX>_OUT` stream stores them (for `resume`); every attached edge relays them live.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use async_nats::jetstream::context::PublishErrorKind;
use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::{self, stream};
use async_nats::HeaderMap;
use serde::Deserialize;
use shared::ids::{ThreadId, TurnId};
use shared::protocol::bus::bundle;
use shared::protocol::{FrameBody, ThreadFrame, Usage};
use shared::retained::BundleReader;

use crate::agents::FrameSink;
use crate::error::TurnError;
use crate::metrics::WorkerMetrics;

/// A bundle is sent once it holds this many frames, even if more are ready.
const MAX_BUNDLE_FRAMES: usize = 64;

/// What the last frame stored for a thread says: read leniently (only the fields every frame
/// has, plus what ends a turn), so a frame type this worker does not know cannot hide the tail.
#[derive(Debug, Clone, Deserialize)]
pub struct LastFrame {
    pub seq: u64,
    pub turn_id: TurnId,
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub usage: Option<Usage>,
    #[serde(default)]
    pub code: Option<String>,
    #[serde(default)]
    pub interrupt_id: Option<String>,
    /// A `message_complete` of a cancelled turn.
    #[serde(default)]
    pub cancelled: bool,
}

impl LastFrame {
    /// The frame ends its turn (or pauses it): `message_complete`, an `error` that answers the
    /// message, or an `interrupt`.
    pub fn ends_turn(&self) -> bool {
        matches!(
            self.kind.as_str(),
            "message_complete" | "error" | "interrupt"
        )
    }
}

/// Where a thread's reply subject stands in `<PREFIX>_OUT`.
#[derive(Debug, Clone, Default)]
pub struct Tail {
    /// Stream sequence of the subject's last bundle: the next publish must find it still last.
    pub stream_seq: Option<u64>,
    /// The last frame of that bundle.
    pub frame: Option<LastFrame>,
}

/// Threads whose tails are remembered at once; past it the memory starts over.
const MAX_REMEMBERED_TAILS: usize = 16_384;

/// Where this worker left threads' reply subjects: after a drain under lease epoch `E` committed
/// its last turn, the stream sequence of the subject's last bundle (published by that drain, or
/// read by it) and the thread's committed `seq`. When this worker next takes the thread's lease
/// with epoch `E + 1`, no lease was granted in between, so nobody but a worker fenced out by
/// `Nats-Expected-Last-Subject-Sequence` can have published after that bundle, and the tail need
/// not be read again: [`Self::tail_after`] answers it. If it is wrong all the same (the subject
/// aged out, a fenced-out worker read the tail late and published after it), the turn's first
/// publish, fenced on it, fails as a lost lease and the delivery is retried under a newer epoch,
/// which reads the tail from the stream: the same outcome as without this memory, one attempt later.
#[derive(Clone, Default)]
pub struct TailMemory {
    tails: Arc<Mutex<HashMap<ThreadId, Remembered>>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Remembered {
    epoch: i64,
    last_seq: u64,
    stream_seq: Option<u64>,
}

impl TailMemory {
    /// The thread's drain under `epoch` committed through `last_seq` and left the reply
    /// subject's last bundle at `stream_seq`.
    pub fn remember(
        &self,
        thread_id: &ThreadId,
        epoch: i64,
        last_seq: u64,
        stream_seq: Option<u64>,
    ) {
        let Ok(mut tails) = self.tails.lock() else {
            return;
        };
        if tails.len() >= MAX_REMEMBERED_TAILS && !tails.contains_key(thread_id) {
            tails.clear();
        }
        let remembered = Remembered {
            epoch,
            last_seq,
            stream_seq,
        };
        tails
            .entry(thread_id.clone())
            .and_modify(|old| {
                // A drain of an older epoch that finished late says nothing newer.
                if old.epoch < epoch {
                    *old = remembered;
                }
            })
            .or_insert(remembered);
    }

    /// The tail of the thread's reply subject for a lease of `epoch` that found the thread
    /// committed through `last_seq`, if this worker's own drain under `epoch - 1` left it there.
    pub fn tail_after(&self, thread_id: &ThreadId, epoch: i64, last_seq: u64) -> Option<Tail> {
        let tails = self.tails.lock().ok()?;
        let remembered = tails.get(thread_id)?;
        let next = remembered.epoch.checked_add(1) == Some(epoch);
        (next && remembered.last_seq == last_seq).then_some(Tail {
            stream_seq: remembered.stream_seq,
            frame: None,
        })
    }
}

/// The tail of the thread's reply subject, read from the stream leader (a replica may lag).
pub async fn tail(replies: &stream::Stream, subject: &str) -> Result<Tail, TurnError> {
    match replies.get_last_raw_message_by_subject(subject).await {
        Ok(message) => {
            let frame = bundle::last_frame(&message.payload)
                .map(serde_json::from_slice::<LastFrame>)
                .transpose()
                .map_err(|error| {
                    TurnError::Turn(format!(
                        "the thread's last reply frame does not decode: {error}"
                    ))
                })?;
            Ok(Tail {
                stream_seq: Some(message.sequence),
                frame,
            })
        }
        Err(error)
            if matches!(
                error.kind(),
                stream::LastRawMessageErrorKind::NoMessageFound
            ) =>
        {
            Ok(Tail::default())
        }
        Err(error) => Err(TurnError::nats(error)),
    }
}

/// What an attempt at a turn published, read back from `<PREFIX>_OUT`.
#[derive(Debug, Clone, Default)]
pub struct PublishedTurn {
    /// `seq` of the attempt's first frame (after the last `turn_reset`, if any).
    pub first_seq: Option<u64>,
    /// The text of its `token` frames, in order.
    pub reply: String,
    /// The agents whose frames it holds, in order.
    pub agents: Vec<String>,
    /// It asked a clarifying question.
    pub clarification: bool,
}

/// Reads back the frames of `turn_id`'s last attempt on the subject (they all follow
/// `after_seq`, the thread's last committed frame). Used only when a worker died after publishing
/// a whole turn but before committing it: the turn is then committed from what its clients
/// already saw, not run again.
pub async fn published_turn(
    replies: &stream::Stream,
    subject: &str,
    turn_id: TurnId,
    after_seq: u64,
) -> Result<PublishedTurn, TurnError> {
    let mut reader = BundleReader::after(replies, subject, after_seq)
        .await
        .map_err(TurnError::nats)?;
    let mut turn = PublishedTurn::default();
    while let Some(stored) = reader.next().await.map_err(TurnError::nats)? {
        for line in bundle::frames(&stored.payload) {
            let Ok(frame) = serde_json::from_slice::<ThreadFrame>(line) else {
                continue;
            };
            if frame.turn_id != turn_id {
                continue;
            }
            match frame.body {
                FrameBody::TurnReset => turn = PublishedTurn::default(),
                FrameBody::Token { agent, content } => {
                    if turn.agents.last() != Some(&agent) {
                        turn.agents.push(agent);
                    }
                    turn.reply.push_str(&content);
                }
                FrameBody::Clarification { .. } => turn.clarification = true,
                _ => {}
            }
            turn.first_seq.get_or_insert(frame.seq);
        }
    }
    Ok(turn)
}

/// Numbers, bundles and publishes one turn's frames. Every bundle is published with
/// `Nats-Expected-Last-Subject-Sequence` set to the previous bundle's stream sequence: if anyone
/// else (a worker that lost the thread's lease and does not know it yet) published to the
/// subject in between, the publish fails and this turn stops, so two attempts never interleave.
pub struct FramePublisher {
    jetstream: jetstream::Context,
    metrics: WorkerMetrics,
    subject: String,
    thread_id: ThreadId,
    turn_id: TurnId,
    next_seq: u64,
    first_seq: u64,
    /// Frames not yet published: JSON lines, and their types.
    bundle: Vec<u8>,
    bundle_types: Vec<&'static str>,
    /// Stream sequence of the subject's last bundle, once known.
    subject_seq: Option<u64>,
}

impl FramePublisher {
    /// Frames continue after `last_seq`, the highest `seq` the thread has used; `subject_seq`
    /// is the stream sequence of the subject's last bundle (`None`: the subject is empty).
    pub fn new(
        jetstream: jetstream::Context,
        metrics: WorkerMetrics,
        subject: String,
        thread_id: ThreadId,
        turn_id: TurnId,
        last_seq: u64,
        subject_seq: Option<u64>,
    ) -> Self {
        Self {
            jetstream,
            metrics,
            subject,
            thread_id,
            turn_id,
            next_seq: last_seq + 1,
            first_seq: last_seq + 1,
            bundle: Vec::new(),
            bundle_types: Vec::new(),
            subject_seq,
        }
    }

    /// Numbers a frame and adds it to the bundle. Call [`Self::flush`] before waiting on anything
    /// (a model chunk, a tool, a timer), so that ready frames never wait (a tool gets a few
    /// milliseconds first: `crate::agents::frames::flush_unless_quick`).
    pub async fn send(&mut self, body: FrameBody) -> Result<(), TurnError> {
        let kind = body.kind();
        let frame = ThreadFrame {
            thread_id: self.thread_id.clone(),
            seq: self.next_seq,
            turn_id: self.turn_id,
            body,
        };
        bundle::push(&mut self.bundle, &frame)
            .map_err(|error| TurnError::Turn(format!("a frame does not encode: {error}")))?;
        self.bundle_types.push(kind);
        self.next_seq += 1;
        if self.bundle_types.len() >= MAX_BUNDLE_FRAMES {
            self.flush().await?;
        }
        Ok(())
    }

    /// Publishes the frames added since the last flush as one bundle, and waits until it is stored.
    pub async fn flush(&mut self) -> Result<(), TurnError> {
        if self.bundle_types.is_empty() {
            return Ok(());
        }
        let first_seq = self.next_seq - self.bundle_types.len() as u64;
        let mut headers = HeaderMap::new();
        headers.insert(
            bundle::FRAME_TYPES_HEADER,
            self.bundle_types.join(",").as_str(),
        );
        headers.insert(bundle::FIRST_SEQ_HEADER, first_seq.to_string().as_str());
        let payload = std::mem::take(&mut self.bundle);
        let mut publish = PublishMessage::build()
            .payload(payload.into())
            .headers(headers);
        // 0 when the subject is empty: then the first bundle, too, is fenced.
        publish = publish.expected_last_subject_sequence(self.subject_seq.unwrap_or(0));
        let stored = async {
            self.jetstream
                .send_publish(self.subject.clone(), publish)
                .await?
                .await
        }
        .await;
        let ack = match stored {
            Ok(ack) => ack,
            Err(error) if error.kind() == PublishErrorKind::WrongLastSequence => {
                return Err(TurnError::LeaseLost)
            }
            Err(error) => return Err(TurnError::nats(error)),
        };
        self.subject_seq = Some(ack.sequence);
        // One count per run of frames of the same type (a bundle is mostly tokens).
        let mut kinds = self.bundle_types.drain(..).peekable();
        while let Some(kind) = kinds.next() {
            let mut count = 1;
            while kinds.next_if_eq(&kind).is_some() {
                count += 1;
            }
            self.metrics.count_frames(kind, count);
        }
        Ok(())
    }

    /// Frames sent from now on belong to `turn_id` (a handoff message ends the paused turn it
    /// withdraws, then sends its own frame, in one bundle).
    pub fn set_turn(&mut self, turn_id: TurnId) {
        self.turn_id = turn_id;
    }

    /// The first `seq` of this turn.
    pub fn first_seq(&self) -> u64 {
        self.first_seq
    }

    /// The highest `seq` used so far.
    pub fn last_seq(&self) -> u64 {
        self.next_seq - 1
    }

    /// Stream sequence of the subject's last bundle, for the thread's next turn.
    pub fn subject_seq(&self) -> Option<u64> {
        self.subject_seq
    }
}

impl FrameSink for FramePublisher {
    async fn send(&mut self, body: FrameBody) -> Result<(), TurnError> {
        FramePublisher::send(self, body).await
    }

    async fn flush(&mut self) -> Result<(), TurnError> {
        FramePublisher::flush(self).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_remembered_tail_answers_only_the_next_epoch_at_the_same_position() {
        let tails = TailMemory::default();
        let thread = ThreadId::parse("t").unwrap();
        assert!(
            tails.tail_after(&thread, 2, 7).is_none(),
            "nothing remembered"
        );
        tails.remember(&thread, 1, 7, Some(40));
        let tail = tails.tail_after(&thread, 2, 7).expect("the next lease");
        assert_eq!((tail.stream_seq, tail.frame.is_none()), (Some(40), true));
        // Another lease was granted in between: its holder may have published.
        assert!(tails.tail_after(&thread, 3, 7).is_none());
        // The same epoch again, or the thread moved on without this worker.
        assert!(tails.tail_after(&thread, 1, 7).is_none());
        assert!(tails.tail_after(&thread, 2, 9).is_none());
        // A late drain of an older epoch does not overwrite a newer one.
        tails.remember(&thread, 3, 12, Some(55));
        tails.remember(&thread, 2, 9, Some(50));
        assert_eq!(
            tails.tail_after(&thread, 4, 12).unwrap().stream_seq,
            Some(55)
        );
        // An empty subject is remembered as empty: the next bundle is fenced on 0.
        let fresh = ThreadId::parse("u").unwrap();
        tails.remember(&fresh, 1, 0, None);
        assert_eq!(tails.tail_after(&fresh, 2, 0).unwrap().stream_seq, None);
    }

    #[test]
    fn remembered_tails_are_bounded() {
        let tails = TailMemory::default();
        for i in 0..=MAX_REMEMBERED_TAILS {
            tails.remember(&ThreadId::parse(format!("t{i}")).unwrap(), 1, 1, Some(1));
        }
        assert!(tails.tails.lock().unwrap().len() <= MAX_REMEMBERED_TAILS);
    }
}
