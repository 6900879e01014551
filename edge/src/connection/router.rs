//! One NATS subscription per edge, fanned out in process: the edge subscribes once, at start-up,
//! to every thread's live subject (`<prefix>.live.*`), and [`LiveRouter`] hands each bundle to
//! the sockets attached to its thread (`LIVE_SUBSCRIPTION=edge`, the default; docs/architecture.md,
//! "Live relay").
//!
//! A socket's attachment is a [`Registration`]: a bounded queue of shared bundles in the router's
//! map until it is dropped. Registering is synchronous (an insert under a shard's lock), so a
//! socket that registers before it publishes a client message has its queue in the map before
//! any worker can answer. The router never waits for a socket: when a socket's queue is full the
//! bundle is dropped for that socket only, and its registration reports [`LiveEvent::Missed`]
//! before anything else, so the socket catches up from `<PREFIX>_OUT`, where every live bundle is
//! stored before it is published.

use std::collections::hash_map::RandomState;
use std::collections::{HashMap, VecDeque};
use std::hash::BuildHasher as _;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};

use anyhow::Context as _;
use futures_util::task::AtomicWaker;
use futures_util::{Stream, StreamExt as _};
use prometheus::{IntCounter, IntGauge};
use shared::ids::ThreadId;
use shared::subjects::Subjects;

use super::upstream::Bundle;

/// Bundles one socket's attachment may hold while the socket writes: past it the router drops
/// bundles for that socket, which then catches up from the stream. A queue holds shared pointers
/// and allocates only when bundles wait.
pub const QUEUE_BUNDLES: usize = 256;

/// Shards of the map: registrations and deliveries of different threads seldom share a lock.
const SHARDS: usize = 32;

/// What a live relay yields.
#[derive(Debug, Clone)]
pub enum LiveEvent {
    /// The thread's next live bundle.
    Bundle(Arc<Bundle>),
    /// Live bundles were dropped for this socket (its queue was full): the socket catches up from
    /// the stream before it relays more.
    Missed,
}

type Shard = HashMap<ThreadId, Vec<Arc<Slot>>>;

/// The edge's map from thread to the queues of the sockets attached to it.
pub struct LiveRouter {
    shards: Box<[Mutex<Shard>]>,
    hasher: RandomState,
    capacity: usize,
    /// Threads with at least one registration.
    routes: IntGauge,
    /// Bundles dropped for a socket whose queue was full.
    dropped: IntCounter,
}

/// One socket's queue for one thread.
#[derive(Default)]
struct Slot {
    queue: Mutex<VecDeque<Arc<Bundle>>>,
    waker: AtomicWaker,
    missed: AtomicBool,
}

