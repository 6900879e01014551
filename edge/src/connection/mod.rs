//! One socket's life. A single task reads client frames and relays reply frames, so that while a
//! client message waits for JetStream's ack no reply frame is written: a message's `accepted`
//! always precedes the frames of its turn (SPEC §3), and the socket's frames are handled in order.
//!
//! For each attached thread the socket remembers the last `seq` it wrote. A `resume` attaches to
//! the live subject first (live frames wait in the socket's queue), writes the retained frames
//! after `after_seq` from `<PREFIX>_OUT`, and then relays live frames past the last one written:
//! no gap and no duplicate at the seam. Attaching is a registration in the edge's [`router`],
//! which fans the edge's one subscription to every live subject out to the sockets
//! (`LIVE_SUBSCRIPTION=edge`), or a NATS subscription per attached thread (`thread`).
//!
//! Bounds (docs/operations.md, "Limits"): a socket relays at most `WS_MAX_THREADS_PER_SOCKET`
//! threads (the least recently used is detached, its subscription dropped); one `resume` replays
//! at most `RESUME_MAX_FRAMES` frames and then sends `resume_partial`, holding the thread's live
//! frames back until the client resumes again from that frame's `last_seq`; a resume never replays
//! what the socket already has; the edge pings every `WS_PING_SECS` and closes a socket that sent
//! nothing, not even a pong, since its previous ping; a client sending more than
//! [`MAX_CLIENT_PINGS_PER_SEC`] pings a second is closed (1008). A socket's live queue per thread
//! holds at most [`router::QUEUE_BUNDLES`] bundles; past it the router drops bundles for that socket
//! only and tells it so. Live frames that were dropped (by the router, or by the NATS client for a
//! slow consumer: frames that skip a `seq`) are re-read from `<PREFIX>_OUT` at once.
//!
//! `session.rs` holds this state machine, generic over the socket ([`ClientSocket`]: axum's
//! `WebSocket`, or channels in unit tests) and over [`upstream::Upstream`], the NATS and
//! PostgreSQL calls a socket makes; [`run`] plugs in the real socket and [`AppState`].

pub mod router;
mod session;
pub mod slots;
#[cfg(test)]
mod tests;
pub mod upstream;

use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::WebSocket;

pub use self::session::{serve, ClientSocket, SocketContext};
use self::slots::SocketSlot;
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
pub async fn run(socket: WebSocket, state: Arc<AppState>, slot: SocketSlot) {
    state.metrics.connections.inc();
    let context = SocketContext::from_state(&state);
    // Subscriptions go (when `serve` returns) before the slot: a refused upgrade never waits on
    // a closing socket.
    session::serve(socket, context, Arc::clone(&state), slot.addr()).await;
    drop(slot);
    state.metrics.connections.dec();
}
