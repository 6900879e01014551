//! `loadgen soak`: a long run at a fixed turn rate that checks every turn ends exactly once.
//!
//! `clients` virtual users share one token bucket of `rate` new messages per second. Each user
//! owns one socket and one thread at a time (a new thread every `turns_per_thread` turns, on the
//! same socket) and sends one message at a time with its own `message_id`, then reads the turn to
//! its end. The mix:
//!
//! - plain messages (an order lookup with a tool call, an FAQ question, a general reply);
//! - messages that raise approvals with the scripted model ("Cancel order N", "Refund order N",
//!   both at once), answered `approved` or `rejected` with the `interrupt_id`;
//! - socket drops at random points (right after a message was sent, before its `accepted`; in the
//!   middle of a turn; between turns), each followed by a reconnect and `resume` from the last
//!   `seq` seen, and the unacknowledged message sent again with the same `message_id`;
//! - with `--cancels`, `cancel` frames (SPEC §8) for some turns, in progress or paused at an
//!   approval; a `message_complete` with `cancelled: true` is a completed turn.
//!
//! Checked on the wire: per thread, `seq` increases by exactly one (a frame at or below the last
//! `seq` seen is a duplicate frame, a jump is a gap); every accepted message's turn ends exactly
//! once; a second `message_complete` for a completed `turn_id` is a duplicated turn; a turn that
//! does not end within `turn_timeout` is lost. At the end the `turns` table is cross-checked: every
//! accepted `message` and `interrupt_response` must have exactly one row, and no other row may exist
//! on the soak's threads.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use futures_util::{SinkExt as _, StreamExt as _};
use serde::{Deserialize, Serialize};
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

use crate::stats::{histogram, record, Percentiles};

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// What the soak does; see the module documentation.
#[derive(Debug, Clone)]
pub(crate) struct Options {
    pub(crate) url: String,
    pub(crate) rate: f64,
    pub(crate) duration: Duration,
    pub(crate) clients: usize,
    pub(crate) turns_per_thread: u32,
    pub(crate) approval_share: f64,
    pub(crate) approve_share: f64,
    pub(crate) drop_share: f64,
    pub(crate) cancels: bool,
    pub(crate) cancel_share: f64,
    pub(crate) turn_timeout: Duration,
    pub(crate) database_url: Option<String>,
    pub(crate) progress_every: Duration,
}

/// What every user counted, summed.
#[derive(Debug, Default, Clone, Serialize)]
pub(crate) struct Counts {
    pub(crate) threads: u64,
    /// New messages (each counts once, however often it was sent again after a drop).
    pub(crate) messages_sent: u64,
    pub(crate) messages_accepted: u64,
    /// Messages sent again with the same `message_id` after a drop or a retryable error.
    pub(crate) resends: u64,
    pub(crate) approvals: u64,
    pub(crate) answers_sent: u64,
    pub(crate) answers_accepted: u64,
    pub(crate) approved: u64,
    pub(crate) rejected: u64,
    /// An answer whose `accepted` was cut off by a socket the server closed: not sent again.
    pub(crate) answers_unacknowledged: u64,
    pub(crate) cancels_sent: u64,
    pub(crate) cancels_accepted: u64,
    pub(crate) cancel_errors: u64,
    /// Turns that ended with `message_complete` (cancelled ones included).
    pub(crate) completed: u64,
    pub(crate) completed_cancelled: u64,
    /// Turns that ended with `error` `processing_failed` (dead-lettered).
    pub(crate) failed: u64,
    /// Turns that ended with `session_expired`.
    pub(crate) expired: u64,
    pub(crate) lost: u64,
    pub(crate) duplicated_turns: u64,
    pub(crate) duplicate_frames: u64,
    pub(crate) seq_gaps: u64,
    /// Thread frames of a turn other than the one awaited (they still end the awaited segment).
    pub(crate) turn_id_mismatches: u64,
    /// Thread frames that came while no turn was awaited.
    pub(crate) unexpected_frames: u64,
    pub(crate) turn_resets: u64,
    pub(crate) no_pending_interrupt: u64,
    pub(crate) frames: u64,
    pub(crate) drops: u64,
    pub(crate) server_closes: u64,
    pub(crate) reconnects: u64,
    pub(crate) resumes: u64,
    pub(crate) resume_partials: u64,
    /// `rate_limited` / `busy` answers (the frame was sent again).
    pub(crate) retryable_errors: u64,
    pub(crate) other_errors: u64,
    pub(crate) connect_failures: u64,
}

impl Counts {
    fn merge(&mut self, o: &Self) {
        macro_rules! add {
            ($($f:ident),*) => { $( self.$f += o.$f; )* };
        }
        add!(
            threads,
            messages_sent,
            messages_accepted,
            resends,
            approvals,
            answers_sent,
            answers_accepted,
            approved,
            rejected,
            answers_unacknowledged,
            cancels_sent,
            cancels_accepted,
            cancel_errors,
            completed,
            completed_cancelled,
            failed,
            expired,
            lost,
            duplicated_turns,
            duplicate_frames,
            seq_gaps,
            turn_id_mismatches,
            unexpected_frames,
            turn_resets,
            no_pending_interrupt,
            frames,
            drops,
            server_closes,
            reconnects,
            resumes,
            resume_partials,
            retryable_errors,
            other_errors,
            connect_failures
        );
    }
}

