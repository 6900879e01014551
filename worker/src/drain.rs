//! A delivery's life: it is only a prompt to look at its thread. The worker waits for its own
//! drain of the thread, if one runs ([`LocalDrains`]), takes the thread's
//! lease (fenced by an epoch, renewed while it works), then drains the thread: reads its
//! unprocessed messages straight from the stream (JetStream direct get), oldest first, up to the
//! delivered one, and runs and commits each as a turn with its stream sequence (the read is
//! skipped when the delivered message is known to follow the last committed one directly:
//! [`follows_directly`]). So turns run in accepted order however many workers pull. A turn that
//! fails is counted; one that keeps failing (or panics, or is refused for good) is dead-lettered
//! and the thread moves on.

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_nats::jetstream::{message::StreamMessage, stream};
use backon::{BackoffBuilder as _, ExponentialBuilder};
use futures_util::FutureExt as _;
use shared::ids::ThreadId;

use crate::error::TurnError;
use crate::publish;
use crate::records::{AfterCommit, Lease};
use crate::store::Acquired;
use crate::turn::TurnRunner;

/// How long a delivery waits for a drain of its thread in this worker to end before it is
/// offered again, about as long as [`TurnRunner::acquire_soon`] tries the lease.
const LOCAL_WAIT: Duration = Duration::from_millis(100);

/// What became of a delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliveryOutcome {
    /// Its turn (and any earlier ones of the thread) committed.
    Processed,
    /// Already committed earlier: acknowledged without effect.
    Duplicate,
    /// Another worker holds the thread's lease, or this worker's drain of it did not end in
    /// time; it will be offered again.
    Busy,
    /// The conversation was erased: dropped, nothing re-created.
    Erased,
}

impl DeliveryOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Processed => "processed",
            Self::Duplicate => "duplicate",
            Self::Busy => "busy",
            Self::Erased => "erased",
        }
    }
}

impl TurnRunner {
    /// Handles `delivered`, a message stored on `thread`'s subject.
    #[tracing::instrument(name = "delivery", skip(self, delivered), fields(thread_id = %thread, delivered_seq = delivered.sequence))]
    pub async fn handle_delivery(
        &self,
        thread: &ThreadId,
        delivered: StreamMessage,
    ) -> Result<DeliveryOutcome, TurnError> {
        let delivered_seq = delivered.sequence;
        // A drain of this thread here first: most often the turn this client's message answers
        // `message_complete` of, still committing.
        let Some(draining) = self.drains.enter(thread, LOCAL_WAIT).await else {
            return Ok(DeliveryOutcome::Busy);
        };
        if self.abandon.is_cancelled() {
            // Past the shutdown's grace period, while it waited: nothing new is started.
            return Err(TurnError::Abandoned);
        }
        let mut lease = match self.acquire_soon(thread).await {
            Ok(Some(lease)) => lease,
            Ok(None) => return Ok(DeliveryOutcome::Busy),
            Err(TurnError::Erased) => return Ok(DeliveryOutcome::Erased),
            Err(error) => return Err(error),
        };
        if lease.last_in_seq >= delivered_seq {
            self.store.release(&lease).await?;
            return Ok(DeliveryOutcome::Duplicate);
        }
        let (thread_id, epoch) = (lease.thread_id.clone(), lease.epoch);
        let drained = tokio::select! {
            // A finished drain wins over a renewal that raced with its final commit.
            biased;
            drained = self.drain(&mut lease, delivered) => drained,
            lost = self.keep_lease(&thread_id, epoch) => Err(lost),
            () = self.abandon.cancelled() => Err(TurnError::Abandoned),
        };
        // What is left talks to PostgreSQL only, and the lease (which expires) guards it: the
        // next delivery of the thread here need not wait for it.
        drop(draining);
        if drained.is_err() {
            if let Err(error) = self.store.release(&lease).await {
                tracing::warn!(%error, "Cannot release a lease after a failed turn; it will expire.");
            }
        }
        match drained {
            Err(TurnError::Erased) => Ok(DeliveryOutcome::Erased),
            // A turn whose thread was erased under it finds its lease gone.
            Err(TurnError::LeaseLost) if self.store.is_erased(thread).await? => {
                Ok(DeliveryOutcome::Erased)
            }
            drained => drained,
        }
    }

