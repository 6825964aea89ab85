//! Fan-out: S sockets (one per user) in G = S/K groups of K, spread over the gateways; R posts/s
//! over REST (open loop, round-robin over the groups and the API processes). Every member's
//! socket is owed every message of its group, the poster's own included.

use std::{
    sync::{Arc, atomic::Ordering},
    time::Duration,
};

use clap::Args;
use serde_json::json;
use tokio::sync::watch;

use super::{Ctx, Report, Shape, SocketsGuard, seconds_between, setup};
use crate::{
    client::Clients,
    rest::{PostStats, open_loop},
    topology::Target,
};

#[derive(Clone, Debug, Default, Args)]
pub struct FanoutArgs {
    /// Sockets, one per user [default 2000; smoke 200].
    #[arg(long)]
    pub sockets: Option<usize>,
    /// Members per group (K); groups = sockets / K [default 10].
    #[arg(long)]
    pub group_size: Option<usize>,
    /// REST posts per second (R), open loop [default 1000; smoke 100].
    #[arg(long)]
    pub rate: Option<f64>,
    /// Seconds of posting [default 10; smoke 3].
    #[arg(long)]
    pub duration: Option<u64>,
    /// Handshakes in flight while connecting [default 500; smoke 100].
    #[arg(long)]
    pub connect_concurrency: Option<usize>,
    /// Posts waiting for an answer at most; a post due beyond is shed (an error) [default: what
    /// the open-file limit leaves beside the sockets, at most 20000].
    #[arg(long)]
    pub max_inflight: Option<usize>,
}

struct Settings {
    sockets: usize,
    group_size: usize,
    rate: f64,
    duration: u64,
    connect_concurrency: usize,
    max_inflight: usize,
}

impl FanoutArgs {
    fn resolve(&self, smoke: bool) -> Settings {
        Settings {
            sockets: self.sockets.unwrap_or(if smoke { 200 } else { 2000 }),
            group_size: self.group_size.unwrap_or(10),
            rate: self.rate.unwrap_or(if smoke { 100.0 } else { 1000.0 }),
            duration: self.duration.unwrap_or(if smoke { 3 } else { 10 }),
            connect_concurrency: self.connect_concurrency.unwrap_or(if smoke { 100 } else { 500 }),
            max_inflight: self.max_inflight.unwrap_or(20_000),
        }
    }
}

