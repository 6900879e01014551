//! `loadgen admin-bench`: the admin API's read routes, one request at a time, each timed.
//!
//! For each case it sends a few untimed warm-up requests, then `requests` timed ones, one after
//! another (so the figures are the server's latency, not queueing), and checks every answer is a
//! `200` with a JSON body.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use hdrhistogram::Histogram;
use serde::Serialize;
use serde_json::Value;

use crate::stats::{histogram, record};

/// What to time.
pub(crate) struct Options {
    pub(crate) url: String,
    pub(crate) admin_token: String,
    pub(crate) requests: usize,
    pub(crate) warmup: usize,
    /// `q` for the search case that matches few conversations.
    pub(crate) rare_query: String,
    /// `q` for the search case that matches many.
    pub(crate) common_query: String,
    /// Pages to follow before timing the "later page" case.
    pub(crate) page_depth: usize,
}

/// One case's figures, in milliseconds.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct CaseReport {
    pub(crate) case: String,
    pub(crate) path: String,
    pub(crate) requests: usize,
    pub(crate) p50_ms: f64,
    pub(crate) p95_ms: f64,
    pub(crate) max_ms: f64,
    /// Items in the answer: conversations listed, timeline events, or analytics buckets.
    pub(crate) items: usize,
}

pub(crate) const MARKDOWN_HEADER: &str =
    "| case | request | items | p50 ms | p95 ms | max ms |\n|---|---|---|---|---|---|";

impl CaseReport {
    pub(crate) fn markdown_row(&self) -> String {
        format!(
            "| {} | `{}` | {} | {:.1} | {:.1} | {:.1} |",
            self.case, self.path, self.items, self.p50_ms, self.p95_ms, self.max_ms
        )
    }
}

struct Client {
    http: reqwest::Client,
    base: String,
    token: String,
}

impl Client {
    /// `GET path`; the JSON body of a `200`, and how long it took.
    async fn get(&self, path: &str) -> anyhow::Result<(Value, Duration)> {
        let started = Instant::now();
        let response = self
            .http
            .get(format!("{}{path}", self.base))
            .bearer_auth(&self.token)
            .send()
            .await
            .with_context(|| format!("GET {path}"))?;
        let status = response.status();
        let body: Value = response
            .json()
            .await
            .with_context(|| format!("GET {path}: the body is not JSON"))?;
        let elapsed = started.elapsed();
        anyhow::ensure!(status.is_success(), "GET {path}: {status} {body}");
        Ok((body, elapsed))
    }
}

/// Runs every case; the reports in the order they ran.
pub(crate) async fn run(options: &Options) -> anyhow::Result<Vec<CaseReport>> {
    let client = Client {
        http: reqwest::Client::new(),
        base: options.url.trim_end_matches('/').to_owned(),
        token: options.admin_token.clone(),
    };
    let (first_page, _) = client.get("/api/admin/conversations").await?;
    let listed = first_page["conversations"]
        .as_array()
        .context("the list has no conversations array")?;
    anyhow::ensure!(
        !listed.is_empty(),
        "no conversations: seed the database first (loadgen seed)"
    );
    // The busiest conversation of the first page, for the timeline.
    let busiest = listed
        .iter()
        .max_by_key(|conversation| conversation["messages"].as_i64().unwrap_or_default())
        .and_then(|conversation| conversation["id"].as_str())
        .context("a conversation without an id")?
        .to_owned();
    // Follow the cursor `page_depth` pages down for the "later page" case.
    let mut cursor = first_page["next_cursor"].as_str().map(str::to_owned);
    for _ in 1..options.page_depth {
        let Some(current) = &cursor else { break };
        let (page, _) = client
            .get(&format!("/api/admin/conversations?cursor={current}"))
            .await?;
        cursor = page["next_cursor"].as_str().map(str::to_owned);
    }
    let cursor = cursor.context("the list ended before the page to time")?;

    let cases = [
        ("analytics 24h", "/api/admin/analytics?range=24h".to_owned()),
        ("analytics 7d", "/api/admin/analytics?range=7d".to_owned()),
        ("analytics 30d", "/api/admin/analytics?range=30d".to_owned()),
        ("list, first page", "/api/admin/conversations".to_owned()),
        (
            "list, status filter",
            "/api/admin/conversations?status=escalated".to_owned(),
        ),
        (
            "list, agent filter",
            "/api/admin/conversations?agent=billing".to_owned(),
        ),
        (
            "list, q (rare word)",
            format!("/api/admin/conversations?q={}", options.rare_query),
        ),
        (
            "list, q (common word)",
            format!("/api/admin/conversations?q={}", options.common_query),
        ),
        (
            "list, later page",
            format!("/api/admin/conversations?cursor={cursor}"),
        ),
        (
            "timeline",
            format!("/api/admin/conversations/{busiest}/timeline"),
        ),
    ];
    let mut reports = Vec::with_capacity(cases.len());
    for (case, path) in cases {
        reports.push(time_case(&client, case, &path, options).await?);
    }
    Ok(reports)
}

async fn time_case(
    client: &Client,
    case: &str,
    path: &str,
    options: &Options,
) -> anyhow::Result<CaseReport> {
    for _ in 0..options.warmup {
        client.get(path).await?;
    }
    let mut timings: Histogram<u64> = histogram();
    let mut items = 0;
    for _ in 0..options.requests {
        let (body, elapsed) = client.get(path).await?;
        record(&mut timings, elapsed);
        items = body["conversations"]
            .as_array()
            .or_else(|| body["events"].as_array())
            .or_else(|| body["series"].as_array())
            .map_or(0, Vec::len);
    }
    let ms = |micros: u64| micros as f64 / 1000.0;
    Ok(CaseReport {
        case: case.to_owned(),
        path: path.to_owned(),
        requests: options.requests,
        p50_ms: ms(timings.value_at_quantile(0.50)),
        p95_ms: ms(timings.value_at_quantile(0.95)),
        max_ms: ms(timings.max()),
        items,
    })
}
