//! The floor: the same traffic shape on the same NATS with no edge, no worker logic and no
//! database — publish to JetStream (awaiting its ack) → pull → `tokens + 1` frames on a core
//! subject → ack — so the pipeline's cost can be read as a ratio to what the queue alone does on
//! this machine.
//!
//! Kept as tight as the transport allows, so that the ratio does not flatter the pipeline: the
//! payloads have the pipeline's shape and about its size but are written with `format!` straight
//! into the bytes handed to the client (no `serde_json::Value` per frame); subjects are built once
//! per turn and cloned by reference count; the floor worker pulls with one long-lived pull
//! subscription (`PullConsumer::stream`, which asks for the next messages before the current ones
//! run out) rather than a new pull request after every batch; the client counts frames and checks
//! only that the last one is `message_complete` (the pipeline's client parses a small head of
//! every frame because it must find `accepted` and the first token among frames of several kinds;
//! here their kind is known by position), under one deadline per turn rather than a timer per
//! frame.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use async_nats::jetstream::{self, consumer, stream};
use async_nats::Subject;
use bytes::Bytes;
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
        let messages = consumer
            .stream()
            .max_messages_per_batch(CONCURRENCY)
            .messages()
            .await
            .context("pull from the floor consumer")?;
        let worker = tokio::spawn(run_worker(messages, worker_client, prefix.clone(), tokens));
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
        let inbound = Subject::from(format!("{}.in.{thread}", self.prefix));
        let mut measured = Measured::new();
        for i in 0..messages {
            // The edge's inbound message, about its size.
            let payload = format!(
                r#"{{"thread_id":"{thread}","message_id":"m{i}","type":"message","content":"Where is my order {}?"}}"#,
                1001 + i % 10
            );
            let started = Instant::now();
            self.jetstream
                .send_publish(
                    inbound.clone(),
                    jetstream::message::PublishMessage::build()
                        .payload(Bytes::from(payload))
                        .message_id(format!("{thread}:m{i}")),
                )
                .await?
                .await?;
            record(&mut measured.accepted, started.elapsed());
            measured.frames += 1;
            let deadline = tokio::time::Instant::from_std(started + turn_timeout);
            for frame in 0..=tokens {
                let message = tokio::time::timeout_at(deadline, replies.next())
                    .await
                    .context("floor turn timed out")?
                    .context("subscription closed")?;
                measured.frames += 1;
                if frame == 0 {
                    record(&mut measured.first_token, started.elapsed());
                }
                if frame == tokens && !contains(&message.payload, br#""type":"message_complete""#) {
                    bail!("the floor's last frame is not message_complete");
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

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// The frames of one turn, as the worker's publisher writes them (about their size).
fn frame(thread: &str, seq: usize, tokens: usize) -> Bytes {
    let text = if seq <= tokens {
        format!(
            r#"{{"thread_id":"{thread}","seq":{seq},"turn_id":"floor","type":"token","agent":"general","content":"word "}}"#
        )
    } else {
        format!(
            r#"{{"thread_id":"{thread}","seq":{seq},"turn_id":"floor","type":"message_complete","usage":{{"prompt_tokens":4,"completion_tokens":{tokens},"cost_usd":0.0}}}}"#
        )
    };
    Bytes::from(text)
}

async fn run_worker(
    mut messages: consumer::pull::Stream,
    client: async_nats::Client,
    prefix: String,
    tokens: usize,
) {
    let slots = Arc::new(Semaphore::new(CONCURRENCY));
    while let Some(next) = messages.next().await {
        let Ok(message) = next else { continue };
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        let client = client.clone();
        let subject = message
            .subject
            .rsplit('.')
            .next()
            .map(|thread| Subject::from(format!("{prefix}.out.{thread}")));
        tokio::spawn(async move {
            let _permit = permit;
            let Some(subject) = subject else { return };
            let thread = subject.rsplit('.').next().unwrap_or_default();
            for seq in 1..=tokens + 1 {
                let payload = frame(thread, seq, tokens);
                if client.publish(subject.clone(), payload).await.is_err() {
                    return;
                }
            }
            let _ = message.ack().await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_are_the_pipelines_json() {
        let token: serde_json::Value = serde_json::from_slice(&frame("t1", 1, 2)).unwrap();
        assert_eq!(token["type"], "token");
        assert_eq!(token["seq"], 1);
        assert_eq!(token["thread_id"], "t1");
        let complete = frame("t1", 3, 2);
        let parsed: serde_json::Value = serde_json::from_slice(&complete).unwrap();
        assert_eq!(parsed["type"], "message_complete");
        assert_eq!(parsed["usage"]["completion_tokens"], 2);
        assert!(contains(&complete, br#""type":"message_complete""#));
        assert!(!contains(
            &frame("t1", 2, 2),
            br#""type":"message_complete""#
        ));
    }
}