pub async fn run(ctx: &Ctx, args: &FanoutArgs) -> anyhow::Result<Report> {
    let mut s = args.resolve(ctx.smoke);
    s.max_inflight = s.max_inflight.min(ctx.inflight_budget(s.sockets));
    let repeat = ctx.repeat(
        "fanout",
        &[
            ("sockets", s.sockets.to_string()),
            ("group-size", s.group_size.to_string()),
            ("rate", s.rate.to_string()),
            ("duration", s.duration.to_string()),
            ("connect-concurrency", s.connect_concurrency.to_string()),
            ("max-inflight", s.max_inflight.to_string()),
        ],
    );
    ctx.check_sockets(s.sockets)?;
    let mut report = Report::new("fanout", ctx, repeat);
    let mut setup = setup(ctx, Shape::new(2, 2, s.sockets, s.group_size)).await?;
    let plan = setup.plan.clone();
    let gateways = setup.topology.gateway_endpoints();
    let groups = plan.groups.len();
    report.line(
        "shape",
        format!(
            "{} sockets in {groups} groups of {} over {} gateway(s); {} posts/s for {} s over {} API process(es)",
            s.sockets,
            s.group_size,
            gateways.len(),
            s.rate,
            s.duration,
            setup.apis.len()
        ),
    );
    report.line("set-up", setup.took());

    let clients = Clients::new(plan.clone(), ctx.client_config(gateways.clone(), None));
    let _guard = SocketsGuard(clients.clone());
    let connected = clients
        .connect_spread(s.sockets, gateways.len(), s.connect_concurrency)
        .await;
    report.connected(&connected, s.sockets, &clients);

    let probe = setup.topology.cpu_probe();
    let before = probe.snapshot().await;
    let stats = Arc::new(PostStats::new(groups));
    let targets = Arc::new((0..groups as u32).collect::<Vec<_>>());
    let (_stop, stop_rx) = watch::channel(false);
    open_loop(
        setup.rest.clone(),
        plan.clone(),
        setup.apis.clone(),
        targets,
        stats.clone(),
        s.rate,
        Duration::from_secs(s.duration),
        s.max_inflight,
        stop_rx,
    )
    .await;
    let expected = stats.expected_deliveries.load(Ordering::Relaxed);
    let drained = clients
        .wait_for(Duration::from_secs(10), |c| {
            c.delivered.load(Ordering::Relaxed) >= expected
        })
        .await;
    let after = probe.snapshot().await;

    let delivered = clients.delivered.load(Ordering::Relaxed);
    let first = stats.first_post_us.load(Ordering::Relaxed);
    let window = seconds_between(first, clients.last_delivery_us.load(Ordering::Relaxed).max(first + 1));
    let rate = delivered as f64 / window;
    let acked = stats.acked_snapshot();
    let lost = clients.lost(&acked);
    let ok = stats.ok.load(Ordering::Relaxed);
    let latency = clients.latency.summary();
    let post_latency = stats.latency.summary();
    let used = after.since(&before);
    let wall = after.wall_seconds_since(&before);
    let gateway_cpu = used
        .iter()
        .filter(|(l, _)| l == "gateway" || l == "serve")
        .map(|(_, s)| *s)
        .sum::<f64>();
    let per_gateway_core = delivered as f64 / gateway_cpu.max(1e-9);

    report.line(
        "posts",
        format!(
            "{ok} acknowledged of {} due ({} failed, {} shed); scheduler lag at worst {:.1} ms",
            stats.scheduled.load(Ordering::Relaxed),
            stats.failed.load(Ordering::Relaxed),
            stats.shed.load(Ordering::Relaxed),
            stats.max_lag_us.load(Ordering::Relaxed) as f64 / 1000.0
        ),
    );
    report.line("POST answered", post_latency.line());
    report.line(
        "deliveries",
        format!(
            "{delivered} of {expected} owed, {rate:.0}/s over {window:.2} s (offered {:.0}/s)",
            s.rate * s.group_size as f64
        ),
    );
    report.line("POST->socket", latency.line());
    let server_cpu = ctx.launch.target != Target::External;
    if server_cpu {
        report.line(
            "per gateway CPU-second",
            format!("{per_gateway_core:.0} deliveries (gateway CPU {gateway_cpu:.2} s)"),
        );
    } else {
        report.note("external target: the servers' CPU is not visible to the bench (only its own is shown)");
    }
    report.cpu(&used, wall, Some((delivered as f64 / 1000.0, "1k deliveries")));
    let duplicates = clients.duplicates.load(Ordering::Relaxed);
    let unexpected = clients.unexpected.load(Ordering::Relaxed);
    let disconnects = clients.disconnects.load(Ordering::Relaxed);
    let gaps = clients.gaps.load(Ordering::Relaxed);
    report.gateway_counters(&setup.topology.gateway_counters().await);
    report.line(
        "lost / errors",
        format!(
            "lost {lost}; gaps {gaps} (synced again: {}); post errors {}, shed {}, duplicates {duplicates}, unexpected {unexpected}, disconnects {disconnects}",
            clients.resyncs.load(Ordering::Relaxed),
            stats.failed.load(Ordering::Relaxed),
            stats.shed.load(Ordering::Relaxed)
        ),
    );
    if !drained {
        report.note("deliveries were still missing 10 s after the last post");
    }
    if stats.failed.load(Ordering::Relaxed) > 0 {
        report.note(format!("post errors: {}", stats.error_summary()));
    }
    if disconnects > 0 || unexpected > 0 {
        report.note(format!("socket errors: {}", clients.error_summary()));
    }
    for example in clients.gap_examples.lock().unwrap_or_else(|p| p.into_inner()).iter() {
        report.note(format!("gap: {example}"));
    }
    report.require_zero(&[
        ("lost", lost),
        ("gaps in a socket's seq (the server promises none)", gaps),
        ("post errors", stats.failed.load(Ordering::Relaxed)),
        ("posts shed", stats.shed.load(Ordering::Relaxed)),
        ("duplicates", duplicates),
        ("unexpected events", unexpected),
        ("disconnects", disconnects),
    ]);
    for crash in setup.topology.crashed(&[]) {
        report.problem(crash);
    }

    if server_cpu {
        report.target(
            per_gateway_core >= 100_000.0,
            format!(">= 100,000 deliveries/s per gateway core: {per_gateway_core:.0} per gateway CPU-second"),
        );
    }
    if s.rate >= 5000.0 && s.group_size == 10 {
        report.target(
            rate >= 50_000.0 && latency.p50 <= 5.0 && latency.p99 <= 25.0,
            format!(
                "50,000 deliveries/s at 5,000 posts/s into groups of 10, p50 <= 5 ms, p99 <= 25 ms: {rate:.0}/s, p50 {:.2} ms, p99 {:.2} ms",
                latency.p50, latency.p99
            ),
        );
    } else {
        report.note("the 5,000 posts/s into groups of 10 target needs --rate 5000 --group-size 10");
    }

    report.set("sockets", json!(s.sockets));
    report.set("groups", json!(groups));
    report.set("group_size", json!(s.group_size));
    report.set("rate", json!(s.rate));
    report.set("duration_s", json!(s.duration));
    report.set("posts_ok", json!(ok));
    report.set("posts_failed", json!(stats.failed.load(Ordering::Relaxed)));
    report.set("posts_shed", json!(stats.shed.load(Ordering::Relaxed)));
    report.set("deliveries", json!(delivered));
    report.set("deliveries_expected", json!(expected));
    report.set("deliveries_per_s", json!(rate));
    report.set("latency", latency.json());
    report.set("post_latency", post_latency.json());
    if server_cpu {
        report.set("deliveries_per_gateway_cpu_s", json!(per_gateway_core));
    }
    report.set("lost", json!(lost));
    report.set("gaps", json!(gaps));
    report.set("duplicates", json!(duplicates));
    report.set(
        "connect_per_s",
        json!(connected.ok as f64 / connected.seconds.max(1e-9)),
    );
    setup.topology.keep_dir |= !report.problems.is_empty();
    Ok(report)
}
