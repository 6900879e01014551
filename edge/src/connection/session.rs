//! One socket's life (see [`super`]): generic over the socket, a `Sink` and `Stream` of
//! WebSocket messages, and over the [`Upstream`] that reaches NATS and PostgreSQL, so unit tests
//! drive it with channels and in-memory fakes.

use std::collections::HashMap;
use std::future::Future as _;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::extract::ws::{close_code, CloseFrame, Message, Utf8Bytes};
use futures_util::stream::SelectAll;
use futures_util::{Sink, SinkExt as _, Stream, StreamExt as _};
use prometheus::IntGauge;
use shared::auth::ThreadTokens;
use shared::ids::{MessageId, ThreadId, TurnId};
use shared::protocol::bus::{bundle, InboundKind, InboundMessage};
use shared::protocol::validate::parse_client_frame;
use shared::protocol::{ClientFrame, ErrorCode, FrameError, ServerFrame};
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use super::upstream::{LiveEvent, Upstream};
use super::{SocketLimits, MAX_CLIENT_PINGS_PER_SEC};
use crate::metrics::EdgeMetrics;
use crate::rate_limit::{Decision, KeyedLimit, MessageBudget};
use crate::state::AppState;

/// A client's WebSocket as the connection sees it: axum's `WebSocket`, or channels in tests.
pub trait ClientSocket:
    Sink<Message, Error = axum::Error> + Stream<Item = Result<Message, axum::Error>> + Unpin + Send
{
}

impl<T> ClientSocket for T where
    T: Sink<Message, Error = axum::Error>
        + Stream<Item = Result<Message, axum::Error>>
        + Unpin
        + Send
{
}

/// What a socket needs of the edge besides NATS and PostgreSQL: limits, budgets, tokens, metrics
/// and the edge-wide signals.
#[derive(Clone)]
pub struct SocketContext {
    /// Verifies thread tokens.
    pub tokens: Arc<ThreadTokens>,
    /// See [`AppState::message_limit`].
    pub message_limit: Arc<MessageBudget<ThreadId>>,
    /// See [`AppState::answer_limit`].
    pub answer_limit: Arc<MessageBudget<ThreadId>>,
    /// See [`AppState::addr_message_limit`].
    pub addr_message_limit: Arc<MessageBudget<IpAddr>>,
    /// See [`AppState::resume_limit`].
    pub resume_limit: Arc<KeyedLimit<ThreadId>>,
    /// Pings, attachment and replay bounds.
    pub limits: SocketLimits,
    pub metrics: EdgeMetrics,
    /// See [`AppState::reconnects`].
    pub reconnects: tokio::sync::watch::Receiver<u64>,
    /// See [`AppState::close_sockets`].
    pub close_sockets: CancellationToken,
}

impl SocketContext {
    pub fn from_state(state: &AppState) -> Self {
        Self {
            tokens: state.tokens.clone(),
            message_limit: state.message_limit.clone(),
            answer_limit: state.answer_limit.clone(),
            addr_message_limit: state.addr_message_limit.clone(),
            resume_limit: state.resume_limit.clone(),
            limits: state.socket_limits,
            metrics: state.metrics.clone(),
            reconnects: state.reconnects.clone(),
            close_sockets: state.close_sockets.clone(),
        }
    }
}

/// Drives one client socket of `client` until the client leaves or the edge shuts down; its
/// subscriptions are dropped when it returns.
pub async fn serve<S: ClientSocket, U: Upstream>(
    mut socket: S,
    context: SocketContext,
    upstream: U,
    client: IpAddr,
) {
    let mut connection = Connection {
        context,
        upstream,
        client,
        attached: HashMap::new(),
        uses: 0,
        relays: SelectAll::new(),
        watching: HashMap::new(),
    };
    if let Err(error) = connection.drive(&mut socket).await {
        tracing::debug!(%error, "Socket ended with an error.");
    }
}

