//! Load generator for Smart Support.
//!
//! `loadgen chat` runs N concurrent WebSocket clients against an edge (each creates its own thread
//! and sends M messages back to back) and, with `--floor`, the same traffic through bare NATS in
//! the same run (`--floor-only`: the floor alone, no edge needed); with `--cpu-pids` / `--cpu-procs` / `--cpu-database-url` it reports the CPU time
//! each process spent per turn, and with `--windows` it runs back-to-back windows on the same
//! stack to show whether a turn's cost stays flat as the database grows. `loadgen idle` holds N idle sockets (with `--attached`, each
//! `resume`d on a thread of its own) and reads the edge's memory. `loadgen seed`
//! fills an empty database with conversations, and `loadgen admin-bench` times the admin API's
//! read routes against it. `loadgen soak` runs a fixed turn rate for a long time with approvals,
//! socket drops and resumes (and optionally cancels), and checks that every turn ends exactly once,
//! on the wire and in PostgreSQL (`scripts/soak.sh` runs it around a full stack).

mod admin_bench;
mod chat;
mod cpu;
mod floor;
mod idle;
mod seed;
mod soak;
mod stats;

use std::io::Write as _;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use stats::{Measured, Report, MARKDOWN_HEADER};

#[derive(Debug, Parser)]
#[command(name = "loadgen", version, about = "Load generator for Smart Support")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Concurrent chat clients, each on its own thread, messages back to back.
    Chat(ChatArgs),
    /// Idle sockets held open; reports the edge's resident memory.
    Idle(IdleArgs),
    /// Fills an empty database with conversations (through the real migrations).
    Seed(SeedArgs),
    /// Times the admin API's read routes: analytics, the conversation list, a timeline.
    AdminBench(AdminBenchArgs),
    /// A long run at a fixed turn rate with approvals, drops, resumes (and optionally cancels);
    /// fails if a turn is lost or duplicated, on the wire or in the `turns` table.
    Soak(SoakArgs),
}

#[derive(Debug, clap::Args)]
struct ChatArgs {
    /// The edge's base URL.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    url: String,
    /// Concurrent clients (each with its own thread and socket).
    #[arg(long, default_value_t = 50)]
    connections: usize,
    /// Messages each client sends, one after another.
    #[arg(long, default_value_t = 20)]
    messages: usize,
    /// Also measure the bare NATS floor, in the same run, with the same shape.
    #[arg(long)]
    floor: bool,
    /// Measure only the floor (no edge needed): to profile it, or to run it back to back with a
    /// `--windows` run of the pipeline.
    #[arg(long)]
    floor_only: bool,
    /// NATS for the floor.
    #[arg(long, default_value = "nats://127.0.0.1:4222")]
    nats_url: String,
    /// Tokens per reply in the floor (frames per turn = tokens + 1); match SCRIPTED_REPLY_TOKENS.
    #[arg(long, default_value_t = 20)]
    tokens: usize,
    /// A turn that takes longer fails the run.
    #[arg(long, default_value_t = 120)]
    turn_timeout_secs: u64,
    /// Append the figures and this command to a markdown file (e.g. BENCHMARKS.md).
    #[arg(long)]
    append_to: Option<std::path::PathBuf>,
    /// A label for the appended block.
    #[arg(long)]
    label: Option<String>,
    /// CPU per turn of these processes: `label=PID,label=PID` (e.g. `edge=123,worker=456`).
    #[arg(long)]
    cpu_pids: Option<String>,
    /// CPU per turn of every process with one of these names, summed by name (e.g.
    /// `nats-server,postgres`; each counts the children it reaped, so exited PostgreSQL backends
    /// count).
    #[arg(long)]
    cpu_procs: Option<String>,
    /// CPU per turn of the backends connected to this database (`postgres_db`).
    #[arg(long)]
    cpu_database_url: Option<String>,
    /// Run this many back-to-back windows of `--window-secs` instead of a fixed number of
    /// messages: every client runs turns until the last window ends, on a new thread every
    /// `--messages` turns; prints each window's figures and the last/first ratios.
    #[arg(long, default_value_t = 0)]
    windows: usize,
    /// The length of each window.
    #[arg(long, default_value_t = 60)]
    window_secs: u64,
}