/// A lock whose holder panicked still guards consistent data here (every critical section is a
/// single push, pop or map update).
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl LiveRouter {
    /// A router whose sockets' queues hold `capacity` bundles each; `routes` counts the threads
    /// in its map, `dropped` the bundles dropped for full queues.
    pub fn new(capacity: usize, routes: IntGauge, dropped: IntCounter) -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            hasher: RandomState::new(),
            capacity: capacity.max(1),
            routes,
            dropped,
        }
    }

    fn shard(&self, thread: &ThreadId) -> &Mutex<Shard> {
        // `SHARDS` fits in a u64 and the remainder in a usize.
        let index = self.hasher.hash_one(thread) % SHARDS as u64;
        &self.shards[usize::try_from(index).unwrap_or(0)]
    }

    /// Registers a socket's queue for `thread`: bundles the router receives from now on reach it,
    /// until the registration is dropped.
    pub fn register(self: &Arc<Self>, thread: &ThreadId) -> Registration {
        let slot = Arc::new(Slot::default());
        {
            let mut shard = lock(self.shard(thread));
            let slots = shard.entry(thread.clone()).or_insert_with(|| {
                self.routes.inc();
                Vec::with_capacity(1)
            });
            slots.push(Arc::clone(&slot));
        }
        Registration {
            router: Arc::clone(self),
            thread: thread.clone(),
            slot,
        }
    }

    /// Hands a live bundle of `thread` to every socket registered for it; a socket whose queue is
    /// full misses it (and is told so). Never waits for a socket.
    pub fn dispatch(&self, thread: &ThreadId, bundle: Bundle) {
        let shard = lock(self.shard(thread));
        let Some(slots) = shard.get(thread) else {
            return;
        };
        let bundle = Arc::new(bundle);
        for slot in slots {
            {
                let mut queue = lock(&slot.queue);
                if queue.len() < self.capacity {
                    queue.push_back(Arc::clone(&bundle));
                } else {
                    slot.missed.store(true, Ordering::Release);
                    self.dropped.inc();
                }
            }
            slot.waker.wake();
        }
    }

    /// Threads with at least one registration.
    pub fn threads(&self) -> usize {
        self.shards.iter().map(|shard| lock(shard).len()).sum()
    }

    fn unregister(&self, thread: &ThreadId, slot: &Arc<Slot>) {
        let mut shard = lock(self.shard(thread));
        if let Some(slots) = shard.get_mut(thread) {
            slots.retain(|registered| !Arc::ptr_eq(registered, slot));
            if slots.is_empty() {
                shard.remove(thread);
                self.routes.dec();
            }
        }
    }

    /// Subscribes to every thread's live subject and feeds the router from it, in a task of its
    /// own, for as long as the NATS client lives (async-nats subscribes again after a
    /// reconnection). Returns once the server has the subscription: a client message published
    /// after it is answered on a subject the edge already receives.
    pub async fn subscribe(
        self: &Arc<Self>,
        nats: &async_nats::Client,
        subjects: Arc<Subjects>,
    ) -> anyhow::Result<()> {
        let mut subscriber = nats
            .subscribe(subjects.live_wildcard())
            .await
            .context("Failed to subscribe to the live reply subjects")?;
        nats.flush()
            .await
            .context("NATS did not confirm the live subscription")?;
        let router = Arc::clone(self);
        tokio::spawn(async move {
            while let Some(message) = subscriber.next().await {
                match subjects.thread_of_live(message.subject.as_str()) {
                    Some(thread) => router.dispatch(
                        &thread,
                        Bundle {
                            headers: message.headers,
                            payload: message.payload,
                        },
                    ),
                    None => {
                        tracing::debug!(subject = %message.subject, "A live subject without a thread.");
                    }
                }
            }
            tracing::warn!("The live reply subscription ended.");
        });
        Ok(())
    }
}

/// One socket's attachment to a thread in the router: a stream of the thread's live bundles (it
/// never ends). Dropping it removes it from the router's map.
pub struct Registration {
    router: Arc<LiveRouter>,
    thread: ThreadId,
    slot: Arc<Slot>,
}

