//! Test harness: starts the real `edge` and `worker` binaries against the real NATS and PostgreSQL,
//! each test in its own NATS prefix and database, and speaks to them like a browser would.

pub mod fake_openai;
pub mod nats;
pub mod otlp;
pub mod postgres;
pub mod proxy;
pub mod tls;
pub mod ws;

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Deserialize;
use serde_json::Value;
use shared::ids::ThreadId;
use shared::subjects::Subjects;
use tokio::io::{AsyncBufReadExt as _, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::oneshot;

pub use ws::WsClient;

/// The harness' `AUTH_SECRET`: long enough for the edge to accept it outside `DEV_MODE`.
pub const TEST_AUTH_SECRET: &str = "test-secret-test-secret-test-secret";

/// The longest any single wait in a test may take.
pub const WAIT: Duration = Duration::from_secs(20);

/// How long a started process may take to log that it is ready. Longer than [`WAIT`]: a worker
/// restarted mid-test connects to NATS, PostgreSQL and its consumer while other tests' processes
/// load the same two cores and servers (seen taking over 20 s under a parallel load of ~15).
pub const START_WAIT: Duration = Duration::from_secs(60);

pub fn nats_url() -> String {
    std::env::var("TEST_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into())
}

/// Connects to the NATS server(s) of `url`, which may list several, comma-separated, as `NATS_URL`
/// does.
pub async fn nats_client(url: &str) -> Result<async_nats::Client, async_nats::ConnectError> {
    let servers: Vec<&str> = url
        .split(',')
        .map(str::trim)
        .filter(|server| !server.is_empty())
        .collect();
    async_nats::connect(servers).await
}

/// Server URL without a database name.
pub fn postgres_url() -> String {
    std::env::var("TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into())
}

/// Where `cargo build` put the binaries: next to this test executable's `deps/` folder.
fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target directory");
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: build the binaries first (`cargo build --workspace --bins`), as ./dev test does",
        path.display()
    );
    path
}

/// A thread created over HTTP.
#[derive(Debug, Clone, Deserialize)]
pub struct Thread {
    pub thread_id: String,
    pub token: String,
}

impl Thread {
    pub fn message(&self, content: &str) -> Value {
        serde_json::json!({"type": "message", "thread_id": self.thread_id, "token": self.token, "content": content})
    }

    pub fn message_with_id(&self, content: &str, message_id: &str) -> Value {
        let mut frame = self.message(content);
        frame["message_id"] = message_id.into();
        frame
    }

    pub fn interrupt_response(&self, approved: bool) -> Value {
        serde_json::json!({"type": "interrupt_response", "thread_id": self.thread_id, "token": self.token, "approved": approved})
    }

    pub fn resume(&self, after_seq: u64) -> Value {
        serde_json::json!({"type": "resume", "thread_id": self.thread_id, "token": self.token, "after_seq": after_seq})
    }

    /// An `interrupt_response` that names the approval it answers when `interrupt_id` is given.
    pub fn answer(&self, approved: bool, interrupt_id: Option<&str>) -> Value {
        let mut frame = self.interrupt_response(approved);
        if let Some(id) = interrupt_id {
            frame["interrupt_id"] = id.into();
        }
        frame
    }

    pub fn cancel(&self) -> Value {
        serde_json::json!({"type": "cancel", "thread_id": self.thread_id, "token": self.token})
    }

    pub fn request_human(&self) -> Value {
        serde_json::json!({"type": "request_human", "thread_id": self.thread_id, "token": self.token})
    }

    /// The thread's id as `shared` types it, to name its subjects through [`Subjects`].
    pub fn id(&self) -> ThreadId {
        ThreadId::parse(self.thread_id.clone()).expect("the edge hands out valid thread ids")
    }
}

/// One running binary; killed when dropped.
pub struct Process {
    child: Child,
    /// The first JSON log line of each message the test waits for.
    pub addr: Option<String>,
    /// The process's latest JSON log lines (at most [`KEPT_LOG_LINES`]).
    logs: Arc<Mutex<VecDeque<Value>>>,
}

/// How many log lines of each process a test can look back on.
pub const KEPT_LOG_LINES: usize = 10_000;

impl Process {
    /// Waits for a JSON log line that `matches`; panics after [`WAIT`] naming `what`.
    pub async fn wait_for_log(&self, what: &str, matches: impl Fn(&Value) -> bool) -> Value {
        eventually(what, || async {
            let logs = self.logs.lock().expect("log lines");
            logs.iter().find(|line| matches(line)).cloned()
        })
        .await
    }
    /// SIGKILL: the process dies wherever it is.
    pub async fn kill(&mut self) {
        self.child.start_kill().expect("SIGKILL");
        let _ = tokio::time::timeout(WAIT, self.child.wait()).await;
    }

    /// The operating system's id of the process.
    pub fn pid(&self) -> u32 {
        self.child.id().expect("process is running")
    }

    /// A `kB` field of `/proc/<pid>/status`, such as `VmRSS` (resident memory now) or `VmHWM`
    /// (the most it has been resident so far), in KiB.
    pub fn memory_kib(&self, field: &str) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .expect("/proc/<pid>/status (Linux) is readable");
        status
            .lines()
            .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
            .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or_else(|| panic!("no {field} in /proc/<pid>/status"))
    }

    /// Sends SIGTERM and waits for the exit status.
    pub async fn terminate(&mut self) -> std::process::ExitStatus {
        let pid = self.child.id().expect("process is running");
        let status = std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success());
        tokio::time::timeout(WAIT, self.child.wait())
            .await
            .expect("process exits after SIGTERM")
            .expect("exit status")
    }
}

