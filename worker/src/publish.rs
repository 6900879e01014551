//! Sends a turn's frames, numbered by the thread's `seq`, to the thread's reply subject, in
//! bundles (`shared::protocol::bus::bundle`): frames ready together go in one NATS message. The
//! `<PREFIX>_OUT` stream stores them (for `resume`); every attached edge relays them live.

use async_nats::jetstream::context::PublishAckFuture;
use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::{self, stream};
use async_nats::HeaderMap;
use serde::Deserialize;
use shared::ids::{ThreadId, TurnId};
use shared::protocol::bus::bundle;
use shared::protocol::{FrameBody, ThreadFrame};

use crate::error::TurnError;
use crate::metrics::WorkerMetrics;

/// Publish acks in flight before the publisher waits for them.
const MAX_PENDING_ACKS: usize = 64;

/// A bundle is sent once it holds this many frames, even if more are ready.
const MAX_BUNDLE_FRAMES: usize = 64;

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
        Ok(message) => Ok(bundle::last_frame(&message.payload)
            .and_then(|frame| serde_json::from_slice(frame).ok())),
        Err(error) if error.kind() == stream::DirectGetErrorKind::NotFound => Ok(None),
        Err(error) => Err(TurnError::nats(error)),
    }
}

/// Numbers, bundles and publishes one turn's frames.
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
            bundle: Vec::new(),
            bundle_types: Vec::new(),
            pending: Vec::new(),
        }
    }

    /// Numbers a frame and adds it to the bundle. Call [`Self::flush`] before waiting on anything
    /// (a model chunk, a tool, a timer), so that ready frames never wait.
    pub async fn send(&mut self, body: FrameBody) -> Result<(), TurnError> {
        let kind = body.kind();
        let frame = ThreadFrame {
            thread_id: self.thread_id.clone(),
            seq: self.next_seq,
            turn_id: self.turn_id,
            body,
        };
        serde_json::to_writer(&mut self.bundle, &frame).map_err(TurnError::nats)?;
        self.bundle.push(b'\n');
        self.bundle_types.push(kind);
        self.next_seq += 1;
        if self.bundle_types.len() >= MAX_BUNDLE_FRAMES {
            self.flush().await?;
        }
        Ok(())
    }

    /// Publishes the frames added since the last flush as one bundle.
    pub async fn flush(&mut self) -> Result<(), TurnError> {
        if self.bundle_types.is_empty() {
            return Ok(());
        }
        if self.pending.len() >= MAX_PENDING_ACKS {
            self.await_pending().await?;
        }
        let first_seq = self.next_seq - self.bundle_types.len() as u64;
        let mut headers = HeaderMap::new();
        headers.insert(
            bundle::FRAME_TYPES_HEADER,
            self.bundle_types.join(",").as_str(),
        );
        headers.insert(bundle::FIRST_SEQ_HEADER, first_seq.to_string().as_str());
        let payload = std::mem::take(&mut self.bundle);
        let publish = PublishMessage::build()
            .payload(payload.into())
            .headers(headers);
        let ack = self
            .jetstream
            .send_publish(self.subject.clone(), publish)
            .await
            .map_err(TurnError::nats)?;
        self.pending.push(ack);
        for kind in self.bundle_types.drain(..) {
            self.metrics.frames.with_label_values(&[kind]).inc();
        }
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

    /// Publishes what is left and waits until JetStream has stored every frame.
    pub async fn finish(&mut self) -> Result<(), TurnError> {
        self.flush().await?;
        self.await_pending().await
    }

    async fn await_pending(&mut self) -> Result<(), TurnError> {
        for ack in self.pending.drain(..) {
            ack.await.map_err(TurnError::nats)?;
        }
        Ok(())
    }
}
