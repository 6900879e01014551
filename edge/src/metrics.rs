//! The edge's Prometheus metrics.

use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
};
use shared::metrics::register;

#[derive(Clone)]
pub struct EdgeMetrics {
    pub registry: Registry,
    /// Open WebSocket connections.
    pub connections: IntGauge,
    /// Valid client frames, by `type`.
    pub frames_in: IntCounterVec,
    /// Frames written to sockets, by `type`.
    pub frames_out: IntCounterVec,
    /// Error frames and HTTP errors, by code.
    pub errors: IntCounterVec,
    /// Time from publish to JetStream's ack.
    pub publish_seconds: Histogram,
    pub threads_created: IntCounter,
    /// HTTP requests answered, by route template and status.
    pub http_requests: IntCounterVec,
    /// Time to answer an HTTP request, by route template and status (an upgraded `/ws` request
    /// ends with its `101`).
    pub http_seconds: HistogramVec,
    /// Threads attached to sockets, one per attached thread per socket (with
    /// `LIVE_SUBSCRIPTION=thread`, each is a NATS subscription of its own).
    pub subscriptions: IntGauge,
    /// Threads in the live router's map: attached to at least one socket of this edge
    /// (`LIVE_SUBSCRIPTION=edge`).
    pub live_routes: IntGauge,
    /// Live bundles the router dropped for a socket whose queue was full (the socket then
    /// catches up from the stream).
    pub live_dropped: IntCounter,
    /// Upgrades refused by a socket cap, by `reason` (`full`, `address_full`).
    pub sockets_refused: IntCounterVec,
    /// Sockets the edge closed itself, by `reason` (`ping_timeout`, `ping_flood`).
    pub sockets_closed: IntCounterVec,
    /// Live frames were lost on a socket (they skipped a `seq`, or the router dropped them for a
    /// slow socket): re-read from the stream.
    pub relay_gaps: IntCounter,
    /// Conversations erased through this edge, by `actor` (`owner`, `admin`).
    pub erasures: IntCounterVec,
}

impl EdgeMetrics {
    pub fn new() -> anyhow::Result<Self> {
        let registry = Registry::new_custom(Some("edge".into()), None)?;
        shared::metrics::register_process_metrics(&registry)?;
        Ok(Self {
            connections: register(
                &registry,
                IntGauge::new("ws_connections", "Open WebSocket connections.")?,
            )?,
            erasures: register(
                &registry,
                IntCounterVec::new(
                    Opts::new("erasures_total", "Conversations erased, by who asked."),
                    &["actor"],
                )?,
            )?,
            frames_in: register(
                &registry,
                IntCounterVec::new(
                    Opts::new("frames_in_total", "Valid client frames, by type."),
                    &["type"],
                )?,
            )?,
            frames_out: register(
                &registry,
                IntCounterVec::new(
                    Opts::new("frames_out_total", "Frames written to sockets, by type."),
                    &["type"],
                )?,
            )?,
            errors: register(
                &registry,
                IntCounterVec::new(
                    Opts::new("errors_total", "Errors answered to clients, by code."),
                    &["code"],
                )?,
            )?,
            publish_seconds: register(
                &registry,
                Histogram::with_opts(
                    HistogramOpts::new(
                        "publish_duration_seconds",
                        "Time from publishing a client message to JetStream's ack.",
                    )
                    .buckets(vec![
                        0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                    ]),
                )?,
            )?,
            threads_created: register(
                &registry,
                IntCounter::new("threads_created_total", "Threads created.")?,
            )?,
            http_requests: register(
                &registry,
                IntCounterVec::new(
                    Opts::new(
                        "http_requests_total",
                        "HTTP requests answered, by route template and status.",
                    ),
                    &["route", "status"],
                )?,
            )?,
            http_seconds: register(
                &registry,
                HistogramVec::new(
                    HistogramOpts::new(
                        "http_request_duration_seconds",
                        "Time to answer an HTTP request, by route template and status.",
                    )
                    .buckets(vec![
                        0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                        10.0, 15.0, 30.0, 60.0, 120.0,
                    ]),
                    &["route", "status"],
                )?,
            )?,
            subscriptions: register(
                &registry,
                IntGauge::new(
                    "ws_subscriptions",
                    "Live reply relays held for sockets (attached threads).",
                )?,
            )?,
            live_routes: register(
                &registry,
                IntGauge::new(
                    "live_routes",
                    "Threads attached to at least one socket, in the live router's map.",
                )?,
            )?,
            live_dropped: register(
                &registry,
                IntCounter::new(
                    "live_dropped_total",
                    "Live bundles dropped for a socket whose queue was full.",
                )?,
            )?,
            sockets_refused: register(
                &registry,
                IntCounterVec::new(
                    Opts::new(
                        "ws_refused_total",
                        "WebSocket upgrades refused by a socket cap, by reason.",
                    ),
                    &["reason"],
                )?,
            )?,
            sockets_closed: register(
                &registry,
                IntCounterVec::new(
                    Opts::new(
                        "ws_closed_by_edge_total",
                        "Sockets the edge closed itself, by reason.",
                    ),
                    &["reason"],
                )?,
            )?,
            relay_gaps: register(
                &registry,
                IntCounter::new(
                    "relay_gaps_total",
                    "Live frames lost on a socket (a seq skipped, or dropped for a slow socket), re-read from the stream.",
                )?,
            )?,
            registry,
        })
    }
}
