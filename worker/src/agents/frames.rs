//! How the agent graph speaks to the client: a small trait over "send a frame of this turn" and
//! "send what is queued now". The worker's [`crate::publish::FramePublisher`] numbers the frames
//! and publishes them on NATS; a test can drive the graph with a sink that only records them.

use std::future::Future;
use std::time::Duration;

use shared::protocol::FrameBody;

use crate::error::TurnError;

/// Where a turn's frames go, in order.
pub trait FrameSink: Send {
    /// Queues a frame of the turn; it goes out with the next flush (or sooner).
    fn send(&mut self, body: FrameBody) -> impl Future<Output = Result<(), TurnError>> + Send;

    /// Sends every queued frame before returning.
    fn flush(&mut self) -> impl Future<Output = Result<(), TurnError>> + Send;
}

/// How long a tool may run before the frames queued ahead of it (its `tool_call`) go out on their
/// own. A quicker tool's `tool_call` goes out with its result, in one bundle: one NATS publish,
/// store, acknowledgement, republish and delivery per turn less, for a few milliseconds of delay
/// on a frame the client only displays.
pub const QUICK_TOOL: Duration = Duration::from_millis(50);

/// Runs `work` (a tool that needs no approval); if it has not finished within [`QUICK_TOOL`],
/// flushes `out` while it goes on.
pub async fn flush_unless_quick<S, W, T, E>(out: &mut S, work: W) -> Result<T, E>
where
    S: FrameSink,
    W: Future<Output = Result<T, E>>,
    E: From<TurnError>,
{
    let mut work = std::pin::pin!(work);
    tokio::select! {
        biased;
        done = &mut work => return done,
        () = tokio::time::sleep(QUICK_TOOL) => {}
    }
    let (flushed, done) = tokio::join!(out.flush(), work);
    flushed?;
    done
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Counted {
        queued: usize,
        flushes: usize,
    }

    impl FrameSink for Counted {
        async fn send(&mut self, _body: FrameBody) -> Result<(), TurnError> {
            self.queued += 1;
            Ok(())
        }

        async fn flush(&mut self) -> Result<(), TurnError> {
            self.flushes += 1;
            Ok(())
        }
    }

    #[tokio::test]
    async fn a_quick_tool_sends_its_call_with_its_result_a_slow_one_first() {
        let mut out = Counted::default();
        let quick = flush_unless_quick(&mut out, async { Ok::<_, TurnError>(1) }).await;
        assert_eq!((quick.unwrap(), out.flushes), (1, 0));

        let slow = flush_unless_quick(&mut out, async {
            tokio::time::sleep(QUICK_TOOL * 3).await;
            Ok::<_, TurnError>(2)
        })
        .await;
        assert_eq!((slow.unwrap(), out.flushes), (2, 1));
    }
}
