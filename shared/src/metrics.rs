//! The process's `/metrics`: HTTP request counts and latency by method, route and status,
//! plus the families that other parts register as sources (the gateway's sockets, rooms and
//! queues, the database pool).
//!
//! Every label value is bounded, whatever clients send: a method outside the standard ones is
//! `other` ([`method_label`]), and callers pass a route template or [`UNMATCHED_ROUTE`], never
//! a request's path. So the number of series depends on the routes, not on the traffic.
//!
//! - [`text`]: the one writer of Prometheus text; every family goes through it.
//! - [`histogram`]: the lock-free latency histogram that hot paths record into.
//!
//! Recording is atomic adds (an HTTP request also takes a shared read lock to find its
//! series); the formatting cost is paid per scrape. A metrics framework such as
//! `prometheus-client` would take a lock per histogram observation and write OpenMetrics-style
//! families (a counter's TYPE line without its `_total`), which changes what scrapers see.

pub mod histogram;
pub mod text;

use std::{
    collections::BTreeMap,
    sync::{PoisonError, RwLock},
    time::Duration,
};

pub use histogram::{Histogram, HistogramSnapshot};
pub use text::Exposition;

type Source = Box<dyn Fn(&mut Exposition<'_>) + Send + Sync>;

/// HTTP latency histograms, nested by method, route and status so that recording looks a
/// series up by borrowed `&str`s, without allocating. Routes are templates, so the maps stay
/// small.
type HttpSeries = BTreeMap<String, BTreeMap<String, BTreeMap<u16, Histogram>>>;

/// The `route` label of a request that matched no route, whatever its path.
pub const UNMATCHED_ROUTE: &str = "unmatched";

/// The `method` label of a request: a standard HTTP method by its name, anything else `other`
/// (HTTP lets clients invent methods, and each would otherwise be a new series).
pub fn method_label(method: &str) -> &'static str {
    const STANDARD: [&str; 9] = [
        "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH",
    ];
    STANDARD.into_iter().find(|m| *m == method).unwrap_or("other")
}

#[derive(Default)]
pub struct Metrics {
    /// Written only when a (method, route, status) is first seen; requests otherwise share it.
    http: RwLock<HttpSeries>,
    /// Writers of other components' families, called on each scrape.
    sources: RwLock<Vec<Source>>,
}

impl Metrics {
    /// Counts and times one request. `route` is the matched route template, or
    /// [`UNMATCHED_ROUTE`]; `method` may be anything (see [`method_label`]).
    pub fn record_http(&self, method: &str, route: &str, status: u16, latency: Duration) {
        let method = method_label(method);
        {
            let http = self.http.read().unwrap_or_else(PoisonError::into_inner);
            if let Some(series) = http.get(method).and_then(|r| r.get(route)).and_then(|s| s.get(&status)) {
                series.observe(latency);
                return;
            }
        }
        let mut http = self.http.write().unwrap_or_else(PoisonError::into_inner);
        http.entry(method.to_owned())
            .or_default()
            .entry(route.to_owned())
            .or_default()
            .entry(status)
            .or_default()
            .observe(latency);
    }

    /// Adds a writer of families of its own, called on each scrape.
    pub fn add_source(&self, source: impl Fn(&mut Exposition<'_>) + Send + Sync + 'static) {
        self.sources
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .push(Box::new(source));
    }

    /// The Prometheus text of every family.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(16 * 1024);
        let mut text = Exposition::new(&mut out);
        self.write_http(&mut text);
        for source in self.sources.read().unwrap_or_else(PoisonError::into_inner).iter() {
            source(&mut text);
        }
        out
    }

