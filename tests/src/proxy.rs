//! A TCP proxy a test can cut and restore, to make NATS or PostgreSQL unreachable for one
//! process, and that counts what the process sends.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

pub struct TcpProxy {
    listen: SocketAddr,
    upstream: SocketAddr,
    tasks: Arc<Mutex<Vec<JoinHandle<()>>>>,
    sends: Arc<AtomicU64>,
}

impl TcpProxy {
    /// Forwards a fresh loopback port to `upstream`.
    pub async fn start(upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let listen = listener.local_addr().expect("proxy address");
        let proxy = Self {
            listen,
            upstream,
            tasks: Arc::default(),
            sends: Arc::default(),
        };
        proxy.serve(listener);
        proxy
    }

    /// A proxy to the tests' PostgreSQL server (the `host:port` of `TEST_POSTGRES_URL`).
    pub async fn to_postgres() -> Self {
        let upstream = crate::postgres_url()
            .rsplit('@')
            .next()
            .and_then(|address| address.parse().ok())
            .expect("TEST_POSTGRES_URL ends with host:port");
        Self::start(upstream).await
    }

    pub fn addr(&self) -> SocketAddr {
        self.listen
    }

    /// The sends from the clients so far, over every connection: each read of what a client
    /// wrote, forwarded. A client that writes a request whole and waits for the answer (as a
    /// PostgreSQL client does) makes one a round trip.
    pub fn sends(&self) -> u64 {
        self.sends.load(Ordering::SeqCst)
    }

    fn serve(&self, listener: TcpListener) {
        let tasks = self.tasks.clone();
        let (upstream, sends) = (self.upstream, self.sends.clone());
        let accept = tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                let sends = sends.clone();
                let pipe = tokio::spawn(async move {
                    if let Ok(outbound) = TcpStream::connect(upstream).await {
                        let (mut from_client, mut to_client) = inbound.into_split();
                        let (mut from_server, mut to_server) = outbound.into_split();
                        // Each way ends as `copy_bidirectional`'s: at the end of what one
                        // side sends, the other side's writing half is shut down.
                        let answers = async {
                            let _ = tokio::io::copy(&mut from_server, &mut to_client).await;
                            let _ = to_client.shutdown().await;
                        };
                        let requests = async {
                            let mut buffer = vec![0; 64 * 1024];
                            while let Ok(read @ 1..) = from_client.read(&mut buffer).await {
                                sends.fetch_add(1, Ordering::SeqCst);
                                if to_server.write_all(&buffer[..read]).await.is_err() {
                                    break;
                                }
                            }
                            let _ = to_server.shutdown().await;
                        };
                        tokio::join!(answers, requests);
                    }
                });
                tasks.lock().expect("proxy tasks").push(pipe);
            }
        });
        self.tasks.lock().expect("proxy tasks").push(accept);
    }

    /// Refuses new connections and drops every open one.
    pub fn cut(&self) {
        for task in self.tasks.lock().expect("proxy tasks").drain(..) {
            task.abort();
        }
    }

    /// Accepts connections again on the same port.
    pub async fn restore(&self) {
        let listener = TcpListener::bind(self.listen).await.expect("rebind proxy");
        self.serve(listener);
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.cut();
    }
}
