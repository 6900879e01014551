//! The worker's Prometheus metrics, served on `METRICS_ADDR`.

use std::sync::{Arc, OnceLock};

use prometheus::{
    CounterVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts,
    Registry,
};
use shared::metrics::register;
use shared::metrics::LONG_BUCKETS;

/// The `tool` label of a call that names no tool its agent has. Only the agent's configured tools
/// are labels of their own: a name the model made up (or was made to write by a prompt
/// injection) would otherwise become a new series each time, without bound.
pub const UNKNOWN_TOOL: &str = "unknown";

#[derive(Clone)]
pub struct WorkerMetrics {
    pub registry: Registry,
    /// Turns committed, by outcome.
    pub turns: IntCounterVec,
    /// Time from the start of a turn to its commit.
    pub turn_seconds: Histogram,
    /// Threads taken by each grouped statement (`acquire`, `commit`): those whose deliveries came,
    /// or whose turns ended, while two statements of the kind were in flight.
    pub group_statement_threads: HistogramVec,
    /// Deliveries being handled now.
    pub in_flight: IntGauge,
    /// What became of each delivery.
    pub deliveries: IntCounterVec,
    /// Reply frames published, by type (count them with [`Self::count_frames`]).
    pub frames: IntCounterVec,
    /// `frames`' series of each frame type, looked up once (a lookup hashes the label and
    /// takes the vector's lock; a turn publishes about twenty frames). A series is created when
    /// its type is first counted, as `with_label_values` does, so the exposition is unchanged.
    frame_series: Arc<[OnceLock<IntCounter>; FRAME_TYPES.len()]>,
    /// Model calls, by kind (`classify`, `chat`) and result (`ok`, `retried`, `failed`).
    pub model_calls: IntCounterVec,
    /// Tool calls, by tool and result (`ok`, `refused`, `invalid`, `failed`); `tool` is one of
    /// the agent's tools, or [`UNKNOWN_TOOL`].
    pub tool_calls: IntCounterVec,
    /// Approvals, by event (`raised`, `approved`, `rejected`, `expired`, `superseded`).
    pub interrupts: IntCounterVec,
    /// Times the model provider's gate opened (every model call of this worker waited).
    pub provider_gate_openings: IntCounter,
    /// Messages stored and not yet delivered to any worker: the autoscaling signal.
    pub queue_pending: IntGauge,
    /// Messages delivered to workers and not yet acknowledged (in flight or waiting to be redelivered).
    pub queue_ack_pending: IntGauge,
    /// Duration of each model call attempt, by model and kind (`classify`, `chat`).
    pub model_call_seconds: HistogramVec,
    /// Time from sending a chat request to its first streamed text, by model.
    pub model_first_token_seconds: HistogramVec,
    /// Tokens used, by model, agent (`classifier` for the classification) and type (`prompt`,
    /// `completion`). Models and agents come from the agents config: the labels stay bounded.
    pub tokens: IntCounterVec,
    /// Cost in US dollars from the config's price table, by model and agent.
    pub cost_usd: CounterVec,
    /// Conversations the retention sweep erased (`RETENTION_DAYS`).
    pub retention_deleted: IntCounter,
}

impl WorkerMetrics {
    pub fn new() -> anyhow::Result<Self> {
        let registry = Registry::new_custom(Some("worker".into()), None)?;
        shared::metrics::register_process_metrics(&registry)?;
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
                        .buckets(LONG_BUCKETS.to_vec()),
                )?,
            )?,
            group_statement_threads: register(
                &registry,
                HistogramVec::new(
                    HistogramOpts::new(
                        "group_statement_threads",
                        "Threads taken by each grouped statement (acquire, commit): the threads whose deliveries came, or whose turns ended, while two statements of the kind were in flight share the next.",
                    )
                    .buckets(vec![1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0]),
                    &["statement"],
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
            retention_deleted: register(
                &registry,
                IntCounter::new(
                    "retention_deleted_conversations_total",
                    "Conversations erased by the retention sweep (RETENTION_DAYS).",
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
            model_call_seconds: register(
                &registry,
                HistogramVec::new(
                    HistogramOpts::new(
                        "model_call_duration_seconds",
                        "Duration of each model call attempt, by model and kind.",
                    )
                    .buckets(LONG_BUCKETS.to_vec()),
                    &["model", "kind"],
                )?,
            )?,
            model_first_token_seconds: register(
                &registry,
                HistogramVec::new(
                    HistogramOpts::new(
                        "model_time_to_first_token_seconds",
                        "Time from a chat request to its first streamed text, by model.",
                    )
                    .buckets(LONG_BUCKETS.to_vec()),
                    &["model"],
                )?,
            )?,
            tokens: register(
                &registry,
                IntCounterVec::new(
                    Opts::new("tokens_total", "Tokens used, by model, agent and type."),
                    &["model", "agent", "type"],
                )?,
            )?,
            cost_usd: register(
                &registry,
                CounterVec::new(
                    Opts::new("cost_usd_total", "Model cost in US dollars, by model and agent."),
                    &["model", "agent"],
                )?,
            )?,
            frame_series: Arc::new(std::array::from_fn(|_| OnceLock::new())),
            registry,
        })
    }
}

/// Every reply frame type (`FrameBody::kind`): those whose series are kept.
const FRAME_TYPES: [&str; 12] = [
    "token",
    "tool_call",
    "tool_result",
    "interrupt",
    "interrupt_expired",
    "clarification",
    "turn_reset",
    "message_complete",
    "error",
    "user_message",
    "handoff",
    "human_message",
];

impl WorkerMetrics {
    /// Counts `count` published frames of type `kind`.
    pub fn count_frames(&self, kind: &str, count: u64) {
        match FRAME_TYPES.iter().position(|known| *known == kind) {
            Some(index) => self.frame_series[index]
                .get_or_init(|| self.frames.with_label_values(&[kind]))
                .inc_by(count),
            None => self.frames.with_label_values(&[kind]).inc_by(count),
        }
    }

    /// Counts a model call's tokens and cost.
    pub fn count_usage(&self, model: &str, agent: &str, usage: crate::llm::TokenUsage, cost: f64) {
        self.tokens
            .with_label_values(&[model, agent, "prompt"])
            .inc_by(usage.prompt_tokens);
        self.tokens
            .with_label_values(&[model, agent, "completion"])
            .inc_by(usage.completion_tokens);
        self.cost_usd
            .with_label_values(&[model, agent])
            .inc_by(cost.max(0.0));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_are_counted_by_type_and_only_types_counted_have_a_series() {
        let metrics = WorkerMetrics::new().unwrap();
        let clone = metrics.clone();
        metrics.count_frames("token", 3);
        clone.count_frames("token", 2);
        metrics.count_frames("message_complete", 1);
        metrics.count_frames("not_a_frame_type", 1);
        assert_eq!(metrics.frames.with_label_values(&["token"]).get(), 5);
        assert_eq!(
            metrics
                .frames
                .with_label_values(&["message_complete"])
                .get(),
            1
        );
        assert_eq!(
            metrics
                .frames
                .with_label_values(&["not_a_frame_type"])
                .get(),
            1
        );
        let families = metrics.registry.gather();
        let frames = families
            .iter()
            .find(|family| family.name() == "worker_frames_published_total")
            .unwrap();
        // No series for a type never published.
        assert_eq!(frames.get_metric().len(), 3);
    }
}
