//! Logging and tracing, shared by every subcommand: text or JSON logs on stderr, and, when
//! `OTEL_EXPORTER_OTLP_ENDPOINT` is set, OTLP/HTTP trace export. Trace context travels with
//! each bus event (W3C `traceparent`), so one trace shows API -> Redis -> gateway -> emit.

use std::collections::BTreeMap;

use opentelemetry::{
    global,
    propagation::{Extractor, Injector},
    trace::TracerProvider as _,
};
use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_sdk::{Resource, propagation::TraceContextPropagator, trace::SdkTracerProvider};
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::{EnvFilter, Layer, fmt, prelude::*};

use crate::config::{Config, LogFormat};

/// Flushes and stops trace export when dropped (at the end of `main`).
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take()
            && let Err(e) = provider.shutdown()
        {
            eprintln!("warning: flushing traces failed: {e}");
        }
    }
}

/// Installs the global subscriber. `service` names this process in traces (e.g.
/// `community-chat-api`) unless `OTEL_SERVICE_NAME` is set.
pub fn init(config: &Config, service: &str) -> anyhow::Result<Telemetry> {
    let filter = EnvFilter::try_new(&config.rust_log).unwrap_or_else(|_| EnvFilter::new("info"));
    let provider = match &config.otel_exporter_otlp_endpoint {
        Some(endpoint) => Some(tracer_provider(endpoint, service)?),
        None => None,
    };
    let otel = provider.as_ref().map(|p| {
        global::set_text_map_propagator(TraceContextPropagator::new());
        tracing_opentelemetry::layer().with_tracer(p.tracer("community-chat"))
    });
    let logs = match config.log_format {
        LogFormat::Json => fmt::layer()
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .with_writer(std::io::stderr)
            .boxed(),
        // Colours only for a terminal: in a file or a log collector they are noise, and cost
        // time on every line.
        LogFormat::Text => fmt::layer()
            .with_writer(std::io::stderr)
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .boxed(),
    };
    if tracing_subscriber::registry()
        .with(filter)
        .with(otel)
        .with(logs)
        .try_init()
        .is_err()
    {
        // Already installed (tests start several servers in one process).
        tracing::debug!("tracing subscriber already installed");
    }
    Ok(Telemetry { provider })
}

fn tracer_provider(endpoint: &str, service: &str) -> anyhow::Result<SdkTracerProvider> {
    let protocol = match std::env::var("OTEL_EXPORTER_OTLP_PROTOCOL").as_deref() {
        Ok("http/json") => Protocol::HttpJson,
        Ok("http/protobuf") | Err(_) => Protocol::HttpBinary,
        Ok(other) => {
            anyhow::bail!("OTEL_EXPORTER_OTLP_PROTOCOL '{other}' is not supported: use http/protobuf or http/json")
        }
    };
    let url = format!("{}/v1/traces", endpoint.trim_end_matches('/'));
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(protocol)
        .with_endpoint(url)
        .build()
        .map_err(|e| anyhow::anyhow!("OTEL_EXPORTER_OTLP_ENDPOINT: {e}"))?;
    let mut resource = Resource::builder();
    if std::env::var_os("OTEL_SERVICE_NAME").is_none() {
        resource = resource.with_service_name(service.to_owned());
    }
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource.build())
        .build())
}

/// The current span's trace context as W3C headers, to travel with a bus event. `None` when
/// tracing export is off (nothing to link).
pub fn current_trace_context() -> Option<BTreeMap<String, String>> {
    let mut carrier = Carrier(BTreeMap::new());
    let context = tracing::Span::current().context();
    global::get_text_map_propagator(|p| p.inject_context(&context, &mut carrier));
    (!carrier.0.is_empty()).then_some(carrier.0)
}

/// Makes `span` a child of the trace in `headers` (a bus event's or an HTTP request's).
pub fn set_parent_from<'a>(span: &tracing::Span, headers: impl Iterator<Item = (&'a str, &'a str)>) {
    let carrier = Carrier(headers.map(|(k, v)| (k.to_ascii_lowercase(), v.to_owned())).collect());
    if carrier.0.is_empty() {
        return;
    }
    let parent = global::get_text_map_propagator(|p| p.extract(&carrier));
    if let Err(e) = span.set_parent(parent) {
        tracing::trace!(error = ?e, "could not link a span to its parent trace");
    }
}

struct Carrier(BTreeMap<String, String>);

impl Injector for Carrier {
    fn set(&mut self, key: &str, value: String) {
        self.0.insert(key.to_owned(), value);
    }
}

impl Extractor for Carrier {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }
    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(String::as_str).collect()
    }
}
