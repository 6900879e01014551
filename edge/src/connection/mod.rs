//! One socket's life. A single task reads client frames and relays reply frames, so that while a
//! client message waits for JetStream's ack no reply frame is written: a message's `accepted`
//! always precedes the frames of its turn (SPEC §3), and the socket's frames are handled in order.
//!
//! For each attached thread the socket remembers the last `seq` it wrote. A `resume` subscribes to
//! the live subject first (live frames wait in the subscription), writes the retained frames after
//! `after_seq` from `<PREFIX>_OUT`, and then relays live frames past the last one written: no gap
//! and no duplicate at the seam.
//!
//! Bounds (docs/operations.md, "Limits"): a socket relays at most `WS_MAX_THREADS_PER_SOCKET`
//! threads (the least recently used is detached, its subscription dropped); one `resume` replays
//! at most `RESUME_MAX_FRAMES` frames and then sends `resume_partial`, holding the thread's live
//! frames back until the client resumes again from that frame's `last_seq`; a resume never replays
//! what the socket already has; the edge pings every `WS_PING_SECS` and closes a socket that sent
//! nothing, not even a pong, since its previous ping; a client sending more than
//! [`MAX_CLIENT_PINGS_PER_SEC`] pings a second is closed (1008). Live frames that skip a `seq` (the
//! NATS client drops messages of a slow consumer) are re-read from `<PREFIX>_OUT` at once.

pub mod slots;

use std::collections::HashMap;
use std::future::Future as _;
use std::net::IpAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use async_nats::jetstream::context::PublishErrorKind;
use axum::extract::ws::{close_code, CloseFrame, Message, Utf8Bytes, WebSocket};
use backon::{ExponentialBuilder, Retryable as _};
use futures_util::stream::SelectAll;
use futures_util::{SinkExt as _, Stream, StreamExt as _};
use prometheus::IntGauge;
use shared::ids::{MessageId, ThreadId, TurnId};
use shared::protocol::bus::{bundle, InboundKind, InboundMessage};
use shared::protocol::validate::parse_client_frame;
use shared::protocol::{ClientFrame, ErrorCode, FrameError, ServerFrame};
use shared::retained::BundleReader;
use shared::subjects::Subjects;
use tokio::sync::oneshot;

use self::slots::SocketSlot;
use crate::rate_limit::{Decision, MessageBudget};
use crate::state::AppState;

/// Client pings allowed per second; past it the socket is closed (a ping flood costs the edge a
/// wake-up and a pong each).
pub const MAX_CLIENT_PINGS_PER_SEC: u32 = 10;

/// The bounds of one socket, from `EdgeLimits`.
#[derive(Debug, Clone, Copy)]
pub struct SocketLimits {
    /// `WS_PING_SECS`.
    pub ping_every: Duration,
    /// `WS_MAX_THREADS_PER_SOCKET`.
    pub max_threads: usize,
    /// `RESUME_MAX_FRAMES`.
    pub resume_max_frames: u64,
}

impl SocketLimits {
    pub fn from_settings(limits: &shared::config::EdgeLimits) -> Self {
        Self {
            ping_every: Duration::from_secs(limits.ws_ping_secs),
            max_threads: usize::try_from(limits.ws_max_threads_per_socket).unwrap_or(usize::MAX),
            resume_max_frames: limits.resume_max_frames,
        }
    }
}

/// Drives one WebSocket until the client leaves or the edge shuts down.
#[tracing::instrument(name = "socket", skip_all)]
pub async fn run(mut socket: WebSocket, state: AppState, slot: SocketSlot) {
    state.metrics.connections.inc();
    let mut connection = Connection {
        state: state.clone(),
        client: slot.addr(),
        attached: HashMap::new(),
        uses: 0,
        relays: SelectAll::new(),
        watching: HashMap::new(),
    };
    if let Err(error) = connection.drive(&mut socket).await {
        tracing::debug!(%error, "Socket ended with an error.");
    }
    // Subscriptions go before the slot: a refused upgrade never waits on a closing socket.
    drop(connection);
    drop(slot);
    state.metrics.connections.dec();
}

