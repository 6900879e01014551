//! How the agent graph speaks to the client: a small trait over "send a frame of this turn" and
//! "send what is queued now". The worker's [`crate::publish::FramePublisher`] numbers the frames
//! and publishes them on NATS; a test can drive the graph with a sink that only records them.

use std::future::Future;

use shared::protocol::FrameBody;

use crate::error::TurnError;

/// Where a turn's frames go, in order.
pub trait FrameSink: Send {
    /// Queues a frame of the turn; it goes out with the next flush (or sooner).
    fn send(&mut self, body: FrameBody) -> impl Future<Output = Result<(), TurnError>> + Send;

    /// Sends every queued frame before returning.
    fn flush(&mut self) -> impl Future<Output = Result<(), TurnError>> + Send;
}
