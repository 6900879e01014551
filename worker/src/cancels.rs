//! Stopping turns in progress (SPEC §8). A `cancel` frame, a newer customer message with
//! `DOUBLE_TEXT=interrupt`, or an erasure is announced as a [`CancelNotice`] on core NATS
//! `<prefix>.cancel.<thread>`; every worker listens, and the one running a matching turn stops it
//! at its next safe point (between model chunks, before a tool or an approval), within
//! milliseconds. A cancel never waits behind the turn it stops in the thread's queue.
//!
//! The notice itself is not stored: the stored `cancel` message in `<PREFIX>_IN` is the durable
//! record. While the turn it stops holds the thread, the cancel's delivery finds the lease busy
//! and is announced again by whichever worker got it (see the consumer), so a cancel that raced a
//! worker's crash still stops the turn when another worker runs it again. Notices are also
//! remembered here for a while, so a turn this worker starts after the notice arrived starts
//! cancelled.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt as _;
use shared::ids::{ThreadId, TurnId};
use shared::protocol::bus::CancelNotice;
use shared::subjects::Subjects;
use tokio_util::sync::CancellationToken;

/// How long a notice is remembered for turns that start after it arrived.
const REMEMBER: Duration = Duration::from_secs(120);
/// Threads whose notices are remembered at once (oldest forgotten first).
const MAX_THREADS: usize = 10_000;
/// Notices remembered per thread.
const MAX_PER_THREAD: usize = 8;

/// The turns this worker runs and the notices it heard.
#[derive(Clone, Default)]
pub struct Cancels {
    inner: Arc<Mutex<State>>,
}

#[derive(Default)]
struct State {
    running: HashMap<ThreadId, Vec<Arc<Running>>>,
    heard: HashMap<ThreadId, Vec<(Instant, CancelNotice)>>,
}

struct Running {
    in_seq: u64,
    turn_id: TurnId,
    token: CancellationToken,
    erased: AtomicBool,
}

impl Running {
    fn matches(&self, notice: &CancelNotice) -> bool {
        self.in_seq < notice.before_seq && notice.turn_id.is_none_or(|turn| turn == self.turn_id)
    }

    fn stop(&self, notice: &CancelNotice) {
        if notice.erased {
            self.erased.store(true, Ordering::SeqCst);
        }
        self.token.cancel();
    }
}

/// A turn registered while it runs: its token is cancelled by a matching notice.
pub struct TurnGuard {
    cancels: Cancels,
    thread_id: ThreadId,
    running: Arc<Running>,
}

impl TurnGuard {
    pub fn token(&self) -> &CancellationToken {
        &self.running.token
    }

    pub fn is_cancelled(&self) -> bool {
        self.running.token.is_cancelled()
    }

    /// The conversation is being erased: the turn must publish nothing more.
    pub fn erased(&self) -> bool {
        self.running.erased.load(Ordering::SeqCst)
    }
}

impl Drop for TurnGuard {
    fn drop(&mut self) {
        let Ok(mut state) = self.cancels.inner.lock() else {
            return;
        };
        if let Some(turns) = state.running.get_mut(&self.thread_id) {
            turns.retain(|turn| !Arc::ptr_eq(turn, &self.running));
            if turns.is_empty() {
                state.running.remove(&self.thread_id);
            }
        }
    }
}

impl Cancels {
    /// Registers the turn of the message stored at `in_seq`; it starts cancelled if a notice
    /// that covers it was heard already.
    pub fn enter(&self, thread_id: &ThreadId, in_seq: u64, turn_id: TurnId) -> TurnGuard {
        let running = Arc::new(Running {
            in_seq,
            turn_id,
            token: CancellationToken::new(),
            erased: AtomicBool::new(false),
        });
        if let Ok(mut state) = self.inner.lock() {
            if let Some(heard) = state.heard.get(thread_id) {
                for (at, notice) in heard {
                    if at.elapsed() < REMEMBER && running.matches(notice) {
                        running.stop(notice);
                    }
                }
            }
            state
                .running
                .entry(thread_id.clone())
                .or_default()
                .push(running.clone());
        }
        TurnGuard {
            cancels: self.clone(),
            thread_id: thread_id.clone(),
            running,
        }
    }

    /// Acts on a notice: stops the matching turns running here, and remembers it.
    pub fn note(&self, notice: CancelNotice) {
        let Ok(mut state) = self.inner.lock() else {
            return;
        };
        if let Some(turns) = state.running.get(&notice.thread_id) {
            for turn in turns.iter().filter(|turn| turn.matches(&notice)) {
                tracing::info!(thread_id = %notice.thread_id, turn_id = %turn.turn_id, erased = notice.erased, "Stopping a turn.");
                turn.stop(&notice);
            }
        }
        if state.heard.len() >= MAX_THREADS && !state.heard.contains_key(&notice.thread_id) {
            state
                .heard
                .retain(|_, notices| notices.iter().any(|(at, _)| at.elapsed() < REMEMBER));
            if state.heard.len() >= MAX_THREADS {
                let oldest = state
                    .heard
                    .iter()
                    .min_by_key(|(_, notices)| notices.last().map(|(at, _)| *at))
                    .map(|(thread, _)| thread.clone());
                if let Some(oldest) = oldest {
                    state.heard.remove(&oldest);
                }
            }
        }
        let heard = state.heard.entry(notice.thread_id.clone()).or_default();
        heard.retain(|(at, _)| at.elapsed() < REMEMBER);
        if heard.len() >= MAX_PER_THREAD {
            heard.remove(0);
        }
        heard.push((Instant::now(), notice));
    }

