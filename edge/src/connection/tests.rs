//! Unit tests of one socket's logic: the socket is a pair of channels and NATS/PostgreSQL an
//! in-memory [`FakeUpstream`], so the resume seam, attachments and error paths are driven
//! directly, frame by frame.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::ws::{close_code, Message};
use futures_util::stream::BoxStream;
use futures_util::task::AtomicWaker;
use futures_util::{Sink, Stream, StreamExt as _};
use prometheus::{IntCounter, IntGauge};
use shared::auth::ThreadTokens;
use shared::ids::{MessageId, ThreadId};
use shared::protocol::bus::{bundle, CancelNotice, InboundKind, InboundMessage};
use shared::protocol::validate::MAX_FRAME_BYTES;
use shared::protocol::{ClientFrame, ErrorCode, FeedbackTarget, FrameError, ServerFrame};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::router::{LiveRouter, Registration};
use super::upstream::{Bundle, LiveEvent, Upstream};
use super::{serve, SocketContext, SocketLimits};
use crate::metrics::EdgeMetrics;
use crate::rate_limit::{KeyedLimit, MessageBudget};

/// How long a test waits for a frame it expects (virtual time under `tokio::time::pause`).
const WAIT: Duration = Duration::from_secs(5);

/// What the fake upstream was asked, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Call {
    Subscribe(ThreadId),
    /// A store, with the sequence it was to follow.
    Store(ThreadId, Option<u64>),
}

#[derive(Default)]
struct FakeState {
    calls: Vec<Call>,
    stored: Vec<InboundMessage>,
    /// Retained bundles per thread, in stream order.
    retained: HashMap<ThreadId, Vec<Bundle>>,
    /// Live subscribers per thread.
    live: HashMap<ThreadId, Vec<mpsc::UnboundedSender<Bundle>>>,
    /// Published live (and retained) the next time retained frames are read: a worker that
    /// publishes while a resume is under way.
    during_replay: Vec<(ThreadId, Bundle)>,
    /// Published live when a message of the thread is stored: a worker that answers at once.
    on_store: Vec<(ThreadId, Bundle)>,
    /// Whether `store` fails (JetStream unavailable).
    store_fails: bool,
    /// Operator tokens, and whether each is still valid.
    operator_tokens: HashMap<String, bool>,
    /// The edge's live router (`LIVE_SUBSCRIPTION=edge`), when a test uses it: subscriptions
    /// register in it and published bundles go through it.
    router: Option<Arc<LiveRouter>>,
    /// How many times an operator token was looked up.
    operator_lookups: usize,
}

/// NATS and PostgreSQL in memory.
#[derive(Clone, Default)]
struct FakeUpstream(Arc<Mutex<FakeState>>);

impl FakeUpstream {
    /// Live bundles go through a [`LiveRouter`] whose queues hold `capacity` bundles.
    fn routed(capacity: usize) -> (Self, Arc<LiveRouter>, IntCounter) {
        let dropped = IntCounter::new("dropped", "dropped").unwrap();
        let router = Arc::new(LiveRouter::new(
            capacity,
            IntGauge::new("routes", "routes").unwrap(),
            dropped.clone(),
        ));
        let upstream = Self::default();
        upstream.state().router = Some(Arc::clone(&router));
        (upstream, router, dropped)
    }

    fn state(&self) -> std::sync::MutexGuard<'_, FakeState> {
        self.0.lock().unwrap()
    }

    /// Stores a bundle in the retained store only.
    fn retain(&self, thread: &ThreadId, bundle: Bundle) {
        self.state()
            .retained
            .entry(thread.clone())
            .or_default()
            .push(bundle);
    }

    /// Stores a bundle and publishes it live, as the replies stream does.
    fn publish(&self, thread: &ThreadId, bundle: Bundle) {
        let mut state = self.state();
        publish_locked(&mut state, thread, bundle);
    }

    /// The live subscribers of a thread (closed ones included).
    fn subscribers(&self, thread: &ThreadId) -> Vec<mpsc::UnboundedSender<Bundle>> {
        self.state().live.get(thread).cloned().unwrap_or_default()
    }
}

fn publish_locked(state: &mut FakeState, thread: &ThreadId, bundle: Bundle) {
    state
        .retained
        .entry(thread.clone())
        .or_default()
        .push(bundle.clone());
    for subscriber in state.live.get(thread).into_iter().flatten() {
        let _closed = subscriber.send(bundle.clone());
    }
    if let Some(router) = &state.router {
        router.dispatch(thread, bundle);
    }
}

/// A live subscription of the fake: a channel of its own, or a registration in the router.
enum FakeLive {
    Own(mpsc::UnboundedReceiver<Bundle>),
    Routed(Registration),
}

