//! Soak: a fixed open-loop rate for a long time (minutes to hours) against the same server
//! processes and database, to show whether a message still costs what it cost at the start.
//! S sockets (one per user, 500 by default) in groups of K (10) over the gateways; R posts/s
//! (1,000) over REST, round-robin over the groups and the API processes, each post with a
//! `clientMessageId` of its own. Every interval (a minute by default) prints one row:
//! acknowledged posts/s, errors, Postgres, API and gateway CPU ms per post, POST->socket
//! p50/p99/max of the deliveries received in it, lost and duplicated.
//!
//! Besides any loss or error, the run fails when the last interval's Postgres CPU per post is
//! more than `--max-cpu-growth` (1.25) times the first interval's (the whole `serve` process on
//! a standalone target), or when the last interval's p99 is over `--p99-target-ms` (25). A
//! smoke run prints both checks without failing on them: its intervals of a few seconds on a
//! debug build are too short to judge a drift. An external target has no server CPU to check.

use std::{
    path::PathBuf,
    sync::{Arc, atomic::Ordering},
    time::Duration,
};

use clap::Args;
use serde_json::json;
use tokio::sync::watch;

use super::{
    Ctx, Report, Shape, SocketsGuard,
    intervals::{Row, Sampler, Table, format_duration, parse_duration},
    setup,
};
use crate::{
    chart::{self, Panel, Series},
    client::Clients,
    rest::{PostStats, open_loop},
    topology::Target,
};

#[derive(Clone, Debug, Default, Args)]
pub struct SoakArgs {
    /// Sockets, one per user [default 500].
    #[arg(long)]
    pub sockets: Option<usize>,
    /// Members per group (K); groups = sockets / K [default 10].
    #[arg(long)]
    pub group_size: Option<usize>,
    /// REST posts per second, open loop [default 1000; smoke 100].
    #[arg(long)]
    pub rate: Option<f64>,
    /// How long to post: seconds, or a number with s, m or h (90s, 10m, 3h) [default 10m; smoke
    /// 20s].
    #[arg(long, value_parser = parse_duration)]
    pub duration: Option<Duration>,
    /// The length of one row of figures [default 1m; smoke 5s].
    #[arg(long, value_parser = parse_duration)]
    pub interval: Option<Duration>,
    /// Posting at the rate before the first interval (connection pools, caches), shown as a
    /// row of its own and left out of the checks [default 10s; smoke 2s].
    #[arg(long, value_parser = parse_duration)]
    pub warmup: Option<Duration>,
    /// Delivery (POST->socket) p99 target in ms: the run fails if the last interval's p99 is
    /// above it [default 25].
    #[arg(long)]
    pub p99_target_ms: Option<f64>,
    /// Most growth of Postgres CPU per post allowed from the first interval to the last, as a
    /// ratio [default 1.25].
    #[arg(long)]
    pub max_cpu_growth: Option<f64>,
    /// Handshakes in flight while connecting [default 500; smoke 100].
    #[arg(long)]
    pub connect_concurrency: Option<usize>,
    /// Posts waiting for an answer at most; a post due beyond is shed (an error) [default: what
    /// the open-file limit leaves beside the sockets, at most 20000].
    #[arg(long)]
    pub max_inflight: Option<usize>,
    /// Write the charts (CPU per post per tier, p50/p99 over time) to this SVG file.
    #[arg(long)]
    pub chart: Option<PathBuf>,
}

struct Settings {
    sockets: usize,
    group_size: usize,
    rate: f64,
    duration: Duration,
    interval: Duration,
    warmup: Duration,
    p99_target_ms: f64,
    max_cpu_growth: f64,
    connect_concurrency: usize,
    max_inflight: usize,
}

