//! Figures per stretch of a run (the soak's intervals, the ramp's steps): a [`Sampler`] marks
//! the counters, CPU times and latency histogram at the start of a stretch, and at its end
//! turns the difference into a [`Row`] that prints as one line of a table and as JSON. Also the
//! durations these scenarios take on the command line (`90s`, `10m`, `3h`).

use std::{
    sync::{Arc, atomic::Ordering},
    time::{Duration, Instant},
};

use hdrhistogram::Histogram;
use serde_json::{Value, json};

use crate::{
    client::Clients,
    rest::PostStats,
    stats::{CpuSnapshot, Summary},
    topology::CpuProbe,
};

/// The tiers whose CPU per post a table shows, in column order (the JSON has every group).
const TABLE_TIERS: &[&str] = &["postgres", "api", "gateway", "serve"];

/// The counters at one moment.
struct Mark {
    at: Instant,
    cpu: CpuSnapshot,
    /// Posts acknowledged so far.
    ok: u64,
    /// Posts that failed or were shed so far.
    errors: u64,
    duplicates: u64,
    /// Every delivery latency recorded so far (first connections and reconnections).
    latency: Histogram<u64>,
    /// Highest acknowledged seq per group.
    acked: Vec<i64>,
}

/// One stretch of a run.
#[derive(Clone, Debug)]
pub struct Row {
    /// What the first column shows (`60 s`, `2000/s`).
    pub label: String,
    /// Seconds from the sampler's start to the end of this stretch.
    pub end_s: f64,
    pub seconds: f64,
    /// Posts acknowledged during the stretch.
    pub posts: u64,
    pub posts_per_s: f64,
    /// Posts that failed or were shed during the stretch.
    pub errors: u64,
    /// CPU milliseconds per acknowledged post, per process group (NaN: no post acknowledged).
    pub cpu_ms_per_post: Vec<(String, f64)>,
    /// POST->socket latency of the deliveries received during the stretch.
    pub latency: Summary,
    /// Deliveries still owed at the end of the stretch for posts acknowledged before it began
    /// (the soak), or for every acknowledged post once the step's deliveries had time to arrive
    /// (the ramp).
    pub lost: u64,
    /// Messages a socket received a second time during the stretch.
    pub duplicates: u64,
}

impl Row {
    /// CPU ms per post of one process group (NaN if it was not measured).
    pub fn cpu(&self, tier: &str) -> f64 {
        self.cpu_ms_per_post
            .iter()
            .find(|(t, _)| t == tier)
            .map_or(f64::NAN, |(_, v)| *v)
    }

    pub fn json(&self) -> Value {
        let cpu: serde_json::Map<String, Value> = self
            .cpu_ms_per_post
            .iter()
            .map(|(t, v)| (t.clone(), if v.is_finite() { json!(v) } else { Value::Null }))
            .collect();
        json!({
            "label": self.label, "end_s": self.end_s, "seconds": self.seconds, "posts": self.posts,
            "posts_per_s": self.posts_per_s, "errors": self.errors, "cpu_ms_per_post": cpu,
            "latency": self.latency.json(), "lost": self.lost, "duplicates": self.duplicates,
        })
    }
}

/// The columns of a table of rows: the tiers among [`TABLE_TIERS`] that were measured.
pub struct Table {
    first: String,
    tiers: Vec<String>,
}

impl Table {
    /// A table whose first column is headed `first`, with the CPU tiers `probe` measures.
    pub fn new(first: &str, probe: &CpuProbe) -> Self {
        let measured: Vec<String> = probe.labels();
        Self {
            first: first.to_owned(),
            tiers: TABLE_TIERS
                .iter()
                .filter(|t| measured.iter().any(|m| m == *t))
                .map(|t| (*t).to_owned())
                .collect(),
        }
    }

    pub fn tiers(&self) -> &[String] {
        &self.tiers
    }

    pub fn header(&self) -> String {
        let mut line = format!("{:>9} {:>9} {:>7}", self.first, "posts/s", "errors");
        for tier in &self.tiers {
            line.push_str(&format!(" {:>13}", format!("{} ms/post", short(tier))));
        }
        line.push_str(&format!(
            " {:>8} {:>8} {:>9} {:>7} {:>5}",
            "p50 ms", "p99 ms", "max ms", "lost", "dup"
        ));
        line
    }

    pub fn line(&self, row: &Row) -> String {
        let mut line = format!("{:>9} {:>9.1} {:>7}", row.label, row.posts_per_s, row.errors);
        for tier in &self.tiers {
            let v = row.cpu(tier);
            if v.is_finite() {
                line.push_str(&format!(" {v:>13.4}"));
            } else {
                line.push_str(&format!(" {:>13}", "-"));
            }
        }
        let l = &row.latency;
        line.push_str(&format!(
            " {:>8.2} {:>8.2} {:>9.2} {:>7} {:>5}",
            l.p50, l.p99, l.max, row.lost, row.duplicates
        ));
        line
    }
}

/// Column names short enough for a table.
fn short(tier: &str) -> &str {
    match tier {
        "postgres" => "pg",
        "gateway" => "gw",
        other => other,
    }
}

/// Takes the marks of a run's stretches.
pub struct Sampler {
    probe: CpuProbe,
    clients: Arc<Clients>,
    stats: Arc<PostStats>,
    started: Instant,
    last: Mark,
}

impl Sampler {
    /// Marks the start of the first stretch.
    pub async fn start(probe: CpuProbe, clients: Arc<Clients>, stats: Arc<PostStats>) -> Self {
        let last = mark(&probe, &clients, &stats).await;
        Self {
            probe,
            clients,
            stats,
            started: last.at,
            last,
        }
    }

