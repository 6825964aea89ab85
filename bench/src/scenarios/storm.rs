//! Reconnect storm: N sockets on gateway 0 while posts go on over REST (open loop); gateway 0
//! is killed with SIGKILL; each socket, like the official client, waits a random reconnection
//! delay and connects to the next gateway with `auth.sync: [{ groupId, afterSeq }]` carrying
//! the last seq it has of each group. A socket is back when its handshake succeeds, and caught
//! up once `groupsSynced` has come and it holds every message acknowledged before the kill.
//! Posting goes on after all are back; at the end every socket must hold every acknowledged
//! message of its groups, in order, once (lost = 0).

use std::{
    sync::{Arc, atomic::Ordering},
    time::Duration,
};

use clap::Args;
use serde_json::json;
use tokio::sync::watch;

use super::{Ctx, Report, Shape, SocketsGuard, quantile, seconds_between, setup};
use crate::{
    client::Clients,
    rest::{PostStats, open_loop},
    stats::now_us,
    topology::Target,
};

#[derive(Clone, Debug, Default, Args)]
pub struct StormArgs {
    /// Sockets on the gateway that is killed [default 2000; smoke 200].
    #[arg(long)]
    pub sockets: Option<usize>,
    /// Members per group (each user is in one) [default 10].
    #[arg(long)]
    pub group_size: Option<usize>,
    /// REST posts per second during the whole storm [default 500; smoke 100].
    #[arg(long)]
    pub rate: Option<f64>,
    /// Seconds of posting before the kill [default 3; smoke 1].
    #[arg(long)]
    pub warmup: Option<u64>,
    /// Least first reconnection delay in ms; each failed attempt doubles it, up to 5 s, like
    /// socket.io (1000 ms randomised by 0.5, at most 5000 ms) [default 500; smoke 100].
    #[arg(long)]
    pub reconnect_min_ms: Option<u64>,
    /// Most first reconnection delay in ms [default 1500; smoke 500].
    #[arg(long)]
    pub reconnect_max_ms: Option<u64>,
    /// Seconds after the kill to wait for every socket to be back and caught up [default 60;
    /// smoke 20].
    #[arg(long)]
    pub timeout: Option<u64>,
    /// Seconds of posting after every socket is back [default 2; smoke 1].
    #[arg(long)]
    pub tail: Option<u64>,
    /// Handshakes in flight while connecting the first time [default 500; smoke 100].
    #[arg(long)]
    pub connect_concurrency: Option<usize>,
}

struct Settings {
    sockets: usize,
    group_size: usize,
    rate: f64,
    warmup: u64,
    reconnect_min_ms: u64,
    reconnect_max_ms: u64,
    timeout: u64,
    tail: u64,
    connect_concurrency: usize,
}

impl StormArgs {
    fn resolve(&self, smoke: bool) -> Settings {
        let reconnect_min_ms = self.reconnect_min_ms.unwrap_or(if smoke { 100 } else { 500 });
        Settings {
            sockets: self.sockets.unwrap_or(if smoke { 200 } else { 2000 }),
            group_size: self.group_size.unwrap_or(10),
            rate: self.rate.unwrap_or(if smoke { 100.0 } else { 500.0 }),
            warmup: self.warmup.unwrap_or(if smoke { 1 } else { 3 }),
            reconnect_min_ms,
            reconnect_max_ms: self
                .reconnect_max_ms
                .unwrap_or(if smoke { 500 } else { 1500 })
                .max(reconnect_min_ms),
            timeout: self.timeout.unwrap_or(if smoke { 20 } else { 60 }),
            tail: self.tail.unwrap_or(if smoke { 1 } else { 2 }),
            connect_concurrency: self.connect_concurrency.unwrap_or(if smoke { 100 } else { 500 }),
        }
    }
}

/// Seconds after the kill by which a fraction of sockets had done something (`None`: not
/// that many did).
fn time_for(mut seconds: Vec<f64>, total: usize, fraction: f64) -> Option<f64> {
    let needed = ((total as f64 * fraction).ceil() as usize).max(1);
    if seconds.len() < needed {
        return None;
    }
    let q = needed as f64 / seconds.len() as f64;
    quantile(&mut seconds, q)
}

fn show(t: Option<f64>) -> String {
    t.map_or_else(|| "never (within the timeout)".to_owned(), |t| format!("{t:.2} s"))
}