/// How to start a stack.
#[derive(Debug, Clone)]
pub struct StackOptions {
    pub edges: usize,
    pub workers: usize,
    pub env: HashMap<String, String>,
}

impl Default for StackOptions {
    fn default() -> Self {
        let env = [
            ("SCRIPTED_REPLY_TOKENS", "5"),
            ("SCRIPTED_TOKEN_DELAY_MS", "0"),
            ("SHUTDOWN_GRACE_SECS", "2"),
            // Every test client comes from 127.0.0.1, as every client behind a load balancer
            // without TRUSTED_PROXIES would: per-address budgets are off unless a test sets them.
            ("MESSAGES_PER_ADDR_PER_MINUTE", "0"),
            ("WS_MAX_SOCKETS_PER_ADDR", "100000"),
        ];
        Self {
            edges: 1,
            workers: 1,
            env: env
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect(),
        }
    }
}

impl StackOptions {
    pub fn with(mut self, key: &str, value: &str) -> Self {
        self.env.insert(key.into(), value.into());
        self
    }
}

/// A whole stack: its own NATS prefix and database, real processes. Cleaned up on drop.
pub struct TestApp {
    pub prefix: String,
    pub database: String,
    pub database_url: String,
    pub nats_url: String,
    pub env: HashMap<String, String>,
    pub edges: Vec<Process>,
    pub workers: Vec<Process>,
    pub http: reqwest::Client,
}

impl TestApp {
    pub async fn spawn(options: StackOptions) -> Self {
        Self::spawn_with_urls(options, nats_url(), None).await
    }

    /// `database_url` overrides the URL the processes use (for example through a proxy); the
    /// database is still created and dropped on the real server.
    pub async fn spawn_with_urls(
        options: StackOptions,
        nats_url: String,
        database_url: Option<String>,
    ) -> Self {
        // reqwest is built without a default TLS crypto provider (the worker picks ring).
        fake_openai::install_crypto_provider();
        let id = uuid::Uuid::new_v4().simple().to_string();
        let prefix = format!("t{id}");
        let database = format!("test_{id}");
        let real_database_url = format!("{}/{database}", postgres_url());
        let mut env = options.env.clone();
        env.insert("NATS_URL".into(), nats_url.clone());
        env.insert("NATS_PREFIX".into(), prefix.clone());
        env.insert(
            "DATABASE_URL".into(),
            database_url.unwrap_or_else(|| real_database_url.clone()),
        );
        env.entry("AUTH_SECRET".into())
            .or_insert_with(|| TEST_AUTH_SECRET.into());
        // The demo agents' tools read the demo shop's data, which is not a migration.
        env.entry("SEED_DEMO_DATA".into())
            .or_insert_with(|| "true".into());
        env.insert("LOG_FORMAT".into(), "json".into());
        let mut app = Self {
            prefix,
            database,
            database_url: real_database_url,
            nats_url,
            env,
            edges: Vec::new(),
            workers: Vec::new(),
            http: reqwest::Client::new(),
        };
        for _ in 0..options.edges {
            app.start_edge().await;
        }
        for _ in 0..options.workers {
            app.start_worker().await;
        }
        app
    }

    pub async fn start_edge(&mut self) -> usize {
        let process = self
            .start("edge", &[("EDGE_ADDR", "127.0.0.1:0")], "Edge listening.")
            .await;
        self.edges.push(process);
        self.edges.len() - 1
    }

    pub async fn start_worker(&mut self) -> usize {
        let process = self
            .start(
                "worker",
                &[("METRICS_ADDR", "127.0.0.1:0")],
                "Worker pulling.",
            )
            .await;
        self.workers.push(process);
        self.workers.len() - 1
    }

