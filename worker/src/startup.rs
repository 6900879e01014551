//! Wiring: NATS, streams and the durable consumer, PostgreSQL, the metrics listener.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use axum::routing::get;
use shared::config::LlmProvider;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::agents::{AgentsConfig, Graph};
use crate::llm::gate::ProviderGate;
use crate::llm::openai::{OpenAiModel, OpenAiSettings};
use crate::llm::{GatedModel, Model, ScriptedModel};
use crate::metrics::WorkerMetrics;
use crate::store::Store;
use crate::turn::TurnRunner;
use crate::Settings;

/// How long a frame publish may wait for JetStream's ack.
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(10);

/// Connections of the pool that renews leases (besides `DATABASE_MAX_CONNECTIONS`). They are
/// opened at start-up and kept: a renewal must not have to open a connection when the server is
/// busiest (a renewal is one single-row update: two connections renew thousands a second).
pub const LEASE_CONNECTIONS: u32 = 2;

/// Installs rustls' ring provider as the process's TLS crypto provider, once, before anything
/// builds an HTTP client (the model's, imported tools'): reqwest is built without a default
/// provider and panics when a client is built with none. One already installed is kept.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

pub struct Worker {
    settings: Settings,
    consumer: async_nats::jetstream::consumer::PullConsumer,
    runner: TurnRunner,
    metrics_listener: TcpListener,
    nats: async_nats::Client,
}