#[derive(Debug, clap::Args)]
struct IdleArgs {
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    url: String,
    #[arg(long, default_value_t = 10_000)]
    connections: usize,
    /// The edge's process id, to read its resident memory.
    #[arg(long)]
    edge_pid: Option<u32>,
    /// How long to hold the sockets before measuring.
    #[arg(long, default_value_t = 5)]
    hold_secs: u64,
    /// Attach each socket to a thread of its own with `resume` (one live relay each: a queue in
    /// the edge's router, or a NATS subscription with `LIVE_SUBSCRIPTION=thread`; needs
    /// `THREADS_PER_MINUTE=0` on the edge).
    #[arg(long)]
    attached: bool,
    #[arg(long)]
    append_to: Option<std::path::PathBuf>,
}

#[derive(Debug, clap::Args)]
struct SeedArgs {
    /// `--database-url` / `DATABASE_URL`: created and migrated if missing.
    #[command(flatten)]
    database: shared::config::DatabaseSettings,
    /// Conversations to create.
    #[arg(long, default_value_t = 100_000)]
    conversations: i64,
    /// Spread them over this many days before now.
    #[arg(long, default_value_t = 30.0)]
    days: f64,
}

#[derive(Debug, clap::Args)]
struct AdminBenchArgs {
    /// The edge's base URL.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    url: String,
    /// The edge's `ADMIN_TOKEN`.
    #[arg(long, env = "ADMIN_TOKEN")]
    admin_token: String,
    /// Timed requests per case, one after another.
    #[arg(long, default_value_t = 200)]
    requests: usize,
    /// Untimed requests per case before the timed ones.
    #[arg(long, default_value_t = 5)]
    warmup: usize,
    /// `q` for the search that matches few conversations (a seeded order number).
    #[arg(long, default_value = "4711")]
    rare_query: String,
    /// `q` for the search that matches many.
    #[arg(long, default_value = "invoice")]
    common_query: String,
    /// The "later page" case times the page reached after following this many cursors.
    #[arg(long, default_value_t = 20)]
    page_depth: usize,
    /// Append the figures and this command to a markdown file (e.g. BENCHMARKS.md).
    #[arg(long)]
    append_to: Option<std::path::PathBuf>,
    /// A label for the appended block.
    #[arg(long)]
    label: Option<String>,
}