struct Connection<U: Upstream> {
    context: SocketContext,
    /// NATS and PostgreSQL.
    upstream: U,
    /// The client's address (behind trusted proxies, the forwarded one).
    client: IpAddr,
    /// Threads this socket relays.
    attached: HashMap<ThreadId, Attachment>,
    /// Counts the client's frames, to find the least recently used attachment.
    uses: u64,
    /// One live relay per attached thread: a registration in the edge's live router, or (with
    /// `LIVE_SUBSCRIPTION=thread`) a NATS subscription of its own.
    relays: SelectAll<Relay<U::Live>>,
    /// Threads this socket watches with an operator token (SPEC §7), not the thread's own: the
    /// token is checked again before relaying, so a revoked one stops the relay.
    watching: HashMap<ThreadId, Watch>,
}

/// An operator token a thread is watched with, and when it was last found valid (tokio's clock,
/// so tests can advance it).
struct Watch {
    token: String,
    checked: tokio::time::Instant,
}

/// How long an operator token that watches a thread is trusted before it is looked up again.
pub(super) const WATCH_RECHECK: Duration = Duration::from_millis(500);

/// One thread this socket relays.
struct Attachment {
    /// The last `seq` written to the socket.
    last: u64,
    /// A resume stopped short (`resume_partial`): live frames wait until the client resumes again.
    behind: bool,
    /// [`Connection::uses`] when the client last named the thread.
    used: u64,
    /// The stream sequence of the thread's message this socket stored last.
    stored: Option<u64>,
    /// Dropping it ends the thread's [`Relay`], and its registration or subscription with it.
    _detach: oneshot::Sender<()>,
}

/// A thread's live subscription, until its attachment is dropped.
struct Relay<L> {
    thread: ThreadId,
    live: L,
    detached: oneshot::Receiver<()>,
    _counted: Counted,
}

impl<L: Stream<Item = LiveEvent> + Unpin> Stream for Relay<L> {
    type Item = (ThreadId, LiveEvent);

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if Pin::new(&mut this.detached).poll(cx).is_ready() {
            return Poll::Ready(None);
        }
        this.live
            .poll_next_unpin(cx)
            .map(|bundle| bundle.map(|bundle| (this.thread.clone(), bundle)))
    }
}

/// Holds one unit of a gauge while it lives.
struct Counted(IntGauge);

impl Counted {
    fn new(gauge: &IntGauge) -> Self {
        gauge.inc();
        Self(gauge.clone())
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Which per-thread budget an accepted frame is charged to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Charged {
    Message,
    Answer,
}

/// Who asked for a replay: a client's `resume` is rate limited; the edge's own catch-ups are not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ReplayOrigin {
    Client,
    Edge,
}

impl<U: Upstream> Connection<U> {
    async fn drive<S: ClientSocket>(&mut self, socket: &mut S) -> Result<(), axum::Error> {
        let close_sockets = self.context.close_sockets.clone();
        let mut reconnects = self.context.reconnects.clone();
        reconnects.mark_unchanged();
        let ping_every = self.context.limits.ping_every;
        let mut pings =
            tokio::time::interval_at(tokio::time::Instant::now() + ping_every, ping_every);
        pings.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Whether the client sent anything (a pong will do) since the last ping.
        let mut heard = true;
        let mut client_pings = PingWindow::default();
        // Handling a frame, a relayed bundle or a catch-up runs in a future of its own on the heap:
        // inline, the largest of them (a `message`'s publish with its retries) would make every
        // socket's task that large while it waits, idle, in this `select!`.
        loop {
            tokio::select! {
                Ok(()) = reconnects.changed() => Box::pin(self.catch_up(socket)).await?,
                () = close_sockets.cancelled() => {
                    let frame = CloseFrame { code: close_code::AWAY, reason: "server shutting down".into() };
                    return socket.send(Message::Close(Some(frame))).await;
                }
                _ = pings.tick() => {
                    if !heard {
                        return self.close(socket, "ping_timeout", close_code::AWAY, "no answer to pings").await;
                    }
                    heard = false;
                    timed(socket.send(Message::Ping(bytes::Bytes::new()))).await?;
                }
                incoming = socket.next() => {
                    let Some(incoming) = incoming else { return Ok(()) };
                    heard = true;
                    let reply = match incoming? {
                        Message::Text(text) => Box::pin(self.handle_text(socket, text.as_str())).await?,
                        Message::Binary(bytes) => Some(self.refuse(binary_frame_error(bytes.len()))),
                        // tungstenite has queued the close reply: send it before leaving.
                        Message::Close(_) => return socket.flush().await,
                        Message::Ping(_) => {
                            if !client_pings.allow() {
                                return self.close(socket, "ping_flood", close_code::POLICY, "too many pings").await;
                            }
                            None
                        }
                        Message::Pong(_) => None,
                    };
                    if let Some(reply) = reply {
                        self.send_own(socket, &reply).await?;
                    }
                }
                Some((thread, relayed)) = self.relays.next(), if !self.relays.is_empty() => {
                    Box::pin(self.relay(socket, thread, relayed)).await?;
                }
            }
        }
    }

