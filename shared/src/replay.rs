//! Re-driving retained client messages from `<PREFIX>_IN` after an incident (SPEC §6): by thread,
//! by time window, or the dead letters. A re-driven message is published again on its thread's
//! subject as a new message (new turn id, a `Nats-Msg-Id` of its own so the duplicate window does
//! not swallow it) and runs after whatever the thread already has. What was already processed is
//! left alone unless forced; what is still waiting to run is always left alone.
//! Shared by `worker replay` and `POST /api/admin/replay`.

use std::time::Duration;

use anyhow::Context as _;
use async_nats::jetstream::{self, consumer, message::PublishMessage, stream};
use futures_util::StreamExt as _;
use serde::{Deserialize, Serialize};
use sqlx::PgPool;

use crate::ids::{ThreadId, TurnId};
use crate::protocol::bus::InboundMessage;
use crate::subjects::Subjects;

/// The header a re-driven copy carries: the stream sequence of the original.
pub const REPLAY_OF_HEADER: &str = "Replay-Of";

/// Which retained messages to consider.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Selection {
    /// Every retained message of one thread.
    Thread(ThreadId),
    /// Every retained message stored in `[since, until)` (until: now).
    Window {
        since: chrono::DateTime<chrono::Utc>,
        until: Option<chrono::DateTime<chrono::Utc>>,
    },
    /// Every dead letter not re-driven yet.
    DeadLetters,
}

/// What to do with the selection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplayRequest {
    pub selection: Selection,
    /// Only report what would be re-driven.
    pub dry_run: bool,
    /// Re-drive messages that were already processed, too.
    pub force: bool,
}

/// Where a selected message stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum MessageState {
    /// Given up on after its attempts; replay re-drives it.
    DeadLetter,
    /// Its turn committed; re-driven only when forced.
    Processed,
    /// Not processed yet: the workers will run it anyway.
    Pending,
}

/// What replay did with a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    Redriven,
    WouldRedrive,
    Skipped,
}

#[derive(Debug, Clone, Serialize)]
pub struct ReplayItem {
    pub thread_id: ThreadId,
    pub in_seq: u64,
    pub message_id: String,
    pub state: MessageState,
    pub action: Action,
    /// Stream sequence of the re-driven copy.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub new_seq: Option<u64>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct ReplaySummary {
    pub selected: usize,
    pub redriven: usize,
    /// Already processed and left alone (re-drive them with force).
    pub already_processed: usize,
    /// Still waiting for a worker; left alone.
    pub pending: usize,
    /// Dead letters whose message is no longer retained in the stream.
    pub missing: usize,
    pub dry_run: bool,
    pub items: Vec<ReplayItem>,
}

impl ReplaySummary {
    /// One line for people.
    pub fn describe(&self) -> String {
        let verb = if self.dry_run {
            "would re-drive"
        } else {
            "re-drove"
        };
        let mut line = format!(
            "{} selected: {verb} {}, {} already processed (left alone{}), {} pending (left alone)",
            self.selected,
            self.redriven,
            self.already_processed,
            if self.already_processed > 0 {
                "; --force re-drives them"
            } else {
                ""
            },
            self.pending,
        );
        if self.missing > 0 {
            line.push_str(&format!(
                ", {} no longer retained in the stream",
                self.missing
            ));
        }
        line
    }
}

/// Everything replay touches.
pub struct Replayer<'a> {
    pub jetstream: &'a jetstream::Context,
    pub inbound: &'a stream::Stream,
    pub db: &'a PgPool,
    pub subjects: &'a Subjects,
}

