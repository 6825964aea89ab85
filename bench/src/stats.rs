//! Measuring: one monotonic clock for the whole process (the sender stamps a message with it,
//! the receiver reads it back), sharded HDR latency histograms, and what `/proc` says about a
//! process (CPU time, RSS and PSS).

use std::{
    collections::HashMap,
    sync::{Mutex, OnceLock},
    time::Instant,
};

use hdrhistogram::Histogram;

static EPOCH: OnceLock<Instant> = OnceLock::new();

/// The instant every timestamp of this process counts from.
pub fn epoch() -> Instant {
    *EPOCH.get_or_init(Instant::now)
}

/// Microseconds since [`epoch`].
pub fn now_us() -> u64 {
    epoch().elapsed().as_micros() as u64
}

const SHARDS: usize = 16;
/// One hour, in microseconds: the largest latency recorded (larger ones saturate).
const MAX_US: u64 = 3_600_000_000;

/// Latencies in microseconds. Recording takes the lock of one of 16 shards (chosen by the
/// caller, e.g. by socket index), so tens of thousands of socket tasks do not contend.
pub struct Latency {
    shards: Vec<Mutex<Histogram<u64>>>,
}

impl Default for Latency {
    fn default() -> Self {
        Self {
            shards: (0..SHARDS)
                .map(|_| Mutex::new(Histogram::new_with_bounds(1, MAX_US, 3).expect("valid histogram bounds")))
                .collect(),
        }
    }
}

impl Latency {
    pub fn record(&self, shard: usize, us: u64) {
        let mut h = self.shards[shard % SHARDS].lock().unwrap_or_else(|p| p.into_inner());
        h.saturating_record(us.clamp(1, MAX_US));
    }

    pub fn merged(&self) -> Histogram<u64> {
        let mut all = Histogram::new_with_bounds(1, MAX_US, 3).expect("valid histogram bounds");
        for shard in &self.shards {
            let h = shard.lock().unwrap_or_else(|p| p.into_inner());
            if let Err(e) = all.add(&*h) {
                eprintln!("warning: merging a latency histogram: {e}");
            }
        }
        all
    }

    pub fn summary(&self) -> Summary {
        Summary::of(&self.merged())
    }
}

/// Percentiles of a latency histogram, in milliseconds.
#[derive(Clone, Copy, Debug, Default)]
pub struct Summary {
    pub count: u64,
    pub p50: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
    pub mean: f64,
}

impl Summary {
    pub fn of(h: &Histogram<u64>) -> Self {
        if h.is_empty() {
            return Self::default();
        }
        let ms = |us: u64| us as f64 / 1000.0;
        Self {
            count: h.len(),
            p50: ms(h.value_at_quantile(0.50)),
            p99: ms(h.value_at_quantile(0.99)),
            p999: ms(h.value_at_quantile(0.999)),
            max: ms(h.max()),
            mean: h.mean() / 1000.0,
        }
    }

    /// `p50 1.23 ms, p99 4.56 ms, p999 7.89 ms, max 9.99 ms (n=1234)`
    pub fn line(&self) -> String {
        format!(
            "p50 {:.2} ms, p99 {:.2} ms, p999 {:.2} ms, max {:.2} ms (n={})",
            self.p50, self.p99, self.p999, self.max, self.count
        )
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "count": self.count, "p50_ms": self.p50, "p99_ms": self.p99, "p999_ms": self.p999,
            "max_ms": self.max, "mean_ms": self.mean,
        })
    }
}

/// `text xN` of each counted kind, joined with `sep`.
pub fn count_summary(counts: &std::sync::Mutex<std::collections::BTreeMap<String, u64>>, sep: &str) -> String {
    let counts = counts.lock().unwrap_or_else(|p| p.into_inner());
    counts
        .iter()
        .map(|(k, v)| format!("{k} x{v}"))
        .collect::<Vec<_>>()
        .join(sep)
}

/// Clock ticks per second of `/proc/PID/stat` times (`getconf CLK_TCK`, 100 on Linux x86-64).
pub fn clock_ticks() -> f64 {
    static TICKS: OnceLock<f64> = OnceLock::new();
    *TICKS.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse::<f64>().ok())
            .filter(|t| *t > 0.0)
            .unwrap_or(100.0)
    })
}