    /// Closes the socket on the edge's own initiative (the close is best effort: the client may be
    /// gone).
    async fn close<S: ClientSocket>(
        &self,
        socket: &mut S,
        reason: &'static str,
        code: u16,
        text: &'static str,
    ) -> Result<(), axum::Error> {
        tracing::debug!(reason, "Closing a socket.");
        self.context
            .metrics
            .sockets_closed
            .with_label_values(&[reason])
            .inc();
        let frame = CloseFrame {
            code,
            reason: text.into(),
        };
        timed(socket.send(Message::Close(Some(frame)))).await
    }

    /// The per-thread budget of a kind of frame: `message`s and approval answers have one each.
    fn thread_budget(&self, kind: Charged) -> &MessageBudget<ThreadId> {
        match kind {
            Charged::Message => &self.context.message_limit,
            Charged::Answer => &self.context.answer_limit,
        }
    }

    /// Refuses a `message` or `interrupt_response` past the thread's or the address's budget.
    fn over_budget(&self, thread: &ThreadId, kind: Charged) -> Option<FrameError> {
        let per_thread = self.thread_budget(kind).check(thread);
        let per_addr = self.context.addr_message_limit.check(&self.client);
        let message = match (per_thread, per_addr) {
            (Decision::Limited, _) => {
                "too many messages on this thread; slow down and send it again"
            }
            (_, Decision::Limited) => {
                "too many messages from this address; slow down and send it again"
            }
            _ => return None,
        };
        Some(FrameError::new(ErrorCode::RateLimited, message).on_thread(thread))
    }

    /// Charges an accepted `message` or `interrupt_response` to its budgets.
    fn charge(&self, thread: &ThreadId, kind: Charged) {
        self.thread_budget(kind).charge(thread);
        self.context.addr_message_limit.charge(&self.client);
    }