impl Replayer<'_> {
    /// Runs a replay. `progress(done, total)` is called after each message.
    pub async fn run(
        &self,
        request: &ReplayRequest,
        mut progress: impl FnMut(usize, usize),
    ) -> anyhow::Result<ReplaySummary> {
        let mut summary = ReplaySummary {
            dry_run: request.dry_run,
            ..ReplaySummary::default()
        };
        let selected = self.select(&request.selection, &mut summary).await?;
        summary.selected = selected.len() + summary.missing;
        let total = selected.len();
        for (done, stored) in selected.into_iter().enumerate() {
            let item = self.consider(stored, request).await?;
            match (item.state, item.action) {
                (_, Action::Redriven | Action::WouldRedrive) => summary.redriven += 1,
                (MessageState::Processed, Action::Skipped) => summary.already_processed += 1,
                (MessageState::Pending, Action::Skipped) => summary.pending += 1,
                (MessageState::DeadLetter, Action::Skipped) => {}
            }
            summary.items.push(item);
            progress(done + 1, total);
        }
        Ok(summary)
    }

    /// The selected messages, in stream order.
    async fn select(
        &self,
        selection: &Selection,
        summary: &mut ReplaySummary,
    ) -> anyhow::Result<Vec<Stored>> {
        match selection {
            Selection::Thread(thread) => {
                self.read_stream(
                    self.subjects.inbound(thread),
                    consumer::DeliverPolicy::All,
                    None,
                )
                .await
            }
            Selection::Window { since, until } => {
                let start_time = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(
                    since.timestamp_nanos_opt().unwrap_or_default(),
                ))
                .context("`since` is out of range")?;
                self.read_stream(
                    self.subjects.inbound_wildcard(),
                    consumer::DeliverPolicy::ByStartTime { start_time },
                    *until,
                )
                .await
            }
            Selection::DeadLetters => {
                let letters = sqlx::query!(
                    "SELECT thread_id, in_seq FROM dead_letters WHERE replayed_at IS NULL
                     ORDER BY in_seq",
                )
                .fetch_all(self.db)
                .await
                .context("Failed to read the dead letters")?;
                let mut messages = Vec::with_capacity(letters.len());
                for in_seq in letters.into_iter().map(|letter| letter.in_seq) {
                    let seq = u64::try_from(in_seq).unwrap_or_default();
                    match self.inbound.direct_get(seq).await {
                        Ok(message) => messages.push(Stored {
                            seq: message.sequence,
                            subject: message.subject.to_string(),
                            payload: message.payload,
                        }),
                        Err(error) if error.kind() == stream::DirectGetErrorKind::NotFound => {
                            summary.missing += 1;
                        }
                        Err(error) => {
                            return Err(error).context("Failed to read a dead letter's message")
                        }
                    }
                }
                Ok(messages)
            }
        }
    }

    /// Reads a stream range through a short-lived ordered consumer.
    async fn read_stream(
        &self,
        filter_subject: String,
        deliver_policy: consumer::DeliverPolicy,
        until: Option<chrono::DateTime<chrono::Utc>>,
    ) -> anyhow::Result<Vec<Stored>> {
        let reader = self
            .inbound
            .create_consumer(consumer::pull::OrderedConfig {
                filter_subject,
                deliver_policy,
                ..Default::default()
            })
            .await
            .context("Failed to open the inbound stream for reading")?;
        let mut found = Vec::new();
        if reader.cached_info().num_pending == 0 {
            return Ok(found);
        }
        let mut messages = reader.messages().await?;
        loop {
            let next = tokio::time::timeout(Duration::from_secs(10), messages.next())
                .await
                .context("Timed out reading the inbound stream")?;
            let Some(message) = next else { break };
            let message = message.context("Failed to read the inbound stream")?;
            let info = message.info().map_err(|error| anyhow::anyhow!("{error}"))?;
            let (seq, pending, published) = (info.stream_sequence, info.pending, info.published);
            let past_until = until.is_some_and(|until| {
                published.unix_timestamp_nanos()
                    >= i128::from(until.timestamp_nanos_opt().unwrap_or(i64::MAX))
            });
            if past_until {
                break;
            }
            found.push(Stored {
                seq,
                subject: message.message.subject.to_string(),
                payload: message.message.payload.clone(),
            });
            if pending == 0 {
                break;
            }
        }
        Ok(found)
    }

    /// Decides about one message and, unless this is a dry run, re-drives it.
    async fn consider(
        &self,
        stored: Stored,
        request: &ReplayRequest,
    ) -> anyhow::Result<ReplayItem> {
        let thread_id = self
            .subjects
            .thread_of_inbound(&stored.subject)
            .with_context(|| format!("`{}` is not a thread subject", stored.subject))?;
        let message: InboundMessage = serde_json::from_slice(&stored.payload)
            .with_context(|| format!("message {} does not decode", stored.seq))?;
        let in_seq = i64::try_from(stored.seq).unwrap_or(i64::MAX);
        let found = sqlx::query!(
            r#"SELECT EXISTS (SELECT 1 FROM dead_letters
                               WHERE thread_id = $1 AND in_seq = $2 AND replayed_at IS NULL)
                          AS "dead!",
                      EXISTS (SELECT 1 FROM turns WHERE thread_id = $1 AND in_seq = $2) AS "done!",
                      COALESCE((SELECT last_in_seq FROM threads WHERE id = $1), 0) AS "last_in!""#,
            thread_id.as_str(),
            in_seq,
        )
        .fetch_one(self.db)
        .await
        .context("Failed to look up a message's state")?;
        let (dead, done, last_in) = (found.dead, found.done, found.last_in);
        let state = if dead {
            MessageState::DeadLetter
        } else if done || in_seq <= last_in {
            MessageState::Processed
        } else {
            MessageState::Pending
        };
        let redrive = match state {
            MessageState::DeadLetter => true,
            MessageState::Processed => request.force,
            MessageState::Pending => false,
        };
        let mut item = ReplayItem {
            thread_id: thread_id.clone(),
            in_seq: stored.seq,
            message_id: message.message_id.to_string(),
            state,
            action: Action::Skipped,
            new_seq: None,
        };
        if !redrive {
            return Ok(item);
        }
        if request.dry_run {
            item.action = Action::WouldRedrive;
            return Ok(item);
        }
        let copy = InboundMessage {
            turn_id: TurnId::generate(),
            received_at: chrono::Utc::now(),
            ..message
        };
        let publish = PublishMessage::build()
            .payload(copy.to_bytes()?)
            .message_id(format!(
                "{}:replay-{}",
                Subjects::message_dedup_id(&thread_id, &copy.message_id),
                uuid::Uuid::now_v7().simple()
            ))
            .header(REPLAY_OF_HEADER, stored.seq.to_string().as_str());
        let ack = self
            .jetstream
            .send_publish(self.subjects.inbound(&thread_id), publish)
            .await?
            .await
            .context("JetStream did not store the re-driven message")?;
        if state == MessageState::DeadLetter {
            sqlx::query!(
                "UPDATE dead_letters SET replayed_at = now(), replay_seq = $3
                  WHERE thread_id = $1 AND in_seq = $2",
                thread_id.as_str(),
                in_seq,
                i64::try_from(ack.sequence).unwrap_or(i64::MAX),
            )
            .execute(self.db)
            .await
            .context("Failed to mark the dead letter replayed")?;
        }
        item.action = Action::Redriven;
        item.new_seq = Some(ack.sequence);
        Ok(item)
    }
}

/// A message read from `<PREFIX>_IN`.
struct Stored {
    seq: u64,
    subject: String,
    payload: bytes::Bytes,
}
