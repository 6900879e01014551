//! Idle sockets: opens N WebSocket connections, holds them, and reads the edge's resident memory.

use std::time::Duration;

use anyhow::Context as _;
use futures_util::stream::{self, StreamExt as _};

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

pub(crate) async fn run(
    url: &str,
    connections: usize,
    edge_pid: Option<u32>,
    hold: Duration,
) -> anyhow::Result<serde_json::Value> {
    let ws_url = format!("{}/ws", url.replacen("http", "ws", 1));
    let before = edge_pid.map(rss_kib).transpose()?;
    let sockets: Vec<_> = stream::iter(0..connections)
        .map(|_| {
            let ws_url = ws_url.clone();
            async move { tokio_tungstenite::connect_async_with_config(&ws_url, None, true).await }
        })
        .buffer_unordered(256)
        .collect()
        .await;
    let mut open = Vec::with_capacity(connections);
    let mut failed = 0usize;
    for socket in sockets {
        match socket {
            Ok((socket, _)) => open.push(socket),
            Err(_) => failed += 1,
        }
    }
    eprintln!(
        "{} sockets open, {failed} failed; holding for {hold:?}",
        open.len()
    );
    tokio::time::sleep(hold).await;
    let after = edge_pid.map(rss_kib).transpose()?;
    let report = serde_json::json!({
        "mode": "idle",
        "connections": open.len(),
        "failed": failed,
        "edge_rss_before_mib": before.map(|k| k as f64 / 1024.0),
        "edge_rss_mib": after.map(|k| k as f64 / 1024.0),
        "edge_rss_per_socket_kib": match (before, after) {
            (Some(b), Some(a)) if !open.is_empty() => Some(a.saturating_sub(b) as f64 / open.len() as f64),
            _ => None,
        },
    });
    drop(open);
    Ok(report)
}
