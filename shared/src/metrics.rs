//! Prometheus metrics in text format, without a metrics framework: HTTP request counts and
//! latency by route and status, plus gauges and counters that other parts register as
//! sources (the gateway's sockets, rooms, subscriptions).

use std::{
    collections::BTreeMap,
    fmt::Write,
    sync::{Mutex, RwLock},
    time::Duration,
};

/// Upper bounds of the latency histogram, in seconds.
const BUCKETS: [f64; 12] = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0];

#[derive(Default)]
struct HttpSeries {
    /// Cumulative counts per bucket, then the +Inf count.
    buckets: [u64; BUCKETS.len()],
    count: u64,
    sum_seconds: f64,
}

type Source = Box<dyn Fn(&mut String) + Send + Sync>;

#[derive(Default)]
pub struct Metrics {
    /// (method, route, status) -> latency histogram. Routes are templates, so the key set is small.
    http: Mutex<BTreeMap<(String, String, u16), HttpSeries>>,
    /// Renderers of other components' metrics.
    sources: RwLock<Vec<Source>>,
}

impl Metrics {
    pub fn record_http(&self, method: &str, route: &str, status: u16, latency: Duration) {
        let seconds = latency.as_secs_f64();
        let Ok(mut http) = self.http.lock() else {
            return;
        };
        let series = http.entry((method.to_owned(), route.to_owned(), status)).or_default();
        series.count += 1;
        series.sum_seconds += seconds;
        for (i, bound) in BUCKETS.iter().enumerate() {
            if seconds <= *bound {
                series.buckets[i] += 1;
            }
        }
    }

    /// Adds a renderer that appends Prometheus text (with its own HELP/TYPE lines).
    pub fn add_source(&self, source: impl Fn(&mut String) + Send + Sync + 'static) {
        if let Ok(mut sources) = self.sources.write() {
            sources.push(Box::new(source));
        }
    }

    pub fn render(&self) -> String {
        let mut out = String::with_capacity(4096);
        out.push_str("# HELP http_requests_total HTTP requests by method, route and status.\n# TYPE http_requests_total counter\n");
        let snapshot: Vec<_> = match self.http.lock() {
            Ok(http) => http
                .iter()
                .map(|(k, v)| (k.clone(), v.buckets, v.count, v.sum_seconds))
                .collect(),
            Err(_) => Vec::new(),
        };
        for ((method, route, status), _, count, _) in &snapshot {
            let _ = writeln!(
                out,
                "http_requests_total{{method=\"{method}\",route=\"{route}\",status=\"{status}\"}} {count}"
            );
        }
        out.push_str("# HELP http_request_duration_seconds HTTP request latency.\n# TYPE http_request_duration_seconds histogram\n");
        for ((method, route, status), buckets, count, sum) in &snapshot {
            let labels = format!("method=\"{method}\",route=\"{route}\",status=\"{status}\"");
            for (bound, n) in BUCKETS.iter().zip(buckets) {
                let _ = writeln!(
                    out,
                    "http_request_duration_seconds_bucket{{{labels},le=\"{bound}\"}} {n}"
                );
            }
            let _ = writeln!(
                out,
                "http_request_duration_seconds_bucket{{{labels},le=\"+Inf\"}} {count}"
            );
            let _ = writeln!(out, "http_request_duration_seconds_sum{{{labels}}} {sum}");
            let _ = writeln!(out, "http_request_duration_seconds_count{{{labels}}} {count}");
        }
        if let Ok(sources) = self.sources.read() {
            for source in sources.iter() {
                source(&mut out);
            }
        }
        out
    }
}
