//! SPEC §6 when the infrastructure fails under load: NATS restarted, PostgreSQL unreachable for a
//! while, a node of a three-node JetStream cluster SIGKILLed. Clients behave as the protocol tells
//! them to (resend the same `message_id` after `busy`, `resume` after their last `seq`), and in the
//! end every accepted message is committed exactly once, in order, and its frames reached the
//! client once.
//!
//! The shared NATS server is never restarted: the NATS tests run private `nats-server`s.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use e2e::nats::NatsServer;
use e2e::proxy::TcpProxy;
use e2e::ws::seqs;
use e2e::{eventually, postgres_url, StackOptions, TestApp, Thread, WsClient, WAIT};
use serde_json::Value;
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// A socket that stays silent this long while a turn is due is asked to `resume`: frames it
/// missed come from the retained ones, frames it already had are dropped by `seq`.
const STALL: Duration = Duration::from_secs(5);

/// Between two resumes for gaps, so that a burst of gapped frames asks once.
const GAP_RESUME_EVERY: Duration = Duration::from_secs(1);

/// The stack of these tests: fast turns, no rate limit in the way, and a crashed or cut-off turn
/// is offered again within seconds.
fn options(workers: usize) -> StackOptions {
    StackOptions {
        edges: 1,
        workers,
        ..StackOptions::default()
    }
    .with("SCRIPTED_TOKEN_DELAY_MS", "10")
    .with("RATE_LIMIT_MESSAGES", "100000")
    .with("ACK_WAIT_SECS", "2")
    .with("LEASE_TTL_SECS", "3")
}

/// What the clients of a load share with the test.
struct Load {
    /// The longest a client, or the test waiting for turns, waits without progress.
    patience: Duration,
    /// Set by the test: each client stops after the message it is on.
    stop: AtomicBool,
    /// Turns completed, over all clients.
    completed: AtomicUsize,
    /// `busy` answers, over all clients.
    busy: AtomicUsize,
}

impl Load {
    fn new(patience: Duration) -> Arc<Self> {
        Arc::new(Self {
            patience,
            stop: AtomicBool::new(false),
            completed: AtomicUsize::new(0),
            busy: AtomicUsize::new(0),
        })
    }

    fn completed(&self) -> usize {
        self.completed.load(Ordering::SeqCst)
    }

