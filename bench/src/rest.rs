//! The REST side: creating groups, and posting messages open-loop (a fixed arrival rate,
//! whatever the answers) or closed-loop (each poster waits for its answer). A posted message's
//! content is `b:<n>:<t>`: unique in the run, and `t` is the microsecond (bench clock) the POST
//! was sent, which the receiving socket subtracts from its own reading of the same clock. Like
//! the clients the README describes, each post carries a `clientMessageId` of its own (a random
//! UUID) unless the run turns that off; the bench never retries, so a post answered as a replay
//! (200) is an error.

use std::{
    collections::BTreeMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicI64, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use reqwest::header::{AUTHORIZATION, CONTENT_TYPE, HeaderValue};
use serde::Deserialize;
use tokio::sync::{Semaphore, watch};

use crate::{
    plan::Plan,
    stats::{Latency, now_us},
};

pub struct Rest {
    http: reqwest::Client,
    /// The `orgid` header of every request.
    org: HeaderValue,
    /// Each post carries a fresh `clientMessageId`.
    client_message_ids: bool,
}

#[derive(Deserialize)]
struct Created {
    id: String,
}

#[derive(Deserialize)]
struct Posted {
    seq: i64,
}

impl Rest {
    pub fn new(org: &str, client_message_ids: bool) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .http1_only()
            .tcp_nodelay(true)
            .pool_idle_timeout(Duration::from_secs(30))
            .timeout(Duration::from_secs(30))
            .build()?;
        Ok(Self {
            http,
            org: HeaderValue::from_str(org)?,
            client_message_ids,
        })
    }

    pub async fn create_group(
        &self,
        api: &str,
        authorization: &HeaderValue,
        body: &serde_json::Value,
    ) -> anyhow::Result<String> {
        let response = self
            .http
            .post(format!("{api}/client/community/groups"))
            .header("orgid", self.org.clone())
            .header(AUTHORIZATION, authorization.clone())
            .json(body)
            .send()
            .await?;
        let status = response.status();
        let bytes = response.bytes().await?;
        if status.as_u16() != 201 {
            bail!("create group: {status}: {}", String::from_utf8_lossy(&bytes));
        }
        Ok(serde_json::from_slice::<Created>(&bytes)
            .context("create group: no id")?
            .id)
    }

    /// Posts `content` (no JSON escaping needed: bench contents are plain), with a fresh
    /// `clientMessageId` unless they are off; the stored message's seq, or why not.
    pub async fn post_message(
        &self,
        api: &str,
        group_id: &str,
        authorization: &HeaderValue,
        content: &str,
    ) -> Result<i64, String> {
        let body = if self.client_message_ids {
            format!(
                "{{\"content\":\"{content}\",\"clientMessageId\":\"{}\"}}",
                random_uuid()
            )
        } else {
            format!("{{\"content\":\"{content}\"}}")
        };
        let response = self
            .http
            .post(format!("{api}/client/community/groups/{group_id}/messages"))
            .header("orgid", self.org.clone())
            .header(AUTHORIZATION, authorization.clone())
            .header(CONTENT_TYPE, "application/json")
            .body(body)
            .send()
            .await
            .map_err(|e| format!("request: {}", describe(e)))?;
        let status = response.status();
        let bytes = response
            .bytes()
            .await
            .map_err(|e| format!("response body: {}", describe(e)))?;
        match status.as_u16() {
            201 => {}
            // Every clientMessageId is new: a replay means the server matched the wrong post.
            200 if self.client_message_ids => {
                return Err("HTTP 200: answered as a replay of a new clientMessageId".into());
            }
            code => return Err(format!("HTTP {code}")),
        }
        serde_json::from_slice::<Posted>(&bytes)
            .map(|p| p.seq)
            .map_err(|e| format!("response without seq: {e}"))
    }
}

/// A random (version 4) UUID, as text.
pub fn random_uuid() -> String {
    let bits = (rand::random::<u128>() & !(0xf << 76) & !(0x3 << 62)) | (0x4 << 76) | (0x2 << 62);
    let hex = format!("{bits:032x}");
    format!(
        "{}-{}-{}-{}-{}",
        &hex[..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..]
    )
}