#[derive(Debug, clap::Args)]
struct SoakArgs {
    /// The edge's base URL.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    url: String,
    /// New messages per second, over all clients (a token bucket).
    #[arg(long)]
    rate: f64,
    /// How long to send, in seconds (turns in progress then finish).
    #[arg(long, default_value_t = 1800)]
    secs: u64,
    /// Virtual users, each with one socket and one thread at a time.
    #[arg(long, default_value_t = 64)]
    clients: usize,
    /// Turns per thread before a user moves to a new thread (on the same socket).
    #[arg(long, default_value_t = 20)]
    turns_per_thread: u32,
    /// Share of messages that raise an approval ("Cancel order N", "Refund order N").
    #[arg(long, default_value_t = 0.2)]
    approval_share: f64,
    /// Share of approvals answered `approved: true` (the others are rejected).
    #[arg(long, default_value_t = 0.5)]
    approve_share: f64,
    /// Share of turns whose socket is dropped (before `accepted`, mid-turn or after the turn),
    /// then reconnected with `resume`.
    #[arg(long, default_value_t = 0.05)]
    drop_share: f64,
    /// Send `cancel` frames (SPEC §8) for some turns.
    #[arg(long, env = "SOAK_CANCELS", value_parser = clap::builder::BoolishValueParser::new())]
    cancels: bool,
    /// Share of turns cancelled when `--cancels` is on.
    #[arg(long, default_value_t = 0.05)]
    cancel_share: f64,
    /// A turn that has not ended after this long is counted lost.
    #[arg(long, default_value_t = 150)]
    turn_timeout_secs: u64,
    /// Cross-check the `turns` table of this database at the end.
    #[arg(long)]
    database_url: Option<String>,
    /// Seconds between progress lines on stderr.
    #[arg(long, default_value_t = 30)]
    progress_secs: u64,
    /// Also write the summary (JSON) here.
    #[arg(long)]
    json_out: Option<std::path::PathBuf>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // reqwest is built without a default TLS crypto provider (the worker picks ring): pick it here.
    let _ = async_nats::rustls::crypto::ring::default_provider().install_default();
    match Cli::parse().command {
        Command::Chat(args) => chat(args).await,
        Command::Idle(args) => {
            let report = idle::run(
                &args.url,
                args.connections,
                args.edge_pid,
                Duration::from_secs(args.hold_secs),
                args.attached,
            )
            .await?;
            println!("{report}");
            if let Some(path) = &args.append_to {
                append(path, &format!("```\n{}\n```\n{report}\n", command_line()))?;
            }
            Ok(())
        }
        Command::Seed(args) => {
            let summary = seed::run(&args.database, args.conversations, args.days).await?;
            println!("{summary}");
            Ok(())
        }
        Command::AdminBench(args) => admin_bench(args).await,
        Command::Soak(args) => soak(args).await,
    }
}

async fn soak(args: SoakArgs) -> anyhow::Result<()> {
    if args.rate.is_nan() || args.rate <= 0.0 {
        anyhow::bail!("--rate must be a positive number of messages per second");
    }
    let options = soak::Options {
        url: args.url,
        rate: args.rate,
        duration: Duration::from_secs(args.secs),
        clients: args.clients.max(1),
        turns_per_thread: args.turns_per_thread.max(1),
        approval_share: args.approval_share,
        approve_share: args.approve_share,
        drop_share: args.drop_share,
        cancels: args.cancels,
        cancel_share: args.cancel_share,
        turn_timeout: Duration::from_secs(args.turn_timeout_secs),
        database_url: args.database_url,
        progress_every: Duration::from_secs(args.progress_secs),
    };
    let summary = soak::run(options).await?;
    let json = serde_json::to_string(&summary)?;
    println!("{json}");
    if let Some(path) = &args.json_out {
        std::fs::write(path, format!("{json}\n"))
            .with_context(|| format!("write {}", path.display()))?;
    }
    if !summary.ok {
        anyhow::bail!(
            "turns were lost or duplicated (or frames duplicated or skipped): see the summary"
        );
    }
    Ok(())
}

async fn admin_bench(args: AdminBenchArgs) -> anyhow::Result<()> {
    let options = admin_bench::Options {
        url: args.url,
        admin_token: args.admin_token,
        requests: args.requests,
        warmup: args.warmup,
        rare_query: args.rare_query,
        common_query: args.common_query,
        page_depth: args.page_depth,
    };
    let reports = admin_bench::run(&options).await?;
    let mut table = format!("{}\n", admin_bench::MARKDOWN_HEADER);
    for report in &reports {
        table.push_str(&report.markdown_row());
        table.push('\n');
    }
    print!("{table}");
    println!("{}", serde_json::json!({ "admin_bench": reports }));
    if let Some(path) = &args.append_to {
        let mut block = String::new();
        if let Some(label) = &args.label {
            block.push_str(&format!("#### {label}\n\n"));
        }
        // The token is a secret: `command_line` writes it as "$ADMIN_TOKEN".
        block.push_str(&format!("```\n{}\n```\n\n{table}", command_line()));
        append(path, &block)?;
    }
    Ok(())
}