impl Stream for FakeLive {
    type Item = LiveEvent;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<LiveEvent>> {
        match self.get_mut() {
            Self::Own(receiver) => receiver
                .poll_recv(cx)
                .map(|bundle| bundle.map(|bundle| LiveEvent::Bundle(Arc::new(bundle)))),
            Self::Routed(registration) => registration.poll_next_unpin(cx),
        }
    }
}

fn last_seq(bundle: &Bundle) -> Option<u64> {
    let header = |name: &str| {
        bundle
            .headers
            .as_ref()
            .and_then(|headers| headers.get(name))
            .map(|value| value.as_str())
    };
    bundle::last_seq(
        header(bundle::FIRST_SEQ_HEADER),
        header(bundle::FRAME_TYPES_HEADER),
    )
}

impl Upstream for FakeUpstream {
    type Live = FakeLive;

    async fn subscribe(&self, thread: &ThreadId) -> anyhow::Result<FakeLive> {
        let mut state = self.state();
        state.calls.push(Call::Subscribe(thread.clone()));
        if let Some(router) = &state.router {
            return Ok(FakeLive::Routed(router.register(thread)));
        }
        let (sender, receiver) = mpsc::unbounded_channel();
        state.live.entry(thread.clone()).or_default().push(sender);
        Ok(FakeLive::Own(receiver))
    }

    async fn retained(
        &self,
        thread: &ThreadId,
        after_seq: u64,
    ) -> anyhow::Result<BoxStream<'_, anyhow::Result<Bundle>>> {
        let mut state = self.state();
        let now = std::mem::take(&mut state.during_replay);
        // The store holds them, and live subscribers are told, before the read below ends: the
        // reader reads up to the tail it saw first, as `BundleReader` does.
        let tail = state.retained.get(thread).map_or(0, Vec::len);
        for (on, bundle) in now {
            publish_locked(&mut state, &on, bundle);
        }
        let bundles: Vec<_> = state
            .retained
            .get(thread)
            .map(|all| all[..tail].to_vec())
            .unwrap_or_default()
            .into_iter()
            .filter(|bundle| last_seq(bundle).is_none_or(|last| last > after_seq))
            .map(Ok)
            .collect();
        Ok(futures_util::stream::iter(bundles).boxed())
    }

    async fn store(&self, message: &InboundMessage, after: Option<u64>) -> Result<u64, FrameError> {
        let mut state = self.state();
        let thread = &message.thread_id;
        if state.store_fails {
            return Err(FrameError::new(ErrorCode::Busy, "unavailable").on_thread(thread));
        }
        state.calls.push(Call::Store(thread.clone(), after));
        state.stored.push(message.clone());
        let answers: Vec<_> = state
            .on_store
            .iter()
            .filter(|(on, _)| on == thread)
            .map(|(_, bundle)| bundle.clone())
            .collect();
        for bundle in answers {
            publish_locked(&mut state, thread, bundle);
        }
        Ok(u64::try_from(state.stored.len()).unwrap())
    }

    async fn announce_cancel(&self, _notice: &CancelNotice) {}

    async fn authorize_watch(&self, frame: &ClientFrame, token: &str) -> Result<(), FrameError> {
        let valid = self.operator_token_valid(token).await.unwrap_or(false);
        if valid && matches!(frame, ClientFrame::Resume { .. }) {
            return Ok(());
        }
        Err(FrameError::new(ErrorCode::Unauthorized, "not an operator")
            .on_thread(frame.thread_id()))
    }

    async fn operator_token_valid(&self, token: &str) -> Result<bool, sqlx::Error> {
        let mut state = self.state();
        state.operator_lookups += 1;
        Ok(state.operator_tokens.get(token).copied().unwrap_or(false))
    }

    async fn feedback(
        &self,
        _thread: &ThreadId,
        _target: FeedbackTarget,
        _comment: Option<String>,
    ) -> Result<MessageId, FrameError> {
        Ok(MessageId::generate())
    }
}

/// A bundle of frames `first..=last` of a thread, each frame `{"seq":N}` (the edge does not
/// parse reply frames).
fn frames(first: u64, last: u64) -> Bundle {
    let mut payload = Vec::new();
    let mut kinds = Vec::new();
    for seq in first..=last {
        payload.extend_from_slice(format!("{{\"seq\":{seq}}}\n").as_bytes());
        kinds.push("token");
    }
    let mut headers = async_nats::HeaderMap::new();
    headers.insert(bundle::FIRST_SEQ_HEADER, first.to_string().as_str());
    headers.insert(bundle::FRAME_TYPES_HEADER, kinds.join(",").as_str());
    Bundle {
        headers: Some(headers),
        payload: payload.into(),
    }
}