impl Worker {
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        install_crypto_provider();
        let nats = shared::jetstream::connect(&settings.nats, "worker").await?;
        let jetstream = shared::jetstream::context(nats.clone(), PUBLISH_TIMEOUT);
        let (inbound, replies) =
            shared::jetstream::ensure_streams(&jetstream, &settings.nats).await?;
        let ack_wait = Duration::from_secs(settings.worker.ack_wait_secs);
        let consumer =
            shared::jetstream::ensure_workers_consumer(&inbound, &settings.nats, ack_wait).await?;
        let db = shared::db::connect_at_start_up(&settings.database).await?;
        if settings.seed_demo_data {
            crate::demo_seed::seed(&db).await?;
            tracing::info!("SEED_DEMO_DATA=true: the demo shop's data is loaded.");
        } else if settings.worker.agents_config.is_none()
            && !crate::demo_seed::is_seeded(&db).await?
        {
            tracing::warn!(
                "The built-in demo agents run (AGENTS_CONFIG is unset) but the demo shop's data is not loaded: its tools will fail. Run `worker seed` or set SEED_DEMO_DATA=true."
            );
        }
        // Lease renewals on a small pool of their own: a main pool busy with turns must not
        // starve them, or leases run out under load.
        let leases = sqlx::postgres::PgPoolOptions::new()
            .max_connections(LEASE_CONNECTIONS)
            .min_connections(LEASE_CONNECTIONS)
            .idle_timeout(None)
            .acquire_timeout(Duration::from_secs(5))
            .connect_with(db.connect_options().as_ref().clone())
            .await
            .context("Failed to open the lease pool's connections to PostgreSQL")?;
        let worker_id = uuid::Uuid::new_v4();
        let metrics = WorkerMetrics::new()?;
        let store = Store::new(
            db,
            leases,
            worker_id,
            Duration::from_secs(settings.worker.lease_ttl_secs),
            Duration::from_secs(settings.worker.session_ttl_secs),
            Duration::from_secs(settings.worker.interrupt_ttl_secs),
        )
        .with_group_sizes(metrics.group_statement_threads.clone());
        let graph = build_graph(&settings.worker, store.clone(), metrics.clone())?;
        let metrics_listener = TcpListener::bind(settings.worker.metrics_addr)
            .await
            .with_context(|| {
                format!(
                    "Failed to listen on METRICS_ADDR {}",
                    settings.worker.metrics_addr
                )
            })?;
        let runner = TurnRunner {
            jetstream,
            inbound_conditions: shared::jetstream::StoreConditions::watch(&inbound),
            inbound,
            replies,
            subjects: settings.nats.subjects(),
            store,
            graph,
            max_attempts: settings.worker.turn_max_attempts,
            abandon: CancellationToken::new(),
            metrics,
            cancels: crate::cancels::Cancels::default(),
            double_text: settings.conversations.double_text,
            tails: crate::publish::TailMemory::default(),
            drains: crate::drain::LocalDrains::default(),
        };
        tracing::info!(%worker_id, "Worker built.");
        Ok(Self {
            settings,
            consumer,
            runner,
            metrics_listener,
            nats,
        })
    }

    pub fn metrics_addr(&self) -> std::io::Result<SocketAddr> {
        self.metrics_listener.local_addr()
    }

    /// Pulls and runs turns until `shutdown` resolves; then stops pulling, lets in-flight turns
    /// finish within the grace period, and returns. Unfinished turns are redelivered elsewhere.
    pub async fn run_until(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let Self {
            settings,
            consumer,
            runner,
            metrics_listener,
            nats,
        } = self;
        let metrics_addr = metrics_listener.local_addr()?;
        let registry = runner.metrics.registry.clone();
        let abandon = runner.abandon.clone();
        let dependencies = shared::health::Dependencies {
            nats: nats.clone(),
            jetstream: runner.jetstream.clone(),
            stream: runner.subjects.inbound_stream(),
            db: runner.store.pool().clone(),
        };
        let metrics_app = axum::Router::new()
            .route(
                "/metrics",
                get(move || {
                    let registry = registry.clone();
                    async move { shared::metrics::render(&registry) }
                }),
            )
            .route("/livez", get(live))
            .route(
                "/readyz",
                get(move || {
                    let dependencies = dependencies.clone();
                    async move { ready(&dependencies).await }
                }),
            );
        let stop_metrics = CancellationToken::new();
        let serve_metrics = axum::serve(metrics_listener, metrics_app)
            .with_graceful_shutdown(stop_metrics.clone().cancelled_owned());
        let metrics_server = tokio::spawn(async move { serve_metrics.await });

        let stop = CancellationToken::new();
        let turns = TaskTracker::new();
        let queue_depth = tokio::spawn(watch_queue_depth(consumer.clone(), runner.metrics.clone()));
        // Cancel notices are heard before the first turn runs (SPEC §8).
        let stop_listening = CancellationToken::new();
        let listening = runner
            .cancels
            .listen(&nats, &runner.subjects, stop_listening.clone())
            .await
            .context("Failed to subscribe to cancel notices")?;
        let sweeping = crate::retention::spawn(&settings.conversations, &runner, stop.clone());
        let concurrency = settings.worker.concurrency as usize;
        tracing::info!(
            concurrency,
            prefix = %settings.nats.prefix,
            addr = %metrics_addr,
            "Worker pulling."
        );
        let pulling = tokio::spawn(crate::consumer::run(
            consumer,
            runner,
            crate::consumer::PullSettings {
                concurrency,
                progress_every: Duration::from_secs(settings.worker.ack_wait_secs) / 3,
            },
            turns.clone(),
            stop.clone(),
        ));
        shutdown.await;
        stop.cancel();
        pulling.await.context("the pull loop panicked")?;
        turns.close();
        let grace = settings.shutdown.grace();
        tracing::info!(
            in_flight = turns.len(),
            ?grace,
            "Stopped pulling; finishing in-flight turns."
        );
        if tokio::time::timeout(grace, turns.wait()).await.is_err() {
            tracing::warn!(
                unfinished = turns.len(),
                "Grace period over; handing unfinished turns back."
            );
            // Each releases its thread's lease and naks its message, so another worker takes it now.
            abandon.cancel();
            if tokio::time::timeout(Duration::from_secs(5), turns.wait())
                .await
                .is_err()
            {
                tracing::warn!(
                    "Some turns did not hand back in time; JetStream will redeliver them."
                );
            }
        }
        queue_depth.abort();
        stop_listening.cancel();
        listening.abort();
        if let Some(sweeping) = sweeping {
            sweeping.abort();
        }
        // Bounded: with NATS gone a flush would wait for a reconnection that never comes.
        match tokio::time::timeout(Duration::from_secs(5), nats.flush()).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => tracing::warn!(%error, "Cannot flush NATS at shutdown."),
            Err(_) => tracing::warn!("NATS did not take the last messages within 5 s of shutdown."),
        }
        stop_metrics.cancel();
        match metrics_server.await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => tracing::warn!(%error, "Metrics server failed."),
            Err(error) => tracing::warn!(%error, "Metrics server panicked."),
        }
        tracing::info!("Worker stopped.");
        Ok(())
    }
}

