//! The worker's Prometheus metrics, served on `METRICS_ADDR`.

use prometheus::{Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry};
use shared::metrics::register;

#[derive(Clone)]
pub struct WorkerMetrics {
    pub registry: Registry,
    /// Turns committed, by outcome.
    pub turns: IntCounterVec,
    /// Time from the start of a turn to its commit.
    pub turn_seconds: Histogram,
    /// Deliveries being handled now.
    pub in_flight: IntGauge,
    /// What became of each delivery.
    pub deliveries: IntCounterVec,
    /// Reply frames published, by type.
    pub frames: IntCounterVec,
    /// Model calls, by kind (`classify`, `chat`) and result (`ok`, `retried`, `failed`).
    pub model_calls: IntCounterVec,
    /// Tool calls, by tool and result (`ok`, `refused`, `invalid`, `failed`).
    pub tool_calls: IntCounterVec,
    /// Approvals, by event (`raised`, `approved`, `rejected`, `expired`, `superseded`).
    pub interrupts: IntCounterVec,
    /// Times the model provider's gate opened (every model call of this worker waited).
    pub provider_gate_openings: IntCounter,
    /// Messages stored and not yet delivered to any worker: the autoscaling signal.
    pub queue_pending: IntGauge,
    /// Messages delivered to workers and not yet acknowledged (in flight or waiting to be redelivered).
    pub queue_ack_pending: IntGauge,
}

impl WorkerMetrics {
    pub fn new() -> anyhow::Result<Self> {
        let registry = Registry::new_custom(Some("worker".into()), None)?;
        Ok(Self {
            turns: register(
                &registry,
                IntCounterVec::new(
                    Opts::new("turns_total", "Turns committed, by outcome."),
                    &["outcome"],
                )?,
            )?,
            turn_seconds: register(
                &registry,
                Histogram::with_opts(
                    HistogramOpts::new("turn_duration_seconds", "Time from turn start to commit.")
                        .buckets(vec![
                            0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                            10.0, 30.0,
                        ]),
                )?,
            )?,
            in_flight: register(
                &registry,
                IntGauge::new("deliveries_in_flight", "Deliveries being handled now.")?,
            )?,
            deliveries: register(
                &registry,
                IntCounterVec::new(
                    Opts::new(
                        "deliveries_total",
                        "Deliveries by result: processed, duplicate, busy (thread leased elsewhere), failed.",
                    ),
                    &["result"],
                )?,
            )?,
            frames: register(
                &registry,
                IntCounterVec::new(
                    Opts::new("frames_published_total", "Reply frames published, by type."),
                    &["type"],
                )?,
            )?,
            model_calls: register(
                &registry,
                IntCounterVec::new(
                    Opts::new("model_calls_total", "Model calls, by kind and result."),
                    &["kind", "result"],
                )?,
            )?,
            tool_calls: register(
                &registry,
                IntCounterVec::new(
                    Opts::new("tool_calls_total", "Tool calls, by tool and result."),
                    &["tool", "result"],
                )?,
            )?,
            interrupts: register(
                &registry,
                IntCounterVec::new(
                    Opts::new("interrupts_total", "Approvals raised and how they were decided."),
                    &["event"],
                )?,
            )?,
            provider_gate_openings: register(
                &registry,
                IntCounter::new(
                    "provider_gate_openings_total",
                    "Times the model provider's gate opened after a Retry-After or failures in a row: every model call of this worker waited until it closed.",
                )?,
            )?,
            queue_pending: register(
                &registry,
                IntGauge::new(
                    "queue_pending_messages",
                    "Messages in the shared consumer not yet delivered to any worker.",
                )?,
            )?,
            queue_ack_pending: register(
                &registry,
                IntGauge::new(
                    "queue_ack_pending_messages",
                    "Messages delivered to workers and not yet acknowledged.",
                )?,
            )?,
            registry,
        })
    }
}
