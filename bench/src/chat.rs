//! The pipeline: N WebSocket clients against a running edge, each on its own thread, each sending
//! M messages one after another and timing `accepted`, the first token and `message_complete`.

use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use futures_util::{SinkExt as _, StreamExt as _};
use serde::Deserialize;
use tokio_tungstenite::tungstenite::Message;

use crate::stats::{record, Measured};

#[derive(Debug, Deserialize)]
struct NewThread {
    thread_id: String,
    token: String,
}

/// Only what the client needs of a frame.
#[derive(Debug, Deserialize)]
struct FrameHead<'a> {
    #[serde(rename = "type", borrow)]
    kind: &'a str,
    #[serde(default)]
    code: Option<&'a str>,
}

/// A thread of the client's, with its socket.
struct Conversation {
    thread: NewThread,
    socket: tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
}

/// Creates a thread and opens a socket.
async fn open(http: &reqwest::Client, base_url: &str) -> anyhow::Result<Conversation> {
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
    let ws_url = format!("{}/ws", base_url.replacen("http", "ws", 1));
    let (socket, _) = tokio_tungstenite::connect_async_with_config(&ws_url, None, true)
        .await
        .with_context(|| format!("connect {ws_url}"))?;
    Ok(Conversation { thread, socket })
}

/// One client: create a thread, connect, run `messages` turns back to back.
pub(crate) async fn client(
    http: reqwest::Client,
    base_url: String,
    messages: usize,
    turn_timeout: Duration,
) -> anyhow::Result<Measured> {
    let mut conversation = open(&http, &base_url).await?;
    let mut measured = Measured::new();
    for i in 0..messages {
        turn(&mut conversation, i, turn_timeout, &mut measured).await?;
    }
    let _ = conversation.socket.close(None).await;
    Ok(measured)
}

/// One client of `--windows`: from `start`, turns back to back until `windows` × `window`
/// has passed, a new thread every `messages` turns; each turn is counted in the window it ended
/// in (a turn that ends after the last window is not counted).
pub(crate) async fn windowed_client(
    http: reqwest::Client,
    base_url: String,
    messages: usize,
    turn_timeout: Duration,
    start: Instant,
    window: Duration,
    windows: usize,
) -> anyhow::Result<Vec<Measured>> {
    let mut measured: Vec<Measured> = (0..windows).map(|_| Measured::new()).collect();
    let end = window.saturating_mul(u32::try_from(windows).unwrap_or(u32::MAX));
    'threads: while start.elapsed() < end {
        let mut conversation = open(&http, &base_url).await?;
        for i in 0..messages.max(1) {
            if start.elapsed() >= end {
                let _ = conversation.socket.close(None).await;
                break 'threads;
            }
            let mut one = Measured::new();
            turn(&mut conversation, i, turn_timeout, &mut one).await?;
            let index = (start.elapsed().as_secs_f64() / window.as_secs_f64().max(1e-9)) as usize;
            if let Some(slot) = measured.get_mut(index) {
                slot.merge(&one);
            }
        }
        let _ = conversation.socket.close(None).await;
    }
    Ok(measured)
}

/// One turn: send message `i`, read frames up to `message_complete`.
async fn turn(
    conversation: &mut Conversation,
    i: usize,
    turn_timeout: Duration,
    measured: &mut Measured,
) -> anyhow::Result<()> {
    let Conversation { thread, socket } = conversation;
    let frame = serde_json::json!({
        "type": "message", "thread_id": thread.thread_id, "token": thread.token,
        "content": format!("Where is my order {}?", 1001 + i % 10),
    });
    let started = Instant::now();
    socket
        .send(Message::Text(frame.to_string().into()))
        .await
        .context("send")?;
    let mut saw_token = false;
    loop {
        let next = tokio::time::timeout(turn_timeout, socket.next())
            .await
            .context("turn timed out")?;
        let text = match next {
            Some(Ok(Message::Text(text))) => text,
            Some(Ok(Message::Close(_))) | None => bail!("socket closed mid-turn"),
            Some(Ok(_)) => continue,
            Some(Err(error)) => return Err(error).context("socket error"),
        };
        let head: FrameHead<'_> = serde_json::from_str(text.as_str()).context("frame JSON")?;
        measured.frames += 1;
        match head.kind {
            "accepted" => record(&mut measured.accepted, started.elapsed()),
            "token" if !saw_token => {
                saw_token = true;
                record(&mut measured.first_token, started.elapsed());
            }
            "message_complete" => {
                record(&mut measured.turn, started.elapsed());
                measured.turns += 1;
                return Ok(());
            }
            "error" => bail!("error frame: {}", head.code.unwrap_or("?")),
            _ => {}
        }
    }
}