    /// Validates, then acts on one text frame; the answer, if any, goes back on this socket.
    async fn handle_text<S: ClientSocket>(
        &mut self,
        socket: &mut S,
        text: &str,
    ) -> Result<Option<ServerFrame>, axum::Error> {
        let tokens = &self.context.tokens;
        // An operator token stands in for the thread's token on `resume` only (SPEC §7); it is
        // checked against the operators table below, once the frame is known to be one.
        let mut operator_token = None;
        let frame = match parse_client_frame(text, |thread, token| {
            if tokens.verify(thread, token) {
                return true;
            }
            if token.starts_with(shared::auth::OPERATOR_TOKEN_PREFIX) {
                operator_token = Some(token.to_owned());
                return true;
            }
            false
        }) {
            Ok(frame) => frame,
            Err(error) => return Ok(Some(self.refuse(error))),
        };
        if let Some(token) = operator_token {
            if let Err(error) = self.upstream.authorize_watch(&frame, &token).await {
                return Ok(Some(self.refuse(error)));
            }
            self.watching.insert(
                frame.thread_id().clone(),
                Watch {
                    token,
                    checked: tokio::time::Instant::now(),
                },
            );
        } else {
            // The thread's own token: this socket no longer watches it as an operator.
            self.watching.remove(frame.thread_id());
        }
        self.context
            .metrics
            .frames_in
            .with_label_values(&[frame.kind()])
            .inc();
        let result = match frame {
            ClientFrame::Message {
                thread_id,
                content,
                message_id,
            } => {
                if let Some(error) = self.over_budget(&thread_id, Charged::Message) {
                    return Ok(Some(self.refuse(error)));
                }
                let accepted = self
                    .accept(
                        thread_id.clone(),
                        message_id,
                        InboundKind::Message { content },
                    )
                    .await;
                if accepted.is_ok() {
                    self.charge(&thread_id, Charged::Message);
                }
                accepted
            }
            // Answers cost a worker a turn each, as messages do: a budget of the same size.
            ClientFrame::InterruptResponse {
                thread_id,
                approved,
                interrupt_id,
            } => {
                if let Some(error) = self.over_budget(&thread_id, Charged::Answer) {
                    return Ok(Some(self.refuse(error)));
                }
                let kind = InboundKind::InterruptResponse {
                    approved,
                    interrupt_id,
                };
                let accepted = self.accept(thread_id.clone(), None, kind).await;
                if accepted.is_ok() {
                    self.charge(&thread_id, Charged::Answer);
                }
                accepted
            }
            // A cancel costs a worker little, but it is charged like an answer all the same.
            ClientFrame::Cancel { thread_id, turn_id } => {
                if let Some(error) = self.over_budget(&thread_id, Charged::Answer) {
                    return Ok(Some(self.refuse(error)));
                }
                let accepted = self.cancel(thread_id.clone(), turn_id).await;
                if accepted.is_ok() {
                    self.charge(&thread_id, Charged::Answer);
                }
                accepted
            }
            ClientFrame::RequestHuman { thread_id } => {
                if let Some(error) = self.over_budget(&thread_id, Charged::Answer) {
                    return Ok(Some(self.refuse(error)));
                }
                let accepted = self
                    .accept(thread_id.clone(), None, InboundKind::RequestHuman)
                    .await;
                if accepted.is_ok() {
                    self.charge(&thread_id, Charged::Answer);
                }
                accepted
            }
            ClientFrame::Feedback {
                thread_id,
                target,
                comment,
            } => self
                .upstream
                .feedback(&thread_id, target, comment)
                .await
                .map(|message_id| {
                    Some(ServerFrame::Accepted {
                        thread_id,
                        message_id,
                    })
                }),
            ClientFrame::Resume {
                thread_id,
                after_seq,
            } => match self
                .resume(socket, &thread_id, after_seq, ReplayOrigin::Client)
                .await
            {
                Ok(()) => Ok(None),
                Err(ResumeError::Socket(error)) => return Err(error),
                Err(ResumeError::Frame(error)) => Err(error),
            },
        };
        Ok(match result {
            Ok(reply) => reply,
            Err(error) => Some(self.refuse(error)),
        })
    }

    /// Attaches the socket to the thread, stores the message in JetStream and answers `accepted`.
    /// Each message starts a trace of its own (SPEC §9), which the worker's turn continues.
    #[tracing::instrument(name = "client_message", parent = None, skip_all, fields(thread_id = %thread_id, otel.kind = "producer"))]
    async fn accept(
        &mut self,
        thread_id: ThreadId,
        message_id: Option<MessageId>,
        kind: InboundKind,
    ) -> Result<Option<ServerFrame>, FrameError> {
        // Subscribe before publishing: the reply subject is then live before any worker can answer.
        self.attach(&thread_id).await?;
        let message = InboundMessage {
            message_id: message_id.unwrap_or_else(MessageId::generate),
            thread_id,
            turn_id: TurnId::generate(),
            received_at: chrono::Utc::now(),
            kind,
        };
        self.store(&message).await?;
        Ok(Some(ServerFrame::Accepted {
            thread_id: message.thread_id,
            message_id: message.message_id,
        }))
    }