/// The server side of a socket: what the client sends comes out of `from_client`; what the edge
/// writes goes to `to_client`, unless the client is stalled.
struct FakeSocket {
    from_client: mpsc::UnboundedReceiver<Result<Message, axum::Error>>,
    to_client: mpsc::UnboundedSender<Message>,
    stall: Arc<Stall>,
}

/// A client that stops reading: while stalled, the edge's writes to its socket wait.
#[derive(Default)]
struct Stall {
    stalled: AtomicBool,
    waker: AtomicWaker,
}

impl Stall {
    fn set(&self, stalled: bool) {
        self.stalled.store(stalled, Ordering::SeqCst);
        self.waker.wake();
    }
}

impl Stream for FakeSocket {
    type Item = Result<Message, axum::Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.from_client.poll_recv(cx)
    }
}

impl Sink<Message> for FakeSocket {
    type Error = axum::Error;

    fn poll_ready(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), axum::Error>> {
        self.stall.waker.register(cx.waker());
        if self.stall.stalled.load(Ordering::SeqCst) {
            return Poll::Pending;
        }
        Poll::Ready(Ok(()))
    }

    fn start_send(self: Pin<&mut Self>, message: Message) -> Result<(), axum::Error> {
        self.to_client
            .send(message)
            .map_err(|_| axum::Error::new("the client is gone"))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<Result<(), axum::Error>> {
        Poll::Ready(Ok(()))
    }

    fn poll_close(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<Result<(), axum::Error>> {
        Poll::Ready(Ok(()))
    }
}

/// What a test may change about the edge a socket runs in.
struct Setup {
    limits: SocketLimits,
    messages_per_thread: u32,
    resumes_per_thread: u32,
}

impl Default for Setup {
    fn default() -> Self {
        Self {
            limits: SocketLimits {
                ping_every: Duration::from_secs(3600),
                max_threads: 8,
                resume_max_frames: 1000,
            },
            messages_per_thread: 0,
            resumes_per_thread: 0,
        }
    }
}

/// One socket running in its own task, and the client's end of it.
struct Harness {
    upstream: FakeUpstream,
    tokens: Arc<ThreadTokens>,
    metrics: EdgeMetrics,
    close_sockets: CancellationToken,
    to_edge: mpsc::UnboundedSender<Result<Message, axum::Error>>,
    from_edge: mpsc::UnboundedReceiver<Message>,
    served: tokio::task::JoinHandle<()>,
    /// Bumped when the edge's NATS connection comes back.
    reconnected: tokio::sync::watch::Sender<u64>,
    /// Stalls the client's reading.
    stall: Arc<Stall>,
}

impl Harness {
    fn start(setup: Setup) -> Self {
        Self::start_with(setup, FakeUpstream::default())
    }

    fn start_with(setup: Setup, upstream: FakeUpstream) -> Self {
        let tokens = Arc::new(ThreadTokens::new(b"unit-test-secret-unit-test-secret").unwrap());
        let metrics = EdgeMetrics::new().unwrap();
        let close_sockets = CancellationToken::new();
        let (reconnected, reconnects) = tokio::sync::watch::channel(0);
        let window = Duration::from_secs(60);
        let context = SocketContext {
            tokens: tokens.clone(),
            message_limit: Arc::new(MessageBudget::new(setup.messages_per_thread, window)),
            answer_limit: Arc::new(MessageBudget::new(0, window)),
            addr_message_limit: Arc::new(MessageBudget::new(0, window)),
            resume_limit: Arc::new(KeyedLimit::new(setup.resumes_per_thread, window)),
            limits: setup.limits,
            metrics: metrics.clone(),
            reconnects,
            close_sockets: close_sockets.clone(),
        };
        let (to_edge, from_client) = mpsc::unbounded_channel();
        let (to_client, from_edge) = mpsc::unbounded_channel();
        let stall = Arc::new(Stall::default());
        let socket = FakeSocket {
            from_client,
            to_client,
            stall: Arc::clone(&stall),
        };
        let client = IpAddr::V4(Ipv4Addr::LOCALHOST);
        let served = tokio::spawn(serve(socket, context, upstream.clone(), client));
        Self {
            upstream,
            tokens,
            metrics,
            close_sockets,
            to_edge,
            from_edge,
            served,
            reconnected,
            stall,
        }
    }

    fn send(&self, message: Message) {
        self.to_edge.send(Ok(message)).unwrap();
    }

    fn send_text(&self, text: impl Into<String>) {
        self.send(Message::Text(text.into().into()));
    }

    fn send_message(&self, thread: &ThreadId, content: &str) {
        let frame = serde_json::json!({
            "type": "message",
            "thread_id": thread,
            "token": self.tokens.sign(thread),
            "content": content,
        });
        self.send_text(frame.to_string());
    }

    fn send_resume(&self, thread: &ThreadId, after_seq: u64) {
        self.send_resume_with(thread, &self.tokens.sign(thread), after_seq);
    }

    fn send_resume_with(&self, thread: &ThreadId, token: &str, after_seq: u64) {
        let frame = serde_json::json!({
            "type": "resume",
            "thread_id": thread,
            "token": token,
            "after_seq": after_seq,
        });
        self.send_text(frame.to_string());
    }

    /// The next message the edge writes.
    async fn next(&mut self) -> Message {
        tokio::time::timeout(WAIT, self.from_edge.recv())
            .await
            .expect("the edge writes a frame in time")
            .expect("the socket is open")
    }

    async fn next_text(&mut self) -> String {
        match self.next().await {
            Message::Text(text) => text.as_str().to_owned(),
            other => panic!("expected a text frame, got {other:?}"),
        }
    }

    /// The next frame, which must be one of the edge's own.
    async fn next_own(&mut self) -> ServerFrame {
        let text = self.next_text().await;
        serde_json::from_str(&text).unwrap_or_else(|_| panic!("not a server frame: {text}"))
    }

    async fn next_error(&mut self) -> ErrorCode {
        match self.next_own().await {
            ServerFrame::Error { code, .. } => code,
            other => panic!("expected an error, got {other:?}"),
        }
    }

    async fn next_accepted(&mut self, thread: &ThreadId) {
        match self.next_own().await {
            ServerFrame::Accepted { thread_id, .. } => assert_eq!(&thread_id, thread),
            other => panic!("expected accepted, got {other:?}"),
        }
    }

    /// The `seq` of the next frame, which must be a relayed one.
    async fn next_seq(&mut self) -> u64 {
        let text = self.next_text().await;
        let frame: serde_json::Value = serde_json::from_str(&text).unwrap();
        frame["seq"]
            .as_u64()
            .unwrap_or_else(|| panic!("not a relayed frame: {text}"))
    }

    /// The seqs of the next `count` frames.
    async fn next_seqs(&mut self, count: usize) -> Vec<u64> {
        let mut seqs = Vec::with_capacity(count);
        for _ in 0..count {
            seqs.push(self.next_seq().await);
        }
        seqs
    }

    /// Proves nothing else was written before it: the socket handles its frames in order, so
    /// the answer to an invalid frame is next unless something was written before it.
    async fn nothing_pending(&mut self) {
        self.send_text("{}");
        assert_eq!(self.next_error().await, ErrorCode::InvalidFrame);
    }

    /// The close frame's code, once the edge closes the socket; the socket task then ends.
    async fn closed_with(mut self) -> u16 {
        let code = loop {
            match self.next().await {
                Message::Close(Some(frame)) => break frame.code,
                Message::Close(None) => panic!("a close without a code"),
                _ => {}
            }
        };
        tokio::time::timeout(WAIT, self.served)
            .await
            .expect("the socket task ends")
            .unwrap();
        code
    }
}

#[tokio::test]
async fn resume_writes_retained_frames_then_live_ones_without_gap_or_duplicate() {
    let upstream = FakeUpstream::default();
    let thread = ThreadId::generate();
    upstream.retain(&thread, frames(1, 2));
    upstream.retain(&thread, frames(3, 3));
    // While the resume reads the store, the worker publishes 3 (again, say a redelivered turn
    // republishing it) and 4: both wait in the live subscription, made before the read.
    upstream.state().during_replay = vec![(thread.clone(), frames(3, 4))];
    let mut client = Harness::start_with(Setup::default(), upstream.clone());

    client.send_resume(&thread, 0);
    assert_eq!(client.next_seqs(4).await, vec![1, 2, 3, 4]);
    upstream.publish(&thread, frames(5, 5));
    assert_eq!(client.next_seq().await, 5);
    client.nothing_pending().await;
    assert_eq!(
        upstream.state().calls,
        vec![Call::Subscribe(thread.clone())]
    );
}

#[tokio::test]
async fn resume_from_a_seq_inside_a_bundle_writes_only_the_frames_after_it() {
    let upstream = FakeUpstream::default();
    let thread = ThreadId::generate();
    upstream.retain(&thread, frames(1, 3));
    upstream.retain(&thread, frames(4, 5));
    let mut client = Harness::start_with(Setup::default(), upstream.clone());

    client.send_resume(&thread, 2);
    assert_eq!(client.next_seqs(3).await, vec![3, 4, 5]);
    client.nothing_pending().await;
    // A second resume from an older position on the same socket sends what it lacks: nothing.
    client.send_resume(&thread, 0);
    client.nothing_pending().await;
}

#[tokio::test]
async fn a_resume_cut_short_holds_live_frames_back_until_the_client_resumes_again() {
    let upstream = FakeUpstream::default();
    let thread = ThreadId::generate();
    upstream.retain(&thread, frames(1, 2));
    upstream.retain(&thread, frames(3, 3));
    let mut setup = Setup::default();
    setup.limits.resume_max_frames = 2;
    let mut client = Harness::start_with(setup, upstream.clone());

    client.send_resume(&thread, 0);
    assert_eq!(client.next_seqs(2).await, vec![1, 2]);
    assert_eq!(
        client.next_own().await,
        ServerFrame::ResumePartial {
            thread_id: thread.clone(),
            last_seq: 2
        }
    );
    upstream.publish(&thread, frames(4, 4));
    client.nothing_pending().await; // 4 is held back: the client lacks 3
    client.send_resume(&thread, 2);
    assert_eq!(client.next_seqs(2).await, vec![3, 4]);
    upstream.publish(&thread, frames(5, 5));
    assert_eq!(client.next_seq().await, 5);
}

#[tokio::test]
async fn live_frames_past_a_gap_are_caught_up_from_the_retained_store() {
    let upstream = FakeUpstream::default();
    let thread = ThreadId::generate();
    let mut client = Harness::start_with(Setup::default(), upstream.clone());
    client.send_resume(&thread, 0);
    client.nothing_pending().await;
    upstream.publish(&thread, frames(1, 1));
    assert_eq!(client.next_seq().await, 1);
    // The NATS client dropped 2 and 3 for this slow socket; the store has them.
    upstream.retain(&thread, frames(2, 3));
    upstream.publish(&thread, frames(4, 4));
    assert_eq!(client.next_seqs(3).await, vec![2, 3, 4]);
    client.nothing_pending().await;
    assert_eq!(client.metrics.relay_gaps.get(), 1);
}

#[tokio::test]
async fn a_message_subscribes_before_it_is_stored_and_accepted_precedes_its_frames() {
    let upstream = FakeUpstream::default();
    let thread = ThreadId::generate();
    // A worker so fast that the turn's first frames are out before the store is acknowledged.
    upstream.state().on_store = vec![(thread.clone(), frames(1, 2))];
    let mut client = Harness::start_with(Setup::default(), upstream.clone());

    client.send_message(&thread, "Hi");
    client.next_accepted(&thread).await;
    assert_eq!(client.next_seqs(2).await, vec![1, 2]);
    assert_eq!(
        upstream.state().calls,
        vec![
            Call::Subscribe(thread.clone()),
            Call::Store(thread.clone(), None)
        ]
    );
    // A second message on the same thread reuses the subscription, and is stored to follow the
    // first (stored at 1 by the fake).
    client.send_message(&thread, "again");
    client.next_accepted(&thread).await;
    let state = upstream.state();
    assert_eq!(state.calls.len(), 3);
    assert_eq!(state.calls[2], Call::Store(thread.clone(), Some(1)));
    assert!(matches!(
        &state.stored[1].kind,
        InboundKind::Message { content } if content.as_str() == "again"
    ));
}

#[tokio::test]
async fn a_message_is_stored_to_follow_the_one_this_socket_stored_last_on_its_thread() {
    let upstream = FakeUpstream::default();
    let [a, b] = [(); 2].map(|()| ThreadId::generate());
    let mut client = Harness::start_with(Setup::default(), upstream.clone());
    for (thread, text) in [(&a, "one"), (&b, "two"), (&a, "three")] {
        client.send_message(thread, text);
        client.next_accepted(thread).await;
    }
    let cancel = serde_json::json!({
        "type": "cancel",
        "thread_id": b,
        "token": client.tokens.sign(&b),
    });
    client.send_text(cancel.to_string());
    client.next_accepted(&b).await;
    let stores: Vec<Call> = upstream
        .state()
        .calls
        .iter()
        .filter(|call| matches!(call, Call::Store(..)))
        .cloned()
        .collect();
    // The fake stores at 1, 2, 3, 4.
    assert_eq!(
        stores,
        vec![
            Call::Store(a.clone(), None),
            Call::Store(b.clone(), None),
            Call::Store(a.clone(), Some(1)),
            Call::Store(b.clone(), Some(2)),
        ]
    );
}

#[tokio::test]
async fn past_the_attachment_cap_the_least_recently_used_thread_is_detached() {
    let upstream = FakeUpstream::default();
    let [a, b, c] = [(); 3].map(|()| ThreadId::generate());
    let mut setup = Setup::default();
    setup.limits.max_threads = 2;
    let mut client = Harness::start_with(setup, upstream.clone());

    for thread in [&a, &b, &a, &c] {
        client.send_message(thread, "Hi");
        client.next_accepted(thread).await;
    }
    // `b` was named least recently: its subscription goes, `a`'s and `c`'s stay.
    let [b_live] = <[_; 1]>::try_from(upstream.subscribers(&b)).unwrap();
    tokio::time::timeout(WAIT, b_live.closed())
        .await
        .expect("the detached thread's subscription is dropped");
    for kept in [&a, &c] {
        assert!(upstream
            .subscribers(kept)
            .iter()
            .all(|live| !live.is_closed()));
    }
    assert_eq!(client.metrics.subscriptions.get(), 2);
    upstream.publish(&a, frames(1, 1));
    assert_eq!(client.next_seq().await, 1);
    // A detached thread attaches again, detaching `a`: relayed frames are no use of a thread,
    // only the client's frames are.
    client.send_message(&b, "back");
    client.next_accepted(&b).await;
    assert_eq!(upstream.subscribers(&b).len(), 2);
    let [a_live] = <[_; 1]>::try_from(upstream.subscribers(&a)).unwrap();
    tokio::time::timeout(WAIT, a_live.closed())
        .await
        .expect("the detached thread's subscription is dropped");
}

#[tokio::test]
async fn an_invalid_frame_is_answered_and_the_socket_stays_usable() {
    let thread = ThreadId::generate();
    let mut client = Harness::start(Setup::default());

    client.send_text("not json");
    assert_eq!(client.next_error().await, ErrorCode::InvalidJson);
    client.send_text(r#"{"type":"shout"}"#);
    assert_eq!(client.next_error().await, ErrorCode::UnknownType);
    let forged = serde_json::json!({
        "type": "message", "thread_id": thread, "token": "forged", "content": "Hi",
    });
    client.send_text(forged.to_string());
    assert_eq!(client.next_error().await, ErrorCode::Unauthorized);
    client.send(Message::Binary(bytes::Bytes::from_static(b"{}")));
    assert_eq!(client.next_error().await, ErrorCode::InvalidFrame);
    assert!(client.upstream.state().calls.is_empty());

    client.send_message(&thread, "Hi");
    client.next_accepted(&thread).await;
}

#[tokio::test]
async fn an_oversized_frame_is_refused_and_the_socket_stays_usable() {
    let thread = ThreadId::generate();
    let mut client = Harness::start(Setup::default());

    client.send_message(&thread, &"x".repeat(MAX_FRAME_BYTES));
    assert_eq!(client.next_error().await, ErrorCode::MessageTooLarge);
    client.send(Message::Binary(vec![b'x'; MAX_FRAME_BYTES + 1].into()));
    assert_eq!(client.next_error().await, ErrorCode::MessageTooLarge);
    assert!(client.upstream.state().stored.is_empty());

    client.send_message(&thread, "Hi");
    client.next_accepted(&thread).await;
}

#[tokio::test]
async fn a_message_past_the_thread_budget_is_rate_limited_and_not_stored() {
    let thread = ThreadId::generate();
    let other = ThreadId::generate();
    let setup = Setup {
        messages_per_thread: 1,
        ..Setup::default()
    };
    let mut client = Harness::start(setup);

    client.send_message(&thread, "one");
    client.next_accepted(&thread).await;
    client.send_message(&thread, "two");
    match client.next_own().await {
        ServerFrame::Error {
            code, thread_id, ..
        } => {
            assert_eq!(code, ErrorCode::RateLimited);
            assert_eq!(thread_id.as_ref(), Some(&thread));
        }
        other => panic!("expected rate_limited, got {other:?}"),
    }
    assert_eq!(client.upstream.state().stored.len(), 1);
    // The budget is per thread; the socket goes on.
    client.send_message(&other, "one");
    client.next_accepted(&other).await;
}

#[tokio::test]
async fn a_message_jetstream_did_not_store_is_busy_and_not_charged() {
    let thread = ThreadId::generate();
    let setup = Setup {
        messages_per_thread: 1,
        ..Setup::default()
    };
    let mut client = Harness::start(setup);
    client.upstream.state().store_fails = true;

    client.send_message(&thread, "one");
    assert_eq!(client.next_error().await, ErrorCode::Busy);
    client.upstream.state().store_fails = false;
    client.send_message(&thread, "one");
    client.next_accepted(&thread).await;
}

#[tokio::test(start_paused = true)]
async fn a_silent_client_is_closed_after_a_ping_goes_unanswered() {
    let mut setup = Setup::default();
    setup.limits.ping_every = Duration::from_secs(3);
    let mut client = Harness::start(setup);
    let started = tokio::time::Instant::now();

    // A client that answers keeps the socket.
    for _ in 0..3 {
        assert!(matches!(client.next().await, Message::Ping(_)));
        client.send(Message::Pong(bytes::Bytes::new()));
    }
    assert!(matches!(client.next().await, Message::Ping(_)));
    assert_eq!(started.elapsed(), Duration::from_secs(12));
    // Then it stops answering: the next ping finds it silent.
    assert_eq!(client.closed_with().await, close_code::AWAY);
    assert_eq!(started.elapsed(), Duration::from_secs(15));
}

#[tokio::test]
async fn a_ping_flood_closes_the_socket() {
    let client = Harness::start(Setup::default());
    for _ in 0..=super::MAX_CLIENT_PINGS_PER_SEC {
        client.send(Message::Ping(bytes::Bytes::new()));
    }
    assert_eq!(client.closed_with().await, close_code::POLICY);
}

#[tokio::test]
async fn shutdown_closes_the_socket_with_going_away() {
    let thread = ThreadId::generate();
    let mut client = Harness::start(Setup::default());
    client.send_message(&thread, "Hi");
    client.next_accepted(&thread).await;
    client.close_sockets.cancel();
    let upstream = client.upstream.clone();
    assert_eq!(client.closed_with().await, close_code::AWAY);
    // The socket's subscriptions went with it.
    assert!(upstream
        .subscribers(&thread)
        .iter()
        .all(|live| live.is_closed()));
}

#[tokio::test]
async fn resumes_past_the_thread_budget_are_rate_limited() {
    let upstream = FakeUpstream::default();
    let thread = ThreadId::generate();
    upstream.retain(&thread, frames(1, 1));
    let setup = Setup {
        resumes_per_thread: 1,
        ..Setup::default()
    };
    let mut client = Harness::start_with(setup, upstream);
    client.send_resume(&thread, 0);
    assert_eq!(client.next_seq().await, 1);
    client.send_resume(&thread, 0);
    assert_eq!(client.next_error().await, ErrorCode::RateLimited);
    client.nothing_pending().await;
}

#[tokio::test]
async fn after_a_nats_reconnect_each_thread_catches_up_from_its_last_frame() {
    let upstream = FakeUpstream::default();
    let [seen, unseen] = [(); 2].map(|()| ThreadId::generate());
    let mut client = Harness::start_with(Setup::default(), upstream.clone());
    client.send_message(&seen, "Hi");
    client.next_accepted(&seen).await;
    upstream.publish(&seen, frames(1, 2));
    assert_eq!(client.next_seqs(2).await, vec![1, 2]);
    client.send_message(&unseen, "Hi");
    client.next_accepted(&unseen).await;
    // While the edge was away from NATS, both threads went on; no live bundle reached it.
    upstream.retain(&seen, frames(3, 4));
    upstream.retain(&unseen, frames(1, 1));
    client.reconnected.send_modify(|count| *count += 1);
    // `seen` continues from 2; `unseen` has no known position (its client resumes itself).
    assert_eq!(client.next_seqs(2).await, vec![3, 4]);
    client.nothing_pending().await;
    upstream.publish(&seen, frames(5, 5));
    assert_eq!(client.next_seq().await, 5);
}

#[tokio::test(start_paused = true)]
async fn a_revoked_operator_token_stops_the_relay_of_the_thread_it_watched() {
    let upstream = FakeUpstream::default();
    let thread = ThreadId::generate();
    let token = format!("{}watcher", shared::auth::OPERATOR_TOKEN_PREFIX);
    upstream.state().operator_tokens.insert(token.clone(), true);
    let mut client = Harness::start_with(Setup::default(), upstream.clone());

    // An operator token may watch (resume), not write.
    let message = serde_json::json!({
        "type": "message", "thread_id": thread, "token": token, "content": "Hi",
    });
    client.send_text(message.to_string());
    assert_eq!(client.next_error().await, ErrorCode::Unauthorized);
    client.send_resume_with(&thread, &token, 0);
    client.nothing_pending().await;
    upstream.publish(&thread, frames(1, 1));
    assert_eq!(client.next_seq().await, 1);
    let lookups = upstream.state().operator_lookups;

    upstream
        .state()
        .operator_tokens
        .insert(token.clone(), false);
    // Within the recheck interval the token is trusted without a lookup.
    upstream.publish(&thread, frames(2, 2));
    assert_eq!(client.next_seq().await, 2);
    assert_eq!(upstream.state().operator_lookups, lookups);
    tokio::time::advance(super::session::WATCH_RECHECK).await;
    upstream.publish(&thread, frames(3, 3));
    match client.next_own().await {
        ServerFrame::Error {
            code, thread_id, ..
        } => {
            assert_eq!(code, ErrorCode::Unauthorized);
            assert_eq!(thread_id, Some(thread.clone()));
        }
        other => panic!("expected unauthorized, got {other:?}"),
    }
    upstream.publish(&thread, frames(4, 4));
    client.nothing_pending().await;
}

#[tokio::test]
async fn through_the_router_a_stalled_socket_misses_live_bundles_alone_and_catches_up_from_the_store(
) {
    let (upstream, router, dropped) = FakeUpstream::routed(2);
    let thread = ThreadId::generate();
    let mut slow = Harness::start_with(Setup::default(), upstream.clone());
    let mut fast = Harness::start_with(Setup::default(), upstream.clone());
    for client in [&mut slow, &mut fast] {
        client.send_resume(&thread, 0);
        client.nothing_pending().await;
    }
    assert_eq!(router.threads(), 1);
    upstream.publish(&thread, frames(1, 1));
    for client in [&mut slow, &mut fast] {
        assert_eq!(client.next_seq().await, 1);
    }

    // The slow client stops reading: its socket holds 2 in a write, its queue 3 and 4; 5 and 6
    // (6 is the turn's last bundle: no later one would reveal the gap) are dropped for it alone.
    slow.stall.set(true);
    for seq in 2..=6 {
        upstream.publish(&thread, frames(seq, seq));
        assert_eq!(fast.next_seq().await, seq);
    }
    // 2 if the slow socket had taken 2 from its queue before it stalled, else 3 (2 then waits
    // in the queue, 5 and 6 are dropped, and so is 4).
    assert!((2..=3).contains(&dropped.get()), "{}", dropped.get());
    assert_eq!(fast.metrics.relay_gaps.get(), 0);

    // Reading again, it gets every frame once, in order: the rest from the store.
    slow.stall.set(false);
    assert_eq!(slow.next_seqs(5).await, vec![2, 3, 4, 5, 6]);
    slow.nothing_pending().await;
    assert_eq!(slow.metrics.relay_gaps.get(), 1);
    upstream.publish(&thread, frames(7, 7));
    for client in [&mut slow, &mut fast] {
        assert_eq!(client.next_seq().await, 7);
        client.nothing_pending().await;
    }
}

#[tokio::test]
async fn through_the_router_a_message_registers_before_it_is_stored_and_closed_sockets_leave_the_map(
) {
    let (upstream, router, _dropped) = FakeUpstream::routed(8);
    let [a, b] = [(); 2].map(|()| ThreadId::generate());
    // A worker so fast that the turn's first frames are out before the store is acknowledged.
    upstream.state().on_store = vec![(a.clone(), frames(1, 2))];
    let mut first = Harness::start_with(Setup::default(), upstream.clone());
    let mut second = Harness::start_with(Setup::default(), upstream.clone());
    second.send_resume(&a, 0);
    second.nothing_pending().await;
    second.send_resume(&b, 0);
    second.nothing_pending().await;

    first.send_message(&a, "Hi");
    first.next_accepted(&a).await;
    assert_eq!(first.next_seqs(2).await, vec![1, 2]);
    assert_eq!(second.next_seqs(2).await, vec![1, 2]);
    upstream.publish(&b, frames(1, 1));
    assert_eq!(second.next_seq().await, 1);
    first.nothing_pending().await;
    assert_eq!(router.threads(), 2);

    first.close_sockets.cancel();
    second.close_sockets.cancel();
    assert_eq!(first.closed_with().await, close_code::AWAY);
    assert_eq!(second.closed_with().await, close_code::AWAY);
    assert_eq!(router.threads(), 0);
}

/// The size of the future a function returns, without calling it.
fn returned_size<A, B, C, F>(_: fn(A, B, C) -> F) -> usize {
    std::mem::size_of::<F>()
}

/// Every open socket holds its task's future for as long as it lives: 10,000 idle sockets hold it
/// 10,000 times. It held a copy of the edge's state and, inline, the largest frame handler (17 KiB
/// in a debug build, 20 KiB in a release task); the state is now shared and the handlers boxed.
#[test]
fn an_idle_socket_task_stays_small() {
    let run = returned_size(
        super::run
            as fn(
                axum::extract::ws::WebSocket,
                std::sync::Arc<crate::state::AppState>,
                super::slots::SocketSlot,
            ) -> _,
    );
    assert!(run <= 4096, "a socket's future is {run} bytes");
}