    /// Takes the thread's lease, retrying briefly while another turn holds it: a client that got
    /// `message_complete` often sends its next message while that turn is still committing, and
    /// the lease is free a moment later. `None` if it stays taken (a long turn elsewhere).
    async fn acquire_soon(&self, thread: &ThreadId) -> Result<Option<Lease>, TurnError> {
        let mut delays = ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(1))
            .with_max_delay(Duration::from_millis(32))
            .with_max_times(7)
            .with_jitter()
            .build();
        loop {
            match self.store.acquire(thread).await? {
                Acquired::Lease(lease) => return Ok(Some(lease)),
                // An erased conversation is never re-created: its leftover deliveries are dropped.
                Acquired::Erased => return Err(TurnError::Erased),
                Acquired::Busy => {}
            }
            match delays.next() {
                Some(delay) => tokio::time::sleep(delay).await,
                None => return Ok(None),
            }
        }
    }

    /// Renews the lease every third of its TTL while the turns run. Returns once the lease is
    /// lost to a newer epoch (this worker stalled past the TTL), or when renewals have failed for
    /// so long that the lease may have run out.
    async fn keep_lease(&self, thread_id: &ThreadId, epoch: i64) -> TurnError {
        let ttl = self.store.lease_ttl();
        let every = ttl / 3;
        let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        let mut renewed = tokio::time::Instant::now();
        loop {
            ticks.tick().await;
            match self.store.renew(thread_id, epoch).await {
                Ok(true) => renewed = tokio::time::Instant::now(),
                Ok(false) => return TurnError::LeaseLost,
                Err(error) if renewed.elapsed() >= ttl - every => {
                    return TurnError::Database(error)
                }
                Err(error) => tracing::warn!(%error, "Cannot renew a lease; trying again."),
            }
        }
    }

    /// Runs the thread's unprocessed messages in stream order, through `up_to`.
    async fn drain(
        &self,
        lease: &mut Lease,
        delivered: StreamMessage,
    ) -> Result<DeliveryOutcome, TurnError> {
        let up_to = delivered.sequence;
        let subject = self.subjects.inbound(&lease.thread_id);
        // Only the first turn under a new lease can follow frames of an attempt that did not
        // commit; after that this worker published the thread's last frame itself. The tail is
        // read unless this worker left it there under the lease's previous epoch (see
        // `publish::TailMemory`). Both reads go out together.
        let remembered = self
            .tails
            .tail_after(&lease.thread_id, lease.epoch, lease.last_seq);
        let replies = self.subjects.replies(&lease.thread_id);
        let first = async {
            if self.inbound_conditions.trusted(delivered.sequence)
                && follows_directly(&delivered, lease.last_in_seq)
            {
                // Most often the delivery is the thread's next message itself.
                Ok(Some(delivered))
            } else {
                self.next_message(&subject, lease.last_in_seq).await
            }
        };
        let tail = async {
            match remembered {
                Some(tail) => Ok(tail),
                None => publish::tail(&self.replies, &replies).await,
            }
        };
        let (first, tail) = tokio::join!(first, tail);
        let mut next = first?;
        let mut tail = tail?;
        loop {
            let Some(message) = next else {
                // The rest has aged out of the stream: nothing is left to run.
                self.store.release(lease).await?;
                return Ok(DeliveryOutcome::Processed);
            };
            let in_seq = message.sequence;
            let after = if in_seq >= up_to {
                AfterCommit::ReleaseLease
            } else {
                AfterCommit::KeepLease
            };
            // A panic inside the turn (a bug) is a failed attempt like any other: caught here, it
            // is counted, and the message is dead-lettered in the end instead of redelivered for
            // ever with its thread wedged.
            let turn = self.run_turn(lease, message.clone(), &tail, after);
            let span = crate::observe::turn_span(&lease.thread_id, &message);
            let ran = AssertUnwindSafe(tracing::Instrument::instrument(turn, span))
                .catch_unwind()
                .await
                .unwrap_or_else(|panic| {
                    let reason = format!("the turn panicked: {}", panic_message(&panic));
                    tracing::error!(thread_id = %lease.thread_id, in_seq, %reason, "A turn panicked; counting a failed attempt.");
                    Err(TurnError::Turn(reason))
                });
            let advanced = match ran {
                Ok(position) => position,
                Err(TurnError::Turn(reason)) => {
                    let attempts = self
                        .store
                        .record_failure(&lease.thread_id, in_seq, &reason)
                        .await?;
                    if attempts < self.max_attempts {
                        return Err(TurnError::AttemptFailed { attempts, reason });
                    }
                    self.dead_letter(lease, message, attempts, &reason, after)
                        .await?
                }
                // Every attempt would be refused the same way: given up on at once.
                Err(TurnError::Rejected(reason)) => {
                    let attempts = self
                        .store
                        .record_failure(&lease.thread_id, in_seq, &reason)
                        .await?;
                    self.dead_letter(lease, message, attempts, &reason, after)
                        .await?
                }
                Err(error) => return Err(error),
            };
            // The lease follows what the commit wrote, for the next message of this drain.
            lease.last_in_seq = in_seq;
            lease.last_seq = advanced.last_seq;
            lease.pending_interrupt = advanced.pending_interrupt;
            lease.handoff = advanced.handoff;
            // What the acquire read is the history before this turn.
            lease.history = None;
            if advanced.expired {
                lease.expired = true;
            } else {
                lease.last_active_at = chrono::Utc::now();
            }
            // This worker published the subject's last bundle itself.
            tail = publish::Tail {
                stream_seq: advanced.subject_seq,
                frame: None,
            };
            if in_seq >= up_to {
                self.tails.remember(
                    &lease.thread_id,
                    lease.epoch,
                    lease.last_seq,
                    advanced.subject_seq,
                );
                return Ok(DeliveryOutcome::Processed);
            }
            next = self.next_message(&subject, lease.last_in_seq).await?;
        }
    }

    /// The thread's first stored message after `after_seq`, if any.
    async fn next_message(
        &self,
        subject: &str,
        after_seq: u64,
    ) -> Result<Option<StreamMessage>, TurnError> {
        // From the stream leader: a replica that lags would answer "nothing" for a message that
        // exists, and the thread would skip it.
        let next = self
            .inbound
            .raw_message_builder()
            .sequence(after_seq + 1)
            .next_by_subject(subject)
            .send()
            .await;
        match next {
            Ok(message) => Ok(Some(message)),
            Err(error) if matches!(error.kind(), stream::RawMessageErrorKind::NoMessageFound) => {
                Ok(None)
            }
            Err(error) => Err(TurnError::nats(error)),
        }
    }
}

