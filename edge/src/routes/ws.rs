//! `GET /ws`: the upgrade only; the socket's life is in [`crate::connection`].

use std::sync::Arc;

use axum::extract::ws::WebSocketUpgrade;
use axum::extract::State;
use axum::http::{HeaderMap, Uri};
use axum::response::{IntoResponse as _, Response};
use shared::protocol::validate::MAX_FRAME_BYTES;

use crate::client_addr::ClientAddr;
use crate::connection::slots::SlotRefused;
use crate::error::ApiError;
use crate::state::AppState;

/// Frames above this close the socket at the WebSocket layer (1009). Between `MAX_FRAME_BYTES`
/// and this, the frame is read and answered with `message_too_large`, and the socket stays open.
const MAX_WS_MESSAGE_BYTES: usize = 8 * MAX_FRAME_BYTES;

/// tungstenite reads into a buffer of this size, allocated up front and held for the socket's life
/// (its default, 128 KiB, would cost an idle socket 128 KiB of memory). Client frames are small: a
/// larger one (up to `MAX_WS_MESSAGE_BYTES`) grows the buffer to its size and is read in pieces of
/// this size. 1 KiB holds a typical `message` frame in one read.
const READ_BUFFER_BYTES: usize = 1024;

/// Frames of one reply bundle are gathered up to this size before a write to the socket.
const WRITE_BUFFER_BYTES: usize = 16 * 1024;

/// Output a client does not read may pile up to this before the socket is dropped.
const MAX_WRITE_BUFFER_BYTES: usize = 4 * 1024 * 1024;

/// Upgrades the connection, unless a page of an origin that `ALLOWED_ORIGINS` does not allow
/// opened it (403; browsers apply no CORS to WebSockets: without this check any site could open
/// sockets to the edge from its visitors' browsers) or a socket cap is reached (429 / 503).
pub(super) async fn upgrade(
    ws: WebSocketUpgrade,
    State(state): State<AppState>,
    ClientAddr(client): ClientAddr,
    headers: HeaderMap,
    uri: Uri,
) -> Response {
    if !state.origins.allows(&headers, &uri) {
        return ApiError::ForbiddenOrigin.into_response();
    }
    let slot = match state.socket_slots.take(client) {
        Ok(slot) => slot,
        Err(refused) => return refuse(&state, refused),
    };
    // Shared, not cloned: every byte a socket's task holds is held 10,000 times on a busy edge.
    let state = Arc::new(state);
    ws.read_buffer_size(READ_BUFFER_BYTES)
        .write_buffer_size(WRITE_BUFFER_BYTES)
        .max_write_buffer_size(MAX_WRITE_BUFFER_BYTES)
        .max_message_size(MAX_WS_MESSAGE_BYTES)
        .max_frame_size(MAX_WS_MESSAGE_BYTES)
        .on_upgrade(move |socket| {
            let sockets = state.sockets.clone();
            sockets.track_future(crate::connection::run(socket, state, slot))
        })
}

/// 429 when the client's address has too many sockets open, 503 when the edge is full.
fn refuse(state: &AppState, refused: SlotRefused) -> Response {
    let (reason, error) = match refused {
        SlotRefused::AddressFull => ("address_full", ApiError::TooManySockets),
        SlotRefused::Full => ("full", ApiError::EdgeFull),
    };
    state
        .metrics
        .sockets_refused
        .with_label_values(&[reason])
        .inc();
    error.into_response()
}