struct Connection {
    state: AppState,
    /// The client's address (behind trusted proxies, the forwarded one).
    client: IpAddr,
    /// Threads this socket relays.
    attached: HashMap<ThreadId, Attachment>,
    /// Counts the client's frames, to find the least recently used attachment.
    uses: u64,
    /// One live subscription per attached thread's reply subject.
    relays: SelectAll<Relay>,
    /// Threads this socket watches with an operator token (SPEC §7), not the thread's own: the
    /// token is checked again before relaying, so a revoked one stops the relay.
    watching: HashMap<ThreadId, Watch>,
}

/// An operator token a thread is watched with, and when it was last found valid.
struct Watch {
    token: String,
    checked: Instant,
}

/// How long an operator token that watches a thread is trusted before it is looked up again.
const WATCH_RECHECK: Duration = Duration::from_millis(500);

/// One thread this socket relays.
struct Attachment {
    /// The last `seq` written to the socket.
    last: u64,
    /// A resume stopped short (`resume_partial`): live frames wait until the client resumes again.
    behind: bool,
    /// [`Connection::uses`] when the client last named the thread.
    used: u64,
    /// Dropping it ends the thread's [`Relay`], and its subscription with it.
    _detach: oneshot::Sender<()>,
}

/// A thread's live subscription, until its attachment is dropped.
struct Relay {
    subscriber: async_nats::Subscriber,
    detached: oneshot::Receiver<()>,
    _counted: Counted,
}

impl Stream for Relay {
    type Item = async_nats::Message;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if Pin::new(&mut this.detached).poll(cx).is_ready() {
            return Poll::Ready(None);
        }
        this.subscriber.poll_next_unpin(cx)
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

impl Connection {
    async fn drive(&mut self, socket: &mut WebSocket) -> Result<(), axum::Error> {
        let close_sockets = self.state.close_sockets.clone();
        let mut reconnects = self.state.reconnects.clone();
        reconnects.mark_unchanged();
        let ping_every = self.state.socket_limits.ping_every;
        let mut pings =
            tokio::time::interval_at(tokio::time::Instant::now() + ping_every, ping_every);
        pings.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Whether the client sent anything (a pong will do) since the last ping.
        let mut heard = true;
        let mut client_pings = PingWindow::default();
        loop {
            tokio::select! {
                Ok(()) = reconnects.changed() => self.catch_up(socket).await?,
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
                incoming = socket.recv() => {
                    let Some(incoming) = incoming else { return Ok(()) };
                    heard = true;
                    let reply = match incoming? {
                        Message::Text(text) => self.handle_text(socket, text.as_str()).await?,
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
                Some(relayed) = self.relays.next(), if !self.relays.is_empty() => {
                    self.relay(socket, relayed).await?;
                }
            }
        }
    }

    /// Closes the socket on the edge's own initiative (the close is best effort: the client may be
    /// gone).
    async fn close(
        &self,
        socket: &mut WebSocket,
        reason: &'static str,
        code: u16,
        text: &'static str,
    ) -> Result<(), axum::Error> {
        tracing::debug!(reason, "Closing a socket.");
        self.state
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
            Charged::Message => &self.state.message_limit,
            Charged::Answer => &self.state.answer_limit,
        }
    }

    /// Refuses a `message` or `interrupt_response` past the thread's or the address's budget.
    fn over_budget(&self, thread: &ThreadId, kind: Charged) -> Option<FrameError> {
        let per_thread = self.thread_budget(kind).check(thread);
        let per_addr = self.state.addr_message_limit.check(&self.client);
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
        self.state.addr_message_limit.charge(&self.client);
    }

    /// Validates, then acts on one text frame; the answer, if any, goes back on this socket.
    async fn handle_text(
        &mut self,
        socket: &mut WebSocket,
        text: &str,
    ) -> Result<Option<ServerFrame>, axum::Error> {
        let tokens = &self.state.tokens;
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
            if let Err(error) =
                crate::routes::operator::authorize_watch(&self.state, &frame, &token).await
            {
                return Ok(Some(self.refuse(error)));
            }
            self.watching.insert(
                frame.thread_id().clone(),
                Watch {
                    token,
                    checked: Instant::now(),
                },
            );
        } else {
            // The thread's own token: this socket no longer watches it as an operator.
            self.watching.remove(frame.thread_id());
        }
        self.state
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
            } => crate::routes::operator::feedback(&self.state, &thread_id, target, comment)
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
        self.publish(&message).await?;
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
        let stored_seq = self.publish(&message).await?;
        let notice = shared::protocol::bus::CancelNotice {
            thread_id: message.thread_id.clone(),
            before_seq: stored_seq,
            turn_id,
            erased: false,
        };
        match serde_json::to_vec(&notice) {
            Ok(payload) => {
                let subject = self.state.subjects.cancels(&message.thread_id);
                if let Err(error) = self.state.nats.publish(subject, payload.into()).await {
                    // The stored cancel is announced again by the worker that takes its delivery.
                    tracing::warn!(%error, "Cannot announce a cancel; its stored copy will be.");
                }
            }
            Err(error) => tracing::error!(%error, "Cannot encode a cancel notice."),
        }
        Ok(Some(ServerFrame::Accepted {
            thread_id: message.thread_id,
            message_id: message.message_id,
        }))
    }