    /// Waits until `count` turns have completed over all clients; panics after `patience`.
    async fn wait_for_completed(&self, count: usize, what: &str) {
        let deadline = Instant::now() + self.patience;
        while self.completed() < count {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Where the clients talk to.
#[derive(Clone)]
struct Edge {
    ws_url: String,
    health_url: String,
    http: reqwest::Client,
    /// The real database (not a proxy), to say what a stuck client's thread has committed.
    database_url: String,
}

impl Edge {
    fn of(app: &TestApp) -> Self {
        Self {
            ws_url: app.ws_url(0),
            health_url: format!("{}/api/health", app.http_url(0)),
            http: app.http.clone(),
            database_url: app.database_url.clone(),
        }
    }

    /// What `thread` has committed, for the message of a failed wait.
    async fn committed(&self, thread: &str) -> String {
        let query = async {
            let db = sqlx::PgPool::connect(&self.database_url).await?;
            sqlx::query_as::<_, (i64, Option<i64>)>(
                "SELECT count(*), max(last_seq) FROM turns WHERE thread_id = $1",
            )
            .bind(thread)
            .fetch_one(&db)
            .await
        };
        match tokio::time::timeout(Duration::from_secs(5), query).await {
            Ok(Ok((turns, last_seq))) => {
                format!("{turns} turns committed, up to seq {last_seq:?}")
            }
            Ok(Err(error)) => format!("committed turns unknown: {error}"),
            Err(_) => "committed turns unknown: the database did not answer".into(),
        }
    }

    /// Waits until `/api/health` answers a body that satisfies `want` (with its status).
    async fn wait_for_health(&self, what: &str, want: impl Fn(u16, &Value) -> bool) {
        eventually(what, || async {
            let response = self.http.get(&self.health_url).send().await.ok()?;
            let status = response.status().as_u16();
            let body: Value = response.json().await.ok()?;
            want(status, &body).then_some(())
        })
        .await;
    }

    async fn wait_for_nats(&self) {
        self.wait_for_health("the edge to report NATS ok", |_, body| {
            body["checks"]["nats"] == "ok"
        })
        .await;
    }
}

/// What a client went through.
#[derive(Debug, Default, Clone, Copy)]
struct Incidents {
    /// `busy` answers (each followed by a resend once NATS was back).
    busy: usize,
    /// Sockets lost and opened again.
    reconnects: usize,
    /// `resume`s sent on an open socket after a silence.
    stalls: usize,
    /// Frames that skipped a `seq` (followed by a `resume`).
    gaps: usize,
    /// Frames dropped because their `seq` was already seen (on a socket that resumed).
    duplicates: usize,
}

impl std::ops::AddAssign for Incidents {
    fn add_assign(&mut self, other: Self) {
        self.busy += other.busy;
        self.reconnects += other.reconnects;
        self.stalls += other.stalls;
        self.gaps += other.gaps;
        self.duplicates += other.duplicates;
    }
}

/// How a client paces its messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pace {
    /// The next message once the previous turn completed, as a person chatting does.
    Conversational,
    /// The next message [`EAGER_PAUSE`] after the previous one was accepted, with up to
    /// [`EAGER_WINDOW`] turns outstanding: these clients also send while NATS is down.
    Eager,
}

const EAGER_PAUSE: Duration = Duration::from_millis(100);
const EAGER_WINDOW: usize = 20;

/// What one client saw.
struct Conversation {
    thread: Thread,
    /// Message ids, in the order they were accepted.
    accepted: Vec<String>,
    /// The thread's frames, each once, in `seq` order.
    frames: Vec<Value>,
    /// Per accepted message: when it was accepted and when its turn completed.
    timings: Vec<(Instant, Instant)>,
    incidents: Incidents,
}

/// One browser-like client on one thread.
struct Client {
    edge: Edge,
    load: Arc<Load>,
    thread: Thread,
    ws: WsClient,
    /// The socket failed a send or was closed: open another and resume.
    broken: bool,
    /// This socket sent `resume`, so frames it already had may come again.
    resumed: bool,
    last_gap_resume: Option<Instant>,
    last_seq: u64,
    frames: Vec<Value>,
    /// Message ids accepted, and when.
    accepted: Vec<(String, Instant)>,
    /// When each turn's `message_complete` arrived.
    completed: Vec<Instant>,
    incidents: Incidents,
}

impl Client {
    /// Sends messages `m0`, `m1` … at `pace` until the load stops, then reads until every
    /// accepted message's turn completed.
    async fn run(edge: Edge, thread: Thread, load: Arc<Load>, pace: Pace) -> Conversation {
        let ws = WsClient::connect(&edge.ws_url).await;
        let mut client = Self {
            edge,
            load,
            thread,
            ws,
            broken: false,
            resumed: false,
            last_gap_resume: None,
            last_seq: 0,
            frames: Vec::new(),
            accepted: Vec::new(),
            completed: Vec::new(),
            incidents: Incidents::default(),
        };
        for index in 0usize.. {
            if client.load.stop.load(Ordering::SeqCst) {
                break;
            }
            // Turns run in the order accepted: the (index + 1)th completion is message index's.
            let completes = match pace {
                Pace::Conversational => index + 1,
                Pace::Eager => {
                    if index > 0 {
                        tokio::time::sleep(EAGER_PAUSE).await;
                    }
                    (index + 1).saturating_sub(EAGER_WINDOW)
                }
            };
            client.exchange(Some(index), completes).await;
        }
        let all = client.accepted.len();
        client.exchange(None, all).await;
        Conversation {
            thread: client.thread,
            accepted: client.accepted.iter().map(|(id, _)| id.clone()).collect(),
            timings: client
                .accepted
                .iter()
                .map(|&(_, at)| at)
                .zip(client.completed.iter().copied())
                .collect(),
            frames: client.frames,
            incidents: client.incidents,
        }
    }

    /// Sends message `index` (if any) until it is accepted, and reads until `completes` turns
    /// have completed. Panics after the load's `patience` without progress.
    async fn exchange(&mut self, index: Option<usize>, completes: usize) {
        let message = index.map(|index| {
            let id = format!("m{index}");
            let frame = self
                .thread
                .message_with_id(&format!("message {index}"), &id);
            (id, frame)
        });
        let mut accepted = message.is_none();
        if let Some((_, frame)) = &message {
            self.send(frame).await;
        }
        let mut progress = Instant::now();
        loop {
            if accepted && self.completed.len() >= completes {
                return;
            }
            if progress.elapsed() >= self.load.patience {
                panic!(
                    "thread {}: no progress for {:?} (message {index:?} accepted: {accepted}, last seq {}, {} of {completes} turns complete; {})",
                    self.thread.thread_id,
                    self.load.patience,
                    self.last_seq,
                    self.completed.len(),
                    self.edge.committed(&self.thread.thread_id).await,
                );
            }
            if self.broken {
                self.reconnect().await;
                if let (Some((_, frame)), false) = (&message, accepted) {
                    self.send(frame).await;
                }
                continue;
            }
            let Some(next) = self.ws.next_frame_within(STALL).await else {
                // Silence while a turn is due: the socket may have missed its frames.
                if self.completed.len() < self.accepted.len() {
                    self.incidents.stalls += 1;
                    self.resume().await;
                }
                continue;
            };
            let Ok(frame) = next else {
                self.broken = true;
                continue;
            };
            match frame["type"].as_str() {
                Some("accepted") => {
                    // A message sent twice is accepted twice; only the first counts.
                    if let Some((id, _)) = &message {
                        if frame["message_id"] == id.as_str() && !accepted {
                            accepted = true;
                            self.accepted.push((id.clone(), Instant::now()));
                            progress = Instant::now();
                        }
                    }
                }
                Some("error") if frame.get("seq").is_none() => {
                    assert_eq!(frame["code"], "busy", "unexpected error: {frame}");
                    assert_eq!(frame["retryable"], true, "{frame}");
                    self.incidents.busy += 1;
                    self.load.busy.fetch_add(1, Ordering::SeqCst);
                    // Busy is retryable: send again once NATS is back. It may answer the message
                    // or a resume; whichever it was, sending both again is harmless.
                    self.edge.wait_for_nats().await;
                    if let (Some((_, frame)), false) = (&message, accepted) {
                        self.send(frame).await;
                    }
                    if self.resumed || self.completed.len() < self.accepted.len() {
                        self.resume().await;
                    }
                }
                _ => {
                    if self.observe(frame).await {
                        progress = Instant::now();
                    }
                }
            }
        }
    }

    /// Keeps a thread frame if it is the next `seq`; `true` if kept.
    async fn observe(&mut self, frame: Value) -> bool {
        assert_eq!(
            frame["thread_id"],
            self.thread.thread_id.as_str(),
            "{frame}"
        );
        let seq = frame["seq"]
            .as_u64()
            .unwrap_or_else(|| panic!("a thread frame without seq: {frame}"));
        if seq <= self.last_seq {
            assert!(
                self.resumed,
                "thread {}: seq {seq} after {} on a socket that never resumed: {frame}",
                self.thread.thread_id, self.last_seq
            );
            self.incidents.duplicates += 1;
            return false;
        }
        if seq > self.last_seq + 1 {
            // Missed frames: ask for the retained ones, once per burst.
            self.incidents.gaps += 1;
            if self
                .last_gap_resume
                .is_none_or(|at| at.elapsed() >= GAP_RESUME_EVERY)
            {
                self.last_gap_resume = Some(Instant::now());
                self.resume().await;
            }
            return false;
        }
        assert_ne!(
            frame["type"], "error",
            "thread {}: a turn failed: {frame}",
            self.thread.thread_id
        );
        self.last_seq = seq;
        if frame["type"] == "message_complete" {
            self.completed.push(Instant::now());
            self.load.completed.fetch_add(1, Ordering::SeqCst);
        }
        self.frames.push(frame);
        true
    }

    async fn send(&mut self, frame: &Value) {
        if !self.ws.try_send(frame).await {
            self.broken = true;
        }
    }

    /// Asks for every frame after the last one kept.
    async fn resume(&mut self) {
        self.resumed = true;
        let resume = self.thread.resume(self.last_seq);
        self.send(&resume).await;
    }

    /// A new socket, resumed after the last frame kept.
    async fn reconnect(&mut self) {
        self.incidents.reconnects += 1;
        self.ws = WsClient::connect(&self.edge.ws_url).await;
        self.broken = false;
        self.resume().await;
    }
}

/// Starts a client on a thread of its own for each of `paces`.
async fn start_load(
    app: &TestApp,
    paces: &[Pace],
    load: &Arc<Load>,
) -> Vec<JoinHandle<Conversation>> {
    let mut clients = Vec::with_capacity(paces.len());
    for &pace in paces {
        let thread = app.create_thread().await;
        clients.push(tokio::spawn(Client::run(
            Edge::of(app),
            thread,
            load.clone(),
            pace,
        )));
    }
    clients
}

/// `conversational` clients that wait for each turn and `eager` ones that do not.
fn paces(conversational: usize, eager: usize) -> Vec<Pace> {
    let mut paces = vec![Pace::Conversational; conversational];
    paces.extend(std::iter::repeat_n(Pace::Eager, eager));
    paces
}

/// Stops the load and waits for each client to finish the message it is on.
async fn finish(load: &Load, clients: Vec<JoinHandle<Conversation>>) -> Vec<Conversation> {
    load.stop.store(true, Ordering::SeqCst);
    let deadline = Instant::now() + load.patience;
    let mut conversations = Vec::with_capacity(clients.len());
    for client in clients {
        let conversation = tokio::time::timeout_at(deadline, client)
            .await
            .expect("clients finish their last message in time")
            .expect("client task");
        conversations.push(conversation);
    }
    conversations
}

/// Checks every conversation against the database and the inbound stream: each accepted message
/// has exactly one committed turn, in the accepted order, and its frames reached the client once.
/// Returns the total of accepted messages and the clients' incidents.
async fn check(app: &TestApp, conversations: &[Conversation]) -> (usize, Incidents) {
    let total: usize = conversations.iter().map(|c| c.accepted.len()).sum();
    let db = app.db().await;
    // A turn commits just after its last frame is published.
    eventually("every accepted message's turn to be committed", || async {
        let committed: i64 = sqlx::query_scalar("SELECT count(*) FROM turns")
            .fetch_one(&db)
            .await
            .ok()?;
        (committed >= total as i64).then_some(())
    })
    .await;
    let mut incidents = Incidents::default();
    for conversation in conversations {
        let thread = &conversation.thread.thread_id;
        assert!(
            !conversation.accepted.is_empty(),
            "thread {thread}: nothing accepted"
        );
        let frames = &conversation.frames;
        assert_eq!(
            seqs(frames),
            (1..=frames.len() as u64).collect::<Vec<_>>(),
            "thread {thread}: seq 1, 2, 3 … each once"
        );
        // The frames of each turn end with its one message_complete, all with one turn id.
        let turns: Vec<&[Value]> = frames
            .split_inclusive(|f| f["type"] == "message_complete")
            .collect();
        assert_eq!(
            turns.len(),
            conversation.accepted.len(),
            "thread {thread}: one message_complete per accepted message"
        );
        for turn in &turns {
            assert_eq!(turn.last().unwrap()["type"], "message_complete");
            assert!(
                turn.iter().all(|f| f["turn_id"] == turn[0]["turn_id"]),
                "thread {thread}: a turn's frames share its turn id: {turn:?}"
            );
        }
        let rows: Vec<(String, i64)> = sqlx::query_as(
            "SELECT message_id, last_seq FROM turns WHERE thread_id = $1 ORDER BY in_seq",
        )
        .bind(thread)
        .fetch_all(&db)
        .await
        .unwrap();
        let committed: Vec<&str> = rows.iter().map(|(id, _)| id.as_str()).collect();
        assert_eq!(
            committed, conversation.accepted,
            "thread {thread}: exactly one committed turn per accepted message, in the accepted order"
        );
        for (turn, (message_id, last_seq)) in turns.iter().zip(&rows) {
            assert_eq!(
                turn.last().unwrap()["seq"],
                *last_seq,
                "thread {thread}: {message_id} ends where its committed turn ends"
            );
        }
        incidents += conversation.incidents;
    }
    let committed: i64 = sqlx::query_scalar("SELECT count(*) FROM turns")
        .fetch_one(&db)
        .await
        .unwrap();
    assert_eq!(committed, total as i64, "no turn committed twice");
    assert_eq!(
        app.stored_inbound().await,
        total as u64,
        "each accepted message stored once in the inbound stream"
    );
    (total, incidents)
}

#[tokio::test]
async fn nats_restarted_under_load_loses_no_accepted_message() {
    const THREADS: usize = 20;
    let started = Instant::now();
    let mut nats = NatsServer::start_new().await;
    let app = TestApp::spawn_with_urls(options(2), nats.url(), None).await;
    let edge = Edge::of(&app);
    let load = Load::new(WAIT);
    let clients = start_load(&app, &paces(THREADS - 4, 4), &load).await;
    load.wait_for_completed(THREADS * 2, "every client to get going")
        .await;

    nats.stop().await;
    edge.wait_for_health("the edge to notice NATS is gone", |_, body| {
        body["checks"]["nats"] != "ok"
    })
    .await;
    let busy = load.busy.load(Ordering::SeqCst);
    eventually("a client to be told busy while NATS is down", || async {
        (load.busy.load(Ordering::SeqCst) > busy).then_some(())
    })
    .await;
    let down = load.completed();
    nats.start().await;
    edge.wait_for_nats().await;
    load.wait_for_completed(down + THREADS * 3, "turns to flow again after the restart")
        .await;

    let conversations = finish(&load, clients).await;
    let (total, incidents) = check(&app, &conversations).await;
    eprintln!(
        "NATS restarted: {total} messages committed once each; {incidents:?}; {:.1?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn postgres_down_for_a_while_turns_wait_and_resume() {
    const THREADS: usize = 4;
    const OUTAGE: Duration = Duration::from_secs(10);
    let started = Instant::now();
    let postgres = TcpProxy::to_postgres().await;
    let id = uuid::Uuid::new_v4().simple().to_string();
    let proxied = format!("postgres://postgres@{}/test_{id}", postgres.addr());
    let mut app = TestApp::spawn_with_urls(options(2), e2e::nats_url(), Some(proxied)).await;
    // The harness drops the database it named; point it at the one the processes created.
    app.database = format!("test_{id}");
    app.database_url = format!("{}/test_{id}", postgres_url());
    let edge = Edge::of(&app);
    // A turn accepted just before the cut makes no progress for the whole outage.
    let load = Load::new(WAIT + OUTAGE);
    let clients = start_load(&app, &paces(THREADS / 2, THREADS / 2), &load).await;
    load.wait_for_completed(THREADS * 2, "every client to get going")
        .await;

    postgres.cut();
    edge.wait_for_health("the edge to notice PostgreSQL is gone", |status, body| {
        status == 503 && body["checks"]["database"] != "ok"
    })
    .await;
    // Hold the outage open; nothing is asserted on the strength of this sleep.
    tokio::time::sleep(OUTAGE).await;
    let restored_at = Instant::now();
    postgres.restore().await;
    edge.wait_for_health("the edge to reach PostgreSQL again", |status, _| {
        status == 200
    })
    .await;
    let back = load.completed();
    load.wait_for_completed(back + THREADS * 3, "turns to flow again after the outage")
        .await;

    let conversations = finish(&load, clients).await;
    let (total, incidents) = check(&app, &conversations).await;
    for conversation in &conversations {
        assert!(
            conversation
                .timings
                .iter()
                .any(|&(accepted, completed)| accepted < restored_at && completed > restored_at),
            "thread {}: a message accepted before PostgreSQL came back waited for it",
            conversation.thread.thread_id
        );
    }
    let dead_letters: i64 = sqlx::query_scalar("SELECT count(*) FROM dead_letters")
        .fetch_one(&app.db().await)
        .await
        .unwrap();
    assert_eq!(
        dead_letters, 0,
        "an unreachable database dead-letters nothing"
    );
    eprintln!(
        "PostgreSQL cut for {OUTAGE:?}: {total} messages committed once each; {incidents:?}; {:.1?}",
        started.elapsed()
    );
}

/// The server name of `stream`'s leader, if it has one now.
async fn stream_leader(app: &TestApp, stream: &str) -> Option<String> {
    let mut stream = app.jetstream().await.get_stream(stream).await.ok()?;
    let info = stream.info().await.ok()?;
    info.cluster.as_ref()?.leader.clone()
}

/// A stack of one edge and `workers` workers on a 3-node JetStream cluster, its streams
/// replicated on all three nodes (the cluster lives as long as the array).
async fn replicated_stack(workers: usize) -> ([NatsServer; 3], TestApp) {
    let cluster = NatsServer::cluster::<3>().await;
    NatsServer::wait_for_jetstream(&cluster).await;
    let app = TestApp::spawn_with_urls(
        options(workers).with("NATS_REPLICAS", "3"),
        NatsServer::urls(&cluster),
        None,
    )
    .await;
    (cluster, app)
}

#[tokio::test]
async fn a_three_node_cluster_survives_losing_a_node_under_load() {
    const THREADS: usize = 12;
    let started = Instant::now();
    let (mut cluster, app) = replicated_stack(2).await;
    let inbound = app.subjects().inbound_stream();
    let mut stream = app.jetstream().await.get_stream(&inbound).await.unwrap();
    let replicas = stream.info().await.unwrap().config.num_replicas;
    assert_eq!(replicas, 3, "the streams are replicated");

    // Losing a stream's leader costs an election (several seconds on NATS 2.9), and requests in
    // flight to the dead node run into their timeouts first: give the load twice the usual wait.
    let load = Load::new(2 * WAIT);
    let clients = start_load(&app, &paces(THREADS - 3, 3), &load).await;
    load.wait_for_completed(THREADS * 2, "every client to get going")
        .await;

    // Kill the leader of the inbound stream: the node whose loss hurts most.
    let leader = stream_leader(&app, &inbound)
        .await
        .expect("the inbound stream has a leader");
    let victim = cluster
        .iter_mut()
        .find(|server| server.name() == leader)
        .unwrap_or_else(|| panic!("the leader {leader} is one of the cluster's nodes"));
    victim.kill().await;
    let killed = load.completed();
    load.wait_for_completed(killed + THREADS * 3, "turns to flow again after the kill")
        .await;

    let conversations = finish(&load, clients).await;
    let (total, incidents) = check(&app, &conversations).await;
    let new_leader = eventually("the inbound stream to have a new leader", || {
        stream_leader(&app, &inbound)
    })
    .await;
    assert_ne!(new_leader, leader);
    // On a replicated stream the condition is checked before the store is agreed, so no message
    // is stored on it, and every delivery is read again (`shared::jetstream::StoreConditions`).
    let last = stream.info().await.unwrap().state.last_sequence;
    let mut checked = 0;
    for seq in 1..=last {
        let Ok(stored) = stream.direct_get(seq).await else {
            continue;
        };
        checked += 1;
        assert!(
            stored
                .headers
                .get(async_nats::header::NATS_EXPECTED_LAST_SUBJECT_SEQUENCE)
                .is_none(),
            "message {seq} was stored on a condition on a replicated stream"
        );
    }
    assert!(
        checked * 2 >= last,
        "only {checked} of the {last} stored messages could be read"
    );
    eprintln!(
        "node {leader} of 3 killed (new leader {new_leader}): {total} messages committed once each; {incidents:?}; {:.1?}",
        started.elapsed()
    );
}

/// Counts the requests to read a message of `<PREFIX>_IN` (`$JS.API.STREAM.MSG.GET.<stream>`:
/// a subscription sees them) until the returned task is aborted. Flushing the returned client
/// makes sure its server has sent it every request that server had seen; on a cluster a request
/// made through another server may still be on its way.
async fn count_inbound_reads(
    app: &TestApp,
) -> (Arc<AtomicUsize>, async_nats::Client, JoinHandle<()>) {
    use futures_util::StreamExt as _;

    let reads = Arc::new(AtomicUsize::new(0));
    let nats = e2e::nats_client(&app.nats_url).await.unwrap();
    let mut requests = nats
        .subscribe(format!(
            "$JS.API.STREAM.MSG.GET.{}",
            app.subjects().inbound_stream()
        ))
        .await
        .unwrap();
    nats.flush().await.unwrap();
    let counting = {
        let reads = Arc::clone(&reads);
        tokio::spawn(async move {
            while requests.next().await.is_some() {
                reads.fetch_add(1, Ordering::SeqCst);
            }
        })
    };
    (reads, nats, counting)
}

/// Stores a customer message on `thread` on the condition that the thread's last message is still
/// the last, as an edge on a stream of one replica does. Every message of the thread stored so far
/// must be committed: the last is read from PostgreSQL, not with a request to the stream, which
/// [`count_inbound_reads`] would count.
async fn store_on_condition(app: &TestApp, thread: &Thread, content: &str) {
    use shared::protocol::bus::{InboundKind, InboundMessage};

    let subjects = app.subjects();
    let js = app.jetstream().await;
    let last: i64 = sqlx::query_scalar("SELECT last_in_seq FROM threads WHERE id = $1")
        .bind(&thread.thread_id)
        .fetch_one(&app.db().await)
        .await
        .unwrap();
    let last = u64::try_from(last).unwrap();
    let message = InboundMessage {
        thread_id: thread.id(),
        message_id: shared::ids::MessageId::generate(),
        turn_id: shared::ids::TurnId::generate(),
        received_at: chrono::Utc::now(),
        kind: InboundKind::Message {
            content: shared::protocol::frames::UserText::parse(content.into()).unwrap(),
        },
    };
    let publish = async_nats::jetstream::message::PublishMessage::build()
        .payload(message.to_bytes().unwrap())
        .expected_last_subject_sequence(last);
    js.send_publish(subjects.inbound(&thread.id()), publish)
        .await
        .unwrap()
        .await
        .expect("stored: the condition names the thread's last message");
}

/// Whether the thread's last stored message was stored on a condition (a request to the stream:
/// not while [`count_inbound_reads`] counts).
async fn last_stored_on_condition(app: &TestApp, thread: &Thread) -> bool {
    let subjects = app.subjects();
    let js = app.jetstream().await;
    let stream = js.get_stream(subjects.inbound_stream()).await.unwrap();
    let last = stream
        .get_last_raw_message_by_subject(&subjects.inbound(&thread.id()))
        .await
        .expect("the thread has a stored message");
    last.headers
        .get(async_nats::header::NATS_EXPECTED_LAST_SUBJECT_SEQUENCE)
        .is_some()
}

/// On a replicated inbound stream a worker reads every delivery again from the stream, even one
/// stored on the condition that it follows the thread's last committed message: the stream's
/// leader checks that condition before the store is agreed, not with it
/// (`shared::jetstream::StoreConditions`). The condition is put on here by the test, as an edge
/// on a stream of one replica would.
#[tokio::test]
async fn on_a_replicated_stream_a_worker_reads_every_delivery_again() {
    let (_cluster, app) = replicated_stack(1).await;
    let (reads, _nats, counting) = count_inbound_reads(&app).await;
    let thread = app.create_thread().await;
    let mut ws = app.connect(0).await;
    ws.ask(&thread, "Where is my order 1001?").await;
    app.wait_for_turns(&thread.thread_id, 1).await;
    let first = eventually("the first message to be read", || async {
        let read = reads.load(Ordering::SeqCst);
        (read >= 1).then_some(read)
    })
    .await;

    store_on_condition(&app, &thread, "Where is my order 1002?").await;
    app.wait_for_turns(&thread.thread_id, 2).await;
    eventually("the worker to read the delivery again", || async {
        (reads.load(Ordering::SeqCst) > first).then_some(())
    })
    .await;
    counting.abort();
}

/// The inbound stream's replicas raised from one to three under a running edge and worker (as
/// `worker setup --apply` does): within `shared::jetstream::REPLICAS_REFRESH` the edge stops
/// storing a socket's messages on the condition and the worker reads every delivery again, with
/// no restart (`shared::jetstream::StoreConditions`).
#[tokio::test]
async fn raising_the_replicas_under_a_running_stack_stops_the_conditional_stores() {
    // Each wait below is for a refresh of one process: a few refresh periods at most.
    let bound = shared::jetstream::REPLICAS_REFRESH * 4;
    let cluster = NatsServer::cluster::<3>().await;
    NatsServer::wait_for_jetstream(&cluster).await;
    let app = TestApp::spawn_with_urls(
        options(1).with("NATS_REPLICAS", "1"),
        NatsServer::urls(&cluster),
        None,
    )
    .await;
    let thread = app.create_thread().await;
    let mut ws = app.connect(0).await;
    let mut turns = 0;
    for _ in 0..2 {
        ws.ask(&thread, "Where is my order 1001?").await;
        turns += 1;
        app.wait_for_turns(&thread.thread_id, turns).await;
    }
    assert!(
        last_stored_on_condition(&app, &thread).await,
        "on one replica a socket's second message is stored on the condition"
    );

    let js = app.jetstream().await;
    let mut stream = js
        .get_stream(app.subjects().inbound_stream())
        .await
        .unwrap();
    let mut config = stream.info().await.unwrap().config.clone();
    config.num_replicas = 3;
    js.update_stream(&config).await.unwrap();
    let raised = Instant::now();
    // The stream takes stores again once its new peers have caught up (the edge answers `busy`
    // meanwhile).
    let name = app.subjects().inbound_stream();
    eventually("the raised stream's replicas to be current", || async {
        let mut stream = app.jetstream().await.get_stream(&name).await.ok()?;
        let info = stream.info().await.ok()?;
        let cluster = info.cluster.as_ref()?;
        let current = cluster.replicas.iter().filter(|peer| peer.current).count();
        (cluster.leader.is_some() && current == 2).then_some(())
    })
    .await;

    // The edge: a message of the same socket is stored without the condition.
    loop {
        ws.ask(&thread, "Where is my order 1002?").await;
        turns += 1;
        app.wait_for_turns(&thread.thread_id, turns).await;
        if !last_stored_on_condition(&app, &thread).await {
            break;
        }
        assert!(
            raised.elapsed() < bound,
            "the edge still stores on the condition {:?} after the replicas were raised",
            raised.elapsed()
        );
    }
    let edge_stopped = raised.elapsed();

    // The worker: a message stored on the condition all the same is read again.
    let (reads, nats, counting) = count_inbound_reads(&app).await;
    loop {
        let before = reads.load(Ordering::SeqCst);
        store_on_condition(&app, &thread, "Where is my order 1003?").await;
        turns += 1;
        app.wait_for_turns(&thread.thread_id, turns).await;
        // The worker's read, if it made one, was answered before its turn committed. The worker
        // may be connected to another server of the cluster than the counter, so the count can
        // come late: then it costs another turn (and counts for it: a real read all the same).
        nats.flush().await.unwrap();
        tokio::task::yield_now().await;
        if reads.load(Ordering::SeqCst) > before {
            break;
        }
        assert!(
            raised.elapsed() < bound * 2,
            "the worker still runs conditional deliveries as delivered {:?} after the replicas were raised",
            raised.elapsed()
        );
    }
    counting.abort();
    let worker_stopped = raised.elapsed();

    // Back to one replica: the edge stores on the condition again, by itself.
    let mut config = stream.info().await.unwrap().config.clone();
    config.num_replicas = 1;
    js.update_stream(&config).await.unwrap();
    let lowered = Instant::now();
    eventually("the lowered stream to have one peer", || async {
        let mut stream = app.jetstream().await.get_stream(&name).await.ok()?;
        let info = stream.info().await.ok()?;
        (info.config.num_replicas == 1
            && info
                .cluster
                .as_ref()
                .is_some_and(|cluster| cluster.leader.is_some() && cluster.replicas.is_empty()))
        .then_some(())
    })
    .await;
    // A socket of its own: the first one has the frames of the turns stored above to read.
    drop(ws);
    let mut ws = app.connect(0).await;
    loop {
        ws.ask(&thread, "Where is my order 1004?").await;
        turns += 1;
        app.wait_for_turns(&thread.thread_id, turns).await;
        if last_stored_on_condition(&app, &thread).await {
            break;
        }
        assert!(
            lowered.elapsed() < bound,
            "the edge does not store on the condition {:?} after the replicas were lowered",
            lowered.elapsed()
        );
    }
    eprintln!(
        "replicas raised under a running stack: the edge stopped storing on the condition within {edge_stopped:?}, the worker trusting it within {worker_stopped:?}; lowered: the edge stored on it again within {:?}; {turns} turns",
        lowered.elapsed()
    );
}
