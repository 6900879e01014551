//! Wiring: connect NATS and PostgreSQL, bind the listener, serve until shutdown.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use axum::extract::ConnectInfo;
use hyper_util::rt::{TokioIo, TokioTimer};
use shared::auth::ThreadTokens;
use shared::config::LiveSubscription;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::connection::router::LiveRouter;
use crate::connection::slots::SocketSlots;
use crate::connection::SocketLimits;
use crate::metrics::EdgeMetrics;
use crate::origins::OriginPolicy;
use crate::rate_limit::{KeyedLimit, MessageBudget};
use crate::state::AppState;
use crate::Settings;

/// How long a publish may wait for JetStream's ack before the client gets `busy`.
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(5);

/// How often idle rate-limit entries are evicted.
const EVICT_EVERY: Duration = Duration::from_secs(30);

/// A built edge, bound to its port and ready to serve.
pub struct Edge {
    listener: TcpListener,
    state: AppState,
    settings: Settings,
}

impl Edge {
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        match shared::config::check_auth_secret(&settings.edge.auth_secret) {
            Ok(()) => {}
            Err(weak) if settings.edge.dev_mode => {
                tracing::warn!(reason = %weak, "DEV_MODE=true: accepting a weak AUTH_SECRET.");
            }
            Err(weak) => return Err(weak.into()),
        }
        // A socket that stops reading is closed after WRITE_TIMEOUT; meanwhile its subscriptions
        // (`LIVE_SUBSCRIPTION=thread`), or the edge's one live subscription, hold at most this
        // many bundles each.
        // Each reconnection bumps `reconnects`: sockets then catch up on what they may have missed.
        let (reconnected, reconnects) = tokio::sync::watch::channel(0u64);
        let options = async_nats::ConnectOptions::new()
            .subscription_capacity(4096)
            .event_callback(move |event| {
                if matches!(event, async_nats::Event::Connected) {
                    reconnected.send_modify(|count| *count += 1);
                }
                async move { tracing::info!(%event, "NATS connection event.") }
            });
        let nats = shared::jetstream::connect_with(&settings.nats, "edge", options).await?;
        let jetstream = shared::jetstream::context(nats.clone(), PUBLISH_TIMEOUT);
        let (inbound, replies) =
            shared::jetstream::ensure_streams(&jetstream, &settings.nats).await?;
        let db = shared::db::connect_at_start_up(&settings.database).await?;
        let tokens = ThreadTokens::new(settings.edge.auth_secret.expose().as_bytes())
            .context("AUTH_SECRET cannot key HMAC-SHA256")?;
        let window = Duration::from_secs(settings.edge.rate_limit_window_secs);
        let limits = &settings.edge.limits;
        let metrics = EdgeMetrics::new()?;
        let subjects = Arc::new(settings.nats.subjects());
        // Subscribed before the listener is bound, so before the edge serves or reports ready.
        let live_router = match settings.edge.live_subscription {
            LiveSubscription::Edge => {
                let router = Arc::new(LiveRouter::new(
                    crate::connection::router::QUEUE_BUNDLES,
                    metrics.live_routes.clone(),
                    metrics.live_dropped.clone(),
                ));
                router.subscribe(&nats, Arc::clone(&subjects)).await?;
                Some(router)
            }
            LiveSubscription::Thread => None,
        };
        let inbound_conditions = shared::jetstream::StoreConditions::watch(&inbound);
        let state = AppState {
            nats,
            jetstream,
            // Behind `Arc`s: a stream's info is 1.4 KiB inline and more on the heap, and the state
            // is cloned for every request and socket.
            inbound: Arc::new(inbound),
            replies: Arc::new(replies),
            inbound_conditions,
            db,
            subjects,
            tokens: Arc::new(tokens),
            message_limit: Arc::new(MessageBudget::new(
                settings.edge.rate_limit_messages,
                window,
            )),
            thread_limit: Arc::new(KeyedLimit::new(
                settings.edge.threads_per_minute,
                Duration::from_secs(60),
            )),
            answer_limit: Arc::new(MessageBudget::new(
                settings.edge.rate_limit_messages,
                window,
            )),
            addr_message_limit: Arc::new(MessageBudget::new(
                limits.messages_per_addr_per_minute,
                Duration::from_secs(60),
            )),
            resume_limit: Arc::new(KeyedLimit::new(
                limits.resumes_per_minute,
                Duration::from_secs(60),
            )),
            operator_limit: Arc::new(KeyedLimit::new(
                limits.operator_actions_per_minute,
                Duration::from_secs(60),
            )),
            trusted_proxies: Arc::new(limits.trusted_proxies.clone()),
            socket_slots: SocketSlots::new(limits.ws_max_sockets, limits.ws_max_sockets_per_addr),
            socket_limits: SocketLimits::from_settings(limits),
            metrics,
            admin_token: settings.edge.admin_token.clone(),
            origins: Arc::new(OriginPolicy::new(&settings.edge.origins)),
            live_router,
            reconnects,
            close_sockets: CancellationToken::new(),
            sockets: TaskTracker::new(),
        };
        crate::routes::erasure::watch_erasures(&state).await?;
        let listener = TcpListener::bind(settings.edge.addr)
            .await
            .with_context(|| format!("Failed to listen on EDGE_ADDR {}", settings.edge.addr))?;
        Ok(Self {
            listener,
            state,
            settings,
        })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until `shutdown` resolves; then stops accepting, lets sockets drain for the grace
    /// period, and closes the rest with 1001.
    pub async fn run_until(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let Self {
            listener,
            state,
            settings,
        } = self;
        let addr = listener.local_addr()?;
        tracing::info!(%addr, prefix = %settings.nats.prefix, "Edge listening.");
        let evictor = tokio::spawn(evict_idle_limits(state.clone()));
        crate::routes::web::configure(&settings.edge.web_dir);
        let app = crate::routes::router(state.clone());
        let header_timeout = Duration::from_secs(settings.edge.limits.http_header_timeout_secs);
        serve(listener, app, header_timeout, shutdown).await;

        let grace = settings.shutdown.grace();
        tracing::info!(
            open_sockets = state.sockets.len(),
            ?grace,
            "Draining sockets."
        );
        state.sockets.close();
        if tokio::time::timeout(grace, state.sockets.wait())
            .await
            .is_err()
        {
            state.close_sockets.cancel();
            if tokio::time::timeout(Duration::from_secs(5), state.sockets.wait())
                .await
                .is_err()
            {
                tracing::warn!("Some sockets did not close in time.");
            }
        }
        evictor.abort();
        // Bounded: with NATS gone a flush would wait for a reconnection that never comes.
        match tokio::time::timeout(Duration::from_secs(5), state.nats.flush()).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => tracing::warn!(%error, "Cannot flush NATS at shutdown."),
            Err(_) => tracing::warn!("NATS did not take the last messages within 5 s of shutdown."),
        }
        tracing::info!("Edge stopped.");
        Ok(())
    }
}