impl Stream for Registration {
    type Item = LiveEvent;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<LiveEvent>> {
        let slot = &self.slot;
        // Registered before looking: a bundle queued after the look wakes this task.
        slot.waker.register(cx.waker());
        if slot.missed.swap(false, Ordering::AcqRel) {
            return Poll::Ready(Some(LiveEvent::Missed));
        }
        match lock(&slot.queue).pop_front() {
            Some(bundle) => Poll::Ready(Some(LiveEvent::Bundle(bundle))),
            None => Poll::Pending,
        }
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.router.unregister(&self.thread, &self.slot);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use futures_util::FutureExt as _;

    use super::*;

    fn router(capacity: usize) -> Arc<LiveRouter> {
        Arc::new(LiveRouter::new(
            capacity,
            IntGauge::new("routes", "routes").unwrap(),
            IntCounter::new("dropped", "dropped").unwrap(),
        ))
    }

    fn bundle(text: &'static str) -> Bundle {
        Bundle {
            headers: None,
            payload: bytes::Bytes::from_static(text.as_bytes()),
        }
    }

    /// The next event, if one is ready now.
    fn ready(registration: &mut Registration) -> Option<LiveEvent> {
        registration.next().now_or_never().flatten()
    }

    fn payload(event: Option<LiveEvent>) -> String {
        match event {
            Some(LiveEvent::Bundle(bundle)) => String::from_utf8(bundle.payload.to_vec()).unwrap(),
            other => panic!("expected a bundle, got {other:?}"),
        }
    }

    #[test]
    fn a_bundle_reaches_every_socket_of_its_thread_and_no_other() {
        let router = router(8);
        let [a, b] = [(); 2].map(|()| ThreadId::generate());
        let mut first = router.register(&a);
        let mut second = router.register(&a);
        let mut other = router.register(&b);

        router.dispatch(&a, bundle("a1"));
        router.dispatch(&b, bundle("b1"));
        router.dispatch(&a, bundle("a2"));

        for socket in [&mut first, &mut second] {
            assert_eq!(payload(ready(socket)), "a1");
            assert_eq!(payload(ready(socket)), "a2");
            assert!(ready(socket).is_none());
        }
        assert_eq!(payload(ready(&mut other)), "b1");
        assert!(ready(&mut other).is_none());
        // A thread nobody here is attached to costs a lookup.
        router.dispatch(&ThreadId::generate(), bundle("elsewhere"));
        assert_eq!(router.threads(), 2);
    }

    #[test]
    fn a_full_queue_drops_for_that_socket_only_and_says_so_first() {
        let router = router(2);
        let thread = ThreadId::generate();
        let mut slow = router.register(&thread);
        let mut fast = router.register(&thread);

        for (index, text) in ["1", "2", "3", "4"].into_iter().enumerate() {
            router.dispatch(&thread, bundle(text));
            // The fast socket keeps up; the slow one reads nothing.
            assert_eq!(payload(ready(&mut fast)), text, "bundle {index}");
        }
        assert_eq!(router.dropped.get(), 2);
        // The slow socket learns first that it missed bundles, then gets what its queue held.
        assert!(matches!(ready(&mut slow), Some(LiveEvent::Missed)));
        assert_eq!(payload(ready(&mut slow)), "1");
        assert_eq!(payload(ready(&mut slow)), "2");
        assert!(ready(&mut slow).is_none());
        // With room again it gets new bundles, and no second `Missed`.
        router.dispatch(&thread, bundle("5"));
        assert_eq!(payload(ready(&mut slow)), "5");
        assert_eq!(payload(ready(&mut fast)), "5");
        assert!(ready(&mut slow).is_none());
    }

    #[test]
    fn dropped_registrations_leave_the_map() {
        let router = router(8);
        let [a, b] = [(); 2].map(|()| ThreadId::generate());
        let first = router.register(&a);
        let mut second = router.register(&a);
        let other = router.register(&b);
        assert_eq!((router.threads(), router.routes.get()), (2, 2));

        drop(first);
        assert_eq!(router.threads(), 2);
        router.dispatch(&a, bundle("a1"));
        assert_eq!(payload(ready(&mut second)), "a1");
        drop(second);
        drop(other);
        assert_eq!((router.threads(), router.routes.get()), (0, 0));
        // Bundles for a thread that was left go nowhere.
        router.dispatch(&a, bundle("a2"));
        assert_eq!(router.threads(), 0);
    }

    #[tokio::test]
    async fn a_waiting_socket_is_woken_by_a_bundle_from_another_task() {
        let router = router(8);
        let thread = ThreadId::generate();
        let mut registration = router.register(&thread);
        let waiting = tokio::spawn(async move { registration.next().await });
        tokio::task::yield_now().await;
        let sender = Arc::clone(&router);
        let sent = thread.clone();
        std::thread::spawn(move || sender.dispatch(&sent, bundle("late")))
            .join()
            .unwrap();
        let event = tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("the socket is woken")
            .unwrap();
        assert_eq!(payload(event), "late");
        // The registration went with the task.
        assert_eq!(router.threads(), 0);
    }

    #[test]
    fn many_sockets_come_and_go_across_shards() {
        let router = router(4);
        let threads: Vec<ThreadId> = (0..200).map(|_| ThreadId::generate()).collect();
        let registrations: Vec<Registration> = threads
            .iter()
            .flat_map(|thread| [router.register(thread), router.register(thread)])
            .collect();
        assert_eq!(router.threads(), 200);
        assert_eq!(router.routes.get(), 200);
        drop(registrations);
        assert_eq!(router.threads(), 0);
        assert_eq!(router.routes.get(), 0);
    }
}
