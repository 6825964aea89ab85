//! Logging and tracing set-up, shared by every subcommand.

use tracing_subscriber::{EnvFilter, fmt, prelude::*};

use crate::config::{Config, LogFormat};

/// Installs the global subscriber: text or JSON lines on stderr, filtered by `RUST_LOG`.
pub fn init(config: &Config) {
    let filter = EnvFilter::try_new(&config.rust_log).unwrap_or_else(|_| EnvFilter::new("info"));
    let registry = tracing_subscriber::registry().with(filter);
    let result = match config.log_format {
        LogFormat::Json => registry
            .with(
                fmt::layer()
                    .json()
                    .with_current_span(true)
                    .with_span_list(false)
                    .with_writer(std::io::stderr),
            )
            .try_init(),
        LogFormat::Text => registry.with(fmt::layer().with_writer(std::io::stderr)).try_init(),
    };
    if result.is_err() {
        // Already installed (tests start several servers in one process).
        tracing::debug!("tracing subscriber already installed");
    }
    if config.otel_exporter_otlp_endpoint.is_some() {
        tracing::warn!(
            "OTEL_EXPORTER_OTLP_ENDPOINT is set, but OTLP export is not in this build yet; traces stay in the logs"
        );
    }
}
