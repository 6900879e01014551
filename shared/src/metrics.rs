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

/// Registers what every process exports besides its own metrics: `<prefix>_build_info{version}`
/// (always 1) and, on Linux, the standard process metrics (`<prefix>_process_cpu_seconds_total`,
/// resident memory, open file descriptors, start time…).
pub fn register_process_metrics(registry: &Registry) -> anyhow::Result<()> {
    let build_info = register(
        registry,
        prometheus::IntGaugeVec::new(
            prometheus::Opts::new("build_info", "Always 1; the version is a label."),
            &["version"],
        )?,
    )?;
    build_info
        .with_label_values(&[env!("CARGO_PKG_VERSION")])
        .set(1);
    #[cfg(target_os = "linux")]
    registry.register(Box::new(
        prometheus::process_collector::ProcessCollector::for_self(),
    ))?;
    Ok(())
}

/// Histogram buckets, in seconds, from 5 ms to 10 minutes: covers a model call's timeout (60 s by
/// default) with room to spare, and turns that run several model calls and wait for tools.
pub const LONG_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 90.0, 120.0,
    180.0, 300.0, 600.0,
];
