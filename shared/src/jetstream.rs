//! NATS connection and the idempotent JetStream set-up: streams `<PREFIX>_IN` (client messages,
//! with a duplicate window) and `<PREFIX>_OUT` (reply frames, retained for `resume`), and the
//! durable pull consumer all workers share.

use std::time::Duration;

use anyhow::Context as _;
use async_nats::jetstream::{self, consumer, stream};

use crate::config::NatsSettings;

/// The duplicate window of `<PREFIX>_IN` (SPEC §3): a message id sent again within it is stored once.
pub const DUPLICATE_WINDOW: Duration = Duration::from_secs(120);

/// Connects to the NATS servers of `NATS_URL` (comma-separated). The client reconnects by itself.
pub async fn connect(settings: &NatsSettings, name: &str) -> anyhow::Result<async_nats::Client> {
    let options = async_nats::ConnectOptions::new().event_callback(|event| async move {
        tracing::info!(%event, "NATS connection event.");
    });
    connect_with(settings, name, options).await
}

/// [`connect`] with options of the caller's (e.g. a smaller subscription capacity on the edge, an
/// event callback of its own).
pub async fn connect_with(
    settings: &NatsSettings,
    name: &str,
    options: async_nats::ConnectOptions,
) -> anyhow::Result<async_nats::Client> {
    let servers: Vec<async_nats::ServerAddr> = settings
        .url
        .split(',')
        .map(str::trim)
        .filter(|url| !url.is_empty())
        .map(str::parse)
        .collect::<Result<_, _>>()
        .with_context(|| format!("NATS_URL `{}` is not a list of NATS URLs", settings.url))?;
    options
        .name(name)
        .connection_timeout(Duration::from_secs(5))
        .connect(servers)
        .await
        .with_context(|| format!("Failed to connect to NATS at {}", settings.url))
}

/// A JetStream context whose publishes give up after `timeout`.
pub fn context(client: async_nats::Client, timeout: Duration) -> jetstream::Context {
    jetstream::ContextBuilder::new()
        .timeout(timeout)
        .build(client)
}

/// The two streams, created or brought up to date. Safe to run from every process at start-up.
pub async fn ensure_streams(
    js: &jetstream::Context,
    settings: &NatsSettings,
) -> anyhow::Result<(stream::Stream, stream::Stream)> {
    let subjects = settings.subjects();
    let inbound = stream::Config {
        name: subjects.inbound_stream(),
        description: Some("Client messages, keyed by thread; kept for replay.".into()),
        subjects: vec![subjects.inbound_wildcard()],
        storage: stream::StorageType::File,
        retention: stream::RetentionPolicy::Limits,
        duplicate_window: DUPLICATE_WINDOW,
        max_age: Duration::from_secs(settings.inbound_retention_secs),
        num_replicas: settings.replicas,
        allow_direct: true,
        ..Default::default()
    };
    let replies = stream::Config {
        name: subjects.replies_stream(),
        description: Some("Reply frames per thread, retained for resume.".into()),
        subjects: vec![subjects.replies_wildcard()],
        storage: stream::StorageType::File,
        retention: stream::RetentionPolicy::Limits,
        max_age: Duration::from_secs(settings.reply_retention_secs),
        max_messages_per_subject: settings.reply_max_per_thread,
        num_replicas: settings.replicas,
        allow_direct: true,
        // Edges relay what the stream stored, never what it refused.
        republish: Some(stream::Republish {
            source: subjects.replies_wildcard(),
            destination: subjects.live_template(),
            headers_only: false,
        }),
        ..Default::default()
    };
    let mut streams = Vec::with_capacity(2);
    for config in [inbound, replies] {
        let name = config.name.clone();
        js.create_or_update_stream(config)
            .await
            .with_context(|| format!("Failed to create or update JetStream stream {name}"))?;
        let stream = js
            .get_stream(&name)
            .await
            .with_context(|| format!("Failed to open JetStream stream {name}"))?;
        streams.push(stream);
    }
    let replies = streams.pop().context("replies stream")?;
    let inbound = streams.pop().context("inbound stream")?;
    Ok((inbound, replies))
}

/// The durable pull consumer `<prefix>-workers` on `<PREFIX>_IN`, shared by every worker.
pub async fn ensure_workers_consumer(
    inbound: &stream::Stream,
    settings: &NatsSettings,
    ack_wait: Duration,
) -> anyhow::Result<consumer::PullConsumer> {
    let name = settings.subjects().workers_consumer();
    let config = consumer::pull::Config {
        durable_name: Some(name.clone()),
        description: Some("Turn workers".into()),
        ack_policy: consumer::AckPolicy::Explicit,
        ack_wait,
        // Attempts are counted by the project, not by JetStream: redeliver for ever.
        max_deliver: -1,
        max_ack_pending: 100_000,
        deliver_policy: consumer::DeliverPolicy::All,
        ..Default::default()
    };
    inbound
        .get_or_create_consumer(&name, config)
        .await
        .with_context(|| format!("Failed to create the durable consumer {name}"))
}
