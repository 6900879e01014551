//! Private `nats-server` processes, for tests that stop, restart or kill NATS: the shared server on
//! 127.0.0.1:4222 serves every other test at the same time and is never touched.
//!
//! A [`NatsServer`] runs JetStream on a free loopback port with a store directory of its own; it
//! can be stopped and started again on the same port and store (so JetStream data survives), and
//! it is killed and its directory removed when dropped. [`NatsServer::cluster`] starts the members
//! of a JetStream cluster on loopback.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::process::{Child, Command};

use crate::WAIT;

/// One `nats-server` process (stopped or running) and the directory it keeps its data in.
pub struct NatsServer {
    name: String,
    port: u16,
    /// Removed on drop; holds the JetStream store.
    dir: PathBuf,
    /// Cluster flags of a cluster member; empty for a standalone server.
    cluster_args: Vec<String>,
    /// A configuration file (`-c`) in `dir`; command-line flags win over it.
    config: Option<PathBuf>,
    child: Option<Child>,
}

impl NatsServer {
    /// A standalone JetStream server on a free loopback port, running.
    pub async fn start_new() -> Self {
        let port = free_ports(1)[0];
        let mut server = Self::new("n1".into(), port, Vec::new());
        server.start().await;
        server
    }

    /// A standalone JetStream server on a free loopback port, running with `config` (nats-server
    /// configuration syntax, e.g. `tls { … }` or `authorization { … }`) as its configuration file.
    pub async fn start_with_config(config: &str) -> Self {
        let port = free_ports(1)[0];
        let mut server = Self::new("n1".into(), port, Vec::new());
        let path = server.dir.join("nats.conf");
        std::fs::write(&path, config).expect("write the NATS configuration");
        server.config = Some(path);
        server.start().await;
        server
    }

    /// `SIZE` JetStream cluster members on free loopback ports, running and routed to each other.
    /// JetStream may still be electing its leaders: see [`NatsServer::wait_for_jetstream`].
    pub async fn cluster<const SIZE: usize>() -> [Self; SIZE] {
        let ports = free_ports(2 * SIZE);
        let (clients, routes) = ports.split_at(SIZE);
        let cluster_name = format!("e2e-{}", uuid::Uuid::new_v4().simple());
        let mut servers = std::array::from_fn(|i| {
            let others: Vec<String> = (0..SIZE)
                .filter(|&j| j != i)
                .map(|j| format!("nats://127.0.0.1:{}", routes[j]))
                .collect();
            let cluster_args = vec![
                "--cluster".into(),
                format!("nats://127.0.0.1:{}", routes[i]),
                "--routes".into(),
                others.join(","),
                "--cluster_name".into(),
                cluster_name.clone(),
            ];
            Self::new(format!("n{}", i + 1), clients[i], cluster_args)
        });
        // Spawn every member before waiting for any, so that they find each other at once.
        for server in &mut servers {
            server.spawn();
        }
        for server in &mut servers {
            server.wait_until_listening().await;
        }
        servers
    }