/// Whether `delivered` is the thread's first message after `last_in_seq`: stored on the
/// condition that the thread's last message then was `last_in_seq` (the edge asks for it, see
/// `edge::connection::Upstream::store`, and a stream of one replica checked it and stored the
/// message in one step, keeping the header). Stream sequences only grow, so no message of the
/// thread can lie between the two.
fn follows_directly(delivered: &StreamMessage, last_in_seq: u64) -> bool {
    let after = delivered
        .headers
        .get(async_nats::header::NATS_EXPECTED_LAST_SUBJECT_SEQUENCE)
        .and_then(|value| value.as_str().parse::<u64>().ok());
    after == Some(last_in_seq) && delivered.sequence > last_in_seq
}

/// The threads this worker is draining. A delivery whose thread is drained here waits for that
/// drain in process before it asks PostgreSQL for the lease. Most often the client sent this
/// message on the previous turn's `message_complete`, which is published before the turn
/// commits: asked at once, PostgreSQL would find the lease still taken (and be asked again), or
/// wait for the commit's row lock with a snapshot older than the commit (and the history would
/// be read again). Only a way to ask at the right moment: the lease in PostgreSQL stays the fence
/// between drains, here and in other workers. An entry lives while a drain or a delivery waiting
/// for one holds it, so there are at most as many as deliveries in flight.
#[derive(Clone, Default)]
pub struct LocalDrains {
    threads: Arc<Mutex<HashMap<ThreadId, Entry>>>,
}

struct Entry {
    drain: Arc<tokio::sync::Mutex<()>>,
    /// The drain and the deliveries waiting for it.
    holders: usize,
}

