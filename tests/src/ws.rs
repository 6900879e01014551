//! A WebSocket client that speaks the chat protocol, with a timeout on every wait.

use std::time::Duration;

use futures_util::{SinkExt as _, StreamExt as _};
use serde_json::Value;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::{Thread, WAIT};

pub struct WsClient {
    socket: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

impl WsClient {
    pub async fn connect(url: &str) -> Self {
        let (socket, _) = tokio::time::timeout(
            WAIT,
            tokio_tungstenite::connect_async_with_config(url, None, true),
        )
        .await
        .expect("WebSocket connect timed out")
        .expect("WebSocket connects");
        Self { socket }
    }

    /// Opens a socket as a page of `origin` would (its `Origin` header); the HTTP status of the
    /// answer if the edge refuses the upgrade.
    pub async fn connect_from_origin(url: &str, origin: &str) -> Result<Self, u16> {
        Self::try_connect_with(url, &[("origin", origin)]).await
    }

    /// Connects with extra request headers (e.g. `X-Forwarded-For`); the HTTP status if the server
    /// refuses the upgrade.
    pub async fn try_connect_with(url: &str, headers: &[(&str, &str)]) -> Result<Self, u16> {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
        let mut request = url.into_client_request().expect("a WebSocket URL");
        for (name, value) in headers {
            request.headers_mut().append(
                tokio_tungstenite::tungstenite::http::HeaderName::from_bytes(name.as_bytes())
                    .expect("a header name"),
                value.parse().expect("a header value"),
            );
        }
        let connected = tokio::time::timeout(
            WAIT,
            tokio_tungstenite::connect_async_with_config(request, None, true),
        )
        .await
        .expect("WebSocket connect timed out");
        match connected {
            Ok((socket, _)) => Ok(Self { socket }),
            Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
                Err(response.status().as_u16())
            }
            Err(error) => panic!("WebSocket connect failed: {error}"),
        }
    }

    pub async fn send(&mut self, frame: &Value) {
        self.send_text(frame.to_string()).await;
    }

    /// Sends a frame; `false` if the socket is gone (for example closed by the server).
    pub async fn try_send(&mut self, frame: &Value) -> bool {
        self.socket
            .send(Message::Text(frame.to_string().into()))
            .await
            .is_ok()
    }

    pub async fn send_text(&mut self, text: String) {
        self.socket
            .send(Message::Text(text.into()))
            .await
            .expect("send a frame");
    }

    /// Sends a WebSocket ping; `false` if the socket is gone.
    pub async fn send_ping(&mut self) -> bool {
        self.socket
            .send(Message::Ping(Vec::new().into()))
            .await
            .is_ok()
    }

    pub async fn send_binary(&mut self, bytes: Vec<u8>) {
        self.socket
            .send(Message::Binary(bytes.into()))
            .await
            .expect("send a binary frame");
    }

    /// The next text frame, as JSON. Panics on timeout or close.
    pub async fn next_frame(&mut self) -> Value {
        loop {
            let message = tokio::time::timeout(WAIT, self.socket.next())
                .await
                .expect("timed out waiting for a frame")
                .expect("socket closed")
                .expect("socket error");
            match message {
                Message::Text(text) => {
                    return serde_json::from_str(text.as_str()).expect("frames are JSON")
                }
                Message::Close(frame) => panic!("socket closed by the server: {frame:?}"),
                _ => continue,
            }
        }
    }

    /// The next frame, or the close frame's code if the server closes the socket.
    pub async fn next_frame_or_close(&mut self) -> Result<Value, Option<u16>> {
        self.next_frame_within(WAIT)
            .await
            .expect("timed out waiting for a frame or close")
    }

    /// Like [`WsClient::next_frame_or_close`], but `None` if nothing arrives within `wait` (the
    /// socket stays usable).
    pub async fn next_frame_within(
        &mut self,
        wait: Duration,
    ) -> Option<Result<Value, Option<u16>>> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let message = tokio::time::timeout_at(deadline, self.socket.next())
                .await
                .ok()?;
            let frame = match message {
                Some(Ok(Message::Text(text))) => {
                    Ok(serde_json::from_str(text.as_str()).expect("frames are JSON"))
                }
                Some(Ok(Message::Close(frame))) => Err(frame.map(|f| u16::from(f.code))),
                Some(Ok(_)) => continue,
                Some(Err(_)) | None => Err(None),
            };
            return Some(frame);
        }
    }

    /// Frames up to and including the first that satisfies `last`.
    pub async fn frames_until(&mut self, last: impl Fn(&Value) -> bool) -> Vec<Value> {
        let mut frames = Vec::new();
        loop {
            let frame = self.next_frame().await;
            let done = last(&frame);
            frames.push(frame);
            if done {
                return frames;
            }
        }
    }

    /// Frames up to and including the next frame of type `kind`.
    pub async fn frames_until_type(&mut self, kind: &str) -> Vec<Value> {
        self.frames_until(|frame| frame["type"] == kind).await
    }

    /// The next frame, which must be of type `kind`.
    pub async fn expect_type(&mut self, kind: &str) -> Value {
        let frame = self.next_frame().await;
        assert_eq!(frame["type"], kind, "unexpected frame: {frame}");
        frame
    }

    /// Sends `content` on `thread`; returns its turn's frames through `message_complete` or
    /// `interrupt`, after `accepted` and the opening `user_message` (SPEC §7), which is checked.
    pub async fn ask(&mut self, thread: &Thread, content: &str) -> Vec<Value> {
        self.send(&thread.message(content)).await;
        self.expect_type("accepted").await;
        let opening = self.expect_type("user_message").await;
        assert_eq!(opening["content"], content);
        self.frames_until(|frame| {
            matches!(
                frame["type"].as_str(),
                Some("message_complete" | "interrupt")
            )
        })
        .await
    }

    /// The next frame, which must be an `error` with `code`.
    pub async fn expect_error(&mut self, code: &str) -> Value {
        let frame = self.expect_type("error").await;
        assert_eq!(frame["code"], code, "unexpected error: {frame}");
        frame
    }
}

/// The `type` of each frame.
pub fn types(frames: &[Value]) -> Vec<&str> {
    frames.iter().filter_map(|f| f["type"].as_str()).collect()
}

/// The `seq` of each frame that has one.
pub fn seqs(frames: &[Value]) -> Vec<u64> {
    frames.iter().filter_map(|f| f["seq"].as_u64()).collect()
}

/// The concatenated `content` of the `token` frames.
pub fn tokens_text(frames: &[Value]) -> String {
    frames
        .iter()
        .filter(|f| f["type"] == "token")
        .filter_map(|f| f["content"].as_str())
        .collect()
}