/// An HTTP error and its causes, without the URL (so errors of many groups count as one kind).
fn describe(e: reqwest::Error) -> String {
    let e = e.without_url();
    let mut text = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// What the posters did.
pub struct PostStats {
    pub scheduled: AtomicU64,
    pub ok: AtomicU64,
    pub failed: AtomicU64,
    /// Open loop: posts not sent because `max_inflight` requests were already waiting.
    pub shed: AtomicU64,
    /// Deliveries the acknowledged posts owe: the sum of their groups' sizes.
    pub expected_deliveries: AtomicU64,
    /// Highest acknowledged seq per group.
    pub acked_seq: Vec<AtomicI64>,
    /// POST latency: from the moment it was sent to its answer.
    pub latency: Latency,
    /// How late the open-loop scheduler sent a post, at worst, in microseconds.
    pub max_lag_us: AtomicU64,
    pub first_post_us: AtomicU64,
    pub last_ack_us: AtomicU64,
    pub errors: Mutex<BTreeMap<String, u64>>,
}

impl PostStats {
    pub fn new(groups: usize) -> Self {
        Self {
            scheduled: AtomicU64::new(0),
            ok: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            shed: AtomicU64::new(0),
            expected_deliveries: AtomicU64::new(0),
            acked_seq: (0..groups).map(|_| AtomicI64::new(0)).collect(),
            latency: Latency::default(),
            max_lag_us: AtomicU64::new(0),
            first_post_us: AtomicU64::new(u64::MAX),
            last_ack_us: AtomicU64::new(0),
            errors: Mutex::new(BTreeMap::new()),
        }
    }

    pub fn error(&self, what: String) {
        self.failed.fetch_add(1, Ordering::Relaxed);
        *self
            .errors
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(what)
            .or_default() += 1;
    }

    pub fn error_summary(&self) -> String {
        crate::stats::count_summary(&self.errors, ", ")
    }

    pub fn acked_snapshot(&self) -> Vec<i64> {
        self.acked_seq.iter().map(|a| a.load(Ordering::Acquire)).collect()
    }
}

/// Posts one message (number `n`) into `group` as its poster and records the outcome. The
/// content carries the moment it is sent.
pub async fn post_one(rest: &Rest, plan: &Plan, stats: &PostStats, api: &str, group: u32, n: u64) {
    let g = &plan.groups[group as usize];
    let poster = &plan.users[g.members[0] as usize];
    let sent_us = now_us();
    let content = format!("b:{n}:{sent_us}");
    stats.first_post_us.fetch_min(sent_us, Ordering::Relaxed);
    match rest.post_message(api, &g.id, &poster.authorization, &content).await {
        Ok(seq) => {
            let now = now_us();
            stats.latency.record(n as usize, now.saturating_sub(sent_us));
            stats.acked_seq[group as usize].fetch_max(seq, Ordering::AcqRel);
            stats
                .expected_deliveries
                .fetch_add(g.members.len() as u64, Ordering::Relaxed);
            stats.ok.fetch_add(1, Ordering::Relaxed);
            stats.last_ack_us.fetch_max(now, Ordering::Relaxed);
        }
        Err(e) => stats.error(e),
    }
}

/// Open loop: `rate` posts per second, due at fixed times whatever the answers, into `targets`
/// (group indexes, round-robin) through `apis` (round-robin), until `duration` has passed or
/// `stop` turns true. At most `max_inflight` posts wait for answers; beyond that a due post is
/// shed (counted as an error) so that the bench's own memory stays bounded.
#[allow(clippy::too_many_arguments)]
pub async fn open_loop(
    rest: Arc<Rest>,
    plan: Arc<Plan>,
    apis: Arc<Vec<String>>,
    targets: Arc<Vec<u32>>,
    stats: Arc<PostStats>,
    rate: f64,
    duration: Duration,
    max_inflight: usize,
    mut stop: watch::Receiver<bool>,
) {
    let inflight = Arc::new(Semaphore::new(max_inflight));
    let start = Instant::now();
    let start_us = now_us();
    let total = (rate * duration.as_secs_f64()).round() as u64;
    let mut next: u64 = 0;
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut tasks = tokio::task::JoinSet::new();
    let mut stop_open = true;
    while next < total && !*stop.borrow() {
        tokio::select! {
            _ = tick.tick() => {}
            changed = stop.changed(), if stop_open => {
                stop_open = changed.is_ok();
                continue;
            }
        }
        let due_now = ((start.elapsed().as_secs_f64() * rate) as u64 + 1).min(total);
        while next < due_now {
            let n = next;
            next += 1;
            let due_us = start_us + (n as f64 * 1e6 / rate) as u64;
            stats
                .max_lag_us
                .fetch_max(now_us().saturating_sub(due_us), Ordering::Relaxed);
            stats.scheduled.fetch_add(1, Ordering::Relaxed);
            let Ok(permit) = inflight.clone().try_acquire_owned() else {
                stats.shed.fetch_add(1, Ordering::Relaxed);
                continue;
            };
            let group = targets[(n % targets.len() as u64) as usize];
            let (rest, plan, stats, apis) = (rest.clone(), plan.clone(), stats.clone(), apis.clone());
            tasks.spawn(async move {
                let api = &apis[(n % apis.len() as u64) as usize];
                post_one(&rest, &plan, &stats, api, group, n).await;
                drop(permit);
            });
        }
        // Reap finished tasks so the set does not grow with the run.
        while tasks.try_join_next().is_some() {}
    }
    while tasks.join_next().await.is_some() {}
}

/// Closed loop: one poster per target group, each posting as fast as its posts are
/// acknowledged, until `duration` has passed.
pub async fn closed_loop(
    rest: Arc<Rest>,
    plan: Arc<Plan>,
    apis: Arc<Vec<String>>,
    targets: Arc<Vec<u32>>,
    stats: Arc<PostStats>,
    duration: Duration,
) {
    let deadline = Instant::now() + duration;
    let mut tasks = tokio::task::JoinSet::new();
    for (i, group) in targets.iter().copied().enumerate() {
        let (rest, plan, stats, apis) = (rest.clone(), plan.clone(), stats.clone(), apis.clone());
        tasks.spawn(async move {
            let api = &apis[i % apis.len()];
            let mut n = i as u64;
            while Instant::now() < deadline {
                stats.scheduled.fetch_add(1, Ordering::Relaxed);
                post_one(&rest, &plan, &stats, api, group, n).await;
                // Poster i numbers its messages i, i + 1_000_000, ...: unique in the run.
                n += 1_000_000;
            }
        });
    }
    while tasks.join_next().await.is_some() {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_message_ids_are_version_4_uuids() {
        let a = random_uuid();
        let b = random_uuid();
        assert_ne!(a, b);
        let parts: Vec<&str> = a.split('-').collect();
        assert_eq!(parts.iter().map(|p| p.len()).collect::<Vec<_>>(), [8, 4, 4, 4, 12]);
        assert!(parts[2].starts_with('4'), "{a}");
        assert!(matches!(parts[3].as_bytes()[0], b'8' | b'9' | b'a' | b'b'), "{a}");
        assert!(a.bytes().all(|c| c == b'-' || c.is_ascii_hexdigit()));
    }
}