    /// Stores the `cancel` in the thread's queue (its durable record: the lease holder takes it in
    /// order and re-announces it while it waits), then announces it at once on the thread's cancel
    /// subject, which every worker watches: the turn in progress stops without waiting behind it.
    async fn cancel(
        &mut self,
        thread_id: ThreadId,
        turn_id: Option<TurnId>,
    ) -> Result<Option<ServerFrame>, FrameError> {
        self.attach(&thread_id).await?;
        let message = InboundMessage {
            message_id: MessageId::generate(),
            thread_id,
            turn_id: TurnId::generate(),
            received_at: chrono::Utc::now(),
            kind: InboundKind::Cancel { turn_id },
        };
        let stored_seq = self.store(&message).await?;
        let notice = shared::protocol::bus::CancelNotice {
            thread_id: message.thread_id.clone(),
            before_seq: stored_seq,
            turn_id,
            erased: false,
        };
        self.upstream.announce_cancel(&notice).await;
        Ok(Some(ServerFrame::Accepted {
            thread_id: message.thread_id,
            message_id: message.message_id,
        }))
    }

    /// Stores a message of an attached thread, after the one this socket stored last, if any
    /// (see [`Upstream::store`]).
    async fn store(&mut self, message: &InboundMessage) -> Result<u64, FrameError> {
        let attachment = self.attached.get_mut(&message.thread_id);
        let after = attachment.as_ref().and_then(|attachment| attachment.stored);
        let stored = self.upstream.store(message, after).await?;
        if let Some(attachment) = attachment {
            // A message sent again is answered with its first sequence: never go back.
            attachment.stored = attachment.stored.max(Some(stored));
        }
        Ok(stored)
    }

    /// Starts relaying the thread's reply subject to this socket (once per thread). Past
    /// `WS_MAX_THREADS_PER_SOCKET` the least recently used thread is detached first.
    async fn attach(&mut self, thread: &ThreadId) -> Result<(), FrameError> {
        self.uses += 1;
        if let Some(attachment) = self.attached.get_mut(thread) {
            attachment.used = self.uses;
            return Ok(());
        }
        let live = self.upstream.subscribe(thread).await.map_err(|error| {
            tracing::warn!(%error, thread_id = %thread, "Cannot subscribe to a reply subject.");
            FrameError::new(
                ErrorCode::Busy,
                "the message queue is unavailable; try again",
            )
            .on_thread(thread)
        })?;
        while self.attached.len() >= self.context.limits.max_threads {
            let oldest = self
                .attached
                .iter()
                .min_by_key(|(_, attachment)| attachment.used)
                .map(|(thread, _)| thread.clone());
            match oldest {
                Some(oldest) => {
                    tracing::debug!(thread_id = %oldest, "Detached the least recently used thread.");
                    self.attached.remove(&oldest);
                    self.watching.remove(&oldest);
                }
                None => break,
            }
        }
        let (detach, detached) = oneshot::channel();
        self.relays.push(Relay {
            thread: thread.clone(),
            live,
            detached,
            _counted: Counted::new(&self.context.metrics.subscriptions),
        });
        self.attached.insert(
            thread.clone(),
            Attachment {
                last: 0,
                behind: false,
                used: self.uses,
                stored: None,
                _detach: detach,
            },
        );
        Ok(())
    }

