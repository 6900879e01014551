//! What handlers may touch.

use std::net::IpAddr;
use std::sync::Arc;

use shared::auth::ThreadTokens;
use shared::ids::ThreadId;
use shared::subjects::Subjects;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::connection::router::LiveRouter;
use crate::connection::slots::SocketSlots;
use crate::connection::SocketLimits;
use crate::metrics::EdgeMetrics;
use crate::rate_limit::{KeyedLimit, MessageBudget};

#[derive(Clone)]
pub struct AppState {
    pub nats: async_nats::Client,
    pub jetstream: async_nats::jetstream::Context,
    /// `<PREFIX>_IN`: client messages, read by replays.
    pub inbound: Arc<async_nats::jetstream::stream::Stream>,
    /// Whether `inbound` checks a message's condition with its store (one replica), kept current.
    pub inbound_conditions: shared::jetstream::StoreConditions,
    /// `<PREFIX>_OUT`: retained reply frames, replayed on `resume`.
    pub replies: Arc<async_nats::jetstream::stream::Stream>,
    pub db: PgPool,
    pub subjects: Arc<Subjects>,
    pub tokens: Arc<ThreadTokens>,
    /// Accepted `message` frames per thread (this process only).
    pub message_limit: Arc<MessageBudget<ThreadId>>,
    /// Thread creations per client address.
    pub thread_limit: Arc<KeyedLimit<IpAddr>>,
    /// Accepted `interrupt_response` frames per thread, a budget of their own with the numbers of
    /// `message_limit` (which counts messages only, SPEC §3).
    pub answer_limit: Arc<MessageBudget<ThreadId>>,
    /// Accepted `message` and `interrupt_response` frames per client address (this process only).
    pub addr_message_limit: Arc<MessageBudget<IpAddr>>,
    /// `resume` frames per thread (this process only).
    pub resume_limit: Arc<KeyedLimit<ThreadId>>,
    /// Operator actions (`POST /api/operator/*`) per operator (this process only).
    pub operator_limit: Arc<KeyedLimit<uuid::Uuid>>,
    /// `TRUSTED_PROXIES`: read only through [`crate::client_addr`].
    pub trusted_proxies: Arc<shared::config::CidrList>,
    /// Open sockets, in all and per client address.
    pub socket_slots: SocketSlots,
    /// Pings, attachment and replay bounds of each socket.
    pub socket_limits: SocketLimits,
    pub metrics: EdgeMetrics,
    /// `LIVE_SUBSCRIPTION=edge`: the edge's one subscription to every live subject, fanned out to
    /// the sockets; `None` with `thread` (each attachment subscribes on its own).
    pub live_router: Option<Arc<LiveRouter>>,
    /// Counts the edge's (re)connections to NATS: live frames published while it was away never
    /// reached its subscriptions, so each socket catches up from the stream.
    pub reconnects: tokio::sync::watch::Receiver<u64>,
    /// `ALLOWED_ORIGINS`: which browser pages may open sockets and call the API.
    pub origins: Arc<crate::origins::OriginPolicy>,
    /// `ADMIN_TOKEN`; the admin API answers 404 without one.
    pub admin_token: Option<shared::config::Secret>,
    /// Cancelled when sockets must close (after the shutdown grace period).
    pub close_sockets: CancellationToken,
    /// Every socket task, so shutdown can wait for them.
    pub sockets: TaskTracker,
}

impl AppState {
    /// What `/api/health` and `/readyz` check.
    pub fn dependencies(&self) -> shared::health::Dependencies {
        shared::health::Dependencies {
            nats: self.nats.clone(),
            jetstream: self.jetstream.clone(),
            stream: self.subjects.inbound_stream(),
            db: self.db.clone(),
        }
    }
}
