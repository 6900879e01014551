//! One socket's life. A single task reads client frames and relays reply frames, so that while a
//! client message waits for JetStream's ack no reply frame is written: a message's `accepted`
//! always precedes the frames of its turn (SPEC §3), and the socket's frames are handled in order.
//!
//! For each attached thread the socket remembers the last `seq` it wrote. A `resume` subscribes to
//! the live subject first (live frames wait in the subscription), writes the retained frames after
//! `after_seq` from `<PREFIX>_OUT`, and then relays live frames past the last one written: no gap
//! and no duplicate at the seam.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use async_nats::jetstream::context::PublishErrorKind;
use axum::extract::ws::{close_code, CloseFrame, Message, Utf8Bytes, WebSocket};
use backon::{ExponentialBuilder, Retryable as _};
use futures_util::stream::SelectAll;
use futures_util::{SinkExt as _, StreamExt as _};
use shared::ids::{MessageId, ThreadId, TurnId};
use shared::protocol::bus::{bundle, InboundKind, InboundMessage};
use shared::protocol::validate::parse_client_frame;
use shared::protocol::{ClientFrame, ErrorCode, FrameError, ServerFrame};
use shared::retained::BundleReader;
use shared::subjects::Subjects;

use crate::rate_limit::Decision;
use crate::state::AppState;

/// Drives one WebSocket until the client leaves or the edge shuts down.
#[tracing::instrument(name = "socket", skip_all)]
pub async fn run(mut socket: WebSocket, state: AppState) {
    state.metrics.connections.inc();
    let mut connection = Connection {
        state: state.clone(),
        attached: HashMap::new(),
        relays: SelectAll::new(),
    };
    if let Err(error) = connection.drive(&mut socket).await {
        tracing::debug!(%error, "Socket ended with an error.");
    }
    state.metrics.connections.dec();
}

struct Connection {
    state: AppState,
    /// Threads this socket relays, with the last `seq` written to it for each.
    attached: HashMap<ThreadId, u64>,
    /// One live subscription per attached thread's reply subject.
    relays: SelectAll<async_nats::Subscriber>,
}