    /// After the edge reconnected to NATS: writes, for every thread this socket has frames of, the
    /// retained frames past the last one it has (live ones published meanwhile never reached it).
    /// A thread with no frame on this socket yet has no known position; its client resumes when
    /// it sees no answer.
    async fn catch_up<S: ClientSocket>(&mut self, socket: &mut S) -> Result<(), axum::Error> {
        let threads: Vec<(ThreadId, u64)> = self
            .attached
            .iter()
            .filter(|(_, attachment)| attachment.last > 0 && !attachment.behind)
            .map(|(thread, attachment)| (thread.clone(), attachment.last))
            .collect();
        for (thread, last) in threads {
            match self.resume(socket, &thread, last, ReplayOrigin::Edge).await {
                Ok(()) => {}
                Err(ResumeError::Socket(error)) => return Err(error),
                Err(ResumeError::Frame(error)) => {
                    let frame = self.refuse(error);
                    self.send_own(socket, &frame).await?;
                }
            }
        }
        Ok(())
    }

    /// Attaches the socket and writes the retained frames with `seq > after_seq` that it does not
    /// have yet, in order: at most `RESUME_MAX_FRAMES`, then `resume_partial` if more are retained.
    async fn resume<S: ClientSocket>(
        &mut self,
        socket: &mut S,
        thread: &ThreadId,
        after_seq: u64,
        origin: ReplayOrigin,
    ) -> Result<(), ResumeError> {
        if origin == ReplayOrigin::Client
            && self.context.resume_limit.check(thread) == Decision::Limited
        {
            let error = FrameError::new(
                ErrorCode::RateLimited,
                "too many resumes of this thread; resume again in a few seconds",
            );
            return Err(ResumeError::Frame(error.on_thread(thread)));
        }
        self.attach(thread).await.map_err(ResumeError::Frame)?;
        let unavailable = |error: &dyn std::fmt::Display| {
            tracing::warn!(%error, thread_id = %thread, "Cannot read retained frames for a resume.");
            ResumeError::Frame(
                FrameError::new(
                    ErrorCode::Busy,
                    "retained frames are unavailable; resume again",
                )
                .on_thread(thread),
            )
        };
        // Frames this socket was already sent are not sent again: a client that resumes from an
        // older position on the same socket gets only what it lacks.
        let already = self
            .attached
            .get(thread)
            .map_or(0, |attachment| attachment.last);
        let mut last_written = after_seq.max(already);
        let mut budget = self.context.limits.resume_max_frames;
        let mut cut_short = false;
        let mut retained = self
            .upstream
            .retained(thread, last_written)
            .await
            .map_err(|e| unavailable(&e))?;
        while let Some(stored) = retained
            .next()
            .await
            .transpose()
            .map_err(|e| unavailable(&e))?
        {
            let written = self
                .write_bundle(
                    socket,
                    stored.headers.as_ref(),
                    &stored.payload,
                    last_written,
                    &mut budget,
                )
                .await
                .map_err(ResumeError::Socket)?;
            last_written = written.last;
            if written.cut_short {
                cut_short = true;
                break;
            }
        }
        // Live frames waiting in the subscription are written only past what was replayed, and
        // not at all while the client still has to resume the rest.
        if let Some(attachment) = self.attached.get_mut(thread) {
            attachment.last = last_written;
            attachment.behind = cut_short;
        }
        if cut_short {
            let partial = ServerFrame::ResumePartial {
                thread_id: thread.clone(),
                last_seq: last_written,
            };
            self.send_own(socket, &partial)
                .await
                .map_err(ResumeError::Socket)?;
        } else {
            timed(socket.flush()).await.map_err(ResumeError::Socket)?;
        }
        Ok(())
    }

