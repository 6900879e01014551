//! The floor: the same traffic shape on the same NATS with no edge, no worker logic and no
//! database — publish to JetStream → pull → `tokens + 1` frames on a core subject → ack — so the
//! pipeline's cost can be read as a ratio to what the queue alone does on this machine.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use async_nats::jetstream::{self, consumer, stream, AckKind};
use futures_util::StreamExt as _;
use tokio::sync::Semaphore;

use crate::stats::{record, Measured};

/// Turns a floor worker runs at once, as a real worker's default `WORKER_CONCURRENCY`.
const CONCURRENCY: usize = 256;

pub(crate) struct Floor {
    client: async_nats::Client,
    jetstream: jetstream::Context,
    prefix: String,
    stream: String,
    worker: tokio::task::JoinHandle<()>,
}

impl Floor {
    /// Creates a throwaway stream and consumer and starts the floor worker.
    pub(crate) async fn start(nats_url: &str, tokens: usize) -> anyhow::Result<Self> {
        let id = uuid::Uuid::new_v4().simple().to_string();
        let prefix = format!("lgf{id}");
        let stream_name = format!("LGF{}_IN", id.to_uppercase());
        let client = async_nats::connect(nats_url)
            .await
            .context("connect to NATS")?;
        let jetstream = jetstream::new(client.clone());
        let stream = jetstream
            .create_stream(stream::Config {
                name: stream_name.clone(),
                subjects: vec![format!("{prefix}.in.*")],
                storage: stream::StorageType::File,
                duplicate_window: Duration::from_secs(120),
                ..Default::default()
            })
            .await
            .context("create the floor stream")?;
        let consumer: consumer::PullConsumer = stream
            .create_consumer(consumer::pull::Config {
                durable_name: Some("floor".into()),
                ack_policy: consumer::AckPolicy::Explicit,
                max_ack_pending: 100_000,
                ..Default::default()
            })
            .await
            .context("create the floor consumer")?;
        let worker_client = async_nats::connect(nats_url)
            .await
            .context("connect to NATS")?;
        let worker = tokio::spawn(run_worker(consumer, worker_client, prefix.clone(), tokens));
        Ok(Self {
            client,
            jetstream,
            prefix,
            stream: stream_name,
            worker,
        })
    }

    /// One client: its own thread subject, `messages` turns back to back.
    pub(crate) async fn client(
        &self,
        messages: usize,
        tokens: usize,
        turn_timeout: Duration,
    ) -> anyhow::Result<Measured> {
        let thread = uuid::Uuid::new_v4().simple().to_string();
        let mut replies = self
            .client
            .subscribe(format!("{}.out.{thread}", self.prefix))
            .await?;
        let mut measured = Measured::new();
        for i in 0..messages {
            let payload = serde_json::json!({
                "thread_id": thread, "message_id": format!("m{i}"), "type": "message",
                "content": format!("Where is my order {}?", 1001 + i % 10),
            });
            let started = Instant::now();
            self.jetstream
                .send_publish(
                    format!("{}.in.{thread}", self.prefix),
                    jetstream::message::PublishMessage::build()
                        .payload(payload.to_string().into())
                        .message_id(format!("{thread}:m{i}")),
                )
                .await?
                .await?;
            record(&mut measured.accepted, started.elapsed());
            measured.frames += 1;
            for frame in 0..=tokens {
                let message = tokio::time::timeout(turn_timeout, replies.next())
                    .await
                    .context("floor turn timed out")?
                    .context("subscription closed")?;
                let _: serde_json::Value = serde_json::from_slice(&message.payload)?;
                measured.frames += 1;
                if frame == 0 {
                    record(&mut measured.first_token, started.elapsed());
                }
            }
            record(&mut measured.turn, started.elapsed());
            measured.turns += 1;
        }
        Ok(measured)
    }

    pub(crate) async fn stop(self) {
        self.worker.abort();
        if let Err(error) = self.jetstream.delete_stream(&self.stream).await {
            eprintln!("could not delete the floor stream {}: {error}", self.stream);
        }
    }
}

async fn run_worker(
    consumer: consumer::PullConsumer,
    client: async_nats::Client,
    prefix: String,
    tokens: usize,
) {
    let slots = Arc::new(Semaphore::new(CONCURRENCY));
    loop {
        let Ok(first) = slots.clone().acquire_owned().await else {
            return;
        };
        let mut permits = vec![first];
        while let Ok(permit) = slots.clone().try_acquire_owned() {
            permits.push(permit);
        }
        let Ok(mut batch) = consumer
            .batch()
            .max_messages(permits.len())
            .expires(Duration::from_secs(1))
            .messages()
            .await
        else {
            continue;
        };
        while let Some(Ok(message)) = batch.next().await {
            let Some(permit) = permits.pop() else { break };
            let client = client.clone();
            let prefix = prefix.clone();
            tokio::spawn(async move {
                let _permit = permit;
                let thread = message
                    .subject
                    .rsplit('.')
                    .next()
                    .unwrap_or_default()
                    .to_owned();
                let subject = format!("{prefix}.out.{thread}");
                for seq in 1..=tokens + 1 {
                    let frame = if seq <= tokens {
                        serde_json::json!({"thread_id": thread, "seq": seq, "turn_id": "floor",
                                           "type": "token", "agent": "general", "content": "word "})
                    } else {
                        serde_json::json!({"thread_id": thread, "seq": seq, "turn_id": "floor",
                                           "type": "message_complete",
                                           "usage": {"prompt_tokens": 4, "completion_tokens": tokens, "cost_usd": 0.0}})
                    };
                    if client
                        .publish(subject.clone(), frame.to_string().into())
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
                let _ = message.ack_with(AckKind::Ack).await;
            });
        }
    }
}