async fn chat(args: ChatArgs) -> anyhow::Result<()> {
    let cpu = cpu::Targets::parse(
        args.cpu_pids.as_deref(),
        args.cpu_procs.as_deref(),
        args.cpu_database_url.clone(),
    )?;
    if args.windows > 0 {
        if args.floor || args.floor_only {
            anyhow::bail!("--windows does not run the floor: measure it in a run of its own");
        }
        return windows(args, cpu).await;
    }
    let turn_timeout = Duration::from_secs(args.turn_timeout_secs);
    let mut reports = Vec::new();
    let mut cpu_line = None;
    if !args.floor_only {
        let (pipeline, line) = run_pipeline(&args, &cpu, turn_timeout).await?;
        reports.push(pipeline);
        cpu_line = line;
    }

    if args.floor || args.floor_only {
        // CPU of the floor: nats-server (from `--cpu-procs`) and this process, which is the
        // floor's clients and its worker.
        let cpu = cpu.clone().with_pid("loadgen", std::process::id());
        let cpu_before = cpu.snapshot().await?;
        let floor = std::sync::Arc::new(floor::Floor::start(&args.nats_url, args.tokens).await?);
        let started = Instant::now();
        let clients: Vec<_> = (0..args.connections)
            .map(|_| {
                let floor = floor.clone();
                let (messages, tokens) = (args.messages, args.tokens);
                tokio::spawn(async move { floor.client(messages, tokens, turn_timeout).await })
            })
            .collect();
        let measured = gather(clients).await;
        let wall = started.elapsed();
        let cpu_after = cpu.snapshot().await?;
        if let Ok(floor) = std::sync::Arc::try_unwrap(floor) {
            floor.stop().await;
        }
        let mut floor = Report::new("floor", args.connections, args.messages, &measured?, wall);
        let per_turn = cpu_before.per_turn(&cpu_after, floor.turns);
        println!("floor CPU ms per turn: {}", per_turn.line());
        floor.cpu = Some(per_turn);
        reports.push(floor);
    }

    let mut table = format!("{MARKDOWN_HEADER}\n");
    for report in &reports {
        table.push_str(&report.markdown_row());
        table.push('\n');
    }
    let ratio = match reports.as_slice() {
        [pipeline, floor] => Some(pipeline.turns_per_sec / floor.turns_per_sec.max(f64::EPSILON)),
        _ => None,
    };
    let first_token_vs_floor_turn = match reports.as_slice() {
        [pipeline, floor] => {
            Some(pipeline.first_token_ms.p99 / floor.turn_ms.p99.max(f64::EPSILON))
        }
        _ => None,
    };
    print!("{table}");
    if let Some(line) = &cpu_line {
        println!("{line}");
    }
    if let Some(ratio) = ratio {
        println!("pipeline / floor turns/s: {:.1}%", ratio * 100.0);
    }
    let json = serde_json::json!({
        "reports": reports,
        "pipeline_over_floor_turns": ratio,
        "first_token_p99_over_floor_turn_p99": first_token_vs_floor_turn,
    });
    println!("{json}");
    if let Some(path) = &args.append_to {
        let mut block = String::new();
        if let Some(label) = &args.label {
            block.push_str(&format!("#### {label}\n\n"));
        }
        block.push_str(&format!("```\n{}\n```\n\n{table}", command_line()));
        if let Some(line) = &cpu_line {
            block.push_str(&format!("\n{line}\n"));
        }
        if let (Some(ratio), Some(ft)) = (ratio, first_token_vs_floor_turn) {
            block.push_str(&format!(
                "\npipeline / floor turns/s: **{:.1}%**; pipeline first-token p99 / floor turn p99: **{ft:.2}×**\n",
                ratio * 100.0
            ));
        }
        append(path, &block)?;
    }
    Ok(())
}