    /// Relays a live reply bundle: the frames this socket does not have yet, then one flush. A
    /// bundle past a gap (live messages of this slow socket were dropped: by the router when its
    /// queue was full, or by the NATS client) is not written as is: the socket catches up from the
    /// stream, where the bundle is already stored. So does word from the router that bundles were
    /// dropped, which comes before the bundles still queued, so a turn's last bundle is not lost
    /// for want of a later one.
    async fn relay<S: ClientSocket>(
        &mut self,
        socket: &mut S,
        thread: ThreadId,
        event: LiveEvent,
    ) -> Result<(), axum::Error> {
        if !self.still_watching(socket, &thread).await? {
            return Ok(());
        }
        let Some(attachment) = self.attached.get(&thread) else {
            return Ok(());
        };
        if attachment.behind {
            return Ok(());
        }
        let last = attachment.last;
        let message = match event {
            LiveEvent::Bundle(message) => message,
            // With no frame of the thread on this socket yet, its position is unknown (as after a
            // reconnection, see `catch_up`): the next bundles are written as they come.
            LiveEvent::Missed if last == 0 => return Ok(()),
            LiveEvent::Missed => {
                tracing::debug!(thread_id = %thread, last, "Live bundles were dropped for this socket; catching up.");
                return self.resync(socket, &thread, last).await;
            }
        };
        let first_seq = message
            .headers
            .as_ref()
            .and_then(|headers| headers.get(bundle::FIRST_SEQ_HEADER))
            .and_then(|raw| raw.as_str().parse::<u64>().ok());
        if last > 0 && first_seq.is_some_and(|first| first > last.saturating_add(1)) {
            tracing::debug!(thread_id = %thread, last, ?first_seq, "Live frames skipped a seq; catching up.");
            return self.resync(socket, &thread, last).await;
        }
        let mut unbounded = u64::MAX;
        let written = self
            .write_bundle(
                socket,
                message.headers.as_ref(),
                &message.payload,
                last,
                &mut unbounded,
            )
            .await?;
        if let Some(attachment) = self.attached.get_mut(&thread) {
            attachment.last = written.last;
        }
        timed(socket.flush()).await
    }

    /// Writes the retained frames of a thread past `last` (live ones were lost on the way).
    async fn resync<S: ClientSocket>(
        &mut self,
        socket: &mut S,
        thread: &ThreadId,
        last: u64,
    ) -> Result<(), axum::Error> {
        self.context.metrics.relay_gaps.inc();
        match self.resume(socket, thread, last, ReplayOrigin::Edge).await {
            Ok(()) => Ok(()),
            Err(ResumeError::Socket(error)) => Err(error),
            Err(ResumeError::Frame(error)) => {
                let frame = self.refuse(error);
                self.send_own(socket, &frame).await
            }
        }
    }

    /// Feeds the frames of a bundle with `seq > last_written` to the socket (without flushing),
    /// while `budget` lasts (each frame costs one).
    async fn write_bundle<S: ClientSocket>(
        &self,
        socket: &mut S,
        headers: Option<&async_nats::HeaderMap>,
        payload: &bytes::Bytes,
        last_written: u64,
        budget: &mut u64,
    ) -> Result<Written, axum::Error> {
        let header = |name: &str| {
            headers
                .and_then(|headers| headers.get(name))
                .map(|value| value.as_str())
        };
        let mut last = last_written;
        // Without a first seq (not from our workers) every frame is written.
        let frames = bundle::numbered(
            header(bundle::FRAME_TYPES_HEADER),
            header(bundle::FIRST_SEQ_HEADER),
            payload,
        );
        for bundle::NumberedFrame { kind, seq, frame } in frames {
            if let Some(seq) = seq {
                if seq <= last {
                    continue;
                }
                if *budget == 0 {
                    return Ok(Written {
                        last,
                        cut_short: true,
                    });
                }
                *budget -= 1;
                last = seq;
            }
            match Utf8Bytes::try_from(payload.slice_ref(frame)) {
                Ok(text) => {
                    self.context
                        .metrics
                        .frames_out
                        .with_label_values(&[kind])
                        .inc();
                    timed(socket.feed(Message::Text(text))).await?;
                }
                Err(error) => {
                    tracing::error!(%error, "Dropped a reply frame that is not UTF-8.");
                }
            }
        }
        Ok(Written {
            last,
            cut_short: false,
        })
    }