    /// Stores a client message in `<PREFIX>_IN`; returns its stream sequence.
    async fn publish(&self, message: &InboundMessage) -> Result<u64, FrameError> {
        let thread = &message.thread_id;
        let busy = || {
            FrameError::new(
                ErrorCode::Busy,
                "the message queue is unavailable; nothing was stored, send it again",
            )
            .on_thread(thread)
        };
        // While disconnected the client would buffer the publish and send it after reconnecting,
        // possibly after the client was told `busy`: refuse it here instead.
        if self.state.nats.connection_state() != async_nats::connection::State::Connected {
            return Err(busy());
        }
        let payload = message.to_bytes().map_err(|error| {
            tracing::error!(%error, "Cannot encode an inbound message.");
            FrameError::new(ErrorCode::Internal, "internal error").on_thread(thread)
        })?;
        let dedup_id = Subjects::message_dedup_id(thread, &message.message_id);
        let started = Instant::now();
        let trace_context = shared::telemetry::trace_headers();
        // A failure after the message left may hide a stored message: send the same message id
        // again (JetStream stores it once) before telling the client it was not stored.
        let stored = (|| async {
            let publish = async_nats::jetstream::message::PublishMessage::build()
                .headers(trace_context.clone())
                .payload(payload.clone())
                .message_id(&dedup_id);
            self.state
                .jetstream
                .send_publish(self.state.subjects.inbound(thread), publish)
                .await?
                .await
        })
        .retry(
            ExponentialBuilder::default()
                .with_min_delay(Duration::from_millis(50))
                .with_max_times(2),
        )
        .when(|error| {
            matches!(
                error.kind(),
                PublishErrorKind::TimedOut | PublishErrorKind::BrokenPipe | PublishErrorKind::Other
            )
        })
        .await;
        match stored {
            Ok(ack) => {
                self.state
                    .metrics
                    .publish_seconds
                    .observe(started.elapsed().as_secs_f64());
                Ok(ack.sequence)
            }
            Err(error) => {
                tracing::warn!(%error, thread_id = %thread, "JetStream did not store a client message.");
                Err(busy())
            }
        }
    }