/// How long to wait before accepting again after the listener failed (out of file descriptors…).
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Serves HTTP/1 (with upgrades) until `shutdown`: every connection must send a request's headers
/// within `header_timeout` (axum::serve has no such bound, so half-sent requests were held for
/// ever), every request carries the TCP peer as `ConnectInfo`, and at shutdown the listener stops,
/// idle connections close and requests in flight finish. Upgraded sockets leave this loop: their
/// tasks are tracked in `AppState::sockets`.
async fn serve(
    listener: TcpListener,
    app: axum::Router,
    header_timeout: Duration,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(header_timeout);
    let stop = CancellationToken::new();
    let connections = TaskTracker::new();
    tokio::pin!(shutdown);
    loop {
        let (tcp, peer) = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    tracing::warn!(%error, "Cannot accept a connection.");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            },
        };
        // Frames are small and latency-bound: never let Nagle hold one back for an ACK.
        if let Err(error) = tcp.set_nodelay(true) {
            tracing::debug!(%error, "Cannot set TCP_NODELAY.");
        }
        let app = app.clone();
        let service = hyper::service::service_fn(
            move |mut request: hyper::Request<hyper::body::Incoming>| {
                request.extensions_mut().insert(ConnectInfo(peer));
                tower::ServiceExt::oneshot(app.clone(), request)
            },
        );
        let connection = http
            .serve_connection(TokioIo::new(tcp), service)
            .with_upgrades();
        let stop = stop.clone();
        connections.spawn(async move {
            tokio::pin!(connection);
            let served = tokio::select! {
                served = connection.as_mut() => served,
                () = stop.cancelled() => {
                    connection.as_mut().graceful_shutdown();
                    connection.await
                }
            };
            if let Err(error) = served {
                tracing::debug!(%error, %peer, "HTTP connection ended with an error.");
            }
        });
    }
    drop(listener);
    stop.cancel();
    connections.close();
    connections.wait().await;
}

async fn evict_idle_limits(state: AppState) {
    let mut every = tokio::time::interval(EVICT_EVERY);
    loop {
        every.tick().await;
        state.message_limit.evict_idle();
        state.thread_limit.evict_idle();
        state.answer_limit.evict_idle();
        state.addr_message_limit.evict_idle();
        state.resume_limit.evict_idle();
        state.operator_limit.evict_idle();
    }
}
