//! The pull loop: takes only as many messages as it has free turn slots, runs each delivery, and
//! answers JetStream (ack / nak) once the outcome is committed.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::consumer::PullConsumer;
use async_nats::jetstream::message::StreamMessage;
use async_nats::jetstream::AckKind;
use futures_util::{FutureExt as _, StreamExt as _};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::drain::{panic_message, DeliveryOutcome};
use crate::error::TurnError;
use crate::turn::TurnRunner;

/// How long one pull request waits for messages.
const PULL_EXPIRES: Duration = Duration::from_secs(1);

/// Delay before a delivery whose thread is leased elsewhere is offered again.
const BUSY_RETRY: Duration = Duration::from_millis(100);

/// How the pull loop runs.
#[derive(Debug, Clone, Copy)]
pub struct PullSettings {
    /// Deliveries handled at once; the loop never pulls more.
    pub concurrency: usize,
    /// How often a delivery still being worked on tells JetStream so (a third of the ack wait).
    pub progress_every: Duration,
}

/// Pulls and runs deliveries until `stop` is cancelled. In-flight turns are tracked by `turns`.
pub async fn run(
    consumer: PullConsumer,
    runner: TurnRunner,
    settings: PullSettings,
    turns: TaskTracker,
    stop: CancellationToken,
) {
    let slots = Arc::new(Semaphore::new(settings.concurrency));
    while !stop.is_cancelled() {
        let first = tokio::select! {
            permit = slots.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
            () = stop.cancelled() => break,
        };
        let mut permits = vec![first];
        while let Ok(permit) = slots.clone().try_acquire_owned() {
            permits.push(permit);
        }
        let batch = consumer
            .batch()
            .max_messages(permits.len())
            .expires(PULL_EXPIRES)
            .messages()
            .await;
        let mut batch = match batch {
            Ok(batch) => batch,
            Err(error) => {
                tracing::warn!(%error, "Pull request failed; retrying.");
                tokio::select! {
                    () = tokio::time::sleep(PULL_EXPIRES) => continue,
                    () = stop.cancelled() => break,
                }
            }
        };
        loop {
            let next = tokio::select! {
                next = batch.next() => next,
                // Unacked messages of this batch are redelivered after the ack wait.
                () = stop.cancelled() => None,
            };
            let Some(next) = next else { break };
            match next {
                Ok(message) => {
                    let Some(permit) = permits.pop() else {
                        // The server sent more than asked: let another worker have it now.
                        nak(&message, Duration::ZERO).await;
                        continue;
                    };
                    turns.spawn(handle(
                        message,
                        runner.clone(),
                        settings.progress_every,
                        permit,
                    ));
                }
                Err(error) => tracing::warn!(%error, "Pull batch error."),
            }
        }
    }
}

/// Runs one delivery and answers JetStream.
async fn handle(
    message: async_nats::jetstream::Message,
    runner: TurnRunner,
    progress_every: Duration,
    _slot: OwnedSemaphorePermit,
) {
    // Held by a guard: the gauge comes down however the delivery ends.
    let _in_flight = InFlight::enter(runner.metrics.in_flight.clone());
    let answer = match (
        message.info(),
        runner.subjects.thread_of_inbound(&message.subject),
    ) {
        (Ok(info), Some(thread)) => {
            let delivered_seq = info.stream_sequence;
            let delivered = StreamMessage {
                subject: message.subject.clone(),
                sequence: delivered_seq,
                headers: message.headers.clone().unwrap_or_default(),
                payload: message.payload.clone(),
                time: info.published,
            };
            // A stored cancel (or, with DOUBLE_TEXT=interrupt, a newer customer message) is
            // announced with each of its deliveries: the turn it stops may be running anywhere,
            // and is stopped without waiting for this delivery's turn in the thread's queue.
            crate::cancels::announce_delivery(&runner, &thread, delivered_seq, &message.payload)
                .await;
            // A panic in the turn itself is counted as a failed attempt where it runs; one
            // anywhere else in the delivery is caught here and the delivery retried, so it never
            // takes the slot, the gauges or the message's answer with it.
            // On the heap: the task's future is moved when it is spawned and into its cell, and
            // the delivery's (the lease, its renewal, the drain) is most of this one.
            let delivery = Box::pin(runner.handle_delivery(&thread, delivered));
            let delivery = AssertUnwindSafe(delivery)
                .catch_unwind()
                .map(|handled| {
                    handled.unwrap_or_else(|panic| {
                        let reason = panic_message(&panic);
                        tracing::error!(thread_id = %thread, delivered_seq, %reason, "A delivery panicked; it will be retried.");
                        Err(TurnError::Turn(format!("the delivery panicked: {reason}")))
                    })
                });
            let handled = tokio::select! {
                handled = delivery => handled,
                never = report_progress(&message, progress_every) => match never {},
            };
            match handled {
                Ok(outcome) => {
                    runner
                        .metrics
                        .deliveries
                        .with_label_values(&[outcome.as_str()])
                        .inc();
                    match outcome {
                        DeliveryOutcome::Processed
                        | DeliveryOutcome::Duplicate
                        | DeliveryOutcome::Erased => AckKind::Ack,
                        DeliveryOutcome::Busy => AckKind::Nak(Some(BUSY_RETRY)),
                    }
                }
                Err(error) => {
                    runner
                        .metrics
                        .deliveries
                        .with_label_values(&["failed"])
                        .inc();
                    tracing::warn!(%error, thread_id = %thread, delivered_seq, "Turn failed; it will be retried.");
                    error.ack_kind()
                }
            }
        }
        _ => {
            tracing::error!(subject = %message.subject, "A delivery that is not a thread message; dropping it.");
            AckKind::Term
        }
    };
    if let Err(error) = message.ack_with(answer).await {
        tracing::warn!(%error, "Cannot answer JetStream; the message will be redelivered.");
    }
}

/// Counts a delivery in `worker_deliveries_in_flight` while it lives.
struct InFlight(prometheus::IntGauge);

impl InFlight {
    fn enter(gauge: prometheus::IntGauge) -> Self {
        gauge.inc();
        Self(gauge)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Tells JetStream every `every` that the delivery is still being worked on, so a long turn is
/// not redelivered to another worker while this one runs it. Never returns.
async fn report_progress(
    message: &async_nats::jetstream::Message,
    every: Duration,
) -> std::convert::Infallible {
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    loop {
        ticks.tick().await;
        if let Err(error) = message.ack_with(AckKind::Progress).await {
            tracing::warn!(%error, "Cannot report progress; the message may be redelivered.");
        }
    }
}

async fn nak(message: &async_nats::jetstream::Message, delay: Duration) {
    if let Err(error) = message.ack_with(AckKind::Nak(Some(delay))).await {
        tracing::warn!(%error, "Cannot nak a message; it will be redelivered after the ack wait.");
    }
}
