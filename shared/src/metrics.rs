//! Prometheus plumbing shared by the edge's and the worker's `/metrics`.

use prometheus::{Encoder as _, Registry, TextEncoder};

/// Renders `registry` in the Prometheus text format.
pub fn render(registry: &Registry) -> String {
    let mut buffer = Vec::new();
    if let Err(error) = TextEncoder::new().encode(&registry.gather(), &mut buffer) {
        tracing::warn!(%error, "Cannot encode metrics.");
    }
    String::from_utf8(buffer).unwrap_or_default()
}

/// Registers `collector` and hands it back; a duplicate name is a programming error caught at start-up.
pub fn register<C>(registry: &Registry, collector: C) -> anyhow::Result<C>
where
    C: prometheus::core::Collector + Clone + 'static,
{
    registry.register(Box::new(collector.clone()))?;
    Ok(collector)
}