/// The `turns` table against what the clients were told was accepted.
#[derive(Debug, Default, Clone, Serialize)]
pub(crate) struct DbCheck {
    pub(crate) threads: usize,
    pub(crate) rows: u64,
    /// Accepted messages and answers.
    pub(crate) expected: u64,
    /// Accepted, but no row.
    pub(crate) lost: u64,
    /// More than one row for one accepted message id.
    pub(crate) duplicated: u64,
    /// Rows on the soak's threads whose message id no client was told of.
    pub(crate) unexpected: u64,
    /// Rows of cancel frames (if the implementation stores any), not counted above.
    pub(crate) cancel_rows: u64,
    pub(crate) dead_lettered: u64,
    /// Turns the clients counted lost that have a row after all (they completed late).
    pub(crate) lost_on_wire_but_stored: u64,
    pub(crate) examples: Vec<String>,
}

/// The whole run.
#[derive(Debug, Serialize)]
pub(crate) struct Summary {
    pub(crate) mode: &'static str,
    pub(crate) rate_target: f64,
    pub(crate) rate_achieved: f64,
    pub(crate) seconds: f64,
    pub(crate) clients: usize,
    pub(crate) cancels_enabled: bool,
    pub(crate) counts: Counts,
    /// Plain turns (no approval): message sent → `message_complete`.
    pub(crate) turn_ms: Percentiles,
    pub(crate) db: Option<DbCheck>,
    pub(crate) examples: Vec<String>,
    /// Lost or duplicated turns, duplicate frames or gaps, on the wire or in the database.
    pub(crate) ok: bool,
}

/// Live figures for the progress line.
#[derive(Default)]
struct Live {
    sent: AtomicU64,
    completed: AtomicU64,
    lost: AtomicU64,
    duplicated: AtomicU64,
    drops: AtomicU64,
    approvals: AtomicU64,
}

struct Ctx {
    options: Options,
    http: reqwest::Client,
    base_url: String,
    ws_url: String,
    permits: Semaphore,
    live: Live,
}

/// A tiny xorshift generator: the soak needs no cryptographic randomness, only variety.
struct Rng(u64);

