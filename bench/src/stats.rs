//! Latency histograms and the report: a table for people, a JSON line for scripts.

use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

/// Latencies recorded in microseconds, up to one minute.
pub(crate) fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("constant, valid histogram bounds")
}

pub(crate) fn record(histogram: &mut Histogram<u64>, elapsed: Duration) {
    let micros = u64::try_from(elapsed.as_micros())
        .unwrap_or(u64::MAX)
        .max(1);
    histogram.saturating_record(micros);
}

/// Percentiles in milliseconds.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Percentiles {
    pub(crate) p50: f64,
    pub(crate) p90: f64,
    pub(crate) p99: f64,
    pub(crate) max: f64,
}

impl From<&Histogram<u64>> for Percentiles {
    fn from(h: &Histogram<u64>) -> Self {
        let ms = |micros: u64| micros as f64 / 1000.0;
        Self {
            p50: ms(h.value_at_quantile(0.50)),
            p90: ms(h.value_at_quantile(0.90)),
            p99: ms(h.value_at_quantile(0.99)),
            max: ms(h.max()),
        }
    }
}

/// What one client (or all, merged) measured.
pub(crate) struct Measured {
    pub(crate) turns: u64,
    pub(crate) frames: u64,
    pub(crate) accepted: Histogram<u64>,
    pub(crate) first_token: Histogram<u64>,
    pub(crate) turn: Histogram<u64>,
}

impl Measured {
    pub(crate) fn new() -> Self {
        Self {
            turns: 0,
            frames: 0,
            accepted: histogram(),
            first_token: histogram(),
            turn: histogram(),
        }
    }

    pub(crate) fn merge(&mut self, other: &Self) {
        self.turns += other.turns;
        self.frames += other.frames;
        // Histograms with the same bounds always merge.
        let _ = self.accepted.add(&other.accepted);
        let _ = self.first_token.add(&other.first_token);
        let _ = self.turn.add(&other.turn);
    }
}

/// One run's figures.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Report {
    pub(crate) mode: &'static str,
    pub(crate) connections: usize,
    pub(crate) messages: usize,
    pub(crate) turns: u64,
    pub(crate) frames: u64,
    pub(crate) seconds: f64,
    pub(crate) turns_per_sec: f64,
    pub(crate) frames_per_sec: f64,
    pub(crate) accepted_ms: Percentiles,
    pub(crate) first_token_ms: Percentiles,
    pub(crate) turn_ms: Percentiles,
    /// CPU per turn by process, when measured.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) cpu: Option<crate::cpu::PerTurn>,
}

impl Report {
    pub(crate) fn new(
        mode: &'static str,
        connections: usize,
        messages: usize,
        measured: &Measured,
        wall: Duration,
    ) -> Self {
        let seconds = wall.as_secs_f64().max(f64::EPSILON);
        Self {
            mode,
            connections,
            messages,
            turns: measured.turns,
            frames: measured.frames,
            seconds,
            turns_per_sec: measured.turns as f64 / seconds,
            frames_per_sec: measured.frames as f64 / seconds,
            accepted_ms: (&measured.accepted).into(),
            first_token_ms: (&measured.first_token).into(),
            turn_ms: (&measured.turn).into(),
            cpu: None,
        }
    }

    /// A markdown table row: mode, conns, turns/s, frames/s, then p50/p99 of each latency.
    pub(crate) fn markdown_row(&self) -> String {
        format!(
            "| {} | {} | {} | {:.0} | {:.0} | {:.2} / {:.2} / {:.2} | {:.2} / {:.2} / {:.2} | {:.2} / {:.2} / {:.2} / {:.2} |",
            self.mode,
            self.connections,
            self.turns,
            self.turns_per_sec,
            self.frames_per_sec,
            self.accepted_ms.p50,
            self.accepted_ms.p99,
            self.accepted_ms.max,
            self.first_token_ms.p50,
            self.first_token_ms.p99,
            self.first_token_ms.max,
            self.turn_ms.p50,
            self.turn_ms.p90,
            self.turn_ms.p99,
            self.turn_ms.max,
        )
    }
}

pub(crate) const MARKDOWN_HEADER: &str = "| mode | conns | turns | turns/s | frames/s | accepted p50 / p99 / max ms | first token p50 / p99 / max ms | turn p50 / p90 / p99 / max ms |\n|---|---|---|---|---|---|---|---|";