    /// Acts on a notice here and tells every other worker.
    pub async fn announce(
        &self,
        nats: &async_nats::Client,
        subjects: &Subjects,
        notice: CancelNotice,
    ) {
        let subject = subjects.cancels(&notice.thread_id);
        match serde_json::to_vec(&notice) {
            Ok(payload) => {
                if let Err(error) = nats.publish(subject, payload.into()).await {
                    tracing::warn!(%error, "Cannot announce a cancel; it is announced again with its next delivery.");
                }
            }
            Err(error) => tracing::error!(%error, "Cannot encode a cancel notice."),
        }
        self.note(notice);
    }

    /// Listens to every thread's cancel notices until `stop`. Subscribed before it returns, so
    /// no notice sent after start-up is missed.
    pub async fn listen(
        &self,
        nats: &async_nats::Client,
        subjects: &Subjects,
        stop: CancellationToken,
    ) -> Result<tokio::task::JoinHandle<()>, async_nats::SubscribeError> {
        let mut notices = nats.subscribe(subjects.cancels_wildcard()).await?;
        let cancels = self.clone();
        Ok(tokio::spawn(async move {
            loop {
                let message = tokio::select! {
                    message = notices.next() => message,
                    () = stop.cancelled() => None,
                };
                let Some(message) = message else { break };
                match serde_json::from_slice::<CancelNotice>(&message.payload) {
                    Ok(notice) => cancels.note(notice),
                    Err(error) => {
                        tracing::warn!(%error, "Ignoring a cancel notice that does not decode.")
                    }
                }
            }
        }))
    }
}

/// What to do with a customer message that arrives while the thread's turn is running
/// (`DOUBLE_TEXT`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum DoubleText {
    /// Queue it: it runs once the turn in progress is over (the default).
    #[default]
    Enqueue,
    /// Cancel the turn in progress (it ends `cancelled`), then run it.
    Interrupt,
}

/// Whether a stored message stops the thread's earlier turns still running, and which: a
/// `cancel` stops the turn it names (`Some(None)`: any), a customer message does only with
/// `DOUBLE_TEXT=interrupt`; nothing else stops a turn (`None`).
pub(crate) fn stops_earlier_turns(
    kind: &shared::protocol::bus::InboundKind,
    double_text: DoubleText,
) -> Option<Option<TurnId>> {
    use shared::protocol::bus::InboundKind;
    match kind {
        InboundKind::Cancel { turn_id } => Some(*turn_id),
        InboundKind::Message { .. } if double_text == DoubleText::Interrupt => Some(None),
        _ => None,
    }
}

/// Announces the delivery of a stored message that stops earlier turns of its thread: a
/// `cancel`, or a customer message with `DOUBLE_TEXT=interrupt`.
pub async fn announce_delivery(
    runner: &crate::turn::TurnRunner,
    thread: &ThreadId,
    delivered_seq: u64,
    payload: &[u8],
) {
    use shared::protocol::bus::InboundMessage;
    let Ok(message) = serde_json::from_slice::<InboundMessage>(payload) else {
        return;
    };
    let Some(turn_id) = stops_earlier_turns(&message.kind, runner.double_text) else {
        return;
    };
    let notice = CancelNotice {
        thread_id: thread.clone(),
        before_seq: delivered_seq,
        turn_id,
        erased: false,
    };
    runner
        .cancels
        .announce(&runner.jetstream.client(), &runner.subjects, notice)
        .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn notice(before_seq: u64, turn_id: Option<TurnId>) -> CancelNotice {
        CancelNotice {
            thread_id: ThreadId::parse("t").unwrap(),
            before_seq,
            turn_id,
            erased: false,
        }
    }

    #[test]
    fn a_notice_stops_earlier_turns_only() {
        let cancels = Cancels::default();
        let thread = ThreadId::parse("t").unwrap();
        let turn = cancels.enter(&thread, 5, TurnId::generate());
        cancels.note(notice(5, None));
        assert!(!turn.is_cancelled(), "a cancel stored before the message");
        cancels.note(notice(6, Some(TurnId::generate())));
        assert!(!turn.is_cancelled(), "another turn was named");
        cancels.note(notice(6, None));
        assert!(turn.is_cancelled());
        assert!(!turn.erased());
    }

    #[test]
    fn a_turn_that_starts_after_the_notice_starts_cancelled() {
        let cancels = Cancels::default();
        let thread = ThreadId::parse("t").unwrap();
        cancels.note(notice(9, None));
        assert!(cancels.enter(&thread, 8, TurnId::generate()).is_cancelled());
        assert!(!cancels
            .enter(&thread, 10, TurnId::generate())
            .is_cancelled());
        let turn = cancels.enter(&thread, 10, TurnId::generate());
        drop(turn);
        assert!(!cancels.inner.lock().unwrap().running.contains_key(&thread));
    }
}
