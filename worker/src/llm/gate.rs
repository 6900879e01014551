//! One gate per model provider in each worker: a shared backoff (a circuit breaker) in front of
//! every model call of the process.
//!
//! Without it each turn keeps its own backoff: a 429 seen by one call is honoured by that call's
//! retries only, and 256 concurrent turns (or the agent's call right after a classification that
//! gave up) keep hitting a provider that asked everyone to wait, a thundering herd during a
//! provider incident. With it:
//! - a transient failure that carries `Retry-After` opens the gate for that long (at most
//!   [`MAX_PAUSE`]);
//! - [`FAILURES_TO_OPEN`] transient failures in a row, from any calls, open it for a backoff that
//!   doubles while the failures go on (1 s, 2 s, 4 s … up to [`MAX_PAUSE`]); a success resets it;
//! - while it is open, every call of this worker to the provider waits until it closes, then
//!   goes (no probe call is singled out: the wait is short and the provider said how long).
//!
//! Each opening is counted (`worker_provider_gate_openings_total`) and logged once.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures_util::future::BoxFuture;
use futures_util::StreamExt as _;
use prometheus::IntCounter;
use tokio::time::Instant;

use super::{ChatEvent, ChatRequest, ChatStream, Classified, ClassifyRequest, LlmError, Model};

/// The longest the gate stays open at once, whatever a server asks.
pub const MAX_PAUSE: Duration = Duration::from_secs(60);

/// Transient failures in a row (without `Retry-After`) that open the gate.
pub const FAILURES_TO_OPEN: u32 = 5;

/// The first pause after [`FAILURES_TO_OPEN`] failures in a row; it doubles with each further one.
const FIRST_BACKOFF: Duration = Duration::from_secs(1);

/// The longest backoff after failures in a row.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

#[derive(Debug, Default)]
struct State {
    /// Calls wait until then.
    open_until: Option<Instant>,
    /// Transient failures since the last success.
    failures_in_a_row: u32,
}

/// The shared backoff of one provider.
#[derive(Debug)]
pub struct ProviderGate {
    state: Mutex<State>,
    openings: IntCounter,
}

impl ProviderGate {
    pub fn new(openings: IntCounter) -> Self {
        Self {
            state: Mutex::new(State::default()),
            openings,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // The state is two plain values: one left by a panicking holder is still usable.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Waits while the gate is open.
    pub async fn pass(&self) {
        loop {
            let until = self.lock().open_until;
            match until {
                Some(until) if until > Instant::now() => tokio::time::sleep_until(until).await,
                _ => return,
            }
        }
    }

    /// How long the gate is open from now, if it is.
    pub fn open_for(&self) -> Option<Duration> {
        let until = self.lock().open_until?;
        let now = Instant::now();
        (until > now).then(|| until - now)
    }

    /// A call succeeded: failures in a row start again from zero.
    pub fn succeeded(&self) {
        self.lock().failures_in_a_row = 0;
    }

    /// A call failed; a transient failure may open the gate.
    pub fn failed(&self, error: &LlmError) {
        if !error.is_transient() {
            return;
        }
        let now = Instant::now();
        let pause = {
            let mut state = self.lock();
            state.failures_in_a_row = state.failures_in_a_row.saturating_add(1);
            let backoff = state
                .failures_in_a_row
                .checked_sub(FAILURES_TO_OPEN)
                .map(|beyond| {
                    FIRST_BACKOFF
                        .saturating_mul(2u32.saturating_pow(beyond.min(16)))
                        .min(MAX_BACKOFF)
                });
            let Some(pause) = error.retry_after().or(backoff) else {
                return;
            };
            let pause = pause.min(MAX_PAUSE);
            let until = now + pause;
            let was_open = state.open_until.is_some_and(|open| open > now);
            if state.open_until.is_some_and(|open| open >= until) {
                return;
            }
            state.open_until = Some(until);
            if was_open {
                // Pushed further: the same opening.
                return;
            }
            pause
        };
        self.openings.inc();
        tracing::warn!(
            pause_ms = pause.as_millis() as u64,
            %error,
            "Provider gate opened: every model call of this worker waits until it closes."
        );
    }
}

/// A model behind its provider's gate: every call passes the gate first and reports how it went.
pub struct GatedModel {
    inner: Arc<dyn Model>,
    gate: Arc<ProviderGate>,
}

impl GatedModel {
    pub fn new(inner: Arc<dyn Model>, gate: Arc<ProviderGate>) -> Self {
        Self { inner, gate }
    }
}

impl Model for GatedModel {
    fn default_model(&self) -> &str {
        self.inner.default_model()
    }

    fn classify<'a>(
        &'a self,
        request: ClassifyRequest<'a>,
    ) -> BoxFuture<'a, Result<Classified, LlmError>> {
        Box::pin(async move {
            self.gate.pass().await;
            let result = self.inner.classify(request).await;
            match &result {
                Ok(_) => self.gate.succeeded(),
                Err(error) => self.gate.failed(error),
            }
            result
        })
    }

    fn chat<'a>(&'a self, request: ChatRequest<'a>) -> BoxFuture<'a, Result<ChatStream, LlmError>> {
        Box::pin(async move {
            self.gate.pass().await;
            let stream = match self.inner.chat(request).await {
                Ok(stream) => stream,
                Err(error) => {
                    self.gate.failed(&error);
                    return Err(error);
                }
            };
            let gate = self.gate.clone();
            let watched: ChatStream = stream
                .inspect(move |event| match event {
                    Ok(ChatEvent::Done(_)) => gate.succeeded(),
                    Ok(ChatEvent::Text(_)) => {}
                    Err(error) => gate.failed(error),
                })
                .boxed();
            Ok(watched)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gate() -> ProviderGate {
        ProviderGate::new(IntCounter::new("openings", "test").unwrap())
    }

    #[tokio::test]
    async fn a_retry_after_holds_every_call_until_it_has_passed() {
        let gate = gate();
        gate.pass().await;
        gate.failed(&LlmError::Transient {
            reason: "429".into(),
            retry_after: Some(Duration::from_millis(300)),
        });
        assert_eq!(gate.openings.get(), 1);
        let started = Instant::now();
        gate.pass().await;
        assert!(started.elapsed() >= Duration::from_millis(300));
        // A second 429 while open pushes the same opening further.
        gate.failed(&LlmError::Transient {
            reason: "429".into(),
            retry_after: Some(Duration::from_secs(1)),
        });
        gate.failed(&LlmError::Transient {
            reason: "429".into(),
            retry_after: Some(Duration::from_secs(3)),
        });
        assert_eq!(gate.openings.get(), 2);
        assert!(gate.open_for().unwrap() > Duration::from_secs(2));
    }

    #[tokio::test]
    async fn failures_in_a_row_open_it_and_a_success_resets_them() {
        let gate = gate();
        let failure = LlmError::transient("500");
        for _ in 0..FAILURES_TO_OPEN - 1 {
            gate.failed(&failure);
        }
        assert_eq!(gate.open_for(), None);
        gate.succeeded();
        for _ in 0..FAILURES_TO_OPEN - 1 {
            gate.failed(&failure);
        }
        assert_eq!(gate.open_for(), None, "the success started the count again");
        gate.failed(&failure);
        let open = gate.open_for().expect("open");
        assert!(
            open > FIRST_BACKOFF / 2 && open <= FIRST_BACKOFF,
            "{open:?}"
        );
        gate.failed(&LlmError::Permanent("bad answer".into()));
        gate.failed(&LlmError::Rejected("400".into()));
        assert_eq!(gate.openings.get(), 1, "permanent failures do not open it");
    }
}