/// The pipeline's clients against the edge, with CPU per turn when asked.
async fn run_pipeline(
    args: &ChatArgs,
    cpu: &cpu::Targets,
    turn_timeout: Duration,
) -> anyhow::Result<(Report, Option<String>)> {
    let http = reqwest::Client::new();
    let cpu_before = if cpu.is_empty() {
        None
    } else {
        Some(cpu.snapshot().await?)
    };
    let started = Instant::now();
    let clients: Vec<_> = (0..args.connections)
        .map(|_| {
            tokio::spawn(chat::client(
                http.clone(),
                args.url.trim_end_matches('/').to_owned(),
                args.messages,
                turn_timeout,
            ))
        })
        .collect();
    let mut pipeline = Report::new(
        "pipeline",
        args.connections,
        args.messages,
        &gather(clients).await?,
        started.elapsed(),
    );
    if let Some(before) = &cpu_before {
        let after = cpu.snapshot().await?;
        pipeline.cpu = Some(before.per_turn(&after, pipeline.turns));
    }
    let cpu_line = pipeline
        .cpu
        .as_ref()
        .map(|cpu| format!("CPU ms per turn: {}", cpu.line()));
    Ok((pipeline, cpu_line))
}

/// `--windows`: back-to-back windows on the same stack; each window's figures, CPU per turn, and
/// the last window's over the first's.
async fn windows(args: ChatArgs, cpu: cpu::Targets) -> anyhow::Result<()> {
    let turn_timeout = Duration::from_secs(args.turn_timeout_secs);
    let window = Duration::from_secs(args.window_secs.max(1));
    let http = reqwest::Client::new();
    let first = if cpu.is_empty() {
        None
    } else {
        Some(cpu.snapshot().await?)
    };
    let start = Instant::now();
    // A snapshot at the end of each window, taken while the clients run.
    let snapshots = first.map(|first| {
        let cpu = cpu.clone();
        let count = args.windows;
        tokio::spawn(async move {
            let mut snapshots = vec![first];
            for k in 1..=count {
                let boundary = start + window.saturating_mul(u32::try_from(k).unwrap_or(u32::MAX));
                tokio::time::sleep_until(boundary.into()).await;
                snapshots.push(cpu.snapshot().await?);
            }
            anyhow::Ok(snapshots)
        })
    });
    let clients: Vec<_> = (0..args.connections)
        .map(|_| {
            tokio::spawn(chat::windowed_client(
                http.clone(),
                args.url.trim_end_matches('/').to_owned(),
                args.messages,
                turn_timeout,
                start,
                window,
                args.windows,
            ))
        })
        .collect();
    let mut per_window: Vec<Measured> = (0..args.windows).map(|_| Measured::new()).collect();
    let mut failures = 0usize;
    let mut last_error = None;
    for client in clients {
        match client.await.context("client task panicked")? {
            Ok(measured) => {
                for (total, one) in per_window.iter_mut().zip(&measured) {
                    total.merge(one);
                }
            }
            Err(error) => {
                failures += 1;
                last_error = Some(error);
            }
        }
    }
    if let Some(error) = last_error {
        return Err(error.context(format!("{failures} client(s) failed")));
    }
    let snapshots = match snapshots {
        Some(task) => Some(task.await.context("CPU snapshots task panicked")??),
        None => None,
    };
    let mut reports: Vec<Report> = per_window
        .iter()
        .map(|measured| Report::new("window", args.connections, args.messages, measured, window))
        .collect();
    if let Some(snapshots) = &snapshots {
        for (k, report) in reports.iter_mut().enumerate() {
            if let (Some(before), Some(after)) = (snapshots.get(k), snapshots.get(k + 1)) {
                report.cpu = Some(before.per_turn(after, report.turns));
            }
        }
    }
    let mut table = String::from(
        "| window | turns | turns/s | first token p50 / p99 ms | turn p99 ms | CPU ms per turn |\n|---|---|---|---|---|---|\n",
    );
    for (k, report) in reports.iter().enumerate() {
        table.push_str(&format!(
            "| {} | {} | {:.0} | {:.2} / {:.2} | {:.2} | {} |\n",
            k + 1,
            report.turns,
            report.turns_per_sec,
            report.first_token_ms.p50,
            report.first_token_ms.p99,
            report.turn_ms.p99,
            report
                .cpu
                .as_ref()
                .map(cpu::PerTurn::line)
                .unwrap_or_default(),
        ));
    }
    let ratios = match (reports.first(), reports.last()) {
        (Some(first), Some(last)) if reports.len() > 1 => {
            let ratio = |a: f64, b: f64| if b > 0.0 { Some(a / b) } else { None };
            let cpu_ratio = match (&first.cpu, &last.cpu) {
                (Some(first), Some(last)) => last
                    .cpu_ms_per_turn
                    .iter()
                    .filter_map(|(label, ms)| {
                        Some((
                            label.clone(),
                            ratio(*ms, *first.cpu_ms_per_turn.get(label)?)?,
                        ))
                    })
                    .collect(),
                _ => std::collections::BTreeMap::new(),
            };
            Some(serde_json::json!({
                "turns_per_sec": ratio(last.turns_per_sec, first.turns_per_sec),
                "first_token_p99": ratio(last.first_token_ms.p99, first.first_token_ms.p99),
                "cpu_ms_per_turn": cpu_ratio,
            }))
        }
        _ => None,
    };
    let ratio_line = ratios.as_ref().map(|r| {
        let show = |v: &serde_json::Value| {
            v.as_f64()
                .map(|v| format!("{v:.2}"))
                .unwrap_or_else(|| "-".into())
        };
        format!(
            "last / first window: turns/s {}, first-token p99 {}, CPU per turn (all) {}",
            show(&r["turns_per_sec"]),
            show(&r["first_token_p99"]),
            show(&r["cpu_ms_per_turn"]["all"]),
        )
    });
    print!("{table}");
    if let Some(line) = &ratio_line {
        println!("{line}");
    }
    println!(
        "{}",
        serde_json::json!({"windows": reports, "window_secs": window.as_secs(), "last_over_first": ratios})
    );
    if let Some(path) = &args.append_to {
        let mut block = String::new();
        if let Some(label) = &args.label {
            block.push_str(&format!("#### {label}\n\n"));
        }
        block.push_str(&format!("```\n{}\n```\n\n{table}", command_line()));
        if let Some(line) = &ratio_line {
            block.push_str(&format!("\n{line}\n"));
        }
        append(path, &block)?;
    }
    Ok(())
}

