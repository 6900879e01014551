//! Sends a turn's frames, numbered by the thread's `seq`, to the thread's reply subject. The
//! `<PREFIX>_OUT` stream stores them (for `resume`); every attached edge relays them live.

use async_nats::jetstream::context::PublishAckFuture;
use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::{self, stream};
use async_nats::HeaderMap;
use serde::Deserialize;
use shared::ids::{ThreadId, TurnId};
use shared::protocol::{FrameBody, ThreadFrame};

use crate::error::TurnError;
use crate::metrics::WorkerMetrics;

/// The NATS header that names a frame's `type`, so edges can count frames without parsing them.
pub const FRAME_TYPE_HEADER: &str = "Frame-Type";

/// Publish acks in flight before the publisher waits for the oldest.
const MAX_PENDING_ACKS: usize = 256;

/// What the last frame stored for a thread says about where numbering resumes.
#[derive(Debug, Clone, Deserialize)]
pub struct LastFrame {
    pub seq: u64,
    pub turn_id: TurnId,
}

/// The last frame `<PREFIX>_OUT` holds for the subject, if any.
pub async fn last_frame(
    replies: &stream::Stream,
    subject: &str,
) -> Result<Option<LastFrame>, TurnError> {
    match replies.direct_get_last_for_subject(subject).await {
        Ok(message) => Ok(serde_json::from_slice(&message.payload).ok()),
        Err(error) if error.kind() == stream::DirectGetErrorKind::NotFound => Ok(None),
        Err(error) => Err(TurnError::nats(error)),
    }
}

/// Numbers and publishes one turn's frames.
pub struct FramePublisher {
    jetstream: jetstream::Context,
    metrics: WorkerMetrics,
    subject: String,
    thread_id: ThreadId,
    turn_id: TurnId,
    next_seq: u64,
    first_seq: u64,
    pending: Vec<PublishAckFuture>,
}

impl FramePublisher {
    /// Frames continue after `last_seq`, the highest `seq` the thread has used.
    pub fn new(
        jetstream: jetstream::Context,
        metrics: WorkerMetrics,
        subject: String,
        thread_id: ThreadId,
        turn_id: TurnId,
        last_seq: u64,
    ) -> Self {
        Self {
            jetstream,
            metrics,
            subject,
            thread_id,
            turn_id,
            next_seq: last_seq + 1,
            first_seq: last_seq + 1,
            pending: Vec::new(),
        }
    }

    pub async fn send(&mut self, body: FrameBody) -> Result<(), TurnError> {
        let kind = body.kind();
        let frame = ThreadFrame {
            thread_id: self.thread_id.clone(),
            seq: self.next_seq,
            turn_id: self.turn_id,
            body,
        };
        let payload = serde_json::to_vec(&frame).map_err(TurnError::nats)?;
        let mut headers = HeaderMap::new();
        headers.insert(FRAME_TYPE_HEADER, kind);
        let publish = PublishMessage::build()
            .payload(payload.into())
            .headers(headers);
        if self.pending.len() >= MAX_PENDING_ACKS {
            self.await_acks().await?;
        }
        let ack = self
            .jetstream
            .send_publish(self.subject.clone(), publish)
            .await
            .map_err(TurnError::nats)?;
        self.pending.push(ack);
        self.next_seq += 1;
        self.metrics.frames.with_label_values(&[kind]).inc();
        Ok(())
    }

    /// The first `seq` of this turn.
    pub fn first_seq(&self) -> u64 {
        self.first_seq
    }

    /// The highest `seq` used so far.
    pub fn last_seq(&self) -> u64 {
        self.next_seq - 1
    }

    /// Waits until JetStream has stored every frame sent so far.
    pub async fn await_acks(&mut self) -> Result<(), TurnError> {
        for ack in self.pending.drain(..) {
            ack.await.map_err(TurnError::nats)?;
        }
        Ok(())
    }
}