    /// For a thread watched with an operator token: whether the token is still valid (looked up
    /// at most every [`WATCH_RECHECK`]). A revoked one detaches the thread, with `unauthorized`.
    /// A lookup that fails keeps the relay going.
    async fn still_watching<S: ClientSocket>(
        &mut self,
        socket: &mut S,
        thread: &ThreadId,
    ) -> Result<bool, axum::Error> {
        let Some(watch) = self.watching.get(thread) else {
            return Ok(true);
        };
        if watch.checked.elapsed() < WATCH_RECHECK {
            return Ok(true);
        }
        match self.upstream.operator_token_valid(&watch.token).await {
            Ok(true) | Err(_) => {
                if let Some(watch) = self.watching.get_mut(thread) {
                    watch.checked = tokio::time::Instant::now();
                }
                Ok(true)
            }
            Ok(false) => {
                self.watching.remove(thread);
                self.attached.remove(thread);
                let error = FrameError::new(
                    ErrorCode::Unauthorized,
                    "the operator token was revoked; this thread is no longer relayed",
                )
                .on_thread(thread);
                let frame = self.refuse(error);
                self.send_own(socket, &frame).await?;
                Ok(false)
            }
        }
    }

    fn refuse(&self, error: FrameError) -> ServerFrame {
        self.context
            .metrics
            .errors
            .with_label_values(&[error.code.as_str()])
            .inc();
        ServerFrame::from(error)
    }

    async fn send_own<S: ClientSocket>(
        &self,
        socket: &mut S,
        frame: &ServerFrame,
    ) -> Result<(), axum::Error> {
        let kind = match frame {
            ServerFrame::Accepted { .. } => "accepted",
            ServerFrame::Error { .. } => "error",
            ServerFrame::ResumePartial { .. } => "resume_partial",
        };
        self.context
            .metrics
            .frames_out
            .with_label_values(&[kind])
            .inc();
        match serde_json::to_string(frame) {
            Ok(text) => timed(socket.send(Message::Text(text.into()))).await,
            Err(error) => {
                tracing::error!(%error, "Cannot encode a server frame.");
                Ok(())
            }
        }
    }
}

/// How long one write to a socket may take; a client that stops reading is disconnected.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// A socket write that gives up after [`WRITE_TIMEOUT`].
async fn timed(
    write: impl std::future::Future<Output = Result<(), axum::Error>>,
) -> Result<(), axum::Error> {
    tokio::time::timeout(WRITE_TIMEOUT, write)
        .await
        .unwrap_or_else(|_| Err(axum::Error::new("the client stopped reading")))
}

/// What [`Connection::write_bundle`] wrote.
struct Written {
    /// The last `seq` written (or skipped as already written).
    last: u64,
    /// The budget ran out before the bundle's end.
    cut_short: bool,
}

/// Client pings of the current second.
#[derive(Default)]
struct PingWindow {
    started: Option<Instant>,
    count: u32,
}

impl PingWindow {
    /// Counts one client ping; `false` past [`MAX_CLIENT_PINGS_PER_SEC`].
    fn allow(&mut self) -> bool {
        let now = Instant::now();
        match self.started {
            Some(started) if now.duration_since(started) < Duration::from_secs(1) => {
                self.count += 1;
            }
            _ => {
                self.started = Some(now);
                self.count = 1;
            }
        }
        self.count <= MAX_CLIENT_PINGS_PER_SEC
    }
}

/// Why a `resume` stopped: the socket itself failed, or the client gets an error frame.
enum ResumeError {
    Socket(axum::Error),
    Frame(FrameError),
}

fn binary_frame_error(len: usize) -> FrameError {
    if len > shared::protocol::validate::MAX_FRAME_BYTES {
        FrameError::new(ErrorCode::MessageTooLarge, "frame is larger than 32 KiB")
    } else {
        FrameError::new(ErrorCode::InvalidFrame, "frames must be JSON text frames")
    }
}
