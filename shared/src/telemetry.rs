//! Tracing set-up: logs go to stderr (stdout is a command's output), pretty on a terminal, JSON
//! lines otherwise; `RUST_LOG` filters.
//!
//! With `OTEL_EXPORTER_OTLP_ENDPOINT` set, spans are also exported as OpenTelemetry traces over
//! OTLP/HTTP (protobuf), JSON log lines inside a trace carry its `trace_id`, and the W3C trace
//! context crosses NATS in the message headers (SPEC §9). Without it nothing is exported and no
//! header is added.

use std::io::IsTerminal as _;
use std::sync::OnceLock;

use anyhow::Context as _;
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator as _};
use opentelemetry::trace::{TraceContextExt as _, TraceId, TracerProvider as _};
use opentelemetry_otlp::WithExportConfig as _;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use opentelemetry_sdk::Resource;
use tracing::{Event, Subscriber};
use tracing_opentelemetry::OpenTelemetrySpanExt as _;
use tracing_subscriber::fmt::format::{JsonFields, Writer};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::{EnvFilter, Layer as _};

use crate::config::TelemetrySettings;

/// `LOG_FORMAT`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Pretty,
    Json,
}

/// Installs the global subscriber once, for logs only (operator commands). `format` defaults to
/// pretty when stderr is a TTY, JSON otherwise; logs go to stderr; `default_level` applies when `RUST_LOG` is unset.
pub fn init_tracing(default_level: &str, format: Option<LogFormat>) {
    install(default_level, format, None);
}

/// Installs logs and, when `OTEL_EXPORTER_OTLP_ENDPOINT` is set, the trace exporter, naming this
/// process `service` unless `OTEL_SERVICE_NAME` says otherwise. Keep the handle until the process
/// ends: [`Telemetry::shutdown`] (or dropping it) flushes the spans not yet exported.
pub fn init(
    default_level: &str,
    settings: &TelemetrySettings,
    service: &str,
) -> anyhow::Result<Telemetry> {
    let endpoint = settings
        .otlp_endpoint
        .as_deref()
        .filter(|endpoint| !endpoint.trim().is_empty());
    let provider = match endpoint {
        Some(endpoint) => {
            let service = settings
                .service_name
                .as_deref()
                .filter(|name| !name.trim().is_empty())
                .unwrap_or(service);
            Some(tracer_provider(endpoint, service)?)
        }
        None => None,
    };
    install(default_level, settings.log_format, provider.as_ref());
    if let Some(endpoint) = endpoint {
        tracing::info!(endpoint = %redact(endpoint), "Exporting traces over OTLP/HTTP.");
    }
    Ok(Telemetry { provider })
}

/// The trace exporter, when one is configured.
#[must_use = "dropping it flushes and stops the trace exporter"]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Exports the spans still buffered and stops the exporter.
    pub fn shutdown(mut self) {
        self.flush();
    }

    fn flush(&mut self) {
        if let Some(provider) = self.provider.take() {
            if let Err(error) = provider.shutdown() {
                tracing::warn!(%error, "Cannot flush the last spans.");
            }
        }
    }
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        self.flush();
    }
}

/// The subscriber, set once; the formatter looks spans' OpenTelemetry contexts up through it.
static DISPATCH: OnceLock<tracing::Dispatch> = OnceLock::new();

fn install(default_level: &str, format: Option<LogFormat>, provider: Option<&SdkTracerProvider>) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_level));
    let format = format.unwrap_or(if std::io::stderr().is_terminal() {
        LogFormat::Pretty
    } else {
        LogFormat::Json
    });
    let traces = provider.map(|provider| {
        tracing_opentelemetry::layer()
            .with_tracer(provider.tracer("smart-support"))
            .with_location(false)
            .with_threads(false)
            .with_tracked_inactivity(false)
    });
    let logs = match format {
        LogFormat::Pretty => tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .fmt_fields(JsonFields::new())
            .event_format(WithTraceId(
                tracing_subscriber::fmt::format().json().flatten_event(true),
            ))
            .boxed(),
    };
    let subscriber = tracing_subscriber::registry()
        .with(traces)
        .with(logs)
        .with(filter);
    let dispatch = tracing::Dispatch::new(subscriber);
    if let Err(error) = tracing::dispatcher::set_global_default(dispatch.clone()) {
        eprintln!("tracing was already initialised: {error}");
        return;
    }
    if provider.is_some() {
        // Set once: the global default can only be set once too.
        let _ = DISPATCH.set(dispatch);
    }
}

fn tracer_provider(endpoint: &str, service: &str) -> anyhow::Result<SdkTracerProvider> {
    // reqwest is built without a default TLS provider: an https collector needs one installed.
    // Another part of the process may have installed one already, which is as good.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
        .with_endpoint(traces_endpoint(endpoint))
        .build()
        .with_context(|| {
            format!(
                "OTEL_EXPORTER_OTLP_ENDPOINT `{}` cannot be used",
                redact(endpoint)
            )
        })?;
    let resource = Resource::builder()
        .with_service_name(service.to_owned())
        .with_attribute(opentelemetry::KeyValue::new(
            "service.version",
            env!("CARGO_PKG_VERSION"),
        ))
        .build();
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource)
        .build())
}