async fn gather(
    clients: Vec<tokio::task::JoinHandle<anyhow::Result<Measured>>>,
) -> anyhow::Result<Measured> {
    let mut total = Measured::new();
    let mut failures = 0usize;
    let mut last_error = None;
    for client in clients {
        match client.await.context("client task panicked")? {
            Ok(measured) => total.merge(&measured),
            Err(error) => {
                failures += 1;
                last_error = Some(error);
            }
        }
    }
    if let Some(error) = last_error {
        return Err(error.context(format!("{failures} client(s) failed")));
    }
    Ok(total)
}

/// This run's command, quoted so it can be pasted back into a shell; a secret given with
/// `--admin-token` is written as `"$ADMIN_TOKEN"`.
fn command_line() -> String {
    let mut secret_next = false;
    let args: Vec<String> = std::env::args()
        .skip(1)
        .map(|arg| {
            if std::mem::take(&mut secret_next) {
                return "\"$ADMIN_TOKEN\"".to_owned();
            }
            if arg == "--admin-token" {
                secret_next = true;
                return arg;
            }
            if arg.starts_with("--admin-token=") {
                return "--admin-token=\"$ADMIN_TOKEN\"".to_owned();
            }
            let plain = arg
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_./:=,@".contains(c));
            if plain {
                arg
            } else {
                format!("'{}'", arg.replace('\'', r"'\''"))
            }
        })
        .collect();
    format!("cargo run --release -p loadgen -- {}", args.join(" "))
}

fn append(path: &std::path::Path, text: &str) -> anyhow::Result<()> {
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("open {}", path.display()))?;
    writeln!(file, "{text}")?;
    Ok(())
}