/// utime + stime of a process, in seconds (`None`: it is gone).
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and parentheses: fields count from the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the name: state is field 3, so utime (14) and stime (15) are at 11 and 12.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) as f64 / clock_ticks())
}

/// Resident and proportional set size of a process, in KiB, from `/proc/PID/smaps_rollup`.
#[derive(Clone, Copy, Debug, Default)]
pub struct Memory {
    pub rss_kib: u64,
    pub pss_kib: u64,
}

pub fn memory(pid: u32) -> Option<Memory> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?;
    let field = |name: &str| {
        text.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
    };
    Some(Memory {
        rss_kib: field("Rss:")?,
        pss_kib: field("Pss:")?,
    })
}

/// Processes whose `comm` is `name` (e.g. every `postgres` process: server and backends).
pub fn pids_named(name: &str) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()))
        .filter(|pid| std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim_end() == name))
        .collect()
}

/// CPU seconds per process of a set of labelled process groups, to diff two moments.
#[derive(Clone, Debug, Default)]
pub struct CpuSnapshot {
    /// label -> pid -> seconds
    pub groups: Vec<(String, HashMap<u32, f64>)>,
    pub at: Option<Instant>,
}

impl CpuSnapshot {
    pub fn take(groups: &[(String, Vec<u32>)]) -> Self {
        Self {
            groups: groups
                .iter()
                .map(|(label, pids)| {
                    let per_pid = pids.iter().filter_map(|p| cpu_seconds(*p).map(|s| (*p, s))).collect();
                    (label.clone(), per_pid)
                })
                .collect(),
            at: Some(Instant::now()),
        }
    }

    /// CPU seconds each label used between `before` and `self`. A process that appeared in
    /// between counts whole; one that vanished counts nothing (its last interval is unknown).
    pub fn since(&self, before: &CpuSnapshot) -> Vec<(String, f64)> {
        self.groups
            .iter()
            .map(|(label, now)| {
                let then = before.groups.iter().find(|(l, _)| l == label).map(|(_, m)| m);
                let used: f64 = now
                    .iter()
                    .map(|(pid, s)| s - then.and_then(|m| m.get(pid)).copied().unwrap_or(0.0))
                    .filter(|d| *d > 0.0)
                    .fold(0.0, |a, b| a + b);
                (label.clone(), used)
            })
            .collect()
    }

    pub fn wall_seconds_since(&self, before: &CpuSnapshot) -> f64 {
        match (self.at, before.at) {
            (Some(a), Some(b)) => a.duration_since(b).as_secs_f64(),
            _ => 0.0,
        }
    }
}

/// The unlabelled samples whose names start with `prefix` on each server's `/metrics`
/// (`http://ADDR/metrics`), summed.
pub async fn sum_counters(addrs: impl Iterator<Item = String>, prefix: &str) -> Vec<(String, f64)> {
    let http = match reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(5))
        .build()
    {
        Ok(h) => h,
        Err(_) => return Vec::new(),
    };
    let mut sums: std::collections::BTreeMap<String, f64> = std::collections::BTreeMap::new();
    for addr in addrs {
        let Ok(response) = http.get(format!("http://{addr}/metrics")).send().await else {
            continue;
        };
        let Ok(text) = response.text().await else { continue };
        for line in text.lines().filter(|l| l.starts_with(prefix)) {
            let mut parts = line.split_whitespace();
            if let (Some(name), Some(value)) = (parts.next(), parts.next().and_then(|v| v.parse::<f64>().ok())) {
                *sums.entry(name.to_owned()).or_default() += value;
            }
        }
    }
    sums.into_iter().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_process_is_readable() {
        let pid = std::process::id();
        assert!(cpu_seconds(pid).is_some());
        let mem = memory(pid).expect("smaps_rollup");
        assert!(mem.rss_kib > 0);
    }

    #[test]
    fn percentiles() {
        let l = Latency::default();
        for us in 1..=1000 {
            l.record(us as usize, us * 1000);
        }
        let s = l.summary();
        assert_eq!(s.count, 1000);
        assert!((s.p50 - 500.0).abs() < 2.0, "{s:?}");
        assert!((s.p99 - 990.0).abs() < 2.0, "{s:?}");
    }
}