/// `/livez` on `METRICS_ADDR`: the process serves; no dependency is checked.
async fn live() -> axum::Json<serde_json::Value> {
    axum::Json(serde_json::json!({"status": "ok"}))
}

/// `/readyz` on `METRICS_ADDR`: NATS and PostgreSQL answer; 503 naming the one that does not.
async fn ready(
    dependencies: &shared::health::Dependencies,
) -> (axum::http::StatusCode, axum::Json<serde_json::Value>) {
    let readiness = dependencies.check().await;
    let status = if readiness.is_ready() {
        axum::http::StatusCode::OK
    } else {
        axum::http::StatusCode::SERVICE_UNAVAILABLE
    };
    (status, axum::Json(readiness.body("worker")))
}

/// The agents, their tools and the model provider, from the settings. A bad `AGENTS_CONFIG`
/// stops start-up here, with a message naming the file, the agent and the field.
fn build_graph(
    settings: &shared::config::WorkerSettings,
    store: Store,
    metrics: WorkerMetrics,
) -> anyhow::Result<Graph> {
    let toolbox = crate::tools::Toolbox::demo()?;
    let config = AgentsConfig::load(settings.agents_config.as_deref(), &toolbox)?;
    let model: Arc<dyn Model> = match settings.llm_provider {
        LlmProvider::Scripted => Arc::new(ScriptedModel {
            reply_tokens: settings.scripted_reply_tokens,
            token_delay: Duration::from_millis(settings.scripted_token_delay_ms),
            fail_on: settings.scripted_fail_on.clone(),
            panic_on: settings.scripted_panic_on.clone(),
        }),
        LlmProvider::Openai => Arc::new(OpenAiModel::new(OpenAiSettings {
            base_url: settings.openai_base_url.clone(),
            api_key: settings
                .openai_api_key
                .as_ref()
                .map(|key| key.expose().to_owned()),
            model: settings.llm_model.clone(),
            request_timeout: Duration::from_secs(settings.llm_timeout_secs),
            idle_timeout: Duration::from_secs(settings.llm_idle_timeout_secs),
        })?),
    };
    // One gate for the provider: every call of this worker passes it.
    let gate = Arc::new(ProviderGate::new(metrics.provider_gate_openings.clone()));
    let model: Arc<dyn Model> = Arc::new(GatedModel::new(model, gate));
    let mut models: Vec<&str> = config
        .agents
        .iter()
        .filter_map(|agent| agent.model.as_deref())
        .collect();
    models.push(model.default_model());
    for name in models {
        if !config.prices.contains_key(name) {
            tracing::warn!(
                model = name,
                "No price for this model in the agents config; its cost counts as 0."
            );
        }
    }
    tracing::info!(
        agents = ?config.agents.iter().map(|agent| agent.name.as_str()).collect::<Vec<_>>(),
        provider = ?settings.llm_provider,
        model = model.default_model(),
        "Agents loaded."
    );
    Ok(Graph {
        config: Arc::new(config),
        toolbox: Arc::new(toolbox),
        model,
        store,
        interrupt_ttl: Duration::from_secs(settings.interrupt_ttl_secs),
        metrics,
        http: Arc::new(crate::tools::http::HttpSettings {
            timeout: Duration::from_secs(settings.tool_timeout_secs),
            max_response_bytes: settings.tool_response_max_bytes,
            allow: crate::tools::http::HostAllowList::parse(&settings.tool_hosts_allow),
        }),
    })
}

/// How often the queue depth gauges are refreshed.
const QUEUE_DEPTH_EVERY: Duration = Duration::from_secs(5);

/// Keeps `worker_queue_*` up to date from the shared consumer's state.
async fn watch_queue_depth(
    mut consumer: async_nats::jetstream::consumer::PullConsumer,
    metrics: WorkerMetrics,
) {
    let mut every = tokio::time::interval(QUEUE_DEPTH_EVERY);
    loop {
        every.tick().await;
        match consumer.info().await {
            Ok(info) => {
                metrics
                    .queue_pending
                    .set(i64::try_from(info.num_pending).unwrap_or(i64::MAX));
                metrics
                    .queue_ack_pending
                    .set(i64::try_from(info.num_ack_pending).unwrap_or(i64::MAX));
            }
            Err(error) => tracing::debug!(%error, "Cannot read the consumer's state."),
        }
    }
}