    /// Runs a binary with this stack's settings (and `extra`) until it exits; for start-up failures.
    pub async fn run_to_exit(&self, name: &str, extra: &[(&str, &str)]) -> std::process::Output {
        self.run_command(name, &[], extra).await
    }

    /// [`TestApp::run_to_exit`] with the settings `unset` removed from this stack's environment.
    pub async fn run_to_exit_without(
        &self,
        name: &str,
        unset: &[&str],
        extra: &[(&str, &str)],
    ) -> std::process::Output {
        let mut command = Command::new(binary(name));
        command
            .envs(&self.env)
            .envs(extra.iter().copied())
            .stdin(Stdio::null())
            .kill_on_drop(true);
        for key in unset {
            command.env_remove(key);
        }
        tokio::time::timeout(WAIT, command.output())
            .await
            .unwrap_or_else(|_| panic!("{name} did not exit"))
            .unwrap_or_else(|e| panic!("{name} runs: {e}"))
    }

    /// Runs an operator command (`worker replay …`) with this stack's settings until it exits.
    pub async fn run_command(
        &self,
        name: &str,
        args: &[&str],
        extra: &[(&str, &str)],
    ) -> std::process::Output {
        let run = Command::new(binary(name))
            .args(args)
            .envs(&self.env)
            .envs(extra.iter().copied())
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output();
        tokio::time::timeout(WAIT, run)
            .await
            .unwrap_or_else(|_| panic!("{name} did not exit"))
            .unwrap_or_else(|e| panic!("{name} runs: {e}"))
    }