    /// Starts relaying the thread's reply subject to this socket (once per thread). Past
    /// `WS_MAX_THREADS_PER_SOCKET` the least recently used thread is detached first.
    async fn attach(&mut self, thread: &ThreadId) -> Result<(), FrameError> {
        self.uses += 1;
        if let Some(attachment) = self.attached.get_mut(thread) {
            attachment.used = self.uses;
            return Ok(());
        }
        let subscriber = self
            .state
            .nats
            .subscribe(self.state.subjects.live(thread))
            .await
            .map_err(|error| {
                tracing::warn!(%error, thread_id = %thread, "Cannot subscribe to a reply subject.");
                FrameError::new(
                    ErrorCode::Busy,
                    "the message queue is unavailable; try again",
                )
                .on_thread(thread)
            })?;
        while self.attached.len() >= self.state.socket_limits.max_threads {
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
            subscriber,
            detached,
            _counted: Counted::new(&self.state.metrics.subscriptions),
        });
        self.attached.insert(
            thread.clone(),
            Attachment {
                last: 0,
                behind: false,
                used: self.uses,
                _detach: detach,
            },
        );
        Ok(())
    }

    /// After the edge reconnected to NATS: writes, for every thread this socket has frames of, the
    /// retained frames past the last one it has (live ones published meanwhile never reached it).
    /// A thread with no frame on this socket yet has no known position; its client resumes when
    /// it sees no answer.
    async fn catch_up(&mut self, socket: &mut WebSocket) -> Result<(), axum::Error> {
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
    async fn resume(
        &mut self,
        socket: &mut WebSocket,
        thread: &ThreadId,
        after_seq: u64,
        origin: ReplayOrigin,
    ) -> Result<(), ResumeError> {
        if origin == ReplayOrigin::Client
            && self.state.resume_limit.check(thread) == Decision::Limited
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
        let subject = self.state.subjects.replies(thread);
        let mut last_written = after_seq.max(already);
        let mut budget = self.state.socket_limits.resume_max_frames;
        let mut cut_short = false;
        let mut retained = BundleReader::after(&self.state.replies, &subject, last_written)
            .await
            .map_err(|e| unavailable(&e))?;
        while let Some(stored) = retained.next().await.map_err(|e| unavailable(&e))? {
            let written = self
                .write_bundle(
                    socket,
                    Some(&stored.headers),
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
    /// bundle past a gap (the NATS client dropped live messages of this slow socket) is not
    /// written as is: the socket catches up from the stream, where the bundle is already stored.
    async fn relay(
        &mut self,
        socket: &mut WebSocket,
        message: async_nats::Message,
    ) -> Result<(), axum::Error> {
        let Some(thread) = self.state.subjects.thread_of_live(&message.subject) else {
            return Ok(());
        };
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
        let first_seq = message
            .headers
            .as_ref()
            .and_then(|headers| headers.get(bundle::FIRST_SEQ_HEADER))
            .and_then(|raw| raw.as_str().parse::<u64>().ok());
        if last > 0 && first_seq.is_some_and(|first| first > last.saturating_add(1)) {
            self.state.metrics.relay_gaps.inc();
            tracing::debug!(thread_id = %thread, last, ?first_seq, "Live frames skipped a seq; catching up.");
            return match self.resume(socket, &thread, last, ReplayOrigin::Edge).await {
                Ok(()) => Ok(()),
                Err(ResumeError::Socket(error)) => Err(error),
                Err(ResumeError::Frame(error)) => {
                    let frame = self.refuse(error);
                    self.send_own(socket, &frame).await
                }
            };
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

    /// Feeds the frames of a bundle with `seq > last_written` to the socket (without flushing),
    /// while `budget` lasts (each frame costs one).
    async fn write_bundle(
        &self,
        socket: &mut WebSocket,
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
                    self.state
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
    async fn still_watching(
        &mut self,
        socket: &mut WebSocket,
        thread: &ThreadId,
    ) -> Result<bool, axum::Error> {
        let Some(watch) = self.watching.get(thread) else {
            return Ok(true);
        };
        if watch.checked.elapsed() < WATCH_RECHECK {
            return Ok(true);
        }
        match crate::routes::operator::authenticate(&self.state, &watch.token).await {
            Ok(Some(_)) | Err(_) => {
                if let Some(watch) = self.watching.get_mut(thread) {
                    watch.checked = Instant::now();
                }
                Ok(true)
            }
            Ok(None) => {
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
        self.state
            .metrics
            .errors
            .with_label_values(&[error.code.as_str()])
            .inc();
        ServerFrame::from(error)
    }

    async fn send_own(
        &self,
        socket: &mut WebSocket,
        frame: &ServerFrame,
    ) -> Result<(), axum::Error> {
        let kind = match frame {
            ServerFrame::Accepted { .. } => "accepted",
            ServerFrame::Error { .. } => "error",
            ServerFrame::ResumePartial { .. } => "resume_partial",
        };
        self.state
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