impl Connection {
    async fn drive(&mut self, socket: &mut WebSocket) -> Result<(), axum::Error> {
        let close_sockets = self.state.close_sockets.clone();
        let mut reconnects = self.state.reconnects.clone();
        reconnects.mark_unchanged();
        loop {
            tokio::select! {
                Ok(()) = reconnects.changed() => self.catch_up(socket).await?,
                () = close_sockets.cancelled() => {
                    let frame = CloseFrame { code: close_code::AWAY, reason: "server shutting down".into() };
                    return socket.send(Message::Close(Some(frame))).await;
                }
                incoming = socket.recv() => {
                    let Some(incoming) = incoming else { return Ok(()) };
                    let reply = match incoming? {
                        Message::Text(text) => self.handle_text(socket, text.as_str()).await?,
                        Message::Binary(bytes) => Some(self.refuse(binary_frame_error(bytes.len()))),
                        // tungstenite has queued the close reply: send it before leaving.
                        Message::Close(_) => return socket.flush().await,
                        Message::Ping(_) | Message::Pong(_) => None,
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

    /// Validates, then acts on one text frame; the answer, if any, goes back on this socket.
    async fn handle_text(
        &mut self,
        socket: &mut WebSocket,
        text: &str,
    ) -> Result<Option<ServerFrame>, axum::Error> {
        let tokens = &self.state.tokens;
        let frame = match parse_client_frame(text, |thread, token| tokens.verify(thread, token)) {
            Ok(frame) => frame,
            Err(error) => return Ok(Some(self.refuse(error))),
        };
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
                if self.state.message_limit.check(&thread_id) == Decision::Limited {
                    let error = FrameError::new(
                        ErrorCode::RateLimited,
                        "too many messages on this thread; slow down and send it again",
                    );
                    return Ok(Some(self.refuse(error.on_thread(&thread_id))));
                }
                let accepted = self
                    .accept(
                        thread_id.clone(),
                        message_id,
                        InboundKind::Message { content },
                    )
                    .await;
                if accepted.is_ok() {
                    self.state.message_limit.charge(&thread_id);
                }
                accepted
            }
            ClientFrame::InterruptResponse {
                thread_id,
                approved,
                interrupt_id,
            } => {
                let kind = InboundKind::InterruptResponse {
                    approved,
                    interrupt_id,
                };
                self.accept(thread_id, None, kind).await
            }
            ClientFrame::Resume {
                thread_id,
                after_seq,
            } => match self.resume(socket, &thread_id, after_seq).await {
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

    async fn publish(&self, message: &InboundMessage) -> Result<(), FrameError> {
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
            Ok(_ack) => {
                self.state
                    .metrics
                    .publish_seconds
                    .observe(started.elapsed().as_secs_f64());
                Ok(())
            }
            Err(error) => {
                tracing::warn!(%error, thread_id = %thread, "JetStream did not store a client message.");
                Err(busy())
            }
        }
    }

    /// Starts relaying the thread's reply subject to this socket (once per thread).
    async fn attach(&mut self, thread: &ThreadId) -> Result<(), FrameError> {
        if self.attached.contains_key(thread) {
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
        self.relays.push(subscriber);
        self.attached.insert(thread.clone(), 0);
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
            .filter(|(_, last)| **last > 0)
            .map(|(thread, last)| (thread.clone(), *last))
            .collect();
        for (thread, last) in threads {
            match self.resume(socket, &thread, last).await {
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

    /// Attaches the socket and writes the retained frames with `seq > after_seq`, in order.
    async fn resume(
        &mut self,
        socket: &mut WebSocket,
        thread: &ThreadId,
        after_seq: u64,
    ) -> Result<(), ResumeError> {
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
        let subject = self.state.subjects.replies(thread);
        let mut last_written = after_seq;
        let mut retained = BundleReader::after(&self.state.replies, &subject, after_seq)
            .await
            .map_err(|e| unavailable(&e))?;
        while let Some(stored) = retained.next().await.map_err(|e| unavailable(&e))? {
            last_written = self
                .write_bundle(socket, Some(&stored.headers), &stored.payload, last_written)
                .await
                .map_err(ResumeError::Socket)?;
        }
        timed(socket.flush()).await.map_err(ResumeError::Socket)?;
        // Live frames waiting in the subscription are written only past what was replayed.
        if let Some(last) = self.attached.get_mut(thread) {
            *last = last_written;
        }
        Ok(())
    }

    /// Relays a live reply bundle: the frames this socket does not have yet, then one flush.
    async fn relay(
        &mut self,
        socket: &mut WebSocket,
        message: async_nats::Message,
    ) -> Result<(), axum::Error> {
        let Some(thread) = self.state.subjects.thread_of_live(&message.subject) else {
            return Ok(());
        };
        let last = self.attached.get(&thread).copied().unwrap_or_default();
        let written = self
            .write_bundle(socket, message.headers.as_ref(), &message.payload, last)
            .await?;
        if let Some(last) = self.attached.get_mut(&thread) {
            *last = written;
        }
        timed(socket.flush()).await
    }

    /// Feeds the frames of a bundle with `seq > last_written` to the socket (without flushing);
    /// returns the new last written `seq`.
    async fn write_bundle(
        &self,
        socket: &mut WebSocket,
        headers: Option<&async_nats::HeaderMap>,
        payload: &bytes::Bytes,
        last_written: u64,
    ) -> Result<u64, axum::Error> {
        let header = |name: &str| {
            headers
                .and_then(|headers| headers.get(name))
                .map(|value| value.as_str())
        };
        let mut types = header(bundle::FRAME_TYPES_HEADER).unwrap_or("").split(',');
        // Without a first seq (not from our workers) every frame is written.
        let first_seq = header(bundle::FIRST_SEQ_HEADER).and_then(|raw| raw.parse::<u64>().ok());
        let mut last = last_written;
        for (index, frame) in bundle::frames(payload).enumerate() {
            let kind = types.next().unwrap_or("unknown");
            if let Some(first) = first_seq {
                let seq = first + index as u64;
                if seq <= last {
                    continue;
                }
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
        Ok(last)
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