pub async fn run(ctx: &Ctx, args: &StormArgs) -> anyhow::Result<Report> {
    let s = args.resolve(ctx.smoke);
    let repeat = ctx.repeat(
        "storm",
        &[
            ("sockets", s.sockets.to_string()),
            ("group-size", s.group_size.to_string()),
            ("rate", s.rate.to_string()),
            ("warmup", s.warmup.to_string()),
            ("reconnect-min-ms", s.reconnect_min_ms.to_string()),
            ("reconnect-max-ms", s.reconnect_max_ms.to_string()),
            ("timeout", s.timeout.to_string()),
            ("tail", s.tail.to_string()),
            ("connect-concurrency", s.connect_concurrency.to_string()),
        ],
    );
    let mut report = Report::new("storm", ctx, repeat);
    if ctx.launch.target != Target::Scaled {
        report.line(
            "skipped",
            "the storm needs --target scaled (a second gateway to reconnect to)",
        );
        report.note("skipped: standalone has one process");
        return Ok(report);
    }
    ctx.check_sockets(s.sockets)?;
    let mut setup = setup(ctx, Shape::new(2, 2, s.sockets, s.group_size)).await?;
    let plan = setup.plan.clone();
    let gateways = setup.topology.gateway_endpoints();
    let groups = plan.groups.len();
    report.line(
        "shape",
        format!(
            "{} sockets on gateway-0 ({groups} groups of {}); {} posts/s; reconnect after {}..{} ms to gateway-1 with auth.sync",
            s.sockets, s.group_size, s.rate, s.reconnect_min_ms, s.reconnect_max_ms
        ),
    );

    let clients = Clients::new(
        plan.clone(),
        ctx.client_config(gateways.clone(), Some((s.reconnect_min_ms, s.reconnect_max_ms))),
    );
    let _guard = SocketsGuard(clients.clone());
    let sockets: Vec<(u32, usize)> = (0..s.sockets).map(|u| (u as u32, 0)).collect();
    let connected = clients.connect_all(sockets, s.connect_concurrency).await;
    report.line(
        "connected",
        format!("{} of {} in {:.2} s", connected.ok, s.sockets, connected.seconds),
    );
    if connected.failed > 0 {
        anyhow::bail!(
            "{} sockets failed to connect before the storm: {}",
            connected.failed,
            clients.error_summary()
        );
    }

    let stats = Arc::new(PostStats::new(groups));
    let (stop, stop_rx) = watch::channel(false);
    let sender = tokio::spawn(open_loop(
        setup.rest.clone(),
        plan.clone(),
        setup.apis.clone(),
        Arc::new((0..groups as u32).collect()),
        stats.clone(),
        s.rate,
        Duration::from_secs(s.warmup + s.timeout + s.tail + 30),
        ctx.inflight_budget(s.sockets),
        stop_rx,
    ));
    tokio::time::sleep(Duration::from_secs(s.warmup)).await;

    // The kill: what was acknowledged by now is what a reconnected socket must catch up to.
    let target = stats.acked_snapshot();
    let owed_at_kill: i64 = target.iter().sum();
    let _ = clients.catch_up_target.set(target);
    let before = setup.topology.cpu_probe().snapshot().await;
    let kill_us = now_us();
    setup.topology.kill("gateway-0")?;
    let caught_up_count = |c: &Clients| {
        c.status
            .iter()
            .filter(|st| st.caught_up_at_us.load(Ordering::Acquire) != 0)
            .count()
    };
    let all_back = clients
        .wait_for(Duration::from_secs(s.timeout), |c| caught_up_count(c) == s.sockets)
        .await;
    let not_back_at_timeout = s.sockets - caught_up_count(&clients);
    let storm_seconds = seconds_between(kill_us, now_us());
    let after = setup.topology.cpu_probe().snapshot().await;
    tokio::time::sleep(Duration::from_secs(s.tail)).await;
    let _ = stop.send(true);
    sender.await?;
    // Everything acknowledged must arrive: wait for the last deliveries.
    let acked = stats.acked_snapshot();
    clients.wait_for(Duration::from_secs(10), |c| c.lost(&acked) == 0).await;
    let lost = clients.lost(&acked);

    let mut back = Vec::new();
    let mut caught = Vec::new();
    for st in &clients.status {
        if st.connections.load(Ordering::Acquire) >= 2 {
            back.push(seconds_between(kill_us, st.connected_at_us.load(Ordering::Acquire)));
        }
        let at = st.caught_up_at_us.load(Ordering::Acquire);
        if at != 0 {
            caught.push(seconds_between(kill_us, at));
        }
    }
    let back_99 = time_for(back.clone(), s.sockets, 0.99);
    let back_100 = time_for(back.clone(), s.sockets, 1.0);
    let caught_99 = time_for(caught.clone(), s.sockets, 0.99);
    let caught_100 = time_for(caught.clone(), s.sockets, 1.0);
    report.line(
        "back (reconnected)",
        format!(
            "{} of {}: 99% by {}, 100% by {}",
            back.len(),
            s.sockets,
            show(back_99),
            show(back_100)
        ),
    );
    report.line(
        "back and caught up",
        format!(
            "{} of {}: 99% by {}, 100% by {} (after the kill)",
            caught.len(),
            s.sockets,
            show(caught_99),
            show(caught_100)
        ),
    );
    report.line(
        "messages owed at the kill",
        format!("{owed_at_kill} (acknowledged before it, summed over groups)"),
    );
    let ok = stats.ok.load(Ordering::Relaxed);
    report.line(
        "posts",
        format!(
            "{ok} acknowledged ({} failed, {} shed)",
            stats.failed.load(Ordering::Relaxed),
            stats.shed.load(Ordering::Relaxed)
        ),
    );
    report.line(
        "deliveries",
        format!(
            "{} in all; POST->socket before the kill {}",
            clients.delivered.load(Ordering::Relaxed),
            clients.latency.summary().line()
        ),
    );
    report.line(
        "after the reconnect",
        format!(
            "POST->socket (catch-up included) {}",
            clients.latency_after_reconnect.summary().line()
        ),
    );
    report.line(
        "handshakes",
        format!(
            "{} ok, {} failed; {} groupsSynced ({} with an error)",
            clients.handshakes_ok.load(Ordering::Relaxed),
            clients.handshakes_failed.load(Ordering::Relaxed),
            clients.groups_synced.load(Ordering::Relaxed),
            clients.sync_errors.load(Ordering::Relaxed)
        ),
    );
    report.cpu(&after.since(&before), storm_seconds, None);
    let duplicates = clients.duplicates.load(Ordering::Relaxed);
    report.gateway_counters(&setup.topology.gateway_counters().await);
    report.line(
        "lost / errors",
        format!(
            "lost {lost}; gaps {} (synced again: {}), duplicates {duplicates}, post errors {}, sync errors {}",
            clients.gaps.load(Ordering::Relaxed),
            clients.resyncs.load(Ordering::Relaxed),
            stats.failed.load(Ordering::Relaxed),
            clients.sync_errors.load(Ordering::Relaxed)
        ),
    );
    if stats.failed.load(Ordering::Relaxed) > 0 {
        report.note(format!("post errors: {}", stats.error_summary()));
    }
    report.note(format!("socket events: {}", clients.error_summary()));
    if !all_back {
        report.problem(format!(
            "{not_back_at_timeout} of {} sockets not back and caught up within {} s",
            s.sockets, s.timeout
        ));
    }
    for example in clients.gap_examples.lock().unwrap_or_else(|p| p.into_inner()).iter() {
        report.note(format!("gap: {example}"));
    }
    report.require_zero(&[
        ("lost", lost),
        // A sync from an earlier seq re-sends what follows it (by design): duplicates are
        // expected after re-syncs only.
        (
            "duplicates without a re-sync",
            if clients.resyncs.load(Ordering::Relaxed) == 0 {
                duplicates
            } else {
                0
            },
        ),
        ("post errors", stats.failed.load(Ordering::Relaxed)),
        ("posts shed", stats.shed.load(Ordering::Relaxed)),
        ("sync errors", clients.sync_errors.load(Ordering::Relaxed)),
        ("unexpected events", clients.unexpected.load(Ordering::Relaxed)),
    ]);
    for crash in setup.topology.crashed(&["gateway-0"]) {
        report.problem(crash);
    }
    report.target(
        s.sockets >= 20_000 && caught_99.is_some_and(|t| t <= 10.0) && lost == 0,
        format!(
            "20,000 sockets: 99% back and caught up within 10 s, none lost: {} sockets, 99% by {}, lost {lost}",
            s.sockets,
            show(caught_99)
        ),
    );
    report.set("sockets", json!(s.sockets));
    report.set("rate", json!(s.rate));
    report.set("reconnect_delay_ms", json!([s.reconnect_min_ms, s.reconnect_max_ms]));
    report.set("back_99_s", json!(back_99));
    report.set("back_100_s", json!(back_100));
    report.set("caught_up_99_s", json!(caught_99));
    report.set("caught_up_100_s", json!(caught_100));
    report.set("lost", json!(lost));
    report.set("gaps", json!(clients.gaps.load(Ordering::Relaxed)));
    report.set("sync_errors", json!(clients.sync_errors.load(Ordering::Relaxed)));
    report.set(
        "connect_errors",
        json!(clients.handshakes_failed.load(Ordering::Relaxed)),
    );
    report.set("duplicates", json!(duplicates));
    report.set("posts_ok", json!(ok));
    report.set("owed_at_kill", json!(owed_at_kill));
    setup.topology.keep_dir |= !report.problems.is_empty();
    Ok(report)
}
