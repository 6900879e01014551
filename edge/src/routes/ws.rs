//! `GET /ws`: the upgrade only; the socket's life is in [`crate::connection`].

use axum::extract::ws::WebSocketUpgrade;
use axum::extract::State;
use axum::response::Response;
use shared::protocol::validate::MAX_FRAME_BYTES;

use crate::state::AppState;

/// Frames above this close the socket at the WebSocket layer (1009). Between `MAX_FRAME_BYTES`
/// and this, the frame is read and answered with `message_too_large`, and the socket stays open.
const MAX_WS_MESSAGE_BYTES: usize = 8 * MAX_FRAME_BYTES;

pub(super) async fn upgrade(ws: WebSocketUpgrade, State(state): State<AppState>) -> Response {
    ws.max_message_size(MAX_WS_MESSAGE_BYTES)
        .max_frame_size(MAX_WS_MESSAGE_BYTES)
        .on_upgrade(move |socket| {
            let sockets = state.sockets.clone();
            sockets.track_future(crate::connection::run(socket, state))
        })
}