    fn new(name: String, port: u16, cluster_args: Vec<String>) -> Self {
        let dir =
            std::env::temp_dir().join(format!("e2e-nats-{name}-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).expect("create the NATS store directory");
        Self {
            name,
            port,
            dir,
            cluster_args,
            config: None,
            child: None,
        }
    }

    /// The server name (`n1`, `n2` …), as JetStream reports stream leaders.
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The client URL, `nats://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// The client URLs of `servers`, comma-separated, as `NATS_URL` takes them.
    pub fn urls(servers: &[Self]) -> String {
        servers.iter().map(Self::url).collect::<Vec<_>>().join(",")
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// Starts the server (again) on its port and store, and waits until it accepts connections.
    pub async fn start(&mut self) {
        self.spawn();
        self.wait_until_listening().await;
    }

    /// SIGTERM: a clean shutdown (JetStream flushes its store). Waits for the exit.
    pub async fn stop(&mut self) {
        let mut child = self.child.take().expect("the NATS server is running");
        let pid = child.id().expect("the NATS server has a pid");
        let status = std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success(), "SIGTERM to nats-server {}", self.name);
        tokio::time::timeout(WAIT, child.wait())
            .await
            .unwrap_or_else(|_| panic!("nats-server {} did not exit after SIGTERM", self.name))
            .expect("nats-server exit status");
    }

    /// SIGKILL: the server dies wherever it is. Waits for the exit.
    pub async fn kill(&mut self) {
        let mut child = self.child.take().expect("the NATS server is running");
        child.start_kill().expect("SIGKILL nats-server");
        tokio::time::timeout(WAIT, child.wait())
            .await
            .unwrap_or_else(|_| panic!("nats-server {} did not exit after SIGKILL", self.name))
            .expect("nats-server exit status");
    }

    fn spawn(&mut self) {
        assert!(
            self.child.is_none(),
            "nats-server {} already runs",
            self.name
        );
        let store = self.dir.join("store");
        let mut command = Command::new(nats_server_binary());
        command
            .args([
                "-a",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-js",
                "-sd",
            ])
            .arg(&store)
            .args(["--server_name", &self.name])
            .args(&self.cluster_args)
            .args(
                self.config
                    .iter()
                    .flat_map(|config| [Path::new("-c"), config]),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .kill_on_drop(true);
        if std::env::var_os("TEST_LOG").is_some() {
            command.stderr(Stdio::inherit());
        } else {
            command.stderr(Stdio::null());
        }
        let child = command
            .spawn()
            .unwrap_or_else(|e| panic!("nats-server {} starts: {e}", self.name));
        self.child = Some(child);
    }

    /// Waits until the client port accepts connections; panics if the process exits first.
    async fn wait_until_listening(&mut self) {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            if tokio::net::TcpStream::connect(("127.0.0.1", self.port))
                .await
                .is_ok()
            {
                return;
            }
            let child = self.child.as_mut().expect("the NATS server was spawned");
            if let Ok(Some(status)) = child.try_wait() {
                panic!(
                    "nats-server {} exited before listening on port {}: {status}",
                    self.name, self.port
                );
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "nats-server {} did not listen on port {} in time",
                self.name,
                self.port
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until JetStream on `servers` can create (and delete) a stream with one replica per
    /// server: a new cluster first elects its meta leader.
    pub async fn wait_for_jetstream(servers: &[Self]) {
        let urls = Self::urls(servers);
        let probe = format!("PROBE_{}", uuid::Uuid::new_v4().simple());
        crate::eventually("JetStream to be ready on the NATS servers", || async {
            let client = crate::nats_client(&urls).await.ok()?;
            // A request sent before the cluster has a meta leader goes unanswered: ask again soon.
            let js = async_nats::jetstream::ContextBuilder::new()
                .timeout(Duration::from_secs(2))
                .build(client);
            let config = async_nats::jetstream::stream::Config {
                name: probe.clone(),
                subjects: vec![format!("{}.>", probe.to_lowercase())],
                num_replicas: servers.len(),
                ..Default::default()
            };
            js.create_stream(config).await.ok()?;
            js.delete_stream(&probe).await.ok()?;
            Some(())
        })
        .await;
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.start_kill();
            // The store can only go once the process no longer writes to it.
            for _ in 0..250 {
                if !matches!(child.try_wait(), Ok(None)) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `nats-server` on the PATH, else `/usr/sbin/nats-server`.
fn nats_server_binary() -> PathBuf {
    let on_path = std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|dir| dir.join("nats-server"))
            .find(|candidate| candidate.is_file())
    });
    let binary = on_path.unwrap_or_else(|| PathBuf::from("/usr/sbin/nats-server"));
    assert!(
        Path::new(&binary).is_file(),
        "nats-server is not installed (looked on the PATH and at /usr/sbin/nats-server)"
    );
    binary
}

/// `count` distinct loopback ports that were free a moment ago.
pub fn free_ports(count: usize) -> Vec<u16> {
    // Hold every listener until all are bound, so the ports differ.
    let listeners: Vec<std::net::TcpListener> = (0..count)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free loopback port"))
        .collect();
    listeners
        .iter()
        .map(|listener| listener.local_addr().expect("local address").port())
        .collect()
}