    /// Starts a binary and waits for its readiness log line; returns with its `addr` field if any.
    async fn start(&self, name: &str, extra: &[(&str, &str)], ready: &str) -> Process {
        let mut command = Command::new(binary(name));
        command
            .envs(&self.env)
            .envs(extra.iter().copied())
            .env(
                "RUST_LOG",
                std::env::var("TEST_RUST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::inherit())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = command
            .spawn()
            .unwrap_or_else(|e| panic!("{name} starts: {e}"));
        // Logs go to stderr (SPEC §9).
        let stderr = child.stderr.take().expect("piped stderr");
        let (ready_tx, ready_rx) = oneshot::channel::<Value>();
        let ready = ready.to_owned();
        let label = name.to_owned();
        let echo = std::env::var_os("TEST_LOG").is_some();
        let logs: Arc<Mutex<VecDeque<Value>>> = Arc::default();
        let kept = logs.clone();
        tokio::spawn(async move {
            let mut ready_tx = Some(ready_tx);
            let mut lines = BufReader::new(stderr).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let Ok(log) = serde_json::from_str::<Value>(&line) else {
                    // Not a log line: a start-up error or a panic, always worth showing.
                    eprintln!("[{label}] {line}");
                    continue;
                };
                if echo {
                    eprintln!("[{label}] {line}");
                }
                if log["message"] == ready.as_str() {
                    if let Some(tx) = ready_tx.take() {
                        let _ = tx.send(log.clone());
                    }
                }
                let mut kept = kept.lock().expect("log lines");
                if kept.len() == KEPT_LOG_LINES {
                    kept.pop_front();
                }
                kept.push_back(log);
            }
        });
        let log = tokio::time::timeout(START_WAIT, ready_rx)
            .await
            .unwrap_or_else(|_| panic!("{name} did not become ready in time"))
            .unwrap_or_else(|_| panic!("{name} exited before becoming ready"));
        Process {
            child,
            addr: log["addr"].as_str().map(str::to_owned),
            logs,
        }
    }

    pub fn http_url(&self, edge: usize) -> String {
        format!(
            "http://{}",
            self.edges[edge].addr.as_deref().expect("edge address")
        )
    }

    pub fn ws_url(&self, edge: usize) -> String {
        format!(
            "ws://{}/ws",
            self.edges[edge].addr.as_deref().expect("edge address")
        )
    }

    pub async fn create_thread(&self) -> Thread {
        self.create_thread_on(0).await
    }

    pub async fn create_thread_on(&self, edge: usize) -> Thread {
        let response = self
            .http
            .post(format!("{}/api/threads", self.http_url(edge)))
            .json(&serde_json::json!({}))
            .send()
            .await
            .expect("POST /api/threads");
        assert_eq!(response.status(), 201, "thread creation");
        response.json().await.expect("thread JSON")
    }

    /// `GET url` with a bearer token; the body as JSON, whatever the status.
    pub async fn get_json(&self, url: &str, token: &str) -> Value {
        self.http
            .get(url)
            .bearer_auth(token)
            .send()
            .await
            .expect("GET")
            .json()
            .await
            .expect("a JSON body")
    }

    /// The Prometheus text of worker `index`'s `/metrics` (on its `METRICS_ADDR`).
    pub async fn worker_metrics(&self, index: usize) -> String {
        let addr = self.workers[index]
            .addr
            .as_deref()
            .expect("the worker's metrics address");
        self.http
            .get(format!("http://{addr}/metrics"))
            .send()
            .await
            .expect("GET /metrics")
            .text()
            .await
            .expect("metrics text")
    }

    pub async fn connect(&self, edge: usize) -> WsClient {
        WsClient::connect(&self.ws_url(edge)).await
    }

    pub async fn db(&self) -> sqlx::PgPool {
        sqlx::PgPool::connect(&self.database_url)
            .await
            .expect("connect to the test database")
    }

    /// The value of one sample of an edge's `/metrics` (`name` with its labels as printed, e.g.
    /// `edge_ws_refused_total{reason="full"}`); `None` while the series does not exist.
    pub async fn edge_metric(&self, edge: usize, sample: &str) -> Option<f64> {
        let text = self
            .http
            .get(format!("{}/metrics", self.http_url(edge)))
            .send()
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        text.lines().find_map(|line| {
            let value = line.strip_prefix(sample)?.strip_prefix(' ')?;
            value.trim().parse().ok()
        })
    }

    /// JetStream on this stack's NATS (`nats_url`, which may be a private server or a cluster).
    /// Waits until `count` turns of the thread are committed. A turn commits just after its last
    /// frame is published, so a client can see `message_complete` a moment before.
    pub async fn wait_for_turns(&self, thread_id: &str, count: i64) {
        let db = self.db().await;
        eventually("the thread's turns to be committed", || async {
            let committed: i64 =
                sqlx::query_scalar("SELECT count(*) FROM turns WHERE thread_id = $1")
                    .bind(thread_id)
                    .fetch_one(&db)
                    .await
                    .ok()?;
            (committed >= count).then_some(())
        })
        .await;
    }

    /// The stack's subject, stream and consumer names, as the processes build them.
    pub fn subjects(&self) -> Subjects {
        Subjects::new(self.prefix.clone())
    }

    pub async fn jetstream(&self) -> async_nats::jetstream::Context {
        let client = nats_client(&self.nats_url).await.expect("connect to NATS");
        async_nats::jetstream::new(client)
    }

    /// Messages stored in `<PREFIX>_IN`.
    pub async fn stored_inbound(&self) -> u64 {
        let js = self.jetstream().await;
        let mut stream = js
            .get_stream(self.subjects().inbound_stream())
            .await
            .expect("inbound stream exists");
        stream.info().await.expect("stream info").state.messages
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        for process in self.edges.iter_mut().chain(self.workers.iter_mut()) {
            let _ = process.child.start_kill();
        }
        let subjects = self.subjects();
        let database = self.database.clone();
        let nats_url = self.nats_url.clone();
        // Drop runs inside the test's runtime: clean up on a thread with a runtime of its own.
        let cleanup = std::thread::spawn(move || {
            let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            runtime.block_on(async move {
                if let Ok(client) = nats_client(&nats_url).await {
                    let js = async_nats::jetstream::new(client);
                    for stream in [subjects.inbound_stream(), subjects.replies_stream()] {
                        let _ = js.delete_stream(stream).await;
                    }
                }
                if let Ok(pool) =
                    sqlx::PgPool::connect(&format!("{}/postgres", postgres_url())).await
                {
                    let _ = sqlx::query(&format!(
                        "DROP DATABASE IF EXISTS \"{database}\" WITH (FORCE)"
                    ))
                    .execute(&pool)
                    .await;
                }
            });
        });
        let _ = cleanup.join();
    }
}

/// Sends `request` (within [`WAIT`]) and returns its status and JSON body (`null` if it has
/// none).
pub async fn status_and_json(request: reqwest::RequestBuilder) -> (u16, Value) {
    let response = tokio::time::timeout(WAIT, request.send())
        .await
        .expect("the edge answers in time")
        .expect("request sent");
    let status = response.status().as_u16();
    let text = tokio::time::timeout(WAIT, response.text())
        .await
        .expect("the body arrives in time")
        .expect("a body");
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

/// Polls `check` until it returns `Some`, or panics after [`WAIT`] naming `what`.
pub async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The value of the sample `name` (with its labels, if any, exactly as written, such as
/// `worker_deliveries_total{result="failed"}`) in Prometheus text; `None` when absent.
pub fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .find_map(|line| {
            let (sample, value) = line.rsplit_once(' ')?;
            (sample == name).then(|| value.parse().ok()).flatten()
        })
}