    fn write_http(&self, text: &mut Exposition<'_>) {
        let http = self.http.read().unwrap_or_else(PoisonError::into_inner);
        // Read once, so that a series' request count and its latency `_count` agree.
        let series: Vec<_> = http
            .iter()
            .flat_map(|(method, routes)| {
                routes.iter().flat_map(move |(route, statuses)| {
                    statuses
                        .iter()
                        .map(move |(status, h)| (method.as_str(), route.as_str(), status.to_string(), h.snapshot()))
                })
            })
            .collect();
        let mut requests = text.counter("http_requests_total", "HTTP requests by method, route and status.");
        for (method, route, status, latency) in &series {
            requests.sample(
                &[("method", method), ("route", route), ("status", status)],
                latency.count(),
            );
        }
        let mut latencies = text.histogram("http_request_duration_seconds", "HTTP request latency.");
        for (method, route, status, latency) in &series {
            latencies.series(&[("method", method), ("route", route), ("status", status)], latency);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_requests_are_counted_and_timed_per_method_route_and_status() {
        let metrics = Metrics::default();
        metrics.record_http("GET", "/groups/{id}", 200, Duration::from_millis(2));
        metrics.record_http("GET", "/groups/{id}", 200, Duration::from_millis(20));
        metrics.record_http("POST", "/groups", 201, Duration::from_millis(1));
        metrics.add_source(|text| {
            text.gauge("extra_gauge", "From a source.").sample(&[], 7);
        });
        let out = metrics.render();
        let get = "method=\"GET\",route=\"/groups/{id}\",status=\"200\"";
        assert!(out.starts_with("# HELP http_requests_total "), "{out}");
        assert!(out.contains(&format!("http_requests_total{{{get}}} 2\n")), "{out}");
        assert!(
            out.contains("http_requests_total{method=\"POST\",route=\"/groups\",status=\"201\"} 1\n"),
            "{out}"
        );
        assert!(
            out.contains("# TYPE http_request_duration_seconds histogram\n"),
            "{out}"
        );
        assert!(
            out.contains(&format!(
                "http_request_duration_seconds_bucket{{{get},le=\"0.0025\"}} 1\n"
            )),
            "{out}"
        );
        assert!(
            out.contains(&format!(
                "http_request_duration_seconds_bucket{{{get},le=\"+Inf\"}} 2\n"
            )),
            "{out}"
        );
        assert!(
            out.contains(&format!("http_request_duration_seconds_sum{{{get}}} 0.022\n")),
            "{out}"
        );
        assert!(
            out.contains(&format!("http_request_duration_seconds_count{{{get}}} 2\n")),
            "{out}"
        );
        assert!(out.ends_with("# TYPE extra_gauge gauge\nextra_gauge 7\n"), "{out}");
    }

    #[test]
    fn invented_methods_share_one_series() {
        let metrics = Metrics::default();
        for i in 0..500 {
            metrics.record_http(&format!("M{i:05}XXX"), UNMATCHED_ROUTE, 404, Duration::from_millis(1));
        }
        metrics.record_http("get", UNMATCHED_ROUTE, 404, Duration::from_millis(1));
        metrics.record_http("GET", UNMATCHED_ROUTE, 404, Duration::from_millis(1));
        let out = metrics.render();
        assert!(
            out.contains("http_requests_total{method=\"other\",route=\"unmatched\",status=\"404\"} 501\n"),
            "{out}"
        );
        assert!(
            out.contains("http_requests_total{method=\"GET\",route=\"unmatched\",status=\"404\"} 1\n"),
            "{out}"
        );
        assert_eq!(out.matches("http_requests_total{").count(), 2, "{out}");
    }

    #[test]
    fn with_no_requests_the_http_families_are_still_declared() {
        let out = Metrics::default().render();
        assert_eq!(
            out,
            "# HELP http_requests_total HTTP requests by method, route and status.\n\
             # TYPE http_requests_total counter\n\
             # HELP http_request_duration_seconds HTTP request latency.\n\
             # TYPE http_request_duration_seconds histogram\n"
        );
    }

    /// Prints the recording cost; run with `cargo test --release -p community-chat-shared
    /// recording_cost -- --ignored --nocapture`.
    #[test]
    #[ignore = "a timing measurement, not a check: run it by hand in release mode"]
    fn recording_cost() {
        const N: u32 = 5_000_000;
        let metrics = Metrics::default();
        let histogram = Histogram::default();
        let time = |what: &str, record: &dyn Fn(u32)| {
            let started = std::time::Instant::now();
            for i in 0..N {
                record(i);
            }
            println!(
                "{what}: {:.1} ns/op",
                started.elapsed().as_nanos() as f64 / f64::from(N)
            );
        };
        time("Histogram::observe", &|i| {
            histogram.observe(Duration::from_micros(u64::from(i % 20_000)))
        });
        time("Metrics::record_http", &|i| {
            metrics.record_http(
                "POST",
                "/client/community/groups/{groupId}/messages",
                201,
                Duration::from_micros(u64::from(i % 20_000)),
            )
        });
    }
}