impl Rng {
    fn new() -> Self {
        Self(uuid::Uuid::new_v4().as_u64_pair().0 | 1)
    }
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn chance(&mut self, p: f64) -> bool {
        ((self.next() >> 11) as f64 / (1u64 << 53) as f64) < p
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// Only what the soak reads of a frame.
#[derive(Debug, Deserialize)]
struct Frame<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    #[serde(default)]
    seq: Option<u64>,
    #[serde(default, borrow)]
    thread_id: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    turn_id: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    message_id: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    interrupt_id: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    code: Option<Cow<'a, str>>,
    #[serde(default)]
    cancelled: Option<bool>,
    #[serde(default)]
    last_seq: Option<u64>,
}

#[derive(Debug, Deserialize)]
struct NewThread {
    thread_id: String,
    token: String,
}

struct Thread {
    id: String,
    token: String,
    last_seq: u64,
    turns: u32,
    /// Turn ids that ended with `message_complete`.
    completed: HashSet<String>,
}

/// A frame sent and not yet answered (`accepted` or an error), in send order.
#[derive(Debug, Clone, PartialEq)]
enum Sent {
    Message,
    Answer {
        approved: bool,
        interrupt_id: String,
    },
    Cancel,
}

/// Where a turn's socket is dropped, if it is.
#[derive(Debug, Clone, Copy, PartialEq)]
enum DropAt {
    None,
    BeforeAccepted,
    MidTurn(u32),
    AfterTurn,
}

/// Where a turn is cancelled, if it is.
#[derive(Debug, Clone, Copy, PartialEq)]
enum CancelAt {
    None,
    InProgress,
    AtApproval,
}

/// How a turn ended.
#[derive(Debug, Clone, Copy, PartialEq)]
enum End {
    Completed,
    Failed,
    Expired,
    Lost,
}

/// What one user reports.
struct Outcome {
    counts: Counts,
    turn: hdrhistogram::Histogram<u64>,
    /// (thread id, message id) of every accepted message and answer.
    accepted: Vec<(String, String)>,
    /// (thread id, message id) of accepted cancels.
    cancels: Vec<(String, String)>,
    /// (thread id, message id) of messages counted lost on the wire.
    lost: Vec<(String, String)>,
    examples: Vec<String>,
}

impl Outcome {
    fn example(&mut self, text: String) {
        if self.examples.len() < 20 && !self.examples.contains(&text) {
            self.examples.push(text);
        }
    }
}

struct User {
    ctx: Arc<Ctx>,
    rng: Rng,
    ws: Option<Ws>,
    thread: Option<Thread>,
    out: Outcome,
}

/// One turn in progress.
struct Turn {
    message_id: String,
    content: String,
    accepted: bool,
    turn_id: Option<String>,
    end: Option<End>,
    pending: VecDeque<Sent>,
    frames: u32,
    drop: DropAt,
    cancel: CancelAt,
    cancel_sent: bool,
    /// The approval left unanswered because the turn was cancelled instead.
    cancelled_interrupt: Option<String>,
}

pub(crate) async fn run(options: Options) -> anyhow::Result<Summary> {
    let base_url = options.url.trim_end_matches('/').to_owned();
    let ws_url = format!("{}/ws", base_url.replacen("http", "ws", 1));
    let ctx = Arc::new(Ctx {
        http: reqwest::Client::new(),
        base_url,
        ws_url,
        permits: Semaphore::new(0),
        live: Live::default(),
        options: options.clone(),
    });
    let started = Instant::now();
    let deadline = started + options.duration;
    let pacer = tokio::spawn(pace(ctx.clone(), deadline));
    let progress = tokio::spawn(progress(ctx.clone(), started, deadline));
    let users: Vec<_> = (0..options.clients)
        .map(|_| {
            let ctx = ctx.clone();
            tokio::spawn(async move {
                let mut user = User {
                    ctx,
                    rng: Rng::new(),
                    ws: None,
                    thread: None,
                    out: Outcome {
                        counts: Counts::default(),
                        turn: histogram(),
                        accepted: Vec::new(),
                        cancels: Vec::new(),
                        lost: Vec::new(),
                        examples: Vec::new(),
                    },
                };
                user.run().await;
                user.out
            })
        })
        .collect();
    let mut counts = Counts::default();
    let mut turn = histogram();
    let mut accepted = Vec::new();
    let mut cancels = Vec::new();
    let mut lost = Vec::new();
    let mut examples = Vec::new();
    for user in users {
        let out = user.await.context("a soak user panicked")?;
        counts.merge(&out.counts);
        let _ = turn.add(&out.turn);
        accepted.extend(out.accepted);
        cancels.extend(out.cancels);
        lost.extend(out.lost);
        for example in out.examples {
            if examples.len() < 40 && !examples.contains(&example) {
                examples.push(example);
            }
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    pacer.abort();
    progress.abort();
    eprintln!(
        "[soak] traffic done after {seconds:.0} s: {} messages, {} completed, {} lost",
        counts.messages_sent, counts.completed, counts.lost
    );

    let db = match &options.database_url {
        Some(url) => Some(db_check(url, &accepted, &cancels, &lost).await?),
        None => None,
    };
    let wire_ok = counts.lost == 0
        && counts.duplicated_turns == 0
        && counts.duplicate_frames == 0
        && counts.seq_gaps == 0;
    let db_ok = db.as_ref().is_none_or(|db| {
        db.lost == 0 && db.duplicated == 0 && (db.unexpected == 0 || options.cancels)
    });
    Ok(Summary {
        mode: "soak",
        rate_target: options.rate,
        rate_achieved: counts.messages_sent as f64 / options.duration.as_secs_f64().max(1.0),
        seconds,
        clients: options.clients,
        cancels_enabled: options.cancels,
        turn_ms: (&turn).into(),
        counts,
        db,
        examples,
        ok: wire_ok && db_ok,
    })
}

/// The token bucket: `rate` permits a second, at most one per user banked.
async fn pace(ctx: Arc<Ctx>, deadline: Instant) {
    let rate = ctx.options.rate.max(0.001);
    let cap = ctx.options.clients.max(1);
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last = Instant::now();
    let mut credit = 0.0f64;
    loop {
        tick.tick().await;
        let now = Instant::now();
        if now >= deadline {
            break;
        }
        credit += rate * now.duration_since(last).as_secs_f64();
        last = now;
        let whole = credit.floor();
        credit -= whole;
        let room = cap.saturating_sub(ctx.permits.available_permits());
        let add = (whole as usize).min(room);
        if add > 0 {
            ctx.permits.add_permits(add);
        }
    }
    // Wakes every waiting user: the run is over.
    ctx.permits.close();
}

async fn progress(ctx: Arc<Ctx>, started: Instant, deadline: Instant) {
    let every = ctx.options.progress_every.max(Duration::from_secs(1));
    let mut tick = tokio::time::interval_at(started + every, every);
    let mut last_sent = 0u64;
    loop {
        tick.tick().await;
        let live = &ctx.live;
        let sent = live.sent.load(Ordering::Relaxed);
        let completed = live.completed.load(Ordering::Relaxed);
        eprintln!(
            "[soak] t={:.0}s sent={sent} completed={completed} lost={} duplicated={} approvals={} drops={} rate={:.1}/s",
            started.elapsed().as_secs_f64(),
            live.lost.load(Ordering::Relaxed),
            live.duplicated.load(Ordering::Relaxed),
            live.approvals.load(Ordering::Relaxed),
            live.drops.load(Ordering::Relaxed),
            (sent - last_sent) as f64 / every.as_secs_f64(),
        );
        last_sent = sent;
        if Instant::now() >= deadline {
            break;
        }
    }
}

impl User {
    async fn run(&mut self) {
        loop {
            let thread_full = self
                .thread
                .as_ref()
                .is_none_or(|thread| thread.turns >= self.ctx.options.turns_per_thread);
            if thread_full && !self.new_thread().await {
                tokio::time::sleep(Duration::from_millis(500)).await;
                if self.ctx.permits.is_closed() {
                    break;
                }
                continue;
            }
            if !self.wait_permit().await {
                break;
            }
            self.turn().await;
        }
        if let Some(mut ws) = self.ws.take() {
            let _ = tokio::time::timeout(Duration::from_secs(2), ws.close(None)).await;
        }
    }

    async fn new_thread(&mut self) -> bool {
        let response = self
            .ctx
            .http
            .post(format!("{}/api/threads", self.ctx.base_url))
            .json(&serde_json::json!({}))
            .send()
            .await;
        let thread: NewThread = match response {
            Ok(response) if response.status().is_success() => match response.json().await {
                Ok(thread) => thread,
                Err(error) => {
                    self.out.counts.other_errors += 1;
                    self.out.example(format!("thread JSON: {error}"));
                    return false;
                }
            },
            Ok(response) => {
                self.out.counts.other_errors += 1;
                self.out
                    .example(format!("POST /api/threads answered {}", response.status()));
                return false;
            }
            Err(error) => {
                self.out.counts.connect_failures += 1;
                self.out.example(format!("POST /api/threads: {error}"));
                return false;
            }
        };
        self.out.counts.threads += 1;
        self.thread = Some(Thread {
            id: thread.thread_id,
            token: thread.token,
            last_seq: 0,
            turns: 0,
            completed: HashSet::new(),
        });
        true
    }

    /// Waits for the bucket, reading (and checking) whatever the socket says meanwhile, so the
    /// edge's pings are answered. False once the run is over.
    async fn wait_permit(&mut self) -> bool {
        loop {
            let Some(ws) = self.ws.as_mut() else {
                return match self.ctx.permits.acquire().await {
                    Ok(permit) => {
                        permit.forget();
                        true
                    }
                    Err(_) => false,
                };
            };
            let ctx = self.ctx.clone();
            let incoming = tokio::select! {
                permit = ctx.permits.acquire() => {
                    return match permit {
                        Ok(permit) => { permit.forget(); true }
                        Err(_) => false,
                    };
                }
                incoming = ws.next() => incoming,
            };
            match incoming {
                Some(Ok(Message::Text(text))) => self.idle_frame(text.as_str()),
                Some(Ok(_)) => {}
                Some(Err(_)) | None => {
                    self.out.counts.server_closes += 1;
                    self.ws = None;
                }
            }
        }
    }

    /// A frame while no turn is awaited: only duplicates or strays can come.
    fn idle_frame(&mut self, text: &str) {
        let Ok(frame) = serde_json::from_str::<Frame<'_>>(text) else {
            self.out.counts.other_errors += 1;
            return;
        };
        self.out.counts.frames += 1;
        let Some(thread) = self.thread.as_mut() else {
            return;
        };
        if let (Some(seq), Some(thread_id)) = (frame.seq, frame.thread_id.as_deref()) {
            if thread_id != thread.id {
                return;
            }
            if seq <= thread.last_seq {
                self.out.counts.duplicate_frames += 1;
                return;
            }
            thread.last_seq = seq;
            self.out.counts.unexpected_frames += 1;
            let turn_id = frame.turn_id.as_deref().unwrap_or("");
            if frame.kind == "message_complete" && thread.completed.contains(turn_id) {
                self.out.counts.duplicated_turns += 1;
                self.ctx.live.duplicated.fetch_add(1, Ordering::Relaxed);
            }
            let example = format!(
                "thread {} seq {seq}: {} of turn {turn_id} while no turn was awaited",
                thread.id, frame.kind
            );
            self.out.example(example);
        }
    }

    /// (Re)connects and resumes the current thread from the last `seq` seen.
    async fn connect(&mut self, until: Instant) -> bool {
        let mut backoff = Duration::from_millis(100);
        loop {
            let attempt = tokio::time::timeout_at(
                until,
                tokio_tungstenite::connect_async_with_config(&self.ctx.ws_url, None, true),
            )
            .await;
            match attempt {
                Ok(Ok((ws, _))) => {
                    self.ws = Some(ws);
                    self.out.counts.reconnects += 1;
                    break;
                }
                Ok(Err(error)) => {
                    self.out.counts.connect_failures += 1;
                    if self.out.counts.connect_failures <= 3 {
                        self.out.example(format!("connect: {error}"));
                    }
                }
                Err(_) => return false,
            }
            if Instant::now() + backoff >= until {
                return false;
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(2));
        }
        let resume = self.thread.as_ref().and_then(|thread| {
            (thread.last_seq > 0 || thread.turns > 0).then(|| {
                serde_json::json!({
                    "type": "resume", "thread_id": thread.id, "token": thread.token,
                    "after_seq": thread.last_seq,
                })
            })
        });
        if let Some(resume) = resume {
            self.out.counts.resumes += 1;
            return self.send_raw(&resume).await;
        }
        true
    }

    async fn send_raw(&mut self, frame: &serde_json::Value) -> bool {
        let Some(ws) = self.ws.as_mut() else {
            return false;
        };
        let sent = tokio::time::timeout(
            Duration::from_secs(10),
            ws.send(Message::Text(frame.to_string().into())),
        )
        .await;
        if matches!(sent, Ok(Ok(()))) {
            true
        } else {
            self.ws = None;
            false
        }
    }

    /// Drops the socket the way a flaky network would: half the time with a close frame, half
    /// the time by just going away.
    async fn drop_socket(&mut self) {
        self.out.counts.drops += 1;
        self.ctx.live.drops.fetch_add(1, Ordering::Relaxed);
        if let Some(mut ws) = self.ws.take() {
            if self.rng.chance(0.5) {
                let _ = tokio::time::timeout(Duration::from_secs(1), ws.close(None)).await;
            }
        }
    }

    fn pick_content(&mut self, approval: bool) -> String {
        let order = 1001 + self.rng.below(10);
        if approval {
            match self.rng.below(5) {
                0 | 1 => format!("Cancel order {order}"),
                2 | 3 => format!("Refund order {order}"),
                _ => format!("Cancel order {order} and refund it"),
            }
        } else {
            match self.rng.below(3) {
                0 => format!("Where is my order {order}?"),
                1 => "What is your return policy?".to_owned(),
                _ => "hello".to_owned(),
            }
        }
    }

    fn message_frame(&self, turn: &Turn) -> Option<serde_json::Value> {
        let thread = self.thread.as_ref()?;
        Some(serde_json::json!({
            "type": "message", "thread_id": thread.id, "token": thread.token,
            "content": turn.content, "message_id": turn.message_id,
        }))
    }

    /// Sends (or sends again) the turn's message, reconnecting first if needed.
    async fn send_message(&mut self, turn: &mut Turn, until: Instant) -> bool {
        if self.ws.is_none() && !self.connect(until).await {
            return false;
        }
        let Some(frame) = self.message_frame(turn) else {
            return false;
        };
        turn.pending.push_back(Sent::Message);
        self.send_raw(&frame).await
    }

    async fn send_answer(&mut self, turn: &mut Turn, interrupt_id: String) {
        let approved = self.rng.chance(self.ctx.options.approve_share);
        let Some(thread) = self.thread.as_ref() else {
            return;
        };
        let frame = serde_json::json!({
            "type": "interrupt_response", "thread_id": thread.id, "token": thread.token,
            "approved": approved, "interrupt_id": interrupt_id,
        });
        self.out.counts.answers_sent += 1;
        if approved {
            self.out.counts.approved += 1;
        } else {
            self.out.counts.rejected += 1;
        }
        turn.pending.push_back(Sent::Answer {
            approved,
            interrupt_id,
        });
        // A socket that fails here is noticed by the next read; the answer is then unacknowledged.
        self.send_raw(&frame).await;
    }

    async fn send_cancel(&mut self, turn: &mut Turn) {
        let Some(thread) = self.thread.as_ref() else {
            return;
        };
        let mut frame = serde_json::json!({
            "type": "cancel", "thread_id": thread.id, "token": thread.token,
        });
        if let Some(turn_id) = &turn.turn_id {
            frame["turn_id"] = serde_json::Value::String(turn_id.clone());
        }
        turn.cancel_sent = true;
        self.out.counts.cancels_sent += 1;
        turn.pending.push_back(Sent::Cancel);
        self.send_raw(&frame).await;
    }

    /// One user turn, from the message to its end, with whatever drops, approvals and cancels the
    /// dice give it.
    async fn turn(&mut self) {
        let options = &self.ctx.options;
        let approval = self.rng.chance(options.approval_share);
        let drop = if self.rng.chance(options.drop_share) {
            match self.rng.below(3) {
                0 => DropAt::BeforeAccepted,
                1 => DropAt::MidTurn(1 + self.rng.below(6) as u32),
                _ => DropAt::AfterTurn,
            }
        } else {
            DropAt::None
        };
        let cancel = if options.cancels && self.rng.chance(options.cancel_share) {
            if approval && self.rng.chance(0.5) {
                CancelAt::AtApproval
            } else {
                CancelAt::InProgress
            }
        } else {
            CancelAt::None
        };
        let mut turn = Turn {
            message_id: uuid::Uuid::new_v4().simple().to_string(),
            content: self.pick_content(approval),
            accepted: false,
            turn_id: None,
            end: None,
            pending: VecDeque::new(),
            frames: 0,
            drop,
            cancel,
            cancel_sent: false,
            cancelled_interrupt: None,
        };
        let started = Instant::now();
        let until = started + self.ctx.options.turn_timeout;
        self.out.counts.messages_sent += 1;
        self.ctx.live.sent.fetch_add(1, Ordering::Relaxed);
        if let Some(thread) = self.thread.as_mut() {
            thread.turns += 1;
        }
        let mut sent = self.send_message(&mut turn, until).await;
        if sent && turn.drop == DropAt::BeforeAccepted {
            // The message may or may not have been stored: the client cannot know, and sends it
            // again with the same id after reconnecting (SPEC §3 idempotency).
            self.drop_socket().await;
            turn.pending.clear();
            sent = false;
        }
        if !sent {
            self.resend(&mut turn, until).await;
        }
        let end = self.read_turn(&mut turn, until).await;
        let (thread_id, message_id) = match self.thread.as_ref() {
            Some(thread) => (thread.id.clone(), turn.message_id.clone()),
            None => (String::new(), turn.message_id.clone()),
        };
        match end {
            End::Completed => {
                self.out.counts.completed += 1;
                self.ctx.live.completed.fetch_add(1, Ordering::Relaxed);
                if !approval && turn.cancel == CancelAt::None {
                    record(&mut self.out.turn, started.elapsed());
                }
            }
            End::Failed => self.out.counts.failed += 1,
            End::Expired => self.out.counts.expired += 1,
            End::Lost => {
                self.out.counts.lost += 1;
                self.ctx.live.lost.fetch_add(1, Ordering::Relaxed);
                self.out.example(format!(
                    "lost: thread {thread_id} message {message_id} ({:?}, accepted {}, drop {:?}, cancel {:?}, {} frames, turn {:?})",
                    turn.content, turn.accepted, turn.drop, turn.cancel, turn.frames, turn.turn_id
                ));
                self.out.lost.push((thread_id, message_id));
                // Whatever comes late for this thread would be misread as the next turn's.
                self.thread = None;
                self.ws = None;
                return;
            }
        }
        if turn.drop == DropAt::AfterTurn {
            self.drop_socket().await;
        }
    }

    /// After a drop: reconnect, resume, and send the message again if it was not acknowledged.
    async fn resend(&mut self, turn: &mut Turn, until: Instant) {
        while Instant::now() < until {
            if self.ws.is_none() && !self.connect(until).await {
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
            if turn.accepted {
                return;
            }
            self.out.counts.resends += 1;
            if self.send_message(turn, until).await {
                return;
            }
        }
    }

    /// Reads frames until the turn has ended and every frame sent for it was acknowledged.
    async fn read_turn(&mut self, turn: &mut Turn, until: Instant) -> End {
        let mut until = until;
        let mut grace_set = false;
        loop {
            if let Some(end) = turn.end {
                // Wait for the `accepted` of everything sent for the turn (a cancel's may come
                // after the turn's end), so the next turn starts with nothing outstanding; but
                // not for long: the turn itself is over.
                let acknowledged = turn.pending.is_empty() && turn.accepted;
                if acknowledged || end != End::Completed || self.ws.is_none() {
                    if !acknowledged {
                        self.out.counts.other_errors += 1;
                        self.out.example(format!(
                            "turn ended ({end:?}) with {:?} unacknowledged, message accepted: {}",
                            turn.pending, turn.accepted
                        ));
                    }
                    return end;
                }
                if !grace_set {
                    grace_set = true;
                    until = until.min(Instant::now() + Duration::from_secs(5));
                }
            }
            if self.ws.is_none() {
                self.reconnect_mid_turn(turn, until).await;
                if self.ws.is_none() {
                    return End::Lost;
                }
            }
            let Some(ws) = self.ws.as_mut() else {
                return End::Lost;
            };
            let incoming = match tokio::time::timeout_at(until, ws.next()).await {
                Ok(incoming) => incoming,
                Err(_) => {
                    self.ws = None;
                    if turn.end.is_some() {
                        continue;
                    }
                    return End::Lost;
                }
            };
            let text = match incoming {
                Some(Ok(Message::Text(text))) => text,
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => {
                    self.out.counts.server_closes += 1;
                    self.ws = None;
                    continue;
                }
                Some(Ok(_)) => continue,
            };
            self.on_frame(turn, text.as_str(), until).await;
        }
    }

    /// The server closed the socket (or a send failed) in the middle of a turn.
    async fn reconnect_mid_turn(&mut self, turn: &mut Turn, until: Instant) {
        for sent in std::mem::take(&mut turn.pending) {
            if let Sent::Answer { .. } = sent {
                // It may have been stored: sending it again could answer twice. Its turn still
                // has to end (the resume brings its frames), or it counts as lost.
                self.out.counts.answers_unacknowledged += 1;
            }
        }
        if !self.connect(until).await {
            return;
        }
        if !turn.accepted {
            self.resend(turn, until).await;
        }
    }

    async fn on_frame(&mut self, turn: &mut Turn, text: &str, until: Instant) {
        let frame: Frame<'_> = match serde_json::from_str(text) {
            Ok(frame) => frame,
            Err(error) => {
                self.out.counts.other_errors += 1;
                self.out.example(format!("frame JSON: {error}"));
                return;
            }
        };
        self.out.counts.frames += 1;
        match (frame.seq, frame.kind.as_ref()) {
            (None, "accepted") => self.on_accepted(turn, &frame),
            (None, "error") => self.on_edge_error(turn, &frame, until).await,
            (None, "resume_partial") => {
                self.out.counts.resume_partials += 1;
                if let Some(thread) = self.thread.as_ref() {
                    let after = frame
                        .last_seq
                        .unwrap_or(thread.last_seq)
                        .max(thread.last_seq);
                    let resume = serde_json::json!({
                        "type": "resume", "thread_id": thread.id, "token": thread.token,
                        "after_seq": after,
                    });
                    self.out.counts.resumes += 1;
                    self.send_raw(&resume).await;
                }
            }
            (Some(seq), _) => self.on_thread_frame(turn, &frame, seq).await,
            (None, other) => {
                self.out.counts.other_errors += 1;
                self.out.example(format!("unknown frame type {other}"));
            }
        }
    }

    fn on_accepted(&mut self, turn: &mut Turn, frame: &Frame<'_>) {
        let Some(thread) = self.thread.as_ref() else {
            return;
        };
        let message_id = frame.message_id.as_deref().unwrap_or("").to_owned();
        if message_id == turn.message_id {
            if let Some(at) = turn.pending.iter().position(|sent| *sent == Sent::Message) {
                turn.pending.remove(at);
            }
            if !turn.accepted {
                turn.accepted = true;
                self.out.counts.messages_accepted += 1;
                self.out.accepted.push((thread.id.clone(), message_id));
            }
            return;
        }
        let at = turn.pending.iter().position(|sent| *sent != Sent::Message);
        match at.and_then(|at| turn.pending.remove(at)) {
            Some(Sent::Answer { .. }) => {
                self.out.counts.answers_accepted += 1;
                self.out.accepted.push((thread.id.clone(), message_id));
            }
            Some(Sent::Cancel) => {
                self.out.counts.cancels_accepted += 1;
                self.out.cancels.push((thread.id.clone(), message_id));
            }
            _ => {
                self.out.counts.other_errors += 1;
                self.out.example(format!(
                    "accepted {message_id} for nothing this client sent"
                ));
            }
        }
    }

    /// An error the edge wrote (no `seq`): it answers the oldest unanswered frame.
    async fn on_edge_error(&mut self, turn: &mut Turn, frame: &Frame<'_>, until: Instant) {
        let code = frame.code.as_deref().unwrap_or("?").to_owned();
        let retryable = code == "rate_limited" || code == "busy";
        match turn.pending.pop_front() {
            Some(Sent::Message) if retryable => {
                self.out.counts.retryable_errors += 1;
                tokio::time::sleep(Duration::from_millis(200)).await;
                self.out.counts.resends += 1;
                if !self.send_message(turn, until).await {
                    self.resend(turn, until).await;
                }
            }
            Some(Sent::Answer {
                approved,
                interrupt_id,
            }) if retryable => {
                // Nothing was stored: the same answer again.
                self.out.counts.retryable_errors += 1;
                tokio::time::sleep(Duration::from_millis(200)).await;
                if let Some(thread) = self.thread.as_ref() {
                    let frame = serde_json::json!({
                        "type": "interrupt_response", "thread_id": thread.id,
                        "token": thread.token, "approved": approved, "interrupt_id": interrupt_id,
                    });
                    turn.pending.push_back(Sent::Answer {
                        approved,
                        interrupt_id,
                    });
                    self.send_raw(&frame).await;
                }
            }
            Some(Sent::Cancel) => {
                self.out.counts.cancel_errors += 1;
                self.out.example(format!("cancel answered {code}"));
                // The edge does not take it (e.g. one without `cancel`): answer the approval the
                // turn is paused at instead, so the turn still ends.
                if let Some(interrupt_id) = turn.cancelled_interrupt.take() {
                    self.send_answer(turn, interrupt_id).await;
                }
            }
            sent => {
                self.out.counts.other_errors += 1;
                self.out.example(format!(
                    "edge error {code} for {sent:?} ({:?})",
                    turn.content
                ));
                if matches!(sent, Some(Sent::Message)) {
                    // Never stored: this turn cannot end.
                    turn.end = Some(End::Lost);
                }
            }
        }
    }

    async fn on_thread_frame(&mut self, turn: &mut Turn, frame: &Frame<'_>, seq: u64) {
        let Some(thread) = self.thread.as_mut() else {
            return;
        };
        if frame.thread_id.as_deref() != Some(thread.id.as_str()) {
            // A thread this socket relayed before (its frames are all seen already).
            self.out.counts.unexpected_frames += 1;
            return;
        }
        if seq <= thread.last_seq {
            self.out.counts.duplicate_frames += 1;
            let example = format!(
                "thread {} seq {seq} again (last {})",
                thread.id, thread.last_seq
            );
            self.out.example(example);
            return;
        }
        if seq != thread.last_seq + 1 {
            self.out.counts.seq_gaps += 1;
            let example = format!("thread {}: seq {seq} after {}", thread.id, thread.last_seq);
            self.out.example(example);
        }
        thread.last_seq = seq;
        let turn_id = frame.turn_id.as_deref().unwrap_or("").to_owned();
        if thread.completed.contains(&turn_id) {
            self.out.counts.duplicated_turns += u64::from(frame.kind == "message_complete");
            if frame.kind == "message_complete" {
                self.ctx.live.duplicated.fetch_add(1, Ordering::Relaxed);
            }
            self.out.counts.unexpected_frames += 1;
            let example = format!(
                "thread {} seq {seq}: {} of turn {turn_id}, which had completed",
                thread.id, frame.kind
            );
            self.out.example(example);
            return;
        }
        match &turn.turn_id {
            None => turn.turn_id = Some(turn_id.clone()),
            Some(known) if *known != turn_id => {
                self.out.counts.turn_id_mismatches += 1;
                turn.turn_id = Some(turn_id.clone());
            }
            Some(_) => {}
        }
        turn.frames += 1;
        match frame.kind.as_ref() {
            "message_complete" => {
                thread.completed.insert(turn_id);
                turn.end = Some(End::Completed);
                if frame.cancelled == Some(true) {
                    self.out.counts.completed_cancelled += 1;
                }
            }
            "interrupt" => {
                self.out.counts.approvals += 1;
                self.ctx.live.approvals.fetch_add(1, Ordering::Relaxed);
                let interrupt_id = frame.interrupt_id.as_deref().unwrap_or("").to_owned();
                if turn.cancel == CancelAt::AtApproval && !turn.cancel_sent {
                    turn.cancelled_interrupt = Some(interrupt_id);
                    self.send_cancel(turn).await;
                } else {
                    self.send_answer(turn, interrupt_id).await;
                }
                return;
            }
            "error" => match frame.code.as_deref() {
                Some("processing_failed") => {
                    turn.end = Some(End::Failed);
                }
                Some("session_expired") => {
                    turn.end = Some(End::Expired);
                }
                Some("no_pending_interrupt") => self.out.counts.no_pending_interrupt += 1,
                other => {
                    self.out.counts.other_errors += 1;
                    self.out.example(format!("thread error {other:?}"));
                }
            },
            "turn_reset" => self.out.counts.turn_resets += 1,
            _ => {}
        }
        if turn.end.is_some() {
            return;
        }
        if turn.cancel == CancelAt::InProgress && !turn.cancel_sent {
            self.send_cancel(turn).await;
        }
        if turn.drop == DropAt::MidTurn(turn.frames) {
            self.drop_socket().await;
        }
    }
}

/// Every accepted message and answer has exactly one `turns` row, and nothing else is there.
async fn db_check(
    url: &str,
    accepted: &[(String, String)],
    cancels: &[(String, String)],
    lost: &[(String, String)],
) -> anyhow::Result<DbCheck> {
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect(url)
        .await
        .context("connect to PostgreSQL for the cross-check")?;
    let threads: Vec<String> = accepted
        .iter()
        .map(|(thread, _)| thread.clone())
        .collect::<HashSet<_>>()
        .into_iter()
        .collect();
    let expected: HashSet<(&str, &str)> = accepted
        .iter()
        .map(|(thread, message)| (thread.as_str(), message.as_str()))
        .collect();
    let cancel_ids: HashSet<(&str, &str)> = cancels
        .iter()
        .map(|(thread, message)| (thread.as_str(), message.as_str()))
        .collect();
    // Rows commit at the end of a turn; a turn the clients gave up on may still commit: look a few
    // times while something is missing.
    let mut check = DbCheck::default();
    for attempt in 0..6 {
        if attempt > 0 {
            tokio::time::sleep(Duration::from_secs(5)).await;
        }
        let rows = sqlx::query!(
            "SELECT thread_id, message_id, outcome FROM turns WHERE thread_id = ANY($1)",
            &threads,
        )
        .fetch_all(&pool)
        .await
        .context("read turns")?;
        let mut seen: HashMap<(&str, &str), u64> = HashMap::new();
        check = DbCheck {
            threads: threads.len(),
            rows: rows.len() as u64,
            expected: expected.len() as u64,
            ..DbCheck::default()
        };
        for row in &rows {
            let (thread, message, outcome) = (&row.thread_id, &row.message_id, &row.outcome);
            if outcome == "dead_lettered" {
                check.dead_lettered += 1;
            }
            let key = (thread.as_str(), message.as_str());
            if expected.contains(&key) {
                *seen.entry(key).or_default() += 1;
            } else if cancel_ids.contains(&key) {
                check.cancel_rows += 1;
            } else {
                check.unexpected += 1;
                if check.examples.len() < 10 {
                    check
                        .examples
                        .push(format!("unexpected row: thread {thread} message {message}"));
                }
            }
        }
        for key in &expected {
            match seen.get(key).copied().unwrap_or(0) {
                0 => {
                    check.lost += 1;
                    if check.examples.len() < 10 {
                        check
                            .examples
                            .push(format!("no row: thread {} message {}", key.0, key.1));
                    }
                }
                1 => {}
                n => {
                    check.duplicated += n - 1;
                    if check.examples.len() < 10 {
                        check
                            .examples
                            .push(format!("{n} rows: thread {} message {}", key.0, key.1));
                    }
                }
            }
        }
        // Lost on the wire: a message that never got `accepted` has no expected row, but may
        // have been stored.
        let lost_keys: HashSet<(&str, &str)> = lost
            .iter()
            .map(|(thread, message)| (thread.as_str(), message.as_str()))
            .collect();
        check.lost_on_wire_but_stored = rows
            .iter()
            .filter(|row| lost_keys.contains(&(row.thread_id.as_str(), row.message_id.as_str())))
            .count() as u64;
        if check.lost == 0 {
            break;
        }
    }
    pool.close().await;
    Ok(check)
}