impl SoakArgs {
    fn resolve(&self, smoke: bool) -> Settings {
        let duration = self
            .duration
            .unwrap_or(Duration::from_secs(if smoke { 20 } else { 600 }));
        Settings {
            sockets: self.sockets.unwrap_or(500),
            group_size: self.group_size.unwrap_or(10),
            rate: self.rate.unwrap_or(if smoke { 100.0 } else { 1000.0 }),
            duration,
            interval: self
                .interval
                .unwrap_or(Duration::from_secs(if smoke { 5 } else { 60 }))
                .min(duration),
            warmup: self.warmup.unwrap_or(Duration::from_secs(if smoke { 2 } else { 10 })),
            p99_target_ms: self.p99_target_ms.unwrap_or(25.0),
            max_cpu_growth: self.max_cpu_growth.unwrap_or(1.25),
            connect_concurrency: self.connect_concurrency.unwrap_or(if smoke { 100 } else { 500 }),
            max_inflight: self.max_inflight.unwrap_or(20_000),
        }
    }
}

/// The process group whose CPU per post must stay flat: Postgres, or the one process that
/// does everything on a standalone target; none for an external target.
fn watched_tier(target: Target) -> Option<&'static str> {
    match target {
        Target::Scaled => Some("postgres"),
        Target::Standalone => Some("serve"),
        Target::External => None,
    }
}

