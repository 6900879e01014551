//! A TCP proxy a test can cut and restore, to make NATS or PostgreSQL unreachable for one process.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

pub struct TcpProxy {
    listen: SocketAddr,
    upstream: SocketAddr,
    tasks: Arc<Mutex<Vec<JoinHandle<()>>>>,
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
        };
        proxy.serve(listener);
        proxy
    }

    pub fn addr(&self) -> SocketAddr {
        self.listen
    }

    fn serve(&self, listener: TcpListener) {
        let tasks = self.tasks.clone();
        let upstream = self.upstream;
        let accept = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let pipe = tokio::spawn(async move {
                    if let Ok(mut outbound) = TcpStream::connect(upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
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