/// A drain of the thread in this worker; the next may start when it is dropped.
pub struct Draining {
    // Fields drop in order: the next waiter is let in, then the entry is given up.
    _drain: tokio::sync::OwnedMutexGuard<()>,
    _holder: Holder,
}

struct Holder {
    drains: LocalDrains,
    thread: ThreadId,
}

impl Drop for Holder {
    fn drop(&mut self) {
        let mut threads = self.drains.lock();
        if let Some(entry) = threads.get_mut(&self.thread) {
            entry.holders -= 1;
            if entry.holders == 0 {
                threads.remove(&self.thread);
            }
        }
    }
}

impl LocalDrains {
    /// Starts a drain of `thread` here, after the one running here ends, if it does within
    /// `wait`; `None` if it does not.
    pub async fn enter(&self, thread: &ThreadId, wait: Duration) -> Option<Draining> {
        let drain = {
            let mut threads = self.lock();
            let entry = threads.entry(thread.clone()).or_insert_with(|| Entry {
                drain: Arc::default(),
                holders: 0,
            });
            entry.holders += 1;
            entry.drain.clone()
        };
        let holder = Holder {
            drains: self.clone(),
            thread: thread.clone(),
        };
        let drain = tokio::time::timeout(wait, drain.lock_owned()).await.ok()?;
        Some(Draining {
            _drain: drain,
            _holder: holder,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<ThreadId, Entry>> {
        // Nothing can panic while the map is held.
        self.threads.lock().unwrap_or_else(PoisonError::into_inner)
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().len()
    }
}

/// The message a panic was raised with, cut to a bound.
pub fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    let text = panic
        .downcast_ref::<&str>()
        .map(|text| (*text).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".to_owned());
    match text.char_indices().nth(500) {
        Some((end, _)) => format!("{}…", &text[..end]),
        None => text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn thread(id: &str) -> ThreadId {
        ThreadId::parse(id).unwrap()
    }

    fn stored(sequence: u64, after: Option<&str>) -> StreamMessage {
        let mut headers = async_nats::HeaderMap::new();
        if let Some(after) = after {
            headers.insert(
                async_nats::header::NATS_EXPECTED_LAST_SUBJECT_SEQUENCE,
                after,
            );
        }
        StreamMessage {
            subject: "chat.in.t-1".into(),
            sequence,
            headers,
            payload: bytes::Bytes::new(),
            time: async_nats::datetime::from_nanos(0).unwrap(),
        }
    }

    #[test]
    fn a_delivery_follows_the_last_committed_message_only_when_stored_to() {
        // Stored on the condition that the thread's last message was 7: the next after 7.
        assert!(follows_directly(&stored(12, Some("7")), 7));
        // Another message of the thread may lie between 5 and 12 (7, not yet run).
        assert!(!follows_directly(&stored(12, Some("7")), 5));
        // Stored without the condition (a socket's first message, an operator's): read again.
        assert!(!follows_directly(&stored(12, None), 7));
        assert!(!follows_directly(&stored(12, Some("not a number")), 7));
        // Already committed: never run again from here.
        assert!(!follows_directly(&stored(7, Some("7")), 7));
    }

    #[tokio::test(start_paused = true)]
    async fn a_delivery_waits_for_its_threads_drain_here_and_no_longer() {
        tokio::time::timeout(Duration::from_secs(5), waits_for_its_threads_drain())
            .await
            .expect("a wait without bound");
    }

    async fn waits_for_its_threads_drain() {
        let drains = LocalDrains::default();
        let first = drains.enter(&thread("t-1"), LOCAL_WAIT).await.unwrap();
        // Another thread is not held up.
        let other = drains.enter(&thread("t-2"), LOCAL_WAIT).await.unwrap();
        assert_eq!(drains.len(), 2);

        // The same thread: given up on after the wait, while the first drain runs.
        assert!(drains.enter(&thread("t-1"), LOCAL_WAIT).await.is_none());

        // Let in as soon as the first drain ends.
        let waiting = tokio::spawn({
            let drains = drains.clone();
            async move { drains.enter(&thread("t-1"), LOCAL_WAIT).await.is_some() }
        });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        drop(first);
        assert!(waiting.await.unwrap());

        // Nothing is kept once nothing runs or waits.
        drop(other);
        assert_eq!(drains.len(), 0);
    }
}