pub async fn run(ctx: &Ctx, args: &SoakArgs) -> anyhow::Result<Report> {
    let mut s = args.resolve(ctx.smoke);
    s.max_inflight = s.max_inflight.min(ctx.inflight_budget(s.sockets));
    let mut repeat_args = vec![
        ("sockets", s.sockets.to_string()),
        ("group-size", s.group_size.to_string()),
        ("rate", s.rate.to_string()),
        ("duration", format_duration(s.duration)),
        ("interval", format_duration(s.interval)),
        ("warmup", format_duration(s.warmup)),
        ("p99-target-ms", s.p99_target_ms.to_string()),
        ("max-cpu-growth", s.max_cpu_growth.to_string()),
        ("connect-concurrency", s.connect_concurrency.to_string()),
        ("max-inflight", s.max_inflight.to_string()),
    ];
    if let Some(path) = &args.chart {
        repeat_args.push(("chart", super::shell_quote(&path.display().to_string())));
    }
    let repeat = ctx.repeat("soak", &repeat_args);
    ctx.check_sockets(s.sockets)?;
    let mut report = Report::new("soak", ctx, repeat);
    let mut setup = setup(ctx, Shape::new(2, 2, s.sockets, s.group_size).lasting(s.duration)).await?;
    let plan = setup.plan.clone();
    let gateways = setup.topology.gateway_endpoints();
    let groups = plan.groups.len();
    report.line(
        "shape",
        format!(
            "{} sockets in {groups} groups of {} over {} gateway(s); {} posts/s for {} after a {} warm-up, over {} API process(es), a row every {}",
            s.sockets,
            s.group_size,
            gateways.len(),
            s.rate,
            format_duration(s.duration),
            format_duration(s.warmup),
            setup.apis.len(),
            format_duration(s.interval),
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
    let table = Table::new("end", &probe);
    let stats = Arc::new(PostStats::new(groups));
    let before = probe.snapshot().await;
    let mut sampler = Sampler::start(probe.clone(), clients.clone(), stats.clone()).await;
    let started = tokio::time::Instant::now();
    let (_stop, stop_rx) = watch::channel(false);
    let poster = tokio::spawn(open_loop(
        setup.rest.clone(),
        plan.clone(),
        setup.apis.clone(),
        Arc::new((0..groups as u32).collect()),
        stats.clone(),
        s.rate,
        s.warmup + s.duration,
        s.max_inflight,
        stop_rx,
    ));
    println!(
        "\n== soak ({}): {} posts/s for {}, a row every {} ==",
        ctx.launch.target.as_str(),
        s.rate,
        format_duration(s.duration),
        format_duration(s.interval)
    );
    println!("  {}", table.header());
    tokio::time::sleep_until(started + s.warmup).await;
    let warmup = sampler.sample("warm-up".to_owned()).await;
    println!("  {}", table.line(&warmup));
    sampler.restart_clock();
    let mut rows: Vec<Row> = Vec::new();
    let mut end = Duration::ZERO;
    while end < s.duration {
        end = (end + s.interval).min(s.duration);
        tokio::time::sleep_until(started + s.warmup + end).await;
        let row = sampler.sample(format_duration(end)).await;
        println!("  {}", table.line(&row));
        rows.push(row);
    }
    poster.await?;
    let after = probe.snapshot().await;
    let expected = stats.expected_deliveries.load(Ordering::Relaxed);
    let drained = clients
        .wait_for(Duration::from_secs(10), |c| {
            c.delivered.load(Ordering::Relaxed) >= expected
        })
        .await;

    let delivered = clients.delivered.load(Ordering::Relaxed);
    let acked = stats.acked_snapshot();
    let lost = clients.lost(&acked);
    let ok = stats.ok.load(Ordering::Relaxed);
    let failed = stats.failed.load(Ordering::Relaxed);
    let shed = stats.shed.load(Ordering::Relaxed);
    let latency = clients.latency.summary();
    report.line(
        "posts",
        format!(
            "{ok} acknowledged of {} due ({failed} failed, {shed} shed); scheduler lag at worst {:.1} ms",
            stats.scheduled.load(Ordering::Relaxed),
            stats.max_lag_us.load(Ordering::Relaxed) as f64 / 1000.0
        ),
    );
    report.line("POST answered", stats.latency.summary().line());
    report.line("deliveries", format!("{delivered} of {expected} owed"));
    report.line("POST->socket (whole run)", latency.line());
    report.cpu(
        &after.since(&before),
        after.wall_seconds_since(&before),
        Some((ok as f64 / 1000.0, "1k posts")),
    );

    // The drift checks: first interval against last.
    let (first, last) = (&rows[0], &rows[rows.len() - 1]);
    let enforce = !ctx.smoke;
    match watched_tier(ctx.launch.target) {
        Some(tier) => {
            let (a, b) = (first.cpu(tier), last.cpu(tier));
            let growth = b / a;
            let measured = a.is_finite() && a > 0.0 && b.is_finite();
            let met = measured && growth <= s.max_cpu_growth;
            let text = if measured {
                format!(
                    "{tier} CPU per post, last interval <= {}x the first: {a:.4} -> {b:.4} ms ({growth:.2}x)",
                    s.max_cpu_growth
                )
            } else {
                format!(
                    "{tier} CPU per post, last interval <= {}x the first: not measured (first {a:.4}, last {b:.4} ms)",
                    s.max_cpu_growth
                )
            };
            if !met && enforce {
                report.problem(if measured {
                    format!("{tier} CPU per post drifted: {a:.4} -> {b:.4} ms ({growth:.2}x)")
                } else {
                    format!(
                        "{tier} CPU per post could not be compared (no CPU or no post in the first or last interval)"
                    )
                });
            }
            report.target(met, text);
            report.set("cpu_growth", json!(if measured { Some(growth) } else { None }));
        }
        None => {
            report.note("external target: the servers' CPU is not visible to the bench, so CPU per post is not checked")
        }
    }
    let p99_met = last.latency.count > 0 && last.latency.p99 <= s.p99_target_ms;
    if !p99_met && enforce {
        report.problem(format!(
            "the last interval's delivery p99 {:.2} ms is over the {} ms target",
            last.latency.p99, s.p99_target_ms
        ));
    }
    report.target(
        p99_met,
        format!(
            "delivery p99 of the last interval <= {} ms: {:.2} ms (first interval {:.2} ms)",
            s.p99_target_ms, last.latency.p99, first.latency.p99
        ),
    );
    let over: Vec<&str> = rows
        .iter()
        .filter(|r| r.latency.p99 > s.p99_target_ms)
        .map(|r| r.label.as_str())
        .collect();
    if !over.is_empty() {
        report.note(format!(
            "p99 over {} ms in {} of {} intervals (ending {})",
            s.p99_target_ms,
            over.len(),
            rows.len(),
            over.join(", ")
        ));
    }
    if ctx.smoke {
        report.note("smoke: the CPU and p99 drift checks are shown, not enforced (intervals too short to judge)");
    }
    if rows.len() < 2 {
        report.note("one interval only: the drift checks compare it with itself");
    }

    let duplicates = clients.duplicates.load(Ordering::Relaxed);
    let unexpected = clients.unexpected.load(Ordering::Relaxed);
    let disconnects = clients.disconnects.load(Ordering::Relaxed);
    let gaps = clients.gaps.load(Ordering::Relaxed);
    report.gateway_counters(&setup.topology.gateway_counters().await);
    report.line(
        "lost / errors",
        format!(
            "lost {lost}; gaps {gaps}; post errors {failed}, shed {shed}, duplicates {duplicates}, unexpected {unexpected}, disconnects {disconnects}"
        ),
    );
    if !drained {
        report.note("deliveries were still missing 10 s after the last post");
    }
    if failed > 0 {
        report.note(format!("post errors: {}", stats.error_summary()));
    }
    if disconnects > 0 || unexpected > 0 {
        report.note(format!("socket errors: {}", clients.error_summary()));
    }
    report.require_zero(&[
        ("lost", lost),
        ("gaps in a socket's seq (the server promises none)", gaps),
        ("post errors", failed),
        ("posts shed", shed),
        ("duplicates", duplicates),
        ("unexpected events", unexpected),
        ("disconnects", disconnects),
    ]);
    if ok == 0 {
        report.problem("no post was acknowledged");
    }
    for crash in setup.topology.crashed(&[]) {
        report.problem(crash);
    }

    if let Some(path) = &args.chart {
        let panels = charts(&rows, table.tiers(), s.p99_target_ms, s.duration);
        let title = format!(
            "community-chat soak: {} posts/s, {} sockets in groups of {} ({} target)",
            s.rate,
            s.sockets,
            s.group_size,
            ctx.launch.target.as_str()
        );
        match chart::write(path, &title, &panels) {
            Ok(()) => report.line("chart", path.display().to_string()),
            Err(e) => report.problem(format!("could not write the chart {}: {e}", path.display())),
        }
    }

    report.set("sockets", json!(s.sockets));
    report.set("groups", json!(groups));
    report.set("group_size", json!(s.group_size));
    report.set("rate", json!(s.rate));
    report.set("duration_s", json!(s.duration.as_secs_f64()));
    report.set("interval_s", json!(s.interval.as_secs_f64()));
    report.set("p99_target_ms", json!(s.p99_target_ms));
    report.set("max_cpu_growth", json!(s.max_cpu_growth));
    report.set("posts_ok", json!(ok));
    report.set("posts_failed", json!(failed));
    report.set("posts_shed", json!(shed));
    report.set("deliveries", json!(delivered));
    report.set("deliveries_expected", json!(expected));
    report.set("latency", latency.json());
    report.set("lost", json!(lost));
    report.set("gaps", json!(gaps));
    report.set("duplicates", json!(duplicates));
    report.set("warmup", warmup.json());
    report.set("intervals", json!(rows.iter().map(Row::json).collect::<Vec<_>>()));
    setup.topology.keep_dir |= !report.problems.is_empty();
    Ok(report)
}

/// CPU per post per tier over time (when the servers' CPU is visible), and p50/p99 over time
/// beside the p99 target.
fn charts(rows: &[Row], tiers: &[String], p99_target_ms: f64, duration: Duration) -> Vec<Panel> {
    let (unit, per) = if duration >= Duration::from_secs(120) {
        ("minutes", 60.0)
    } else {
        ("seconds", 1.0)
    };
    let x = |r: &Row| r.end_s / per;
    let mut panels = Vec::new();
    if !tiers.is_empty() {
        panels.push(Panel {
            title: "CPU per acknowledged post".into(),
            x_label: format!("{unit} after the warm-up (end of each interval)"),
            y_label: "CPU ms per post".into(),
            series: tiers
                .iter()
                .map(|t| Series::new(t.clone(), rows.iter().map(|r| (x(r), r.cpu(t))).collect()))
                .collect(),
            log_y: false,
        });
    }
    let ends = (rows.first().map_or(0.0, x), rows.last().map_or(0.0, x));
    panels.push(Panel {
        title: "Delivery latency, POST to socket".into(),
        x_label: format!("{unit} after the warm-up (end of each interval)"),
        y_label: "ms (log scale)".into(),
        series: vec![
            Series::new("p50", rows.iter().map(|r| (x(r), r.latency.p50)).collect()),
            Series::new("p99", rows.iter().map(|r| (x(r), r.latency.p99)).collect()),
            Series::new("p99 target", vec![(ends.0, p99_target_ms), (ends.1, p99_target_ms)]).dashed(),
        ],
        log_y: true,
    });
    panels
}
