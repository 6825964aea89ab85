//! A lock-free latency histogram: recording is two relaxed atomic adds, so it suits hot paths
//! (every HTTP request, every fanned-out message); a scrape reads it as a [`HistogramSnapshot`].

use std::{
    sync::atomic::{AtomicU64, Ordering},
    time::Duration,
};

/// Upper bounds of every latency histogram.
pub const LATENCY_BUCKETS: [Duration; 12] = [
    Duration::from_micros(1_000),
    Duration::from_micros(2_500),
    Duration::from_millis(5),
    Duration::from_millis(10),
    Duration::from_millis(25),
    Duration::from_millis(50),
    Duration::from_millis(100),
    Duration::from_millis(250),
    Duration::from_millis(500),
    Duration::from_secs(1),
    Duration::from_millis(2_500),
    Duration::from_secs(10),
];

/// [`LATENCY_BUCKETS`] in seconds, the unit of the exposed `le` labels.
const BOUNDS_SECONDS: [f64; LATENCY_BUCKETS.len()] = {
    let mut seconds = [0.0; LATENCY_BUCKETS.len()];
    let mut i = 0;
    while i < seconds.len() {
        seconds[i] = LATENCY_BUCKETS[i].as_secs_f64();
        i += 1;
    }
    seconds
};

/// Latencies counted in [`LATENCY_BUCKETS`].
pub struct Histogram {
    /// Non-cumulative counts per bucket, then the count above the last bound; a scrape adds
    /// them up, so an observation touches one counter.
    buckets: [AtomicU64; LATENCY_BUCKETS.len() + 1],
    /// Sum of the observations in microseconds (an integer, so that it can be atomic).
    sum_micros: AtomicU64,
}

impl Default for Histogram {
    fn default() -> Self {
        Self {
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
            sum_micros: AtomicU64::new(0),
        }
    }
}

impl Histogram {
    pub fn observe(&self, value: Duration) {
        let slot = LATENCY_BUCKETS
            .iter()
            .position(|bound| value <= *bound)
            .unwrap_or(LATENCY_BUCKETS.len());
        self.buckets[slot].fetch_add(1, Ordering::Relaxed);
        self.sum_micros
            .fetch_add(u64::try_from(value.as_micros()).unwrap_or(u64::MAX), Ordering::Relaxed);
    }

    /// The counts as of now, for one scrape.
    pub fn snapshot(&self) -> HistogramSnapshot {
        HistogramSnapshot {
            bounds: &BOUNDS_SECONDS,
            counts: std::array::from_fn(|i| self.buckets[i].load(Ordering::Relaxed)),
            overflow: self.buckets[LATENCY_BUCKETS.len()].load(Ordering::Relaxed),
            sum: self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6,
        }
    }
}

/// A histogram's counts read once, so that every line a scrape writes of it agrees.
#[derive(Clone, Copy, Debug)]
pub struct HistogramSnapshot {
    /// Upper bound of each bucket, in the exposed unit.
    pub(super) bounds: &'static [f64; LATENCY_BUCKETS.len()],
    /// Observations per bucket (not cumulative).
    pub(super) counts: [u64; LATENCY_BUCKETS.len()],
    /// Observations above the last bound.
    pub(super) overflow: u64,
    /// Sum of the observations, in the exposed unit.
    pub(super) sum: f64,
}

impl HistogramSnapshot {
    /// Number of observations.
    pub fn count(&self) -> u64 {
        self.counts.iter().sum::<u64>() + self.overflow
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_observation_on_a_bound_counts_in_that_bucket() {
        let h = Histogram::default();
        h.observe(Duration::from_millis(1));
        h.observe(Duration::from_nanos(1_000_001));
        h.observe(Duration::from_secs(11));
        let s = h.snapshot();
        assert_eq!(&s.counts[..2], &[1, 1]);
        assert_eq!(s.overflow, 1);
        assert_eq!(s.count(), 3);
    }

    #[test]
    fn bounds_in_seconds_are_the_exposed_labels() {
        assert_eq!(
            BOUNDS_SECONDS,
            [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0]
        );
    }
}
