//! Idle sockets: opens N WebSocket connections, holds them, and reads the edge's resident memory.
//! With `attached`, each socket first creates a thread of its own and `resume`s it, so the edge
//! holds a live relay per socket (a router queue, or with `LIVE_SUBSCRIPTION=thread` a NATS
//! subscription) as it does for a client waiting for its answer.

use std::time::Duration;

use anyhow::{bail, Context as _};
use futures_util::stream::{self, StreamExt as _};
use futures_util::SinkExt as _;
use serde::Deserialize;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// How long one socket may take to open (and attach).
const OPEN_TIMEOUT: Duration = Duration::from_secs(60);

/// Resident set size of a process, in KiB, from /proc.
pub(crate) fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("read /proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|kib| kib.parse().ok())
        .context("VmRSS not found")
}

#[derive(Debug, Deserialize)]
struct NewThread {
    thread_id: String,
    token: String,
}

/// Opens one socket; with `http`, creates a thread and attaches the socket to it with `resume`.
async fn open(
    ws_url: &str,
    base_url: &str,
    http: Option<&reqwest::Client>,
) -> anyhow::Result<Socket> {
    // The client's own buffers stay small: 10,000 sockets of tungstenite's default 128 KiB read
    // buffer would cost this process 1.3 GB.
    let config = WebSocketConfig::default().read_buffer_size(4 * 1024);
    let (mut socket, _) = tokio_tungstenite::connect_async_with_config(ws_url, Some(config), true)
        .await
        .with_context(|| format!("connect {ws_url}"))?;
    let Some(http) = http else {
        return Ok(socket);
    };
    let response = http
        .post(format!("{base_url}/api/threads"))
        .json(&serde_json::json!({}))
        .send()
        .await
        .context("POST /api/threads")?;
    if !response.status().is_success() {
        bail!(
            "POST /api/threads answered {} (is THREADS_PER_MINUTE=0 set on the edge?)",
            response.status()
        );
    }
    let thread: NewThread = response.json().await.context("thread JSON")?;
    let resume = serde_json::json!({
        "type": "resume",
        "thread_id": thread.thread_id,
        "token": thread.token,
        "after_seq": 0,
    });
    socket.send(Message::text(resume.to_string())).await?;
    // A `resume` of a thread with no frames is not answered. The edge handles a socket's frames
    // in order, so the error answering an invalid frame sent next proves the resume was handled
    // (and its subscription made) or refused, which would have come first.
    socket.send(Message::text(r#"{"type":"resume"}"#)).await?;
    while let Some(message) = socket.next().await {
        let Message::Text(text) = message? else {
            continue;
        };
        let frame: serde_json::Value = serde_json::from_str(&text)?;
        let code = frame["code"].as_str().unwrap_or_default();
        if code == "invalid_frame" {
            return Ok(socket);
        }
        bail!("resume refused: {text}");
    }
    bail!("the socket closed before the resume was handled")
}

pub(crate) async fn run(
    url: &str,
    connections: usize,
    edge_pid: Option<u32>,
    hold: Duration,
    attached: bool,
) -> anyhow::Result<serde_json::Value> {
    let ws_url = format!("{}/ws", url.replacen("http", "ws", 1));
    let http = attached.then(reqwest::Client::new);
    let before = edge_pid.map(rss_kib).transpose()?;
    let sockets: Vec<_> = stream::iter(0..connections)
        .map(|_| {
            let (ws_url, http) = (&ws_url, http.as_ref());
            async move {
                tokio::time::timeout(OPEN_TIMEOUT, open(ws_url, url, http))
                    .await
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("timed out")))
            }
        })
        .buffer_unordered(256)
        .collect()
        .await;
    let mut open_sockets = Vec::with_capacity(connections);
    let mut failed = 0usize;
    let mut first_error = None;
    for socket in sockets {
        match socket {
            Ok(socket) => open_sockets.push(socket),
            Err(error) => {
                failed += 1;
                first_error.get_or_insert(error);
            }
        }
    }
    if let Some(error) = &first_error {
        eprintln!("first failure: {error:#}");
    }
    eprintln!(
        "{} sockets open{}, {failed} failed; holding for {hold:?}",
        open_sockets.len(),
        if attached { " and attached" } else { "" },
    );
    tokio::time::sleep(hold).await;
    let after = edge_pid.map(rss_kib).transpose()?;
    let report = serde_json::json!({
        "mode": "idle",
        "attached": attached,
        "connections": open_sockets.len(),
        "failed": failed,
        "edge_rss_before_mib": before.map(|k| k as f64 / 1024.0),
        "edge_rss_mib": after.map(|k| k as f64 / 1024.0),
        "edge_rss_per_socket_kib": match (before, after) {
            (Some(b), Some(a)) if !open_sockets.is_empty() => Some(a.saturating_sub(b) as f64 / open_sockets.len() as f64),
            _ => None,
        },
    });
    drop(open_sockets);
    Ok(report)
}