    /// Counts the following rows' end times from the end of the last one (after a warm-up).
    pub fn restart_clock(&mut self) {
        self.started = self.last.at;
    }

    /// Ends the current stretch (and starts the next): its figures.
    pub async fn sample(&mut self, label: String) -> Row {
        let now = mark(&self.probe, &self.clients, &self.stats).await;
        let before = &self.last;
        let seconds = now.at.duration_since(before.at).as_secs_f64();
        let posts = now.ok - before.ok;
        let cpu_ms_per_post = now
            .cpu
            .since(&before.cpu)
            .into_iter()
            .map(|(tier, s)| (tier, if posts > 0 { s * 1000.0 / posts as f64 } else { f64::NAN }))
            .collect();
        let mut latency = now.latency.clone();
        if let Err(e) = latency.subtract(&before.latency) {
            eprintln!("warning: a stretch's latency histogram: {e}");
        }
        let row = Row {
            label,
            end_s: now.at.duration_since(self.started).as_secs_f64(),
            seconds,
            posts,
            posts_per_s: posts as f64 / seconds.max(1e-9),
            errors: now.errors - before.errors,
            cpu_ms_per_post,
            latency: Summary::of(&latency),
            lost: self.clients.lost(&before.acked),
            duplicates: now.duplicates - before.duplicates,
        };
        self.last = now;
        row
    }
}

async fn mark(probe: &CpuProbe, clients: &Clients, stats: &PostStats) -> Mark {
    let cpu = probe.snapshot().await;
    let mut latency = clients.latency.merged();
    if let Err(e) = latency.add(clients.latency_after_reconnect.merged()) {
        eprintln!("warning: merging latency histograms: {e}");
    }
    Mark {
        at: cpu.at.unwrap_or_else(Instant::now),
        ok: stats.ok.load(Ordering::Relaxed),
        errors: stats.failed.load(Ordering::Relaxed) + stats.shed.load(Ordering::Relaxed),
        duplicates: clients.duplicates.load(Ordering::Relaxed),
        latency,
        acked: stats.acked_snapshot(),
        cpu,
    }
}

/// A duration on the command line: seconds (`90`), or a number with `s`, `m` or `h`
/// (`90s`, `10m`, `1.5h`).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let (number, unit) = match text.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => (&text[..i], c),
        _ => (text, 's'),
    };
    let seconds_per = match unit {
        's' => 1.0,
        'm' => 60.0,
        'h' => 3600.0,
        _ => return Err(format!("{text}: expected seconds, or a number with s, m or h")),
    };
    let value: f64 = number
        .trim()
        .parse()
        .map_err(|_| format!("{text}: expected seconds, or a number with s, m or h"))?;
    if !value.is_finite() || value <= 0.0 {
        return Err(format!("{text}: must be above zero"));
    }
    Ok(Duration::from_secs_f64(value * seconds_per))
}

/// A duration as [`parse_duration`] reads it back: `20s`, `10m`, `3h`, `90s`.
pub fn format_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms.is_multiple_of(3_600_000) {
        format!("{}h", ms / 3_600_000)
    } else if ms.is_multiple_of(60_000) {
        format!("{}m", ms / 60_000)
    } else if ms.is_multiple_of(1000) {
        format!("{}s", ms / 1000)
    } else {
        format!("{}s", d.as_secs_f64())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_and_print_alike() {
        assert_eq!(parse_duration("90"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("20s"), Ok(Duration::from_secs(20)));
        assert_eq!(parse_duration("10m"), Ok(Duration::from_secs(600)));
        assert_eq!(parse_duration("1.5h"), Ok(Duration::from_secs(5400)));
        assert!(parse_duration("0").is_err());
        assert!(parse_duration("5d").is_err());
        assert!(parse_duration("m").is_err());
        for text in ["20s", "10m", "3h", "90s", "2.5s"] {
            assert_eq!(format_duration(parse_duration(text).unwrap()), text);
        }
    }

    fn row(cpu: Vec<(&str, f64)>) -> Row {
        Row {
            label: "60 s".into(),
            end_s: 60.0,
            seconds: 60.0,
            posts: 60_000,
            posts_per_s: 1000.0,
            errors: 0,
            cpu_ms_per_post: cpu.into_iter().map(|(t, v)| (t.to_owned(), v)).collect(),
            latency: Summary::default(),
            lost: 0,
            duplicates: 0,
        }
    }

    #[test]
    fn tables_show_the_measured_tiers_in_order() {
        let table = Table {
            first: "end".into(),
            tiers: vec!["postgres".into(), "api".into()],
        };
        let header = table.header();
        assert!(
            header.contains("pg ms/post") && header.contains("api ms/post"),
            "{header}"
        );
        let line = table.line(&row(vec![("api", 0.07), ("postgres", 0.0612), ("bench", 0.2)]));
        assert!(
            line.contains("0.0612") && line.contains("0.0700") && !line.contains("0.2000"),
            "{line}"
        );
        assert_eq!(header.len(), line.len(), "columns line up:\n{header}\n{line}");
        let unmeasured = table.line(&row(vec![("postgres", f64::NAN)]));
        assert!(unmeasured.contains(" -"), "{unmeasured}");
    }

    #[test]
    fn rows_serialise_unmeasured_cpu_as_null() {
        let json = row(vec![("postgres", f64::NAN), ("api", 0.5)]).json();
        assert_eq!(json["cpu_ms_per_post"]["postgres"], Value::Null);
        assert_eq!(json["cpu_ms_per_post"]["api"], json!(0.5));
    }
}