/// The traces URL of an `OTEL_EXPORTER_OTLP_ENDPOINT`: the standard says `/v1/traces` is
/// appended to the base URL.
fn traces_endpoint(endpoint: &str) -> String {
    format!("{}/v1/traces", endpoint.trim_end_matches('/'))
}

/// The endpoint without user information, for logs and errors.
fn redact(endpoint: &str) -> String {
    match url::Url::parse(endpoint) {
        Ok(mut url) if !url.username().is_empty() || url.password().is_some() => {
            let _ = url.set_username("");
            let _ = url.set_password(None);
            url.to_string()
        }
        Ok(_) => endpoint.to_owned(),
        Err(_) => "(not a URL)".to_owned(),
    }
}

/// The JSON event format with the `trace_id` of the event's span, when it is in a trace.
struct WithTraceId<F>(F);

impl<S, N, F> FormatEvent<S, N> for WithTraceId<F>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> std::fmt::Result {
        let Some(trace_id) = trace_id_of(ctx) else {
            return self.0.format_event(ctx, writer, event);
        };
        let mut line = String::new();
        self.0.format_event(ctx, Writer::new(&mut line), event)?;
        match line.strip_prefix('{') {
            Some(rest) => write!(writer, "{{\"trace_id\":\"{trace_id}\",{rest}"),
            None => writer.write_str(&line),
        }
    }
}

fn trace_id_of<S, N>(ctx: &FmtContext<'_, S, N>) -> Option<TraceId>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    let dispatch = DISPATCH.get()?;
    let id = ctx.parent_span()?.id();
    let context = tracing_opentelemetry::get_otel_context(&id, dispatch)?;
    let span = context.span();
    let span_context = span.span_context();
    span_context.is_valid().then(|| span_context.trace_id())
}

/// The W3C trace context (`traceparent`) of the current span as NATS headers; empty when tracing
/// is off.
pub fn trace_headers() -> async_nats::HeaderMap {
    let mut headers = async_nats::HeaderMap::new();
    let context = tracing::Span::current().context();
    TraceContextPropagator::new().inject_context(&context, &mut NatsHeaders(&mut headers));
    headers
}

/// Makes `span` a child of the trace whose context `headers` carry, if they carry one. Call it
/// before the span is first entered.
pub fn continue_trace(span: &tracing::Span, headers: &async_nats::HeaderMap) {
    let context = TraceContextPropagator::new().extract(&NatsHeadersRef(headers));
    if !context.span().span_context().is_valid() {
        return;
    }
    if let Err(error) = span.set_parent(context) {
        tracing::debug!(%error, "Cannot attach a span to its remote parent.");
    }
}

struct NatsHeaders<'a>(&'a mut async_nats::HeaderMap);

impl Injector for NatsHeaders<'_> {
    fn set(&mut self, key: &str, value: String) {
        self.0.insert(key, value.as_str());
    }
}

struct NatsHeadersRef<'a>(&'a async_nats::HeaderMap);

impl Extractor for NatsHeadersRef<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(async_nats::HeaderValue::as_str)
    }

    fn keys(&self) -> Vec<&str> {
        self.0
            .iter()
            .map(|(name, _)| AsRef::<str>::as_ref(name))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_traces_path_is_appended_once() {
        assert_eq!(
            traces_endpoint("http://collector:4318"),
            "http://collector:4318/v1/traces"
        );
        assert_eq!(
            traces_endpoint("http://collector:4318/"),
            "http://collector:4318/v1/traces"
        );
    }

    #[test]
    fn endpoints_lose_their_credentials_in_logs() {
        assert_eq!(
            redact("https://user:hunter2@collector:4318"),
            "https://collector:4318/"
        );
        assert_eq!(redact("http://collector:4318"), "http://collector:4318");
        assert!(!redact("not a url hunter2").contains("hunter2"));
    }

    #[test]
    fn no_trace_no_header() {
        assert!(trace_headers().is_empty());
    }

    #[test]
    fn extractors_see_every_nats_header() {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("traceparent", "00-1-2-01");
        headers.insert("Nats-Msg-Id", "m1");
        let extractor = NatsHeadersRef(&headers);
        let mut keys = extractor.keys();
        keys.sort_unstable();
        assert_eq!(keys, ["Nats-Msg-Id", "traceparent"]);
        assert_eq!(extractor.get("traceparent"), Some("00-1-2-01"));
        assert_eq!(extractor.get("tracestate"), None);
    }

    #[test]
    fn the_trace_context_crosses_nats_headers() {
        let provider = SdkTracerProvider::builder().build();
        let subscriber = tracing_subscriber::registry()
            .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
        tracing::subscriber::with_default(subscriber, || {
            let sender = tracing::info_span!("client_message");
            let headers = sender.in_scope(trace_headers);
            let sent = sender.context().span().span_context().clone();
            assert!(headers.get("traceparent").is_some(), "{headers:?}");

            let receiver = tracing::info_span!(parent: None, "turn");
            continue_trace(&receiver, &headers);
            let received = receiver.context().span().span_context().clone();
            assert_eq!(received.trace_id(), sent.trace_id());
            assert_ne!(received.span_id(), sent.span_id());

            // No context in the headers: the span starts a trace of its own.
            let alone = tracing::info_span!(parent: None, "turn");
            continue_trace(&alone, &async_nats::HeaderMap::new());
            assert_ne!(
                alone.context().span().span_context().trace_id(),
                sent.trace_id()
            );
        });
    }
}
